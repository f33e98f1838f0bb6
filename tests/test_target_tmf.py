"""The task manager over the session table: TMF requests in, responses and cleared task sets out."""
from __future__ import annotations

import pytest

from scsi_target.protocol import pdu as P
from scsi_target.protocol.params import SessionParams
from scsi_target.scsi.command import Command
from scsi_target.scsi.disk import DiskLU
from scsi_target.scsi.lun import LunMap
from scsi_target.scsi.lunaddr import encode_lun
from scsi_target.target.dataout import DataOutSequencer
from scsi_target.target.registry import TargetDef
from scsi_target.target.session import Session, SessionTable
from scsi_target.target.tags import TagAllocator
from volume.memstore import MemoryStore

F, R = P.TmfFunction, P.TmfResponse


def _target(name: str, nluns: int = 2) -> TargetDef:
    luns = LunMap(name)
    for n in range(nluns):
        luns.add(n, DiskLU(MemoryStore(1 << 20), 512))
    return TargetDef(name, luns)


def _session(table: SessionTable, target: TargetDef, tsih: int) -> Session:
    s = Session(tsih=tsih, initiator_name=f"iqn.2026-11.test:i{tsih}", isid=bytes(6),
                target=target, discovery=False, exp_cmdsn=0)
    s.tasks = DataOutSequencer(SessionParams(), lambda r2t: None, TagAllocator())
    table.add(s)
    return s


def _tmf(function, lun=0, rtt=P.RESERVED_TAG, refcmdsn=0) -> P.TaskMgmtRequest:
    return P.TaskMgmtRequest(immediate=True, function=function, rtt=rtt, refcmdsn=refcmdsn,
                             lun=int.from_bytes(encode_lun(lun), "big"))


def _waiting_write(s: Session, itt: int, lun: int) -> None:
    s.tasks.arrival(P.ScsiCommand(write=True, itt=itt, edtl=4096), lun)


@pytest.fixture
def world():
    table = SessionTable()
    t1, t2 = _target("iqn.2026-11.test:t1"), _target("iqn.2026-11.test:t2")
    a, b, c = _session(table, t1, 1), _session(table, t1, 2), _session(table, t2, 3)
    for s in (a, b, c):
        _waiting_write(s, 10, 0)
        _waiting_write(s, 11, 1)
    return table, a, b, c


def _tur(s: Session, lun: int):
    return s.target.luns.execute(Command(bytes(6), lun=lun, nexus=s.nexus))


def test_lun_reset_clears_that_lun_in_every_session_on_the_target(world):
    table, a, b, c = world
    for s in (a, b, c):
        _tur(s, 1)                                            # the power-on unit attention
        assert _tur(s, 1).ok
    assert table.task_manager.request(a, _tmf(F.LOGICAL_UNIT_RESET, lun=1)) == R.COMPLETE
    assert sorted(a.tasks.tasks) == sorted(b.tasks.tasks) == [10]
    assert sorted(c.tasks.tasks) == [10, 11]                  # another target: untouched
    # Every nexus of the LU sees the reset's unit attention, the requester's included.
    for s in (a, b):
        rsp = _tur(s, 1)
        assert rsp.sense[2] & 0x0F == 0x06 and rsp.sense[12] == 0x29
    assert _tur(c, 1).ok and _tur(a, 0).status != 0           # LUN 0: still its power-on UA


def test_target_reset_clears_every_lun_of_the_target(world):
    table, a, b, c = world
    assert table.task_manager.request(b, _tmf(F.TARGET_WARM_RESET)) == R.COMPLETE
    assert not a.tasks.tasks and not b.tasks.tasks and len(c.tasks.tasks) == 2


def test_task_set_functions_stay_in_the_session(world):
    table, a, b, c = world
    assert table.task_manager.request(a, _tmf(F.ABORT_TASK_SET, lun=0)) == R.COMPLETE
    assert sorted(a.tasks.tasks) == [11] and sorted(b.tasks.tasks) == [10, 11]


def test_abort_task(world):
    table, a, b, c = world
    tm = table.task_manager
    assert tm.request(a, _tmf(F.ABORT_TASK, lun=0, rtt=11)) == R.TASK_DOES_NOT_EXIST   # wrong LUN
    assert tm.request(a, _tmf(F.ABORT_TASK, lun=1, rtt=11)) == R.COMPLETE
    assert sorted(a.tasks.tasks) == [10] and sorted(b.tasks.tasks) == [10, 11]
    assert tm.request(a, _tmf(F.ABORT_TASK, rtt=99, refcmdsn=5)) == R.COMPLETE     # not yet seen
    a.pending[5] = P.NopOut(cmdsn=5)
    assert tm.request(a, _tmf(F.ABORT_TASK, rtt=99, refcmdsn=5)) == R.TASK_DOES_NOT_EXIST


@pytest.mark.parametrize("function,lun,expected", [
    (F.LOGICAL_UNIT_RESET, 9, R.LUN_DOES_NOT_EXIST),
    (F.ABORT_TASK_SET, 9, R.LUN_DOES_NOT_EXIST),
    (F.CLEAR_ACA, 0, R.NOT_SUPPORTED),
    (F.TASK_REASSIGN, 0, R.REASSIGNMENT_NOT_SUPPORTED),
    (0x55, 0, R.NOT_SUPPORTED),
])
def test_other_answers_touch_no_task(world, function, lun, expected):
    table, a, b, c = world
    assert table.task_manager.request(a, _tmf(function, lun=lun)) == expected
    assert all(len(s.tasks.tasks) == 2 for s in (a, b, c))
