"""Trace records and their JSON-lines form (format ``scsi-trace`` version 1).

A trace file is UTF-8 JSON, one object per line: a ``header`` first, then
``command`` records (one SCSI exchange each) and ``tmf`` records in the order
the commands were issued, optionally a ``summary`` last.  docs/trace-format.md
is the reference; tests/golden/trace/*.jsonl are its test vectors.

Readers accept any 1.x file (unknown keys are ignored, so a 1.y writer may add
fields) and refuse a newer major version with a message saying so.
"""
from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field
from typing import IO, Iterator

FORMAT = "scsi-trace"
VERSION = 1          # major: readers refuse larger ones
MINOR = 0


class TraceFormatError(ValueError):
    """A trace file that does not follow the format; one line for the user."""


@dataclass(frozen=True, slots=True)
class Nexus:
    """I_T_L: the initiator port, the target port and the LUN."""
    initiator: str          # iSCSI initiator port name: "iqn...,i,0x<ISID>" (or address)
    target: str             # target port name: "iqn...,t,0x0001" (or address)
    lun: int
    initiator_addr: str = ""   # "address:port" of the TCP connection, when known
    target_addr: str = ""

    @property
    def it(self) -> tuple[str, str]:
        return self.initiator, self.target

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(slots=True)
class Exchange:
    """One SCSI command and what the target answered."""
    seq: int                       # issue order within the trace, from 0
    nexus: Nexus
    cdb: bytes
    edtl: int = 0                  # expected data transfer length
    direction: str = "none"        # none | in | out | bidi
    attr: int = 1                  # task attribute (1 = SIMPLE)
    data_out: bytes = b""
    status: int | None = None      # None: the trace holds no answer
    response: int = 0              # iSCSI response (0 = completed at target)
    sense: bytes = b""
    data_in: bytes = b""
    residual: int = 0              # > 0 underflow, < 0 overflow
    t_command: float = 0.0         # seconds since the epoch
    t_response: float | None = None
    itt: int | None = None
    cmdsn: int | None = None
    frames: tuple[int, int] | None = None   # capture frames of command and answer

    @property
    def opcode(self) -> int:
        return self.cdb[0] if self.cdb else -1

    @property
    def latency(self) -> float | None:
        return None if self.t_response is None else self.t_response - self.t_command

    @property
    def sense_tuple(self) -> tuple[int, int, int] | None:
        return sense_key_asc_ascq(self.sense)

    def to_json(self) -> dict:
        d = {"type": "command", "seq": self.seq, "nexus": self.nexus.to_json(),
             "cdb": self.cdb.hex(), "opcode": self.opcode, "name": command_name(self.cdb),
             "edtl": self.edtl, "direction": self.direction, "attr": self.attr,
             "status": self.status, "response": self.response,
             "residual": self.residual, "t_command": round(self.t_command, 9)}
        if self.data_out:
            d["data_out"] = _b64(self.data_out)
        if self.data_in:
            d["data_in"] = _b64(self.data_in)
        if self.sense:
            d["sense"] = self.sense.hex()
            st = self.sense_tuple
            if st:
                d["sense_key"], d["asc"], d["ascq"] = st
        if self.t_response is not None:
            d["t_response"] = round(self.t_response, 9)
            d["latency"] = round(self.t_response - self.t_command, 9)
        if self.itt is not None:
            d["itt"] = self.itt
        if self.cmdsn is not None:
            d["cmdsn"] = self.cmdsn
        if self.frames is not None:
            d["frames"] = list(self.frames)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Exchange":
        n = d["nexus"]
        nexus = Nexus(str(n["initiator"]), str(n["target"]), int(n["lun"]),
                      str(n.get("initiator_addr", "")), str(n.get("target_addr", "")))
        frames = d.get("frames")
        return cls(int(d["seq"]), nexus, bytes.fromhex(d["cdb"]), int(d.get("edtl", 0)),
                   str(d.get("direction", "none")), int(d.get("attr", 1)),
                   _unb64(d.get("data_out", "")),
                   None if d.get("status") is None else int(d["status"]),
                   int(d.get("response", 0)), bytes.fromhex(d.get("sense", "")),
                   _unb64(d.get("data_in", "")), int(d.get("residual", 0)),
                   float(d.get("t_command", 0.0)),
                   None if d.get("t_response") is None else float(d["t_response"]),
                   d.get("itt"), d.get("cmdsn"),
                   tuple(frames) if frames else None)


@dataclass(slots=True)
class TmfRecord:
    seq: int
    nexus: Nexus
    function: int
    response: int | None = None
    referenced_itt: int | None = None
    t_request: float = 0.0
    t_response: float | None = None

    def to_json(self) -> dict:
        d = {"type": "tmf", "seq": self.seq, "nexus": self.nexus.to_json(),
             "function": self.function, "response": self.response,
             "t_request": round(self.t_request, 9)}
        if self.referenced_itt is not None:
            d["referenced_itt"] = self.referenced_itt
        if self.t_response is not None:
            d["t_response"] = round(self.t_response, 9)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "TmfRecord":
        n = d["nexus"]
        return cls(int(d["seq"]), Nexus(n["initiator"], n["target"], int(n["lun"]),
                                        n.get("initiator_addr", ""), n.get("target_addr", "")),
                   int(d["function"]), d.get("response"), d.get("referenced_itt"),
                   float(d.get("t_request", 0.0)), d.get("t_response"))


