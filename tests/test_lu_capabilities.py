"""What every LU kind the config can build advertises is what it answers.

For each LU (built by scsi_target.config from a TOML-shaped config, exactly as
the server builds them) the capabilities INQUIRY, the VPD pages, MODE SENSE and
REPORT SUPPORTED OPERATION CODES report are checked against the commands the
LU really executes:

* 3PC in standard INQUIRY  <=>  EXTENDED COPY and every RECEIVE COPY RESULTS
  service action answer (not INVALID COMMAND OPERATION CODE)  <=>  VPD 8Fh listed;
* a VPD page listed in page 00h  <=>  INQUIRY EVPD answers it;
* RSOC (all commands)  <=>  the opcodes that do not answer INVALID COMMAND
  OPERATION CODE, service actions included;
* LBPU in VPD B2h  <=>  UNMAP listed; WSNZ  <=>  WRITE SAME of 0 blocks refused;
* WP in MODE SENSE  <=>  WRITE answers DATA PROTECT; RMB  <=>  LOEJ accepted;
* OPTIMAL TRANSFER LENGTH a Linux kernel keeps (<= 0xFFFF, <= MAXIMUM TRANSFER
  LENGTH, a multiple of the granularity).
"""
from __future__ import annotations

import os
import struct

import pytest

from scsi_target import config as C
from scsi_target.scsi.command import Command, Direction, Nexus, Status
from scsi_target.scsi.sense import SenseKey, parse_sense

IQN = "iqn.2026-11.test:caps"
NEXUS = Nexus("iqn.2026-11.test:init,i,0x000000000001", f"{IQN},t,0x0001")
SIZE = 1 << 20

LU_KINDS = {
    "tracked": {},
    "untracked": {"track": False},
    "4k-blocks": {"block_size": 4096, "track": False},
    "4k-physical": {"physical_block_size": 4096, "write_same_zero": True},
    "removable": {"removable": True},
    "read-only": {"read_only": True},
}


