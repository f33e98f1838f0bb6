"""volume/precedence.py: the one chain rule restore and merge share.  GenerationPlanes
(a merge's restored generations in memory) answers exactly as the target's own map."""
from __future__ import annotations

from bitarray import bitarray
from hypothesis import HealthCheck, given, settings, strategies as st

from volume.genmap import GenerationMap
from volume.precedence import (GenerationPlanes, RestoredGenerations, leaves_generation,
                               taken)

G = 4096
N = 64


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.integers(0, N - 1), st.lists(st.booleans(), min_size=1,
                                                                max_size=40),
                              st.integers(0, 40)), min_size=1, max_size=10))
def test_planes_answer_as_the_map(tmp_path, ops):
    m = GenerationMap.create(tmp_path / "v.genmap", volume_size=N * G, granularity=G,
                             volume_id=b"prec", sync=False, overwrite=True)
    p = GenerationPlanes(N)
    try:
        m.reset(bytes(range(16)))                   # as a full restore leaves it: all 0
        for first, bits, gen in ops:
            mask = bitarray(bits[:N - first], endian="little")
            m.apply_restored_mask(first, mask, gen)
            p.apply_restored_mask(first, mask, gen)
            for g in (0, 1, gen, gen + 1, 41):
                for a, n in ((0, N), (first, len(mask)), (first, 0)):
                    assert p.blocks_older_than(a, n, g) == m.blocks_older_than(a, n, g)
                    assert taken(p, False, a, n, g) == taken(m, False, a, n, g)
    finally:
        m.close()


def test_the_rule():
    p = GenerationPlanes(8)
    assert isinstance(p, RestoredGenerations)
    assert issubclass(GenerationMap, RestoredGenerations)
    p.apply_restored_mask(0, bitarray("11110000", endian="little"), 3)
    # A full stream's copy is taken everywhere and leaves nothing to record (0 stays).
    assert taken(p, True, 0, 8, 1).all() and leaves_generation(True, 1) is None
    # A differential's copy where the held generation is older; of two copies of one
    # generation the first (already held) wins.
    assert taken(p, False, 0, 8, 3) == bitarray("00001111", endian="little")
    assert taken(p, False, 0, 8, 4).all() and leaves_generation(False, 4) == 4
    assert not taken(p, False, 0, 4, 2).any()
