"""Backup stream format v1 (docs/backup-stream-format.md): incremental encoder
and decoder, both sans-I/O with respect to the stream bytes.

    header (160 B) · record* · trailer (80 B) · optional zero padding

Every record starts with a sync marker and carries its own header CRC (seeded
with the stream id, so records of a stream embedded in backed-up data never
pass as ours); damage costs the records it touches and the decoder
resynchronises on the next marker.
"""
from __future__ import annotations

import collections
import gc
import hashlib
import os
import struct
import time
import zlib
import sys
from array import array
from bisect import bisect_right
from itertools import accumulate, repeat
from operator import add, floordiv, mul
from dataclasses import dataclass, field
from typing import Callable, Union

import crc32c

from .crcshift import slot_crcs
from .genmap import BackupPlan
from .lending import LoanSlice, resolved
from .store import BlockStore

__all__ = ["StreamHeader", "Record", "Damage", "Trailer", "StreamEnd", "StreamEncoder",
           "StreamDecoder", "StreamError", "HEADER_SIZE", "RECORD_HEADER_SIZE", "TRAILER_SIZE",
           "KIND_DATA", "KIND_ZERO", "KIND_ZLIB", "FLAG_FULL", "FLAG_COMPRESSED", "read_header"]

STREAM_MAGIC = b"\x89DIFFBK\n"
STREAM_VERSION = 1
RECORD_SYNC = b"REC\xa5"
TRAILER_SYNC = b"END\xa5"

FLAG_FULL = 0x1
FLAG_COMPRESSED = 0x2
_KNOWN_FLAGS = FLAG_FULL | FLAG_COMPRESSED

KIND_DATA = 0
KIND_ZERO = 1
KIND_ZLIB = 2

# magic, version, header length, flags, block size, max record blocks, volume
# size, entries, gen lo, gen hi, block count, created ns, base id, stream id,
# volume id length, volume id; reserved to 156; CRC32C of bytes 0..155.
_HEADER = struct.Struct("<8sHHIIIQQIIQQ16s16sB32s")
HEADER_SIZE = 160
# sync, seq, first block, nblocks, generation, kind, 3 reserved, stored length, data CRC32C; header CRC.
_RECORD = struct.Struct("<4sIQIIB3xII")
RECORD_HEADER_SIZE = 40
_RECORD_CRC = struct.Struct("<4sIQIIB3xIII")      # the same, with the header CRC
_U32 = struct.Struct("<I")
# sync, reserved, record count, block count, stored bytes, digest; reserved to 76; CRC32C.
_TRAILER = struct.Struct("<4s4xQQQ32s")
TRAILER_SIZE = 80

# Decoder limits (invariant 3: bounded memory whatever the input says).
MAX_RECORD_BYTES = 64 << 20
DEFAULT_RECORD_BYTES = 1 << 20
_RESYNC_WINDOW = 64 << 10      # bytes searched per step while looking for a marker
_ENCODE_BATCH = 2048           # records laid out and read together by the encoder
_LITTLE_ENDIAN = sys.byteorder == "little"    # the batched header path writes CRCs natively
# Header CRCs of a batch of at least this many records are computed as byte
# columns (crcshift.slot_crcs: ~0.2 us a record against ~0.34 for a call a
# header at 775 records); below it the columns' fixed cost is more.
_SLOT_CRC_MIN = 64
# Runs the encoder keeps from counting them at the start for the stream: what
# one window of BackupPlan.run_batches can yield at most (every other block).
_KEEP_RUNS = 1 << 17
_DECODE_BATCH = 1024           # same-sized records the decoder checks as columns
_VECTOR_RETRY = 32             # records decoded one by one before trying columns again
# CRC32C over a record header including its own CRC (little-endian) is this
# constant whatever the header and seed, iff the CRC is right.
_HEADER_RESIDUE = 0x48674BC7


_RH_WORDS = RECORD_HEADER_SIZE // 4          # a record header as u32 words (native order)
_SYNC_WORD = int.from_bytes(RECORD_SYNC, "little")


class StreamError(Exception):
    """A stream cannot be produced or its header cannot be used."""


