"""The one backup/restore session state machine of a tracked volume, and the
stream byte-range I/O the pseudo device and the local ``diffbackup`` share.

States of a volume's :class:`VolumeSessions` (docs/backup-stream-format.md,
"Sessions"):

    idle ──start_backup──▶ backup open ──stream read to its end──▶ idle (cut committed)
      ▲                        │ abandon / new start / restore / owner gone / close
      │                        ▼
      └──────────────── idle (cut abandoned: the map is as if no backup began)
    idle ──start_restore──▶ restore open ──trailer──▶ idle (restore mark settled)
                               │ abandon / new start / backup / owner gone / close
                               ▼
                            idle (the volume stays marked incomplete, durably)

Two-phase rules (issue 8, item 2):

* A backup changes the map's persistent state (generation advance or reset,
  ``full_done``) only when every byte of its stream was read: until then the
  map only holds a pending :class:`~volume.genmap.Cut`.
* A restore stores a :class:`~volume.tracked.RestoreMark` in the sidecar
  before it writes the first block (a full stream: every block unrecovered)
  and settles it when the stream ends: the blocks still unrecovered, or none.
  A later restore of another stream onto an interrupted one is refused; a
  differential restore onto a volume with unrecovered blocks replaces what it
  can and reports the rest; a differential *backup* of an incomplete volume
  is refused.

Byte ranges: :class:`BackupReader` serves a stream at offsets (readers such
as ``qemu-img convert`` keep several reads in flight); :class:`RestoreWriter`
takes stream bytes at offsets, in order or within ``MAX_REORDER``.
:meth:`VolumeSessions.read` adds the pseudo device's probe-proof rules.
Errors are typed (:class:`VolumeError` subclasses carrying the stream byte
offset); front ends map them to their own answers in one place.
"""
from __future__ import annotations

import bisect
import collections
import threading
from dataclasses import dataclass, field

from bitarray import bitarray

from . import blockcrc
from .genmap import Cut, MapError
from .lending import Gather
from .pitcut import CutLost, PreservationExhausted, open_cut
from .restore import ChainState, RestoreRejected as _Rejected, StreamCheck, StreamRestorer
from .restore import chain_problems as _chain_problems
from .store import StoreError
from .stream import (HEADER_SIZE, RECORD_HEADER_SIZE, TRAILER_SIZE, StreamEncoder, StreamError,
                     StreamHeader)
from .tracked import RestoreMark, TrackingError, TrackingStore

__all__ = ["VolumeSessions", "BackupReader", "RestoreWriter", "RestoreResult", "VolumeError",
           "BackupRefused", "VolumeIncomplete", "ScopeError", "StreamGone", "StreamOrderError",
           "RestoreRejected", "capacity_bound", "check_scope", "begin_backup", "finish_backup",
           "WINDOW", "HEAD_KEEP", "IMPLICIT_START_BYTES"]

CHUNK = 1 << 20                 # stream bytes encoded per step
WINDOW = 64 << 20               # stream bytes an open backup keeps at most (plus one CHUNK)
# A sequential read of LEND_MIN..LEND_MAX bytes at the point the stream was
# produced up to is encoded straight into a buffer of its own that is lent to
# the front end (no copy), then kept like any other chunk.
LEND_MIN, LEND_MAX = 64 << 10, 4 << 20
HEAD_KEEP = 64 << 10            # the stream's first bytes, kept for re-reads of LBA 0
IMPLICIT_START_BYTES = 64 << 10  # a read at offset 0 at least this long starts a backup


# ----------------------------------------------------------------------- errors
class VolumeError(Exception):
    """Base of the engine's typed errors; ``offset`` is the stream byte concerned, if any."""

    def __init__(self, msg: str, offset: int | None = None) -> None:
        super().__init__(msg)
        self.offset = offset


class StreamCutLost(VolumeError):
    """The stream can no longer equal the volume at its cut (volume/pitcut.py): a
    block it had not sent yet was overwritten and its old contents could not be
    kept.  ``exhausted``: the preservation store's bound was reached."""

    def __init__(self, msg: str, offset: int | None = None, *, exhausted: bool = False) -> None:
        super().__init__(msg, offset)
        self.exhausted = exhausted


class BackupRefused(VolumeError):
    """A backup cannot start now (no full backup yet, restore incomplete, ...)."""


class VolumeIncomplete(BackupRefused):
    """A restore left blocks unrecovered or was interrupted: differentials would lie."""


