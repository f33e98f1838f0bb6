"""The argparse parser of `diffbackup` (tools/diffbackup.py): every command, its
options and its --help.  A run whose command line :mod:`tools.diffbackup_argv`
recognizes never imports this module (nor argparse, gettext and re with it)."""
from __future__ import annotations

import argparse
import os
import sys

from tools.diffbackup import EXIT_USAGE, PROG, Failure

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import NoReturn


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``, without importing shutil (with zlib,
    bz2 and lzma, a twentieth of a run that never prints help): $COLUMNS, else
    the width of the terminal on stdout, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter, its default width found by _terminal_columns
    (every add_argument makes one, to check the metavar)."""

    def __init__(self, prog, indent_increment=2, max_help_position=24, width=None,
                 **kw) -> None:
        if width is None:
            width = _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width, **kw)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are Failures.  A subcommand's parser is made
    with ``fill``, which adds its arguments when it first parses or formats its
    help: a run uses one subcommand, and adding the arguments of all ten was most
    of the parser's cost (``diffbackup --help`` lists them by their help alone)."""

    def __init__(self, *args, fill=None, **kw) -> None:
        kw.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kw)
        self._fill = fill

    def _filled(self) -> None:
        if self._fill is not None:
            fill, self._fill = self._fill, None
            fill(self)

    def parse_known_args(self, args=None, namespace=None):
        self._filled()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._filled()
        return super().format_usage()

    def format_help(self) -> str:
        self._filled()
        return super().format_help()

    def error(self, message: str) -> NoReturn:
        raise Failure(f"{message} (see {self.prog} --help)", EXIT_USAGE)


def _tape_options(sp, help_text: str) -> None:
    sp.add_argument("--tape", action="append", default=[], metavar="TAPE",
                    help=f"tape image file or iscsi://host[:port]/iqn/lun of a tape LUN: "
                    f"{help_text}")


def _size(text: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:].upper(), 1)
    try:
        return int(text[:-1] if mult > 1 else text) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 262144, 256K, 1M)")


def _s3_output_options(sp) -> None:
    """The options of a command whose -o may be an s3:// object."""
    sp.add_argument("--force", action="store_true",
                    help="replace an existing s3:// object (stream files are always replaced)")
    sp.add_argument("--part-size", type=_size, default=None, metavar="BYTES",
                    help="S3 multipart part size (default 16M; 5M..1024M): memory is about "
                    "(parts in flight + 1) x this")
    sp.add_argument("--s3-uploads", type=int, default=None, metavar="N",
                    help="S3 parts uploaded at once while the next one fills (default 2)")
    sp.add_argument("--no-s3-md5", action="store_true",
                    help="no Content-MD5 per S3 part (less CPU; damage on the way is then "
                    "found by verify/restore, not refused by the server)")


def _backup_args(sp, diff: bool) -> None:
    sp.add_argument("source", metavar="SOURCE")
    if diff:
        sp.add_argument("--scope", type=int, required=True, metavar="K")
    sp.add_argument("-o", "--output", metavar="FILE")
    _tape_options(sp, "append the stream to the cartridge (at end-of-data) instead of a "
                  "FILE; repeat for the cartridges to continue on at early warning")
    sp.add_argument("--record-size", type=_size, default=None, metavar="BYTES",
                    help="tape record size (default 256K; K/M suffixes)")
    sp.add_argument("--target-side", action="store_true",
                    help="the target copies the stream to its own tape LUN (EXTENDED COPY): "
                    "the data does not cross the network")
    _s3_output_options(sp)


def _restore_args(r) -> None:
    r.add_argument("dest", metavar="DEST")
    r.add_argument("files", metavar="FILE", nargs="*")
    _tape_options(r, "read the streams from tape instead (with --file); repeat for the "
                  "cartridges a backup spans")
    r.add_argument("--file", action="append", default=[], metavar="[C:]N",
                   help="tape file N (of cartridge C, 1-based, default the first); repeatable, "
                   "applied in order")
    r.add_argument("--skip-generation", action="append", metavar="[N:]G",
                   help="don't apply generation G (of stream N only, 1-based); repeatable")


def _verify_args(v) -> None:
    v.add_argument("files", metavar="FILE", nargs="+")


