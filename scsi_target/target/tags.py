"""Target transfer tags (RFC 7143 11.7.4, 11.8.3, 11.18.3): one allocator per connection.

R2Ts, NOP-In pings and continued Text responses all name a TTT the initiator
echoes back, so they draw from the same counter: a tag can never stand for two
exchanges at once.  Tags stay below 2**31 (some initiators keep them in a
signed int) and skip 0 and the reserved 0xFFFFFFFF.
"""
from __future__ import annotations


class TagAllocator:
    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 1

    def __call__(self) -> int:
        ttt = self._next
        self._next = (ttt + 1) & 0x7FFFFFFF or 1
        return ttt
