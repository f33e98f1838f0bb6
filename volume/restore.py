"""Verified restore of backup streams, one stream at a time, pushed in any chunking.

The patent's pseudo device receives a stream as a sequence of WRITEs of
whatever size the initiator chose; ``backup.restore`` reads stream files.  Both
drive the same :class:`StreamRestorer`, so the rules live here once
(patent claims 6-7, §0040; DESIGN invariant 2):

* Nothing is written until the stream header has been checked: intact, same
  volume identity, block size and volume size as the target, and the right
  place in the chain (a full stream starts a chain; a differential continues
  the previous stream of the chain, or the target map when it is the first:
  same full backup, no missing generation, not older than what is restored).
* A record is applied once it is complete and its checksums verify (the
  decoder hands out nothing else), and only to the blocks the chain rule of
  ``volume/precedence.py`` takes it for (a full stream's records always apply;
  a differential's where the map entry is older than the record's generation);
  the map entry is set with the data.  Damaged records are reported and skipped.
* ``finish()`` reports truncation, blocks left unrecovered (their newest copy
  was damaged and nothing later replaced it) and blocks left uncertain (they
  may have been in records lost unread).  The :class:`ChainState` in the
  report carries that bookkeeping into the next stream's restorer.

Memory is bounded by the decoder's (one record plus small carries) and two
bits per block of bookkeeping, whatever the chunking: records are applied
from the caller's buffer before ``feed`` returns.  Differential records are
applied in small batches (disjoint, in block order, over a span proportional
to their number): one map query per generation and one ``apply_restored_mask``
per batch instead of two map calls per record; data is written before the map
entries that describe it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, NamedTuple, Sequence

from bitarray import bitarray

from .genmap import GenerationMap, extents
from .precedence import leaves_generation, taken
from .store import BlockStore
from .stream import (KIND_DATA, KIND_ZERO, Damage, Record, StreamDecoder, StreamError,
                     StreamHeader)

__all__ = ["StreamRestorer", "ChainState", "RestoreRejected", "RestoreReport", "StreamCheck",
           "BadRecord", "check_chain", "identity_problems", "chain_problems",
           "MAX_REPORTED_DAMAGE"]

# Damage reports kept per stream; a stream of garbage could otherwise make the
# report grow with the input (invariant 3).  The rest are only counted.
MAX_REPORTED_DAMAGE = 10_000

_NO_BASE = bytes(16)
_BATCH_RECORDS = 1024           # differential records applied together
_BATCH_SPAN = 4096              # + 256 blocks per record: the map span one batch may cover


class RestoreRejected(StreamError):
    """The stream cannot be applied at all (unusable header, another volume, wrong
    place in the chain); nothing of it was written."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(self.errors))


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
    damage_omitted: int = 0         # damage beyond MAX_REPORTED_DAMAGE, counted only

    @property
    def ok(self) -> bool:
        return self.header is not None and not self.damage and not self.errors


@dataclass
class ChainState:
    """What the streams restored so far established; hand it to the restorer of
    the next stream (``expect_previous``).  The restorer copies the bitmaps, so
    a state can be reused (e.g. to retry a stream that was rejected)."""
    volume_id: bytes
    base_id: bytes                   # the full backup the chain belongs to
    next_generation: int             # a following differential must cover it (lo <= it <= hi)
    generation: int | None           # newest generation restored
    lost: bitarray                   # newest copy damaged, not replaced since
    uncertain: bitarray              # possibly in records lost unread
    streams: list[StreamCheck] = field(default_factory=list)


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
    chain: ChainState | None = None                     # for the next stream of the chain

    @property
    def bad_records(self) -> list[BadRecord]:
        return [d for s in self.streams for d in s.damage]

    @property
    def ok(self) -> bool:
        return (not self.errors and not self.unrecovered and not self.uncertain
                and all(not s.errors for s in self.streams))


# ---------------------------------------------------------------------------
# header checks (shared by the file restore's up-front pass and the restorer)
# ---------------------------------------------------------------------------
class _Link(NamedTuple):
    """The part of a ChainState the chain checks need (``restore`` simulates a
    whole chain from its headers before writing anything)."""
    base_id: bytes
    next_generation: int


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
            nxt = h.generation_range[1] + 1       # 1, or past a synthetic full's newest
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


def target_problems(store: BlockStore, gmap: GenerationMap) -> list[str]:
    if store.size != gmap.volume_size:
        return [f"the volume holds {store.size} bytes, its map describes {gmap.volume_size}"]
    return []


