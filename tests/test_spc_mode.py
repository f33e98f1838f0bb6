"""MODE SENSE / MODE SELECT and the control page's effects."""
from __future__ import annotations

import struct

from hypothesis import given, settings, strategies as st

from scsi_target.scsi.command import Status
from scsi_target.scsi.sense import SenseError, SenseKey
from test_spc_misc import NEXUS1, NEXUS2, Harness, TestTape

ILLEGAL = SenseKey.ILLEGAL_REQUEST


def sense6(h, page=0x3F, sub=0, pc=0, dbd=False, alloc=255, **kw):
    return h.ok([0x1A, 0x08 if dbd else 0, (pc << 6) | page, sub, alloc, 0], length=alloc, **kw)


def sense10(h, page=0x3F, sub=0, pc=0, dbd=False, llbaa=False, alloc=1024):
    b1 = (0x08 if dbd else 0) | (0x10 if llbaa else 0)
    return h.ok([0x5A, b1, (pc << 6) | page, sub, 0, 0, 0, alloc >> 8, alloc & 0xFF, 0],
                length=alloc)


def pages_of(data: bytes, hdr: int, bd_len: int) -> dict[tuple[int, int], bytes]:
    out, pos = {}, hdr + bd_len
    while pos < len(data):
        if data[pos] & 0x40:
            n = 4 + int.from_bytes(data[pos + 2:pos + 4], "big")
            out[(data[pos] & 0x3F, data[pos + 1])] = data[pos:pos + n]
        else:
            n = 2 + data[pos + 1]
            out[(data[pos] & 0x3F, 0)] = data[pos:pos + n]
        pos += n
    assert pos == len(data)
    return out


def select6(h, page: bytes, nexus=NEXUS1, sp=False):
    params = bytes(4) + page
    return h.run([0x15, 0x10 | (1 if sp else 0), 0, 0, len(params), 0], data=params, nexus=nexus)


def test_mode_sense6_all_pages_header_and_block_descriptor():
    h = Harness()
    data = sense6(h)
    assert data[0] == len(data) - 1
    assert data[2] == 0x10          # DPOFUA, not write protected
    assert data[3] == 8
    blocks, = struct.unpack(">I", data[4:8])
    assert blocks == h.lu.num_blocks and data[9:12] == (512).to_bytes(3, "big")
    pages = pages_of(data, 4, 8)
    assert {(0x01, 0), (0x08, 0), (0x0A, 0), (0x1C, 0)} <= set(pages)
    assert not any(sub for _, sub in pages)  # subpages only with 0xFF
    assert pages[(0x0A, 0)][:2] == b"\x0a\x0a"


def test_mode_sense_control_page_direct_equals_all_pages():
    h = Harness()
    direct = pages_of(sense6(h, 0x0A, dbd=True), 4, 0)
    every = pages_of(sense6(h, dbd=True), 4, 0)
    assert direct == {(0x0A, 0): every[(0x0A, 0)]}
    ctl = direct[(0x0A, 0)]
    assert (ctl[2] >> 5) <= 1 and (ctl[3] >> 1) & 3 != 2 and (ctl[4] >> 4) & 3 != 1
    assert ctl[8:10] != b"\x00\x00"  # busy timeout specified


def test_mode_sense10_long_lba_descriptor_and_subpages():
    h = Harness()
    data = sense10(h, 0x3F, 0xFF, llbaa=True)
    assert struct.unpack(">H", data[:2])[0] == len(data) - 2
    assert data[4] & 0x01 and struct.unpack(">H", data[6:8])[0] == 16
    blocks, = struct.unpack(">Q", data[8:16])
    assert blocks == h.lu.num_blocks and struct.unpack(">I", data[20:24])[0] == 512
    assert (0x0A, 1) in pages_of(data, 8, 16)


def test_mode_sense_non_disk_has_no_block_descriptor_and_no_disk_pages():
    h = Harness(TestTape())
    data = sense6(h)
    assert data[3] == 0
    assert (0x08, 0) not in pages_of(data, 4, 0)


def test_saved_values_not_supported():
    Harness().check([0x1A, 0, 0xC0 | 0x0A, 0, 255, 0], ILLEGAL, 0x39, 0)


def test_unknown_page_or_subpage_is_invalid_field():
    h = Harness()
    h.check([0x1A, 0, 0x05, 0, 255, 0], ILLEGAL, 0x24)
    h.check([0x1A, 0, 0x0A, 0x07, 255, 0], ILLEGAL, 0x24)


