"""RAM-backed block store with chunk-granular allocation tracking.

Thin: a discard zeroes the bytes and clears the allocation bit of every chunk it
covers completely, so GET LBA STATUS can report deallocated extents.  The map
is a bitarray, so marking or clearing a range is one slice assignment whatever
its length.
"""
from __future__ import annotations

from typing import Iterator

from bitarray import bitarray

from .store import BlockStore, StoreError, byte_view


class MemoryStore(BlockStore):
    thin = True

    def __init__(self, size: int, granularity: int = 4096) -> None:
        if size < 0:
            raise ValueError(f"store size {size} is negative")
        if granularity <= 0 or granularity & (granularity - 1):
            raise ValueError(f"granularity {granularity} is not a power of two")
        self.size = size
        self.granularity = granularity
        self._data = bytearray(size)
        self._mv = memoryview(self._data)
        nchunks = -(-size // granularity)
        self._mapped = bitarray(nchunks)
        self._mapped.setall(False)
        self._closed = False

    def _check(self, offset: int, length: int) -> None:
        if self._closed:
            raise StoreError("memory store is closed")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise StoreError(f"range {offset}+{length} outside store of {self.size} bytes")

    def readinto(self, offset: int, buf: memoryview) -> None:
        n = len(buf)
        self._check(offset, n)
        buf[:] = self._mv[offset:offset + n]

    def write(self, offset: int, data) -> None:
        mv = byte_view(data)
        n = len(mv)
        self._check(offset, n)
        if n == 0:
            return
        self._mv[offset:offset + n] = mv
        g = self.granularity
        self._mapped[offset // g:(offset + n - 1) // g + 1] = True

    def write_zeroes(self, offset: int, length: int) -> None:
        self._check(offset, length)
        if length == 0:
            return
        # Zeroes still count as written data (a thick write), unlike discard.
        self._mv[offset:offset + length] = bytes(length)
        g = self.granularity
        self._mapped[offset // g:(offset + length - 1) // g + 1] = True

    def discard(self, offset: int, length: int) -> None:
        self._check(offset, length)
        if length == 0:
            return
        self._mv[offset:offset + length] = bytes(length)
        g = self.granularity
        first = -(-offset // g)                    # first chunk fully covered
        end = offset + length
        last = end // g if end < self.size else len(self._mapped)
        if last > first:
            self._mapped[first:last] = False

    def allocation(self, offset: int, length: int) -> Iterator[tuple[int, int, bool]]:
        self._check(offset, length)
        g = self.granularity
        pos, end = offset, offset + length
        while pos < end:
            chunk = pos // g
            state = bool(self._mapped[chunk])
            nxt = self._mapped.find(not state, chunk)
            stop = end if nxt < 0 else min(end, nxt * g)
            yield pos, stop - pos, state
            pos = stop

    def close(self) -> None:
        self._closed = True
