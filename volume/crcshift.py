"""Block CRC32Cs from chained ones, as whole-array operations.

A run of equal-sized blocks checksummed *chained* -- ``c[i] = crc32c(b[i], c[i-1])``,
``c[-1] = 0`` -- yields the CRC of the whole run (``c[-1]``, a record's data CRC)
in the same pass as one value per block.  Each block's own CRC follows from
the chained values without touching the data again: for a CRC with pre- and
post-inversion, ``crc32c(B, v) ^ crc32c(B, 0)`` is a GF(2)-linear function
``L(v)`` of ``v`` alone (for a fixed length of ``B``), so

    crc32c(b[i]) = c[i] ^ L(c[i-1])        (i > 0;  crc32c(b[0]) = c[0])

``L`` is applied to a whole array at once: each output byte is the XOR of
four byte-to-byte tables (``bytes.translate``) of the input's byte columns
(XORed as bitarrays), so fixing a table costs a few C-level passes over it.

The same linearity gives the CRC32Cs of many short equal-length messages
(:func:`slot_crcs`: a batch of stream record headers) without a call per
message: ``crc32c(m, seed)`` is ``crc32c(zeros, seed)`` XOR, for every byte
position ``p``, a contribution of ``m[p]`` alone, so each byte column of the
batch goes through four ``bytes.translate`` tables and the results are XORed
as big integers; a column holding one value throughout (a constant field, the
high bytes of a small one) is one table lookup.
"""
from __future__ import annotations

import functools
import sys
from array import array

import crc32c
from bitarray import bitarray

__all__ = ["unchain_masked", "slot_crcs"]


@functools.lru_cache(maxsize=4)
def _tables(length: int) -> tuple[tuple[bytes, ...], ...]:
    """tables[k][j]: byte k of L(byte value << 8j), for data of ``length`` bytes."""
    zeros = bytes(length)
    base = crc32c.crc32c(zeros, 0)

    def shift(v: int) -> int:
        return crc32c.crc32c(zeros, v) ^ base

    cols = [[shift(b << (8 * j)) for b in range(256)] for j in range(4)]
    return tuple(tuple(bytes((x >> (8 * k)) & 0xFF for x in cols[j]) for j in range(4))
                 for k in range(4))


def _bits(raw) -> bitarray:
    b = bitarray(endian="little")
    b.frombytes(raw)
    return b


def _last_set(bits, start: int, stop: int) -> int:
    try:
        return bits.find(1, start, stop, right=True)
    except TypeError:                 # bitarray before 2.9
        return stop - 1 - bits[start:stop][::-1].find(1)


_SPAN = 1 << 20                 # entries fixed per step (bounds the temporaries)


def unchain_masked(table: array, chained, length: int, start: int = 0,
                   stop: int | None = None) -> None:
    """In place: every entry ``i`` of ``table`` whose bit in ``chained`` (a
    bitarray as long as the table) is set holds ``crc32c(b[i], table[i-1])``;
    make it ``crc32c(b[i])`` (blocks of ``length`` bytes).  Other entries stay.
    Only entries in ``[start, stop)`` are looked at (their chains must start
    inside the range: ``table[start]`` is not itself chained).

    Spans are fixed from the last to the first: a span's first entry needs the
    chained value of the entry before it, which is the previous span's last and
    is rewritten only when that span's turn comes."""
    stop = len(chained) if stop is None else stop
    first = chained.find(1, start, stop)
    if first < 0:
        return
    last = _last_set(chained, start, stop)
    tabs = _tables(length)
    for a in reversed(range(first, last + 1, _SPAN)):
        b = min(last + 1, a + _SPAN)
        n = b - a
        seg = table[a - 1:b]                         # a >= 1: entry 0 never chains
        if sys.byteorder != "little":
            seg.byteswap()
        raw = seg.tobytes()
        prev = raw[:-4]
        cols = [prev[j::4] for j in range(4)]
        mask = _bits(chained[a:b].unpack(zero=b"\0", one=b"\xff"))
        fix = bytearray(4 * n)
        for k in range(4):
            t = tabs[k]
            acc = _bits(cols[0].translate(t[0]))
            for j in range(1, 4):
                acc ^= _bits(cols[j].translate(t[j]))
            acc &= mask
            fix[k::4] = acc.tobytes()
        out = _bits(fix)
        out ^= _bits(raw[4:])
        res = array("I")
        res.frombytes(out.tobytes())
        if sys.byteorder != "little":
            res.byteswap()
        table[a:b] = res


@functools.lru_cache(maxsize=2)
def _position_tables(length: int) -> tuple[tuple[tuple[bytes, ...], tuple[int, ...]], ...]:
    """Per byte position ``p`` of a ``length``-byte message: the contribution of
    each byte value there to the CRC (``crc32c(v at p) ^ crc32c(zeros)``), as
    four translate tables (byte ``o`` of it) and as the 256 values."""
    zeros = bytes(length)
    base = crc32c.crc32c(zeros, 0)
    out = []
    for p in range(length):
        bit = [crc32c.crc32c(bytes(p) + bytes((1 << i,)) + bytes(length - 1 - p), 0) ^ base
               for i in range(8)]
        vals = [0] * 256
        for v in range(1, 256):
            low = v & -v
            vals[v] = vals[v ^ low] ^ bit[low.bit_length() - 1]
        le = array("I", vals)
        if sys.byteorder != "little":
            le.byteswap()
        raw = le.tobytes()
        out.append((tuple(raw[o::4] for o in range(4)), tuple(vals)))
    return tuple(out)


def slot_crcs(buf: bytes, stride: int, length: int, count: int, seed: int = 0) -> array:
    """``crc32c(buf[i*stride : i*stride+length], seed)`` for ``i < count``, as an
    array("I"), in a few C-level passes per byte position (see the module doc)."""
    if count <= 0:
        return array("I")
    k0 = crc32c.crc32c(bytes(length), seed)
    acc = [0, 0, 0, 0]
    end = stride * count
    for p, (tabs, vals) in enumerate(_position_tables(length)):
        col = buf[p:end:stride]
        v = col[0]
        if col.count(v) == count:
            k0 ^= vals[v]
            continue
        for o in range(4):
            acc[o] ^= int.from_bytes(col.translate(tabs[o]), "little")
    raw = bytearray(4 * count)
    for o in range(4):
        fill = (k0 >> (8 * o)) & 0xFF
        if fill:
            acc[o] ^= int.from_bytes(bytes((fill,)) * count, "little")
        raw[o::4] = acc[o].to_bytes(count, "little")
    out = array("I")
    out.frombytes(raw)
    if sys.byteorder != "little":
        out.byteswap()
    return out
