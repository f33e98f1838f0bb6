"""TCP byte-stream reassembly for captures, sans I/O.

A capture holds segments, not streams: a PDU may span segments, a segment may
carry several PDUs, and segments can be retransmitted (with the same or
overlapping bytes) or arrive out of order.  :class:`TcpReassembler` takes the
segments of one direction of one connection and hands out the bytes in order,
each chunk tagged with the frame that completed it (the frame whose time a
PDU gets, as in Wireshark).

A hole that is never filled (the capture lost a segment) is skipped once
``max_pending`` bytes wait behind it or the stream ends; the skip is reported
as a gap so the PDU framer above can resynchronise instead of misreading.
"""
from __future__ import annotations

from dataclasses import dataclass

_MOD = 1 << 32
_HALF = 1 << 31


def seq_delta(a: int, b: int) -> int:
    """Signed distance from sequence number ``b`` to ``a`` (RFC 1982 style)."""
    return ((a - b + _HALF) % _MOD) - _HALF


@dataclass(frozen=True, slots=True)
class Chunk:
    """In-order stream bytes; ``gap`` bytes were lost just before them."""
    data: bytes
    frame: int
    time: float
    gap: int = 0


class TcpReassembler:
    """One direction of one TCP connection."""

    def __init__(self, max_pending: int = 4 << 20) -> None:
        self.next_seq: int | None = None     # absolute position of the next byte expected
        self._isn: int | None = None
        self._pending: dict[int, tuple[bytes, int, float]] = {}   # position -> segment
        self._pending_bytes = 0
        self.max_pending = max_pending
        self.retransmitted = 0   # bytes seen twice
        self.reordered = 0       # segments that arrived ahead of a hole
        self.lost = 0            # bytes never seen
        self.saw_syn = False

    def _position(self, seq: int) -> int:
        """Sequence number → absolute stream position (wraps handled)."""
        if self._isn is None:
            self._isn = seq
            self.next_seq = 0
        rel = (seq - self._isn) % _MOD
        # Choose the unwrapped position nearest to where the stream is now.
        base = self.next_seq or 0
        return base + seq_delta(rel, base % _MOD)

    def syn(self, seq: int) -> None:
        self.saw_syn = True
        self._isn = (seq + 1) % _MOD
        self.next_seq = 0

    def segment(self, seq: int, payload: bytes, frame: int, time: float) -> list[Chunk]:
        if not payload:
            return []
        pos = self._position(seq)
        end = pos + len(payload)
        nxt = self.next_seq
        if end <= nxt:
            self.retransmitted += len(payload)
            return []
        if pos < nxt:
            self.retransmitted += nxt - pos
            payload = payload[nxt - pos:]
            pos = nxt
        if pos > nxt:
            self.reordered += 1
            old = self._pending.get(pos)
            if old is None or len(old[0]) < len(payload):
                self._pending_bytes += len(payload) - (len(old[0]) if old else 0)
                self._pending[pos] = (payload, frame, time)
            if self._pending_bytes > self.max_pending:
                return self._skip_hole()
            return []
        out = [Chunk(payload, frame, time)]
        self.next_seq = end
        out += self._drain()
        return out

    def _drain(self, gap: int = 0) -> list[Chunk]:
        out = []
        while self._pending:
            nxt = self.next_seq
            ready = [p for p in self._pending if p <= nxt]
            if not ready:
                break
            for p in sorted(ready):
                data, frame, time = self._pending.pop(p)
                self._pending_bytes -= len(data)
                if p + len(data) <= self.next_seq:
                    self.retransmitted += len(data)
                    continue
                data = data[self.next_seq - p:]
                out.append(Chunk(data, frame, time, gap))
                gap = 0
                self.next_seq += len(data)
        return out

    def _skip_hole(self) -> list[Chunk]:
        first = min(self._pending)
        gap = first - self.next_seq
        self.lost += gap
        self.next_seq = first
        return self._drain(gap)

    def finish(self) -> list[Chunk]:
        """End of capture or connection: deliver what waits behind holes."""
        out = []
        while self._pending:
            out += self._skip_hole()
        return out
