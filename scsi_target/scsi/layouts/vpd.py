"""Vital product data pages (SPC-4 7.8, SBC-3 6.6): 00h, 80h, 83h, 8Fh, B0h, B1h, B2h.

Every page is a 4-byte header (qualifier/type, page code, page length) and a
body; :class:`VpdPage` is that envelope and the ``*Page`` classes are bodies.
"""
from __future__ import annotations

import struct

from ...record import field, record
from .fields import Struct, bit, bits, u8, u16, u32, u64

PAGE_SUPPORTED = 0x00
PAGE_SERIAL = 0x80
PAGE_DEVICE_ID = 0x83
PAGE_THIRD_PARTY_COPY = 0x8F
PAGE_BLOCK_LIMITS = 0xB0
PAGE_BLOCK_CHARACTERISTICS = 0xB1
PAGE_LBP = 0xB2

PAGE_NAMES = {
    PAGE_SUPPORTED: "Supported VPD Pages", PAGE_SERIAL: "Unit Serial Number",
    PAGE_DEVICE_ID: "Device Identification", 0x86: "Extended INQUIRY Data",
    0x87: "Mode Page Policy", 0x88: "SCSI Ports", PAGE_THIRD_PARTY_COPY: "Third-party Copy",
    PAGE_BLOCK_LIMITS: "Block Limits", PAGE_BLOCK_CHARACTERISTICS: "Block Device Characteristics",
    PAGE_LBP: "Logical Block Provisioning", 0xB3: "Referrals",
}


@record
class VpdHeader(Struct):
    device_type: int = 0
    qualifier: int = 0
    page_code: int = 0
    page_length: int = 0

    SIZE = 4
    FIELDS = (bits("device_type", 0, 0, 5), bits("qualifier", 0, 5, 3), u8("page_code", 1),
              u16("page_length", 2))


@record
class VpdPage:
    """A whole page: header fields plus the body bytes (page length from the body)."""
    page_code: int
    body: bytes = b""
    device_type: int = 0
    qualifier: int = 0

    def pack(self) -> bytes:
        return VpdHeader(self.device_type, self.qualifier, self.page_code, len(self.body)).pack() \
            + bytes(self.body)

    @classmethod
    def unpack(cls, data) -> "VpdPage":
        h = VpdHeader.unpack(data)
        return cls(h.page_code, bytes(data[4:4 + h.page_length]), h.device_type, h.qualifier)


# ---------------------------------------------------------------- 00h / 80h
def supported_pages_body(pages: list[int]) -> bytes:
    return bytes(pages)


def parse_supported_pages(body: bytes) -> list[int]:
    return list(body)


def parse_serial(body: bytes) -> str:
    return bytes(body).decode("ascii", "replace").rstrip(" \x00")


# ---------------------------------------------------------------- 83h
CODE_BINARY, CODE_ASCII, CODE_UTF8 = 1, 2, 3
ASSOC_LU, ASSOC_PORT, ASSOC_TARGET = 0, 1, 2
TYPE_VENDOR, TYPE_T10, TYPE_EUI64, TYPE_NAA, TYPE_REL_PORT, TYPE_TPG, TYPE_LU_GROUP, \
    TYPE_MD5, TYPE_NAME = 0, 1, 2, 3, 4, 5, 6, 7, 8
PROTO_ISCSI = 5
DESIGNATOR_TYPES = {0: "vendor specific", 1: "T10 vendor ID", 2: "EUI-64", 3: "NAA",
                    4: "relative target port", 5: "target port group", 6: "LU group",
                    7: "MD5 LU identifier", 8: "SCSI name string", 9: "protocol specific port"}
ASSOCIATIONS = {0: "logical unit", 1: "target port", 2: "target device"}


@record
class DesignatorHeader(Struct):
    code_set: int = 0
    protocol_id: int = 0
    designator_type: int = 0
    association: int = 0
    piv: bool = False
    length: int = 0

    SIZE = 4
    FIELDS = (bits("code_set", 0, 0, 4), bits("protocol_id", 0, 4, 4),
              bits("designator_type", 1, 0, 4), bits("association", 1, 4, 2), bit("piv", 1, 7),
              u8("length", 3))


@record
class Designator:
    code_set: int
    association: int
    designator_type: int
    value: bytes
    protocol_id: int = 0
    piv: bool = False

    def pack(self) -> bytes:
        return DesignatorHeader(self.code_set, self.protocol_id, self.designator_type,
                                self.association, self.piv, len(self.value)).pack() + self.value

    @property
    def text(self) -> str:
        """The value as people read it: strings for ASCII/UTF-8, hex otherwise."""
        if self.code_set in (CODE_ASCII, CODE_UTF8):
            return self.value.decode("utf-8", "replace").rstrip("\x00 ")
        if self.designator_type == TYPE_REL_PORT and len(self.value) == 4:
            return str(int.from_bytes(self.value[2:4], "big"))
        return self.value.hex()

    def to_dict(self) -> dict:
        return {"type": DESIGNATOR_TYPES.get(self.designator_type, self.designator_type),
                "association": ASSOCIATIONS.get(self.association, self.association),
                "code_set": self.code_set, "piv": self.piv, "protocol_id": self.protocol_id,
                "value": self.text}


def device_id_body(designators: list[Designator]) -> bytes:
    return b"".join(d.pack() for d in designators)


def parse_device_id(body: bytes) -> list[Designator]:
    out: list[Designator] = []
    pos = 0
    while pos + 4 <= len(body):
        h = DesignatorHeader.unpack(body, pos)
        value = bytes(body[pos + 4:pos + 4 + h.length])
        out.append(Designator(h.code_set, h.association, h.designator_type, value,
                              h.protocol_id, h.piv))
        pos += 4 + h.length
    return out


