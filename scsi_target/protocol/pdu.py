"""iSCSI PDU records and the Basic Header Segment codec (RFC 7143 section 11).

Every PDU type is a record (:mod:`scsi_target.record`) whose header layout is
declared once as a list of fields (byte offset, struct format or bit mask), from
which each type's ``__init__``, ``encode_bhs`` and ``from_bhs`` are compiled once
the type is in use (one struct call each); the data segment travels beside the header as
``pdu.data`` and AHS bytes as ``pdu.ahs``.  Framing (lengths, padding,
digests) lives in :mod:`scsi_target.protocol.framing`.
"""
from __future__ import annotations

import struct
from ..codes import Code
from ..record import field_names, record

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import ClassVar

BHS_LEN = 48


class Op(Code):
    NOP_OUT = 0x00
    SCSI_COMMAND = 0x01
    TASK_MGMT_REQUEST = 0x02
    LOGIN_REQUEST = 0x03
    TEXT_REQUEST = 0x04
    DATA_OUT = 0x05
    LOGOUT_REQUEST = 0x06
    SNACK_REQUEST = 0x10
    NOP_IN = 0x20
    SCSI_RESPONSE = 0x21
    TASK_MGMT_RESPONSE = 0x22
    LOGIN_RESPONSE = 0x23
    TEXT_RESPONSE = 0x24
    DATA_IN = 0x25
    LOGOUT_RESPONSE = 0x26
    R2T = 0x31
    ASYNC_MESSAGE = 0x32
    REJECT = 0x3F


INITIATOR_OPCODES = frozenset({0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10})
RESERVED_TAG = 0xFFFFFFFF


class RejectReason(Code):
    DATA_DIGEST_ERROR = 0x02
    SNACK_REJECT = 0x03
    PROTOCOL_ERROR = 0x04
    COMMAND_NOT_SUPPORTED = 0x05
    IMMEDIATE_COMMAND_REJECT = 0x06
    TASK_IN_PROGRESS = 0x07
    INVALID_DATA_ACK = 0x08
    INVALID_PDU_FIELD = 0x09
    LONG_OP_REJECT = 0x0A
    DEPRECATED = 0x0B
    WAITING_FOR_LOGOUT = 0x0C


class TmfFunction(Code):
    ABORT_TASK = 1
    ABORT_TASK_SET = 2
    CLEAR_ACA = 3
    CLEAR_TASK_SET = 4
    LOGICAL_UNIT_RESET = 5
    TARGET_WARM_RESET = 6
    TARGET_COLD_RESET = 7
    TASK_REASSIGN = 8


class TmfResponse(Code):
    COMPLETE = 0
    TASK_DOES_NOT_EXIST = 1
    LUN_DOES_NOT_EXIST = 2
    TASK_STILL_ALLEGIANT = 3
    REASSIGNMENT_NOT_SUPPORTED = 4
    NOT_SUPPORTED = 5
    AUTHORIZATION_FAILED = 6
    REJECTED = 255


class PduFormatError(ValueError):
    """A header that cannot be decoded (unknown opcode, bad reserved field)."""


# Field spec: (name, offset, kind) with kind a struct format ('B','H','I','Q',
# '6s','8s','16s') or ('bit', mask) / ('bits', mask, shift) inside one byte.
_Spec = list


_SIZES = {"B": 1, "H": 2, "I": 4, "Q": 8}


def _layout(items) -> str:
    """Struct format for ``(offset, format)`` items of a BHS, gaps as pad bytes."""
    fmt, pos = ">", 0
    for off, kind in sorted(items):
        if off < pos:
            raise ValueError(f"overlapping header fields at offset {off}")
        if off > pos:
            fmt += f"{off - pos}x"
        fmt += kind
        pos = off + (_SIZES.get(kind) or int(kind[:-1]))
    if pos > BHS_LEN:
        raise ValueError("header fields past the BHS")
    return fmt + (f"{BHS_LEN - pos}x" if pos < BHS_LEN else "")


# A PDU type's code is compiled once it was used this often (constructions,
# encodes and decodes together); until then it goes through the record's
# __init__ and the generic codec, which reads the same plan.  Compiling a type
# (~0.3 ms) costs about what a hundred-odd generic uses add (1-2 us each): a
# short-lived client (a backup's few dozen commands) never pays for it, a
# target compiles its types within its first milliseconds of traffic.
COMPILE_AFTER = 64


