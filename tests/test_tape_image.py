"""Tape image format v1: golden vectors, recovery after torn writes, metadata slots, CRC."""
from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tape import TapeDrive, TapeImage, mam
from tape import format as F
from tape.errors import EndOfData, ImageFormatError, MamError, RecordCorrupt

GOLDEN = Path(__file__).parent / "golden" / "tape"


def _payloads() -> list[bytes | None]:
    rnd = random.Random(9)
    return [rnd.randbytes(17), rnd.randbytes(512), rnd.randbytes(4096), None,
            rnd.randbytes(1024), rnd.randbytes(1024), None, None]


def make_golden(path: Path) -> None:
    """The image of tests/golden/tape/image_v1.img.gz, byte for byte."""
    img = TapeImage.create(path, 1 << 20, early_warning=64 << 10, crc=True, barcode="GOLD01",
                           label="golden v1", serial="PYTAPE-GOLDEN-1", uuid=bytes(range(16)),
                           created=1_790_000_000)
    for k, p in enumerate(_payloads()):
        if p is None:
            img.append_filemarks(k, 1)
        else:
            img.append_records(k, [memoryview(p)])
    img.close()


def test_golden_image_is_reproduced_byte_for_byte(tmp_path):
    make_golden(tmp_path / "g.img")
    want = gzip.decompress((GOLDEN / "image_v1.img.gz").read_bytes())
    assert (tmp_path / "g.img").read_bytes() == want


def test_golden_image_decodes(tmp_path):
    p = tmp_path / "g.img"
    p.write_bytes(gzip.decompress((GOLDEN / "image_v1.img.gz").read_bytes()))
    img = TapeImage.open(p, read_only=True)
    pay = _payloads()
    assert img.count == len(pay) and img.filemark_count == 3 and img.torn_bytes == 0
    for k, want in enumerate(pay):
        assert img.is_filemark(k) == (want is None)
        if want is not None:
            buf = memoryview(bytearray(len(want)))
            img.read_into(k, buf)
            assert bytes(buf) == want
    assert img.barcode() == "GOLD01" and img.label() == "golden v1"
    assert img.sb.serial == "PYTAPE-GOLDEN-1" and img.sb.capacity == 1 << 20
    assert img.filemarks_before(7) == 2


def test_golden_layout_vectors():
    vec = json.loads((GOLDEN / "layouts_v1.json").read_text())
    assert F.pack_frame(F.KIND_RECORD, 17, 1, 0, F.FLAG_FRAME_CRC, 0x12345678).hex() \
        == vec["frame_record"]
    assert F.pack_frame(F.KIND_FILEMARK, 0, 3, (1 << 40) + 5).hex() == vec["frame_filemark_64bit"]
    sb = F.Superblock(1 << 20, 64 << 10, F.FLAG_SUPER_CRC, 0x80, 1_790_000_000,
                      "PYTAPE-GOLDEN-1", bytes(range(16)))
    assert sb.pack().hex() == vec["superblock"]
    assert F.Superblock.unpack(bytes.fromhex(vec["superblock"])) == sb
    head = F.FrameHeader.unpack(bytes.fromhex(vec["frame_filemark_64bit"]))
    assert head.index == (1 << 40) + 5 and head.kind == F.KIND_FILEMARK


# --------------------------------------------------------------- recovery
def _written(tmp_path, n=5, size=3000, crc=True):
    path = tmp_path / "t.img"
    img = TapeImage.create(path, 4 << 20, crc=crc)
    recs = [os.urandom(size) for _ in range(n)]
    img.append_records(0, [memoryview(r) for r in recs])
    img.close()
    return path, recs


def _read_all(img: TapeImage) -> list[bytes]:
    out = []
    for k in range(img.count):
        buf = memoryview(bytearray(img.length(k)))
        img.read_into(k, buf)
        out.append(bytes(buf))
    return out