# ---------------------------------------------------------------- 8Fh
@record
class TpcDescriptor:
    """One third-party copy descriptor: type code and its body (after the 4-byte header)."""
    type_code: int
    body: bytes

    def pack(self) -> bytes:
        return struct.pack(">HH", self.type_code, len(self.body)) + self.body


def parse_third_party_copy(body: bytes) -> list[TpcDescriptor]:
    out = []
    pos = 0
    while pos + 4 <= len(body):
        code, length = struct.unpack_from(">HH", body, pos)
        out.append(TpcDescriptor(code, bytes(body[pos + 4:pos + 4 + length])))
        pos += 4 + length
    return out


# ---------------------------------------------------------------- B0h / B1h / B2h
@record
class BlockLimits(Struct):
    """Block Limits body (offsets from byte 4 of the page)."""
    wsnz: bool = False
    max_compare_write_length: int = 0
    optimal_transfer_length_granularity: int = 0
    max_transfer_length: int = 0
    optimal_transfer_length: int = 0
    max_prefetch_length: int = 0
    max_unmap_lba_count: int = 0
    max_unmap_descriptor_count: int = 0
    optimal_unmap_granularity: int = 0
    ugavalid: bool = False
    unmap_granularity_alignment: int = 0
    max_write_same_length: int = 0
    max_atomic_transfer_length: int = 0
    atomic_alignment: int = 0
    atomic_transfer_length_granularity: int = 0
    max_atomic_transfer_length_with_boundary: int = 0
    max_atomic_boundary_size: int = 0

    SIZE = 0x3C
    FIELDS = (bit("wsnz", 0, 0), u8("max_compare_write_length", 1),
              u16("optimal_transfer_length_granularity", 2), u32("max_transfer_length", 4),
              u32("optimal_transfer_length", 8), u32("max_prefetch_length", 12),
              u32("max_unmap_lba_count", 16), u32("max_unmap_descriptor_count", 20),
              u32("optimal_unmap_granularity", 24), bit("ugavalid", 28, 7),
              bits("unmap_granularity_alignment", 28, 0, 31, 4), u64("max_write_same_length", 32),
              u32("max_atomic_transfer_length", 40), u32("atomic_alignment", 44),
              u32("atomic_transfer_length_granularity", 48),
              u32("max_atomic_transfer_length_with_boundary", 52),
              u32("max_atomic_boundary_size", 56))


@record
class BlockCharacteristics(Struct):
    medium_rotation_rate: int = 0      # 1 = non-rotating medium
    product_type: int = 0
    wabereq: int = 0
    wacereq: int = 0
    nominal_form_factor: int = 0
    fuab: bool = False
    vbuls: bool = False

    SIZE = 0x3C
    FIELDS = (u16("medium_rotation_rate", 0), u8("product_type", 2), bits("wabereq", 3, 6, 2),
              bits("wacereq", 3, 4, 2), bits("nominal_form_factor", 3, 0, 4), bit("fuab", 4, 1),
              bit("vbuls", 4, 0))


@record
class LogicalBlockProvisioning(Struct):
    threshold_exponent: int = 0
    lbpu: bool = False
    lbpws: bool = False
    lbpws10: bool = False
    lbprz: bool = False
    anc_sup: bool = False
    dp: bool = False
    minimum_percentage: int = 0
    provisioning_type: int = 0     # 0 not reported, 1 resource provisioned, 2 thin
    threshold_percentage: int = 0

    SIZE = 4
    FIELDS = (u8("threshold_exponent", 0), bit("lbpu", 1, 7), bit("lbpws", 1, 6),
              bit("lbpws10", 1, 5), bit("lbprz", 1, 2), bit("anc_sup", 1, 1), bit("dp", 1, 0),
              bits("minimum_percentage", 2, 3, 5), bits("provisioning_type", 2, 0, 3),
              u8("threshold_percentage", 3))


@record
class DecodedVpd:
    """A page decoded as far as this module knows it; ``fields`` is what a tool shows."""
    page: VpdPage
    decoded: object = None
    fields: dict = field(default_factory=dict)


def decode_page(data: bytes) -> DecodedVpd:
    page = VpdPage.unpack(data)
    code, body = page.page_code, page.body
    dec: object
    if code == PAGE_SUPPORTED:
        dec = parse_supported_pages(body)
        flds = {"pages": [f"{p:02x}h {PAGE_NAMES.get(p, '')}".rstrip() for p in dec]}
    elif code == PAGE_SERIAL:
        dec = parse_serial(body)
        flds = {"serial": dec}
    elif code == PAGE_DEVICE_ID:
        dec = parse_device_id(body)
        flds = {"designators": [d.to_dict() for d in dec]}
    elif code == PAGE_THIRD_PARTY_COPY:
        dec = parse_third_party_copy(body)
        flds = {"descriptors": [{"type": f"{d.type_code:04x}", "body": d.body.hex()} for d in dec]}
    elif code == PAGE_BLOCK_LIMITS:
        dec = BlockLimits.unpack(body)
        flds = dec.to_dict()
    elif code == PAGE_BLOCK_CHARACTERISTICS:
        dec = BlockCharacteristics.unpack(body)
        flds = dec.to_dict()
    elif code == PAGE_LBP:
        dec = LogicalBlockProvisioning.unpack(body)
        flds = dec.to_dict()
    else:
        dec = body
        flds = {"body": body.hex()}
    return DecodedVpd(page, dec, flds)
