"""iSCSI PDUs out of a capture: TCP reassembly per flow, then PDU framing.

:func:`capture_pdus` walks the frames of a pcap/pcapng file, reassembles
each direction of each TCP connection (:mod:`scsi_target.protocol.tcpstream`)
and cuts the byte streams into whole PDUs, yielded in the order they
completed (the frame and time of the last byte, as Wireshark shows them).

Digests are switched on when the login the capture shows negotiated them
(the target's last HeaderDigest/DataDigest answer), from the first PDU after
the final Login Response.  A capture that starts mid-session has no login;
there the first full-feature PDU's bytes decide (a CRC32C that matches is
a digest).  After a lost segment, or when the stream stops looking like
iSCSI, the framer waits for a segment that starts with a plausible header.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

from ..protocol.framing import crc32c
from ..protocol.pdu import INITIATOR_OPCODES, Op
from ..protocol.tcpstream import Chunk, TcpReassembler
from .packets import FIN, RST, SYN, SUPPORTED_LINKTYPES, tcp_segment
from .pcapfile import CaptureError, Frame, read_frames

DEFAULT_PORTS = frozenset({3260})
TARGET_OPCODES = frozenset(int(op) for op in Op) - INITIATOR_OPCODES


def crc32c_digest(data) -> int:
    return crc32c(bytes(data))
MAX_DATA_SEGMENT = 16 << 20    # RFC 7143 caps MaxRecvDataSegmentLength at 2**24 - 1


@dataclass(frozen=True, slots=True)
class Connection:
    initiator: str        # "address:port"
    target: str
    index: int = 0        # the n-th connection seen on this address/port pair

    def __str__(self) -> str:
        return f"{self.initiator} -> {self.target}" + (f" #{self.index}" if self.index else "")


@dataclass(slots=True)
class CapturedPdu:
    frame: int
    time: float
    conn: Connection
    from_initiator: bool
    raw: bytes                  # the whole PDU as on the wire (digests included)
    header_digest: bool = False
    data_digest: bool = False

    @property
    def opcode(self) -> int:
        return self.raw[0] & 0x3F

    @property
    def ahs_len(self) -> int:
        return self.raw[4] * 4

    @property
    def data_len(self) -> int:
        return int.from_bytes(self.raw[5:8], "big")

    @property
    def data(self) -> bytes:
        start = 48 + self.ahs_len + (4 if self.header_digest else 0)
        return self.raw[start:start + self.data_len]

    def pdu(self):
        """This PDU in the project's own codec (:mod:`scsi_target.protocol.pdu`)."""
        from ..protocol.pdu import decode_bhs
        return decode_bhs(self.raw[:48], self.raw[48:48 + self.ahs_len], self.data)

    def scapy(self):
        """This PDU as a scapy packet (:mod:`scsi_target.protocol.scapy_iscsi`)."""
        from ..protocol.scapy_iscsi import ISCSI
        return ISCSI(self.raw)


@dataclass
class CaptureStats:
    frames: int = 0
    tcp_segments: int = 0
    connections: int = 0
    pdus: int = 0
    retransmitted_bytes: int = 0
    reordered_segments: int = 0
    lost_bytes: int = 0
    resyncs: int = 0
    skipped_bytes: int = 0
    linktypes: set = field(default_factory=set)


def plausible_header(b, from_initiator: bool | None) -> bool:
    """Whether 48 bytes can be the start of a PDU sent by that side."""
    if len(b) < 48 or b[0] & 0x80:
        return False
    op = b[0] & 0x3F
    allowed = (INITIATOR_OPCODES if from_initiator else TARGET_OPCODES) \
        if from_initiator is not None else (INITIATOR_OPCODES | TARGET_OPCODES)
    if op not in allowed:
        return False
    if op >= 0x20 and b[0] & 0x40:
        return False        # targets never set the immediate bit
    dlen = int.from_bytes(b[5:8], "big")
    return dlen <= MAX_DATA_SEGMENT and b[4] <= 64


