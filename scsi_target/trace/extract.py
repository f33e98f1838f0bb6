"""Captured PDUs → SCSI exchanges per I_T_L nexus (sans I/O).

:class:`TraceBuilder` follows each connection's login (initiator and target
names, ISID, TPGT), then every task by its Initiator Task Tag: the command
PDU with its CDB (plus an Extended CDB AHS) and immediate data, Data-Out
placed at its buffer offsets, Data-In likewise, and the status from the SCSI
Response or a Data-In with the S bit.  Tasks still open when the capture
ends are kept with ``status`` None.
"""
from __future__ import annotations

from typing import Iterable

from ..protocol import pdu as P
from ..scsi.lunaddr import decode_lun
from .pdus import CapturedPdu, Connection
from .records import Exchange, Nexus, TmfRecord, Trace, header, trim_cdb


class _Task:
    __slots__ = ("ex", "data_out", "data_in", "out_len", "in_len")

    def __init__(self, ex: Exchange) -> None:
        self.ex = ex
        self.data_out = bytearray()
        self.data_in = bytearray()


def _place(buf: bytearray, offset: int, data) -> None:
    end = offset + len(data)
    if len(buf) < end:
        buf.extend(bytes(end - len(buf)))
    buf[offset:end] = data


class _Session:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.initiator = ""
        self.target = ""
        self.isid = b""
        self.tpgt = 1
        self.tasks: dict[int, _Task] = {}
        self.tmfs: dict[int, TmfRecord] = {}

    def nexus(self, lun: int) -> Nexus:
        if self.initiator:
            ini = f"{self.initiator},i,0x{self.isid.hex()}"
        else:
            ini = self.conn.initiator
        tgt = f"{self.target},t,0x{self.tpgt:04x}" if self.target else self.conn.target
        return Nexus(ini, tgt, lun, self.conn.initiator, self.conn.target)


class TraceBuilder:
    def __init__(self) -> None:
        self._sessions: dict[Connection, _Session] = {}
        self._seq = 0
        self.commands: list[Exchange] = []
        self.tmfs: list[TmfRecord] = []
        self.pdus = 0
        self.undecodable = 0

    def feed(self, cp: CapturedPdu) -> None:
        self.pdus += 1
        s = self._sessions.get(cp.conn)
        if s is None:
            s = self._sessions[cp.conn] = _Session(cp.conn)
        try:
            pdu = cp.pdu()
        except P.PduFormatError:
            self.undecodable += 1
            return
        handler = _HANDLERS.get(type(pdu))
        if handler is not None:
            handler(self, s, cp, pdu)

    # -- login: names for the nexus ------------------------------------
    def _login_req(self, s: _Session, cp: CapturedPdu, pdu: P.LoginRequest) -> None:
        s.isid = bytes(pdu.isid)
        for k, v in _keys(cp.data):
            if k == "InitiatorName":
                s.initiator = v
            elif k == "TargetName":
                s.target = v

    def _login_resp(self, s: _Session, cp: CapturedPdu, pdu: P.LoginResponse) -> None:
        for k, v in _keys(cp.data):
            if k == "TargetPortalGroupTag" and v.isdigit():
                s.tpgt = int(v)

    # -- SCSI tasks ----------------------------------------------------
    def _command(self, s: _Session, cp: CapturedPdu, pdu: P.ScsiCommand) -> None:
        cdb = bytes(pdu.cdb) + _extended_cdb(bytes(pdu.ahs))
        cdb = trim_cdb(cdb)
        direction = {(False, False): "none", (True, False): "in", (False, True): "out",
                     (True, True): "bidi"}[(pdu.read, pdu.write)]
        ex = Exchange(self._seq, s.nexus(decode_lun(pdu.lun.to_bytes(8, "big"))), cdb,
                      pdu.edtl, direction, pdu.attr, t_command=cp.time, itt=pdu.itt,
                      cmdsn=pdu.cmdsn, frames=(cp.frame, cp.frame))
        self._seq += 1
        t = _Task(ex)
        if pdu.data:
            _place(t.data_out, 0, pdu.data)
        s.tasks[pdu.itt] = t
        self.commands.append(ex)

    def _data_out(self, s: _Session, cp: CapturedPdu, pdu: P.DataOut) -> None:
        t = s.tasks.get(pdu.itt)
        if t is not None:
            _place(t.data_out, pdu.offset, pdu.data)

    def _data_in(self, s: _Session, cp: CapturedPdu, pdu: P.DataIn) -> None:
        t = s.tasks.get(pdu.itt)
        if t is None:
            return
        _place(t.data_in, pdu.offset, pdu.data)
        if pdu.has_status:
            residual = pdu.residual if pdu.underflow else -pdu.residual if pdu.overflow else 0
            self._finish(s, t, cp, pdu.status, 0, b"", residual)

    def _response(self, s: _Session, cp: CapturedPdu, pdu: P.ScsiResponse) -> None:
        t = s.tasks.get(pdu.itt)
        if t is None:
            return
        data = bytes(pdu.data)
        sense = b""
        if len(data) >= 2:
            n = int.from_bytes(data[:2], "big")
            sense = data[2:2 + n]
        residual = pdu.residual if pdu.underflow else -pdu.residual if pdu.overflow else 0
        self._finish(s, t, cp, pdu.status, pdu.response, sense, residual)

    def _finish(self, s: _Session, t: _Task, cp: CapturedPdu, status: int, response: int,
                sense: bytes, residual: int) -> None:
        ex = t.ex
        ex.status, ex.response, ex.sense, ex.residual = status, response, sense, residual
        ex.t_response = cp.time
        ex.frames = (ex.frames[0], cp.frame)
        ex.data_out = bytes(t.data_out)
        ex.data_in = bytes(t.data_in)
        s.tasks.pop(ex.itt, None)

    # -- task management ------------------------------------------------
    def _tmf_req(self, s: _Session, cp: CapturedPdu, pdu: P.TaskMgmtRequest) -> None:
        rec = TmfRecord(self._seq, s.nexus(decode_lun(pdu.lun.to_bytes(8, "big"))),
                        pdu.function, None,
                        pdu.rtt if pdu.rtt != P.RESERVED_TAG else None, cp.time)
        self._seq += 1
        s.tmfs[pdu.itt] = rec
        self.tmfs.append(rec)

    def _tmf_resp(self, s: _Session, cp: CapturedPdu, pdu: P.TaskMgmtResponse) -> None:
        rec = s.tmfs.pop(pdu.itt, None)
        if rec is not None:
            rec.response, rec.t_response = pdu.response, cp.time

    # -- the end ------------------------------------------------------------
    def trace(self, **header_fields) -> Trace:
        for s in self._sessions.values():
            for t in s.tasks.values():      # unanswered: keep what was sent
                t.ex.data_out = bytes(t.data_out)
                t.ex.data_in = bytes(t.data_in)
        answered = sum(1 for c in self.commands if c.status is not None)
        return Trace(header("capture", **header_fields), list(self.commands), list(self.tmfs),
                     {"commands": len(self.commands), "answered": answered,
                      "tmfs": len(self.tmfs), "pdus": self.pdus,
                      "connections": len(self._sessions)})


