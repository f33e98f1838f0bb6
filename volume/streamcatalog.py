"""A catalog of the backup streams in a stream store (an S3 prefix): what each one is,
whether it is whole, and which chains (full + differentials) they make.

Reads only each stream's header (160 bytes) and its end (the trailer), never
the records: a catalog of a bucket of terabytes costs two small ranged GETs an
object.  ``verify`` in volume/backup.py reads a stream whole when asked.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .restore import check_chain
from .stream import (HEADER_SIZE, RECORD_HEADER_SIZE, TRAILER_SIZE, TRAILER_SYNC, StreamError,
                     StreamHeader, Trailer, parse_trailer)
from .streamstore import StreamRef, StreamStoreError

__all__ = ["CatalogEntry", "Chain", "describe", "chains"]

_TAIL_SEARCH = 1 << 20      # zero padding after the trailer looked through (dd copies)


@dataclass
class CatalogEntry:
    name: str
    size: int
    modified: float
    header: StreamHeader | None = None
    trailer: Trailer | None = None
    problem: str = ""           # why it is not a usable stream ("" when whole)

    @property
    def ok(self) -> bool:
        return self.header is not None and self.trailer is not None and not self.problem


@dataclass
class Chain:
    """The streams of one full backup (base id), in restore order."""
    base_id: bytes
    members: list[CatalogEntry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.problems

    @property
    def newest(self) -> int:
        return max(m.header.generation_range[1] for m in self.members)


def describe(ref: StreamRef, modified: float = 0.0) -> CatalogEntry:
    size = ref.size()
    e = CatalogEntry(ref.name, size, modified)
    try:
        raw = ref.read_range(0, HEADER_SIZE)
        e.header = StreamHeader.unpack(raw)
        e.trailer, at = _find_trailer(ref, size, e.header.stream_id)
    except (StreamError, StreamStoreError) as exc:
        e.problem = str(exc)
        return e
    h = e.header
    expect = HEADER_SIZE + e.trailer.record_count * RECORD_HEADER_SIZE + e.trailer.stored_bytes
    if at != expect or e.trailer.block_count != h.block_count:
        e.problem = f"trailer at byte {at} does not match the records it counts (damaged)"
    return e


def _find_trailer(ref: StreamRef, size: int, stream_id: bytes) -> tuple[Trailer, int]:
    if size < HEADER_SIZE + TRAILER_SIZE:
        raise StreamError(f"truncated: {size} bytes, no trailer")
    tail = ref.read_range(size - TRAILER_SIZE, TRAILER_SIZE)
    try:
        return parse_trailer(tail, stream_id), size - TRAILER_SIZE
    except StreamError:
        if any(tail):
            raise StreamError("no trailer at the end: truncated or damaged") from None
    # Zero padding after the trailer (a copy of the whole pseudo device): look back.
    start = max(HEADER_SIZE, size - _TAIL_SEARCH)
    buf = ref.read_range(start, size - start)
    i = len(buf)
    while True:
        i = buf.rfind(TRAILER_SYNC, 0, i)
        if i < 0:
            raise StreamError("no trailer: truncated or damaged")
        cand = buf[i:i + TRAILER_SIZE]
        if len(cand) == TRAILER_SIZE and not any(buf[i + TRAILER_SIZE:]):
            try:
                return parse_trailer(cand, stream_id), start + i
            except StreamError:
                pass


def chains(entries: list[CatalogEntry]) -> list[Chain]:
    """Group the readable streams by full backup; order each chain for a restore and
    say what keeps it from being restorable to its newest generation."""
    by_base: dict[bytes, Chain] = {}
    for e in entries:
        if e.header is None:
            continue
        c = by_base.setdefault(e.header.base_id, Chain(e.header.base_id))
        c.members.append(e)
    out = []
    for c in by_base.values():
        # Fulls first (a synthetic full after the plain one it extends), then by generations.
        c.members.sort(key=lambda m: (not m.header.full, m.header.generation_range,
                                      m.header.created_ns))
        fulls = [m for m in c.members if m.header.full]
        if not fulls:
            c.problems.append("no full backup stream of this chain here")
        order = [fulls[-1]] if fulls else []
        order += [m for m in c.members if not m.header.full]
        for m in c.members:
            if not m.ok:
                c.problems.append(f"{m.name}: {m.problem or 'unreadable'}")
        if order:
            # Differentials that hold the same generations (a backup repeated) pass.
            c.problems += check_chain([(m.name, m.header) for m in order])
        out.append(c)
    out.sort(key=lambda c: min(m.header.created_ns for m in c.members))
    return out
