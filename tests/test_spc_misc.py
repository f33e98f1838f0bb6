"""TEST UNIT READY, REQUEST SENSE, REPORT LUNS, REPORT SUPPORTED OPERATION CODES,
START STOP UNIT and PREVENT ALLOW MEDIUM REMOVAL."""
from __future__ import annotations

import struct

import pytest

from scsi_target.scsi.command import Direction, Nexus, Status
from scsi_target.scsi.disk import DiskLU
from scsi_target.scsi.dispatch import CommandSet, Conflict, DispatchTable, data_out
from scsi_target.scsi.lun import LogicalUnit
from scsi_target.scsi.sense import SenseKey
from scsi_target.scsi.spc import SPC
from scsi_target.testing import InProcessTarget, Result, nexus
from volume.memstore import MemoryStore

TUR = [0, 0, 0, 0, 0, 0]
ILLEGAL = SenseKey.ILLEGAL_REQUEST

# ------------------------------------------------ the SPC tests' target (every test_spc_*)
# A disk LU with SPC plus stand-in READ/WRITE: the stand-in medium commands exist only
# so reservation access rules can be exercised without depending on the SBC command set.
FAKE_MEDIUM = CommandSet("fake-medium")


@FAKE_MEDIUM.command(0x28, "READ(10)", 10, direction=Direction.IN, conflict=Conflict.READ)
def _read10(lu, cmd):
    return bytes(512 * int.from_bytes(cmd.cdb[7:9], "big"))


@FAKE_MEDIUM.command(0x2A, "WRITE(10)", 10, direction=Direction.OUT, conflict=Conflict.WRITE)
def _write10(lu, cmd):
    data_out(cmd, 512 * int.from_bytes(cmd.cdb[7:9], "big"))


SPC_IQN = "iqn.2026-11.test:t"
NEXUS1 = nexus("iqn.2026-11.test:init1", 1, target=SPC_IQN)
NEXUS2 = nexus("iqn.2026-11.test:init2", 2, target=SPC_IQN)


class TestDisk(DiskLU):
    __test__ = False
    table = DispatchTable([SPC, FAKE_MEDIUM])


class ThickStore(MemoryStore):
    thin = False


class TestTape(LogicalUnit):
    """A non-disk LU: no block geometry, so no disk VPD pages or block descriptors."""
    __test__ = False
    device_type = 0x01
    removable = True
    table = DispatchTable([SPC])


class Harness:
    """One LU (default a 1 MiB TestDisk) on the testing library's InProcessTarget
    (command log in ``.target.log``); every nexus, NEXUS1 included, gets its power-on
    unit attention, which ``clear_ua`` takes for NEXUS1 and NEXUS2 first."""

    def __init__(self, lu: LogicalUnit | None = None, *, thin: bool = True,
                 clear_ua: bool = True) -> None:
        store = MemoryStore(1 << 20) if thin else ThickStore(1 << 20)
        self.lu = lu if lu is not None else TestDisk(store, 512)
        self.target = InProcessTarget(SPC_IQN, power_on_ua=True, fault_control=False)
        self.target.attach(0, self.lu)
        self.map = self.target.luns
        if clear_ua:
            self.clear_ua(NEXUS1)
            self.clear_ua(NEXUS2)

    def run(self, cdb, *, length: int | None = None, data: bytes | None = None,
            nexus: Nexus = NEXUS1, direction: Direction | None = None) -> Result:
        """Default: a data-in command with an allocation of 4096 bytes."""
        if direction is None:
            direction = Direction.OUT if data is not None else Direction.IN
        return self.target.submit(cdb, data_out=data, read_length=4096 if length is None
                                  else length, nexus=nexus, direction=direction)

    def ok(self, cdb, **kw) -> bytes:
        return self.run(cdb, **kw).expect_good()

    def check(self, cdb, key: SenseKey, asc: int, ascq: int = 0, **kw) -> Result:
        return self.run(cdb, **kw).expect_sense(key, asc, ascq)

    def clear_ua(self, nexus: Nexus = NEXUS1) -> None:
        self.target.clear_unit_attentions(nexus=nexus)


def test_first_command_sees_power_on_ua_then_ready():
    h = Harness(clear_ua=False)
    h.check(TUR, SenseKey.UNIT_ATTENTION, 0x29, 0)
    assert h.run(TUR).status == Status.GOOD


