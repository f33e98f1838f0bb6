"""The block store interface every disk LUN backing implements.

Stores are byte-addressed; the LU converts LBAs.  Offsets and lengths passed in
are always within ``size`` (the LU checks ranges).  Interceptors (the
difference tracker) wrap a store and expose the same interface.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator


def byte_view(data) -> memoryview:
    """``data`` (any buffer; None = empty) as a flat memoryview of bytes, without copying."""
    mv = memoryview(data if data is not None else b"")
    return mv if mv.ndim == 1 and mv.itemsize == 1 else mv.cast("B")


def _crc32c():
    import crc32c          # only a backup stream's reads need it (its import costs a client ~30 ms)
    return crc32c


class StoreError(Exception):
    """An I/O failure of the backing medium (maps to MEDIUM/HARDWARE ERROR)."""


class StoreLockedError(StoreError):
    """Another process (another server) already serves this volume."""


class StoreTimeout(StoreError):
    """The medium did not answer in time (a network store: an OSD or monitor timeout)."""


class StoreNoSpace(StoreError):
    """The medium has no space left for the write (a full pool, a quota)."""


class StoreOutOfRange(StoreError):
    """The range lies past the backing store's end although the LU serves it (a
    tracked RBD image shrunk under the target: the old size stays served)."""


class StoreFenced(StoreError):
    """This process may no longer write the medium: its lock was taken away or its
    client was blocklisted.  Nothing it does will succeed until it reopens."""


class BlockStore(ABC):
    size: int                 # bytes
    read_only: bool = False
    thin: bool = False        # supports discard that deallocates (thin provisioning)
    # True: the store also offers submit_read/submit_write/submit_flush, which
    # return at once and call ``done`` later, from any thread (volume/rbdstore.py).
    asynchronous: bool = False
    lends: bool = False       # lend() may answer a read without a copy
    # True: lend_many() may answer reads with views of the store's own memory
    # (a file's mapping), as volume/lending.py Loans the store materializes
    # before any change of its bytes or mapping.  Only a synchronous store run
    # on the thread that also writes it (file LUs: the event loop) sets it.
    lends_views: bool = False
    # True: the store defines grow(size), which makes it larger (a file extended,
    # an RBD image resized, a tracked volume's map with it).  A restore of a chain
    # that spans a growth grows its target through it.
    growable: bool = False
    # True: a change tracker (volume/tracked.py): it grows map first and tells its
    # ``grow_listeners``, and never shrinks (``limit_to`` fences the lost range).
    tracked: bool = False
    # True: the store defines watch_size(changed, interval), which calls
    # ``changed(size)`` when the medium's size changed under it (an RBD image's
    # ``rbd resize``).
    watches_size: bool = False

    @abstractmethod
    def readinto(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with ``len(buf)`` bytes from ``offset``."""

    def volume_label(self) -> str:
        """What messages call the volume (a tracked volume: its file or image)."""
        return "the volume"

    def lend(self, offset: int, length: int):
        """(read-only view of the ``length`` bytes at ``offset``, release callable),
        or None: then read with :meth:`readinto`.  Only stores with ``lends`` set
        are asked; the view stays valid until ``release()`` (or for good)."""
        return None

    def lend_many(self, offsets: list[int], lengths: list[int]):
        """One :class:`~volume.lending.Loan` per range (``lengths[i]`` bytes at
        ``offsets[i]``), or None: then read with :meth:`readinto_many`.  Only
        stores with ``lends_views`` set are asked."""
        return None

    def lend_many_crcs(self, offsets: list[int], lengths: list[int]):
        """``lend_many``, and the CRC32C of each range: (loans, crcs) or None."""
        loans = self.lend_many(offsets, lengths)
        if loans is None:
            return None
        return loans, [_crc32c().crc32c(loan.buf) for loan in loans]

    def read(self, offset: int, length: int) -> bytearray:
        buf = bytearray(length)
        self.readinto(offset, memoryview(buf))
        return buf

    @abstractmethod
    def write(self, offset: int, data) -> None:
        """Write the bytes-like ``data`` at ``offset``."""


    def readinto_many(self, offsets: list[int], bufs: list[memoryview]) -> None:
        """``readinto(offsets[i], bufs[i])`` for every i; stores may merge neighbours."""
        for off, buf in zip(offsets, bufs):
            self.readinto(off, buf)

    def readinto_many_crcs(self, offsets: list[int], bufs: list[memoryview]) -> list[int]:
        """``readinto_many``, and the CRC32C of each buffer: what a backup stream's
        encoder reads with (a store that checksums as it reads answers both in one
        pass: volume/blockcrc.py's recorder)."""
        self.readinto_many(offsets, bufs)
        return list(map(_crc32c().crc32c, bufs))

    def write_many(self, offsets: list[int], datas: list) -> None:
        """``write(offsets[i], datas[i])`` for every i, in order; stores may merge neighbours."""
        for off, data in zip(offsets, datas):
            self.write(off, data)

    def write_zeroes(self, offset: int, length: int) -> None:
        zero = bytes(min(length, 1 << 20))
        while length:
            n = min(length, len(zero))
            self.write(offset, memoryview(zero)[:n])
            offset += n
            length -= n

    def discard(self, offset: int, length: int) -> None:
        """Deallocate (reads return zeroes afterwards)."""
        self.write_zeroes(offset, length)

    def flush(self) -> None:
        """Make every completed write durable."""

    def allocation(self, offset: int, length: int) -> Iterator[tuple[int, int, bool]]:
        """(offset, length, mapped) extents covering the range, for GET LBA STATUS."""
        yield offset, length, True

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
