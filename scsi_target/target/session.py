"""iSCSI sessions: command numbering window, I_T nexus, and the session table.

A session outlives a connection only in name here (ErrorRecoveryLevel 0,
MaxConnections 1), but keeping it apart lets reinstatement, the CmdSN window
(with the commands queued for a gap in it) and task management across
sessions live in one place.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..protocol.serial import MASK32, sn_le
from ..scsi.command import Nexus
from . import budget as B
from .tmf import TaskManager

if TYPE_CHECKING:  # pragma: no cover
    from .registry import TargetDef
    from .connection import TargetConnection
    from .tmf import TaskSet

@dataclass
class Session:
    tsih: int
    initiator_name: str
    isid: bytes
    target: "TargetDef | None"          # None for discovery sessions
    discovery: bool
    exp_cmdsn: int
    queue_depth: int = 128
    connection: "TargetConnection | None" = None
    # The tasks of the session's connection (what task management acts on).
    tasks: "TaskSet | None" = None
    # CmdSN -> PDU that arrived ahead of its turn.
    pending: dict = field(default_factory=dict)
    nexus: Nexus = field(init=False)

    def __post_init__(self) -> None:
        isid = int.from_bytes(self.isid, "big")
        tname = self.target.name if self.target else ""
        tpgt = self.target.portal_group_tag if self.target else 1
        self.nexus = Nexus(initiator=f"{self.initiator_name},i,0x{isid:012x}",
                           target=f"{tname},t,0x{tpgt:04x}", relative_port=tpgt,
                           initiator_name=self.initiator_name, isid=isid)

    @property
    def max_cmdsn(self) -> int:
        return (self.exp_cmdsn + self.queue_depth - 1) & MASK32

    def in_window(self, cmdsn: int) -> bool:
        return sn_le(self.exp_cmdsn, cmdsn) and sn_le(cmdsn, self.max_cmdsn)

    def advance(self) -> None:
        self.exp_cmdsn = (self.exp_cmdsn + 1) & MASK32

    def not_yet_seen(self, cmdsn: int) -> bool:
        """Whether a command with ``cmdsn`` may still arrive (in the window, not queued)."""
        return self.in_window(cmdsn) and cmdsn not in self.pending

    def close(self) -> None:
        """The I_T nexus is gone: tell every LU (reservations, prevent state)."""
        if self.target is not None:
            for lu in self.target.luns.luns.values():
                lu.nexus_lost(self.nexus)


class SessionTable:
    """Live sessions of one server, for TSIH allocation, reinstatement and resets."""

    def __init__(self, target_write_budget: int | None = None) -> None:
        self._by_tsih: dict[int, Session] = {}
        self._tsih = itertools.count(1)
        self.task_manager = TaskManager(self)
        self.target_write_budget = target_write_budget
        self._budgets: dict[str, B.SharedBudget] = {}

    def write_budget(self, target: "TargetDef") -> B.SharedBudget:
        """The write-buffer budget all connections to ``target`` share."""
        budget = self._budgets.get(target.name)
        if budget is None:
            limit = self.target_write_budget
            budget = self._budgets[target.name] = B.SharedBudget(
                B.TARGET_WRITE_BUDGET if limit is None else limit)
        return budget

    def new_tsih(self) -> int:
        while True:
            t = next(self._tsih) & 0xFFFF
            if t and t not in self._by_tsih:
                return t

    def open(self, *, initiator_name: str, isid: bytes, target: "TargetDef | None",
             exp_cmdsn: int) -> Session:
        """A session for a login that just succeeded (``target`` None: discovery).

        An existing session of the same initiator name, ISID and target ends
        first: session reinstatement (RFC 7143 6.3.5).
        """
        old = self.find(initiator_name, isid, target.name if target is not None else None)
        if old is not None and old.connection is not None:
            old.connection.close("session reinstated by a new login with the same ISID")
            old.connection.connection_lost()
        elif old is not None:
            self.remove(old)
            old.close()
        session = Session(tsih=self.new_tsih(), initiator_name=initiator_name, isid=bytes(isid),
                          target=target, discovery=target is None, exp_cmdsn=exp_cmdsn)
        self.add(session)
        return session

    def find(self, initiator_name: str, isid: bytes, target_name: str | None) -> Session | None:
        for s in self._by_tsih.values():
            tname = s.target.name if s.target else None
            if s.initiator_name == initiator_name and s.isid == isid and tname == target_name:
                return s
        return None

    def get(self, tsih: int) -> Session | None:
        return self._by_tsih.get(tsih)

    def add(self, session: Session) -> None:
        self._by_tsih[session.tsih] = session

    def remove(self, session: Session) -> None:
        if self._by_tsih.get(session.tsih) is session:
            del self._by_tsih[session.tsih]

    def sessions(self) -> list[Session]:
        return list(self._by_tsih.values())

    def __len__(self) -> int:
        return len(self._by_tsih)
