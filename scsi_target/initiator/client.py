"""asyncio iSCSI initiator.

    async with await IscsiClient.connect("iscsi://127.0.0.1:3260/iqn.x:t/1") as c:
        r = await c.execute(cdb, read_length=4096)

One :class:`IscsiClient` is one session over one connection (MaxConnections=1,
ErrorRecoveryLevel=0).  Several commands may be outstanding: each gets an ITT
and a CmdSN inside the window the target opens with ExpCmdSN/MaxCmdSN.  The
protocol object (:mod:`.rx`) frames the byte stream, receiving Data-In
segments straight into the command's result buffer, and dispatches each PDU
synchronously; nothing blocks the receive path (Data-Out
for an R2T is sent from its own task), so a target that is writing to us is
always being read.

Error model: every wait has a timeout.  A timeout or a protocol violation
leaves the connection in an unknown state, so the connection is dropped and
every outstanding command fails with :class:`TransportError` (ERL 0 recovery
is "log in again": :meth:`IscsiClient.reconnect`).  SCSI status is returned
in :class:`ScsiResult`; ``check=True`` turns a non-GOOD status into
:class:`ScsiCheckCondition` / :class:`ScsiCommandError`.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field

from ..scsi.command import TaskAttr
from ..protocol import pdu as P
from ..protocol.names import name_problem
from ..record import replace
from .errors import (InitiatorNameError, IscsiError, IscsiRejected, IscsiTimeout, LoginError,
                            ProtocolViolation, TaskAborted,
                            TaskManagementError, TransportError)
from .ops import ScsiConveniences
from .login import Credentials, InitiatorLogin, LoginOptions, GrantedSession, new_isid
from .commands import check_command, command_buffers, lun_field as _lun_field, scsi_command
from .discovery import DiscoveredTarget
from .results import ScsiResult, response_result
from .url import IscsiUrl, parse_url
from .rx import RxProtocol
from ..protocol.framing import encode_pdu
from ..protocol.params import TextError, decode_text, encode_text
from ..protocol.serial import MASK32, sn_le, sn_lt

log = logging.getLogger("scsi_target.initiator.client")

__all__ = ["IscsiClient", "ScsiResult", "CommandHandle", "DiscoveredTarget", "LoginOptions",
           "Credentials", "discover"]

DEFAULT_TIMEOUT = 30.0
# PDUs at least this long are handed to the transport piece by piece, not joined.
_WRITE_APART = 64 * 1024
MAX_REDIRECTS = 3


@dataclass(eq=False)
class _Task:
    """One outstanding SCSI command of the client."""
    itt: int
    cmdsn: int
    lun: int
    future: asyncio.Future
    edtl: int = 0
    read_buf: bytearray | memoryview | None = None
    data_out: memoryview | None = None
    high: int = 0                       # highest Data-In byte received
    next_datasn: int = 0
    senders: set = field(default_factory=set)


class CommandHandle:
    """An outstanding command: await it for the :class:`ScsiResult`; pass it to abort_task()."""

    def __init__(self, task: _Task, client: "IscsiClient", timeout: float, check: bool) -> None:
        self._task = task
        self._client = client
        self._timeout = timeout
        self._check = check

    @property
    def itt(self) -> int:
        return self._task.itt

    @property
    def cmdsn(self) -> int:
        return self._task.cmdsn

    def done(self) -> bool:
        return self._task.future.done()

    async def result(self) -> ScsiResult:
        res = await self._client._wait(self._task.future, self._timeout, "SCSI command")
        return res.raise_for_status() if self._check else res

    def __await__(self):
        return self.result().__await__()


_Protocol = RxProtocol


class IscsiClient(ScsiConveniences):
    """One iSCSI session (one connection) to one target, or a discovery session."""

    def __init__(self, host: str, port: int = 3260, target: str | None = None, *, lun: int = 0,
                 options: LoginOptions | None = None, credentials: Credentials | None = None,
                 timeout: float = DEFAULT_TIMEOUT, login_timeout: float | None = None,
                 isid: bytes | None = None) -> None:
        self.host = host
        self.port = port
        self.target = target
        self.lun = lun
        self.options = options or LoginOptions()
        problem = name_problem(self.options.initiator_name)
        if problem:
            raise InitiatorNameError(f"initiator name: {problem}")
        self.credentials = credentials
        self.timeout = timeout
        self.login_timeout = login_timeout or min(timeout, 15.0)
        self.isid = isid or new_isid()
        self.tsih = 0
        self.login_result: GrantedSession | None = None
        self.async_events: list[P.AsyncMessage] = []
        self._proto: _Protocol | None = None
        self._error: IscsiError | None = None
        self._pending: dict[int, _Task | asyncio.Future] = {}
        self._itt = itertools.count(1)
        self._cmdsn = 1
        self._exp_cmdsn = 1
        self._max_cmdsn = 1
        self._exp_statsn = 0
        self._window = asyncio.Event()
        self._login_waiter: asyncio.Future | None = None
        self._background: set[asyncio.Task] = set()
        # Data-Out sequences go out one after the other (FIFO): interleaved,
        # several writes' data would complete in any order at the target and
        # execute out of the order they were issued in.
        self._dataout_lock: asyncio.Lock | None = None
        self._block_size: int | None = None
        self._cid = 0

    # ---------------------------------------------------------------- set-up
    @classmethod
    async def connect(cls, url: str | IscsiUrl, *, options: LoginOptions | None = None,
                      initiator_name: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                      **kw) -> "IscsiClient":
        """Open a session to the target and LUN of ``url`` (a portal URL gives discovery)."""
        u = url if isinstance(url, IscsiUrl) else parse_url(url, need_target=False)
        opts = _options_from_url(u, options, initiator_name)
        creds = None
        if u.user:
            creds = Credentials(u.user, u.secret or "", u.target_user, u.target_secret)
        client = cls(u.host, u.port, u.target, lun=u.lun, options=opts, credentials=creds,
                     timeout=timeout, **kw)
        await client.open()
        return client

    async def open(self) -> None:
        """Connect and log in (following up to MAX_REDIRECTS login redirections)."""
        host, port = self.host, self.port
        for _ in range(MAX_REDIRECTS + 1):
            try:
                await self._open_once(host, port)
                return
            except LoginError as exc:
                addr = exc.redirect
                if exc.status_class != 1 or not addr:
                    raise
                host, port = _parse_address(addr)
                log.info("login redirected to %s:%d", host, port)
        raise LoginError("too many login redirections")

    async def _open_once(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._error = None
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self), host, port),
                self.login_timeout)
        except asyncio.TimeoutError:
            raise IscsiTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise TransportError(f"cannot connect to {host}:{port}: {exc}") from None
        self._proto = proto
        try:
            await self._login(proto)
        except BaseException:
            self._drop(proto)
            raise

    async def _login(self, proto: _Protocol) -> None:
        itt = self._new_itt()
        machine = InitiatorLogin(self.options, target=self.target, isid=self.isid, tsih=0,
                                 cid=self._cid, itt=itt, cmdsn=self._cmdsn,
                                 credentials=self.credentials)
        req = machine.first_request()
        while req is not None:
            self._login_waiter = asyncio.get_running_loop().create_future()
            proto.transport.writelines(encode_pdu(req))
            resp = await self._wait(self._login_waiter, self.login_timeout, "login response",
                                    drop=False)
            try:
                req = machine.receive(resp)
            except LoginError as exc:
                if exc.status_class == 1:
                    exc.redirect = machine.target_keys.get("TargetAddress")
                raise
        self._login_waiter = None
        res = machine.result
        assert res is not None
        self.login_result = res
        self.tsih = res.tsih
        self._exp_statsn = (res.statsn + 1) & MASK32
        self._exp_cmdsn = res.expcmdsn
        self._max_cmdsn = res.maxcmdsn
        self._cmdsn = res.expcmdsn
        self._update_window()
        p = res.params
        proto.header_digest = p.header_digest
        proto.data_digest = p.data_digest
        proto.max_data = max(p.max_recv_data_segment_length, 8192)
        log.debug("logged in to %s tsih=%d params=%s", self.target, self.tsih, p)

    @property
    def params(self):
        if self.login_result is None:
            raise TransportError("not logged in")
        return self.login_result.params

    @property
    def connected(self) -> bool:
        return self._proto is not None and not self._proto.lost and self._error is None

    async def __aenter__(self) -> "IscsiClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # ---------------------------------------------------------------- plumbing
    def _new_itt(self) -> int:
        while True:
            itt = next(self._itt) & MASK32
            if itt == P.RESERVED_TAG or itt in self._pending:
                if itt == P.RESERVED_TAG:
                    self._itt = itertools.count(1)
                continue
            return itt

    def _check_usable(self) -> _Protocol:
        if self._error is not None:
            raise self._error
        proto = self._proto
        if proto is None or proto.lost or self.login_result is None:
            raise TransportError("not connected")
        return proto

    def _send(self, proto: _Protocol, *pdus: P.Pdu) -> None:
        p = self.login_result.params if self.login_result else None
        hd = bool(p and p.header_digest)
        dd = bool(p and p.data_digest)
        bufs: list = []
        for pdu in pdus:
            bufs += encode_pdu(pdu, hd, dd)
        t = proto.transport
        if len(bufs) > 1 and sum(map(len, bufs)) >= _WRITE_APART:
            # writelines joins the pieces into one new bytes (a copy of the whole
            # data segment) before sending; each write() tries the socket first.
            for b in bufs:
                t.write(b)
        else:
            t.writelines(bufs)

    async def _drain(self, proto: _Protocol) -> None:
        if not proto._can_write.is_set():
            await self._wait(proto._can_write.wait(), self.timeout, "socket write")
        if proto.lost:
            raise self._error or TransportError("connection lost")

    async def _wait(self, aw, timeout: float | None, what: str, drop: bool = True):
        try:
            return await asyncio.wait_for(asyncio.shield(aw) if isinstance(aw, asyncio.Future)
                                          else aw, timeout if timeout is not None else self.timeout)
        except asyncio.TimeoutError:
            err = IscsiTimeout(f"{what} timed out after {timeout or self.timeout:g} s")
            if drop or self._login_waiter is not None:
                self._fail(err, self._proto)
            raise err from None

    def _fail(self, err: IscsiError, proto: _Protocol | None) -> None:
        """The connection is unusable: drop it and fail everything outstanding."""
        if proto is not None and proto is not self._proto:
            return                                      # an old connection's last words
        if self._error is None:
            self._error = err
        if self._login_waiter is not None and not self._login_waiter.done():
            self._login_waiter.set_exception(err)
        self._fail_pending(err)
        self._window.set()                              # wake window waiters to see the error
        if proto is not None:
            self._drop(proto)

    def _fail_pending(self, err: Exception) -> None:
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            fut = entry.future if isinstance(entry, _Task) else entry
            if not fut.done():
                fut.set_exception(err)
                fut.exception()                         # mark retrieved: nobody may be waiting
            if isinstance(entry, _Task):
                for s in entry.senders:
                    s.cancel()

    def _drop(self, proto: _Protocol) -> None:
        proto.lost = True
        if proto.transport is not None:
            proto.transport.abort()

    def _update_sn(self, expcmdsn: int, maxcmdsn: int) -> None:
        # RFC 7143 4.2.2.1: ignore values where MaxCmdSN < ExpCmdSN - 1.
        if sn_lt(maxcmdsn, (expcmdsn - 1) & MASK32):
            return
        if sn_lt(self._exp_cmdsn, expcmdsn):
            self._exp_cmdsn = expcmdsn
        if sn_lt(self._max_cmdsn, maxcmdsn):
            self._max_cmdsn = maxcmdsn
        self._update_window()

    def _update_window(self) -> None:
        if sn_le(self._cmdsn, self._max_cmdsn):
            self._window.set()
        else:
            self._window.clear()

    def _statsn(self, statsn: int) -> None:
        if sn_le(self._exp_statsn, statsn):
            self._exp_statsn = (statsn + 1) & MASK32

    async def _take_cmdsn(self, proto: _Protocol) -> int:
        """Wait for the CmdSN window to admit one more non-immediate command."""
        deadline = time.monotonic() + self.timeout
        while not sn_le(self._cmdsn, self._max_cmdsn):
            self._window.clear()
            left = deadline - time.monotonic()
            await self._wait(self._window.wait(), max(left, 0.001), "CmdSN window")
            self._check_usable()
        sn = self._cmdsn
        self._cmdsn = (sn + 1) & MASK32
        return sn

    def _spawn(self, coro, task: _Task | None = None) -> None:
        t = asyncio.ensure_future(coro)
        self._background.add(t)
        t.add_done_callback(self._background.discard)
        if task is not None:
            task.senders.add(t)
            t.add_done_callback(task.senders.discard)

    # ---------------------------------------------------------------- receive
    def _dispatch(self, proto: _Protocol, pdu: P.Pdu) -> None:
        if proto is not self._proto:
            return
        if self._login_waiter is not None:
            if not self._login_waiter.done():
                self._login_waiter.set_result(pdu)
                return
            raise ProtocolViolation(f"unexpected {type(pdu).__name__} during login")
        if hasattr(pdu, "maxcmdsn"):
            self._update_sn(pdu.expcmdsn, pdu.maxcmdsn)
        handler = self._HANDLERS.get(type(pdu))
        if handler is None:
            raise ProtocolViolation(f"target sent an initiator PDU {type(pdu).__name__}")
        handler(self, proto, pdu)

    def _lost(self, proto: _Protocol, exc) -> None:
        self._fail(TransportError(f"connection lost: {exc or 'closed by target'}"), proto)

    def _placement(self, proto: _Protocol, pdu: P.DataIn, dlen: int) -> memoryview | None:
        """Where a Data-In segment may be received directly: its place in the command's
        buffer, or None to take the ordinary path (which also reports what is wrong)."""
        if proto is not self._proto or self._login_waiter is not None:
            return None
        task = self._pending.get(pdu.itt)
        if not isinstance(task, _Task) or pdu.datasn != task.next_datasn:
            return None
        buf = task.read_buf
        if buf is None or pdu.offset + dlen > len(buf):
            return None
        return memoryview(buf)[pdu.offset:pdu.offset + dlen]

    def _on_data_in(self, proto: _Protocol, pdu: P.DataIn) -> None:
        task = self._pending.get(pdu.itt)
        if task is None:
            return                                  # aborted meanwhile: the target may still send
        if not isinstance(task, _Task):
            raise ProtocolViolation(f"Data-In for non-command ITT 0x{pdu.itt:08x}")
        data = pdu.data
        n = len(data)
        if n:
            buf = task.read_buf
            if buf is None or pdu.offset + n > len(buf):
                raise ProtocolViolation(f"Data-In [{pdu.offset}, +{n}) beyond the expected "
                                        f"{task.edtl} bytes")
            if pdu.datasn != task.next_datasn:
                raise ProtocolViolation(f"Data-In DataSN {pdu.datasn}, expected {task.next_datasn}")
            if isinstance(data, memoryview) and data.obj is (
                    buf.obj if type(buf) is memoryview else buf):
                data.release()                      # received in place (rx.py)
                pdu.data = b""
            else:
                buf[pdu.offset:pdu.offset + n] = data
            task.high = max(task.high, pdu.offset + n)
        task.next_datasn += 1
        if pdu.has_status:
            if not pdu.final:
                raise ProtocolViolation("Data-In with status but without the F bit")
            self._statsn(pdu.statsn)
            residual = pdu.residual if pdu.underflow else -pdu.residual if pdu.overflow else 0
            self._complete(task, ScsiResult(pdu.status, self._data_of(task), residual=residual))

    @staticmethod
    def _data_of(task: _Task) -> bytes | bytearray:
        buf = task.read_buf
        if buf is None:
            return b""
        if task.high < len(buf):
            if type(buf) is memoryview:
                return buf[:task.high]              # the caller's buffer: never resized
            try:
                del buf[task.high:]
            except BufferError:
                # asyncio still holds the view it received the last segment into.
                return buf[:task.high]
        return buf

    def _complete(self, task: _Task, result: ScsiResult) -> None:
        self._pending.pop(task.itt, None)
        for s in task.senders:
            s.cancel()
        if not task.future.done():
            task.future.set_result(result)

    def _on_scsi_response(self, proto: _Protocol, pdu: P.ScsiResponse) -> None:
        self._statsn(pdu.statsn)
        task = self._pending.get(pdu.itt)
        if task is None:
            return
        if not isinstance(task, _Task):
            raise ProtocolViolation(f"SCSI Response for non-command ITT 0x{pdu.itt:08x}")
        self._complete(task, response_result(pdu, self._data_of(task)))

    def _on_r2t(self, proto: _Protocol, pdu: P.R2T) -> None:
        task = self._pending.get(pdu.itt)
        if task is None:
            return                                  # aborted: nothing to send
        if not isinstance(task, _Task) or task.data_out is None:
            raise ProtocolViolation(f"R2T for ITT 0x{pdu.itt:08x} that has no data to send")
        if pdu.length == 0 or pdu.offset + pdu.length > len(task.data_out):
            raise ProtocolViolation(f"R2T asks for [{pdu.offset}, +{pdu.length}) of a "
                                    f"{len(task.data_out)}-byte write")
        self._spawn(self._send_data_out(proto, task, pdu.offset, pdu.length, pdu.ttt), task)

    async def _send_data_out(self, proto: _Protocol, task: _Task, offset: int, length: int,
                             ttt: int, datasn: int = 0) -> None:
        """One Data-Out sequence, cut at the target's MaxRecvDataSegmentLength."""
        if self._dataout_lock is None:
            self._dataout_lock = asyncio.Lock()
        mrdsl = self.params.max_xmit_data_segment_length
        view = task.data_out
        end = offset + length
        lun = _lun_field(task.lun)
        try:
            async with self._dataout_lock:
                while offset < end:
                    n = min(mrdsl, end - offset)
                    if task.itt not in self._pending:
                        return
                    self._send(proto, P.DataOut(final=offset + n >= end, lun=lun, itt=task.itt,
                                                ttt=ttt, expstatsn=self._exp_statsn,
                                                datasn=datasn, offset=offset,
                                                data=view[offset:offset + n]))
                    offset += n
                    datasn += 1
                    await self._drain(proto)
        except asyncio.CancelledError:
            raise
        except IscsiError:
            pass                                    # already failed the connection

    def _on_nop_in(self, proto: _Protocol, pdu: P.NopIn) -> None:
        if pdu.itt != P.RESERVED_TAG:
            self._statsn(pdu.statsn)
            fut = self._pending.pop(pdu.itt, None)
            if isinstance(fut, asyncio.Future) and not fut.done():
                fut.set_result(pdu)
            return
        if pdu.ttt != P.RESERVED_TAG:
            # The target pings us: echo its data back, immediately, without a CmdSN.
            self._send(proto, P.NopOut(immediate=True, final=True, lun=pdu.lun,
                                       itt=P.RESERVED_TAG, ttt=pdu.ttt, cmdsn=self._cmdsn,
                                       expstatsn=self._exp_statsn, data=bytes(pdu.data)))

    def _on_reply(self, proto: _Protocol, pdu) -> None:
        """TMF, Text and Logout responses resolve the future registered under their ITT."""
        self._statsn(pdu.statsn)
        fut = self._pending.pop(pdu.itt, None)
        if isinstance(fut, asyncio.Future) and not fut.done():
            fut.set_result(pdu)

    def _on_reject(self, proto: _Protocol, pdu: P.Reject) -> None:
        self._statsn(pdu.statsn)
        data = bytes(pdu.data)
        itt = int.from_bytes(data[16:20], "big") if len(data) >= 20 else P.RESERVED_TAG
        entry = self._pending.pop(itt, None)
        err = IscsiRejected(f"target rejected our PDU (reason 0x{pdu.reason:02x})", pdu.reason)
        if entry is None:
            log.warning("%s for ITT 0x%08x", err, itt)
            return
        fut = entry.future if isinstance(entry, _Task) else entry
        if not fut.done():
            fut.set_exception(err)

    def _on_async(self, proto: _Protocol, pdu: P.AsyncMessage) -> None:
        self._statsn(pdu.statsn)
        self.async_events.append(pdu)
        if pdu.event in (2, 3):                     # the target drops the connection/session
            self._fail(TransportError(f"target announced connection drop (event {pdu.event})"),
                       proto)
        elif pdu.event == 1:
            log.info("target requests logout within %d s", pdu.param3)

    def _on_login_response(self, proto: _Protocol, pdu: P.LoginResponse) -> None:
        raise ProtocolViolation("Login Response in full feature phase")

    _HANDLERS = {
        P.DataIn: _on_data_in, P.ScsiResponse: _on_scsi_response, P.R2T: _on_r2t,
        P.NopIn: _on_nop_in, P.TaskMgmtResponse: _on_reply, P.TextResponse: _on_reply,
        P.LogoutResponse: _on_reply, P.Reject: _on_reject, P.AsyncMessage: _on_async,
        P.LoginResponse: _on_login_response,
    }

    # ---------------------------------------------------------------- commands
    async def submit(self, cdb: bytes, *, data_out=None, read_length: int = 0,
                     lun: int | None = None, attr: TaskAttr = TaskAttr.SIMPLE,
                     timeout: float | None = None, check: bool = False,
                     read_into=None) -> CommandHandle:
        """Send one SCSI command; returns once it is on the wire (await the handle).

        ``read_into``: a writable buffer of at least ``read_length`` bytes that
        Data-In is received into (the result's data is a view of it) instead of
        a new bytearray; it must not be touched until the command completed.
        """
        if self.target is None:
            raise IscsiError("a discovery session cannot carry SCSI commands")
        check_command(cdb, data_out, read_length)
        proto = self._check_usable()
        p = self.params
        view, edtl, read_buf = command_buffers(data_out, read_length, read_into)
        lun = self.lun if lun is None else lun
        cmdsn = await self._take_cmdsn(proto)
        proto = self._check_usable()
        itt = self._new_itt()
        fut = asyncio.get_running_loop().create_future()
        task = _Task(itt, cmdsn, lun, fut, edtl=edtl, data_out=view,
                     read_buf=read_buf)
        cmd, unsolicited_end = scsi_command(cdb, view, read_length, edtl, p, attr=int(attr),
                                            lun=lun, itt=itt, cmdsn=cmdsn,
                                            expstatsn=self._exp_statsn)
        pdus: list[P.Pdu] = [cmd]
        self._pending[itt] = task
        self._send(proto, *pdus)
        if unsolicited_end > len(cmd.data):
            # Sent from a task of its own so that a big first burst never holds up the caller
            # past the window; DataSN of the unsolicited sequence starts at 0.
            self._spawn(self._send_data_out(proto, task, len(cmd.data),
                                            unsolicited_end - len(cmd.data), P.RESERVED_TAG), task)
        await self._drain(proto)
        return CommandHandle(task, self, self.timeout if timeout is None else timeout, check)

    async def execute(self, cdb: bytes, *, data_out=None, read_length: int = 0,
                      lun: int | None = None, attr: TaskAttr = TaskAttr.SIMPLE,
                      timeout: float | None = None, check: bool = False,
                      read_into=None) -> ScsiResult:
        handle = await self.submit(cdb, data_out=data_out, read_length=read_length, lun=lun,
                                   attr=attr, timeout=timeout, check=check, read_into=read_into)
        return await handle.result()

    async def _request(self, pdu, timeout: float | None, what: str):
        """Send a PDU that expects one reply under its ITT; returns the reply."""
        proto = self._check_usable()
        fut = asyncio.get_running_loop().create_future()
        self._pending[pdu.itt] = fut
        self._send(proto, pdu)
        await self._drain(proto)
        return await self._wait(fut, timeout, what)

    async def ping(self, data: bytes = b"", timeout: float | None = None) -> float:
        """NOP-Out ping; returns the round-trip time in seconds."""
        proto = self._check_usable()
        itt = self._new_itt()
        t0 = time.monotonic()
        reply = await self._request(P.NopOut(immediate=True, final=True, lun=0, itt=itt,
                                               ttt=P.RESERVED_TAG, cmdsn=self._cmdsn,
                                               expstatsn=self._exp_statsn, data=bytes(data)),
                                      timeout, "NOP-Out ping")
        if bytes(reply.data) != bytes(data):
            self._fail(ProtocolViolation("NOP-In did not echo the ping data"), proto)
            raise self._error
        return time.monotonic() - t0

    async def task_management(self, function: P.TmfFunction, *, lun: int | None = None,
                              ref: CommandHandle | None = None,
                              timeout: float | None = None) -> P.TmfResponse:
        lun = self.lun if lun is None else lun
        self._check_usable()
        itt = self._new_itt()
        req = P.TaskMgmtRequest(immediate=True, final=True, function=int(function),
                                lun=_lun_field(lun), itt=itt,
                                rtt=ref.itt if ref is not None else P.RESERVED_TAG,
                                cmdsn=self._cmdsn, expstatsn=self._exp_statsn,
                                refcmdsn=ref.cmdsn if ref is not None else self._cmdsn)
        reply = await self._request(req, timeout, f"task management {function.name}")
        try:
            response = P.TmfResponse(reply.response)
        except ValueError:
            response = reply.response
        if response == P.TmfResponse.COMPLETE:
            self._aborted(function, lun, ref)
        elif response != P.TmfResponse.TASK_DOES_NOT_EXIST:
            name = getattr(response, "name", str(response))
            raise TaskManagementError(f"{function.name} answered {name}", int(response))
        return response

    def _aborted(self, function: P.TmfFunction, lun: int, ref: CommandHandle | None) -> None:
        """Fail the commands the function ended: the target sends nothing more for them."""
        for itt, entry in list(self._pending.items()):
            if not isinstance(entry, _Task):
                continue
            hit = (function == P.TmfFunction.ABORT_TASK and ref is not None and itt == ref.itt) \
                or (function in (P.TmfFunction.ABORT_TASK_SET, P.TmfFunction.CLEAR_TASK_SET,
                                 P.TmfFunction.LOGICAL_UNIT_RESET) and entry.lun == lun) \
                or function in (P.TmfFunction.TARGET_WARM_RESET, P.TmfFunction.TARGET_COLD_RESET)
            if hit:
                self._pending.pop(itt, None)
                for s in entry.senders:
                    s.cancel()
                if not entry.future.done():
                    entry.future.set_exception(TaskAborted(
                        f"command ITT 0x{itt:08x} aborted by {function.name}"))
                    entry.future.exception()

    async def abort_task(self, handle: CommandHandle, timeout: float | None = None):
        return await self.task_management(P.TmfFunction.ABORT_TASK, lun=handle._task.lun,
                                          ref=handle, timeout=timeout)

    async def lun_reset(self, lun: int | None = None, timeout: float | None = None):
        return await self.task_management(P.TmfFunction.LOGICAL_UNIT_RESET, lun=lun,
                                          timeout=timeout)

    async def target_warm_reset(self, timeout: float | None = None):
        return await self.task_management(P.TmfFunction.TARGET_WARM_RESET, timeout=timeout)

    # ---------------------------------------------------------------- text / discovery
    async def text_request(self, pairs, timeout: float | None = None) -> list[tuple[str, str]]:
        """One text negotiation exchange (with continuation); returns the target's pairs."""
        proto = self._check_usable()
        itt = self._new_itt()
        text = bytearray()
        ttt = P.RESERVED_TAG
        data = encode_text(pairs)
        for _ in range(1024):
            cmdsn = await self._take_cmdsn(proto)
            reply = await self._request(P.TextRequest(final=True, itt=itt, ttt=ttt, cmdsn=cmdsn,
                                                        expstatsn=self._exp_statsn, data=data),
                                          timeout, "text request")
            text += bytes(reply.data)
            if len(text) > 1 << 20:
                self._fail(ProtocolViolation("text response over 1 MiB"), proto)
                raise self._error
            if reply.final:
                break
            ttt, data = reply.ttt, b""
        try:
            return decode_text(text)
        except TextError as exc:
            raise ProtocolViolation(f"malformed text response: {exc}") from None

    async def send_targets(self, which: str = "All") -> list[DiscoveredTarget]:
        pairs = await self.text_request([("SendTargets", which)])
        out: list[DiscoveredTarget] = []
        current: str | None = None
        addressed = False
        default_portal = f"{self.host}:{self.port}" if ":" not in self.host \
            else f"[{self.host}]:{self.port}"
        for k, v in pairs:
            if k == "TargetName":
                if current is not None and not addressed:
                    out.append(DiscoveredTarget(current, default_portal))
                current, addressed = v, False
            elif k == "TargetAddress" and current is not None:
                out.append(DiscoveredTarget(current, v))
                addressed = True
        if current is not None and not addressed:
            out.append(DiscoveredTarget(current, default_portal))
        return out

    # ---------------------------------------------------------------- teardown
    async def logout(self, timeout: float | None = None) -> None:
        """Close the session (reason 0) and the connection."""
        proto = self._check_usable()
        itt = self._new_itt()
        try:
            reply = await self._request(P.LogoutRequest(immediate=True, final=True, reason=0,
                                                          itt=itt, cid=self._cid,
                                                          cmdsn=self._cmdsn,
                                                          expstatsn=self._exp_statsn),
                                          timeout, "logout")
            if reply.response != 0:
                raise TransportError(f"logout refused (response {reply.response})")
        finally:
            self._closed(proto, TransportError("logged out"))

    def _closed(self, proto: _Protocol, err: IscsiError) -> None:
        self._fail_pending(err)
        self._error = err
        self._drop(proto)
        self.login_result = None

    async def close(self) -> None:
        """Log out if still connected (best effort), then close the socket."""
        proto = self._proto
        if proto is None:
            return
        if self.connected and self.login_result is not None:
            try:
                await self.logout(timeout=min(self.timeout, 5.0))
            except IscsiError as exc:
                log.debug("logout on close failed: %s", exc)
        self._drop(proto)
        self._fail_pending(TransportError("client closed"))
        for t in list(self._background):
            t.cancel()
        self._proto = None

    async def reconnect(self) -> None:
        """New connection and login with the same ISID: the target reinstates the session
        (RFC 7143 6.3.5) and aborts whatever the old one had outstanding."""
        old = self._proto
        if old is not None:
            self._closed(old, TransportError("connection replaced by reconnect()"))
        for t in list(self._background):
            t.cancel()
        self._error = None
        self.tsih = 0
        await self.open()

def _options_from_url(u: IscsiUrl, options: LoginOptions | None,
                      initiator_name: str | None) -> LoginOptions:
    opts = replace(options) if options is not None else LoginOptions()
    if initiator_name:
        opts.initiator_name = initiator_name
    if u.header_digest:
        opts.header_digest = u.header_digest
    if u.data_digest:
        opts.data_digest = u.data_digest
    return opts


def _parse_address(addr: str) -> tuple[str, int]:
    t = DiscoveredTarget("", addr)
    return t.host, t.port


async def discover(url: str | IscsiUrl, **kw) -> list[DiscoveredTarget]:
    """SendTargets=All through a discovery session at the portal of ``url``."""
    u = url if isinstance(url, IscsiUrl) else parse_url(url, need_target=False)
    if u.target is not None:
        u = IscsiUrl(u.host, u.port, None, 0, u.user, u.secret, u.target_user, u.target_secret,
                     u.header_digest, u.data_digest)
    client = await IscsiClient.connect(u, **kw)
    try:
        return await client.send_targets()
    finally:
        await client.close()