@dataclass(frozen=True)
class StreamHeader:
    volume_id: bytes
    block_size: int
    volume_size: int
    entries: int
    generation_range: tuple[int, int]
    block_count: int
    flags: int
    max_record_blocks: int
    base_id: bytes
    stream_id: bytes
    created_ns: int = 0
    version: int = STREAM_VERSION

    @property
    def full(self) -> bool:
        return bool(self.flags & FLAG_FULL)

    def pack(self) -> bytes:
        b = bytearray(HEADER_SIZE)
        lo, hi = self.generation_range
        _HEADER.pack_into(b, 0, STREAM_MAGIC, self.version, HEADER_SIZE, self.flags,
                          self.block_size, self.max_record_blocks, self.volume_size, self.entries,
                          lo, hi, self.block_count, self.created_ns, self.base_id, self.stream_id,
                          len(self.volume_id), self.volume_id)
        struct.pack_into("<I", b, HEADER_SIZE - 4, crc32c.crc32c(memoryview(b)[:-4]))
        return bytes(b)

    @classmethod
    def unpack(cls, raw) -> "StreamHeader":
        """Parse and validate; raises StreamError with the precise reason."""
        raw = bytes(raw)
        if len(raw) < HEADER_SIZE:
            raise StreamError(f"stream is {len(raw)} bytes long, shorter than its header")
        if raw[:8] != STREAM_MAGIC:
            raise StreamError(f"not a backup stream (magic {raw[:8]!r})")
        (_, ver, hlen, flags, bs, maxb, vsize, entries, lo, hi, count, created, base, sid,
         vlen, vid) = _HEADER.unpack_from(raw)
        if ver != STREAM_VERSION:
            raise StreamError(f"stream format version {ver}; this release reads {STREAM_VERSION}")
        (crc,) = struct.unpack_from("<I", raw, HEADER_SIZE - 4)
        if crc32c.crc32c(raw[:HEADER_SIZE - 4]) != crc:
            raise StreamError("stream header checksum mismatch (header damaged)")
        if hlen != HEADER_SIZE:
            raise StreamError(f"header length {hlen}, expected {HEADER_SIZE}")
        if flags & ~_KNOWN_FLAGS:
            raise StreamError(f"unknown header flags {flags:#x}")
        if bs < 512 or bs & (bs - 1) or bs > 1 << 24:
            raise StreamError(f"block size {bs} is not a power of two in 512..16 MiB")
        if vsize <= 0 or entries != -(-vsize // bs):
            raise StreamError(f"volume size {vsize} and entry count {entries} disagree")
        if not 1 <= vlen <= 32:
            raise StreamError(f"volume identity length {vlen}")
        # A full stream starts at generation 0; hi > 0 only for a synthetic full
        # (volume/merge.py): it holds the volume as of generation hi, and its
        # records keep the generation of the copy they carry.
        if lo > hi or ((flags & FLAG_FULL) and lo != 0):
            raise StreamError(f"generation range {lo}..{hi} invalid for this stream type")
        if count > entries:
            raise StreamError(f"{count} blocks announced on a {entries}-block volume")
        if maxb < 1 or maxb * bs > MAX_RECORD_BYTES:
            raise StreamError(f"records of up to {maxb} blocks exceed the {MAX_RECORD_BYTES}-byte limit")
        return cls(vid[:vlen], bs, vsize, entries, (lo, hi), count, flags, maxb, base, sid,
                   created)

    def raw_length(self, first: int, nblocks: int) -> int:
        off = first * self.block_size
        return min((first + nblocks) * self.block_size, self.volume_size) - off


@dataclass(slots=True)            # not frozen: a frozen __init__ costs ~1 us per record
class Record:
    seq: int
    first_block: int
    nblocks: int
    generation: int
    kind: int
    data: object | None        # bytes-like of the (uncompressed) data, None for a zero record
    offset: int                # stream offset of the record's sync marker
    length: int = 0            # raw data length in bytes (zero records too)

    @property
    def is_zero(self) -> bool:
        return self.kind == KIND_ZERO


@dataclass(frozen=True)
class Damage:
    """Bytes the decoder could not use.  Block fields are set when the record
    header was intact (so the loss is known exactly) and None otherwise."""
    offset: int
    length: int
    reason: str
    first_block: int | None = None
    nblocks: int | None = None
    generation: int | None = None
    seq: int | None = None


@dataclass(frozen=True)
class Trailer:
    record_count: int
    block_count: int
    stored_bytes: int
    digest: bytes


@dataclass
class StreamEnd:
    header: StreamHeader | None
    trailer: Trailer | None
    records: int = 0            # records delivered intact
    damaged: int = 0            # Damage items reported
    blocks: int = 0             # blocks in intact records
    errors: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.trailer is not None and not self.errors and self.damaged == 0


Item = Union[Record, Damage]
Emit = Callable[[Item], None]


def _drain(q: collections.deque):
    """The items of ``q``, each let go of as it is taken."""
    while q:
        yield q.popleft()


def _seed(stream_id: bytes) -> int:
    return crc32c.crc32c(stream_id)


def read_header(f) -> StreamHeader:
    """The header of a stream file (path or binary file object at offset 0)."""
    if isinstance(f, (str, os.PathLike)):
        with open(f, "rb") as fh:
            return StreamHeader.unpack(fh.read(HEADER_SIZE))
    return StreamHeader.unpack(f.read(HEADER_SIZE))


def parse_trailer(raw, stream_id: bytes) -> Trailer:
    """The 80-byte trailer of the stream ``stream_id``; StreamError if it is not one."""
    tv = memoryview(raw)
    if len(tv) != TRAILER_SIZE or bytes(tv[:4]) != TRAILER_SYNC:
        raise StreamError("no trailer (stream truncated?)")
    (crc,) = struct.unpack_from("<I", tv, TRAILER_SIZE - 4)
    if crc32c.crc32c(tv[:-4], _seed(stream_id)) != crc:
        raise StreamError("trailer checksum mismatch")
    _, rc, bc, sb, dg = _TRAILER.unpack_from(tv)
    return Trailer(rc, bc, sb, dg)


# ---------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------
class StreamEncoder:
    """Produces the stream of ``plan`` over ``store`` in caller-sized chunks.

    ``size_bound`` is exact arithmetic over the plan (no data read): header +
    trailer + every record at full raw size.  Zero elision and compression can
    only shrink records (a compressed record is kept only if smaller), so the
    stream never exceeds it.  ``total_size`` is the exact size when neither is
    enabled, else None; a reader that needs a fixed length (the pseudo device)
    can serve ``size_bound`` bytes: the stream is followed by zero padding,
    which decoders accept.

    :meth:`readparts` is the zero-copy way out (``lends``: a full, uncompressed
    stream over a store with ``lends_views``): the next bytes as a list of
    parts, record headers as small buffers of their own and record data as
    :class:`~volume.lending.LoanSlice` s of the store's map, so the data is
    never copied by Python (the store materializes the loans before it
    changes: volume/lending.py).  The bytes are those :meth:`readinto` would
    produce; the two may be mixed.
    """

    def __init__(self, store: BlockStore, plan: BackupPlan, *, compress: bool = False,
                 elide_zeros: bool = True, max_record_bytes: int = DEFAULT_RECORD_BYTES,
                 stream_id: bytes | None = None, created_ns: int | None = None,
                 level: int = 1) -> None:
        if store.size != plan.volume_size:
            raise StreamError(f"store holds {store.size} bytes; the plan is for a "
                              f"{plan.volume_size}-byte volume")
        bs = plan.granularity
        maxb = max(1, min(max_record_bytes, MAX_RECORD_BYTES) // bs)
        self._store = store
        self._plan = plan
        self._bs = bs
        self._maxb = maxb
        self._compress = compress
        self._elide = elide_zeros
        self._level = level
        flags = (FLAG_FULL if plan.full else 0) | (FLAG_COMPRESSED if compress else 0)
        self.header = StreamHeader(plan.volume_id, bs, plan.volume_size, plan.entries,
                                   plan.generation_range, plan.block_count, flags, maxb,
                                   plan.base_id, stream_id if stream_id is not None else os.urandom(16),
                                   time.time_ns() if created_ns is None else created_ns)
        if len(self.header.stream_id) != 16:
            raise ValueError("stream id must be 16 bytes")
        self._seed = _seed(self.header.stream_id)
        # The runs are found once: counting them here keeps their batches for
        # the stream (a scattered differential's start otherwise took a second
        # pass over the map), unless there are more of them than one window of
        # the map can yield -- then memory stays bounded by a window and the
        # stream finds them again as it goes.
        nrec = 0
        early: collections.deque | None = collections.deque()
        kept = 0
        for batch in plan.run_batches():
            counts = batch[1]
            if max(counts) <= maxb:
                nrec += len(counts)
            else:
                nrec += sum(map(floordiv, map(add, counts, repeat(maxb - 1)), repeat(maxb)))
            if early is not None:
                kept += len(counts)
                if kept <= _KEEP_RUNS:
                    early.append(batch)
                else:
                    early = None
        self._early = early
        data = plan.block_count * bs
        if plan.block_count and plan.selection[plan.entries - 1]:
            data -= plan.entries * bs - plan.volume_size      # the partial last block
        self.record_count_bound = nrec
        self.size_bound = HEADER_SIZE + nrec * RECORD_HEADER_SIZE + data + TRAILER_SIZE
        self.total_size = None if (compress or elide_zeros) else self.size_bound
        self.data_bytes = data
        self.position = 0               # bytes produced so far
        self.records = 0
        self.blocks = 0
        self.zero_blocks = 0
        self.stored_bytes = 0
        self._hash = hashlib.sha256()
        self._pending = memoryview(self.header.pack())
        # The records still to encode, as columns (first blocks, block counts,
        # generations) of <= maxb blocks each: a batch of the plan's runs at a
        # time, with ``_qi`` the next one to take.
        self._batches = self._record_batches()
        self._qf: list[int] = []
        self._qn: list[int] = []
        self._qg: list[int] = []
        self._qi = 0
        self._done = False
        self._stage = bytearray()
        self._parts: list = []          # readparts: the rest of a record, as parts
        # Per-record lending pays off for big records (a full stream's), and a
        # compressed record is a copy anyway.
        self.lends = bool(store.lends_views and plan.full and not compress)
        self._zero_crc: dict[int, int] = {}
        self._zeros = b""

    def _zero_crc_of(self, n: int) -> int:
        c = self._zero_crc.get(n)
        if c is None:
            if len(self._zeros) < n:
                self._zeros = bytes(max(n, self._maxb * self._bs))
            c = self._zero_crc[n] = crc32c.crc32c(memoryview(self._zeros)[:n])
        return c

    def _encode_into(self, run: tuple[int, int, int], out: memoryview) -> int:
        """Write the whole record for ``run`` at the start of ``out`` (room for the raw size)."""
        first, n, g = run
        raw = self.header.raw_length(first, n)
        body = out[RECORD_HEADER_SIZE:RECORD_HEADER_SIZE + raw]
        (crc,) = self._store.readinto_many_crcs([first * self._bs], [body])
        kind, stored = KIND_DATA, raw
        if self._elide and crc == self._zero_crc_of(raw) and self._zeros.startswith(body):
            kind, stored, crc = KIND_ZERO, 0, 0
            self.zero_blocks += n
        elif self._compress:
            z = zlib.compress(body, self._level)
            if len(z) < raw:
                body[:len(z)] = z
                kind, stored = KIND_ZLIB, len(z)
        _RECORD.pack_into(out, 0, RECORD_SYNC, self.records, first, n, g, kind, stored, crc)
        hcrc = crc32c.crc32c(out[:RECORD_HEADER_SIZE - 4], self._seed)
        struct.pack_into("<I", out, RECORD_HEADER_SIZE - 4, hcrc)
        self._hash.update(out[:RECORD_HEADER_SIZE])
        self.records += 1
        self.blocks += n
        self.stored_bytes += stored
        return RECORD_HEADER_SIZE + stored

    def _trailer(self) -> bytes:
        b = bytearray(TRAILER_SIZE)
        _TRAILER.pack_into(b, 0, TRAILER_SYNC, self.records, self.blocks, self.stored_bytes,
                           self._hash.digest())
        struct.pack_into("<I", b, TRAILER_SIZE - 4,
                         crc32c.crc32c(memoryview(b)[:-4], self._seed))
        return bytes(b)

    @property
    def finished(self) -> bool:
        return self._done and not self._pending and not self._parts

    def readparts(self, size: int) -> list:
        """The next (up to) ``size`` stream bytes as parts (memoryviews and loan
        slices, see the class doc); their lengths sum to less than ``size``
        only at the end of the stream."""
        parts: list = []
        w = 0
        while w < size:
            if self._parts:
                p = self._parts[0]
                k = p.nbytes
                if k <= size - w:
                    parts.append(p)
                    del self._parts[0]
                    w += k
                else:
                    parts.append(p[:size - w])
                    self._parts[0] = p[size - w:]
                    w = size
                continue
            if self._pending is not None and len(self._pending):
                # Owned bytes (stream header, trailer, a record readinto staged):
                # copied out, the staging buffer is reused.
                k = min(len(self._pending), size - w)
                parts.append(memoryview(bytes(self._pending[:k])))
                self._pending = self._pending[k:]
                w += k
                continue
            if self._done:
                break
            run = self._record_or_trailer()
            if run is not None:
                self._parts = self._lent_record(run)
        self.position += w
        return parts

    def _record_or_trailer(self) -> tuple[int, int, int] | None:
        """The next record's run; None once there is none, the trailer then staged
        as the stream's last bytes."""
        run = self._next_record()
        if run is None:
            self._pending = memoryview(self._trailer())
            self._done = True
        return run

    def _lent_record(self, run: tuple[int, int, int]) -> list:
        """The record for ``run`` as parts: its header, and its data lent by the
        store (or the whole record copied, when the store does not lend it:
        preserved blocks of a point-in-time cut, a file that cannot be mapped)."""
        first, n, g = run
        raw = self.header.raw_length(first, n)
        got = self._store.lend_many_crcs([first * self._bs], [raw]) if self.lends else None
        if got is None:
            buf = memoryview(bytearray(RECORD_HEADER_SIZE + raw))
            return [buf[:self._encode_into(run, buf)]]
        (loan,), (crc,) = got
        kind, stored = KIND_DATA, raw
        if self._elide and crc == self._zero_crc_of(raw) and self._zeros.startswith(loan.buf):
            kind, stored, crc = KIND_ZERO, 0, 0
            self.zero_blocks += n
        hdr = bytearray(RECORD_HEADER_SIZE)
        _RECORD.pack_into(hdr, 0, RECORD_SYNC, self.records, first, n, g, kind, stored, crc)
        _U32.pack_into(hdr, RECORD_HEADER_SIZE - 4,
                       crc32c.crc32c(memoryview(hdr)[:RECORD_HEADER_SIZE - 4], self._seed))
        self._hash.update(hdr)
        self.records += 1
        self.blocks += n
        self.stored_bytes += stored
        hv = memoryview(hdr)
        return [hv, LoanSlice(loan, 0, raw)] if stored else [hv]

    def readinto(self, buf) -> int:
        """Fill ``buf`` with the next stream bytes; 0 at the end of the stream.

        The cyclic garbage collector is paused meanwhile (if it runs): a batch
        of records is thousands of views, slices and column lists alive at once
        and gone (by reference count: none is in a cycle) when it is done, so
        the collector only ever found nothing to free in them -- but each
        4 MiB of one-block records triggered several collections, and in a
        target holding its sessions, maps and runs, those of the older
        generations cost a differential of 128 MiB ~10% of the target's CPU.
        """
        paused = gc.isenabled()
        if paused:
            gc.disable()
        try:
            return self._readinto(buf)
        finally:
            if paused:
                gc.enable()

    def _readinto(self, buf) -> int:
        mv = memoryview(buf).cast("B")
        size = len(mv)
        w = 0
        while w < size:
            if self._parts:                 # left by readparts
                p = self._parts[0]
                k = min(p.nbytes, size - w)
                mv[w:w + k] = resolved(p)[:k]
                if k == p.nbytes:
                    del self._parts[0]
                else:
                    self._parts[0] = p[k:]
                w += k
                continue
            if self._pending is not None and len(self._pending):
                k = min(len(self._pending), size - w)
                mv[w:w + k] = self._pending[:k]
                self._pending = self._pending[k:]
                w += k
                continue
            if self._done:
                break
            if not self._compress:
                w = self._fast_records(mv, w)
                if w >= size:
                    break
            run = self._record_or_trailer()
            if run is None:
                continue
            need = RECORD_HEADER_SIZE + self.header.raw_length(run[0], run[1])
            if size - w >= need:
                w += self._encode_into(run, mv[w:w + need])     # straight into the caller's buffer
            else:
                if len(self._stage) < need:
                    self._stage = bytearray(need)
                stage = memoryview(self._stage)
                k = self._encode_into(run, stage[:need])
                self._pending = stage[:k]
        self.position += w
        return w

    def _record_batches(self):
        """The plan's runs cut into records of at most ``maxb`` blocks, as column
        lists (firsts, counts, generations) of a bounded length."""
        maxb = self._maxb
        big = maxb * _ENCODE_BATCH
        early, self._early = self._early, None
        for firsts, counts, gens in (_drain(early) if early is not None
                                     else self._plan.run_batches()):
            if max(counts) <= maxb:
                yield firsts, counts, gens
                continue
            pf: list[int] = []
            pn: list[int] = []
            pg: list[int] = []
            for f, n, g in zip(firsts, counts, gens):
                if n <= maxb:
                    pf.append(f)
                    pn.append(n)
                    pg.append(g)
                    continue
                while n:
                    take = min(n, big)
                    starts = range(f, f + take, maxb)
                    pf += starts
                    pn += repeat(maxb, len(starts) - 1)
                    pn.append(take - (len(starts) - 1) * maxb)
                    pg += repeat(g, len(starts))
                    f += take
                    n -= take
                    if len(pf) >= _ENCODE_BATCH:
                        yield pf, pn, pg
                        pf, pn, pg = [], [], []
            if pf:
                yield pf, pn, pg

    def _refill(self) -> bool:
        batch = next(self._batches, None)
        if batch is None:
            return False
        self._qf, self._qn, self._qg = batch
        self._qi = 0
        return True

    def _next_record(self) -> tuple[int, int, int] | None:
        i = self._qi
        if i >= len(self._qf):
            if not self._refill():
                return None
            i = 0
        self._qi = i + 1
        return self._qf[i], self._qn[i], self._qg[i]

    def _fast_records(self, mv: memoryview, w: int) -> int:
        """Encode uncompressed records into ``mv`` from ``w`` while they fit;
        return the new ``w``.  A record that does not fit stays queued for
        ``readinto`` to stage.

        The per-record cost of a scattered differential (thousands of one-block
        records) is all Python, so records go in batches of columns and every
        step is a C-level pass over them: lay out as many as fit (positions by
        ``accumulate``, the count by ``bisect``), read all their data straight
        into place with one ``readinto_many`` (neighbours merged into one
        vectored read), build their headers as columns of one scratch array,
        checksum them, and copy each in front of its data.  A batch in which a
        record may be all-zero is framed record by record: a zero record keeps
        only its header, and the data after it moves up.
        """
        size = len(mv)
        h = self.header
        bs, entries, vsize = self._bs, h.entries, h.volume_size
        store = self._store
        read_crcs = store.readinto_many_crcs
        crc = crc32c.crc32c
        pack, pack_crc, pack_full = _RECORD.pack_into, _U32.pack_into, _RECORD_CRC.pack_into
        seed = self._seed
        elide = self._elide
        zget = self._zero_crc.get
        zero_crc_of = self._zero_crc_of
        seq, blocks, zero_blocks, stored_sum = self.records, self.blocks, self.zero_blocks, \
            self.stored_bytes
        hdrs = bytearray()          # the record headers, hashed once per call
        RH = RECORD_HEADER_SIZE
        try:
            while size - w > RH:
                qi = self._qi
                if qi >= len(self._qf):
                    if not self._refill():
                        break
                    qi = 0
                # Lay out a batch as if every record kept its data (no more
                # records than could fit: each holds a block, but the last one).
                take = min(_ENCODE_BATCH, (size - w) // (RH + bs) + 1)
                firsts = self._qf[qi:qi + take]
                ns = self._qn[qi:qi + take]
                raws = list(map(mul, ns, repeat(bs)))
                if firsts[-1] + ns[-1] == entries:       # the volume's partial last block
                    raws[-1] = vsize - firsts[-1] * bs
                ends = list(accumulate(map(add, raws, repeat(RH)), initial=w))
                k = bisect_right(ends, size) - 1        # records that fit
                if k <= 0:
                    break
                if k < len(firsts):
                    del firsts[k:], ns[k:], raws[k:], ends[k + 1:]
                gs = self._qg[qi:qi + k]
                self._qi = qi + k
                places = ends[:k]
                offs = list(map(mul, firsts, repeat(bs)))
                views = list(map(mv.__getitem__, map(slice, map(add, places, repeat(RH)),
                                                     ends[1:])))
                lw = ends[k]
                crcs = read_crcs(offs, views)
                if _LITTLE_ENDIAN and (not elide or {zget(r) or zero_crc_of(r) for r in
                                                     set(raws)}.isdisjoint(crcs)):
                    # No record can be all-zero: every record keeps its place,
                    # so the headers are built together in a scratch array, a
                    # field at a time (strided stores), checksummed at C level
                    # (over slices of a bytes copy: cheaper objects than views)
                    # and packed in front of their data from the same columns
                    # (one call a record, no slice or view of either buffer).
                    hdr = bytearray(k * RH)
                    hv = memoryview(hdr)
                    words = hv.cast("I")
                    words[0::_RH_WORDS] = array("I", [_SYNC_WORD]) * k
                    seqs = range(seq, seq + k)
                    words[1::_RH_WORDS] = array("I", seqs)
                    hv.cast("Q")[1::_RH_WORDS // 2] = array("Q", firsts)
                    words[4::_RH_WORDS] = array("I", ns)
                    words[5::_RH_WORDS] = array("I", gs)
                    words[7::_RH_WORDS] = array("I", raws)       # kind 0 (data) at word 6
                    words[8::_RH_WORDS] = array("I", crcs)
                    hb = bytes(hdr)
                    if k >= _SLOT_CRC_MIN:
                        hcrcs = slot_crcs(hb, RH, RH - 4, k, seed)
                    else:
                        hcrcs = array("I", map(crc, map(hb.__getitem__, map(
                            slice, range(0, k * RH, RH), range(RH - 4, k * RH, RH))),
                            repeat(seed, k)))
                    words[9::_RH_WORDS] = hcrcs
                    list(map(pack_full, repeat(mv, k), places, repeat(RECORD_SYNC, k), seqs, firsts,
                             ns, gs, repeat(KIND_DATA, k), raws, crcs, hcrcs))
                    hdrs += hdr
                    seq += k
                    blocks += sum(ns)
                    stored_sum += lw - w - k * RH
                    w = lw
                    continue
                shifted = False
                for first, n, g, raw, body, dcrc in zip(firsts, ns, gs, raws, views, crcs):
                    if elide and dcrc == (zget(raw) or zero_crc_of(raw)) and \
                            self._zeros.startswith(body):
                        pack(mv, w, RECORD_SYNC, seq, first, n, g, KIND_ZERO, 0, 0)
                        zero_blocks += n
                        stored = 0
                    else:
                        if shifted:             # an earlier record of the batch was zero
                            mv[w + RH:w + RH + raw] = body
                        pack(mv, w, RECORD_SYNC, seq, first, n, g, KIND_DATA, raw, dcrc)
                        stored = raw
                    pack_crc(mv, w + RH - 4, crc(mv[w:w + RH - 4], seed))
                    hdrs += mv[w:w + RH]
                    seq += 1
                    blocks += n
                    stored_sum += stored
                    w += RH + stored
                    shifted = stored != raw or shifted
        finally:
            self._hash.update(hdrs)
            self.records, self.blocks, self.zero_blocks, self.stored_bytes = \
                seq, blocks, zero_blocks, stored_sum
        return w

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            parts = []
            while True:
                chunk = self.read(4 << 20)
                if not chunk:
                    return b"".join(parts)
                parts.append(chunk)
        buf = bytearray(n)
        k = self.readinto(buf)
        del buf[k:]
        return bytes(buf)


# ---------------------------------------------------------------------------
# Decoder
# ---------------------------------------------------------------------------
_ST_HEADER, _ST_MARK, _ST_RECORD, _ST_PAYLOAD, _ST_TRAILER, _ST_RESYNC, _ST_DONE, _ST_DEAD = range(8)


class StreamDecoder:
    """Bytes in any chunking → Records and Damage, then ``finish()``.

    Record data is a zero-copy slice when the record lies inside one ``bytes``
    chunk, else an owned copy.  Memory is bounded by one record
    (``MAX_RECORD_BYTES``) plus one fed chunk.
    """

    def __init__(self, *, borrow: bool = False,
                 record_batches: Callable[[list[tuple]], None] | None = None) -> None:
        # borrow=True: record data fed as a bytearray/memoryview is returned as a
        # view into it, valid only until the next feed() (no copy; the caller
        # must use or copy it first).  bytes input is always sliced zero-copy.
        # record_batches: runs of plain intact records go there as lists of
        # (first_block, nblocks, generation, data) instead of one Record each
        # to the sink (a scattered differential is thousands of tiny records);
        # everything else still goes to the sink, in stream order.
        self._borrow = borrow
        self._record_batches = record_batches
        self.header: StreamHeader | None = None
        self.trailer: Trailer | None = None
        self._state = _ST_HEADER
        self._carry = bytearray()
        self._off = 0                   # stream offset of the first unconsumed byte
        self._need = HEADER_SIZE
        self._seed = 0
        self._next_seq = 0
        self._hash = hashlib.sha256()
        self._records = 0
        self._blocks = 0
        self._stored = 0
        self._damaged = 0
        self._errors: list[str] = []
        self._rec: tuple | None = None          # parsed record header awaiting payload
        self._bad_start = -1                    # resync: where the damage began
        self._bad_reason = ""
        self._padding_bad = False
        self._finished = False

    # -- driver ---------------------------------------------------------------
    def feed(self, data, sink: Emit | None = None) -> list[Item]:
        """Decode the next bytes.  Items are returned as a list, or, with ``sink``,
        handed to it one by one as they complete (and an empty list returned): a
        sink keeps memory flat however large ``data`` is."""
        if self._finished:
            raise StreamError("feed() after finish()")
        out: list[Item] = []
        emit = out.append if sink is None else sink
        if isinstance(data, bytes):
            src, owned = data, True
        else:
            src, owned = memoryview(data).cast("B"), self._borrow
        i, n = 0, len(src)
        while True:
            if self._carry:
                # An item straddles feeds: complete it in the carry (one copy of
                # its bytes), parse it there, then go back to the caller's buffer.
                st = self._state
                if st in (_ST_DONE, _ST_DEAD):
                    take = 0
                elif st == _ST_RESYNC:
                    take = min(n - i, _RESYNC_WINDOW)
                else:
                    take = max(0, min(n - i, self._need - len(self._carry)))
                if take:
                    self._carry += memoryview(src)[i:i + take]
                    i += take
                if len(self._carry) < self._need and st not in (_ST_RESYNC, _ST_DONE, _ST_DEAD):
                    break
                buf = self._carry
                # Never touched again by the decoder, so records may keep views into it.
                self._carry = bytearray()
                p = self._parse(buf, 0, True, emit)
                if p < len(buf):
                    self._carry = bytearray(memoryview(buf)[p:])
                if i >= n:
                    break
                continue
            p = self._parse(src, i, owned, emit)
            if p < n:
                self._carry = bytearray(memoryview(src)[p:])
            break
        return out

    def _parse(self, buf, pos: int, owned: bool, emit: Emit) -> int:
        """Consume whole items from buf[pos:]; return where an incomplete one starts."""
        end = len(buf)
        while True:
            st = self._state
            avail = end - pos
            if st == _ST_HEADER:
                self._need = HEADER_SIZE
                if avail < HEADER_SIZE:
                    return pos
                try:
                    self.header = StreamHeader.unpack(memoryview(buf)[pos:pos + HEADER_SIZE])
                except StreamError as exc:
                    emit(Damage(self._off, HEADER_SIZE, f"stream header unusable: {exc}"))
                    self._damaged += 1
                    self._errors.append(f"stream header unusable: {exc}")
                    self._state = _ST_DEAD
                else:
                    self._seed = _seed(self.header.stream_id)
                    self._state = _ST_MARK
                pos += HEADER_SIZE
                self._off += HEADER_SIZE
            elif st == _ST_MARK:
                if avail >= RECORD_HEADER_SIZE and self._bad_start < 0:
                    p = self._fast_records(buf, pos, end, owned, emit)
                    if p != pos:
                        pos = p
                        continue
                self._need = 4
                if avail < 4:
                    return pos
                mark = bytes(buf[pos:pos + 4])
                if mark == RECORD_SYNC:
                    self._state = _ST_RECORD
                elif mark == TRAILER_SYNC:
                    self._state = _ST_TRAILER
                else:
                    self._start_damage("no sync marker where a record should start")
                    self._state = _ST_RESYNC
            elif st == _ST_RECORD:
                self._need = RECORD_HEADER_SIZE
                if avail < RECORD_HEADER_SIZE:
                    return pos
                hv = memoryview(buf)[pos:pos + RECORD_HEADER_SIZE]
                problem = self._check_record_header(hv)
                if problem:
                    self._start_damage(problem)
                    pos, self._state = self._skip_one(pos)
                    continue
                self._state = _ST_PAYLOAD
                self._need = RECORD_HEADER_SIZE + self._rec[6]
            elif st == _ST_PAYLOAD:
                if avail < self._need:
                    return pos
                pos = self._finish_record(buf, pos, owned, emit)
                self._state = _ST_MARK
            elif st == _ST_TRAILER:
                self._need = TRAILER_SIZE
                if avail < TRAILER_SIZE:
                    return pos
                tv = memoryview(buf)[pos:pos + TRAILER_SIZE]
                (crc,) = struct.unpack_from("<I", tv, TRAILER_SIZE - 4)
                if crc32c.crc32c(tv[:-4], self._seed) != crc:
                    self._start_damage("trailer checksum mismatch")
                    pos, self._state = self._skip_one(pos)
                    continue
                _, rc, bc, sb, dg = _TRAILER.unpack_from(tv)
                self.trailer = Trailer(rc, bc, sb, dg)
                pos += TRAILER_SIZE
                self._off += TRAILER_SIZE
                self._state = _ST_DONE
            elif st == _ST_RESYNC:
                self._need = 4
                k = _find_marker(buf, pos)
                if k < 0:
                    keep = max(pos, end - 3)          # a marker may straddle chunks
                    self._off += keep - pos
                    return keep
                self._off += k - pos
                pos = k
                self._end_damage(emit)
                self._state = _ST_MARK
            elif st == _ST_DONE:
                self._need = 1
                if avail and not self._padding_bad:
                    tail = bytes(buf[pos:end])
                    rest = tail.lstrip(b"\0")
                    if rest:
                        self._padding_bad = True
                        self._errors.append(f"non-zero bytes after the trailer (from stream offset "
                                            f"{self._off + len(tail) - len(rest)})")
                self._off += avail
                return end
            else:  # _ST_DEAD: nothing after an unusable header can be verified
                self._need = 1
                self._off += avail
                return end

    def _fast_records(self, buf, pos: int, end: int, owned: bool, emit: Emit) -> int:
        """Consume a run of complete, intact, in-sequence data/zero records with
        everything in local variables; return where the run stops.  Anything
        else (incomplete, damaged, compressed, trailer) is left to the state
        machine, which repeats the checks and reports precisely.

        With a ``record_batches`` sink the run is handed over as one list of
        ``(first_block, nblocks, generation, data)`` tuples (data None for a
        zero record) before this returns, so nothing that follows in the stream
        (damage, the trailer) is reported ahead of it."""
        mv = buf if isinstance(buf, memoryview) else memoryview(buf)
        h = self.header
        seed = self._seed
        entries, maxb, bs, vsize = h.entries, h.max_record_blocks, h.block_size, h.volume_size
        lo, hi = h.generation_range
        unpack = _RECORD_CRC.unpack_from
        crc = crc32c.crc32c
        batch_sink = self._record_batches
        batch: list[tuple] = []
        push = batch.append
        seq_want = self._next_seq
        start = pos
        records = blocks = stored_sum = 0
        RH = RECORD_HEADER_SIZE
        hdrs = bytearray()              # headers of the run, hashed once
        vector_in = 0 if batch_sink is not None else -1
        try:
            while end - pos >= RH:
                sync, seq, first, n, gen, kind, stored, dcrc, hcrc = unpack(mv, pos)
                if vector_in == 0:
                    # A run of data records (a scattered differential): walk the
                    # headers once, then check them as columns with C-level calls
                    # instead of field by field.
                    tups = []
                    places = []
                    p = pos
                    while end - p >= RH and len(tups) < _DECODE_BATCH:
                        t = unpack(mv, p)
                        q = p + RH + t[6]
                        if q > end or t[5] != KIND_DATA:
                            break
                        tups.append(t)
                        places.append(p)
                        p = q
                    k = len(tups)
                    if k >= 8:
                        syncs, seqs, firsts, ns, gens, _kinds, storeds, dcrcs, _h = zip(*tups)
                        hv = [mv[x:x + RH] for x in places]
                        if (syncs.count(RECORD_SYNC) == k and
                                seqs == tuple(range(seq_want, seq_want + k)) and
                                min(ns) >= 1 and max(ns) <= maxb and min(firsts) >= 0 and
                                max(map(add, firsts, ns)) < entries and
                                lo <= min(gens) and max(gens) <= hi and
                                list(map(mul, ns, repeat(bs, k))) == list(storeds) and
                                list(map(crc, hv, repeat(seed, k))).count(_HEADER_RESIDUE) == k):
                            payloads = [mv[x + RH:x + RH + y] for x, y in zip(places, storeds)]
                            if list(map(crc, payloads)) == list(dcrcs):
                                if not owned:
                                    payloads = [bytes(x) for x in payloads]
                                hdrs += b"".join(hv)
                                batch.extend(zip(firsts, ns, gens, payloads))
                                seq_want += k
                                records += k
                                blocks += sum(ns)
                                stored_sum += p - pos - k * RH
                                pos = p
                                continue
                    vector_in = _VECTOR_RETRY
                elif vector_in > 0:
                    vector_in -= 1
                if sync != RECORD_SYNC or seq != seq_want or kind > KIND_ZERO:
                    break
                if crc(mv[pos:pos + RH - 4], seed) != hcrc:
                    break
                if n < 1 or n > maxb or first + n > entries or not lo <= gen <= hi:
                    break
                raw = n * bs if first + n < entries else vsize - first * bs
                stop = pos + RH + stored
                if stored != (raw if kind == KIND_DATA else 0) or stop > end:
                    break
                if kind == KIND_DATA:
                    payload = mv[pos + RH:stop]
                    if crc(payload) != dcrc:
                        break
                    data = payload if owned else bytes(payload)
                else:
                    data = None
                hdrs += mv[pos:pos + RH]
                seq_want += 1
                records += 1
                blocks += n
                stored_sum += stored
                if batch_sink is None:
                    rec = Record(seq, first, n, gen, kind, data, self._off + pos - start, raw)
                    pos = stop
                    emit(rec)
                else:
                    push((first, n, gen, data))
                    pos = stop
        finally:
            self._hash.update(hdrs)
            self._next_seq = seq_want
            self._records += records
            self._blocks += blocks
            self._stored += stored_sum
            self._off += pos - start
        if batch:
            batch_sink(batch)
        return pos

    def _skip_one(self, pos: int) -> tuple[int, int]:
        self._off += 1
        return pos + 1, _ST_RESYNC

    def _start_damage(self, reason: str) -> None:
        if self._bad_start < 0:
            self._bad_start = self._off
            self._bad_reason = reason

    def _end_damage(self, emit: Emit) -> None:
        if self._bad_start >= 0:
            emit(Damage(self._bad_start, self._off - self._bad_start, self._bad_reason))
            self._damaged += 1
            self._bad_start = -1

    def _check_record_header(self, hv: memoryview) -> str:
        (crc,) = struct.unpack_from("<I", hv, RECORD_HEADER_SIZE - 4)
        if crc32c.crc32c(hv[:-4], self._seed) != crc:
            return "record header checksum mismatch"
        _, seq, first, n, gen, kind, stored, dcrc = _RECORD.unpack_from(hv)
        h = self.header
        if n < 1 or n > h.max_record_blocks or first + n > h.entries:
            return f"record {seq}: blocks {first}+{n} invalid for this stream"
        raw = h.raw_length(first, n)
        lo, hi = h.generation_range
        if not lo <= gen <= hi:
            return f"record {seq}: generation {gen} outside the stream's {lo}..{hi}"
        if kind == KIND_DATA:
            ok = stored == raw
        elif kind == KIND_ZERO:
            ok = stored == 0
        elif kind == KIND_ZLIB:
            ok = 0 < stored < raw and bool(h.flags & FLAG_COMPRESSED)
        else:
            return f"record {seq}: unknown kind {kind}"
        if not ok:
            return f"record {seq}: stored length {stored} invalid for kind {kind} of {raw} bytes"
        self._rec = (seq, first, n, gen, kind, raw, stored, dcrc, bytes(hv))
        return ""

    def _finish_record(self, buf, pos: int, owned: bool, emit: Emit) -> int:
        seq, first, n, gen, kind, raw, stored, dcrc, hdr = self._rec
        self._rec = None
        off = self._off
        self._end_damage(emit)
        if seq != self._next_seq:
            if seq > self._next_seq:
                emit(Damage(off, 0, f"records {self._next_seq}..{seq - 1} missing before "
                                          f"this point", seq=self._next_seq))
                self._damaged += 1
            else:
                emit(Damage(off, RECORD_HEADER_SIZE + stored,
                                  f"record {seq} repeated or out of order (expected {self._next_seq})",
                                  first, n, gen, seq))
                self._damaged += 1
                self._off += RECORD_HEADER_SIZE + stored
                return pos + RECORD_HEADER_SIZE + stored
        self._next_seq = seq + 1
        start = pos + RECORD_HEADER_SIZE
        payload = memoryview(buf)[start:start + stored]
        data = None
        bad = ""
        if kind == KIND_DATA:
            data = payload if owned else bytes(payload)
        elif kind == KIND_ZLIB:
            try:
                d = zlib.decompressobj()
                data = d.decompress(payload, raw)
                if len(data) != raw or not d.eof or d.unconsumed_tail or d.unused_data:
                    bad = "compressed payload does not decode to the record's size"
            except zlib.error as exc:
                bad = f"compressed payload undecodable ({exc})"
        if not bad and kind != KIND_ZERO and crc32c.crc32c(data) != dcrc:
            bad = "data checksum mismatch"
        self._hash.update(hdr)
        if bad:
            emit(Damage(off, RECORD_HEADER_SIZE + stored, f"record {seq}: {bad}",
                              first, n, gen, seq))
            self._damaged += 1
        else:
            emit(Record(seq, first, n, gen, kind, data, off, raw))
            self._records += 1
            self._blocks += n
        self._stored += stored
        self._off += RECORD_HEADER_SIZE + stored
        return start + stored

    def finish(self) -> StreamEnd:
        """End of input: report truncation and trailer mismatches."""
        self._finished = True
        errors = list(self._errors)
        end = StreamEnd(self.header, self.trailer, self._records, self._damaged, self._blocks, errors)
        if self._state == _ST_DEAD:
            return end
        if self.header is None:
            errors.append(f"stream truncated: {self._off + len(self._carry)} bytes, "
                          f"shorter than its header")
            return end
        if self._state != _ST_DONE:
            total = self._off + len(self._carry)
            if self._bad_start >= 0:
                end.damaged += 1
                errors.append(f"stream damaged from byte {self._bad_start} to its end at byte "
                              f"{total} ({self._bad_reason}); no valid trailer")
            elif self._state in (_ST_RECORD, _ST_PAYLOAD):
                errors.append(f"stream truncated at byte {total} inside record {self._next_seq} "
                              f"(starting at byte {self._off}); no trailer")
            else:
                errors.append(f"stream truncated at byte {total}: no trailer after record "
                              f"{self._next_seq - 1}")
            return end
        t = self.trailer
        if t.record_count != self._next_seq:
            errors.append(f"trailer counts {t.record_count} records, the stream holds "
                          f"{self._next_seq}")
        if t.block_count != self.header.block_count:
            errors.append(f"trailer counts {t.block_count} blocks, the header announced "
                          f"{self.header.block_count}")
        if self._damaged == 0:
            if self._blocks != t.block_count:
                errors.append(f"records hold {self._blocks} blocks, the trailer says {t.block_count}")
            if self._hash.digest() != t.digest:
                errors.append("digest over the record headers does not match the trailer")
        return end


def _find_marker(buf, pos: int) -> int:
    """Offset of the next record or trailer marker at or after ``pos``, or -1."""
    if isinstance(buf, memoryview):
        # Damage path only: search copied windows, so a resync costs the distance
        # to the next marker, not the rest of a (possibly huge) borrowed buffer.
        end = len(buf)
        while pos < end:
            stop = min(end, pos + _RESYNC_WINDOW)
            k = _find_marker(bytes(buf[pos:min(end, stop + 3)]), 0)
            if k >= 0:
                return pos + k
            pos = stop
        return -1
    a = buf.find(RECORD_SYNC, pos)
    b = buf.find(TRAILER_SYNC, pos)
    if a < 0:
        return b
    if b < 0:
        return a
    return min(a, b)
