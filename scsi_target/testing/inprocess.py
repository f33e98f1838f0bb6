"""A target built in process, for tests: submit commands directly, or serve it.

    >>> from scsi_target.testing import InProcessTarget
    >>> t = InProcessTarget()
    >>> disk = t.add_lu("disk", size="1M", block_size=4096)
    >>> t.write(0, bytes(range(256)) * 16).ok
    True
    >>> t.read(0, 1)[:4]
    b'\\x00\\x01\\x02\\x03'
    >>> t.log.assert_once("WRITE(10)").lba
    0

``with t.serve() as s:`` runs an iSCSI server on an ephemeral loopback port in
a thread (``s.url(0)`` is its ``iscsi://`` URL, with CHAP credentials when the
target has them); ``async with t.serving() as s:`` does the same on the
running event loop.
"""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Iterable

from ..interceptors.chain import Interception, install
from ..interceptors.cmdlog import CommandLog
from ..interceptors.faults import FaultInjector, FaultRule, parse_rules
from ..scsi import sense as S
from ..scsi.command import Command, Direction, Nexus, Response, Status
from ..scsi.layouts.sense import decode_sense
from ..scsi.lun import LogicalUnit, LunMap
from .kinds import BuildContext, LuSpecError, build_lu

DEFAULT_IQN = "iqn.2026-12.org.pyscsi.test:target"


def nexus(initiator: str, isid: int = 1, target: str = DEFAULT_IQN, tpgt: int = 1) -> Nexus:
    """The I_T nexus of ``initiator``'s session ``isid`` with ``target`` (``submit(nexus=)``:
    reservations, unit attentions and other per-initiator state)."""
    return Nexus(f"{initiator},i,0x{isid:012x}", f"{target},t,0x{tpgt:04x}",
                 initiator_name=initiator, isid=isid)


LOCAL = nexus("iqn.2026-12.org.pyscsi.test:initiator")


@dataclass
class Result:
    """A Response with its sense decoded."""
    resp: Response

    @property
    def status(self) -> Status:
        return self.resp.status

    @property
    def ok(self) -> bool:
        return self.resp.status == Status.GOOD

    @property
    def data(self) -> bytes:
        return bytes(self.resp.data_in)

    @property
    def residual(self) -> int:
        return self.resp.residual

    @property
    def sense(self) -> tuple[S.SenseKey, int, int] | None:
        return S.parse_sense(self.resp.sense) if self.resp.sense else None

    @property
    def sense_data(self):
        """The whole sense decoded (:class:`~scsi_target.scsi.layouts.sense.SenseData`:
        key, ASC/ASCQ, information, ILI/EOM/filemark bits...), or None."""
        return decode_sense(self.resp.sense) if self.resp.sense else None

    @property
    def information(self) -> int | None:
        return decode_sense(self.resp.sense).information if self.resp.sense else None

    def expect_good(self) -> bytes:
        """The data-in of a GOOD answer; AssertionError with the decoded sense otherwise."""
        if not self.ok:
            raise AssertionError(f"expected GOOD, got {self!r}")
        return self.data

    def expect_sense(self, key: int, asc: int, ascq: int = 0) -> "Result":
        """This answer is CHECK CONDITION with sense (key, ASC, ASCQ); AssertionError otherwise."""
        if self.status != Status.CHECK_CONDITION or self.sense != (key, asc, ascq):
            want = S.SenseKey(key).name if key in S.SenseKey else key
            raise AssertionError(f"expected CHECK CONDITION {want} {asc:02X}h/{ascq:02X}h, "
                                 f"got {self!r}")
        return self

    def __repr__(self) -> str:
        extra = f" {S.describe_sense(self.resp.sense)}" if self.resp.sense else ""
        return f"<Result {Status(self.status).name if self.status in Status else self.status}{extra} {len(self.resp.data_in)} bytes>"


