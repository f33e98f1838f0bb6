"""Deterministic volume contents and changes: the same seed, the same bytes.

:func:`random_file` writes a volume file of random bytes (or, with
``density < 1``, that fraction of its blocks random and the rest sparse zeros);
the plugin's seeded volumes are made with it.  :func:`scribble` makes random
writes through any ``write(lba, data)`` — an iSCSI client's, an
:class:`~scsi_target.testing.InProcessTarget`'s — and :func:`tracked_writes`
changes a local tracked volume the way a server would (through its tracker),
so a differential backup has something to find.
"""
from __future__ import annotations

import random
from pathlib import Path

CHUNK = 16 << 20


def random_file(path: Path | str, size: int, *, density: float = 1.0, seed: int = 0,
                block: int = 4096) -> None:
    """A volume file of ``size`` bytes: random data, or (density < 1) that fraction of
    ``block``-sized blocks random and the rest zeros (a sparse file)."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        if density >= 1.0:
            for off in range(0, size, CHUNK):
                f.write(rnd.randbytes(min(CHUNK, size - off)))
            return
        nblocks = -(-size // block)
        for b in sorted(rnd.sample(range(nblocks), int(nblocks * density))):
            f.seek(b * block)
            f.write(rnd.randbytes(min(block, size - b * block)))


def scribble(write, size: int, *, writes: int, seed: int, max_blocks: int = 64, bs: int = 512,
             by_lba: bool = True) -> None:
    """``writes`` random writes (1..max_blocks blocks of random data) through
    ``write(lba, data)`` or, with ``by_lba=False``, ``write(offset, data)``."""
    rnd = random.Random(seed)
    for _ in range(writes):
        n = rnd.randint(1, max_blocks)
        lba = rnd.randrange(size // bs - n)
        data = rnd.randbytes(n * bs)
        write(lba if by_lba else lba * bs, data)


def tracked_writes(path: Path | str, size: int, *, writes: int, seed: int) -> None:
    """:func:`scribble` on the tracked volume file ``path`` through its generation map."""
    from volume import durability
    from volume.filestore import FileStore
    from volume.tracked import TrackingStore
    vol = TrackingStore.open(FileStore(path), Path(path))
    try:
        scribble(vol.write, size, writes=writes, seed=seed, by_lba=False)
        durability.barrier()
    finally:
        vol.close()
