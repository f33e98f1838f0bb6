"""Standard INQUIRY data (SPC-4 6.6.2)."""
from __future__ import annotations

import struct

from ...record import field, record
from .fields import F, Struct, ascii_field, bit, bits, raw, u8

STANDARD_LENGTH = 96
_VD_OFFSET = 58
_VD_COUNT = 8

# Peripheral device types (SPC-4 table 49) worth naming in a decoder.
DEVICE_TYPES = {
    0x00: "direct access block device", 0x01: "sequential access device",
    0x02: "printer", 0x03: "processor", 0x04: "write-once", 0x05: "CD/DVD",
    0x07: "optical memory", 0x08: "media changer", 0x0C: "storage array controller",
    0x0D: "enclosure services", 0x0E: "simplified direct access", 0x0F: "optical card",
    0x11: "object-based storage", 0x12: "automation/drive interface",
    0x1E: "well known logical unit", 0x1F: "unknown or no device type",
}


@record
class StandardInquiry(Struct):
    device_type: int = 0
    qualifier: int = 0
    rmb: bool = False
    lu_cong: bool = False
    version: int = 0x06
    normaca: bool = False
    hisup: bool = True
    response_data_format: int = 2
    additional_length: int = STANDARD_LENGTH - 5
    sccs: bool = False
    acc: bool = False
    tpgs: int = 0
    tpc: bool = False              # 3PC: third-party copy (EXTENDED COPY)
    protect: bool = False
    encserv: bool = False
    multip: bool = False
    cmdque: bool = True
    vendor: str = ""
    product: str = ""
    revision: str = ""
    vendor_specific: bytes = bytes(20)
    version_descriptors: tuple[int, ...] = field(default_factory=tuple)

    SIZE = STANDARD_LENGTH
    FIELDS = (
        bits("device_type", 0, 0, 5), bits("qualifier", 0, 5, 3),
        bit("rmb", 1, 7), bit("lu_cong", 1, 6),
        u8("version", 2),
        bit("normaca", 3, 5), bit("hisup", 3, 4), bits("response_data_format", 3, 0, 4),
        u8("additional_length", 4),
        bit("sccs", 5, 7), bit("acc", 5, 6), bits("tpgs", 5, 4, 2), bit("tpc", 5, 3),
        bit("protect", 5, 0),
        bit("encserv", 6, 6), bit("multip", 6, 4),
        bit("cmdque", 7, 1),
        ascii_field("vendor", 8, 8), ascii_field("product", 16, 16),
        ascii_field("revision", 32, 4), raw("vendor_specific", 36, 20),
    )

    def pack_into(self, buf: bytearray, base: int) -> None:
        super().pack_into(buf, base)
        vds = tuple(self.version_descriptors)
        if len(vds) > _VD_COUNT:
            raise ValueError(f"{len(vds)} version descriptors, at most {_VD_COUNT} fit")
        for i, vd in enumerate(vds):
            struct.pack_into(">H", buf, base + _VD_OFFSET + 2 * i, vd)

    @classmethod
    def unpack(cls, data, offset: int = 0) -> "StandardInquiry":
        inq = super().unpack(data, offset)
        chunk = bytes(data[offset + _VD_OFFSET:offset + _VD_OFFSET + 2 * _VD_COUNT])
        chunk = chunk[:len(chunk) & ~1]
        vds = [v for (v,) in struct.iter_unpack(">H", chunk)]
        inq.version_descriptors = tuple(v for v in vds if v)
        return inq

    @property
    def device_type_name(self) -> str:
        return DEVICE_TYPES.get(self.device_type, f"type 0x{self.device_type:02x}")


__all__ = ["StandardInquiry", "STANDARD_LENGTH", "DEVICE_TYPES", "F"]