def test_request_sense_reports_and_clears_pending_ua_in_both_formats():
    h = Harness(clear_ua=False)
    data = h.ok([0x03, 0x01, 0, 0, 252, 0], length=252)
    assert data[:4] == bytes([0x72, 0x06, 0x29, 0x00])
    data = h.ok([0x03, 0, 0, 0, 18, 0], length=18)  # nothing pending now: NO SENSE
    assert data[0] == 0x70 and data[2] & 0x0F == 0 and data[12:14] == b"\x00\x00"


def test_request_sense_after_a_delivered_check_condition_is_no_sense():
    # The sense went out with the CHECK CONDITION (autosense): SPC-4 and tgt
    # answer NO SENSE afterwards, never the stale sense again (issue 12).
    h = Harness()
    h.check([0x12, 0, 5, 0, 36, 0], ILLEGAL, 0x24)
    data = h.ok([0x03, 0, 0, 0, 18, 0], length=18)
    assert data[2] & 0x0F == SenseKey.NO_SENSE and data[12:14] == b"\x00\x00"
    h2 = Harness(clear_ua=False)
    h2.check(TUR, SenseKey.UNIT_ATTENTION, 0x29, 0)    # the power-on UA, delivered
    data = h2.ok([0x03, 0x01, 0, 0, 252, 0], length=252)
    assert data[:4] == bytes([0x72, 0x00, 0x00, 0x00])    # not the UA again


def test_request_sense_reports_not_ready_state_and_truncates():
    h = Harness()
    h.lu.stopped = True
    data = h.ok([0x03, 0, 0, 0, 14, 0], length=14)
    assert len(data) == 14 and data[2] & 0x0F == SenseKey.NOT_READY and data[12:14] == b"\x04\x02"


def test_report_luns_through_target_map():
    h = Harness()
    data = h.ok([0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], length=256)
    assert data == struct.pack(">II", 8, 0) + bytes(8)
    h.check([0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0], ILLEGAL, 0x24)


def test_report_luns_exempt_from_ua():
    h = Harness(clear_ua=False)
    assert h.run([0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], length=256).status == Status.GOOD
    h.check(TUR, SenseKey.UNIT_ATTENTION, 0x29, 0)


# -- REPORT SUPPORTED OPERATION CODES -------------------------------------------
def rsoc(h, options=0, op=0, sa=0, rctd=False, alloc=8192, **kw):
    cdb = [0xA3, 0x0C, (0x80 if rctd else 0) | options, op, sa >> 8, sa & 0xFF,
           0, 0, alloc >> 8, alloc & 0xFF, 0, 0]
    return h.run(cdb, length=alloc, **kw)


def parse_all(data: bytes, rctd: bool):
    n, = struct.unpack(">I", data[:4])
    out, pos = [], 4
    while pos < 4 + n:
        op, sa, flags, cdblen = struct.unpack(">BxHxBH", data[pos:pos + 8])
        pos += 8
        if flags & 0x02:
            assert struct.unpack(">H", data[pos:pos + 2])[0] == 0x0A
            pos += 12
        out.append((op, sa, flags, cdblen))
    assert pos == len(data)
    return out


def test_rsoc_all_lists_table_with_servactv_and_ctdp():
    h = Harness()
    plain = parse_all(rsoc(h).data, False)
    assert len(plain) == len(h.lu.table.entries())
    assert all(not f & 0x02 for _, _, f, _ in plain)
    assert all(sa == 0 for _, sa, f, _ in plain if not f & 0x01)
    assert (0x5E, 3, 0x01, 10) in plain and (0x12, 0, 0, 6) in plain
    timed = parse_all(rsoc(h, rctd=True).data, True)
    assert all(f & 0x02 for _, _, f, _ in timed)


def test_rsoc_one_command_for_every_listed_opcode():
    h = Harness()
    for op, sa, flags, cdblen in parse_all(rsoc(h).data, False):
        if flags & 0x01:
            assert rsoc(h, 1, op, sa).sense == (ILLEGAL, 0x24, 0)
            r = rsoc(h, 2, op, sa)
        else:
            assert rsoc(h, 2, op, sa).sense == (ILLEGAL, 0x24, 0)
            r = rsoc(h, 1, op, sa)
        assert r.status == Status.GOOD
        d = r.data
        assert d[1] & 0x07 == 0x03
        assert struct.unpack(">H", d[2:4])[0] == cdblen == len(d) - 4
        assert d[4] == op
        if flags & 0x01:
            assert d[5] & 0x1F == sa


