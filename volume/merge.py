"""Synthetic full and merged differentials: one stream built from a chain of
stored streams, without the volume (docs/backup-merge.md).

    merge(["full.bk", "d1.bk", ..., "d5.bk"], "new-full.bk")   -> a full stream
    merge(["d1.bk", "d2.bk", "d3.bk"], "d1-3.bk")               -> one differential
    merge(["s3://b/full", "d1.bk"], "s3://b/new-full")          -> any stream store

Inputs and output are stream stores (``volume/streamstore.py``): stream files
and ``s3://BUCKET/KEY`` objects, mixed.  The output holds, for every block,
the copy a restore of the chain would leave there -- chosen by the rule
restore itself applies (``volume/precedence.py``) -- so restoring it is
byte-identical to restoring the chain.  Records keep the generation of the
copy they carry; a synthetic full's header range is ``0..hi`` (hi = the
chain's newest generation), so the differentials the target takes after the
chain continue it (docs/backup-stream-format.md).

Nothing is merged from damaged input: every input is decoded in full first
(pass 1), and any damage, truncation, trailer or chain problem refuses the
merge and names the blocks whose newest copy was lost.  Falling back to an
older copy of such a block would be wrong (the newer generation overwrote it),
so there is no fallback.  Pass 2 re-reads each chosen record by its offset
(reading forward; an S3 object through one GET pinned to the ETag pass 1
read) and checks its header and data CRCs again (the inputs may not change
between the passes).  Every byte handed to the output is decoded once more as
it is written, and the output is committed (a file renamed from
``OUT.partial``, an S3 multipart upload completed) only when that decode
checks out; any failure aborts it and leaves nothing.

Memory: two 4-byte entries per block (which record holds the copy kept) plus
the restored generations as bit planes, one record per input, the output's
buffers (one chunk here; an S3 upload's parts in flight) -- never a stream.
"""
from __future__ import annotations

import hashlib
import os
import struct
import time
import zlib
from array import array
from dataclasses import dataclass, field
from itertools import groupby
from typing import Callable, Sequence

import crc32c
from bitarray import bitarray

from .backup import decode_stream
from .genmap import extents
from .precedence import GenerationPlanes, leaves_generation, taken
from .restore import check_chain
from .stream import (FLAG_FULL, HEADER_SIZE, KIND_DATA, KIND_ZERO, KIND_ZLIB, RECORD_HEADER_SIZE,
                     RECORD_SYNC, TRAILER_SIZE, TRAILER_SYNC, Damage, Record, StreamDecoder,
                     StreamError, StreamHeader, _RECORD, _RECORD_CRC, _TRAILER, _seed)
from .streamstore import (StreamRef, StreamStoreError, StreamWriter, is_s3_url, open_ref,
                          open_writer, same_stream)

__all__ = ["merge", "MergeResult", "MergeRefused", "MergeError"]

_CHUNK = 8 << 20          # read size while reading through a gap
_OUT_CHUNK = 4 << 20      # output bytes handed to the store (and its check) at once
_SKIP_READ = 1 << 20      # gaps read through rather than seeked over where a seek is a request
_NONE = -1
Progress = Callable[[int, int], None]


class MergeError(Exception):
    """The merge could not be carried out (an input changed under it, the output did
    not verify); nothing was written."""


class MergeRefused(MergeError):
    """The inputs cannot be merged; nothing was written.  ``problems`` are one
    line each; ``lost`` are the block extents whose newest copy is damaged."""

    def __init__(self, problems: Sequence[str], lost: Sequence[tuple[int, int]] = ()) -> None:
        self.problems = list(problems)
        self.lost = list(lost)
        super().__init__("; ".join(self.problems))


@dataclass
class MergeResult:
    output: str
    full: bool
    generation_range: tuple[int, int]
    blocks: int
    records: int
    bytes_written: int
    input_bytes: int
    inputs: list[str] = field(default_factory=list)


