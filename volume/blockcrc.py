"""The CRC32C of every block a backup stream sent, kept beside the map
(``VOLUME.blockcrc``; docs/backup-audit.md, golden vector tests/golden/blockcrc_*.bin).

    header (64 B) · entries × u32 CRC32C (little-endian) · u32 CRC32C of the table

A backup stream records, for each block it reads for sending, the CRC32C of
the block's bytes (the partial last block: of its bytes inside the volume);
the table is written when the stream is complete, *before* its map cut
commits: a crash in between leaves the sent blocks in the open generation,
which the audit does not check, so a stale table never causes a false alarm.
A full backup fills every entry and marks the table complete for its base
id; a differential updates the entries it sent.  A block whose map entry is
older than the current generation was, by the map, not written since the
backup that closed its generation sent it: its data must still have that CRC
(volume/audit.py).  Any restore deletes the table (the data it describes is
gone); the next full backup starts it again.
"""
from __future__ import annotations

import os
import struct
import sys
from array import array
from dataclasses import dataclass
from itertools import chain, compress, repeat, tee
from operator import add, eq, getitem, not_, rshift

import crc32c
from bitarray import bitarray

from . import crcshift
from .genmap import extents
from .store import BlockStore

__all__ = ["BlockCrcs", "CrcRecorder", "BlockCrcError", "crc_path", "load", "save", "forget",
           "FLAG_COMPLETE", "HEADER_SIZE"]

MAGIC = b"PYBLKCRC"
VERSION = 1
HEADER_SIZE = 64
FLAG_COMPLETE = 0x1          # a full backup filled every entry
# magic, version, header length, flags, block size, volume size, entries,
# base id, generation closed by the backup that wrote it; reserved to 60; CRC32C.
_HEADER = struct.Struct("<8sHHIIQQ16sI")
SUFFIX = ".blockcrc"


class BlockCrcError(Exception):
    """The table file is damaged or does not describe this volume."""


