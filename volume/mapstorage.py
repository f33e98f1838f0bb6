"""Where a generation map keeps its bytes: the persistence seam of volume/genmap.py.

The map (header, counters, bit planes) and its write-intent journal (running
flag, two dirty slots, two coarse slots) have one byte layout
(docs/genmap-format.md) wherever they live.  A :class:`MapStorage` holds those
bytes and says how they become durable:

* :class:`FileMapStorage` -- ``<path>`` and ``<path>.dirty`` on a file system:
  the map replaced atomically (temp file, fsync, rename, directory fsync), the
  journal a shared mapping that survives kill -9 as it is; ``flush`` msyncs.
* ``volume.radosmap.RadosMapStorage`` -- the same bytes in RADOS objects beside
  an RBD image: the journal an in-memory copy whose changed extents are
  written at each barrier, the map a versioned object behind a pointer.

The map decides *what* must be durable and *when* (a mark before its write is
acknowledged, a cut's slot before marking moves to it); the storage only how.
"""
from __future__ import annotations

import mmap
import os
from abc import ABC, abstractmethod

__all__ = ["MapStorage", "FileMapStorage", "journal_path"]

_PAGE = mmap.PAGESIZE


def journal_path(path: str | os.PathLike) -> str:
    return os.fspath(path) + ".dirty"


class MapStorage(ABC):
    """The bytes of one generation map and its journal.

    ``name`` names the map in messages (a path, or ``rados:POOL/OBJECT``);
    ``journal_name`` the journal.  The journal is exposed as one writable
    buffer of the journal's size (``open_journal``); the map writes into it and
    asks for ranges to be made durable (``flush``).
    """
    name: str
    journal_name: str
    #: Marks must be flushed before an acknowledgement (False: a RAM file
    #: system, where a power loss takes the volume with the map).
    needs_sync: bool = True
    #: True when the journal's fine bits live only in this process until
    #: flushed (RADOS): every mark's fine bytes are flushed at the barrier, and
    #: the fine bits found after an unclean stop are exact (no coarse expansion).
    #: False (files): fine bits survive kill -9 in the page cache; only coarse
    #: bits are flushed, and a reboot expands them.
    volatile_fine: bool = False

    @abstractmethod
    def existing(self) -> str | None:
        """The name of a map or journal already there (None: neither)."""

    @abstractmethod
    def read_map(self) -> bytes:
        """The map's bytes; MapError when there is none or it cannot be read."""

    @abstractmethod
    def write_map(self, chunks: list, sync: bool) -> None:
        """Replace the map with the concatenation of ``chunks``, atomically."""

    @abstractmethod
    def create_journal(self, size: int, header: bytes, sync: bool) -> None:
        """A new journal of ``size`` zero bytes starting with ``header``."""

    @abstractmethod
    def open_journal(self, size: int):
        """Take the journal for this process (MapBusy if another has it) and return a
        writable buffer over its ``size`` bytes (MapCorrupt if it has another size)."""

    @abstractmethod
    def flush(self, offset: int, length: int) -> None:
        """Make the journal bytes ``offset .. offset+length`` durable now."""

    def flush_extents(self, extents: list[tuple[int, int]]) -> None:
        """Make several journal ranges durable (one round trip where the storage can)."""
        for off, n in extents:
            self.flush(off, n)

    def flush_extents_async(self, extents: list[tuple[int, int]], done) -> None:
        """``flush_extents`` that returns at once and calls ``done(None or error)`` when
        the ranges are durable (from any thread).  Storages without an asynchronous
        write do it now."""
        try:
            self.flush_extents(extents)
        except Exception as exc:
            done(exc)
            return
        done(None)

    def peek_journal(self, length: int) -> bytes:
        """The journal's first ``length`` bytes as stored (b"": none), without taking it."""
        return b""

    def replace(self, journal: bytes, map_chunks: list, sync: bool):
        """Replace journal and map at once (a growth: both change size and layout) and
        return the writable buffer over the new journal.  Where one atomic operation
        cannot hold both, the journal goes first: the map opener completes a growth
        whose journal is ahead of the map (GenerationMap.open with ``grow``)."""
        raise NotImplementedError(f"{self.name}: this storage cannot replace its journal")

    def release(self, offset: int, length: int) -> None:
        """The journal range will not be read for a while (drop its cached pages)."""

    def check_writable(self) -> None:
        """Raise MapError if this process may no longer change the map (fenced)."""

    @abstractmethod
    def close(self) -> None:
        """Let the journal go (after the map dropped every view of the buffer)."""


