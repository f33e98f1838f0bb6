"""Backup throughput: `diffbackup full` of a served disk to a stream file, to a tape LUN of
the same target through our initiator, and target-side (--target-side: EXTENDED COPY,
the stream never crosses the network); rotating order, medians.

    python -m tools.bench_tape_backup [--mib 64] [--rounds 3] [--record 262144]

Both paths read the stream from the backup device over iSCSI; the tape path then
writes it back over iSCSI as WRITE(6) records, so the ratio says what the trip to
tape costs on top of the backup itself.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--record", type=int, default=256 << 10)
    a = ap.parse_args()
    from scsi_target.testing.process import ServerProcess
    from tape import TapeImage
    tmp = Path(tempfile.mkdtemp(prefix="bench-tape-backup-"))
    vol = tmp / "vol.img"
    with open(vol, "wb") as f:
        for _ in range(a.mib):
            f.write(os.urandom(1 << 20))
    cart = tmp / "cart.img"
    TapeImage.create(cart, (a.rounds * 3 * a.mib + 256) << 20).close()
    res: dict[str, list[float]] = {"file": [], "tape": [], "target": []}
    with ServerProcess.from_flags(tmp, "--disk", str(vol), "--backup-device",
                                  "--tape", str(cart)) as srv:
        base = [sys.executable, "-m", "tools.diffbackup", "-q", "full", srv.url(0)]
        for k in range(a.rounds):
            kinds = ["file", "tape", "target"]
            for kind in kinds[k % 3:] + kinds[:k % 3]:
                dest = ["-o", str(tmp / f"s{k}.stream")] if kind == "file" else \
                    ["--tape", srv.url(2), "--record-size", str(a.record)] + \
                    (["--target-side"] if kind == "target" else [])
                t0 = time.perf_counter()
                subprocess.run(base + dest, cwd=REPO, check=True,
                               capture_output=True)
                res[kind].append(a.mib * 1.048576 / (time.perf_counter() - t0))
                if kind == "file":
                    os.unlink(tmp / f"s{k}.stream")
    med = {k: statistics.median(v) for k, v in res.items()}
    for k, v in med.items():
        print(f"full backup of {a.mib} MiB, {k:6s} {v:7.1f} MB/s  (median of {a.rounds})")
    print(f"tape/file {med['tape'] / med['file']:.2f}  target-side/tape "
          f"{med['target'] / med['tape']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
