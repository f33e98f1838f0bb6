"""A blocking iSCSI initiator over a plain socket: no event loop, no thread.

    with BlockingIscsiClient("iscsi://127.0.0.1:3260/iqn.x:t/1") as c:
        r = c.execute(cdb, read_length=4096)

For short-lived programs (``diffbackup``) that do one thing at a time: the
asyncio client (:mod:`.client`) behind :class:`~.sync.SyncIscsiClient` costs a
loop thread and the asyncio import before the first byte moves, and a thread
hand-off per command.  This one drives the same sans-I/O parts -- the login
machine (:class:`~.login.InitiatorLogin`), the PDU codecs
(:mod:`..protocol.pdu`) and framing checks (:mod:`..protocol.framing`) -- from
the calling thread:

* several commands may be outstanding (:meth:`submit` / :meth:`wait`,
  :meth:`pipeline`, :meth:`execute_many`), each with an ITT and a CmdSN inside
  the window the target opens with ExpCmdSN/MaxCmdSN;
* Data-In is received straight into the command's buffer (``read_into``: a
  caller's preallocated one) with ``recv_into``, never through a join;
* writes send ImmediateData and the unsolicited burst (InitialR2T=No, up to
  FirstBurstLength) with the command, and answer each R2T with Data-Out cut at
  the target's MaxRecvDataSegmentLength, one ``sendmsg`` per sequence.

The socket is read only while the caller waits for something (a result, room in
the CmdSN window); between calls nothing is read, so a target's NOP-In ping is
answered at the next call.  Sends are small while Data-In is expected (commands)
and responses are small while Data-Out is sent, so neither end can fill the
other's socket buffer while it is not reading.

Error model (as the asyncio client's): every wait has a deadline -- a
command's timeout runs from its submission.  A timeout, a lost connection or a
protocol violation leaves the session unusable: the socket is closed and every
outstanding command fails with the :class:`~.errors.TransportError` (or
subclass) raised.  SCSI status is returned in :class:`~.results.ScsiResult`;
``check=True`` turns a non-GOOD status into
:class:`~.errors.ScsiCheckCondition` / :class:`~.errors.ScsiCommandError`.
"""
from __future__ import annotations

import _socket
import select
import time

from ..protocol import pdu as P
from ..protocol.framing import (FramingError, UnknownOpcode, crc32c, data_digest_ok,
                                encode_pdu, split_header)
from ..protocol.serial import MASK32, sn_le, sn_lt
from ..record import replace
from .errors import (IscsiError, IscsiRejected, IscsiTimeout, LoginError, ProtocolViolation,
                     TransportError)
from .commands import check_command, command_buffers, lun_field as _lun_field, scsi_command
from .pipeline import pipelined
from .login import Credentials, InitiatorLogin, LoginOptions, new_isid
from .results import ScsiResult, response_result
from .url import IscsiUrl, parse_url

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Iterable, Iterator

