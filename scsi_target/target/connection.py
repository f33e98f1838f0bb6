"""One iSCSI connection on the target side, sans I/O.

Bytes go in with :meth:`TargetConnection.receive_data`; buffers to send
accumulate in :attr:`outbox` (take them with :meth:`take_output`), and
:attr:`closing` says the driver must close the socket after sending them.
SCSI commands are executed synchronously against the session's LUN map
(the SCSI layer does no network I/O either), which also makes each command
atomic with respect to the others.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..scsi import sense as S
from ..scsi.command import Command, Direction, Response, Status, TaskAttr
from ..scsi.lunaddr import decode_lun
from ..protocol import pdu as P
from ..protocol.framing import FramingError, PduReader, UnknownOpcode, encode_pdu
from ..protocol.serial import sn_le
from .session import Session, SessionTable

if TYPE_CHECKING:  # pragma: no cover
    from .registry import Portal, TargetRegistry

log = logging.getLogger("scsi_target.target")

# Writes larger than this are refused before any data is accepted (bounds memory).
MAX_WRITE_BUFFER = 256 << 20   # 65536 blocks of 4 KiB: the largest DiskLU transfer
# Data-out solicited with R2T but not yet written, per connection.  Beyond it
# further R2Ts wait until earlier writes complete, so a peer cannot make the
# target hold more than this (plus unsolicited first bursts) in memory.
R2T_BUDGET = 512 << 20
# Out-of-order commands held while waiting for a CmdSN gap to fill.
MAX_PENDING = 256


class ProtocolError(Exception):
    """The initiator broke the protocol; reject (if reason) and close."""

    def __init__(self, message: str, reject_reason: int | None = None, bhs: bytes = b"") -> None:
        super().__init__(message)
        self.reject_reason = reject_reason
        self.bhs = bhs


class AfterSend:
    """Marker in the output: call ``callback`` once every byte before it is sent."""
    __slots__ = ("callback",)

    def __init__(self, callback) -> None:
        self.callback = callback


class _DataSequenceError(Exception):
    def __init__(self, asc) -> None:
        super().__init__(asc.name)
        self.asc = asc


@dataclass
class Task:
    """A SCSI command from arrival to response."""
    pdu: P.ScsiCommand
    lun: int
    buffer: bytearray | None = None       # data-out being collected
    received: int = 0
    delivered: bool = False               # reached in CmdSN order
    # Data-out sequencing (DataPDUInOrder/DataSequenceInOrder = Yes).
    unsolicited_left: int = 0
    unsolicited_datasn: int = 0
    unsolicited_offset: int = 0
    next_r2t_offset: int = 0               # first byte not yet asked for
    r2tsn: int = 0
    outstanding: dict[int, "R2TState"] = field(default_factory=dict)  # by TTT
    # Set when the data-out phase went wrong: the command ends in CHECK
    # CONDITION (ABORTED COMMAND) instead of executing; the connection lives on.
    error: object = None
    solicited: int = 0                     # bytes reserved in the R2T budget

    @property
    def data_complete(self) -> bool:
        return self.buffer is None or self.received >= len(self.buffer)


@dataclass
class R2TState:
    offset: int
    length: int
    next_offset: int
    datasn: int = 0


class TargetConnection:
    def __init__(self, registry: "TargetRegistry", sessions: SessionTable,
                 local_portal: "Portal", peer: str = "?", max_recv_dsl: int = 262144) -> None:
        self.registry = registry
        self.sessions = sessions
        self.local_portal = local_portal
        self.peer = peer
        self.max_recv_dsl = max_recv_dsl
        self.reader = PduReader()
        self.outbox: list = []
        self.closing = False
        self.session: Session | None = None
        self.login = self._new_login()
        self.params = None
        self.statsn = 0
        self.cid = 0
        self.header_digest = False
        self.data_digest = False
        self.max_xmit = 8192
        self.max_burst = 262144
        self.first_burst = 65536
        self.immediate_data = True
        self.initial_r2t = True
        self.max_r2t = 1
        self.tasks: dict[int, Task] = {}
        self.r2t_inflight = 0                 # solicited, not yet executed (R2T_BUDGET)
        self.r2t_waiting: list[Task] = []     # writes whose next R2T waits for budget
        self.pending: dict[int, P.Pdu] = {}   # CmdSN -> PDU waiting for its turn
        self.next_ttt = 1
        self.text = None
        # Liveness (see keepalive()): when the peer last sent anything, and the
        # NOP-In ping we are waiting an answer for.
        self.last_heard = 0.0
        self.opened_at = 0.0
        self.ping_ttt: int | None = None
        self.ping_sent = 0.0

    # ------------------------------------------------------------ plumbing
    def _new_login(self):
        from .login import LoginMachine
        # Portal group tag None: each target answers with its own tag, the same
        # one SendTargets reports.
        return LoginMachine(self.registry, None, self.local_portal,
                            max_recv_dsl=self.max_recv_dsl,
                            tsih_exists=lambda tsih: self.sessions.get(tsih) is not None)

    def take_output(self) -> list:
        out, self.outbox = self.outbox, []
        return out

    def send(self, pdu: P.Pdu) -> None:
        self.outbox.extend(encode_pdu(pdu, self.header_digest, self.data_digest))

    def _next_statsn(self) -> int:
        sn = self.statsn
        self.statsn = (sn + 1) & 0xFFFFFFFF
        return sn

    def _sn_fields(self) -> tuple[int, int]:
        s = self.session
        return (s.exp_cmdsn, s.max_cmdsn) if s else (0, 0)

    def reject(self, reason: int, bhs: bytes) -> None:
        exp, mx = self._sn_fields()
        self.send(P.Reject(reason=reason, statsn=self._next_statsn(), expcmdsn=exp,
                           maxcmdsn=mx, data=bytes(bhs[:48])))

    def close(self, why: str) -> None:
        if not self.closing:
            log.info("closing connection from %s: %s", self.peer, why)
        self.closing = True

    def connection_lost(self) -> None:
        """The socket is gone: end the session (ERL 0, one connection per session)."""
        self.tasks.clear()
        self.pending.clear()
        self.r2t_waiting.clear()
        self.r2t_inflight = 0
        if self.session is not None and self.session.connection is self:
            self.sessions.remove(self.session)
            self.session.close()
            self.session.connection = None
        self.session = None

    # --------------------------------------------------------------- input
    def keepalive(self, now: float, *, interval: float, timeout: float,
                  login_timeout: float) -> None:
        """Periodic liveness check, driven by the front end's clock.

        A connection that has not finished login within ``login_timeout`` is
        closed.  In full feature phase, after ``interval`` seconds of silence
        the target pings with a NOP-In (RFC 7143 11.19); if the initiator
        does not answer within ``timeout`` the connection is closed, which
        ends the session and frees its reservations and tasks.
        """
        if self.closing:
            return
        if not self.last_heard:
            self.last_heard = now
        if not self.opened_at:
            self.opened_at = now
        if self.login is not None:
            # Measured from the connection's start: a trickle of bytes must not
            # keep a half-done login alive forever.
            if now - self.opened_at > login_timeout:
                self.close("login did not complete in time")
            return
        if self.ping_ttt is not None:
            if now - self.ping_sent > timeout:
                self.close(f"no answer to NOP-In ping within {timeout:g} s")
            return
        if interval and now - self.last_heard >= interval:
            ttt = self.next_ttt
            self.next_ttt = (ttt + 1) & 0x7FFFFFFF or 1
            self.ping_ttt, self.ping_sent = ttt, now
            exp, mx = self._sn_fields()
            self.send(P.NopIn(itt=P.RESERVED_TAG, ttt=ttt, statsn=self.statsn,
                              expcmdsn=exp, maxcmdsn=mx))

    def receive_data(self, data, now: float = 0.0) -> None:
        if self.closing:
            return
        if now:
            self.last_heard = now
        try:
            self._receive(data)
        finally:
            # Group commit: the write intents of every command answered in this
            # batch become durable before any response leaves (invariant 1).
            if self.session is not None and self.session.target is not None:
                self.session.target.luns.commit()

    def _receive(self, data) -> None:
        self.reader.feed(data)
        while not self.closing:
            try:
                pdu = self.reader.next_pdu()
            except UnknownOpcode as exc:
                if self.login is not None:
                    self.close(f"login phase: {exc}")
                    return
                self.reject(P.RejectReason.COMMAND_NOT_SUPPORTED, exc.bhs)
                continue
            except FramingError as exc:
                if exc.reject_reason is not None and self.login is None:
                    self.reject(exc.reject_reason, exc.bhs)
                self.close(str(exc))
                return
            if pdu is None:
                return
            try:
                self.handle(pdu)
            except ProtocolError as exc:
                if exc.reject_reason is not None and self.login is None:
                    self.reject(exc.reject_reason, exc.bhs or pdu.encode_bhs())
                self.close(str(exc))
                return

    def handle(self, pdu: P.Pdu) -> None:
        if self.login is not None:
            self._handle_login(pdu)
            return
        op = pdu.OPCODE
        if op not in P.INITIATOR_OPCODES or op == P.Op.LOGIN_REQUEST:
            raise ProtocolError(f"opcode 0x{op:02x} not allowed in full feature phase",
                                P.RejectReason.PROTOCOL_ERROR)
        if op == P.Op.DATA_OUT:
            self._data_out(pdu)
            return
        if op == P.Op.SNACK_REQUEST:
            # ErrorRecoveryLevel 0: no SNACK support.
            self.reject(P.RejectReason.COMMAND_NOT_SUPPORTED, pdu.encode_bhs())
            return
        if op == P.Op.NOP_OUT and pdu.itt == P.RESERVED_TAG:
            # Answer to our NOP-In ping; carries no CmdSN of its own.
            if pdu.ttt == self.ping_ttt:
                self.ping_ttt = None
            return
        if self.session.discovery and op in (P.Op.SCSI_COMMAND, P.Op.TASK_MGMT_REQUEST):
            self.reject(P.RejectReason.PROTOCOL_ERROR, pdu.encode_bhs())
            return
        if op == P.Op.SCSI_COMMAND:
            self._scsi_arrival(pdu)
        self._order(pdu)

    # ------------------------------------------------------------- login
    def _handle_login(self, pdu: P.Pdu) -> None:
        if pdu.OPCODE != P.Op.LOGIN_REQUEST:
            self.send(self.login.invalid_request(pdu))
            self.close(f"opcode 0x{pdu.OPCODE:02x} before login completed")
            return
        resp = self.login.receive(pdu)
        if self.login.done:
            result = self.login.result
            self._start_session(pdu, result, resp)
            if self.closing:
                return
            self.send(resp)
            self._enter_full_feature(result)
            return
        self.send(resp)
        if self.login.failed:
            self.close("login failed")

    def _start_session(self, req: P.LoginRequest, result, resp: P.LoginResponse) -> None:
        target = result.target
        discovery = result.session_type == "Discovery"
        tname = None if discovery else target.name
        old = self.sessions.find(result.initiator_name, req.isid, tname)
        if old is not None and old.connection is not None:
            # Session reinstatement (RFC 7143 6.3.5): the old one ends now.
            old.connection.close("session reinstated by a new login with the same ISID")
            old.connection.connection_lost()
        elif old is not None:
            self.sessions.remove(old)
            old.close()
        session = Session(tsih=self.sessions.new_tsih(), initiator_name=result.initiator_name,
                          isid=bytes(req.isid), target=None if discovery else target,
                          discovery=discovery, exp_cmdsn=req.cmdsn)
        session.connection = self
        self.sessions.add(session)
        self.session = session
        self.cid = req.cid
        resp.tsih = session.tsih
        resp.expcmdsn = session.exp_cmdsn
        resp.maxcmdsn = session.max_cmdsn

    def _enter_full_feature(self, result) -> None:
        params = result.params
        self.params = params
        self.statsn = getattr(result, "statsn", self.statsn)
        self.header_digest = params.header_digest
        self.data_digest = params.data_digest
        self.reader.header_digest = params.header_digest
        self.reader.data_digest = params.data_digest
        self.reader.max_data = params.max_recv_data_segment_length
        self.max_xmit = params.max_xmit_data_segment_length
        self.max_burst = params.max_burst_length
        self.first_burst = params.first_burst_length
        self.immediate_data = params.immediate_data
        self.initial_r2t = params.initial_r2t
        self.max_r2t = max(1, params.max_outstanding_r2t)
        self.login = None

    # ------------------------------------------------------ CmdSN ordering
    def _order(self, pdu: P.Pdu) -> None:
        s = self.session
        if pdu.immediate:
            self._deliver(pdu)
            return
        cmdsn = pdu.cmdsn
        if cmdsn == s.exp_cmdsn:
            s.advance()
            self._deliver(pdu)
            while s.exp_cmdsn in self.pending and not self.closing:
                nxt = self.pending.pop(s.exp_cmdsn)
                s.advance()
                self._deliver(nxt)
            return
        if s.in_window(cmdsn) and len(self.pending) < MAX_PENDING:
            self.pending[cmdsn] = pdu
            return
        # Outside the window: silently ignored (RFC 7143 4.2.2.1).
        log.debug("dropping PDU with CmdSN %d outside [%d, %d]", cmdsn, s.exp_cmdsn, s.max_cmdsn)
        if pdu.OPCODE == P.Op.SCSI_COMMAND:
            self.tasks.pop(pdu.itt, None)

    def _deliver(self, pdu: P.Pdu) -> None:
        op = pdu.OPCODE
        if op == P.Op.SCSI_COMMAND:
            task = self.tasks.get(pdu.itt)
            if task is None or task.pdu is not pdu:
                return  # aborted while queued
            task.delivered = True
            if task.data_complete or task.error is not None:
                self._execute(task)
        elif op == P.Op.NOP_OUT:
            self._nop_out(pdu)
        elif op == P.Op.TASK_MGMT_REQUEST:
            self._task_mgmt(pdu)
        elif op == P.Op.TEXT_REQUEST:
            self._text(pdu)
        elif op == P.Op.LOGOUT_REQUEST:
            self._logout(pdu)

    # ----------------------------------------------------------- SCSI I/O
    def _scsi_arrival(self, pdu: P.ScsiCommand) -> None:
        if pdu.itt in self.tasks:
            raise ProtocolError(f"ITT 0x{pdu.itt:08x} already in use",
                                P.RejectReason.INVALID_PDU_FIELD)
        task = Task(pdu=pdu, lun=decode_lun(pdu.lun.to_bytes(8, "big")))
        self.tasks[pdu.itt] = task
        immediate = len(pdu.data)
        if pdu.write:
            edtl = pdu.edtl
            if edtl > MAX_WRITE_BUFFER:
                # Larger than any LU accepts in one command: refuse without
                # buffering a byte (its unsolicited data is discarded).
                task.error = S.SenseError(S.SenseKey.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB)
                return
            if immediate > edtl or (immediate and not self.immediate_data):
                raise ProtocolError("immediate data beyond EDTL or not negotiated",
                                    P.RejectReason.PROTOCOL_ERROR)
            task.buffer = bytearray(edtl)
            if immediate:
                task.buffer[:immediate] = pdu.data
                task.received = immediate
            if not self.initial_r2t:
                unsolicited_end = min(self.first_burst, edtl)
                task.unsolicited_left = max(0, unsolicited_end - immediate)
                task.unsolicited_offset = immediate
                task.next_r2t_offset = max(immediate, unsolicited_end)
            else:
                task.next_r2t_offset = immediate
            self._issue_r2ts(task)
        elif immediate:
            raise ProtocolError("data segment on a command without the W bit",
                                P.RejectReason.PROTOCOL_ERROR)

    def _issue_r2ts(self, task: Task) -> None:
        edtl = len(task.buffer)
        if not task.solicited and task.next_r2t_offset < edtl:
            # Admission: a write reserves all it still needs before its first
            # R2T, so admitted writes always complete (no budget deadlock).
            need = edtl - task.next_r2t_offset
            if self.r2t_inflight and self.r2t_inflight + need > R2T_BUDGET:
                if task not in self.r2t_waiting:
                    self.r2t_waiting.append(task)
                return
            self.r2t_inflight += need
            task.solicited = need
        while task.next_r2t_offset < edtl and len(task.outstanding) < self.max_r2t:
            length = min(self.max_burst, edtl - task.next_r2t_offset)
            ttt = self.next_ttt
            self.next_ttt = (ttt + 1) & 0x7FFFFFFF or 1
            task.outstanding[ttt] = R2TState(task.next_r2t_offset, length, task.next_r2t_offset)
            exp, mx = self._sn_fields()
            self.send(P.R2T(lun=task.pdu.lun, itt=task.pdu.itt, ttt=ttt, statsn=self.statsn,
                            expcmdsn=exp, maxcmdsn=mx, r2tsn=task.r2tsn,
                            offset=task.next_r2t_offset, length=length))
            task.r2tsn += 1
            task.next_r2t_offset += length

    def _data_out(self, pdu: P.DataOut) -> None:
        task = self.tasks.get(pdu.itt)
        if task is None or task.buffer is None or task.error is not None:
            return  # for an aborted, refused or failed task: discard
        try:
            self._accept_data_out(task, pdu)
        except _DataSequenceError as exc:
            self._fail_task(task, exc.asc)

    def _accept_data_out(self, task: Task, pdu: P.DataOut) -> None:
        n = len(pdu.data)
        if pdu.ttt == P.RESERVED_TAG:
            if pdu.datasn != task.unsolicited_datasn or pdu.offset != task.unsolicited_offset \
                    or n > task.unsolicited_left:
                raise _DataSequenceError(S.UNEXPECTED_UNSOLICITED_DATA
                                         if n > task.unsolicited_left else S.DATA_OFFSET_ERROR)
            task.unsolicited_datasn += 1
            task.unsolicited_offset += n
            task.unsolicited_left -= n
            if pdu.final:
                task.unsolicited_left = 0
        else:
            r2t = task.outstanding.get(pdu.ttt)
            if r2t is None:
                raise _DataSequenceError(S.INVALID_TARGET_PORT_TRANSFER_TAG)
            if pdu.datasn != r2t.datasn or pdu.offset != r2t.next_offset or \
                    pdu.offset + n > r2t.offset + r2t.length:
                raise _DataSequenceError(S.DATA_OFFSET_ERROR)
            r2t.datasn += 1
            r2t.next_offset += n
            if r2t.next_offset == r2t.offset + r2t.length:
                if not pdu.final:
                    raise _DataSequenceError(S.DATA_PHASE_ERROR)
                del task.outstanding[pdu.ttt]
            elif pdu.final:
                raise _DataSequenceError(S.DATA_PHASE_ERROR)
        if n:
            task.buffer[pdu.offset:pdu.offset + n] = pdu.data
            task.received += n
        if task.data_complete:
            if task.delivered:
                self._execute(task)
        elif not task.outstanding and task.unsolicited_left == 0:
            self._issue_r2ts(task)

    def _release_budget(self, task: Task) -> None:
        """The task no longer holds solicited data: let waiting writes go on."""
        if task.solicited:
            self.r2t_inflight -= task.solicited
            task.solicited = 0
        while self.r2t_waiting and self.r2t_inflight < R2T_BUDGET:
            nxt = self.r2t_waiting.pop(0)
            if self.tasks.get(nxt.pdu.itt) is nxt and nxt.buffer is not None:
                self._issue_r2ts(nxt)
                if self.r2t_waiting and self.r2t_waiting[-1] is nxt:
                    break  # still no room for it

    def _fail_task(self, task: Task, asc) -> None:
        """Data-out went wrong: answer CHECK CONDITION once the command's turn comes."""
        task.buffer = None  # later Data-Out PDUs for this task are discarded
        task.outstanding.clear()
        self._release_budget(task)
        task.error = S.SenseError(S.SenseKey.ABORTED_COMMAND, asc)
        log.info("ITT 0x%08x: data-out error %s", task.pdu.itt, asc.name)
        if task.delivered:
            self._execute(task)

    def _execute(self, task: Task) -> None:
        del self.tasks[task.pdu.itt]
        self._release_budget(task)
        pdu = task.pdu
        if task.error is not None:
            self._respond(task, Response(Status.CHECK_CONDITION,
                                         sense=S.render_sense(task.error), residual=pdu.edtl))
            return
        cdb = pdu.cdb
        if pdu.ahs:
            cdb = _extended_cdb(pdu.cdb, pdu.ahs)
        direction = Direction.OUT if pdu.write else (Direction.IN if pdu.read else Direction.NONE)
        if pdu.read and pdu.write:
            direction = Direction.BIDI
        cmd = Command(cdb=cdb, lun=task.lun, data_out=task.buffer,
                      expected_length=pdu.edtl, direction=direction,
                      nexus=self.session.nexus, task_tag=pdu.itt,
                      task_attr=TaskAttr(pdu.attr) if pdu.attr <= 4 else TaskAttr.SIMPLE,
                      defer_barrier=True)
        self._respond(task, self.session.target.luns.execute(cmd))

    def _respond(self, task: Task, resp: Response) -> None:
        pdu = task.pdu
        exp, mx = self._sn_fields()
        data = resp.data_in
        n = len(data) if pdu.read else 0
        residual = resp.residual
        good = resp.status == Status.GOOD and not resp.sense
        if n:
            view = memoryview(data)
            if view.format != "B" or view.ndim != 1:
                view = view.cast("B")
            seg = self.max_xmit
            burst = self.max_burst
            datasn = 0
            offset = 0
            while offset < n:
                length = min(seg, n - offset, burst - (offset % burst))
                last = offset + length >= n
                end_of_burst = last or (offset + length) % burst == 0
                din = P.DataIn(final=end_of_burst, lun=pdu.lun, itt=pdu.itt, datasn=datasn,
                               offset=offset, data=view[offset:offset + length],
                               expcmdsn=exp, maxcmdsn=mx)
                if last and good:
                    din.has_status = True
                    din.status = int(resp.status)
                    din.statsn = self._next_statsn()
                    if residual > 0:
                        din.underflow, din.residual = True, residual
                    elif residual < 0:
                        din.overflow, din.residual = True, -residual
                self.send(din)
                datasn += 1
                offset += length
            if good:
                if resp.release is not None:
                    self.outbox.append(AfterSend(resp.release))
                return
            expdatasn = datasn
        else:
            expdatasn = task.r2tsn
        rsp = P.ScsiResponse(status=int(resp.status), itt=pdu.itt, statsn=self._next_statsn(),
                             expcmdsn=exp, maxcmdsn=mx, expdatasn=expdatasn)
        if residual > 0:
            rsp.underflow, rsp.residual = True, residual
        elif residual < 0:
            rsp.overflow, rsp.residual = True, -residual
        if resp.sense:
            rsp.data = len(resp.sense).to_bytes(2, "big") + bytes(resp.sense)
        self.send(rsp)
        if resp.release is not None:
            self.outbox.append(AfterSend(resp.release))

    # ------------------------------------------------------ other requests
    def _nop_out(self, pdu: P.NopOut) -> None:
        exp, mx = self._sn_fields()
        self.send(P.NopIn(lun=pdu.lun, itt=pdu.itt, ttt=P.RESERVED_TAG,
                          statsn=self._next_statsn(), expcmdsn=exp, maxcmdsn=mx,
                          data=bytes(pdu.data)))

    def _task_mgmt(self, pdu: P.TaskMgmtRequest) -> None:
        fn = pdu.function
        F = P.TmfFunction
        response = P.TmfResponse.COMPLETE
        lun = decode_lun(pdu.lun.to_bytes(8, "big"))
        luns = self.session.target.luns
        needs_lun = fn in (F.ABORT_TASK, F.ABORT_TASK_SET, F.CLEAR_TASK_SET, F.LOGICAL_UNIT_RESET,
                           F.CLEAR_ACA)
        if needs_lun and lun not in luns.luns:
            response = P.TmfResponse.LUN_DOES_NOT_EXIST
        elif fn == F.ABORT_TASK:
            task = self.tasks.get(pdu.rtt)
            if task is not None and task.lun == lun:
                self._abort(task)
            elif task is None and self._cmdsn_not_yet_seen(pdu.refcmdsn):
                response = P.TmfResponse.COMPLETE
            else:
                response = P.TmfResponse.TASK_DOES_NOT_EXIST
        elif fn in (F.ABORT_TASK_SET, F.CLEAR_TASK_SET):
            for task in [t for t in self.tasks.values() if t.lun == lun]:
                self._abort(task)
        elif fn == F.LOGICAL_UNIT_RESET:
            self._abort_everywhere(lun)
            luns.luns[lun].reset(self.session.nexus)
        elif fn in (F.TARGET_WARM_RESET, F.TARGET_COLD_RESET):
            self._abort_everywhere(None)
            for lu in luns.luns.values():
                lu.reset(self.session.nexus)
        elif fn == F.TASK_REASSIGN:
            response = P.TmfResponse.REASSIGNMENT_NOT_SUPPORTED
        else:
            response = P.TmfResponse.NOT_SUPPORTED
        exp, mx = self._sn_fields()
        self.send(P.TaskMgmtResponse(response=int(response), itt=pdu.itt,
                                     statsn=self._next_statsn(), expcmdsn=exp, maxcmdsn=mx))
        if fn == F.TARGET_COLD_RESET and response == P.TmfResponse.COMPLETE:
            self.close("target cold reset")

    def _abort_everywhere(self, lun: int | None) -> None:
        """A reset clears the task set of every I_T nexus (SAM-5), not just ours.

        Tasks of other sessions on this target that have not run yet (waiting
        for data or for their CmdSN) are dropped without a response; their
        nexuses see the reset's unit attention on their next command.
        """
        target = self.session.target
        for session in self.sessions.sessions():
            conn = session.connection
            if conn is None or session.target is not target:
                continue
            for task in [t for t in conn.tasks.values() if lun is None or t.lun == lun]:
                conn._abort(task)

    def _cmdsn_not_yet_seen(self, cmdsn: int) -> bool:
        s = self.session
        return sn_le(s.exp_cmdsn, cmdsn) and sn_le(cmdsn, s.max_cmdsn) and cmdsn not in self.pending

    def _abort(self, task: Task) -> None:
        # A queued PDU stays in ``pending`` so its CmdSN still advances the
        # window; _deliver skips it because its task is gone.
        self.tasks.pop(task.pdu.itt, None)
        self._release_budget(task)

    def _text(self, pdu: P.TextRequest) -> None:
        from .text import TextNegotiator, TextProtocolError
        if self.text is None:
            self.text = TextNegotiator(self.params, self.registry, self.session.target,
                                       initiator_name=self.session.initiator_name)
        try:
            resp = self.text.receive(pdu)
        except TextProtocolError as exc:
            self.reject(exc.reason, pdu.encode_bhs())
            return
        exp, mx = self._sn_fields()
        resp.statsn = self._next_statsn()
        resp.expcmdsn, resp.maxcmdsn = exp, mx
        self.send(resp)
        new_max = getattr(self.text, "max_xmit_data_segment_length", None)
        if new_max:
            self.max_xmit = new_max

    def _logout(self, pdu: P.LogoutRequest) -> None:
        response = 0
        if pdu.reason == 2:
            response = 2  # connection recovery is not supported (ERL 0)
        elif pdu.reason == 1 and pdu.cid != self.cid:
            response = 1  # CID not found
        exp, mx = self._sn_fields()
        self.send(P.LogoutResponse(response=response, itt=pdu.itt, statsn=self._next_statsn(),
                                   expcmdsn=exp, maxcmdsn=mx, time2wait=0, time2retain=0))
        if response == 0:
            self.close("logout")


def _extended_cdb(cdb16: bytes, ahs: bytes) -> bytes:
    """CDB longer than 16 bytes: the rest comes in an Extended CDB AHS (type 1)."""
    pos = 0
    while pos + 3 <= len(ahs):
        length = int.from_bytes(ahs[pos:pos + 2], "big")
        ahs_type = ahs[pos + 2]
        body = ahs[pos + 4:pos + 3 + length]
        if ahs_type == 1:
            return bytes(cdb16) + bytes(body)
        pos += 3 + length + (-(3 + length) % 4)
    return cdb16
