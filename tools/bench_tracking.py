"""Tracking overhead: `qemu-img bench -w` 4 KiB QD32 against a tmpfs-backed LUN,
tracking on vs off (`--no-track`), alternating in one run.

    python -m tools.bench_tracking [--rounds 3] [--count 100000] [--size 1G]

Prints the IOPS and the server's CPU µs per command of every run, the median of
each mode and the overhead by both measures (the CPU figure is the steady one
on a shared machine; IOPS swing with whatever else runs).
Each run serves a fresh volume on /dev/shm, so the "on" runs pay the first
marking of every block (the msync'ed write-intent path) as a real volume does
after a backup.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IQN = "iqn.2026-11.org.pyscsi:default"


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK   # utime, stime


def run_once(track: bool, count: int, size: str, depth: int, tmp: Path) -> tuple[float, float]:
    img = tmp / "bench.img"
    for p in tmp.iterdir():
        p.unlink()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    args = [sys.executable, "-m", "scsi_target", "serve", "--listen", "127.0.0.1:0",
            "--log-level", "warning", "--disk", f"{img}:{size}"] + ([] if track else ["--no-track"])
    srv = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            line = srv.stdout.readline()
            if not line:
                raise SystemExit(f"server failed: {srv.stderr.read()}")
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
        url = f"iscsi://127.0.0.1:{port}/{IQN}/0"
        cpu0 = cpu_seconds(srv.pid)
        t0 = time.perf_counter()
        p = subprocess.run(["qemu-img", "bench", "-w", "-f", "raw", "-c", str(count), "-d",
                            str(depth), "-s", "4096", "-t", "none", "-n", url],
                           capture_output=True, text=True)
        if p.returncode:
            p = subprocess.run(["qemu-img", "bench", "-w", "-f", "raw", "-c", str(count), "-d",
                                str(depth), "-s", "4096", url], capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(f"qemu-img bench failed: {p.stderr.strip()}")
        m = re.search(r"Run completed in ([\d.]+) seconds", p.stdout)
        secs = float(m.group(1)) if m else time.perf_counter() - t0
        return count / secs, (cpu_seconds(srv.pid) - cpu0) / count * 1e6
    finally:
        srv.terminate()
        srv.wait(15)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--count", type=int, default=100000)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--depth", type=int, default=32)
    ap.add_argument("--dir", default=None,
                    help="where the volume lives (default /dev/shm; a disk directory measures "
                    "the msync cost of power-loss-safe marks)")
    a = ap.parse_args()
    if shutil.which("qemu-img") is None:
        print("bench_tracking: qemu-img not installed", file=sys.stderr)
        return 2
    base = a.dir or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
    tmp = Path(tempfile.mkdtemp(prefix="bench-track-", dir=base))
    res: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}
    try:
        for r in range(a.rounds):
            for track in (False, True):
                iops, us = run_once(track, a.count, a.size, a.depth, tmp)
                res[track].append(iops)
                cpu[track].append(us)
                print(f"round {r + 1} tracking {'on ' if track else 'off'}: {iops:10.0f} IOPS "
                      f"{us:6.1f} us/cmd", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    on, off = statistics.median(res[True]), statistics.median(res[False])
    print(f"median: tracking off {off:.0f} IOPS, on {on:.0f} IOPS, "
          f"overhead {100 * (off - on) / off:+.1f}%")
    con, coff = statistics.median(cpu[True]), statistics.median(cpu[False])
    print(f"median CPU: tracking off {coff:.1f} us/cmd, on {con:.1f} us/cmd, "
          f"overhead {100 * (con - coff) / coff:+.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
