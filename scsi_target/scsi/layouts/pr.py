"""PERSISTENT RESERVE IN parameter data (SPC-4 6.13): READ KEYS, READ RESERVATION,
REPORT CAPABILITIES, READ FULL STATUS; TransportIDs (SPC-4 7.6.4)."""
from __future__ import annotations

import struct

from ...record import field, record
from .fields import Struct, bit, bits, u8, u16, u32, u64

PR_TYPE_NAMES = {1: "Write Exclusive", 3: "Exclusive Access",
                 5: "Write Exclusive - Registrants Only", 6: "Exclusive Access - Registrants Only",
                 7: "Write Exclusive - All Registrants", 8: "Exclusive Access - All Registrants"}


@record
class PrReadKeys:
    """PERSISTENT RESERVE IN / READ KEYS parameter data."""
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


@record
class ReservationDescriptor(Struct):
    """The reservation READ RESERVATION reports (16 bytes)."""
    key: int = 0
    scope: int = 0
    type: int = 0

    SIZE = 16
    FIELDS = (u64("key", 0), bits("scope", 13, 4, 4), bits("type", 13, 0, 4))


@record
class PrReadReservation:
    """PERSISTENT RESERVE IN / READ RESERVATION parameter data."""
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


@record
class PrCapabilities(Struct):
    """PERSISTENT RESERVE IN / REPORT CAPABILITIES parameter data (8 bytes)."""
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


@record
class FullStatusHead(Struct):
    """The fixed 24 bytes of a READ FULL STATUS descriptor; the TransportID follows."""
    key: int = 0
    all_tg_pt: bool = False
    r_holder: bool = False
    scope: int = 0
    type: int = 0
    relative_target_port: int = 0
    additional_length: int = 0        # bytes of TransportID

    SIZE = 24
    FIELDS = (u64("key", 0), bit("all_tg_pt", 12, 1), bit("r_holder", 12, 0),
              bits("scope", 13, 4, 4), bits("type", 13, 0, 4),
              u16("relative_target_port", 18), u32("additional_length", 20))


@record
class FullStatusDescriptor:
    """One registration: its key, whether it holds the reservation, and the I_T nexus."""
    key: int = 0
    r_holder: bool = False
    type: int = 0                      # reservation type, 0 unless r_holder
    scope: int = 0
    all_tg_pt: bool = False
    relative_target_port: int = 0
    transport_id: bytes = b""

    def pack(self) -> bytes:
        tid = bytes(self.transport_id)
        return FullStatusHead(self.key, self.all_tg_pt, self.r_holder, self.scope, self.type,
                              self.relative_target_port, len(tid)).pack() + tid

    def to_dict(self) -> dict:
        return {"key": f"0x{self.key:016x}", "r_holder": self.r_holder,
                "type": PR_TYPE_NAMES.get(self.type, self.type) if self.r_holder else None,
                "scope": self.scope, "all_tg_pt": self.all_tg_pt,
                "relative_target_port": self.relative_target_port,
                "transport_id": describe_transport_id(self.transport_id)}


@record
class PrReadFullStatus:
    """PERSISTENT RESERVE IN / READ FULL STATUS parameter data."""
    generation: int = 0
    descriptors: list[FullStatusDescriptor] = field(default_factory=list)

    def pack(self) -> bytes:
        body = b"".join(d.pack() for d in self.descriptors)
        return struct.pack(">II", self.generation, len(body)) + body

    @classmethod
    def unpack(cls, data) -> "PrReadFullStatus":
        """Decode; a descriptor cut short by the allocation length is left out."""
        if len(data) < 8:
            raise ValueError("READ FULL STATUS data shorter than 8 bytes")
        gen, n = struct.unpack_from(">II", data, 0)
        end = min(8 + n, len(data))
        pos, out = 8, []
        while pos + FullStatusHead.SIZE <= end:
            h = FullStatusHead.unpack(data, pos)
            tid_end = pos + FullStatusHead.SIZE + h.additional_length
            if tid_end > end:
                break
            out.append(FullStatusDescriptor(h.key, h.r_holder, h.type, h.scope, h.all_tg_pt,
                                            h.relative_target_port,
                                            bytes(data[pos + FullStatusHead.SIZE:tid_end])))
            pos = tid_end
        return cls(gen, out)

    def to_dict(self) -> dict:
        return {"generation": self.generation,
                "registrations": [d.to_dict() for d in self.descriptors]}


# -- TransportIDs -------------------------------------------------------------------
PROTOCOL_ISCSI = 0x5
TID_FORMAT_ISCSI_NAME = 0b00
TID_FORMAT_ISCSI_PORT = 0b01


def iscsi_transport_id(name: str, isid: int | None = None) -> bytes:
    """An iSCSI TransportID: format 00b (name) or, with ``isid``, 01b (name,i,0xISID);
    NUL-terminated and padded to a multiple of 4 bytes."""
    text = name if isid is None else f"{name},i,0x{isid:012x}"
    body = text.encode() + b"\x00"
    body += b"\x00" * (-len(body) % 4)
    fmt = TID_FORMAT_ISCSI_NAME if isid is None else TID_FORMAT_ISCSI_PORT
    return bytes([(fmt << 6) | PROTOCOL_ISCSI, 0]) + len(body).to_bytes(2, "big") + body


def describe_transport_id(tid: bytes) -> str:
    """An iSCSI TransportID as its name text; any other protocol as hex."""
    if len(tid) >= 4 and tid[0] & 0x0F == PROTOCOL_ISCSI:
        n = int.from_bytes(tid[2:4], "big")
        return bytes(tid[4:4 + n]).split(b"\x00", 1)[0].decode("utf-8", "replace")
    return bytes(tid).hex()


__all__ = ["PrReadKeys", "PrReadReservation", "PrCapabilities", "ReservationDescriptor",
           "FullStatusHead", "FullStatusDescriptor", "PrReadFullStatus", "iscsi_transport_id",
           "describe_transport_id", "u8", "u32"]