class _ConnState:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.full_feature = False
        self.header_digest: bool | None = None
        self.data_digest: bool | None = None
        self.keys: dict[str, str] = {}

    def login_response(self, raw: bytes, data: bytes) -> None:
        for item in data.split(b"\x00"):
            k, sep, v = item.decode("utf-8", "replace").partition("=")
            if sep:
                self.keys[k] = v
        transit, nsg, status_class = raw[1] & 0x80, raw[1] & 0x03, raw[36]
        if transit and nsg == 3 and status_class == 0:
            self.full_feature = True
            self.header_digest = self.keys.get("HeaderDigest", "None") == "CRC32C"
            self.data_digest = self.keys.get("DataDigest", "None") == "CRC32C"


class _Framer:
    """Cuts one direction's in-order bytes into PDUs."""

    def __init__(self, state: _ConnState, from_initiator: bool, stats: CaptureStats,
                 resync: bool) -> None:
        self.state = state
        self.from_initiator = from_initiator
        self.stats = stats
        self.buf = bytearray()
        self.resync = resync

    def feed(self, chunk: Chunk) -> list[CapturedPdu]:
        data = chunk.data
        if chunk.gap:
            self.stats.skipped_bytes += len(self.buf)
            self.buf.clear()
            self.resync = True
        if self.resync:
            if self.buf or not plausible_header(data[:48], self.from_initiator):
                self.stats.skipped_bytes += len(data)
                return []
            self.resync = False
            self.stats.resyncs += 1
        self.buf += data
        out = []
        while True:
            got = self._next(chunk)
            if got is None:
                break
            out.append(got)
        return out

    def _next(self, chunk: Chunk) -> CapturedPdu | None:
        buf, st = self.buf, self.state
        if len(buf) < 48:
            return None
        if not plausible_header(buf[:48], self.from_initiator):
            self.stats.skipped_bytes += len(buf)
            buf.clear()
            self.resync = True
            return None
        ahs = buf[4] * 4
        dlen = int.from_bytes(buf[5:8], "big")
        padded = dlen + (-dlen % 4)
        login = (buf[0] & 0x3F) in (0x03, 0x23)
        hd = dd = False
        if st.full_feature and not login:
            hd = st.header_digest
            if hd is None:      # no login in the capture: the bytes decide
                if len(buf) < 48 + ahs + 4:
                    return None
                hd = int.from_bytes(buf[48 + ahs:52 + ahs], "little") == crc32c_digest(
                    buf[:48 + ahs])
                st.header_digest = hd
            dd = st.data_digest
            if dd is None:
                if not dlen:
                    dd = False
                else:
                    start = 48 + ahs + (4 if hd else 0)
                    if len(buf) < start + padded + 4:
                        return None
                    dd = int.from_bytes(buf[start + padded:start + padded + 4],
                                        "little") == crc32c_digest(buf[start:start + padded])
                    st.data_digest = dd
        elif not st.full_feature and not login:
            # Mid-session capture: full feature phase without a login seen.
            st.full_feature = True
            return self._next(chunk)
        total = 48 + ahs + (4 if hd else 0) + padded + (4 if dd and dlen else 0)
        if len(buf) < total:
            return None
        raw = bytes(buf[:total])
        del buf[:total]
        pdu = CapturedPdu(chunk.frame, chunk.time, st.conn, self.from_initiator, raw,
                          bool(hd), bool(dd and dlen))
        if raw[0] & 0x3F == 0x23:
            st.login_response(raw, pdu.data)
        self.stats.pdus += 1
        return pdu


class _Flow:
    def __init__(self, conn: Connection, initiator_key: tuple, stats: CaptureStats,
                 mid_stream: bool) -> None:
        self.state = _ConnState(conn)
        self.initiator_key = initiator_key
        self.streams = {True: TcpReassembler(), False: TcpReassembler()}
        self.framers = {d: _Framer(self.state, d, stats, mid_stream) for d in (True, False)}
        self.closed = False
        self.fin = {True: False, False: False}


