"""Cost of the testing library's interceptors on 4 KiB reads at queue depth 32.

    python -m tools.bench_cmdlog [--count 40000] [--rounds 3]

Three servers, each in its own process serving one 64 MiB memory disk:
``plain`` (a LunMap as the CLI builds it: no interceptors), ``log`` (the
command log) and ``log+faults`` (command log and an empty fault injector, what
``InProcessTarget`` installs).  The load is ``qemu-img bench -d 32 -s 4096``
(libiscsi, C), so the initiator is not what is measured.  Rounds alternate the
modes (in a rotating order); the report gives reads/s per round, the median
reads/s and the median of the per-round ratios to ``plain``.
Also the in-process cost per command (LunMap.execute, no TCP; the same
alternating rounds), the bound of what the log can cost.
"""
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time

IQN = "iqn.2026-12.org.pyscsi.bench:cmdlog"
MODES = ("plain", "log", "log+faults")


def build(mode: str):
    from scsi_target.testing import InProcessTarget
    from scsi_target.interceptors.chain import uninstall, install
    t = InProcessTarget(IQN, power_on_ua=True)
    t.add_lu("disk", 0, size="64M")
    uninstall(t.luns)
    if mode == "log":
        install(t.luns, cmdlog=t.log)
    elif mode == "log+faults":
        install(t.luns, cmdlog=t.log, faults=t.faults)
    return t


def serve(mode: str) -> None:
    import asyncio
    t = build(mode)

    async def run():
        async with t.serving() as s:
            print(f"listening on 127.0.0.1:{s.port}", flush=True)
            await asyncio.Event().wait()
    asyncio.run(run())


def qemu_bench(port: int, count: int) -> float:
    exe = shutil.which("qemu-img")
    url = f"iscsi://127.0.0.1:{port}/{IQN}/0"
    t0 = time.perf_counter()
    r = subprocess.run([exe, "bench", "-f", "raw", "-c", str(count), "-d", "32", "-s", "4096",
                        "-S", "4096", url], capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    m = re.search(r"Run completed in ([\d.]+) seconds", r.stdout)
    if r.returncode or not m:
        raise SystemExit(f"qemu-img bench failed: {r.stdout}{r.stderr}")
    return count / float(m.group(1)) if float(m.group(1)) > 0 else count / wall


def in_process(mode: str, n: int = 200000) -> float:
    from scsi_target.scsi.command import Command, Direction
    t = build(mode)
    cdb = bytes([0x88, 0]) + (8).to_bytes(8, "big") + (8).to_bytes(4, "big") + b"\0\0"
    cmd = Command(cdb=cdb, expected_length=4096, direction=Direction.IN, nexus=t.nexus)
    t.luns.execute(Command(bytes(6), nexus=t.nexus))
    ex = t.luns.execute
    t0 = time.perf_counter()
    for _ in range(n):
        r = ex(cmd)
        if r.release:
            r.release()
    dt = time.perf_counter() - t0
    t.close()
    return dt / n * 1e6


def _order(rnd: int) -> tuple[str, ...]:
    """The modes in the order of round ``rnd``: rotated each round, so no mode always
    runs first (or last) on a machine whose speed drifts."""
    k = rnd % len(MODES)
    return MODES[k:] + MODES[:k]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=40000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.serve:
        serve(a.serve)
        return 0
    if not shutil.which("qemu-img"):
        print("qemu-img is not installed (Debian package qemu-utils)", file=sys.stderr)
        return 2
    # In process too, the modes alternate (rotating order) so drift hits them alike.
    costs: dict[str, list[float]] = {m: [] for m in MODES}
    for rnd in range(a.rounds):
        for mode in _order(rnd):
            costs[mode].append(in_process(mode))
    print("in process (LunMap.execute, READ(16) 4 KiB; ratio: median of the per-round "
          "ratios to plain):")
    for mode in MODES:
        ratios = [x / y for x, y in zip(costs[mode], costs["plain"])]
        print(f"  {mode:11s} {statistics.median(costs[mode]):6.2f} us/command  "
              f"ratio {statistics.median(ratios):.3f}")
    results: dict[str, list[float]] = {m: [] for m in MODES}
    for rnd in range(a.rounds):
        for mode in _order(rnd):
            p = subprocess.Popen([sys.executable, "-m", "tools.bench_cmdlog", "--serve", mode],
                                 stdout=subprocess.PIPE, text=True)
            try:
                line = p.stdout.readline()
                port = int(line.rsplit(":", 1)[1])
                qemu_bench(port, 2000)                    # warm up
                results[mode].append(qemu_bench(port, a.count))
            finally:
                p.terminate()
                p.wait(10)
        print(f"round {rnd + 1}: " + ", ".join(f"{m} {results[m][-1]:.0f}/s" for m in MODES))
    plain = results["plain"]
    print("over iSCSI, qemu-img bench -d 32 -s 4096 (median reads/s; ratio: median of the "
          "per-round ratios to plain):")
    for mode in MODES:
        ratios = [x / y for x, y in zip(results[mode], plain)]
        print(f"  {mode:11s} {statistics.median(results[mode]):8.0f}/s  "
              f"ratio to plain {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
