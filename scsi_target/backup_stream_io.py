"""Backup and restore streams as byte ranges: what the patent's pseudo device
(and the local ``diffbackup``) read and write.  No SCSI here.

:class:`BackupReader` serves a stream produced by ``StreamEncoder`` at byte
offsets.  Readers such as ``qemu-img convert`` keep several reads in flight,
so bytes are kept in a window (chunks are dropped once they were read and are
more than ``WINDOW`` bytes behind the newest byte produced); a read may not
start more than ``MAX_AHEAD`` bytes past what was produced (bounded memory).
The stream is *complete* once every byte of it was read at least once.

:class:`RestoreWriter` takes stream bytes at offsets (in order, or out of
order within ``MAX_REORDER`` bytes) and applies the records to a tracked
volume as they verify: the same rules as ``volume.backup.restore`` for one
stream of a chain (header checks, chain check against the map, record
checksums, newer-than-the-map, skip generations), plus the chain state kept
between streams: blocks whose newest copy was damaged and not yet replaced.
"""
from __future__ import annotations

import bisect
import collections
import threading
from dataclasses import dataclass, field

from volume.genmap import BackupPlan
from volume.pitcut import CutLost, open_cut
from volume.restore import ChainState, RestoreRejected as VRestoreRejected, StreamCheck, \
    StreamRestorer
from volume.stream import (HEADER_SIZE, RECORD_HEADER_SIZE, TRAILER_SIZE, StreamEncoder,
                           StreamError, StreamHeader)

from .interceptors.tracker import TrackingStore

__all__ = ["BackupReader", "RestoreWriter", "StreamGone", "StreamOrderError", "RestoreRejected",
           "RestoreResult", "capacity_bound", "begin_backup", "BackupRefused"]

CHUNK = 4 << 20


class StreamGone(Exception):
    """A read asked for stream bytes no longer kept (before the window)."""


class StreamOrderError(Exception):
    """A read or write too far ahead of the stream position."""


class RestoreRejected(Exception):
    """The stream cannot be applied at all (header, identity, chain); nothing was written."""


class BackupRefused(Exception):
    """A backup cannot start now (no full backup yet, scope out of range, ...)."""