class _Plan:
    """A PDU type's header codec as data, derived from its SPEC once: the struct
    of the encoded header and what each of its values is (``enc``), the struct
    read when decoding and the names of its values (``tokens``), and where each
    constructor argument comes from (``args``, in field order).

    The generic codec interprets it; _codec writes the same plan out as source.
    """
    __slots__ = ("enc", "pack", "tokens", "unpack_from", "args")

    def __init__(self, cls) -> None:
        whole = [(off, name, kind) for name, off, kind in cls.SPEC
                 if not isinstance(kind, tuple)]
        bits: dict[int, list] = {}
        for name, off, kind in cls.SPEC:
            if isinstance(kind, tuple):
                bits.setdefault(off, []).append((name, kind))
        if 0 in bits or any(off in bits or 4 <= off < 8 for off, _, _ in whole) \
                or any(4 <= off < 8 for off in bits):
            raise ValueError(f"{cls.__name__}: a field overlaps the opcode or length bytes")
        # (offset, struct format, value): ("opcode", op), ("ahs",), ("length_hi",),
        # ("length_lo",), ("flags", ((name, kind), ...)) or ("field", name).
        enc = [(0, "B", ("opcode", cls.OPCODE)), (4, "B", ("ahs",)), (5, "B", ("length_hi",)),
               (6, "H", ("length_lo",))]
        enc += [(off, "B", ("flags", tuple(fs))) for off, fs in bits.items()]
        enc += [(off, kind, ("field", name)) for off, name, kind in whole]
        enc.sort()
        dec = [(0, "B", "b0")] + [(off, "B", f"b{off}") for off in bits] \
            + [(off, kind, f"f_{name}") for off, name, kind in whole]
        dec.sort()
        # Each argument: ("immediate",), ("ahs",), ("data",), ("token", token),
        # ("bit", token, mask) or ("bits", token, mask, shift).
        source = {"immediate": ("immediate",), "ahs": ("ahs",), "data": ("data",)}
        for off, fs in bits.items():
            for name, kind in fs:
                source[name] = ("bit", f"b{off}", kind[1]) if kind[0] == "bit" \
                    else ("bits", f"b{off}", kind[1], kind[2])
        source.update((name, ("token", f"f_{name}")) for _, name, _ in whole)
        names = field_names(cls)
        missing = [n for n in names if n not in source]
        if missing:
            raise ValueError(f"{cls.__name__}: fields {missing} are not in the SPEC")
        self.enc = tuple(value for _, _, value in enc)
        self.pack = struct.Struct(_layout((o, k) for o, k, _ in enc)).pack
        self.tokens = tuple(token for _, _, token in dec)
        self.unpack_from = struct.Struct(_layout((o, k) for o, k, _ in dec)).unpack_from
        self.args = tuple(source[n] for n in names)

    # -- the generic codec ---------------------------------------------------
    def encode(self, pdu) -> bytes:
        n = len(pdu.data)
        values = []
        for value in self.enc:
            tag = value[0]
            if tag == "field":
                values.append(getattr(pdu, value[1]))
            elif tag == "flags":
                byte = 0
                for name, kind in value[1]:
                    if kind[0] == "bit":
                        byte |= kind[1] if getattr(pdu, name) else 0
                    else:
                        byte |= (getattr(pdu, name) << kind[2]) & kind[1]
                values.append(byte)
            elif tag == "opcode":
                values.append(value[1] | 0x40 if pdu.immediate else value[1])
            elif tag == "ahs":
                values.append(len(pdu.ahs) >> 2)
            elif tag == "length_hi":
                values.append((n >> 16) & 0xFF)
            else:
                values.append(n & 0xFFFF)
        return self.pack(*values)

    def decode(self, cls, bhs, ahs, data):
        got = dict(zip(self.tokens, self.unpack_from(bhs, 0)))
        args = []
        for arg in self.args:
            tag = arg[0]
            if tag == "token":
                args.append(got[arg[1]])
            elif tag == "bit":
                args.append(bool(got[arg[1]] & arg[2]))
            elif tag == "bits":
                args.append((got[arg[1]] & arg[2]) >> arg[3])
            elif tag == "immediate":
                args.append(bool(got["b0"] & 0x40))
            else:
                args.append(ahs if tag == "ahs" else data)
        return cls(*args)

    # -- the same as source ----------------------------------------------------
    @staticmethod
    def _encoded(value) -> str:
        tag = value[0]
        if tag == "field":
            return f"self.{value[1]}"
        if tag == "flags":
            return " | ".join(f"({kind[1]} if self.{name} else 0)" if kind[0] == "bit"
                              else f"((self.{name} << {kind[2]}) & {kind[1]})"
                              for name, kind in value[1])
        if tag == "opcode":
            return f"{value[1] | 0x40} if self.immediate else {value[1]}"
        if tag == "ahs":
            return "len(self.ahs) >> 2"
        return "(n >> 16) & 0xFF" if tag == "length_hi" else "n & 0xFFFF"

    @staticmethod
    def _decoded(arg) -> str:
        tag = arg[0]
        if tag == "token":
            return arg[1]
        if tag == "bit":
            return f"bool({arg[1]} & {arg[2]})"
        if tag == "bits":
            return f"({arg[1]} & {arg[2]}) >> {arg[3]}"
        return "bool(b0 & 0x40)" if tag == "immediate" else tag

    def source(self, names: tuple[str, ...]) -> str:
        return (
            f"def __init__(self, {', '.join(f'{n}=d_{n}' for n in names)}):\n"
            + "".join(f"    self.{n} = {n}\n" for n in names) +
            "def encode_bhs(self):\n"
            "    n = len(self.data)\n"
            f"    return pack({', '.join(self._encoded(v) for v in self.enc)})\n"
            "def from_bhs(cls, bhs, ahs=b'', data=b''):\n"
            f"    {', '.join(self.tokens)}, = unpack_from(bhs, 0)\n"
            # Positional, in field order: binding a dozen keyword arguments
            # costs more than decoding the header.
            f"    return cls({', '.join(self._decoded(a) for a in self.args)})\n")


