"""Synthetic full and merged differentials: one stream built from a chain of
stream files, without the volume (docs/backup-merge.md).

    merge(["full.bk", "d1.bk", ..., "d5.bk"], "new-full.bk")   -> a full stream
    merge(["d1.bk", "d2.bk", "d3.bk"], "d1-3.bk")               -> one differential

The output holds, for every block, the copy a restore of the chain would
leave there -- the same rule as ``volume.restore`` (a full stream's records
always apply; a differential record applies to blocks whose restored entry is
older than its generation) -- so restoring it is byte-identical to restoring
the chain.  Records keep the generation of the copy they carry; a synthetic
full's header range is ``0..hi`` (hi = the chain's newest generation), so the
differentials the target takes after the chain continue it
(docs/backup-stream-format.md).

Nothing is merged from damaged input: every input is decoded in full first
(pass 1), and any damage, truncation, trailer or chain problem refuses the
merge and names the blocks whose newest copy was lost.  Falling back to an
older copy of such a block would be wrong (the newer generation overwrote it),
so there is no fallback.  Pass 2 re-reads each chosen record by its offset
and checks its header and data CRCs again (the files may not change between
the passes); the output is written as OUT.partial, decoded once more, and
renamed only when it checks out.

Memory: two 4-byte entries per block (which record holds the newest copy,
and that copy's restore-map generation) plus one record per input.
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

from .genmap import extents
from .restore import check_chain
from .stream import (FLAG_FULL, HEADER_SIZE, KIND_DATA, KIND_ZERO, KIND_ZLIB,
                     MAX_RECORD_BYTES, RECORD_HEADER_SIZE, RECORD_SYNC, TRAILER_SIZE, TRAILER_SYNC,
                     Damage, Record, StreamDecoder, StreamError, StreamHeader, _RECORD, _RECORD_CRC,
                     _TRAILER, _seed)

__all__ = ["merge", "MergeResult", "MergeRefused", "MergeError"]

_CHUNK = 8 << 20
_NONE = -1


class MergeError(Exception):
    """The merge could not be carried out (I/O, an input changed under it)."""


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
    name: str
    header: StreamHeader | None = None
    size: int = 0
    damage: list[Damage] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# A record chosen in pass 1: (input index, stream offset, seq, first, n, generation, kind).
_Rec = tuple[int, int, int, int, int, int, int]


def _decode_file(path: str, sink: Callable, progress: Callable[[int], None] | None):
    dec = StreamDecoder()
    n = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            dec.feed(chunk, sink)
            n += len(chunk)
            if progress is not None:
                progress(len(chunk))
    return dec, dec.finish(), n


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


class _Payloads:
    """Pass 2: the data of chosen records, re-read by offset and re-checked."""

    def __init__(self, inputs: list[_Input]) -> None:
        self._files = [open(i.name, "rb") for i in inputs]
        self._seeds = [_seed(i.header.stream_id) for i in inputs]
        self._names = [i.name for i in inputs]
        self._cache: list[tuple[int, memoryview] | None] = [None] * len(inputs)

    def close(self) -> None:
        for f in self._files:
            f.close()

    def data(self, rid: int, rec: _Rec, raw: int) -> memoryview:
        i, off, seq, first, n, gen, kind = rec
        hit = self._cache[i]
        if hit is not None and hit[0] == rid:
            return hit[1]
        f = self._files[i]
        f.seek(off)
        hdr = f.read(RECORD_HEADER_SIZE)
        bad = len(hdr) < RECORD_HEADER_SIZE
        if not bad:
            sync, s2, f2, n2, g2, k2, stored, dcrc, hcrc = _RECORD_CRC.unpack(hdr)
            bad = (sync != RECORD_SYNC or (s2, f2, n2, g2, k2) != (seq, first, n, gen, kind) or
                   crc32c.crc32c(hdr[:-4], self._seeds[i]) != hcrc)
        if not bad:
            payload = f.read(stored)
            if kind == KIND_ZLIB:
                try:
                    payload = zlib.decompress(payload)
                except zlib.error:
                    payload = b""
            bad = len(payload) != raw or crc32c.crc32c(payload) != dcrc
        if bad:
            raise MergeError(f"{self._names[i]} changed while it was merged (record {seq} at "
                             f"byte {off} no longer checks out); nothing written")
        mv = memoryview(payload)
        self._cache[i] = (rid, mv)
        return mv


class _Writer:
    """Stream format v1 records and trailer, written as they come."""

    def __init__(self, f, header: StreamHeader) -> None:
        self.f = f
        self.seed = _seed(header.stream_id)
        self.hash = hashlib.sha256()
        self.records = self.blocks = self.stored = 0
        self.bytes = 0
        self._put(header.pack())

    def _put(self, b) -> None:
        self.f.write(b)
        self.bytes += len(b)

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

    def trailer(self) -> None:
        b = bytearray(TRAILER_SIZE)
        _TRAILER.pack_into(b, 0, TRAILER_SYNC, self.records, self.blocks, self.stored,
                           self.hash.digest())
        struct.pack_into("<I", b, TRAILER_SIZE - 4, crc32c.crc32c(b[:-4], self.seed))
        self._put(b)


def merge(stream_files: Sequence[str], output: str, *,
          progress: Callable[[int], None] | None = None) -> MergeResult:
    """Merge a chain (a full stream then differentials, or differentials only)
    into one stream at ``output``.  Raises MergeRefused (nothing written) for
    damaged, mismatched or out-of-order inputs."""
    if not stream_files:
        raise MergeRefused(["no streams to merge"])
    out_real = os.path.realpath(output)
    for s in stream_files:
        if os.path.realpath(s) == out_real:
            raise MergeRefused([f"the output {output} is one of the inputs"])
    inputs = [_Input(str(s)) for s in stream_files]
    problems: list[str] = []
    for inp in inputs:
        try:
            with open(inp.name, "rb") as f:
                inp.header = StreamHeader.unpack(f.read(HEADER_SIZE))
            inp.size = os.path.getsize(inp.name)
        except StreamError as e:
            problems.append(f"{inp.name}: {e}")
        except OSError as e:
            problems.append(f"{inp.name}: {e.strerror or e}")
    if problems:
        raise MergeRefused(problems)
    ref = inputs[0]
    for inp in inputs[1:]:
        problems += _identity(inp, ref)
    if problems:
        raise MergeRefused(problems)
    problems += check_chain([(i.name, i.header) for i in inputs])
    if problems:
        raise MergeRefused(problems)

    h0 = ref.header
    entries, bs, vsize = h0.entries, h0.block_size, h0.volume_size
    owner = array("i", [_NONE]) * entries       # index into recs of the copy kept
    restored = array("i", [_NONE]) * entries    # that copy's entry in a restored map
    recs: list[_Rec] = []
    # Damaged copies: (first, n, generation, input index); checked after pass 1.
    damaged: list[tuple[int, int, int, int]] = []
    unknown = False                               # damage whose blocks are unknown

    for idx, inp in enumerate(inputs):
        full = inp.header.full

        def sink(item, idx=idx, inp=inp, full=full) -> None:
            nonlocal unknown
            if isinstance(item, Damage):
                inp.damage.append(item)
                if item.first_block is None:
                    unknown = True
                else:
                    damaged.append((item.first_block, item.nblocks, item.generation, idx))
                return
            rec: Record = item
            rid = len(recs)
            first, n, g = rec.first_block, rec.nblocks, rec.generation
            recs.append((idx, rec.offset, rec.seq, first, n, g, rec.kind))
            if full:                              # applies everywhere; a restored map says 0
                owner[first:first + n] = array("i", [rid]) * n
                restored[first:first + n] = array("i", [0]) * n
                return
            for b in range(first, first + n):
                if restored[b] < g:
                    owner[b] = rid
                    restored[b] = g

        try:
            _dec, end, _n = _decode_file(inp.name, sink, progress)
        except OSError as e:
            raise MergeError(f"{inp.name}: {e.strerror or e}") from None
        inp.errors += end.errors
        for d in inp.damage:
            where = f"blocks {d.first_block}..{d.first_block + d.nblocks - 1}, generation " \
                    f"{d.generation}" if d.first_block is not None else "blocks unknown"
            problems.append(f"{inp.name} at byte {d.offset}: {d.reason} ({where})")
        problems += [f"{inp.name}: {e}" for e in inp.errors]

    lost: list[tuple[int, int]] = []
    if problems:
        # Which blocks' newest copy is among the damage: no intact copy of that
        # generation or newer was kept.  (Fuzzy damage taints the whole chain.)
        from bitarray import bitarray
        bad = bitarray(entries, endian="little")
        bad.setall(0)
        for first, n, g, idx in damaged:
            full = inputs[idx].header.full
            for b in range(first, min(first + n, entries)):
                o = owner[b]
                if o == _NONE or (not full and recs[o][5] < g) or (full and recs[o][0] < idx):
                    bad[b] = 1
        lost = list(extents(bad))
        if lost:
            nl = sum(k for _a, k in lost)
            problems.append(f"{nl} blocks have a damaged newest copy: " +
                            ", ".join(f"{a}..{a + k - 1}" for a, k in lost[:10]) +
                            (" ..." if len(lost) > 10 else "") +
                            "; an older copy would be wrong data, so they cannot be merged")
        if unknown:
            problems.append("records with unreadable headers were lost: the blocks they held "
                            "are unknown")
        raise MergeRefused(problems, lost)

    full = h0.full
    los = [i.header.generation_range[0] for i in inputs]
    his = [i.header.generation_range[1] for i in inputs]
    grange = (0, max(his)) if full else (min(los), max(his))
    if full:
        missing = [(a, k) for a, k in _runs_of(owner, _NONE)]
        if missing:
            raise MergeRefused([f"{ref.name}: the full stream does not cover blocks " +
                                ", ".join(f"{a}..{a + k - 1}" for a, k in missing[:10])])
    covered = entries - owner.count(_NONE)
    maxb = max(i.header.max_record_blocks for i in inputs)
    header = StreamHeader(h0.volume_id, bs, vsize, entries, grange, covered,
                          FLAG_FULL if full else 0, maxb, h0.base_id, os.urandom(16),
                          time.time_ns())

    tmp = output + ".partial"
    payloads = _Payloads(inputs)
    try:
        with open(tmp, "wb") as f:
            w = _Writer(f, header)
            pend: list | None = None        # [first, n, gen, parts or None]
            pos = 0
            for rid, grp in groupby(owner):
                k = sum(1 for _ in grp)
                a = pos
                pos += k
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
            w.trailer()
            f.flush()
            os.fsync(f.fileno())
        payloads.close()
        check = _check_output(tmp, header)
        if check:
            raise MergeError(f"the merged stream did not verify ({check}); nothing written")
        os.replace(tmp, output)
    except BaseException:
        payloads.close()
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return MergeResult(output, full, grange, w.blocks, w.records, w.bytes,
                       sum(i.size for i in inputs), [i.name for i in inputs])


def _runs_of(a: array, value: int):
    pos = 0
    for v, grp in groupby(a):
        k = sum(1 for _ in grp)
        if v == value:
            yield pos, k
        pos += k


def _check_output(path: str, header: StreamHeader) -> str:
    bad: list[str] = []

    def sink(item) -> None:
        if isinstance(item, Damage) and len(bad) < 3:
            bad.append(item.reason)
    _dec, end, _n = _decode_file(path, sink, None)
    bad += end.errors
    if not bad and end.blocks != header.block_count:
        bad.append(f"{end.blocks} blocks, {header.block_count} expected")
    return "; ".join(bad)