def identity_problems(name: str, h: StreamHeader, store: BlockStore,
                      gmap: GenerationMap) -> list[str]:
    """Is the stream a backup of this target at all?"""
    errors = []
    if h.volume_id != gmap.volume_id:
        errors.append(f"{name} is a backup of volume {h.volume_id.hex()}; the target is volume "
                      f"{gmap.volume_id.hex()}")
    if h.block_size != gmap.granularity:
        errors.append(f"{name} tracks {h.block_size}-byte blocks; the target map tracks "
                      f"{gmap.granularity}-byte blocks")
    if h.volume_size != store.size:
        errors.append(f"{name} is for a {h.volume_size}-byte volume; the target holds "
                      f"{store.size} bytes")
    return errors


def chain_problems(name: str, h: StreamHeader, gmap: GenerationMap,
                   previous: ChainState | _Link | None) -> list[str]:
    """May this stream come next: after ``previous`` or, if None, onto the map as it is?"""
    if previous is None:
        if h.full:
            return []
        if gmap.base_id == _NO_BASE:
            return [f"{name} is differential, but the target holds no full restore: start with "
                    f"the full backup stream"]
        return check_chain([(name, h)], start_generation=gmap.current_generation,
                           base_id=gmap.base_id)
    if h.full:
        return [f"{name} is a full backup stream; it can only come first"]
    return check_chain([(name, h)], start_generation=previous.next_generation,
                       base_id=previous.base_id)


def _advance(previous: ChainState | _Link | None, h: StreamHeader, gmap: GenerationMap) -> _Link:
    """The link after ``h`` was restored (``gmap`` as it was before)."""
    if h.full:
        return _Link(h.base_id, h.generation_range[1] + 1)
    if previous is None:
        start, base = gmap.current_generation, gmap.base_id
    else:
        start, base = previous.next_generation, previous.base_id
    return _Link(base, max(start, h.generation_range[1] + 1))


def _state_problems(gmap: GenerationMap, previous: ChainState) -> list[str]:
    """Does ``previous`` still describe this target?"""
    errors = []
    if len(previous.lost) != gmap.entries or previous.volume_id != gmap.volume_id:
        errors.append(f"the chain state is for another volume ({previous.volume_id.hex()}, "
                      f"{len(previous.lost)} blocks)")
    elif gmap.base_id != previous.base_id:
        errors.append(f"the target's map belongs to full backup {gmap.base_id.hex()}, not to the "
                      f"chain being restored ({previous.base_id.hex()}): it was reset in between")
    return errors


def _zeros(n: int) -> bitarray:
    b = bitarray(n, endian="little")
    b.setall(0)
    return b


def bad_record(name: str, d: Damage) -> BadRecord:
    return BadRecord(name, d.offset, d.reason, d.first_block, d.nblocks, d.generation)


# ---------------------------------------------------------------------------
# one stream
# ---------------------------------------------------------------------------
PrepareFull = Callable[[StreamHeader], "tuple[BlockStore, GenerationMap]"]

_HEADER, _APPLYING, _REJECTED, _FINISHED = "header", "applying", "rejected", "finished"


