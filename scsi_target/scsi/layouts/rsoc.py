"""REPORT SUPPORTED OPERATION CODES parameter data (SPC-4 6.35)."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .fields import Struct, bit, bits, u8, u16, u32

OPTIONS_ALL, OPTIONS_OPCODE, OPTIONS_OPCODE_SA, OPTIONS_EITHER = 0, 1, 2, 3
SUPPORT_NAMES = {0: "not available", 1: "not supported", 3: "supported (standard)",
                 5: "supported (vendor specific)"}


@dataclass
class TimeoutsDescriptor(Struct):
    descriptor_length: int = 0x0A
    command_specific: int = 0
    nominal_timeout: int = 0          # seconds
    recommended_timeout: int = 0

    SIZE = 12
    FIELDS = (u16("descriptor_length", 0), u8("command_specific", 3),
              u32("nominal_timeout", 4), u32("recommended_timeout", 8))


@dataclass
class CommandDescriptor(Struct):
    """One entry of the all-commands format (the timeouts descriptor follows when CTDP)."""
    opcode: int = 0
    service_action: int = 0
    ctdp: bool = False
    servactv: bool = False
    cdb_length: int = 0
    timeouts: TimeoutsDescriptor | None = None

    SIZE = 8
    FIELDS = (u8("opcode", 0), u16("service_action", 2), bit("ctdp", 5, 1),
              bit("servactv", 5, 0), u16("cdb_length", 6))

    def pack(self) -> bytes:
        head = super().pack()
        if self.ctdp:
            return head + (self.timeouts or TimeoutsDescriptor()).pack()
        return head


@dataclass
class AllCommands:
    descriptors: list[CommandDescriptor] = field(default_factory=list)

    def pack(self) -> bytes:
        body = b"".join(d.pack() for d in self.descriptors)
        return struct.pack(">I", len(body)) + body

    @classmethod
    def unpack(cls, data) -> "AllCommands":
        if len(data) < 4:
            raise ValueError("REPORT SUPPORTED OPERATION CODES data shorter than 4 bytes")
        n = struct.unpack_from(">I", data, 0)[0]
        end = min(len(data), 4 + n)
        out: list[CommandDescriptor] = []
        pos = 4
        while pos + 8 <= end:
            d = CommandDescriptor.unpack(data, pos)
            pos += 8
            if d.ctdp:
                d.timeouts = TimeoutsDescriptor.unpack(data, pos)
                pos += 12
            out.append(d)
        return cls(out)

    def to_dict(self) -> dict:
        return {"commands": [d.to_dict() for d in self.descriptors]}


@dataclass
class OneCommandHeader(Struct):
    ctdp: bool = False
    support: int = 0
    cdb_size: int = 0

    SIZE = 4
    FIELDS = (bit("ctdp", 1, 7), bits("support", 1, 0, 3), u16("cdb_size", 2))


@dataclass
class OneCommand:
    """One-command format: support, the CDB usage map, and optionally timeouts."""
    support: int = 3
    usage: bytes = b""
    timeouts: TimeoutsDescriptor | None = None

    @property
    def ctdp(self) -> bool:
        return self.timeouts is not None

    @property
    def supported(self) -> bool:
        return self.support in (3, 5)

    def pack(self) -> bytes:
        if not self.usage and not self.supported:
            return OneCommandHeader(False, self.support, 0).pack()
        out = OneCommandHeader(self.ctdp, self.support, len(self.usage)).pack() + self.usage
        return out + (self.timeouts.pack() if self.timeouts is not None else b"")

    @classmethod
    def unpack(cls, data) -> "OneCommand":
        h = OneCommandHeader.unpack(data)
        usage = bytes(data[4:4 + h.cdb_size])
        t = TimeoutsDescriptor.unpack(data, 4 + h.cdb_size) if h.ctdp else None
        return cls(h.support, usage, t)

    def to_dict(self) -> dict:
        return {"support": SUPPORT_NAMES.get(self.support, self.support),
                "usage": self.usage.hex(),
                "timeouts": self.timeouts.to_dict() if self.timeouts else None}
