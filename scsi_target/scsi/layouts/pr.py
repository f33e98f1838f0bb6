"""PERSISTENT RESERVE IN parameter data (SPC-4 6.13): READ KEYS, READ RESERVATION,
REPORT CAPABILITIES."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .fields import Struct, bit, bits, u8, u16, u32, u64

PR_TYPE_NAMES = {1: "Write Exclusive", 3: "Exclusive Access",
                 5: "Write Exclusive - Registrants Only", 6: "Exclusive Access - Registrants Only",
                 7: "Write Exclusive - All Registrants", 8: "Exclusive Access - All Registrants"}


@dataclass
class PrReadKeys:
    generation: int = 0
    keys: list[int] = field(default_factory=list)

    def pack(self) -> bytes:
        body = b"".join(k.to_bytes(8, "big") for k in self.keys)
        return struct.pack(">II", self.generation, len(body)) + body

    @classmethod
    def unpack(cls, data) -> "PrReadKeys":
        if len(data) < 8:
            raise ValueError("READ KEYS data shorter than 8 bytes")
        gen, n = struct.unpack_from(">II", data, 0)
        body = bytes(data[8:8 + n])
        return cls(gen, [int.from_bytes(body[i:i + 8], "big") for i in range(0, len(body) - 7, 8)])

    def to_dict(self) -> dict:
        return {"generation": self.generation, "keys": [f"0x{k:016x}" for k in self.keys]}


@dataclass
class ReservationDescriptor(Struct):
    key: int = 0
    scope: int = 0
    type: int = 0

    SIZE = 16
    FIELDS = (u64("key", 0), bits("scope", 13, 4, 4), bits("type", 13, 0, 4))


@dataclass
class PrReadReservation:
    generation: int = 0
    reservation: ReservationDescriptor | None = None

    def pack(self) -> bytes:
        body = self.reservation.pack() if self.reservation is not None else b""
        return struct.pack(">II", self.generation, len(body)) + body

    @classmethod
    def unpack(cls, data) -> "PrReadReservation":
        if len(data) < 8:
            raise ValueError("READ RESERVATION data shorter than 8 bytes")
        gen, n = struct.unpack_from(">II", data, 0)
        return cls(gen, ReservationDescriptor.unpack(data, 8) if n >= 16 else None)

    def to_dict(self) -> dict:
        r = self.reservation
        return {"generation": self.generation,
                "reservation": None if r is None else
                {"key": f"0x{r.key:016x}", "scope": r.scope,
                 "type": PR_TYPE_NAMES.get(r.type, r.type)}}


@dataclass
class PrCapabilities(Struct):
    length: int = 8
    crh: bool = False
    sip_c: bool = False
    atp_c: bool = False
    ptpl_c: bool = False
    tmv: bool = False
    allow_commands: int = 0
    ptpl_a: bool = False
    wr_ex_ar: bool = False
    ex_ac_ro: bool = False
    wr_ex_ro: bool = False
    ex_ac: bool = False
    wr_ex: bool = False
    ex_ac_ar: bool = False

    SIZE = 8
    FIELDS = (u16("length", 0), bit("crh", 2, 4), bit("sip_c", 2, 3), bit("atp_c", 2, 2),
              bit("ptpl_c", 2, 0), bit("tmv", 3, 7), bits("allow_commands", 3, 4, 3),
              bit("ptpl_a", 3, 0), bit("wr_ex_ar", 4, 7), bit("ex_ac_ro", 4, 6),
              bit("wr_ex_ro", 4, 5), bit("ex_ac", 4, 3), bit("wr_ex", 4, 1), bit("ex_ac_ar", 5, 0))


__all__ = ["PrReadKeys", "PrReadReservation", "PrCapabilities", "ReservationDescriptor",
           "u8", "u32"]