@dataclass
class _Input:
    ref: StreamRef
    header: StreamHeader | None = None
    size: int = 0
    damage: list[Damage] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.ref.name


# A record chosen in pass 1: (input index, stream offset, seq, first, n, generation, kind).
_Rec = tuple[int, int, int, int, int, int, int]


def _identity(inp: _Input, ref: _Input) -> list[str]:
    h, r = inp.header, ref.header
    e = []
    if h.volume_id != r.volume_id:
        e.append(f"{inp.name} is a backup of volume {h.volume_id.hex()}, {ref.name} of volume "
                 f"{r.volume_id.hex()}")
    if h.block_size != r.block_size:
        e.append(f"{inp.name} tracks {h.block_size}-byte blocks, {ref.name} {r.block_size}-byte "
                 f"blocks")
    if h.volume_size != r.volume_size:
        e.append(f"{inp.name} is for a {h.volume_size}-byte volume, {ref.name} for "
                 f"{r.volume_size} bytes")
    if h.base_id != r.base_id and not e:
        e.append(f"{inp.name} belongs to full backup {h.base_id.hex()}, {ref.name} to "
                 f"{r.base_id.hex()}")
    return e


class _ForwardReader:
    """One input read by offset, mostly forward: one open reader (one GET for an S3
    object); short gaps are read through where a seek costs a new request."""

    def __init__(self, ref: StreamRef) -> None:
        self.f = ref.open()
        self.pos = 0
        self.skip = 0 if ref.cheap_seek else _SKIP_READ

    def read_at(self, offset: int, length: int) -> bytes:
        gap = offset - self.pos
        if 0 < gap <= self.skip:
            while gap > 0:
                k = len(self.f.read(min(gap, _CHUNK)))
                if not k:
                    break
                gap -= k
                self.pos += k
        if self.pos != offset:
            self.f.seek(offset)
        data = self.f.read(length)
        self.pos = offset + len(data)
        return data

    def close(self) -> None:
        self.f.close()


class _Payloads:
    """Pass 2: the data of chosen records, re-read by offset and re-checked."""

    def __init__(self, inputs: list[_Input]) -> None:
        self._inputs = inputs
        self._readers: list[_ForwardReader | None] = [None] * len(inputs)
        self._seeds = [_seed(i.header.stream_id) for i in inputs]
        self._cache: list[tuple[int, memoryview] | None] = [None] * len(inputs)

    def close(self) -> None:
        for r in self._readers:
            if r is not None:
                r.close()
        self._readers = [None] * len(self._readers)

    def _reader(self, i: int) -> _ForwardReader:
        r = self._readers[i]
        if r is None:
            r = self._readers[i] = _ForwardReader(self._inputs[i].ref)
        return r

    def data(self, rid: int, rec: _Rec, raw: int) -> memoryview:
        i, off, seq, first, n, gen, kind = rec
        hit = self._cache[i]
        if hit is not None and hit[0] == rid:
            return hit[1]
        reader = self._reader(i)
        hdr = reader.read_at(off, RECORD_HEADER_SIZE)
        bad = len(hdr) < RECORD_HEADER_SIZE
        if not bad:
            sync, s2, f2, n2, g2, k2, stored, dcrc, hcrc = _RECORD_CRC.unpack(hdr)
            bad = (sync != RECORD_SYNC or (s2, f2, n2, g2, k2) != (seq, first, n, gen, kind) or
                   crc32c.crc32c(hdr[:-4], self._seeds[i]) != hcrc)
        if not bad:
            payload = reader.read_at(off + RECORD_HEADER_SIZE, stored)
            if kind == KIND_ZLIB:
                try:
                    payload = zlib.decompress(payload)
                except zlib.error:
                    payload = b""
            bad = len(payload) != raw or crc32c.crc32c(payload) != dcrc
        if bad:
            raise MergeError(f"{self._inputs[i].name} changed while it was merged (record {seq} "
                             f"at byte {off} no longer checks out); nothing written")
        mv = memoryview(payload)
        self._cache[i] = (rid, mv)
        return mv


