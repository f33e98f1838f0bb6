"""The real server as a subprocess (``python -m scsi_target serve --config FILE``).

For tests that need a separate process: kill -9 / SIGTERM exit status, restart
from the backing files, the server's RSS.  The config is written from small
specs (:class:`Lun`, :class:`Target`; ``Lun(path=...)`` serves an existing
file), or the server takes ``serve``'s own flags
(``ServerProcess.from_flags(workdir, "--disk", "v.img:8M", "--backup-device")``);
``args`` adds flags to either (``--record``, ``--cow-size``...).  ``start()``
returns once the port accepts; ``kill()`` is kill -9; the object is a context
manager.  The pytest plugin's ``iscsi_server_process`` fixture is a factory of
these.
"""
from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT = 20.0


class ServerStartError(RuntimeError):
    """The server process did not come up; the message holds its output."""


# ------------------------------------------------------------------ config specs
@dataclass
class Lun:
    lun: int
    size: str | None = "16M"        # None: the file at ``path`` must exist
    options: dict = field(default_factory=dict)   # extra [[target.lun]] keys
    path: Path | str | None = None  # default: a file named for the target in the workdir


@dataclass
class Target:
    iqn: str
    luns: list[Lun]
    chap: tuple[str, str] | None = None
    initiators: list[str] | None = None
    faults: list[dict] = field(default_factory=list)   # [[target.fault]] tables
    fault_control: bool = False


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def config_toml(targets: list[Target], workdir: Path, port: int) -> str:
    lines = [f"portals = [{_toml_value(f'{HOST}:{port}')}]", ""]
    for t in targets:
        lines += ["[[target]]", f"iqn = {_toml_value(t.iqn)}"]
        if t.initiators is not None:
            lines.append(f"initiators = {_toml_value(t.initiators)}")
        if t.fault_control:
            lines.append("fault_control = true")
        if t.chap:
            lines += ["[target.chap]", f"username = {_toml_value(t.chap[0])}",
                      f"secret = {_toml_value(t.chap[1])}"]
        for lun in t.luns:
            name = re.sub(r"[^a-z0-9]+", "_", t.iqn.split(":")[-1]) + f"_lun{lun.lun}.img"
            path = Path(lun.path) if lun.path is not None else workdir / name
            opts = dict(lun.options)
            if opts.get("kind") == "backup":   # no backing file: only lun, kind, source
                lines += ["[[target.lun]]", f"lun = {lun.lun}"]
                lines += [f"{k} = {_toml_value(v)}" for k, v in opts.items()]
                continue
            lines += ["[[target.lun]]", f"lun = {lun.lun}", f"path = {_toml_value(str(path))}"]
            if opts.get("read_only"):
                # A read-only LUN serves an existing file: create it here.
                if not path.exists():
                    from scsi_target.config import parse_size
                    with open(path, "wb") as f:
                        f.truncate(parse_size(lun.size))
            elif lun.size is not None:
                lines += [f"size = {_toml_value(lun.size)}", "create = true"]
            for k, v in opts.items():
                lines.append(f"{k} = {_toml_value(v)}")
        for rule in t.faults:
            lines.append("[[target.fault]]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in rule.items()]
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------ the server
class ServerProcess:
    """The real server as a subprocess; ``start()`` returns once the port accepts."""

    def __init__(self, workdir: Path, targets: list[Target] | None, *,
                 args: tuple[str, ...] | list[str] = ()) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.targets = targets           # None: configured by ``args`` alone (serve's flags)
        self.args = [str(a) for a in args]
        self.host = HOST
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.banner: list[str] = []      # what the server printed at start (URLs, LUNs)
        self.log_path = self.workdir / "server.log"
        self.config_path = self.workdir / "target.toml"
        self.cwd = self.workdir
        # How long start() waits for the banner and the port (a server that first
        # waits for a lock, e.g. an RBD image's, may need longer).
        self.start_timeout = START_TIMEOUT

    @classmethod
    def from_flags(cls, workdir: Path, *flags) -> "ServerProcess":
        """``scsi-target serve FLAGS``, with ``--listen 127.0.0.1:PORT`` unless the flags
        have a ``--listen`` or ``--config`` of their own (the first portal is ``port``)."""
        return cls(workdir, None, args=flags)

    @property
    def iqn(self) -> str:
        if self.targets:
            return self.targets[0].iqn
        if "--iqn" in self.args:
            return self.args[self.args.index("--iqn") + 1]
        from scsi_target.config import DEFAULT_IQN
        return DEFAULT_IQN

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def url(self, lun: int = 0, iqn: str | None = None, user: str | None = None,
            secret: str | None = None) -> str:
        cred = f"{user}%{secret}@" if user is not None else ""
        return f"iscsi://{cred}{self.host}:{self.port}/{iqn or self.iqn}/{lun}"

    @property
    def portal_url(self) -> str:
        return f"iscsi://{self.host}:{self.port}"

    def start(self, port: int | None = None) -> "ServerProcess":
        """Start on ``port`` (default: the previous one, or any free port the first time)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        want = self.port if port is None else port
        if self.targets is None:
            # The flags choose the portals when they name them (or a config file does).
            named = "--listen" in self.args or "--config" in self.args
            where = [] if named else ["--listen", f"{HOST}:{want}"]
        else:
            self.config_path.write_text(config_toml(self.targets, self.workdir, want))
            where = ["--config", str(self.config_path)]
        log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scsi_target", "serve", *where, "--log-level", "warning",
             *self.args],
            cwd=self.cwd, stdout=subprocess.PIPE, stderr=log, env=env, start_new_session=True,
            bufsize=0)        # unbuffered: select() sees every line not yet read
        log.close()
        self.port = self._read_banner()
        self._wait_accepting()
        return self

    def start_when_free(self, until: float, refused: str = "already served") -> "ServerProcess":
        """Start, retrying every second while the server refuses to start with a message
        containing ``refused`` (an RBD image another, perhaps dead, client still holds),
        for up to ``until`` seconds; any other failure, or the last, is raised."""
        deadline = time.monotonic() + until
        self.start_timeout = until       # librbd may first wait for the holder's lock
        while True:
            try:
                return self.start()
            except ServerStartError as e:
                if time.monotonic() > deadline or refused not in str(e):
                    raise
            time.sleep(1)

    def _lun_count(self) -> int | None:
        """How many LUN URLs the start-up banner lists (None: not known from here)."""
        if self.targets is not None:
            return sum(len(t.luns) for t in self.targets)
        if "--config" in self.args:
            return None
        disks, tapes = self.args.count("--disk"), self.args.count("--tape")
        if not disks and not tapes:
            disks = 1                       # the embedded default disk
        return disks * (2 if "--backup-device" in self.args else 1) + tapes

    def _read_banner(self) -> int:
        """Read what the server prints once it listens (kept in ``banner``); the port."""
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout
        self.banner = []
        port, urls, want = None, 0, self._lun_count()
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    break
                self.banner.append(line.decode(errors="replace").rstrip("\n"))
                m = re.match(rb"listening on [^\s,]*:(\d+)", line)
                if m:
                    port = int(m.group(1))
                urls += line.strip().startswith(b"iscsi://")
                if port is not None and (want is None or urls >= want):
                    return port
            elif self.proc.poll() is not None:
                break
        self.stop()
        self.fail(f"server did not start: stdout {self.banner!r}\nlog:\n{self.log_tail()}")

    def _wait_accepting(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        self.fail(f"server port {self.port} never accepted connections")

    def fail(self, message: str):
        raise ServerStartError(message)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_kib(self) -> int:
        """VmRSS of the server process in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS line")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 10 s; returns the exit status."""
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if p.stdout:
            p.stdout.close()
        return p.returncode

    def kill(self) -> int | None:
        """SIGKILL (no shutdown path runs); returns the exit status."""
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            p.kill()
            p.wait(30)
        if p.stdout:
            p.stdout.close()
        return p.returncode

    def __enter__(self) -> "ServerProcess":
        if not self.alive():
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def restart(self) -> None:
        rc = self.stop()
        assert rc == 0, f"server exited with {rc} on SIGTERM:\n{self.log_tail()}"
        self.start()


