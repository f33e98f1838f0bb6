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
* The rules are implemented once, in ``volume.restore.StreamRestorer`` (which
  also takes streams pushed in arbitrary chunks, as the pseudo device gets
  them); ``restore`` checks every header up front with the same functions and
  then pumps each file through a chained ``StreamRestorer``.
* ``skip_generations`` forbids generations: each entry is either ``g`` (skip
  generation g in every stream) or ``(stream, g)`` where ``stream`` is the
  stream's index in the list or its name (the path as given, or its basename).
"""
from __future__ import annotations

import os
import queue
import random
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from .genmap import BackupPlan, GenerationMap, extents
from .store import BlockStore
from .streamstore import StreamRef
from .restore import (BadRecord, ChainState, RestoreRejected, RestoreReport, StreamCheck,
                      StreamRestorer, _advance, apply_record, bad_record, chain_problems,
                      check_chain, identity_problems, skip_sets, target_problems)
from .stream import (HEADER_SIZE, RECORD_HEADER_SIZE, TRAILER_SIZE, Damage, Record,
                     StreamDecoder, StreamEncoder, StreamEnd, StreamError, StreamHeader,
                     DEFAULT_RECORD_BYTES)

__all__ = ["BackupResult", "VerifyReport", "StreamCheck", "RestoreReport", "BadRecord",
           "full_backup", "differential_backup", "write_stream", "verify", "restore",
           "estimate", "check_chain", "StreamRestorer", "ChainState", "RestoreRejected",
           "decode_stream"]

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
class VerifyReport:
    streams: list[StreamCheck]
    errors: list[str] = field(default_factory=list)     # chain problems

    @property
    def ok(self) -> bool:
        return not self.errors and all(s.ok for s in self.streams)


# ---------------------------------------------------------------------------
# backup
# ---------------------------------------------------------------------------
def _name(src, index: int) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    if isinstance(src, StreamRef):
        return src.name
    return str(getattr(src, "name", f"stream {index}"))


def write_stream(store: BlockStore, plan: BackupPlan, out_file, *, compress: bool = False,
                 progress: Progress | None = None, chunk_size: int = CHUNK,
                 encoder: StreamEncoder | None = None, **encoder_args) -> BackupResult:
    """Encode ``plan`` into ``out_file`` (a path, made durable with fsync, or a binary file).

    The encoder fills one buffer while a writer thread writes the previous one
    (the write releases the GIL), so the kernel's cost of the output file
    overlaps the encoding instead of adding to it.
    """
    enc = encoder or StreamEncoder(store, plan, compress=compress, **encoder_args)
    t0 = time.perf_counter()
    own = isinstance(out_file, (str, os.PathLike))
    f = open(out_file, "wb", buffering=0) if own else out_file
    total = enc.size_bound
    try:
        with _Writer(f, chunk_size) as out:
            while True:
                buf = out.free_buffer()
                n = enc.readinto(buf)
                if n == 0:
                    break
                out.submit(buf, n)
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


class _Writer:
    """Writes submitted buffers to ``f`` in order on a thread of its own, with two
    buffers in rotation: one being written while the caller fills the other.
    A write error is raised in the caller at its next call (or on exit)."""

    def __init__(self, f, size: int, nbufs: int = 2) -> None:
        self._f = f
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(nbufs):
            self._free.put(memoryview(bytearray(size)))
        self._full: queue.SimpleQueue = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="stream-writer", daemon=True)

    def __enter__(self) -> "_Writer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._full.put(None)
        self._thread.join()
        if self._error is not None and exc[0] is None:
            raise self._error

    def free_buffer(self) -> memoryview:
        buf = self._free.get()
        if self._error is not None:
            raise self._error
        return buf

    def submit(self, buf: memoryview, n: int) -> None:
        """Write ``buf[:n]``; ``buf`` comes back from ``free_buffer`` once written."""
        self._full.put((buf, n))

    def _run(self) -> None:
        f = self._f
        while True:
            item = self._full.get()
            if item is None:
                return
            buf, n = item
            if self._error is None:
                try:
                    view = buf[:n]
                    while len(view):
                        w = f.write(view)
                        if w is None:
                            raise OSError("non-blocking output would block")
                        view = view[w:]
                except BaseException as exc:       # handed to the caller's thread
                    self._error = exc
            self._free.put(buf)


def full_backup(store: BlockStore, gmap: GenerationMap, out_file, **kw) -> BackupResult:
    """Every block; afterwards every block is generation 0 and writes go to generation 1."""
    return _backup(store, gmap, True, None, out_file, kw)


def differential_backup(store: BlockStore, gmap: GenerationMap, scope: int, out_file,
                        **kw) -> BackupResult:
    """Blocks of the newest ``scope`` generations, including the one this closes."""
    return _backup(store, gmap, False, scope, out_file, kw)


def _backup(store, gmap, full: bool, scope, out_file, kw) -> BackupResult:
    """Two-phase, like every backup: the map changes only once the whole stream
    was written.  A tracked volume goes through its session state machine (its
    sidecar's rules: full backup done, restore complete, older releases'
    unfinished streams widening the scope)."""
    _check_pair(store, gmap)
    from .tracked import TrackingStore
    if isinstance(store, TrackingStore) and store.map is gmap:
        from .session import finish_backup
        reader = store.sessions.start_backup(full=full, scope=scope,
                                             compress=kw.pop("compress", False))
        try:
            res = write_stream(store, reader.cut.plan, out_file, encoder=reader.enc, **kw)
        except BaseException:
            store.sessions.abandon_backup()
            raise
        finish_backup(reader)
        return res
    cut = gmap.cut_full() if full else gmap.cut_differential(scope)
    try:
        res = write_stream(store, cut.plan, out_file, **kw)
    except BaseException:
        cut.abandon()
        raise
    cut.commit()
    return res


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
    if isinstance(src, StreamRef):          # a stored stream (volume/streamstore.py)
        return src.open(), True
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
        if isinstance(src, StreamRef):
            return src.size()
        return os.fstat(src.fileno()).st_size
    except (OSError, AttributeError, ValueError):
        return 0


def _pump(src, feed: Callable[[memoryview], None], progress: Progress | None, done_before: int,
          total: int) -> int:
    """Feed the bytes of a stream file to ``feed`` in large chunks.

    A reader thread fills the next buffer while ``feed`` works on the current
    one (the read releases the GIL); a buffer is reused only after the
    ``feed`` that got it has returned, so views of it never outlive the call.
    """
    f, own = _open(src)
    free: queue.SimpleQueue = queue.SimpleQueue()
    full: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(2):
        free.put(memoryview(bytearray(CHUNK)))
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                buf = free.get()
                if buf is None:
                    break
                k = f.readinto(buf)
                full.put((buf, k))
                if not k:
                    return
        except BaseException as exc:            # raised in the caller's thread
            full.put((exc, 0))

    t = threading.Thread(target=reader, name="stream-reader", daemon=True)
    n = 0
    try:
        t.start()
        while True:
            buf, k = full.get()
            if isinstance(buf, BaseException):
                raise buf
            if not k:
                break
            n += k
            try:
                feed(buf[:k])
            finally:
                free.put(buf)
            if progress:
                progress(done_before + n, total)
    finally:
        stop.set()
        free.put(None)
        t.join()
        if own:
            f.close()
    return n


def decode_stream(src, on_item: Callable[[Record | Damage], None], progress: Progress | None = None,
                  done_before: int = 0, total: int = 0) -> tuple[StreamEnd, int]:
    """Decode a whole stream (a path, a :class:`StreamRef` or a binary file), handing each
    Record and Damage to ``on_item``; returns the decoder's end and the bytes read.
    Record data is a view valid only inside ``on_item``."""
    dec = StreamDecoder(borrow=True)          # records are consumed before the next read

    n = _pump(src, lambda chunk: dec.feed(chunk, on_item), progress, done_before, total)
    return dec.finish(), n


_bad = bad_record          # older name, kept for callers outside volume/
_apply = apply_record


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
        end, n = decode_stream(src, on_item, progress, done, total)
        done += n
        chk.bytes = n
        chk.records, chk.blocks = end.records, end.blocks
        chk.errors += end.errors
    return report


# ---------------------------------------------------------------------------
# restore
# ---------------------------------------------------------------------------
def _skip_set(skip_generations, heads) -> list[set[int]]:
    return skip_sets(skip_generations, [name for name, _h, _e in heads])


def restore(store: BlockStore, gmap: GenerationMap, stream_files: Sequence, *,
            skip_generations: Iterable = (), progress: Progress | None = None) -> RestoreReport:
    """Apply a full stream and/or differential streams, in order, onto ``store``.

    Every header is checked first, with the checks each stream's
    ``StreamRestorer`` repeats when it starts, so a bad chain writes nothing
    at all; then each file is pumped through a ``StreamRestorer`` chained to
    the previous one (the same path as a stream pushed to the pseudo device).
    """
    heads = _read_headers(stream_files)
    skips = _skip_set(skip_generations, heads)
    checks = [StreamCheck(n, h) for n, h, _ in heads]
    errors: list[str] = []
    for chk, (_n, h, err) in zip(checks, heads):
        if h is None:
            errors.append(f"{chk.name}: {err}")
            chk.errors.append(err)
    errors += target_problems(store, gmap)
    for name, h, _ in heads:
        if h is not None:
            errors += identity_problems(name, h, store, gmap)
    if not errors:
        link = None
        for name, h, _ in heads:
            errors += chain_problems(name, h, gmap, link)
            link = _advance(link, h, gmap)
    if errors:
        return RestoreReport(checks, errors)
    if not heads:
        store.flush()
        gmap.save()
        return RestoreReport([])
    total = sum(_stream_size(s) for s in stream_files)
    done = 0
    state: ChainState | None = None
    report = RestoreReport([])
    for i, src in enumerate(stream_files):
        r = StreamRestorer(store, gmap, skip_generations=skips[i], expect_previous=state,
                           name=heads[i][0])
        try:
            done += _pump(src, r.feed, progress, done, total)
        except RestoreRejected:
            pass                    # the file changed since its header was read: finish() says why
        report = r.finish()
        if report.errors:
            report.streams += checks[i + 1:]
            return report
        state = report.chain
    return report




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