_PLANS: dict[type, _Plan] = {}


def _plan(cls) -> _Plan:
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _PLANS[cls] = _Plan(cls)
    return plan


def _codec(cls) -> None:
    """Give ``cls`` an ``__init__``, an ``encode_bhs`` and a ``from_bhs`` compiled
    from its plan (the SPEC stays the one declaration of the layout).

    Each is written out as straight-line source and compiled once per class (the
    way dataclasses builds ``__init__``): the codecs as one struct call with the
    flag bits as expressions, ``__init__`` as one assignment per field with the
    defaults as parameter defaults.  Walking the field list for every PDU cost
    more than the rest of the header work at tens of thousands of PDUs per
    second.
    """
    plan = _plan(cls)
    names = field_names(cls)
    source = plan.source(names)
    namespace = {"pack": plan.pack, "unpack_from": plan.unpack_from}
    namespace.update((f"d_{n}", cls.__record__.defaults[n]) for n in names)
    exec(compile(source, f"<pdu codec {cls.__name__}>", "exec"), namespace)
    namespace["__init__"].__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = namespace["__init__"]
    cls.encode_bhs = namespace["encode_bhs"]
    cls.from_bhs = classmethod(namespace["from_bhs"])
    cls._source = source


@record(init=False)
class Pdu:
    """A PDU: its header fields, data segment and AHS.

    A record (scsi_target.record): one ``__repr__`` and ``==`` for every PDU
    type, from the field table; ``__init__`` and the codec are compiled per
    type once it is in use (_register, _codec).  Only the registered types
    (below) are made: this base has no codec.  (Not an abc.ABC: its metaclass
    made each type's class creation several times dearer.)
    """
    OPCODE: ClassVar[int] = -1
    SPEC: ClassVar[list] = []
    _source: ClassVar[str] = ""   # the generated codec once used, for reading and debugging

    immediate: bool = False
    data: bytes | bytearray | memoryview = b""
    ahs: bytes = b""

    def __init__(self, *args, **kw) -> None:
        raise TypeError("Pdu is the base of the PDU types: make one of those")

    def encode_bhs(self) -> bytes:
        """The 48-byte header (generated per PDU type, see _codec)."""
        raise NotImplementedError

    @classmethod
    def from_bhs(cls, bhs, ahs: bytes = b"", data=b"") -> "Pdu":
        """The PDU a 48-byte header describes (generated per PDU type, see _codec)."""
        raise NotImplementedError


