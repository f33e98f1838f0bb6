"""The scsi-target command run as a subprocess, the way an operator runs it."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# A stand-in server, injected only into the child process, so the CLI's own
# plumbing (startup lines, signals, exit codes) is tested apart from the server.
FAKE_SERVER = textwrap.dedent("""
    import asyncio, sys, types
    class FakeServer:
        def __init__(self, registry, **options):
            self.registry = registry
            self.bound_portals = []
        async def start(self):
            if self.registry.portals[0].port == 1:
                raise OSError(98, "cannot listen on 127.0.0.1:1: Address already in use")
            self.bound_portals = [(p.host, 4321) for p in self.registry.portals]
        async def close(self):
            print("fake server closed", flush=True)
            self.registry.close()
    mod = types.ModuleType("scsi_target.target.server")
    mod.IscsiServer = FakeServer
    sys.modules["scsi_target.target.server"] = mod
    from scsi_target.cli import main
    sys.exit(main())
""")


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def run(*args: str, cwd: Path, fake: bool = False, timeout: float = 30):
    cmd = [sys.executable, "-c", FAKE_SERVER, *args] if fake else \
        [sys.executable, "-m", "scsi_target", *args]
    return subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)


def start(*args: str, cwd: Path, fake: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-c", FAKE_SERVER, *args] if fake else \
        [sys.executable, "-m", "scsi_target", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def read_until_url(proc: subprocess.Popen, timeout: float = 20) -> list[str]:
    """Startup lines up to and including the first iSCSI URL."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"server exited early: {proc.wait()} {proc.stderr.read()}")
        lines.append(line.rstrip("\n"))
        if line.strip().startswith("iscsi://"):
            return lines
    raise AssertionError(f"no URL within {timeout} s: {lines}")


def assert_one_line_error(r: subprocess.CompletedProcess, pattern: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert re.fullmatch(pattern, lines[0]), lines[0]


def test_help(tmp_path):
    r = run("--help", cwd=tmp_path)
    assert r.returncode == 0
    assert "serve" in r.stdout and "check" in r.stdout
    r = run("serve", "--help", cwd=tmp_path)
    assert r.returncode == 0
    for flag in ("--config", "--listen", "--iqn", "--disk", "--no-track", "--chap", "--log-level"):
        assert flag in r.stdout


def test_unknown_flag(tmp_path):
    assert_one_line_error(run("serve", "--bogus", cwd=tmp_path),
                          r"scsi-target: error: unrecognized arguments: --bogus \(see .*--help\)")


def test_bad_log_level(tmp_path):
    assert_one_line_error(run("serve", "--log-level", "loud", cwd=tmp_path),
                          r"scsi-target: error: argument --log-level: invalid choice: 'loud'.*")


def test_config_and_quick_flags_refused(tmp_path):
    r = run("serve", "--config", "x.toml", "--disk", "a.img", "--no-track", cwd=tmp_path)
    assert_one_line_error(r, r"scsi-target: error: --config cannot be combined with --disk, "
                             r"--no-track; put those settings in the config file")


def test_bad_config_file(tmp_path):
    (tmp_path / "bad.toml").write_text("[[target]]\niqn = 'iqn.2026-11.org.x'\nlun = 5\n")
    r = run("serve", "--config", "bad.toml", cwd=tmp_path)
    assert_one_line_error(r, re.escape("scsi-target: error: bad.toml: target[0].lun: expected "
                                       "an array of tables ([[target.lun]]), got integer"))
    assert not (tmp_path / "var").exists()


def test_toml_syntax_error(tmp_path):
    (tmp_path / "bad.toml").write_text("target = [\n")
    r = run("--config", "bad.toml", cwd=tmp_path)
    assert_one_line_error(r, r"scsi-target: error: bad\.toml: TOML syntax error: .*")


def test_bad_listen(tmp_path):
    assert_one_line_error(run("--listen", "::1:3260", cwd=tmp_path), re.escape(
        "scsi-target: error: command line: --listen: '::1:3260': put IPv6 addresses in "
        "brackets, e.g. \"[::1]:3260\""))


def test_check_command(tmp_path):
    (tmp_path / "d.img").write_bytes(bytes(1 << 20))
    (tmp_path / "ok.toml").write_text(
        "[[target]]\niqn = 'iqn.2026-11.org.x:a'\n[[target.lun]]\nlun = 2\npath = 'd.img'\n")
    r = run("check", "ok.toml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "ok.toml: OK",
        "target iqn.2026-11.org.x:a",
        "  LUN 2: disk d.img, 1 MiB (2048 x 512-byte blocks), read-write, tracking on",
        "    iscsi://127.0.0.1:3260/iqn.2026-11.org.x:a/2",
    ]


# --------------------------------------------------- serving (fake server)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_default_serve_prints_url_and_stops_on_signal(tmp_path, sig):
    proc = start(cwd=tmp_path, fake=True)
    try:
        lines = read_until_url(proc)
        assert lines == [
            "listening on 127.0.0.1:4321",
            "target iqn.2026-11.org.pyscsi:default",
            "  LUN 0: disk var/disk0.img, 64 MiB (131072 x 512-byte blocks), read-write, "
            "tracking on",
            "    iscsi://127.0.0.1:4321/iqn.2026-11.org.pyscsi:default/0",
        ]
        img = tmp_path / "var/disk0.img"
        assert img.stat().st_size == 64 << 20
        assert img.stat().st_blocks * 512 < 1 << 20  # created sparse
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out == "fake server closed\n"
    assert "Traceback" not in err


def test_listen_failure_is_one_line(tmp_path):
    r = run("--listen", "127.0.0.1:1", "--disk", "d.img:1M", cwd=tmp_path, fake=True)
    assert_one_line_error(r, re.escape(
        "scsi-target: error: cannot listen on 127.0.0.1:1: Address already in use"))


# ---------------------------------------------------- serving (real server)


def test_serve_ephemeral_port_and_sigterm(tmp_path):
    proc = start("serve", "--listen", "127.0.0.1:0", "--disk", "d.img:4M", "--iqn",
                 "iqn.2026-11.org.pyscsi:cli", "--log-level", "warning", cwd=tmp_path)
    try:
        lines = read_until_url(proc)
        m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)", lines[0])
        assert m, lines
        port = int(m.group(1))
        assert port != 0
        assert lines[-1] == f"    iscsi://127.0.0.1:{port}/iqn.2026-11.org.pyscsi:cli/0"
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_second_server_on_same_file_refused(tmp_path):
    proc = start("--listen", "127.0.0.1:0", "--disk", "d.img:1M", cwd=tmp_path)
    try:
        read_until_url(proc)
        r = run("--listen", "127.0.0.1:0", "--disk", "d.img", cwd=tmp_path)
        assert_one_line_error(r, re.escape(
            "scsi-target: error: command line: --disk d.img: d.img is already in use by "
            "another process (locked)"))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert proc.returncode == 0


