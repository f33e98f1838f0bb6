"""Linear concatenation of block stores: the simplest logical volume.

Member ``i`` holds the byte range starting at the sum of the sizes before it.
Every request is split at member boundaries; each piece goes to one member
with a memoryview slice of the caller's buffer (no copies).
"""
from __future__ import annotations

from bisect import bisect_right
from typing import Iterator, Sequence

from .store import BlockStore, StoreError, byte_view


class ConcatStore(BlockStore):
    def __init__(self, stores: Sequence[BlockStore]) -> None:
        if not stores:
            raise ValueError("a concatenated volume needs at least one store")
        self.stores = list(stores)
        self._starts: list[int] = []
        pos = 0
        for s in self.stores:
            self._starts.append(pos)
            pos += s.size
        self.size = pos
        self.read_only = any(s.read_only for s in self.stores)
        self.thin = all(s.thin for s in self.stores)

    def _pieces(self, offset: int, length: int) -> Iterator[tuple[BlockStore, int, int, int]]:
        """(store, offset in store, offset in request, length) for each member touched."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise StoreError(f"range {offset}+{length} outside volume of {self.size} bytes")
        done = 0
        i = bisect_right(self._starts, offset) - 1
        while done < length:
            store = self.stores[i]
            local = offset + done - self._starts[i]
            n = min(length - done, store.size - local)
            if n > 0:
                yield store, local, done, n
                done += n
            i += 1

    def readinto(self, offset: int, buf: memoryview) -> None:
        for store, local, at, n in self._pieces(offset, len(buf)):
            store.readinto(local, buf[at:at + n])

    def write(self, offset: int, data) -> None:
        mv = byte_view(data)
        for store, local, at, n in self._pieces(offset, len(mv)):
            store.write(local, mv[at:at + n])

    def write_zeroes(self, offset: int, length: int) -> None:
        for store, local, _, n in self._pieces(offset, length):
            store.write_zeroes(local, n)

    def discard(self, offset: int, length: int) -> None:
        for store, local, _, n in self._pieces(offset, length):
            store.discard(local, n)

    def allocation(self, offset: int, length: int) -> Iterator[tuple[int, int, bool]]:
        for store, local, at, n in self._pieces(offset, length):
            for off, ln, mapped in store.allocation(local, n):
                yield offset + at + (off - local), ln, mapped

    def flush(self) -> None:
        for s in self.stores:
            s.flush()

    def close(self) -> None:
        errors = []
        for s in self.stores:
            try:
                s.close()
            except Exception as exc:  # close every member even if one fails
                errors.append(exc)
        if errors:
            raise errors[0]