class ScopeError(VolumeError):
    """A differential scope outside 1..current generation (or a scope for a full backup)."""


class StreamGone(VolumeError):
    """A read asked for stream bytes no longer kept (before the window)."""


class StreamOrderError(VolumeError):
    """A write too far ahead of the restore position (or a write that does not start one)."""


class RestoreRejected(VolumeError):
    """The stream cannot be applied at all (header, identity, chain); nothing was written."""


def capacity_bound(volume_size: int, granularity: int) -> int:
    """Bytes no stream of this volume can exceed: one record per block, every block raw."""
    entries = -(-volume_size // granularity)
    return HEADER_SIZE + TRAILER_SIZE + entries * RECORD_HEADER_SIZE + volume_size


def check_scope(vol: TrackingStore, full: bool, scope: int | None) -> None:
    """The one scope rule: a full backup takes none (0/None); a differential 1..current."""
    if full:
        if scope:
            raise ScopeError(f"a full backup takes no scope (got {scope})")
        return
    cur = vol.map.current_generation
    if scope is None or not 1 <= scope <= cur:
        raise ScopeError(f"scope {scope} outside 1..{cur} (current generation {cur})")


# --------------------------------------------------------------------- backup
class _Coverage:
    """Which byte ranges of [0, total) were read: a contiguous prefix plus sorted extras."""

    def __init__(self) -> None:
        self.prefix = 0
        self._starts: list[int] = []
        self._ends: list[int] = []

    def add(self, a: int, b: int) -> None:
        if b <= self.prefix or a >= b:
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


class _Chunk:
    """A buffer of encoded stream bytes and who holds it: the reader's window
    and, while a lent view of it is being sent, the front end.  Once neither
    does it is reused for a later chunk of the same size class (``buf`` may be
    longer than the chunk: its first bytes are the chunk's)."""
    __slots__ = ("buf", "holds", "home")

    def __init__(self, buf: bytearray, home: "_ChunkBuffers") -> None:
        self.buf = buf
        self.holds = 1
        self.home = home

    def release(self) -> None:
        self.home.release(self)


class _ChunkBuffers:
    """Recycled chunk buffers, shared by the readers of a process (zero fill and
    first-touch page faults of a fresh multi-megabyte buffer cost as much as
    encoding into it)."""
    # Bytes of free buffers kept: a window's worth, and the chunks a front end
    # still sends from when the stream is taken (a target's send queue, 8 MiB,
    # and a READ).  At 64 MiB a stream of 4 MiB reads found two or three of
    # its chunks gone and zero-filled (and page-faulted) new ones every time.
    MAX_IDLE = WINDOW + (16 << 20)

    def __init__(self) -> None:
        self._free: dict[int, list[bytearray]] = {}
        self._idle = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> _Chunk:
        """A chunk of at least ``n`` bytes: a free buffer of that size, else the
        shortest free one up to twice as long (the shorter last read of a
        stream, whose length depends on the stream's, then takes one of the
        full-length reads' buffers instead of a new one each stream), else a
        new one of ``n`` bytes."""
        with self._lock:
            free = self._free.get(n)
            if not free:
                fits = [k for k, v in self._free.items() if v and n < k <= 2 * n]
                free = self._free[min(fits)] if fits else None
            buf = free.pop() if free else None
            if buf is not None:
                self._idle -= len(buf)
        return _Chunk(bytearray(n) if buf is None else buf, self)

    def release(self, chunk: _Chunk) -> None:
        with self._lock:
            chunk.holds -= 1
            if chunk.holds:
                return
            n = len(chunk.buf)
            if self._idle + n <= self.MAX_IDLE:
                self._free.setdefault(n, []).append(chunk.buf)
                self._idle += n
            chunk.buf = None

    def lend(self, chunk: _Chunk) -> None:
        with self._lock:
            chunk.holds += 1


_CHUNK_BUFFERS = _ChunkBuffers()


class _Gathered:
    """The holder entry of a gathered chunk: there is no buffer to give back
    (its record data are loans of the volume's map, volume/lending.py)."""
    __slots__ = ()

    def release(self) -> None:
        pass


_GATHERED = _Gathered()


class BackupReader:
    """One backup stream served at byte offsets, made from a pending cut.

    Memory: the encoded bytes kept span at most ``WINDOW`` (+ one ``CHUNK``),
    plus the first ``HEAD_KEEP`` bytes.  A read that would need more (it ends
    more than ``WINDOW`` past the first byte nobody read yet) is a probe: it
    gets zeros and the stream does not move.  The stream is *complete* once
    every byte of it was served; then the cut is committed.
    """
    WINDOW = WINDOW

    def __init__(self, vol: TrackingStore, cut: Cut, *, compress: bool = False,
                 owner=None, implicit: bool = False, complete_at: int | None = None,
                 on_complete=None, hold: bool = False) -> None:
        self.vol = vol
        # Held: reading the end does not commit; the reader stores the stream
        # first and then asks (VolumeSessions.commit_backup).
        self.hold = hold
        self.read_through = False
        # Bytes that must have been read for the stream to count as taken: the
        # stream itself, or (implicitly started streams) the whole device, as
        # dd and qemu-img convert read it -- a probe never does.
        self.complete_at = complete_at
        self.cut = cut
        self.owner = owner
        self.implicit = implicit
        self.compress = compress
        # The point-in-time cut is frozen here, right after the plan was made:
        # the encoder reads the volume as it was at this instant, preserved
        # copies of blocks written since then included (volume/pitcut.py).
        self.pit = open_cut(vol, cut.plan)
        self.source = self.pit.view
        self.crcs = _crc_recorder(vol, cut, self.source)
        if self.crcs is not None:
            self.source = self.crcs
        self.enc = StreamEncoder(self.source, cut.plan, compress=compress)
        self.header: StreamHeader = self.enc.header
        self._chunks: collections.deque[tuple[int, memoryview, _Chunk]] = collections.deque()
        self._buffers = _CHUNK_BUFFERS
        self._lent_max = 0                  # the largest chunk lent so far
        self._head = bytearray()
        self.produced = 0
        self.total: int | None = None       # known once the encoder finished
        self.cov = _Coverage()
        self.complete = False
        self.abandoned = False
        self._on_complete = on_complete
        self.lock = threading.Lock()

    @property
    def size_bound(self) -> int:
        return self.enc.size_bound

    @property
    def kept_bytes(self) -> int:
        return sum(len(c) for _s, c, _k in self._chunks) + len(self._head)

    def _produce(self, upto: int) -> None:
        while self.total is None and self.produced < upto:
            self._produce_chunk(CHUNK)

    def _produce_chunk(self, n: int) -> _Chunk:
        """Encode the next (up to) ``n`` stream bytes into a chunk of their own."""
        chunk = self._buffers.take(n)
        try:
            k = self.enc.readinto(memoryview(chunk.buf)[:n])
        except BaseException:
            chunk.release()
            raise
        mv = memoryview(chunk.buf)[:k]
        if k:
            if self.produced < HEAD_KEEP:
                self._head += mv[:HEAD_KEEP - self.produced]
            self._chunks.append((self.produced, mv, chunk))
            self.produced += k
        else:
            chunk.release()
        if k == 0 or self.enc.finished:
            self.total = self.produced
        return chunk

    def _produce_gather(self, n: int) -> Gather:
        """The next (up to) ``n`` stream bytes as parts (StreamEncoder.readparts),
        kept in the window like a chunk; nothing of the records' data is copied."""
        g = Gather(self.enc.readparts(n))
        k = len(g)
        if k:
            if self.produced < HEAD_KEEP:
                self._head += bytes(g[:HEAD_KEEP - self.produced])
            self._chunks.append((self.produced, g, _GATHERED))
            self.produced += k
        if k == 0 or self.enc.finished:
            self.total = self.produced
        return g

    def lend(self, offset: int, n: int, *, gather: bool = False):
        """(read-only view of the ``n`` stream bytes at ``offset``, release) without
        a copy, for a read at the point the stream is produced up to; None when
        the read is anything else (then :meth:`readinto` serves it).  The view
        stays valid until ``release()`` is called, or for good if it never is.

        ``gather``: the caller takes a :class:`~volume.lending.Gather` instead of
        one view; when the encoder lends (a full stream of a mapped volume) the
        record data in it are not even encoded into a buffer: they are loans of
        the volume's map, turned into copies by the volume before it changes."""
        end = offset + n
        with self.lock:
            if self.abandoned or self.total is not None or offset != self.produced or \
                    offset != self.cov.prefix or not LEND_MIN <= n <= LEND_MAX:
                return None
            try:
                self.pit.check()
                if gather and self.enc.lends:
                    g = self._produce_gather(n)
                else:
                    g = None
                    chunk = self._produce_chunk(n)
            except CutLost as exc:           # never a silently fuzzy stream (invariant 4)
                raise StreamCutLost(f"the backup is no longer a point-in-time image: {exc}",
                                    offset, exhausted=isinstance(exc, PreservationExhausted)) \
                    from exc
            k = self.produced - offset
            if g is not None:
                if k < n:                    # the stream ended: zeros after it
                    g = Gather(g.parts + [bytes(n - k)])
                self._lent_max = max(self._lent_max, n)
                self.cov.add(offset, end)
                self._served()
                return g, _GATHERED.release
            if k < n:                        # the stream ended: zeros after it
                chunk.buf[k:n] = bytes(n - k)
            self._lent_max = max(self._lent_max, n)
            self._buffers.lend(chunk)
            view = memoryview(chunk.buf)[:n].toreadonly()
            self.cov.add(offset, end)
            self._served()
            return view, chunk.release

    def readinto(self, offset: int, mv: memoryview) -> bool:
        """Stream bytes at ``offset`` (zeros past the end); False if served as a probe."""
        n = len(mv)
        end = offset + n
        with self.lock:
            if self.abandoned:
                raise StreamGone("the backup stream was abandoned; start the backup again",
                                 offset)
            if self.total is None and end > self.cov.prefix + WINDOW and end > self.produced:
                mv[:] = bytes(n)             # far ahead: a probe, not part of the copy
                return False
            try:
                self.pit.check()
                self._produce(end)
            except CutLost as exc:           # never a silently fuzzy stream (invariant 4)
                raise StreamCutLost(f"the backup is no longer a point-in-time image: {exc}",
                                    offset, exhausted=isinstance(exc, PreservationExhausted)) \
                    from exc
            self._copy(offset, mv)
            self.cov.add(offset, min(end, self.produced) if self.total is None else end)
            self._served()
            return True

    def _served(self) -> None:
        self._trim()
        if self.total is not None and not self.complete and \
                self.cov.prefix >= max(self.total, self.complete_at or 0):
            if self.hold:
                self.read_through = True
                self._drop_chunks()      # every byte was served: only the head stays
                return
            self.complete = True
            self._commit()
            self._drop_chunks()          # every byte was served: only the head stays
            if self._on_complete is not None:
                self._on_complete(self)

    def _drop_chunks(self) -> None:
        chunks = self._chunks
        while chunks:
            chunks.popleft()[2].release()

    def _commit(self) -> None:
        _save_crcs(self)
        self.cut.commit()

    def _copy(self, offset: int, mv: memoryview) -> None:
        end = offset + len(mv)
        lowest = self._chunks[0][0] if self._chunks else self.produced
        if offset < lowest and offset < self.produced:
            if end <= len(self._head):
                mv[:] = self._head[offset:end]
                return
            raise StreamGone(f"stream bytes from {offset} were already read and dropped "
                             f"(kept from {lowest}); start the backup again", offset)
        for start, chunk, _k in self._chunks:
            cend = start + len(chunk)
            if cend <= offset:
                continue
            if start >= end:
                break
            a = max(start, offset)
            b = min(cend, end)
            if type(chunk) is Gather:        # a re-read of gathered bytes: copied part by part
                at = a - offset
                for v in chunk[a - start:b - start].views():
                    mv[at:at + len(v)] = v
                    at += len(v)
            else:
                mv[a - offset:b - offset] = chunk[a - start:b - start]
        avail = min(end, self.produced)
        if avail < end:
            mv[max(0, avail - offset):] = bytes(end - max(avail, offset))

    def _trim(self) -> None:
        # Lent chunks are longer than CHUNK (and only made with nothing unread
        # before them): keep less behind them, so the bound stays WINDOW + CHUNK.
        keep_from = min(self.cov.prefix,
                        self.produced - WINDOW + max(0, self._lent_max - CHUNK))
        chunks = self._chunks
        while chunks:
            start, chunk, _k = chunks[0]
            if start + len(chunk) <= keep_from:
                chunks.popleft()[2].release()
            else:
                break

    def abandon(self) -> None:
        with self.lock:
            if self.complete or self.abandoned:
                return
            self.abandoned = True
            self._drop_chunks()
            self._head = bytearray()
            self.pit.release()               # writes stop preserving for it
            self.cut.abandon()


# -------------------------------------------------------------------- restore
@dataclass
class RestoreResult:
    """One restore stream's outcome (``unrecovered`` describes the volume afterwards)."""
    state: str = "idle"                 # idle | running | done | rejected | abandoned
    header: StreamHeader | None = None
    check: StreamCheck | None = None
    errors: list[str] = field(default_factory=list)
    unrecovered: list[tuple[int, int]] = field(default_factory=list)   # block extents
    bytes: int = 0

    @property
    def bad_records(self) -> list:
        return list(self.check.damage) if self.check else []


def _zeros(n: int) -> bitarray:
    b = bitarray(n, endian="little")
    b.setall(0)
    return b


def _extents(bits: bitarray) -> list[tuple[int, int]]:
    from .genmap import extents
    return list(extents(bits))


class RestoreWriter:
    """Stream bytes at offsets -> ``volume.restore.StreamRestorer`` on a tracked volume.

    A full stream is restored around the tracker (the map is reset to that
    backup's generation 0; the target first takes the backed-up volume's
    identity if it differs); a differential one through it (mark, write, then
    the restored generation is set), so a crash mid-record is a false positive.
    The chain state between streams (and across runs) is the volume's
    :class:`RestoreMark`: see the module doc.
    """
    MAX_REORDER = 64 << 20

    def __init__(self, vol: TrackingStore, *, skip_generations=(), name: str = "stream",
                 owner=None) -> None:
        self.vol = vol
        self.name = name
        self.owner = owner
        self.pos = 0
        self._pending: dict[int, bytes] = {}
        self._pending_bytes = 0
        self.result = RestoreResult("running")
        self._full = False
        self.finished = False
        self._skip = list(skip_generations)
        self._head = bytearray()
        self._marked = False
        self.r: StreamRestorer | None = None     # made once the header is in

    # -- the chain, from the volume's durable state ------------------------------
    def _previous(self, h: StreamHeader) -> ChainState | None:
        vol = self.vol
        gmap = vol.map
        mark = vol.state.restore
        if h.full:
            return None
        if mark is not None and mark.stream is not None:
            s = mark.stream
            if s["full"] or s["id"] != h.stream_id.hex():
                what = "full stream" if s["full"] else f"differential stream (generations " \
                    f"{s['lo']}..{s['hi']})"
                raise RestoreRejected(
                    f"{self.name}: the restore of {what} {s['id']} onto this volume was "
                    f"interrupted; apply that stream again (or start over with the full "
                    f"stream) before any other")
            start = s["start_generation"]
        else:
            start = gmap.current_generation
        if gmap.base_id == bytes(16):
            return None                      # the restorer says: start with the full stream
        lost = mark.unrecovered.copy() if mark is not None and mark.unrecovered is not None \
            else _zeros(gmap.entries)
        return ChainState(gmap.volume_id, gmap.base_id, start, None, lost,
                          _zeros(gmap.entries), [])

    def _make_restorer(self, head: bytes) -> None:
        prev = None
        try:
            h = StreamHeader.unpack(head[:HEADER_SIZE])
        except StreamError:
            h = None                         # the restorer rejects it with the reason
        if h is not None:
            prev = self._previous(h)
            if not h.full and h.volume_size > self.vol.size and self._grow_for(h, prev):
                prev = self._previous(h)
        self.r = StreamRestorer(self.vol, self.vol.map, skip_generations=self._skip,
                                expect_previous=prev, name=self.name,
                                prepare_full=self._prepare_full, on_start=self._on_start)
        self.result.check = self.r.check

    def _grow_for(self, h: StreamHeader, prev: ChainState | None) -> bool:
        """A differential of the volume after it grew (its header's size is larger):
        the target grows to it (a file extended, an RBD image resized: its store
        ``growable``; otherwise refused, saying so) before the stream is applied,
        once the stream is otherwise this target's next one.  The added blocks start
        at generation 0; the stream carries every one of them (the source marked
        them at its growth).  False: not grown (the restorer's checks then say why)."""
        vol = self.vol
        gmap = vol.map
        if h.volume_id != gmap.volume_id or h.block_size != gmap.granularity or \
                h.base_id != gmap.base_id or prev is None or \
                _chain_problems(self.name, h, gmap, prev):
            return False
        try:
            vol.grow(h.volume_size, restoring=True)
        except (TrackingError, StoreError) as exc:
            raise RestoreRejected(f"{self.name} is for the volume grown to {h.volume_size} "
                                  f"bytes; the target could not grow: {exc}") from None
        return True

    def _prepare_full(self, h: StreamHeader):
        vol = self.vol
        if h.volume_size != vol.size:
            return vol, vol.map             # refused by the restorer's checks, nothing changed
        if vol.cow is not None:         # the full restore writes around the tracker
            vol.cow.lose(CutLost("a full restore replaced the volume's contents"))
        if h.volume_id != vol.map.volume_id or h.block_size != vol.map.granularity:
            vol.reidentify(h.volume_id, h.block_size)
        self._full = True
        return vol.inner, vol.map

    def _on_start(self, h: StreamHeader) -> None:
        """The header passed every check: mark the volume incomplete before any write."""
        vol = self.vol
        _forget_crcs(vol)
        with vol.lock:
            st = vol.state
            old = st.restore
            entries = vol.map.entries
            if h.full:
                lost = bitarray(entries, endian="little")
                lost.setall(1)
                st.full_done = False
                st.pending_lo = None
                st.active = None
            else:
                lost = old.unrecovered if old is not None and old.unrecovered is not None \
                    else _zeros(entries)
            start = old.stream["start_generation"] if old is not None and old.stream and \
                old.stream["id"] == h.stream_id.hex() else vol.map.current_generation
            lo, hi = h.generation_range
            st.restore = RestoreMark({"id": h.stream_id.hex(), "full": h.full, "lo": lo,
                                      "hi": hi, "start_generation": start}, lost)
            vol.save_state()
            self._marked = True

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
                                       f"restore position {self.pos}: write the stream in order",
                                       offset)
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
            try:
                self._make_restorer(data)
            except RestoreRejected as exc:
                self._rejected([str(exc)])
        try:
            self.r.feed(data)
        except _Rejected as exc:
            self._rejected(list(exc.errors))
        self.result.header = self.r.header
        if self.r.complete:
            self._finish("done")

    def _rejected(self, errors: list[str]) -> None:
        self.finished = True
        self.result.state = "rejected"
        self.result.header = self.r.check.header if self.r is not None else None
        self.result.errors = errors
        raise RestoreRejected("; ".join(errors))

    def _finish(self, state: str) -> None:
        self.finished = True
        rep = self.r.finish()
        unrec = rep.chain.lost | rep.chain.uncertain if rep.chain is not None else None
        self.result.unrecovered = _extents(unrec) if unrec is not None else []
        self.result.errors = list(rep.errors)
        self.result.state = state
        if not self._marked:
            return                          # nothing was written: the volume is as it was
        vol = self.vol
        with vol.lock:
            st = vol.state
            if state == "done" or self._full:
                # Known exactly: a full stream's blocks not seen (or damaged) are
                # the unrecovered ones, wherever it stopped.
                st.restore = RestoreMark(None, unrec) if unrec is not None and unrec.any() \
                    else None
                if self._full and st.restore is None:
                    st.full_done = True
                vol.save_state()
            elif st.restore is not None and st.restore.unrecovered is not None:
                # A differential cut short stays "interrupted": only the same stream
                # (its generations' chain position is on record) or a full one may
                # follow; a crash leaves the same record.
                self.result.unrecovered = _extents(st.restore.unrecovered)

    def abandon(self) -> None:
        """The writer stopped before the trailer (a new restore began, the LU closed, EOF)."""
        if self.finished:
            return
        if self.r is None:
            try:
                self._make_restorer(bytes(self._head))
            except RestoreRejected as exc:
                self.finished = True
                self.result.state = "rejected"
                self.result.errors = [str(exc)]
                return
        started = self.r.header is not None
        self._finish("abandoned")
        if started and not any("truncated" in e for e in self.r.check.errors):
            self.result.errors.append(f"stream truncated at byte {self.pos}: no trailer")


