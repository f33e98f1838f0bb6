"""A target anyone on the network can log in to is named at start-up (issue 12).

A target on a non-loopback portal with neither CHAP nor an initiator ACL gets
one warning line per portal on stderr; loopback portals (127.0.0.0/8, ::1)
never do.  The servers here listen on the wildcard 0.0.0.0 but nothing is ever
sent to a non-loopback address: the warning is read without connecting.
"""
from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from scsi_target import cli
from scsi_target import config as C
from scsi_target.testing.process import ServerProcess
from scsi_target.target.registry import Portal

IQN = "iqn.2026-11.org.pyscsi:exposed"
WARNING = "has neither CHAP nor an initiator ACL"


def _serve_stderr(args: list[str], cwd: Path) -> tuple[str, str]:
    """Start `scsi-target serve`, wait until it listens, stop it; (stdout banner, stderr)."""
    with ServerProcess.from_flags(cwd, *args) as srv:
        pass
    assert srv.proc.returncode == 0, srv.log_tail()
    return "\n".join(srv.banner), srv.log_tail(1 << 20)


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if WARNING in line]


def test_wildcard_portal_without_chap_or_acl_warns_naming_target_and_bound_portal(tmp_path):
    out, err = _serve_stderr(["--listen", "0.0.0.0:0", "--iqn", IQN, "--disk",
                              f"{tmp_path / 'd.img'}:1M", "--no-track"], tmp_path)
    port = re.search(r"listening on 0\.0\.0\.0:(\d+)", out).group(1)
    lines = _warnings(err)
    assert len(lines) == 1, err
    assert f"target {IQN} on portal 0.0.0.0:{port} {WARNING}" in lines[0]
    assert "WARNING" in lines[0]


def test_chap_silences_the_warning(tmp_path):
    _out, err = _serve_stderr(["--listen", "0.0.0.0:0", "--iqn", IQN, "--disk",
                               f"{tmp_path / 'd.img'}:1M", "--no-track",
                               "--chap", "user:0123456789abcdef"], tmp_path)
    assert not _warnings(err), err


def test_loopback_portals_never_warn(tmp_path):
    args = ["--listen", "127.0.0.1:0", "--iqn", IQN, "--disk", f"{tmp_path / 'd.img'}:1M",
            "--no-track"]
    if socket.has_ipv6:
        try:
            with socket.socket(socket.AF_INET6) as s:
                s.bind(("::1", 0))
            args += ["--listen", "[::1]:0"]
        except OSError:
            pass
    _out, err = _serve_stderr(args, tmp_path)
    assert not _warnings(err), err


def test_config_with_acl_on_one_target_warns_only_for_the_other(tmp_path, capsys):
    path = tmp_path / "t.toml"
    path.write_text(f'''portals = ["0.0.0.0:3260", "127.0.0.2:3260"]
[[target]]
iqn = "{IQN}"
initiators = ["iqn.2026-11.org.pyscsi:host"]
[[target.lun]]
lun = 0
path = "a.img"
size = "1M"
create = true
[[target]]
iqn = "{IQN}-open"
[[target.lun]]
lun = 0
path = "b.img"
size = "1M"
create = true
''')
    assert cli.main(["check", str(path)]) == cli.EXIT_OK       # a warning, not an error
    lines = _warnings(capsys.readouterr().err)
    assert lines == [f"warning: target {IQN}-open on portal 0.0.0.0:3260 {WARNING}: anyone who "
                     "can reach it can log in (set [target.chap] or initiators, or listen on "
                     "127.0.0.1)"]


@pytest.mark.parametrize("host, exposed", [
    ("127.0.0.1", False), ("127.200.3.4", False), ("::1", False), ("::ffff:127.0.0.1", False),
    ("localhost", False), ("0.0.0.0", True), ("::", True), ("192.0.2.7", True),
    ("2001:db8::1", True), ("storage.example", True), ("::ffff:192.0.2.7", True),
])
def test_which_portals_count_as_exposed(host, exposed):
    t = C.TargetSpec(IQN, ())
    assert bool(C.exposure_warnings([t], [Portal(host, 3260)])) is exposed
