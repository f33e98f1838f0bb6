"""How long a tracked volume's generation map takes to grow (issue 15: rbd resize under
a tracked LUN), in RADOS and in files: ``python -m tools.bench_map_growth``.

Boots a single-node cluster (scsi_target.testing.ceph, memstore OSD) in a temporary
directory, and for each pair of sizes creates a map of the smaller size (4 KiB
blocks, a full backup, 1% of the blocks marked), then times ``GenerationMap.grow``
to the larger one: the map version, the journal and the pointer replaced with one
guarded write op (RADOS), or journal then map (files on --dir, default /tmp).
Medians of --rounds rounds.  A program, not a test.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid

GiB = 1 << 30


def _one(where, small: int, large: int) -> float:
    from volume.genmap import GenerationMap
    m = GenerationMap.create(where, volume_size=small, volume_id=b"bench-growth-vid")
    try:
        m.begin_full()
        step = 100 * 4096
        for off in range(0, small, step):
            m.mark(off, 4096, sync=False)
        m.sync_marks()
        t0 = time.perf_counter()
        m.grow(large)
        return time.perf_counter() - t0
    finally:
        m.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="16:24,64:128,256:512",
                    help="GiB pairs SMALL:LARGE, comma separated")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the file maps go")
    args = ap.parse_args(argv)
    pairs = [tuple(int(x) * GiB for x in p.split(":")) for p in args.sizes.split(",")]
    from scsi_target.testing.ceph import CephCluster
    from volume import ceph_bindings
    from volume.radosmap import RadosMapStorage
    rados = ceph_bindings.load("rados")
    with tempfile.TemporaryDirectory(prefix="pyscsi-growth-") as tmp, \
            CephCluster(tmp, osd_bytes=4 << 30) as cluster:
        cluster.create_pool("growth")
        c = rados.Rados(conffile=str(cluster.conf))
        c.connect(timeout=30)
        io = c.open_ioctx("growth")
        try:
            print(f"{'sizes':>14} {'RADOS s (median)':>18} {'files s (median)':>18}")
            for small, large in pairs:
                rt, ft = [], []
                for _ in range(args.rounds):
                    base = f"g{uuid.uuid4().hex[:8]}"
                    rt.append(_one(RadosMapStorage(c, io, base, lock_duration=20), small, large))
                    path = os.path.join(args.dir, f"growth-{uuid.uuid4().hex[:8]}.genmap")
                    try:
                        ft.append(_one(path, small, large))
                    finally:
                        for p in (path, path + ".dirty"):
                            if os.path.exists(p):
                                os.unlink(p)
                label = f"{small // GiB}->{large // GiB} GiB"
                print(f"{label:>14} {statistics.median(rt):18.3f} {statistics.median(ft):18.3f}",
                      flush=True)
        finally:
            io.close()
            c.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
