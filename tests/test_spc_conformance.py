"""SPC conformance gaps found against tgt and a Linux guest (issue 12), in process.

* CDBs shorter than their opcode's length: CHECK CONDITION before any handler
  (a seeded fuzz over every opcode of every device table: never HARDWARE ERROR);
* NACA or LINK in the CONTROL byte: INVALID FIELD IN CDB pointing at the bit;
* VPD B0h OPTIMAL TRANSFER LENGTH a Linux kernel keeps;
* SEND DIAGNOSTIC self-tests answered GOOD;
* REPORT LUNS SELECT REPORT 10h (administrative LUs only) lists no disk.
"""
from __future__ import annotations

import os
import random
import struct

import pytest

from scsi_target import config as C
from scsi_target.scsi import devices
from scsi_target.scsi.capabilities import BlockLimits
from scsi_target.scsi.command import Command, Direction, Nexus, Status
from scsi_target.scsi.disk import DiskLU
from scsi_target.scsi.lun import LunMap
from scsi_target.scsi.sense import SenseKey, parse_sense
from volume.memstore import MemoryStore

IQN = "iqn.2026-12.test:conformance"
NEXUS = Nexus("iqn.2026-12.test:init,i,0x000000000001", f"{IQN},t,0x0001")
ILLEGAL = SenseKey.ILLEGAL_REQUEST
INVALID_CDB = (ILLEGAL, 0x24, 0x00)
TABLES = {"disk": devices.DISK, "thin disk": devices.DISK_UNMAP, "backup": devices.BACKUP}


@pytest.fixture(scope="module")
def luns(tmp_path_factory):
    """LUN 0 a tracked thin disk, 1 a thick disk, 2 the backup device of LUN 0."""
    tmp = tmp_path_factory.mktemp("conformance")
    cfg = C.parse_config({"target": [{"iqn": IQN, "lun": [
        {"lun": 0, "path": str(tmp / "d0.img"), "size": 1 << 20, "create": True},
        {"lun": 2, "kind": "backup", "source": 0},
    ]}]}, base=tmp)
    reg = C.build_registry(cfg)
    m = reg.get(IQN).luns

    class ThickStore(MemoryStore):
        thin = False
    m.add(1, DiskLU(ThickStore(1 << 20), 512))
    for lun in (0, 1, 2):
        run(m, lun, bytes(6))          # the power-on unit attention
    yield m
    reg.close()


def run(m, lun, cdb, *, data=None, length=None, direction=Direction.NONE):
    if length is None:
        length = len(data) if data is not None else 0
    return m.execute(Command(bytes(cdb), lun=lun, data_out=data, expected_length=length,
                             direction=direction, nexus=NEXUS))


def sense(r):
    assert r.status == Status.CHECK_CONDITION, r.status
    return parse_sense(r.sense)


# -- short and long CDBs -------------------------------------------------------------
def test_one_byte_cdbs_of_the_issue_are_check_conditions(luns):
    for op in (0x03, 0x12, 0x15, 0x16, 0x17, 0x1A, 0x1B, 0x1E, 0x55, 0x56, 0x57, 0x5A, 0x5F):
        for cdb in (bytes([op]), bytes([op, 0])):
            r = luns.execute(Command(cdb, lun=0))
            assert sense(r) == INVALID_CDB, (cdb.hex(), parse_sense(r.sense))


def _entries():
    for name, table in TABLES.items():
        for e in table.entries():
            yield name, e


@pytest.mark.parametrize("kind", list(TABLES))
def test_short_cdbs_of_every_opcode_never_reach_a_handler(luns, kind):
    lun = {"thin disk": 0, "disk": 1, "backup": 2}[kind]
    rnd = random.Random(f"short-{kind}")
    for e in TABLES[kind].entries():
        for n in range(1, e.cdb_length):
            cdb = bytearray(rnd.randbytes(n))
            cdb[0] = e.opcode
            if n > 1 and e.service_action is not None:
                cdb[1] = (cdb[1] & 0xE0) | e.service_action
            r = run(luns, lun, cdb, data=rnd.randbytes(rnd.choice((0, 512))))
            assert sense(r) == INVALID_CDB, (e.name, bytes(cdb).hex(), parse_sense(r.sense))
            assert r.sense[15] & 0x80 and r.sense[16:18] == b"\x00\x00"   # at the opcode
    assert sense(run(luns, lun, b"")) == (ILLEGAL, 0x20, 0x00)