@dataclass
class Trace:
    header: dict = field(default_factory=dict)
    commands: list[Exchange] = field(default_factory=list)
    tmfs: list[TmfRecord] = field(default_factory=list)
    summary: dict | None = None

    @property
    def nexuses(self) -> list[Nexus]:
        seen: dict[tuple, Nexus] = {}
        for c in self.commands:
            seen.setdefault((c.nexus.initiator, c.nexus.target, c.nexus.lun), c.nexus)
        return list(seen.values())


def header(source: str, **extra) -> dict:
    h = {"type": "header", "format": FORMAT, "version": f"{VERSION}.{MINOR}",
         "source": source}
    h.update(extra)
    return h


def write_trace(trace: Trace, f: IO[str]) -> None:
    f.write(json.dumps(trace.header, sort_keys=True) + "\n")
    items = sorted([(c.seq, 0, c) for c in trace.commands] + [(t.seq, 1, t) for t in trace.tmfs],
                   key=lambda x: (x[0], x[1]))
    for _, _, rec in items:
        f.write(json.dumps(rec.to_json(), sort_keys=True) + "\n")
    if trace.summary is not None:
        f.write(json.dumps({"type": "summary", **trace.summary}, sort_keys=True) + "\n")


class TraceWriter:
    """Writes a trace as it happens: the header now, one line per record, the
    summary at :meth:`close` (a writer cut short leaves a readable file)."""

    def __init__(self, f: IO[str], source: str, **header_fields) -> None:
        self.f = f
        self.count = 0
        f.write(json.dumps(header(source, **header_fields), sort_keys=True) + "\n")

    def write(self, rec: "Exchange | TmfRecord") -> None:
        self.f.write(json.dumps(rec.to_json(), sort_keys=True) + "\n")
        self.count += 1

    def close(self) -> None:
        self.f.write(json.dumps({"type": "summary", "commands": self.count},
                                sort_keys=True) + "\n")
        self.f.close()


def read_trace(f: IO[str], name: str = "trace") -> Trace:
    trace = Trace()
    for lineno, rec in _records(f, name):
        kind = rec.get("type")
        try:
            if lineno == 1:
                if kind != "header" or rec.get("format") != FORMAT:
                    raise TraceFormatError(f"{name}: line 1 is not a {FORMAT} header")
                major = str(rec.get("version", "")).partition(".")[0]
                if not major.isdigit():
                    raise TraceFormatError(f"{name}: bad version {rec.get('version')!r}")
                if int(major) > VERSION:
                    raise TraceFormatError(f"{name}: trace format version {rec['version']} "
                                           f"is newer than this reader ({VERSION}.{MINOR})")
                trace.header = rec
            elif kind == "command":
                trace.commands.append(Exchange.from_json(rec))
            elif kind == "tmf":
                trace.tmfs.append(TmfRecord.from_json(rec))
            elif kind == "summary":
                trace.summary = rec
            # Other types: added by a later 1.x writer; skipped.
        except TraceFormatError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise TraceFormatError(f"{name}: line {lineno}: bad {kind} record "
                                   f"({type(e).__name__}: {e})") from None
    if not trace.header:
        raise TraceFormatError(f"{name}: empty trace (no header line)")
    return trace


def _records(f: IO[str], name: str) -> Iterator[tuple[int, dict]]:
    for lineno, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise TraceFormatError(f"{name}: line {lineno} is not JSON ({e.msg})") from None
        except RecursionError:
            # json decodes nested arrays recursively; no record nests more than twice.
            raise TraceFormatError(f"{name}: line {lineno}: JSON nested too deeply") from None
        except ValueError as e:
            # Python's limit on int digits (CVE-2020-10735) surfaces as a bare ValueError.
            raise TraceFormatError(f"{name}: line {lineno} is not usable JSON ({e})") from None
        if not isinstance(rec, dict):
            raise TraceFormatError(f"{name}: line {lineno} is not a JSON object")
        yield lineno, rec


def looks_like_trace(head: bytes) -> bool:
    return head.lstrip()[:1] == b"{"


def sense_key_asc_ascq(sense: bytes) -> tuple[int, int, int] | None:
    if len(sense) >= 14 and sense[0] & 0x7F in (0x70, 0x71):
        return sense[2] & 0x0F, sense[12], sense[13]
    if len(sense) >= 4 and sense[0] & 0x7F in (0x72, 0x73):
        return sense[1] & 0x0F, sense[2], sense[3]
    return None


_SA_OPCODES = (0x9E, 0x9F, 0xA3, 0xA4, 0x5E, 0x5F, 0x83, 0x84)


def command_name(cdb: bytes) -> str:
    from ..scsi.layouts.rsoc import command_name as _name
    if not cdb:
        return ""
    sa = cdb[1] & 0x1F if cdb[0] in _SA_OPCODES and len(cdb) > 1 else None
    return _name(cdb[0], sa) or f"0x{cdb[0]:02X}"


def trim_cdb(cdb: bytes) -> bytes:
    """The CDB cut to its own length (SAM-5 5.2 group codes; 7Fh says it in byte 7).

    iSCSI always carries 16 bytes; a trace keeps what the command is.
    """
    if not cdb:
        return cdb
    op = cdb[0]
    n = {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}.get(op >> 5)
    if op == 0x7F and len(cdb) >= 8:
        n = 8 + cdb[7]
    return bytes(cdb[:n]) if n is not None and n < len(cdb) else bytes(cdb)


def _b64(b) -> str:
    return base64.b64encode(bytes(b)).decode("ascii")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s, validate=True) if s else b""
