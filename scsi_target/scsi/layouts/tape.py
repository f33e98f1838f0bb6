"""SSC-4 data: READ POSITION (short, long, extended), READ BLOCK LIMITS, REPORT DENSITY
SUPPORT, MAM attribute lists, and CDB builders of the SSC commands."""
from __future__ import annotations

from ...record import record
from .fields import Struct, ascii_field, bit, bits, u8, u16, u24, u32, u64

RP_SHORT, RP_SHORT_VENDOR, RP_LONG, RP_EXTENDED = 0x00, 0x01, 0x06, 0x08


@record
class ReadPositionShort(Struct):
    bop: bool = False                 # beginning of partition
    eop: bool = False                 # end of partition
    locu: bool = False                # logical object count unknown
    bycu: bool = False                # byte count unknown
    lolu: bool = False                # logical object location unknown
    perr: bool = False                # position error (overflow)
    bpew: bool = False                # beyond programmable early warning
    partition: int = 0
    first_location: int = 0           # first logical object location
    last_location: int = 0
    objects_in_buffer: int = 0
    bytes_in_buffer: int = 0

    SIZE = 20
    FIELDS = (bit("bop", 0, 7), bit("eop", 0, 6), bit("locu", 0, 5), bit("bycu", 0, 4),
              bit("lolu", 0, 2), bit("perr", 0, 1), bit("bpew", 0, 0), u8("partition", 1),
              u32("first_location", 4), u32("last_location", 8), u24("objects_in_buffer", 13),
              u32("bytes_in_buffer", 16))


@record
class ReadPositionLong(Struct):
    bop: bool = False
    eop: bool = False
    mpu: bool = False                 # mark position unknown
    lonu: bool = False                # logical object number unknown
    bpew: bool = False
    partition: int = 0
    logical_object: int = 0
    logical_file: int = 0             # filemarks before the position
    logical_set: int = 0

    SIZE = 32
    FIELDS = (bit("bop", 0, 7), bit("eop", 0, 6), bit("mpu", 0, 3), bit("lonu", 0, 2),
              bit("bpew", 0, 0), u32("partition", 4), u64("logical_object", 8),
              u64("logical_file", 16), u64("logical_set", 24))


@record
class BlockLimitsData(Struct):
    """READ BLOCK LIMITS data."""
    granularity: int = 0
    max_block_length: int = 0
    min_block_length: int = 0

    SIZE = 6
    FIELDS = (bits("granularity", 0, 0, 5), u24("max_block_length", 1),
              u16("min_block_length", 4))


@record
class ReadPositionExtended(Struct):
    """READ POSITION extended form (service action 08h)."""
    bop: bool = False
    eop: bool = False
    locu: bool = False
    bycu: bool = False
    lolu: bool = False
    perr: bool = False
    bpew: bool = False
    partition: int = 0
    additional_length: int = 0x1C
    objects_in_buffer: int = 0
    first_location: int = 0
    last_location: int = 0
    bytes_in_buffer: int = 0

    SIZE = 32
    FIELDS = (bit("bop", 0, 7), bit("eop", 0, 6), bit("locu", 0, 5), bit("bycu", 0, 4),
              bit("lolu", 0, 2), bit("perr", 0, 1), bit("bpew", 0, 0), u8("partition", 1),
              u16("additional_length", 2), u24("objects_in_buffer", 5),
              u64("first_location", 8), u64("last_location", 16), u64("bytes_in_buffer", 24))


@record
class MaximumLogicalObjectId(Struct):
    """READ BLOCK LIMITS with MLOI=1: the largest logical object identifier the medium takes."""
    max_logical_object: int = 0

    SIZE = 20
    FIELDS = (u64("max_logical_object", 12),)


@record
class DensityDescriptor(Struct):
    """One density support data block descriptor (REPORT DENSITY SUPPORT, MEDIA/MEDIUM TYPE 0)."""
    primary_density_code: int = 0
    secondary_density_code: int = 0
    wrtok: bool = False               # the drive writes this density
    dup: bool = False                 # the density code appears in more than one descriptor
    deflt: bool = False               # the default density
    dlv: bool = False                 # descriptor length valid (byte 3-4 hold 0034h)
    descriptor_length: int = 0x34
    bits_per_mm: int = 0
    media_width: int = 0              # tenths of millimetres
    tracks: int = 0
    capacity: int = 0                 # megabytes (10^6 bytes)
    assigning_organization: str = ""
    density_name: str = ""
    description: str = ""

    SIZE = 52
    FIELDS = (u8("primary_density_code", 0), u8("secondary_density_code", 1),
              bit("wrtok", 2, 7), bit("dup", 2, 6), bit("deflt", 2, 5), bit("dlv", 2, 0),
              u16("descriptor_length", 3), u24("bits_per_mm", 5), u16("media_width", 8),
              u16("tracks", 10), u32("capacity", 12),
              ascii_field("assigning_organization", 16, 8), ascii_field("density_name", 24, 8),
              ascii_field("description", 32, 20))


