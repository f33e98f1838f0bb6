"""Copy-before-write overhead of 4 KiB writes while a backup stream is open,
as a ratio to the same writes with no backup open.

    python -m tools.bench_cow [--mode store|iscsi|both] [--count 50000] [--size 1G]
                              [--rounds 3] [--dir /dev/shm]

store: TrackingStore over a FileStore in process (the write path alone):
  * none   -- no backup open;
  * unsent -- a full backup just started: every write hits a block the stream
              has not sent yet, so each one first preserves 4 KiB (worst case);
  * sent   -- the stream already passed the written blocks (they cost nothing).
iscsi: `qemu-img bench -w` 4 KiB QD32 against `scsi-target serve` after a full
  backup started (START BACKUP, 1 MiB of the stream read): held open while
  qemu-img writes blocks the stream has not sent, vs read to its end first
  (the same map state, no cut).

Each mode prints every run, the medians and the ratio (with / without).
"""
from __future__ import annotations

import argparse
import os
import random
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
BS = 4096


# -- in process ---------------------------------------------------------------
hook_us: list[float] = []


def store_run(case: str, count: int, size: int, tmp: Path) -> float:
    """Microseconds per 4 KiB write."""
    from scsi_target.backup_stream_io import BackupReader, begin_backup
    from scsi_target.interceptors.tracker import TrackingStore
    from volume.filestore import FileStore

    for p in tmp.iterdir():
        p.unlink()
    path = tmp / "v.img"
    fs = FileStore(path, size=size, create=True)
    vol = TrackingStore.open(fs, path, sync=False)
    try:
        nblk = size // BS
        rng = random.Random(1)
        payload = memoryview(rng.randbytes(BS * 64))
        half = nblk // 2
        # The same blocks in every case, in the lower half: in "sent" the stream
        # has passed them, in "unsent" it is still at the start.
        blocks = rng.sample(range(half), count)
        # Every block written once beforehand, so no case pays first allocation.
        fs.write_zeroes(0, size)
        fs.write(0, payload)
        reader = None
        if case != "none":
            plan, active = begin_backup(vol, full=True, scope=1)
            reader = BackupReader(vol, plan, active)
            if case == "sent":
                pos = 0
                while reader.cut.cursor < half:
                    buf = bytearray(4 << 20)
                    reader.readinto(pos, memoryview(buf))
                    pos += len(buf)
        write = vol.write
        offs = [b * BS for b in blocks]
        if case == "sent":
            # The hook alone, without the write it guards (its cost is below the noise
            # of whole writes on a shared machine).
            hook = reader.cut.before_write
            t0 = time.perf_counter()
            for off in offs:
                hook(off, BS)
            hook_us.append((time.perf_counter() - t0) / len(offs) * 1e6)
        t0 = time.perf_counter()
        for i, off in enumerate(offs):
            write(off, payload[(i & 63) * BS:((i & 63) + 1) * BS])
        dt = time.perf_counter() - t0
        if reader is not None and case == "unsent":
            assert reader.cut.preserved_total == len(offs), "not every write was preserved"
        return dt / len(offs) * 1e6
    finally:
        vol.close()


