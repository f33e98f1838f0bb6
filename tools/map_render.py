"""The generation map drawn for a terminal (rich): a strip of the volume, one
cell per region, marked with the newest generation written there, and one bar
per generation.  Shared by `diffbackup status` and scsi-shell's `counts`; the
data comes from volume.mapview (docs/backup-map-view.md).

Cells carry the generation as a character (``·`` unchanged since the full
backup, ``1``-``9``, ``a``-``z`` for 10-35, ``#`` beyond) so the picture reads
without colour; the colour only shades newer generations hotter.
"""
from __future__ import annotations

from rich.text import Text

from volume.mapview import strip

__all__ = ["symbol", "strip_text", "bars_text", "render", "DEFAULT_CELLS"]

DEFAULT_CELLS = 64
BAR_WIDTH = 40
_SYMBOLS = "123456789abcdefghijklmnopqrstuvwxyz"
_HEAT = ["grey50", "blue", "cyan", "green", "yellow", "dark_orange", "red"]


def symbol(g: int) -> str:
    if g == 0:
        return "·"
    return _SYMBOLS[g - 1] if g <= len(_SYMBOLS) else "#"


def _style(g: int, current: int) -> str:
    if g == 0:
        return "grey50"
    # the newest generation red, older ones cooler
    age = current - g
    return _HEAT[max(1, len(_HEAT) - 1 - age)]


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def strip_text(ext, entries: int, current: int, cells: int = DEFAULT_CELLS) -> Text:
    cells_v = strip(ext, entries, cells)
    t = Text("|")
    for g in cells_v:
        t.append(symbol(g), style=_style(g, current))
    t.append("|")
    return t


def bars_text(counts: dict[int, int], entries: int, granularity: int, current: int,
              width: int = BAR_WIDTH) -> list[Text]:
    lines = []
    for g in sorted(counts):
        n = counts[g]
        fill = 0 if n == 0 else max(1, round(width * n / entries)) if entries else 0
        t = Text(f"{symbol(g)} gen {g:>3} ")
        t.append("█" * fill, style=_style(g, current))
        t.append("░" * (width - fill), style="grey23")
        t.append(f" {n} blocks ({_size(n * granularity)}, {100 * n / entries:.1f}%)"
                 if entries else f" {n} blocks")
        lines.append(t)
    return lines


def render(volume_size: int, granularity: int, entries: int, current: int,
           counts: dict[int, int], ext, cells: int = DEFAULT_CELLS) -> list[Text]:
    """The whole picture: caption, strip, scale, one bar per generation."""
    n = max(1, min(cells, entries))
    per = entries / n
    lines = [Text(f"where each generation's blocks lie: {n} regions of "
                  f"{'%.0f' % per if per >= 10 else '%.1f' % per} blocks ({_size(int(per * granularity))}), "
                  f"each marked with the newest generation written in it"),
             strip_text(ext, entries, current, n)]
    end = _size(volume_size)
    lines.append(Text("0" + " " * max(1, n + 2 - 1 - len(end)) + end))
    lines += bars_text(counts, entries, granularity, current)
    return lines