def test_changeable_mask_exposes_swp_and_dsense():
    ctl = pages_of(sense6(Harness(), 0x0A, pc=1, dbd=True), 4, 0)[(0x0A, 0)]
    assert ctl[:2] == b"\x0a\x0a" and ctl[2] == 0x04 and ctl[4] == 0x08


def test_residual_when_allocation_is_short():
    h = Harness()
    r = h.run([0x1A, 0, 0x3F, 0, 4, 0], length=4)
    assert r.resp.ok and len(r.data) == 4 and r.resp.residual == 0
    r = h.run([0x1A, 0, 0x3F, 0, 255, 0], length=255)
    assert r.resp.residual == 255 - len(r.data) > 0


def current_control(h) -> bytearray:
    return bytearray(pages_of(sense6(h, 0x0A, dbd=True), 4, 0)[(0x0A, 0)])


def test_swp_roundtrip_like_libiscsi_and_ua_for_other_nexus():
    h = Harness()
    h.clear_ua(NEXUS1)
    h.clear_ua(NEXUS2)
    page = current_control(h)
    page[4] |= 0x08
    assert select6(h, bytes(page)).status == Status.GOOD
    assert h.lu.mode.software_write_protect
    assert sense6(h)[2] & 0x80  # WP now reported
    assert h.run([0, 0, 0, 0, 0, 0]).status == Status.GOOD
    h.check([0, 0, 0, 0, 0, 0], SenseKey.UNIT_ATTENTION, 0x2A, 0x01, nexus=NEXUS2)
    page[4] &= ~0x08
    assert select6(h, bytes(page)).status == Status.GOOD
    assert not h.lu.mode.software_write_protect


def test_dsense_switches_sense_format():
    h = Harness()
    h.clear_ua()
    page = current_control(h)
    page[2] |= 0x04
    assert select6(h, bytes(page)).status == Status.GOOD
    r = h.run([0x1A, 0, 0x05, 0, 255, 0])
    assert r.resp.sense[0] == 0x72
    page[2] &= ~0x04
    select6(h, bytes(page))
    assert h.run([0x1A, 0, 0x05, 0, 255, 0]).resp.sense[0] == 0x70


def test_select_rejects_unchangeable_bits_and_changes_nothing():
    h = Harness()
    page = current_control(h)
    page[4] |= 0x08          # changeable
    page[5] |= 0x40          # TAS: not changeable
    r = select6(h, bytes(page))
    assert r.status == Status.CHECK_CONDITION and r.sense == (ILLEGAL, 0x26, 0)
    assert not h.lu.mode.software_write_protect


def test_select_wrong_page_length_unknown_page_and_truncation():
    h = Harness()
    page = bytes(current_control(h))
    assert select6(h, page[:1] + b"\x08" + page[2:10]).sense == (ILLEGAL, 0x26, 0)
    assert select6(h, b"\x05\x02\x00\x00").sense == (ILLEGAL, 0x26, 0)
    assert select6(h, page[:6]).sense == (ILLEGAL, 0x1A, 0)


def test_select_save_pages_is_invalid_cdb():
    h = Harness()
    assert select6(h, bytes(current_control(h)), sp=True).sense == (ILLEGAL, 0x24, 0)


def test_select10_with_block_descriptor_of_same_block_size():
    h = Harness()
    page = current_control(h)
    page[4] |= 0x08
    bd = struct.pack(">IB", 0, 0) + (512).to_bytes(3, "big")
    params = struct.pack(">HBBBBH", 0, 0, 0, 0, 0, 8) + bd + bytes(page)
    ok = h.run([0x55, 0x10, 0, 0, 0, 0, 0, 0, len(params), 0], data=params)
    assert ok.status == Status.GOOD and h.lu.mode.software_write_protect
    bad = bytearray(params)
    bad[13:16] = (4096).to_bytes(3, "big")
    r = h.run([0x55, 0x10, 0, 0, 0, 0, 0, 0, len(bad), 0], data=bytes(bad))
    assert r.sense == (ILLEGAL, 0x26, 0)


def test_lu_reset_restores_defaults():
    h = Harness()
    page = current_control(h)
    page[4] |= 0x08
    select6(h, bytes(page))
    h.lu.reset()
    assert not h.lu.mode.software_write_protect


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.booleans())
def test_mode_select_parser_only_raises_sense_errors(blob, long_header):
    h = Harness()
    try:
        h.lu.mode.select(blob, long_header, NEXUS1)
    except SenseError as err:
        assert err.key == SenseKey.ILLEGAL_REQUEST
