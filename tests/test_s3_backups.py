"""Backups to and from S3 (docs/s3-backups.md) against a real RADOS Gateway: `diffbackup
full|diff -o s3://...`, restore/verify/catalog/cleanup of s3:// streams, merge of s3://
streams (docs/backup-merge.md), memory bounds, and every bad input (bucket, credentials,
endpoint, existing key, damaged or truncated object, a backup killed mid-upload)."""
from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from types import SimpleNamespace

import pytest

from scsi_target.initiator.sync import SyncIscsiClient

from conftest import REPO, run_diffbackup as diffbackup
from scsi_target.testing.process import ServerProcess
from scsi_target.testing.seed import random_file as fill_random, scribble, tracked_writes
from volume.stream import Damage, StreamDecoder

pytestmark = [pytest.mark.ceph, pytest.mark.timeout(600)]

SIZE = 8 << 20
BS = 512
PART = "5M"                      # S3's smallest part: streams here span several


def _ok(r):
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    return r


def _one_line_failure(r, pattern: str):
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


@pytest.fixture
def s3(ceph_cluster, monkeypatch):
    boto3 = pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ceph_cluster.s3_access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ceph_cluster.s3_secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", ceph_cluster.s3_endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    client = boto3.client("s3", endpoint_url=ceph_cluster.s3_endpoint)
    bucket = f"pyscsi-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    ns = SimpleNamespace(client=client, bucket=bucket, endpoint=ceph_cluster.s3_endpoint,
                         url=lambda key: f"s3://{bucket}/{key}")
    yield ns
    # The OSD keeps objects in RAM: leave nothing behind.
    for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
    for o in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        client.delete_object(Bucket=bucket, Key=o["Key"])
    client.delete_bucket(Bucket=bucket)


def _keys(s3) -> list[str]:
    return [o["Key"] for o in s3.client.list_objects_v2(Bucket=s3.bucket).get("Contents", [])]


def _size(s3, key: str) -> int:
    return s3.client.head_object(Bucket=s3.bucket, Key=key)["ContentLength"]


