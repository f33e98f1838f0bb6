"""The generation map of patent JP H09-101912: per tracking block, the latest
generation that wrote it (0 = unchanged since the full backup).

Storage (docs/genmap-format.md has the byte layout):

* ``<path>`` -- the map file: Fig. 4 metadata, per-generation counters and the
  generation *bit planes* (plane p holds bit p of every block's generation).
  It only changes when a generation is folded in (``begin_*``), after a
  restore, or on ``save()``; it is always replaced atomically (temp file +
  fsync + rename + fsync of the directory).
* ``<path>.dirty`` -- the write-intent journal: the running flag and two
  *dirty slots*, bitmaps of the blocks written in the current generation.  It
  is mmap'ed MAP_SHARED, so a bit set by ``mark`` is in the page cache the
  moment the slice assignment returns (survives kill -9), and the touched page
  is msync'ed before ``mark`` returns (survives power loss).  Two slots make
  the generation switch crash safe: the new generation's slot is cleared and
  tagged before marking moves to it, and the old slot is only folded into the
  planes after that.  Slots are tagged with the map's *fold sequence*, which
  tells at open which slot is live and whether a fold was interrupted.

Memory: the planes are ``nplanes`` bits per block in anonymous memory (4 while
generations <= 15; a 5th plane is added when generation 16 is folded, and so
on: the map grows rather than compacts, because compaction would renumber
generations that existing backup streams carry).  The dirty slots live in the
page cache of the journal file (1 bit per block each); only the live slot's
pages are touched by writes, the other is dropped with MADV_DONTNEED after a
fold.

Thread safety: ``mark`` takes a small lock (held across the msync, so a second
writer of the same block cannot return before the first one's mark is
durable); everything else takes the map lock.
"""
from __future__ import annotations

import mmap
import os
import struct
import threading
import time
from dataclasses import dataclass, field
from itertools import repeat
from operator import add, lshift, or_, sub
from typing import Iterator

import crc32c
from bitarray import bitarray
from bitarray.util import count_and

from . import durability
from .mapstorage import FileMapStorage, MapStorage, journal_path

__all__ = ["GenerationMap", "BackupPlan", "Cut", "MapError", "MapMismatch", "MapCorrupt", "MapBusy",
           "extents", "journal_path"]

_ENDIAN = "little"          # bit i of an array is bit (i % 8) of byte i // 8, on disk too
_PAGE = mmap.PAGESIZE
_BASE_PLANES = 4            # the patent's 4 bits per block: generations 0..15

MAP_MAGIC = b"\x89GENMAP\n"
JOURNAL_MAGIC = b"\x89GMJRNL\n"
MAP_VERSION = 1
JOURNAL_VERSION = 2
# One coarse write-intent bit covers 2**COARSE_SHIFT tracking blocks (1 MiB at
# 4 KiB granularity).  Only coarse bits are msynced before an acknowledgement.
COARSE_SHIFT = 8
MAX_VOLUME_ID = 32
MAX_GENERATION = 0xFFFF_FFFF

# Map file header: see docs/genmap-format.md.  The CRC covers bytes 0..251.
_MAP_HDR = struct.Struct("<8sHHIIHHQQIIQ16sB32s")
_MAP_HDR_LEN = 256
_JRN_HDR = struct.Struct("<8sHHBxxxIQQQQB32s16s")
_JRN_HDR_LEN = 128


class MapError(Exception):
    """The generation map cannot be used as asked."""


class MapMismatch(MapError):
    """The map is intact but belongs to another volume or configuration."""


class MapCorrupt(MapError):
    """The map or its journal is damaged or inconsistent."""


class MapBusy(MapError):
    """Another process has the map open."""


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _zeros(n: int) -> bitarray:
    a = bitarray(n, endian=_ENDIAN)
    a.setall(0)
    return a


def all_ones(n: int) -> bitarray:
    """``n`` set bits (the map's bit order)."""
    a = bitarray(n, endian=_ENDIAN)
    a.setall(1)
    return a


def extents(selection: bitarray, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, int]]:
    """(first, count) runs of set bits: two C-level searches per run, whatever the run length."""
    end = len(selection) if stop is None else min(stop, len(selection))
    pos = start
    find = selection.find
    while pos < end:
        first = find(1, pos, end)
        if first < 0:
            return
        last = find(0, first, end)
        if last < 0:
            last = end
        yield first, last - first
        pos = last


def _value_counts_iter(planes: list[bitarray], mask: bitarray | None, nbits: int) -> list[int]:
    """Per-value counts of the bit-sliced numbers in ``planes`` (restricted to ``mask``).

    Depth-first over the planes, most significant first, so at most one pair
    of temporaries per level is alive; the last level only counts (count_and).
    """
    n = len(planes)
    counts = [0] * (1 << n)
    root = mask if mask is not None else all_ones(nbits)
    total = root.count()
    if n == 0:
        counts[0] = total
        return counts
    # stack of (level, array, count, prefix); arrays at a level are scratch
    # copies so the caller's planes are never modified.
    stack: list[tuple[int, bitarray, int, int]] = [(0, root, total, 0)]
    while stack:
        level, cur, total, prefix = stack.pop()
        if total == 0:
            continue
        p = planes[n - 1 - level]
        ones = count_and(cur, p)
        if level == n - 1:
            counts[prefix << 1 | 1] += ones
            counts[prefix << 1] += total - ones
            continue
        hi = cur & p
        lo = cur ^ hi                    # cur & ~p without allocating ~p
        stack.append((level + 1, lo, total - ones, prefix << 1))
        stack.append((level + 1, hi, ones, prefix << 1 | 1))
    return counts


def _counts_within(planes: list[bitarray], mask: bitarray, nbits: int, k: int) -> list[int]:
    """``_value_counts_iter`` of the ``k`` blocks in ``mask``.  With few planes the
    mask restricts whole-array operations (a few dozen ``&``/``count`` passes
    at memory speed); compacting every plane first (``p[mask]``, a bit at a
    time) cost more than all of them (~0.5 ms a plane for 131072 blocks).
    Past 8 planes the nodes of the depth-first count (up to two per value
    present and level) could outnumber that, so the planes are compacted."""
    if len(planes) <= 8:
        return _value_counts_iter(planes, mask, nbits)
    return _value_counts_iter([p[mask] for p in planes], None, k)


def _ge(planes: list[bitarray], v: int, nbits: int, tmp: bitarray | None = None) -> bitarray:
    """Blocks whose bit-sliced value is >= v (a ripple comparator, MSB first).

    In place on three arrays: at 1 TiB an allocation (page faults) costs more
    than the bitwise operation itself.
    """
    if v <= 0:
        return all_ones(nbits)
    n = len(planes)
    if v >= 1 << n:
        return _zeros(nbits)
    top = v.bit_length() - 1
    if v == 1 << top:
        # v is a power of two: value >= v  <=>  any plane >= top is set
        out = planes[top].copy()
        for p in range(top + 1, n):
            out |= planes[p]
        return out
    gt = _zeros(nbits)
    eq = all_ones(nbits)
    if tmp is None:
        tmp = bitarray(nbits, endian=_ENDIAN)
    for p in range(n - 1, -1, -1):
        plane = planes[p]
        if (v >> p) & 1:
            eq &= plane
        else:
            tmp[:] = eq
            tmp &= plane
            gt |= tmp
            eq ^= tmp                 # eq & ~plane without allocating ~plane
    gt |= eq
    return gt


def older_than(planes: list[bitarray], first_block: int, nblocks: int, generation: int) -> bitarray:
    """Bits (length ``nblocks``) set where the bit-sliced ``planes`` hold a value
    below ``generation`` for blocks ``first_block..+nblocks``."""
    if not nblocks:
        return bitarray(0, endian=_ENDIAN)
    end = first_block + nblocks
    return ~_ge([p[first_block:end] for p in planes], generation, nblocks)


