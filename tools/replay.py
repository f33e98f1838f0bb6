"""`scsi-replay`: replay a captured or recorded SCSI trace against a live target.

    scsi-replay CAPTURE|TRACE --target iscsi://host[:port]/iqn/lun [options]
    scsi-replay CAPTURE|TRACE --config target.toml [options]   (our target, in-process)
    scsi-replay CAPTURE --dry-run [--export trace.jsonl]

Exit status: 0 every replayed answer matched, 1 some differed, 2 error (bad
input, no session), with one line on stderr for errors.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import NoReturn, Sequence

PROG = "scsi-replay"
EXIT_SAME, EXIT_DIFFERENT, EXIT_ERROR = 0, 1, 2


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Replay the SCSI commands of an iSCSI capture (pcap, "
                "pcapng) or a trace (JSON lines, docs/trace-format.md) against a target and "
                "compare status, sense, data-in and residuals with the recording.")
    p.add_argument("input", metavar="CAPTURE|TRACE")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--target", metavar="URL", help="iscsi://host[:port]/target-iqn/lun")
    where.add_argument("--config", metavar="FILE", help="serve this scsi-target config "
                       "in-process on a free local port and replay against its first target")
    p.add_argument("--dry-run", action="store_true", help="decode only; send nothing")
    p.add_argument("--export", metavar="FILE", help="write the trace as JSON lines")
    p.add_argument("--port", metavar="N", type=_port, action="append",
                   help="TCP port of the recorded target (repeatable; default 3260)")
    p.add_argument("--any-port", action="store_true",
                   help="find iSCSI on any TCP port of the capture")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--timing", metavar="FACTOR", type=_factor,
                   help="keep the recorded gaps between commands, scaled by FACTOR "
                   "(1 = real time, 0.5 = twice as fast); default: as fast as possible")
    p.add_argument("--ignore", metavar="[SCOPE:]FIELD[,FIELD]", action="append", default=[],
                   help="fields not compared (response, status, sense, data_in, residual), "
                   "for every command or a SCOPE: 0x12, INQUIRY, cdb=1201 (repeatable)")
    p.add_argument("--ignore-opcode", metavar="SCOPE", action="append", default=[],
                   help="commands not replayed at all (same SCOPE forms; repeatable)")
    p.add_argument("--stop-at-first", action="store_true",
                   help="stop at the first command whose answer differs")
    p.add_argument("--lun-map", metavar="REC=NEW", action="append", default=[],
                   help="replay recorded LUN REC on LUN NEW (repeatable; a trace with one "
                   "LUN goes to the URL's LUN by default)")
    p.add_argument("--lba-offset", metavar="N", type=int, default=0,
                   help="add N to the LBA of every block command")
    p.add_argument("--nexus", metavar="TEXT", action="append", default=[],
                   help="replay only nexuses whose initiator/target name or address "
                   "contains TEXT (repeatable)")
    p.add_argument("--lun", metavar="N", type=int, action="append", default=[],
                   help="replay only recorded LUN N (repeatable)")
    p.add_argument("--seed", action="store_true",
                   help="first write what the trace's reads returned (blocks it did not "
                   "write itself), so reads compare on a fresh volume")
    p.add_argument("--queue-depth", metavar="N", type=_depth, default=1,
                   help="commands outstanding per session (default 1: each waits for the "
                   "previous answer; more is faster, but the target may reorder SIMPLE tasks)")
    p.add_argument("--timeout", metavar="S", type=_factor, default=30.0,
                   help="seconds per command (default 30)")
    p.add_argument("--max-differences", metavar="N", type=int, default=50,
                   help="differences listed in the text report (default 50)")
    return p


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"bad port {text!r}")
    return int(text)


def _depth(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 128:
        raise argparse.ArgumentTypeError(f"queue depth 1..128, not {text!r}")
    return int(text)


def _factor(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text!r}")
    return v


def load(path: str, ports, any_port: bool):
    """A Trace from a capture or a JSON-lines trace file."""
    from scsi_target.trace.extract import trace_from_capture
    from scsi_target.trace.records import looks_like_trace, read_trace
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror or e}") from None
    if looks_like_trace(head):
        try:
            with open(path, encoding="utf-8") as f:
                return read_trace(f, path)
        except UnicodeDecodeError:
            raise UsageError(f"{path}: not UTF-8 text (a trace is JSON lines)") from None
    return trace_from_capture(path, ports=None if any_port else (ports or [3260]),
                              any_port=any_port)


def options_from_args(args):
    from scsi_target.trace.compare import IgnoreRule, Scope
    from scsi_target.trace.replay import ReplayOptions
    lun_map = {}
    for item in args.lun_map:
        a, sep, b = item.partition("=")
        if not sep or not a.isdigit() or not b.isdigit():
            raise UsageError(f"bad --lun-map {item!r} (form: RECORDED=NEW, e.g. 1=0)")
        lun_map[int(a)] = int(b)
    return ReplayOptions(ignore=[IgnoreRule.parse(t) for t in args.ignore],
                         skip=[Scope.parse(t) for t in args.ignore_opcode],
                         stop_at_first=args.stop_at_first, lun_map=lun_map,
                         lba_offset=args.lba_offset, nexus=args.nexus, luns=set(args.lun),
                         seed=args.seed, timing=args.timing, timeout=args.timeout,
                         queue_depth=args.queue_depth)


class _InProcessTarget:
    """--config: our own target in a thread, on a free loopback port."""

    def __init__(self, path: str) -> None:
        import asyncio
        import threading
        from scsi_target import config as C
        from scsi_target.target.server import IscsiServer
        cfg = C.load_file(path)
        if not cfg.targets or not cfg.targets[0].luns:
            raise UsageError(f"{path}: no target with a LUN to replay against")
        from scsi_target.target.registry import Portal
        self.registry = C.build_registry(cfg)
        # A private portal: the configured one may be in use by a running server.
        self.registry.portals = [Portal("127.0.0.1", 0)]
        self.server = IscsiServer(self.registry, **cfg.server_options())
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)
        host, port = self.server.bound_portals[0][:2]
        t = cfg.targets[0]
        self.url = f"iscsi://{host}:{port}/{t.iqn}/{t.luns[0].lun}"

    def close(self) -> None:
        import asyncio
        try:
            asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.registry.close()


def run(args) -> int:
    from rich.console import Console
    from scsi_target.trace.records import write_trace
    from scsi_target.trace.replay import Replayer, ReplayError
    from scsi_target.trace.report import ReplayReport, render
    trace = load(args.input, args.port, args.any_port)
    if args.export:
        try:
            with open(args.export, "w", encoding="utf-8") as f:
                write_trace(trace, f)
        except OSError as e:
            raise UsageError(f"{args.export}: {e.strerror or e}") from None
    opts = options_from_args(args)
    if args.dry_run or not (args.target or args.config):
        if not args.dry_run and not args.export:
            raise UsageError("give --target URL or --config FILE (or --dry-run / --export)")
        from scsi_target.trace.replay import select
        keep, left = select(trace, opts)
        report = ReplayReport(trace, "", left)
        report.dry_run = True
        for ex in keep:
            report.add(ex, None, [])
        _emit(report, args, Console(), render)
        return EXIT_SAME
    served = _InProcessTarget(args.config) if args.config else None
    try:
        url = served.url if served else args.target
        import asyncio
        try:
            report = asyncio.run(Replayer(trace, url, opts).run())
        except ReplayError as e:
            raise UsageError(str(e)) from None
    finally:
        if served:
            served.close()
    _emit(report, args, Console(), render)
    return EXIT_SAME if report.same else EXIT_DIFFERENT


def _emit(report, args, console, render) -> None:
    if args.json:
        print(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        render(report, console, args.max_differences)


def main(argv: Sequence[str] | None = None) -> int:
    from scsi_target.initiator.errors import UrlError
    from scsi_target.trace.compare import ScopeError
    from scsi_target.trace.pcapfile import CaptureError
    from scsi_target.trace.records import TraceFormatError
    try:
        args = build_parser().parse_args(argv)
        return run(args)
    except (UsageError, CaptureError, TraceFormatError, ScopeError, UrlError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:        # e.g. --config: a store that cannot open
        print(f"{PROG}: error: {e.strerror or e}"
              + (f": {e.filename}" if getattr(e, "filename", None) else ""), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:   # a bug: still one line, never a traceback
        from scsi_target.config import ConfigError
        if isinstance(e, ConfigError):
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return EXIT_ERROR
        print(f"{PROG}: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
