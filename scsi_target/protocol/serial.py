"""Serial number arithmetic (RFC 1982) for iSCSI's 32-bit sequence numbers.

CmdSN, StatSN, DataSN and R2TSN wrap at 2**32; both ends compare them here.
"""
from __future__ import annotations

MASK32 = 0xFFFFFFFF
SERIAL_HALF = 1 << 31


def sn_lt(a: int, b: int) -> bool:
    """``a`` comes before ``b`` in serial order."""
    return a != b and ((b - a) & MASK32) < SERIAL_HALF


def sn_le(a: int, b: int) -> bool:
    return a == b or sn_lt(a, b)


def sn_next(a: int) -> int:
    return (a + 1) & MASK32