__all__ = ["BlockingIscsiClient", "Command", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 30.0
MAX_REDIRECTS = 3
SCRATCH = 64 * 1024
# sendmsg takes at most this many buffers (IOV_MAX is 1024 on Linux).
_IOV = 512


class Command:
    """One outstanding SCSI command: pass it to :meth:`BlockingIscsiClient.wait`."""
    what = "SCSI command"
    __slots__ = ("itt", "cmdsn", "lun", "deadline", "timeout", "check", "edtl", "read_buf",
                 "data_out", "high", "next_datasn", "result", "error")

    def __init__(self, itt: int, cmdsn: int, lun: int, timeout: float, check: bool,
                 edtl: int, read_buf, data_out) -> None:
        self.itt = itt
        self.cmdsn = cmdsn
        self.lun = lun
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.check = check
        self.edtl = edtl
        self.read_buf = read_buf          # memoryview (a caller's buffer) or bytearray or None
        self.data_out = data_out          # memoryview or None
        self.high = 0                     # highest Data-In byte received
        self.next_datasn = 0
        self.result: ScsiResult | None = None
        self.error: BaseException | None = None

    def done(self) -> bool:
        return self.result is not None or self.error is not None


class _Reply:
    """A non-SCSI request waiting for its answer under its ITT (NOP, logout)."""
    __slots__ = ("deadline", "pdu", "error", "what", "timeout")

    def __init__(self, timeout: float, what: str) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.pdu = None
        self.error: BaseException | None = None
        self.what = what

    def done(self) -> bool:
        return self.pdu is not None or self.error is not None


class BlockingIscsiClient:
    """One iSCSI session (one connection) to one target, driven from the calling thread."""

    def __init__(self, url: str | IscsiUrl, *, options: LoginOptions | None = None,
                 initiator_name: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 login_timeout: float | None = None, isid: bytes | None = None) -> None:
        u = url if isinstance(url, IscsiUrl) else parse_url(url)
        if u.target is None:
            raise IscsiError("a discovery URL: this client opens normal sessions only")
        opts = _options_from_url(u, options, initiator_name)
        from ..protocol.names import name_problem
        from .errors import InitiatorNameError
        problem = name_problem(opts.initiator_name)
        if problem:
            raise InitiatorNameError(f"initiator name: {problem}")
        self.url = u
        self.host, self.port, self.target, self.lun = u.host, u.port, u.target, u.lun
        self.options = opts
        self.credentials = Credentials(u.user, u.secret or "", u.target_user,
                                       u.target_secret) if u.user else None
        self.timeout = timeout
        self.login_timeout = login_timeout or min(timeout, 15.0)
        self.isid = isid or new_isid()
        self.login_result = None
        self.async_events: list = []
        self._sock: _socket.socket | None = None
        self._error: IscsiError | None = None
        self._pending: dict[int, Command | _Reply] = {}
        self._itt = 0
        self._cmdsn = self._exp_cmdsn = self._max_cmdsn = 1
        self._exp_statsn = 0
        self._hd = self._dd = False
        self._max_data = 8192                   # what we accept per PDU (login limit first)
        self._buf = bytearray(SCRATCH)
        self._view = memoryview(self._buf)
        self._start = self._end = 0             # unparsed bytes: _buf[_start:_end]
        self._header_only = False               # next read: a header (a big segment follows)
        self._open()

    # ---------------------------------------------------------------- set-up
    def __enter__(self) -> "BlockingIscsiClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def params(self):
        if self.login_result is None:
            raise TransportError("not logged in")
        return self.login_result.params

    @property
    def connected(self) -> bool:
        return self._sock is not None and self._error is None and self.login_result is not None

    def _open(self) -> None:
        host, port = self.host, self.port
        for _ in range(MAX_REDIRECTS + 1):
            try:
                self._open_once(host, port)
                return
            except LoginError as exc:
                if exc.status_class != 1 or not exc.redirect:
                    raise
                from .discovery import DiscoveredTarget
                t = DiscoveredTarget("", exc.redirect)
                host, port = t.host, t.port
        raise LoginError("too many login redirections")

    def _open_once(self, host: str, port: int) -> None:
        try:
            sock = _connect(_resolver_host(host), port, self.login_timeout)
        except TimeoutError:
            raise IscsiTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise TransportError(f"cannot connect to {host}:{port}: {exc}") from None
        try:
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        except OSError:
            pass
        # Non-blocking from here on: a send or receive is one system call when the
        # socket is ready (a timeout would set the flag before each call and poll
        # before each recv); _ready polls only when it is not.
        sock.settimeout(0.0)
        self._sock, self._error = sock, None
        self._start = self._end = 0
        self._hd = self._dd = False
        self._max_data = 8192
        try:
            self._login()
        except BaseException:
            self._drop()
            raise

    def _login(self) -> None:
        itt = self._new_itt()
        machine = InitiatorLogin(self.options, target=self.target, isid=self.isid, tsih=0,
                                 cid=0, itt=itt, cmdsn=self._cmdsn, credentials=self.credentials)
        deadline = time.monotonic() + self.login_timeout
        req = machine.first_request()
        while req is not None:
            self._sendv(encode_pdu(req))
            resp = self._next_pdu(deadline, f"login response timed out after "
                                            f"{self.login_timeout:g} s")
            try:
                req = machine.receive(resp)
            except LoginError as exc:
                if exc.status_class == 1:
                    exc.redirect = machine.target_keys.get("TargetAddress")
                raise
        res = machine.result
        self.login_result = res
        self._exp_statsn = (res.statsn + 1) & MASK32
        self._exp_cmdsn, self._max_cmdsn, self._cmdsn = res.expcmdsn, res.maxcmdsn, res.expcmdsn
        p = res.params
        self._hd, self._dd = bool(p.header_digest), bool(p.data_digest)
        self._max_data = max(p.max_recv_data_segment_length, 8192)

    # ---------------------------------------------------------------- failure
    def _new_itt(self) -> int:
        while True:
            self._itt = (self._itt + 1) & MASK32
            if self._itt != P.RESERVED_TAG and self._itt not in self._pending:
                return self._itt

    def _usable(self) -> _socket.socket:
        if self._error is not None:
            raise self._error
        if self._sock is None or self.login_result is None:
            raise TransportError("not connected")
        return self._sock

    def _fail(self, err: IscsiError) -> IscsiError:
        """The connection is unusable: close it and fail everything outstanding."""
        if self._error is None:
            self._error = err
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            if not entry.done():
                entry.error = self._error
        self._drop()
        return self._error

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    # ---------------------------------------------------------------- send
    def _sendv(self, bufs: list) -> None:
        """Every byte of ``bufs`` onto the socket (``sendmsg``, partial sends resumed)."""
        sock = self._sock
        if sock is None:
            raise self._error or TransportError("not connected")
        try:
            while bufs:
                part = bufs[:_IOV]
                left = sum(map(len, part))
                while left:
                    try:
                        n = sock.sendmsg(part)
                    except BlockingIOError:
                        # No room: wait up to the timeout for some (each wait, as a
                        # socket timeout would).
                        if not _ready(sock, select.POLLOUT, self.timeout):
                            break
                        continue
                    left -= n
                    if not left:
                        break
                    i = 0
                    while n >= len(part[i]):
                        n -= len(part[i])
                        i += 1
                    part = [memoryview(part[i])[n:]] + part[i + 1:]
                if left:
                    break
                bufs = bufs[_IOV:]
        except OSError as exc:
            raise self._fail(TransportError(f"connection lost: {exc}")) from None
        if bufs:
            raise self._fail(IscsiTimeout(f"socket write timed out after {self.timeout:g} s"))

    def _send(self, *pdus) -> None:
        bufs: list = []
        hd, dd = self._hd, self._dd
        for pdu in pdus:
            bufs += encode_pdu(pdu, hd, dd)
        self._sendv(bufs)

    def _data_out(self, task: Command, offset: int, length: int, ttt: int) -> None:
        """One Data-Out sequence of ``task``, cut at the target's MaxRecvDataSegmentLength,
        in one ``sendmsg`` (DataSN from 0)."""
        mx = self.login_result.params.max_xmit_data_segment_length
        view, end = task.data_out, offset + length
        lun, itt, datasn = _lun_field(task.lun), task.itt, 0
        bufs: list = []
        hd, dd = self._hd, self._dd
        while offset < end:
            n = min(mx, end - offset)
            bufs += encode_pdu(P.DataOut(final=offset + n >= end, lun=lun, itt=itt, ttt=ttt,
                                         expstatsn=self._exp_statsn, datasn=datasn,
                                         offset=offset, data=view[offset:offset + n]), hd, dd)
            offset += n
            datasn += 1
        self._sendv(bufs)

    # ---------------------------------------------------------------- receive
    def _recv_into(self, view, deadline: float, what: str, more=None) -> int:
        """Bytes received into ``view`` (then into ``more``, when given: one
        ``recvmsg_into`` fills both), at least one; an IscsiTimeout once
        ``deadline`` passed without any."""
        sock = self._sock
        if sock is None:
            raise self._error or TransportError("not connected")
        if deadline - time.monotonic() <= 0:
            raise self._fail(IscsiTimeout(what))
        n = -1
        try:
            while True:
                try:
                    n = sock.recv_into(view) if more is None else \
                        sock.recvmsg_into((view, more))[0]
                    break
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0 or not _ready(sock, select.POLLIN, left):
                        break
        except OSError as exc:
            raise self._fail(TransportError(f"connection lost: {exc}")) from None
        if n < 0:
            raise self._fail(IscsiTimeout(what))
        if not n:
            raise self._fail(TransportError("connection lost: closed by target"))
        return n

    def _fill(self, need: int, deadline: float, what: str, exact: bool = False) -> None:
        """At least ``need`` unparsed bytes in scratch (exactly that many read when
        ``exact``: what follows is a segment to place elsewhere)."""
        while self._end - self._start < need:
            buf, start, end = self._buf, self._start, self._end
            if start + need > len(buf):
                if need > len(buf):
                    nb = bytearray(max(need, 2 * len(buf)))
                    nb[:end - start] = self._view[start:end]
                    self._buf, self._view = nb, memoryview(nb)
                else:
                    buf[:end - start] = buf[start:end]
                self._start, self._end = 0, end - start
                start, end = 0, end - start
            stop = start + need if exact else len(self._buf)
            self._end += self._recv_into(self._view[end:stop], deadline, what)

    def _next_pdu(self, deadline: float, what: str):
        """The next PDU from the target (a Data-In whose command can take it is received
        into the command's buffer).  Raises after failing the connection."""
        try:
            return self._read_pdu(deadline, what)
        except UnknownOpcode as exc:
            raise self._fail(ProtocolViolation(f"target sent an unknown PDU: {exc}")) from None
        except FramingError as exc:
            raise self._fail(ProtocolViolation(f"framing error from target: {exc}")) from None
        except IscsiError as exc:
            raise self._fail(exc) from None

    def _read_pdu(self, deadline: float, what: str):
        hd, dd = self._hd, self._dd
        exact = self._header_only
        self._header_only = False
        while True:
            got = split_header(self._buf, self._start, self._end - self._start, hd,
                               self._max_data)
            if not isinstance(got, int):
                break
            self._fill(got, deadline, what, exact)
        hlen, bhs, ahs, dlen = got
        self._start += hlen
        try:
            pdu = P.decode_bhs(bhs, ahs)
        except P.PduFormatError as exc:
            raise UnknownOpcode(str(exc), bhs) from None
        if not dlen:
            return pdu
        trailer = -dlen % 4 + (4 if dd else 0)
        dest = self._placement(pdu, dlen) if type(pdu) is P.DataIn else None
        if dest is not None:
            have = min(self._end - self._start, dlen)
            s = self._start
            if have:
                dest[:have] = self._view[s:s + have]
                self._start = s + have
            if have < dlen:
                # Scratch is empty: the rest of the segment, and with it (one
                # recvmsg_into) this PDU's padding and digest and the next PDU's
                # BHS and header digest -- never more than the next header, so
                # that a segment after it is received in place too.
                self._start = self._end = 0
                more = self._view[:trailer + P.BHS_LEN + (4 if hd else 0)]
                while have < dlen:
                    n = self._recv_into(dest[have:], deadline, what, more)
                    if n > dlen - have:
                        self._end = n - (dlen - have)
                        n = dlen - have
                    have += n
                more.release()
            self._fill(trailer, deadline, what, True)
            s = self._start
            if dd:
                pad_end = s + (-dlen % 4)
                crc = crc32c(self._view[s:pad_end], crc32c(dest))
                if crc != int.from_bytes(self._buf[pad_end:pad_end + 4], "little"):
                    self._start = s + trailer
                    raise FramingError("data digest mismatch", 0x02, bhs)
            self._start = s + trailer
            pdu.data = dest
            # Big segments come in trains: read only the next header, so that the next
            # segment lands in place too.
            self._header_only = dlen >= SCRATCH // 4
            return pdu
        self._fill(dlen + trailer, deadline, what)
        s = self._start
        view = self._view
        data = bytes(view[s:s + dlen]) if dlen < 4096 else bytearray(view[s:s + dlen])
        if dd:
            padded = dlen + (-dlen % 4)
            if not data_digest_ok(view[s:s + padded], view[s + padded:s + padded + 4]):
                self._start = s + dlen + trailer
                raise FramingError("data digest mismatch", 0x02, bhs)
        self._start = s + dlen + trailer
        pdu.data = data
        return pdu

    def _placement(self, pdu, dlen: int):
        """Where a Data-In segment may be received directly (None: the checks in
        _on_data_in report what is wrong with it)."""
        task = self._pending.get(pdu.itt)
        if type(task) is not Command or pdu.datasn != task.next_datasn:
            return None
        buf = task.read_buf
        if buf is None or pdu.offset + dlen > len(buf):
            return None
        return memoryview(buf)[pdu.offset:pdu.offset + dlen]

    def _pump(self, entry) -> None:
        """Receive and dispatch PDUs until ``entry`` (a Command or a _Reply) is done:
        until the earliest deadline of everything outstanding."""
        while not entry.done():
            if self._error is not None:
                entry.error = self._error
                return
            first = min(self._pending.values(), key=_deadline_of, default=entry)
            what = f"{first.what} timed out after {first.timeout:g} s"
            self._dispatch(self._next_pdu(first.deadline, what))

    def _dispatch(self, pdu) -> None:
        if hasattr(pdu, "maxcmdsn"):
            self._update_sn(pdu.expcmdsn, pdu.maxcmdsn)
        handler = _HANDLERS.get(type(pdu))
        try:
            if handler is None:
                raise ProtocolViolation(f"target sent an initiator PDU {type(pdu).__name__}")
            handler(self, pdu)
        except IscsiError as exc:
            if exc is not self._error:
                raise self._fail(exc) from None
            raise

    def _update_sn(self, expcmdsn: int, maxcmdsn: int) -> None:
        # RFC 7143 4.2.2.1: ignore values where MaxCmdSN < ExpCmdSN - 1.
        if sn_lt(maxcmdsn, (expcmdsn - 1) & MASK32):
            return
        if sn_lt(self._exp_cmdsn, expcmdsn):
            self._exp_cmdsn = expcmdsn
        if sn_lt(self._max_cmdsn, maxcmdsn):
            self._max_cmdsn = maxcmdsn

    def _statsn(self, statsn: int) -> None:
        if sn_le(self._exp_statsn, statsn):
            self._exp_statsn = (statsn + 1) & MASK32

    def _complete(self, task: Command, result: ScsiResult) -> None:
        self._pending.pop(task.itt, None)
        task.result = result

    def _on_data_in(self, pdu) -> None:
        task = self._pending.get(pdu.itt)
        if task is None:
            return                                  # not ours any more
        if type(task) is not Command:
            raise ProtocolViolation(f"Data-In for non-command ITT 0x{pdu.itt:08x}")
        data = pdu.data
        n = len(data)
        if n:
            buf = task.read_buf
            if buf is None or pdu.offset + n > len(buf):
                raise ProtocolViolation(f"Data-In [{pdu.offset}, +{n}) beyond the expected "
                                        f"{task.edtl} bytes")
            if pdu.datasn != task.next_datasn:
                raise ProtocolViolation(f"Data-In DataSN {pdu.datasn}, expected "
                                        f"{task.next_datasn}")
            if type(data) is memoryview:
                data.release()                      # received in place
            else:
                buf[pdu.offset:pdu.offset + n] = data
            pdu.data = b""
            if pdu.offset + n > task.high:
                task.high = pdu.offset + n
        task.next_datasn += 1
        if pdu.has_status:
            if not pdu.final:
                raise ProtocolViolation("Data-In with status but without the F bit")
            self._statsn(pdu.statsn)
            residual = pdu.residual if pdu.underflow else -pdu.residual if pdu.overflow else 0
            self._complete(task, ScsiResult(pdu.status, _data_of(task), residual=residual))

    def _on_scsi_response(self, pdu) -> None:
        self._statsn(pdu.statsn)
        task = self._pending.get(pdu.itt)
        if task is None:
            return
        if type(task) is not Command:
            raise ProtocolViolation(f"SCSI Response for non-command ITT 0x{pdu.itt:08x}")
        self._complete(task, response_result(pdu, _data_of(task)))

    def _on_r2t(self, pdu) -> None:
        task = self._pending.get(pdu.itt)
        if task is None:
            return                                  # not ours any more: nothing to send
        if type(task) is not Command or task.data_out is None:
            raise ProtocolViolation(f"R2T for ITT 0x{pdu.itt:08x} that has no data to send")
        if pdu.length == 0 or pdu.offset + pdu.length > len(task.data_out):
            raise ProtocolViolation(f"R2T asks for [{pdu.offset}, +{pdu.length}) of a "
                                    f"{len(task.data_out)}-byte write")
        self._data_out(task, pdu.offset, pdu.length, pdu.ttt)

    def _on_nop_in(self, pdu) -> None:
        if pdu.itt != P.RESERVED_TAG:
            self._statsn(pdu.statsn)
            self._on_reply(pdu)
            return
        if pdu.ttt != P.RESERVED_TAG:
            # The target pings us: echo its data back, immediately, without a CmdSN.
            self._send(P.NopOut(immediate=True, final=True, lun=pdu.lun, itt=P.RESERVED_TAG,
                                ttt=pdu.ttt, cmdsn=self._cmdsn, expstatsn=self._exp_statsn,
                                data=bytes(pdu.data)))

    def _on_reply(self, pdu) -> None:
        self._statsn(pdu.statsn)
        entry = self._pending.get(pdu.itt)
        if type(entry) is _Reply:
            del self._pending[pdu.itt]
            entry.pdu = pdu

    def _on_reject(self, pdu) -> None:
        self._statsn(pdu.statsn)
        data = bytes(pdu.data)
        itt = int.from_bytes(data[16:20], "big") if len(data) >= 20 else P.RESERVED_TAG
        entry = self._pending.pop(itt, None)
        if entry is not None:
            entry.error = IscsiRejected(f"target rejected our PDU (reason 0x{pdu.reason:02x})",
                                        pdu.reason)

    def _on_async(self, pdu) -> None:
        self._statsn(pdu.statsn)
        self.async_events.append(pdu)
        if pdu.event in (2, 3):                     # the target drops the connection/session
            raise TransportError(f"target announced connection drop (event {pdu.event})")

    def _on_login_response(self, pdu) -> None:
        raise ProtocolViolation("Login Response in full feature phase")

    # ---------------------------------------------------------------- commands
    def submit(self, cdb: bytes, *, data_out=None, read_length: int = 0, lun: int | None = None,
               timeout: float | None = None, check: bool = False, read_into=None) -> Command:
        """Send one SCSI command (and its unsolicited data); :meth:`wait` for its result.

        ``read_into``: a writable buffer of at least ``read_length`` bytes that
        Data-In is received into (the result's data is a view of it) instead of
        a new bytearray; it must not be touched until the command completed.
        """
        check_command(cdb, data_out, read_length)
        self._usable()
        p = self.login_result.params
        view, edtl, read_buf = command_buffers(data_out, read_length, read_into)
        lun = self.lun if lun is None else lun
        timeout = self.timeout if timeout is None else timeout
        self._take_window(timeout)
        cmdsn = self._cmdsn
        self._cmdsn = (cmdsn + 1) & MASK32
        itt = self._new_itt()
        task = Command(itt, cmdsn, lun, timeout, check, edtl, read_buf, view)
        cmd, unsolicited = scsi_command(cdb, view, read_length, edtl, p, attr=1, lun=lun,
                                        itt=itt, cmdsn=cmdsn, expstatsn=self._exp_statsn)
        sent = len(cmd.data)
        self._pending[itt] = task
        if unsolicited > sent:
            # The command and its unsolicited Data-Out in one sendmsg.
            bufs = encode_pdu(cmd, self._hd, self._dd)
            mx, off, datasn = p.max_xmit_data_segment_length, sent, 0
            lunf = cmd.lun
            while off < unsolicited:
                n = min(mx, unsolicited - off)
                bufs += encode_pdu(P.DataOut(final=off + n >= unsolicited, lun=lunf, itt=itt,
                                             ttt=P.RESERVED_TAG, expstatsn=self._exp_statsn,
                                             datasn=datasn, offset=off,
                                             data=view[off:off + n]), self._hd, self._dd)
                off += n
                datasn += 1
            self._sendv(bufs)
        else:
            self._send(cmd)
        return task

    def _take_window(self, timeout: float) -> None:
        """Receive until the CmdSN window admits one more non-immediate command."""
        if sn_le(self._cmdsn, self._max_cmdsn):
            return
        deadline = time.monotonic() + timeout
        while not sn_le(self._cmdsn, self._max_cmdsn):
            what = f"CmdSN window timed out after {timeout:g} s"
            first = min(self._pending.values(), key=_deadline_of, default=None)
            if first is not None and first.deadline < deadline:
                deadline, what = first.deadline, f"{first.what} timed out after " \
                    f"{first.timeout:g} s"
            self._dispatch(self._next_pdu(deadline, what))

    def wait(self, task: Command) -> ScsiResult:
        """The result of a submitted command (receiving whatever comes before it)."""
        if not task.done():
            try:
                self._pump(task)
            except IscsiError:
                if not task.done():
                    raise
        if task.error is not None:
            raise task.error
        res = task.result
        return res.raise_for_status() if task.check else res

    def execute(self, cdb: bytes, *, data_out=None, read_length: int = 0, lun: int | None = None,
                timeout: float | None = None, check: bool = False, read_into=None) -> ScsiResult:
        return self.wait(self.submit(cdb, data_out=data_out, read_length=read_length, lun=lun,
                                     timeout=timeout, check=check, read_into=read_into))

    def execute_many(self, commands: Iterable[dict], *, check: bool = False) -> list[ScsiResult]:
        """Several commands outstanding at once; each dict holds execute()'s keywords."""
        tasks = [self.submit(check=check, **cmd) for cmd in commands]
        return [self.wait(t) for t in tasks]

    def pipeline(self, commands: Iterable[dict], depth: int, *,
                 check: bool = False) -> Iterator[ScsiResult]:
        """Results of ``commands`` (dicts of execute()'s keywords) in their order,
        with up to ``depth`` of them outstanding: the next command is taken from
        the iterable (lazily, so it may depend on the results seen so far) as
        each result is handed out.  Closing the generator early waits for the
        commands already sent."""
        return pipelined(commands, depth, lambda cmd: self.submit(check=check, **cmd),
                         self.wait)

    def _request(self, pdu, timeout: float | None, what: str):
        """Send an immediate PDU that expects one reply under its ITT; returns the reply."""
        self._usable()
        entry = _Reply(self.timeout if timeout is None else timeout, what)
        self._pending[pdu.itt] = entry
        self._send(pdu)
        self._pump(entry)
        if entry.error is not None:
            raise entry.error
        return entry.pdu

    def ping(self, data: bytes = b"", timeout: float | None = None) -> float:
        """NOP-Out ping; returns the round-trip time in seconds."""
        self._usable()
        t0 = time.monotonic()
        reply = self._request(P.NopOut(immediate=True, final=True, lun=0, itt=self._new_itt(),
                                       ttt=P.RESERVED_TAG, cmdsn=self._cmdsn,
                                       expstatsn=self._exp_statsn, data=bytes(data)),
                              timeout, "NOP-Out ping")
        if bytes(reply.data) != bytes(data):
            raise self._fail(ProtocolViolation("NOP-In did not echo the ping data"))
        return time.monotonic() - t0

    # ------------------------------------------------------ SCSI conveniences
    UA_RETRIES = 3

    def _run(self, cdb: bytes, *, lun: int | None = None, read_length: int = 0,
             data_out=None) -> ScsiResult:
        """A command repeated past UNIT ATTENTIONs (as the OS midlayers do), then checked."""
        for _ in range(self.UA_RETRIES):
            r = self.execute(cdb, lun=lun, read_length=read_length, data_out=data_out)
            if not (r.status == 0x02 and r.sense_key == 0x06):
                break
        return r.raise_for_status()

    def test_unit_ready(self, lun: int | None = None) -> ScsiResult:
        return self._run(bytes(6), lun=lun)

    def inquiry(self, evpd: bool = False, page: int = 0, alloc: int = 255,
                lun: int | None = None) -> bytes:
        from . import cdb as C
        return bytes(self._run(C.inquiry(evpd, page, alloc), read_length=alloc, lun=lun).data)

    def read_capacity16(self, lun: int | None = None):
        from . import cdb as C
        return C.parse_read_capacity16(bytes(self._run(C.read_capacity16(32), read_length=32,
                                                       lun=lun).data))

    def report_luns(self) -> list[int]:
        from . import cdb as C
        return C.parse_report_luns(bytes(self._run(C.report_luns(4096), read_length=4096,
                                                   lun=0).data))

    # ---------------------------------------------------------------- teardown
    def logout(self, timeout: float | None = None) -> None:
        """Close the session (reason 0) and the connection."""
        self._usable()
        try:
            reply = self._request(P.LogoutRequest(immediate=True, final=True, reason=0,
                                                  itt=self._new_itt(), cid=0, cmdsn=self._cmdsn,
                                                  expstatsn=self._exp_statsn),
                                  timeout, "logout")
            if reply.response != 0:
                raise TransportError(f"logout refused (response {reply.response})")
        finally:
            self._fail(TransportError("logged out"))
            self.login_result = None

    def close(self) -> None:
        """Log out if still connected (best effort), then close the socket."""
        if self._sock is None:
            return
        if self.connected:
            try:
                self.logout(timeout=min(self.timeout, 5.0))
            except IscsiError:
                pass
        self._fail(TransportError("client closed"))


def _deadline_of(entry) -> float:
    return entry.deadline


def _data_of(task: Command):
    buf = task.read_buf
    if buf is None:
        return b""
    if task.high < len(buf):
        if type(buf) is memoryview:
            return buf[:task.high]              # the caller's buffer: never resized
        try:
            del buf[task.high:]
        except BufferError:                     # a view of it is still alive
            return buf[:task.high]
    return buf


def _ready(sock, event: int, timeout: float) -> bool:
    """Whether ``sock`` became ready for ``event`` (or failed: the next call says
    how) within ``timeout`` seconds; poll's milliseconds rounded up, so that
    False means the time has passed."""
    p = select.poll()
    p.register(sock.fileno(), event)
    return bool(p.poll(int(timeout * 1000) + 1))


def _connect(host: str | bytes, port: int, timeout: float) -> _socket.socket:
    """``socket.create_connection((host, port), timeout)`` on the C module's socket
    type: the socket module's wrapper class (and the enum and selectors modules it
    imports, a tenth of a short backup run's start-up) gives this client
    nothing it uses.  Each address getaddrinfo gives is tried in turn; the last
    failure is raised (a timeout as TimeoutError), as create_connection does."""
    err: OSError | None = None
    for family, kind, proto, _, addr in _socket.getaddrinfo(host, port, 0,
                                                            _socket.SOCK_STREAM):
        sock = None
        try:
            sock = _socket.socket(family, kind, proto)
            sock.settimeout(timeout)
            sock.connect(addr)
            return sock
        except OSError as exc:
            err = exc
            if sock is not None:
                sock.close()
    raise err if err is not None else OSError("getaddrinfo returns an empty list")


def _resolver_host(host: str) -> str | bytes:
    """``host`` as getaddrinfo is given it: a name the 'idna' codec would pass
    unchanged (ASCII, labels of at most 63 characters, none empty but the last)
    as those bytes, which getaddrinfo takes as they are; any other name as it is,
    for the codec to encode or refuse.  The same address either way, without the
    codec's modules (encodings.idna, stringprep, unicodedata: a millisecond of a
    short-lived client's start-up, spent on "127.0.0.1")."""
    if host.isascii():
        labels = host.split(".")
        if all(0 < len(label) < 64 for label in labels[:-1]) and len(labels[-1]) < 64:
            return host.encode("ascii")
    return host


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


_HANDLERS = {
    P.DataIn: BlockingIscsiClient._on_data_in, P.ScsiResponse: BlockingIscsiClient._on_scsi_response,
    P.R2T: BlockingIscsiClient._on_r2t, P.NopIn: BlockingIscsiClient._on_nop_in,
    P.TaskMgmtResponse: BlockingIscsiClient._on_reply,
    P.TextResponse: BlockingIscsiClient._on_reply,
    P.LogoutResponse: BlockingIscsiClient._on_reply, P.Reject: BlockingIscsiClient._on_reject,
    P.AsyncMessage: BlockingIscsiClient._on_async,
    P.LoginResponse: BlockingIscsiClient._on_login_response,
}
