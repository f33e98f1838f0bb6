"""Backups to and restores from S3 against the raw limit of the same S3 endpoint.

    python -m tools.bench_s3 [--mib 256] [--rounds 3] [--part-size 16M] [--uploads 2]
                             [--endpoint URL]

Without ``--endpoint`` a single-node Ceph cluster with a RADOS Gateway is booted
in a temporary directory (scsi_target/testing/ceph.py; Debian's ceph packages),
and torn down at the end; with it, credentials come from the AWS environment.

Per round, in alternating order (ours first in odd rounds, raw first in even):

* backup: ``diffbackup full VOL -o s3://bench/full --force`` of a random-data
  local volume of ``--mib`` MiB (and the same with ``--no-s3-md5``), vs a plain
  boto3 ``upload_fileobj`` of a file of the stream's size with the same part size
  and parts in flight;
* restore: ``diffbackup restore NEW s3://bench/full`` onto a fresh volume, vs a
  boto3 ``download_fileobj`` of the same object to a file (same part size and
  concurrency).

Every run is a fresh process, timed wall clock including its start-up
(Python + boto3 import, like a user's command). Medians of the rounds, and
ours/raw ratios, are printed with the machine's load (``uptime``).
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUCKET = "bench"

_RAW = r"""
import sys, time, boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
op, path, bucket, key, part, conc = sys.argv[1:7]
part, conc = int(part), int(conc)
cfg = Config(request_checksum_calculation="when_required",
             response_checksum_validation="when_required", max_pool_connections=32)
s3 = boto3.session.Session().client("s3", config=cfg)
tc = TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=conc,
                    use_threads=conc > 1)
if op == "up":
    with open(path, "rb") as f:
        s3.upload_fileobj(f, bucket, key, Config=tc)
else:
    with open(path, "wb") as f:
        s3.download_fileobj(bucket, key, f, Config=tc)
