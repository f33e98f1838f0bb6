"""Disk LUs over an asynchronous store (the way RBD LUNs run), without Ceph.

A memory store that completes submit_read/submit_write on its own threads,
later and out of order, is served over iSCSI: responses follow the store's
completions (Deferred), the worker lane runs every other command after the
in-flight I/O, errors completed asynchronously become the same sense data as
synchronous ones, and a connection lost with I/O in flight harms nothing.
"""
from __future__ import annotations

import asyncio
import os
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from scsi_target.initiator.client import IscsiClient
from scsi_target.scsi.command import Command, Deferred, Direction, Nexus, TaskAttr
from scsi_target.scsi.disk import DiskLU
from scsi_target.scsi.lun import LunMap
from scsi_target.scsi.sense import SenseKey
from scsi_target.target.registry import Portal, TargetDef, TargetRegistry
from scsi_target.target.server import IscsiServer
from volume.memstore import MemoryStore
from volume.store import StoreError, StoreFenced, StoreNoSpace, StoreTimeout

IQN = "iqn.2026-12.test:async"
BS = 512


class SlowAsyncStore(MemoryStore):
    """Completes each submitted I/O on a worker after ``delay(offset)`` seconds."""
    asynchronous = True

    def __init__(self, size: int, delay=lambda off: 0.0) -> None:
        super().__init__(size)
        self.delay = delay
        self.pool = ThreadPoolExecutor(16)
        self.fail_with: StoreError | None = None
        self.order: list[tuple[str, int]] = []    # completion order
        self.submitted = 0
        self._n = 0
        self._cond = threading.Condition()
        self.sync_calls = 0

    def _go(self, fn) -> None:
        with self._cond:
            self._n += 1
        self.submitted += 1

        def run():
            try:
                fn()
            finally:
                with self._cond:
                    self._n -= 1
                    self._cond.notify_all()
        self.pool.submit(run)

    def submit_read(self, offset, length, done) -> None:
        self._check(offset, length)

        def run():
            time.sleep(self.delay(offset))
            self.order.append(("r", offset))
            if self.fail_with is not None:
                done(None, self.fail_with)
            else:
                done(bytes(self._mv[offset:offset + length]), None)
        self._go(run)

    def submit_write(self, offset, data, done, fua=False) -> None:
        self._check(offset, len(data))
        data = bytes(data)

        def run():
            time.sleep(self.delay(offset))
            self.order.append(("w", offset))
            if self.fail_with is not None:
                done(self.fail_with)
                return
            MemoryStore.write(self, offset, data)
            done(None)
        self._go(run)

    def drain(self, timeout=None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._n == 0, timeout)

    @property
    def inflight(self) -> int:
        return self._n

    def readinto(self, offset, buf) -> None:
        self.sync_calls += 1
        super().readinto(offset, buf)

    def close(self) -> None:
        self.pool.shutdown()
        super().close()


class Served:
    def __init__(self, store) -> None:
        self.store = store
        self.luns = LunMap(IQN)
        self.lu = DiskLU(store, BS)
        self.luns.add(0, self.lu)
        reg = TargetRegistry(portals=[Portal("127.0.0.1", 0)])
        reg.add(TargetDef(IQN, self.luns))
        self.server = IscsiServer(reg)
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)
        self.url = f"iscsi://127.0.0.1:{self.server.bound_portals[0][1]}/{IQN}/0"

    def _run(self, ready) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.start())
        ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def served():
    # Later blocks complete sooner: completions come back in reverse order.
    s = Served(SlowAsyncStore(4 << 20, delay=lambda off: max(0.0, 0.2 - off / (4 << 20))))
    yield s
    s.stop()


def _rw10(op: int, lba: int, n: int) -> bytes:
    return struct.pack(">BBIBHB", op, 0, lba, 0, n, 0)


def _run(coro):
    return asyncio.run(coro)


