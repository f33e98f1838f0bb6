"""`scsi-target` command line: serve a configuration until SIGINT/SIGTERM.

Exit codes: 0 clean shutdown, 2 usage/configuration/startup error (one line
on stderr, no traceback), 1 unexpected internal error.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import NoReturn, Sequence

from . import config as C

PROG = "scsi-target"
EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2
LOG_LEVELS = ("debug", "info", "warning", "error")
EVENT_LOOPS = ("auto", "asyncio", "uvloop")

log = logging.getLogger("scsi_target")


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line yields one line on stderr and exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Pure-Python iSCSI target. Without a command, "
                "runs `serve` with the embedded default: a 64 MiB disk at ./var/disk0.img "
                f"on 127.0.0.1:{C.DEFAULT_PORT} as {C.DEFAULT_IQN}.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("serve", help="serve targets over iSCSI until SIGINT/SIGTERM",
                       description="Serve targets over iSCSI. Use either --config FILE or the "
                       "quick flags (--listen, --iqn, --disk, --no-track, --chap), not both. "
                       "No flags: the embedded default (one 64 MiB disk at ./var/disk0.img, "
                       f"created sparse, on 127.0.0.1:{C.DEFAULT_PORT}).")
    _add_serve_args(s)

    c = sub.add_parser("check", help="validate a config file and print what it would serve",
                       description="Validate a TOML config file without opening anything.")
    c.add_argument("config", metavar="FILE", help="TOML configuration file")

    from . import tape_cli
    tape_cli.add_parser(sub)
    return p


def _add_serve_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--config", metavar="FILE", help="TOML configuration file (docs/config.md)")
    s.add_argument("--listen", metavar="HOST:PORT", action="append",
                   help=f"portal to listen on (repeatable; IPv6 as [::1]:PORT; a bare number "
                   f"is a port on {C.DEFAULT_HOST}; default {C.DEFAULT_HOST}:{C.DEFAULT_PORT}; "
                   "port 0 = any free port)")
    s.add_argument("--iqn", metavar="IQN", help=f"target name (default {C.DEFAULT_IQN})")
    s.add_argument("--disk", metavar="PATH[:SIZE]", action="append",
                   help="backing file of the next LUN (0, 1, ...); with SIZE (e.g. 64M, 1G) "
                   "it is created sparse if missing (repeatable). rbd:POOL/IMAGE[:SIZE]: a "
                   "Ceph RBD image instead (exclusive lock; tracked with its map in RADOS; docs/rbd.md)")
    s.add_argument("--ceph-conf", metavar="FILE",
                   help="ceph.conf for the --disk rbd:POOL/IMAGE disks (default: librados' "
                   "own: $CEPH_CONF, /etc/ceph/ceph.conf)")
    s.add_argument("--ceph-id", metavar="ID",
                   help="Ceph client id of the RBD disks, e.g. admin for client.admin "
                   "(default admin)")
    s.add_argument("--ceph-keyring", metavar="FILE",
                   help="keyring of that client (default: what ceph.conf says)")
    s.add_argument("--rbd-take-over", action="store_true",
                   help="serve the RBD disks even if another target holds them: fence that "
                   "client (blocklist) and break its image and map locks at once, instead of "
                   "refusing (for a failover manager that knows the holder is dead or must stop)")
    s.add_argument("--no-track", dest="track", action="store_false",
                   help="don't record changed blocks for differential backup")
    s.add_argument("--backup-device", action="store_true",
                   help="add a backup pseudo device per disk: LUN N+i serves disk i's backup "
                   "streams (N = number of disks; docs/vendor-commands.md)")
    s.add_argument("--tape", metavar="IMAGE", action="append",
                   help="serve a tape image (scsi-target tape new) as the next LUN after the "
                   "disks; repeatable. With --tape and no --disk there is no default disk")
    s.add_argument("--cow-dir", metavar="DIR",
                   help="where a backup keeps old blocks that writes replace while its stream "
                   "is read (an unlinked file; default: beside each disk's file)")
    s.add_argument("--cow-size", metavar="SIZE",
                   help="at most this many bytes of such old blocks per disk (e.g. 256M; 0 = "
                   "none); past it the backup stream fails (default: 1G or the disk's size)")
    s.add_argument("--write-budget", metavar="SIZE",
                   help="bytes of write data one connection may buffer; writes beyond it wait, "
                   "a single larger write is refused (default 512M; docs/config.md [limits])")
    s.add_argument("--target-write-budget", metavar="SIZE",
                   help="the same, summed over all connections to the target (default 1G)")
    s.add_argument("--send-queue-bound", metavar="SIZE",
                   help="bytes of responses queued for a connection above which it stops "
                   "reading commands until the peer takes them (default 8M)")
    s.add_argument("--chap", metavar="USER:SECRET",
                   help="require one-way CHAP (secret of 12..16 bytes)")
    s.add_argument("--record", metavar="FILE",
                   help="write every SCSI command and its answer to FILE as a trace "
                   "(JSON lines, docs/trace-format.md; replay with scsi-replay)")
    s.add_argument("--record-pcapng", metavar="FILE",
                   help="also write the commands as iSCSI PDUs in a pcapng file "
                   "(tshark and scsi-replay read it; no tcpdump or root needed)")
    s.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                   help="logging threshold (default info)")
    s.add_argument("--event-loop", choices=EVENT_LOOPS, default="auto",
                   help="asyncio's own loop, or uvloop (fewer CPU cycles per command); "
                   "auto: uvloop when it is installed (default auto)")


def config_from_args(args: argparse.Namespace) -> C.ServerConfig:
    quick = [flag for flag, used in (("--listen", args.listen), ("--iqn", args.iqn),
                                     ("--disk", args.disk), ("--no-track", not args.track),
                                     ("--chap", args.chap), ("--cow-dir", args.cow_dir),
                                     ("--cow-size", args.cow_size),
                                     ("--backup-device", args.backup_device),
                                     ("--tape", args.tape),
                                     ("--write-budget", args.write_budget),
                                     ("--target-write-budget", args.target_write_budget),
                                     ("--send-queue-bound", args.send_queue_bound),
                                     ("--ceph-conf", args.ceph_conf),
                                     ("--ceph-id", args.ceph_id),
                                     ("--ceph-keyring", args.ceph_keyring),
                                     ("--rbd-take-over", args.rbd_take_over)) if used]
    if args.config:
        if quick:
            raise UsageError(f"--config cannot be combined with {', '.join(quick)}; "
                             "put those settings in the config file")
        return C.load_file(args.config)
    return C.from_flags(listen=args.listen, iqn=args.iqn, disks=args.disk,
                        track=args.track, chap=args.chap, backup_device=args.backup_device,
                        ceph_conf=args.ceph_conf, ceph_id=args.ceph_id,
                        ceph_keyring=args.ceph_keyring, rbd_take_over=args.rbd_take_over,
                        tapes=args.tape, cow_dir=args.cow_dir, cow_size=args.cow_size,
                        write_budget=args.write_budget,
                        target_write_budget=args.target_write_budget,
                        send_queue_bound=args.send_queue_bound)


def iscsi_url(host: str, port: int, iqn: str, lun: int) -> str:
    h = f"[{host}]" if ":" in host else host
    return f"iscsi://{h}:{port}/{iqn}/{lun}"


def describe(cfg: C.ServerConfig, bound: Sequence[tuple[str, int]]) -> list[str]:
    """What the operator needs after start: where to connect, and what each LUN is."""
    lines = ["listening on " + ", ".join(str(C.Portal(h, p)) for h, p in bound)]
    host, port = bound[0] if bound else (cfg.portals[0].host, cfg.portals[0].port)
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    for t in cfg.targets:
        auth = " (CHAP)" if t.chap else ""
        lines.append(f"target {t.iqn}{auth}" + (f" alias {t.alias!r}" if t.alias else ""))
        for spec in t.luns:
            lines.append(f"  {C.lun_summary(spec)}")
            lines.append(f"    {iscsi_url(host, port, t.iqn, spec.lun)}")
    return lines


async def serve(cfg: C.ServerConfig, server_factory=None, recorder=None) -> int:
    """Build the registry, start the server, wait for SIGINT/SIGTERM, close."""
    if server_factory is None:
        from .target.server import IscsiServer as server_factory
    registry = C.build_registry(cfg)
    if recorder is not None:
        for t in registry.targets.values():
            t.luns.recorder = recorder
    server = server_factory(registry, **cfg.server_options())
    try:
        await server.start()
    except BaseException:
        registry.close()
        raise
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bound = list(server.bound_portals)
    # The addresses actually bound (port 0 resolved), as the operator will see them.
    for w in C.exposure_warnings(cfg.targets, [C.Portal(h, p) for h, p in bound]):
        log.warning("%s", w)
    try:
        for line in describe(cfg, bound):
            print(line, flush=True)
        await stop.wait()
        log.info("shutting down")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.close()
    return EXIT_OK


def loop_factory(kind: str):
    """The event loop constructor for ``--event-loop`` (None: asyncio's default).

    uvloop runs the loop machinery (readiness polling, callback dispatch) in C:
    at queue depth 1 that is a noticeable part of each command's cost.  The
    server uses only add_reader/add_writer, call_soon/call_later and signal
    handlers, which both loops provide alike.
    """
    if kind == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if kind == "uvloop":
            raise UsageError("--event-loop uvloop: uvloop is not installed "
                             "(pip install uvloop)") from None
        return None
    return uvloop.new_event_loop


def run_loop(coro, kind: str = "auto"):
    try:
        factory = loop_factory(kind)
    except BaseException:
        coro.close()
        raise
    log.debug("event loop: %s", "uvloop" if factory is not None else "asyncio")
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def _check(path: str) -> int:
    cfg = C.load_file(path)
    for w in [*cfg.warnings, *C.exposure_warnings(cfg.targets, cfg.portals)]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"{path}: OK")
    for line in describe(cfg, [(p.host, p.port) for p in cfg.portals])[1:]:
        print(line)
    return EXIT_OK


def main(argv: Sequence[str] | None = None, *, server_factory=None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # No command at all means `serve` (the embedded default, or serve flags).
    if not args_list or args_list[0].startswith("-") and args_list[0] not in ("-h", "--help"):
        args_list.insert(0, "serve")
    try:
        args = build_parser().parse_args(args_list)
        if args.command == "check":
            return _check(args.config)
        if args.command == "tape":
            from . import tape_cli
            return tape_cli.run(args)
        logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        cfg = config_from_args(args)
        for w in cfg.warnings:
            log.warning("%s", w)
        recorder = None
        if args.record or args.record_pcapng:
            from .trace.recorder import Recorder
            try:
                recorder = Recorder.open(args.record, args.record_pcapng)
            except OSError as e:
                raise UsageError(f"cannot write {e.filename}: {e.strerror or e}") from None
        try:
            return run_loop(serve(cfg, server_factory, recorder), args.event_loop)
        finally:
            if recorder is not None:
                recorder.close()
    except UsageError as e:
        return _fail(f"error: {e}")
    except C.ConfigError as e:
        return _fail(f"error: {e}")
    except OSError as e:  # the server could not bind, a store could not open, ...
        return _fail(f"error: {_one_line(e)}")
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return EXIT_OK
    except Exception as e:
        log.debug("internal error", exc_info=True)
        print(f"{PROG}: internal error: {type(e).__name__}: {_one_line(e)} "
              "(rerun with --log-level debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


def _one_line(e: BaseException) -> str:
    text = (e.strerror if isinstance(e, OSError) and e.strerror else str(e)).strip()
    text = text or type(e).__name__
    return " ".join(text.split())


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
