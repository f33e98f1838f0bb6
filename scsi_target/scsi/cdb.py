"""Small decoders for the LBA / transfer-length fields of block CDBs.

SBC puts these fields in a handful of fixed places depending on the CDB size;
naming them once keeps the handlers free of byte arithmetic.
"""
from __future__ import annotations

from . import sense as S


def need(cdb: bytes, length: int) -> None:
    """CDBs shorter than their opcode's size are malformed."""
    if len(cdb) < length:
        raise S.invalid_cdb_field(0)


def be(cdb: bytes, start: int, end: int) -> int:
    return int.from_bytes(cdb[start:end], "big")


def rw6(cdb: bytes) -> tuple[int, int]:
    """READ/WRITE(6): 21-bit LBA; a transfer length of 0 means 256 blocks."""
    need(cdb, 6)
    lba = ((cdb[1] & 0x1F) << 16) | (cdb[2] << 8) | cdb[3]
    return lba, cdb[4] or 256


def lba_len10(cdb: bytes) -> tuple[int, int]:
    need(cdb, 10)
    return be(cdb, 2, 6), be(cdb, 7, 9)


def lba_len12(cdb: bytes) -> tuple[int, int]:
    need(cdb, 12)
    return be(cdb, 2, 6), be(cdb, 6, 10)


def lba_len16(cdb: bytes) -> tuple[int, int]:
    need(cdb, 16)
    return be(cdb, 2, 10), be(cdb, 10, 14)


# (decoder, byte offset of the transfer length field) per CDB size; the offset
# is the field pointer reported when the length is refused.
LBA_LEN = {
    10: (lba_len10, 7),
    12: (lba_len12, 6),
    16: (lba_len16, 10),
}


def lba_len(cdb: bytes, size: int) -> tuple[int, int]:
    return LBA_LEN[size][0](cdb)


def length_field(size: int) -> int:
    return LBA_LEN[size][1]


def protect(cdb: bytes) -> int:
    """RDPROTECT/WRPROTECT/VRPROTECT/ORPROTECT: bits 7-5 of byte 1."""
    return (cdb[1] >> 5) & 0x07


def dpo(cdb: bytes) -> bool:
    return bool(cdb[1] & 0x10)


def fua(cdb: bytes) -> bool:
    return bool(cdb[1] & 0x08)