# -- over iSCSI ----------------------------------------------------------------
def serve(img: Path, size: str, tmp: Path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    args = [sys.executable, "-m", "scsi_target", "serve", "--listen", "127.0.0.1:0",
            "--log-level", "warning", "--disk", f"{img}:{size}", "--backup-device",
            "--cow-dir", str(tmp)]
    srv = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = srv.stdout.readline()
        if not line:
            raise SystemExit(f"server failed: {srv.stderr.read()}")
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if m:
            return srv, int(m.group(1))
    srv.kill()
    raise SystemExit("server did not start")


def iscsi_run(backup: bool, count: int, size: str, depth: int, tmp: Path) -> float:
    from scsi_target.initiator.sync import SyncIscsiClient
    from scsi_target.scsi.layouts import backup as L

    for p in tmp.iterdir():
        p.unlink()
    srv, port = serve(tmp / "bench.img", size, tmp)
    dev = None
    try:
        base = f"iscsi://127.0.0.1:{port}/{IQN}"
        # Allocate the volume first so both cases write over existing data.
        subprocess.run(["qemu-io", "-f", "raw", "-c", f"write -P 0x5a 0 {size}", f"{base}/0"],
                       check=True, capture_output=True)
        dev = SyncIscsiClient(f"{base}/1", timeout=60)
        dev.test_unit_ready()
        dev.execute(L.cdb(L.OP_START_BACKUP, length=80), read_length=80).raise_for_status()
        dev.read(0, 2048)
        if not backup:
            # Same map state as with a backup open (generation reset, so every
            # write is a first mark), but the stream read to its end: no cut.
            lba = 2048
            while True:
                st = L.BackupStatus.unpack(dev.execute(
                    L.cdb(L.OP_REPORT_BACKUP_STATUS, length=80), read_length=80).data)
                if st.state == L.STATE_COMPLETE:
                    break
                dev.read(lba, 8192)
                lba += 8192
            dev.close()
            dev = None
        cmd = ["qemu-img", "bench", "-w", "-f", "raw", "-c", str(count), "-d", str(depth),
               "-s", str(BS), "-o", str(64 << 20), "-t", "none", "-n", f"{base}/0"]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(f"qemu-img bench failed: {p.stderr.strip()}")
        m = re.search(r"Run completed in ([\d.]+) seconds", p.stdout)
        secs = float(m.group(1)) if m else time.perf_counter() - t0
        if dev is not None:       # the stream must still be intact (not a silent failure)
            dev.read(2048, 8)
        return count / secs
    finally:
        if dev is not None:
            dev.close()
        srv.terminate()
        srv.wait(15)


def report(name: str, runs: dict[str, list[float]], base: str, unit: str, lower_better: bool):
    med = {k: statistics.median(v) for k, v in runs.items()}
    parts = [f"{k} {med[k]:.2f} {unit}" for k in runs]
    print(f"{name} median: " + ", ".join(parts))
    for k in runs:
        if k != base:
            ratio = med[k] / med[base] if lower_better else med[base] / med[k]
            # Runs alternate, so each round's pair saw about the same machine load.
            pairs = [(x / y if lower_better else y / x) for x, y in zip(runs[k], runs[base])]
            print(f"{name} {k}/{base} cost ratio: {ratio:.2f}x of medians, "
                  f"{statistics.median(pairs):.2f}x median of per-round ratios")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("store", "iscsi", "both"), default="both")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--count", type=int, default=50000)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--depth", type=int, default=32)
    ap.add_argument("--dir", default=None, help="where the volume and the preservation file "
                    "live (default /dev/shm)")
    a = ap.parse_args()
    base = a.dir or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
    tmp = Path(tempfile.mkdtemp(prefix="bench-cow-", dir=base))
    from scsi_target.config import parse_size
    size = parse_size(a.size)
    if a.count * BS > size // 2:
        print("bench_cow: --count x 4 KiB must fit in half of --size", file=sys.stderr)
        return 2
    try:
        if a.mode in ("store", "both"):
            runs: dict[str, list[float]] = {"none": [], "unsent": [], "sent": []}
            for r in range(a.rounds):
                for case in runs:
                    us = store_run(case, a.count, size, tmp)
                    runs[case].append(us)
                    print(f"store round {r + 1} {case:6}: {us:7.2f} us/write", flush=True)
            report("store", runs, "none", "us/write", True)
            print(f"store copy-before-write check on a sent block alone: "
                  f"{statistics.median(hook_us):.2f} us/write")
        if a.mode in ("iscsi", "both"):
            if shutil.which("qemu-img") is None or shutil.which("qemu-io") is None:
                print("bench_cow: qemu-img/qemu-io not installed", file=sys.stderr)
                return 2
            iruns: dict[str, list[float]] = {"none": [], "backup": []}
            for r in range(a.rounds):
                for case in iruns:
                    iops = iscsi_run(case == "backup", a.count, a.size, a.depth, tmp)
                    iruns[case].append(iops)
                    print(f"iscsi round {r + 1} {case:6}: {iops:9.0f} IOPS", flush=True)
            report("iscsi", iruns, "none", "IOPS", False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
