"""Sense data (SPC-4 4.5): fixed format (70h/71h) and descriptor format (72h/73h).

:class:`SenseData` is the one decoded form both sides use: the target renders
it (``scsi_target.scsi.sense.render_sense``) and the initiator decodes with
:func:`decode_sense`.  Names of ASC/ASCQ pairs come from :mod:`..asc_table`.
"""
from __future__ import annotations

import struct

from ...codes import Code
from ...record import field, record
from ..asc_table import asc_name
from .fields import Struct, bit, bits, u8, u32


class SenseKey(Code):
    NO_SENSE = 0x0
    RECOVERED_ERROR = 0x1
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    HARDWARE_ERROR = 0x4
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6
    DATA_PROTECT = 0x7
    BLANK_CHECK = 0x8
    VENDOR_SPECIFIC = 0x9
    COPY_ABORTED = 0xA
    ABORTED_COMMAND = 0xB
    EQUAL = 0xC          # obsolete since SPC-3, still seen from old devices
    VOLUME_OVERFLOW = 0xD
    MISCOMPARE = 0xE
    RESERVED_F = 0xF     # reserved; decoded rather than refused


SENSE_KEY_NAMES = {
    0x0: "NO SENSE", 0x1: "RECOVERED ERROR", 0x2: "NOT READY", 0x3: "MEDIUM ERROR",
    0x4: "HARDWARE ERROR", 0x5: "ILLEGAL REQUEST", 0x6: "UNIT ATTENTION", 0x7: "DATA PROTECT",
    0x8: "BLANK CHECK", 0x9: "VENDOR SPECIFIC", 0xA: "COPY ABORTED", 0xB: "ABORTED COMMAND",
    0xC: "RESERVED (0Ch)", 0xD: "VOLUME OVERFLOW", 0xE: "MISCOMPARE", 0xF: "COMPLETED",
}

DESC_INFORMATION, DESC_COMMAND_SPECIFIC, DESC_SKS, DESC_FRU, DESC_STREAM = 0, 1, 2, 3, 4


@record
class FixedSense(Struct):
    """Fixed-format sense data (response codes 70h/71h)."""
    valid: bool = False
    response_code: int = 0x70
    filemark: bool = False
    eom: bool = False
    ili: bool = False
    sdat_ovfl: bool = False
    sense_key: int = 0
    information: int = 0
    additional_length: int = 10
    command_specific: int = 0
    asc: int = 0
    ascq: int = 0
    fruc: int = 0
    sksv: bool = False
    sks: int = 0

    SIZE = 18
    FIELDS = (bit("valid", 0, 7), bits("response_code", 0, 0, 7), bit("filemark", 2, 7),
              bit("eom", 2, 6), bit("ili", 2, 5), bit("sdat_ovfl", 2, 4),
              bits("sense_key", 2, 0, 4), u32("information", 3), u8("additional_length", 7),
              u32("command_specific", 8), u8("asc", 12), u8("ascq", 13), u8("fruc", 14),
              bit("sksv", 15, 7), bits("sks", 15, 0, 23, 3))


@record
class DescriptorSenseHeader(Struct):
    """The 8-byte header of descriptor-format sense data (72h/73h)."""
    response_code: int = 0x72
    sense_key: int = 0
    asc: int = 0
    ascq: int = 0
    sdat_ovfl: bool = False
    additional_length: int = 0

    SIZE = 8
    FIELDS = (bits("response_code", 0, 0, 7), bits("sense_key", 1, 0, 4), u8("asc", 2),
              u8("ascq", 3), bit("sdat_ovfl", 4, 7), u8("additional_length", 7))


@record
class SenseDescriptor:
    """One descriptor of descriptor-format sense data."""
    type: int
    payload: bytes               # the bytes after the 2-byte descriptor header

    def pack(self) -> bytes:
        return bytes([self.type, len(self.payload)]) + self.payload


@record
class FieldPointer:
    """Decoded sense-key specific field pointer (ILLEGAL REQUEST)."""
    in_cdb: bool
    field: int
    bit: int | None

    def __str__(self) -> str:
        where = "CDB" if self.in_cdb else "parameter list"
        b = f" bit {self.bit}" if self.bit is not None else ""
        return f"{where} byte {self.field}{b}"


