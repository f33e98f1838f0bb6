"""The zero-copy hazard over iSCSI (volume/lending.py): a full backup whose
client stops reading, so Data-In PDUs whose data are loans of the volume's map
queue unsent on the target, while another session WRITEs, WRITE SAMEs and
UNMAPs blocks already encoded but not sent -- and, once the whole stream was
served (the cut committed) but not sent, the volume grows.  When the client
reads again, the stream decodes with every CRC good (data digests on) and
restores to exactly the volume as it was at the cut, and the writes are in
the volume.

The client stalls for real: its event loop is blocked, so it stops reading
its socket and the target's sends fill the kernel buffers, then its queue.
(The target first holds its output a moment -- its hold_output testing hook --
so that every READ the client started reaches it before the client stalls.)
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
import time

import pytest

from scsi_target import config as C
from scsi_target.initiator.sync import SyncIscsiClient
from scsi_target.scsi.layouts import backup as L
from scsi_target.scsi.layouts.cdbs import read16, write16
from scsi_target.target.server import IscsiServer
from volume.filestore import FileStore
from volume.lending import LoanSlice
from volume.session import LEND_MAX
from volume.stream import StreamDecoder

MiB = 1 << 20
BS = 4096                      # the map's granularity: record data are whole blocks


class Served:
    """The registry of a tracked disk (LUN 0) and its backup device (LUN 1),
    served by an IscsiServer on an event loop of its own thread."""

    def __init__(self, path, send_bound: int | None = None) -> None:
        cfg = C.from_flags(listen=["127.0.0.1:0"], disks=[str(path)], backup_device=True)
        self.reg = C.build_registry(cfg)
        luns = self.reg.targets[C.DEFAULT_IQN].luns
        self.disk, self.dev = luns.luns[0], luns.luns[1]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = IscsiServer(self.reg, send_queue_bound=send_bound)
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)
        host, port = self.server.bound_portals[0][:2]
        self.base = f"iscsi://{host}:{port}/{C.DEFAULT_IQN}"

    def url(self, lun: int, digests: bool = True) -> str:
        d = "crc32c" if digests else "none"
        q = f"?header_digest={d}&data_digest={d}"
        return f"{self.base}/{lun}{q}"

    def on_loop(self, fn):
        """``fn()`` run on the target's loop (where its LUs run), its result here."""
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def run():
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)
        self.loop.call_soon_threadsafe(run)
        return fut.result(30)

    def unsent_loans(self) -> tuple[int, int]:
        """(loan slices, bytes queued) over the connections' send queues."""
        def count():
            n = b = 0
            for d in self.server._drivers:
                n += sum(1 for x in d.pending if type(x) is LoanSlice)
                b += d.pending_bytes
            return n, b
        return self.on_loop(count)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.reg.close()


class Stall:
    """Blocks a SyncIscsiClient's event loop: it stops reading its socket."""

    def __init__(self, client: SyncIscsiClient) -> None:
        self.gate = threading.Event()
        client._lt.loop.call_soon_threadsafe(self.gate.wait)

    def release(self) -> None:
        self.gate.set()


def _unmap(lba: int, blocks: int) -> tuple[bytes, bytes]:
    cdb = bytes([0x42, 0, 0, 0, 0, 0, 0]) + (24).to_bytes(2, "big") + b"\0"
    param = (22).to_bytes(2, "big") + (16).to_bytes(2, "big") + bytes(4) + \
        lba.to_bytes(8, "big") + blocks.to_bytes(4, "big") + bytes(4)
    return cdb, param


def _write_same16(lba: int, blocks: int) -> bytes:
    return bytes([0x93, 0]) + lba.to_bytes(8, "big") + blocks.to_bytes(4, "big") + bytes(2)


def _start_full(c: SyncIscsiClient) -> None:
    c.test_unit_ready()                     # the power-on unit attention
    assert c.execute(L.cdb(L.OP_SELECT_BACKUP, flags=L.FLAG_FULL), lun=1).good
    assert c.execute(L.cdb(L.OP_START_BACKUP, length=80), read_length=80, lun=1).good