class _Writer:
    """Stream format v1 records and trailer, handed to the output store as they come;
    every piece is decoded again on the way (the output's check before commit)."""

    def __init__(self, sink: StreamWriter, header: StreamHeader) -> None:
        self.sink = sink
        self.header = header
        self.seed = _seed(header.stream_id)
        self.hash = hashlib.sha256()
        self.records = self.blocks = self.stored = 0
        self.bytes = 0
        self._pieces: list = []
        self._held = 0
        self._check = StreamDecoder(borrow=True)
        self._bad: list[str] = []
        self._put(header.pack())

    def _checked(self, item) -> None:
        if isinstance(item, Damage) and len(self._bad) < 3:
            self._bad.append(item.reason)

    def _put(self, b) -> None:
        # Pieces are joined into chunks: the store and its check (the decoder's
        # column path) each take a few large writes instead of thousands of small.
        self._pieces.append(b)
        self._held += len(b)
        self.bytes += len(b)
        if self._held >= _OUT_CHUNK:
            self._flush()

    def _flush(self) -> None:
        chunk = b"".join(self._pieces)
        self._pieces.clear()
        self._held = 0
        self.sink.write(chunk)
        self._check.feed(chunk, self._checked)

    def record(self, first: int, n: int, gen: int, parts: list) -> None:
        if parts is None:
            kind, stored, dcrc = KIND_ZERO, 0, 0
        else:
            kind, stored, dcrc = KIND_DATA, 0, 0
            for p in parts:
                dcrc = crc32c.crc32c(p, dcrc)
                stored += len(p)
        h = bytearray(RECORD_HEADER_SIZE)
        _RECORD.pack_into(h, 0, RECORD_SYNC, self.records, first, n, gen, kind, stored, dcrc)
        struct.pack_into("<I", h, RECORD_HEADER_SIZE - 4, crc32c.crc32c(h[:-4], self.seed))
        self.hash.update(h)
        self._put(h)
        for p in parts or ():
            self._put(p)
        self.records += 1
        self.blocks += n
        self.stored += stored

    def finish(self) -> str:
        """Write the trailer; what the check of everything written found wrong ("" if nothing)."""
        b = bytearray(TRAILER_SIZE)
        _TRAILER.pack_into(b, 0, TRAILER_SYNC, self.records, self.blocks, self.stored,
                           self.hash.digest())
        struct.pack_into("<I", b, TRAILER_SIZE - 4, crc32c.crc32c(b[:-4], self.seed))
        self._put(b)
        self._flush()
        end = self._check.finish()
        bad = self._bad + end.errors
        if not bad and end.trailer is None:
            bad.append("no trailer")
        if not bad and (end.records, end.blocks) != (self.records, self.header.block_count):
            bad.append(f"{end.records} records of {end.blocks} blocks, {self.records} of "
                       f"{self.header.block_count} expected")
        return "; ".join(bad)


def _as_ref(src, s3_options: dict | None) -> StreamRef:
    if isinstance(src, StreamRef):
        return src
    return open_ref(os.fspath(src), s3_options=s3_options)


def _read_headers(streams: Sequence, s3_options: dict | None) -> list[_Input]:
    inputs: list[_Input] = []
    problems: list[str] = []
    for src in streams:
        try:
            ref = _as_ref(src, s3_options)
        except StreamStoreError as e:
            problems.append(str(e))
            continue
        inp = _Input(ref)
        inputs.append(inp)
        try:
            inp.size = ref.size()
            inp.header = StreamHeader.unpack(ref.read_range(0, HEADER_SIZE))
        except StreamError as e:
            problems.append(f"{inp.name}: {e}")
        except StreamStoreError as e:
            problems.append(str(e))
        except OSError as e:
            problems.append(f"{inp.name}: {e.strerror or e}")
    if problems:
        raise MergeRefused(problems)
    return inputs