def _image(c: SyncIscsiClient, size: int = SIZE) -> bytes:
    return b"".join(bytes(c.read(lba, 2048)) for lba in range(0, size // BS, 2048))


def _status(source: str) -> str:
    return _ok(diffbackup("status", source)).stdout


def _chain_over_iscsi(tmp_path, s3, prefix: str, seed: int) -> tuple[list[str], bytes]:
    """A random-data volume served over iSCSI, a full and three differentials to S3 in
    5 MiB parts (the full stream spans two parts and is longer than the volume): the
    keys and the volume's final contents."""
    fill_random(tmp_path / "vol.img", SIZE, seed=seed)
    keys = [f"{prefix}0-full", f"{prefix}1-diff", f"{prefix}2-diff", f"{prefix}3-diff"]
    with ServerProcess.from_flags(tmp_path, "--disk", f"{tmp_path}/vol.img",
                                  "--backup-device") as srv, SyncIscsiClient(srv.url(0)) as c:
        r = _ok(diffbackup("full", srv.url(0), "-o", s3.url(keys[0]), "--part-size", PART))
        assert f"-> {s3.url(keys[0])}" in r.stdout
        for n, key in enumerate(keys[1:], 1):
            scribble(c.write, SIZE, writes=40 * n, seed=seed * 10 + n)
            _ok(diffbackup("diff", srv.url(0), "--scope", "1", "-o", s3.url(key),
                           "--part-size", PART))
        final = _image(c)
    assert _size(s3, keys[0]) > max(SIZE, 5 << 20)
    return keys, final


def _restored(tmp_path, name: str, streams) -> bytes:
    dest = tmp_path / name
    r = _ok(diffbackup("restore", str(dest), *map(str, streams)))
    assert "restore complete" in r.stdout, r.stdout
    return dest.read_bytes()


def _uploads(s3) -> list:
    return s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", [])


# ------------------------------------------------------------------ round trip
def test_full_and_three_differentials_over_iscsi_restore_byte_identical(tmp_path, s3):
    """The chain of _chain_over_iscsi, restored from S3 alone to a fresh volume:
    byte-identical to the last backup."""
    keys, final = _chain_over_iscsi(tmp_path, s3, "vol/", seed=3)
    assert sorted(_keys(s3)) == keys
    v = _ok(diffbackup("verify", *[s3.url(k) for k in keys]))
    assert v.stdout.count(" ok ") == 4, v.stdout
    cat = _ok(diffbackup("catalog", s3.url("vol/")))
    assert re.search(r"1 full, 3 differential, generations up to 3: complete", cat.stdout), \
        cat.stdout
    assert "4 backup streams, 4 objects" in cat.stdout
    dest = tmp_path / "restored.img"
    rr = _ok(diffbackup("restore", str(dest), *[s3.url(k) for k in keys]))
    assert "restore complete" in rr.stdout
    assert dest.read_bytes() == final
    # And onto a volume served over iSCSI, straight from S3.
    with open(tmp_path / "new.img", "wb") as f:
        f.truncate(SIZE)
    with ServerProcess.from_flags(tmp_path, "--disk", f"{tmp_path}/new.img",
                                  "--backup-device") as srv, SyncIscsiClient(srv.url(0)) as c:
        rr = _ok(diffbackup("restore", srv.url(0), *[s3.url(k) for k in keys]))
        assert "restore complete" in rr.stdout
        assert _image(c) == final


# ---------------------------------------------------------------------- merge
def test_merge_s3_to_s3_to_file_and_file_to_s3_restores_like_the_chain(tmp_path, s3):
    """A synthetic full of a chain taken over iSCSI into S3, merged s3 -> s3, s3 -> file,
    file -> s3 and mixed; the three differentials merged into one, s3 -> s3.  Every
    merged stream restores byte-identical to the restore of the chain."""
    keys, final = _chain_over_iscsi(tmp_path, s3, "m/", seed=4)
    urls = [s3.url(k) for k in keys]
    files = []
    for k in keys:
        files.append(tmp_path / k.replace("/", "-"))
        s3.client.download_file(s3.bucket, k, str(files[-1]))
    r = _ok(diffbackup("merge", *urls, "-o", s3.url("m/synth"), "--part-size", PART))
    assert "synthetic full of generations 0..3 from 4 streams" in r.stdout, r.stdout
    assert f"-> {s3.url('m/synth')} (verified)" in r.stdout
    assert _size(s3, "m/synth") > 5 << 20                # a multipart upload of 2 parts
    _ok(diffbackup("merge", *urls, "-o", str(tmp_path / "synth.bk")))
    _ok(diffbackup("merge", *map(str, files), "-o", s3.url("m/from-files")))
    _ok(diffbackup("merge", str(files[0]), *urls[1:], "-o", s3.url("m/mixed"),
                   "--s3-uploads", "1", "--no-s3-md5"))
    r = _ok(diffbackup("merge", *urls[1:], "-o", s3.url("m/d1-3")))
    assert "merged differential of generations 1..3 from 3 streams" in r.stdout, r.stdout
    by_chain = _restored(tmp_path, "chain.img", urls)
    assert by_chain == final
    for i, streams in enumerate([[s3.url("m/synth")], [tmp_path / "synth.bk"],
                                 [s3.url("m/from-files")], [s3.url("m/mixed")],
                                 [urls[0], s3.url("m/d1-3")],
                                 [files[0], s3.url("m/d1-3")]]):
        assert _restored(tmp_path, f"merged{i}.img", streams) == by_chain, streams
    # A synthetic full of the synthetic full: still the same volume.
    _ok(diffbackup("merge", s3.url("m/synth"), "-o", s3.url("m/synth2")))
    assert _restored(tmp_path, "again.img", [s3.url("m/synth2")]) == by_chain
    # An existing key is refused (and kept) unless --force; the output may not be an input.
    before = s3.client.head_object(Bucket=s3.bucket, Key="m/synth")["ETag"]
    _one_line_failure(diffbackup("merge", *urls, "-o", s3.url("m/synth")),
                      r"m/synth exists \(give --force")
    assert s3.client.head_object(Bucket=s3.bucket, Key="m/synth")["ETag"] == before
    _ok(diffbackup("merge", *urls, "-o", s3.url("m/synth"), "--force"))
    bad = diffbackup("merge", *urls, "-o", urls[2])
    assert bad.returncode == 2 and "one of the input streams" in bad.stderr, bad.stderr
    assert not _uploads(s3)
    assert sorted(_keys(s3)) == sorted(keys + ["m/synth", "m/from-files", "m/mixed", "m/d1-3",
                                               "m/synth2"])


def _damage_record(s3, key: str, generation: int):
    """Flip bytes inside the data of one record of ``generation`` of object ``key`` and
    put the object back: the record, as the decoder saw it intact."""
    body = bytearray(s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read())
    rec = next(i for i in StreamDecoder().feed(bytes(body))
               if not isinstance(i, Damage) and i.kind == 0 and i.generation == generation)
    for k in range(rec.offset + 40 + 100, rec.offset + 40 + 116):
        body[k] ^= 0x5A
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=bytes(body))
    return rec


def test_merge_of_a_damaged_object_reports_it_in_one_line_and_stores_nothing(tmp_path, s3):
    vol = tmp_path / "vol.img"
    fill_random(vol, 4 << 20, seed=12)
    keys = ["x/full", "x/d1", "x/d2"]
    _ok(diffbackup("full", str(vol), "-o", s3.url(keys[0])))
    for g, key in enumerate(keys[1:], 1):
        tracked_writes(str(vol), 4 << 20, writes=30, seed=40 + g)
        _ok(diffbackup("diff", str(vol), "--scope", "1", "-o", s3.url(key)))
    rec = _damage_record(s3, "x/d2", 2)
    last = rec.first_block + rec.nblocks - 1
    urls = [s3.url(k) for k in keys]
    for out in (s3.url("x/synth"), str(tmp_path / "synth.bk")):
        r = diffbackup("merge", *urls, "-o", out, "--part-size", PART)
        line = _one_line_failure(r, "merge refused: ")
        assert f"{s3.url('x/d2')} at byte {rec.offset}: record {rec.seq}: data checksum " \
            f"mismatch (blocks {rec.first_block}..{last}, generation 2)" in line, line
        assert f"{out} not written" in line, line
        assert f"{rec.nblocks} blocks have a damaged newest copy: {rec.first_block}..{last};" \
            in r.stdout, r.stdout
    assert sorted(_keys(s3)) == sorted(keys)              # no x/synth
    assert not _uploads(s3)                               # its upload was aborted
    assert not list(tmp_path.glob("synth.bk*"))           # nor a file, nor its .partial
    # Damage in a copy that newer ones replace still refuses: the medium is suspect.
    s3.client.put_object(Bucket=s3.bucket, Key="x/d2", Body=b"")
    _one_line_failure(diffbackup("merge", *urls, "-o", s3.url("x/synth")),
                      r"merge refused: s3://\S+/x/d2: .*; s3://\S+/x/synth not written")
    assert sorted(_keys(s3)) == sorted(keys) and not _uploads(s3)


def test_an_object_replaced_between_the_passes_stops_the_merge(tmp_path, s3):
    """merge() in process: the full object is replaced once pass 1 has read it; pass 2's
    reads are pinned to the ETag pass 1 read, so the merge fails and stores nothing."""
    from volume.merge import merge
    from volume.streamstore import StreamStoreError
    vol = tmp_path / "vol.img"
    fill_random(vol, 2 << 20, seed=13)
    _ok(diffbackup("full", str(vol), "-o", s3.url("p/full")))
    tracked_writes(str(vol), 2 << 20, writes=20, seed=14)
    _ok(diffbackup("diff", str(vol), "--scope", "1", "-o", s3.url("p/d1")))
    first = _size(s3, "p/full")
    replaced = []

    def progress(done: int, _total: int) -> None:
        if done > first and not replaced:             # pass 1 is past the full stream
            body = bytearray(s3.client.get_object(Bucket=s3.bucket, Key="p/full")["Body"].read())
            body[1000] ^= 1                           # in the first record's data
            s3.client.put_object(Bucket=s3.bucket, Key="p/full", Body=bytes(body))
            replaced.append(True)
    with pytest.raises(StreamStoreError, match=r"p/full: the object was replaced since it was "
                       r"first read"):
        merge([s3.url("p/full"), s3.url("p/d1")], s3.url("p/synth"), progress=progress,
              s3_options={"endpoint": s3.endpoint})
    assert replaced
    assert sorted(_keys(s3)) == ["p/d1", "p/full"] and not _uploads(s3)


def test_many_generations_of_a_tiny_volume(tmp_path, s3):
    """Twelve differentials of a 1 MiB local volume, each a stream smaller than a part,
    then a full larger than the volume; the chain restores from S3."""
    size = 1 << 20
    vol = tmp_path / "tiny.img"
    fill_random(vol, size, seed=5)
    keys = ["t/00"]
    _ok(diffbackup("full", str(vol), "-o", s3.url("t/00")))
    for g in range(1, 13):
        tracked_writes(str(vol), size, writes=10, seed=100 + g)
        keys.append(f"t/{g:02d}")
        extra = ("--no-s3-md5",) if g % 2 else ()       # parts without Content-MD5 too
        _ok(diffbackup("diff", str(vol), "--scope", "1", "-o", s3.url(keys[-1]), *extra))
    assert _size(s3, "t/00") > size
    cat = _ok(diffbackup("catalog", s3.url("t/")))
    assert "1 full, 12 differential, generations up to 12: complete" in cat.stdout, cat.stdout
    dest = tmp_path / "back.img"
    _ok(diffbackup("restore", str(dest), *[s3.url(k) for k in keys]))
    assert dest.read_bytes() == vol.read_bytes()


# --------------------------------------------------------------------- memory
_MEASURED = r"""
import sys
from tools.diffbackup import main
rc = main(sys.argv[1:])
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(f"VMHWM {hwm}", file=sys.stderr)
sys.exit(rc)
"""


def _peak_kib(*args: str) -> int:
    r = subprocess.run([sys.executable, "-c", _MEASURED, "-q", *args], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return int(re.search(r"VMHWM (\d+)", r.stderr).group(1))


def test_upload_memory_is_bounded_by_the_parts_not_the_stream(tmp_path, s3):
    """A 96 MiB stream (19 parts of 5 MiB, one in flight) raises the diffbackup
    process's peak RSS by less than 40 MiB over a stream of 1 MiB: the stream is
    never held whole, nor in a temporary file."""
    big, small = tmp_path / "big.img", tmp_path / "small.img"
    fill_random(big, 96 << 20, seed=1)
    fill_random(small, 1 << 20, seed=2)
    base = _peak_kib("full", str(small), "-o", s3.url("m/small"), "--part-size", PART,
                     "--s3-uploads", "1")
    peak = _peak_kib("full", str(big), "-o", s3.url("m/big"), "--part-size", PART,
                     "--s3-uploads", "1")
    assert _size(s3, "m/big") > 96 << 20
    assert peak - base < 40 << 10, (base, peak)
    assert not list(tmp_path.glob("*.partial"))
    # Reading it back is bounded too.
    peak_verify = _peak_kib("verify", s3.url("m/big"))
    assert peak_verify - base < 40 << 10, (base, peak_verify)


def test_merge_memory_is_bounded_by_the_parts_not_the_streams(tmp_path, s3):
    """A synthetic full of a 96 MiB full and a differential, s3 -> s3 in 5 MiB parts
    (the output 20 parts, one in flight), raises the diffbackup process's peak RSS by
    less than 40 MiB over the merge of a 1 MiB chain: neither the inputs nor the
    output are held whole, nor in a temporary file."""
    peaks = {}
    for name, size in (("small", 1 << 20), ("big", 96 << 20)):
        vol = tmp_path / f"{name}.img"
        fill_random(vol, size, seed=len(name))
        _ok(diffbackup("full", str(vol), "-o", s3.url(f"mm/{name}-full"), "--part-size", PART))
        tracked_writes(str(vol), size, writes=200, seed=9)
        _ok(diffbackup("diff", str(vol), "--scope", "1", "-o", s3.url(f"mm/{name}-d1")))
        peaks[name] = _peak_kib("merge", s3.url(f"mm/{name}-full"), s3.url(f"mm/{name}-d1"),
                                "-o", s3.url(f"mm/{name}-synth"), "--part-size", PART,
                                "--s3-uploads", "1")
    assert _size(s3, "mm/big-synth") > 96 << 20
    assert peaks["big"] - peaks["small"] < 40 << 10, peaks
    assert not list(tmp_path.glob("*.partial"))
    dest = tmp_path / "back.img"
    _ok(diffbackup("restore", str(dest), s3.url("mm/big-synth")))
    assert dest.read_bytes() == (tmp_path / "big.img").read_bytes()


# ------------------------------------------------------------------ bad input
def test_missing_bucket_bad_credentials_unreachable_endpoint_cost_nothing(tmp_path, s3,
                                                                         monkeypatch):
    vol = tmp_path / "vol.img"
    fill_random(vol, 1 << 20, seed=7)
    _ok(diffbackup("full", str(vol), "-o", s3.url("b/full")))
    tracked_writes(str(vol), 1 << 20, writes=20, seed=8)
    before = _ok(diffbackup("estimate", str(vol), "--scope", "1")).stdout

    _one_line_failure(diffbackup("diff", str(vol), "--scope", "1", "-o",
                                 f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/k"),
                      r"no such bucket")
    _one_line_failure(diffbackup("diff", str(vol), "--scope", "1", "-o", s3.url("b/full")),
                      r"exists \(give --force")
    _one_line_failure(diffbackup("diff", str(vol), "--scope", "1", "-o", s3.url("b/d"),
                                 "--s3-endpoint", "http://127.0.0.1:9"),
                      r"cannot reach the S3 endpoint")
    _one_line_failure(diffbackup("diff", str(vol), "--scope", "1", "-o", "s3://bucket-only"),
                      r"no object key")
    with monkeypatch.context() as m:
        m.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        _one_line_failure(diffbackup("diff", str(vol), "--scope", "1", "-o", s3.url("b/d")),
                          r"credentials were refused|access denied")
        _one_line_failure(diffbackup("restore", str(tmp_path / "x.img"), s3.url("b/full")),
                          r"credentials were refused|access denied")
        m.delenv("AWS_SECRET_ACCESS_KEY")
        m.delenv("AWS_ACCESS_KEY_ID")
        _one_line_failure(diffbackup("diff", str(vol), "--scope", "1", "-o", s3.url("b/d")),
                          r"no AWS credentials")
    # Nothing above took a generation or left an object or upload behind.
    assert _ok(diffbackup("estimate", str(vol), "--scope", "1")).stdout == before
    assert "current generation 1;" in _status(str(vol))
    assert _keys(s3) == ["b/full"]
    _ok(diffbackup("diff", str(vol), "--scope", "1", "-o", s3.url("b/d")))
    # --force replaces an object.
    _ok(diffbackup("full", str(vol), "-o", s3.url("b/full"), "--force"))


def test_without_boto3_an_s3_url_says_what_to_install(tmp_path):
    vol = tmp_path / "vol.img"
    fill_random(vol, 1 << 20, seed=7)
    code = ("import sys; sys.modules['boto3'] = None; from tools.diffbackup import main; "
            "sys.exit(main(sys.argv[1:]))")
    for args in (["full", str(vol), "-o", "s3://b/k"], ["restore", str(vol), "s3://b/k"],
                 ["verify", "s3://b/k"], ["catalog", "s3://b/"], ["cleanup", "s3://b/"]):
        r = subprocess.run([sys.executable, "-c", code, "-q", *args], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
        _one_line_failure(r, r"pip install 'scsi-target\[s3\]'")
    assert not os.path.exists(str(vol) + ".genmap")        # the full backup never started


def test_damaged_and_truncated_objects_are_refused_record_by_record(tmp_path, s3):
    vol = tmp_path / "vol.img"
    fill_random(vol, 4 << 20, seed=11)
    _ok(diffbackup("full", str(vol), "-o", s3.url("d/full")))
    good = s3.client.get_object(Bucket=s3.bucket, Key="d/full")["Body"].read()
    bad = bytearray(good)
    for k in range(len(bad) // 2, len(bad) // 2 + 32):
        bad[k] ^= 0xA5
    s3.client.put_object(Bucket=s3.bucket, Key="d/damaged", Body=bytes(bad))
    s3.client.put_object(Bucket=s3.bucket, Key="d/truncated", Body=good[:len(good) // 3])
    s3.client.put_object(Bucket=s3.bucket, Key="d/notes.txt", Body=b"not a stream")

    r = diffbackup("restore", str(tmp_path / "r1.img"), s3.url("d/damaged"))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert re.search(r"bad record in s3://\S+/d/damaged at byte \d+", r.stdout), r.stdout
    assert "blocks not recovered" in r.stdout
    r = diffbackup("restore", str(tmp_path / "r2.img"), s3.url("d/truncated"))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert re.search(r"truncat", r.stdout), r.stdout
    v = diffbackup("verify", s3.url("d/damaged"), s3.url("d/truncated"))
    assert v.returncode == 1 and v.stdout.count("DAMAGED") == 2, v.stdout
    cat = diffbackup("catalog", s3.url("d/"), "--verify")
    assert cat.returncode == 1, cat.stdout + cat.stderr
    assert re.search(r"d/truncated .*NO \(no trailer", cat.stdout), cat.stdout
    assert re.search(r"d/damaged .*yes .*DAMAGED", cat.stdout), cat.stdout
    assert re.search(r"d/notes\.txt .*not a backup stream", cat.stdout), cat.stdout
    assert re.search(r"d/full .*yes .*│ ok", cat.stdout), cat.stdout
    _one_line_failure(diffbackup("restore", str(tmp_path / "r3.img"), s3.url("d/none")),
                      r"no such object")
    # The good one still restores.
    _ok(diffbackup("restore", str(tmp_path / "r4.img"), s3.url("d/full")))
    assert (tmp_path / "r4.img").read_bytes() == vol.read_bytes()


def _wait_for_parts(s3, key: str, parts: int, proc, timeout: float = 120) -> None:
    """Until the upload of ``key`` has ``parts`` parts (polled fast: the rest follows soon)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        ups = [u for u in s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", [])
               if u["Key"] == key]
        if ups:
            got = s3.client.list_parts(Bucket=s3.bucket, Key=key,
                                       UploadId=ups[0]["UploadId"]).get("Parts", [])
            if len(got) >= parts:
                return
        time.sleep(0.01)
    raise AssertionError("the upload did not get going")


def test_kill_9_mid_upload_leaves_no_object_and_no_generation(tmp_path, s3):
    """diffbackup killed while uploading a differential from a served target: no object
    under the key, the target's map unchanged (the next differential of the same scope
    carries every block), the unfinished upload listed by catalog and removed by cleanup."""
    size = 96 << 20
    fill_random(tmp_path / "vol.img", size, seed=21)
    with ServerProcess.from_flags(tmp_path, "--disk", f"{tmp_path}/vol.img",
                                  "--backup-device") as srv, SyncIscsiClient(srv.url(0)) as c:
        _ok(diffbackup("full", srv.url(0), "-o", s3.url("k/full"), "--part-size", PART))
        rnd = random.Random(22)
        for lba in range(0, size // BS, 2048):          # a differential of every block
            c.write(lba, rnd.randbytes(2048 * BS))
        before = _ok(diffbackup("estimate", srv.url(0), "--scope", "1")).stdout
        proc = subprocess.Popen([sys.executable, "-m", "tools.diffbackup", "-q", "diff",
                                 srv.url(0), "--scope", "1", "-o", s3.url("k/diff"),
                                 "--part-size", PART, "--s3-uploads", "1"],
                                cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        _wait_for_parts(s3, "k/diff", 1, proc)
        proc.send_signal(signal.SIGSTOP)    # mid-upload: 1 of about 20 parts there
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert "k/diff" not in _keys(s3)
        time.sleep(0.5)                     # the target notices the dropped connection
        st = _status(srv.url(0))
        assert "current generation 1;" in st, st
        assert _ok(diffbackup("estimate", srv.url(0), "--scope", "1")).stdout == before
        cat = _ok(diffbackup("catalog", s3.url("k/")))
        assert re.search(r"unfinished upload of s3://\S+/k/diff", cat.stdout), cat.stdout
        kept = _ok(diffbackup("cleanup", s3.url("k/")))
        assert "aborted 0 unfinished uploads, kept 1" in kept.stdout, kept.stdout
        dry = _ok(diffbackup("cleanup", s3.url("k/"), "--older-than", "0", "--dry-run"))
        assert "would abort 1" in dry.stdout
        gone = _ok(diffbackup("cleanup", s3.url("k/"), "--older-than", "0"))
        assert "aborted 1 unfinished uploads" in gone.stdout, gone.stdout
        assert not s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads")
        # The next differential holds every block the killed one would have.
        _ok(diffbackup("diff", srv.url(0), "--scope", "1", "-o", s3.url("k/diff"),
                       "--part-size", PART))
        final = _image(c, size)
    dest = tmp_path / "restored.img"
    _ok(diffbackup("restore", str(dest), s3.url("k/full"), s3.url("k/diff")))
    assert dest.read_bytes() == final


def _race(s3, srv_url: str, key: str):
    """A differential whose key is taken by another writer while it uploads."""
    proc = subprocess.Popen([sys.executable, "-m", "tools.diffbackup", "-q", "diff", srv_url,
                             "--scope", "1", "-o", s3.url(key), "--part-size", PART,
                             "--s3-uploads", "1"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_parts(s3, key, 1, proc)
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=b"someone else's")
    out, errs = proc.communicate(timeout=300)
    return SimpleNamespace(returncode=proc.returncode, stdout=out, stderr=errs)


def _old_target_env(tmp_path, monkeypatch) -> None:
    """Servers started from here refuse SELECT BACKUP's HOLD bit, like a target before it
    (which also predates START BACKUP's own selection: START_SELECTS clear)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "from scsi_target.scsi.layouts import backup as L\n"
        "L.CDB_FLAGS_ALLOWED[L.OP_SELECT_BACKUP] &= ~L.FLAG_HOLD\n"
        "L.CDB_FLAGS_ALLOWED[L.OP_START_BACKUP] = 0\n")
    monkeypatch.setenv("PYTHONPATH", f"{site}{os.pathsep}{REPO}")


@pytest.mark.parametrize("old_target", [False, True], ids=["held", "before-hold"])
def test_a_key_taken_during_the_upload_is_not_replaced(tmp_path, s3, monkeypatch, old_target):
    """Another writer puts KEY while diffbackup uploads: the upload is aborted, the other
    object stays.  With HOLD the target's map is unchanged; a target before HOLD has
    committed at the last byte read, and diffbackup names the scope that covers it."""
    size = 48 << 20
    fill_random(tmp_path / "vol.img", size, seed=31)
    if old_target:
        _old_target_env(tmp_path, monkeypatch)
    with ServerProcess.from_flags(tmp_path, "--disk", f"{tmp_path}/vol.img",
                                  "--backup-device") as srv, SyncIscsiClient(srv.url(0)) as c:
        _ok(diffbackup("full", srv.url(0), "-o", s3.url("r/full"), "--part-size", PART))
        rnd = random.Random(32)
        for lba in range(0, size // BS, 2048):
            c.write(lba, rnd.randbytes(2048 * BS))
        r = _race(s3, srv.url(0), "r/diff")
        line = _one_line_failure(r, r"appeared while the backup was uploading; not replaced")
        body = s3.client.get_object(Bucket=s3.bucket, Key="r/diff")["Body"].read()
        assert body == b"someone else's"
        assert not s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads")
        st = _status(srv.url(0))
        if old_target:
            assert "--scope 2 to cover them again" in line, line
            assert "current generation 2;" in st, st
            scope = "2"
        else:
            assert "the backup was not taken" in line, line
            assert "current generation 1;" in st, st
            scope = "1"
        _ok(diffbackup("diff", srv.url(0), "--scope", scope, "-o", s3.url("r/diff2"),
                       "--part-size", PART))
        final = _image(c, size)
    dest = tmp_path / "restored.img"
    _ok(diffbackup("restore", str(dest), s3.url("r/full"), s3.url("r/diff2")))
    assert dest.read_bytes() == final