# ------------------------------------------------------------ the state machine
class VolumeSessions:
    """At most one open backup stream and one open restore stream per volume
    (never both); every start, end and abandonment goes through here."""

    def __init__(self, vol: TrackingStore) -> None:
        self.vol = vol
        self.lock = threading.RLock()
        self.reader: BackupReader | None = None
        self.writer: RestoreWriter | None = None
        self.last_restore = RestoreResult()
        # Bytes a plain copy of the pseudo device reads (its capacity): an
        # implicitly started stream is taken once all of them were read.
        self.device_size = capacity_bound(vol.size, vol.map.granularity)
        # (full, scope, compress) of the next backup a read or START BACKUP opens.
        self.selection: tuple[bool, int, bool] = (True, 0, False)

    # -- backup ---------------------------------------------------------------
    def start_backup(self, *, full: bool, scope: int | None = None, compress: bool = False,
                     owner=None, implicit: bool = False, hold: bool = False) -> BackupReader:
        """Freeze the volume for a backup stream (the map changes when it is read to its end).

        ``implicit``: started by a read (see :meth:`read`); it is taken (the cut
        committed) only once the whole device was read, not just the stream."""
        with self.lock:
            vol = self.vol
            self.abandon_restore()
            self.abandon_backup()
            check_scope(vol, full, None if full else scope)
            with vol.lock:
                st = vol.state
                mark = st.restore
                if not full:
                    if mark is not None and mark.incomplete:
                        raise VolumeIncomplete(_incomplete_text(mark) + ": a differential "
                                               "backup would record wrong data as good; finish "
                                               "the restore, or take a full backup")
                    if not st.full_done:
                        raise BackupRefused("no full backup of this volume was completed since "
                                            "tracking began: take a full backup first")
                gmap = vol.map
                try:
                    if full:
                        cut = gmap.cut_full()
                    else:
                        eff = scope
                        cur = gmap.current_generation
                        # An unfinished stream of an older release: widen down to it.
                        if st.pending_lo is not None and st.pending_lo < cur - scope + 1:
                            eff = cur - st.pending_lo + 1
                        cut = gmap.cut_differential(eff)
                except MapError as exc:
                    raise BackupRefused(str(exc)) from None
            self.reader = BackupReader(vol, cut, compress=compress, owner=owner,
                                       implicit=implicit,
                                       complete_at=self.device_size if implicit else None,
                                       on_complete=self._backup_done, hold=hold)
            return self.reader

    def commit_backup(self) -> None:
        """Commit the held stream once it was read to its end (idempotent after that)."""
        with self.lock:
            r = self.reader
            if r is None or r.abandoned:
                raise StreamGone("no backup stream is open to commit")
            if r.complete:
                return
            if not r.read_through:
                raise StreamGone("the backup stream was not read to its end; nothing committed")
            finish_backup(r)

    def _backup_done(self, reader: BackupReader) -> None:
        vol = self.vol
        with vol.lock:
            st = vol.state
            if reader.header.full:
                if st.full_done and st.pending_lo is None and st.restore is None:
                    return                  # the sidecar already says so: nothing to write
                st.full_done = True
                st.pending_lo = None
                st.restore = None           # the current contents are the new baseline
            elif st.pending_lo is not None and reader.header.generation_range[0] <= st.pending_lo:
                st.pending_lo = None
            else:
                return   # a differential changes nothing the sidecar holds (the map has it)
            vol.save_state()

    def abandon_backup(self) -> None:
        r, self.reader = self.reader, None
        if r is not None:
            r.abandon()

    def read(self, offset: int, mv: memoryview, *, owner=None) -> None:
        """Pseudo-device read of stream bytes (docs/vendor-commands.md, "Reading"):
        the open stream's bytes; with none open (or the open one complete), a read
        at offset 0 of at least ``IMPLICIT_START_BYTES`` starts the selected
        backup, taken once every byte of the device was read; anything else
        reads as zeros."""
        with self.lock:
            r = self.reader
            if (r is None or r.complete) and offset == 0 and len(mv) >= IMPLICIT_START_BYTES:
                sel = self.selection
                r = self.start_backup(full=sel[0], scope=sel[1], compress=sel[2], owner=owner,
                                      implicit=True)
            if r is None or r.abandoned:
                mv[:] = bytes(len(mv))
                return
        r.readinto(offset, mv)

    def lend(self, offset: int, n: int, *, owner=None, gather: bool = False):
        """:meth:`BackupReader.lend` of the open stream, or None: then :meth:`read`
        (which also starts streams and answers probes)."""
        with self.lock:
            r = self.reader
            if r is None or r.complete or r.abandoned:
                return None
        return r.lend(offset, n, gather=gather)

    # -- restore ----------------------------------------------------------------
    def start_restore(self, *, skip_generations=(), name: str = "restore stream",
                      owner=None) -> RestoreWriter:
        with self.lock:
            self.abandon_backup()
            self.abandon_restore()
            w = self.writer = RestoreWriter(self.vol, skip_generations=skip_generations,
                                            name=name, owner=owner)
            self.last_restore = w.result
            return w

    def volume_grew(self, size: int) -> None:
        """Streams of the grown volume may be longer: so may the pseudo device."""
        self.device_size = max(self.device_size, capacity_bound(size, self.vol.map.granularity))

    def busy_with(self) -> str | None:
        """What stream is open (a volume cannot grow under it), or None."""
        with self.lock:
            if self.reader is not None and not self.reader.abandoned and \
                    not self.reader.complete:
                return "a backup stream"
            if self.writer is not None and not self.writer.finished:
                return "a restore stream"
            return None

    def abandon_restore(self) -> None:
        w, self.writer = self.writer, None
        if w is not None and not w.finished:
            w.abandon()

    def write(self, offset: int, data, *, skip_generations=(), owner=None) -> None:
        """Pseudo-device write: offset 0 starts a restore stream, later offsets continue it."""
        with self.lock:
            w = self.writer
            if offset == 0 or w is None:
                if offset != 0:
                    raise StreamOrderError("a restore stream starts with a write at byte 0",
                                           offset)
                w = self.start_restore(skip_generations=skip_generations, owner=owner)
            w.write(offset, data)

    # -- ends -------------------------------------------------------------------
    def owner_gone(self, owner) -> None:
        """The opener went away (I_T nexus loss): its open streams cost nothing more."""
        with self.lock:
            if self.reader is not None and self.reader.owner == owner:
                self.abandon_backup()        # a complete one just frees its head copy
            if self.writer is not None and self.writer.owner == owner:
                self.abandon_restore()

    def close(self) -> None:
        with self.lock:
            self.abandon_backup()
            self.abandon_restore()


