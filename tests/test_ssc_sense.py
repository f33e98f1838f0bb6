"""Sense data of every SSC-4 condition the tape LU reports (fixed and descriptor format)."""
from __future__ import annotations

import os

import pytest

from scsi_target.scsi.command import Status
from scsi_target.scsi.layouts import tape as LT
from scsi_target.scsi.layouts.sense import decode_sense
from tape import TapeImage
from tape import format as F
from test_ssc_commands import NEXUS2, TUR, TapeHarness, blob

NO_SENSE, NOT_READY, MEDIUM, ILLEGAL, UA, PROTECT, BLANK, OVERFLOW = 0, 2, 3, 5, 6, 7, 8, 0xD


@pytest.fixture
def h(tmp_path):
    return TapeHarness(tmp_path)


def _d_sense(h, on=True):
    page = bytearray(h.ok([0x1A, 0x08, 0x0A, 0, 255, 0])[4:])
    page[0] &= 0x3F
    page[2] = (page[2] | 0x04) if on else (page[2] & ~0x04)
    h.ok([0x15, 0x10, 0, 0, 4 + len(page), 0], data=bytes([0, 0, 0x10, 0]) + bytes(page))


# ---------------------------------------------------------------- FILEMARK
def test_read_variable_at_filemark(h):
    h.wfm()
    h.rewind()
    r = h.check(LT.read6(100), NO_SENSE, 0, 1, length=100)
    assert r.sense_data.filemark and not r.sense_data.eom and r.sense_data.information == 100
    assert r.resp.residual == 100 and r.data == b""
    assert h.position().logical_object == 1  # past the filemark, on its EOP side


def test_read_fixed_stops_at_filemark_with_the_blocks_before_it(h):
    h.set_block_length(512)
    data = blob(512 * 3)
    h.write_fixed(data, 512)
    h.wfm()
    h.rewind()
    r = h.check(LT.read6(5, fixed=True), NO_SENSE, 0, 1, length=5 * 512)
    assert r.data == data and r.sense_data.information == 2 and r.sense_data.filemark
    assert r.resp.residual == 2 * 512
    assert h.position().logical_object == 4


# -------------------------------------------------------------- BLANK CHECK
def test_read_at_eod_is_blank_check(h):
    h.write(blob(10))
    r = h.check(LT.read6(10), BLANK, 0, 5, length=10)
    assert r.sense_data.information == 10 and not r.sense_data.filemark
    assert h.position().logical_object == 1  # stays at EOD


def test_read_fixed_reaching_eod(h):
    h.set_block_length(1024)
    data = blob(2048)
    h.write_fixed(data, 1024)
    h.rewind()
    r = h.check(LT.read6(3, fixed=True), BLANK, 0, 5, length=3072)
    assert r.data == data and r.sense_data.information == 1


def test_space_forward_to_eod_is_blank_check_with_residue(h):
    for _ in range(3):
        h.write(blob(10))
    h.rewind()
    r = h.check([0x11, 0, 0, 0, 5, 0], BLANK, 0, 5)
    assert r.sense_data.information == 2
    r = h.check([0x11, 1, 0, 0, 1, 0], BLANK, 0, 5)
    assert r.sense_data.information == 1


def test_space_blocks_over_filemark_reports_it(h):
    h.write(blob(10))
    h.wfm()
    h.write(blob(10))
    h.rewind()
    r = h.check([0x11, 0, 0, 0, 3, 0], NO_SENSE, 0, 1)
    assert r.sense_data.filemark and r.sense_data.information == 2
    assert h.position().logical_object == 2


# --------------------------------------------------------------- BOP (EOM)
def test_space_back_into_bop(h):
    h.write(blob(10))
    h.write(blob(10))
    r = h.check([0x11, 0, 0xFF, 0xFF, 0xFB, 0], NO_SENSE, 0, 4)  # -5
    assert r.sense_data.eom and r.sense_data.information == 3
    assert h.position().bop


# --------------------------------------------------------------------- ILI
def test_ili_underlength_without_sili(h):
    rec = blob(300)
    h.write(rec)
    h.rewind()
    r = h.check(LT.read6(500), NO_SENSE, 0, 0, length=500)
    assert r.sense_data.ili and r.sense_data.information == 200 and r.data == rec
    assert r.resp.residual == 200


def test_sili_suppresses_underlength(h):
    rec = blob(300)
    h.write(rec)
    h.rewind()
    r = h.read(500, sili=True)
    assert r.status == Status.GOOD and r.data == rec and r.resp.residual == 200