class InProcessTarget:
    """One target name with LUs, a command log and a fault injector.

    ``chap=("user", "secret")`` makes the served target require one-way CHAP.
    ``log_size`` bounds the command log (0: no log at all).  The in-process
    initiator (:attr:`nexus`) skips the power-on unit attention of new LUs unless
    ``power_on_ua`` is set; initiators coming over iSCSI always get it.
    """

    def __init__(self, name: str = DEFAULT_IQN, *, chap: tuple[str, str] | None = None,
                 mutual_chap: tuple[str, str] | None = None, log_size: int = 10000, faults: Iterable[FaultRule | dict] = (),
                 fault_control: bool = True, power_on_ua: bool = False) -> None:
        from ..config import check_iscsi_name
        why = check_iscsi_name(name)
        if why:
            raise LuSpecError(f"target name {name!r}: {why}")
        self.name = name
        self.chap = chap
        self.mutual_chap = mutual_chap
        self.luns = LunMap(name)
        self.log = CommandLog(log_size) if log_size else None
        rules = [r if isinstance(r, FaultRule) else parse_rules(r)[0] for r in faults]
        self.faults = FaultInjector(rules, control=fault_control)
        self.chain: Interception = install(self.luns, cmdlog=self.log, faults=self.faults)
        self.nexus = LOCAL
        self.power_on_ua = power_on_ua

    # ------------------------------------------------------------ building
    def add_lu(self, kind: str = "disk", lun: int | None = None, **options) -> LogicalUnit:
        """Add a LU of a registered kind (scsi_target.testing.kinds) at ``lun`` (default: next)."""
        if lun is None:
            lun = max(self.luns.luns, default=-1) + 1
        lu = build_lu(kind, BuildContext(self.name, lun, self.luns), options)
        try:
            return self.attach(lun, lu)
        except LuSpecError:
            lu.close()
            raise

    def attach(self, lun: int, lu: LogicalUnit) -> LogicalUnit:
        """Serve a LU built elsewhere (a custom device type or command table) at ``lun``."""
        try:
            self.luns.add(lun, lu)
        except ValueError as e:
            raise LuSpecError(str(e)) from None
        if self.log is not None:      # logouts and lost connections, for assert_synced
            lu.forget_hooks.append(lambda nexus, lun=lun: self.log.nexus_lost(nexus, lun))
        if not self.power_on_ua:
            lu.ua.first_contact(self.nexus)
            lu.ua.pop(self.nexus)
        return lu

    def add_disk(self, lun: int | None = None, **options) -> LogicalUnit:
        return self.add_lu("disk", lun, **options)

    def lu(self, lun: int = 0) -> LogicalUnit:
        return self.luns.luns[lun]

    # ----------------------------------------------------------- commands
    def submit(self, cdb, *, lun: int = 0, data_out=None, read_length: int | None = None,
               nexus: Nexus | None = None, direction: Direction | None = None) -> Result:
        """Run one CDB through the LUN map (the path every iSCSI command takes).

        The data direction follows from ``data_out`` / ``read_length`` unless
        ``direction`` says otherwise (to send a command with the wrong one)."""
        if data_out is not None:
            guess, edtl = Direction.OUT, len(data_out)
        elif read_length:
            guess, edtl = Direction.IN, read_length
        else:
            guess, edtl = Direction.NONE, 0
        direction = guess if direction is None else direction
        return Result(self.luns.execute(Command(
            cdb=bytes(cdb), lun=lun, data_out=data_out, expected_length=edtl,
            direction=direction, nexus=nexus or self.nexus)))

    def clear_unit_attentions(self, lun: int = 0, nexus: Nexus | None = None) -> None:
        for _ in range(20):
            if self.submit(b"\0" * 6, lun=lun, nexus=nexus).ok:
                return
        raise AssertionError("unit attentions never cleared")

    def read(self, lba: int, blocks: int, *, lun: int = 0) -> bytes:
        bs = self.lu(lun).block_size
        r = self.submit(bytes([0x88, 0]) + lba.to_bytes(8, "big") + blocks.to_bytes(4, "big")
                        + b"\0\0", lun=lun, read_length=blocks * bs)
        if not r.ok:
            raise AssertionError(f"READ(16) LBA {lba} x{blocks}: {r}")
        return r.data

    def write(self, lba: int, data, *, lun: int = 0) -> Result:
        bs = self.lu(lun).block_size
        blocks = len(data) // bs
        return self.submit(bytes([0x2A, 0]) + lba.to_bytes(4, "big") + b"\0"
                           + blocks.to_bytes(2, "big") + b"\0", lun=lun, data_out=data)

    def sync(self, *, lun: int = 0) -> Result:
        return self.submit(bytes([0x35]) + bytes(9), lun=lun)

    # ------------------------------------------------------------ serving
    def target_def(self):
        from ..target.registry import Chap, TargetDef
        return TargetDef(self.name, self.luns, chap=Chap(*self.chap) if self.chap else None,
                         mutual_chap=Chap(*self.mutual_chap) if self.mutual_chap else None,
                         login_check=self.faults.login_check,
                         transport_faults=self.faults.connection)

    def registry(self, host: str = "127.0.0.1", port: int = 0):
        from ..target.registry import Portal, TargetRegistry
        reg = TargetRegistry(portals=[Portal(host, port)])
        reg.add(self.target_def())
        return reg

    def serve(self, *, host: str = "127.0.0.1", port: int = 0, **server_options) -> "ThreadedServer":
        """Serve in a background thread; use as a context manager or call start()/stop()."""
        return ThreadedServer(self, host=host, port=port, **server_options)

    def serving(self, *, host: str = "127.0.0.1", port: int = 0, **server_options) -> "AsyncServer":
        """``async with target.serving() as s:`` on the running event loop."""
        return AsyncServer(self, host=host, port=port, **server_options)

    def close(self) -> None:
        self.luns.close()

    def __enter__(self) -> "InProcessTarget":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Served:
    """What a served target tells its clients: host, port, URLs and credentials."""

    target: InProcessTarget
    host: str
    port: int

    @property
    def chap(self) -> tuple[str, str] | None:
        return self.target.chap

    def url(self, lun: int = 0, *, credentials: bool = True) -> str:
        """``iscsi://[user%secret@]host:port/iqn/lun`` (the libiscsi/qemu syntax)."""
        cred = f"{self.chap[0]}%{self.chap[1]}@" if self.chap and credentials else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"iscsi://{cred}{host}:{self.port}/{self.target.name}/{lun}"

    @property
    def portal(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class AsyncServer(_Served):
    """Serves one target, and any added with :meth:`add` (one portal, several names)."""

    def __init__(self, target: InProcessTarget | None, *, host: str, port: int, **opts) -> None:
        self.target = target
        self.targets = [target] if target is not None else []
        self.host = host
        self.port = port
        self.options = opts
        self.server = None

    async def start(self) -> "AsyncServer":
        from ..target.server import IscsiServer
        from ..target.registry import Portal, TargetRegistry
        reg = TargetRegistry(portals=[Portal(self.host, self.port)])
        for t in self.targets:
            reg.add(t.target_def())
        self.server = IscsiServer(reg, **self.options)
        await self.server.start()
        self.host, self.port = self.server.bound_portals[0][:2]
        for t in self.targets:
            self._hook(t)
        return self

    def _hook(self, t: InProcessTarget) -> None:
        t.chain.delay_sink = getattr(self.server, "hold_output", None)
        t.chain.drop_sink = getattr(self.server, "drop_connection", None)

    def add(self, target: InProcessTarget) -> None:
        """Serve another target on the same portal (call on the server's loop)."""
        self.targets.append(target)
        if self.server is not None:
            self.server.registry.add(target.target_def())
            self._hook(target)

    async def stop(self) -> None:
        if self.server is not None:
            srv, self.server = self.server, None
            for t in self.targets:
                t.chain.delay_sink = t.chain.drop_sink = None
            # The server closes the registry's LUN maps; the target owns them.
            srv.registry.targets.clear()
            await srv.close()

    async def __aenter__(self) -> "AsyncServer":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()


class ThreadedServer(_Served):
    """An event loop in a daemon thread serving the target (for synchronous suites)."""

    def __init__(self, target: InProcessTarget | None, *, host: str = "127.0.0.1",
                 port: int = 0, **opts) -> None:
        self.target = target
        self.host = host
        self.port = port
        self._async = AsyncServer(target, host=host, port=port, **opts)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "ThreadedServer":
        if self._thread is not None:
            raise RuntimeError("already started")
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,),
                                        name="pyscsi-test-target", daemon=True)
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._async.start(), self.loop)
        try:
            fut.result(30)
        except BaseException:
            self._shutdown()
            raise
        self.host, self.port = self._async.host, self._async.port
        return self

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        started.set()
        self.loop.run_forever()

    @property
    def server(self):
        """The running IscsiServer (its options, e.g. nop_interval, may be changed)."""
        return self._async.server

    def add(self, target: InProcessTarget) -> None:
        """Serve another target on the same portal."""
        if self.loop is None:
            self._async.add(target)
        else:
            self.call(self._async.add, target)

    def call(self, fn, *args):
        """Run ``fn(*args)`` on the server's loop thread and return its result."""
        async def run():
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def stop(self) -> None:
        if self._thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._async.stop(), self.loop).result(30)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        loop, thread = self.loop, self._thread
        self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(30)
            if not thread.is_alive():
                loop.close()

    def __enter__(self) -> "ThreadedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
