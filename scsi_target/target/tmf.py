"""Task management functions (RFC 7143 11.5, SAM-5 section 7), owned by the session table.

An ABORT TASK or task-set function touches the tasks of the requesting
session; a LOGICAL UNIT RESET or TARGET RESET clears the task set of every
I_T nexus on the target (SAM-5 6.3), so the manager walks the session table
and asks each session's task set, through its public methods, to drop what it
holds.  Tasks dropped that way get no response; their nexuses see the reset's
unit attention on their next command.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..protocol.pdu import TaskMgmtRequest, TmfFunction as F, TmfResponse
from ..scsi.lunaddr import decode_lun

if TYPE_CHECKING:  # pragma: no cover
    from .session import Session, SessionTable

# Functions addressed to one LU: an unknown LUN is answered as such.
_NEEDS_LUN = frozenset({F.ABORT_TASK, F.ABORT_TASK_SET, F.CLEAR_TASK_SET,
                        F.LOGICAL_UNIT_RESET, F.CLEAR_ACA})


class TaskSet(Protocol):
    """What the manager needs of a session's tasks (the data-out sequencer)."""
    def get(self, itt: int): ...
    def abort(self, task) -> None: ...
    def abort_lun(self, lun: int | None) -> None: ...


class TaskManager:
    def __init__(self, table: "SessionTable") -> None:
        self.table = table

    def request(self, session: "Session", pdu: TaskMgmtRequest) -> TmfResponse:
        """Carry out ``pdu`` for ``session``; the response code to send."""
        fn = pdu.function
        lun = decode_lun(pdu.lun.to_bytes(8, "big"))
        luns = session.target.luns
        tasks = session.tasks
        if fn in _NEEDS_LUN and lun not in luns.luns:
            return TmfResponse.LUN_DOES_NOT_EXIST
        if fn == F.ABORT_TASK:
            task = tasks.get(pdu.rtt)
            if task is not None and task.lun == lun:
                tasks.abort(task)
                return TmfResponse.COMPLETE
            if task is None and session.not_yet_seen(pdu.refcmdsn):
                return TmfResponse.COMPLETE   # it will be dropped when it comes
            return TmfResponse.TASK_DOES_NOT_EXIST
        if fn in (F.ABORT_TASK_SET, F.CLEAR_TASK_SET):
            tasks.abort_lun(lun)
            return TmfResponse.COMPLETE
        if fn == F.LOGICAL_UNIT_RESET:
            self.clear_everywhere(session.target, lun)
            luns.luns[lun].reset(session.nexus)
            return TmfResponse.COMPLETE
        if fn in (F.TARGET_WARM_RESET, F.TARGET_COLD_RESET):
            self.clear_everywhere(session.target, None)
            for lu in luns.luns.values():
                lu.reset(session.nexus)
            return TmfResponse.COMPLETE
        if fn == F.TASK_REASSIGN:
            return TmfResponse.REASSIGNMENT_NOT_SUPPORTED
        return TmfResponse.NOT_SUPPORTED

    def clear_everywhere(self, target, lun: int | None) -> None:
        """Drop the tasks of ``lun`` (None: all) in every session on ``target``."""
        for s in self.table.sessions():
            if s.target is target and s.tasks is not None:
                s.tasks.abort_lun(lun)