def density_support(descriptors: list[DensityDescriptor]) -> bytes:
    """REPORT DENSITY SUPPORT data: 4-byte header (available length) + descriptors."""
    body = b"".join(d.pack() for d in descriptors)
    return (len(body) + 2).to_bytes(2, "big") + bytes(2) + body


def parse_density_support(data: bytes) -> list[DensityDescriptor]:
    n = int.from_bytes(data[:2], "big") + 2
    end = min(n, len(data))
    return [DensityDescriptor.unpack(data, off)
            for off in range(4, end - DensityDescriptor.SIZE + 1, DensityDescriptor.SIZE)]


# -- MAM attributes (SPC-4 7.4): READ ATTRIBUTE data and WRITE ATTRIBUTE lists --------
RA_VALUES, RA_LIST, RA_VOLUME_LIST, RA_PARTITION_LIST, RA_SUPPORTED = 0x00, 0x01, 0x02, 0x03, 0x05


@record
class MamAttribute:
    id: int
    format: int
    value: bytes
    read_only: bool = False

    def pack(self) -> bytes:
        return (self.id.to_bytes(2, "big") + bytes([(0x80 if self.read_only else 0) | self.format])
                + len(self.value).to_bytes(2, "big") + self.value)


def attribute_values(attrs: list[MamAttribute]) -> bytes:
    """READ ATTRIBUTE (VALUES) / WRITE ATTRIBUTE parameter data: 4-byte length + attributes."""
    body = b"".join(a.pack() for a in attrs)
    return len(body).to_bytes(4, "big") + body


def parse_attribute_values(data: bytes) -> list[MamAttribute]:
    data = bytes(data)
    end = min(len(data), 4 + int.from_bytes(data[:4], "big"))
    out, pos = [], 4
    while pos + 5 <= end:
        aid = int.from_bytes(data[pos:pos + 2], "big")
        fmt = data[pos + 2]
        n = int.from_bytes(data[pos + 3:pos + 5], "big")
        out.append(MamAttribute(aid, fmt & 3, data[pos + 5:pos + 5 + n], bool(fmt & 0x80)))
        pos += 5 + n
    return out


def attribute_list(ids: list[int]) -> bytes:
    """READ ATTRIBUTE (ATTRIBUTE LIST / SUPPORTED ATTRIBUTES): 4-byte length + identifiers."""
    body = b"".join(i.to_bytes(2, "big") for i in ids)
    return len(body).to_bytes(4, "big") + body


# -- CDB builders for the SSC commands the project's initiator and tests send ------------
def read6(length: int, *, fixed: bool = False, sili: bool = False) -> bytes:
    return bytes([0x08, (0x02 if sili else 0) | (0x01 if fixed else 0)]) \
        + length.to_bytes(3, "big") + b"\x00"


def write6(length: int, *, fixed: bool = False) -> bytes:
    return bytes([0x0A, 0x01 if fixed else 0]) + length.to_bytes(3, "big") + b"\x00"


def space16(count: int, code: int = 0) -> bytes:
    return bytes([0x91, code & 0x0F, 0, 0]) + (count & (1 << 64) - 1).to_bytes(8, "big") \
        + bytes(4)


def locate16_file(file_number: int) -> bytes:
    return bytes([0x92, 0x08, 0, 0]) + file_number.to_bytes(8, "big") + bytes(4)


def erase(long: bool = False, immed: bool = False) -> bytes:
    return bytes([0x19, (0x02 if immed else 0) | (0x01 if long else 0), 0, 0, 0, 0])


def report_density_support(media: bool = False, alloc: int = 4096) -> bytes:
    return bytes([0x44, 0x01 if media else 0, 0, 0, 0, 0, 0]) + alloc.to_bytes(2, "big") + b"\x00"


def read_attribute(service_action: int = RA_VALUES, first: int = 0, alloc: int = 65536) -> bytes:
    return bytes([0x8C, service_action & 0x1F, 0, 0, 0, 0, 0, 0]) + first.to_bytes(2, "big") \
        + alloc.to_bytes(4, "big") + bytes(2)


def write_attribute(length: int, wtc: bool = False) -> bytes:
    return bytes([0x8D, 0x01 if wtc else 0]) + bytes(8) + length.to_bytes(4, "big") + bytes(2)


def log_sense(page: int, subpage: int = 0, pc: int = 1, alloc: int = 4096) -> bytes:
    return bytes([0x4D, 0, ((pc & 3) << 6) | (page & 0x3F), subpage, 0, 0, 0]) \
        + alloc.to_bytes(2, "big") + b"\x00"
