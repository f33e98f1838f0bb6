"""SAM-5 LUN field encoding (8 bytes) for REPORT LUNS and iSCSI headers."""
from __future__ import annotations


def encode_lun(lun: int) -> bytes:
    """Peripheral device addressing below 256, flat space addressing above."""
    if not 0 <= lun < 16384:
        raise ValueError(f"LUN {lun} out of range 0..16383")
    if lun < 256:
        return bytes([0, lun]) + b"\x00" * 6
    return bytes([0x40 | (lun >> 8), lun & 0xFF]) + b"\x00" * 6


def decode_lun(field: bytes) -> int:
    """LUN number from an 8-byte LUN field; -1 for formats we do not serve."""
    if len(field) < 2:
        return -1
    method = field[0] >> 6
    if method in (0, 1):  # peripheral (bus 0) or flat space
        if method == 0 and field[0] & 0x3F:
            return -1  # a bus identifier other than 0
        return ((field[0] & 0x3F) << 8) | field[1]
    return -1
