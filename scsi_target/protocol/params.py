"""iSCSI text keys: the key=value codec and the negotiation rules (RFC 7143 sections 6 and 13).

Two layers, both free of I/O:

* the codec: ``decode_text`` / ``encode_text`` turn a data segment into an
  ordered list of (key, value) pairs and back, enforcing the size limits of
  RFC 7143 6.1 and rejecting malformed text with :class:`TextError`;
* the rules: :data:`KEYS` describes every key we know (type, default, range,
  who may send it, when), and :class:`Negotiation` answers an initiator's
  offers one key at a time while it accumulates the result, which
  :meth:`Negotiation.session_params` freezes into :class:`SessionParams`.

Security keys (AuthMethod, CHAP_*) are listed so that the codec and the
scope checks know them, but the login state machine answers them itself.
"""
from __future__ import annotations

from ..codes import Code
from ..record import field, record

# RFC 7143 6.1: key names are at most 63 bytes, values at most 255 bytes
# unless a key says otherwise.  Binary CHAP values may be much longer: the
# challenge itself may be up to 1024 bytes, i.e. 2048 hex digits plus "0x".
MAX_KEY_LEN = 63
MAX_VALUE_LEN = 255
MAX_BINARY_VALUE_LEN = 8192
# Upper bound on the text of one request sequence (several PDUs joined by
# the C bit); the RFC leaves it to the implementation, we bound memory.
MAX_TEXT_LEN = 64 * 1024

REJECT = "Reject"
IRRELEVANT = "Irrelevant"
NOT_UNDERSTOOD = "NotUnderstood"
RESERVED_VALUES = frozenset({REJECT, IRRELEVANT, NOT_UNDERSTOOD})

# The characters of a key name (RFC 7143 6.1: letters, digits, . - + @ _ #),
# checked as a set: re is no import of a short-lived client's start-up.
_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-+@_#")
_LONG_KEYS = frozenset({"CHAP_C", "CHAP_R", "CHAP_N", "TargetAddress"})


class TextError(ValueError):
    """Text that violates RFC 7143 6.1 (no '=', bad key, too long, duplicate)."""


def decode_text(data: bytes | bytearray | memoryview) -> list[tuple[str, str]]:
    """Ordered (key, value) pairs of a NUL-separated text segment.

    Trailing NULs (the terminator of the last pair, pad bytes) are dropped;
    an empty string between two NULs is malformed.
    """
    raw = bytes(data)
    if len(raw) > MAX_TEXT_LEN:
        raise TextError(f"text of {len(raw)} bytes exceeds {MAX_TEXT_LEN}")
    raw = raw.rstrip(b"\x00")
    if not raw:
        return []
    pairs: list[tuple[str, str]] = []
    for item in raw.split(b"\x00"):
        key_b, sep, value_b = item.partition(b"=")
        if not sep:
            raise TextError(f"no '=' in {item[:40]!r}")
        try:
            key = key_b.decode("utf-8")
            value = value_b.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TextError(f"text is not UTF-8: {exc}") from None
        if not key or len(key_b) > MAX_KEY_LEN or not _KEY_CHARS.issuperset(key):
            raise TextError(f"bad key name {key[:70]!r}")
        limit = MAX_BINARY_VALUE_LEN if key in _LONG_KEYS else MAX_VALUE_LEN
        if len(value_b) > limit:
            raise TextError(f"value of {key} is {len(value_b)} bytes, limit {limit}")
        pairs.append((key, value))
    return pairs


def encode_text(pairs) -> bytes:
    """NUL-terminated key=value strings; ``pairs`` is an iterable of 2-tuples or a dict."""
    if isinstance(pairs, dict):
        pairs = pairs.items()
    return b"".join(f"{k}={v}".encode("utf-8") + b"\x00" for k, v in pairs)


