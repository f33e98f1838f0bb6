"""A scapy layer for iSCSI (RFC 7143), for reading and building captures.

One packet class per opcode, each declaring the whole Basic Header Segment
(48 bytes) as a scapy field list, followed by the fields every PDU shares:
the Additional Header Segments (``ISCSI_AHS``: extended CDB, bidirectional
read length), the header digest, the opcode's data segment, its padding and
the data digest.  :class:`ISCSI` is the entry point: it dispatches on the
opcode byte, so ``ISCSI(raw)`` returns e.g. an ``ISCSI_SCSICommand``.

Digests are negotiated at login, which a single packet cannot know; a digest
field is therefore dissected when the 4 bytes where it would sit are the
CRC32C of what it covers (a false positive has probability 2**-32).  Built
packets carry a digest only when the field is set; :meth:`ISCSIPdu.with_digests`
fills in correct values.

TCP port 3260 is bound; :func:`bind_port` adds others.  Dissecting per TCP
segment (``rdpcap`` + ``TCP`` payload) works only when PDUs start at segment
boundaries; :mod:`scsi_target.protocol.tcpstream` reassembles the byte
streams so that PDUs spanning segments, several PDUs in one segment,
retransmissions and reordering are handled.

Field names follow RFC 7143; the tests compare them with Wireshark's
dissector field by field.  This layer is for captures and replay tooling,
not the data path (the target and initiator use :mod:`.pdu`).
"""
from __future__ import annotations

import struct

import crc32c as _crc32c
from scapy.fields import (BitEnumField, BitField, ByteEnumField, ByteField, Field,
                          FieldLenField, PacketListField, ShortField,
                          StrLenField, ThreeBytesField, XByteField, XIntField, XLongField,
                          XShortField, XStrFixedLenField, XStrLenField, ConditionalField,
                          IntField)
from scapy.layers.inet import TCP
from scapy.config import conf
from scapy.packet import Packet, Raw, bind_layers

from ..scsi.layouts.rsoc import OPCODE_NAMES, command_name

ISCSI_PORT = 3260

OPCODES = {
    0x00: "NOP-Out", 0x01: "SCSI Command", 0x02: "Task Management Function Request",
    0x03: "Login Request", 0x04: "Text Request", 0x05: "SCSI Data-Out",
    0x06: "Logout Request", 0x10: "SNACK Request",
    0x20: "NOP-In", 0x21: "SCSI Response", 0x22: "Task Management Function Response",
    0x23: "Login Response", 0x24: "Text Response", 0x25: "SCSI Data-In",
    0x26: "Logout Response", 0x31: "Ready To Transfer", 0x32: "Asynchronous Message",
    0x3F: "Reject",
}
INITIATOR_OPCODES = frozenset(op for op in OPCODES if op < 0x20)
TARGET_OPCODES = frozenset(op for op in OPCODES if op >= 0x20)

TASK_ATTRIBUTES = {0: "Untagged", 1: "Simple", 2: "Ordered", 3: "Head of Queue", 4: "ACA"}
TMF_FUNCTIONS = {1: "ABORT TASK", 2: "ABORT TASK SET", 3: "CLEAR ACA", 4: "CLEAR TASK SET",
                 5: "LOGICAL UNIT RESET", 6: "TARGET WARM RESET", 7: "TARGET COLD RESET",
                 8: "TASK REASSIGN"}
TMF_RESPONSES = {0: "Function complete", 1: "Task does not exist", 2: "LUN does not exist",
                 3: "Task still allegiant", 4: "Task allegiance reassignment not supported",
                 5: "Task management function not supported",
                 6: "Function authorization failed", 255: "Function rejected"}
LOGIN_STAGES = {0: "Security negotiation", 1: "Operational negotiation",
                3: "Full feature phase"}
LOGOUT_REASONS = {0: "Close session", 1: "Close connection",
                  2: "Remove connection for recovery"}
LOGOUT_RESPONSES = {0: "Connection or session closed successfully", 1: "CID not found",
                    2: "Connection recovery is not supported", 3: "Cleanup failed"}
SCSI_STATUS = {0x00: "GOOD", 0x02: "CHECK CONDITION", 0x04: "CONDITION MET", 0x08: "BUSY",
               0x18: "RESERVATION CONFLICT", 0x28: "TASK SET FULL", 0x30: "ACA ACTIVE",
               0x40: "TASK ABORTED"}