def _read_stalled(served: Served, reads: SyncIscsiClient, r, ready) -> tuple[list, Stall]:
    """Every READ of the stream started; the client stalled once ``ready()`` (the
    target has taken the READs it will take), then the target's output flows
    into the stalled socket until its queue holds lent data unsent."""
    served.on_loop(lambda: served.server.hold_output(r.owner, 3.0))
    cap = served.dev.medium.size
    ranges = [(off, min(LEND_MAX, cap - off)) for off in range(0, r.size_bound, LEND_MAX)]
    futs = [reads.start(read16(off // 512, n // 512), read_length=n, lun=1) for off, n in ranges]
    deadline = time.monotonic() + 2.5
    while not ready():
        assert time.monotonic() < deadline, "the target did not take the READs in time"
        time.sleep(0.02)
    return futs, Stall(reads)


def _wait_stable(served: Served, reader, at_least: int) -> tuple[int, int]:
    """Until the stalled stream stops moving; (loan slices, bytes) queued unsent."""
    last = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = (reader.produced,) + served.unsent_loans()
        if now == last and now[2] >= at_least:
            return now[1], now[2]
        last = now
    raise AssertionError(f"the stalled stream never settled: {last}")


def _decoded_image(stream: bytes, size: int) -> bytes:
    dec = StreamDecoder()
    items = dec.feed(stream)
    end = dec.finish()
    assert end.complete and end.damaged == 0 and not end.errors, (end.errors, end.damaged)
    img = bytearray(size)
    for it in items:
        assert it.__class__.__name__ == "Record", it
        if it.data is not None:
            img[it.first_block * BS:it.first_block * BS + len(it.data)] = it.data
    return bytes(img)


def _volume(path, size: int, seed: int) -> bytes:
    img = random.Random(seed).randbytes(size)
    path.write_bytes(img)
    return img


@pytest.fixture
def shm(shm_dir):
    return shm_dir


def _loan_count(served: Served) -> int:
    return served.on_loop(lambda: len(served.disk.store.inner._loans))


def _resumed(stall, reads, futs) -> bytes:
    """Let the stalled client read again; the data of its READs, in order."""
    stall.release()
    out = bytearray()
    for f in futs:
        res = reads.result(f)
        assert res.good, res
        out += res.data
    return bytes(out)


@pytest.mark.parametrize("digests", [True, False], ids=["digests", "no-digests"])
def test_writes_and_unmaps_over_unsent_lent_data_leave_the_stream_at_its_cut(shm, digests):
    size = 40 * MiB + 3 * 512                  # the last map block is partial
    path = shm / "v.img"
    cut_image = _volume(path, size, 1)
    served = Served(path)
    try:
        inner = served.disk.store.inner
        assert isinstance(inner, FileStore) and inner.lends_views
        reads = SyncIscsiClient(served.url(1, digests))
        writer = SyncIscsiClient(served.url(0))
        writer.test_unit_ready()
        _start_full(reads)
        r = served.dev.medium.sessions.reader
        # The target stops taking READs once 8 MiB wait unsent (SEND_QUEUE_BOUND).
        futs, stall = _read_stalled(served, reads, r, lambda: r.produced >= 8 * MiB)
        loans, queued = _wait_stable(served, r, 4 * MiB)
        assert loans > 0, "no lent data queued unsent: the hazard was not set up"
        assert r.total is None                 # the stream is still open
        cursor = r.pit.cursor                  # blocks encoded so far
        # Blocks just below the cursor are encoded, lent and not sent (the queue
        # holds > 4 MiB of the stream's end); writes there change the map under
        # the loans.  Blocks above it are preserved by the cut as usual.
        rnd = random.Random(2)
        expect = bytearray(cut_image)
        lo = cursor - (4 * MiB) // BS
        for _ in range(40):
            b = rnd.randrange(lo, cursor - 4)
            n = rnd.randrange(1, 4)
            data = rnd.randbytes(n * BS)
            assert writer.execute(write16(b * 8, n * 8), data_out=data).good
            expect[b * BS:(b + n) * BS] = data
        b = lo + 100
        cdb, param = _unmap(b * 8, 64 * 8)
        res = writer.execute(cdb, data_out=param)
        assert res.good, res
        expect[b * BS:(b + 64) * BS] = bytes(64 * BS)
        b = lo + 300
        block = rnd.randbytes(512)
        assert writer.execute(_write_same16(b * 8, 16 * 8), data_out=block).good
        expect[b * BS:(b + 16) * BS] = block * (16 * 8)
        for b in rnd.sample(range(cursor, size // BS - 1), 20):    # not encoded yet
            data = rnd.randbytes(BS)
            assert writer.execute(write16(b * 8, 8), data_out=data).good
            expect[b * BS:(b + 1) * BS] = data
        assert _loan_count(served) == 0         # every queued loan became a copy
        out = _resumed(stall, reads, futs)
        assert r.complete
        got = _decoded_image(out[:r.total], size)
        assert got == cut_image                # the point-in-time image, byte for byte
        assert path.read_bytes() == bytes(expect)       # and the writes are in the volume
        reads.close()
        writer.close()
    finally:
        served.close()


def test_a_growth_while_the_served_stream_is_unsent_keeps_its_bytes(shm):
    """The whole stream is served (the cut commits) into the stalled client's
    queue; then the volume is written and grows (the map is replaced)."""
    size = 24 * MiB + 5 * 512
    path = shm / "v.img"
    cut_image = _volume(path, size, 3)
    served = Served(path, send_bound=256 * MiB)
    try:
        reads = SyncIscsiClient(served.url(1))
        writer = SyncIscsiClient(served.url(0), timeout=30)
        writer.test_unit_ready()
        _start_full(reads)
        r = served.dev.medium.sessions.reader
        futs, stall = _read_stalled(served, reads, r, lambda: r.complete)
        loans, queued = _wait_stable(served, r, 4 * MiB)
        assert r.complete and loans > 0, (r.complete, loans)
        rnd = random.Random(4)
        expect = bytearray(cut_image)
        for b in rnd.sample(range(size // BS - 1), 200):
            data = rnd.randbytes(BS)
            assert writer.execute(write16(b * 8, 8), data_out=data).good
            expect[b * BS:(b + 1) * BS] = data
        served.on_loop(lambda: served.disk.store.grow(size + 8 * MiB))
        expect += bytes(8 * MiB)
        assert _loan_count(served) == 0
        out = _resumed(stall, reads, futs)
        assert _decoded_image(out[:r.total], size) == cut_image
        assert path.read_bytes() == bytes(expect)
        reads.close()
        writer.close()
    finally:
        served.close()