def test_rsoc_usage_is_exact_for_inquiry_and_unsupported_reports_001b():
    h = Harness()
    assert rsoc(h, 1, 0x12).data == bytes([0, 3, 0, 6, 0x12, 0x01, 0xFF, 0xFF, 0xFF, 0])
    assert rsoc(h, 1, 0xC5).data == bytes([0, 1, 0, 0])
    assert rsoc(h, 2, 0x5E, 0x10).data == bytes([0, 1, 0, 0])
    d = rsoc(h, 1, 0x12, rctd=True).data
    assert d[1] & 0x80 and len(d) == 4 + 6 + 12
    assert rsoc(h, 5).sense == (ILLEGAL, 0x24, 0)


def test_every_spc_entry_has_usage_matching_its_length():
    for e in SPC:
        u = e.cdb_usage()
        assert len(u) == e.cdb_length and u[0] == e.opcode and u[-1] == 0
        if e.service_action is not None:
            assert u[1] & 0x1F == e.service_action


# -- START STOP UNIT / PREVENT ALLOW ----------------------------------------------
def ssu(h, immed=0, pc=0, loej=0, start=0, no_flush=0, nexus=NEXUS1):
    b4 = (pc << 4) | (no_flush << 2) | (loej << 1) | start
    return h.run([0x1B, immed, 0, 0, b4, 0], nexus=nexus, length=0)


def test_loej_on_non_removable_disk_fails():
    h = Harness()
    r = ssu(h, immed=1, loej=1, start=0)
    assert r.sense == (ILLEGAL, 0x24, 0)
    assert h.run(TUR).status == Status.GOOD


def test_stop_and_start_disk():
    h = Harness()
    assert ssu(h, start=0).status == Status.GOOD
    h.check(TUR, SenseKey.NOT_READY, 0x04, 0x02)
    assert h.run([0x12, 0, 0, 0, 36, 0], length=36).status == Status.GOOD
    assert ssu(h, start=1).status == Status.GOOD
    assert h.run(TUR).status == Status.GOOD


@pytest.mark.parametrize("pc", range(1, 16))
def test_power_condition_does_not_stop_or_eject(pc):
    h = Harness(TestTape())
    assert ssu(h, immed=1, pc=pc, loej=1, start=0).status == Status.GOOD
    assert h.run(TUR).status == Status.GOOD


def test_removable_eject_load_and_prevent_across_nexuses():
    h = Harness(TestTape())
    assert h.run([0x1E, 0, 0, 0, 1, 0], length=0).status == Status.GOOD
    assert ssu(h, loej=1).sense == (ILLEGAL, 0x53, 0x02)
    assert ssu(h, loej=1, nexus=NEXUS2).sense == (ILLEGAL, 0x53, 0x02)
    assert h.run(TUR).status == Status.GOOD
    assert h.run([0x1E, 0, 0, 0, 0, 0], length=0).status == Status.GOOD
    assert ssu(h, loej=1).status == Status.GOOD
    h.check(TUR, SenseKey.NOT_READY, 0x3A, 0)
    assert h.run([0x1E, 0, 0, 0, 1, 0], length=0).status == Status.GOOD
    assert ssu(h, loej=1, start=1).sense == (ILLEGAL, 0x53, 0x02)
    assert h.run([0x1E, 0, 0, 0, 0, 0], length=0).status == Status.GOOD
    assert ssu(h, loej=1, start=1).status == Status.GOOD
    assert h.run(TUR).status == Status.GOOD


@pytest.mark.parametrize("event", ["nexus_lost", "reset"])
def test_prevent_cleared_by_nexus_loss_and_reset(event):
    h = Harness(TestTape())
    h.run([0x1E, 0, 0, 0, 1, 0], length=0)
    if event == "nexus_lost":
        h.lu.nexus_lost(NEXUS1)
    else:
        h.lu.reset()
        h.clear_ua(NEXUS2)
    assert ssu(h, loej=1, nexus=NEXUS2).status == Status.GOOD


def test_prevent_field_values_2_and_3_are_invalid():
    h = Harness()
    assert h.run([0x1E, 0, 0, 0, 2, 0], length=0).sense == (ILLEGAL, 0x24, 0)


def test_noloej_on_removable_keeps_medium():
    h = Harness(TestTape())
    for immed in (0, 1):
        for no_flush in (0, 1):
            for start in (0, 1):
                assert ssu(h, immed=immed, no_flush=no_flush, start=start).status == Status.GOOD
    ssu(h, start=1)
    assert h.run(TUR).status == Status.GOOD