ISCSI_RESPONSES = {0x00: "Command Completed at Target", 0x01: "Target Failure"}
SNACK_TYPES = {0: "Data/R2T", 1: "Status", 2: "DataACK", 3: "R-Data"}
ASYNC_EVENTS = {0: "SCSI async event", 1: "Logout request", 2: "Connection drop",
                3: "Session drop", 4: "Parameter negotiation request",
                255: "Vendor-specific"}
REJECT_REASONS = {0x01: "Reserved", 0x02: "Data (payload) digest error",
                  0x03: "SNACK Reject", 0x04: "Protocol Error",
                  0x05: "Command not supported", 0x06: "Immediate command reject",
                  0x07: "Task in progress", 0x08: "Invalid data ack",
                  0x09: "Invalid PDU field", 0x0A: "Long op reject",
                  0x0B: "Deprecated", 0x0C: "Waiting for Logout"}
AHS_TYPES = {1: "Extended CDB", 2: "Bidirectional Read Data Length"}

_LE32 = struct.Struct("<I")


def crc32c_digest(*parts) -> int:
    crc = 0
    for p in parts:
        crc = _crc32c.crc32c(bytes(p), crc)
    return crc


def _data_len(pkt) -> int:
    n = pkt.datasegmentlength
    return 0 if n is None else n


# ------------------------------------------------------------------ AHS
class ISCSI_AHS(Packet):
    """One Additional Header Segment (RFC 7143 11.2.2): 2-byte length, type, data."""
    name = "iSCSI AHS"
    fields_desc = [
        FieldLenField("ahslength", None, length_of="ahsdata", fmt="!H"),
        ByteEnumField("ahstype", 1, AHS_TYPES),
        # The AHS-specific bytes start with a reserved byte for both defined
        # types (AHSLength counts it), kept here so any AHS round-trips.
        XStrLenField("ahsdata", b"", length_from=lambda pkt: pkt.ahslength),
        XStrLenField("ahspad", b"", length_from=lambda pkt: -(3 + len(pkt.ahsdata)) % 4),
    ]

    def extract_padding(self, s):
        return b"", s

    @property
    def extended_cdb(self) -> bytes:
        """CDB bytes 16.. carried by an Extended CDB AHS (after its reserved byte)."""
        return bytes(self.ahsdata[1:]) if self.ahstype == 1 else b""

    @property
    def bidi_read_length(self) -> int | None:
        if self.ahstype == 2 and len(self.ahsdata) >= 5:
            return int.from_bytes(self.ahsdata[1:5], "big")
        return None


class _DigestField(Field):
    """A CRC32C digest (sent little-endian) that may be absent.

    Dissection takes the 4 bytes only if they are the digest of what the
    field covers; building emits them only when the value is not None.
    """
    __slots__ = ["header"]
    islist = 0

    def __init__(self, name: str, header: bool) -> None:
        super().__init__(name, None, "<I")
        self.header = header

    def getfield(self, pkt, s):
        if len(s) >= 4 and pkt._digest_matches(self.header, s):
            return s[4:], _LE32.unpack_from(s, 0)[0]
        return s, None

    def addfield(self, pkt, s, val):
        if val is None:
            return s
        return s + _LE32.pack(val)

    def i2repr(self, pkt, x):
        return "absent" if x is None else f"0x{x:08x}"


class _PadField(StrLenField):
    """Zero padding of the data segment to a multiple of 4 bytes."""

    def __init__(self) -> None:
        super().__init__("padding", None, length_from=lambda pkt: -_data_len(pkt) % 4)

    def addfield(self, pkt, s, val):
        if val is None:
            n = len(s) - pkt._header_len()
            val = b"\x00" * (-n % 4)
        return s + bytes(val)


class _KeyValueField(StrLenField):
    """Login/Text data: NUL-terminated ``key=value`` pairs (RFC 7143 6).

    Held as bytes so that a key split across PDUs (C bit) round-trips; the
    packet's :meth:`keys` gives the pairs.
    """

    def i2repr(self, pkt, x):
        parts = [p.decode("utf-8", "replace") for p in bytes(x or b"").split(b"\x00") if p]
        return "[" + ", ".join(parts) + "]"


