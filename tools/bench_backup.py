"""Benchmark of the differential backup engine (not a test).

* stream generation, full and differential (10 % of the volume changed by
  scattered 64 KiB writes, then 10 % by scattered 4 KiB writes: ~22.6k
  one-block records, where the per-record cost decides), measured three ways
  so the engine is told apart
  from the kernel: into one reused buffer (``StreamEncoder.readinto``: the
  engine alone), into a preallocated tmpfs file, and into a new tmpfs file
  (``full_backup``-style, as ``diffbackup`` does it);
* restore, full and differential, from a tmpfs stream file onto a
  preallocated tmpfs volume (``restore``: file -> ``StreamRestorer``);
* the generation map of a 1 TiB volume at 4 KiB granularity (268 M entries):
  sparse marking, changed-extent scan, counts, fold (begin_differential);
* mark() cost for already-marked and newly-marked blocks.

Rates are data bytes (blocks copied) per second; each figure is the best of
``--repeat`` runs, with the median after it.  On this VM first-touch tmpfs
page allocation alone caps any copy into a new file at ~0.3 GB/s, which is
why the new-file column measures the kernel more than the engine.

Usage: ``python -m tools.bench_backup [--size-mib 1024] [--dir /dev/shm] [--repeat 3] [--skip-tib]``
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import tempfile
import time
from typing import Callable

from volume.backup import restore, write_stream
from volume.filestore import FileStore
from volume.genmap import BackupPlan, GenerationMap, extents
from volume.stream import StreamEncoder

BUF = 8 << 20


def _fill(store: FileStore, size: int) -> None:
    rnd = random.Random(1)
    block = rnd.randbytes(1 << 20)                  # incompressible, no zero blocks
    for off in range(0, size, len(block)):
        store.write(off, block[:min(len(block), size - off)])


def _prealloc(path: str, size: int) -> None:
    """Create ``path`` with every page touched (tmpfs allocates on first touch)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    chunk = bytes(8 << 20)
    for off in range(0, size, len(chunk)):
        os.pwrite(fd, chunk[:min(len(chunk), size - off)], off)
    os.close(fd)


def _rm(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)


class Timer:
    def __init__(self, repeat: int) -> None:
        self.repeat = repeat
        self.rows: list[tuple[str, str]] = []

    def run(self, label: str, nbytes: int, fn: Callable[[], object],
            setup: Callable[[], object] | None = None) -> None:
        times = []
        for _ in range(self.repeat):
            if setup:
                setup()
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        self.report(label, nbytes, times)

    def report(self, label: str, nbytes: int, times: list[float]) -> None:
        best, med = min(times), statistics.median(times)
        line = (f"{nbytes / best / 1e9:6.2f} GB/s (median {nbytes / med / 1e9:.2f}; "
                f"{nbytes / 2**20:.0f} MiB in {best:.3f} s)")
        self.rows.append((label, line))
        print(f"{label:<44}: {line}", flush=True)


def _encode_to_buffer(store: FileStore, plan: BackupPlan, buf: memoryview) -> int:
    enc = StreamEncoder(store, plan)
    n = 0
    while True:
        k = enc.readinto(buf)
        if not k:
            return n
        n += k


def bench_stream(d: str, size: int, repeat: int) -> None:
    print(f"-- {size >> 20} MiB tmpfs volume, 4 KiB blocks, 1 MiB records, best of {repeat}")
    tm = Timer(repeat)
    src = FileStore(os.path.join(d, "vol.img"), size=size, create=True)
    _fill(src, size)
    m = GenerationMap.create(os.path.join(d, "vol.genmap"), volume_size=size, volume_id=b"bench",
                             overwrite=True)
    buf = memoryview(bytearray(BUF))
    plans = [("full", m.begin_full())]
    # 10 % of the volume in scattered 64 KiB writes, then 10 % in scattered 4 KiB
    # writes (one record per block: the per-record cost dominates), each closed
    # by a scope-1 differential.
    rnd = random.Random(2)
    for wsize in (64 << 10, 4 << 10):
        w = os.urandom(wsize)
        for _ in range(size // 10 // wsize):
            off = rnd.randrange(0, size - wsize, 4096)
            m.mark(off, wsize)
            src.write(off, w)
        plans.append((f"diff {wsize >> 10} KiB writes", m.begin_differential(1)))
    pre_path = os.path.join(d, "prealloc.bin")
    paths = []
    # The full plan's records read the volume as it is now; that is fine for timing.
    for i, (kind, plan) in enumerate(plans):
        out_path = os.path.join(d, f"s{i}.bin")
        paths.append(out_path)
        data = plan.block_count * plan.granularity
        enc = StreamEncoder(src, plan)
        bound = enc.size_bound
        print(f"{kind}: {plan.block_count} blocks, {enc.record_count_bound} records, "
              f"stream {bound / 2**20:.1f} MiB")
        tm.run(f"{kind}: generation, reused buffer", data,
               lambda: _encode_to_buffer(src, plan, buf))
        _rm(pre_path)
        _prealloc(pre_path, bound)

        def to_prealloc() -> None:
            with open(pre_path, "r+b", buffering=0) as f:
                write_stream(src, plan, f)
        tm.run(f"{kind}: generation, preallocated file", data, to_prealloc)
        tm.run(f"{kind}: generation, new file", data,
               lambda: write_stream(src, plan, out_path), setup=lambda: _rm(out_path))
    _rm(pre_path)

    # Restore the chain onto a preallocated volume, each stream timed on its own.
    rpath = os.path.join(d, "restored.img")
    _prealloc(rpath, size)
    dst = FileStore(rpath, size=size, create=True)
    m2 = GenerationMap.create(os.path.join(d, "restored.genmap"), volume_size=size,
                              volume_id=b"bench", overwrite=True)
    times: list[list[float]] = [[] for _ in plans]
    for _ in range(repeat):
        for i, ((kind, plan), path) in enumerate(zip(plans, paths)):
            t = time.perf_counter()
            rep = restore(dst, m2, [path])
            times[i].append(time.perf_counter() - t)
            assert rep.ok, rep.errors
            assert rep.streams[0].blocks_written == plan.block_count, (kind, rep.streams[0])
    for (kind, plan), ts in zip(plans, times):
        tm.report(f"{kind}: restore, file -> prealloc volume", plan.block_count * 4096, ts)
    assert dst.read(0, size) == src.read(0, size)
    for x in (src, dst, m, m2):
        x.close()
    print("\nsummary (GB/s of data, best of runs):")
    for label, line in tm.rows:
        print(f"  {label:<44} {line.split(' GB/s')[0].strip()}")


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
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-tib", action="store_true")
    ap.add_argument("--only-stream", action="store_true", help="skip the map benchmarks")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="bench-backup-", dir=a.dir)
    try:
        if not a.only_stream:
            bench_mark(d)
        bench_stream(d, a.size_mib << 20, a.repeat)
        if not a.skip_tib and not a.only_stream:
            bench_tib(d)
    finally:
        shutil.rmtree(d)


if __name__ == "__main__":
    main()
