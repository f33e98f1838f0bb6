"""How scsi-shell shows results: rich tables and hexdumps, or one JSON object per command."""
from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .shell_commands import CheckCondition, Out


def hexdump_lines(data: bytes, width: int = 16) -> list[str]:
    """hexdump -C style; runs of identical lines collapse into '*'."""
    lines: list[str] = []
    prev: bytes | None = None
    starred = False
    for off in range(0, len(data), width):
        chunk = data[off:off + width]
        if chunk == prev and len(chunk) == width:
            if not starred:
                lines.append("*")
                starred = True
            continue
        prev, starred = chunk, False
        hx = " ".join(f"{b:02x}" for b in chunk)
        hx = hx[:23] + " " + hx[23:] if len(chunk) > 8 else hx
        asc = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{off:08x}  {hx:<49} |{asc}|")
    lines.append(f"{len(data):08x}")
    return lines


def _flatten(fields: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for k, v in fields.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _flatten(v, name + ".")
        elif isinstance(v, (list, tuple)):
            if v and all(isinstance(x, dict) for x in v):
                for i, x in enumerate(v):
                    out += _flatten(x, f"{name}[{i}].")
            else:
                out.append((name, ", ".join(str(x) for x in v) if v else "-"))
        elif isinstance(v, (bytes, bytearray)):
            out.append((name, bytes(v).hex() or "-"))
        else:
            out.append((name, str(v)))
    return out


class Renderer:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def result(self, line: str, out: Out) -> None:
        if self.as_json:
            print(json.dumps({"command": line, "ok": True, **out.to_json()}), flush=True)
            return
        c = self.out
        if out.title:
            c.print(Text(out.title, style="bold"))
        if out.fields:
            t = Table(show_header=False, box=None, pad_edge=False)
            t.add_column(style="cyan")
            t.add_column()
            for k, v in _flatten(out.fields):
                t.add_row(k, v)
            c.print(t)
        if out.columns:
            t = Table(*out.columns)
            for row in out.rows:
                t.add_row(*("" if x is None else str(x) for x in row))
            c.print(t)
        if out.data is not None:
            for ln in hexdump_lines(out.data):
                c.print(ln, markup=False)
        if out.text:
            c.print(out.text, markup=False)
        for n in out.notes:
            c.print(Text(f"note: {n}", style="dim"))

    def error(self, line: str, exc: Exception, kind: str = "error") -> None:
        msg = str(exc) or type(exc).__name__
        if self.as_json:
            obj: dict[str, Any] = {"command": line, "ok": False, "error": msg, "kind": kind}
            if isinstance(exc, CheckCondition):
                obj["sense"] = exc.sense.to_dict() if exc.sense else None
                obj["sense_raw"] = exc.raw.hex()
            print(json.dumps(obj), flush=True)
            return
        if isinstance(exc, CheckCondition):
            self.err.print(Text(msg, style="bold red"))
        else:
            self.err.print(Text(f"{kind}: {msg}", style="red"))

    def info(self, text: str) -> None:
        if not self.as_json:
            self.out.print(text, markup=False)


def eprint(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
