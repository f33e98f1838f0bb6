"""INQUIRY: standard data and VPD pages."""
from __future__ import annotations

import struct

import pytest

from scsi_target.scsi.capabilities import BlockLimits
from scsi_target.scsi.dispatch import DispatchTable
from scsi_target.scsi.sense import SenseKey
from scsi_target.scsi.xcopy import XCOPY
from test_spc_misc import FAKE_MEDIUM, Harness, TestDisk, TestTape
from scsi_target.scsi.spc import SPC
from volume.memstore import MemoryStore

ILLEGAL = SenseKey.ILLEGAL_REQUEST


def inquiry(h: Harness, evpd: int = 0, page: int = 0, alloc: int = 255) -> bytes:
    return h.ok([0x12, evpd, page, alloc >> 8, alloc & 0xFF, 0], length=alloc)


def test_standard_inquiry_golden_prefix():
    h = Harness()
    data = inquiry(h, alloc=260)
    assert len(data) == 96
    # qualifier/type, RMB, version SPC-4, HISUP|RDF 2, additional length, 3PC?, -, CMDQUE
    assert data[0] == 0x00 and data[1] == 0x00 and data[2] == 0x06 and data[3] == 0x12
    assert data[4] == len(data) - 5
    assert data[7] == 0x02
    assert data[8:16] == b"PYSCSI  "
    assert data[16:32] == b"VIRTUAL-DISK    "
    assert data[32:36] == b"0001"
    assert all(b == 0 or 0x20 <= b <= 0x7E for b in data[8:36])
    assert not data[3] & 0xC0  # AERC/TRMTSK clear for SPC-3+


def test_version_descriptors_claim_spc4_and_sbc3():
    data = inquiry(Harness(), alloc=96)
    vds = struct.unpack(">8H", data[58:74])
    assert 0x0460 in vds and 0x04C0 in vds


def test_tape_lu_claims_ssc_not_sbc_and_is_removable():
    data = inquiry(Harness(TestTape()), alloc=96)
    assert data[0] == 0x01 and data[1] == 0x80
    vds = struct.unpack(">8H", data[58:74])
    assert 0x04C0 not in vds and 0x0300 in vds


@pytest.mark.parametrize("alloc", [0, 1, 5, 36, 95, 96, 255, 256, 1000])
def test_allocation_length_truncates_without_error(alloc):
    h = Harness()
    r = h.run([0x12, 0, 0, alloc >> 8, alloc & 0xFF, 0], length=alloc)
    assert r.resp.ok
    assert r.data == inquiry(h, alloc=96)[:alloc]
    assert r.resp.residual == alloc - len(r.data)


def test_evpd_zero_with_page_code_is_invalid_field():
    h = Harness()
    h.check([0x12, 0, 1, 1, 0, 0], ILLEGAL, 0x24)
    h.check([0x12, 2, 0, 1, 0, 0], ILLEGAL, 0x24)  # CMDDT


def test_unknown_vpd_page_is_invalid_field():
    Harness().check([0x12, 1, 0x99, 0, 255, 0], ILLEGAL, 0x24)


def test_supported_pages_all_readable_with_consistent_lengths():
    h = Harness()
    sup = inquiry(h, 1, 0)
    assert sup[1] == 0 and sup[3] == len(sup) - 4
    pages = list(sup[4:])
    assert pages == sorted(pages)
    for p in (0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2):
        assert p in pages
    for p in pages:
        data = inquiry(h, 1, p)
        assert data[1] == p
        assert struct.unpack(">H", data[2:4])[0] == len(data) - 4


def test_non_disk_lu_has_no_block_pages():
    pages = list(inquiry(Harness(TestTape()), 1, 0)[4:])
    assert not {0xB0, 0xB1, 0xB2} & set(pages)


def parse_designators(page: bytes) -> list[tuple[int, int, int, bytes]]:
    out, pos = [], 4
    while pos < len(page):
        code_set, b1, _, n = page[pos:pos + 4]
        out.append((code_set & 0x0F, (b1 >> 4) & 3, b1 & 0x0F, page[pos + 4:pos + 4 + n]))
        pos += 4 + n
    assert pos == len(page)
    return out