@pytest.mark.parametrize("tail", ["half-payload", "half-header", "noise"])
def test_torn_tail_is_dropped_and_cut_at_next_write(tmp_path, tail):
    path, recs = _written(tmp_path)
    extra = os.urandom(2000)
    torn = {"half-payload": F.pack_frame(F.KIND_RECORD, 2000, 1, 5) + extra[:700],
            "half-header": F.pack_frame(F.KIND_RECORD, 2000, 1, 5)[:13],
            "noise": os.urandom(100)}[tail]
    with open(path, "ab") as f:
        f.write(torn)
    img = TapeImage.open(path)
    assert img.count == 5 and img.torn_bytes == len(torn)
    assert _read_all(img) == recs
    img.append_records(5, [memoryview(extra)])
    img.close()
    img = TapeImage.open(path)
    assert img.torn_bytes == 0 and _read_all(img) == recs + [extra]


def test_stale_frames_after_a_lost_truncation_are_not_resurrected(tmp_path):
    """Power loss can undo a truncation; the epoch check still ends the chain."""
    path, recs = _written(tmp_path)
    old = path.read_bytes()
    img = TapeImage.open(path)
    new = os.urandom(3000)
    img.append_records(1, [memoryview(new)])  # overwrite from object 1: epoch goes up
    img.close()
    cut = path.read_bytes()
    path.write_bytes(cut + old[len(cut):])  # the old frames 2.. come back
    img = TapeImage.open(path)
    assert img.count == 2 and _read_all(img) == [recs[0], new]


def test_newest_torn_metadata_slot_falls_back_to_the_older(tmp_path):
    path = tmp_path / "t.img"
    img = TapeImage.create(path, 1 << 20, barcode="FIRST1")
    img.set_attributes([mam.Attribute(mam.ID_BARCODE, mam.FORMAT_ASCII,
                                      mam.ascii_value("SECOND", 32))])
    seq = img._meta_seq
    img.close()
    where = F.META_OFFSET + (seq % 2) * F.META_SLOT_SIZE
    with open(path, "r+b") as f:
        f.seek(where + 40)
        f.write(b"\xff" * 8)  # torn attribute bytes: the CRC fails
    assert TapeImage.open(path).barcode() == "FIRST1"


def test_crc_mismatch_detected_on_read_and_by_verify(tmp_path):
    path, recs = _written(tmp_path, n=3)
    with open(path, "r+b") as f:
        f.seek(F.DATA_START + 2 * (F.FRAME_SIZE + 3000) + F.FRAME_SIZE + 5)
        f.write(b"\x00\x01")
    img = TapeImage.open(path)
    assert img.verify() == [(2, "CRC32C mismatch")]
    with pytest.raises(RecordCorrupt):
        img.read_into(2, memoryview(bytearray(3000)))


def test_no_crc_images_skip_the_check(tmp_path):
    path, recs = _written(tmp_path, n=2, crc=False)
    img = TapeImage.open(path)
    assert not img.crc_records and img.verify() == [] and _read_all(img) == recs


@pytest.mark.parametrize("damage,msg", [
    (lambda b: b"XXXXXXXX" + b[8:], "bad magic"),
    (lambda b: b[:8] + (2).to_bytes(2, "big") + b[10:], "version 2 is not supported"),
    (lambda b: b[:20] + b"\x01" + b[21:], "checksum mismatch"),
    (lambda b: b[:100], "shorter than the 512-byte superblock"),
])
def test_bad_superblock_is_a_precise_error(tmp_path, damage, msg):
    path, _ = _written(tmp_path, n=1)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ImageFormatError, match=msg):
        TapeImage.open(path)


def test_one_writer_per_image(tmp_path):
    from tape.errors import TapeIOError
    path, recs = _written(tmp_path, n=1)
    first = TapeImage.open(path)
    with pytest.raises(TapeIOError, match="in use by another process"):
        TapeImage.open(path)
    assert TapeImage.open(path, read_only=True).count == 1  # inspecting is fine
    first.close()
    TapeImage.open(path).close()


def test_large_records_and_filemark_index(tmp_path):
    img = TapeImage.create(tmp_path / "big.img", 40 << 20)
    big = os.urandom(8 << 20)
    img.append_records(0, [memoryview(big)])
    img.append_filemarks(1, 3)
    img.append_records(4, [memoryview(big[:10])])
    img.close()
    img = TapeImage.open(tmp_path / "big.img")
    buf = memoryview(bytearray(8 << 20))
    img.read_into(0, buf)
    assert buf == big and img.filemark_count == 3 and img.filemarks_before(5) == 3


