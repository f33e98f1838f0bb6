"""The commands of scsi-shell: argument parsing, the CDB to send, the decoded answer.

Each command is a function ``(session, args) -> Out`` registered with its own
argparse parser; CDBs and decoders come from :mod:`scsi_target.scsi.layouts`,
so nothing here knows a byte offset.
"""
from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from scsi_target.scsi.command import Status
from scsi_target.scsi.layouts import capacity as LC, cdbs as C, inquiry as LI, mode as LM
from scsi_target.scsi.layouts import rsoc as LR, tape as LT, vpd as LV
from scsi_target.scsi.layouts.fields import to_jsonable
from scsi_target.scsi.layouts.luns import ReportLuns
from scsi_target.scsi.layouts.sense import SenseData, decode_sense

from .shell_backend import Backend, Reply, ShellError, UsageError

MAX_READ_BYTES = 64 << 20       # a console read or write is for looking, not bulk copies


class CheckCondition(ShellError):
    """The command ended in CHECK CONDITION; carries the decoded sense."""
    code = 1

    def __init__(self, sense: SenseData | None, raw: bytes) -> None:
        self.sense = sense
        self.raw = raw
        if sense is None:
            text = f"CHECK CONDITION (sense data not decodable: {raw.hex() or 'none'})"
        else:
            text = f"CHECK CONDITION: {sense.summary()}"
        super().__init__(text)


class NotSupported(ShellError):
    code = 1


@dataclass
class Out:
    """What a command shows: a title, then named fields, a table, raw bytes or text."""
    title: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    data: bytes | None = None
    text: str = ""
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.title:
            out["title"] = self.title
        if self.fields:
            out["fields"] = to_jsonable(self.fields)
        if self.columns:
            out["table"] = [dict(zip(self.columns, (to_jsonable(c) for c in row)))
                            for row in self.rows]
        if self.data is not None:
            out["data"] = self.data.hex()
        if self.text:
            out["text"] = self.text
        if self.notes:
            out["notes"] = self.notes
        return out


class ArgParser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting the console."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (try 'help {self.prog}')")

    def exit(self, status: int = 0, message: str | None = None):  # type: ignore[override]
        raise UsageError(message.strip() if message else f"{self.prog}: bad arguments")


@dataclass
class Command:
    name: str
    parser: ArgParser
    run: Callable[["Session", argparse.Namespace], Out]
    summary: str
    group: str

    @property
    def options(self) -> list[str]:
        return sorted(o for a in self.parser._actions for o in a.option_strings)


COMMANDS: dict[str, Command] = {}


_VPD_ALIASES = {"sv": 0x00, "sn": 0x80, "di": 0x83, "tpc": 0x8F, "bl": 0xB0, "bdc": 0xB1,
                "lbp": 0xB2}


