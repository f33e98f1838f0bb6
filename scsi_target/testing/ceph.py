"""A throwaway single-node Ceph cluster for tests, from Debian's packages.

One monitor (msgr v1 on 127.0.0.1, a free port), one OSD on ``memstore`` (data in
RAM: nothing to clean on disk but the directory), pools of size 1, no cephx, and
optionally one RADOS Gateway serving S3 on 127.0.0.1.  Everything lives under one
directory; :meth:`CephCluster.stop` kills the daemons and leaves the logs there for
a failing test to show.

    with CephCluster(tmp_path, rgw=True) as ceph:
        ceph.create_pool("rbd", application="rbd")
        ceph.run("rbd", "create", "rbd/vol", "--size", "64M")
        ceph.s3_endpoint, ceph.s3_access_key, ceph.s3_secret_key

Needs ceph-mon, ceph-osd, ceph-common (``ceph``, ``rbd``, ``monmaptool``) and, for
``rgw=True``, radosgw.  No ceph-mgr: nothing here needs one.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

HOST = "127.0.0.1"
DAEMONS = ("ceph-mon", "ceph-osd", "monmaptool", "ceph")
RGW_DAEMON = "radosgw"
DEBIAN_PACKAGES = {"ceph-mon": "ceph-mon", "ceph-osd": "ceph-osd", "monmaptool": "ceph-base",
                   "ceph": "ceph-common", "rbd": "ceph-common", "radosgw": "radosgw",
                   "radosgw-admin": "radosgw"}
COMMAND_TIMEOUT = 60.0
START_TIMEOUT = 60.0
TRANSIENT_MON_ERROR = b"problem getting command descriptions"
TRANSIENT_RETRIES = 10


class CephError(RuntimeError):
    """A cluster step failed; the message says which and what it printed."""


def missing_programs(rgw: bool = False) -> list[str]:
    """The programs this machine lacks for a cluster (with ``rgw``: and a gateway)."""
    need = list(DAEMONS) + ["rbd"] + ([RGW_DAEMON, "radosgw-admin"] if rgw else [])
    return [p for p in need if _which(p) is None]


def require_ceph(rgw: bool = False, bindings: bool = False) -> None:
    """Skip the calling test when Ceph's programs (with ``bindings``: and its Python
    bindings) are missing here; fail it instead when CI=true, which requires them."""
    import pytest
    from .external import on_ci
    missing = missing_programs(rgw=rgw)
    if missing:
        pkgs = " ".join(sorted({DEBIAN_PACKAGES.get(p, p) for p in missing}))
        msg = f"Ceph is not installed: {', '.join(missing)} missing (Debian packages {pkgs})"
    elif bindings:
        from volume import ceph_bindings
        try:
            ceph_bindings.load("rados")
            ceph_bindings.load("rbd")
            return
        except ceph_bindings.CephUnavailable as exc:
            msg = str(exc)
    else:
        return
    if on_ci():
        pytest.fail(f"{msg}; CI=true requires it", pytrace=False)
    pytest.skip(msg)


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if os.path.exists(p)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class CephCluster:
    def __init__(self, directory: str | os.PathLike, *, rgw: bool = False,
                 osd_bytes: int = 2 << 30, s3_access_key: str = "pyscsi-test",
                 s3_secret_key: str = "pyscsi-test-secret") -> None:
        self.dir = Path(directory)
        self.rgw = rgw
        self.osd_bytes = osd_bytes
        self.fsid = str(uuid.uuid4())
        self.mon_port = free_port()
        self.rgw_port = free_port() if rgw else None
        self.s3_access_key = s3_access_key
        self.s3_secret_key = s3_secret_key
        self.conf = self.dir / "ceph.conf"
        self._pids: dict[str, Path] = {}
        self._started = False

    # ----------------------------------------------------------------- public
    @property
    def mon_host(self) -> str:
        return f"{HOST}:{self.mon_port}"

    @property
    def s3_endpoint(self) -> str:
        if self.rgw_port is None:
            raise CephError("this cluster was started without a gateway (rgw=False)")
        return f"http://{HOST}:{self.rgw_port}"

    def env(self) -> dict[str, str]:
        """Environment for a child that should find this cluster (CEPH_CONF)."""
        return {**os.environ, "CEPH_CONF": str(self.conf)}

    def run(self, *args: str, timeout: float = COMMAND_TIMEOUT, check: bool = True,
            input: bytes | None = None) -> subprocess.CompletedProcess:
        """Run a Ceph CLI (``ceph``, ``rbd``, ``rados``, ``radosgw-admin``) on this cluster."""
        prog = _which(args[0]) or args[0]
        cmd = [prog, "-c", str(self.conf), *args[1:]]
        for attempt in range(TRANSIENT_RETRIES + 1):
            try:
                res = subprocess.run(cmd, capture_output=True, timeout=timeout, input=input)
            except subprocess.TimeoutExpired:
                raise CephError(f"{' '.join(args)}: no answer in {timeout:.0f} s"
                                f"{self._log_hint()}") from None
            # A monitor still settling after start answers some commands with this
            # EPERM; the same command a moment later succeeds.
            if res.returncode == 0 or TRANSIENT_MON_ERROR not in res.stderr:
                break
            time.sleep(0.5)
        if check and res.returncode != 0:
            raise CephError(f"{' '.join(args)} failed ({res.returncode}): "
                            f"{res.stderr.decode(errors='replace').strip()[-800:]}")
        return res

    def create_pool(self, name: str, pg_num: int = 8, application: str | None = "rbd") -> None:
        self.run("ceph", "osd", "pool", "create", name, str(pg_num))
        if application:
            self.run("ceph", "osd", "pool", "application", "enable", name, application)

    def kill_daemon(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal one daemon (``mon.a``, ``osd.0``, ``client.rgw.a``)."""
        pid = self._pid(name)
        if pid:
            os.kill(pid, sig)

    # ------------------------------------------------------------- lifecycle
    def start(self) -> "CephCluster":
        missing = missing_programs(self.rgw)
        if missing:
            pkgs = sorted({DEBIAN_PACKAGES.get(p, p) for p in missing})
            raise CephError(f"missing {', '.join(missing)} (Debian packages {' '.join(pkgs)})")
        for sub in ("run", "log", "mon/a", "osd/0", "rgw"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self._conf_text())
        self._started = True
        try:
            self._start_mon()
            self._start_osd()
            if self.rgw:
                self._start_rgw()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        for name in ("client.rgw.a", "osd.0", "mon.a"):
            pid = self._pid(name)
            if not pid:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)

    def __enter__(self) -> "CephCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for log in sorted((self.dir / "log").glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(out)

    # --------------------------------------------------------------- internals
    def _conf_text(self) -> str:
        d = self.dir
        rgw = ""
        if self.rgw:
            rgw = (f"[client.rgw.a]\n"
                   f"rgw frontends = beast endpoint={HOST}:{self.rgw_port}\n"
                   f"rgw data = {d}/rgw\n"
                   f"rgw dns name = {HOST}\n")
        return (
            "[global]\n"
            f"fsid = {self.fsid}\n"
            f"mon host = v1:{self.mon_host}\n"
            "auth cluster required = none\n"
            "auth service required = none\n"
            "auth client required = none\n"
            "auth allow insecure global id reclaim = true\n"
            "mon allow pool size one = true\n"
            "mon allow pool delete = true\n"
            "mon warn on pool no redundancy = false\n"
            "osd pool default size = 1\n"
            "osd pool default min size = 1\n"
            "osd pool default pg num = 8\n"
            "osd pool default pgp num = 8\n"
            "osd crush chooseleaf type = 0\n"
            "ms bind ipv4 = true\n"
            "ms bind ipv6 = false\n"
            f"public addr = {HOST}\n"
            f"run dir = {d}/run\n"
            f"log file = {d}/log/$name.log\n"
            f"admin socket = {d}/run/$name.asok\n"
            f"pid file = {d}/run/$name.pid\n"
            f"keyring = {d}/keyring\n"
            "[mon.a]\n"
            f"mon data = {d}/mon/a\n"
            "[osd.0]\n"
            f"osd data = {d}/osd/0\n"
            "osd objectstore = memstore\n"
            # The OSD places itself in the CRUSH map by a monitor command at start,
            # which can race the monitor's first map ("wrong fsid"); we place it.
            "osd crush update on start = false\n"
            "osd class update on start = false\n"
            f"memstore device bytes = {self.osd_bytes}\n"
            + rgw)

    def _daemon(self, *args: str) -> None:
        """Run a daemon binary that forks into the background (its parent returns)."""
        prog = _which(args[0]) or args[0]
        res = subprocess.run([prog, "-c", str(self.conf), *args[1:]], capture_output=True,
                             timeout=COMMAND_TIMEOUT)
        if res.returncode != 0:
            raise CephError(f"{' '.join(args)} failed ({res.returncode}): "
                            f"{res.stderr.decode(errors='replace').strip()[-800:]}"
                            f"{self._log_hint()}")

    def _start_mon(self) -> None:
        monmap = self.dir / "monmap"
        res = subprocess.run([_which("monmaptool"), "--create", "--fsid", self.fsid, "--addv",
                              "a", f"[v1:{self.mon_host}]", str(monmap)],
                             capture_output=True, timeout=COMMAND_TIMEOUT)
        if res.returncode != 0:
            raise CephError(f"monmaptool failed: {res.stderr.decode(errors='replace').strip()}")
        self._daemon("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(monmap))
        self._daemon("ceph-mon", "-i", "a")
        self._wait(lambda: self.run("ceph", "mon", "stat", timeout=10, check=False).returncode == 0,
                   "the monitor to answer")

    def _start_osd(self) -> None:
        osd_uuid = str(uuid.uuid4())
        # The OSD's uuid must be the one registered, or the monitor ignores its boot.
        osd_id = self.run("ceph", "osd", "new", osd_uuid).stdout.decode().strip()
        if osd_id != "0":
            raise CephError(f"ceph osd new gave id {osd_id!r}, expected 0")
        self._daemon("ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", osd_uuid)
        self.run("ceph", "osd", "crush", "add", "osd.0", "1.0", "root=default", "host=localhost")
        self._daemon("ceph-osd", "-i", "0")

        def up() -> bool:
            res = self.run("ceph", "osd", "stat", "--format", "json", timeout=10, check=False)
            return res.returncode == 0 and b'"num_up_osds":1' in res.stdout.replace(b" ", b"")
        self._wait(up, "the OSD to be up")

    def _start_rgw(self) -> None:
        self._daemon(RGW_DAEMON, "-n", "client.rgw.a")

        def answers() -> bool:
            try:
                with socket.create_connection((HOST, self.rgw_port), timeout=1):
                    return True
            except OSError:
                return False
        self._wait(answers, "the RADOS Gateway to listen")
        self.run("radosgw-admin", "user", "create", "--uid=pyscsi-test",
                 "--display-name=pyscsi test", f"--access-key={self.s3_access_key}",
                 f"--secret-key={self.s3_secret_key}")

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.2)
        raise CephError(f"timed out after {START_TIMEOUT:.0f} s waiting for {what}"
                        f"{self._log_hint()}")

    def _pid(self, name: str) -> int | None:
        try:
            return int((self.dir / "run" / f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def _log_hint(self) -> str:
        return f" (logs in {self.dir / 'log'})"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours still answers kill 0; the daemons are not our children
    # (they forked away), so a live pid here is a live daemon.
    return True