async def _write_all_then_read(url: str, blocks: list[bytes]) -> list[bytes]:
    """Every block written at once (8 blocks of BS each), then every block read at once."""
    c = await IscsiClient.connect(url)
    try:
        await c.execute(bytes(6))                  # power-on unit attention
        hs = [await c.submit(_rw10(0x2A, 8 * i, 8), data_out=b) for i, b in enumerate(blocks)]
        res = [await h.result() for h in hs]
        assert all(r.good for r in res), res
        hs = [await c.submit(_rw10(0x28, 8 * i, 8), read_length=8 * BS)
              for i in range(len(blocks))]
        return [bytes((await h.result()).data) for h in hs]
    finally:
        await c.close()


def test_concurrent_plain_io_completes_out_of_order_and_correctly(served):
    blocks = [os.urandom(8 * BS) for _ in range(32)]

    assert _run(_write_all_then_read(served.url, blocks)) == blocks
    writes = [off for kind, off in served.store.order if kind == "w"]
    assert writes != sorted(writes)                  # really completed out of order
    assert served.store.submitted == 64 and served.store.sync_calls == 0


def test_lane_commands_run_after_the_io_in_flight(served):
    data = os.urandom(64 * BS)

    async def main():
        c = await IscsiClient.connect(served.url)
        try:
            await c.execute(bytes(6))
            hs = [await c.submit(_rw10(0x2A, 8 * i, 8), data_out=data[i * 8 * BS:(i + 1) * 8 * BS])
                  for i in range(8)]
            # READ(12) is not on the fast path: the lane waits for the writes first.
            h12 = await c.submit(struct.pack(">BBIIBB", 0xA8, 0, 0, 64, 0, 0),
                                 read_length=64 * BS)
            sync = await c.submit(bytes([0x35] + [0] * 9))
            got = await h12.result()
            writes = [await h.result() for h in hs]
            assert all(w.good for w in writes) and (await sync.result()).good
            return bytes(got.data)
        finally:
            await c.close()
    assert _run(main()) == data


@pytest.mark.parametrize("error, sense", [
    (StoreTimeout("t"), (SenseKey.ABORTED_COMMAND, 0x08, 0x01)),
    (StoreNoSpace("n"), (SenseKey.DATA_PROTECT, 0x27, 0x07)),
    (StoreFenced("f"), (SenseKey.NOT_READY, 0x04, 0x0C)),
    (StoreError("e"), (SenseKey.MEDIUM_ERROR, 0x0C, 0x00)),
])
def test_errors_completed_later_become_sense(served, error, sense):
    served.store.fail_with = error

    async def main():
        c = await IscsiClient.connect(served.url)
        try:
            await c.execute(bytes(6))
            w = await c.execute(_rw10(0x2A, 0, 1), data_out=bytes(BS))
            r = await c.execute(_rw10(0x28, 0, 1), read_length=BS)
            return w, r
        finally:
            await c.close()
    w, r = _run(main())
    assert (w.sense_key, w.asc, w.ascq) == sense
    read_sense = sense if error.__class__ is not StoreError else (SenseKey.MEDIUM_ERROR, 0x11, 0)
    assert (r.sense_key, r.asc, r.ascq) == read_sense


def test_connection_lost_with_io_in_flight_harms_nothing(served):
    served.store.delay = lambda off: 0.5

    async def drop():
        c = await IscsiClient.connect(served.url)
        await c.execute(bytes(6))
        for i in range(8):
            await c.submit(_rw10(0x28, i, 1), read_length=BS)
        c._drop(c._proto)              # the socket goes away under eight reads in flight
        await c.close()

    async def again():
        c = await IscsiClient.connect(served.url)
        try:
            await c.execute(bytes(6))
            return (await c.execute(_rw10(0x28, 0, 1), read_length=BS)).good
        finally:
            await c.close()
    _run(drop())
    assert served.store.drain(5)
    served.store.delay = lambda off: 0.0
    assert _run(again())


