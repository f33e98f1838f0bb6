"""Target-side CPU of serving a backup stream, in process (not a test).

    python -m tools.bench_backup_encode [--size-mib 512] [--writes 32768] [--rounds 3]
                                        [--dir /dev/shm]

A random volume in a FileStore (``--dir``: tmpfs by default, where reads are
mapped), tracked by a TrackingStore; each round takes a full backup, makes
``--writes`` scattered 4 KiB writes, then takes a differential of scope 1.
Streams are read the way the backup pseudo device serves a 4 MiB READ
(``BackupReader.lend``: point-in-time cut -> block CRC recorder -> encoder ->
store) and dropped.  Printed: CPU seconds (``time.process_time``; the machine
may be shared, so CPU, not wall clock) per stream, per MiB of a full stream,
and per record of the differential, with the per-record cost beyond its
bytes (the differential's time less its bytes at the full stream's rate).
Start two trees alternately to compare them (``PYTHONPATH=TREE``).
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time

from volume.filestore import FileStore
from volume.session import begin_backup
from volume.tracked import TrackingStore

MiB = 1 << 20
READ = 4 * MiB


def _stream(vol: TrackingStore, full: bool) -> tuple[float, int, int]:
    """(CPU seconds, records, stream bytes) of one stream read to its end."""
    r = begin_backup(vol, full=full, scope=None if full else 1)
    off = 0
    t = time.process_time()
    while not r.complete:
        lent = r.lend(off, READ)
        if lent is None:
            r.readinto(off, memoryview(bytearray(READ)))
        else:
            lent[1]()
        off += READ
    return time.process_time() - t, r.enc.records, r.total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--writes", type=int, default=32768)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    a = ap.parse_args()
    size = a.size_mib * MiB
    d = tempfile.mkdtemp(prefix="bench-encode-", dir=a.dir)
    rnd = random.Random(1)
    try:
        img = os.path.join(d, "vol.img")
        with open(img, "wb") as f:
            for _ in range(0, size, 8 * MiB):
                f.write(rnd.randbytes(min(8 * MiB, size)))
        vol = TrackingStore.open(FileStore(img), img, sync=False)
        try:
            print(f"{a.size_mib} MiB volume in {a.dir}, mapped reads: {getattr(vol.inner, 'mmap_reads', False)}")
            _stream(vol, True)                     # warm: page tables, buffers
            fulls, diffs = [], []
            for i in range(a.rounds):
                tf, _recs, fbytes = _stream(vol, True)
                for b in sorted(rnd.sample(range(size // 4096), a.writes)):
                    vol.write(b * 4096, rnd.randbytes(4096))
                td, recs, dbytes = _stream(vol, False)
                fulls.append(tf)
                diffs.append((td, recs, dbytes))
                print(f"round {i}: full {tf:.3f} s ({tf / (fbytes / MiB) * 1e6:.0f} us/MiB), "
                      f"differential {td:.3f} s, {recs} records, {dbytes / MiB:.1f} MiB "
                      f"({td / recs * 1e6:.2f} us/record)", flush=True)
            tf = min(fulls)
            td, recs, dbytes = min(diffs)
            per_mib = tf / (fbytes / MiB)
            beyond = (td - per_mib * dbytes / MiB) / recs
            print(f"best: full {per_mib * 1e6:.0f} us/MiB; differential {td:.3f} s = "
                  f"{td / recs * 1e6:.2f} us/record, {beyond * 1e6:.2f} us/record beyond its bytes")
        finally:
            vol.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
