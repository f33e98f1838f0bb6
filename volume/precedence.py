"""Which copy of a block a restore of a chain keeps: the one rule that
``volume/restore.py`` applies to a volume and ``volume/merge.py`` to the
synthetic full it builds (docs/backup-merge.md), so restoring a merged stream
is restoring the chain.

The state is, per block, the generation the streams restored so far left there
(a :class:`RestoredGenerations`: the target's own :class:`GenerationMap` in a
restore, :class:`GenerationPlanes` in memory in a merge).  Then, stream by
stream in chain order:

* a full stream's records are taken for every block they hold and leave
  generation 0 there (the map is reset to 0 when a full stream begins, and a
  synthetic full's records, whatever generation they carry, leave 0 too: the
  chain goes on at its ``hi + 1``);
* a differential's record of generation ``g`` is taken for the blocks whose
  restored generation is older than ``g``, and leaves ``g`` there.  So of two
  copies of one generation (differentials of overlapping scopes) the first is
  kept, and an older copy never replaces a newer one.

A damaged copy is "lost" for the blocks it would have been taken for
(:func:`taken` at the point it was met) until a later copy is taken there.
Everything is whole-array work on bitarrays: no Python loop per block.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from bitarray import bitarray

from .genmap import GenerationMap, older_than, all_ones, store_masked

__all__ = ["RestoredGenerations", "GenerationPlanes", "taken", "leaves_generation"]


class RestoredGenerations(ABC):
    """Per block, the generation a restore of the chain so far left there."""

    @abstractmethod
    def blocks_older_than(self, first_block: int, nblocks: int, generation: int) -> bitarray:
        """Bits (length ``nblocks``) set where the held generation is below ``generation``."""

    @abstractmethod
    def apply_restored_mask(self, first_block: int, mask: bitarray, generation: int) -> None:
        """Blocks ``first_block + i`` with ``mask[i]`` set now hold ``generation``."""


# The target's map answers both questions itself (with its dirty bits: a block
# written since is held at the current generation).
RestoredGenerations.register(GenerationMap)


def taken(restored: RestoredGenerations, full: bool, first_block: int, nblocks: int,
          generation: int) -> bitarray:
    """Of blocks ``first_block..+nblocks`` of a copy of ``generation`` in a full
    (``full``) or differential stream, those a restore of the chain takes from it
    (bits, length ``nblocks``)."""
    if full:
        return all_ones(nblocks)
    return restored.blocks_older_than(first_block, nblocks, generation)


def leaves_generation(full: bool, generation: int) -> int | None:
    """The restored generation a taken copy leaves, or None when nothing is to be
    recorded (a full stream's: its blocks stay at the 0 they were reset to)."""
    return None if full else generation


class GenerationPlanes(RestoredGenerations):
    """Restored generations held in memory as bit planes (a merge has no map):
    ``entries`` blocks, all at generation 0 to begin with."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._planes: list[bitarray] = []

    def blocks_older_than(self, first_block: int, nblocks: int, generation: int) -> bitarray:
        return older_than(self._planes, first_block, nblocks, generation)

    def apply_restored_mask(self, first_block: int, mask: bitarray, generation: int) -> None:
        if mask.any():
            store_masked(self._planes, first_block, mask, generation, self.entries)