def merge(streams: Sequence, output, *, progress: Progress | None = None, force: bool = False,
          s3_options: dict | None = None) -> MergeResult:
    """Merge a chain (a full stream then differentials, or differentials only) into
    one stream at ``output``.

    ``streams``: paths, ``s3://BUCKET/KEY`` names or :class:`StreamRef` s.
    ``output``: a path or ``s3://`` name (opened with ``force``: an existing S3 key
    is refused without it, a file is replaced) or a :class:`StreamWriter`, which
    the merge commits once the merged stream verified and aborts otherwise.
    ``progress(done, total)``: bytes of pass 1.  Raises MergeRefused (nothing
    written) for damaged, mismatched or out-of-order inputs, MergeError when an
    input changed between the passes or the output did not verify, and
    :class:`StreamStoreError` when a store failed; the output is aborted then.
    """
    if not streams:
        raise MergeRefused(["no streams to merge"])
    sink = output if isinstance(output, StreamWriter) else None
    try:
        out_name = sink.name if sink is not None else os.fspath(output)
        for s in streams:
            name = s.name if isinstance(s, StreamRef) else os.fspath(s)
            if same_stream(name, out_name):
                raise MergeRefused([f"the output {out_name} is one of the inputs"])
        inputs = _read_headers(streams, s3_options)
        _check_inputs(inputs)
        if sink is None:
            sink = open_writer(out_name, force=force or not is_s3_url(out_name),
                               s3_options=s3_options)
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    with sink:                      # committed only when everything below returned
        owner, recs = _choose(inputs, progress)
        header, grange = _merged_header(inputs, owner)
        payloads = _Payloads(inputs)
        try:
            w = _Writer(sink, header)
            _write_records(w, owner, recs, payloads, header)
            check = w.finish()
        finally:
            payloads.close()
        if check:
            raise MergeError(f"the merged stream did not verify ({check}); nothing written")
    return MergeResult(sink.name, header.full, grange, w.blocks, w.records, w.bytes,
                       sum(i.size for i in inputs), [i.name for i in inputs])


def _check_inputs(inputs: list[_Input]) -> None:
    ref = inputs[0]
    problems: list[str] = []
    for inp in inputs[1:]:
        problems += _identity(inp, ref)
    if problems:
        raise MergeRefused(problems)
    problems += check_chain([(i.name, i.header) for i in inputs])
    if problems:
        raise MergeRefused(problems)


def _choose(inputs: list[_Input], progress: Progress | None) -> tuple[array, list[_Rec]]:
    """Pass 1: decode every input in full; per block, the record a restore of the
    chain keeps (``owner``, an index into the records).  Any damage refuses."""
    entries = inputs[0].header.entries
    owner = array("i", [_NONE]) * entries       # index into recs of the copy kept
    held = GenerationPlanes(entries)            # that copy's generation in a restored map
    lost = bitarray(entries, endian="little")   # newest copy damaged, none taken since
    lost.setall(0)
    recs: list[_Rec] = []
    problems: list[str] = []
    unknown = False                             # damage whose blocks are unknown
    damaged = False                             # some of lost set
    total = sum(i.size for i in inputs)
    done = 0

    for idx, inp in enumerate(inputs):
        full = inp.header.full

        def sink(item, idx=idx, inp=inp, full=full) -> None:
            nonlocal unknown, damaged
            if isinstance(item, Damage):
                inp.damage.append(item)
                if item.first_block is None:
                    unknown = True
                else:
                    a, n = item.first_block, item.nblocks
                    lost[a:a + n] |= taken(held, full, a, n, item.generation)
                    damaged = True
                return
            rec: Record = item
            rid = len(recs)
            first, n, g = rec.first_block, rec.nblocks, rec.generation
            recs.append((idx, rec.offset, rec.seq, first, n, g, rec.kind))
            take = taken(held, full, first, n, g)
            runs = ((0, n),) if take.all() else tuple(extents(take))
            for a, k in runs:
                owner[first + a:first + a + k] = array("i", [rid]) * k
            if damaged:
                lost[first:first + n] &= ~take
            leaves = leaves_generation(full, g)
            if leaves is not None and runs:
                held.apply_restored_mask(first, take, leaves)

        end, n = decode_stream(inp.ref, sink, progress, done, total)
        done += n
        inp.errors += end.errors
        for d in inp.damage:
            where = f"blocks {d.first_block}..{d.first_block + d.nblocks - 1}, generation " \
                    f"{d.generation}" if d.first_block is not None else "blocks unknown"
            problems.append(f"{inp.name} at byte {d.offset}: {d.reason} ({where})")
        problems += [f"{inp.name}: {e}" for e in inp.errors]

    if problems:
        # The blocks whose newest copy is among the damage: no intact copy of that
        # generation or newer was taken after it.  (Fuzzy damage taints the chain.)
        lost_ext = list(extents(lost))
        if lost_ext:
            nl = sum(k for _a, k in lost_ext)
            problems.append(f"{nl} blocks have a damaged newest copy: " +
                            ", ".join(f"{a}..{a + k - 1}" for a, k in lost_ext[:10]) +
                            (" ..." if len(lost_ext) > 10 else "") +
                            "; an older copy would be wrong data, so they cannot be merged")
        if unknown:
            problems.append("records with unreadable headers were lost: the blocks they held "
                            "are unknown")
        raise MergeRefused(problems, lost_ext)
    return owner, recs


