"""Standard INQUIRY data (SPC-4 6.6.2) of a logical unit."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from . import vpd

if TYPE_CHECKING:  # pragma: no cover
    from .lun import LogicalUnit

STANDARD_LENGTH = 96
VERSION_SPC4 = 0x06

# Version descriptors (SPC-4 table 29).
VD_SAM5 = 0x00A0
VD_ISCSI = 0x0960
VD_SPC4 = 0x0460
VD_SBC3 = 0x04C0
VD_SSC3 = 0x0300


def version_descriptors(lu: "LogicalUnit") -> list[int]:
    """What the LU claims to conform to; an LU type may set ``version_descriptors``."""
    own = getattr(lu, "version_descriptors", None)
    if own is not None:
        return list(own)[:8]
    vds = [VD_SAM5, VD_ISCSI, VD_SPC4]
    if lu.device_type == 0x00:
        vds.append(VD_SBC3)
    elif lu.device_type == 0x01:
        vds.append(VD_SSC3)
    return vds


def _ascii(text: str, width: int) -> bytes:
    """Left-aligned, space-padded printable ASCII (SPC-4 4.4.1)."""
    raw = "".join(c if " " <= c <= "~" else " " for c in text)
    return raw.encode("ascii")[:width].ljust(width)


def standard_data(lu: "LogicalUnit") -> bytes:
    ident = lu.identity
    buf = bytearray(STANDARD_LENGTH)
    buf[0] = lu.device_type & 0x1F          # peripheral qualifier 000b: connected
    buf[1] = 0x80 if lu.removable else 0x00  # RMB
    buf[2] = VERSION_SPC4
    buf[3] = 0x10 | 0x02                     # HISUP, RESPONSE DATA FORMAT 2
    buf[4] = STANDARD_LENGTH - 5
    buf[5] = 0x08 if vpd.has_third_party_copy() else 0x00   # 3PC
    buf[7] = 0x02                            # CMDQUE: tagged command queuing
    buf[8:16] = _ascii(ident.vendor, 8)
    buf[16:32] = _ascii(ident.product, 16)
    buf[32:36] = _ascii(ident.revision, 4)
    for i, vd in enumerate(version_descriptors(lu)):
        struct.pack_into(">H", buf, 58 + 2 * i, vd)
    return bytes(buf)