def _incomplete_text(mark: RestoreMark) -> str:
    if mark.stream is not None:
        kind = "full" if mark.stream["full"] else "differential"
        return f"the volume is incomplete: the restore of {kind} stream {mark.stream['id']} " \
               f"was interrupted"
    return f"the volume is incomplete: {mark.unrecovered_blocks} blocks were not recovered by " \
           f"its restore"


# --------------------------------------------- one-shot helpers for library callers
def begin_backup(vol: TrackingStore, *, full: bool, scope: int | None) -> BackupReader:
    """Open a backup stream on ``vol`` through its session state machine."""
    return vol.sessions.start_backup(full=full, scope=scope)


def finish_backup(reader: BackupReader) -> None:
    """The caller wrote every byte of ``reader``'s stream somewhere durable: commit."""
    if reader.complete:
        return
    with reader.lock:
        if reader.abandoned:
            raise StreamGone("the backup stream was abandoned before it was finished")
        reader.complete = True
        reader._commit()
    reader._on_complete(reader)


# ------------------------------------------------------------- audit support
# The per-block CRC32C of what a backup stream sent (volume/blockcrc.py), for
# the tracker self-audit (volume/audit.py).  Kept apart: a backup or restore
# works the same with or without it.
def _crc_recorder(vol: TrackingStore, cut: Cut, source):
    if not vol.keeps_crcs:
        return None                          # a memory volume: nowhere to keep the table
    plan = cut.plan
    return blockcrc.CrcRecorder(source, plan.granularity, plan.entries)


def _save_crcs(reader: BackupReader) -> None:
    """Before the cut commits: a crash in between leaves the sent blocks in the
    open generation, which no audit checks against the table.  The table lives
    where the map does (files beside it, or RADOS objects fenced with it)."""
    rec = reader.crcs
    if rec is None:
        return
    plan = reader.cut.plan
    if not plan.full and not rec.sent.any():
        # A differential that sent no block changes no entry: the table stays
        # as the backup that last wrote it left it (its GENERATION names that
        # one), and is neither read nor rewritten (512 KiB of a 512 MiB volume).
        return
    vol = reader.vol
    try:
        try:
            previous = None if plan.full else vol.load_crcs()
        except blockcrc.BlockCrcError:
            previous = None
        crcs = rec.merged(previous, full=plan.full, base_id=plan.base_id,
                          generation=plan.generation_range[1], volume_size=plan.volume_size)
        if crcs is not None:
            vol.save_crcs(crcs)
    except (OSError, MapError):
        # An old table would describe blocks this stream sent anew: drop it
        # (the audit then asks for a full backup) rather than keep it wrong.
        _forget_crcs(vol)


def _forget_crcs(vol: TrackingStore) -> None:
    try:
        vol.forget_crcs()
    except (OSError, MapError):
        pass