class StreamRestorer:
    """Applies one backup stream to ``store``/``gmap`` as its bytes are fed.

    ``feed(data)`` takes the next bytes of the stream (bytes-like, any size,
    in order) and applies every record that completes and verifies before it
    returns; it raises :class:`RestoreRejected` once the header shows the
    stream must not be applied (then and on every later feed; nothing of the
    stream was written).  ``finish()`` ends the stream and returns the report
    of the chain so far; ``report.chain`` is the ``expect_previous`` for the
    restorer of the next stream.

    ``skip_generations``: generations of this stream not to apply (§0040).
    ``prepare_full(header)``: called with the header of a full stream before
    it is checked; returns the (store, map) to restore it onto (a device that
    makes the target take the backed-up volume's identity uses it).
    ``on_start(header)``: called once the header passed every check, before
    anything of the stream is written (a tracked volume records durably that
    it is being restored).
    """

    def __init__(self, store: BlockStore, gmap: GenerationMap, *,
                 skip_generations: Iterable[int] = (),
                 expect_previous: ChainState | None = None, name: str = "stream",
                 prepare_full: PrepareFull | None = None,
                 on_start: Callable[[StreamHeader], None] | None = None) -> None:
        self.name = name
        self._on_start = on_start
        self._store = store
        self._gmap = gmap
        self._skip = frozenset(int(g) for g in skip_generations)
        self._prev = expect_previous
        self._prepare_full = prepare_full
        # Borrowed record data is only used inside feed(), before it returns.
        self._dec = StreamDecoder(borrow=True, record_batches=self._records)
        self._phase = _HEADER
        self._errors: list[str] = []
        self._rejected = False
        self.header: StreamHeader | None = None
        self.check = StreamCheck(name, None)
        self.bytes = 0
        self._report: RestoreReport | None = None
        # set by _start
        self._seen: bitarray | None = None
        self._lost = self._uncertain = None
        self._start_generation = 0
        # Records come in block order, so blocks lost with an unreadable record
        # header lie between the end of the last known record and the next one.
        self._gap_from = 0
        self._gap_open = False
        self._batch: list[tuple] = []   # (first, nblocks, generation, data)
        self._batch_end = 0
        # False while no block of the chain is lost or uncertain: then applying a
        # record has nothing to clear.
        self._bookkeeping = False

    # -- state ------------------------------------------------------------------
    @property
    def rejected(self) -> bool:
        return self._rejected

    @property
    def complete(self) -> bool:
        """The trailer arrived (only zero padding may follow)."""
        return self._dec.trailer is not None

    @property
    def errors(self) -> list[str]:
        """Why nothing of the stream was applied (rejected, or no usable header by finish())."""
        return list(self._errors)

    # -- intake -------------------------------------------------------------------
    def feed(self, data) -> None:
        if self._phase == _REJECTED:
            raise RestoreRejected(self._errors)
        if self._phase == _FINISHED:
            raise StreamError("feed() after finish()")
        mv = data if isinstance(data, (bytes, memoryview)) else memoryview(data)
        self.bytes += mv.nbytes if isinstance(mv, memoryview) else len(mv)
        try:
            self._dec.feed(mv, self._item)
            if self._phase == _HEADER and self._dec.header is not None:
                self._start(self._dec.header)
        finally:
            if self._phase == _APPLYING:
                self._flush()           # borrowed record data is valid only until we return

    def _item(self, item) -> None:
        """Decoder sink: items one by one as they complete (memory stays flat)."""
        if self._phase != _APPLYING:
            if self._phase == _HEADER and self._dec.header is not None:
                self._start(self._dec.header)
            else:                       # the decoder found the header unusable
                self._reject([f"{self.name}: {getattr(item, 'reason', item)}"])
        if isinstance(item, Record):
            self._record(item)
        else:
            self._flush()
            self._damage(item)

    def _reject(self, errors: list[str]) -> None:
        self._phase = _REJECTED
        self._rejected = True
        self._errors = list(errors)
        raise RestoreRejected(self._errors)

    def _start(self, h: StreamHeader) -> None:
        prev = self._prev
        if h.full and self._prepare_full is not None:
            self._store, self._gmap = self._prepare_full(h)
        store, gmap = self._store, self._gmap
        errors = target_problems(store, gmap) + identity_problems(self.name, h, store, gmap)
        if not errors:
            errors += chain_problems(self.name, h, gmap, prev)
            if prev is not None:
                errors += _state_problems(gmap, prev)
        if errors:
            self.check.header = h
            self._reject(errors)
        if self._on_start is not None:
            self._on_start(h)
        self.header = h
        self.check.header = h
        self._phase = _APPLYING
        entries = gmap.entries
        self._start_generation = gmap.current_generation
        if h.full:
            gmap.reset(h.base_id)
            self._seen = _zeros(entries)
            self._lost, self._uncertain = _zeros(entries), _zeros(entries)
        elif prev is not None:
            self._lost, self._uncertain = prev.lost.copy(), prev.uncertain.copy()
            self._bookkeeping = self._lost.any() or self._uncertain.any()
        else:
            self._lost, self._uncertain = _zeros(entries), _zeros(entries)

    def _close_gap(self, upto: int) -> None:
        if self._gap_open and upto > self._gap_from:
            self._bookkeeping = True
            a, n = self._gap_from, upto - self._gap_from
            self._uncertain[a:a + n] |= taken(self._gmap, self.header.full, a, n,
                                              self.header.generation_range[1])
        self._gap_open = False

    def _damage(self, d: Damage) -> None:
        chk = self.check
        if len(chk.damage) < MAX_REPORTED_DAMAGE:
            chk.damage.append(bad_record(self.name, d))
        else:
            chk.damage_omitted += 1
        self._bookkeeping = True
        if d.first_block is None:
            # A full stream's lost blocks show up as never seen; a differential's
            # are found by the gap between the neighbouring records.
            self._gap_open = self._seen is None
            return
        a, n = d.first_block, d.nblocks
        self._close_gap(a)
        self._gap_from = a + n
        # The blocks this copy would have been taken for have lost their newest copy.
        self._lost[a:a + n] |= taken(self._gmap, self.header.full, a, n, d.generation)

    def _record(self, rec: Record) -> None:
        first, n = rec.first_block, rec.nblocks
        if self._gap_open:
            self._flush()
            self._close_gap(first)
        self._gap_from = first + n
        if self._seen is not None:      # full stream: 1 MiB records, the map is not consulted
            apply_record(self._store, self._gmap, self.header, rec, self.check, self._skip,
                         self._seen, self._lost, self._uncertain)
            return
        if rec.generation in self._skip:
            self.check.skipped_forbidden += 1
            return
        batch = self._batch
        # A batch holds disjoint records in block order over a span proportional to
        # their number, so the map work per batch is whole-array and cheap.
        if batch and (first < self._batch_end or len(batch) >= _BATCH_RECORDS or
                      first + n - batch[0][0] > _BATCH_SPAN + 256 * len(batch)):
            self._flush()
        self._batch.append((first, n, rec.generation, rec.data))
        self._batch_end = first + n

    def _records(self, items: list[tuple]) -> None:
        """Decoder sink for runs of plain intact records, ``(first, nblocks,
        generation, data)``: the common differential case (no gap to close, no
        forbidden generation) is batched here with local variables; anything
        else goes through ``_record`` one by one."""
        if self._phase != _APPLYING:
            self._start(self._dec.header)       # a record implies a usable header
        if self._seen is not None or self._gap_open or self._skip:
            for first, n, g, data in items:
                self._record(Record(0, first, n, g, KIND_ZERO if data is None else KIND_DATA,
                                    data, 0))
            return
        batch, end = self._batch, self._batch_end
        limit = _BATCH_SPAN + 256 * len(batch) + (batch[0][0] if batch else 0)
        for item in items:
            first, n = item[0], item[1]
            if batch and (first < end or len(batch) >= _BATCH_RECORDS or first + n > limit):
                self._batch_end = end
                self._flush()
                batch = self._batch
            if not batch:
                limit = first + _BATCH_SPAN
            batch.append(item)
            limit += 256
            end = first + n
        self._batch_end = end
        self._gap_from = end

    def _flush(self) -> None:
        """Apply the batched differential records: data first, then their map entries."""
        batch = self._batch
        if not batch:
            return
        self._batch = []
        lo = batch[0][0]
        span = self._batch_end - lo
        gmap, store, chk = self._gmap, self._store, self.check
        full, bs, vsize = self.header.full, self.header.block_size, self.header.volume_size
        older: dict[int, bitarray] = {}
        written: dict[int, bitarray] = {}
        single: dict[int, list[int]] = {}       # one-block records applied, by generation
        offs: list[int] = []
        datas: list = []
        zeros: list[tuple[int, int]] = []
        skipped = applied = nblocks = 0
        last_g = None
        o = ones = None
        for first, n, g, data in batch:
            if g != last_g:
                o = older.get(g)
                if o is None:
                    o = older[g] = taken(gmap, full, lo, span, g)
                    written[g] = _zeros(span)
                    single[g] = []
                ones = single[g]
                last_g = g
            a0 = first - lo
            if n == 1:
                if not o[a0]:
                    skipped += 1
                    continue
                if data is None:
                    zeros.append((first * bs, min(bs, vsize - first * bs)))
                else:
                    offs.append(first * bs)
                    datas.append(data)
                ones.append(a0)
                nblocks += 1
                applied += 1
                continue
            seg = o[a0:a0 + n]
            if seg.all():
                runs: tuple = ((first, n),)
            elif not seg.any():
                skipped += 1
                continue
            else:
                runs = tuple((first + a, k) for a, k in extents(seg))
            w = written[g]
            for a, k in runs:
                off = a * bs
                length = min((a + k) * bs, vsize) - off
                if data is None:
                    zeros.append((off, length))
                else:
                    rel = off - first * bs
                    offs.append(off)
                    datas.append(data[rel:rel + length] if length != len(data) else data)
                w[a - lo:a - lo + k] = 1
                nblocks += k
            applied += 1
        chk.skipped_older += skipped
        store.write_many(offs, datas)
        for off, length in zeros:
            store.write_zeroes(off, length)
        chk.blocks_written += nblocks
        chk.applied += applied
        done = None
        for g, w in written.items():
            if single[g]:
                w[single[g]] = 1
            gmap.apply_restored_mask(lo, w, leaves_generation(full, g))
            done = w if done is None else done | w
        if done is not None and self._bookkeeping:
            keep = ~done
            self._lost[lo:lo + span] &= keep
            self._uncertain[lo:lo + span] &= keep

    # -- end ----------------------------------------------------------------------
    def finish(self) -> RestoreReport:
        """End of the stream: check the trailer, settle the map, report the chain so far."""
        if self._report is not None:
            return self._report
        end = self._dec.finish()
        chk = self.check
        chk.bytes = self.bytes
        prev = self._prev
        if self._phase != _APPLYING:
            if self._phase == _HEADER:          # never got a usable header
                self._errors = [f"{self.name}: {e}" for e in end.errors] or \
                    [f"{self.name}: no stream header"]
            self._phase = _FINISHED
            chk.errors += self._errors
            self._report = RestoreReport(
                (list(prev.streams) if prev else []) + [chk], list(self._errors),
                list(extents(prev.lost)) if prev else [],
                list(extents(prev.uncertain & ~prev.lost)) if prev else [],
                prev.generation if prev else None, prev is not None, prev)
            return self._report
        self._phase = _FINISHED
        h, gmap = self.header, self._gmap
        entries = gmap.entries
        if end.trailer is None and self._seen is None:
            self._gap_open = True               # truncated: anything after the last record
        self._close_gap(entries)
        chk.records, chk.blocks = end.records, end.blocks
        chk.errors += end.errors
        if self._seen is not None:
            missing = ~self._seen
            missing[entries:] = 0
            self._lost |= missing
        hi = h.generation_range[1]
        newest = hi if prev is None or prev.generation is None or h.full \
            else max(prev.generation, hi)
        if hi + 1 > gmap.current_generation:
            gmap.set_current_generation(hi + 1)
        self._store.flush()
        gmap.save()
        if h.full:
            nxt = hi + 1                        # a synthetic full continues its chain
        else:
            nxt = max(prev.next_generation if prev is not None else self._start_generation, hi + 1)
        state = ChainState(gmap.volume_id, gmap.base_id, nxt, newest,
                           self._lost, self._uncertain,
                           ([] if h.full or prev is None else list(prev.streams)) + [chk])
        self._report = RestoreReport(state.streams, [], list(extents(self._lost)),
                                     list(extents(self._uncertain & ~self._lost)), newest, True,
                                     state)
        return self._report


