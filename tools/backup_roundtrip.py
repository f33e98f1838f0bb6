"""`backup_roundtrip`: full + differentials + restore of a random volume through the CLI,
over iSCSI and locally, checked byte for byte (issue 8, "done means").

    python -m tools.backup_roundtrip --size 1G [--dir /dev/shm/x] [--writes 2000]

Exit 0 when every restored image equals the source; prints the time of each step.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

from scsi_target.initiator.sync import SyncIscsiClient

IQN = "iqn.2026-11.org.pyscsi:default"


def _size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]?)", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"size {text!r}: a number with K, M or G")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]


class _Server:
    def __init__(self, disk: str) -> None:
        self.p = subprocess.Popen([sys.executable, "-m", "scsi_target", "serve", "--listen",
                                   "127.0.0.1:0", "--log-level", "warning", "--disk", disk,
                                   "--backup-device"], stdout=subprocess.PIPE, text=True)
        first = self.p.stdout.readline()
        m = re.search(r"127\.0\.0\.1:(\d+)", first)
        if not m:
            self.p.kill()
            raise SystemExit(f"server did not start: {first!r}")
        self.url = f"iscsi://127.0.0.1:{m.group(1)}/{IQN}/0"
        while "/1" not in self.p.stdout.readline():
            pass

    def stop(self) -> None:
        self.p.terminate()
        self.p.wait(30)


def _run(*args: str) -> float:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "tools.diffbackup", "-q", *args],
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"diffbackup {' '.join(args)} failed: {r.stdout}{r.stderr}")
    return time.perf_counter() - t


def _fill(path: str, size: int, rnd: random.Random) -> None:
    with open(path, "wb") as f:
        for off in range(0, size, 16 << 20):
            f.write(rnd.randbytes(min(16 << 20, size - off)))


def _same(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(16 << 20), fb.read(16 << 20)
            if x != y:
                return False
            if not x:
                return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="backup_roundtrip", description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=_size, default=64 << 20)
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir on /dev/shm)")
    ap.add_argument("--writes", type=int, default=2000, help="random writes between backups")
    a = ap.parse_args(argv)
    own = a.dir is None
    d = a.dir or tempfile.mkdtemp(prefix="roundtrip-", dir="/dev/shm" if os.path.isdir(
        "/dev/shm") else None)
    rnd = random.Random(a.size)
    src, ok = os.path.join(d, "src.img"), True
    try:
        _fill(src, a.size, rnd)
        streams = []
        srv = _Server(src)
        try:
            out = os.path.join(d, "full.bin")
            print(f"full over iSCSI: {_run('full', srv.url, '-o', out):.1f} s")
            streams.append(out)
            with SyncIscsiClient(srv.url) as c:
                for i in range(3):
                    for _ in range(a.writes):
                        n = rnd.randint(1, 64)
                        c.write(rnd.randrange(a.size // 512 - n), rnd.randbytes(n * 512))
                    out = os.path.join(d, f"d{i}.bin")
                    print(f"diff {i} over iSCSI: {_run('diff', srv.url, '--scope', '1', '-o', out):.1f} s")
                    streams.append(out)
        finally:
            srv.stop()
        dst = os.path.join(d, "dst.img")
        with open(dst, "wb") as f:
            f.truncate(a.size)
        srv = _Server(dst)
        try:
            print(f"restore over iSCSI: {_run('restore', srv.url, *streams):.1f} s")
        finally:
            srv.stop()
        same = _same(src, dst)
        print(f"iSCSI restore byte-identical: {same}")
        ok &= same
        loc = os.path.join(d, "loc.img")
        print(f"local restore: {_run('restore', loc, *streams):.1f} s")
        same = _same(src, loc)
        print(f"local restore byte-identical: {same}")
        ok &= same
        # Local backups of the restored copy, then a restore of those.
        lf = os.path.join(d, "lfull.bin")
        print(f"local full: {_run('full', loc, '-o', lf):.1f} s")
        loc2 = os.path.join(d, "loc2.img")
        print(f"local restore of it: {_run('restore', loc2, lf):.1f} s")
        same = _same(src, loc2)
        print(f"local full round trip byte-identical: {same}")
        ok &= same
    finally:
        if own:
            shutil.rmtree(d, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
