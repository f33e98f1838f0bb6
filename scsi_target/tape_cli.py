"""`scsi-target tape new|info|check IMAGE`: make and inspect tape images.

The format logic lives in tape/ (image, mam); this module only parses the
command line and renders (rich is imported when rendering, so `serve` does
not pay for it).  Exit codes: 0 OK, 2 usage error or unreadable
image (one line on stderr), 3 ``check`` found damaged records.
"""
from __future__ import annotations

import argparse
import json
import sys

from tape import TapeImage, mam
from tape.errors import TapeError

from . import config as C

EXIT_OK, EXIT_USAGE, EXIT_DAMAGED = 0, 2, 3


def add_parser(sub) -> None:
    t = sub.add_parser("tape", help="create and inspect tape images (docs/tape-image-format.md)",
                       description="Create and inspect tape images served with --tape.")
    tsub = t.add_subparsers(dest="tape_command", metavar="ACTION", required=True,
                            parser_class=type(t))
    n = tsub.add_parser("new", help="create a blank cartridge image")
    n.add_argument("image", metavar="IMAGE")
    n.add_argument("--capacity", metavar="SIZE", default="1G",
                   help="native capacity, e.g. 400M, 2G (default 1G)")
    n.add_argument("--early-warning", metavar="SIZE",
                   help="size of the early-warning zone before end-of-medium "
                   "(default capacity/64, at most 64M)")
    n.add_argument("--barcode", default="", help="barcode (MAM attribute 0806h, 32 chars)")
    n.add_argument("--label", default="", help="user medium text label (MAM 0803h)")
    n.add_argument("--no-crc", dest="crc", action="store_false",
                   help="don't store a CRC32C per record (records are not checked on read)")
    n.add_argument("--write-protect", action="store_true", help="set the write-protect tab")
    n.add_argument("--force", action="store_true", help="overwrite an existing file")
    i = tsub.add_parser("info", help="describe an image: geometry, contents, MAM attributes")
    i.add_argument("image", metavar="IMAGE")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    c = tsub.add_parser("check", help="verify every record's CRC32C and the frame chain")
    c.add_argument("image", metavar="IMAGE")


