"""The data direction a front end states is checked against the dispatch table.

A data-out command (WRITE, MODE SELECT, ...) sent expecting data-in, or any
unidirectional command sent as bidirectional, ends in CHECK CONDITION /
ILLEGAL REQUEST / INVALID FIELD IN COMMAND INFORMATION UNIT (0Eh/03h) before it
touches the medium.  A READ carrying data-out is answered GOOD with the data-out
ignored (libiscsi iSCSIResiduals.Read10Invalid demands that).  In process and
over iSCSI with our initiator (which sets the R bit for ``read_length`` and the
W bit for ``data_out``).
"""
from __future__ import annotations

import os
import struct

import pytest

from conftest import IQN_BASE
from scsi_target.testing.process import Lun, ServerProcess, Target
from scsi_target.initiator.sync import SyncIscsiClient
from scsi_target.scsi.command import Command, Direction, Status
from scsi_target.scsi.disk import DiskLU
from scsi_target.scsi.lun import LunMap
from scsi_target.scsi.sense import SenseKey, parse_sense
from volume.memstore import MemoryStore

BS = 512
IQN = f"{IQN_BASE}:direction"
IU_FIELD = (SenseKey.ILLEGAL_REQUEST, 0x0E, 0x03)


def read10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)


def write10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0)


@pytest.fixture
def luns():
    m = LunMap("iqn.2026-12.test:direction")
    m.add(0, DiskLU(MemoryStore(1 << 20), BS))
    m.execute(Command(bytes(6)))          # the power-on unit attention
    return m


def run(m, cdb, direction, *, data=None, length=None):
    if length is None:
        length = len(data) if data is not None else 0
    return m.execute(Command(cdb, data_out=data, expected_length=length, direction=direction))


def medium(m, lba, blocks) -> bytes:
    r = run(m, read10(lba, blocks), Direction.IN, length=blocks * BS)
    assert r.status == Status.GOOD
    return bytes(r.data_in)


@pytest.mark.parametrize("direction", [Direction.IN, Direction.BIDI])
def test_write_expecting_data_in_is_refused_before_the_medium(luns, direction):
    before = medium(luns, 3, 1)
    data = os.urandom(BS)
    r = run(luns, write10(3, 1), direction, data=data, length=BS)
    assert r.status == Status.CHECK_CONDITION
    assert parse_sense(r.sense) == IU_FIELD
    assert r.residual == BS and not r.data_in
    assert medium(luns, 3, 1) == before


def test_mode_select_expecting_data_in_is_refused(luns):
    cdb = bytes([0x55, 0x10, 0, 0, 0, 0, 0, 0, 8, 0])
    r = run(luns, cdb, Direction.IN, data=bytes(8), length=8)
    assert parse_sense(r.sense) == IU_FIELD


def test_read_as_bidirectional_is_refused(luns):
    r = run(luns, read10(0, 1), Direction.BIDI, data=os.urandom(BS), length=BS)
    assert parse_sense(r.sense) == IU_FIELD


def test_read_carrying_data_out_reads_and_ignores_it(luns):
    data = os.urandom(BS)
    assert run(luns, write10(5, 1), Direction.OUT, data=data).status == Status.GOOD
    r = run(luns, read10(5, 1), Direction.OUT, data=os.urandom(BS), length=BS)
    assert r.status == Status.GOOD and bytes(r.data_in) == data
    assert medium(luns, 5, 1) == data


def test_matching_and_unstated_directions_still_work(luns):
    data = os.urandom(2 * BS)
    assert run(luns, write10(7, 2), Direction.OUT, data=data).status == Status.GOOD
    assert run(luns, write10(9, 2), Direction.NONE, data=data).status == Status.GOOD
    assert medium(luns, 7, 4) == data * 2
    # A no-data command with a stated data-in length only reports the residual.
    r = run(luns, bytes(6), Direction.IN, length=64)
    assert r.status == Status.GOOD and r.residual == 64


# -------------------------------------------------------------------- over iSCSI
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("direction"), [Target(IQN, [Lun(0, "4M")])])
    srv.start()
    yield srv
    rc = srv.stop()
    assert rc == 0, f"exit status {rc}:\n{srv.log_tail()}"


def test_over_iscsi_write_with_r_bit_is_refused(served):
    with SyncIscsiClient(served.url(0)) as c:
        c.execute(bytes(6))                               # power-on unit attention
        data = os.urandom(4 * BS)
        assert c.execute(write10(20, 4), data_out=data).status == 0
        r = c.execute(write10(20, 4), read_length=4 * BS)  # R bit, no data-out
        assert r.status == Status.CHECK_CONDITION
        assert (r.sense_key, r.asc, r.ascq) == IU_FIELD
        assert not r.data and r.residual == 4 * BS
        # A READ sent with the W bit and data-out: GOOD, the medium untouched.
        r = c.execute(read10(20, 4), data_out=os.urandom(4 * BS))
        assert r.status == 0
        assert bytes(c.execute(read10(20, 4), read_length=4 * BS).data) == data
