"""Tape throughput over iSCSI: 256 KiB variable records, ours vs tgt's tape LUN, one run.

    python -m tools.bench_tape [--mib 256] [--record 262144] [--rounds 3]

Writes MIB of records at queue depth 1 with our initiator (WRITE(6) per
record, a filemark at the end), rewinds and reads them back (READ(6)); reports
MB/s per target and the ratio ours/tgt.  Needs root for tgtd.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def _run(url: str, records: list[bytes]) -> tuple[float, float]:
    from scsi_target.initiator.sync import SyncIscsiClient
    from scsi_target.scsi.layouts import tape as LT
    n = len(records[0])
    with SyncIscsiClient(url) as c:
        c.execute(bytes(6))
        c.execute(bytes([0x01, 0, 0, 0, 0, 0]), check=True)
        t0 = time.perf_counter()
        for r in records:
            c.execute(LT.write6(n), data_out=r, check=True)
        c.execute(bytes([0x10, 0, 0, 0, 1, 0]), check=True)
        tw = time.perf_counter() - t0
        c.execute(bytes([0x01, 0, 0, 0, 0, 0]), check=True)
        t0 = time.perf_counter()
        for r in records:
            got = c.execute(LT.read6(n), read_length=n, check=True)
            assert len(got.data) == n
        tr = time.perf_counter() - t0
    total = n * len(records) / 1e6
    return total / tw, total / tr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--record", type=int, default=256 << 10)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    from client_targets import TgtFactory
    from scsi_target.testing.process import ServerProcess
    from tape import TapeImage
    records = [os.urandom(a.record) for _ in range(a.mib * (1 << 20) // a.record)]
    tmp = Path(tempfile.mkdtemp(prefix="bench-tape-"))
    factory = TgtFactory(tmp)
    iqn = "iqn.2026-01.org.scsi-target.bench:tape"
    img = tmp / "tgt.img"
    subprocess.run(["tgtimg", "--op", "new", "--device-type", "tape", "--barcode", "BENCH1",
                    "--size", str(2 * a.mib + 64), "--type", "data", "--file", str(img)],
                   check=True, capture_output=True)
    factory.adm("--mode", "target", "--op", "new", "--tid", "1", "--targetname", iqn)
    factory.adm("--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1",
                "--device-type", "tape", "--bstype", "ssc", "--backing-store", str(img))
    factory.adm("--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL")
    ours_img = tmp / "ours.img"
    TapeImage.create(ours_img, (2 * a.mib + 64) << 20).close()
    srv = ServerProcess.from_flags(tmp, "--tape", ours_img).start()
    res: dict[str, list[tuple[float, float]]] = {"tgt": [], "ours": []}
    try:
        for _ in range(a.rounds):
            res["tgt"].append(_run(f"iscsi://127.0.0.1:{factory.port}/{iqn}/1", records))
            res["ours"].append(_run(srv.url(), records))
    finally:
        srv.stop()
        factory.close()
    med = {k: (statistics.median(w for w, _ in v), statistics.median(r for _, r in v))
           for k, v in res.items()}
    for k, (w, r) in med.items():
        print(f"{k:5s} write {w:7.1f} MB/s  read {r:7.1f} MB/s  (median of {a.rounds})")
    print(f"ours/tgt  write {med['ours'][0] / med['tgt'][0]:.2f}  "
          f"read {med['ours'][1] / med['tgt'][1]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