_HANDLERS = {P.LoginRequest: TraceBuilder._login_req, P.LoginResponse: TraceBuilder._login_resp,
             P.ScsiCommand: TraceBuilder._command, P.DataOut: TraceBuilder._data_out,
             P.DataIn: TraceBuilder._data_in, P.ScsiResponse: TraceBuilder._response,
             P.TaskMgmtRequest: TraceBuilder._tmf_req,
             P.TaskMgmtResponse: TraceBuilder._tmf_resp}


def _extended_cdb(ahs: bytes) -> bytes:
    """CDB bytes 16.. from an Extended CDB AHS (RFC 7143 11.2.2.3), if any."""
    pos = 0
    while pos + 4 <= len(ahs):
        alen, atype = int.from_bytes(ahs[pos:pos + 2], "big"), ahs[pos + 2]
        if atype == 1 and alen:
            return ahs[pos + 4:pos + 3 + alen]     # after the reserved byte
        pos += (3 + alen + 3) // 4 * 4
    return b""


def _keys(data: bytes) -> list[tuple[str, str]]:
    out = []
    for item in bytes(data).split(b"\x00"):
        k, sep, v = item.decode("utf-8", "replace").partition("=")
        if sep:
            out.append((k, v))
    return out


def trace_from_pdus(pdus: Iterable[CapturedPdu], **header_fields) -> Trace:
    b = TraceBuilder()
    for cp in pdus:
        b.feed(cp)
    return b.trace(**header_fields)


def trace_from_capture(path, ports=None, any_port: bool = False, **header_fields) -> Trace:
    """The trace of a capture file: iSCSI on ``ports`` (default 3260) or on any port."""
    from .pdus import DEFAULT_PORTS, capture_pdus
    ports = None if any_port else DEFAULT_PORTS if ports is None else ports
    from pathlib import Path
    return trace_from_pdus(capture_pdus(path, ports=ports), capture=Path(path).name,
                           **header_fields)
