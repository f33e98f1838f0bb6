"""REPORT LUNS parameter data (SPC-4 6.33)."""
from __future__ import annotations

import struct

from ...record import field, record
from ..lunaddr import decode_lun, encode_lun


@record
class ReportLuns:
    """LUN list; ``luns`` as 8-byte LUN structures, ``numbers`` decoded where possible."""
    entries: list[bytes] = field(default_factory=list)

    @classmethod
    def of(cls, luns: list[int]) -> "ReportLuns":
        return cls([encode_lun(n) for n in luns])

    def pack(self) -> bytes:
        body = b"".join(self.entries)
        return struct.pack(">I4x", len(body)) + body

    @classmethod
    def unpack(cls, data) -> "ReportLuns":
        if len(data) < 8:
            raise ValueError("REPORT LUNS data shorter than its header")
        n = struct.unpack_from(">I", data, 0)[0]
        body = bytes(data[8:8 + n])
        return cls([body[i:i + 8] for i in range(0, len(body) - 7, 8)])

    @property
    def numbers(self) -> list[int]:
        """LUN numbers (peripheral/flat addressing; -1 for other formats)."""
        return [decode_lun(e) for e in self.entries]

    def to_dict(self) -> dict:
        return {"luns": self.numbers, "raw": [e.hex() for e in self.entries]}
