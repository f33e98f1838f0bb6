"""Medium auxiliary memory (MAM) attributes as SPC-4 7.4 defines them.

The image stores the medium and host attributes in SPC-4's own attribute
format (identifier, format, length, value), so READ ATTRIBUTE serves the bytes
as they are stored.  Device attributes (identifiers below 0400h) are computed
by the drive model from the medium's state and never stored.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import MamError

FORMAT_BINARY, FORMAT_ASCII, FORMAT_TEXT = 0, 1, 2


@dataclass(frozen=True)
class AttrDef:
    id: int
    name: str
    format: int
    length: int | None            # None: variable


# Attributes this model knows by name (SPC-4 tables 267, 268, 269); any other
# host (0800h-0BFFh) or vendor (1400h-17FFh) identifier is accepted as written.
KNOWN: dict[int, AttrDef] = {d.id: d for d in (
    AttrDef(0x0000, "REMAINING CAPACITY IN PARTITION", FORMAT_BINARY, 8),
    AttrDef(0x0001, "MAXIMUM CAPACITY IN PARTITION", FORMAT_BINARY, 8),
    AttrDef(0x0003, "LOAD COUNT", FORMAT_BINARY, 8),
    AttrDef(0x0220, "TOTAL MBYTES WRITTEN IN MEDIUM LIFE", FORMAT_BINARY, 8),
    AttrDef(0x0221, "TOTAL MBYTES READ IN MEDIUM LIFE", FORMAT_BINARY, 8),
    AttrDef(0x0222, "TOTAL MBYTES WRITTEN IN CURRENT/LAST LOAD", FORMAT_BINARY, 8),
    AttrDef(0x0223, "TOTAL MBYTES READ IN CURRENT/LAST LOAD", FORMAT_BINARY, 8),
    AttrDef(0x0400, "MEDIUM MANUFACTURER", FORMAT_ASCII, 8),
    AttrDef(0x0401, "MEDIUM SERIAL NUMBER", FORMAT_ASCII, 32),
    AttrDef(0x0406, "MEDIUM MANUFACTURE DATE", FORMAT_ASCII, 8),
    AttrDef(0x0408, "MEDIUM TYPE", FORMAT_BINARY, 1),
    AttrDef(0x0800, "APPLICATION VENDOR", FORMAT_ASCII, 8),
    AttrDef(0x0801, "APPLICATION NAME", FORMAT_ASCII, 32),
    AttrDef(0x0802, "APPLICATION VERSION", FORMAT_ASCII, 8),
    AttrDef(0x0803, "USER MEDIUM TEXT LABEL", FORMAT_TEXT, 160),
    AttrDef(0x0804, "DATE AND TIME LAST WRITTEN", FORMAT_ASCII, 12),
    AttrDef(0x0805, "TEXT LOCALIZATION IDENTIFIER", FORMAT_BINARY, 1),
    AttrDef(0x0806, "BARCODE", FORMAT_ASCII, 32),
    AttrDef(0x0807, "OWNING HOST TEXTUAL NAME", FORMAT_TEXT, 80),
    AttrDef(0x0808, "MEDIA POOL", FORMAT_TEXT, 160),
    AttrDef(0x080B, "APPLICATION FORMAT VERSION", FORMAT_ASCII, 16),
)}

ID_LOAD_COUNT = 0x0003
ID_MB_WRITTEN_LIFE, ID_MB_READ_LIFE = 0x0220, 0x0221
ID_MB_WRITTEN_LOAD, ID_MB_READ_LOAD = 0x0222, 0x0223
ID_MANUFACTURER, ID_SERIAL, ID_MANUFACTURE_DATE, ID_MEDIUM_TYPE = 0x0400, 0x0401, 0x0406, 0x0408
ID_LABEL, ID_BARCODE = 0x0803, 0x0806


def is_device(attr_id: int) -> bool:
    return attr_id < 0x0400


def is_writable(attr_id: int) -> bool:
    """Host and vendor-specific host attributes; device and medium ones are read-only."""
    return 0x0800 <= attr_id <= 0x0BFF or 0x1400 <= attr_id <= 0x17FF


def name(attr_id: int) -> str:
    d = KNOWN.get(attr_id)
    return d.name if d else f"attribute {attr_id:04x}h"


@dataclass(frozen=True)
class Attribute:
    id: int
    format: int
    value: bytes
    read_only: bool = False

    def pack(self) -> bytes:
        return struct.pack(">HBH", self.id, (0x80 if self.read_only else 0) | self.format,
                           len(self.value)) + self.value

    def text(self) -> str:
        if self.format in (FORMAT_ASCII, FORMAT_TEXT):
            return self.value.decode("utf-8", "replace").rstrip(" \x00")
        return str(int.from_bytes(self.value, "big")) if len(self.value) <= 8 else self.value.hex()


def ascii_value(text: str, length: int) -> bytes:
    """Left-aligned, space padded printable ASCII (SPC-4 4.4.1)."""
    clean = "".join(c if " " <= c <= "~" else " " for c in text)
    return clean.encode("ascii")[:length].ljust(length)


def encode(attrs: dict[int, Attribute]) -> bytes:
    return b"".join(attrs[k].pack() for k in sorted(attrs))


def decode(data: bytes | memoryview, *, strict: bool = True) -> list[Attribute]:
    """An attribute list (no length header).  Strict: a torn list raises MamError."""
    data = bytes(data)
    out: list[Attribute] = []
    pos = 0
    while pos < len(data):
        if pos + 5 > len(data):
            if strict:
                raise MamError(f"attribute header cut short at byte {pos}")
            break
        attr_id, fmt, n = struct.unpack_from(">HBH", data, pos)
        if pos + 5 + n > len(data):
            if strict:
                raise MamError(f"attribute {attr_id:04x}h value runs past the list", attr_id)
            break
        out.append(Attribute(attr_id, fmt & 0x03, data[pos + 5:pos + 5 + n], bool(fmt & 0x80)))
        pos += 5 + n
    return out


def check_write(attr: Attribute) -> None:
    """Refuse what WRITE ATTRIBUTE must not store; MamError names the attribute."""
    if not is_writable(attr.id):
        raise MamError(f"{name(attr.id)} is read-only", attr.id)
    if attr.format == 3:
        raise MamError(f"{name(attr.id)}: format 3 is reserved", attr.id)
    d = KNOWN.get(attr.id)
    if d is not None and attr.value:
        if attr.format != d.format:
            raise MamError(f"{d.name} has format {d.format}, not {attr.format}", attr.id)
        if d.length is not None and len(attr.value) != d.length:
            raise MamError(f"{d.name} is {d.length} bytes, not {len(attr.value)}", attr.id)
