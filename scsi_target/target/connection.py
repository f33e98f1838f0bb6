"""One iSCSI connection on the target side, sans I/O: the facade that ties the parts.

Bytes go in with :meth:`TargetConnection.receive_data`; buffers to send
accumulate in :attr:`outbox` (take them with :meth:`take_output`), and
:attr:`closing` says the driver must close the socket after sending them.
SCSI commands are executed synchronously against the session's LUN map
(the SCSI layer does no network I/O either), which also makes each command
atomic with respect to the others -- except on LUs over an asynchronous store
(an RBD image), which may answer with a :class:`~..scsi.command.Deferred`: its
response is sent when the store completes it (:meth:`TargetConnection.post`,
set by the driver, brings the completion back to the connection's thread).

The parts, each sans I/O and each reading the one negotiated-parameters
record :attr:`params`:

* :class:`~.login.LoginMachine` until full feature phase;
* :class:`~.dataout.DataOutSequencer` — tasks, immediate/unsolicited data,
  R2Ts and their budget, data-out sequence errors;
* :class:`~.datain.DataInSegmenter` — responses cut into Data-In PDUs;
* the session table's :class:`~.tmf.TaskManager` — aborts and resets, across
  sessions;
* :class:`~.text.TextNegotiator` — Text requests;
* :class:`~.tags.TagAllocator` — every target transfer tag we hand out.

The facade orders commands by CmdSN, stamps StatSN/ExpCmdSN/MaxCmdSN on what
the parts produce, and encodes it.  It also keeps memory bounded (see
:mod:`.budget`): write buffers come from the connection's and the target's
write budgets, and commands wait in the receive buffer while more than
``send_bound`` bytes of responses are queued for a peer that does not read
(:attr:`blocked`; the driver then stops reading the socket, updates
:attr:`unsent` as the queue drains, and calls :meth:`receive_data` with no
bytes to go on).
"""
from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING, Callable

from ..protocol import params as K
from ..protocol import pdu as P
from ..protocol.framing import FramingError, PduReader, UnknownOpcode, encode_pdu
from ..protocol.serial import MASK32
from ..scsi import sense as S
from ..scsi.command import Command, Deferred, Direction, Response, Status, TaskAttr
from ..scsi.lunaddr import decode_lun
from . import budget as B
from .datain import DataInSegmenter
from .dataout import MAX_WRITE_BUFFER, WRITE_BUFFERS, DataOutSequencer, Task, take_buffer
from .errors import ProtocolError
from .hooks import Hold, TransportFaults
from .session import Session, SessionTable
from .tags import TagAllocator

if TYPE_CHECKING:  # pragma: no cover
    from .registry import Portal, TargetRegistry

__all__ = ["AfterSend", "MAX_PENDING", "MAX_WRITE_BUFFER", "ProtocolError", "TargetConnection"]

log = logging.getLogger("scsi_target.target")

# Out-of-order commands held while waiting for a CmdSN gap to fill.
MAX_PENDING = 256

_SCSI_COMMAND = P.Op.SCSI_COMMAND
_DATA_OUT = P.Op.DATA_OUT
# Indexed by read + 2 * write (the command PDU's R and W bits).
_DIRECTIONS = (Direction.NONE, Direction.IN, Direction.OUT, Direction.BIDI)
_ATTRS = tuple(TaskAttr(i) for i in range(5))
# LUN fields decode from their first two bytes only: at most 65536 entries.
_LUNS: dict[int, int] = {}


def _lun_number(field: int) -> int:
    top = field >> 48
    lun = _LUNS.get(top)
    if lun is None:
        lun = _LUNS[top] = decode_lun(top.to_bytes(2, "big"))
    return lun


class AfterSend:
    """Marker in the output: call ``callback`` once every byte before it is sent."""
    __slots__ = ("callback",)

    def __init__(self, callback) -> None:
        self.callback = callback


