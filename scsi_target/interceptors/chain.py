"""The interceptor chain around one LUN map: command log and fault injector.

:func:`install` wraps the ``execute`` of one :class:`~scsi_target.scsi.lun.LunMap`
*instance* (every front end calls ``luns.execute``), so a map without
interceptors runs the class's code untouched and pays nothing.  The wrapper
keeps the map's never-crash guarantee: a bug in an interceptor is logged and
the command gets the map's own answer.

Added latency (the ``delay`` fault) goes to :attr:`Interception.delay_sink`
when a front end set one (a served target holds that connection's output
without blocking the event loop); otherwise the calling thread sleeps.  The
``drop_connection`` fault goes to :attr:`Interception.drop_sink` likewise.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from ..scsi.command import Command, Deferred, Nexus, Response
from .cmdlog import CommandLog
from .faults import FaultInjector

log = logging.getLogger("scsi_target.interceptors")


class Interception:
    def __init__(self, lunmap, *, cmdlog: CommandLog | None = None,
                 faults: FaultInjector | None = None) -> None:
        self.lunmap = lunmap
        self.cmdlog = cmdlog
        self.faults = faults
        if faults is not None:
            faults.lunmap = lunmap
        self.delay_sink: Callable[[Nexus, float], None] | None = None
        # Set by a front end that can close the connection of a nexus (drop_connection).
        self.drop_sink: Callable[[Nexus], None] | None = None
        self._inner = type(lunmap).execute.__get__(lunmap)

    def execute(self, cmd: Command) -> Response | Deferred:
        """Run ``cmd`` through the rules and the log.  A LU over an asynchronous
        store may answer with a :class:`Deferred`: the connection's own actions
        (a drop, a delay of its output) are taken now, on the caller's thread;
        rewriting the answer and logging it happen when the store completes it."""
        inner = self._inner
        faults = self.faults
        t0 = time.perf_counter()
        if faults is None:
            resp = inner(cmd)
            if type(resp) is Deferred:
                return self._later(resp, cmd, None, t0)
            self._log(cmd, resp, t0, None)
            return resp
        rule = None
        delay = 0.0
        try:
            early, rule, delay = faults.before(cmd)
        except Exception:
            log.exception("fault injector failed before a command")
            early = None
        resp = early if early is not None else inner(cmd)
        if rule is not None and rule.action == "drop_connection" and self.drop_sink is not None:
            self.drop_sink(cmd.nexus)
        if delay:
            if self.delay_sink is not None:
                self.delay_sink(cmd.nexus, delay)
            else:
                time.sleep(delay)
        if type(resp) is Deferred:
            return self._later(resp, cmd, rule, t0)
        if rule is not None and early is None:
            resp = self._after(rule, cmd, resp)
        self._log(cmd, resp, t0, rule)
        return resp

    def _later(self, pending: Deferred, cmd: Command, rule, t0: float) -> Deferred:
        """The answer of a deferred command, rewritten and logged once it completes
        (on the store's completion thread: both are thread-safe)."""
        out = Deferred()

        def completed(resp: Response) -> None:
            if rule is not None:
                resp = self._after(rule, cmd, resp)
            self._log(cmd, resp, t0, rule)
            out.complete(resp)
        pending.then(completed)
        return out

    def _after(self, rule, cmd: Command, resp: Response) -> Response:
        try:
            return self.faults.after(rule, cmd, resp)
        except Exception:
            log.exception("fault injector failed after a command")
            return resp

    def _log(self, cmd: Command, resp: Response, t0: float, rule) -> None:
        clog = self.cmdlog
        if clog is None:
            return
        try:
            clog.record(cmd, resp, time.perf_counter() - t0, rule.action if rule is not None else "")
        except Exception:
            log.exception("command log failed")


def install(lunmap, *, cmdlog: CommandLog | None = None,
            faults: FaultInjector | None = None) -> Interception:
    """Put a command log and/or fault injector around ``lunmap`` (idempotent: replaces)."""
    if cmdlog is not None and cmdlog._name_of is None:
        cmdlog._name_of = lambda lun, cdb: command_name(lunmap, lun, cdb)
    chain = Interception(lunmap, cmdlog=cmdlog, faults=faults)
    lunmap.execute = chain.execute
    lunmap.interception = chain
    return chain


def uninstall(lunmap) -> None:
    lunmap.__dict__.pop("execute", None)
    lunmap.__dict__.pop("interception", None)


def command_name(lunmap, lun: int, cdb: bytes) -> str:
    """The name the LU's dispatch table gives ``cdb`` (e.g. "WRITE FILEMARKS(6)")."""
    if not cdb:
        return "(empty CDB)"
    lu = lunmap.luns.get(lun)
    table = getattr(lu, "table", None) if lu is not None else None
    if table is not None:
        try:
            entry = table.lookup(bytes(cdb))
            return entry.name
        except Exception:
            try:
                entry = table.find(cdb[0])
                if entry is not None:
                    return entry.name
            except Exception:
                pass
    if cdb[0] == 0xD5:
        return "FAULT CONTROL"
    return f"opcode 0x{cdb[0]:02x}"