@record
class SenseData:
    """Sense data in either format, decoded."""
    key: int
    asc: int = 0
    ascq: int = 0
    descriptor_format: bool = False
    deferred: bool = False
    information: int | None = None
    command_specific: int | None = None
    sks: int | None = None            # 3 bytes of sense-key specific data, SKSV stripped
    filemark: bool = False
    eom: bool = False
    ili: bool = False
    extra: list[SenseDescriptor] = field(default_factory=list)   # descriptors not decoded

    # -- encoding ------------------------------------------------------------
    def pack(self, descriptor: bool | None = None) -> bytes:
        desc = self.descriptor_format if descriptor is None else descriptor
        return self._pack_descriptor() if desc else self._pack_fixed()

    def _pack_fixed(self) -> bytes:
        return FixedSense(
            valid=self.information is not None, response_code=0x71 if self.deferred else 0x70,
            filemark=self.filemark, eom=self.eom, ili=self.ili, sense_key=self.key,
            information=(self.information or 0) & 0xFFFFFFFF, additional_length=10,
            command_specific=(self.command_specific or 0) & 0xFFFFFFFF, asc=self.asc,
            ascq=self.ascq, sksv=self.sks is not None, sks=self.sks or 0).pack()

    def _pack_descriptor(self) -> bytes:
        descs: list[SenseDescriptor] = []
        if self.information is not None:
            descs.append(SenseDescriptor(DESC_INFORMATION, struct.pack(
                ">BBQ", 0x80, 0, self.information & 0xFFFFFFFFFFFFFFFF)))
        if self.command_specific is not None:
            descs.append(SenseDescriptor(DESC_COMMAND_SPECIFIC, struct.pack(
                ">BBQ", 0, 0, self.command_specific & 0xFFFFFFFFFFFFFFFF)))
        if self.sks is not None:
            descs.append(SenseDescriptor(DESC_SKS, bytes(2) + (0x800000 | self.sks).to_bytes(3, "big")
                                         + b"\x00"))
        if self.filemark or self.eom or self.ili:
            flags = (0x80 if self.filemark else 0) | (0x40 if self.eom else 0) | \
                (0x20 if self.ili else 0)
            descs.append(SenseDescriptor(DESC_STREAM, bytes([0, flags])))
        descs += self.extra
        body = b"".join(d.pack() for d in descs)
        return DescriptorSenseHeader(0x73 if self.deferred else 0x72, self.key, self.asc,
                                     self.ascq, False, len(body)).pack() + body

    # -- names -------------------------------------------------------------
    @property
    def key_name(self) -> str:
        return SENSE_KEY_NAMES.get(self.key, f"0x{self.key:x}")

    @property
    def asc_name(self) -> str:
        return asc_name(self.asc, self.ascq)

    @property
    def field_pointer(self) -> FieldPointer | None:
        """ILLEGAL REQUEST's pointer to the offending CDB/parameter byte."""
        if self.sks is None or self.key != 0x5:
            return None
        b0 = self.sks >> 16
        return FieldPointer(bool(b0 & 0x40), self.sks & 0xFFFF, (b0 & 7) if b0 & 0x08 else None)

    def summary(self) -> str:
        """One line: key, ASC/ASCQ with its name, and what else is set."""
        out = f"{self.key_name}, ASC/ASCQ {self.asc:02x}h/{self.ascq:02x}h {self.asc_name}"
        extra = []
        if (fp := self.field_pointer) is not None:
            extra.append(f"field: {fp}")
        if self.information is not None:
            extra.append(f"information {self.information}")
        if self.command_specific is not None and self.command_specific:
            extra.append(f"command-specific 0x{self.command_specific:x}")
        for flag in ("filemark", "eom", "ili"):
            if getattr(self, flag):
                extra.append(flag.upper())
        if self.deferred:
            extra.append("deferred")
        return out + (f" ({'; '.join(extra)})" if extra else "")

    def to_dict(self) -> dict:
        fp = self.field_pointer
        return {"format": "descriptor" if self.descriptor_format else "fixed",
                "key": self.key, "key_name": self.key_name, "asc": self.asc, "ascq": self.ascq,
                "asc_name": self.asc_name, "information": self.information,
                "command_specific": self.command_specific,
                "field_pointer": str(fp) if fp else None, "filemark": self.filemark,
                "eom": self.eom, "ili": self.ili, "deferred": self.deferred}


def decode_sense(data: bytes | bytearray | memoryview) -> SenseData:
    """Decode fixed or descriptor sense data; ValueError when it is neither."""
    data = bytes(data)
    if not data:
        raise ValueError("empty sense data")
    code = data[0] & 0x7F
    if code in (0x70, 0x71):
        if len(data) < 14:
            raise ValueError("fixed sense data shorter than 14 bytes")
        f = FixedSense.unpack(data)
        cs_present = f.additional_length >= 4 and f.command_specific != 0
        return SenseData(f.sense_key, f.asc, f.ascq, False, code == 0x71,
                         f.information if f.valid else None,
                         f.command_specific if cs_present else None,
                         f.sks if f.sksv else None, f.filemark, f.eom, f.ili)
    if code in (0x72, 0x73):
        if len(data) < 4:
            raise ValueError("descriptor sense data shorter than 4 bytes")
        h = DescriptorSenseHeader.unpack(data)
        s = SenseData(h.sense_key, h.asc, h.ascq, True, code == 0x73)
        end = min(len(data), 8 + h.additional_length)
        pos = 8
        while pos + 2 <= end:
            dtype, dlen = data[pos], data[pos + 1]
            payload = data[pos + 2:pos + 2 + dlen]
            if dtype == DESC_INFORMATION and len(payload) >= 10:
                if payload[0] & 0x80:
                    s.information = int.from_bytes(payload[2:10], "big")
            elif dtype == DESC_COMMAND_SPECIFIC and len(payload) >= 10:
                s.command_specific = int.from_bytes(payload[2:10], "big")
            elif dtype == DESC_SKS and len(payload) >= 5:
                v = int.from_bytes(payload[2:5], "big")
                if v & 0x800000:
                    s.sks = v & 0x7FFFFF
            elif dtype == DESC_STREAM and len(payload) >= 2:
                s.filemark = bool(payload[1] & 0x80)
                s.eom = bool(payload[1] & 0x40)
                s.ili = bool(payload[1] & 0x20)
            else:
                s.extra.append(SenseDescriptor(dtype, payload))
            pos += 2 + dlen
        return s
    raise ValueError(f"unknown sense response code 0x{code:02x}")


def parse_sense(data: bytes) -> tuple[SenseKey, int, int]:
    """(sense key, ASC, ASCQ) from fixed or descriptor sense data."""
    s = decode_sense(data)
    return SenseKey(s.key), s.asc, s.ascq