def _merged_header(inputs: list[_Input], owner: array) -> tuple[StreamHeader, tuple[int, int]]:
    h0 = inputs[0].header
    full = h0.full
    los = [i.header.generation_range[0] for i in inputs]
    his = [i.header.generation_range[1] for i in inputs]
    grange = (0, max(his)) if full else (min(los), max(his))
    if full:
        missing = [(a, k) for v, a, k in _runs(owner) if v == _NONE]
        if missing:
            raise MergeRefused([f"{inputs[0].name}: the full stream does not cover blocks " +
                                ", ".join(f"{a}..{a + k - 1}" for a, k in missing[:10])])
    covered = h0.entries - owner.count(_NONE)
    maxb = max(i.header.max_record_blocks for i in inputs)
    header = StreamHeader(h0.volume_id, h0.block_size, h0.volume_size, h0.entries, grange,
                          covered, FLAG_FULL if full else 0, maxb, h0.base_id, os.urandom(16),
                          time.time_ns())
    return header, grange


def _write_records(w: _Writer, owner: array, recs: list[_Rec], payloads: _Payloads,
                   header: StreamHeader) -> None:
    """Pass 2: the kept copies in block order, neighbours of one generation joined
    up to the largest record size."""
    bs, vsize, maxb = header.block_size, header.volume_size, header.max_record_blocks
    pend: list | None = None        # [first, n, gen, parts or None]
    for rid, a, k in _runs(owner):
        if rid == _NONE:
            continue
        rec = recs[rid]
        _i, _off, _seq, first, n, gen, kind = rec
        while k:
            take = min(k, maxb)
            if kind == KIND_ZERO:
                piece = None
            else:
                raw = min((first + n) * bs, vsize) - first * bs
                data = payloads.data(rid, rec, raw)
                lo_b = (a - first) * bs
                piece = data[lo_b:min((a + take) * bs, vsize) - first * bs]
            if (pend is not None and pend[0] + pend[1] == a and pend[2] == gen and
                    (pend[3] is None) == (piece is None) and pend[1] + take <= maxb):
                pend[1] += take
                if piece is not None:
                    pend[3].append(piece)
            else:
                if pend is not None:
                    w.record(*pend)
                pend = [a, take, gen, None if piece is None else [piece]]
            a += take
            k -= take
    if pend is not None:
        w.record(*pend)


def _runs(a: array):
    """(value, first, count) of each run of equal entries."""
    pos = 0
    for v, grp in groupby(a):
        k = len(list(grp))
        yield v, pos, k
        pos += k