def test_in_process_callers_get_a_finished_response():
    store = SlowAsyncStore(1 << 20, delay=lambda off: 0.05)
    lu = DiskLU(store, BS)
    luns = LunMap(IQN)
    luns.add(0, lu)
    nexus = Nexus("in-process")
    luns.execute(Command(bytes(6), nexus=nexus))          # unit attention
    w = luns.execute(Command(_rw10(0x2A, 3, 1), data_out=b"\x07" * BS,
                             expected_length=BS, direction=Direction.OUT, nexus=nexus))
    assert w.ok and not isinstance(w, Deferred)
    r = luns.execute(Command(_rw10(0x28, 3, 1), expected_length=BS, direction=Direction.IN,
                             nexus=nexus))
    assert r.ok and bytes(r.data_in) == b"\x07" * BS
    # A deferring front end gets the Deferred; ORDERED tasks take the lane.
    d = luns.execute(Command(_rw10(0x28, 3, 1), expected_length=BS, direction=Direction.IN,
                             nexus=nexus, may_defer=True))
    o = luns.execute(Command(_rw10(0x28, 3, 1), expected_length=BS, direction=Direction.IN,
                             nexus=nexus, task_attr=TaskAttr.ORDERED, may_defer=True))
    assert isinstance(d, Deferred) and isinstance(o, Deferred)
    assert bytes(d.wait().data_in) == bytes(o.wait().data_in) == b"\x07" * BS
    assert store.sync_calls == 1                           # the ORDERED one, on the lane
    luns.close()


@pytest.mark.parametrize("function", ["abort_task", "lun_reset"])
def test_task_management_waits_for_commands_on_the_store(served, function):
    """An aborted command in flight on the store gets no response; the TMF answers
    only once it has ended (its ITT is then free for reuse)."""
    from scsi_target.initiator.errors import TaskAborted
    from scsi_target.protocol.pdu import TmfResponse
    served.store.delay = lambda off: 0.6

    async def main():
        c = await IscsiClient.connect(served.url)
        try:
            await c.execute(bytes(6))
            h = await c.submit(_rw10(0x28, 0, 1), read_length=BS)
            await asyncio.sleep(0.1)
            t0 = time.monotonic()
            if function == "abort_task":
                answer = await c.abort_task(h)
            else:
                answer = await c.lun_reset()
            took = time.monotonic() - t0
            with pytest.raises(TaskAborted):
                await h.result()
            served.store.delay = lambda off: 0.0
            after = [await c.execute(bytes(6)) for _ in range(2)]   # a reset's UA, then GOOD
            return answer, took, after
        finally:
            await c.close()
    answer, took, after = _run(main())
    assert answer == TmfResponse.COMPLETE and took >= 0.3
    assert after[-1].good


def test_command_log_and_faults_keep_commands_deferred(served):
    """With the interceptors installed, plain I/O still goes to the store
    asynchronously (completions out of order, no synchronous store call, the
    loop never blocked); each answer is logged and rewritten on completion."""
    from scsi_target.interceptors import chain
    from scsi_target.interceptors.cmdlog import CommandLog
    from scsi_target.interceptors.faults import FaultInjector, FaultRule
    clog = CommandLog()
    faults = FaultInjector([FaultRule.make("corrupt_read", lba=[8 * 5, 8 * 6], bits=1,
                                           times="sticky")])
    chain.install(served.luns, cmdlog=clog, faults=faults)
    blocks = [os.urandom(8 * BS) for _ in range(32)]

    got = _run(_write_all_then_read(served.url, blocks))
    writes = [off for kind, off in served.store.order if kind == "w"]
    assert writes != sorted(writes)                   # still completed out of order
    assert served.store.submitted == 64 and served.store.sync_calls == 0
    assert [i for i in range(32) if got[i] != blocks[i]] == [5]     # the faulted read only
    diff = int.from_bytes(got[5], "big") ^ int.from_bytes(blocks[5], "big")
    assert bin(diff).count("1") == 1                  # one bit flipped, after completion
    recs = [r for r in clog.records if r.opcode in (0x28, 0x2A)]
    assert len(recs) == 64 and all(r.status == 0 for r in recs)
    assert [r.fault for r in recs if r.fault] == ["corrupt_read"]
    # Latency is measured to the store's completion, not to the submission.
    assert max(r.latency for r in recs) >= 0.1
