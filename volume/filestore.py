"""A block store in a (sparse) regular file or block device.

* Data moves with ``os.preadv``/``os.pwritev`` straight into/out of the
  caller's memoryviews.
* ``discard`` punches holes (``fallocate(PUNCH_HOLE | KEEP_SIZE)``); if the
  filesystem refuses, it falls back to writing zeroes and the store stops
  claiming to be thin.
* ``allocation`` answers from ``SEEK_DATA``/``SEEK_HOLE``.
* Batched reads (``readinto_many``: backup streams, copy-before-write) of a
  file on a memory filesystem (tmpfs, ramfs) copy from a read-only shared
  mapping of the file: a memoryview slice copy per range instead of a syscall
  (a scattered differential is thousands of one-block ranges), and no
  per-page work in the kernel for large ones.  Only there: a mapped read of a
  disk file that hits a media error raises SIGBUS in the process instead of
  an error return, so disk files and block devices keep ``preadv``.  The
  mapping covers the served size (remapped when the store grows) and is used
  only while ``fstat`` (one per batch) finds the file at least that long; a
  file cut shorter by another process (ignoring our lock) is read through
  ``preadv`` as before.  What is not covered: such a truncation landing in
  the microseconds of a batch's copy still raises SIGBUS.
* The same mapping lends views (``lends_views``, ``lend_many``): a full
  backup stream sends record data straight from the map (volume/lending.py).
  Every method that changes the file's bytes or the mapping -- write,
  write_many, write_zeroes, discard, grow, close -- first materializes the
  loans still out (:meth:`FileStore._before_change`), so a lent view never
  shows bytes written after it was lent.
* The file is locked with ``flock(LOCK_EX | LOCK_NB)`` so two servers never
  serve the same file.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import mmap
import os
import stat
import struct
from itertools import repeat
from operator import add, eq, setitem
from typing import Iterator

from .lending import LoanRegistry
from .store import BlockStore, StoreError, StoreLockedError, byte_view

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_FALLOC_FL_ZERO_RANGE = 0x10

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_fallocate = getattr(_libc, "fallocate64", None) or getattr(_libc, "fallocate", None)
if _fallocate is not None:
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _fallocate.restype = ctypes.c_int

_fstatfs = getattr(_libc, "fstatfs", None)
# f_type of the filesystems whose pages are memory: a mapped read cannot fail there.
_MEMORY_FS = {0x01021994, 0x858458F6}      # TMPFS_MAGIC, RAMFS_MAGIC
_ALL = slice(None)

_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENOTTY}
# Buffers per vectored call (Linux UIO_MAXIOV is 1024).
_IOV_MAX = 1024


__all__ = ["FileStore", "StoreLockedError"]


def _falloc(fd: int, mode: int, offset: int, length: int) -> int:
    """0 on success, else the errno."""
    if _fallocate is None:
        return errno.ENOSYS
    if _fallocate(fd, mode, offset, length) == 0:
        return 0
    return ctypes.get_errno()


def _punch_hole(fd: int, offset: int, length: int) -> int:
    return _falloc(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)


def _on_memory_fs(fd: int) -> bool:
    """The file behind ``fd`` lives on tmpfs or ramfs (statfs f_type; Linux)."""
    if _fstatfs is None:
        return False
    buf = ctypes.create_string_buffer(256)          # struct statfs is 120 bytes on 64-bit Linux
    if _fstatfs(fd, buf) != 0:
        return False
    (ftype,) = struct.unpack_from("l", buf.raw)     # f_type: the first field, a long
    return ftype in _MEMORY_FS


class FileStore(BlockStore):
    """``mmap_reads``: serve batched reads from a mapping of the file (see the
    module doc); None decides by the file: a regular file on a memory filesystem."""

    growable = True

    def __init__(self, path: str | os.PathLike, size: int | None = None, create: bool = False,
                 read_only: bool = False, mmap_reads: bool | None = None) -> None:
        self.path = os.fspath(path)
        self.read_only = read_only
        flags = os.O_RDONLY if read_only else os.O_RDWR
        if create and not read_only:
            flags |= os.O_CREAT
        flags |= getattr(os, "O_CLOEXEC", 0)
        try:
            self._fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open {self.path}: {exc.strerror}") from exc
        try:
            self._lock()
            self.size = self._settle_size(size)
            self.thin = not read_only and self._probe_punch()
            if mmap_reads is None:
                mmap_reads = stat.S_ISREG(os.fstat(self._fd).st_mode) and _on_memory_fs(self._fd)
            elif mmap_reads and not stat.S_ISREG(os.fstat(self._fd).st_mode):
                mmap_reads = False               # a device's size is not the file's
        except BaseException:
            os.close(self._fd)
            raise
        self.mmap_reads = bool(mmap_reads)
        self.lends_views = self.mmap_reads
        self._loans = LoanRegistry()
        self._map: mmap.mmap | None = None
        self._map_view: memoryview | None = None
        self._closed = False

    # -- opening ----------------------------------------------------------
    def _lock(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise StoreLockedError(
                f"{self.path} is already in use by another process (locked)") from exc
        except OSError as exc:
            raise StoreError(f"cannot lock {self.path}: {exc.strerror}") from exc

    def _settle_size(self, size: int | None) -> int:
        current = os.lseek(self._fd, 0, os.SEEK_END)
        if size is None:
            if current == 0:
                raise StoreError(f"{self.path} is empty; give a size to create it")
            return current
        if size <= 0:
            raise StoreError(f"size {size} for {self.path} must be positive")
        if current < size:
            if self.read_only:
                raise StoreError(f"{self.path} holds {current} bytes, fewer than the {size} asked for")
            try:
                os.ftruncate(self._fd, size)  # sparse: no blocks allocated
            except OSError as exc:
                raise StoreError(f"cannot extend {self.path} to {size} bytes: {exc.strerror}") from exc
        # A larger file is served as its first ``size`` bytes; never truncate data.
        return size

    def grow(self, size: int) -> None:
        """Serve ``size`` bytes (more than now): the file is extended sparsely; bytes
        it already held past the old end read as zeroes from now on."""
        if self.read_only:
            raise StoreError(f"{self.path} is read-only: it cannot grow")
        if size <= self.size:
            return
        self._before_change()           # the map is replaced: nothing may still point into it
        current = os.lseek(self._fd, 0, os.SEEK_END)
        old = self.size
        try:
            if current < size:
                os.ftruncate(self._fd, size)
        except OSError as exc:
            raise StoreError(f"cannot extend {self.path} to {size} bytes: {exc.strerror}") from exc
        self.size = size
        if current > old:
            self.write_zeroes(old, min(current, size) - old)

    def _probe_punch(self) -> bool:
        # Punching past EOF with KEEP_SIZE changes nothing but tells whether the
        # filesystem supports it at all.
        end = max(self.size, os.lseek(self._fd, 0, os.SEEK_END))
        return _punch_hole(self._fd, end, 4096) == 0

    # -- I/O --------------------------------------------------------------
    def _before_change(self) -> None:
        """The one rule of volume/lending.py: every view of the map still lent is
        turned into a copy before the file's bytes or the mapping change."""
        if len(self._loans):
            self._loans.materialize()

    def _check(self, offset: int, length: int) -> None:
        if self._closed:
            raise StoreError(f"{self.path} is closed")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise StoreError(f"range {offset}+{length} outside {self.path} ({self.size} bytes)")

    def readinto(self, offset: int, buf: memoryview) -> None:
        if buf.ndim != 1 or buf.itemsize != 1:
            buf = buf.cast("B")
        n = len(buf)
        self._check(offset, n)
        try:
            # The first call (almost always the only one) takes the caller's
            # view as it is; a short read continues from where it stopped.
            done = os.preadv(self._fd, [buf], offset) if n else 0
            if done == 0 and n:
                buf[:] = bytes(n)
                return
            while done < n:
                got = os.preadv(self._fd, [buf[done:]], offset + done)
                if got == 0:
                    # Past the end of a shorter device: read as zeroes.
                    buf[done:] = bytes(n - done)
                    return
                done += got
        except OSError as exc:
            raise StoreError(f"read of {n} bytes at {offset} from {self.path} failed: "
                             f"{exc.strerror}") from exc

    def write(self, offset: int, data) -> None:
        mv = byte_view(data)
        n = len(mv)
        self._check(offset, n)
        if self.read_only:
            raise StoreError(f"{self.path} is open read-only")
        self._before_change()
        try:
            done = os.pwritev(self._fd, [mv], offset) if n else 0
            while done < n:
                done += os.pwritev(self._fd, [mv[done:]], offset + done)
        except OSError as exc:
            raise StoreError(f"write of {n} bytes at {offset} to {self.path} failed: "
                             f"{exc.strerror}") from exc

    # -- batched I/O (backup and restore of many small records) ---------------
    # A scattered differential is thousands of one-block records; going through
    # readinto/write per record costs more in Python than the syscall itself.
    # These take whole lists, check them once, merge neighbours into one
    # vectored call, and fall back to the single-range path on anything short.
    def _groups(self, offsets: list[int], bufs: list) -> Iterator[tuple[int, int, int, int]]:
        """(i, j, start, end): runs ``offsets[i:j]`` that are contiguous on disk, checked."""
        if self._closed:
            raise StoreError(f"{self.path} is closed")
        size = self.size
        i, n = 0, len(offsets)
        while i < n:
            off = offsets[i]
            end = off + len(bufs[i])
            j = i + 1
            while j < n and offsets[j] == end and j - i < _IOV_MAX:
                end += len(bufs[j])
                j += 1
            if off < 0 or end > size:
                raise StoreError(f"range {off}+{end - off} outside {self.path} ({size} bytes)")
            yield i, j, off, end
            i = j

    def readinto_many(self, offsets: list[int], bufs: list[memoryview]) -> None:
        """``readinto(offsets[i], bufs[i])`` for every i (flat byte views)."""
        if self._closed:
            raise StoreError(f"{self.path} is closed")
        if not offsets:
            return
        lens = list(map(len, bufs))
        ends = list(map(add, offsets, lens))
        if min(offsets) < 0 or max(ends) > self.size:
            for off, n in zip(offsets, lens):
                self._check(off, n)
        src = self._mapped(max(ends)) if self.mmap_reads else None
        if src is not None:
            # One slice copy per range, all at C level: no syscall, no Python loop.
            list(map(setitem, bufs, repeat(_ALL), map(src.__getitem__, map(slice, offsets, ends))))
            return
        if len(offsets) > 1 and any(map(eq, offsets[1:], ends)):
            self._preadv_groups(offsets, bufs)
            return
        # No neighbours to merge (a scattered differential): one preadv per range.
        fd = self._fd
        try:
            got = list(map(os.preadv, repeat(fd), zip(bufs), offsets))
        except OSError:
            got = None
        if got != lens:                 # short or failed: range by range, with the precise error
            for off, buf, n, k in zip(offsets, bufs, lens, got or repeat(-1)):
                if k != n:
                    self.readinto(off, buf)

    def _preadv_groups(self, offsets: list[int], bufs: list[memoryview]) -> None:
        for i, j, off, end in self._groups(offsets, bufs):
            try:
                got = os.preadv(self._fd, bufs[i:j], off)
            except OSError as exc:
                raise StoreError(f"read of {end - off} bytes at {off} from {self.path} failed: "
                                 f"{exc.strerror}") from exc
            if got != end - off:            # short: redo the group range by range
                for k in range(i, j):
                    self.readinto(offsets[k], bufs[k])

    def _mapped(self, end: int) -> memoryview | None:
        """A view of the file's first ``end`` bytes or more, if they can be read mapped."""
        view = self._map_view
        if view is None or len(view) < end:
            self._unmap()
            length = self.size
            try:
                if os.fstat(self._fd).st_size < length:
                    return None
                self._map = mmap.mmap(self._fd, length, mmap.MAP_SHARED, mmap.PROT_READ)
            except (OSError, ValueError, OverflowError):
                self.mmap_reads = False          # cannot map this file: preadv from now on
                return None
            view = self._map_view = memoryview(self._map)
        try:
            if os.fstat(self._fd).st_size < len(view):
                self._unmap()                    # cut shorter behind our back: no mapped reads
                return None
        except OSError:
            return None
        return view

    def _unmap(self, final: bool = False) -> None:
        """Forget the mapping.  Another thread may be between taking the view and
        copying from it: only ``close`` releases it (and the mapping's own
        descriptor) eagerly; otherwise the last reference unmaps it."""
        view, mm = self._map_view, self._map
        self._map_view = self._map = None
        if final and mm is not None:
            try:
                view.release()
                mm.close()
            except (BufferError, ValueError):
                pass

    def lend_many(self, offsets: list[int], lengths: list[int]):
        """Views of the map for the ranges, as loans (volume/lending.py), or None
        when the file cannot be read mapped now (then ``readinto_many``)."""
        if self._closed:
            raise StoreError(f"{self.path} is closed")
        if not offsets or not self.mmap_reads:
            return None
        ends = list(map(add, offsets, lengths))
        if min(offsets) < 0 or max(ends) > self.size:
            for off, n in zip(offsets, lengths):
                self._check(off, n)
        src = self._mapped(max(ends))
        if src is None:
            return None
        return list(map(self._loans.lend, map(src.__getitem__, map(slice, offsets, ends))))

    def write_many(self, offsets: list[int], datas: list) -> None:
        """``write(offsets[i], datas[i])`` for every i, in order (flat byte views)."""
        if self.read_only:
            raise StoreError(f"{self.path} is open read-only")
        self._before_change()
        for i, j, off, end in self._groups(offsets, datas):
            try:
                done = os.pwrite(self._fd, datas[i], off) if j == i + 1 \
                    else os.pwritev(self._fd, datas[i:j], off)
            except OSError as exc:
                raise StoreError(f"write of {end - off} bytes at {off} to {self.path} failed: "
                                 f"{exc.strerror}") from exc
            if done != end - off:           # short: finish the group range by range
                for k in range(i, j):
                    self.write(offsets[k], datas[k])     # idempotent over what was written

    def write_zeroes(self, offset: int, length: int) -> None:
        self._check(offset, length)
        if self.read_only:
            raise StoreError(f"{self.path} is open read-only")
        if length == 0:
            return
        self._before_change()
        # ZERO_RANGE keeps the blocks allocated (a thick write of zeroes) without
        # moving the bytes through Python; filesystems without it get real zeroes.
        err = _falloc(self._fd, _FALLOC_FL_ZERO_RANGE | _FALLOC_FL_KEEP_SIZE, offset, length)
        if err == 0:
            return
        if err not in _UNSUPPORTED:
            raise StoreError(f"zeroing {length} bytes at {offset} in {self.path} failed: "
                             f"{os.strerror(err)}")
        super().write_zeroes(offset, length)

    def discard(self, offset: int, length: int) -> None:
        self._check(offset, length)
        if self.read_only:
            raise StoreError(f"{self.path} is open read-only")
        if length == 0:
            return
        self._before_change()           # a punched hole reads as zeroes through the map
        if self.thin:
            err = _punch_hole(self._fd, offset, length)
            if err == 0:
                return
            if err not in _UNSUPPORTED:
                raise StoreError(f"hole punch of {length} bytes at {offset} in {self.path} "
                                 f"failed: {os.strerror(err)}")
            self.thin = False
        self.write_zeroes(offset, length)

    def flush(self) -> None:
        if self._closed or self.read_only:
            return
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise StoreError(f"fdatasync of {self.path} failed: {exc.strerror}") from exc

    def allocation(self, offset: int, length: int) -> Iterator[tuple[int, int, bool]]:
        self._check(offset, length)
        end = offset + length
        pos = offset
        while pos < end:
            try:
                data = os.lseek(self._fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole from here to EOF
                    yield pos, end - pos, False
                    return
                if exc.errno in _UNSUPPORTED:
                    yield pos, end - pos, True
                    return
                raise StoreError(f"SEEK_DATA on {self.path} failed: {exc.strerror}") from exc
            if data > pos:
                stop = min(data, end)
                yield pos, stop - pos, False
                pos = stop
                continue
            hole = os.lseek(self._fd, pos, os.SEEK_HOLE)
            stop = min(hole, end)
            yield pos, stop - pos, True
            pos = stop

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._before_change()           # lent views must not outlive the mapping
        self._unmap(final=True)
        try:
            if not self.read_only:
                os.fdatasync(self._fd)
        finally:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
