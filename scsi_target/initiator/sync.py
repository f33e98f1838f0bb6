"""Blocking wrapper around :class:`IscsiClient` for scripts and tests.

Each :class:`SyncIscsiClient` runs its own event loop in a daemon thread and
hands coroutines to it with ``run_coroutine_threadsafe``.  A loop that keeps
running between calls is what lets the session stay alive while the script
does something else: target NOP-In pings are still answered, and the
connection is not tied to an ``asyncio.run`` call that would close it
(``asyncio.run`` per call would need a new connection and login every time).
It also works when the caller is itself inside a running event loop (e.g. a
pytest-asyncio test calling blocking helpers), where ``asyncio.run`` fails.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Iterable, Iterator

from ..protocol import pdu as P
from .client import (DEFAULT_TIMEOUT, DiscoveredTarget, IscsiClient, ScsiResult, discover)
from .cdb import Capacity
from .pipeline import pipelined
from .errors import IscsiTimeout
from .url import IscsiUrl

# Extra time the calling thread waits beyond the client's own timeouts, which
# normally fire first and raise a precise error.
_GRACE = 5.0


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="iscsi-client-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro, timeout: float) -> Any:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            if fut.done() and not fut.cancelled():
                raise       # the client's own IscsiTimeout (a TimeoutError too): precise
            fut.cancel()
            raise IscsiTimeout(f"no answer from the client loop in {timeout:g} s") from None

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


class SyncIscsiClient:
    """``with SyncIscsiClient(url) as c: data = c.read(0, 8)``"""

    def __init__(self, url: str | IscsiUrl, *, timeout: float = DEFAULT_TIMEOUT, **kw) -> None:
        self.timeout = timeout
        self._lt = _LoopThread()
        try:
            self.client: IscsiClient = self._call(IscsiClient.connect(url, timeout=timeout, **kw))
        except BaseException:
            self._lt.stop()
            raise

    def _call(self, coro, timeout: float | None = None):
        return self._lt.call(coro, (timeout or self.timeout) * 2 + _GRACE)

    def __enter__(self) -> "SyncIscsiClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def discover(url: str | IscsiUrl, *, timeout: float = DEFAULT_TIMEOUT,
                 **kw) -> list[DiscoveredTarget]:
        lt = _LoopThread()
        try:
            return lt.call(discover(url, timeout=timeout, **kw), timeout * 3 + _GRACE)
        finally:
            lt.stop()

    # -------------------------------------------------------------- passthrough
    @property
    def params(self):
        return self.client.params

    @property
    def login_result(self):
        return self.client.login_result

    def execute(self, cdb: bytes, *, data_out=None, read_length: int = 0, lun: int | None = None,
                timeout: float | None = None, check: bool = False,
                read_into=None) -> ScsiResult:
        return self._call(self.client.execute(cdb, data_out=data_out, read_length=read_length,
                                              lun=lun, timeout=timeout, check=check,
                                              read_into=read_into), timeout)

    def execute_many(self, commands: Iterable[dict], *, check: bool = False) -> list[ScsiResult]:
        """Several commands outstanding at once; each dict holds execute()'s keywords."""
        async def run() -> list[ScsiResult]:
            handles = [await self.client.submit(check=check, **cmd) for cmd in commands]
            return [await h for h in handles]
        return self._call(run())

    def start(self, cdb: bytes, *, data_out=None, read_length: int = 0, lun: int | None = None,
              timeout: float | None = None, check: bool = False,
              read_into=None) -> concurrent.futures.Future:
        """Hand one command to the client loop without waiting: its ScsiResult
        arrives in the returned future.  Commands started one after the other
        get consecutive CmdSNs (the loop takes them in order)."""
        return asyncio.run_coroutine_threadsafe(
            self.client.execute(cdb, data_out=data_out, read_length=read_length, lun=lun,
                                timeout=timeout, check=check, read_into=read_into),
            self._lt.loop)

    def result(self, fut: concurrent.futures.Future, timeout: float | None = None) -> ScsiResult:
        """The result of a :meth:`start`-ed command (the client's own timeouts fire first)."""
        try:
            return fut.result((timeout or self.timeout) * 2 + _GRACE)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise IscsiTimeout("no answer from the client loop") from None

    def pipeline(self, commands: Iterable[dict], depth: int, *,
                 check: bool = False) -> Iterator[ScsiResult]:
        """Results of ``commands`` (dicts of execute()'s keywords) in their order,
        with up to ``depth`` of them outstanding: the next command is taken from
        the iterable (lazily, so it may depend on the results seen so far) as
        each result is handed out.  Closing the generator early waits for the
        commands already started."""
        return pipelined(commands, depth, lambda cmd: self.start(check=check, **cmd),
                         self.result)

    def ping(self, data: bytes = b"") -> float:
        return self._call(self.client.ping(data))

    def test_unit_ready(self, lun: int | None = None) -> ScsiResult:
        return self._call(self.client.test_unit_ready(lun))

    def inquiry(self, evpd: bool = False, page: int = 0, alloc: int = 255,
                lun: int | None = None) -> bytes:
        return self._call(self.client.inquiry(evpd, page, alloc, lun))

    def read_capacity16(self, lun: int | None = None) -> Capacity:
        return self._call(self.client.read_capacity16(lun))

    def report_luns(self) -> list[int]:
        return self._call(self.client.report_luns())

    def read(self, lba: int, blocks: int, *, fua: bool = False) -> bytearray:
        return self._call(self.client.read(lba, blocks, fua=fua))

    def write(self, lba: int, data, *, fua: bool = False) -> ScsiResult:
        return self._call(self.client.write(lba, data, fua=fua))

    def lun_reset(self, lun: int | None = None) -> P.TmfResponse:
        return self._call(self.client.lun_reset(lun))

    def target_warm_reset(self) -> P.TmfResponse:
        return self._call(self.client.target_warm_reset())

    def send_targets(self) -> list[DiscoveredTarget]:
        return self._call(self.client.send_targets())

    def reconnect(self) -> None:
        self._call(self.client.reconnect())

    def logout(self) -> None:
        self._call(self.client.logout())

    def close(self) -> None:
        try:
            if not self._lt.loop.is_closed():
                self._call(self.client.close())
        finally:
            self._lt.stop()
