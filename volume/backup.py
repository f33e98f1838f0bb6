"""Backup operations over a BlockStore and its GenerationMap: full and
differential backup to a stream file, verify, chained restore, estimate.

Restore rules (patent claims 6-7, §0040; DESIGN invariant 2):

* The chain is checked before anything is written: every stream's header must
  be intact and match the target (volume identity, block size, volume size),
  every stream must belong to the same full backup (base id), a full stream may
  only come first, and each differential must continue where the previous one
  (or the map) left off: ``lo <= next`` (no missing generation) and
  ``hi >= next`` (not older than what is already restored).
* A record is applied only if its checksums verify and its generation is newer
  than the map entry of each block (records of a full stream always apply);
  the map entries are set with the data.  Damaged records are reported with
  stream, block, generation; a later stream that covers them clears them.
* ``skip_generations`` forbids generations: each entry is either ``g`` (skip
  generation g in every stream) or ``(stream, g)`` where ``stream`` is the
  stream's index in the list or its name (the path as given, or its basename).
"""
from __future__ import annotations

import os
import random
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from bitarray import bitarray

from .genmap import BackupPlan, GenerationMap, extents
from .store import BlockStore
from .stream import (HEADER_SIZE, RECORD_HEADER_SIZE, TRAILER_SIZE, Damage, Record,
                     StreamDecoder, StreamEncoder, StreamEnd, StreamError, StreamHeader,
                     DEFAULT_RECORD_BYTES)

__all__ = ["BackupResult", "VerifyReport", "StreamCheck", "RestoreReport", "BadRecord",
           "full_backup", "differential_backup", "write_stream", "verify", "restore",
           "estimate", "check_chain"]

Progress = Callable[[int, int], None]
StreamSource = "str | os.PathLike | BinaryIO"

CHUNK = 8 << 20


@dataclass
class BackupResult:
    name: str
    header: StreamHeader
    bytes_written: int
    records: int
    blocks: int
    zero_blocks: int
    seconds: float

    @property
    def generation_range(self) -> tuple[int, int]:
        return self.header.generation_range


@dataclass
class BadRecord:
    stream: str
    offset: int
    reason: str
    first_block: int | None
    nblocks: int | None
    generation: int | None