class ISCSI(Packet):
    """Dispatcher: ``ISCSI(raw)`` returns the packet class of the PDU's opcode."""
    name = "iSCSI"
    fields_desc = [BitField("reserved0", 0, 1), BitField("I", 0, 1),
                   BitEnumField("opcode", 0, 6, OPCODES)]

    @classmethod
    def dispatch_hook(cls, _pkt=None, *args, **kargs):
        if _pkt:
            return _CLASSES.get(_pkt[0] & 0x3F, ISCSI_Unknown)
        return cls

    @classmethod
    def tcp_reassemble(cls, data, metadata, session):
        """scapy's ``TCPSession`` hook: every complete PDU at the start of ``data``.

        Returns them chained (one packet, the PDUs as successive layers) with
        an incomplete tail as Padding, which TCPSession keeps for the next
        segment; None while not even one PDU is complete.
        """
        end = 0
        while True:
            n = pdu_wire_length(data, end)
            if n is None or end + n > len(data):
                break
            end += n
        if not end:
            return None
        pkt = ISCSI(bytes(data[:end]))
        if end < len(data):
            pkt.add_payload(conf.padding_layer(bytes(data[end:])))
        return pkt


class ISCSIPdu(Packet):
    """Base of every opcode's class: the shared head and tail of the PDU."""
    __slots__ = ["_raw"]
    name = "iSCSI PDU"
    OPCODE = -1
    # Subclasses set these two field lists; the metaclass has already run on
    # ``fields_desc`` by then, so :func:`_pdu_class` assembles the final list.

    def do_dissect(self, s):
        self._raw = bytes(s)
        return super().do_dissect(s)

    # -- digest detection -------------------------------------------------
    def _ahs_bytes_len(self) -> int:
        n = self.totalahslength
        return (n * 4) if n is not None else sum(len(bytes(a)) for a in self.ahs)

    def _header_len(self) -> int:
        return 48 + self._ahs_bytes_len() + (4 if self.header_digest is not None else 0)

    def _digest_matches(self, header: bool, s: bytes) -> bool:
        raw = getattr(self, "_raw", None)
        if raw is None:
            return False
        hlen = 48 + self._ahs_bytes_len()
        if header:
            covered = raw[:hlen]
        else:
            dlen = _data_len(self)
            if not dlen:
                return False
            start = hlen + (4 if self.header_digest is not None else 0)
            covered = raw[start:len(raw) - len(s)]
            if len(covered) != dlen + (-dlen % 4):
                return False
        return _LE32.unpack_from(s, 0)[0] == crc32c_digest(covered)

    # -- building ---------------------------------------------------------
    def post_build(self, p, pay):
        if self.totalahslength is None:
            p = p[:4] + bytes([self._ahs_bytes_len() // 4]) + p[5:]
        if self.datasegmentlength is None:
            n = len(self.data_segment())
            p = p[:5] + n.to_bytes(3, "big") + p[8:]
        return p + pay

    def with_digests(self, header: bool = True, data: bool = True) -> "ISCSIPdu":
        """A copy carrying correct header and/or data digests."""
        pkt = self.copy()
        pkt.remove_payload()
        pkt.header_digest = None
        pkt.data_digest = None
        raw = bytes(pkt)
        hlen = 48 + pkt._ahs_bytes_len()
        if header:
            pkt.header_digest = crc32c_digest(raw[:hlen])
        dlen = int.from_bytes(raw[5:8], "big")
        if data and dlen:
            pkt.data_digest = crc32c_digest(raw[hlen:hlen + dlen + (-dlen % 4)])
        return pkt

    # -- helpers ------------------------------------------------------------
    def data_segment(self) -> bytes:
        """The data segment as sent, without padding and digests."""
        return b"".join(f.addfield(self, b"", self.getfieldval(f.name))
                        for f in self.DATA_FIELDS)

    def pdu_length(self) -> int:
        dlen = _data_len(self)
        return (self._header_len() + dlen + (-dlen % 4)
                + (4 if self.data_digest is not None else 0))

    def guess_payload_class(self, payload):
        # Several PDUs in one TCP segment: the rest is the next PDU.
        return ISCSI if len(payload) >= 48 else Raw

    def mysummary(self):
        return f"iSCSI {OPCODES.get(self.opcode, hex(self.opcode))} ITT=0x{self.itt:08x}"


def _head(byte1: list, bytes2_3: list, bytes8_15: list, bytes20_47: list) -> list:
    """The BHS of one opcode, from its opcode-specific pieces."""
    return ([BitField("reserved0", 0, 1), BitField("I", 0, 1),
             BitEnumField("opcode", 0, 6, OPCODES)]
            + byte1 + bytes2_3
            + [ByteField("totalahslength", None), ThreeBytesField("datasegmentlength", None)]
            + bytes8_15 + [XIntField("itt", 0xFFFFFFFF)] + bytes20_47)


def _tail(data: list) -> list:
    return ([PacketListField("ahs", [], ISCSI_AHS,
                             length_from=lambda pkt: (pkt.totalahslength or 0) * 4),
             _DigestField("header_digest", True)]
            + data + [_PadField(), _DigestField("data_digest", False)])


def _pdu_class(name: str, opcode: int, head: list, data: list, doc: str = "",
               mixin: type | None = None):
    ns = {"name": f"iSCSI {OPCODES[opcode]}", "OPCODE": opcode, "__module__": __name__,
          "fields_desc": head + _tail(data), "DATA_FIELDS": data, "__doc__": doc}
    bases = (mixin, ISCSIPdu) if mixin else (ISCSIPdu,)
    cls = type(ISCSIPdu)(name, bases, ns)
    cls.fields_desc[2].default = opcode
    _CLASSES[opcode] = cls
    return cls


_CLASSES: dict[int, type] = {}


def _rsv(name: str, n: int) -> Field:
    return XStrFixedLenField(name, b"\x00" * n, n)


def _F(default: int = 1) -> list:
    return [BitField("F", default, 1)]


def _raw_data(name: str = "data") -> list:
    return [StrLenField(name, b"", length_from=_data_len)]


_LUN = [XLongField("lun", 0)]
_SN_IN = [IntField("statsn", 0), IntField("expcmdsn", 0), IntField("maxcmdsn", 0)]


class _KeysMixin:
    __slots__ = ()

    def keys(self) -> list[tuple[str, str]]:
        """The complete ``key=value`` pairs of the data segment, in order."""
        out = []
        for item in bytes(self.data or b"").split(b"\x00"):
            if item:
                k, _, v = item.decode("utf-8", "replace").partition("=")
                out.append((k, v))
        return out


class _CdbMixin:
    __slots__ = ()

    @property
    def cdb(self) -> bytes:
        """The whole CDB: BHS bytes 32..47 plus any Extended CDB AHS."""
        ext = b"".join(a.extended_cdb for a in self.ahs)
        return bytes([self.cdb_opcode]) + bytes(self.cdb_rest) + ext

    @property
    def scsi_command_name(self) -> str:
        cdb = self.cdb
        sa = cdb[1] & 0x1F if cdb[0] in (0x9E, 0xA3, 0x5E, 0x5F, 0x83, 0x84) else None
        return command_name(cdb[0], sa) or f"opcode 0x{cdb[0]:02x}"


class _SenseMixin:
    __slots__ = ()

    @property
    def sense_key_asc_ascq(self) -> tuple[int, int, int] | None:
        s = bytes(self.sense or b"")
        if len(s) >= 14 and s[0] & 0x7F in (0x70, 0x71):
            return s[2] & 0x0F, s[12], s[13]
        if len(s) >= 4 and s[0] & 0x7F in (0x72, 0x73):
            return s[1] & 0x0F, s[2], s[3]
        return None


def _sense_data() -> list:
    def has(pkt) -> bool:
        return _data_len(pkt) >= 2 or bool(pkt.getfieldval("sense")) or bool(
            pkt.getfieldval("response_data"))
    return [ConditionalField(FieldLenField("senselength", None, length_of="sense", fmt="!H"),
                             has),
            ConditionalField(XStrLenField("sense", b"", length_from=lambda p: p.senselength),
                             has),
            ConditionalField(XStrLenField("response_data", b"",
                                          length_from=lambda p: max(
                                              0, _data_len(p) - 2 - (p.senselength or 0))),
                             has)]


# ------------------------------------------------------------- initiator PDUs
ISCSI_NOPOut = _pdu_class(
    "ISCSI_NOPOut", 0x00,
    _head(_F() + [BitField("reserved1", 0, 7)], [XShortField("reserved2", 0)], _LUN,
          [XIntField("ttt", 0xFFFFFFFF), IntField("cmdsn", 0), IntField("expstatsn", 0),
           _rsv("reserved3", 16)]),
    _raw_data("ping_data"), "RFC 7143 11.18")

ISCSI_SCSICommand = _pdu_class(
    "ISCSI_SCSICommand", 0x01,
    _head(_F() + [BitField("R", 0, 1), BitField("W", 0, 1), BitField("reserved1", 0, 2),
                  BitEnumField("attr", 1, 3, TASK_ATTRIBUTES)],
          [XShortField("reserved2", 0)], _LUN,
          [IntField("edtl", 0), IntField("cmdsn", 0), IntField("expstatsn", 0),
           ByteEnumField("cdb_opcode", 0, OPCODE_NAMES),
           XStrFixedLenField("cdb_rest", b"\x00" * 15, 15)]),
    _raw_data("immediate_data"), "RFC 7143 11.3", _CdbMixin)

ISCSI_TMFRequest = _pdu_class(
    "ISCSI_TMFRequest", 0x02,
    _head([BitField("F", 1, 1), BitEnumField("function", 1, 7, TMF_FUNCTIONS)],
          [XShortField("reserved2", 0)], _LUN,
          [XIntField("rtt", 0xFFFFFFFF), IntField("cmdsn", 0), IntField("expstatsn", 0),
           IntField("refcmdsn", 0), IntField("expdatasn", 0), _rsv("reserved3", 8)]),
    _raw_data(), "RFC 7143 11.5")

ISCSI_LoginRequest = _pdu_class(
    "ISCSI_LoginRequest", 0x03,
    _head([BitField("T", 0, 1), BitField("C", 0, 1), BitField("reserved1", 0, 2),
           BitEnumField("csg", 0, 2, LOGIN_STAGES), BitEnumField("nsg", 0, 2, LOGIN_STAGES)],
          [XByteField("version_max", 0), XByteField("version_min", 0)],
          [XStrFixedLenField("isid", b"\x00" * 6, 6), XShortField("tsih", 0)],
          [XShortField("cid", 0), XShortField("reserved2", 0), IntField("cmdsn", 0),
           IntField("expstatsn", 0), _rsv("reserved3", 16)]),
    [_KeyValueField("data", b"", length_from=_data_len)], "RFC 7143 11.12", _KeysMixin)

ISCSI_TextRequest = _pdu_class(
    "ISCSI_TextRequest", 0x04,
    _head(_F() + [BitField("C", 0, 1), BitField("reserved1", 0, 6)],
          [XShortField("reserved2", 0)], _LUN,
          [XIntField("ttt", 0xFFFFFFFF), IntField("cmdsn", 0), IntField("expstatsn", 0),
           _rsv("reserved3", 16)]),
    [_KeyValueField("data", b"", length_from=_data_len)], "RFC 7143 11.10", _KeysMixin)

ISCSI_DataOut = _pdu_class(
    "ISCSI_DataOut", 0x05,
    _head(_F(0) + [BitField("reserved1", 0, 7)], [XShortField("reserved2", 0)], _LUN,
          [XIntField("ttt", 0xFFFFFFFF), _rsv("reserved3", 4), IntField("expstatsn", 0),
           _rsv("reserved4", 4), IntField("datasn", 0), IntField("offset", 0),
           _rsv("reserved5", 4)]),
    _raw_data(), "RFC 7143 11.7")

ISCSI_LogoutRequest = _pdu_class(
    "ISCSI_LogoutRequest", 0x06,
    _head([BitField("F", 1, 1), BitEnumField("reason", 0, 7, LOGOUT_REASONS)],
          [XShortField("reserved2", 0)], [_rsv("reserved3", 8)],
          [XShortField("cid", 0), XShortField("reserved4", 0), IntField("cmdsn", 0),
           IntField("expstatsn", 0), _rsv("reserved5", 16)]),
    _raw_data(), "RFC 7143 11.14")

ISCSI_SNACKRequest = _pdu_class(
    "ISCSI_SNACKRequest", 0x10,
    _head([BitField("F", 1, 1), BitField("reserved1", 0, 3),
           BitEnumField("type", 0, 4, SNACK_TYPES)],
          [XShortField("reserved2", 0)], _LUN,
          [XIntField("ttt", 0xFFFFFFFF), _rsv("reserved3", 4), IntField("expstatsn", 0),
           _rsv("reserved4", 8), IntField("begrun", 0), IntField("runlength", 0)]),
    _raw_data(), "RFC 7143 11.16")

# ---------------------------------------------------------------- target PDUs
ISCSI_NOPIn = _pdu_class(
    "ISCSI_NOPIn", 0x20,
    _head(_F() + [BitField("reserved1", 0, 7)], [XShortField("reserved2", 0)], _LUN,
          [XIntField("ttt", 0xFFFFFFFF)] + _SN_IN + [_rsv("reserved3", 12)]),
    _raw_data("ping_data"), "RFC 7143 11.19")

ISCSI_SCSIResponse = _pdu_class(
    "ISCSI_SCSIResponse", 0x21,
    _head(_F() + [BitField("reserved1", 0, 2), BitField("o", 0, 1), BitField("u", 0, 1),
                  BitField("O", 0, 1), BitField("U", 0, 1), BitField("reserved1b", 0, 1)],
          [ByteEnumField("response", 0, ISCSI_RESPONSES), ByteEnumField("status", 0, SCSI_STATUS)],
          [_rsv("reserved2", 8)],
          [XIntField("snack_tag", 0)] + _SN_IN + [IntField("expdatasn", 0),
                                                   IntField("bidi_residual", 0),
                                                   IntField("residual", 0)]),
    _sense_data(), "RFC 7143 11.4", _SenseMixin)

ISCSI_TMFResponse = _pdu_class(
    "ISCSI_TMFResponse", 0x22,
    _head(_F() + [BitField("reserved1", 0, 7)],
          [ByteEnumField("response", 0, TMF_RESPONSES), XByteField("reserved2", 0)],
          [_rsv("reserved3", 8)],
          [_rsv("reserved4", 4)] + _SN_IN + [_rsv("reserved5", 12)]),
    _raw_data(), "RFC 7143 11.6")

ISCSI_LoginResponse = _pdu_class(
    "ISCSI_LoginResponse", 0x23,
    _head([BitField("T", 0, 1), BitField("C", 0, 1), BitField("reserved1", 0, 2),
           BitEnumField("csg", 0, 2, LOGIN_STAGES), BitEnumField("nsg", 0, 2, LOGIN_STAGES)],
          [XByteField("version_max", 0), XByteField("version_active", 0)],
          [XStrFixedLenField("isid", b"\x00" * 6, 6), XShortField("tsih", 0)],
          [_rsv("reserved2", 4)] + _SN_IN
          + [XByteField("status_class", 0), XByteField("status_detail", 0),
             _rsv("reserved3", 10)]),
    [_KeyValueField("data", b"", length_from=_data_len)], "RFC 7143 11.13", _KeysMixin)

ISCSI_TextResponse = _pdu_class(
    "ISCSI_TextResponse", 0x24,
    _head(_F() + [BitField("C", 0, 1), BitField("reserved1", 0, 6)],
          [XShortField("reserved2", 0)], _LUN,
          [XIntField("ttt", 0xFFFFFFFF)] + _SN_IN + [_rsv("reserved3", 12)]),
    [_KeyValueField("data", b"", length_from=_data_len)], "RFC 7143 11.11", _KeysMixin)

ISCSI_DataIn = _pdu_class(
    "ISCSI_DataIn", 0x25,
    _head(_F(0) + [BitField("A", 0, 1), BitField("reserved1", 0, 3), BitField("O", 0, 1),
                   BitField("U", 0, 1), BitField("S", 0, 1)],
          [XByteField("reserved2", 0), ByteEnumField("status", 0, SCSI_STATUS)], _LUN,
          [XIntField("ttt", 0xFFFFFFFF)] + _SN_IN + [IntField("datasn", 0),
                                                     IntField("offset", 0),
                                                     IntField("residual", 0)]),
    _raw_data(), "RFC 7143 11.8")

ISCSI_LogoutResponse = _pdu_class(
    "ISCSI_LogoutResponse", 0x26,
    _head(_F() + [BitField("reserved1", 0, 7)],
          [ByteEnumField("response", 0, LOGOUT_RESPONSES), XByteField("reserved2", 0)],
          [_rsv("reserved3", 8)],
          [_rsv("reserved4", 4)] + _SN_IN + [_rsv("reserved5", 4), ShortField("time2wait", 0),
                                              ShortField("time2retain", 0),
                                              _rsv("reserved6", 4)]),
    _raw_data(), "RFC 7143 11.15")

ISCSI_R2T = _pdu_class(
    "ISCSI_R2T", 0x31,
    _head(_F() + [BitField("reserved1", 0, 7)], [XShortField("reserved2", 0)], _LUN,
          [XIntField("ttt", 0)] + _SN_IN + [IntField("r2tsn", 0), IntField("offset", 0),
                                            IntField("desired_length", 0)]),
    _raw_data(), "RFC 7143 11.9")

ISCSI_AsyncMessage = _pdu_class(
    "ISCSI_AsyncMessage", 0x32,
    _head(_F() + [BitField("reserved1", 0, 7)], [XShortField("reserved2", 0)], _LUN,
          [_rsv("reserved3", 4)] + _SN_IN
          + [ByteEnumField("event", 0, ASYNC_EVENTS), XByteField("vcode", 0),
             ShortField("param1", 0), ShortField("param2", 0), ShortField("param3", 0),
             _rsv("reserved4", 4)]),
    _sense_data(), "RFC 7143 11.9 (sense data and iSCSI event data)", _SenseMixin)

ISCSI_Reject = _pdu_class(
    "ISCSI_Reject", 0x3F,
    _head(_F() + [BitField("reserved1", 0, 7)],
          [ByteEnumField("reason", 0, REJECT_REASONS), XByteField("reserved2", 0)],
          [_rsv("reserved3", 8)],
          [_rsv("reserved4", 4)] + _SN_IN + [IntField("datasn", 0), _rsv("reserved5", 8)]),
    [XStrLenField("rejected_header", b"", length_from=_data_len)], "RFC 7143 11.17")


class ISCSI_Unknown(ISCSIPdu):
    """A PDU with an opcode RFC 7143 does not define (kept whole)."""
    name = "iSCSI unknown opcode"
    fields_desc = _head([XByteField("byte1", 0)], [XShortField("bytes2_3", 0)],
                        [XStrFixedLenField("bytes8_15", b"\x00" * 8, 8)],
                        [XStrFixedLenField("bytes20_47", b"\x00" * 28, 28)]) + _tail(
        _raw_data())
    DATA_FIELDS = fields_desc[-3:-2]


for _cls in _CLASSES.values():
    _cls.DATA_FIELDS = [f for f in _cls.fields_desc
                        if f.name in {g.name for g in _cls.DATA_FIELDS}]


def pdu_wire_length(data, start: int = 0) -> int | None:
    """Length of the PDU at ``data[start:]``, digests found by their CRC32C.

    None when the bytes there do not yet say (header or digest incomplete).
    A digest cannot be told apart from the next PDU when exactly the header
    is there and nothing after it: that case counts as no digest.
    """
    avail = len(data) - start
    if avail < 48:
        return None
    b = data[start:start + 48]
    hlen = 48 + b[4] * 4
    dlen = int.from_bytes(b[5:8], "big")
    padded = dlen + (-dlen % 4)
    if avail < hlen:
        return None
    hd = avail >= hlen + 4 and _LE32.unpack_from(data, start + hlen)[0] == crc32c_digest(
        data[start:start + hlen])
    n = hlen + (4 if hd else 0) + padded
    if dlen and avail >= n + 4:
        dd = _LE32.unpack_from(data, start + n)[0] == crc32c_digest(
            data[start + n - padded:start + n])
        n += 4 if dd else 0
    return n


def bind_port(port: int) -> None:
    """Dissect TCP payload to or from ``port`` as iSCSI (3260 is bound already)."""
    bind_layers(TCP, ISCSI, sport=port)
    bind_layers(TCP, ISCSI, dport=port)


bind_port(ISCSI_PORT)


def dissect(raw: bytes) -> ISCSIPdu:
    """One PDU (or several back to back, as payloads) from its wire bytes."""
    return ISCSI(raw)
