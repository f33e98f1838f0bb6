"""asyncio driver for the sans-I/O iSCSI target connection.

Sockets are driven directly with ``loop.add_reader``/``add_writer`` rather than
asyncio transports: responses go out with ``socket.sendmsg`` over the list of
buffers the connection produced (header, memoryview of the read data, ...), so
read data is never joined or copied on its way to the kernel.

Backpressure: the connection stops executing commands while the bytes queued
for its socket exceed its send bound (:attr:`TargetConnection.blocked`); the
driver then stops reading that socket, and once the queue drains it lets the
connection go on with what it had already received.  A peer that never reads
therefore costs one send queue, not a response per command it sent.

Loans: the output may hold :class:`~volume.lending.LoanSlice` items (backup
stream data lent from a volume's map).  They stay loan slices in the queue --
never a view of the map -- and are resolved (``view()``) only while the list
for one ``sendmsg`` is built, in the same call: the volume turns its loans
into copies before it changes (volume/lending.py), and the kernel copies
what ``sendmsg`` takes, so what goes out is what was lent.
"""
from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import socket

from volume.lending import LoanSlice, resolved

from .registry import Portal, TargetRegistry
from .connection import AfterSend, TargetConnection
from .hooks import Hold
from .session import SessionTable

log = logging.getLogger("scsi_target.target")

RECV_SIZE = 256 << 10
# Until login completes a connection gets a small buffer: a crowd of
# connections that never log in must not cost RECV_SIZE each.
LOGIN_RECV_SIZE = 16 << 10
# Stop reading from a peer while this much output is queued for it.
HIGH_WATER = 8 << 20
LOW_WATER = 1 << 20
IOV_MAX = 1024
ACCEPT_BACKOFF = 0.5   # seconds without accepting after accept() failed (e.g. EMFILE)


def _nbytes(items: list) -> int:
    return sum(b.nbytes if isinstance(b, memoryview) else len(b) for b in items
               if not isinstance(b, (AfterSend, Hold)))


