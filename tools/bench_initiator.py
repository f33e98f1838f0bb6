"""Initiator throughput against tgt: 1 MiB sequential reads at queue depth 8, as a
ratio to ``qemu-img bench`` (libiscsi) on the same LUN in the same run.

    python -m tools.bench_initiator [--size-mib 1024] [--rounds 3] [--depth 8]

Starts its own tgtd (root needed) with a RAM-backed LUN (/dev/shm), so the disk
is not what is measured.  Each round runs qemu-img first, then our initiator,
over the same bytes; the report gives MB/s of both and their ratio per round
and the median.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scsi_target.initiator.client import IscsiClient
from scsi_target.scsi.layouts import cdbs as C

from .capture_golden import Tgt

MIB = 1 << 20


async def ours(url: str, total: int, depth: int, block: int = MIB) -> float:
    """Seconds to read ``total`` bytes sequentially, ``depth`` commands outstanding."""
    c = await IscsiClient.connect(url)
    try:
        await c.execute(C.test_unit_ready())          # eat the power-on unit attention
        bs = (await c.read_capacity16()).block_size
        n = total // block
        blocks = block // bs
        t0 = time.perf_counter()
        pending: list = []
        nxt = 0
        while nxt < n or pending:
            while nxt < n and len(pending) < depth:
                pending.append(await c.submit(C.read16(nxt * blocks, blocks), read_length=block,
                                              check=True))
                nxt += 1
            await pending.pop(0).result()
        return time.perf_counter() - t0
    finally:
        await c.close()


def qemu(url: str, total: int, depth: int, block: int = MIB) -> float:
    qimg = shutil.which("qemu-img")
    if qimg is None:
        sys.exit("qemu-img not found (Debian package qemu-utils)")
    count = total // block
    t0 = time.perf_counter()
    r = subprocess.run([qimg, "bench", "-f", "raw", "-c", str(count), "-d", str(depth),
                        "-s", str(block), "-S", str(block), url], capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"qemu-img bench failed: {r.stderr.strip()}")
    # qemu-img prints "Run completed in X seconds."; prefer it (excludes its own startup).
    for line in r.stdout.splitlines():
        if line.startswith("Run completed in"):
            return float(line.split()[3])
    return elapsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=1024, help="bytes read per run (MiB)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--depth", type=int, default=8)
    a = p.parse_args(argv)
    total = a.size_mib * MIB
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        tgt = Tgt(Path(tmp), disk_size=total)
        try:
            url = tgt.url(1)
            ratios = []
            print(f"tgt LUN {url}, {a.size_mib} MiB per run, 1 MiB reads, QD{a.depth}")
            for i in range(a.rounds):
                tq = qemu(url, total, a.depth)
                to = asyncio.run(ours(url, total, a.depth))
                mq, mo = total / tq / 1e6, total / to / 1e6
                ratios.append(mo / mq)
                print(f"round {i + 1}: qemu-img {mq:7.0f} MB/s   ours {mo:7.0f} MB/s   "
                      f"ratio {mo / mq:.2f}")
            print(f"median ratio ours/qemu-img: {statistics.median(ratios):.2f}")
        finally:
            tgt.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