def unique(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """The pairs as a dict; a key sent twice in one sequence is a protocol error (6.2)."""
    out: dict[str, str] = {}
    for k, v in pairs:
        if k in out:
            raise TextError(f"key {k} sent twice")
        out[k] = v
    return out


def split_text(text: bytes, limit: int) -> list[bytes]:
    """Cut ``text`` into chunks of at most ``limit`` bytes (at least one chunk).

    RFC 7143 6.6 lets a key=value pair straddle PDUs, so a plain byte split
    is correct; the receiver joins the chunks before decoding.
    """
    if limit <= 0:
        raise ValueError("limit must be positive")
    if not text:
        return [b""]
    return [text[i:i + limit] for i in range(0, len(text), limit)]


# ------------------------------------------------------------------ key table
class Kind(Code):
    LIST = 1                 # first value of the offer that we accept
    AND = 2                  # boolean, result = offer AND ours
    OR = 3                   # boolean, result = offer OR ours
    MIN = 4                  # numerical, result = min(offer, ours)
    MAX = 5                  # numerical, result = max(offer, ours)
    DECLARE = 6              # declarative, no answer expected
    SECURITY = 7             # answered by the login state machine


class Scope(Code):
    LEADING = 1              # "LO": leading-connection login only
    LOGIN = 2                # "IO": any login, never in full feature phase
    ALL = 3                  # "ALL": login or text negotiation
    SECURITY = 4             # "SEC": security stage only
    FFP = 5                  # "FFPO": full feature phase only


@record(frozen=True)
class KeyDef:
    """One negotiable key: its kind, default and negotiation rule."""
    name: str
    kind: Kind
    scope: Scope
    sender: str                      # "I", "T" or "IT"
    default: str | int | bool | None = None
    lo: int = 0
    hi: int = 0
    values: tuple[str, ...] = ()     # LIST: the values we accept, in our preference
    discovery_irrelevant: bool = False


def _k(*args, **kw) -> KeyDef:
    return KeyDef(*args, **kw)


KEYS: dict[str, KeyDef] = {d.name: d for d in [
    _k("HeaderDigest", Kind.LIST, Scope.LOGIN, "IT", "None", values=("None", "CRC32C")),
    _k("DataDigest", Kind.LIST, Scope.LOGIN, "IT", "None", values=("None", "CRC32C")),
    _k("MaxConnections", Kind.MIN, Scope.LEADING, "IT", 1, 1, 65535, discovery_irrelevant=True),
    _k("SendTargets", Kind.DECLARE, Scope.FFP, "I"),
    _k("TargetName", Kind.DECLARE, Scope.LOGIN, "IT"),
    _k("InitiatorName", Kind.DECLARE, Scope.LOGIN, "I"),
    _k("TargetAlias", Kind.DECLARE, Scope.ALL, "T"),
    _k("InitiatorAlias", Kind.DECLARE, Scope.ALL, "I"),
    _k("TargetAddress", Kind.DECLARE, Scope.ALL, "T"),
    _k("TargetPortalGroupTag", Kind.DECLARE, Scope.LOGIN, "T"),
    _k("InitialR2T", Kind.OR, Scope.LEADING, "IT", True, discovery_irrelevant=True),
    _k("ImmediateData", Kind.AND, Scope.LEADING, "IT", True, discovery_irrelevant=True),
    _k("MaxRecvDataSegmentLength", Kind.DECLARE, Scope.ALL, "IT", 8192, 512, 2**24 - 1),
    _k("MaxBurstLength", Kind.MIN, Scope.LEADING, "IT", 262144, 512, 2**24 - 1,
       discovery_irrelevant=True),
    _k("FirstBurstLength", Kind.MIN, Scope.LEADING, "IT", 65536, 512, 2**24 - 1,
       discovery_irrelevant=True),
    _k("DefaultTime2Wait", Kind.MAX, Scope.LEADING, "IT", 2, 0, 3600),
    _k("DefaultTime2Retain", Kind.MIN, Scope.LEADING, "IT", 20, 0, 3600),
    _k("MaxOutstandingR2T", Kind.MIN, Scope.LEADING, "IT", 1, 1, 65535,
       discovery_irrelevant=True),
    _k("DataPDUInOrder", Kind.AND, Scope.LEADING, "IT", True, discovery_irrelevant=True),
    _k("DataSequenceInOrder", Kind.AND, Scope.LEADING, "IT", True, discovery_irrelevant=True),
    _k("ErrorRecoveryLevel", Kind.MIN, Scope.LEADING, "IT", 0, 0, 2),
    _k("SessionType", Kind.DECLARE, Scope.LEADING, "I", "Normal"),
    # RFC 3720 markers, obsolete in RFC 7143 but still offered ("No") by
    # libiscsi and open-iscsi; answering them keeps old initiators content.
    _k("IFMarker", Kind.AND, Scope.LOGIN, "IT", False),
    _k("OFMarker", Kind.AND, Scope.LOGIN, "IT", False),
    _k("AuthMethod", Kind.SECURITY, Scope.SECURITY, "IT", "None"),
    _k("CHAP_A", Kind.SECURITY, Scope.SECURITY, "IT"),
    _k("CHAP_I", Kind.SECURITY, Scope.SECURITY, "IT"),
    _k("CHAP_C", Kind.SECURITY, Scope.SECURITY, "IT"),
    _k("CHAP_N", Kind.SECURITY, Scope.SECURITY, "IT"),
    _k("CHAP_R", Kind.SECURITY, Scope.SECURITY, "IT"),
]}

# Marker intervals only matter when markers are on, which we never agree to.
_ALWAYS_IRRELEVANT = frozenset({"OFMarkInt", "IFMarkInt"})


def parse_bool(value: str) -> bool | None:
    return {"Yes": True, "No": False}.get(value)


def fmt_bool(b: bool) -> str:
    return "Yes" if b else "No"


def parse_number(value: str) -> int | None:
    """RFC 7143 5.1 numerical value: decimal, 0x hex; None if malformed."""
    try:
        if value[:2] in ("0x", "0X"):
            return int(value[2:], 16) if value[2:] else None
        if value.isdigit() and value.isascii():
            return int(value)
    except ValueError:
        pass
    return None


# ------------------------------------------------------------------ results
@record
class SessionParams:
    """Operational parameters in force after login (or a text renegotiation)."""
    header_digest: bool = False
    data_digest: bool = False
    # What we accept in one PDU (our declaration) ...
    max_recv_data_segment_length: int = 8192
    # ... and what we may send (the initiator's declaration).
    max_xmit_data_segment_length: int = 8192
    max_burst_length: int = 262144
    first_burst_length: int = 65536
    immediate_data: bool = True
    initial_r2t: bool = True
    max_outstanding_r2t: int = 1
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True
    error_recovery_level: int = 0
    default_time2wait: int = 2
    default_time2retain: int = 20
    max_connections: int = 1


@record
class TargetPolicy:
    """What this target is willing to agree to; the acceptor side of each rule.

    Numbers are our limits (the result is min/max of these and the offer);
    booleans are our own value in the AND/OR function; digests list what we
    accept.  Defaults accept every common initiator configuration.
    """
    max_recv_data_segment_length: int = 262144
    max_burst_length: int = 16 * 1024 * 1024 - 1
    first_burst_length: int = 16 * 1024 * 1024 - 1
    initial_r2t: bool = False
    immediate_data: bool = True
    max_outstanding_r2t: int = 16
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True
    default_time2wait: int = 2
    default_time2retain: int = 20
    max_connections: int = 1          # one connection per session
    error_recovery_level: int = 0     # only session recovery
    digests: tuple[str, ...] = ("None", "CRC32C")

    def ours(self, key: str):
        return {
            "MaxConnections": self.max_connections,
            "InitialR2T": self.initial_r2t,
            "ImmediateData": self.immediate_data,
            "MaxBurstLength": self.max_burst_length,
            "FirstBurstLength": self.first_burst_length,
            "DefaultTime2Wait": self.default_time2wait,
            "DefaultTime2Retain": self.default_time2retain,
            "MaxOutstandingR2T": self.max_outstanding_r2t,
            "DataPDUInOrder": self.data_pdu_in_order,
            "DataSequenceInOrder": self.data_sequence_in_order,
            "ErrorRecoveryLevel": self.error_recovery_level,
            "IFMarker": False,
            "OFMarker": False,
            "HeaderDigest": self.digests,
            "DataDigest": self.digests,
        }[key]


def negotiate_list(offer: str, acceptable: tuple[str, ...]) -> str:
    """First value of the offer we accept (RFC 7143 6.2.1), else Reject."""
    for v in offer.split(","):
        if v in acceptable:
            return v
    return REJECT


def negotiate_value(d: KeyDef, offer: str, ours) -> tuple[str, object]:
    """(answer text, resulting typed value or None on Reject) for one simple-value key."""
    if d.kind in (Kind.AND, Kind.OR):
        b = parse_bool(offer)
        if b is None:
            return REJECT, None
        res = (b and ours) if d.kind is Kind.AND else (b or ours)
        return fmt_bool(res), res
    n = parse_number(offer)
    if n is None or not d.lo <= n <= d.hi:
        return REJECT, None
    res = min(n, ours) if d.kind is Kind.MIN else max(n, ours)
    return str(res), res


_FIELD = {
    "MaxConnections": "max_connections",
    "InitialR2T": "initial_r2t",
    "ImmediateData": "immediate_data",
    "MaxBurstLength": "max_burst_length",
    "FirstBurstLength": "first_burst_length",
    "DefaultTime2Wait": "default_time2wait",
    "DefaultTime2Retain": "default_time2retain",
    "MaxOutstandingR2T": "max_outstanding_r2t",
    "DataPDUInOrder": "data_pdu_in_order",
    "DataSequenceInOrder": "data_sequence_in_order",
    "ErrorRecoveryLevel": "error_recovery_level",
}


class NegotiationError(Exception):
    """An offer that ends the login (not just a Reject answer)."""


@record
class Negotiation:
    """Operational keys of one login: answers offers, accumulates the result.

    ``respond`` returns the answer value for one offered key, or None when
    the key needs no answer (declarations).  Keys of the login's own business
    (names, SessionType, security) are not handled here.
    """
    policy: TargetPolicy = field(default_factory=TargetPolicy)
    discovery: bool = False
    params: SessionParams = field(default_factory=SessionParams)
    seen: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.params.max_recv_data_segment_length = self.policy.max_recv_data_segment_length

    def respond(self, key: str, value: str) -> str | None:
        if key in self.seen:
            # 6.2: renegotiating a key within one login is a protocol error.
            raise NegotiationError(f"key {key} negotiated twice")
        self.seen.add(key)
        if key in _ALWAYS_IRRELEVANT:
            return IRRELEVANT
        d = KEYS.get(key)
        if d is None:
            return NOT_UNDERSTOOD
        if "I" not in d.sender or d.scope is Scope.FFP or d.kind is Kind.SECURITY:
            return REJECT
        if value in RESERVED_VALUES:
            # An offer of a reserved constant is nonsense; don't echo it back.
            return REJECT
        if d.name == "MaxRecvDataSegmentLength":
            n = parse_number(value)
            if n is None or n < d.lo:
                return REJECT
            self.params.max_xmit_data_segment_length = min(n, d.hi)
            return None
        if d.kind is Kind.DECLARE:
            return None
        if self.discovery and d.discovery_irrelevant:
            return IRRELEVANT
        if d.kind is Kind.LIST:
            answer = negotiate_list(value, self.policy.ours(key))
            if answer != REJECT:
                setattr(self.params, "header_digest" if key == "HeaderDigest" else "data_digest",
                        answer == "CRC32C")
            return answer
        ours = self.policy.ours(key)
        if key == "FirstBurstLength":
            # FirstBurstLength may never exceed MaxBurstLength (13.14).
            ours = min(ours, self.params.max_burst_length)
        answer, res = negotiate_value(d, value, ours)
        if res is not None and key in _FIELD:
            setattr(self.params, _FIELD[key], res)
            if key == "MaxBurstLength" and self.params.first_burst_length > res:
                self.params.first_burst_length = res
        return answer

    def declarations(self) -> list[tuple[str, str]]:
        """What the target declares on its own before full feature phase."""
        return [("MaxRecvDataSegmentLength", str(self.policy.max_recv_data_segment_length))]

    def session_params(self) -> SessionParams:
        p = SessionParams(**vars(self.params))
        p.first_burst_length = min(p.first_burst_length, p.max_burst_length)
        return p
