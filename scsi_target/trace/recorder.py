"""The trace recorder: every command a LUN map executes, as a trace.

``LunMap.execute`` calls :meth:`Recorder.command` with the command, its
response and the time it started; the recorder writes one ``command`` record
(docs/trace-format.md, source ``recorder``) per call and, optionally, the
same exchanges as iSCSI PDUs in a pcapng file that tshark and
``scsi-replay`` decode — so a session can be traced without tcpdump or root.

The pcapng is synthetic: each I_T nexus gets a made-up TCP connection
(10.0.0.1:40000+n → 10.0.0.2:3260) that starts with a Login exchange naming
the initiator and target, and carries for each command a SCSI Command PDU
(with the data-out as immediate data), Data-In and a SCSI Response, with
consistent CmdSN/StatSN and TCP sequence numbers.  It shows what the SCSI
layer saw, not the real connection's R2Ts, digests or timing of segments.

Recording never fails a command: an error writing the files is logged once
and the recorder stops.
"""
from __future__ import annotations

import json
import logging
import struct
import threading
import time
from typing import IO

from ..protocol import pdu as P
from ..protocol.framing import encode_pdu
from ..scsi.command import Command, Direction, Response
from ..scsi.lunaddr import encode_lun
from .pcapfile import PcapngWriter
from .records import Exchange, Nexus, header, trim_cdb

log = logging.getLogger("scsi_target.recorder")

_DIRECTIONS = {Direction.NONE: "none", Direction.IN: "in", Direction.OUT: "out",
               Direction.BIDI: "bidi"}
FLUSH_EVERY = 256
MAX_SEGMENT = 65000          # TCP payload per synthetic frame (IPv4 total length limit)


class Recorder:
    def __init__(self, trace: IO[str] | None = None, pcapng: IO[bytes] | None = None,
                 clock=time.time) -> None:
        self._trace = trace
        self._pcap = _PduCapture(pcapng) if pcapng is not None else None
        self.clock = clock
        self._lock = threading.Lock()
        self._seq = 0
        self._unflushed = 0
        self.failed = False
        if trace is not None:
            trace.write(json.dumps(header("recorder"), sort_keys=True) + "\n")

    @classmethod
    def open(cls, trace_path: str | None, pcapng_path: str | None) -> "Recorder":
        """Files are created (truncated) here, so a bad path fails before serving."""
        t = open(trace_path, "w", encoding="utf-8") if trace_path else None
        try:
            p = open(pcapng_path, "wb") if pcapng_path else None
        except BaseException:
            if t:
                t.close()
            raise
        return cls(t, p)

    def command(self, cmd: Command, resp: Response, t0: float) -> None:
        if self.failed:
            return
        t1 = self.clock()
        try:
            n = cmd.nexus
            ex = Exchange(0, Nexus(n.initiator, n.target, cmd.lun), trim_cdb(bytes(cmd.cdb)),
                          cmd.expected_length or 0, _DIRECTIONS.get(cmd.direction, "none"),
                          int(cmd.task_attr), bytes(cmd.data_out or b""), int(resp.status), 0,
                          bytes(resp.sense), bytes(resp.data_in), resp.residual, t0, t1,
                          cmd.task_tag)
            with self._lock:
                ex.seq = self._seq
                self._seq += 1
                if self._trace is not None:
                    self._trace.write(json.dumps(ex.to_json(), sort_keys=True) + "\n")
                if self._pcap is not None:
                    self._pcap.exchange(ex)
                self._unflushed += 1
                if self._unflushed >= FLUSH_EVERY:
                    self._flush()
        except Exception:      # invariant 3: a recorder problem never fails the command
            self.failed = True
            log.exception("trace recorder stopped")

    def _flush(self) -> None:
        self._unflushed = 0
        for f in (self._trace, self._pcap.f if self._pcap else None):
            if f is not None:
                f.flush()

    def close(self) -> None:
        with self._lock:
            try:
                if self._trace is not None and not self.failed:
                    self._trace.write(json.dumps({"type": "summary", "commands": self._seq},
                                                 sort_keys=True) + "\n")
            finally:
                for f in (self._trace, self._pcap.f if self._pcap else None):
                    if f is not None:
                        f.close()


class _Flow:
    def __init__(self, n: int) -> None:
        self.src = (bytes([10, 0, 0, 1]), 40000 + n % 20000)
        self.dst = (bytes([10, 0, 0, 2]), 3260)
        self.seq = {True: 1000, False: 5000}
        self.cmdsn = 1
        self.statsn = 1


