"""A/B measurement of our target's per-command cost: IOPS and target CPU µs/command.

The rate of one run is noisy on a shared machine; the CPU time the target
process spent per command (utime+stime from /proc/<pid>/stat, before and after
each run) is much steadier, so it is printed beside each rate.  Several source
trees can be compared in alternating rounds (A, B, A, B, ...) and the medians
reported: ``tools/bench_conn.py --tree /tmp/base --tree . --rounds 5``.
Each tree is served by its own ``python -m scsi_target`` run from that tree
(the venv's interpreter, the tree's own sources).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools import bench as B  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")

WORKLOADS = {
    "4K QD32 read": (4096, 32, False),
    "4K QD32 write": (4096, 32, True),
    "64K QD8 read": (65536, 8, False),
    "64K QD8 write": (65536, 8, True),
    # iscsi-perf random reads for a fixed time (count ignored): QD1 is the
    # latency case, one command per event loop iteration.
    "perf 4K QD1 read": (4096, 1, None),
    "perf 4K QD32 read": (4096, 32, None),
}
PERF_SECONDS = 5


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK   # utime, stime


def run_one(tree: Path, image: Path, logdir: Path, workload: str, count: int) -> tuple[float, float]:
    size, depth, write = WORKLOADS[workload]
    B.REPO = tree   # run_ours starts ``python -m scsi_target`` with this cwd
    with B.run_ours(image, logdir, track=True) as side:
        before = cpu_seconds(side.proc.pid)
        st = B.Settings(False, image.parent, image, image)
        if write is None:
            res = B.iscsi_perf(depth, PERF_SECONDS)(side, st)
            count = res.commands
        else:
            res = B.qemu_bench(size, depth, write, count, count)(side, st)
        used = cpu_seconds(side.proc.pid) - before
    return res.value if size < B.MiB else res.value * B.MiB / size, used / count * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", action="append", type=Path,
                    help="source tree to serve from (repeat to compare; default: this one)")
    ap.add_argument("--workload", action="append", choices=sorted(WORKLOADS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--count", type=int, default=50000, help="commands per run")
    args = ap.parse_args(argv)
    trees = [t.resolve() for t in (args.tree or [B.REPO])]
    workloads = args.workload or ["4K QD32 read", "4K QD32 write"]
    results: dict[tuple[Path, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-conn-", dir="/dev/shm") as tmp:
        image = Path(tmp) / "lun.img"
        B.fill(image, B.IMAGE_SIZE, random=True)
        logdir = Path(tmp)
        for r in range(args.rounds):
            for wl in workloads:
                for tree in trees:
                    iops, us = run_one(tree, image, logdir, wl, args.count)
                    results.setdefault((tree, wl), []).append((iops, us))
                    print(f"round {r + 1} {wl:14} {tree}: {iops:9,.0f} IOPS "
                          f"{us:6.1f} us/cmd", flush=True)
    print(f"\nmedians of {args.rounds} alternating rounds, {args.count} commands each "
          f"({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}):")
    for wl in workloads:
        for tree in trees:
            runs = results[(tree, wl)]
            iops = [a for a, _ in runs]
            us = [b for _, b in runs]
            print(f"  {wl:14} {str(tree):30} {statistics.median(iops):9,.0f} IOPS "
                  f"(min {min(iops):,.0f} max {max(iops):,.0f})  "
                  f"{statistics.median(us):6.1f} us/cmd (min {min(us):.1f} max {max(us):.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
