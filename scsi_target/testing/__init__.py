"""Testing library: an in-process target, its command log, fault injection, pytest plugin.

* :class:`InProcessTarget` — build LUs (kinds are data: :mod:`.kinds`), submit
  commands, serve over iSCSI (:meth:`~InProcessTarget.serve`, ``serving``).
* :class:`~scsi_target.interceptors.cmdlog.CommandLog` — what every LUN saw.
* :class:`~scsi_target.interceptors.faults.FaultRule` — what to break.
* :class:`CowStore` — a copy-on-write snapshot of a seeded store.
* The pytest plugin (:mod:`.plugin`) is registered with the ``pytest11`` entry point.
"""
from ..interceptors.cmdlog import CommandLog, CommandRecord
from ..interceptors.faults import (FAULT_CONTROL_OPCODE, FaultInjector, FaultRule,
                                   FaultRuleError, fault_control_cdb, parse_rules)
from .cow import CowStore
from .kinds import LU_KINDS, BuildContext, LuKind, LuSpecError, register_lu_kind
from .inprocess import AsyncServer, InProcessTarget, Result, ThreadedServer, nexus

__all__ = ["AsyncServer", "BuildContext", "CommandLog", "CommandRecord", "CowStore",
           "FAULT_CONTROL_OPCODE", "FaultInjector", "FaultRule", "FaultRuleError",
           "InProcessTarget", "LU_KINDS", "LuKind", "LuSpecError", "Result", "ThreadedServer",
           "fault_control_cdb", "nexus", "parse_rules", "register_lu_kind"]
