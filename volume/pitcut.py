"""Point-in-time cut for one backup stream (DESIGN invariant 4).

When a backup starts, its plan fixes which blocks the stream carries; the cut
adds the rule that the stream holds those blocks as they were at that
instant, while writes continue.  Two bit arrays over the map's blocks carry
it:

* ``pending`` -- in the plan and neither sent nor preserved yet.  A write
  touching such blocks first copies their current contents (still the
  contents at the cut) into the preservation store, then clears them here.
* ``preserved`` -- old contents held in the preservation store.  The stream
  reads these instead of the live volume, and frees them as it passes.

The stream encoder reads its plan in ascending block order, so "sent" is a
cursor: every planned block below it was read.  Blocks below the cursor or
outside the plan cost a write nothing but one ``find`` on the bit array.

The preservation store is a sparse file holding each old block at its own
volume offset (no slot table to keep): an unlinked temporary file in the
configured directory (beside the volume by default), or a memfd for memory
volumes.  Being unlinked, it vanishes with the process, so after kill -9 the
next start finds nothing to discard (the backup was not completed, so
nothing depends on it).  Space is bounded by ``capacity`` bytes of preserved
blocks; passed blocks are hole-punched.

A write never fails because of a backup: when a block cannot be preserved
(space exhausted, I/O error) the cut is *lost*, stops costing writes
anything, and every later read of the stream raises :class:`CutLost` (or
:class:`PreservationExhausted`) saying why -- never a silently fuzzy stream.
"""
from __future__ import annotations

import errno
import logging
import os
import tempfile
import threading
from bisect import bisect_right
from dataclasses import dataclass

from bitarray.util import intervals

from .filestore import _IOV_MAX, _punch_hole
from .genmap import BackupPlan
from .store import BlockStore, StoreError, byte_view

__all__ = ["CowSettings", "PitCut", "CutView", "CutLost", "PreservationExhausted",
           "PreservationStore", "open_cut", "DEFAULT_CAPACITY"]

log = logging.getLogger(__name__)

# Default preservation space: this much, or the whole volume if it is smaller
# (a cut of a volume smaller than this can then never run out).
DEFAULT_CAPACITY = 1 << 30


class CutLost(Exception):
    """The stream can no longer equal the volume at its cut; ``str()`` says why."""


class PreservationExhausted(CutLost):
    """Writes needed more preservation space than the configured bound."""


@dataclass(frozen=True)
class CowSettings:
    """Where a volume's cuts keep old blocks, and how many bytes of them at most.

    ``dir`` None keeps them in memory (memory volumes); ``size`` None means
    ``min(DEFAULT_CAPACITY, volume size)``; 0 means no preservation at all (a
    write to an unsent block fails the stream).
    """
    dir: str | None = None
    size: int | None = None

    def capacity(self, volume_size: int) -> int:
        return min(DEFAULT_CAPACITY, volume_size) if self.size is None else self.size


