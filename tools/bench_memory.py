"""Memory attacks on a running target, with the server's RSS growth they cause (issue 12).

* ``writes``: WRITE(16) PDUs with a large expected length and no data (the
  F bit set: nothing unsolicited follows); optionally the data of the first
  R2T each write gets, so admitted writes really take their buffers.
* ``reads``: pipelined READ(16)s sent in one burst by a peer that never reads
  its socket.

``tools/bench_memory.py [--tree DIR] [--attack writes|reads]`` serves a
sparse disk with ``python -m scsi_target serve`` from ``DIR`` (default this
tree, so an old checkout can be compared) and prints the RSS growth of the
server process.  The test suite reuses :class:`RawInitiator` and the attacks.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scsi_target.protocol import params as K  # noqa: E402
from scsi_target.protocol import pdu as P  # noqa: E402
from scsi_target.protocol.framing import PduReader, encode_pdu  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
IQN = "iqn.2026-11.org.pyscsi:memory"
MiB = 1 << 20


def rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def settle(pid: int, seconds: float = 1.0) -> int:
    """RSS after at least ``seconds``, once unchanged for half a second (at most 10 s)."""
    time.sleep(seconds)
    last, deadline = rss(pid), time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = rss(pid)
        if now == last:
            break
        last = now
    return last


class RawInitiator:
    """Just enough of an initiator to log in and send hand-made PDUs."""

    def __init__(self, host: str, port: int, iqn: str = IQN, isid: int = 1,
                 max_burst: int = 1 << 20) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.reader = PduReader(max_data=1 << 24)
        self.cmdsn = 0
        self.itt = 0
        text = K.encode_text([
            ("InitiatorName", f"iqn.2026-11.org.pyscsi:attacker{isid}"), ("TargetName", iqn),
            ("SessionType", "Normal"), ("HeaderDigest", "None"), ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", "262144"), ("InitialR2T", "Yes"),
            ("ImmediateData", "Yes"), ("MaxBurstLength", str(max_burst)),
            ("FirstBurstLength", "65536"), ("MaxOutstandingR2T", "1")])
        self.send(P.LoginRequest(immediate=True, transit=True, csg=1, nsg=3,
                                 isid=(0x80 << 40 | isid).to_bytes(6, "big"), itt=0, cmdsn=0,
                                 data=text))
        (resp,) = self.receive(1)
        if not isinstance(resp, P.LoginResponse) or resp.status_class != 0:
            raise RuntimeError(f"login refused: {resp}")
        self.expstatsn = resp.statsn + 1
        keys = dict(K.decode_text(bytes(resp.data)))
        self.max_xmit = int(keys.get("MaxRecvDataSegmentLength", 8192))
        self.send(self.command(bytes(16)))   # takes the power-on unit attention
        self.receive(1)

    def send(self, *pdus: P.Pdu) -> None:
        self.sock.sendall(b"".join(bytes(b) for p in pdus for b in encode_pdu(p)))

    def receive(self, count: int, timeout: float = 10) -> list:
        out: list = []
        self.sock.settimeout(timeout)
        while len(out) < count:
            while (p := self.reader.next_pdu()) is not None:
                out.append(p)
                if len(out) == count:
                    return out
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("target closed the connection")
            self.reader.feed(chunk)
        return out

    def command(self, cdb: bytes, *, read: int = 0, write: int = 0, **kw) -> P.ScsiCommand:
        self.itt += 1
        pdu = P.ScsiCommand(read=bool(read), write=bool(write), itt=self.itt,
                            edtl=read or write, cmdsn=self.cmdsn, cdb=cdb, **kw)
        self.cmdsn += 1
        return pdu

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def write16(lba: int, nbytes: int, block: int = 512) -> bytes:
    return struct.pack(">BBQIBB", 0x8A, 0, lba, nbytes // block, 0, 0)


def read16(lba: int, nbytes: int, block: int = 512) -> bytes:
    return struct.pack(">BBQIBB", 0x88, 0, lba, nbytes // block, 0, 0)


def attack_writes(ini: RawInitiator, count: int = 6, edtl: int = 256 * MiB,
                  answer_first_r2t: bool = False, wait: float = 1.0) -> list[P.R2T]:
    """``count`` writes of ``edtl`` bytes without data.

    With ``answer_first_r2t`` the data of the first R2T each write gets is
    sent (so its buffer is really taken), and the R2Ts seen in ``wait``
    seconds of quiet are returned.
    """
    ini.send(*(ini.command(write16(0, edtl), write=edtl) for _ in range(count)))
    return answer_first_r2ts(ini, wait) if answer_first_r2t else []


def answer_first_r2ts(ini: RawInitiator, wait: float = 1.0) -> list[P.R2T]:
    r2ts: list[P.R2T] = []
    answered: set[int] = set()
    with contextlib.suppress(socket.timeout, TimeoutError):
        while True:
            (p,) = ini.receive(1, timeout=wait)
            if isinstance(p, P.R2T):
                r2ts.append(p)
                if p.itt not in answered:
                    answered.add(p.itt)
                    send_burst(ini, p, os.urandom(p.length))
    return r2ts


def send_burst(ini: RawInitiator, r2t: P.R2T, data) -> None:
    """The Data-Out PDUs answering ``r2t`` (``data`` is its range), within the target's MRDSL."""
    seg = ini.max_xmit
    n = len(data)
    ini.send(*(P.DataOut(final=off + seg >= n, itt=r2t.itt, ttt=r2t.ttt, datasn=i,
                         offset=r2t.offset + off, data=data[off:off + seg])
               for i, off in enumerate(range(0, n, seg))))


def write(ini: RawInitiator, lba: int, data: bytes) -> int:
    """WRITE(16) of ``data`` answering every R2T; the status."""
    ini.send(ini.command(write16(lba, len(data)), write=len(data)))
    while True:
        (p,) = ini.receive(1)
        if isinstance(p, P.R2T):
            send_burst(ini, p, data[p.offset:p.offset + p.length])
        else:
            return p.status


def attack_reads(ini: RawInitiator, count: int = 24, size: int = 32 * MiB) -> None:
    """``count`` reads of ``size`` bytes in one burst; the socket is never read again."""
    ini.send(*(ini.command(read16(0, size), read=size) for _ in range(count)))


@contextlib.contextmanager
def serve(tree: Path, disk: Path, size: str = "512M", extra: tuple[str, ...] = ()):
    """``python -m scsi_target serve`` from ``tree`` (``extra``: more serve flags);
    yields (process, port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.Popen([sys.executable, "-m", "scsi_target", "serve", "--listen",
                             f"127.0.0.1:{port}", "--iqn", IQN, "--disk", f"{disk}:{size}",
                             "--no-track", "--log-level", "warning", *extra],
                            cwd=tree, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.1)
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(tree: Path, attack: str) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        with serve(tree, Path(tmp) / "disk.img") as (proc, port):
            ini = RawInitiator("127.0.0.1", port)
            try:
                before = settle(proc.pid)
                if attack == "writes":
                    attack_writes(ini)
                else:
                    attack_reads(ini)
                after = settle(proc.pid, 2.0)
            finally:
                ini.close()
    return after - before


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", action="append", type=Path,
                    help="source tree to serve from (repeat to compare; default: this one)")
    ap.add_argument("--attack", action="append", choices=("writes", "reads"))
    args = ap.parse_args(argv)
    for attack in args.attack or ["writes", "reads"]:
        for tree in args.tree or [REPO]:
            growth = measure(tree.resolve(), attack)
            print(f"{attack:6} {str(tree):30} RSS growth {growth / MiB:8.1f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