_REGISTRY: dict[int, type[Pdu]] = {}

# The PDU types' records: repr and == from the field table, and until a type's
# code is compiled (_register) the record's generic __init__.  No slots: a
# slotted record is its class made twice (slots cannot be added to a class once
# made), a third of this module's import, and on 3.11 a PDU with an instance
# dict is made, decoded and read about as fast (alternating runs: within 10%,
# tens of nanoseconds per PDU).
_record = record()


def _register(cls):
    """Register a PDU type; its ``__init__`` and codec are compiled once it was used
    COMPILE_AFTER times.

    Compiling all eighteen at import was most of the module's import time, a
    fixed cost of every short-lived program (a ``diffbackup`` run uses seven
    types, each a few dozen times).  Until then ``__init__``, ``encode_bhs``
    and ``from_bhs`` are stand-ins that count the use and hand the call to the
    record's ``__init__`` and the generic codec; the use that reaches the count
    compiles the real ones (which replace them on the class).
    """
    generic_init = cls.__init__
    uses = 0

    def compiled() -> bool:
        nonlocal uses
        uses += 1
        if uses < COMPILE_AFTER:
            return False
        _codec(cls)
        return True

    def __init__(self, *args, **kw):
        if compiled():
            cls.__init__(self, *args, **kw)
        else:
            generic_init(self, *args, **kw)

    def encode_bhs(self):
        if compiled():
            return cls.encode_bhs(self)
        return _plan(cls).encode(self)

    def from_bhs(kind, bhs, ahs=b"", data=b""):
        if compiled():
            return cls.from_bhs.__func__(kind, bhs, ahs, data)
        return _plan(cls).decode(kind, bhs, ahs, data)

    cls.__init__ = __init__
    cls.encode_bhs = encode_bhs
    cls.from_bhs = classmethod(from_bhs)
    _REGISTRY[cls.OPCODE] = cls
    return cls


# ---------------------------------------------------------------- initiator
@_register
@_record
class NopOut(Pdu):
    """NOP-Out (RFC 7143 11.18)."""
    OPCODE: ClassVar[int] = Op.NOP_OUT
    SPEC: ClassVar[list] = [("final", 1, ("bit", 0x80)), ("lun", 8, "Q"), ("itt", 16, "I"),
                            ("ttt", 20, "I"), ("cmdsn", 24, "I"), ("expstatsn", 28, "I")]
    final: bool = True
    lun: int = 0
    itt: int = RESERVED_TAG
    ttt: int = RESERVED_TAG
    cmdsn: int = 0
    expstatsn: int = 0


@_register
@_record
class ScsiCommand(Pdu):
    """SCSI Command (11.3)."""
    OPCODE: ClassVar[int] = Op.SCSI_COMMAND
    SPEC: ClassVar[list] = [("final", 1, ("bit", 0x80)), ("read", 1, ("bit", 0x40)),
                            ("write", 1, ("bit", 0x20)), ("attr", 1, ("bits", 0x07, 0)),
                            ("lun", 8, "Q"), ("itt", 16, "I"), ("edtl", 20, "I"),
                            ("cmdsn", 24, "I"), ("expstatsn", 28, "I"), ("cdb", 32, "16s")]
    final: bool = True
    read: bool = False
    write: bool = False
    attr: int = 1
    lun: int = 0
    itt: int = 0
    edtl: int = 0
    cmdsn: int = 0
    expstatsn: int = 0
    cdb: bytes = bytes(16)


@_register
@_record
class TaskMgmtRequest(Pdu):
    """Task Management Function Request (11.5)."""
    OPCODE: ClassVar[int] = Op.TASK_MGMT_REQUEST
    SPEC: ClassVar[list] = [("final", 1, ("bit", 0x80)), ("function", 1, ("bits", 0x7F, 0)),
                            ("lun", 8, "Q"), ("itt", 16, "I"), ("rtt", 20, "I"),
                            ("cmdsn", 24, "I"), ("expstatsn", 28, "I"), ("refcmdsn", 32, "I"),
                            ("expdatasn", 36, "I")]
    final: bool = True
    function: int = 1
    lun: int = 0
    itt: int = 0
    rtt: int = RESERVED_TAG
    cmdsn: int = 0
    expstatsn: int = 0
    refcmdsn: int = 0
    expdatasn: int = 0