@dataclass
class StreamCheck:
    name: str
    header: StreamHeader | None
    records: int = 0
    blocks: int = 0
    bytes: int = 0
    damage: list[BadRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # restore only
    applied: int = 0
    blocks_written: int = 0
    skipped_older: int = 0
    skipped_forbidden: int = 0

    @property
    def ok(self) -> bool:
        return self.header is not None and not self.damage and not self.errors


@dataclass
class VerifyReport:
    streams: list[StreamCheck]
    errors: list[str] = field(default_factory=list)     # chain problems

    @property
    def ok(self) -> bool:
        return not self.errors and all(s.ok for s in self.streams)


@dataclass
class RestoreReport:
    streams: list[StreamCheck]
    errors: list[str] = field(default_factory=list)     # chain/identity problems (nothing written)
    unrecovered: list[tuple[int, int]] = field(default_factory=list)   # block extents
    # blocks that may have been in records whose header was unreadable (or cut
    # off by truncation) and that no later record replaced
    uncertain: list[tuple[int, int]] = field(default_factory=list)
    generation: int | None = None                       # newest generation restored
    wrote: bool = False

    @property
    def bad_records(self) -> list[BadRecord]:
        return [d for s in self.streams for d in s.damage]

    @property
    def ok(self) -> bool:
        return (not self.errors and not self.unrecovered and not self.uncertain
                and all(not s.errors for s in self.streams))


# ---------------------------------------------------------------------------
# backup
# ---------------------------------------------------------------------------
def _name(src, index: int) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    return str(getattr(src, "name", f"stream {index}"))


def write_stream(store: BlockStore, plan: BackupPlan, out_file, *, compress: bool = False,
                 progress: Progress | None = None, chunk_size: int = CHUNK,
                 **encoder_args) -> BackupResult:
    """Encode ``plan`` into ``out_file`` (a path, made durable with fsync, or a binary file)."""
    enc = StreamEncoder(store, plan, compress=compress, **encoder_args)
    t0 = time.perf_counter()
    own = isinstance(out_file, (str, os.PathLike))
    f = open(out_file, "wb", buffering=0) if own else out_file
    buf = bytearray(chunk_size)
    mv = memoryview(buf)
    total = enc.size_bound
    try:
        while True:
            n = enc.readinto(mv)
            if n == 0:
                break
            view = mv[:n]
            while len(view):
                w = f.write(view)
                if w is None:
                    raise OSError("non-blocking output would block")
                view = view[w:]
            if progress:
                progress(enc.position, total)
        if own:
            os.fsync(f.fileno())
        else:
            flush = getattr(f, "flush", None)
            if flush:
                flush()
    finally:
        if own:
            f.close()
    if progress:
        progress(enc.position, enc.position)
    return BackupResult(_name(out_file, 0), enc.header, enc.position, enc.records, enc.blocks,
                        enc.zero_blocks, time.perf_counter() - t0)


def full_backup(store: BlockStore, gmap: GenerationMap, out_file, **kw) -> BackupResult:
    """Every block; afterwards every block is generation 0 and writes go to generation 1."""
    _check_pair(store, gmap)
    return write_stream(store, gmap.begin_full(), out_file, **kw)


def differential_backup(store: BlockStore, gmap: GenerationMap, scope: int, out_file,
                        **kw) -> BackupResult:
    """Blocks of the newest ``scope`` generations, including the one this closes."""
    _check_pair(store, gmap)
    return write_stream(store, gmap.begin_differential(scope), out_file, **kw)


def _check_pair(store: BlockStore, gmap: GenerationMap) -> None:
    if store.size != gmap.volume_size:
        raise ValueError(f"the store holds {store.size} bytes, the map describes "
                         f"{gmap.volume_size}")


# ---------------------------------------------------------------------------
# reading streams
# ---------------------------------------------------------------------------
def _open(src):
    if isinstance(src, (str, os.PathLike)):
        return open(src, "rb"), True
    return src, False


def _read_headers(stream_files: Sequence) -> list[tuple[str, StreamHeader | None, str]]:
    out = []
    for i, src in enumerate(stream_files):
        name = _name(src, i)
        try:
            f, own = _open(src)
        except OSError as exc:
            out.append((name, None, f"cannot open: {exc.strerror}"))
            continue
        try:
            pos = f.tell() if not own else 0
            raw = f.read(HEADER_SIZE)
            if not own:
                f.seek(pos)
            out.append((name, StreamHeader.unpack(raw), ""))
        except StreamError as exc:
            out.append((name, None, str(exc)))
        finally:
            if own:
                f.close()
    return out


def _stream_size(src) -> int:
    try:
        if isinstance(src, (str, os.PathLike)):
            return os.path.getsize(src)
        return os.fstat(src.fileno()).st_size
    except (OSError, AttributeError, ValueError):
        return 0


def _decode(src, on_item: Callable[[Record | Damage], None], progress: Progress | None,
            done_before: int, total: int) -> tuple[StreamEnd, int]:
    f, own = _open(src)
    dec = StreamDecoder(borrow=True)          # records are consumed before the next read
    buf = bytearray(CHUNK)
    mv = memoryview(buf)
    n = 0
    try:
        while True:
            k = f.readinto(mv)
            if not k:
                break
            n += k
            for item in dec.feed(mv[:k]):
                on_item(item)
            if progress:
                progress(done_before + n, total)
    finally:
        if own:
            f.close()
    return dec.finish(), n


def _bad(name: str, d: Damage) -> BadRecord:
    return BadRecord(name, d.offset, d.reason, d.first_block, d.nblocks, d.generation)


def check_chain(headers: Sequence[tuple[str, StreamHeader]], *, start_generation: int | None = None,
                base_id: bytes | None = None) -> list[str]:
    """Order and lineage problems of a list of stream headers (empty if fine).

    ``start_generation``/``base_id`` describe the target map when the chain
    does not start with a full stream.
    """
    errors: list[str] = []
    if not headers:
        return errors
    first_name, first = headers[0]
    nxt = start_generation
    base = base_id
    if first.full:
        base = first.base_id
        nxt = None
    elif base is not None and base != first.base_id:
        errors.append(f"{first_name} belongs to another full backup ({first.base_id.hex()}) "
                      f"than the volume's ({base.hex()})")
    for i, (name, h) in enumerate(headers):
        if h.full:
            if i:
                errors.append(f"{name} is a full backup stream; it can only come first")
            nxt = 1
            continue
        if base is not None and h.base_id != base and i:
            errors.append(f"{name} belongs to another full backup ({h.base_id.hex()}) than "
                          f"{headers[0][0]} ({base.hex()})")
        lo, hi = h.generation_range
        if nxt is not None:
            if lo > nxt:
                errors.append(f"{name} holds generations {lo}..{hi} but generation "
                              f"{nxt}{'..' + str(lo - 1) if lo - 1 > nxt else ''} is missing "
                              f"before it")
            elif hi < nxt:
                errors.append(f"{name} holds generations {lo}..{hi}, older than what comes before "
                              f"it (up to {nxt - 1}): streams out of order")
        nxt = hi + 1 if nxt is None else max(nxt, hi + 1)
    return errors


def _same_volume(name: str, h: StreamHeader, ref: StreamHeader) -> list[str]:
    e = []
    if h.volume_id != ref.volume_id:
        e.append(f"{name} is for volume {h.volume_id.hex()}, not {ref.volume_id.hex()}")
    if h.block_size != ref.block_size:
        e.append(f"{name} tracks {h.block_size}-byte blocks, not {ref.block_size}")
    if h.volume_size != ref.volume_size:
        e.append(f"{name} is for a {h.volume_size}-byte volume, not {ref.volume_size}")
    return e


# ---------------------------------------------------------------------------
# verify
# ---------------------------------------------------------------------------
def verify(stream_files: Sequence, *, progress: Progress | None = None) -> VerifyReport:
    """Check every record of every stream (and the chain if several) without restoring."""
    heads = _read_headers(stream_files)
    report = VerifyReport([])
    good = [(n, h) for n, h, _ in heads if h is not None]
    if len(good) > 1:
        for n, h in good[1:]:
            report.errors += _same_volume(n, h, good[0][1])
        report.errors += check_chain(good)
    total = sum(_stream_size(s) for s in stream_files)
    done = 0
    for i, src in enumerate(stream_files):
        name = heads[i][0]
        chk = StreamCheck(name, heads[i][1])
        report.streams.append(chk)
        if heads[i][1] is None:
            chk.errors.append(heads[i][2])
            continue

        def on_item(item, chk=chk, name=name):
            if isinstance(item, Damage):
                chk.damage.append(_bad(name, item))
        end, n = _decode(src, on_item, progress, done, total)
        done += n
        chk.bytes = n
        chk.records, chk.blocks = end.records, end.blocks
        chk.errors += end.errors
    return report


# ---------------------------------------------------------------------------
# restore
# ---------------------------------------------------------------------------
def _skip_set(skip_generations, heads) -> list[set[int]]:
    per = [set() for _ in heads]
    for entry in skip_generations or ():
        if isinstance(entry, int):
            for s in per:
                s.add(entry)
            continue
        key, gen = entry
        hit = False
        for i, (name, _h, _e) in enumerate(heads):
            if key == i or (isinstance(key, (str, os.PathLike)) and
                            os.fspath(key) in (name, os.path.basename(name))):
                per[i].add(int(gen))
                hit = True
        if not hit:
            raise ValueError(f"skip-generation entry {entry!r} names no stream of the restore")
    return per


def restore(store: BlockStore, gmap: GenerationMap, stream_files: Sequence, *,
            skip_generations: Iterable = (), progress: Progress | None = None) -> RestoreReport:
    """Apply a full stream and/or differential streams, in order, onto ``store``."""
    heads = _read_headers(stream_files)
    skips = _skip_set(skip_generations, heads)
    report = RestoreReport([StreamCheck(n, h) for n, h, _ in heads])
    for chk, (_n, h, err) in zip(report.streams, heads):
        if h is None:
            report.errors.append(f"{chk.name}: {err}")
            chk.errors.append(err)
    if store.size != gmap.volume_size:
        report.errors.append(f"the volume holds {store.size} bytes, its map describes "
                             f"{gmap.volume_size}")
    for name, h, _ in heads:
        if h is None:
            continue
        if h.volume_id != gmap.volume_id:
            report.errors.append(f"{name} is a backup of volume {h.volume_id.hex()}; the target "
                                 f"is volume {gmap.volume_id.hex()}")
        if h.block_size != gmap.granularity:
            report.errors.append(f"{name} tracks {h.block_size}-byte blocks; the target map "
                                 f"tracks {gmap.granularity}-byte blocks")
        if h.volume_size != store.size:
            report.errors.append(f"{name} is for a {h.volume_size}-byte volume; the target "
                                 f"holds {store.size} bytes")
    if not report.errors:
        chain = [(n, h) for n, h, _ in heads]
        if chain and not chain[0][1].full and gmap.base_id == bytes(16):
            report.errors.append(f"{chain[0][0]} is differential, but the target holds no full "
                                 f"restore: start with the full backup stream")
        else:
            report.errors += check_chain(chain, start_generation=gmap.current_generation,
                                         base_id=gmap.base_id)
    if report.errors:
        return report

    entries = gmap.entries
    lost = bitarray(entries, endian="little")     # blocks whose newest intact copy was damaged
    lost.setall(0)
    uncertain = lost.copy()                       # blocks possibly in records lost unread
    total = sum(_stream_size(s) for s in stream_files)
    done = 0
    newest = None
    for i, src in enumerate(stream_files):
        name, h, _ = heads[i]
        chk = report.streams[i]
        forbidden = skips[i]
        if h.full:
            gmap.reset(h.base_id)
            seen = bitarray(entries, endian="little")
            seen.setall(0)
        else:
            seen = None
        report.wrote = True

        # Records come in block order, so blocks lost with an unreadable record
        # header lie between the last known block and the next known one.
        gap = {"end": 0, "open": False}

        def close_gap(upto: int, h=h, gap=gap) -> None:
            if gap["open"] and upto > gap["end"]:
                a, n = gap["end"], upto - gap["end"]
                uncertain[a:a + n] |= gmap.blocks_older_than(a, n, h.generation_range[1])
            gap["open"] = False

        def on_item(item, h=h, chk=chk, forbidden=forbidden, seen=seen, name=name, gap=gap):
            if isinstance(item, Damage):
                chk.damage.append(_bad(name, item))
                if item.first_block is None:
                    gap["open"] = seen is None
                    return
                a, n = item.first_block, item.nblocks
                close_gap(a)
                gap["end"] = a + n
                if h.full:
                    lost[a:a + n] = 1
                else:
                    lost[a:a + n] |= gmap.blocks_older_than(a, n, item.generation)
                return
            close_gap(item.first_block)
            gap["end"] = item.first_block + item.nblocks
            _apply(store, gmap, h, item, chk, forbidden, seen, lost, uncertain)

        end, n = _decode(src, on_item, progress, done, total)
        if end.trailer is None and seen is None:
            gap["open"] = True                 # truncated: anything after the last record
        close_gap(entries)
        done += n
        chk.bytes = n
        chk.records, chk.blocks = end.records, end.blocks
        chk.errors += end.errors
        if seen is not None:
            missing = ~seen
            missing[entries:] = 0
            if missing.any():
                lost |= missing
        lo, hi = h.generation_range
        newest = hi if newest is None else max(newest, hi)
        if hi + 1 > gmap.current_generation:
            gmap.set_current_generation(hi + 1)
    store.flush()
    gmap.save()
    report.generation = newest
    report.unrecovered = list(extents(lost))
    report.uncertain = list(extents(uncertain & ~lost))
    return report


def _apply(store: BlockStore, gmap: GenerationMap, h: StreamHeader, rec: Record,
           chk: StreamCheck, forbidden: set[int], seen: bitarray | None, lost: bitarray,
           uncertain: bitarray) -> None:
    first, n, g = rec.first_block, rec.nblocks, rec.generation
    if seen is not None:
        seen[first:first + n] = 1
    if g in forbidden:
        chk.skipped_forbidden += 1
        return
    bs = h.block_size
    if h.full:
        runs = [(first, n)]
    else:
        older = gmap.blocks_older_than(first, n, g)
        if not older.any():
            chk.skipped_older += 1
            return
        runs = [(first, n)] if older.all() else [(first + a, k) for a, k in extents(older)]
    data = None if rec.data is None else memoryview(rec.data)
    for a, k in runs:
        off = a * bs
        length = min((a + k) * bs, h.volume_size) - off
        if data is None:
            store.write_zeroes(off, length)
        else:
            rel = off - first * bs
            store.write(off, data[rel:rel + length])
        if not h.full:
            gmap.apply_restored(a, k, g)
        lost[a:a + k] = 0
        uncertain[a:a + k] = 0
        chk.blocks_written += k
    chk.applied += 1


# ---------------------------------------------------------------------------
# estimate (claim 10)
# ---------------------------------------------------------------------------
def estimate(gmap: GenerationMap, scope: int, compressed: bool = False, *,
             store: BlockStore | None = None, samples: int = 32,
             max_record_bytes: int = DEFAULT_RECORD_BYTES, seed: int | None = None) -> int:
    """Bytes a differential backup with ``scope`` would produce now.

    Uncompressed: exact stream size without zero elision (an upper bound of
    what the backup writes: blocks x block size, plus the framing of the
    records, which follow the per-generation extents).  Compressed: the data
    part scaled by the zlib ratio of up to ``samples`` randomly chosen records
    read from ``store`` (zero records count as free).
    """
    c = gmap.current_generation
    gmap._check_scope(scope)
    sel = gmap.blocks_in_generations(c - scope + 1, c)
    blocks = sel.count()
    bs = gmap.granularity
    maxb = max(1, max_record_bytes // bs)
    # A record never spans two generations: the maximal runs of one generation
    # inside the selection are exactly the extents of that generation's blocks.
    nrec = 0
    for g in range(c - scope + 1, c + 1):
        nrec += sum(-(-k // maxb) for _a, k in extents(gmap.blocks_in_generations(g, g)))
    data = blocks * bs
    if blocks and sel[gmap.entries - 1]:
        data -= gmap.entries * bs - gmap.volume_size     # partial last block
    fixed = HEADER_SIZE + TRAILER_SIZE + nrec * RECORD_HEADER_SIZE
    if not compressed or not blocks:
        return fixed + data
    if store is None:
        raise ValueError("a compressed estimate samples the data: pass the store")
    rnd = random.Random(seed)
    raw_total = packed_total = 0
    from bitarray.util import count_n
    for _ in range(samples):
        k = rnd.randrange(blocks)
        b = count_n(sel, k + 1) - 1                # the k-th selected block
        stop = sel.find(0, b)
        stop = len(sel) if stop < 0 else stop
        nb = min(maxb, stop - b)
        off = b * bs
        length = min((b + nb) * bs, gmap.volume_size) - off
        chunk = store.read(off, length)
        raw_total += length
        if chunk.count(0) == length:
            continue
        z = len(zlib.compress(chunk, 1))
        packed_total += min(z, length)
    ratio = packed_total / raw_total if raw_total else 1.0
    return fixed + int(data * ratio)
