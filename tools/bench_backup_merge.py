"""Synthetic full of a 1 GiB chain: bytes, time, and the byte comparison of the two restores.

    python -m tools.bench_backup_merge [--size-mib 1024] [--writes 4000] [--dir /dev/shm]

A random volume on tmpfs, its full backup, 5 differentials (scope 1) each after
WRITES scattered 4 KiB writes through the tracker; then `diffbackup merge` of the
chain, a restore of the chain and a restore of the synthetic full onto new
volumes, and a byte comparison of both with each other and the source.  Prints one
line per step (seconds, bytes).  A measurement, not a test.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import shutil
import tempfile
import time

from tools.diffbackup import main as diffbackup
from volume import durability
from volume.filestore import FileStore
from volume.tracked import TrackingStore

CHUNK = 8 << 20


def _fill(path: str, size: int, seed: int) -> None:
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        for off in range(0, size, CHUNK):
            f.write(rnd.randbytes(min(CHUNK, size - off)))


def _scatter(path: str, size: int, writes: int, seed: int) -> None:
    rnd = random.Random(seed)
    vol = TrackingStore.open(FileStore(path), path)
    try:
        for _ in range(writes):
            vol.write(rnd.randrange(size // 4096) * 4096, rnd.randbytes(4096))
        durability.barrier()
    finally:
        vol.close()


def _same(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(CHUNK), fb.read(CHUNK)
            if x != y:
                return False
            if not x:
                return True


def _timed(label: str, *argv: str) -> float:
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):      # its tables, not our numbers
        rc = diffbackup(["-q", *argv])
    dt = time.perf_counter() - t
    if rc != 0:
        raise SystemExit(f"{label}: diffbackup {' '.join(argv)} exited {rc}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--writes", type=int, default=4000, help="4 KiB writes per differential")
    ap.add_argument("--dir", default="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    a = ap.parse_args()
    size = a.size_mib << 20
    d = tempfile.mkdtemp(prefix="bench-merge-", dir=a.dir)
    try:
        vol = os.path.join(d, "vol.img")
        _fill(vol, size, 1)
        files = [os.path.join(d, "full.bk")]
        print(f"volume {size} bytes, {a.writes} scattered 4 KiB writes per differential, in {d}")
        t = _timed("full", "full", vol, "-o", files[0])
        print(f"full backup      {t:7.2f} s  {os.path.getsize(files[0]):>12} bytes")
        for i in range(1, 6):
            _scatter(vol, size, a.writes, 100 + i)
            files.append(os.path.join(d, f"d{i}.bk"))
            t = _timed("diff", "diff", vol, "--scope", "1", "-o", files[-1])
            print(f"differential {i}   {t:7.2f} s  {os.path.getsize(files[-1]):>12} bytes")
        synth = os.path.join(d, "synth.bk")
        t = _timed("merge", "merge", *files, "-o", synth)
        inb = sum(os.path.getsize(f) for f in files)
        print(f"merge (6 streams, {inb} bytes in) {t:7.2f} s  {os.path.getsize(synth):>12} "
              f"bytes out  ({inb / t / 1e6:.0f} MB/s of input)")
        a_img, b_img = os.path.join(d, "chain.img"), os.path.join(d, "synth.img")
        t = _timed("restore chain", "restore", a_img, *files)
        print(f"restore chain    {t:7.2f} s")
        t = _timed("restore synthetic", "restore", b_img, synth)
        print(f"restore synthetic full {t:7.2f} s")
        same = _same(a_img, b_img)
        src = _same(a_img, vol)
        print(f"restores byte-identical: {same}; equal to the source volume: {src}")
        if not (same and src):
            raise SystemExit(1)
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