@pytest.fixture(scope="module")
def luns(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("caps")
    ro = tmp / "read-only.img"
    ro.write_bytes(os.urandom(SIZE))
    specs = []
    for n, (name, extra) in enumerate(LU_KINDS.items()):
        spec = {"lun": n, "path": str(tmp / f"{name}.img")}
        if name != "read-only":
            spec.update(size=SIZE, create=True)
        spec.update(extra)
        specs.append(spec)
    # The backup pseudo device of the tracked disk.
    specs.append({"lun": len(specs), "kind": "backup", "source": 0})
    cfg = C.parse_config({"target": [{"iqn": IQN, "lun": specs}]}, base=tmp)
    reg = C.build_registry(cfg)
    yield reg.get(IQN).luns
    reg.close()


KINDS = [*LU_KINDS, "backup"]


def run(m, lun, cdb, *, data=None, length=None, direction=None):
    if direction is None:
        direction = Direction.OUT if data is not None else Direction.IN
    if length is None:
        length = len(data) if data is not None else 4096
    return m.execute(Command(bytes(cdb), lun=lun, data_out=data, expected_length=length,
                             direction=direction, nexus=NEXUS))


def ok(m, lun, cdb, **kw) -> bytes:
    r = run(m, lun, cdb, **kw)
    assert r.status == Status.GOOD, (bytes(cdb).hex(), parse_sense(r.sense))
    return bytes(r.data_in)


def settle(m, lun) -> None:
    """Started (a zeroed START STOP UNIT stops a fixed disk) and no unit attention pending."""
    run(m, lun, [0x1B, 0, 0, 0, 0x01, 0], length=0, direction=Direction.NONE)
    for _ in range(8):
        if run(m, lun, bytes(6)).status == Status.GOOD:
            return


def sense_of(r):
    return parse_sense(r.sense) if r.status == Status.CHECK_CONDITION else None


def rsoc_all(m, lun) -> dict[tuple[int, int | None], int]:
    data = ok(m, lun, struct.pack(">BBBBHIBB", 0xA3, 0x0C, 0, 0, 0, 65536, 0, 0))
    length = struct.unpack_from(">I", data)[0]
    out, pos = {}, 4
    while pos < 4 + length:
        op, sa, flags, cdb_len = struct.unpack_from(">BxHxBH", data, pos)
        out[(op, sa if flags & 1 else None)] = cdb_len
        pos += 8 + (12 if flags & 2 else 0)
    return out


def answers(m, lun, op: int, sa: int | None, cdb_len: int) -> bool:
    """False when the LU answers INVALID COMMAND OPERATION CODE (or unknown SA)."""
    cdb = bytearray(cdb_len)
    cdb[0] = op
    if sa is not None:
        cdb[1] = sa
    r = run(m, lun, cdb, length=0, direction=Direction.NONE)
    s = sense_of(r)
    if s == (SenseKey.ILLEGAL_REQUEST, 0x20, 0x00):
        return False
    if sa is not None and s == (SenseKey.ILLEGAL_REQUEST, 0x24, 0x00):
        # Unknown service action of a known opcode: field pointer at byte 1.
        return r.sense[15] & 0x80 == 0 or r.sense[17] != 1
    return True


@pytest.mark.parametrize("kind", KINDS)
def test_rsoc_lists_exactly_what_the_lu_executes(luns, kind):
    lun = KINDS.index(kind)
    settle(luns, lun)
    listed = rsoc_all(luns, lun)
    assert listed
    for (op, sa), cdb_len in listed.items():
        assert answers(luns, lun, op, sa, cdb_len), f"{kind}: {op:02x}/{sa} listed, not answered"
    service_ops = {op for op, sa in listed if sa is not None}
    for op in range(256):
        if op in service_ops or (op, None) in listed:
            continue
        assert not answers(luns, lun, op, None, 16), f"{kind}: {op:02x} answered, not listed"
    for op in service_ops:
        for sa in range(32):
            if (op, sa) not in listed:
                assert not answers(luns, lun, op, sa, 16), f"{kind}: {op:02x}/{sa:02x} answered"
    settle(luns, lun)


@pytest.mark.parametrize("kind", KINDS)
def test_third_party_copy_advertised_iff_answered(luns, kind):
    lun = KINDS.index(kind)
    settle(luns, lun)
    tpc = bool(ok(luns, lun, [0x12, 0, 0, 0, 96, 0], length=96)[5] & 0x08)
    pages = ok(luns, lun, [0x12, 1, 0, 0, 255, 0], length=255)[4:]
    copy_cmds = [(0x83, 0x00)] + [(0x84, sa) for sa in (0x00, 0x01, 0x03, 0x04)]
    answered = [answers(luns, lun, op, sa, 16) for op, sa in copy_cmds]
    assert all(answered) or not any(answered), answered
    assert tpc == all(answered) == (0x8F in pages)
    # The backup pseudo device is no copy manager; disks are.
    assert tpc == (kind != "backup")


@pytest.mark.parametrize("kind", KINDS)
def test_vpd_pages_listed_iff_answered(luns, kind):
    lun = KINDS.index(kind)
    settle(luns, lun)
    listed = set(ok(luns, lun, [0x12, 1, 0, 0, 255, 0], length=255)[4:])
    for page in range(256):
        r = run(luns, lun, [0x12, 1, page, 0x10, 0, 0], length=4096)
        if page in listed:
            assert r.status == Status.GOOD and bytes(r.data_in)[1] == page, hex(page)
        else:
            assert sense_of(r) == (SenseKey.ILLEGAL_REQUEST, 0x24, 0x00), hex(page)


@pytest.mark.parametrize("kind", KINDS)
def test_block_device_records_match_behaviour(luns, kind):
    lun = KINDS.index(kind)
    settle(luns, lun)
    lu = luns.get(lun)
    listed = rsoc_all(luns, lun)
    b0 = ok(luns, lun, [0x12, 1, 0xB0, 0, 64, 0], length=64)
    b2 = ok(luns, lun, [0x12, 1, 0xB2, 0, 8, 0], length=8)
    granularity, mtl, otl = struct.unpack_from(">HII", b0, 6)
    # What a Linux kernel keeps as a hint (sd_validate_opt_xfer_size).
    assert 0 < otl <= min(mtl, 0xFFFF) and otl % granularity == 0
    assert otl * lu.block_size % 4096 == 0
    lbpu = bool(b2[5] & 0x80)
    assert lbpu == lu.provisioning.thin
    # UNMAP is listed where it is supported, and on read-only LUs, where it
    # answers WRITE PROTECTED like every medium write.
    assert ((0x42, None) in listed) == (lbpu or lu.read_only)
    if lbpu:
        assert struct.unpack_from(">II", b0, 20) != (0, 0)    # UNMAP limits reported
    # WSNZ <=> WRITE SAME(10) of 0 blocks refused.
    wsnz = bool(b0[4] & 0x01)
    block = os.urandom(lu.block_size)
    lba = lu.num_blocks - 1
    r = run(luns, lun, struct.pack(">BBIBHB", 0x41, 0, lba, 0, 0, 0), data=block)
    if lu.read_only:
        assert sense_of(r)[0] == SenseKey.DATA_PROTECT
    elif kind == "backup":
        pass    # its medium is a stream; a write at the end is a restore, not a disk write
    else:
        assert (sense_of(r) == (SenseKey.ILLEGAL_REQUEST, 0x24, 0)) == wsnz
    # WP in MODE SENSE <=> writes are refused with DATA PROTECT.
    wp = bool(ok(luns, lun, [0x1A, 0x08, 0x3F, 0, 255, 0], length=255)[2] & 0x80)
    r = run(luns, lun, struct.pack(">BBIBHB", 0x2A, 0, 0, 0, 0, 0), data=b"", length=0)
    assert wp == lu.read_only == (sense_of(r) is not None
                                  and sense_of(r)[0] == SenseKey.DATA_PROTECT)
    # RMB <=> START STOP UNIT with LOEJ accepted.
    rmb = bool(ok(luns, lun, [0x12, 0, 0, 0, 36, 0], length=36)[1] & 0x80)
    r = run(luns, lun, [0x1B, 0, 0, 0, 0x03, 0], length=0, direction=Direction.NONE)  # load
    assert rmb == (r.status == Status.GOOD) == lu.removable
