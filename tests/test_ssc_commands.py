"""SSC commands of the tape LU, in process (LunMap.execute): one group per command."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from scsi_target.scsi import devices
from scsi_target.scsi.command import Direction, Nexus, Status
from scsi_target.scsi.layouts import mode as LM, rsoc as LR, tape as LT
from scsi_target.scsi.lun import Identity
from scsi_target.scsi.tape_lu import TapeLU
from scsi_target.testing import InProcessTarget, Result, nexus
from tape import TapeImage

NO_SENSE, NOT_READY, MEDIUM, ILLEGAL, UA, PROTECT, BLANK, OVERFLOW = 0, 2, 3, 5, 6, 7, 8, 0xD

# ------------------------------------------------ the SSC tests' target (every test_ssc_*)
SSC_IQN = "iqn.2026-11.test:t"
NEXUS1 = nexus("iqn.2026-11.test:init1", 1, target=SSC_IQN)
NEXUS2 = nexus("iqn.2026-11.test:init2", 2, target=SSC_IQN)
TUR = bytes(6)


class TapeHarness:
    """A TapeLU on a fresh image (or ``image``) on the testing library's InProcessTarget;
    NEXUS1 and NEXUS2 have taken their power-on unit attention."""

    def __init__(self, tmp: Path, capacity: int = 8 << 20, *, early_warning: int | None = None,
                 crc: bool = True, image: TapeImage | None = None, name: str = "t.img",
                 **create) -> None:
        self.path = Path(tmp) / name
        if image is None:
            image = TapeImage.create(self.path, capacity, early_warning=early_warning, crc=crc,
                                     **create)
        self.lu = TapeLU(image, identity=Identity.derive(SSC_IQN, 0, product="VIRTUAL-TAPE"),
                         table=devices.TAPE)
        self.target = InProcessTarget(SSC_IQN, power_on_ua=True, fault_control=False)
        self.target.attach(0, self.lu)
        self.map = self.target.luns
        for n in (NEXUS1, NEXUS2):
            r = self.run(TUR, nexus=n)
            assert r.status == Status.CHECK_CONDITION and r.sense_data.key == 6  # power on

    def run(self, cdb, *, length: int | None = None, data: bytes | None = None,
            nexus: Nexus = NEXUS1) -> Result:
        """Default: a data-in command with an allocation of 64 KiB."""
        return self.target.submit(cdb, data_out=data, read_length=1 << 16 if length is None
                                  else length, nexus=nexus,
                                  direction=Direction.OUT if data is not None else Direction.IN)

    def ok(self, cdb, **kw) -> bytes:
        return self.run(cdb, **kw).expect_good()

    def check(self, cdb, key: int, asc: int, ascq: int = 0, **kw) -> Result:
        return self.run(cdb, **kw).expect_sense(key, asc, ascq)

    # -- shorthands --------------------------------------------------------
    def write(self, data: bytes, **kw) -> Result:
        return self.run(LT.write6(len(data)), data=data, **kw)

    def write_fixed(self, data: bytes, bl: int) -> Result:
        return self.run(LT.write6(len(data) // bl, fixed=True), data=data)

    def read(self, n: int, *, sili: bool = False) -> Result:
        return self.run(LT.read6(n, sili=sili), length=n)

    def wfm(self, n: int = 1) -> bytes:
        return self.ok(bytes([0x10, 0]) + n.to_bytes(3, "big") + b"\x00")

    def rewind(self) -> bytes:
        return self.ok(bytes([0x01, 0, 0, 0, 0, 0]))

    def position(self) -> LT.ReadPositionLong:
        return LT.ReadPositionLong.unpack(self.ok(bytes([0x34, 6, 0, 0, 0, 0, 0, 0, 32, 0]),
                                                  length=32))

    def set_block_length(self, bl: int) -> None:
        bd = bytes([0x80, 0, 0, 0, 0]) + bl.to_bytes(3, "big")
        self.ok(bytes([0x15, 0x10, 0, 0, 12, 0]), data=bytes([0, 0, 0x10, 8]) + bd)


def blob(n: int) -> bytes:
    return os.urandom(n)


@pytest.fixture
def h(tmp_path):
    return TapeHarness(tmp_path)


# --------------------------------------------------------------- INQUIRY
def test_inquiry_sequential_removable_ssc4(h):
    d = h.ok([0x12, 0, 0, 0, 96, 0], length=96)
    assert d[0] == 0x01 and d[1] & 0x80
    assert not d[5] & 0x08  # no third-party copy on a tape LU
    assert d[16:32].rstrip() == b"VIRTUAL-TAPE"
    assert 0x0520 in struct.unpack(">8H", d[58:74])


def test_inquiry_vpd_pages(h):
    pages = h.ok([0x12, 1, 0x00, 0, 255, 0])
    assert pages[0] == 0x01 and list(pages[4:4 + pages[3]]) == [0x00, 0x80, 0x83, 0xB0]
    serial = h.ok([0x12, 1, 0x80, 0, 255, 0])
    assert serial[1] == 0x80 and len(serial) > 4
    devid = h.ok([0x12, 1, 0x83, 0, 255, 0])
    assert devid[1] == 0x83 and int.from_bytes(devid[2:4], "big") == len(devid) - 4
    b0 = h.ok([0x12, 1, 0xB0, 0, 255, 0])
    assert b0[:4] == bytes([0x01, 0xB0, 0, 2]) and b0[4] & 0x01 == 0  # not WORM
    h.check([0x12, 1, 0xB1, 0, 255, 0], ILLEGAL, 0x24)  # disk page


# ---------------------------------------------------------- TEST UNIT READY
def test_tur_ready_then_not_ready_after_unload(h):
    h.ok(TUR)
    h.ok([0x1B, 0, 0, 0, 0, 0])  # unload (eject)
    h.check(TUR, NOT_READY, 0x3A)


# ------------------------------------------------------- READ BLOCK LIMITS
def test_read_block_limits(h):
    bl = LT.BlockLimitsData.unpack(h.ok([0x05, 0, 0, 0, 0, 0], length=6))
    assert (bl.granularity, bl.min_block_length, bl.max_block_length) == (0, 1, 0xFFFFFF)
    mloi = LT.MaximumLogicalObjectId.unpack(h.ok([0x05, 1, 0, 0, 0, 0], length=20))
    assert mloi.max_logical_object == (1 << 64) - 1


# --------------------------------------------------- MODE SENSE / SELECT
def test_mode_sense_block_descriptor_and_pages(h):
    for cdb, ten in (([0x1A, 0, 0x3F, 0, 255, 0], False),
                     ([0x5A, 0, 0x3F, 0, 0, 0, 0, 16, 0, 0], True)):
        mp = LM.ModeParameters.unpack(h.ok(cdb), ten, sequential=True)
        assert mp.header.device_specific == 0x10  # buffered mode 1, not protected
        assert mp.block_descriptors == [LM.GeneralBlockDescriptor(0x80, 0, 0)]
        codes = {p.code for p in mp.pages}
        assert {0x0A, 0x0F, 0x10, 0x11} <= codes
    part = LM.ModeParameters.unpack(h.ok([0x1A, 0, 0x11, 0, 255, 0]), False, sequential=True)
    p11 = part.pages[0].params
    assert p11[0] == 0 and p11[1] == 0            # no additional partitions
    assert int.from_bytes(p11[6:8], "big") == 8   # 8 MiB image, in MB
    dc = LM.ModeParameters.unpack(h.ok([0x1A, 0, 0x0F, 0, 255, 0]), False, sequential=True)
    comp = dc.pages[0].decoded()
    assert not comp.dcc and not comp.dce
    dbd = h.ok([0x1A, 0x08, 0x10, 0, 255, 0])
    assert dbd[3] == 0 and dbd[4] == 0x10


def test_mode_sense_page_0_is_header_and_block_descriptor(h):
    """What the Linux st driver reads at open: MODE SENSE(6), page 0, 12 bytes."""
    d = h.ok([0x1A, 0, 0, 0, 12, 0], length=12)
    assert d == bytes([11, 0, 0x10, 8, 0x80, 0, 0, 0, 0, 0, 0, 0])
    # st's MODE SELECT back: header + descriptor, buffered mode, a new block size
    h.ok([0x15, 0x10, 0, 0, 12, 0], data=bytes([0, 0, 0x10, 8, 0x80, 0, 0, 0, 0, 0, 0x28, 0]))
    assert h.ok([0x1A, 0, 0, 0, 12, 0], length=12)[9:12] == (10240).to_bytes(3, "big")


def test_unbuffered_mode_syncs_every_write(h, monkeypatch):
    import os as _os
    synced = []
    real = _os.fdatasync
    monkeypatch.setattr(_os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
    h.write(blob(100))
    assert not synced  # buffered mode 1: acknowledged once the image file has it
    h.ok([0x15, 0x10, 0, 0, 4, 0], data=bytes([0, 0, 0x00, 0]))  # BUFFERED MODE 000b
    assert h.ok([0x1A, 0x08, 0, 0, 12, 0], length=12)[2] & 0x70 == 0
    h.write(blob(100))
    assert synced  # unbuffered: on stable storage before GOOD
    h.ok([0x15, 0x10, 0, 0, 4, 0], data=bytes([0, 0, 0x10, 0]))
    assert h.ok([0x1A, 0x08, 0, 0, 12, 0], length=12)[2] & 0x70 == 0x10


def test_mode_select_sets_fixed_block_length(h):
    h.set_block_length(1024)
    mp = LM.ModeParameters.unpack(h.ok([0x1A, 0, 0x10, 0, 255, 0]), False, sequential=True)
    assert mp.block_descriptors[0].block_length == 1024
    # the other nexus learns about it
    r = h.run(TUR, nexus=NEXUS2)
    assert r.sense == (UA, 0x2A, 0x01)
    h.set_block_length(0)
    assert LM.ModeParameters.unpack(h.ok([0x1A, 0, 0x10, 0, 255, 0]), False,
                                    sequential=True).block_descriptors[0].block_length == 0


def test_mode_select_refuses_bad_descriptor(h):
    head = bytes([0, 0, 0x10, 8])
    bad_density = bytes([0x44, 0, 0, 0, 0, 0, 2, 0])
    r = h.check([0x15, 0x10, 0, 0, 12, 0], ILLEGAL, 0x26, data=head + bad_density)
    assert r.sense_data.field_pointer.field == 4 and not r.sense_data.field_pointer.in_cdb
    too_big = bytes([0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF])
    h.set_block_length(512)
    # 0xFFFFFF is the maximum: accepted
    h.ok([0x15, 0x10, 0, 0, 12, 0], data=head + too_big)
    h.check([0x15, 0x10, 0, 0, 12, 0], ILLEGAL, 0x26, data=bytes([0, 0, 0x70, 8]) + bytes(8))
    h.check([0x15, 0x11, 0, 0, 12, 0], ILLEGAL, 0x24, data=head + bytes(8))  # SP


def test_mode_select_device_configuration_software_write_protect(h):
    page = bytearray(h.ok([0x1A, 0x08, 0x10, 0, 255, 0])[4:])
    page[0] &= 0x3F
    page[10] |= 0x04  # SWP
    h.ok([0x15, 0x10, 0, 0, 4 + len(page), 0], data=bytes([0, 0, 0x10, 0]) + bytes(page))
    assert h.ok([0x1A, 0x08, 0x10, 0, 255, 0])[2] & 0x80  # WP in the header
    h.check(LT.write6(10), PROTECT, 0x27, data=blob(10))


# ----------------------------------------------------------- READ/WRITE(6)
def test_variable_records_round_trip_up_to_8mib(tmp_path):
    h = TapeHarness(tmp_path, capacity=64 << 20)
    recs = [blob(1), blob(4096), blob(65537), blob(8 << 20)]
    for r in recs:
        assert h.write(r).status == Status.GOOD
    h.rewind()
    for r in recs:
        assert h.ok(LT.read6(len(r)), length=len(r)) == r
    assert h.position().logical_object == 4


def test_fixed_mode_write_and_read(h):
    h.set_block_length(512)
    data = blob(512 * 10)
    assert h.write_fixed(data, 512).status == Status.GOOD
    assert h.position().logical_object == 10
    h.rewind()
    assert h.ok(LT.read6(4, fixed=True), length=2048) == data[:2048]
    assert h.ok(LT.read6(6, fixed=True), length=3072) == data[2048:]


def test_fixed_without_block_length_and_sili_with_fixed_are_refused(h):
    h.check(LT.write6(1, fixed=True), ILLEGAL, 0x24, data=blob(512))
    h.check(LT.read6(1, fixed=True), ILLEGAL, 0x24)
    h.set_block_length(512)
    r = h.check(bytes([0x08, 0x03, 0, 0, 1, 0]), ILLEGAL, 0x24)
    assert r.sense_data.field_pointer.field == 1


def test_zero_length_transfers_do_nothing(h):
    h.ok(LT.write6(0), length=0)
    h.ok(LT.read6(0), length=0)
    assert h.position().logical_object == 0


def test_write_in_the_middle_erases_the_rest(h):
    for _ in range(5):
        h.write(blob(100))
    h.ok(bytes([0x2B, 0, 0, 0, 0, 0, 2, 0, 0, 0]))
    h.write(blob(50))
    h.check(LT.read6(100), BLANK, 0x00, 0x05, length=100)
    h.rewind()
    h.ok(LT.space16(3, 3))  # to end of data
    assert h.position().logical_object == 3


# ------------------------------------------------------- WRITE FILEMARKS
def test_write_filemarks_and_files(h):
    h.write(blob(10))
    h.wfm(2)
    h.write(blob(10))
    p = h.position()
    assert (p.logical_object, p.logical_file) == (4, 2)
    h.wfm(0)  # flush only
    assert h.position().logical_object == 4
    h.check([0x10, 0x02, 0, 0, 1, 0], ILLEGAL, 0x24)  # setmarks


# ------------------------------------------------------------------- SPACE
def _tape_with_files(h, files=3, per_file=3):
    payloads = []
    for _ in range(files):
        for _ in range(per_file):
            b = blob(64)
            payloads.append(b)
            h.write(b)
        h.wfm()
    h.rewind()
    return payloads


def test_space_blocks_and_filemarks_both_ways(h):
    p = _tape_with_files(h)
    h.ok([0x11, 0, 0, 0, 2, 0])
    assert h.ok(LT.read6(64), length=64) == p[2]
    h.ok([0x11, 1, 0, 0, 1, 0])  # forward over the filemark: file 1
    assert h.position().logical_file == 1
    h.ok([0x11, 1, 0, 0, 1, 0])
    assert h.ok(LT.read6(64), length=64) == p[6]
    h.ok([0x11, 1, 0xFF, 0xFF, 0xFF, 0])  # back one filemark: BOP side of it
    assert h.position().logical_object == 7
    h.ok([0x11, 0, 0xFF, 0xFF, 0xFE, 0])  # back two blocks: object 5
    assert h.ok(LT.read6(64), length=64) == p[4]
    h.ok([0x11, 3, 0, 0, 0, 0])  # EOD
    assert h.position().logical_object == 12


def test_space16_counts_64_bits(h):
    _tape_with_files(h)
    h.ok(LT.space16(2, 1))
    assert h.position().logical_file == 2
    h.ok(LT.space16(1, 0))
    h.ok(LT.space16(-1, 0))
    assert h.position().logical_object == 8
    r = h.check(LT.space16(-1, 0), NO_SENSE, 0, 1)  # the filemark before file 2
    assert r.sense_data.filemark and r.sense_data.information == 1
    assert h.position().logical_object == 7
    h.check(LT.space16(1 << 40, 0), NO_SENSE, 0, 1)
    h.check(bytes([0x91, 0, 0, 0] + [0] * 7 + [1, 0, 4, 0, 0]), ILLEGAL, 0x24)  # param length
    h.check(LT.space16(1, 2), ILLEGAL, 0x24)  # sequential filemarks


# ------------------------------------------------------- LOCATE / READ POSITION
def test_locate10_locate16_and_read_position_forms(h):
    p = _tape_with_files(h)
    h.ok([0x2B, 0, 0, 0, 0, 0, 5, 0, 0, 0])
    short = LT.ReadPositionShort.unpack(h.ok([0x34, 0, 0, 0, 0, 0, 0, 0, 0, 0]))
    assert (short.bop, short.first_location, short.last_location) == (False, 5, 5)
    assert h.ok(LT.read6(64), length=64) == p[4]  # object 5 is the 5th record (one filemark)
    h.ok(LT.locate16_file(2))
    lng = h.position()
    assert (lng.logical_object, lng.logical_file) == (8, 2)
    ext = LT.ReadPositionExtended.unpack(h.ok([0x34, 8, 0, 0, 0, 0, 0, 0, 32, 0]))
    assert ext.first_location == 8 and ext.additional_length == 0x1C
    h.ok(bytes([0x92, 0, 0, 0]) + (0).to_bytes(8, "big") + bytes(4))
    assert LT.ReadPositionShort.unpack(h.ok([0x34, 0] + [0] * 8)).bop
    h.ok(bytes([0x92, 0x18, 0, 0]) + bytes(12))  # DEST_TYPE 11b: EOD
    assert h.position().logical_object == 12
    h.check([0x34, 2] + [0] * 8, ILLEGAL, 0x24)
    h.check([0x2B, 2, 0, 0, 0, 0, 0, 0, 1, 0], ILLEGAL, 0x24)  # partition 1 does not exist
    h.ok([0x2B, 2, 0, 0, 0, 0, 0, 0, 0, 0])


def test_locate_past_eod_is_blank_check_at_eod(h):
    _tape_with_files(h, 1, 2)
    h.check([0x2B, 0, 0, 0, 0, 0, 50, 0, 0, 0], BLANK, 0, 5)
    assert h.position().logical_object == 3


# ------------------------------------------------------------------ REWIND
def test_rewind_goes_to_bop(h):
    h.write(blob(10))
    h.rewind()
    assert h.position().bop


# ------------------------------------------------------------ LOAD UNLOAD
def test_unload_hold_then_load(h):
    h.write(blob(10))
    h.ok([0x1B, 0, 0, 0, 0x08, 0])  # unload, hold
    h.check(TUR, NOT_READY, 0x04, 0x02)
    h.ok([0x1B, 0, 0, 0, 0x01, 0])
    h.ok(TUR)
    assert h.position().bop


def test_eject_then_load_raises_medium_change_for_others(h):
    h.ok([0x1B, 0, 0, 0, 0, 0])
    h.check(TUR, NOT_READY, 0x3A)
    h.check(LT.read6(10), NOT_READY, 0x3A)
    h.ok([0x1B, 0, 0, 0, 1, 0])
    h.ok(TUR)
    h.check(TUR, UA, 0x28, nexus=NEXUS2)
    h.ok(TUR, nexus=NEXUS2)
    h.check([0x1B, 0, 0, 0, 0x05, 0], ILLEGAL, 0x24)  # EOT with LOAD


def test_prevent_medium_removal_blocks_eject(h):
    h.ok([0x1E, 0, 0, 0, 1, 0])
    h.check([0x1B, 0, 0, 0, 0, 0], ILLEGAL, 0x53, 0x02)
    h.ok([0x1B, 0, 0, 0, 0x08, 0])  # unload without eject is allowed
    h.ok([0x1B, 0, 0, 0, 1, 0])
    h.ok([0x1E, 0, 0, 0, 0, 0])
    h.ok([0x1B, 0, 0, 0, 0, 0])


def test_operator_inserts_another_cartridge(h, tmp_path):
    from tape import TapeImage
    h.write(blob(10))
    other = TapeImage.create(tmp_path / "b.img", 1 << 20, barcode="B00002")
    h.lu.insert(other)
    h.check(TUR, UA, 0x28)
    h.check(LT.read6(10), BLANK, 0, 5, length=10)


# ------------------------------------------------------------------ ERASE
@pytest.mark.parametrize("long", [False, True])
def test_erase_leaves_eod_at_position(h, long):
    for _ in range(4):
        h.write(blob(32))
    h.ok([0x2B, 0, 0, 0, 0, 0, 1, 0, 0, 0])
    h.ok(LT.erase(long=long))
    h.rewind()
    h.ok([0x11, 3, 0, 0, 0, 0])
    assert h.position().logical_object == 1


# ------------------------------------------------------ REPORT DENSITY SUPPORT
def test_report_density_support(h):
    for media in (False, True):
        ds = LT.parse_density_support(h.ok(LT.report_density_support(media)))
        assert len(ds) == 1
        d = ds[0]
        assert d.primary_density_code == 0x80 and d.deflt and d.wrtok and d.capacity == 8
        assert d.density_name == "PYTAPE1"
    h.check(bytes([0x44, 2, 0, 0, 0, 0, 0, 0x10, 0, 0]), ILLEGAL, 0x24)
    h.ok([0x1B, 0, 0, 0, 0, 0])
    h.ok(LT.report_density_support(False))
    h.check(LT.report_density_support(True), NOT_READY, 0x3A)


# -------------------------------------------------------------- LOG SENSE
def _params(page: bytes) -> dict[int, bytes]:
    out, pos = {}, 4
    while pos + 4 <= len(page):
        n = page[pos + 3]
        out[int.from_bytes(page[pos:pos + 2], "big")] = page[pos + 4:pos + 4 + n]
        pos += 4 + n
    return out


def test_log_sense_supported_pages(h):
    d = h.ok(LT.log_sense(0))
    assert list(d[4:4 + int.from_bytes(d[2:4], "big")]) == [0x00, 0x0C, 0x17, 0x2E]
    h.check(LT.log_sense(0x0D), ILLEGAL, 0x24)
    h.check(bytes([0x4D, 1, 0x40, 0, 0, 0, 0, 0x10, 0, 0]), ILLEGAL, 0x24)  # SP


def test_log_sense_sequential_access_counts_bytes(h):
    h.write(blob(3000))
    h.write(blob(2000))
    h.rewind()
    h.read(3000)
    p = _params(h.ok(LT.log_sense(0x0C)))
    assert int.from_bytes(p[0], "big") == 5000 and int.from_bytes(p[2], "big") == 3000
    assert int.from_bytes(p[0x0100], "big") == 0


def test_log_sense_volume_statistics(tmp_path):
    h = TapeHarness(tmp_path, barcode="VOL042")
    p = _params(h.ok(LT.log_sense(0x17)))
    assert p[0] == b"\x01" and int.from_bytes(p[1], "big") == 1  # one load
    assert p[0x42].rstrip() == b"VOL042" and p[0x80] == b"\x00"
    assert int.from_bytes(p[0x16], "big") == 8


def test_log_sense_tape_alert_write_protect_flag_is_read_clear(tmp_path):
    h = TapeHarness(tmp_path, write_protect=True)
    h.check(LT.write6(10), PROTECT, 0x27, data=blob(10))
    p = _params(h.ok(LT.log_sense(0x2E)))
    assert len(p) == 64 and p[9] == b"\x01" and p[1] == b"\x00"
    assert _params(h.ok(LT.log_sense(0x2E)))[9] == b"\x00"


def test_log_sense_parameter_pointer(h):
    p = _params(h.ok(bytes([0x4D, 0, 0x4C, 0, 0, 0, 5, 0x10, 0, 0])))
    assert min(p) == 5


# ------------------------------------------------ READ / WRITE ATTRIBUTE
def test_read_attribute_values_and_lists(tmp_path):
    h = TapeHarness(tmp_path, barcode="ABC123", label="weekly")
    attrs = {a.id: a for a in LT.parse_attribute_values(h.ok(LT.read_attribute()))}
    assert attrs[0x0806].value.rstrip() == b"ABC123" and attrs[0x0806].format == 1
    assert attrs[0x0401].read_only and attrs[0x0000].read_only
    assert int.from_bytes(attrs[0x0001].value, "big") == 8  # MiB
    ids = h.ok(LT.read_attribute(LT.RA_LIST))
    assert int.from_bytes(ids[:4], "big") == 2 * len(attrs)
    assert h.ok(LT.read_attribute(LT.RA_PARTITION_LIST)) == bytes([0, 2, 0, 1])
    sup = h.ok(LT.read_attribute(LT.RA_SUPPORTED))
    assert 0x0806 in struct.unpack(f">{(len(sup) - 4) // 2}H", sup[4:])
    only_host = LT.parse_attribute_values(h.ok(LT.read_attribute(first=0x0800)))
    assert all(a.id >= 0x0800 for a in only_host)
    h.check(LT.read_attribute(4), ILLEGAL, 0x24)
    h.check(bytes([0x8C, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]), ILLEGAL, 0x24)


def test_write_attribute_persists_and_refuses_read_only(tmp_path):
    h = TapeHarness(tmp_path)
    pool = LT.MamAttribute(0x0808, 2, b"offsite".ljust(160, b"\x00"))
    vendor = LT.MamAttribute(0x1400, 0, bytes([1, 2, 3]))
    plist = LT.attribute_values([pool, vendor])
    h.ok(LT.write_attribute(len(plist)), data=plist)
    got = {a.id: a for a in LT.parse_attribute_values(h.ok(LT.read_attribute(first=0x0808)))}
    assert got[0x0808].value == pool.value and got[0x1400].value == b"\x01\x02\x03"
    bad = LT.attribute_values([LT.MamAttribute(0x0401, 1, b"X" * 32)])
    r = h.check(LT.write_attribute(len(bad)), ILLEGAL, 0x26, data=bad)
    assert r.sense_data.field_pointer.field == 4
    wrong_len = LT.attribute_values([LT.MamAttribute(0x0806, 1, b"SHORT")])
    h.check(LT.write_attribute(len(wrong_len)), ILLEGAL, 0x26, data=wrong_len)
    h.check(LT.write_attribute(3), ILLEGAL, 0x1A, data=b"\x00\x00\x00")
    # delete with a zero-length value
    gone = LT.attribute_values([LT.MamAttribute(0x1400, 0, b"")])
    h.ok(LT.write_attribute(len(gone)), data=gone)
    h.lu.close()
    from tape import TapeImage
    img = TapeImage.open(h.path)
    assert img.attribute(0x0808).value == pool.value and img.attribute(0x1400) is None


# ------------------------------------------------------------------- RSOC
def test_rsoc_lists_the_ssc_commands(h):
    allc = LR.AllCommands.unpack(h.ok([0xA3, 0x0C, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]))
    ops = {d.opcode for d in allc.descriptors}
    assert {0x01, 0x05, 0x08, 0x0A, 0x10, 0x11, 0x19, 0x1B, 0x2B, 0x34, 0x44, 0x4D, 0x8C,
            0x8D, 0x91, 0x92} <= ops
    assert 0x28 not in ops and 0x83 not in ops  # no disk READ(10), no EXTENDED COPY
    one = h.ok([0xA3, 0x0C, 1, 0x08, 0, 0, 0, 0, 0, 64, 0, 0])
    assert one[1] & 0x07 == 3 and one[4:10] == bytes([0x08, 0x03, 0xFF, 0xFF, 0xFF, 0])


# ------------------------------------------------------------- bad input
def test_bad_cdb_fields_get_precise_answers(h):
    h.set_block_length(1 << 20)
    r = h.check(LT.read6(100, fixed=True), ILLEGAL, 0x24)  # 100 MiB in one command
    assert r.sense_data.field_pointer.field == 2
    h.set_block_length(0)
    h.check([0x0A, 0x02, 0, 0, 1, 0], ILLEGAL, 0x24, data=b"x")      # reserved bit
    h.check([0x08, 0x04, 0, 0, 1, 0], ILLEGAL, 0x24)                  # reserved bit
    h.check(bytes([0x92, 0x10, 0, 0]) + bytes(12), ILLEGAL, 0x24)      # DEST_TYPE 10b
    h.check([0x11, 4, 0, 0, 1, 0], ILLEGAL, 0x24)                     # setmarks
    h.check([0x1B, 0, 0, 0, 0x10, 0], ILLEGAL, 0x24)                  # reserved bits
    h.check([0x4D, 0, 0x4C, 1, 0, 0, 0, 0x10, 0, 0], ILLEGAL, 0x24)   # subpage
    h.check([0x8C, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0], ILLEGAL, 0x24)  # partition 1
    wa = LT.attribute_values([LT.MamAttribute(0x0806, 1, b"Y" * 32)])
    h.check(LT.write_attribute(len(wa) + 3), ILLEGAL, 0x26, data=wa + b"\x00\x00\x00")