def run(args: argparse.Namespace) -> int:
    try:
        if args.tape_command == "new":
            return _new(args)
        if args.tape_command == "info":
            return _info(args)
        return _check(args)
    except (TapeError, ValueError) as e:
        print(f"scsi-target: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USAGE


def _size(text: str, what: str) -> int:
    try:
        return C.parse_size(text)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


def _new(args) -> int:
    from rich.console import Console
    cap = _size(args.capacity, "--capacity")
    ew = _size(args.early_warning, "--early-warning") if args.early_warning else None
    with TapeImage.create(args.image, cap, early_warning=ew, crc=args.crc, barcode=args.barcode,
                          label=args.label, write_protect=args.write_protect,
                          overwrite=args.force) as img:
        Console(soft_wrap=True).print(
                        f"[bold]{args.image}[/]: new tape image, {C.format_size(cap)} native "
                        f"capacity, early warning {C.format_size(img.sb.early_warning)} before "
                        f"the end, CRC32C {'on' if args.crc else 'off'}"
                        + (f", barcode {args.barcode}" if args.barcode else "")
                        + (", write protected" if args.write_protect else ""))
    return EXIT_OK


def describe(img: TapeImage) -> dict:
    """Everything `info` shows, as plain data (also the --json output)."""
    sb = img.sb
    return {
        "format_version": sb.version, "serial": sb.serial, "uuid": sb.uuid.hex(),
        "density_code": sb.density_code, "capacity": sb.capacity,
        "early_warning": sb.early_warning, "used": img.used, "remaining": img.remaining,
        "objects": img.count, "records": img.count - img.filemark_count,
        "filemarks": img.filemark_count, "files": img.filemark_count + (
            1 if img.count and not img.is_filemark(img.count - 1) else 0),
        "payload_bytes": img.payload_bytes(), "crc32c": img.crc_records,
        "write_protected": img.write_protect_tab, "in_early_warning": img.in_early_warning(
            img.count), "torn_tail_bytes": img.torn_bytes,
        "barcode": img.barcode(), "label": img.label(),
        "attributes": {f"{a.id:04x}": {"name": mam.name(a.id), "value": a.text()}
                       for a in img.attributes().values()},
    }


def _info(args) -> int:
    from rich.console import Console
    from rich.table import Table
    with TapeImage.open(args.image, read_only=True) as img:
        d = describe(img)
        files = _file_table(img)
    if args.json:
        d["file_list"] = files
        print(json.dumps(d, indent=2))
        return EXIT_OK
    con = Console()
    t = Table(title=f"tape image {args.image}", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value")
    pct = 100 * d["used"] / d["capacity"]
    rows = [
        ("format", f"version {d['format_version']}, density code {d['density_code']:02x}h"),
        ("serial / barcode", f"{d['serial']} / {d['barcode'] or '-'}"),
        ("label", d["label"] or "-"),
        ("capacity", f"{C.format_size(d['capacity'])} ({d['capacity']} bytes), early warning "
                     f"{C.format_size(d['early_warning'])} before the end"),
        ("used", f"{d['used']} bytes ({pct:.1f}%)" + (" — in early-warning zone"
                                                      if d["in_early_warning"] else "")),
        ("contents", f"{d['records']} records ({d['payload_bytes']} bytes), "
                     f"{d['filemarks']} filemarks, {d['objects']} logical objects"),
        ("CRC32C per record", "yes" if d["crc32c"] else "no"),
        ("write protected", "yes" if d["write_protected"] else "no"),
    ]
    if d["torn_tail_bytes"]:
        rows.append(("torn tail", f"[yellow]{d['torn_tail_bytes']} bytes after the last "
                                  "complete object (interrupted write; cut at next write)[/]"))
    for k, v in rows:
        t.add_row(k, v)
    con.print(t)
    if files:
        ft = Table(title="files")
        for col in ("file", "first object", "records", "bytes", "record sizes"):
            ft.add_column(col)
        for f in files:
            ft.add_row(str(f["file"]), str(f["first_object"]), str(f["records"]),
                       str(f["bytes"]), f["sizes"])
        con.print(ft)
    at = Table(title="MAM attributes")
    for col in ("id", "name", "value"):
        at.add_column(col)
    for k, v in d["attributes"].items():
        at.add_row(k + "h", v["name"], v["value"])
    con.print(at)
    return EXIT_OK


def _file_table(img: TapeImage, limit: int = 64) -> list[dict]:
    """Per logical file: first object, records, payload bytes, record sizes seen."""
    out = []
    start = 0
    n = img.filemark_count
    for f in range(min(n + 1, limit)):
        stop = img.filemark_at(f) if f < n else img.count
        if f == n and stop == start:
            break
        lengths = img.lengths(start, stop)
        sizes = sorted(set(lengths))
        out.append({"file": f, "first_object": start, "records": stop - start,
                    "bytes": sum(lengths),
                    "sizes": ", ".join(map(str, sizes[:4])) + (" ..." if len(sizes) > 4 else "")})
        start = stop + 1
    return out


def _check(args) -> int:
    from rich.console import Console
    with TapeImage.open(args.image, read_only=True) as img:
        problems = img.verify()
        d = describe(img)
    con = Console(soft_wrap=True)  # one line per finding, whatever the terminal width
    if d["torn_tail_bytes"]:
        con.print(f"[yellow]{args.image}: {d['torn_tail_bytes']} bytes after object "
                  f"{d['objects']} are an interrupted write; the image ends at end-of-data "
                  f"object {d['objects']}[/]")
    if not d["crc32c"]:
        con.print(f"{args.image}: records carry no CRC32C; only the frame chain was checked")
    if problems:
        for index, why in problems[:50]:
            con.print(f"[red]object {index}: {why}[/]")
        con.print(f"[red bold]{args.image}: {len(problems)} damaged record(s) of "
                  f"{d['records']}[/]")
        return EXIT_DAMAGED
    con.print(f"[green]{args.image}: OK[/] — {d['records']} records, {d['filemarks']} "
              f"filemarks, {d['used']} bytes used of {d['capacity']}")
    return EXIT_OK