@_register
@_record
class LoginRequest(Pdu):
    """Login Request (11.12)."""
    OPCODE: ClassVar[int] = Op.LOGIN_REQUEST
    SPEC: ClassVar[list] = [("transit", 1, ("bit", 0x80)), ("cont", 1, ("bit", 0x40)),
                            ("csg", 1, ("bits", 0x0C, 2)), ("nsg", 1, ("bits", 0x03, 0)),
                            ("version_max", 2, "B"), ("version_min", 3, "B"),
                            ("isid", 8, "6s"), ("tsih", 14, "H"), ("itt", 16, "I"),
                            ("cid", 20, "H"), ("cmdsn", 24, "I"), ("expstatsn", 28, "I")]
    transit: bool = False
    cont: bool = False
    csg: int = 0
    nsg: int = 0
    version_max: int = 0
    version_min: int = 0
    isid: bytes = bytes(6)
    tsih: int = 0
    itt: int = 0
    cid: int = 0
    cmdsn: int = 0
    expstatsn: int = 0


@_register
@_record
class TextRequest(Pdu):
    """Text Request (11.10)."""
    OPCODE: ClassVar[int] = Op.TEXT_REQUEST
    SPEC: ClassVar[list] = [("final", 1, ("bit", 0x80)), ("cont", 1, ("bit", 0x40)),
                            ("lun", 8, "Q"), ("itt", 16, "I"), ("ttt", 20, "I"),
                            ("cmdsn", 24, "I"), ("expstatsn", 28, "I")]
    final: bool = True
    cont: bool = False
    lun: int = 0
    itt: int = 0
    ttt: int = RESERVED_TAG
    cmdsn: int = 0
    expstatsn: int = 0


@_register
@_record
class DataOut(Pdu):
    """SCSI Data-Out (11.7)."""
    OPCODE: ClassVar[int] = Op.DATA_OUT
    SPEC: ClassVar[list] = [("final", 1, ("bit", 0x80)), ("lun", 8, "Q"), ("itt", 16, "I"),
                            ("ttt", 20, "I"), ("expstatsn", 28, "I"), ("datasn", 36, "I"),
                            ("offset", 40, "I")]
    final: bool = False
    lun: int = 0
    itt: int = 0
    ttt: int = RESERVED_TAG
    expstatsn: int = 0
    datasn: int = 0
    offset: int = 0


@_register
@_record
class LogoutRequest(Pdu):
    """Logout Request (11.14)."""
    OPCODE: ClassVar[int] = Op.LOGOUT_REQUEST
    SPEC: ClassVar[list] = [("final", 1, ("bit", 0x80)), ("reason", 1, ("bits", 0x7F, 0)),
                            ("itt", 16, "I"), ("cid", 20, "H"), ("cmdsn", 24, "I"),
                            ("expstatsn", 28, "I")]
    final: bool = True
    reason: int = 0
    itt: int = 0
    cid: int = 0
    cmdsn: int = 0
    expstatsn: int = 0


@_register
@_record
class SnackRequest(Pdu):
    """SNACK Request (11.16)."""
    OPCODE: ClassVar[int] = Op.SNACK_REQUEST
    SPEC: ClassVar[list] = [("final", 1, ("bit", 0x80)), ("type", 1, ("bits", 0x0F, 0)),
                            ("lun", 8, "Q"), ("itt", 16, "I"), ("ttt", 20, "I"),
                            ("expstatsn", 28, "I"), ("begrun", 40, "I"), ("runlength", 44, "I")]
    final: bool = True
    type: int = 0
    lun: int = 0
    itt: int = 0
    ttt: int = RESERVED_TAG
    expstatsn: int = 0
    begrun: int = 0
    runlength: int = 0


# ------------------------------------------------------------------ target
@_register
@_record
class NopIn(Pdu):
    """NOP-In (11.19)."""
    OPCODE: ClassVar[int] = Op.NOP_IN
    SPEC: ClassVar[list] = [("final", 1, ("bit", 0x80)), ("lun", 8, "Q"), ("itt", 16, "I"),
                            ("ttt", 20, "I"), ("statsn", 24, "I"), ("expcmdsn", 28, "I"),
                            ("maxcmdsn", 32, "I")]
    final: bool = True
    lun: int = 0
    itt: int = RESERVED_TAG
    ttt: int = RESERVED_TAG
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0


