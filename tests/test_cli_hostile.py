"""Careless or hostile configs and flags (issue 12): each gets one line and exit 2.

Through the CLI as a subprocess where argv can carry the input, in process
(``cli.main``) where it cannot (a NUL byte), and through the config loader.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading

import pytest

from scsi_target import cli
from scsi_target import config as C
from scsi_target.target.registry import Portal
from tests.test_cli import assert_one_line_error, run

IQN = "iqn.2026-11.org.pyscsi:hostile"


def lun_toml(path: str, lun: int = 0, extra: str = 'size = "1M"\ncreate = true') -> str:
    return f'[[target.lun]]\nlun = {lun}\npath = "{path}"\n{extra}\n'


def target_toml(*luns: str, portals: str = '["127.0.0.1:0"]') -> str:
    return f'portals = {portals}\n[[target]]\niqn = "{IQN}"\n' + "".join(luns)


def test_config_naming_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "cfg.fifo"
    os.mkfifo(fifo)
    # A hang here is the bug: subprocess.run's timeout turns it into a failure.
    r = run("serve", "--config", str(fifo), cwd=tmp_path, timeout=20)
    assert_one_line_error(r, re.escape(f"scsi-target: error: {fifo}: cannot read: not a "
                                       "regular file (a FIFO)"))
    r = run("check", "/dev/zero", cwd=tmp_path, timeout=20)
    assert_one_line_error(r, r"scsi-target: error: /dev/zero: cannot read: not a regular file "
                             r"\(a character device\)")


def test_oversized_config_file_is_refused(tmp_path):
    big = tmp_path / "big.toml"
    big.write_bytes(b"# " + os.urandom(C.MAX_CONFIG_BYTES).hex().encode() + b"\n")
    assert_one_line_error(run("check", str(big), cwd=tmp_path),
                          r"scsi-target: error: .*big\.toml: \d+ bytes is too large for a "
                          r"config file \(at most 1048576\)")


def test_config_path_with_nul(tmp_path, capsys):
    # argv cannot carry a NUL byte; the in-process entry point can.
    assert cli.main(["serve", "--config", "a\0b.toml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["scsi-target: error: 'a\\x00b.toml': cannot read: the path contains a NUL "
                   "character"]
    assert cli.main(["serve", "--disk", f"{tmp_path}/d\0.img:1M"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("the path contains a NUL character"), err


def test_lun_path_with_nul(tmp_path):
    (tmp_path / "nul.toml").write_text(target_toml(lun_toml("d\\u0000.img")))
    assert_one_line_error(run("check", "nul.toml", cwd=tmp_path), re.escape(
        "scsi-target: error: nul.toml: target[0].lun[0].path: 'd\\x00.img' contains a NUL "
        "character"))
    parts = lun_toml("a.img", extra='size = "1M"\ncreate = true\n'
                     'parts = [{ path = "b\\u0000.img", size = "1M" }]')
    (tmp_path / "parts.toml").write_text(target_toml(parts))
    assert_one_line_error(run("check", "parts.toml", cwd=tmp_path), re.escape(
        "scsi-target: error: parts.toml: target[0].lun[0].parts[0].path: 'b\\x00.img' "
        "contains a NUL character"))


@pytest.mark.parametrize("nest", ["a = " + "[" * 5000 + "]" * 5000,
                                  "a = " + "{b = " * 5000 + "1" + "}" * 5000])
def test_deeply_nested_toml(tmp_path, nest):
    (tmp_path / "deep.toml").write_text(nest + "\n")
    assert_one_line_error(run("check", "deep.toml", cwd=tmp_path), re.escape(
        "scsi-target: error: deep.toml: TOML syntax error: arrays or tables nested too deeply"))


def test_huge_sizes(tmp_path):
    (tmp_path / "huge.toml").write_text(target_toml(lun_toml(
        "d.img", extra='size = "99999999999999999T"\ncreate = true')))
    assert_one_line_error(run("check", "huge.toml", cwd=tmp_path), re.escape(
        "scsi-target: error: huge.toml: target[0].lun[0].size: size '99999999999999999T' is "
        "larger than the largest possible file (9223372036854775807 bytes, 8 EiB)"))
    assert_one_line_error(run("serve", "--disk", "d.img:999999999999999999999T", cwd=tmp_path),
                          r"scsi-target: error: command line: --disk d.img:9+T: size '9+T' is "
                          r"larger than the largest possible file \(9223372036854775807 bytes, "
                          r"8 EiB\)")
    assert not (tmp_path / "d.img").exists()
    # The largest legal size is still accepted by the parser (the filesystem may refuse it).
    assert C.parse_file_size(C.MAX_SIZE) == C.MAX_SIZE
    with pytest.raises(ValueError):
        C.parse_file_size(C.MAX_SIZE + 1)


def test_lun_backed_by_another_luns_tracking_files(tmp_path):
    for j, suffix in enumerate((".genmap", ".genmap.dirty", ".volume")):
        cfg = tmp_path / f"own{j}.toml"
        cfg.write_text(target_toml(lun_toml("d.img"), lun_toml("d.img" + suffix, lun=1)))
        assert_one_line_error(run("check", cfg.name, cwd=tmp_path), re.escape(
            f"scsi-target: error: {cfg.name}: target[0].lun[1].path: d.img{suffix} is "
            f"the ") + r"(generation map|write-intent journal|identity sidecar)" + re.escape(
            " of target[0].lun[0] (d.img); serving it would let writes corrupt "
            "change tracking"))
    r = run("serve", "--disk", "d.img:1M", "--disk", "d.img.genmap:1M", cwd=tmp_path)
    assert_one_line_error(r, r"scsi-target: error: command line: --disk d\.img\.genmap: "
                             r"d\.img\.genmap is the generation map of .*")


def test_lun_backed_by_a_map_file_of_a_volume_served_elsewhere(tmp_path):
    # Track a volume once, so its real map, journal and sidecar exist on disk.
    data = os.urandom(1 << 20)
    (tmp_path / "d.img").write_bytes(data)
    reg = C.build_registry(C.parse_config(
        {"target": [{"iqn": IQN, "lun": [{"lun": 0, "path": "d.img"}]}]}, base=tmp_path))
    reg.close()
    for suffix, what in ((".genmap", "a generation map"),
                         (".genmap.dirty", "a generation map's write-intent journal"),
                         (".volume", "a volume identity sidecar")):
        side = tmp_path / f"d.img{suffix}"
        assert side.exists()
        size = side.stat().st_size
        extra = f"size = {size}" if size % 512 == 0 else "read_only = true"
        # Another target on the same host names the file without knowing whose it is.
        cfg = tmp_path / "other.toml"
        cfg.write_text(target_toml(lun_toml(str(side), extra=extra)))
        assert_one_line_error(run("check", cfg.name, cwd=tmp_path), re.escape(
            f"scsi-target: error: other.toml: target[0].lun[0].path: {side} is {what}; "
            "serving it would let writes corrupt change tracking"))
    # An ordinary image full of random bytes is still served.
    cfg.write_text(target_toml(lun_toml("d.img", extra="track = false")))
    assert run("check", cfg.name, cwd=tmp_path).returncode == 0


def test_listen_bare_number_is_a_port_on_the_default_host(tmp_path):
    assert C.from_flags(listen=["3550"], disks=[f"{tmp_path}/d.img:1M"]).portals == \
        (Portal("127.0.0.1", 3550),)
    assert C.parse_portal("0") == Portal("127.0.0.1", 0)
    assert C.parse_portal("localhost") == Portal("localhost", 3260)
    assert C.parse_portal("10.1.2.3") == Portal("10.1.2.3", 3260)
    (tmp_path / "p.toml").write_text(target_toml(lun_toml("d.img"), portals='["3550"]'))
    r = run("check", "p.toml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"iscsi://127.0.0.1:3550/{IQN}/0" in r.stdout
    assert_one_line_error(run("serve", "--listen", "70000", cwd=tmp_path), re.escape(
        "scsi-target: error: command line: --listen: '70000': port must be a number 0..65535 "
        "(0 = any free port)"))


def test_listen_bare_port_serves_there(tmp_path):
    """`--listen PORT` really listens on 127.0.0.1:PORT (a free port found first)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "scsi_target", "serve", "--listen", str(port),
                             "--disk", "d.img:1M", "--log-level", "warning"], cwd=tmp_path,
                            env=dict(os.environ, PYTHONPATH=str(C.Path(__file__).parent.parent)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(30, proc.kill)
    timer.start()
    try:
        first = proc.stdout.readline()
        assert first.strip() == f"listening on 127.0.0.1:{port}", (first, proc.stderr.read())
    finally:
        timer.cancel()
        proc.terminate()
        proc.wait(10)
