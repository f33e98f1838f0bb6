"""A copy-on-write view of a block store: the per-test snapshot of a seeded volume.

Reads come from the base until a chunk is written; the first write to a chunk
copies it into the overlay (memory).  Creating a snapshot costs one bitarray,
whatever the base's size, so a large seeded volume is built once per session
and every test gets its own writable copy.
"""
from __future__ import annotations

from bitarray import bitarray

from volume.store import BlockStore, StoreError, byte_view

CHUNK = 64 << 10


class CowStore(BlockStore):
    thin = False

    def __init__(self, base: BlockStore, chunk: int = CHUNK) -> None:
        if chunk <= 0 or chunk & (chunk - 1):
            raise ValueError(f"chunk size {chunk} is not a power of two")
        self.base = base
        self.size = base.size
        self.chunk = chunk
        self._dirty = bitarray(-(-base.size // chunk))
        self._dirty.setall(False)
        self._chunks: dict[int, bytearray] = {}
        self._closed = False

    @property
    def copied_bytes(self) -> int:
        return len(self._chunks) * self.chunk

    def _check(self, offset: int, length: int) -> None:
        if self._closed:
            raise StoreError("snapshot is closed")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise StoreError(f"range {offset}+{length} outside store of {self.size} bytes")

    def readinto(self, offset: int, buf: memoryview) -> None:
        n = len(buf)
        self._check(offset, n)
        c = self.chunk
        first, last = offset // c, (offset + n - 1) // c if n else offset // c
        if n == 0:
            return
        if not self._dirty[first:last + 1].any():
            self.base.readinto(offset, buf)
            return
        pos = 0
        while pos < n:
            off = offset + pos
            idx = off // c
            inner = off - idx * c
            take = min(c - inner, n - pos)
            got = self._chunks.get(idx)
            if got is None:
                self.base.readinto(off, buf[pos:pos + take])
            else:
                buf[pos:pos + take] = memoryview(got)[inner:inner + take]
            pos += take

    def _own(self, idx: int) -> bytearray:
        got = self._chunks.get(idx)
        if got is None:
            start = idx * self.chunk
            got = self.base.read(start, min(self.chunk, self.size - start))
            self._chunks[idx] = got
            self._dirty[idx] = True
        return got

    def write(self, offset: int, data) -> None:
        mv = byte_view(data)
        n = len(mv)
        self._check(offset, n)
        c = self.chunk
        pos = 0
        while pos < n:
            off = offset + pos
            idx = off // c
            inner = off - idx * c
            take = min(c - inner, n - pos)
            self._own(idx)[inner:inner + take] = mv[pos:pos + take]
            pos += take

    def write_zeroes(self, offset: int, length: int) -> None:
        self.write(offset, bytes(length))

    def discard(self, offset: int, length: int) -> None:
        self.write_zeroes(offset, length)

    def close(self) -> None:
        self._closed = True
        self._chunks.clear()