class _PduCapture:
    """Exchanges → iSCSI PDUs in Ethernet/IPv4/TCP frames of a pcapng file."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.w = PcapngWriter(f)
        self._flows: dict[tuple[str, str], _Flow] = {}
        # Unique across connections, so that a reader matching by ITT alone
        # (as a quick tshark filter does) cannot mix sessions up.
        self._itt = 1

    def _frame(self, flow: _Flow, from_initiator: bool, payload: bytes, flags: int,
               t: float) -> None:
        (sa, sp), (da, dp) = (flow.src, flow.dst) if from_initiator else (flow.dst, flow.src)
        seq = flow.seq[from_initiator]
        ack = flow.seq[not from_initiator]
        tcp = struct.pack(">HHIIBBHHH", sp, dp, seq, ack, 0x50, flags, 65535, 0, 0)
        total = 20 + 20 + len(payload)
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 6, 0, sa, da)
        ip = ip[:10] + struct.pack(">H", _ip_checksum(ip)) + ip[12:]
        eth = (b"\x02\x00\x00\x00\x00\x02" if from_initiator else b"\x02\x00\x00\x00\x00\x01") \
            + (b"\x02\x00\x00\x00\x00\x01" if from_initiator else b"\x02\x00\x00\x00\x00\x02") \
            + b"\x08\x00"
        self.w.write(t, eth + ip + tcp + payload)
        flow.seq[from_initiator] = (seq + len(payload) + (1 if flags & 0x02 else 0)) % (1 << 32)

    def _send(self, flow: _Flow, from_initiator: bool, pdus, t: float) -> None:
        data = b"".join(b"".join(bytes(b) for b in encode_pdu(p)) for p in pdus)
        for i in range(0, len(data), MAX_SEGMENT):
            self._frame(flow, from_initiator, data[i:i + MAX_SEGMENT], 0x18, t)

    def _flow(self, ex: Exchange) -> _Flow:
        key = ex.nexus.it
        flow = self._flows.get(key)
        if flow is None:
            flow = self._flows[key] = _Flow(len(self._flows))
            t = ex.t_command
            self._frame(flow, True, b"", 0x02, t)
            self._frame(flow, False, b"", 0x12, t)
            self._frame(flow, True, b"", 0x10, t)
            ini, _, isid = ex.nexus.initiator.rpartition(",i,0x")
            tgt, _, tpgt = ex.nexus.target.rpartition(",t,0x")
            isid_b = bytes.fromhex(isid.zfill(12))[-6:] if _hex(isid) else bytes(6)
            keys = f"InitiatorName={ini or ex.nexus.initiator}\0TargetName=" \
                   f"{tgt or ex.nexus.target}\0SessionType=Normal\0HeaderDigest=None\0" \
                   "DataDigest=None\0"
            self._send(flow, True, [P.LoginRequest(immediate=True, transit=True, csg=1, nsg=3,
                                                   isid=isid_b, itt=0, cmdsn=flow.cmdsn,
                                                   data=keys.encode())], t)
            tpgt_n = int(tpgt, 16) if _hex(tpgt) else 1
            self._send(flow, False, [P.LoginResponse(
                transit=True, csg=1, nsg=3, isid=isid_b, tsih=len(self._flows), itt=0,
                statsn=0, expcmdsn=flow.cmdsn, maxcmdsn=flow.cmdsn + 64,
                data=f"TargetPortalGroupTag={tpgt_n}\0HeaderDigest=None\0"
                     "DataDigest=None\0".encode())], t)
        return flow

    def exchange(self, ex: Exchange) -> None:
        flow = self._flow(ex)
        lun = int.from_bytes(encode_lun(ex.nexus.lun if 0 <= ex.nexus.lun < 16384 else 0),
                             "big")
        itt = self._itt
        self._itt = (self._itt + 1) & 0x7FFFFFFF or 1
        cdb = ex.cdb
        ahs = b""
        if len(cdb) > 16:
            extra = cdb[16:]
            ahs = struct.pack(">HB", len(extra) + 1, 1) + b"\x00" + extra
            ahs += b"\x00" * (-len(ahs) % 4)
        cmd = P.ScsiCommand(final=True, read=ex.direction in ("in", "bidi"),
                            write=ex.direction in ("out", "bidi"), attr=ex.attr & 7, lun=lun,
                            itt=itt, edtl=ex.edtl, cmdsn=flow.cmdsn, expstatsn=flow.statsn,
                            cdb=cdb[:16].ljust(16, b"\x00"), data=ex.data_out, ahs=ahs)
        flow.cmdsn += 1
        self._send(flow, True, [cmd], ex.t_command)
        out = []
        sn = dict(expcmdsn=flow.cmdsn, maxcmdsn=flow.cmdsn + 64)
        data = ex.data_in
        r = ex.residual
        step = MAX_SEGMENT // 2
        # Status travels in the last Data-In when there is no sense (phase
        # collapse, as targets do): tshark stops dissecting a segment at a
        # short INQUIRY answer, so a separate SCSI Response there goes unseen.
        collapse = bool(data) and not ex.sense and ex.response == 0
        for off in range(0, len(data), step):
            last = off + step >= len(data)
            s_bit = last and collapse
            out.append(P.DataIn(final=last, lun=lun, itt=itt, datasn=len(out), offset=off,
                                has_status=s_bit, status=(ex.status or 0) if s_bit else 0,
                                underflow=s_bit and r > 0, overflow=s_bit and r < 0,
                                residual=abs(r) if s_bit else 0,
                                statsn=flow.statsn if s_bit else 0,
                                data=data[off:off + step], **sn))
        if not collapse:
            sense = struct.pack(">H", len(ex.sense)) + ex.sense if ex.sense else b""
            out.append(P.ScsiResponse(status=ex.status or 0, response=ex.response, itt=itt,
                                      statsn=flow.statsn, expdatasn=len(out), underflow=r > 0,
                                      overflow=r < 0, residual=abs(r), data=sense, **sn))
        flow.statsn += 1
        self._send(flow, False, out, ex.t_response or ex.t_command)


def _hex(s: str) -> bool:
    return bool(s) and all(c in "0123456789abcdefABCDEF" for c in s)


def _ip_checksum(h: bytes) -> int:
    s = sum(struct.unpack(">10H", h))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