"""


def _env(extra: dict) -> dict:
    e = dict(os.environ)
    e.update(extra)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


CPU: dict[str, list[float]] = {}


def _child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _timed(cmd: list[str], env: dict, what: str = "") -> float:
    c0 = _child_cpu()
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if what:
        CPU.setdefault(what, []).append(_child_cpu() - c0)
    if r.returncode != 0:
        raise SystemExit(f"bench_s3: {' '.join(cmd[:4])} ... failed: {r.stderr.strip()[-500:]}")
    return dt


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime unavailable"


def _size(text: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:].upper(), 1)
    return int(text[:-1] if mult > 1 else text) * mult


def _fresh_volume(path: Path) -> None:
    for p in path.parent.glob(path.name + "*"):
        p.unlink()


def run(args, env: dict, work: Path) -> None:
    py = sys.executable
    db = [py, "-m", "tools.diffbackup", "-q"]
    vol = work / "vol.img"
    rnd = random.Random(1)
    with open(vol, "wb") as f:
        for _ in range(args.mib):
            f.write(rnd.randbytes(1 << 20))
    part, conc = str(args.part_size), str(args.uploads)
    # The stream's size: one local backup of the same volume (not timed).
    stream = work / "stream.bin"
    _timed(db + ["full", str(vol), "-o", str(stream)], env)
    nbytes = stream.stat().st_size
    raw_src = stream
    res: dict[str, list[float]] = {k: [] for k in ("ours_up", "nomd5_up", "raw_up", "ours_down",
                                                   "raw_down")}
    print(f"volume {args.mib} MiB random, stream {nbytes} bytes, part {args.part_size} bytes, "
          f"{args.uploads} parts in flight, {args.rounds} rounds")
    print(f"load at start: {_uptime()}")
    dest = work / "restored.img"
    for rnd_i in range(args.rounds):
        order = ("ours", "nomd5", "raw") if rnd_i % 2 == 0 else ("raw", "nomd5", "ours")
        for who in order:
            if who == "nomd5":
                res["nomd5_up"].append(_timed(db + ["full", str(vol), "-o",
                                                    f"s3://{BUCKET}/full-nomd5", "--force",
                                                    "--part-size", part, "--s3-uploads", conc,
                                                    "--no-s3-md5"], env, "nomd5_up"))
            elif who == "ours":
                res["ours_up"].append(_timed(db + ["full", str(vol), "-o",
                                                   f"s3://{BUCKET}/full", "--force",
                                                   "--part-size", part, "--s3-uploads", conc],
                                             env, "ours_up"))
            else:
                res["raw_up"].append(_timed([py, "-c", _RAW, "up", str(raw_src), BUCKET, "raw",
                                             part, conc], env, "raw_up"))
        for who in order:
            if who == "nomd5":
                continue
            if who == "ours":
                _fresh_volume(dest)
                res["ours_down"].append(_timed(db + ["restore", str(dest),
                                                     f"s3://{BUCKET}/full"], env, "ours_down"))
            else:
                res["raw_down"].append(_timed([py, "-c", _RAW, "down", str(work / "raw.bin"),
                                               BUCKET, "raw", part, conc], env, "raw_down"))
        print(f"round {rnd_i + 1}: " + ", ".join(
            f"{k} {nbytes / res[k][-1] / 1e6:.1f} MB/s" for k in res), flush=True)
    if dest.read_bytes() != vol.read_bytes():
        raise SystemExit("bench_s3: the restored volume differs from the original")
    med = {k: nbytes / statistics.median(v) / 1e6 for k, v in res.items()}
    print(f"load at end: {_uptime()}")
    print(f"backup to S3:    ours {med['ours_up']:.1f} MB/s, plain boto3 upload "
          f"{med['raw_up']:.1f} MB/s, ours/raw {med['ours_up'] / med['raw_up']:.2f}")
    print(f"  --no-s3-md5:   ours {med['nomd5_up']:.1f} MB/s, ours/raw "
          f"{med['nomd5_up'] / med['raw_up']:.2f}")
    print(f"restore from S3: ours {med['ours_down']:.1f} MB/s, plain boto3 download "
          f"{med['raw_down']:.1f} MB/s, ours/raw {med['ours_down'] / med['raw_down']:.2f}")
    gib = nbytes / (1 << 30)
    cpu = {k: statistics.median(v) / gib for k, v in CPU.items()}
    print(f"client CPU (user+sys) per GiB: backup ours {cpu['ours_up']:.1f} s "
          f"({cpu['nomd5_up']:.1f} s without MD5), raw "
          f"{cpu['raw_up']:.1f} s; restore ours {cpu['ours_down']:.1f} s, raw "
          f"{cpu['raw_down']:.1f} s")
    print("(medians of wall clock per run, process start-up included; restore writes the "
          "volume and its map, the download a plain file; the gateway and OSD run on the "
          "same cores)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_s3", description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--part-size", type=_size, default=16 << 20)
    p.add_argument("--uploads", type=int, default=2)
    p.add_argument("--endpoint", help="an S3 endpoint to use instead of booting Ceph")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-s3-", dir="/dev/shm"
                                 if os.access("/dev/shm", os.W_OK) else None))
    cluster = None
    try:
        import boto3
        if args.endpoint:
            extra = {"AWS_ENDPOINT_URL": args.endpoint}
        else:
            from scsi_target.testing.ceph import CephCluster
            # Overwritten objects stay in the memstore OSD until RGW's garbage
            # collection (hours): room for every upload of every round.
            cluster = CephCluster(work / "ceph", rgw=True, osd_bytes=max(
                2 << 30, (4 * args.rounds + 4) * args.mib << 20)).start()
            extra = {"AWS_ENDPOINT_URL": cluster.s3_endpoint,
                     "AWS_ACCESS_KEY_ID": cluster.s3_access_key,
                     "AWS_SECRET_ACCESS_KEY": cluster.s3_secret_key,
                     "AWS_DEFAULT_REGION": "us-east-1"}
        env = _env(extra)
        os.environ.update(extra)
        s3 = boto3.client("s3", endpoint_url=extra["AWS_ENDPOINT_URL"])
        try:
            s3.create_bucket(Bucket=BUCKET)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        run(args, env, work)
        for key in ("full", "full-nomd5", "raw"):
            s3.delete_object(Bucket=BUCKET, Key=key)
    finally:
        if cluster is not None:
            cluster.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
