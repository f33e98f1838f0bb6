"""Targets the initiator tests run against, behind one small interface.

A *factory* starts one target implementation and creates targets on it:

    factory.new_target(chap=("user", "secret"), mutual=("tuser", "tsecret"),
                       size=64 << 20, params={"InitialR2T": "No"}) -> TargetInfo
    factory.close()

``tgt`` runs the real tgtd (C) as a subprocess with its own portal and
control port; ``ours`` serves scsi_target.testing targets (ThreadedServer) in a thread
with its own event loop.  ``params`` are target-side operational settings
(tgtadm --name/--value); a factory that cannot apply them per target ignores
them, so tests set what they need to check on the initiator side (the
initiator's proposal decides InitialR2T/ImmediateData/digests when the target
accepts both values, which both implementations do by default or here).
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from scsi_target.testing.external import require_root, require_tool  # one rule for every external tool


@dataclass(frozen=True)
class TargetInfo:
    host: str
    port: int
    iqn: str
    lun: int
    size: int
    chap: tuple[str, str] | None = None
    mutual: tuple[str, str] | None = None

    def url(self, *, user: str | None = None, secret: str | None = None,
            target_user: str | None = None, target_secret: str | None = None,
            lun: int | None = None, **args: str) -> str:
        cred = f"{user}%{secret}@" if user else ""
        query = dict(args)
        if target_user:
            query["target_user"] = target_user
            query["target_password"] = target_secret or ""
        q = "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
        return f"iscsi://{cred}{self.host}:{self.port}/{self.iqn}/{self.lun if lun is None else lun}{q}"

    @property
    def portal_url(self) -> str:
        return f"iscsi://{self.host}:{self.port}"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process dies, however it dies
    (a pytest killed with -9 or os._exit never runs fixture finalizers)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 9)    # PR_SET_PDEATHSIG, SIGKILL
    except OSError:
        pass




class TgtFactory:
    name = "tgt"
    # Our own range, away from 3260 and from other test suites' ports.
    PORTS = range(3270, 3370)

    def __init__(self, tmp: Path) -> None:
        self.tgtd = require_tool("tgtd")
        self.tgtadm = require_tool("tgtadm")
        require_root("tgtd")        # CI runs as root: there a missing root is a failure
        self.tmp = tmp
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self._tid = 0
        self._log = open(tmp / "tgtd.log", "wb")
        start = 3270 + (os.getpid() % 50)
        # A stale /var/run/tgtd/socket.N left by a killed tgtd does not stop a new one.
        candidates = [p for p in list(range(start, self.PORTS.stop)) + list(self.PORTS)
                      if _port_free(p)]
        for port in candidates[:5]:
            if self._start(port):
                return
        self.close()
        pytest.fail(f"tgtd did not start; log in {tmp / 'tgtd.log'}")

    def _start(self, port: int) -> bool:
        # --control-port keeps our management socket apart from any system tgtd.
        self.proc = subprocess.Popen(
            [self.tgtd, "-f", "-C", str(port), "--iscsi", f"portal=127.0.0.1:{port}"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_parent)
        self.port = port
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            r = subprocess.run([self.tgtadm, "-C", str(port), "--mode", "sys", "--op", "show"],
                               capture_output=True)
            if r.returncode == 0 and self._listening(port):
                return True
            time.sleep(0.1)
        self._kill()
        return False

    @staticmethod
    def _listening(port: int) -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    def adm(self, *args: str) -> None:
        r = subprocess.run([self.tgtadm, "-C", str(self.port), "--lld", "iscsi", *args],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"tgtadm {' '.join(args)}: {r.stdout}{r.stderr}")

    def new_target(self, *, chap=None, mutual=None, size: int = 64 << 20,
                   params: dict[str, str] | None = None) -> TargetInfo:
        self._tid += 1
        tid = str(self._tid)
        iqn = f"iqn.2026-01.org.scsi-target.test:tgt{tid}"
        disk = self.tmp / f"disk{tid}.img"
        with open(disk, "wb") as f:
            f.truncate(size)
        self.adm("--mode", "target", "--op", "new", "--tid", tid, "--targetname", iqn)
        self.adm("--mode", "logicalunit", "--op", "new", "--tid", tid, "--lun", "1",
                 "--backing-store", str(disk))
        self.adm("--mode", "target", "--op", "bind", "--tid", tid, "--initiator-address", "ALL")
        # Let the initiator's proposal decide these (OR/AND functions, list order).
        settings = {"InitialR2T": "No", "ImmediateData": "Yes",
                    "HeaderDigest": "CRC32C,None", "DataDigest": "CRC32C,None"}
        settings.update(params or {})
        for k, v in settings.items():
            self.adm("--mode", "target", "--op", "update", "--tid", tid, "--name", k, "--value", v)
        if chap:
            self.adm("--mode", "account", "--op", "new", "--user", chap[0], "--password", chap[1])
            self.adm("--mode", "account", "--op", "bind", "--tid", tid, "--user", chap[0])
        if mutual:
            self.adm("--mode", "account", "--op", "new", "--user", mutual[0],
                     "--password", mutual[1])
            self.adm("--mode", "account", "--op", "bind", "--tid", tid, "--user", mutual[0],
                     "--outgoing")
        return TargetInfo("127.0.0.1", self.port, iqn, 1, size, chap, mutual)

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        # tgtd -f does not always exit promptly on SIGTERM; it holds no state worth a
        # clean shutdown here (the backing files are ours), so SIGKILL follows soon.
        proc.terminate()
        try:
            proc.wait(1)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def close(self) -> None:
        self._kill()
        self._log.close()


class OursFactory:
    """Our own targets served by the testing library (scsi_target.testing) in a thread."""
    name = "ours"

    def __init__(self, tmp: Path) -> None:
        from scsi_target.testing import ThreadedServer

        self.tmp = tmp
        self.served = ThreadedServer(None).start()     # targets come with new_target
        self.server = self.served.server
        self.host, self.port = self.served.host, self.served.port
        self._targets = []
        self._n = 0

    def new_target(self, *, chap=None, mutual=None, size: int = 64 << 20,
                   params: dict[str, str] | None = None) -> TargetInfo:
        from scsi_target.testing import InProcessTarget

        if params and "nop_interval" in params:
            # Our pings are a server-wide setting; tgt's nop_count maps to a timeout.
            interval = float(params["nop_interval"])
            self.server.nop_interval = interval
            self.server.nop_timeout = interval * int(params.get("nop_count", "1"))
        self._n += 1
        iqn = f"iqn.2026-01.org.scsi-target.test:ours{self._n}"
        t = InProcessTarget(iqn, chap=chap, mutual_chap=mutual, power_on_ua=True,
                            fault_control=False)
        t.add_lu("disk", 0, size=size, backing=str(self.tmp / f"ours{self._n}.img"),
                 track=True)
        self._targets.append(t)
        self.served.add(t)
        return TargetInfo(self.host, self.port, iqn, 0, size, chap, mutual)

    def close(self) -> None:
        try:
            self.served.stop()
        finally:
            for t in self._targets:
                t.close()


FACTORIES = {"tgt": TgtFactory, "ours": OursFactory}


def selected() -> list[str]:
    """Implementations to test: CLIENT_TEST_TARGETS="tgt,ours" (default: both)."""
    names = [n.strip() for n in os.environ.get("CLIENT_TEST_TARGETS", "tgt,ours").split(",") if n.strip()]
    unknown = set(names) - set(FACTORIES)
    if unknown:
        raise ValueError(f"unknown CLIENT_TEST_TARGETS {sorted(unknown)}")
    return names
