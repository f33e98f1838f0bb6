"""CDB field decoders: golden vectors and round-trip properties."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, strategies as st

from scsi_target.scsi import cdb as C
from scsi_target.scsi.sense import SenseError


def test_golden_vectors():
    assert C.rw6(bytes([0x08, 0x1F, 0xFF, 0xFE, 0x00, 0x00])) == (0x1FFFFE, 256)
    assert C.rw6(bytes([0x08, 0xE1, 0x00, 0x02, 0x07, 0x00])) == (0x10002, 7)  # LUN bits ignored
    assert C.lba_len10(bytes.fromhex("28 00 01020304 00 0506 00")) == (0x01020304, 0x0506)
    assert C.lba_len12(bytes.fromhex("a8 00 01020304 05060708 00 00")) == (0x01020304, 0x05060708)
    assert C.lba_len16(bytes.fromhex("88 00 0102030405060708 090a0b0c 00 00")) == \
        (0x0102030405060708, 0x090A0B0C)
    flags = bytes([0x2A, 0xB8]) + bytes(8)
    assert (C.protect(flags), C.dpo(flags), C.fua(flags)) == (5, True, True)


@pytest.mark.parametrize("size", [10, 12, 16])
def test_short_cdb_is_invalid_field(size):
    with pytest.raises(SenseError):
        C.lba_len(bytes(size - 1), size)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**16 - 1))
def test_roundtrip10(lba, n):
    assert C.lba_len10(struct.pack(">BBIBHB", 0x28, 0, lba, 0, n, 0)) == (lba, n)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_roundtrip12(lba, n):
    assert C.lba_len12(struct.pack(">BBIIBB", 0xA8, 0, lba, n, 0, 0)) == (lba, n)


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1))
def test_roundtrip16(lba, n):
    assert C.lba_len16(struct.pack(">BBQIBB", 0x88, 0, lba, n, 0, 0)) == (lba, n)


@given(st.integers(0, 2**21 - 1), st.integers(0, 255))
def test_roundtrip6(lba, n):
    cdb = bytes([0x08, lba >> 16, (lba >> 8) & 0xFF, lba & 0xFF, n, 0])
    assert C.rw6(cdb) == (lba, n or 256)