def hex_code(text: str) -> int:
    """Page codes are hex in every SCSI document: '83', '0x83' and '83h' all mean 83h."""
    t = text.strip().lower()
    if t in _VPD_ALIASES:
        return _VPD_ALIASES[t]
    t = t[2:] if t.startswith("0x") else (t[:-1] if t.endswith("h") else t)
    try:
        return int(t, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a hex page code: {text!r}") from None


def number(text: str) -> int:
    """Decimal, 0x-prefixed hex or h-suffixed hex (SCSI documents write 83h)."""
    t = text.strip().lower()
    try:
        if t.endswith("h") and len(t) > 1:
            return int(t[:-1], 16)
        return int(t, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def command(name: str, summary: str, group: str = "general"):
    def register(fn):
        p = ArgParser(prog=name, description=summary, add_help=False)
        for spec in getattr(fn, "_args", []):
            p.add_argument(*spec[0], **spec[1])
        COMMANDS[name] = Command(name, p, fn, summary, group)
        return fn
    return register


def arg(*names: str, **kw):
    def add(fn):
        fn._args = [(names, kw)] + getattr(fn, "_args", [])
        return fn
    return add


class Session:
    """The backend plus what the console remembers (block size, last sense)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.block_size: int | None = None
        self._device_type: int | None = None

    def run(self, cdb: bytes, *, read_length: int = 0, data_out: bytes | None = None,
            check: bool = True, notes: list[str] | None = None, lun: int | None = None) -> Reply:
        r = self.backend.execute(cdb, read_length=read_length, data_out=data_out, lun=lun)
        if notes is not None:
            for s in r.ua_seen or []:
                try:
                    notes.append(f"unit attention reported and cleared: {decode_sense(s).asc_name}")
                except ValueError:
                    pass
        if check:
            raise_for_status(r)
        return r

    def device_type(self) -> int:
        if self._device_type is None:
            r = self.run(C.inquiry(alloc=36), read_length=36)
            self._device_type = LI.StandardInquiry.unpack(r.data).device_type
        return self._device_type

    def get_block_size(self) -> int:
        if self.block_size is None:
            r = self.run(C.read_capacity16(32), read_length=32, check=False)
            if r.good:
                self.block_size = LC.ReadCapacity16.unpack(r.data).block_size
            else:
                r = self.run(C.read_capacity10(), read_length=8)
                self.block_size = LC.ReadCapacity10.unpack(r.data).block_size
        if not self.block_size:
            raise ShellError("the LUN reports a block size of 0")
        return self.block_size


def raise_for_status(r: Reply) -> None:
    if r.status == Status.GOOD:
        return
    if r.status == Status.CHECK_CONDITION:
        try:
            sense = decode_sense(r.sense)
        except ValueError:
            sense = None
        raise CheckCondition(sense, r.sense)
    try:
        name = Status(r.status).name.replace("_", " ")
    except ValueError:
        name = f"0x{r.status:02x}"
    raise ShellError(f"SCSI status {name}")


def parse_line(line: str) -> list[list[str]]:
    """Split a console line into commands (';' separates them outside quotes)."""
    try:
        lex = shlex.shlex(line, posix=True, punctuation_chars=";")
        lex.whitespace_split = True
        lex.commenters = "#"
        words = list(lex)
    except ValueError as e:
        raise UsageError(f"cannot parse the line: {e}") from None
    out: list[list[str]] = [[]]
    for w in words:
        if w and set(w) == {";"}:
            out.extend([] for _ in w)
        else:
            out[-1].append(w)
    return [c for c in out if c]


# ======================================================================= general
@command("inq", "INQUIRY: standard data, or a VPD page with --vpd")
@arg("--vpd", type=hex_code, metavar="PAGE",
     help="VPD page code in hex (0, 80, 83h, 0xb0) or sv/sn/di/tpc/bl/bdc/lbp")
def cmd_inq(s: Session, a) -> Out:
    notes: list[str] = []
    if a.vpd is None:
        r = s.run(C.inquiry(alloc=255), read_length=255, notes=notes)
        inq = LI.StandardInquiry.unpack(r.data)
        f = {k: v for k, v in inq.items() if k != "vendor_specific"}
        f["device_type"] = f"{inq.device_type:02x}h ({inq.device_type_name})"
        f["version_descriptors"] = [f"{v:04x}h" for v in inq.version_descriptors]
        return Out("Standard INQUIRY data", f, notes=notes)
    if not 0 <= a.vpd <= 0xFF:
        raise UsageError("inq: a VPD page code is 0..255")
    r = s.run(C.inquiry(True, a.vpd, alloc=0xFFFF), read_length=0xFFFF, notes=notes)
    dec = LV.decode_page(r.data)
    title = f"VPD page {a.vpd:02x}h {LV.PAGE_NAMES.get(a.vpd, '')}".rstrip()
    if a.vpd == LV.PAGE_DEVICE_ID:
        rows = [[d.to_dict()[k] for k in ("type", "association", "code_set", "piv", "value")]
                for d in dec.decoded]  # type: ignore[union-attr]
        return Out(title, columns=["type", "association", "code set", "PIV", "value"], rows=rows,
                   notes=notes)
    if a.vpd == LV.PAGE_SUPPORTED:
        return Out(title, columns=["page", "name"],
                   rows=[[f"{p:02x}h", LV.PAGE_NAMES.get(p, "")] for p in dec.decoded],  # type: ignore[union-attr]
                   notes=notes)
    return Out(title, dec.fields, notes=notes)


@command("readcap", "READ CAPACITY (16), falling back to (10)")
def cmd_readcap(s: Session, a) -> Out:
    notes: list[str] = []
    r = s.run(C.read_capacity16(32), read_length=32, check=False, notes=notes)
    if r.good:
        rc = LC.ReadCapacity16.unpack(r.data)
        f: dict[str, Any] = {"blocks": rc.blocks, **dict(rc.items())}
        s.block_size = rc.block_size
        title = "READ CAPACITY (16)"
    else:
        r = s.run(C.read_capacity10(), read_length=8, notes=notes)
        rc10 = LC.ReadCapacity10.unpack(r.data)
        f = {"blocks": rc10.last_lba + 1, **dict(rc10.items())}
        s.block_size = rc10.block_size
        title = "READ CAPACITY (10)"
    f["bytes"] = f["blocks"] * f["block_size"]
    return Out(title, f, notes=notes)


@command("luns", "REPORT LUNS")
def cmd_luns(s: Session, a) -> Out:
    r = s.run(C.report_luns(4096), read_length=4096)
    rl = ReportLuns.unpack(r.data)
    return Out("REPORT LUNS", columns=["LUN", "address"],
               rows=[[n, e.hex()] for n, e in zip(rl.numbers, rl.entries)])


@command("tur", "TEST UNIT READY")
def cmd_tur(s: Session, a) -> Out:
    notes: list[str] = []
    s.run(C.test_unit_ready(), notes=notes)
    return Out(text="ready", notes=notes)


@command("sense", "REQUEST SENSE, decoded")
@arg("--desc", action="store_true", help="ask for descriptor format")
def cmd_sense(s: Session, a) -> Out:
    r = s.run(C.request_sense(252, a.desc), read_length=252, check=True)
    if not r.data:
        return Out(text="no sense data")
    sd = decode_sense(r.data)
    return Out("REQUEST SENSE", sd.to_dict(), text=sd.summary())


_PAGE_ALIASES = {"all": 0x3F, "rw": 0x01, "error-recovery": 0x01, "caching": 0x08, "control": 0x0A,
                 "compression": 0x0F, "device-config": 0x10, "iec": 0x1C, "exceptions": 0x1C}


def page_code(text: str) -> int:
    if text.lower() in _PAGE_ALIASES:
        return _PAGE_ALIASES[text.lower()]
    v = hex_code(text)
    if not 0 <= v <= 0x3F:
        raise argparse.ArgumentTypeError(f"page code {text} is not 0..3Fh")
    return v


@command("modesense", "MODE SENSE(10) (or (6) with --six): header, block descriptors, pages")
@arg("page", type=page_code, metavar="PAGE",
     help="page code in hex (8, 0a, 1ch) or all/caching/control/rw/iec/compression/device-config")
@arg("--sub", type=number, default=0, metavar="N", help="subpage (FFh: all subpages)")
@arg("--pc", choices=sorted(LM.PC_NAMES), default="current", help="page control")
@arg("--six", action="store_true", help="use MODE SENSE(6)")
@arg("--dbd", action="store_true", help="no block descriptors")
def cmd_modesense(s: Session, a) -> Out:
    pc = LM.PC_NAMES[a.pc]
    if a.six:
        r = s.run(C.mode_sense6(a.page, a.sub, pc, dbd=a.dbd, alloc=255), read_length=255)
    else:
        r = s.run(C.mode_sense10(a.page, a.sub, pc, dbd=a.dbd, alloc=0xFFFF), read_length=0xFFFF)
    # Block descriptors of sequential-access devices carry a density code.
    mp = LM.ModeParameters.unpack(r.data, not a.six, sequential=s.device_type() == 0x01)
    h = mp.header
    f: dict[str, Any] = {"mode_data_length": h.mode_data_length, "medium_type": h.medium_type,
                         "device_specific": f"0x{h.device_specific:02x}", "wp": h.wp,
                         "block_descriptor_length": h.block_descriptor_length}
    for i, bd in enumerate(mp.block_descriptors):
        f[f"block_descriptor[{i}]"] = bd.to_dict()
    for p in mp.pages:
        dec = p.decoded()
        if dec is None:
            f[f"{p.code:02x}h {p.name}"] = p.params.hex()
        else:
            f[f"{p.code:02x}h {p.name}"] = {k: v for k, v in dec.to_dict().items()
                                            if k not in ("page_code", "page_length")}
    return Out(f"MODE SENSE({6 if a.six else 10}) page {a.page:02x}h, {a.pc} values", f)


@command("read", "READ(16) COUNT blocks at LBA: hexdump, or to a file with --out")
@arg("lba", type=number)
@arg("count", type=number)
@arg("--out", metavar="FILE", help="write the data to FILE instead of dumping it")
def cmd_read(s: Session, a) -> Out:
    bs = s.get_block_size()
    if a.count < 0 or a.lba < 0:
        raise UsageError("read: LBA and COUNT must not be negative")
    if a.count * bs > MAX_READ_BYTES:
        raise UsageError(f"read: at most {MAX_READ_BYTES >> 20} MiB per command")
    r = s.run(C.read16(a.lba, a.count), read_length=a.count * bs)
    if a.out:
        try:
            Path(a.out).write_bytes(r.data)
        except OSError as e:
            raise ShellError(f"read: cannot write {a.out}: {e.strerror}") from None
        return Out(text=f"{len(r.data)} bytes from LBA {a.lba} written to {a.out}")
    return Out(f"LBA {a.lba}, {a.count} block(s) of {bs} bytes", data=r.data)


@command("write", "WRITE(16) at LBA: a repeated byte (--pattern) or a file's contents")
@arg("lba", type=number)
@arg("--pattern", type=number, metavar="BYTE", help="fill byte (0..255)")
@arg("--file", metavar="FILE", help="data to write (padded with zeros to whole blocks)")
@arg("--count", type=number, metavar="N", help="blocks to write (default 1 for --pattern, "
     "the whole file for --file)")
def cmd_write(s: Session, a) -> Out:
    if (a.pattern is None) == (a.file is None):
        raise UsageError("write: give exactly one of --pattern BYTE and --file FILE")
    bs = s.get_block_size()
    if a.pattern is not None:
        if not 0 <= a.pattern <= 255:
            raise UsageError("write: --pattern is a byte value 0..255")
        n = 1 if a.count is None else a.count
        if n * bs > MAX_READ_BYTES:
            raise UsageError(f"write: at most {MAX_READ_BYTES >> 20} MiB per command")
        data = bytes([a.pattern]) * (n * bs)
    else:
        try:
            data = Path(a.file).read_bytes()
        except OSError as e:
            raise ShellError(f"write: cannot read {a.file}: {e.strerror}") from None
        if len(data) > MAX_READ_BYTES:
            raise UsageError(f"write: at most {MAX_READ_BYTES >> 20} MiB per command")
        n = -(-len(data) // bs) if a.count is None else a.count
        data = data[:n * bs].ljust(n * bs, b"\x00")
    if n <= 0:
        raise UsageError("write: nothing to write (count is 0)")
    s.run(C.write16(a.lba, n), data_out=data)
    return Out(text=f"wrote {n} block(s) ({len(data)} bytes) at LBA {a.lba}")


@command("raw", "send any CDB (hex); --in N reads N bytes, --data HEX sends data-out")
@arg("cdb", metavar="HEXCDB", nargs="+", help="the CDB as hex digits (may be split in words)")
@arg("--in", dest="read", type=number, default=0, metavar="N", help="data-in length")
@arg("--out", metavar="FILE", help="write data-in to FILE")
@arg("--data", metavar="HEX", help="data-out bytes as hex")
def cmd_raw(s: Session, a) -> Out:
    try:
        cdb = bytes.fromhex("".join(a.cdb).replace(":", ""))
    except ValueError:
        raise UsageError(f"raw: {' '.join(a.cdb)!r} is not hex") from None
    if not 6 <= len(cdb) <= 260:
        raise UsageError(f"raw: a CDB is 6..260 bytes, this one is {len(cdb)}")
    if a.out and a.data:
        raise UsageError("raw: --out (data-in) and --data (data-out) exclude each other")
    data_out = None
    if a.data is not None:
        try:
            data_out = bytes.fromhex(a.data)
        except ValueError:
            raise UsageError("raw: --data is not hex") from None
    if a.read < 0 or a.read > MAX_READ_BYTES:
        raise UsageError("raw: --in out of range")
    r = s.run(cdb, read_length=a.read, data_out=data_out)
    f = {"status": Status(r.status).name, "residual": r.residual, "bytes": len(r.data)}
    if a.out:
        try:
            Path(a.out).write_bytes(r.data)
        except OSError as e:
            raise ShellError(f"raw: cannot write {a.out}: {e.strerror}") from None
        return Out(f"CDB {cdb.hex()}", f, text=f"{len(r.data)} bytes written to {a.out}")
    return Out(f"CDB {cdb.hex()}", f, data=r.data if r.data else None)


@command("rsoc", "REPORT SUPPORTED OPERATION CODES (all commands, with timeouts)")
def cmd_rsoc(s: Session, a) -> Out:
    r = s.run(C.report_supported_opcodes(0, rctd=True, alloc=65536), read_length=65536)
    allc = LR.AllCommands.unpack(r.data)
    rows = []
    for d in allc.descriptors:
        t = d.timeouts
        rows.append([f"{d.opcode:02x}h", f"{d.service_action:02x}h" if d.servactv else "",
                     LR.command_name(d.opcode, d.service_action if d.servactv else None),
                     d.cdb_length, t.nominal_timeout if t else "", t.recommended_timeout if t else ""])
    return Out("Supported operation codes", columns=["opcode", "SA", "name", "CDB length",
                                                     "nominal s", "recommended s"], rows=rows)


# ========================================================================== tape
@command("rewind", "REWIND", "tape")
def cmd_rewind(s: Session, a) -> Out:
    s.run(C.rewind())
    return Out(text="rewound")


@command("space", "SPACE over N blocks (or filemarks); negative N goes backwards", "tape")
@arg("n", type=number, metavar="N")
@arg("--filemarks", action="store_true", help="count filemarks instead of blocks")
@arg("--eod", action="store_true", help="space to end of data (N ignored)")
def cmd_space(s: Session, a) -> Out:
    code = C.SPACE_EOD if a.eod else (C.SPACE_FILEMARKS if a.filemarks else C.SPACE_BLOCKS)
    try:
        cdb = C.space(a.n, code)
    except ValueError as e:
        raise UsageError(f"space: {e}") from None
    s.run(cdb)
    what = "to end of data" if a.eod else f"{a.n} {'filemark(s)' if a.filemarks else 'block(s)'}"
    return Out(text=f"spaced {what}")


@command("wfm", "WRITE FILEMARKS (default 1)", "tape")
@arg("n", type=number, nargs="?", default=1, metavar="N")
def cmd_wfm(s: Session, a) -> Out:
    try:
        cdb = C.write_filemarks(a.n)
    except ValueError as e:
        raise UsageError(f"wfm: {e}") from None
    s.run(cdb)
    return Out(text=f"wrote {a.n} filemark(s)")


@command("pos", "READ POSITION (short form, and long form when supported)", "tape")
def cmd_pos(s: Session, a) -> Out:
    r = s.run(C.read_position(LT.RP_SHORT), read_length=20)
    short = LT.ReadPositionShort.unpack(r.data)
    f: dict[str, Any] = {"short": short.to_dict()}
    lr = s.run(C.read_position(LT.RP_LONG, 32), read_length=32, check=False)
    if lr.good:
        f["long"] = LT.ReadPositionLong.unpack(lr.data).to_dict()
    where = "unknown" if short.lolu else f"block {short.first_location}"
    return Out("READ POSITION", f, text=f"partition {short.partition}, {where}"
               + (" (beginning of partition)" if short.bop else "")
               + (" (end of partition)" if short.eop else ""))


@command("locate", "LOCATE(10) to logical block N", "tape")
@arg("n", type=number, metavar="N")
@arg("--partition", type=number, metavar="P", help="change to partition P")
def cmd_locate(s: Session, a) -> Out:
    if not 0 <= a.n <= 0xFFFFFFFF:
        raise UsageError("locate: block number must fit 32 bits")
    try:
        s.run(C.locate10(a.n, a.partition))
        return Out(text=f"located to block {a.n}")
    except CheckCondition as e:
        if e.sense is None or (e.sense.key, e.sense.asc, e.sense.ascq) != (0x5, 0x20, 0):
            raise
    # Some drives (tgt's SSC among them) only know LOCATE(16).
    s.run(C.locate16(a.n, a.partition))
    return Out(text=f"located to logical object {a.n} (LOCATE(16))")


@command("load", "LOAD UNLOAD: load the medium", "tape")
def cmd_load(s: Session, a) -> Out:
    s.run(C.load_unload(True))
    return Out(text="loaded")


@command("unload", "LOAD UNLOAD: unload the medium", "tape")
def cmd_unload(s: Session, a) -> Out:
    s.run(C.load_unload(False))
    return Out(text="unloaded")


@command("blocklimits", "READ BLOCK LIMITS", "tape")
def cmd_blocklimits(s: Session, a) -> Out:
    r = s.run(C.read_block_limits(), read_length=6)
    return Out("READ BLOCK LIMITS", LT.BlockLimitsData.unpack(r.data).to_dict())


# ================================================================ backup (vendor)
from . import shell_backup  # noqa: E402,F401  (registers gen/scope/counts/estimate)
# ====================================================== reservations, third-party copy
from . import shell_copy_pr  # noqa: E402,F401  (registers prin/copyparams/copystatus/xcopy)
# ============================================================== trace record/replay
from . import shell_replay  # noqa: E402,F401  (registers record/replay)