def test_port_in_use(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run("--listen", f"127.0.0.1:{port}", "--disk", "d.img:1M", cwd=tmp_path)
    assert_one_line_error(r, rf"scsi-target: error: cannot listen on 127\.0\.0\.1:{port}: .*")
    assert "in use" in r.stderr.lower()


# ------------------------------------------------------- README accuracy
def _readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)


def test_readme_in_process_example_runs():
    exec(compile(_readme_blocks()[0], "README.md[python 1]", "exec"), {})


def test_readme_server_example_runs(tmp_path):
    ns: dict = {}
    exec(compile(_readme_blocks()[1], "README.md[python 2]", "exec"), ns)
    ns["asyncio"].run(ns["main"](tmp_path))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_serve_answers_commands_on_either_event_loop(tmp_path, loop):
    """Both loops drive the same server: login, a write, the read that returns it."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    from scsi_target.initiator.sync import SyncIscsiClient
    proc = start("serve", "--listen", "127.0.0.1:0", "--disk", "d.img:4M", "--iqn",
                 "iqn.2026-11.org.pyscsi:loop", "--log-level", "debug", "--event-loop", loop,
                 cwd=tmp_path)
    try:
        url = read_until_url(proc)[-1].strip()
        with SyncIscsiClient(url) as c:
            c.write(8, bytes(range(256)) * 8)
            assert c.read(8, 4) == bytes(range(256)) * 8
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert f"event loop: {loop}" in err


def test_event_loop_uvloop_missing_is_a_usage_error(tmp_path):
    # A child where importing uvloop fails, as on a machine without it.
    code = ("import sys; sys.modules['uvloop'] = None; from scsi_target.cli import main; "
            "sys.exit(main())")
    r = subprocess.run([sys.executable, "-c", code, "serve", "--event-loop", "uvloop",
                        "--listen", "127.0.0.1:0", "--disk", "d.img:4M"], cwd=tmp_path,
                       env=env(), capture_output=True, text=True, timeout=30)
    assert_one_line_error(r, r"scsi-target: error: --event-loop uvloop: uvloop is not installed.*")