class CaptureReader:
    """Frames in, PDUs out; ``ports=None`` accepts iSCSI on any port."""

    def __init__(self, ports: Iterable[int] | None = DEFAULT_PORTS) -> None:
        self.ports = frozenset(ports) if ports is not None else None
        self.stats = CaptureStats()
        self._flows: dict[tuple, _Flow] = {}
        self._count: dict[tuple, int] = {}
        self._ignored: set[tuple] = set()

    def _flow_for(self, seg) -> tuple[_Flow | None, bool]:
        a, b = (seg.src, seg.sport), (seg.dst, seg.dport)
        key = (a, b) if a < b else (b, a)
        flow = self._flows.get(key)
        syn_only = seg.flags & SYN and not seg.flags & 0x10
        if flow is not None and (not flow.closed or not syn_only):
            return flow, a == flow.initiator_key
        if key in self._ignored and not syn_only:
            return None, False
        # A new connection: who is the target?
        if self.ports is not None:
            if seg.dport in self.ports:
                init = a
            elif seg.sport in self.ports:
                init = b
            else:
                return None, False
        elif syn_only:
            init = a
        else:
            if len(seg.payload) < 48 or not plausible_header(seg.payload, None):
                self._ignored.add(key)
                return None, False
            init = a if seg.payload[0] & 0x3F in INITIATOR_OPCODES else b
        n = self._count.get(key, 0)
        self._count[key] = n + 1
        target = b if init == a else a
        conn = Connection(_addr(init), _addr(target), n)
        flow = _Flow(conn, init, self.stats, mid_stream=not syn_only)
        self._flows[key] = flow
        self._ignored.discard(key)
        self.stats.connections += 1
        return flow, a == init

    def frame(self, fr: Frame) -> list[CapturedPdu]:
        self.stats.frames += 1
        self.stats.linktypes.add(fr.linktype)
        seg = tcp_segment(fr.linktype, fr.data)
        if seg is None:
            return []
        self.stats.tcp_segments += 1
        flow, from_init = self._flow_for(seg)
        if flow is None:
            return []
        stream = flow.streams[from_init]
        if seg.flags & SYN:
            stream.syn(seg.seq)
            if seg.flags & 0x10 == 0:
                flow.closed = False
            return []
        out = []
        for chunk in stream.segment(seg.seq, seg.payload, fr.number, fr.time):
            out += flow.framers[from_init].feed(chunk)
        if seg.flags & (FIN | RST):
            for chunk in stream.finish():
                out += flow.framers[from_init].feed(chunk)
            flow.fin[from_init] = True
            # A SYN on this address pair after both FINs (or a RST) is a new connection.
            flow.closed = bool(seg.flags & RST) or all(flow.fin.values())
        return out

    def finish(self) -> list[CapturedPdu]:
        out = []
        for flow in self._flows.values():
            for d, stream in flow.streams.items():
                for chunk in stream.finish():
                    out += flow.framers[d].feed(chunk)
                self.stats.retransmitted_bytes += stream.retransmitted
                self.stats.reordered_segments += stream.reordered
                self.stats.lost_bytes += stream.lost
        return out


def _addr(a: tuple) -> str:
    host, port = a
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def capture_pdus(path, ports: Iterable[int] | None = DEFAULT_PORTS,
                 stats_out: list | None = None) -> Iterator[CapturedPdu]:
    """Every iSCSI PDU of a capture file, in completion order.

    Raises :class:`CaptureError` for unreadable files and for captures in
    which no iSCSI PDU was found (naming the ports looked at).
    """
    reader = CaptureReader(ports)
    if stats_out is not None:
        stats_out.append(reader.stats)
    for fr in read_frames(path):
        yield from reader.frame(fr)
    yield from reader.finish()
    st = reader.stats
    if not st.pdus:
        if st.frames and not (st.linktypes & SUPPORTED_LINKTYPES):
            raise CaptureError(f"{path}: link type {sorted(st.linktypes)} is not supported "
                               "(Ethernet, loopback, raw IP, Linux cooked)")
        where = "any port" if ports is None else "port " + ", ".join(map(str, sorted(ports)))
        raise CaptureError(f"{path}: no iSCSI PDUs in {st.frames} frames ({where}; "
                           "use --port for a target on another port)")