class TargetConnection:
    def __init__(self, registry: "TargetRegistry", sessions: SessionTable,
                 local_portal: "Portal", peer: str = "?", max_recv_dsl: int = 262144, *,
                 write_budget: int | None = None, send_bound: int | None = None) -> None:
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
        # What is in force: the defaults until login ends, then the negotiated record.
        self.params = K.SessionParams()
        self.statsn = 0
        self.cid = 0
        self.new_ttt = TagAllocator()
        self.dataout: DataOutSequencer | None = None
        self.datain: DataInSegmenter | None = None
        self.text = None
        self.write_budget = write_budget
        self.send_bound = B.SEND_QUEUE_BOUND if send_bound is None else send_bound
        self.unsent = 0          # bytes the driver still holds for the socket (it keeps this)
        self._produced = 0       # read data put in the outbox since take_output
        # Set by the driver: output appeared outside receive_data (R2Ts for a
        # write that waited for the target's budget another connection freed).
        self.wakeup: Callable[[], None] | None = None
        # Set by the driver: run a function on the connection's thread soon,
        # callable from any thread (deferred completions); None: run it at once.
        self.post: Callable[[Callable[[], None]], None] | None = None
        self.deferred = 0        # commands answered later by an asynchronous store
        self._done: collections.deque = collections.deque()
        self._posted = False
        # Deferred commands in flight: ITT -> LUN; those a task management
        # function aborted (their responses are dropped), and the TMF responses
        # that wait for them (SAM-5: a TMF completes once its tasks have ended).
        self._inflight: dict[int, int] = {}
        self._aborted: set[int] = set()
        self._held_tmf: list[tuple[P.TaskMgmtRequest, P.TmfResponse, set[int]]] = []
        # Liveness (see keepalive()): when the peer last sent anything, and the
        # NOP-In ping we are waiting an answer for.
        self.last_heard = 0.0
        self.opened_at = 0.0
        self.ping_ttt: int | None = None
        self.ping_sent = 0.0
        # Fault injection (hooks.py): set in full feature phase when the target has it.
        self.faults: TransportFaults | None = None
        self.dropped = False     # a drop fault fired: nothing more goes out

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
        self._produced = 0
        return out

    @property
    def blocked(self) -> bool:
        """Too much output waits for the peer: commands stay unread until it drains."""
        return self._produced + self.unsent >= self.send_bound

    @property
    def has_input(self) -> bool:
        """Received bytes not yet processed (left while :attr:`blocked`)."""
        return self.reader.buffered > 0

    def resume(self) -> bool:
        """Go on with received commands left unread while :attr:`blocked`.

        True if any input was consumed: the driver then takes the output and asks
        again.  The driver calls this whenever the send queue may have shrunk, and
        also right after sending, since the kernel may take a whole batch at once
        and then no writable event would ever come to wake the waiting commands.
        """
        if self.closing or not self.has_input or self.blocked:
            return False
        before = self.reader.buffered
        self.receive_data(b"")          # no new bytes: not a sign of life from the peer
        return self.reader.buffered != before

    def _woken(self) -> None:
        if self.wakeup is not None:
            self.wakeup()

    def _put(self, pdu: P.Pdu) -> None:
        p = self.params
        f = self.faults
        if f is not None:
            if self.dropped:
                return
            if f.sent(1) is not None:   # this one is the last PDU out
                self.outbox.extend(encode_pdu(pdu, p.header_digest, p.data_digest))
                self._drop("connection dropped after its last PDU sent")
                return
        self.outbox.extend(encode_pdu(pdu, p.header_digest, p.data_digest))

    def _drop(self, why: str) -> None:
        self.dropped = True
        self.close(f"fault injection: {why}")

    def _answer(self, pdu: P.Pdu) -> None:
        """Send a PDU that carries a status: it takes the next StatSN."""
        s = self.session
        if s is not None:
            pdu.expcmdsn, pdu.maxcmdsn = s.exp_cmdsn, s.max_cmdsn
        pdu.statsn = self.statsn
        self.statsn = (self.statsn + 1) & MASK32
        self._put(pdu)

    def _inform(self, pdu: P.Pdu) -> None:
        """Send a PDU without status (R2T, ping): it names the next StatSN, takes none."""
        s = self.session
        if s is not None:
            pdu.expcmdsn, pdu.maxcmdsn = s.exp_cmdsn, s.max_cmdsn
        pdu.statsn = self.statsn
        self._put(pdu)

    def reject(self, reason: int, bhs: bytes) -> None:
        self._answer(P.Reject(reason=reason, data=bytes(bhs[:48])))

    def close(self, why: str) -> None:
        if not self.closing:
            log.info("closing connection from %s: %s", self.peer, why)
        self.closing = True

    def connection_lost(self) -> None:
        """The socket is gone: end the session (ERL 0, one connection per session)."""
        if self.dataout is not None:
            self.dataout.clear()
        s = self.session
        if s is not None:
            s.pending.clear()
            if s.connection is self:
                self.sessions.remove(s)
                s.close()
                s.connection = None
                s.tasks = None
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
            ttt = self.new_ttt()
            self.ping_ttt, self.ping_sent = ttt, now
            self._inform(P.NopIn(itt=P.RESERVED_TAG, ttt=ttt))

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
        if data:
            self.reader.feed(data)
        while not self.closing:
            if self._produced + self.unsent >= self.send_bound:
                return   # read data is produced only while the peer takes it
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
            if self.faults is not None and self.faults.received():
                self._drop("connection dropped on a PDU received")
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
        if op == _SCSI_COMMAND:
            if self.session.discovery:
                self.reject(P.RejectReason.PROTOCOL_ERROR, pdu.encode_bhs())
                return
            self.dataout.arrival(pdu, _lun_number(pdu.lun))
            self._order(pdu)
            return
        if op == _DATA_OUT:
            task = self.dataout.data_out(pdu)
            if task is not None:
                self._execute(task)
            return
        if op not in P.INITIATOR_OPCODES or op == P.Op.LOGIN_REQUEST:
            raise ProtocolError(f"opcode 0x{op:02x} not allowed in full feature phase",
                                P.RejectReason.PROTOCOL_ERROR)
        if op == P.Op.SNACK_REQUEST:
            # ErrorRecoveryLevel 0: no SNACK support.
            self.reject(P.RejectReason.COMMAND_NOT_SUPPORTED, pdu.encode_bhs())
            return
        if op == P.Op.NOP_OUT and pdu.itt == P.RESERVED_TAG:
            # Answer to our NOP-In ping; carries no CmdSN of its own.
            if pdu.ttt == self.ping_ttt:
                self.ping_ttt = None
            return
        if self.session.discovery and op == P.Op.TASK_MGMT_REQUEST:
            self.reject(P.RejectReason.PROTOCOL_ERROR, pdu.encode_bhs())
            return
        self._order(pdu)

    # ------------------------------------------------------------- login
    def _handle_login(self, pdu: P.Pdu) -> None:
        if pdu.OPCODE != P.Op.LOGIN_REQUEST:
            self._put(self.login.invalid_request(pdu))
            self.close(f"opcode 0x{pdu.OPCODE:02x} before login completed")
            return
        resp = self.login.receive(pdu)
        if self.login.done:
            result = self.login.result
            self._start_session(pdu, result, resp)
            if self.closing:
                return
            self._put(resp)
            self.start_full_feature(result.params, result.statsn)
            return
        self._put(resp)
        if self.login.failed:
            self.close("login failed")

    def _start_session(self, req: P.LoginRequest, result, resp: P.LoginResponse) -> None:
        discovery = result.session_type == "Discovery"
        session = self.sessions.open(initiator_name=result.initiator_name, isid=req.isid,
                                     target=None if discovery else result.target,
                                     exp_cmdsn=req.cmdsn)
        session.connection = self
        self.session = session
        self.cid = req.cid
        resp.tsih = session.tsih
        resp.expcmdsn = session.exp_cmdsn
        resp.maxcmdsn = session.max_cmdsn

    def start_full_feature(self, params: K.SessionParams, statsn: int | None = None) -> None:
        """Login is over: ``params`` is the one record every part reads from now on."""
        self.params = params
        if statsn is not None:
            self.statsn = statsn
        self.reader.header_digest = params.header_digest
        self.reader.data_digest = params.data_digest
        self.reader.max_data = params.max_recv_data_segment_length
        s = self.session
        shared = self.sessions.write_budget(s.target) if s is not None and s.target else None
        hook = s.target.transport_faults if s is not None and s.target else None
        if hook is not None:
            self.faults = hook(s.nexus.initiator)
        self.dataout = DataOutSequencer(params,
                                        self._inform if self.faults is None else self._emit_r2t,
                                        self.new_ttt,
                                        budget=self.write_budget, shared=shared,
                                        woken=self._woken)
        self.datain = DataInSegmenter(params)
        if s is not None:
            s.tasks = self.dataout
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
            pending = s.pending
            while s.exp_cmdsn in pending and not self.closing:
                nxt = pending.pop(s.exp_cmdsn)
                s.advance()
                self._deliver(nxt)
            return
        if s.in_window(cmdsn) and len(s.pending) < MAX_PENDING:
            s.pending[cmdsn] = pdu
            return
        # Outside the window: silently ignored (RFC 7143 4.2.2.1).
        log.debug("dropping PDU with CmdSN %d outside [%d, %d]", cmdsn, s.exp_cmdsn, s.max_cmdsn)
        if pdu.OPCODE == _SCSI_COMMAND:
            self.dataout.drop(pdu.itt)

    def _deliver(self, pdu: P.Pdu) -> None:
        op = pdu.OPCODE
        if op == _SCSI_COMMAND:
            task = self.dataout.deliver(pdu)
            if task is not None:
                self._execute(task)
        elif op == P.Op.NOP_OUT:
            if self.faults is not None:
                stall = self.faults.nop_in()
                if stall is not None:
                    self.outbox.append(Hold(stall))
            self._answer(P.NopIn(lun=pdu.lun, itt=pdu.itt, ttt=P.RESERVED_TAG,
                                 data=bytes(pdu.data)))
        elif op == P.Op.TASK_MGMT_REQUEST:
            self._task_mgmt(pdu)
        elif op == P.Op.TEXT_REQUEST:
            self._text(pdu)
        elif op == P.Op.LOGOUT_REQUEST:
            self._logout(pdu)

    # ----------------------------------------------------------- SCSI I/O
    def _execute(self, task: Task) -> None:
        self.dataout.finish(task)
        pdu = task.pdu
        if task.error is not None:
            resp = Response(Status.CHECK_CONDITION, sense=S.render_sense(task.error),
                            residual=pdu.edtl)
        else:
            cdb = pdu.cdb
            if pdu.ahs:
                cdb = _extended_cdb(cdb, pdu.ahs)
            data_out = take_buffer(task)
            if data_out is None and pdu.write:
                data_out = bytearray()
            attr = pdu.attr
            luns = self.session.target.luns
            # Positional, in Command's field order (cdb, lun, data_out,
            # expected_length, direction, nexus, task_tag, task_attr, needed,
            # defer_barrier, may_defer, may_gather): binding keywords costs per command.
            resp = luns.execute(Command(
                cdb, task.lun, data_out, pdu.edtl, _DIRECTIONS[pdu.read + 2 * pdu.write],
                self.session.nexus, pdu.itt, _ATTRS[attr] if attr <= 4 else TaskAttr.SIMPLE,
                None, True, True, True))
            if task.recycled:
                # Unless the LU still holds it (a deferred write in flight does).
                WRITE_BUFFERS.recycle(data_out)
                data_out = None
            if type(resp) is Deferred:
                self.deferred += 1
                self._inflight[pdu.itt] = task.lun
                resp.then(lambda r, task=task: self._completed(task, r))
                return
        self._respond(task, resp)

    def _respond(self, task: Task, resp: Response) -> None:
        pdu = task.pdu
        pdus = self.datain.respond(pdu, resp, task.r2tsn)
        if self.faults is not None:
            self._answer_faulted(task, resp, pdus)
            return
        s = self.session
        exp, mx = s.exp_cmdsn, s.max_cmdsn
        p = self.params
        hd, dd = p.header_digest, p.data_digest
        out = self.outbox
        pdus[-1].statsn = self.statsn     # the last one carries the status
        self.statsn = (self.statsn + 1) & MASK32
        for d in pdus:
            d.expcmdsn, d.maxcmdsn = exp, mx
            out.extend(encode_pdu(d, hd, dd))
        self._produced += len(resp.data_in)
        if resp.release is not None:
            out.append(AfterSend(resp.release))

    def _emit_r2t(self, r2t: P.R2T) -> None:
        """The data-out sequencer's R2Ts, on a connection with transport faults."""
        task = self.dataout.get(r2t.itt) if self.dataout is not None else None
        if task is not None:
            stall = self.faults.r2t(task.lun, task.pdu.cdb)
            if stall is not None:
                self.outbox.append(Hold(stall))
        self._inform(r2t)

    def _answer_faulted(self, task: Task, resp: Response, pdus: list) -> None:
        """_execute's output on a connection with transport faults: a stall before the
        answer, a wrong digest in it, or the connection dropped part way."""
        f = self.faults
        pdu = task.pdu
        if self.dropped:
            if resp.release is not None:
                resp.release()
            return
        s = self.session
        p = self.params
        hd, dd = p.header_digest, p.data_digest
        stall, corrupt = f.response(task.lun, pdu.cdb, header_digest=hd, data_digest=dd,
                                    has_data=len(resp.data_in) > 0)
        out = self.outbox
        if stall is not None:
            out.append(Hold(stall))
        pdus[-1].statsn = self.statsn
        self.statsn = (self.statsn + 1) & MASK32
        passing = f.sent(len(pdus))
        for i, d in enumerate(pdus if passing is None else pdus[:passing]):
            d.expcmdsn, d.maxcmdsn = s.exp_cmdsn, s.max_cmdsn
            bufs = encode_pdu(d, hd, dd)
            if corrupt == "header" and i == len(pdus) - 1:
                k = 2 if d.ahs else 1
                bufs[k] = _flipped(bufs[k])
                corrupt = None
            elif corrupt == "data" and len(d.data):
                bufs[-1] = _flipped(bufs[-1])
                corrupt = None
            out.extend(bufs)
        self._produced += len(resp.data_in)
        if resp.release is not None:
            out.append(AfterSend(resp.release))
        if passing is not None:
            self._drop("connection dropped after its last PDU sent")

    # ------------------------------------------------- deferred completions
    def _completed(self, task: Task, resp: Response) -> None:
        """A deferred command is answered (any thread): queue it for the connection's."""
        self._done.append((task, resp))
        if not self._posted:
            self._posted = True
            if self.post is None:
                self.finish_deferred()
            else:
                self.post(self.finish_deferred)

    def finish_deferred(self) -> None:
        """Send the responses of deferred commands completed so far."""
        self._posted = False
        done = self._done
        if not done:
            return
        s = self.session
        live = s is not None and s.target is not None and not self.closing
        if live:
            s.target.luns.commit()   # invariant 1, as for a batch of input
        while done:
            task, resp = done.popleft()
            self.deferred -= 1
            itt = task.pdu.itt
            self._inflight.pop(itt, None)
            if itt in self._aborted:
                self._aborted.discard(itt)
                if resp.release is not None:
                    resp.release()
                if live:
                    self._tmf_task_ended(itt)
                continue
            if live:
                self._respond(task, resp)
            elif resp.release is not None:
                resp.release()

    def _tmf_task_ended(self, itt: int) -> None:
        held = []
        for pdu, response, waiting in self._held_tmf:
            waiting.discard(itt)
            if waiting:
                held.append((pdu, response, waiting))
            else:
                self._answer_tmf(pdu, response)
        self._held_tmf = held

    # ------------------------------------------------------ other requests
    def _task_mgmt(self, pdu: P.TaskMgmtRequest) -> None:
        waiting = self._inflight_for(pdu)
        if waiting and pdu.function == P.TmfFunction.ABORT_TASK:
            response = P.TmfResponse.COMPLETE      # running on the store, not in the task set
        else:
            response = self.sessions.task_manager.request(self.session, pdu)
        if waiting and response == P.TmfResponse.COMPLETE:
            # Deferred commands cannot be called back from the store: they end
            # without a response, and the TMF is answered once they have ended.
            self._aborted |= waiting
            self._held_tmf.append((pdu, response, set(waiting)))
            return
        self._answer_tmf(pdu, response)

    def _inflight_for(self, pdu: P.TaskMgmtRequest) -> set[int]:
        """ITTs of this connection's deferred commands that ``pdu`` would abort."""
        if not self._inflight:
            return set()
        fn = pdu.function
        F = P.TmfFunction
        if fn in (F.TARGET_WARM_RESET, F.TARGET_COLD_RESET):
            return set(self._inflight)
        lun = decode_lun(pdu.lun.to_bytes(8, "big"))
        if fn == F.ABORT_TASK:
            return {pdu.rtt} if self._inflight.get(pdu.rtt) == lun else set()
        if fn in (F.ABORT_TASK_SET, F.CLEAR_TASK_SET, F.LOGICAL_UNIT_RESET):
            return {itt for itt, ln in self._inflight.items() if ln == lun}
        return set()

    def _answer_tmf(self, pdu: P.TaskMgmtRequest, response: P.TmfResponse) -> None:
        self._answer(P.TaskMgmtResponse(response=int(response), itt=pdu.itt))
        if pdu.function == P.TmfFunction.TARGET_COLD_RESET and \
                response == P.TmfResponse.COMPLETE:
            self.close("target cold reset")

    def _text(self, pdu: P.TextRequest) -> None:
        from .text import TextNegotiator, TextProtocolError
        if self.text is None:
            self.text = TextNegotiator(self.params, self.registry, self.session.target,
                                       initiator_name=self.session.initiator_name,
                                       new_ttt=self.new_ttt)
        try:
            resp = self.text.receive(pdu)
        except TextProtocolError as exc:
            self.reject(exc.reason, pdu.encode_bhs())
            return
        self._answer(resp)

    def _logout(self, pdu: P.LogoutRequest) -> None:
        response = 0
        if pdu.reason == 2:
            response = 2  # connection recovery is not supported (ERL 0)
        elif pdu.reason == 1 and pdu.cid != self.cid:
            response = 1  # CID not found
        self._answer(P.LogoutResponse(response=response, itt=pdu.itt, time2wait=0,
                                      time2retain=0))
        if response == 0:
            self.close("logout")


def _flipped(digest) -> bytes:
    """A CRC32C digest that cannot match: every bit inverted."""
    return bytes(b ^ 0xFF for b in bytes(digest))


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