def apply_record(store: BlockStore, gmap: GenerationMap, h: StreamHeader, rec: Record,
                 chk: StreamCheck, forbidden: set[int] | frozenset[int], seen: bitarray | None,
                 lost: bitarray, uncertain: bitarray) -> None:
    """Write a verified record's blocks that are older in the map, with their map entries."""
    first, n, g = rec.first_block, rec.nblocks, rec.generation
    if seen is not None:
        seen[first:first + n] = 1
    if g in forbidden:
        chk.skipped_forbidden += 1
        return
    bs = h.block_size
    take = taken(gmap, h.full, first, n, g)
    if not take.any():
        chk.skipped_older += 1
        return
    runs = ((first, n),) if take.all() else tuple((first + a, k) for a, k in extents(take))
    leaves = leaves_generation(h.full, g)
    data = None if rec.data is None else memoryview(rec.data)
    for a, k in runs:
        off = a * bs
        length = min((a + k) * bs, h.volume_size) - off
        if data is None:
            store.write_zeroes(off, length)
        else:
            rel = off - first * bs
            store.write(off, data[rel:rel + length])
        if leaves is not None:
            gmap.apply_restored(a, k, leaves)
        lost[a:a + k] = 0
        uncertain[a:a + k] = 0
        chk.blocks_written += k
    chk.applied += 1


def skip_sets(skip_generations, names: Sequence[str]) -> list[set[int]]:
    """Per-stream forbidden generations from ``g`` / ``(stream index or name, g)`` entries."""
    per: list[set[int]] = [set() for _ in names]
    for entry in skip_generations or ():
        if isinstance(entry, int):
            for s in per:
                s.add(entry)
            continue
        key, gen = entry
        hit = False
        for i, name in enumerate(names):
            if key == i or (isinstance(key, (str, os.PathLike)) and
                            os.fspath(key) in (name, os.path.basename(name))):
                per[i].add(int(gen))
                hit = True
        if not hit:
            raise ValueError(f"skip-generation entry {entry!r} names no stream of the restore")
    return per