@dataclass
class BlockCrcs:
    block_size: int
    volume_size: int
    entries: int
    base_id: bytes
    generation: int
    complete: bool
    table: array                 # 'I', one CRC32C per block

    def pack(self) -> bytes:
        return b"".join(self.parts())

    def parts(self) -> list:
        """The table's bytes in three pieces (header, entries, table CRC), the
        entries a view of the table itself where the machine is little-endian:
        written as they are, with no copy of the whole."""
        h = bytearray(HEADER_SIZE)
        _HEADER.pack_into(h, 0, MAGIC, VERSION, HEADER_SIZE,
                          FLAG_COMPLETE if self.complete else 0, self.block_size,
                          self.volume_size, self.entries, self.base_id, self.generation)
        struct.pack_into("<I", h, HEADER_SIZE - 4, crc32c.crc32c(h[:-4]))
        t = self.table
        if t.itemsize != 4:
            raise ValueError("table entries must be 4 bytes")
        body = memoryview(t).cast("B") if sys.byteorder == "little" else _swapped(t)
        return [h, body, struct.pack("<I", crc32c.crc32c(body))]

    @classmethod
    def unpack(cls, raw: bytes, name: str = "block CRC table") -> "BlockCrcs":
        if len(raw) < HEADER_SIZE + 4:
            raise BlockCrcError(f"{name}: {len(raw)} bytes, shorter than its header")
        magic, ver, hlen, flags, bs, vsize, entries, base, gen = _HEADER.unpack_from(raw)
        if magic != MAGIC:
            raise BlockCrcError(f"{name}: not a block CRC table (magic {magic!r})")
        if ver != VERSION:
            raise BlockCrcError(f"{name}: format version {ver}; this release reads {VERSION}")
        (hcrc,) = struct.unpack_from("<I", raw, HEADER_SIZE - 4)
        if crc32c.crc32c(raw[:HEADER_SIZE - 4]) != hcrc or hlen != HEADER_SIZE:
            raise BlockCrcError(f"{name}: header checksum mismatch (damaged)")
        if bs < 512 or bs & (bs - 1) or entries != -(-vsize // bs):
            raise BlockCrcError(f"{name}: block size {bs}, volume size {vsize} and {entries} "
                                f"entries disagree")
        if len(raw) != HEADER_SIZE + 4 * entries + 4:
            raise BlockCrcError(f"{name}: {len(raw)} bytes, {HEADER_SIZE + 4 * entries + 4} "
                                f"expected for {entries} entries (truncated?)")
        body = memoryview(raw)[HEADER_SIZE:HEADER_SIZE + 4 * entries]
        (tcrc,) = struct.unpack_from("<I", raw, HEADER_SIZE + 4 * entries)
        if crc32c.crc32c(body) != tcrc:
            raise BlockCrcError(f"{name}: table checksum mismatch (damaged)")
        t = array("I")
        t.frombytes(body)
        if sys.byteorder != "little":
            t.byteswap()
        return cls(bs, vsize, entries, base, gen, bool(flags & FLAG_COMPLETE), t)


def _swapped(t: array) -> bytes:
    c = array("I", t)
    c.byteswap()
    return c.tobytes()


def crc_path(sidecar: str) -> str:
    """The table beside a tracked volume, from its sidecar path (VOLUME.volume)."""
    base = sidecar[:-len(".volume")] if sidecar.endswith(".volume") else sidecar
    return base + SUFFIX


def load(path: str) -> BlockCrcs | None:
    """The table at ``path``; None if there is none."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    return BlockCrcs.unpack(raw, path)


def save(path: str, crcs: BlockCrcs) -> None:
    """Write the table file at ``path`` (temp file, fsync, rename, directory fsync)."""
    tmp = path + ".tmp"
    parts = crcs.parts()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        for part in parts:
            with memoryview(part) as mv:
                done = 0
                while done < len(mv):
                    done += os.write(fd, mv[done:])
        os.fsync(fd)
    finally:
        os.close(fd)
        for part in parts:
            if type(part) is memoryview:
                part.release()         # the table may grow again (merged)
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def forget(path: str) -> None:
    """The volume's contents were replaced (a restore): the table no longer holds."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


_CHAIN_MAX_BLOCK = 64 << 10     # larger blocks: few per record, checksummed one by one
# Fewer blocks: the second pass over the view costs less than a run's own setup
# (a scattered differential's records are mostly one or two blocks).
_CHAIN_MIN_BLOCKS = 32
# Chained entries are turned into block CRCs once this many wait (a full
# backup of 512 MiB in 4 KiB blocks: every 64 MiB), so the table is almost
# settled when the stream ends and a held backup's COMMIT does not wait for a
# pass over all of it (~4 ms for 131072 entries).  A pass costs what the range
# from the first waiting entry to the last does, so it is made early only
# while that range is at most _SETTLE_SPREAD times the entries waiting (a
# differential's runs scattered over the volume wait for the end, as before):
# the early passes then cost at most that many times the chained entries.
_SETTLE_EVERY = 16384
_SETTLE_SPREAD = 4


def _chained_crcs(blocks) -> array:
    """``c[i] = crc32c(blocks[i], c[i-1])`` (``c[-1] = 0``) for every block, with
    no Python code per block: the ``map`` takes each seed from a ``tee`` copy of
    its own output, one value behind (the copy only ever reads values the lead
    iterator already produced, so it never re-enters the map)."""
    feedback: list = []
    vals = map(crc32c.crc32c, blocks, chain((0,), chain.from_iterable(feedback)))
    lead, behind = tee(vals)
    feedback.append(behind)
    out = array("I", lead)
    feedback.clear()                # no reference cycle left holding the blocks' buffer
    return out


class CrcRecorder(BlockStore):
    """The store a backup stream's encoder reads through: it passes reads on and
    keeps the CRC32C of every whole block read (a stream reads block-aligned
    ranges; the volume's partial last block counts as whole).

    A read of several whole blocks is checksummed *chained* (each block's CRC
    continues the previous one's), so one pass over the data gives both the
    view's CRC (a record's data CRC) and a value per block; the table entries
    so kept are turned into the blocks' own CRCs (volume/crcshift.py) in one
    whole-array step when the table is next looked at."""

    def __init__(self, inner: BlockStore, block_size: int, entries: int) -> None:
        self.inner = inner
        self.size = inner.size
        self.lends_views = inner.lends_views
        self._bs = block_size
        self._shift = block_size.bit_length() - 1
        self._table = array("I", [0]) * entries       # (from bytes: a copy of a zeroed copy)
        self.sent = bitarray(entries, endian="little")
        self.sent.setall(0)
        self._chained: bitarray | None = None    # entries still holding a chained value
        self._pending = False
        # where they are: the first entry of the earliest waiting run, the
        # end of the latest, and how many entries wait
        self._lo, self._hi, self._waiting = len(self.sent), 0, 0
        self._can_chain = block_size <= _CHAIN_MAX_BLOCK
        self._slices: list[slice] = []

    @property
    def table(self) -> array:
        """One CRC32C per block (entries of blocks not sent are 0)."""
        if self._pending:
            self._settle()
        return self._table

    def _settle(self) -> None:
        lo, hi = self._lo, self._hi
        crcshift.unchain_masked(self._table, self._chained, self._bs, lo, hi)
        self._chained[lo:hi] = 0
        self._pending = False
        self._lo, self._hi, self._waiting = len(self.sent), 0, 0

    def _chained_run(self, first: int, k: int, mv) -> int:
        """Note the ``k`` whole blocks of ``mv`` (block ``first`` on); return
        the CRC32C of all of them."""
        if self._pending and self.sent[first:first + k].any():
            self._settle()                # re-read (never in a stream): keep the values exact
        sl = self._slices
        if len(sl) < k:
            bs = self._bs
            sl = self._slices = [slice(i, i + bs) for i in range(0, k * bs, bs)]
        vals = _chained_crcs(map(mv.__getitem__, sl[:k]))
        self._table[first:first + k] = vals
        if self._chained is None:
            self._chained = bitarray(len(self.sent), endian="little")
            self._chained.setall(0)
        self._chained[first] = 0
        self._chained[first + 1:first + k] = 1
        self._pending = True
        self.sent[first:first + k] = 1
        self._lo, self._hi = min(self._lo, first), max(self._hi, first + k)
        self._waiting += k
        if self._waiting >= _SETTLE_EVERY and \
                self._hi - self._lo <= _SETTLE_SPREAD * self._waiting:
            self._settle()
        return vals[-1]

    def _note(self, offset: int, view) -> None:
        bs = self._bs
        if offset & (bs - 1):
            return                       # not a stream read (never happens): record nothing
        mv = memoryview(view).cast("B")
        n = len(mv)
        first = offset >> self._shift
        k = -(-n // bs)
        if n % bs and offset + n != self.size:
            k -= 1                       # a block read in part: not known whole
        if k <= 0:
            return
        if self._pending and self.sent[first:first + k].any():
            self._settle()
        crc = crc32c.crc32c
        self._table[first:first + k] = array("I", [crc(mv[i:i + bs]) for i in range(0, k * bs, bs)])
        self.sent[first:first + k] = 1

    def readinto(self, offset: int, buf) -> int:
        r = self.inner.readinto(offset, buf)
        self._note(offset, buf)
        return r

    def readinto_many(self, offsets, views) -> None:
        self.readinto_many_crcs(offsets, views)

    def readinto_many_crcs(self, offsets, views) -> list[int]:
        """``readinto_many``, noting every whole block, and the CRC32C of each view.

        A stream encoder reading through the recorder checksums each record's
        data: a one-block record's CRC is its block's, computed once for both
        (a scattered differential is thousands of them).  A batch of whole
        blocks (every stream batch but the one with the volume's partial last
        block) is done with C-level passes over its columns -- lengths, block
        numbers, one ``map`` of CRCs over the views and one over the blocks of
        the multi-block ones -- and the table and sent bits are updated once.
        """
        self.inner.readinto_many(offsets, views)
        return self._noted(offsets, views)

    def lend_many_crcs(self, offsets, lengths):
        """The inner store's loans for the ranges (or None), noted as
        :meth:`readinto_many_crcs` notes what it reads, with each range's CRC32C."""
        loans = self.inner.lend_many(offsets, lengths)
        if loans is None:
            return None
        return loans, self._noted(offsets, [loan.buf for loan in loans])

    def _noted(self, offsets, views) -> list[int]:
        bs, shift = self._bs, self._shift
        crc = crc32c.crc32c
        lens = list(map(len, views))
        n = len(lens)
        if not n:
            return []
        firsts = list(map(rshift, offsets, repeat(shift)))
        # Every offset is block-aligned iff the offsets add up to their blocks'
        # (each differs from its block's start by its remainder, never negative):
        # one C-level sum instead of a test per offset.
        if min(offsets) < 0 or sum(offsets) != sum(firsts) << shift:
            return self._mixed(offsets, views)
        table, sent = self._table, self.sent
        if lens.count(bs) == n:                          # one block each
            crcs = list(map(crc, views))
            if self._pending and sent[firsts].any():
                self._settle()
            list(map(table.__setitem__, firsts, crcs))
            sent[firsts] = 1
            return crcs
        ks = list(map(rshift, lens, repeat(shift)))
        if min(ks) < 1 or sum(ks) << shift != sum(lens):     # empty or partial blocks
            return self._mixed(offsets, views)
        if self._can_chain and max(ks) >= _CHAIN_MIN_BLOCKS:
            # Long runs (a full backup: few views per batch): chained, one by one.
            return [self._chained_run(f, k, v) if k >= _CHAIN_MIN_BLOCKS else
                    self._whole_blocks([f], [k], [v])[0] for f, k, v in zip(firsts, ks, views)]
        return self._whole_blocks(firsts, ks, views)

    def _whole_blocks(self, firsts: list[int], ks: list[int], views) -> list[int]:
        """Note views of ``ks[i]`` whole blocks from block ``firsts[i]``; their CRC32Cs."""
        crc = crc32c.crc32c
        table, sent = self._table, self.sent
        crcs = list(map(crc, views))
        single = list(map(eq, ks, repeat(1)))
        idx = list(compress(firsts, single))
        vals = list(compress(crcs, single))
        if len(idx) < len(ks):                           # multi-block views: their blocks too
            multi = list(map(not_, single))
            mviews = list(compress(views, multi))
            mks = list(compress(ks, multi))
            mfirsts = list(compress(firsts, multi))
            need = max(mks)
            sl = self._slices
            if len(sl) < need:
                bs = self._bs
                sl = self._slices = [slice(i, i + bs) for i in range(0, need * bs, bs)]
            blocks = map(getitem, chain.from_iterable(map(repeat, mviews, mks)),
                         chain.from_iterable(map(sl.__getitem__, map(slice, mks))))
            vals += map(crc, blocks)
            idx += chain.from_iterable(map(range, mfirsts, map(add, mfirsts, mks)))
        if self._pending and sent[idx].any():
            self._settle()                # re-read (never in a stream): keep the values exact
        list(map(table.__setitem__, idx, vals))
        sent[idx] = 1
        return crcs

    def _mixed(self, offsets, views) -> list[int]:
        """The general case: partial blocks (the volume's last; parts of blocks,
        which are not noted), views of no bytes, unaligned reads."""
        bs, shift = self._bs, self._shift
        crc = crc32c.crc32c
        table = self._table
        if any(off & (bs - 1) for off in offsets):       # not a stream's reads (never happens)
            for off, v in zip(offsets, views):
                self._note(off, v)
            return list(map(crc, views))
        size = self.size
        blocks: list = []               # every whole block of the batch, in order
        whole: list[int] = []           # per view: its block's index in ``blocks`` when the
        singles: list[int] = []         # view is that one block, -2 when chained, else -1
        runs: list[tuple[int, int, int]] = []     # (first block, blocks, index in ``blocks``)
        chained: list[int] = []         # the CRC32C of each chained view, in order
        can_chain = self._can_chain
        for off, v in zip(offsets, views):
            mv = v if type(v) is memoryview and v.format == "B" else memoryview(v).cast("B")
            n = len(mv)
            k = -(-n // bs)
            if n % bs and off + n != size:
                k -= 1                   # a block read in part: not known whole
            if k <= 0:
                whole.append(-1)
            elif can_chain and k >= _CHAIN_MIN_BLOCKS and n == k * bs:     # whole blocks only
                whole.append(-2)
                chained.append(self._chained_run(off >> shift, k, mv))
            elif n <= bs:                # the view is that one block
                whole.append(len(blocks))
                singles.append(off >> shift)
                blocks.append(mv)
            else:
                whole.append(-1)
                runs.append((off >> shift, k, len(blocks)))
                blocks += [mv[i:i + bs] for i in range(0, k * bs, bs)]
        bcrcs = array("I", map(crc, blocks))
        sent = self.sent
        if self._pending and (any(sent[first:first + k].any() for first, k, _j in runs) or
                              (singles and sent[singles].any())):
            self._settle()
        for (first, k, j) in runs:
            table[first:first + k] = bcrcs[j:j + k]
            sent[first:first + k] = 1
        if singles:
            for i, j in zip(singles, (j for j in whole if j >= 0)):
                table[i] = bcrcs[j]
            sent[singles] = 1
        ch = iter(chained)
        return [bcrcs[j] if j >= 0 else next(ch) if j == -2 else crc(v)
                for j, v in zip(whole, views)]

    def write(self, offset: int, data) -> None:     # a stream source is never written
        raise OSError("the backup stream's source is read-only")

    def flush(self) -> None:
        pass

    def merged(self, previous: "BlockCrcs | None", *, full: bool, base_id: bytes,
               generation: int, volume_size: int) -> "BlockCrcs | None":
        """The stream is complete: the table with what it sent merged into
        ``previous`` (the stored one; a full stream's replaces it).  None: a
        differential without a baseline to extend (the next full starts one).

        A volume that grew since the table was written: the first differential
        after the growth sent every added block (the growth marked them, and the
        old partial last block), so the table grows with it; otherwise it stays."""
        entries = len(self.sent)
        if full:
            return BlockCrcs(self._bs, volume_size, entries, base_id, generation,
                             self.sent.all(), self.table)
        crcs = previous
        if crcs is None or crcs.base_id != base_id or crcs.block_size != self._bs or \
                crcs.entries > entries:
            return None
        if crcs.entries < entries:
            first_new = crcs.volume_size // self._bs          # the old partial block too
            if not self.sent[first_new:].all():
                return None
            crcs.table.extend(self.table[crcs.entries:])
            crcs.entries, crcs.volume_size = entries, volume_size
        sent, table = self.sent, self.table
        # The cheapest of three ways (measured per unit here: ~0.8 us an extent,
        # ~0.15 us an entry, ~10 ns an entry of the whole table): extent by
        # extent where the runs are long, entry by entry where the blocks sent are
        # few and scattered (a differential of 4096 of 131072: ~0.4 ms instead of
        # ~1 ms), else whole-array operations.
        count = sent.count()
        runs = (sent & ~(sent >> 1)).count()       # first blocks of runs
        if runs * 6 < count:
            for a, k in extents(sent):
                crcs.table[a:a + k] = table[a:a + k]
        elif count * 16 < entries:
            idx = list(sent.search(1))
            list(map(crcs.table.__setitem__, idx, map(table.__getitem__, idx)))
        else:
            _take(crcs.table, table, sent)
        crcs.generation = generation
        return crcs

    def save(self, path: str, *, full: bool, base_id: bytes, generation: int,
             volume_size: int) -> None:
        """``merged`` with the table file at ``path``."""
        try:
            previous = None if full else load(path)
        except BlockCrcError:
            previous = None
        crcs = self.merged(previous, full=full, base_id=base_id, generation=generation,
                           volume_size=volume_size)
        if crcs is not None:
            save(path, crcs)


def _take(dst: array, src: array, sel: bitarray) -> None:
    """``dst[i] = src[i]`` wherever ``sel[i]``, as whole-array operations (a scattered
    differential sends tens of thousands of separate extents)."""
    m = sel.unpack(zero=b"\0", one=b"\xff")        # a byte per entry, then four
    raw = bytearray(4 * len(m))
    for k in range(4):
        raw[k::4] = m
    # Bit views of the arrays' own memory (no copies in or out; the byte
    # order of an entry does not matter, all four of its bytes are selected):
    # dst ^= (dst ^ src) & mask.
    mask = bitarray(buffer=raw, endian="little")
    a = bitarray(buffer=dst, endian="little")
    t = a ^ bitarray(buffer=src, endian="little")
    t &= mask
    a ^= t