class PreservationStore:
    """Old block contents at their volume offsets in an unlinked sparse file (or a memfd)."""

    def __init__(self, directory: str | None) -> None:
        self.where = directory or "memory"
        if directory is None:
            self._fd = os.memfd_create("pyscsi-cow", os.MFD_CLOEXEC)
            return
        try:
            self._fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            # No O_TMPFILE on this filesystem: a named file, unlinked at once.
            fd, name = tempfile.mkstemp(prefix=".pyscsi-cow-", dir=directory)
            os.unlink(name)
            self._fd = fd

    def write(self, offsets: list[int], bufs: list[memoryview]) -> None:
        fd = self._fd
        for off, buf in zip(offsets, bufs):
            n = os.pwrite(fd, buf, off)
            while n < len(buf):          # short writes only happen near ENOSPC
                k = os.pwrite(fd, buf[n:], off + n)
                if k <= 0:
                    raise OSError(errno.ENOSPC, "short write")
                n += k

    def readinto(self, offset: int, views: list[memoryview]) -> None:
        for i in range(0, len(views), _IOV_MAX):
            part = views[i:i + _IOV_MAX]
            want = sum(map(len, part))
            got = os.preadv(self._fd, part, offset)
            if got != want:
                raise OSError(errno.EIO, f"preservation store returned {got} of {want} bytes")
            offset += want

    def free(self, offset: int, length: int) -> bool:
        return _punch_hole(self._fd, offset, length) == 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class PitCut:
    """The cut of one backup stream over ``source`` (see the module doc).

    ``host`` is the object whose ``cow`` attribute the write path consults
    (the tracked volume); :meth:`attach` sets it, release and loss clear it.
    """

    def __init__(self, source: BlockStore, plan: BackupPlan, settings: CowSettings) -> None:
        self.source = source
        self.bs = plan.granularity
        self.volume_size = plan.volume_size
        self.pending = plan.selection.copy()
        self.preserved = plan.selection.copy()      # same length and bit order
        self.preserved.setall(0)
        self.remaining = plan.block_count     # bits set in pending
        self.held = 0                         # bits set in preserved
        self.unfreed = 0                      # passed blocks whose space a hole punch did not free
        self.cursor = 0
        self.capacity = settings.capacity(plan.entries * plan.granularity)
        self.settings = settings
        self.lost: CutLost | None = None
        self.released = False
        # Figures for status and benchmarks.
        self.preserved_total = 0              # blocks ever preserved
        self.peak_bytes = 0
        self.lock = threading.Lock()
        self._store: PreservationStore | None = None
        self._host = None
        self.view = CutView(source, self)

    @property
    def used_bytes(self) -> int:
        return (self.held + self.unfreed) * self.bs

    def attach(self, host) -> None:
        old = getattr(host, "cow", None)
        if old is not None and old is not self:
            old.lose(CutLost("a newer backup started on this volume"))
        self._host = host
        host.cow = self
        if self.remaining == 0:
            self._release()

    # -- write side ----------------------------------------------------------
    def before_write(self, offset: int, length: int) -> None:
        """Preserve the still-unsent planned blocks of [offset, offset+length) before they change."""
        bs = self.bs
        b = -(-(offset + length) // bs)
        if b <= self.cursor:
            return
        with self.lock:
            if self.lost is not None or self.released:
                return
            pend = self.pending
            s = pend.find(1, max(offset // bs, self.cursor), b)
            if s < 0:
                return
            n = pend.count(1, s, b)
            if (self.held + self.unfreed + n) * bs > self.capacity:
                self._lose(PreservationExhausted(
                    f"preservation space exhausted: keeping the point-in-time image needs "
                    f"more than {self.capacity} bytes of old blocks ({self.settings.dir or 'memory'}"
                    f"); enlarge cow_size or back up when fewer writes run"))
                return
            vsize = self.volume_size
            try:
                if self._store is None:
                    self._store = PreservationStore(self.settings.dir)
                if n == b - s:                   # one run: the common case
                    at = s * bs
                    view = memoryview(bytearray(min(b * bs, vsize) - at))
                    self.source.readinto(at, view)
                    self._store.write((at,), (view,))
                    self.preserved[s:b] = 1
                else:
                    seg = pend[s:b]
                    buf = memoryview(bytearray(n * bs))
                    offs, views, p = [], [], 0
                    for v, i, j in intervals(seg):
                        if v:
                            k = min((s + j) * bs, vsize) - (s + i) * bs
                            offs.append((s + i) * bs)
                            views.append(buf[p:p + k])
                            p += k
                    self.source.readinto_many(offs, views)
                    self._store.write(offs, views)
                    self.preserved[s:b] |= seg
            except (OSError, StoreError) as exc:
                self._lose(CutLost(f"preserving old blocks for the point-in-time image "
                                   f"failed: {exc}"))
                return
            pend[s:b] = 0
            self.remaining -= n
            self.held += n
            self.preserved_total += n
            if self.used_bytes > self.peak_bytes:
                self.peak_bytes = self.used_bytes
            if self.remaining == 0:
                self._detach()           # nothing left to protect; the store still serves reads

    def before_write_many(self, offsets: list[int], lengths) -> None:
        for off, n in zip(offsets, lengths):
            self.before_write(off, n)

    # -- read side -----------------------------------------------------------
    def check(self) -> None:
        if self.lost is not None:       # a fresh instance: no tracebacks piling up on one
            raise type(self.lost)(str(self.lost))

    def read_many(self, offsets: list[int], bufs: list[memoryview]) -> None:
        """The cut's contents at ``offsets`` (ascending, past the cursor); moves the cursor."""
        with self.lock:
            self.check()
            self.source.readinto_many(offsets, bufs)
            if self.released or not offsets:
                return
            bs = self.bs
            lo = offsets[0] // bs
            hi = -(-(offsets[-1] + len(bufs[-1])) // bs)
            if lo < self.cursor:
                # Copies below the cursor are freed: a re-read would see new data.
                self._lose(CutLost(f"stream read block {lo} after block {self.cursor - 1}: "
                                   f"the point-in-time view is read once, in order"))
                self.check()
            if self.held and self.preserved.find(1, lo, hi) >= 0:
                try:
                    self._overlay(lo, hi, offsets, bufs)
                except OSError as exc:
                    self._lose(CutLost(f"reading preserved blocks failed: {exc}"))
                    self.check()
            self._advance(hi)

    def lend_many(self, offsets: list[int], lengths: list[int]):
        """Loans of the source for ``offsets`` (ascending, past the cursor), moving
        the cursor as :meth:`read_many` does; None when a block of the range is
        preserved (the copy is read with ``read_many``) or the source does not
        lend now.  Blocks behind the cursor are no longer protected here: a
        write to them changes the source, whose write path materializes the
        loans first (volume/lending.py), so the stream keeps the cut's bytes."""
        with self.lock:
            self.check()
            if not offsets:
                return None
            bs = self.bs
            lo = offsets[0] // bs
            hi = -(-(offsets[-1] + lengths[-1]) // bs)
            if lo < self.cursor and not self.released:
                return None                  # read_many reports the re-read
            if not self.released and self.held and self.preserved.find(1, lo, hi) >= 0:
                return None
            loans = self.source.lend_many(offsets, lengths)
            if loans is not None and not self.released:
                self._advance(hi)
            return loans

    def _overlay(self, lo: int, hi: int, offsets: list[int], bufs: list[memoryview]) -> None:
        bs, vsize = self.bs, self.volume_size
        ends = [o + len(b) for o, b in zip(offsets, bufs)]
        for v, i, j in intervals(self.preserved[lo:hi]):
            if not v:
                continue
            a, e = (lo + i) * bs, min((lo + j) * bs, vsize)
            k = max(0, bisect_right(offsets, a) - 1)
            group_at, group, nxt = -1, [], -1
            while k < len(offsets) and offsets[k] < e:
                x, y = max(a, offsets[k]), min(e, ends[k])
                if x < y:
                    if x != nxt and group:
                        self._store.readinto(group_at, group)
                        group = []
                    if not group:
                        group_at = x
                    group.append(bufs[k][x - offsets[k]:y - offsets[k]])
                    nxt = y
                k += 1
            if group:
                self._store.readinto(group_at, group)

    def _advance(self, hi: int) -> None:
        a = self.cursor
        if hi <= a:
            return
        n = self.pending.count(1, a, hi)
        if n:
            self.pending[a:hi] = 0
            self.remaining -= n
        if self.held:
            m = self.preserved.count(1, a, hi)
            if m:
                self.preserved[a:hi] = 0
                self.held -= m
                if not self._store.free(a * self.bs,
                                        min(hi * self.bs, self.volume_size) - a * self.bs):
                    self.unfreed += m      # no hole punching here: the space stays used
        self.cursor = hi
        if self.remaining == 0:
            self._detach()
            if self.held == 0:
                self._release()

    # -- end of life ----------------------------------------------------------
    def lose(self, why: CutLost) -> None:
        with self.lock:
            self._lose(why)

    def release(self) -> None:
        """The stream is done with the cut (read to its end, or the volume closes)."""
        with self.lock:
            self._release()

    def _lose(self, why: CutLost) -> None:
        if self.lost is None and not self.released:
            self.lost = why
            log.warning("backup stream lost its point-in-time cut: %s", why)
        self._release()

    def _release(self) -> None:
        self.released = True
        self._detach()
        if self._store is not None:
            self._store.close()
            self._store = None
        self.held = self.unfreed = 0

    def _detach(self) -> None:
        h = self._host
        if h is not None and getattr(h, "cow", None) is self:
            h.cow = None


class CutView(BlockStore):
    """``source`` as the cut sees it: what the stream encoder reads."""

    read_only = True

    def __init__(self, source: BlockStore, cut: PitCut) -> None:
        self.source = source
        self.size = source.size
        self._cut = cut
        self.lends_views = source.lends_views

    def readinto(self, offset: int, buf: memoryview) -> None:
        self._cut.read_many([offset], [byte_view(buf)])

    def readinto_many(self, offsets: list[int], bufs: list[memoryview]) -> None:
        self._cut.read_many(offsets, bufs)

    def lend_many(self, offsets: list[int], lengths: list[int]):
        return self._cut.lend_many(offsets, lengths)

    def write(self, offset: int, data) -> None:
        raise StoreError("a point-in-time view is read-only")


def open_cut(vol, plan: BackupPlan) -> PitCut:
    """Freeze ``plan``'s cut on the tracked volume ``vol``: its ``inner`` store holds
    the data, its write path calls ``vol.cow``, ``vol.cow_settings`` places the store."""
    cut = PitCut(vol.inner, plan, vol.cow_settings)
    cut.attach(vol)
    return cut
