"""The one never-crash guard: LunMap.execute answers every command, even when
a handler has a bug, and the iSCSI front end goes through the same guard."""
from __future__ import annotations

import pytest

from scsi_target.scsi.command import Command, Direction, Status
from scsi_target.scsi.dispatch import CommandSet, DispatchTable
from scsi_target.scsi.disk import DiskLU
from scsi_target.scsi.lun import LunMap
from scsi_target.scsi.sense import SenseKey, parse_sense
from scsi_target.scsi.spc import SPC
from volume.memstore import MemoryStore

BROKEN = CommandSet("broken")


@BROKEN.command(0xC8, "BUGGY", 6, direction=Direction.IN)
def _buggy(lu, cmd):
    raise ZeroDivisionError("a bug below the SCSI layer")


class BuggyDisk(DiskLU):
    table = DispatchTable([SPC, BROKEN])


@pytest.fixture
def luns():
    m = LunMap("iqn.2026-12.test:guard")
    m.add(0, BuggyDisk(MemoryStore(1 << 20)))
    return m


def test_unexpected_exception_becomes_internal_target_failure(luns, caplog):
    # First command on a nexus reports POWER ON; get it out of the way.
    luns.execute(Command(bytes(6), lun=0))
    resp = luns.execute(Command(bytes([0xC8, 0, 0, 0, 16, 0]), lun=0, expected_length=16))
    assert resp.status == Status.CHECK_CONDITION
    sense = parse_sense(resp.sense)
    assert tuple(sense[:3]) == (SenseKey.HARDWARE_ERROR, 0x44, 0x00)
    assert resp.residual == 16
    assert "internal error" in caplog.text


def test_the_lu_keeps_working_after_a_bug(luns):
    luns.execute(Command(bytes([0xC8, 0, 0, 0, 0, 0]), lun=0))
    luns.execute(Command(bytes(6), lun=0))      # unit attention (power on)
    assert luns.execute(Command(bytes(6), lun=0)).status == Status.GOOD


def test_commit_runs_the_group_commit_barrier(monkeypatch, luns):
    calls = []
    monkeypatch.setattr("volume.durability.barrier", lambda: calls.append(1))
    luns.commit()
    assert calls == [1]