def test_ili_overlength_reports_negative_residue(h):
    rec = blob(700)
    h.write(rec)
    h.rewind()
    r = h.check(LT.read6(500), NO_SENSE, 0, 0, length=500)
    assert r.sense_data.ili and r.data == rec[:500]
    assert r.sense_data.information == (500 - 700) & 0xFFFFFFFF  # two's complement
    assert h.position().logical_object == 1  # past the record


def test_sili_overlength_depends_on_mode_block_length(h):
    h.write(blob(700))
    h.write(blob(700))
    h.rewind()
    assert h.read(500, sili=True).status == Status.GOOD  # block length 0: no error
    h.set_block_length(512)
    r = h.check(LT.read6(500, sili=True), NO_SENSE, 0, 0, length=500)
    assert r.sense_data.ili


def test_fixed_read_incorrect_length_block(h):
    h.set_block_length(512)
    good = blob(512)
    h.write_fixed(good, 512)
    h.set_block_length(0)
    h.write(blob(100))
    h.set_block_length(512)
    h.rewind()
    r = h.check(LT.read6(3, fixed=True), NO_SENSE, 0, 0, length=1536)
    assert r.sense_data.ili and r.sense_data.information == 2 and r.data == good
    assert h.position().logical_object == 2


# ----------------------------------------------- early warning / end-of-medium
def _small(tmp_path, **kw):
    return TapeHarness(tmp_path, capacity=64 << 10, early_warning=16 << 10, **kw)


def test_early_warning_on_write_then_volume_overflow(tmp_path):
    h = _small(tmp_path)
    rec = blob(4000)
    results = []
    for _ in range(40):
        results.append(h.write(rec))
        last = results[-1]
        if last.status == Status.CHECK_CONDITION and last.sense_data.key == OVERFLOW:
            break
    goods = [r for r in results if r.status == Status.GOOD]
    ew = [r for r in results
          if r.status == Status.CHECK_CONDITION and r.sense_data.key == NO_SENSE]
    assert goods and ew, "never reached early warning"
    for r in ew:  # written, but in the early-warning zone
        assert r.sense == (NO_SENSE, 0, 2) and r.sense_data.eom and r.sense_data.information == 0
    last = results[-1]
    assert last.sense == (OVERFLOW, 0, 2)
    assert last.sense_data.eom and last.sense_data.information == 4000
    written = len(goods) + len(ew)
    p = h.position()
    assert p.logical_object == written and p.eop
    h.rewind()
    for _ in range(written):
        assert h.ok(LT.read6(4000), length=4000) == rec
    h.check(LT.read6(4000), BLANK, 0, 5, length=4000)


def test_fixed_write_at_end_of_medium_writes_what_fits(tmp_path):
    h = _small(tmp_path)
    h.set_block_length(1024)
    per = F.FRAME_SIZE + 1024
    fits = (64 << 10) // per
    r = h.run(LT.write6(fits + 5, fixed=True), data=blob(1024 * (fits + 5)))
    assert r.sense == (OVERFLOW, 0, 2) and r.sense_data.eom and r.sense_data.information == 5
    assert h.position().logical_object == fits


def test_filemarks_in_early_warning_zone(tmp_path):
    h = _small(tmp_path)
    h.write(blob(50000))
    r = h.check([0x10, 0, 0, 0, 1, 0], NO_SENSE, 0, 2)
    assert r.sense_data.eom
    assert h.position().logical_file == 1


# ---------------------------------------------------------------- NOT READY
def test_not_ready_without_medium(h):
    h.lu.remove()
    for cdb in (TUR, LT.read6(10), LT.write6(1), [0x01, 0, 0, 0, 0, 0], [0x34] + [0] * 9,
                [0x11, 0, 0, 0, 1, 0], LT.read_attribute()):
        h.check(cdb, NOT_READY, 0x3A, data=b"x" if cdb[0] == 0x0A else None)
    # still answers the commands that need no medium
    h.ok([0x12, 0, 0, 0, 36, 0])
    h.ok([0x05, 0, 0, 0, 0, 0])
    h.ok([0x1A, 0, 0x3F, 0, 255, 0])
    r = h.run([0x03, 0, 0, 0, 18, 0], length=18)
    assert decode_sense(r.data).asc == 0x3A


# -------------------------------------------------------------- UNIT ATTENTION
def test_unit_attention_after_medium_change(h, tmp_path):
    h.lu.insert(TapeImage.create(tmp_path / "new.img", 1 << 20))
    for n in (None, NEXUS2):
        kw = {"nexus": n} if n else {}
        h.check(TUR, UA, 0x28, **kw)
        h.ok(TUR, **kw)


