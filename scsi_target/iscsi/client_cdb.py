"""CDB builders and result parsers for the initiator's convenience methods.

Only what scripts and tests use all the time; anything else goes through
``execute(cdb, ...)`` with a CDB the caller builds.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from ..scsi.lunaddr import decode_lun

TEST_UNIT_READY = 0x00
INQUIRY = 0x12
READ_16 = 0x88
WRITE_16 = 0x8A
SERVICE_ACTION_IN_16 = 0x9E
SAI_READ_CAPACITY_16 = 0x10
REPORT_LUNS = 0xA0


class Capacity(NamedTuple):
    blocks: int            # number of logical blocks (RETURNED LBA + 1)
    block_size: int
    lbppbe: int = 0        # logical blocks per physical block exponent
    lowest_aligned: int = 0
    tpe: bool = False      # thin provisioning enabled

    @property
    def last_lba(self) -> int:
        return self.blocks - 1

    @property
    def bytes(self) -> int:
        return self.blocks * self.block_size


def test_unit_ready() -> bytes:
    return bytes(6)


def inquiry(evpd: bool = False, page: int = 0, alloc: int = 255) -> bytes:
    if not evpd and page:
        raise ValueError("a page code needs evpd=True")
    return struct.pack(">BBBHB", INQUIRY, 1 if evpd else 0, page, alloc, 0)


def read16(lba: int, blocks: int, *, fua: bool = False) -> bytes:
    return struct.pack(">BBQIBB", READ_16, 0x08 if fua else 0, lba, blocks, 0, 0)


def write16(lba: int, blocks: int, *, fua: bool = False) -> bytes:
    return struct.pack(">BBQIBB", WRITE_16, 0x08 if fua else 0, lba, blocks, 0, 0)


def read_capacity16(alloc: int = 32) -> bytes:
    return struct.pack(">BBQIBB", SERVICE_ACTION_IN_16, SAI_READ_CAPACITY_16, 0, alloc, 0, 0)


def report_luns(alloc: int = 4096, select: int = 0) -> bytes:
    return struct.pack(">BBBBBBIBB", REPORT_LUNS, 0, select, 0, 0, 0, alloc, 0, 0)


def parse_read_capacity16(data: bytes) -> Capacity:
    if len(data) < 12:
        raise ValueError(f"READ CAPACITY(16) data is {len(data)} bytes, needs 12")
    last, bs = struct.unpack_from(">QI", data, 0)
    lbppbe = data[13] & 0x0F if len(data) > 13 else 0
    lowest = ((data[14] & 0x3F) << 8 | data[15]) if len(data) > 15 else 0
    tpe = bool(data[14] & 0x80) if len(data) > 14 else False
    return Capacity(last + 1, bs, lbppbe, lowest, tpe)


def parse_report_luns(data: bytes) -> list[int]:
    """LUN numbers (peripheral/flat addressing; -1 for other formats)."""
    if len(data) < 8:
        raise ValueError("REPORT LUNS data shorter than its header")
    n = struct.unpack_from(">I", data, 0)[0]
    body = data[8:8 + n]
    return [decode_lun(body[i:i + 8]) for i in range(0, len(body) - 7, 8)]
