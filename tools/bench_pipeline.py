"""Python cost per command of the target's command path, without sockets or event loop.

Feeds batches of encoded 4 KiB READ(10) or WRITE(10) command PDUs (immediate
data for writes) into one logged-in :class:`TargetConnection` over a tracked
FileStore on /dev/shm, takes the output and releases the read buffers the way
the socket driver does, and prints the CPU µs per command (process time, the
median of ``--rounds``).  What the real server adds on top is the event loop
and the socket system calls (``tools/bench_conn.py`` measures all of it).

    python tools/bench_pipeline.py [--op read|write|both] [--batch 32] [--count 200000]
                                   [--rounds 5] [--profile] [--no-track]

``--batch 1`` models queue depth 1 (one command per receive), 32 a full queue.
``--profile`` runs one round under cProfile and prints the top functions.
"""
from __future__ import annotations

import argparse
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scsi_target.config import LunSpec, build_lu  # noqa: E402
from scsi_target.protocol import pdu as P  # noqa: E402
from scsi_target.protocol.framing import encode_pdu  # noqa: E402
from scsi_target.protocol.params import SessionParams  # noqa: E402
from scsi_target.scsi.lun import LunMap  # noqa: E402
from scsi_target.target import connection as CONN  # noqa: E402
from scsi_target.target.registry import Portal, TargetDef, TargetRegistry  # noqa: E402
from scsi_target.target.session import Session, SessionTable  # noqa: E402

IQN = "iqn.2026-11.org.pyscsi:pipeline"
BLOCKS = 8            # 4 KiB of 512-byte blocks
IMAGE = 64 << 20


def connection(image: Path, track: bool = True) -> CONN.TargetConnection:
    luns = LunMap(IQN)
    luns.add(0, build_lu(LunSpec(lun=0, path=image, size=IMAGE, create=True, track=track), IQN))
    reg = TargetRegistry()
    reg.add(TargetDef(IQN, luns))
    sessions = SessionTable()
    c = CONN.TargetConnection(reg, sessions, Portal())
    # Login skipped: these are the parameters qemu and libiscsi negotiate.
    c.session = Session(tsih=1, initiator_name="iqn.2026-11.test:pipeline", isid=bytes(6),
                        target=reg.get(IQN), discovery=False, exp_cmdsn=0)
    c.session.connection = c
    sessions.add(c.session)
    c.start_full_feature(SessionParams(max_recv_data_segment_length=256 << 10,
                                       max_xmit_data_segment_length=256 << 10,
                                       max_burst_length=256 << 10, first_burst_length=64 << 10,
                                       initial_r2t=False, immediate_data=True))
    return c


def command_bytes(op: str, itt: int, cmdsn: int, lba: int) -> bytes:
    write = op == "write"
    cdb = struct.pack(">BBIBHB", 0x2A if write else 0x28, 0, lba, 0, BLOCKS, 0) + bytes(6)
    pdu = P.ScsiCommand(read=not write, write=write, final=True, itt=itt, edtl=BLOCKS * 512,
                        cmdsn=cmdsn, expstatsn=0, lun=0, cdb=cdb,
                        data=bytes(BLOCKS * 512) if write else b"")
    return b"".join(bytes(b) for b in encode_pdu(pdu))


def run(c: CONN.TargetConnection, op: str, count: int, batch: int, start_sn: int) -> int:
    """Send ``count`` commands in receives of ``batch``; returns the next CmdSN."""
    nblocks = IMAGE // 512
    sn = start_sn
    ops = ("read", "write") if op == "both" else (op,)
    # Encode every batch first: the initiator's work is not ours to measure.
    batches = []
    for i in range(0, count, batch):
        chunk = b"".join(command_bytes(ops[(sn + k) % len(ops)], (sn + k) & 0xFFFF, sn + k,
                                       ((sn + k) * 8 * 7919) % (nblocks - BLOCKS))
                         for k in range(min(batch, count - i)))
        sn += min(batch, count - i)
        batches.append(chunk)
    t0 = time.process_time()
    for chunk in batches:
        c.receive_data(memoryview(chunk))
        for item in c.take_output():
            if type(item) is CONN.AfterSend:
                item.callback()
    return sn, time.process_time() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--op", choices=("read", "write", "both"), default="both")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--count", type=int, default=100000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--no-track", dest="track", action="store_false",
                    help="serve the LUN without the difference tracker")
    args = ap.parse_args(argv)
    ops = ("read", "write") if args.op == "both" else (args.op,)
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-", dir="/dev/shm") as tmp:
        c = connection(Path(tmp) / "lun.img", args.track)
        sn, _ = run(c, "read", 64, 1, 0)   # the power-on unit attention, warm-up
        if args.profile:
            import cProfile
            import pstats
            for op in ops:
                prof = cProfile.Profile()
                prof.enable()
                sn, _ = run(c, op, args.count, args.batch, sn)
                prof.disable()
                print(f"--- {op}, batch {args.batch}")
                pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            return 0
        for op in ops:
            per = []
            for _ in range(args.rounds):
                sn, secs = run(c, op, args.count, args.batch, sn)
                per.append(secs / args.count * 1e6)
            print(f"{op:5} batch {args.batch:3}: {statistics.median(per):5.2f} µs/command "
                  f"(min {min(per):.2f} max {max(per):.2f}, {args.rounds} rounds of {args.count})")
        c.connection_lost()
        c.registry.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