def test_mam_writes_refuse_device_and_medium_attributes(tmp_path):
    img = TapeImage.create(tmp_path / "m.img", 1 << 20)
    for attr in (mam.Attribute(0x0003, 0, bytes(8)), mam.Attribute(0x0401, 1, b"x" * 32),
                 mam.Attribute(0x0806, 1, b"short"), mam.Attribute(0x0806, 0, b"x" * 32)):
        with pytest.raises(MamError):
            img.set_attributes([attr])
    with pytest.raises(MamError, match="holds"):
        img.set_attributes([mam.Attribute(0x1400 + k, 0, bytes(60000)) for k in range(2)])
    assert img.attribute(0x1400) is None  # all or nothing


def test_drive_locate_beyond_eod_and_64bit_targets(tmp_path):
    path, _ = _written(tmp_path, n=2)
    d = TapeDrive(TapeImage.open(path))
    with pytest.raises(EndOfData):
        d.locate(1 << 40)
    assert d.pos == 2


def test_image_counters_survive_reload(tmp_path):
    path, _ = _written(tmp_path, n=1)
    for _ in range(3):
        d = TapeDrive(TapeImage.open(path))
        d.write_records([memoryview(os.urandom(2_000_000))])
        d.remove()
    img = TapeImage.open(path)
    assert int.from_bytes(img.attribute(mam.ID_LOAD_COUNT).value, "big") == 3
    assert int.from_bytes(img.attribute(mam.ID_MB_WRITTEN_LIFE).value, "big") == 6


def test_backup_stream_as_records_and_filemark_spanning_two_cartridges(tmp_path):
    """The shape of a backup to tape: records + filemark, next cartridge at end-of-medium."""
    stream = os.urandom(3 << 20)
    d = TapeDrive(TapeImage.create(tmp_path / "c1.img", 2 << 20, early_warning=256 << 10))
    r = d.write_stream(stream, 65536)
    assert r.overflow and r.early_warning and 0 < r.objects < 48
    first = r.objects * 65536
    d2 = TapeDrive(TapeImage.create(tmp_path / "c2.img", 8 << 20))
    r2 = d2.write_stream(memoryview(stream)[first:], 65536)
    assert not r2.overflow and not r2.early_warning
    d2.write_filemarks(1)
    d2.write_stream(b"second backup", 65536)
    d2.write_filemarks(1)
    d.rewind()
    d2.rewind()
    back = b"".join(bytes(x) for x in d.read_file()) + b"".join(bytes(x) for x in d2.read_file())
    assert back == stream
    assert [bytes(x) for x in d2.read_file()] == [b"second backup"]
    assert d2.file_number == 2


# ------------------------------------------------------------------ kill -9
WRITER = textwrap.dedent("""
    import random, sys
    from tape import TapeDrive, TapeImage
    d = TapeDrive(TapeImage.open(sys.argv[1]))
    k = 0
    while True:
        if k % 11 == 10:
            d.write_filemarks(1, sync=False)
        else:
            d.write_records([memoryview(random.Random(k).randbytes(1000 + (k * 7919) % 200000))])
        print(k, flush=True)  # acknowledged
        k += 1
""")


def test_kill_9_mid_write_keeps_every_acknowledged_record(tmp_path):
    path = tmp_path / "crash.img"
    TapeImage.create(path, 1 << 30, crc=True).close()
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                            cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    acked = -1
    try:
        for line in proc.stdout:
            acked = int(line)
            if acked >= 150:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert acked >= 150
    img = TapeImage.open(path)
    assert img.count >= acked + 1
    for k in range(img.count):
        if img.is_filemark(k):
            assert k % 11 == 10
            continue
        want = random.Random(k).randbytes(1000 + (k * 7919) % 200000)
        buf = memoryview(bytearray(img.length(k)))
        img.read_into(k, buf)
        assert bytes(buf) == want, k
    assert img.verify() == []
