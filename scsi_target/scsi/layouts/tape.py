"""SSC-3 data: READ POSITION (short and long form), READ BLOCK LIMITS."""
from __future__ import annotations

from dataclasses import dataclass

from .fields import Struct, bit, bits, u8, u16, u24, u32, u64

RP_SHORT, RP_SHORT_VENDOR, RP_LONG, RP_EXTENDED = 0x00, 0x01, 0x06, 0x08


@dataclass
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


@dataclass
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


@dataclass
class BlockLimitsData(Struct):
    """READ BLOCK LIMITS data."""
    granularity: int = 0
    max_block_length: int = 0
    min_block_length: int = 0

    SIZE = 6
    FIELDS = (bits("granularity", 0, 0, 5), u24("max_block_length", 1),
              u16("min_block_length", 4))