def capacity_bound(volume_size: int, granularity: int) -> int:
    """Bytes no stream of this volume can exceed: one record per block, every block raw."""
    entries = -(-volume_size // granularity)
    return HEADER_SIZE + TRAILER_SIZE + entries * RECORD_HEADER_SIZE + volume_size


def begin_backup(vol: TrackingStore, *, full: bool, scope: int) -> tuple[BackupPlan, dict]:
    """Start a backup on ``vol`` (advances the generation); returns the plan and the
    ``active`` record to keep in the volume's state until the stream is read to its end.

    A differential widens its scope down to the oldest generation of an
    abandoned differential stream (``state.pending_lo``) so no block is lost.
    """
    with vol.lock:
        gmap = vol.map
        st = vol.state
        if st.active:              # the previous stream was abandoned
            st.settle_abandoned()
        if full:
            plan = gmap.begin_full()
            active = {"full": True, "lo": 0, "hi": 0}
        else:
            if not st.full_done:
                raise BackupRefused("no full backup of this volume was completed since tracking "
                                    "began: take a full backup first")
            cur = gmap.current_generation
            if not 1 <= scope <= cur:
                raise BackupRefused(f"scope {scope} outside 1..{cur} (current generation {cur})")
            eff = scope
            if st.pending_lo is not None and st.pending_lo < cur - scope + 1:
                eff = cur - st.pending_lo + 1
            plan = gmap.begin_differential(eff)
            lo, hi = plan.generation_range
            active = {"full": False, "lo": lo, "hi": hi}
        st.active = active
        vol.save_state()
        return plan, active


def finish_backup(vol: TrackingStore, active: dict) -> None:
    """The stream started with ``active`` was read to its end."""
    with vol.lock:
        st = vol.state
        if active.get("full"):
            st.full_done = True
            st.pending_lo = None
        elif st.pending_lo is not None and active["lo"] <= st.pending_lo:
            st.pending_lo = None
        if st.active is active or st.active == active:
            st.active = None
        vol.save_state()


class _Coverage:
    """Which byte ranges of [0, total) were read: a contiguous prefix plus sorted extras."""

    def __init__(self) -> None:
        self.prefix = 0
        self._starts: list[int] = []
        self._ends: list[int] = []

    def add(self, a: int, b: int) -> None:
        if b <= self.prefix:
            return
        if a <= self.prefix:
            self.prefix = b
        else:
            i = bisect.bisect_left(self._starts, a)
            self._starts.insert(i, a)
            self._ends.insert(i, b)
        while self._starts and self._starts[0] <= self.prefix:
            self.prefix = max(self.prefix, self._ends[0])
            del self._starts[0], self._ends[0]


class BackupReader:
    WINDOW = 64 << 20
    MAX_AHEAD = 256 << 20

    def __init__(self, vol: TrackingStore, plan: BackupPlan, active: dict, *,
                 compress: bool = False) -> None:
        self.vol = vol
        self.active = active
        # The cut is frozen here, right after the plan was made: the encoder
        # reads the volume as it was at this instant (volume/pitcut.py).
        self.cut = open_cut(vol, plan)
        self.enc = StreamEncoder(self.cut.view, plan, compress=compress)
        self.header: StreamHeader = self.enc.header
        self._chunks: collections.deque[tuple[int, memoryview]] = collections.deque()
        self.produced = 0
        self.total: int | None = None       # known once the encoder finished
        self.cov = _Coverage()
        self.complete = False
        self.lock = threading.Lock()

    @property
    def size_bound(self) -> int:
        return self.enc.size_bound

    def _produce(self, upto: int) -> None:
        while self.total is None and self.produced < upto:
            buf = bytearray(max(CHUNK, min(upto - self.produced, 64 << 20)))
            k = self.enc.readinto(buf)
            if k == 0 or self.enc.finished:
                if k:
                    self._chunks.append((self.produced, memoryview(buf)[:k]))
                    self.produced += k
                self.total = self.produced
                break
            self._chunks.append((self.produced, memoryview(buf)[:k]))
            self.produced += k

    def readinto(self, offset: int, mv: memoryview) -> None:
        """Stream bytes at ``offset``; zeros past the end of the stream."""
        n = len(mv)
        end = offset + n
        with self.lock:
            self.cut.check()            # CutLost: the stream can no longer be the cut
            if self.total is None and end > self.produced + self.MAX_AHEAD and \
                    offset < self.enc.size_bound:
                raise StreamOrderError(f"read at stream byte {offset} is more than "
                                       f"{self.MAX_AHEAD} bytes ahead of the stream position "
                                       f"{self.produced}: read the stream sequentially")
            self._produce(end)
            lowest = self._chunks[0][0] if self._chunks else self.produced
            if offset < lowest and offset < self.produced:
                raise StreamGone(f"stream bytes from {offset} were already read and dropped "
                                 f"(kept from {lowest}); start the backup again")
            for start, chunk in self._chunks:
                cend = start + len(chunk)
                if cend <= offset:
                    continue
                if start >= end:
                    break
                a = max(start, offset)
                b = min(cend, end)
                mv[a - offset:b - offset] = chunk[a - start:b - start]
            avail = min(end, self.produced)
            if avail < end:
                mv[max(0, avail - offset):] = bytes(end - max(avail, offset))
            self.cov.add(offset, min(end, self.produced) if self.total is None else end)
            self._trim()
            if self.total is not None and not self.complete and self.cov.prefix >= self.total:
                self.complete = True
                finish_backup(self.vol, self.active)

    def _trim(self) -> None:
        keep_from = min(self.cov.prefix, self.produced - self.WINDOW)
        while self._chunks:
            start, chunk = self._chunks[0]
            if start + len(chunk) <= keep_from:
                self._chunks.popleft()
            else:
                break


@dataclass
class RestoreResult:
    """One restore stream's outcome (``unrecovered`` describes the chain so far)."""
    state: str = "idle"                 # idle | running | done | rejected | abandoned
    header: StreamHeader | None = None
    check: StreamCheck | None = None
    errors: list[str] = field(default_factory=list)
    unrecovered: list[tuple[int, int]] = field(default_factory=list)   # block extents
    bytes: int = 0

    @property
    def bad_records(self) -> list:
        return list(self.check.damage) if self.check else []


class RestoreWriter:
    """Stream bytes at offsets -> ``volume.restore.StreamRestorer`` on a tracked volume.

    A full stream is restored around the tracker (the map is reset to that
    backup's generation 0; the target first takes the backed-up volume's
    identity if it differs); a differential one through it (mark, write, then
    the restored generation is set), so a crash mid-record is a false positive.
    ``previous``: the ChainState of the stream restored before (damaged blocks
    a later stream may still replace).
    """
    MAX_REORDER = 64 << 20

    def __init__(self, vol: TrackingStore, *, skip_generations=(), name: str = "stream",
                 previous: ChainState | None = None) -> None:
        self.vol = vol
        self.name = name
        self.pos = 0
        self._pending: dict[int, bytes] = {}
        self._pending_bytes = 0
        self.result = RestoreResult("running")
        self.chain: ChainState | None = previous
        self._full = False
        self.finished = False
        self._skip = list(skip_generations)
        self._head = bytearray()
        self.r: StreamRestorer | None = None     # made once the header is in

    def _make_restorer(self, head: bytes) -> None:
        # A full stream starts a new chain: the previous streams' state is dropped.
        prev = self.chain
        try:
            if StreamHeader.unpack(head[:HEADER_SIZE]).full:
                prev = None
        except StreamError:
            pass                             # the restorer rejects it with the reason
        self.r = StreamRestorer(self.vol, self.vol.map, skip_generations=self._skip,
                                expect_previous=prev, name=self.name,
                                prepare_full=self._prepare_full)
        self.result.check = self.r.check

    def _prepare_full(self, h: StreamHeader):
        vol = self.vol
        if h.volume_size != vol.size:
            return vol, vol.map             # refused by the restorer's checks, nothing changed
        if vol.cow is not None:         # the full restore writes around the tracker
            vol.cow.lose(CutLost("a full restore replaced the volume's contents"))
        if h.volume_id != vol.map.volume_id or h.block_size != vol.map.granularity:
            vol.reidentify(h.volume_id, h.block_size)
        with vol.lock:
            vol.state.full_done = False     # true again once the whole stream applied
            vol.state.pending_lo = None
            vol.state.active = None
            vol.save_state()
        self._full = True
        return vol.inner, vol.map

    # -- byte intake ----------------------------------------------------------
    def write(self, offset: int, data) -> None:
        if self.finished:
            return
        if offset < self.pos:
            skip = self.pos - offset        # a resend: only what lies past the position counts
            if skip >= len(data):
                return
            data, offset = memoryview(data)[skip:], self.pos
        if offset > self.pos:
            if self._pending_bytes + len(data) > self.MAX_REORDER or \
                    offset - self.pos > self.MAX_REORDER:
                raise StreamOrderError(f"write at stream byte {offset} is too far ahead of the "
                                       f"restore position {self.pos}: write the stream in order")
            self._pending[offset] = bytes(data)
            self._pending_bytes += len(data)
            return
        self._feed(data)
        while self._pending and not self.finished:
            nxt = min(self._pending)
            if nxt > self.pos:
                break
            chunk = self._pending.pop(nxt)
            self._pending_bytes -= len(chunk)
            if nxt + len(chunk) > self.pos:
                self._feed(memoryview(chunk)[self.pos - nxt:])

    def _feed(self, data) -> None:
        self.pos += len(data)
        self.result.bytes = self.pos
        if self.r is None:
            self._head += data
            if len(self._head) < HEADER_SIZE:
                return
            data = bytes(self._head)
            self._head = bytearray()
            self._make_restorer(data)
        try:
            self.r.feed(data)
        except VRestoreRejected as exc:
            self.finished = True
            self.result.state = "rejected"
            self.result.header = self.r.check.header
            self.result.errors = list(exc.errors)
            raise RestoreRejected(str(exc)) from None
        self.result.header = self.r.header
        if self.r.complete:
            self._finish("done")

    def _finish(self, state: str) -> None:
        self.finished = True
        rep = self.r.finish()
        if rep.chain is not None:
            self.chain = rep.chain
        if self._full and state == "done" and not rep.errors:
            with self.vol.lock:
                self.vol.state.full_done = True
                self.vol.save_state()
        self.result.unrecovered = list(extents_union(rep.unrecovered, rep.uncertain))
        self.result.errors = list(rep.errors)
        self.result.state = state

    def abandon(self) -> None:
        """The writer stopped before the trailer (a new restore began, the LU closed, EOF)."""
        if self.finished:
            return
        if self.r is None:
            self._make_restorer(bytes(self._head))
        started = self.r.header is not None
        self._finish("abandoned")
        if started and not any("truncated" in e for e in self.r.check.errors):
            self.result.errors.append(f"stream truncated at byte {self.pos}: no trailer")


def extents_union(a: list[tuple[int, int]], b: list[tuple[int, int]]):
    return sorted(a + b)