def store_masked(planes: list[bitarray], first: int, mask: bitarray, generation: int,
                 nbits: int) -> bitarray:
    """Set the bit-sliced value of blocks ``first + i`` with ``mask[i]`` to ``generation``,
    adding planes of ``nbits`` as it needs; returns ``~mask``.  One operation per plane."""
    while generation >= 1 << len(planes):
        planes.append(_zeros(nbits))
    end = first + len(mask)
    inv = ~mask
    for i, p in enumerate(planes):
        if (generation >> i) & 1:
            p[first:end] |= mask
        else:
            p[first:end] &= inv
    return inv


def _in_range(planes: list[bitarray], lo: int, hi: int, nbits: int, top: int | None = None) -> bitarray:
    """Values in lo..hi; ``top`` (the largest value present, if known) skips a comparator."""
    sel = _ge(planes, lo, nbits)
    if hi + 1 < 1 << len(planes) and (top is None or hi < top):
        upper = _ge(planes, hi + 1, nbits)
        upper &= sel
        sel ^= upper                  # sel & ~upper
    return sel


@dataclass(frozen=True)
class BackupPlan:
    """What a backup started by ``begin_full``/``begin_differential`` must copy.

    ``selection`` has one bit per tracking block.  The generation of a selected
    block is looked up in the bit planes as they were when the plan was made
    (the map never modifies plane arrays a plan holds: folds build new arrays,
    and a restore copies before writing).
    """
    generation_range: tuple[int, int]
    full: bool
    selection: bitarray
    block_count: int
    granularity: int
    volume_size: int
    entries: int
    volume_id: bytes
    base_id: bytes
    _planes: tuple[bitarray, ...] = field(repr=False, default=())
    _prefix: int = 0

    @classmethod
    def from_generations(cls, gens: list[int | None], lo: int, hi: int, *, granularity: int,
                         volume_size: int, volume_id: bytes, base_id: bytes,
                         full: bool = False) -> "BackupPlan":
        """A plan from an explicit per-block list (None = not selected): for tests and tools."""
        entries = -(-volume_size // granularity)
        if len(gens) != entries:
            raise ValueError(f"{len(gens)} generations for {entries} blocks")
        sel = bitarray([g is not None for g in gens], endian=_ENDIAN)
        if any(g is not None and not lo <= g <= hi for g in gens):
            raise ValueError(f"a selected generation is outside {lo}..{hi}")
        var = (lo ^ hi).bit_length()
        planes = tuple(bitarray([g is not None and bool((g >> p) & 1) for g in gens],
                                endian=_ENDIAN) for p in range(var))
        return cls((lo, hi), full, sel, sel.count(), granularity, volume_size, entries,
                   bytes(volume_id), bytes(base_id), planes, lo & ~((1 << var) - 1))

    def generation_of(self, block: int) -> int:
        g = self._prefix
        for p, plane in enumerate(self._planes):
            if plane[block]:
                g |= 1 << p
        return g

    def extents(self) -> Iterator[tuple[int, int]]:
        return extents(self.selection)

    def runs(self) -> Iterator[tuple[int, int, int]]:
        """Maximal (first_block, nblocks, generation) runs of the selection, in block order."""
        for firsts, counts, gens in self.run_batches():
            yield from zip(firsts, counts, gens)

    def run_batches(self, window: int = 1 << 18) -> Iterator[tuple[list[int], list[int], list[int]]]:
        """``runs()`` as column lists, a window of the map at a time.

        A scattered differential has a run per block or two, so the runs are
        found with whole-window bit operations (a run starts where a selected
        block follows an unselected one or the generation changes, and ends
        likewise) and C-level searches, not two searches per run.  Memory is a
        few window-sized temporaries: a run cut by the window's end is held
        back for the next window, and a run longer than a window is measured
        with searches instead.
        """
        sel = self.selection
        planes = self._planes
        prefix = self._prefix
        total = len(sel)
        a = 0
        while a < total:
            b = min(total, a + window)
            s = sel[a:b]
            if not s.any():
                a = b
                continue
            cut = b < total and sel[b - 1] and sel[b]
            if cut and s.all() and not any(p[a] != p[b - 1] or not (p[a:b].all() or
                                                                    not p[a:b].any())
                                           for p in planes):
                # one run fills the window and goes on: find its end by search
                g, stop = prefix, sel.find(0, b)
                stop = total if stop < 0 else stop
                for i, p in enumerate(planes):
                    bit = p[a]
                    g |= bit << i
                    change = p.find(not bit, b, stop)
                    if change >= 0:
                        stop = change
                yield [a], [stop - a], [g]
                a = stop
                continue
            starts = s & ~(s >> 1)
            lasts = s & ~(s << 1)
            pw = [p[a:b] for p in planes]
            if pw:
                change = _zeros(b - a)
                for p in pw:
                    change |= p ^ (p >> 1)      # differs from the block before
                change &= s
                starts |= change
                lasts |= s & (change << 1)
            # each run's end (one past its last block): its length in one pass
            ends = _zeros(b - a + 1)
            ends[1:] = lasts
            if pw:
                first_rel = list(starts.search(1))
                last_rel = list(ends.search(1))
            else:
                # Maximal runs of set bits: each run's end (an unselected block)
                # comes before the next run's start, so one search finds both,
                # interleaved.
                ends[:b - a] |= starts
                both = list(ends.search(1))
                first_rel, last_rel = both[0::2], both[1::2]
            gens = [prefix] * len(first_rel)
            for i, p in enumerate(pw):
                gens = list(map(or_, gens, map(lshift, map(p.__getitem__, first_rel), repeat(i))))
            if cut:                             # the last run may go on: next window's
                nxt = a + first_rel.pop()
                del last_rel[-1], gens[-1]
            else:
                nxt = b
            counts = list(map(sub, last_rel, first_rel))
            firsts = list(map(add, first_rel, repeat(a))) if a else first_rel
            if firsts:
                yield firsts, counts, gens
            a = nxt

    def byte_range(self, first: int, nblocks: int) -> tuple[int, int]:
        """(offset, length) in the volume of a block run; the last block may be partial."""
        off = first * self.granularity
        return off, min((first + nblocks) * self.granularity, self.volume_size) - off


class Cut:
    """A backup's frozen point: ``plan`` says what its stream holds.  The map's
    state changes only with :meth:`commit` (the stream was read to its end);
    :meth:`abandon` (or a crash, see docs/genmap-format.md) leaves it as if the
    backup never began."""

    def __init__(self, gmap: "GenerationMap", plan: BackupPlan, planes: list, counts: list,
                 next_generation: int, base_id: bytes) -> None:
        self.plan = plan
        self._map = gmap
        self._planes = planes
        self._counts = counts
        self._next_generation = next_generation
        self._base_id = base_id
        self.state = "pending"

    @property
    def full(self) -> bool:
        return self.plan.full

    def commit(self) -> None:
        if self.state != "pending":
            raise MapError(f"cut already {self.state}")
        self._map._commit_cut(self)
        self.state = "committed"

    def abandon(self) -> None:
        if self.state == "pending":
            self._map._abandon_cut(self)
            self.state = "abandoned"


class GenerationMap:
    # -- construction -------------------------------------------------------
    def __init__(self) -> None:   # use create() / open()
        raise TypeError("use GenerationMap.create() or GenerationMap.open()")

    @classmethod
    def _blank(cls) -> "GenerationMap":
        self = object.__new__(cls)
        self._lock = threading.RLock()
        self._mark_lock = threading.Lock()
        # Byte range of the journal holding marks not yet msynced (sync=False),
        # and a lock so a barrier returns only after the msync it relies on.
        self._unsynced: list[int] | None = None
        self._sync_lock = threading.Lock()
        self._closed = True
        self._mm = None
        self._storage: MapStorage | None = None
        # Journal pages whose fine bits changed since the last barrier, for a
        # storage that does not keep them across a crash by itself (RADOS).
        self._pending_pages: set[int] | None = None
        self._guard = None
        # Group commit for asynchronous writers (mark_async): pending pages form
        # batch ``_batch``; a batch taken for flushing gets the next number.
        # ``_durable``: every batch up to it is in the storage.  ``_waiters``:
        # (batch, callback) of marks waiting for their batch.
        self._batch = 1
        self._durable = 0
        self._done_batches: set[int] = set()
        self._waiters: list = []
        self._aio_inflight = False
        self._registered = False    # noted with volume.durability for pending pages
        self._slots = []
        self._coarse_slots: list = []
        self._coarse = None
        self._frozen: bitarray | None = None     # journal slot frozen by a pending cut
        self._cut: Cut | None = None
        self.recovered = False
        return self

    @staticmethod
    def _check_args(volume_size: int, granularity: int, volume_id: bytes) -> None:
        if not isinstance(volume_size, int) or volume_size <= 0:
            raise ValueError(f"volume size {volume_size!r} must be a positive number of bytes")
        if granularity < 512 or granularity > 1 << 24 or granularity & (granularity - 1):
            raise ValueError(f"tracking granularity {granularity} must be a power of two "
                             f"between 512 and 16 MiB")
        if not isinstance(volume_id, (bytes, bytearray)) or not 1 <= len(volume_id) <= MAX_VOLUME_ID:
            raise ValueError(f"volume identity must be 1..{MAX_VOLUME_ID} bytes")

    @classmethod
    def create(cls, path: "str | os.PathLike | MapStorage", *, volume_size: int,
               granularity: int = 4096, volume_id: bytes, overwrite: bool = False,
               sync: bool = True) -> "GenerationMap":
        """A new map: every block generation 0, current generation 1.

        ``path``: the map file (its journal beside it), or a :class:`MapStorage`
        (volume/mapstorage.py) holding the same bytes elsewhere.
        Call ``begin_full`` (and keep its stream) before relying on differential
        backups: until then generation 0 means "never backed up".
        """
        cls._check_args(volume_size, granularity, volume_id)
        storage = _storage(path)
        if not overwrite:
            p = storage.existing()
            if p is not None:
                raise MapError(f"{p} already exists (open it, or create with overwrite=True)")
        self = cls._blank()
        self._init_geometry(storage, volume_size, granularity, bytes(volume_id), sync)
        self._current = 1
        self._seq = 1
        self._base_id = bytes(16)
        self._planes = [_zeros(self._nbits) for _ in range(_BASE_PLANES)]
        self._plane_counts = [self._entries]
        self._write_map_file()
        self._create_journal()
        self._open_journal(fresh=True)
        return self

    @classmethod
    def open(cls, path: "str | os.PathLike | MapStorage", *, volume_size: int, volume_id: bytes,
             granularity: int | None = None, sync: bool = True,
             grow: bool = False, mark_new: bool = True) -> "GenerationMap":
        """Open an existing map of a ``volume_size``-byte volume.

        ``grow``: the volume may have grown since the map was made (``rbd resize``,
        a longer file); the map then grows to ``volume_size`` before it is returned,
        its new blocks marked in the current generation (:meth:`grow`; ``mark_new``
        False: left at generation 0, a restore target's growth), and a growth
        interrupted by a crash (journal already grown, map not) is completed.
        """
        storage = _storage(path)
        path = storage.name
        self = cls._blank()
        raw = storage.read_map()
        hdr = self._parse_map(path, raw)
        (_, _, _, _, gran, nplanes, _, vsize, entries, current, ngen, seq, base_id,
         vlen, vid) = hdr
        vid = vid[:vlen]
        if vid != bytes(volume_id):
            raise MapMismatch(f"{path} belongs to volume {vid.hex()}, not {bytes(volume_id).hex()}")
        if vsize != volume_size and not (grow and vsize < volume_size):
            raise MapMismatch(f"{path} was made for a volume of {vsize} bytes; "
                              f"the volume has {volume_size} bytes")
        if granularity is not None and gran != granularity:
            raise MapMismatch(f"{path} tracks {gran}-byte blocks, not {granularity}")
        self._init_geometry(storage, vsize, gran, vid, sync)
        if entries != self._entries:
            raise MapCorrupt(f"{path}: entry count {entries} does not match {vsize} bytes "
                             f"at {gran}-byte blocks ({self._entries})")
        self._current = current
        self._seq = seq
        self._base_id = base_id
        self._load_tables(path, raw, nplanes, ngen)
        grown = self._grown_journal_size(volume_size) if vsize < volume_size else None
        if grown is not None:
            # A growth was cut short after its journal was replaced (files): the
            # journal holds the marks, the new blocks' among them; the map only
            # lacks the new (generation 0) entries.
            self._extend_tables(grown)
        self._open_journal(fresh=False)
        if grown is not None:
            self._write_map_file()
            self.recovered = True
        if self._size < volume_size:
            self.grow(volume_size, mark_new=mark_new)
        return self

    def _grown_journal_size(self, limit: int) -> int | None:
        """The volume size of a journal that an interrupted growth left ahead of the
        map (same identity and block size, larger, at most ``limit``); else None."""
        raw = self._storage.peek_journal(_JRN_HDR_LEN)
        if len(raw) < _JRN_HDR_LEN or raw[:8] != JOURNAL_MAGIC:
            return None
        (crc,) = struct.unpack_from("<I", raw, _JRN_HDR_LEN - 4)
        if crc32c.crc32c(raw[:-4]) != crc:
            return None
        (_, ver, hlen, _running, gran, entries, vsize, s0, s1, vlen, vid,
         _boot) = _JRN_HDR.unpack_from(raw)
        if ver != JOURNAL_VERSION or gran != self._gran or vid[:vlen] != self._vid or \
                self._seq not in (s0, s1) or not self._size < vsize <= limit or \
                entries != -(-vsize // gran):
            return None
        return vsize

    def _extend_tables(self, volume_size: int) -> None:
        """The planes and counters for ``volume_size`` bytes: the added blocks at
        generation 0 (the caller marks them where they count as written)."""
        old_entries = self._entries
        planes = self._planes
        counts = self._plane_counts_list()
        self._init_geometry(self._storage, volume_size, self._gran, self._vid, self._sync)
        out = []
        for p in planes:
            a = _zeros(self._nbits)
            a[:old_entries] = p[:old_entries]
            out.append(a)
        self._planes = out
        counts[0] += self._entries - old_entries
        self._plane_counts = counts
        self._counts_cache = None

    def _init_geometry(self, storage: MapStorage, volume_size: int, granularity: int,
                       volume_id: bytes, sync: bool) -> None:
        if storage.volatile_fine and not sync:
            raise ValueError(f"{storage.name}: sync=False keeps nothing durable on this "
                             f"storage (it is for maps in RAM files)")
        self._storage = storage
        self._path = storage.name
        self._jpath = storage.journal_name
        self._size = volume_size
        self._gran = granularity
        self._shift = granularity.bit_length() - 1
        self._vid = volume_id
        self._entries = -(-volume_size // granularity)
        self._plane_bytes = -(-self._entries // 8)
        self._nbits = self._plane_bytes * 8
        self._slot_bytes = _round_up(self._plane_bytes, _PAGE)
        self._coarse_entries = -(-self._entries // (1 << COARSE_SHIFT))
        self._coarse_bytes = -(-self._coarse_entries // 8)
        self._coarse_slot_bytes = _round_up(self._coarse_bytes, _PAGE)
        self._sync = sync
        # Marks need an msync for power-loss durability, except on a RAM
        # filesystem: there a power loss takes the volume (beside its map)
        # with it, and the shared mapping already survives kill -9.
        self._msync_marks = sync and storage.needs_sync
        self._fine_volatile = self._msync_marks and storage.volatile_fine
        self._guard = storage.check_writable if storage.volatile_fine else None
        self._planes_shared = False
        self._unsaved = False
        self._counts_cache: list[int] | None = None

    # -- map file -------------------------------------------------------------
    def _parse_map(self, path: str, raw: bytes) -> tuple:
        if len(raw) < _MAP_HDR_LEN:
            raise MapCorrupt(f"{path}: {len(raw)} bytes, too short for a map header")
        if raw[:8] != MAP_MAGIC:
            raise MapCorrupt(f"{path} is not a generation map (bad magic {raw[:8]!r})")
        hdr = _MAP_HDR.unpack_from(raw)
        version, hlen = hdr[1], hdr[2]
        if version != MAP_VERSION:
            raise MapMismatch(f"{path}: map format version {version}, this release reads "
                              f"version {MAP_VERSION}")
        if hlen != _MAP_HDR_LEN:
            raise MapCorrupt(f"{path}: header length {hlen}, expected {_MAP_HDR_LEN}")
        (crc,) = struct.unpack_from("<I", raw, _MAP_HDR_LEN - 4)
        if crc32c.crc32c(raw[:_MAP_HDR_LEN - 4]) != crc:
            raise MapCorrupt(f"{path}: header checksum mismatch")
        gran, nplanes, vlen, current = hdr[4], hdr[5], hdr[13], hdr[9]
        if gran < 512 or gran & (gran - 1):
            raise MapCorrupt(f"{path}: granularity {gran} is not a power of two >= 512")
        if not 1 <= vlen <= MAX_VOLUME_ID:
            raise MapCorrupt(f"{path}: volume identity length {vlen}")
        if nplanes < _BASE_PLANES or nplanes > 32:
            raise MapCorrupt(f"{path}: {nplanes} planes")
        if current < 1:
            raise MapCorrupt(f"{path}: current generation {current}")
        return hdr

    def _table_layout(self, nplanes: int, ngen: int) -> tuple[int, int]:
        table_len = 4 * nplanes + 8 * ngen + 4
        planes_off = _round_up(_MAP_HDR_LEN + table_len, 4096)
        return table_len, planes_off

    def _load_tables(self, path: str, raw: bytes, nplanes: int, ngen: int) -> None:
        table_len, planes_off = self._table_layout(nplanes, ngen)
        want = planes_off + nplanes * self._plane_bytes
        if len(raw) != want:
            raise MapCorrupt(f"{path}: {len(raw)} bytes, expected {want} for {nplanes} planes of "
                             f"{self._entries} blocks")
        table = raw[_MAP_HDR_LEN:_MAP_HDR_LEN + table_len]
        (tcrc,) = struct.unpack_from("<I", table, table_len - 4)
        if crc32c.crc32c(table[:-4]) != tcrc:
            raise MapCorrupt(f"{path}: counter table checksum mismatch")
        plane_crcs = struct.unpack_from(f"<{nplanes}I", table)
        counts = list(struct.unpack_from(f"<{ngen}Q", table, 4 * nplanes))
        planes = []
        mv = memoryview(raw)
        for p in range(nplanes):
            chunk = mv[planes_off + p * self._plane_bytes:planes_off + (p + 1) * self._plane_bytes]
            if crc32c.crc32c(chunk) != plane_crcs[p]:
                raise MapCorrupt(f"{path}: bit plane {p} checksum mismatch")
            a = bitarray(endian=_ENDIAN)
            a.frombytes(chunk)
            if self._nbits > self._entries and a.count(1, self._entries, self._nbits):
                raise MapCorrupt(f"{path}: bit plane {p} has bits set past the last block")
            planes.append(a)
        if sum(counts) != self._entries:
            raise MapCorrupt(f"{path}: counters add up to {sum(counts)} blocks, "
                             f"the map has {self._entries}")
        self._planes = planes
        self._plane_counts = counts

    def _map_chunks(self) -> list:
        counts = self._plane_counts_list()
        ngen = len(counts)
        nplanes = len(self._planes)
        table_len, planes_off = self._table_layout(nplanes, ngen)
        hdr = bytearray(_MAP_HDR_LEN)
        _MAP_HDR.pack_into(hdr, 0, MAP_MAGIC, MAP_VERSION, _MAP_HDR_LEN, 0, self._gran, nplanes, 0,
                           self._size, self._entries, self._current, ngen, self._seq,
                           self._base_id, len(self._vid), self._vid)
        struct.pack_into("<I", hdr, _MAP_HDR_LEN - 4, crc32c.crc32c(memoryview(hdr)[:-4]))
        table = bytearray(table_len)
        struct.pack_into(f"<{nplanes}I", table, 0,
                         *(crc32c.crc32c(memoryview(p)) for p in self._planes))
        struct.pack_into(f"<{ngen}Q", table, 4 * nplanes, *counts)
        struct.pack_into("<I", table, table_len - 4, crc32c.crc32c(memoryview(table)[:-4]))
        return [hdr, table, bytes(planes_off - _MAP_HDR_LEN - table_len),
                *(memoryview(p) for p in self._planes)]

    def _write_map_file(self) -> None:
        self._storage.write_map(self._map_chunks(), self._sync)
        self._unsaved = False

    # -- journal --------------------------------------------------------------
    def _journal_size(self) -> int:
        return _PAGE + 2 * self._slot_bytes + 2 * self._coarse_slot_bytes

    def _create_journal(self) -> None:
        self._storage.create_journal(self._journal_size(),
                                     self._journal_header(running=0, seqs=(self._seq, 0)),
                                     self._sync)

    def _journal_header(self, running: int, seqs: tuple[int, int]) -> bytes:
        hdr = bytearray(_JRN_HDR_LEN)
        _JRN_HDR.pack_into(hdr, 0, JOURNAL_MAGIC, JOURNAL_VERSION, _JRN_HDR_LEN, running,
                           self._gran, self._entries, self._size, seqs[0], seqs[1],
                           len(self._vid), self._vid, _boot_id())
        struct.pack_into("<I", hdr, _JRN_HDR_LEN - 4, crc32c.crc32c(memoryview(hdr)[:-4]))
        return bytes(hdr)

    def _open_journal(self, fresh: bool) -> None:
        self._mm = self._storage.open_journal(self._journal_size())
        if self._fine_volatile:
            self._pending_pages = set()
        try:
            self._check_journal(fresh)
        except BaseException:
            self._release()
            raise
        self._closed = False

    def _check_journal(self, fresh: bool) -> None:
        raw = self._mm[:_JRN_HDR_LEN]
        if raw[:8] != JOURNAL_MAGIC:
            raise MapCorrupt(f"{self._jpath} is not a generation map journal")
        (crc,) = struct.unpack_from("<I", raw, _JRN_HDR_LEN - 4)
        if crc32c.crc32c(raw[:-4]) != crc:
            raise MapCorrupt(f"{self._jpath}: header checksum mismatch")
        (_, ver, hlen, running, gran, entries, vsize, s0, s1, vlen, vid,
         boot) = _JRN_HDR.unpack_from(raw)
        if ver != JOURNAL_VERSION or hlen != _JRN_HDR_LEN:
            raise MapMismatch(f"{self._jpath}: journal format version {ver}")
        if (gran, entries, vsize, vid[:vlen]) != (self._gran, self._entries, self._size, self._vid):
            raise MapMismatch(f"{self._jpath} belongs to another map (volume {vid[:vlen].hex()}, "
                              f"{vsize} bytes, {gran}-byte blocks)")
        self._view_journal()
        seqs = [s0, s1]
        self.recovered = bool(running) and not fresh
        if self.recovered and boot != _boot_id() and not self._storage.volatile_fine:
            # The machine restarted while the map was open (power loss, crash):
            # fine bits that were never msynced may be stale.  Every region
            # whose coarse intent bit is durable counts as written — false
            # positives only.  (After kill -9 the page cache kept the fine bits.)
            for i in (0, 1):
                _expand_coarse(self._coarse_slots[i], self._slots[i], self._entries)
                self._flush_range(self._slot_off[i], self._plane_bytes)
        if self._seq in seqs:
            active = seqs.index(self._seq)
            other = 1 - active
            if seqs[other] == self._seq + 1:
                # A fold was interrupted before the map file was replaced: the
                # old generation was never folded, and the new slot holds writes
                # made after it began.  Keep both as the current generation.
                self._slots[active] |= self._slots[other]
                self._coarse_slots[active] |= self._coarse_slots[other]
                self._flush_range(self._slot_off[active], self._plane_bytes)
                self._flush_range(self._coarse_off[active], self._coarse_bytes)
                seqs[other] = 0
                self.recovered = True
        else:
            raise MapCorrupt(f"{self._jpath} holds fold sequences {s0}/{s1}; the map is at "
                             f"{self._seq} (journal and map do not belong together)")
        if self._slots[active].count(1, self._entries, self._nbits):
            raise MapCorrupt(f"{self._jpath}: dirty bits set past the last block")
        self._active = active
        self._seqs = seqs
        self._dirty = self._slots[active]
        self._coarse = self._coarse_slots[active]
        self._write_journal_header(running=1)

    def _view_journal(self) -> None:
        """Slot offsets and the bit arrays over the journal buffer's slots."""
        mv = memoryview(self._mm)
        self._slot_off = [_PAGE, _PAGE + self._slot_bytes]
        self._slots = [bitarray(buffer=mv[o:o + self._plane_bytes], endian=_ENDIAN)
                       for o in self._slot_off]
        coarse_base = _PAGE + 2 * self._slot_bytes
        self._coarse_off = [coarse_base, coarse_base + self._coarse_slot_bytes]
        self._coarse_slots = [bitarray(buffer=mv[o:o + self._coarse_bytes], endian=_ENDIAN)
                              for o in self._coarse_off]

    def _write_journal_header(self, running: int) -> None:
        self._mm[:_JRN_HDR_LEN] = self._journal_header(running, (self._seqs[0], self._seqs[1]))
        self._flush_range(0, _JRN_HDR_LEN)

    def _flush_range(self, offset: int, length: int) -> None:
        if not self._sync:
            return
        self._storage.flush(offset, length)

    # -- properties -----------------------------------------------------------
    @property
    def current_generation(self) -> int:
        return self._current

    @property
    def granularity(self) -> int:
        return self._gran

    @property
    def volume_size(self) -> int:
        return self._size

    @property
    def volume_id(self) -> bytes:
        return self._vid

    @property
    def entries(self) -> int:
        """Number of tracking blocks (the last one is partial if the size is not a multiple)."""
        return self._entries

    @property
    def base_id(self) -> bytes:
        """Identity of the last full backup (16 zero bytes if none was taken)."""
        return self._base_id

    @property
    def nplanes(self) -> int:
        return len(self._planes)

    @property
    def path(self) -> str:
        return self._path

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held: planes (anonymous memory) and dirty slots (journal page cache)."""
        return {"planes": len(self._planes) * self._plane_bytes,
                "dirty_slot": self._plane_bytes, "entries": self._entries}

    def block_range(self, offset: int, length: int) -> tuple[int, int]:
        """(first_block, nblocks) covering a byte range."""
        if length <= 0:
            return offset >> self._shift, 0
        a = offset >> self._shift
        return a, ((offset + length - 1) >> self._shift) + 1 - a

    # -- hot path -------------------------------------------------------------
    def mark(self, offset: int, length: int, *, sync: bool = True,
             register: bool = True) -> None:
        """Record that ``length`` bytes at ``offset`` are (about to be) written.

        With ``sync`` (the default) the mark is durable when this returns.
        With ``sync=False`` it survives kill -9 at once (the dirty bitmap is a
        shared mapping) but is made power-loss durable only by the next
        :meth:`sync_marks` — the group commit a front end does once for all
        the writes it is about to acknowledge together.
        """
        if length <= 0 or offset < 0 or offset + length > self._size:
            if length == 0 and 0 <= offset <= self._size:
                return
            raise ValueError(f"range {offset}+{length} outside the {self._size}-byte volume")
        if self._guard is not None:
            self._guard()          # a fenced map refuses before the data is written
        a = offset >> self._shift
        b = ((offset + length - 1) >> self._shift) + 1
        with self._mark_lock:
            d = self._dirty
            if b - a == 1:
                if d[a]:
                    return
                d[a] = 1
            else:
                if d.count(1, a, b) == b - a:
                    return
                d[a:b] = 1
            if self._fine_volatile:
                self._note_fine(a, b, sync, register)
            elif self._msync_marks:
                # Fine bits live in the shared mapping (kill -9 safe as is); for
                # power loss only the coarse intent bit must be durable.
                ca = a >> COARSE_SHIFT
                cb = ((b - 1) >> COARSE_SHIFT) + 1
                c = self._coarse
                if cb - ca == 1:
                    if c[ca]:
                        return
                    c[ca] = 1
                else:
                    if c.count(1, ca, cb) == cb - ca:
                        return
                    c[ca:cb] = 1
                base = self._coarse_off[self._active]
                lo = base + (ca >> 3)
                hi = base + ((cb - 1) >> 3) + 1
                if sync:
                    self._storage.flush(lo, hi - lo)
                elif self._unsynced is None:
                    self._unsynced = [lo, hi]
                    durability.note_unsynced(self)
                else:
                    u = self._unsynced
                    if lo < u[0]:
                        u[0] = lo
                    if hi > u[1]:
                        u[1] = hi

    def _note_fine(self, a: int, b: int, sync: bool, register: bool = True) -> None:
        """Marks of blocks a..b-1 on a storage that keeps fine bits only when they are
        flushed (RADOS): their journal pages, fine and coarse, go out at the barrier.
        Called with the mark lock held."""
        ca = a >> COARSE_SHIFT
        cb = ((b - 1) >> COARSE_SHIFT) + 1
        c = self._coarse
        if cb - ca == 1:
            c[ca] = 1
        else:
            c[ca:cb] = 1
        fbase = self._slot_off[self._active]
        cbase = self._coarse_off[self._active]
        pages = {*range((fbase + (a >> 3)) >> _FLUSH_SHIFT,
                        ((fbase + ((b - 1) >> 3)) >> _FLUSH_SHIFT) + 1),
                 *range((cbase + (ca >> 3)) >> _FLUSH_SHIFT,
                        ((cbase + ((cb - 1) >> 3)) >> _FLUSH_SHIFT) + 1)}
        if sync:
            self._storage.flush_extents(_page_extents(pages))
            return
        self._pending_pages |= pages
        if register and not self._registered:
            # The next barrier flushes; marks of mark_async are flushed by their
            # own group commit and never make a barrier wait.
            self._registered = True
            durability.note_unsynced(self)

    def _note_cleared(self, a: int, b: int) -> None:
        """Cleared fine bits reach a volatile-fine storage with the next barrier (a
        stale 1 there would only be a false positive, but the map would then differ
        from the same map in files after a reopen)."""
        if self._pending_pages is None or b <= a:
            return
        fbase = self._slot_off[self._active]
        pages = range((fbase + (a >> 3)) >> _FLUSH_SHIFT, ((fbase + ((b - 1) >> 3)) >> _FLUSH_SHIFT) + 1)
        with self._mark_lock:
            self._pending_pages.update(pages)
            if not self._registered:
                self._registered = True
                durability.note_unsynced(self)

    def sync_marks(self) -> None:
        """Make every mark made with ``sync=False`` so far durable (one msync, or one
        RADOS write of the journal pages they changed)."""
        if self._pending_pages is not None:
            if not self._pending_pages:
                return
            with self._sync_lock:
                with self._mark_lock:
                    pages, self._pending_pages = self._pending_pages, set()
                    self._registered = False
                    batch = self._batch
                    self._batch += 1
                if not pages:
                    self._batch_done(batch, None)
                    return
                if self._closed:
                    self._batch_done(batch, MapError(f"generation map {self._path} is closed"))
                    return
                try:
                    self._storage.flush_extents(_page_extents(pages))
                except BaseException as exc:
                    # Not durable: the next barrier must try these again.
                    with self._mark_lock:
                        self._pending_pages |= pages
                        self._registered = True
                    durability.note_unsynced(self)
                    self._batch_done(batch, exc)
                    raise
                self._batch_done(batch, None)
            return
        if self._unsynced is None:
            return
        with self._sync_lock:
            with self._mark_lock:
                u, self._unsynced = self._unsynced, None
            if u is not None and not self._closed:
                try:
                    self._storage.flush(u[0], u[1] - u[0])
                except BaseException:
                    with self._mark_lock:
                        if self._unsynced is None:
                            self._unsynced = u
                        else:
                            self._unsynced = [min(u[0], self._unsynced[0]),
                                              max(u[1], self._unsynced[1])]
                    durability.note_unsynced(self)
                    raise

    # -- asynchronous group commit ----------------------------------------------
    def mark_async(self, offset: int, length: int, done) -> None:
        """``mark`` for a writer that answers from a completion: ``done(None)`` once
        the mark is durable, ``done(error)`` if it cannot be made so; from any
        thread.  On a storage that flushes journal pages (RADOS), the pages of
        every mark waiting go out together in one write op while the data write
        is in flight (group commit without blocking the caller); elsewhere
        (files: a shared mapping plus msync) the mark is made durable at once.
        Raises like ``mark`` (a fenced map refuses before anything is written)."""
        if self._pending_pages is None:
            self.mark(offset, length, sync=True)
            done(None)
            return
        self.mark(offset, length, sync=False, register=False)
        with self._mark_lock:
            key = self._batch if self._pending_pages else self._batch - 1
            if key <= self._durable:
                ready = True
            else:
                ready = False
                self._waiters.append((key, done))
        if ready:
            done(None)
            return
        self._kick()

    def _kick(self) -> None:
        """Start the next asynchronous journal write unless one is in flight."""
        with self._mark_lock:
            if self._aio_inflight or not self._pending_pages or self._closed:
                return
            pages, self._pending_pages = self._pending_pages, set()
            batch = self._batch
            self._batch += 1
            self._aio_inflight = True

        def written(exc) -> None:
            if exc is not None:
                with self._mark_lock:
                    self._pending_pages |= pages   # the next mark's commit retries them
            with self._mark_lock:
                self._aio_inflight = False
            self._batch_done(batch, exc)
            self._kick()
        try:
            self._storage.flush_extents_async(_page_extents(pages), written)
        except BaseException as exc:  # refused at submission (fenced, closed)
            written(exc)

    def _batch_done(self, batch: int, exc) -> None:
        """Batch ``batch`` was written (exc None) or failed: answer its waiters."""
        with self._mark_lock:
            self._done_batches.add(batch)
            while self._durable + 1 in self._done_batches:
                self._durable += 1
                self._done_batches.discard(self._durable)
            limit = batch if exc is not None else self._durable
            ready = [cb for k, cb in self._waiters if k <= limit]
            if ready:
                self._waiters = [(k, cb) for k, cb in self._waiters if k > limit]
        for cb in ready:
            cb(exc)

    # -- queries --------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise MapError(f"generation map {self._path} is closed")

    def _plane_counts_list(self) -> list[int]:
        """Counts of plane values (dirty ignored), indexed by generation, trailing zeros trimmed."""
        if self._counts_cache is None:
            if self._plane_counts is not None:
                self._counts_cache = list(self._plane_counts)
            else:
                c = _value_counts_iter(self._planes, None, self._nbits)
                c[0] -= self._nbits - self._entries   # padding bits read as generation 0
                self._counts_cache = c
        c = list(self._counts_cache)
        while len(c) > 1 and c[-1] == 0:
            c.pop()
        return c

    def counts(self) -> dict[int, int]:
        """Exact number of blocks whose latest generation is g, for g = 0..current."""
        with self._lock:
            self._check_open()
            base = self._plane_counts_list()
            dirty = self._dirty_view()
            k = dirty.count()
            if k:
                if k == self._entries:
                    base = [0] * len(base)
                else:
                    proj = _counts_within(self._planes, dirty, self._nbits, k)
                    base = base + [0] * max(0, len(proj) - len(base))
                    for g, c in enumerate(proj):
                        base[g] -= c
            out = {g: 0 for g in range(self._current + 1)}
            for g, c in enumerate(base):
                if c:
                    out[g] = out.get(g, 0) + c
            out[self._current] = out.get(self._current, 0) + k
            return out

    def _selection(self, lo: int, hi: int, planes: list[bitarray], dirty: bitarray | None,
                   current: int) -> bitarray:
        top = len(self._plane_counts_list()) - 1
        sel = _in_range(planes, lo, hi, self._nbits, top)
        if dirty is not None and dirty.any():
            if lo <= current <= hi:
                sel |= dirty
            else:
                both = sel & dirty
                sel ^= both
        if self._nbits > self._entries:
            sel[self._entries:] = 0
        return sel

    def blocks_in_generations(self, lo: int, hi: int) -> bitarray:
        """One bit per block: set if its latest generation is in lo..hi (inclusive)."""
        with self._lock:
            self._check_open()
            if not 0 <= lo <= hi:
                raise ValueError(f"generation range {lo}..{hi} is empty or negative")
            sel = self._selection(lo, hi, self._planes, self._dirty_view(), self._current)
            return sel if self._nbits == self._entries else sel[:self._entries]

    def generation_of(self, block: int) -> int:
        with self._lock:
            if not 0 <= block < self._entries:
                raise IndexError(f"block {block} outside 0..{self._entries - 1}")
            if self._dirty[block] or (self._frozen is not None and self._frozen[block]):
                return self._current
            g = 0
            for p, plane in enumerate(self._planes):
                if plane[block]:
                    g |= 1 << p
            return g

    def blocks_older_than(self, first_block: int, nblocks: int, generation: int) -> bitarray:
        """Bits (length nblocks) set where the map holds a generation below ``generation``."""
        with self._lock:
            self._check_open()
            if first_block < 0 or nblocks < 0 or first_block + nblocks > self._entries:
                raise ValueError(f"blocks {first_block}+{nblocks} outside the map")
            end = first_block + nblocks
            older = older_than(self._planes, first_block, nblocks, generation)
            d = self._dirty[first_block:end]
            if self._frozen is not None:
                d |= self._frozen[first_block:end]
            if d.any() and self._current >= generation:
                older &= ~d
            return older

    def extents(self, selection: bitarray) -> Iterator[tuple[int, int]]:
        return extents(selection)

    def estimate_blocks(self, scope: int) -> int:
        """Blocks a differential backup with this scope would copy now."""
        self._check_scope(scope)
        c = self.counts()
        return sum(c.get(g, 0) for g in range(self._current - scope + 1, self._current + 1))

    def _check_scope(self, scope: int) -> None:
        if not isinstance(scope, int) or not 1 <= scope <= self._current:
            raise ValueError(f"scope {scope!r} outside the valid range 1..{self._current} "
                             f"(current generation {self._current})")

    # -- generation switch ----------------------------------------------------
    def _switch_dirty(self) -> bitarray:
        """Move marking to the other slot; return the old (now frozen) slot."""
        other = 1 - self._active
        slot = self._slots[other]
        slot.setall(0)
        coarse = self._coarse_slots[other]
        coarse.setall(0)
        self._flush_range(self._slot_off[other], self._plane_bytes)
        self._flush_range(self._coarse_off[other], self._coarse_bytes)
        self._seqs[other] = self._seq + 1
        self._write_journal_header(running=1)
        with self._mark_lock:
            old = self._dirty
            self._active = other
            self._dirty = slot
            self._coarse = coarse
        return old

    def _release_slot_pages(self, slot_index: int) -> None:
        self._storage.release(self._slot_off[slot_index], self._slot_bytes)

    def _folded(self, old: bitarray, gen: int) -> tuple[list[bitarray], list[int]]:
        """(planes, counts) with the blocks in ``old`` set to ``gen`` (claim 9); the
        map's own arrays are left alone: plans may hold them, and a cut that is
        abandoned must leave the map as it was."""
        k = old.count()
        counts = self._plane_counts_list()
        planes = list(self._planes)
        if k:
            proj = _counts_within(planes, old, self._nbits, k)
            counts = counts + [0] * max(0, len(proj) - len(counts), gen + 1 - len(counts))
            for g, c in enumerate(proj):
                counts[g] -= c
            counts[gen] += k
            while gen >= 1 << len(planes):
                planes.append(_zeros(self._nbits))
            inv = ~old
            planes = [(p | old) if (gen >> i) & 1 else (p & inv) for i, p in enumerate(planes)]
        return planes, counts

    def _commit(self) -> None:
        self._seq += 1
        self._write_map_file()
        self._release_slot_pages(1 - self._active)

    # -- two-phase backup cut ---------------------------------------------------
    @property
    def pending_cut(self) -> "Cut | None":
        """The cut of a backup whose stream was not read to its end yet (None: none)."""
        return self._cut

    def _dirty_view(self) -> bitarray:
        """Blocks written in the current generation; while a cut is pending that is
        the frozen slot (before the cut) and the live one (after): nothing of the
        cut is part of the map's state until it is committed."""
        if self._frozen is None:
            return self._dirty
        return self._frozen | self._dirty

    def _no_cut(self, what: str) -> None:
        if self._cut is not None:
            raise MapBusy(f"{what}: a backup cut is pending (commit or abandon it first)")

    def cut_full(self) -> "Cut":
        """Freeze the volume for a full backup; the map changes only at ``Cut.commit``.

        Writes from now on are marked in the other journal slot: at commit they
        become generation 1 of the new full backup, on abandon (or after a crash)
        they are merged back into the current generation, as if no backup began.
        """
        with self._lock:
            self._check_open()
            self._no_cut("cut_full")
            old = self._switch_dirty()
            base = os.urandom(16)
            plan = BackupPlan((0, 0), True, all_ones(self._entries), self._entries, self._gran,
                              self._size, self._entries, self._vid, base)
            cut = Cut(self, plan, [_zeros(self._nbits) for _ in range(_BASE_PLANES)],
                      [self._entries], 1, base)
            self._frozen, self._cut = old, cut
            return cut

    def cut_differential(self, scope: int) -> "Cut":
        """Freeze the blocks of the newest ``scope`` generations (the current one
        included) for a differential backup; the generation advances at commit."""
        with self._lock:
            self._check_open()
            self._no_cut("cut_differential")
            self._check_scope(scope)
            closing = self._current
            if closing + 1 > MAX_GENERATION:
                raise MapError("generation counter exhausted; take a full backup")
            old = self._switch_dirty()
            planes, counts = self._folded(old, closing)
            lo, hi = closing - scope + 1, closing
            top = len(counts) - 1
            while top > 0 and counts[top] == 0:
                top -= 1
            sel = _in_range(planes, lo, hi, self._nbits, top)
            if self._nbits != self._entries:
                sel = sel[:self._entries]
            var = (lo ^ hi).bit_length()
            plan = BackupPlan((lo, hi), False, sel, sel.count(), self._gran, self._size,
                              self._entries, self._vid, self._base_id, tuple(planes[:var]),
                              lo & ~((1 << var) - 1))
            cut = Cut(self, plan, planes, counts, closing + 1, self._base_id)
            self._frozen, self._cut = old, cut
            return cut

    def _commit_cut(self, cut: "Cut") -> None:
        with self._lock:
            self._check_open()
            if self._cut is not cut:
                raise MapError("this cut is not pending on the map (committed or abandoned)")
            self._planes = cut._planes
            self._planes_shared = True           # the plan holds them
            self._plane_counts = cut._counts
            self._counts_cache = None
            self._current = cut._next_generation
            self._base_id = cut._base_id
            self._frozen = self._cut = None
            self._commit()

    def _abandon_cut(self, cut: "Cut") -> None:
        with self._lock:
            if self._cut is not cut:
                return
            self._frozen = self._cut = None
            if self._closed:
                return                           # the journal recovery merges at open
            frozen = 1 - self._active
            with self._mark_lock:
                self._slots[self._active] |= self._slots[frozen]
                self._coarse_slots[self._active] |= self._coarse_slots[frozen]
            self._flush_range(self._slot_off[self._active], self._plane_bytes)
            self._flush_range(self._coarse_off[self._active], self._coarse_bytes)
            # Only now does the live slot stand for the map's current generation.
            self._seqs[self._active] = self._seq
            self._seqs[frozen] = 0
            self._write_journal_header(running=1)
            self._release_slot_pages(frozen)

    def begin_full(self) -> BackupPlan:
        """``cut_full`` committed at once (the stream's fate is the caller's business)."""
        cut = self.cut_full()
        cut.commit()
        return cut.plan

    def begin_differential(self, scope: int) -> BackupPlan:
        """``cut_differential`` committed at once."""
        cut = self.cut_differential(scope)
        cut.commit()
        return cut.plan

    # -- growth ---------------------------------------------------------------
    def grow(self, volume_size: int, *, mark_new: bool = True) -> None:
        """Cover a volume that grew to ``volume_size`` bytes (``rbd resize``).

        ``mark_new``: the added blocks (and the old partial last block, whose
        bytes past the old end are new) count as written in the current
        generation, so the next differential carries them; a restore target
        grows with ``mark_new=False`` (generation 0: the stream's records then
        apply to them).  Durable when it returns: the new journal (every mark
        made so far, plus the new blocks') and the new map replace the old ones
        through the storage (``MapStorage.replace``: one guarded write op in
        RADOS; journal then map on files, an interrupted growth completed at
        open).  Refused while a backup cut is pending; a map never shrinks.
        """
        with self._lock:
            self._check_open()
            self._no_cut("grow")
            if volume_size == self._size:
                return
            if not isinstance(volume_size, int) or volume_size < self._size:
                raise MapError(f"{self._path}: a generation map cannot shrink ({self._size} to "
                               f"{volume_size} bytes)")
            self.sync_marks()
            deadline = time.monotonic() + 60
            while self._aio_inflight:       # an asynchronous journal write of the old layout
                if time.monotonic() > deadline:
                    raise MapError(f"{self._path}: a journal write did not complete; not grown")
                time.sleep(0.001)
            with self._mark_lock:
                old_size, old_entries = self._size, self._entries
                dirty = self._dirty_view()[:old_entries]
                coarse = self._coarse[:self._coarse_entries]
                self._extend_tables(volume_size)
                first_new = old_size >> self._shift        # a partial last block counts
                self._seqs = [self._seq, 0]
                self._active = 0
                jbuf = bytearray(self._journal_size())
                jbuf[:_JRN_HDR_LEN] = self._journal_header(1, (self._seq, 0))
                mv = memoryview(jbuf)
                fine = bitarray(buffer=mv[_PAGE:_PAGE + self._plane_bytes], endian=_ENDIAN)
                fine[:old_entries] = dirty
                cbase = _PAGE + 2 * self._slot_bytes
                cview = bitarray(buffer=mv[cbase:cbase + self._coarse_bytes], endian=_ENDIAN)
                cview[:len(coarse)] = coarse
                if mark_new:
                    fine[first_new:self._entries] = 1
                    cview[first_new >> COARSE_SHIFT:self._coarse_entries] = 1
                del fine, cview, mv
                # Every view of the old buffer goes before the storage lets it go.
                self._slots, self._coarse_slots = [], []
                self._dirty = self._coarse = None
                self._mm = self._storage.replace(bytes(jbuf), self._map_chunks(), self._sync)
                self._unsaved = False
                self._view_journal()
                self._dirty = self._slots[0]
                self._coarse = self._coarse_slots[0]
                self._unsynced = None
                if self._pending_pages is not None:
                    self._pending_pages = set()
                batch = self._batch
                self._batch += 1
            self._batch_done(batch, None)   # whatever was pending is in the new journal

    # -- restore --------------------------------------------------------------
    def reset(self, base_id: bytes) -> None:
        """Every block generation 0 of full backup ``base_id``, current generation 1 (full restore)."""
        with self._lock:
            self._check_open()
            self._no_cut("reset")
            if len(base_id) != 16:
                raise ValueError("base id must be 16 bytes")
            self._planes = [_zeros(self._nbits) for _ in range(_BASE_PLANES)]
            self._planes_shared = False
            self._plane_counts = [self._entries]
            self._counts_cache = None
            self._dirty.setall(0)
            self._flush_range(self._slot_off[self._active], self._plane_bytes)
            self._current = 1
            self._base_id = bytes(base_id)
            self._write_map_file()

    def apply_restored(self, first_block: int, nblocks: int, generation: int) -> None:
        """The blocks now hold data of ``generation`` (claims 6-7: the map entry comes with the data)."""
        with self._lock:
            self._check_open()
            self._no_cut("apply_restored")
            if first_block < 0 or nblocks <= 0 or first_block + nblocks > self._entries:
                raise ValueError(f"blocks {first_block}+{nblocks} outside the map")
            if not 0 <= generation <= MAX_GENERATION:
                raise ValueError(f"generation {generation} out of range")
            if self._planes_shared:
                self._planes = [p.copy() for p in self._planes]
                self._planes_shared = False
            while generation >= 1 << len(self._planes):
                self._planes.append(_zeros(self._nbits))
            end = first_block + nblocks
            for i, p in enumerate(self._planes):
                p[first_block:end] = (generation >> i) & 1
            # Clearing a dirty bit needs no msync: a stale 1 is a false positive.
            self._dirty[first_block:end] = 0
            self._note_cleared(first_block, end)
            self._plane_counts = None
            self._counts_cache = None
            if generation >= self._current:
                self._current = generation + 1
            self._unsaved = True

    def apply_restored_mask(self, first_block: int, mask: bitarray, generation: int) -> None:
        """``apply_restored`` for the blocks ``first_block + i`` where ``mask[i]`` is set:
        one whole-array operation per plane for a batch of scattered records."""
        with self._lock:
            self._check_open()
            self._no_cut("apply_restored_mask")
            end = first_block + len(mask)
            if first_block < 0 or end > self._entries:
                raise ValueError(f"blocks {first_block}+{len(mask)} outside the map")
            if not 0 <= generation <= MAX_GENERATION:
                raise ValueError(f"generation {generation} out of range")
            if not mask.any():
                return
            if self._planes_shared:
                self._planes = [p.copy() for p in self._planes]
                self._planes_shared = False
            inv = store_masked(self._planes, first_block, mask, generation, self._nbits)
            self._dirty[first_block:end] &= inv
            self._note_cleared(first_block, end)
            self._plane_counts = None
            self._counts_cache = None
            if generation >= self._current:
                self._current = generation + 1
            self._unsaved = True

    def set_current_generation(self, generation: int) -> None:
        with self._lock:
            self._check_open()
            self._no_cut("set_current_generation")
            if not 1 <= generation <= MAX_GENERATION:
                raise ValueError(f"generation {generation} out of range 1..{MAX_GENERATION}")
            top = len(self._plane_counts_list()) - 1
            if self._dirty.any():
                top = max(top, self._current)
            if generation <= top:
                raise ValueError(f"generation {generation} is not above the newest generation "
                                 f"in the map ({top})")
            self._current = generation
            self._write_map_file()

    def set_base_id(self, base_id: bytes) -> None:
        with self._lock:
            if len(base_id) != 16:
                raise ValueError("base id must be 16 bytes")
            self._base_id = bytes(base_id)
            self._unsaved = True

    def save(self) -> None:
        with self._lock:
            self._check_open()
            self._write_map_file()

    # -- closing --------------------------------------------------------------
    def _release(self) -> None:
        # Every bitarray over the mapping must go first, or the mapping (and the
        # fd it duplicated, which holds the flock) cannot be closed.
        self._slots = []
        self._dirty = None
        self._frozen = None
        self._coarse_slots = []
        self._coarse = None
        self._mm = None
        if self._storage is not None:
            self._storage.close()     # drops the flock (files) or the lock (RADOS)

    def close(self) -> None:
        if self._cut is not None and not self._closed:
            self._cut.abandon()
        try:
            self.sync_marks()       # answers every mark_async waiter too
        finally:
            with self._mark_lock:
                left, self._waiters = self._waiters, []
            for _, cb in left:
                cb(MapError(f"generation map {self._path} closed before the mark was durable"))
        durability.forget(self)
        with self._lock:
            if self._closed:
                return
            try:
                if self._unsaved:
                    self._write_map_file()
                self._write_journal_header(running=0)
            finally:
                self._closed = True
                self._release()

    def __enter__(self) -> "GenerationMap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _boot_id() -> bytes:
    """This boot's identity (Linux boot_id), to tell a process crash from a reboot."""
    global _BOOT_ID
    if _BOOT_ID is None:
        try:
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
                _BOOT_ID = bytes.fromhex(f.read().strip().replace("-", ""))[:16].ljust(16, b"\0")
        except (OSError, ValueError):
            _BOOT_ID = bytes(16)  # unknown: every unclean open then expands coarse bits
    return _BOOT_ID


_BOOT_ID: bytes | None = None


def _expand_coarse(coarse: bitarray, fine: bitarray, entries: int) -> None:
    """OR every coarse intent region into the fine bitmap (one slice per run)."""
    from bitarray.util import intervals
    span = 1 << COARSE_SHIFT
    for value, start, stop in intervals(coarse):
        if value:
            fine[start * span:min(stop * span, entries)] = 1


_FLUSH_SHIFT = 12          # journal bytes reach a volatile-fine storage in 4 KiB pages


def _page_extents(pages) -> list[tuple[int, int]]:
    """Sorted (offset, length) runs of whole flush pages."""
    out: list[tuple[int, int]] = []
    size = 1 << _FLUSH_SHIFT
    for p in sorted(pages):
        off = p << _FLUSH_SHIFT
        if out and out[-1][0] + out[-1][1] == off:
            out[-1] = (out[-1][0], out[-1][1] + size)
        else:
            out.append((off, size))
    return out


def _storage(where) -> MapStorage:
    return where if isinstance(where, MapStorage) else FileMapStorage(where)


_RAM_FS = frozenset({"tmpfs", "ramfs"})


def on_ram_filesystem(path: str) -> bool:
    """True when ``path`` lives on tmpfs/ramfs (per /proc/self/mountinfo)."""
    try:
        real = os.path.realpath(os.path.dirname(os.path.abspath(path)) or ".")
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return False
    best, fstype = "", ""
    for line in lines:
        left, _, right = line.partition(" - ")
        parts = left.split()
        if len(parts) < 5 or not right:
            continue
        mnt = parts[4].replace("\\040", " ")
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, fstype = mnt, right.split()[0]
    return fstype in _RAM_FS



