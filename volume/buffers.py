"""A pool of large read buffers.

Allocating a fresh multi-megabyte bytearray for every READ costs more than the
read itself (zero-filling and page faults on first touch).  The pool hands out
memoryviews over recycled bytearrays; the front end gives a buffer back once
the socket has taken every byte of it.  Buffers that are never given back are
simply garbage collected, so in-process callers may ignore the pool.
"""
from __future__ import annotations

import threading

MIN_POOLED = 64 << 10         # smaller buffers are cheap to allocate: not pooled
MAX_CACHED_BYTES = 64 << 20   # upper bound on idle memory held by the pool


class BufferPool:
    def __init__(self, max_cached: int = MAX_CACHED_BYTES) -> None:
        self._free: dict[int, list[bytearray]] = {}
        self._cached = 0
        self._max_cached = max_cached
        self._lock = threading.Lock()

    @staticmethod
    def _size_class(n: int) -> int:
        return 1 << (n - 1).bit_length()

    def get(self, n: int) -> memoryview:
        """A writable view of exactly ``n`` bytes (contents undefined)."""
        if n < MIN_POOLED:
            return memoryview(bytearray(n))
        size = self._size_class(n)
        with self._lock:
            free = self._free.get(size)
            if free:
                buf = free.pop()
                self._cached -= size
            else:
                buf = None
        if buf is None:
            buf = bytearray(size)
        return memoryview(buf)[:n]

    def put(self, view: memoryview) -> None:
        """Give back a view obtained from :meth:`get`; it must not be used again."""
        buf = view.obj
        if not isinstance(buf, bytearray) or len(buf) < MIN_POOLED:
            return
        size = len(buf)
        if size != self._size_class(size):
            return
        with self._lock:
            if self._cached + size > self._max_cached:
                return
            self._free.setdefault(size, []).append(buf)
            self._cached += size

    def pooled(self, data) -> bool:
        return isinstance(data, memoryview) and isinstance(data.obj, bytearray) \
            and len(data.obj) >= MIN_POOLED


READ_BUFFERS = BufferPool()