class _SocketDriver:
    """Moves bytes between one accepted socket and its TargetConnection."""

    def __init__(self, server: "IscsiServer", sock: socket.socket, peer) -> None:
        self.server = server
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        local = sock.getsockname()
        self.conn = TargetConnection(server.registry, server.sessions,
                                     Portal(local[0], local[1]), peer=str(peer),
                                     write_budget=server.write_budget,
                                     send_bound=server.send_queue_bound)
        self.conn.wakeup = self._wakeup
        self.conn.post = self._post
        self.pending: collections.deque = collections.deque()
        self.pending_bytes = 0
        self.reading = False
        self.writing = False
        self.closed = False
        self.close_after_flush = False
        self.held: list | None = None    # output held by an injected delay (hold_output)
        self._hold_token = 0             # which hold a late release belongs to
        self.held_bytes = 0              # counted as unsent: a held peer is a slow peer
        self._rbuf = bytearray(LOGIN_RECV_SIZE)
        self._rview = memoryview(self._rbuf)
        self.conn.last_heard = self.conn.opened_at = self.loop.time()
        self._resume_reading()

    # -- reading --------------------------------------------------------
    def _resume_reading(self) -> None:
        if not self.reading and not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._on_readable)
            self.reading = True

    def _pause_reading(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.sock.fileno())
            self.reading = False

    def _on_readable(self) -> None:
        try:
            n = self.sock.recv_into(self._rbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close(f"recv failed: {exc}")
            return
        if n == 0:
            self._close("peer closed the connection")
            return
        conn = self.conn
        conn.receive_data(self._rview[:n], self.loop.time())
        if conn.login is None and len(self._rbuf) < RECV_SIZE:
            self._rbuf = bytearray(RECV_SIZE)   # full feature phase: room for big PDUs
            self._rview = memoryview(self._rbuf)
        self._after_input()

    def _after_input(self) -> None:
        conn = self.conn
        while True:
            out = conn.take_output()
            if out:
                self._send(out)
            conn.unsent = self.pending_bytes + self.held_bytes
            if self.closed or not conn.resume():
                break
        if conn.closing:
            self.close_after_flush = True
            self._pause_reading()
            if not self.pending and self.held is None:
                self._close("connection ended by protocol")
        elif conn.has_input and conn.blocked:
            self._pause_reading()   # commands wait in the connection until the queue drains

    def _wakeup(self) -> None:
        """Output appeared outside our own input handling (see TargetConnection.wakeup)."""
        if not self.closed:
            self.loop.call_soon(self._flush)

    def _post(self, fn) -> None:
        """From any thread (a store's completion): run ``fn`` on the loop, then send."""
        self.server.completions.post(self._run_posted, fn)

    def _run_posted(self, fn) -> None:
        fn()                      # a closed connection drops what it completes
        if not self.closed:
            self._after_input()

    def _flush(self) -> None:
        if not self.closed:
            out = self.conn.take_output()
            if out:
                self._send(out)
                self.conn.unsent = self.pending_bytes + self.held_bytes

    # -- writing --------------------------------------------------------
    def _send(self, items: list) -> None:
        """Send now what the kernel takes; queue the rest (AfterSend markers included)."""
        if self.closed:
            return
        if self.held is not None:
            self.held.extend(items)
            self.held_bytes += _nbytes(items)
            return
        if self.conn.faults is not None:
            at = next((i for i, b in enumerate(items) if type(b) is Hold), -1)
            if at >= 0:
                if at:
                    self._send(items[:at])
                if not self.closed:
                    self._hold_marked(items[at], items[at + 1:])
                return
        if self.server.holds and self._hold(items):
            return
        if self.pending:
            self._queue(items)
            return
        bufs = [resolved(b) for b in items if not isinstance(b, AfterSend)]
        try:
            sent = self.sock.sendmsg(bufs[:IOV_MAX]) if bufs else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._close(f"send failed: {exc}")
            return
        total = 0
        for i, b in enumerate(items):
            if isinstance(b, AfterSend):
                b.callback()  # every byte before it has been sent
                continue
            ln = b.nbytes if isinstance(b, (memoryview, LoanSlice)) else len(b)
            if sent < total + ln:
                if sent <= total:
                    rest = b
                elif type(b) is LoanSlice:
                    rest = b[sent - total:]     # still a loan: resolved when sent
                else:
                    rest = memoryview(b)[sent - total:]
                self._queue([rest] + items[i + 1:])
                return
            total += ln

    # -- injected delays (testing hook: IscsiServer.hold_output) -------------
    def _hold(self, items: list) -> bool:
        s = self.conn.session
        until = self.server.holds.pop(s.nexus, None) if s is not None else None
        if until is None:
            return False
        self.held = list(items)
        self.held_bytes = _nbytes(items)
        self._hold_token += 1
        self.loop.call_at(until, self._release_held, self._hold_token)
        return True

    def _hold_marked(self, mark: Hold, rest: list) -> None:
        """A stall fault's marker: hold what follows it ``seconds``, or until released."""
        self.held = list(rest)
        self.held_bytes = _nbytes(rest)
        self._hold_token += 1
        token = self._hold_token
        if mark.seconds:
            self.loop.call_later(mark.seconds, self._release_held, token)
            return
        loop = self.loop

        def released() -> None:         # any thread (the rule is cleared by the test)
            try:
                loop.call_soon_threadsafe(self._release_held, token)
            except RuntimeError:        # the loop is gone: so is this connection
                pass
        mark.on_release(released)

    def _release_held(self, token: int | None = None) -> None:
        if token is not None and token != self._hold_token:
            return                      # a late release of an earlier hold
        self._hold_token += 1
        items, self.held = self.held, None
        self.held_bytes = 0
        if self.closed or items is None:
            return
        self._send(items)
        conn = self.conn
        conn.unsent = self.pending_bytes + self.held_bytes
        if self.close_after_flush:
            if not self.pending and self.held is None:
                self._close("connection ended by protocol")
            return
        # Commands left unread while the held output counted against the send bound.
        if self.held is None and conn.resume():
            self._after_input()
        if not self.closed and not self.close_after_flush and self.pending_bytes < LOW_WATER \
                and not (conn.has_input and conn.blocked):
            self._resume_reading()

    def _queue(self, items: list) -> None:
        for b in items:
            if isinstance(b, AfterSend):
                self.pending.append(b)
                continue
            if type(b) is LoanSlice:
                self.pending.append(b)
                self.pending_bytes += b.nbytes
                continue
            mv = memoryview(b)
            if mv.ndim != 1 or mv.format != "B":
                mv = mv.cast("B")
            self.pending.append(mv)
            self.pending_bytes += mv.nbytes
        if not self.writing:
            self.loop.add_writer(self.sock.fileno(), self._on_writable)
            self.writing = True
        if self.pending_bytes > HIGH_WATER:
            self._pause_reading()

    def _on_writable(self) -> None:
        pending = self.pending
        while pending:
            batch = []
            batch_bytes = 0
            for item in pending:
                if not isinstance(item, AfterSend):
                    batch.append(resolved(item))
                    batch_bytes += item.nbytes
                    if len(batch) >= IOV_MAX:
                        break
            sent = 0
            if batch:
                try:
                    sent = self.sock.sendmsg(batch)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    self._close(f"send failed: {exc}")
                    return
            self.pending_bytes -= sent
            partial = sent < batch_bytes
            while pending:
                head = pending[0]
                if isinstance(head, AfterSend):
                    pending.popleft()
                    head.callback()
                    continue
                if sent == 0:
                    break
                if head.nbytes <= sent:
                    sent -= head.nbytes
                    pending.popleft()
                else:
                    pending[0] = head[sent:]
                    sent = 0
            if partial:
                return  # the kernel buffer is full: wait for the next writable event
        self.loop.remove_writer(self.sock.fileno())
        self.writing = False
        if self.close_after_flush:
            self._close("connection ended by protocol")
            return
        conn = self.conn
        conn.unsent = self.pending_bytes + self.held_bytes
        if conn.resume():
            # Commands left unread while the queue was full: go on with them.
            self._after_input()
        if self.pending_bytes < LOW_WATER and not self.closed and not self.close_after_flush \
                and not (conn.has_input and conn.blocked):
            self._resume_reading()

    # -- teardown -------------------------------------------------------
    def _close(self, why: str) -> None:
        if self.closed:
            return
        self.closed = True
        fd = self.sock.fileno()
        if self.reading:
            self.loop.remove_reader(fd)
        if self.writing:
            self.loop.remove_writer(fd)
        self.pending.clear()
        try:
            self.sock.close()
        except OSError:
            pass
        log.debug("connection %s closed: %s", self.conn.peer, why)
        self.conn.connection_lost()
        self.server._drivers.discard(self)

    def tick(self, now: float) -> None:
        conn = self.conn
        if self.held is not None:
            # Our own output is held (a stall fault): a ping could not reach the peer,
            # so its silence proves nothing; the clock restarts when the output goes.
            conn.last_heard = now
            conn.ping_ttt = None
        else:
            conn.keepalive(now, interval=self.server.nop_interval,
                           timeout=self.server.nop_timeout,
                           login_timeout=self.server.login_timeout)
        out = conn.take_output()
        if out:
            self._send(out)
            conn.unsent = self.pending_bytes + self.held_bytes
        if conn.closing and not self.closed:
            self.close_after_flush = True
            self._pause_reading()
            if not self.pending and self.held is None:
                self._close("connection ended by protocol")

    def abort(self) -> None:
        self._close("server shutting down")


class _Completions:
    """Calls posted from other threads (asynchronous stores' completions), run on the loop.

    One eventfd per server wakes the loop, written only when the queue was idle, so a
    burst of completions costs one wakeup; measured faster than call_soon_threadsafe
    under uvloop, whose per-call wakeup added about 0.7 ms to a 4 KiB RBD write at
    queue depth 1.
    """

    def __init__(self, loop) -> None:
        self.loop = loop
        self.queue: collections.deque = collections.deque()
        self.signaled = False
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        loop.add_reader(self.fd, self._run)
        self.closed = False

    def post(self, fn, arg) -> None:
        if self.closed:
            return
        self.queue.append((fn, arg))
        if not self.signaled:
            self.signaled = True
            try:
                os.eventfd_write(self.fd, 1)
            except OSError:       # closed meanwhile: the server is gone
                pass

    def _run(self) -> None:
        # Read the eventfd before clearing the flag: cleared first, a post landing
        # between the two would write a wakeup that this read swallows, leaving the
        # flag set with nothing on the fd -- every later post would then skip its
        # write and the loop would sleep on completions forever.  In this order a
        # post before the clear is drained below; one after it writes a new wakeup.
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass
        self.signaled = False
        queue = self.queue
        while queue:
            fn, arg = queue.popleft()
            try:
                fn(arg)
            except Exception:     # one connection's failure must not stop the others
                log.exception("completion failed")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.fd)
            os.close(self.fd)


