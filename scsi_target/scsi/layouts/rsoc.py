"""REPORT SUPPORTED OPERATION CODES parameter data (SPC-4 6.35)."""
from __future__ import annotations

import struct

from ...record import field, record
from .fields import Struct, bit, bits, u8, u16, u32

OPTIONS_ALL, OPTIONS_OPCODE, OPTIONS_OPCODE_SA, OPTIONS_EITHER = 0, 1, 2, 3
SUPPORT_NAMES = {0: "not available", 1: "not supported", 3: "supported (standard)",
                 5: "supported (vendor specific)"}


@record
class TimeoutsDescriptor(Struct):
    descriptor_length: int = 0x0A
    command_specific: int = 0
    nominal_timeout: int = 0          # seconds
    recommended_timeout: int = 0

    SIZE = 12
    FIELDS = (u16("descriptor_length", 0), u8("command_specific", 3),
              u32("nominal_timeout", 4), u32("recommended_timeout", 8))


@record
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


@record
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


@record
class OneCommandHeader(Struct):
    ctdp: bool = False
    support: int = 0
    cdb_size: int = 0

    SIZE = 4
    FIELDS = (bit("ctdp", 1, 7), bits("support", 1, 0, 3), u16("cdb_size", 2))


@record
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


# Names of the operation codes a console shows (SPC-4, SBC-3, SSC-3; vendor C0h-C8h
# are the backup engine's).
OPCODE_NAMES: dict[int, str] = {
    0x00: "TEST UNIT READY", 0x01: "REWIND", 0x03: "REQUEST SENSE", 0x04: "FORMAT UNIT",
    0x05: "READ BLOCK LIMITS", 0x08: "READ(6)", 0x0A: "WRITE(6)", 0x10: "WRITE FILEMARKS(6)",
    0x11: "SPACE(6)", 0x12: "INQUIRY", 0x13: "VERIFY(6)", 0x15: "MODE SELECT(6)",
    0x16: "RESERVE(6)", 0x17: "RELEASE(6)", 0x19: "ERASE(6)", 0x1A: "MODE SENSE(6)",
    0x1B: "START STOP UNIT / LOAD UNLOAD", 0x1C: "RECEIVE DIAGNOSTIC RESULTS",
    0x1D: "SEND DIAGNOSTIC", 0x1E: "PREVENT ALLOW MEDIUM REMOVAL", 0x25: "READ CAPACITY(10)",
    0x28: "READ(10)", 0x2A: "WRITE(10)", 0x2B: "LOCATE(10)", 0x2E: "WRITE AND VERIFY(10)",
    0x2F: "VERIFY(10)", 0x34: "PRE-FETCH(10) / READ POSITION", 0x35: "SYNCHRONIZE CACHE(10)",
    0x37: "READ DEFECT DATA(10)", 0x3B: "WRITE BUFFER", 0x3C: "READ BUFFER",
    0x41: "WRITE SAME(10)", 0x42: "UNMAP", 0x4C: "LOG SELECT", 0x4D: "LOG SENSE",
    0x55: "MODE SELECT(10)", 0x56: "RESERVE(10)", 0x57: "RELEASE(10)", 0x5A: "MODE SENSE(10)",
    0x5E: "PERSISTENT RESERVE IN", 0x5F: "PERSISTENT RESERVE OUT", 0x83: "EXTENDED COPY",
    0x84: "RECEIVE COPY RESULTS", 0x88: "READ(16)", 0x89: "COMPARE AND WRITE",
    0x8A: "WRITE(16)", 0x8B: "ORWRITE(16)", 0x8E: "WRITE AND VERIFY(16)", 0x8F: "VERIFY(16)",
    0x90: "PRE-FETCH(16)", 0x91: "SYNCHRONIZE CACHE(16)", 0x92: "LOCATE(16)",
    0x93: "WRITE SAME(16)", 0x9C: "WRITE ATOMIC(16)", 0x9E: "SERVICE ACTION IN(16)",
    0xA0: "REPORT LUNS", 0xA3: "MAINTENANCE IN", 0xA4: "MAINTENANCE OUT", 0xA8: "READ(12)",
    0xAA: "WRITE(12)", 0xAE: "WRITE AND VERIFY(12)", 0xAF: "VERIFY(12)", 0xB7: "READ DEFECT DATA(12)",
    0xC0: "SELECT BACKUP", 0xC1: "START BACKUP", 0xC2: "REPORT GENERATIONS",
    0xC3: "ESTIMATE BACKUP", 0xC4: "REPORT RESTORE RESULTS", 0xC5: "SET RESTORE OPTIONS",
    0xC6: "REPORT BACKUP STATUS", 0xC7: "AUDIT TRACKER", 0xC8: "REPORT MAP EXTENTS",
    0xC9: "COMMIT BACKUP",
}
SERVICE_ACTION_NAMES: dict[tuple[int, int], str] = {
    (0x9E, 0x10): "READ CAPACITY(16)", (0x9E, 0x12): "GET LBA STATUS",
    (0xA3, 0x0A): "REPORT TARGET PORT GROUPS", (0xA3, 0x0C): "REPORT SUPPORTED OPERATION CODES",
    (0xA3, 0x0D): "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS", (0xA3, 0x0F): "REPORT TIMESTAMP",
    (0x5E, 0): "PR IN READ KEYS", (0x5E, 1): "PR IN READ RESERVATION",
    (0x5E, 2): "PR IN REPORT CAPABILITIES", (0x5E, 3): "PR IN READ FULL STATUS",
    (0x5F, 0): "PR OUT REGISTER", (0x5F, 1): "PR OUT RESERVE", (0x5F, 2): "PR OUT RELEASE",
    (0x5F, 3): "PR OUT CLEAR", (0x5F, 4): "PR OUT PREEMPT", (0x5F, 5): "PR OUT PREEMPT AND ABORT",
    (0x5F, 6): "PR OUT REGISTER AND IGNORE EXISTING KEY", (0x5F, 7): "PR OUT REGISTER AND MOVE",
    (0x83, 0x00): "EXTENDED COPY(LID1)", (0x83, 0x01): "EXTENDED COPY(LID4)",
    (0x84, 0x00): "RECEIVE COPY STATUS(LID1)", (0x84, 0x03): "RECEIVE COPY OPERATING PARAMETERS",
    (0x84, 0x04): "RECEIVE COPY FAILURE DETAILS(LID1)", (0x84, 0x05): "RECEIVE COPY STATUS(LID4)",
}


def command_name(opcode: int, service_action: int | None = None) -> str:
    if service_action is not None:
        name = SERVICE_ACTION_NAMES.get((opcode, service_action))
        if name:
            return name
    return OPCODE_NAMES.get(opcode, "vendor specific" if opcode >= 0xC0 else "")
