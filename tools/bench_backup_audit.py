"""Tracker self-audit of a 1 GiB volume: a sampled and a full audit, medians of rounds.

    python -m tools.bench_backup_audit [--size-mib 1024] [--rounds 3] [--dir /dev/shm]

A random volume on tmpfs, a full backup (which records the block CRC table),
scattered writes and a differential; then alternating rounds of `audit` at
1/1024 and `audit --full` (through the library, as `diffbackup audit` runs
it).  Prints the medians and what each audit checked.  A measurement, not a test.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import shutil
import statistics
import tempfile
import time

from tools.bench_backup_merge import _fill, _scatter
from tools.diffbackup import main as diffbackup
from volume.audit import audit
from volume.filestore import FileStore
from volume.tracked import TrackingStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    a = ap.parse_args()
    size = a.size_mib << 20
    d = tempfile.mkdtemp(prefix="bench-audit-", dir=a.dir)
    try:
        vol = os.path.join(d, "vol.img")
        _fill(vol, size, 2)
        with contextlib.redirect_stdout(io.StringIO()):
            t = time.perf_counter()
            assert diffbackup(["-q", "full", vol, "-o", os.path.join(d, "f.bk")]) == 0
            tf = time.perf_counter() - t
            _scatter(vol, size, 4000, 7)
            assert diffbackup(["-q", "diff", vol, "--scope", "1", "-o",
                               os.path.join(d, "d.bk")]) == 0
        print(f"volume {size} bytes in {d}; full backup (recording the CRC table) {tf:.2f} s")
        v = TrackingStore.open(FileStore(vol), vol)
        try:
            times: dict[str, list[float]] = {"sampled 1/1024": [], "full": []}
            reps = {}
            for _ in range(a.rounds):
                for name, kw in (("sampled 1/1024", {"rate": 1024}), ("full", {"full": True})):
                    t = time.perf_counter()
                    reps[name] = audit(v, **kw)
                    times[name].append(time.perf_counter() - t)
        finally:
            v.close()
        for name, ts in times.items():
            r = reps[name]
            print(f"audit {name:15} median {statistics.median(ts):.3f} s of {a.rounds} rounds "
                  f"({', '.join(f'{x:.3f}' for x in ts)}); checked {r.checked} of "
                  f"{r.candidates} blocks, mismatches {r.mismatched_blocks}")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
