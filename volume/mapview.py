"""Where on the volume each generation's blocks lie (docs/backup-map-view.md).

Pure data for `diffbackup status`, scsi-shell's `counts` and REPORT MAP
EXTENTS (C8h): the map as extents ``(first_block, nblocks, generation)`` of
the blocks written since the full backup (generation >= 1; everything else is
generation 0), and a strip of the volume cut into equal regions, each holding
the newest generation written anywhere in it.  Whole-array map queries, one
per generation, never a loop per block.
"""
from __future__ import annotations

from dataclasses import dataclass

from .genmap import GenerationMap, extents

__all__ = ["MapView", "map_view", "strip", "cell_range"]


@dataclass
class MapView:
    volume_size: int
    granularity: int
    entries: int
    current_generation: int
    counts: dict[int, int]
    extents: list[tuple[int, int, int]]     # (first block, blocks, generation >= 1), by first

    def to_json(self) -> dict:
        return {"volume_size": self.volume_size, "granularity": self.granularity,
                "entries": self.entries, "current_generation": self.current_generation,
                "counts": {str(g): n for g, n in sorted(self.counts.items())},
                "extents": [list(e) for e in self.extents]}


def map_view(gmap: GenerationMap) -> MapView:
    cur = gmap.current_generation
    ext: list[tuple[int, int, int]] = []
    for g in range(1, cur + 1):
        ext += [(a, n, g) for a, n in extents(gmap.blocks_in_generations(g, g))]
    ext.sort()
    return MapView(gmap.volume_size, gmap.granularity, gmap.entries, cur, gmap.counts(), ext)


def cell_range(cell: int, cells: int, entries: int) -> tuple[int, int]:
    """Blocks [a, b) of region ``cell`` when ``entries`` blocks are cut into ``cells``."""
    return cell * entries // cells, (cell + 1) * entries // cells


def strip(ext: list[tuple[int, int, int]], entries: int, cells: int) -> list[int]:
    """The newest generation written in each of ``cells`` equal regions (0: none).
    With more cells than blocks, each block gets one cell (``cells = entries``)."""
    cells = max(1, min(cells, entries))
    out = [0] * cells
    for a, n, g in ext:
        # the region of block b is the last c with cell_range(c)[0] <= b
        lo = ((a + 1) * cells - 1) // entries
        hi = ((a + n) * cells - 1) // entries
        for c in range(lo, hi + 1):
            if out[c] < g:
                out[c] = g
    return out