@_register
@_record
class ScsiResponse(Pdu):
    """SCSI Response (11.4)."""
    OPCODE: ClassVar[int] = Op.SCSI_RESPONSE
    SPEC: ClassVar[list] = [("final", 1, ("bit", 0x80)), ("bidi_overflow", 1, ("bit", 0x10)),
                            ("bidi_underflow", 1, ("bit", 0x08)), ("overflow", 1, ("bit", 0x04)),
                            ("underflow", 1, ("bit", 0x02)), ("response", 2, "B"),
                            ("status", 3, "B"), ("itt", 16, "I"), ("snack_tag", 20, "I"),
                            ("statsn", 24, "I"), ("expcmdsn", 28, "I"), ("maxcmdsn", 32, "I"),
                            ("expdatasn", 36, "I"), ("bidi_residual", 40, "I"),
                            ("residual", 44, "I")]
    final: bool = True
    bidi_overflow: bool = False
    bidi_underflow: bool = False
    overflow: bool = False
    underflow: bool = False
    response: int = 0
    status: int = 0
    itt: int = 0
    snack_tag: int = 0
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    expdatasn: int = 0
    bidi_residual: int = 0
    residual: int = 0


@_register
@_record
class TaskMgmtResponse(Pdu):
    """Task Management Function Response (11.6)."""
    OPCODE: ClassVar[int] = Op.TASK_MGMT_RESPONSE
    SPEC: ClassVar[list] = [("final", 1, ("bit", 0x80)), ("response", 2, "B"), ("itt", 16, "I"),
                            ("statsn", 24, "I"), ("expcmdsn", 28, "I"), ("maxcmdsn", 32, "I")]
    final: bool = True
    response: int = 0
    itt: int = 0
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0


@_register
@_record
class LoginResponse(Pdu):
    """Login Response (11.13)."""
    OPCODE: ClassVar[int] = Op.LOGIN_RESPONSE
    SPEC: ClassVar[list] = [("transit", 1, ("bit", 0x80)), ("cont", 1, ("bit", 0x40)),
                            ("csg", 1, ("bits", 0x0C, 2)), ("nsg", 1, ("bits", 0x03, 0)),
                            ("version_max", 2, "B"), ("version_active", 3, "B"),
                            ("isid", 8, "6s"), ("tsih", 14, "H"), ("itt", 16, "I"),
                            ("statsn", 24, "I"), ("expcmdsn", 28, "I"), ("maxcmdsn", 32, "I"),
                            ("status_class", 36, "B"), ("status_detail", 37, "B")]
    transit: bool = False
    cont: bool = False
    csg: int = 0
    nsg: int = 0
    version_max: int = 0
    version_active: int = 0
    isid: bytes = bytes(6)
    tsih: int = 0
    itt: int = 0
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    status_class: int = 0
    status_detail: int = 0


@_register
@_record
class TextResponse(Pdu):
    """Text Response (11.11)."""
    OPCODE: ClassVar[int] = Op.TEXT_RESPONSE
    SPEC: ClassVar[list] = [("final", 1, ("bit", 0x80)), ("cont", 1, ("bit", 0x40)),
                            ("lun", 8, "Q"), ("itt", 16, "I"), ("ttt", 20, "I"),
                            ("statsn", 24, "I"), ("expcmdsn", 28, "I"), ("maxcmdsn", 32, "I")]
    final: bool = True
    cont: bool = False
    lun: int = 0
    itt: int = 0
    ttt: int = RESERVED_TAG
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0


@_register
@_record
class DataIn(Pdu):
    """SCSI Data-In (11.7)."""
    OPCODE: ClassVar[int] = Op.DATA_IN
    SPEC: ClassVar[list] = [("final", 1, ("bit", 0x80)), ("ack", 1, ("bit", 0x40)),
                            ("overflow", 1, ("bit", 0x04)), ("underflow", 1, ("bit", 0x02)),
                            ("has_status", 1, ("bit", 0x01)), ("status", 3, "B"),
                            ("lun", 8, "Q"), ("itt", 16, "I"), ("ttt", 20, "I"),
                            ("statsn", 24, "I"), ("expcmdsn", 28, "I"), ("maxcmdsn", 32, "I"),
                            ("datasn", 36, "I"), ("offset", 40, "I"), ("residual", 44, "I")]
    final: bool = False
    ack: bool = False
    overflow: bool = False
    underflow: bool = False
    has_status: bool = False
    status: int = 0
    lun: int = 0
    itt: int = 0
    ttt: int = RESERVED_TAG
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    datasn: int = 0
    offset: int = 0
    residual: int = 0


