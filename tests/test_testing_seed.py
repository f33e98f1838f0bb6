"""scsi_target.testing.seed: deterministic random volumes and random changes."""
from __future__ import annotations

import os

from scsi_target.testing.seed import random_file, scribble, tracked_writes

SIZE = 1 << 20


def test_random_file_is_the_seed_s_bytes(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    random_file(a, SIZE, seed=3)
    random_file(b, SIZE, seed=3)
    random_file(c, SIZE, seed=4)
    assert a.stat().st_size == SIZE
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    assert a.read_bytes().count(0) < SIZE // 100          # random, not zeros


def test_random_file_with_a_density_is_sparse_zeros_elsewhere(tmp_path):
    p = tmp_path / "sparse"
    random_file(p, SIZE, density=0.25, seed=1, block=4096)
    data = p.read_bytes()
    blocks = [data[i:i + 4096] for i in range(0, SIZE, 4096)]
    assert sum(1 for b in blocks if b != bytes(4096)) == len(blocks) // 4
    assert os.stat(p).st_blocks * 512 < SIZE               # holes where it is zero


def test_scribble_is_deterministic_and_stays_inside_the_volume():
    seen = {}

    def record(key):
        out = []
        seen[key] = out
        return lambda lba, data: out.append((lba, bytes(data)))

    scribble(record(1), SIZE, writes=50, seed=9)
    scribble(record(2), SIZE, writes=50, seed=9)
    scribble(record(3), SIZE, writes=50, seed=9, by_lba=False)
    assert len(seen[1]) == 50 and seen[1] == seen[2]
    assert all(lba >= 0 and lba * 512 + len(d) <= SIZE and 1 <= len(d) // 512 <= 64
               for lba, d in seen[1])
    assert [(o // 512, d) for o, d in seen[3]] == seen[1]


def test_tracked_writes_reach_the_file_and_its_generation_map(tmp_path):
    from volume.filestore import FileStore
    from volume.tracked import TrackingStore
    p = tmp_path / "v.img"
    random_file(p, SIZE, seed=1)
    before = p.read_bytes()
    TrackingStore.open(FileStore(p), p).close()          # make it a tracked volume
    tracked_writes(p, SIZE, writes=20, seed=5)
    assert p.read_bytes() != before
    vol = TrackingStore.open(FileStore(p), p)
    try:
        assert sum(n for g, n in vol.map.counts().items() if g) > 0   # blocks marked changed
    finally:
        vol.close()
