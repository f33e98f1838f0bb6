"""Helpers for backup tests: a real `scsi-target` subprocess with backup devices, diffbackup runs."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from scsi_target.testing.external import require_tool  # noqa: F401  (re-exported: one rule for every tool)

REPO = Path(__file__).resolve().parent.parent
IQN = "iqn.2026-11.org.pyscsi:default"


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e




class Server:
    def __init__(self, *disks: str, cwd: Path, extra: tuple[str, ...] = ("--backup-device",)):
        args = [sys.executable, "-m", "scsi_target", "serve", "--listen", "127.0.0.1:0",
                "--log-level", "warning"]
        for d in disks:
            args += ["--disk", d]
        args += list(extra)
        self.proc = subprocess.Popen(args, cwd=cwd, env=env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        deadline = time.monotonic() + 30
        nurls = len(disks) * (2 if "--backup-device" in extra else 1)
        while sum(1 for l in self.lines if l.strip().startswith("iscsi://")) < nurls:
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"server did not start: {self.lines}")
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"server exited: {self.proc.wait()} {self.proc.stderr.read()}")
            self.lines.append(line.rstrip("\n"))
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.lines[0])
        self.port = int(m.group(1))

    def url(self, lun: int) -> str:
        return f"iscsi://127.0.0.1:{self.port}/{IQN}/{lun}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def diffbackup(*args: str, cwd: Path | None = None, timeout: float = 120):
    return subprocess.run([sys.executable, "-m", "tools.diffbackup", "-q", *args], cwd=cwd or REPO,
                          env=env(), capture_output=True, text=True, timeout=timeout)


SHM = Path("/dev/shm") if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def fill_random(path, size: int, *, density: float = 1.0, seed: int = 0,
                block: int = 4096) -> None:
    """A volume file of ``size`` bytes: random data, or (density < 1) that fraction of
    ``block``-sized blocks random and the rest zeros (a sparse file)."""
    import random
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        if density >= 1.0:
            step = 8 << 20
            for off in range(0, size, step):
                f.write(rnd.randbytes(min(step, size - off)))
            return
        nblocks = -(-size // block)
        for b in sorted(rnd.sample(range(nblocks), int(nblocks * density))):
            f.seek(b * block)
            f.write(rnd.randbytes(min(block, size - b * block)))


def scribble(write, size: int, *, writes: int, seed: int, max_blocks: int = 64, bs: int = 512,
             by_lba: bool = True) -> None:
    """Random writes of random data through ``write(lba, data)`` (an iSCSI client's) or,
    with ``by_lba=False``, ``write(offset, data)`` (a tracked volume's)."""
    import random
    rnd = random.Random(seed)
    for _ in range(writes):
        n = rnd.randint(1, max_blocks)
        lba = rnd.randrange(size // bs - n)
        data = rnd.randbytes(n * bs)
        write(lba if by_lba else lba * bs, data)


def tracked_writes(path, size: int, *, writes: int, seed: int) -> None:
    """Change a local tracked volume the way a server would: through its tracker."""
    from volume import durability
    from volume.filestore import FileStore
    from volume.tracked import TrackingStore
    vol = TrackingStore.open(FileStore(path), path)
    try:
        scribble(vol.write, size, writes=writes, seed=seed, by_lba=False)
        durability.barrier()
    finally:
        vol.close()