@_register
@_record
class LogoutResponse(Pdu):
    """Logout Response (11.15)."""
    OPCODE: ClassVar[int] = Op.LOGOUT_RESPONSE
    SPEC: ClassVar[list] = [("final", 1, ("bit", 0x80)), ("response", 2, "B"), ("itt", 16, "I"),
                            ("statsn", 24, "I"), ("expcmdsn", 28, "I"), ("maxcmdsn", 32, "I"),
                            ("time2wait", 40, "H"), ("time2retain", 42, "H")]
    final: bool = True
    response: int = 0
    itt: int = 0
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    time2wait: int = 0
    time2retain: int = 0


@_register
@_record
class R2T(Pdu):
    """Ready To Transfer (11.8)."""
    OPCODE: ClassVar[int] = Op.R2T
    SPEC: ClassVar[list] = [("final", 1, ("bit", 0x80)), ("lun", 8, "Q"), ("itt", 16, "I"),
                            ("ttt", 20, "I"), ("statsn", 24, "I"), ("expcmdsn", 28, "I"),
                            ("maxcmdsn", 32, "I"), ("r2tsn", 36, "I"), ("offset", 40, "I"),
                            ("length", 44, "I")]
    final: bool = True
    lun: int = 0
    itt: int = 0
    ttt: int = 0
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    r2tsn: int = 0
    offset: int = 0
    length: int = 0


@_register
@_record
class AsyncMessage(Pdu):
    """Asynchronous Message (11.9)."""
    OPCODE: ClassVar[int] = Op.ASYNC_MESSAGE
    SPEC: ClassVar[list] = [("final", 1, ("bit", 0x80)), ("lun", 8, "Q"), ("itt", 16, "I"),
                            ("statsn", 24, "I"), ("expcmdsn", 28, "I"), ("maxcmdsn", 32, "I"),
                            ("event", 36, "B"), ("vcode", 37, "B"), ("param1", 38, "H"),
                            ("param2", 40, "H"), ("param3", 42, "H")]
    final: bool = True
    lun: int = 0
    itt: int = RESERVED_TAG
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    event: int = 0
    vcode: int = 0
    param1: int = 0
    param2: int = 0
    param3: int = 0


@_register
@_record
class Reject(Pdu):
    """Reject (11.17)."""
    OPCODE: ClassVar[int] = Op.REJECT
    SPEC: ClassVar[list] = [("final", 1, ("bit", 0x80)), ("reason", 2, "B"), ("itt", 16, "I"),
                            ("statsn", 24, "I"), ("expcmdsn", 28, "I"), ("maxcmdsn", 32, "I"),
                            ("datasn", 36, "I")]
    final: bool = True
    reason: int = 0
    itt: int = RESERVED_TAG
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    datasn: int = 0


def pdu_class(opcode: int) -> type[Pdu] | None:
    return _REGISTRY.get(opcode)


def header_lengths(bhs) -> tuple[int, int]:
    """(AHS length in bytes, data segment length) from a BHS."""
    return bhs[4] * 4, (bhs[5] << 16) | (bhs[6] << 8) | bhs[7]


def decode_bhs(bhs, ahs: bytes = b"", data=b"") -> Pdu:
    """Typed PDU from a 48-byte header; raises PduFormatError for unknown opcodes."""
    if len(bhs) < BHS_LEN:
        raise PduFormatError(f"BHS is {len(bhs)} bytes, needs {BHS_LEN}")
    cls = _REGISTRY.get(bhs[0] & 0x3F)
    if cls is None:
        raise PduFormatError(f"unknown opcode 0x{bhs[0] & 0x3F:02x}")
    return cls.from_bhs(bhs, bytes(ahs) if ahs else b"", data)


def pdu_fields(pdu: Pdu) -> dict:
    return {name: getattr(pdu, name) for name in field_names(pdu)}