class IscsiServer:
    """Serves a TargetRegistry.

    ``nop_interval``: seconds of initiator silence before a NOP-In ping (0 = never);
    ``nop_timeout``: seconds to wait for the answer before dropping the connection;
    ``login_timeout``: seconds a connection may take to finish login;
    ``write_budget`` / ``target_write_budget``: bytes of write buffers per
    connection / per target; ``send_queue_bound``: bytes of queued responses
    per connection above which its commands wait (see :mod:`.budget`).
    """

    def __init__(self, registry: TargetRegistry, *, nop_interval: float = 30.0,
                 nop_timeout: float = 15.0, login_timeout: float = 30.0,
                 write_budget: int | None = None, target_write_budget: int | None = None,
                 send_queue_bound: int | None = None) -> None:
        self.registry = registry
        self.nop_interval = nop_interval
        self.nop_timeout = nop_timeout
        self.login_timeout = login_timeout
        # Memory bounds (None: the defaults of scsi_target.target.budget).
        self.write_budget = write_budget
        self.send_queue_bound = send_queue_bound
        self._ticker: asyncio.TimerHandle | None = None
        self.sessions = SessionTable(target_write_budget)
        self._listeners: list[socket.socket] = []
        self._drivers: set[_SocketDriver] = set()
        self.bound_portals: list[tuple[str, int]] = []
        self._closed: asyncio.Event | None = None
        # Testing hook: nexus -> loop time before which its connection sends nothing.
        self.holds: dict = {}
        self.completions: _Completions | None = None

    def hold_output(self, nexus, seconds: float) -> None:
        """Delay what the connection of ``nexus`` sends next by ``seconds``, without
        blocking the loop (the injected latency of scsi_target/interceptors/faults.py)."""
        until = asyncio.get_running_loop().time() + seconds
        self.holds[nexus] = max(until, self.holds.get(nexus, 0.0))

    def drop_connection(self, nexus) -> None:
        """Close the connection of ``nexus`` without sending what it has queued (the
        drop_connection fault): its output is held, and the socket closed next."""
        loop = asyncio.get_running_loop()
        self.holds[nexus] = loop.time() + 3600.0   # never sent: the socket closes first
        loop.call_soon(self._drop, nexus)

    def _drop(self, nexus) -> None:
        self.holds.pop(nexus, None)
        for drv in list(self._drivers):
            s = drv.conn.session
            if s is not None and s.nexus == nexus:
                drv._close("fault injection: connection dropped")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()
        self.completions = _Completions(loop)
        for portal in self.registry.portals:
            try:
                infos = socket.getaddrinfo(portal.host, portal.port, type=socket.SOCK_STREAM,
                                           flags=socket.AI_PASSIVE)
                family, _, _, _, addr = infos[0]
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(addr)
                sock.listen(128)
                sock.setblocking(False)
            except OSError as exc:
                await self.close()
                raise OSError(exc.errno or errno.EINVAL,
                              f"cannot listen on {portal}: {exc.strerror or exc}") from None
            self._listeners.append(sock)
            loop.add_reader(sock.fileno(), self._accept, sock)
            name = sock.getsockname()
            self.bound_portals.append((name[0], name[1]))
        # SendTargets should advertise the real ports (ephemeral ports in tests).
        if self.bound_portals:
            self.registry.portals = [Portal(h, p) for h, p in self.bound_portals]
        self._schedule_tick()

    def _tick_period(self) -> float:
        periods = [p for p in (self.nop_interval, self.nop_timeout, self.login_timeout) if p > 0]
        return max(0.05, min(periods) / 4) if periods else 1.0

    def _schedule_tick(self) -> None:
        loop = asyncio.get_running_loop()
        self._ticker = loop.call_later(self._tick_period(), self._tick)

    def _tick(self) -> None:
        now = asyncio.get_running_loop().time()
        for drv in list(self._drivers):
            if not drv.closed:
                drv.tick(now)
        self._schedule_tick()

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(16):
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Out of descriptors (EMFILE/ENFILE) or memory: the peer stays in the
                # backlog and the listener stays readable, so stop listening for a
                # moment instead of spinning on accept.
                log.warning("accept failed: %s; pausing accepts for %.1f s", exc,
                            ACCEPT_BACKOFF)
                self._pause_accepting(listener)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self._drivers.add(_SocketDriver(self, sock, peer))
            except Exception:  # never let one connection take the listener down
                log.exception("cannot set up connection from %s", peer)
                sock.close()

    def _pause_accepting(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        fd = listener.fileno()
        loop.remove_reader(fd)

        def resume() -> None:
            if listener in self._listeners and listener.fileno() == fd:
                loop.add_reader(fd, self._accept, listener)
        loop.call_later(ACCEPT_BACKOFF, resume)

    async def serve_forever(self) -> None:
        await self._closed.wait()

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        for sock in self._listeners:
            loop.remove_reader(sock.fileno())
            sock.close()
        self._listeners.clear()
        for drv in list(self._drivers):
            drv.abort()
        if self._closed is not None:
            self._closed.set()
        await asyncio.sleep(0)
        self.registry.close()          # LUs finish their I/O in flight first
        if self.completions is not None:
            self.completions.close()