# ---------------------------------------------------------------- DATA PROTECT
def test_data_protect_when_cartridge_protected(tmp_path):
    h = TapeHarness(tmp_path, write_protect=True)
    assert h.ok([0x1A, 0, 0x3F, 0, 255, 0])[2] & 0x80
    for cdb, data in ((LT.write6(4), b"abcd"), ([0x10, 0, 0, 0, 1, 0], None),
                      (LT.erase(), None)):
        h.check(cdb, PROTECT, 0x27, data=data)
    h.ok([0x10, 0, 0, 0, 0, 0])  # a zero-count WRITE FILEMARKS only flushes


def test_data_protect_when_image_file_is_read_only(tmp_path):
    TapeImage.create(tmp_path / "ro.img", 1 << 20).close()
    img = TapeImage.open(tmp_path / "ro.img", read_only=True)
    h = TapeHarness(tmp_path, image=img, name="ro.img")
    h.check(LT.write6(4), PROTECT, 0x27, data=b"abcd")


# ---------------------------------------------------------------- MEDIUM ERROR
def test_corrupt_record_is_medium_error_and_position_moves_past_it(tmp_path):
    h = TapeHarness(tmp_path)
    a, b = blob(1000), blob(1000)
    h.write(a)
    h.write(b)
    h.lu.close()
    with open(h.path, "r+b") as f:  # flip one payload byte of the first record
        f.seek(F.DATA_START + F.FRAME_SIZE + 10)
        c = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([c[0] ^ 0xFF]))
    h2 = TapeHarness(tmp_path, image=TapeImage.open(h.path))
    r = h2.check(LT.read6(1000), MEDIUM, 0x11, length=1000)
    assert r.sense_data.information == 1000
    assert h2.ok(LT.read6(1000), length=1000) == b  # the next record still reads
    p = {}
    page = h2.ok(LT.log_sense(0x2E))
    pos = 4
    while pos < len(page):
        p[int.from_bytes(page[pos:pos + 2], "big")] = page[pos + 4]
        pos += 5
    assert p[5] == 1  # TapeAlert: read failure


def test_fixed_read_transfers_the_blocks_before_a_corrupt_one(tmp_path):
    h = TapeHarness(tmp_path)
    h.set_block_length(512)
    data = blob(512 * 4)
    h.write_fixed(data, 512)
    h.lu.close()
    with open(h.path, "r+b") as f:  # damage block 2
        f.seek(F.DATA_START + 2 * (F.FRAME_SIZE + 512) + F.FRAME_SIZE + 100)
        f.write(b"\x00\xff\x00")
    h2 = TapeHarness(tmp_path, image=TapeImage.open(h.path))
    h2.set_block_length(512)
    r = h2.check(LT.read6(4, fixed=True), MEDIUM, 0x11, length=2048)
    assert r.data == data[:1024] and r.sense_data.information == 2
    assert h2.ok(LT.read6(1, fixed=True), length=512) == data[1536:]  # block 3


# ------------------------------------------------------ descriptor format sense
def test_descriptor_sense_carries_stream_bits_and_information(h):
    _d_sense(h)
    h.write(blob(300))
    h.wfm()
    h.rewind()
    r = h.run(LT.read6(500), length=500)
    assert r.resp.sense[0] == 0x72
    s = r.sense_data
    assert s.ili and s.information == 200 and s.descriptor_format
    r = h.run(LT.read6(500), length=500)
    assert r.resp.sense[0] == 0x72 and r.sense_data.filemark and r.sense_data.information == 500


def test_request_sense_after_a_delivered_condition_reports_no_sense(h):
    """Sense delivered with its CHECK CONDITION (autosense) is not kept (SPC-4 5.12):
    a later REQUEST SENSE reports NO SENSE, in either format, as on a disk."""
    h.wfm()
    h.rewind()
    h.check(LT.read6(64), NO_SENSE, 0, 1, length=64)
    desc = decode_sense(h.ok([0x03, 1, 0, 0, 252, 0], length=252))
    assert desc.descriptor_format and (desc.key, desc.asc, desc.ascq) == (NO_SENSE, 0, 0)
    assert not desc.filemark and desc.information is None
    h.check(LT.read6(64), BLANK, 0, 5, length=64)
    fixed = decode_sense(h.ok([0x03, 0, 0, 0, 252, 0], length=252))
    assert not fixed.descriptor_format and (fixed.key, fixed.asc, fixed.ascq) == (NO_SENSE, 0, 0)