def test_device_identification_designators():
    h = Harness()
    h.lu.identity.naa = 0x5_0A5C51_123456789
    desigs = parse_designators(inquiry(h, 1, 0x83))
    by_type = {(assoc, t): v for _, assoc, t, v in desigs}
    assert by_type[(0, 3)] == (0x5_0A5C51_123456789).to_bytes(8, "big")   # NAA, LU
    assert by_type[(0, 1)].startswith(b"PYSCSI  ")                        # T10 vendor id
    assert by_type[(1, 4)] == b"\x00\x00\x00\x01"                         # relative port 1
    assert by_type[(1, 8)].rstrip(b"\x00") == b"iqn.2026-11.test:t,t,0x0001"
    assert by_type[(2, 8)].rstrip(b"\x00") == b"iqn.2026-11.test:t"
    for code_set, _, t, v in desigs:
        if t == 8:
            assert code_set == 3 and len(v) % 4 == 0 and v.endswith(b"\x00")


def test_unit_serial_number():
    h = Harness()
    h.lu.identity.serial = "abc123"
    assert inquiry(h, 1, 0x80) == b"\x00\x80\x00\x06abc123"


def test_block_limits_thin():
    h = Harness()
    bl = inquiry(h, 1, 0xB0)
    assert bl[3] == 0x3C and len(bl) == 64
    max_xfer, = struct.unpack(">I", bl[8:12])
    assert max_xfer == h.lu.limits.max_transfer_blocks
    max_unmap, max_desc = struct.unpack(">II", bl[20:28])
    # libiscsi: non-zero, and either "no limit" or sane (at most 1M)
    assert max_unmap == 0xFFFFFFFF or 0 < max_unmap <= 1024 * 1024
    assert max_desc == 0xFFFFFFFF or 0 < max_desc <= 1024 * 1024


def test_block_limits_follow_lu_attributes():
    limits = BlockLimits(write_same_non_zero=True, max_compare_blocks=7, max_unmap_blocks=1000,
                         max_write_same_blocks=99, atomic_max_blocks=16)
    h = Harness(TestDisk(MemoryStore(1 << 20), 512, limits=limits))
    bl = inquiry(h, 1, 0xB0)
    assert bl[4] & 1 and bl[5] == 7
    assert struct.unpack(">I", bl[20:24])[0] == 1000
    assert struct.unpack(">Q", bl[36:44])[0] == 99
    assert struct.unpack(">I", bl[44:48])[0] == 16


def test_block_limits_thick_has_no_unmap():
    bl = inquiry(Harness(thin=False), 1, 0xB0)
    assert struct.unpack(">II", bl[20:28]) == (0, 0)


def test_lbp_page_reflects_thin_store():
    assert inquiry(Harness(), 1, 0xB2) == bytes([0, 0xB2, 0, 4, 0, 0xE4, 0x02, 0])
    assert inquiry(Harness(thin=False), 1, 0xB2) == bytes([0, 0xB2, 0, 4, 0, 0, 0, 0])


def test_block_device_characteristics_non_rotating():
    data = inquiry(Harness(), 1, 0xB1)
    assert data[3] == 0x3C and data[4:6] == b"\x00\x01"


def test_third_party_copy_page_listed_only_when_the_table_has_the_copy_commands():
    h = Harness()      # SPC and stand-in READ/WRITE only
    assert 0x8F not in inquiry(h, 1, 0)[4:]
    assert inquiry(h, alloc=96)[5] & 0x08 == 0
    h.check([0x12, 1, 0x8F, 0, 255, 0], ILLEGAL, 0x24, length=255)

    class CopyDisk(TestDisk):
        table = DispatchTable([SPC, FAKE_MEDIUM, XCOPY])
    h = Harness(CopyDisk(MemoryStore(1 << 20), 512))
    assert 0x8F in inquiry(h, 1, 0)[4:]
    assert inquiry(h, 1, 0x8F)[1] == 0x8F
    assert inquiry(h, alloc=96)[5] & 0x08


def test_inquiry_does_not_consume_unit_attention():
    h = Harness(clear_ua=False)
    inquiry(h)
    h.check([0, 0, 0, 0, 0, 0], SenseKey.UNIT_ATTENTION, 0x29, 0)
