"""scsi-shell commands over the trace library: `record` and `replay`.

`record FILE` writes every command the console sends from then on (with its
answer) as a trace (docs/trace-format.md); `record stop` closes it.
`replay FILE` sends the commands of a trace or capture through the console's
session and compares the answers (scsi_target.trace).  Unit attentions are
not retried during a replay: a recorded POWER ON, RESET is compared as such.
"""
from __future__ import annotations

import time

from .shell_backend import ShellError, UsageError
from .shell_commands import Out, Session, arg, command, number

_RECORDERS: dict[int, "ConsoleRecorder"] = {}   # id(session) -> recorder


class ConsoleRecorder:
    """Wraps a session's backend: each execute is also written to the trace."""

    def __init__(self, session: Session, path: str) -> None:
        from scsi_target.trace.records import TraceWriter
        try:
            f = open(path, "w", encoding="utf-8")
        except OSError as e:
            raise ShellError(f"record: cannot write {path}: {e.strerror or e}") from None
        self.path = path
        self.writer = TraceWriter(f, "recorder", tool="scsi-shell")
        self.session = session
        self.inner = session.backend
        session.backend = self

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def execute(self, cdb: bytes, *, data_out=None, read_length: int = 0, retry_ua: bool = True,
                lun: int | None = None):
        from scsi_target.trace.records import Exchange, Nexus, trim_cdb
        t0 = time.time()
        r = self.inner.execute(cdb, data_out=data_out, read_length=read_length,
                               retry_ua=retry_ua, lun=lun)
        direction = "out" if data_out else "in" if read_length else "none"
        target = getattr(self.inner, "url", "") or self.inner.name
        nexus = Nexus("scsi-shell", str(target), self.inner.lun if lun is None else lun)
        edtl = len(data_out) if data_out else read_length
        t1 = time.time()
        # Unit attentions the backend retried past were answers too: a replay
        # on a fresh target meets them again.
        for sense in r.ua_seen or []:
            self.writer.write(Exchange(self.writer.count, nexus, trim_cdb(bytes(cdb)), edtl,
                                       direction, 1, bytes(data_out or b""), 2, 0, bytes(sense),
                                       b"", edtl, t0, t1))
        self.writer.write(Exchange(self.writer.count, nexus, trim_cdb(bytes(cdb)), edtl,
                                   direction, 1, bytes(data_out or b""), r.status, 0,
                                   bytes(r.sense), bytes(r.data), r.residual, t0, t1))
        return r

    def stop(self) -> int:
        self.session.backend = self.inner
        self.writer.close()
        return self.writer.count


@command("record", "record the commands this console sends (and their answers) as a trace",
         "trace")
@arg("file", nargs="?", metavar="FILE|stop", help="trace file to write, or 'stop'")
def cmd_record(s: Session, a) -> Out:
    rec = _RECORDERS.get(id(s))
    if a.file is None:
        if rec is None:
            return Out("record", {"recording": False})
        return Out("record", {"recording": True, "file": rec.path, "commands": rec.writer.count})
    if a.file == "stop":
        if rec is None:
            raise UsageError("record: not recording")
        del _RECORDERS[id(s)]
        n = rec.stop()
        return Out("record", {"file": rec.path, "commands": n, "recording": False})
    if rec is not None:
        raise UsageError(f"record: already recording to {rec.path} (record stop first)")
    _RECORDERS[id(s)] = ConsoleRecorder(s, a.file)
    return Out("record", {"file": a.file, "recording": True})


@command("replay", "replay a trace or iSCSI capture on this LUN and compare the answers", "trace")
@arg("file", metavar="CAPTURE|TRACE")
@arg("--port", type=int, action="append", help="target port in a capture (default 3260)")
@arg("--ignore", action="append", default=[], metavar="[SCOPE:]FIELD[,FIELD]",
     help="fields not compared: response, status, sense, data_in, residual")
@arg("--ignore-opcode", action="append", default=[], metavar="SCOPE")
@arg("--stop-at-first", action="store_true")
@arg("--lba-offset", type=number, default=0)
@arg("--lun", type=int, action="append", default=[], help="recorded LUNs to replay")
@arg("--seed", action="store_true", help="first write what the trace's reads returned")
@arg("--max", type=int, default=20, help="differences listed (default 20)")
def cmd_replay(s: Session, a) -> Out:
    from scsi_target.trace.compare import IgnoreRule, Outcome, Scope, ScopeError
    from scsi_target.trace.extract import trace_from_capture
    from scsi_target.trace.pcapfile import CaptureError
    from scsi_target.trace.records import TraceFormatError, looks_like_trace, read_trace
    from scsi_target.trace.replay import ReplayError, ReplayOptions, replay_through
    try:
        with open(a.file, "rb") as f:
            head = f.read(64)
        if looks_like_trace(head):
            with open(a.file, encoding="utf-8") as f:
                trace = read_trace(f, a.file)
        else:
            trace = trace_from_capture(a.file, ports=a.port or [3260])
        opts = ReplayOptions(ignore=[IgnoreRule.parse(t) for t in a.ignore],
                             skip=[Scope.parse(t) for t in a.ignore_opcode],
                             stop_at_first=a.stop_at_first, lba_offset=a.lba_offset,
                             luns=set(a.lun), seed=a.seed)
    except OSError as e:
        raise ShellError(f"replay: {a.file}: {e.strerror or e}") from None
    except (CaptureError, TraceFormatError, ScopeError, UnicodeDecodeError) as e:
        raise ShellError(f"replay: {e}") from None

    def execute(cdb, data_out, read_length, lun):
        t0 = time.perf_counter()
        r = s.backend.execute(cdb, data_out=data_out, read_length=read_length,
                              retry_ua=False, lun=lun)
        return Outcome(r.status, 0, bytes(r.sense), bytes(r.data), r.residual,
                       latency=time.perf_counter() - t0)

    try:
        rep = replay_through(trace, execute, opts, default_lun=s.backend.lun)
    except ReplayError as e:
        raise ShellError(f"replay: {e}") from None
    fields = {"commands": len(trace.commands), "replayed": rep.replayed,
              "matched": rep.matched, "differed": rep.differed, "left_out": rep.left_out,
              "seeded_bytes": rep.seeded_bytes, "seconds": round(rep.elapsed, 3),
              "same": rep.same}
    rows = [[d.seq, d.name, d.field, d.recorded, d.replayed] for d in rep.differences[:a.max]]
    out = Out(f"replay {a.file}", fields, ["seq", "command", "field", "recorded", "replayed"],
              rows)
    if len(rep.differences) > a.max:
        out.notes.append(f"{len(rep.differences) - a.max} more differences not shown")
    return out