@pytest.mark.parametrize("kind", list(TABLES))
def test_fuzzed_cdbs_of_every_opcode_never_crash(luns, kind):
    lun = {"thin disk": 0, "disk": 1, "backup": 2}[kind]
    rnd = random.Random(f"fuzz-{kind}")
    for e in TABLES[kind].entries():
        for _ in range(12):
            n = rnd.randrange(1, 33)
            cdb = bytearray(rnd.randbytes(n))
            cdb[0] = e.opcode
            if n > 1 and e.service_action is not None and rnd.random() < 0.8:
                cdb[1] = (cdb[1] & 0xE0) | e.service_action
            data = rnd.randbytes(rnd.choice((0, 8, 24, 512, 4096)))
            direction = rnd.choice(list(Direction))
            r = run(luns, lun, cdb, data=data, length=rnd.choice((0, len(data), 4096)),
                    direction=direction)
            if r.status == Status.CHECK_CONDITION:
                key = parse_sense(r.sense)[0]
                assert key != SenseKey.HARDWARE_ERROR, (e.name, bytes(cdb).hex())
            else:
                assert r.status in (Status.GOOD, Status.RESERVATION_CONFLICT), r.status
    for lun_ in (0, 1, 2):      # leave the LUs started and without reservations
        run(luns, lun_, [0x1B, 0, 0, 0, 1, 0])
        run(luns, lun_, [0x17, 0, 0, 0, 0, 0])


# -- CONTROL byte ---------------------------------------------------------------------
@pytest.mark.parametrize("bit,name", [(2, "NACA"), (0, "LINK")])
def test_naca_or_link_is_an_invalid_field_at_the_control_byte(luns, bit, name):
    for e in devices.DISK_UNMAP.entries():
        cdb = bytearray(e.cdb_length)
        cdb[0] = e.opcode
        if e.service_action is not None:
            cdb[1] = e.service_action
        cdb[-1] = 1 << bit
        r = run(luns, 0, cdb)
        assert sense(r) == INVALID_CDB, (e.name, name, parse_sense(r.sense))
        # SKSV, C/D=1, BPV with the bit, field pointer at the CONTROL byte.
        assert r.sense[15] == 0xC8 | bit, (e.name, hex(r.sense[15]))
        assert int.from_bytes(r.sense[16:18], "big") == e.cdb_length - 1
    assert run(luns, 0, bytes(6)).status == Status.GOOD     # control 0 is fine


# -- Block Limits -----------------------------------------------------------------------
def block_limits(lu) -> tuple[int, int, int]:
    m = LunMap(IQN)
    m.add(0, lu)
    run(m, 0, bytes(6))
    r = run(m, 0, [0x12, 1, 0xB0, 0, 64, 0], length=64, direction=Direction.IN)
    granularity, mtl, otl = struct.unpack_from(">HII", bytes(r.data_in), 6)
    return granularity, mtl, otl


@pytest.mark.parametrize("physical", [512, 4096, 1 << 16])
def test_optimal_transfer_length_is_one_linux_keeps(physical):
    granularity, mtl, otl = block_limits(DiskLU(MemoryStore(8 << 20), 512,
                                                physical_block_size=physical))
    # sd_validate_opt_xfer_size: <= dev_max (min(MTL, 0xFFFF) for 10-byte CDBs),
    # whole physical blocks, at least a page.
    assert otl <= min(mtl, 0xFFFF) and otl % granularity == 0 and otl * 512 >= 4096
    assert (mtl, otl) == (65536, 32768)
    assert granularity == physical // 512


def test_optimal_transfer_length_follows_a_smaller_maximum():
    assert block_limits(DiskLU(MemoryStore(1 << 20), 512,
                               limits=BlockLimits(max_transfer_blocks=1000)))[1:] == (1000, 512)


def test_optimal_transfer_length_a_kernel_would_drop_is_refused():
    for otl in (65536, 3):
        with pytest.raises(ValueError, match="optimal transfer length"):
            DiskLU(MemoryStore(1 << 20), 512, physical_block_size=4096,
                   limits=BlockLimits(optimal_transfer_blocks=otl))


# -- SEND DIAGNOSTIC ---------------------------------------------------------------------
def senddiag(b1: int, length: int = 0) -> bytes:
    return bytes([0x1D, b1, 0, length >> 8, length & 0xFF, 0])


