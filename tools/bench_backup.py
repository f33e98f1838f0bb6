"""Benchmark of the differential backup engine (not a test).

* stream generation (full backup of a tmpfs FileStore to a tmpfs stream file)
  and restore (stream file to a fresh tmpfs volume), in process;
* the generation map of a 1 TiB volume at 4 KiB granularity (268 M entries):
  sparse marking, changed-extent scan, counts, fold (begin_differential);
* mark() cost for already-marked and newly-marked blocks.

Usage: ``python -m tools.bench_backup [--size-mib 1024] [--dir /dev/shm] [--skip-tib]``
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import tempfile
import time

from volume.backup import full_backup, restore, differential_backup
from volume.filestore import FileStore
from volume.genmap import GenerationMap, extents


def _fill(store: FileStore, size: int) -> None:
    rnd = random.Random(1)
    block = bytes(rnd.randrange(256) for _ in range(1 << 16)) * 16       # 1 MiB, incompressible-ish
    for off in range(0, size, len(block)):
        store.write(off, block[:min(len(block), size - off)])


def _prealloc(path: str, size: int) -> None:
    """Touch every page: on this VM first-touch tmpfs page allocation alone caps a
    copy at ~0.3 GB/s, which measures the kernel, not the engine."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    chunk = bytes(8 << 20)
    for off in range(0, size, len(chunk)):
        os.pwrite(fd, chunk[:min(len(chunk), size - off)], off)
    os.close(fd)


def bench_stream(d: str, size: int, prealloc: bool) -> None:
    label = "preallocated" if prealloc else "fresh tmpfs files"
    print(f"-- {size >> 20} MiB volume, {label}")
    src = FileStore(os.path.join(d, "vol.img"), size=size, create=True)
    _fill(src, size)
    m = GenerationMap.create(os.path.join(d, "vol.genmap"), volume_size=size, volume_id=b"bench",
                             overwrite=True)
    out = os.path.join(d, "full.bin")
    if os.path.exists(out):
        os.unlink(out)
    if prealloc:
        _prealloc(out, size + (2 << 20))
        target = open(out, "r+b", buffering=0)
    else:
        target = out
    t = time.perf_counter()
    r = full_backup(src, m, target)
    dt = time.perf_counter() - t
    if prealloc:
        target.truncate(r.bytes_written)
        target.close()
    print(f"full backup   : {size / 2**20:.0f} MiB in {dt:.3f} s = {size / dt / 1e9:.2f} GB/s "
          f"({r.records} records)")
    rpath = os.path.join(d, "restored.img")
    if os.path.exists(rpath):
        os.unlink(rpath)
    if prealloc:
        _prealloc(rpath, size)
    dst = FileStore(rpath, size=size, create=True)
    m2 = GenerationMap.create(os.path.join(d, "restored.genmap"), volume_size=size,
                              volume_id=b"bench", overwrite=True)
    t = time.perf_counter()
    rep = restore(dst, m2, [out])
    dt = time.perf_counter() - t
    assert rep.ok, rep.errors
    print(f"full restore  : {size / 2**20:.0f} MiB in {dt:.3f} s = {size / dt / 1e9:.2f} GB/s")
    # differential of 10% of the volume in 64 KiB writes
    rnd = random.Random(2)
    w = os.urandom(1 << 16)
    for _ in range(size // 10 // len(w)):
        off = rnd.randrange(0, size - len(w), 4096)
        m.mark(off, len(w))
        src.write(off, w)
    t = time.perf_counter()
    r = differential_backup(src, m, 1, os.path.join(d, "d1.bin"))
    dt = time.perf_counter() - t
    print(f"differential  : {r.blocks * 4096 / 2**20:.0f} MiB changed in {dt:.3f} s = "
          f"{r.blocks * 4096 / dt / 1e9:.2f} GB/s ({r.records} records)")
    t = time.perf_counter()
    rep = restore(dst, m2, [os.path.join(d, "d1.bin")])
    dt = time.perf_counter() - t
    assert rep.ok, rep.errors
    print(f"diff restore  : {r.blocks * 4096 / dt / 1e9:.2f} GB/s")
    for x in (src, dst, m, m2):
        x.close()


def bench_tib(d: str) -> None:
    size = 1 << 40
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    m = GenerationMap.create(os.path.join(d, "tib.genmap"), volume_size=size, volume_id=b"tib",
                             sync=False)
    print(f"1 TiB map     : {m.entries} entries, created in {time.perf_counter() - t:.2f} s; "
          f"planes {m.memory_bytes()['planes'] / 2**20:.0f} MiB "
          f"({8 * m.memory_bytes()['planes'] / m.entries:.0f} bits/block), "
          f"dirty slot {m.memory_bytes()['dirty_slot'] / 2**20:.0f} MiB (page cache)")
    rnd = random.Random(3)
    t = time.perf_counter()
    for _ in range(20000):
        m.mark(rnd.randrange(size - (1 << 20)), rnd.randrange(1, 1 << 20))
    print(f"  20000 sparse marks (no msync): {time.perf_counter() - t:.3f} s")
    t = time.perf_counter()
    plan = m.begin_differential(1)
    print(f"  fold + persist (begin_differential): {time.perf_counter() - t:.2f} s")
    for _ in range(20000):
        m.mark(rnd.randrange(size - (1 << 20)), rnd.randrange(1, 1 << 20))
    t = time.perf_counter()
    sel = m.blocks_in_generations(1, 2)
    t1 = time.perf_counter()
    ext = sum(1 for _ in extents(sel))
    t2 = time.perf_counter()
    print(f"  changed-extent scan gens 1..2: selection {t1 - t:.3f} s + extents {t2 - t1:.3f} s "
          f"= {t2 - t:.3f} s ({ext} extents, {sel.count()} blocks)")
    t = time.perf_counter()
    c = m.counts()
    print(f"  counts(): {time.perf_counter() - t:.3f} s {c}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"  max RSS grew by {(rss - rss0) / 1024:.0f} MiB (includes temporaries of the ops above)")
    del plan, sel
    m.close()


def bench_mark(d: str) -> None:
    m = GenerationMap.create(os.path.join(d, "mark.genmap"), volume_size=1 << 30, volume_id=b"m")
    n = 100000
    m.mark(0, 1 << 20)
    t = time.perf_counter()
    for i in range(n):
        m.mark((i % 256) * 4096, 4096)
    print(f"mark (already marked, 4 KiB): {(time.perf_counter() - t) / n * 1e6:.2f} us")
    t = time.perf_counter()
    for i in range(2000):
        m.mark((1 << 20) + i * 4096, 4096)
    print(f"mark (new, msync on {d}): {(time.perf_counter() - t) / 2000 * 1e6:.1f} us")
    m.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--dir", default="/dev/shm")
    ap.add_argument("--skip-tib", action="store_true")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="bench-backup-", dir=a.dir)
    try:
        bench_mark(d)
        bench_stream(d, a.size_mib << 20, prealloc=False)
        bench_stream(d, a.size_mib << 20, prealloc=True)
        if not a.skip_tib:
            bench_tib(d)
    finally:
        shutil.rmtree(d)


if __name__ == "__main__":
    main()
