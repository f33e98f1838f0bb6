"""Data an SSC LU reports about itself: VPD B0h, density support, log pages, MAM values.

Builders only (LU state in, bytes out); the handlers that call them are in ssc.py.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from tape import mam

from .layouts import tape as LT

# The density name REPORT DENSITY SUPPORT gives our one density code.
DENSITY_NAME = "PYTAPE1"

if TYPE_CHECKING:  # pragma: no cover
    from .tape_lu import TapeLU

PAGE_SEQ_CAPABILITIES = 0xB0
LOG_SUPPORTED = 0x00
LOG_SEQUENTIAL_ACCESS = 0x0C
LOG_VOLUME_STATISTICS = 0x17
LOG_TAPE_ALERT = 0x2E
LOG_PAGES = (LOG_SUPPORTED, LOG_SEQUENTIAL_ACCESS, LOG_VOLUME_STATISTICS, LOG_TAPE_ALERT)

# TapeAlert flags (SSC-4 Annex A) this model raises.
TA_READ_FAILURE = 0x05
TA_WRITE_FAILURE = 0x06
TA_WRITE_PROTECT = 0x09

MB = 1_000_000


def sequential_capabilities(lu: "TapeLU") -> bytes:
    """VPD B0h, Sequential-access device capabilities: not a WORM device."""
    return bytes([lu.device_type, PAGE_SEQ_CAPABILITIES, 0, 2, 0, 0])


def density_descriptors(lu: "TapeLU", media: bool) -> list[LT.DensityDescriptor]:
    img = lu.image
    cap = img.capacity // MB if img is not None else 0
    return [LT.DensityDescriptor(
        primary_density_code=lu.density_code, secondary_density_code=lu.density_code,
        wrtok=not (media and img is not None and img.write_protected), deflt=True, dlv=True,
        capacity=min(cap, 0xFFFFFFFF), assigning_organization="PYSCSI",
        density_name=DENSITY_NAME, description="pure-Python tape image")]


# ------------------------------------------------------------------ log pages
def _param(code: int, value: bytes, control: int = 0x00) -> bytes:
    return struct.pack(">HBB", code, control, len(value)) + value


def _u(n: int, size: int) -> bytes:
    return min(n, (1 << (8 * size)) - 1).to_bytes(size, "big")


def _ascii(text: str, size: int) -> bytes:
    return mam.ascii_value(text, size)


def log_page(lu: "TapeLU", code: int, subpage: int = 0) -> bytes | None:
    """The page (header included), or None when the LU has no such page."""
    if code == LOG_SUPPORTED:
        if subpage == 0xFF:
            body = b"".join(bytes([c, 0]) for c in LOG_PAGES) + bytes([0, 0xFF])
            return bytes([0x40, 0xFF]) + len(body).to_bytes(2, "big") + body
        if subpage:
            return None
        body = bytes(LOG_PAGES)
    elif subpage:
        return None
    elif code == LOG_SEQUENTIAL_ACCESS:
        body = _sequential_access(lu)
    elif code == LOG_VOLUME_STATISTICS:
        body = _volume_statistics(lu)
    elif code == LOG_TAPE_ALERT:
        flags = lu.tape_alerts
        # Read-clear: a flag is reported once (SSC-4 A.2).
        lu.tape_alerts = set()
        body = b"".join(_param(k, bytes([1 if k in flags else 0])) for k in range(1, 0x41))
    else:
        return None
    return bytes([code, 0]) + len(body).to_bytes(2, "big") + body


def _sequential_access(lu: "TapeLU") -> bytes:
    c = lu.drive.load_counters
    img = lu.image
    if img is not None and lu.drive.ready:
        to_eod = img.used // MB
        to_ew = (img.capacity - img.sb.early_warning) // MB
        ew_to_eop = img.sb.early_warning // MB
        to_pos = img.used_at(lu.drive.pos) // MB
    else:
        to_eod = to_ew = ew_to_eop = to_pos = 0
    return b"".join((
        _param(0x0000, _u(c.bytes_written, 8)),   # from the application client
        _param(0x0001, _u(c.bytes_written, 8)),   # to the medium (no compression)
        _param(0x0002, _u(c.bytes_read, 8)),      # from the medium
        _param(0x0003, _u(c.bytes_read, 8)),      # to the application client
        _param(0x0004, _u(to_eod, 4)),
        _param(0x0005, _u(to_ew, 4)),
        _param(0x0006, _u(ew_to_eop, 4)),
        _param(0x0007, _u(to_pos, 4)),
        _param(0x0008, _u(0, 4)),                 # nothing is held in a buffer
        _param(0x0100, b"\x00"),                  # cleaning not required
    ))


def _attr_int(img, attr_id: int) -> int:
    a = img.attribute(attr_id) if img is not None else None
    return int.from_bytes(a.value, "big") if a is not None else 0


def _volume_statistics(lu: "TapeLU") -> bytes:
    img = lu.image
    c = lu.drive.load_counters
    records = img.count - img.filemark_count if img is not None else 0
    serial = barcode = ""
    if img is not None:
        s = img.attribute(mam.ID_SERIAL)
        serial = s.text() if s else img.sb.serial
        barcode = img.barcode()
    return b"".join((
        _param(0x0000, b"\x01"),                                  # page valid
        _param(0x0001, _u(_attr_int(img, mam.ID_LOAD_COUNT), 4)),  # thread count
        _param(0x0002, _u(records, 8)),                           # data sets written
        _param(0x0007, _u(c.records_read, 8)),                    # data sets read
        _param(0x000E, _u(c.bytes_written // MB, 4)),             # MB written this mount
        _param(0x000F, _u(c.bytes_read // MB, 4)),                # MB read this mount
        _param(0x0010, _u(_attr_int(img, mam.ID_MB_WRITTEN_LIFE) + c.bytes_written // MB, 4)),
        _param(0x0011, _u(_attr_int(img, mam.ID_MB_READ_LIFE) + c.bytes_read // MB, 4)),
        _param(0x0016, _u(img.capacity // MB if img is not None else 0, 4)),
        _param(0x0017, _u(img.used // MB if img is not None else 0, 4)),
        _param(0x0040, _ascii(serial, 32)),
        _param(0x0042, _ascii(barcode, 32)),
        _param(0x0043, _ascii("PYSCSI", 8)),
        _param(0x0080, bytes([1 if lu.write_protected else 0])),
        _param(0x0081, b"\x00"),                                  # not WORM
    ))


# ------------------------------------------------------------------ MAM values
def device_attributes(lu: "TapeLU") -> list[mam.Attribute]:
    """Attributes the drive computes from the medium (identifiers below 0400h)."""
    img = lu.image
    if img is None:
        return []
    c = lu.drive.load_counters
    mib = 1 << 20
    vals = [
        (0x0000, img.remaining // mib),
        (0x0001, img.capacity // mib),
        (mam.ID_LOAD_COUNT, _attr_int(img, mam.ID_LOAD_COUNT)),
        (mam.ID_MB_WRITTEN_LIFE, _attr_int(img, mam.ID_MB_WRITTEN_LIFE) + c.bytes_written // MB),
        (mam.ID_MB_READ_LIFE, _attr_int(img, mam.ID_MB_READ_LIFE) + c.bytes_read // MB),
        (mam.ID_MB_WRITTEN_LOAD, c.bytes_written // MB),
        (mam.ID_MB_READ_LOAD, c.bytes_read // MB),
    ]
    return [mam.Attribute(i, mam.FORMAT_BINARY, v.to_bytes(8, "big"), True) for i, v in vals]


def all_attributes(lu: "TapeLU") -> list[mam.Attribute]:
    img = lu.image
    stored = {a.id: a for a in (img.attributes().values() if img is not None else ())
              if not mam.is_device(a.id)}
    for a in device_attributes(lu):
        stored[a.id] = a
    return [stored[k] for k in sorted(stored)]