class FileMapStorage(MapStorage):
    """``<path>`` and ``<path>.dirty``: the format's original home."""

    def __init__(self, path: str | os.PathLike) -> None:
        from .genmap import on_ram_filesystem
        self.name = os.fspath(path)
        self.journal_name = journal_path(self.name)
        self.needs_sync = not on_ram_filesystem(self.name)
        self._mm = None
        self._fd = -1

    def existing(self) -> str | None:
        for p in (self.name, self.journal_name):
            if os.path.exists(p):
                return p
        return None

    def read_map(self) -> bytes:
        from .genmap import MapError
        try:
            with open(self.name, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise MapError(f"no generation map at {self.name}") from None
        except OSError as exc:
            raise MapError(f"cannot read generation map {self.name}: {exc.strerror}") from exc

    def write_map(self, chunks: list, sync: bool) -> None:
        tmp = self.name + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            for c in chunks:
                _write_all(fd, c)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.name)
        if sync:
            _fsync_dir(self.name)

    def create_journal(self, size: int, header: bytes, sync: bool) -> None:
        fd = os.open(self.journal_name, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            # Real zeroes, not a sparse file: an msync of a page must never need
            # to allocate blocks at power-loss time.
            chunk = bytes(min(size, 1 << 20))
            done = 0
            while done < size:
                done += os.write(fd, chunk[:min(len(chunk), size - done)])
            os.pwrite(fd, header, 0)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if sync:
            _fsync_dir(self.journal_name)

    def open_journal(self, size: int):
        import fcntl
        from .genmap import MapBusy, MapCorrupt
        try:
            fd = os.open(self.journal_name, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise MapCorrupt(f"write-intent journal {self.journal_name} is missing") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise MapBusy(f"{self.name} is open in another process") from None
            have = os.fstat(fd).st_size
            if have != size:
                raise MapCorrupt(f"{self.journal_name}: {have} bytes, expected {size}")
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._mm = fd, mm
        return mm

    def peek_journal(self, length: int) -> bytes:
        try:
            with open(self.journal_name, "rb") as f:
                return f.read(length)
        except OSError:
            return b""

    def replace(self, journal: bytes, map_chunks: list, sync: bool):
        import fcntl
        tmp = self.journal_name + ".grow"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)    # held before anyone can see it
            _write_all(fd, journal)
            if sync:
                os.fsync(fd)
            mm = mmap.mmap(fd, len(journal), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        os.replace(tmp, self.journal_name)
        if sync:
            _fsync_dir(self.journal_name)
        self.close()                          # the old journal's mapping and flock
        self._fd, self._mm = fd, mm
        self.write_map(map_chunks, sync)
        return mm

    def flush(self, offset: int, length: int) -> None:
        start = offset & ~(_PAGE - 1)
        self._mm.flush(start, offset + length - start)

    def release(self, offset: int, length: int) -> None:
        if hasattr(self._mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            try:
                self._mm.madvise(mmap.MADV_DONTNEED, offset, length)
            except OSError:
                pass

    def close(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass
            self._mm = None
        if self._fd >= 0:
            os.close(self._fd)   # drops the flock
            self._fd = -1


def _write_all(fd: int, data) -> None:
    mv = memoryview(data).cast("B")
    while len(mv):
        n = os.write(fd, mv)
        mv = mv[n:]


def _fsync_dir(path: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