@pytest.mark.parametrize("b1", [0x04, 0x14, 0x07, 0xA0, 0xC0, 0x00, 0x10])
def test_send_diagnostic_self_tests_are_good(luns, b1):
    # Default self-test (SELFTEST=1, with PF / DEVOFFL / UNITOFFL), foreground
    # short and extended self-tests, and an empty diagnostic parameter list.
    assert run(luns, 0, senddiag(b1)).status == Status.GOOD


def test_send_diagnostic_refusals(luns):
    assert sense(run(luns, 0, senddiag(0x24))) == INVALID_CDB        # SELFTEST with a code
    assert sense(run(luns, 0, senddiag(0x20))) == INVALID_CDB        # background short
    assert sense(run(luns, 0, senddiag(0x80))) == INVALID_CDB        # abort background
    assert sense(run(luns, 0, senddiag(0x04, 8), data=bytes(8))) == INVALID_CDB
    page = bytes([0x80, 0, 0, 4]) + os.urandom(4)
    r = run(luns, 0, senddiag(0x10, 8), data=page, direction=Direction.OUT)
    assert sense(r) == (ILLEGAL, 0x26, 0x00)                         # no diagnostic pages


# -- REPORT LUNS ---------------------------------------------------------------------------
def report_luns(m, lun, select):
    r = run(m, lun, [0xA0, 0, select, 0, 0, 0, 0, 0, 1, 0, 0, 0], length=256,
            direction=Direction.IN)
    assert r.status == Status.GOOD
    data = bytes(r.data_in)
    n = struct.unpack_from(">I", data)[0] // 8
    return [struct.unpack_from(">H", data, 8 + 8 * i)[0] & 0x3FFF for i in range(n)]


def test_report_luns_select_report(luns):
    assert report_luns(luns, 0, 0x00) == [0, 1, 2]
    assert report_luns(luns, 0, 0x02) == [0, 1, 2]
    for select in (0x01, 0x10, 0x11):     # well-known / administrative LUs: there are none
        assert report_luns(luns, 0, select) == [], hex(select)
        assert report_luns(luns, 5, select) == [], hex(select)


# -- the same over iSCSI, as a Linux guest sends them -------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from scsi_target.testing.process import Lun, ServerProcess, Target
    srv = ServerProcess(tmp_path_factory.mktemp("conformance-iscsi"),
                       [Target(f"{IQN}-iscsi", [Lun(0, "4M"), Lun(1, "4M")])])
    srv.start()
    yield srv
    rc = srv.stop()
    assert rc == 0, f"exit status {rc}:\n{srv.log_tail()}"


def test_over_iscsi(served):
    from scsi_target.initiator.sync import SyncIscsiClient
    with SyncIscsiClient(served.url(0, f"{IQN}-iscsi")) as c:
        r = c.execute(bytes(6))                                   # TUR: power-on UA
        assert (r.sense_key, r.asc) == (SenseKey.UNIT_ATTENTION, 0x29)
        # sg_requests after the UA was delivered: NO SENSE, not the UA again.
        r = c.execute(bytes([0x03, 0, 0, 0, 18, 0]), read_length=18)
        assert r.status == 0 and bytes(r.data)[2] & 0x0F == 0 and bytes(r.data)[12] == 0
        r = c.execute(bytes([0x12, 0, 0, 0, 36, 0x04]), read_length=36)   # NACA=1
        assert (r.sense_key, r.asc, r.ascq) == INVALID_CDB
        assert r.sense[15] == 0xCA and r.sense[16:18] == b"\x00\x05"
        assert c.execute(senddiag(0x04)).status == 0             # sg_senddiag -t
        r = c.execute(bytes([0xA0, 0, 0x10, 0, 0, 0, 0, 0, 1, 0, 0, 0]), read_length=256)
        assert r.status == 0 and bytes(r.data)[:4] == bytes(4)   # no administrative LUs
        r = c.execute(bytes([0xA0, 0, 0x00, 0, 0, 0, 0, 0, 1, 0, 0, 0]), read_length=256)
        assert bytes(r.data)[:4] == struct.pack(">I", 16)
        r = c.execute(bytes([0x12, 1, 0xB0, 0, 64, 0]), read_length=64)
        mtl, otl = struct.unpack_from(">II", bytes(r.data), 8)
        assert otl <= min(mtl, 0xFFFF)
