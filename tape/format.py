"""Tape image format v1: the three binary layouts, declared once.

A tape image is one file (docs/tape-image-format.md):

    offset 0        superblock (512 bytes, written once when the image is made)
    offset 4096     metadata slot A  (64 KiB)  \\ write protect flag + MAM attributes;
    offset 69632    metadata slot B  (64 KiB)  /  the valid slot with the higher seq wins
    offset 135168   frames: header (32 bytes) + payload, one per logical object,
                    back to back up to end-of-data

Everything is big-endian.  Every header carries a CRC32C of itself, so a torn
or stale header is recognised rather than trusted.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from crc32c import crc32c

from .errors import ImageFormatError

VERSION = 1
SUPER_MAGIC = b"PYTAPE\r\n"       # \r\n catches text-mode transfers that mangle line ends
SUPER_SIZE = 512
META_MAGIC = b"TMAM"
META_OFFSET = 4096
META_SLOT_SIZE = 64 << 10
DATA_START = META_OFFSET + 2 * META_SLOT_SIZE
FRAME_MAGIC = b"TOBJ"
FRAME_SIZE = 32

KIND_RECORD = 1
KIND_FILEMARK = 2

FLAG_SUPER_CRC = 0x01             # superblock: new records carry a payload CRC32C
FLAG_FRAME_CRC = 0x01             # frame: payload_crc is valid
FLAG_META_WP = 0x01               # metadata: cartridge write protected

# Largest record the format stores: READ(6)/WRITE(6) lengths are 24 bits.
MAX_RECORD = (1 << 24) - 1


# ------------------------------------------------------------------ superblock
_SUPER = struct.Struct(">8sHHIQQQII B 3x Q 32s 16s")
_SUPER_CRC_AT = SUPER_SIZE - 4


@dataclass(frozen=True)
class Superblock:
    capacity: int                 # bytes of frames (headers + payloads) the medium holds
    early_warning: int            # size of the early-warning zone before end-of-medium
    flags: int = 0
    density_code: int = 0x80          # vendor-specific range (SSC-4)
    created: int = 0              # unix seconds
    serial: str = ""              # medium serial number (ASCII, 32 bytes)
    uuid: bytes = bytes(16)
    version: int = VERSION
    data_start: int = DATA_START
    meta_offset: int = META_OFFSET
    meta_slot_size: int = META_SLOT_SIZE

    @property
    def crc_records(self) -> bool:
        return bool(self.flags & FLAG_SUPER_CRC)

    def pack(self) -> bytes:
        body = _SUPER.pack(SUPER_MAGIC, self.version, SUPER_SIZE, self.flags, self.capacity,
                           self.early_warning, self.data_start, self.meta_offset,
                           self.meta_slot_size, self.density_code, self.created,
                           self.serial.encode("ascii", "replace")[:32].ljust(32), self.uuid)
        buf = body.ljust(_SUPER_CRC_AT, b"\x00")
        return buf + struct.pack(">I", crc32c(buf))

    @classmethod
    def unpack(cls, data: bytes) -> "Superblock":
        if len(data) < SUPER_SIZE:
            raise ImageFormatError(f"shorter than the {SUPER_SIZE}-byte superblock")
        if data[:8] != SUPER_MAGIC:
            raise ImageFormatError("not a tape image (bad magic)")
        (_, version, size, flags, capacity, ew, data_start, meta_off, slot, density, created,
         serial, uuid) = _SUPER.unpack_from(data)
        if version != VERSION:
            raise ImageFormatError(f"tape image version {version} is not supported "
                                   f"(this release reads version {VERSION})")
        (want,) = struct.unpack_from(">I", data, _SUPER_CRC_AT)
        if crc32c(data[:_SUPER_CRC_AT]) != want:
            raise ImageFormatError("superblock checksum mismatch")
        if size != SUPER_SIZE or meta_off < SUPER_SIZE or slot < 4096 \
                or data_start < meta_off + 2 * slot:
            raise ImageFormatError("superblock geometry is inconsistent")
        if ew >= capacity or capacity <= 0:
            raise ImageFormatError(f"early-warning zone {ew} does not fit capacity {capacity}")
        return cls(capacity, ew, flags, density, created,
                   serial.rstrip(b"\x00 ").decode("ascii", "replace"), uuid, version,
                   data_start, meta_off, slot)


# ------------------------------------------------------------ metadata slots
_META = struct.Struct(">4sQII")   # magic, seq, flags, attribute bytes; then crc u32, 8 reserved
META_HEADER = 32
MAX_ATTRIBUTE_BYTES = META_SLOT_SIZE - META_HEADER


@dataclass(frozen=True)
class MetaSlot:
    seq: int
    flags: int
    attributes: bytes             # SPC-4 attribute list (id, format, length, value)...

    def pack(self) -> bytes:
        head = _META.pack(META_MAGIC, self.seq, self.flags, len(self.attributes))
        crc = crc32c(head + self.attributes)
        return head + struct.pack(">I", crc) + bytes(META_HEADER - _META.size - 4) + self.attributes

    @classmethod
    def unpack(cls, data: bytes) -> "MetaSlot | None":
        """The slot, or None when it is blank, torn or corrupt (the other one is used)."""
        if len(data) < META_HEADER or data[:4] != META_MAGIC:
            return None
        _, seq, flags, n = _META.unpack_from(data)
        if n > len(data) - META_HEADER:
            return None
        attrs = bytes(data[META_HEADER:META_HEADER + n])
        (want,) = struct.unpack_from(">I", data, _META.size)
        if crc32c(bytes(data[:_META.size]) + attrs) != want:
            return None
        return cls(seq, flags, attrs)


# -------------------------------------------------------------------- frames
_FRAME = struct.Struct(">4sBBHIIQI")  # + header crc u32 = 32 bytes
_FRAME_CRC_AT = _FRAME.size


@dataclass(frozen=True, slots=True)
class FrameHeader:
    kind: int
    length: int                   # payload bytes (0 for a filemark)
    epoch: int                    # write session; never smaller than the previous frame's
    index: int                    # logical object number
    flags: int = 0
    payload_crc: int = 0

    def pack(self) -> bytes:
        return pack_frame(self.kind, self.length, self.epoch, self.index, self.flags,
                          self.payload_crc)

    @classmethod
    def unpack(cls, data, offset: int = 0) -> "FrameHeader | None":
        """The header at ``offset``, or None when it is not a valid one (torn, stale, noise)."""
        if len(data) - offset < FRAME_SIZE:
            return None
        magic, kind, flags, _rsvd, length, epoch, index, pcrc = _FRAME.unpack_from(data, offset)
        if magic != FRAME_MAGIC:
            return None
        (want,) = struct.unpack_from(">I", data, offset + _FRAME_CRC_AT)
        if crc32c(bytes(data[offset:offset + _FRAME_CRC_AT])) != want:
            return None
        if kind == KIND_RECORD:
            if not 0 < length <= MAX_RECORD:
                return None
        elif kind == KIND_FILEMARK:
            if length:
                return None
        else:
            return None
        return cls(kind, length, epoch, index, flags, pcrc)


def pack_frame(kind: int, length: int, epoch: int, index: int, flags: int = 0,
               payload_crc: int = 0) -> bytes:
    head = _FRAME.pack(FRAME_MAGIC, kind, flags, 0, length, epoch, index, payload_crc)
    return head + struct.pack(">I", crc32c(head))
