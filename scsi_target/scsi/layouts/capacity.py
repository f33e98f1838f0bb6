"""READ CAPACITY (10)/(16) data and GET LBA STATUS data (SBC-3 5.16, 5.17, 5.8)."""
from __future__ import annotations

import struct

from ...record import field, record
from .fields import Struct, bit, bits, u8, u32, u64


@record
class ReadCapacity10(Struct):
    """READ CAPACITY (10) parameter data (8 bytes)."""
    last_lba: int = 0               # RETURNED LOGICAL BLOCK ADDRESS (0xFFFFFFFF: use (16))
    block_size: int = 0

    SIZE = 8
    FIELDS = (u32("last_lba", 0), u32("block_size", 4))


@record
class ReadCapacity16(Struct):
    """READ CAPACITY (16) parameter data (32 bytes)."""
    last_lba: int = 0
    block_size: int = 0
    p_type: int = 0
    prot_en: bool = False
    p_i_exponent: int = 0
    lbppbe: int = 0                 # logical blocks per physical block exponent
    lbpme: bool = False             # logical block provisioning management enabled (TPE)
    lbprz: bool = False             # unmapped blocks read zero
    lowest_aligned_lba: int = 0

    SIZE = 32
    FIELDS = (u64("last_lba", 0), u32("block_size", 8), bits("p_type", 12, 1, 3),
              bit("prot_en", 12, 0), bits("p_i_exponent", 13, 4, 4), bits("lbppbe", 13, 0, 4),
              bit("lbpme", 14, 7), bit("lbprz", 14, 6),
              bits("lowest_aligned_lba", 14, 0, 14, 2))

    @property
    def blocks(self) -> int:
        return self.last_lba + 1


# Provisioning status values of an LBA status descriptor.
MAPPED, DEALLOCATED, ANCHORED = 0, 1, 2
PROVISIONING_NAMES = {MAPPED: "mapped", DEALLOCATED: "deallocated", ANCHORED: "anchored"}


@record
class LbaStatusDescriptor(Struct):
    """One GET LBA STATUS descriptor (16 bytes)."""
    lba: int = 0
    count: int = 0
    status: int = MAPPED

    SIZE = 16
    FIELDS = (u64("lba", 0), u32("count", 8), bits("status", 12, 0, 4))


@record
class LbaStatus:
    """GET LBA STATUS parameter data: length header then 16-byte descriptors."""
    descriptors: list[LbaStatusDescriptor] = field(default_factory=list)

    def pack(self) -> bytes:
        body = b"".join(d.pack() for d in self.descriptors)
        return struct.pack(">I4x", 4 + len(body)) + body

    @classmethod
    def unpack(cls, data) -> "LbaStatus":
        if len(data) < 8:
            raise ValueError("GET LBA STATUS data shorter than its 8-byte header")
        length = struct.unpack_from(">I", data, 0)[0]
        end = min(len(data), 4 + length)
        return cls([LbaStatusDescriptor.unpack(data, off) for off in range(8, end - 15, 16)])

    def to_dict(self) -> dict:
        return {"descriptors": [d.to_dict() for d in self.descriptors]}


__all__ = ["ReadCapacity10", "ReadCapacity16", "LbaStatus", "LbaStatusDescriptor", "u8"]