def _status_args(s) -> None:
    s.add_argument("source", metavar="SOURCE")
    s.add_argument("--json", action="store_true",
                   help="the state, counts and extents (first, blocks, generation) as JSON")
    s.add_argument("--cells", type=int, default=64, metavar="N",
                   help="regions in the drawn strip of the volume (default 64)")


def _estimate_args(e) -> None:
    e.add_argument("source", metavar="SOURCE")
    e.add_argument("--scope", type=int, required=True, metavar="K")
    e.add_argument("--compressed", action="store_true", help="also estimate compressed size")


def _merge_args(m) -> None:
    m.add_argument("files", metavar="FILE", nargs="+", help="stream files or s3://BUCKET/KEY")
    m.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="a stream file or s3://BUCKET/KEY (stored only once it verified)")
    _s3_output_options(m)


def _audit_args(au) -> None:
    au.add_argument("source", metavar="SOURCE")
    au.add_argument("--rate", type=int, default=1024, metavar="N",
                    help="check one block in N (default 1024)")
    au.add_argument("--full", action="store_true", help="check every unchanged block")


def _catalog_args(c) -> None:
    c.add_argument("tape", metavar="TAPE|s3://BUCKET/PREFIX",
                   help="tape image file, iscsi:// tape LUN URL, or s3://BUCKET/PREFIX")
    c.add_argument("--verify", action="store_true",
                   help="also read every backup back and check it record by record")


def _cleanup_args(cl) -> None:
    cl.add_argument("prefix", metavar="s3://BUCKET/PREFIX")
    cl.add_argument("--older-than", type=float, default=3600.0, metavar="SECONDS",
                    help="only uploads started at least this long ago (default 3600: a "
                    "backup running now is left alone); 0 for all")
    cl.add_argument("--dry-run", action="store_true", help="list them, abort nothing")


def _common_args(sp) -> None:
    """The main options, accepted after the subcommand as well."""
    sp.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                    help="no progress bars")
    sp.add_argument("--initiator-name", metavar="IQN", default=argparse.SUPPRESS,
                    help="iSCSI initiator name to log in with")
    sp.add_argument("--s3-endpoint", metavar="URL", default=argparse.SUPPRESS,
                    help="S3 endpoint for s3:// names (default: AWS_ENDPOINT_URL or the "
                    "profile's endpoint_url, else AWS)")


# (name, help, the function adding its arguments), in the order --help lists them.
_COMMANDS = (
    ("full", "full backup (every block); starts a new generation 1",
     lambda sp: _backup_args(sp, diff=False)),
    ("diff", "differential backup of the newest K generations",
     lambda sp: _backup_args(sp, diff=True)),
    ("restore", "apply a full stream and/or differential streams in order", _restore_args),
    ("verify", "check streams (and their chain) without restoring", _verify_args),
    ("status", "generations, their block counts and where they lie", _status_args),
    ("estimate", "bytes a differential backup would take (claim 10)", _estimate_args),
    ("merge", "synthetic full (FULL DIFF...) or one differential (DIFF DIFF...) from a chain "
     "of streams, without the volume", _merge_args),
    ("audit", "re-read a sample of the blocks the map calls unchanged and compare them with "
     "what the backups sent", _audit_args),
    ("catalog", "list the backups a cartridge or an S3 prefix holds", _catalog_args),
    ("cleanup", "abort unfinished S3 uploads (of killed or failed backups) under "
     "s3://BUCKET/PREFIX", _cleanup_args),
)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Differential backup of tracked volumes (patent "
                "JP H09-101912): full and differential streams, verified restore.")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, required=True)
    for name, text, add_args in _COMMANDS:
        sub.add_parser(name, help=text,
                       fill=lambda sp, add_args=add_args: (add_args(sp), _common_args(sp)))
    p.add_argument("--s3-endpoint", metavar="URL",
                   help="S3 endpoint for s3:// names (default: AWS_ENDPOINT_URL or the "
                   "profile's endpoint_url, else AWS); credentials from the AWS environment "
                   "or profile")
    p.add_argument("--initiator-name", metavar="IQN",
                   help="iSCSI initiator name to log in with, e.g. one a target's ACL "
                   "lists (default iqn.2026-01.org.scsi-target:initiator)")
    return p
