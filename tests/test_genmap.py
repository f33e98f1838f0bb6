"""GenerationMap: marking, counters, selections, persistence, crash safety."""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap

import pytest
from bitarray import bitarray
from hypothesis import HealthCheck, given, settings, strategies as st

from volume.genmap import (GenerationMap, MapBusy, MapCorrupt, MapError, MapMismatch, extents,
                           journal_path)

VID = b"test-volume-0001"
G = 4096


def make(tmp_path, size=64 * G, gran=G, name="v.genmap", **kw):
    return GenerationMap.create(tmp_path / name, volume_size=size, granularity=gran,
                                volume_id=VID, **kw)


class Model:
    """The naive reference: a list of generations per block."""

    def __init__(self, entries: int) -> None:
        self.gen = [0] * entries
        self.current = 1

    def mark(self, a: int, b: int) -> None:
        for i in range(a, b):
            self.gen[i] = self.current

    def counts(self) -> dict[int, int]:
        c = {g: 0 for g in range(self.current + 1)}
        for g in self.gen:
            c[g] += 1
        return c

    def select(self, lo: int, hi: int) -> list[int]:
        return [i for i, g in enumerate(self.gen) if lo <= g <= hi]


def as_list(sel: bitarray) -> list[int]:
    return [i for i, v in enumerate(sel) if v]


# -- units -------------------------------------------------------------------------------
def test_new_map_is_generation_one_all_unchanged(tmp_path):
    with make(tmp_path) as m:
        assert m.current_generation == 1
        assert m.counts() == {0: 64, 1: 0}
        assert m.entries == 64 and m.nplanes == 4
        assert not m.blocks_in_generations(1, 1).any()


def test_mark_rounds_out_to_tracking_blocks(tmp_path):
    with make(tmp_path) as m:
        m.mark(G - 1, 2)            # straddles blocks 0 and 1
        m.mark(10 * G, G)           # exactly block 10
        m.mark(20 * G + 5, 0)       # empty: nothing
        assert as_list(m.blocks_in_generations(1, 1)) == [0, 1, 10]
        assert m.counts() == {0: 61, 1: 3}


def test_mark_outside_volume_is_refused(tmp_path):
    with make(tmp_path) as m:
        with pytest.raises(ValueError):
            m.mark(63 * G, G + 1)
        with pytest.raises(ValueError):
            m.mark(-1, 1)


def test_partial_last_block_is_one_entry(tmp_path):
    with make(tmp_path, size=10 * G + 100) as m:
        assert m.entries == 11
        m.mark(10 * G + 99, 1)
        assert as_list(m.blocks_in_generations(1, 1)) == [10]
        assert sum(m.counts().values()) == 11


def test_differential_scope_and_generation_advance(tmp_path):
    with make(tmp_path) as m:
        m.mark(0, G)
        p1 = m.begin_differential(1)
        assert p1.generation_range == (1, 1) and as_list(p1.selection) == [0]
        assert m.current_generation == 2
        m.mark(2 * G, G)
        p2 = m.begin_differential(2)
        assert p2.generation_range == (1, 2)
        assert list(p2.runs()) == [(0, 1, 1), (2, 1, 2)]
        assert m.counts() == {0: 62, 1: 1, 2: 1, 3: 0}
        with pytest.raises(ValueError, match=r"1\.\.3"):
            m.begin_differential(4)
        with pytest.raises(ValueError, match=r"1\.\.3"):
            m.begin_differential(0)


def test_writes_after_begin_belong_to_next_generation(tmp_path):
    with make(tmp_path) as m:
        m.mark(0, G)
        plan = m.begin_differential(1)
        m.mark(0, G)                     # rewritten while the backup runs
        assert m.generation_of(0) == 2
        assert plan.generation_of(0) == 1 and as_list(plan.selection) == [0]
        assert m.counts()[2] == 1


def test_full_backup_resets_everything(tmp_path):
    with make(tmp_path) as m:
        m.mark(0, 5 * G)
        m.begin_differential(1)
        m.mark(0, G)
        plan = m.begin_full()
        assert plan.full and plan.generation_range == (0, 0)
        assert plan.block_count == 64 and plan.selection.all()
        assert m.current_generation == 1 and m.counts() == {0: 64, 1: 0}
        assert m.base_id != bytes(16)


def test_more_than_fifteen_generations_grow_a_plane(tmp_path):
    with make(tmp_path) as m:
        for g in range(1, 21):
            m.mark(g * G, G)
            m.begin_differential(1)
        assert m.current_generation == 21 and m.nplanes == 5
        c = m.counts()
        assert all(c[g] == 1 for g in range(1, 21))
        assert as_list(m.blocks_in_generations(14, 17)) == [14, 15, 16, 17]
        plan = m.begin_differential(5)
        assert plan.generation_range == (17, 21)
        assert [g for _a, _n, g in plan.runs()] == [17, 18, 19, 20]


def test_plan_survives_later_folds_and_restores(tmp_path):
    with make(tmp_path) as m:
        m.mark(0, 3 * G)
        m.begin_differential(1)
        m.mark(G, G)
        plan = m.begin_differential(2)
        m.mark(0, G)
        m.begin_differential(1)
        m.apply_restored(2, 1, 7)
        assert list(plan.runs()) == [(0, 1, 1), (1, 1, 2), (2, 1, 1)]


def test_extents_are_runs():
    a = bitarray("0110011101", endian="little")
    assert list(extents(a)) == [(1, 2), (5, 3), (9, 1)]
    assert list(extents(bitarray(0))) == []


def test_apply_restored_and_blocks_older_than(tmp_path):
    with make(tmp_path) as m:
        m.apply_restored(0, 4, 3)
        m.apply_restored(2, 1, 1)
        assert m.current_generation == 4
        older = m.blocks_older_than(0, 6, 3)
        assert older.to01() == "001011"
        m.set_current_generation(9)
        assert m.current_generation == 9
        with pytest.raises(ValueError):
            m.set_current_generation(3)


def test_estimate_blocks(tmp_path):
    with make(tmp_path) as m:
        m.mark(0, 3 * G)
        m.begin_differential(1)
        m.mark(10 * G, G)
        assert m.estimate_blocks(1) == 1
        assert m.estimate_blocks(2) == 4


# -- persistence and checks at open --------------------------------------------------------
def test_round_trip(tmp_path):
    m = make(tmp_path)
    m.mark(0, 3 * G)
    m.begin_differential(1)
    m.mark(5 * G, 2 * G)
    m.begin_differential(2)
    m.mark(40 * G, 1)                      # only in the journal
    counts = m.counts()
    sels = [m.blocks_in_generations(g, g) for g in range(4)]
    m.close()
    m = GenerationMap.open(tmp_path / "v.genmap", volume_size=64 * G, volume_id=VID)
    assert m.counts() == counts and m.current_generation == 3
    assert [m.blocks_in_generations(g, g) for g in range(4)] == sels
    assert not m.recovered
    m.close()


def test_open_checks_identity_size_granularity(tmp_path):
    make(tmp_path).close()
    p = tmp_path / "v.genmap"
    with pytest.raises(MapMismatch, match="belongs to volume"):
        GenerationMap.open(p, volume_size=64 * G, volume_id=b"other")
    with pytest.raises(MapMismatch, match="volume of 262144 bytes; the volume has 4096 bytes"):
        GenerationMap.open(p, volume_size=G, volume_id=VID)
    with pytest.raises(MapMismatch, match="tracks 4096-byte blocks, not 2048"):
        GenerationMap.open(p, volume_size=64 * G, volume_id=VID, granularity=2048)
    GenerationMap.open(p, volume_size=64 * G, volume_id=VID).close()


def test_open_twice_is_busy(tmp_path):
    with make(tmp_path):
        with pytest.raises(MapBusy):
            GenerationMap.open(tmp_path / "v.genmap", volume_size=64 * G, volume_id=VID)


@pytest.mark.parametrize("offset,expect", [(0, "not a generation map"), (40, "header checksum"),
                                           (260, "counter table"), (4096 + 3, "bit plane 0")])
def test_corrupt_map_file_detected(tmp_path, offset, expect):
    m = make(tmp_path)
    m.mark(0, 8 * G)
    m.begin_differential(1)
    m.close()
    p = tmp_path / "v.genmap"
    raw = bytearray(p.read_bytes())
    raw[offset] ^= 0x40
    p.write_bytes(raw)
    with pytest.raises(MapCorrupt, match=expect):
        GenerationMap.open(p, volume_size=64 * G, volume_id=VID)


def test_wrong_version_is_a_mismatch(tmp_path):
    make(tmp_path).close()
    p = tmp_path / "v.genmap"
    raw = bytearray(p.read_bytes())
    struct.pack_into("<H", raw, 8, 2)
    p.write_bytes(raw)
    with pytest.raises(MapMismatch, match="version 2"):
        GenerationMap.open(p, volume_size=64 * G, volume_id=VID)


def test_missing_or_foreign_journal(tmp_path):
    make(tmp_path).close()
    make(tmp_path, name="w.genmap").close()
    os.replace(journal_path(tmp_path / "w.genmap"), journal_path(tmp_path / "v.genmap"))
    with pytest.raises(MapError):
        GenerationMap.open(tmp_path / "w.genmap", volume_size=64 * G, volume_id=VID)
    # v's journal is now w's: same geometry and id, fold sequences agree (both fresh)
    GenerationMap.open(tmp_path / "v.genmap", volume_size=64 * G, volume_id=VID).close()


def test_create_refuses_existing(tmp_path):
    make(tmp_path).close()
    with pytest.raises(MapError, match="already exists"):
        make(tmp_path)
    make(tmp_path, overwrite=True).close()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        make(tmp_path, gran=3000)
    with pytest.raises(ValueError):
        make(tmp_path, size=0)
    with pytest.raises(ValueError):
        GenerationMap.create(tmp_path / "x", volume_size=G, volume_id=b"")


def test_interrupted_fold_keeps_both_dirty_sets(tmp_path, monkeypatch):
    m = make(tmp_path)
    m.mark(0, G)
    m.begin_differential(1)
    m.mark(3 * G, G)                       # generation 2, about to be folded

    def boom():
        raise OSError("power cut")
    monkeypatch.setattr(m, "_write_map_file", boom)
    with pytest.raises(OSError):
        m.begin_differential(1)
    m.mark(9 * G, G)                       # a write after the switch: next generation's slot
    # simulate the process dying here: drop the handles without closing cleanly
    m._release()
    m._closed = True
    m = GenerationMap.open(tmp_path / "v.genmap", volume_size=64 * G, volume_id=VID)
    assert m.recovered
    assert m.current_generation == 2
    assert as_list(m.blocks_in_generations(2, 2)) == [3, 9]      # nothing missed
    assert as_list(m.blocks_in_generations(1, 1)) == [0]
    m.close()


CHILD = textwrap.dedent("""
    import os, signal, sys
    from volume.genmap import GenerationMap
    path, size = sys.argv[1], int(sys.argv[2])
    m = GenerationMap.open(path, volume_size=size, volume_id=b"test-volume-0001")
    out = os.fdopen(int(sys.argv[3]), "w", buffering=1)
    import random
    rnd = random.Random(int(sys.argv[4]))
    for i in range(int(sys.argv[5])):
        off = rnd.randrange(size)
        n = rnd.randrange(1, min(size - off, 300000) + 1)
        m.mark(off, n)
        out.write(f"{off} {n}\\n")          # reported only after mark() returned
    os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_marks_survive_sigkill(tmp_path, seed):
    size = 4096 * G + 123
    m = make(tmp_path, size=size)
    m.mark(0, G)
    m.begin_differential(1)
    m.close()
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "v.genmap"), str(size),
                             str(w), str(seed), "200"], pass_fds=(w,),
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.close(w)
    with os.fdopen(r) as f:
        lines = f.read().split("\n")
    assert proc.wait(timeout=60) == -signal.SIGKILL
    marked = [tuple(map(int, ln.split())) for ln in lines if ln]
    assert len(marked) == 200
    m = GenerationMap.open(tmp_path / "v.genmap", volume_size=size, volume_id=VID)
    assert m.recovered                        # the running flag was left set
    sel = m.blocks_in_generations(2, 2)
    for off, n in marked:
        a, k = m.block_range(off, n)
        assert sel[a:a + k].all(), (off, n)
    plan = m.begin_differential(1)
    assert plan.selection == sel
    m.close()


# -- properties ---------------------------------------------------------------------------
ops = st.lists(st.one_of(
    st.tuples(st.just("w"), st.integers(0, 40 * 2048 - 8), st.integers(0, 9000)),
    st.tuples(st.just("d"), st.integers(1, 30)),
    st.tuples(st.just("f"),),
    st.tuples(st.just("reopen"),),
), max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops)
def test_counts_and_selections_match_model(tmp_path_factory, ops):
    tmp = tmp_path_factory.mktemp("prop")
    size = 40 * 2048 - 7
    m = GenerationMap.create(tmp / "p.genmap", volume_size=size, granularity=2048, volume_id=VID,
                             sync=False)
    model = Model(m.entries)
    try:
        for op in ops:
            if op[0] == "w":
                off, n = op[1], min(op[2], size - op[1])
                m.mark(off, n)
                if n:
                    model.mark(off // 2048, (off + n - 1) // 2048 + 1)
            elif op[0] == "d":
                k = min(op[1], m.current_generation)
                plan = m.begin_differential(k)
                c = model.current
                lo = c - k + 1
                assert plan.generation_range == (lo, c)
                assert as_list(plan.selection) == model.select(lo, c)
                runs = [(a, n, g) for a, n, g in plan.runs() for _ in [0]]
                for a, n, g in runs:
                    assert all(model.gen[i] == g for i in range(a, a + n))
                assert sum(n for _a, n, _g in runs) == plan.block_count
                model.current += 1
            elif op[0] == "f":
                plan = m.begin_full()
                assert plan.block_count == m.entries
                model.gen = [0] * m.entries
                model.current = 1
            else:
                m.close()
                m = GenerationMap.open(tmp / "p.genmap", volume_size=size, volume_id=VID,
                                       sync=False)
            assert m.current_generation == model.current
            assert m.counts() == model.counts()
        for lo in range(0, model.current + 1, 3):
            assert as_list(m.blocks_in_generations(lo, model.current)) == \
                model.select(lo, model.current)
    finally:
        m.close()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.integers(0, 63), st.lists(st.booleans(), min_size=1, max_size=40),
                              st.integers(0, 20)), min_size=1, max_size=8),
       marks=st.lists(st.integers(0, 63), max_size=6))
def test_apply_restored_mask_equals_per_run_apply_restored(tmp_path, ops, marks):
    """The batched form used by the differential restore sets exactly what one
    apply_restored per run of the mask sets (planes, dirty bits, counts, current)."""
    a = make(tmp_path, name="a.genmap", sync=False, overwrite=True)
    b = make(tmp_path, name="b.genmap", sync=False, overwrite=True)
    try:
        for blk in marks:
            a.mark(blk * G, G)
            b.mark(blk * G, G)
        for first, bits, gen in ops:
            mask = bitarray(bits[:64 - first], endian="little")
            a.apply_restored_mask(first, mask, gen)
            for s, n in extents(mask):
                b.apply_restored(first + s, n, gen)
        assert [a.generation_of(i) for i in range(64)] == [b.generation_of(i) for i in range(64)]
        assert a.counts() == b.counts() and a.current_generation == b.current_generation
        for g in range(0, 22, 3):
            assert a.blocks_older_than(0, 64, g) == b.blocks_older_than(0, 64, g)
    finally:
        a.close()
        b.close()


# -- group commit and power loss ------------------------------------------------------------
DEFERRED_CHILD = textwrap.dedent("""
    import os, signal, sys, random
    from volume import durability
    from volume.genmap import GenerationMap
    path, size = sys.argv[1], int(sys.argv[2])
    m = GenerationMap.open(path, volume_size=size, volume_id=b"test-volume-0001")
    m._msync_marks = True   # the power-loss path, even where the test runs on tmpfs
    out = os.fdopen(int(sys.argv[3]), "w", buffering=1)
    rnd = random.Random(int(sys.argv[4]))
    for batch in range(40):
        done = []
        for i in range(5):
            off = rnd.randrange(size)
            n = rnd.randrange(1, min(size - off, 40000) + 1)
            m.mark(off, n, sync=False)
            done.append(f"{off} {n}")
        durability.barrier()                 # the acknowledgement point
        out.write("\\n".join(done) + "\\n")
    os.kill(os.getpid(), signal.SIGKILL)
""")


def _run_deferred_child(tmp_path, size, seed):
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", DEFERRED_CHILD, str(tmp_path / "v.genmap"),
                             str(size), str(w), str(seed)], pass_fds=(w,),
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.close(w)
    with os.fdopen(r) as f:
        lines = f.read().split("\n")
    assert proc.wait(timeout=60) == -signal.SIGKILL
    return [tuple(map(int, ln.split())) for ln in lines if ln]


@pytest.mark.parametrize("reboot", [False, True], ids=["kill-9", "power-loss"])
def test_group_committed_marks_survive_crash_and_reboot(tmp_path, reboot):
    import struct as _struct
    import crc32c as _crc

    size = 8192 * G
    m = make(tmp_path, size=size)
    m.begin_full()
    slot_off, plane_bytes = list(m._slot_off), m._plane_bytes
    m.close()
    marked = _run_deferred_child(tmp_path, size, seed=7)
    assert len(marked) == 200
    jpath = str(tmp_path / "v.genmap") + ".dirty"
    if reboot:
        # Power loss: fine bits were never msynced (lost), the coarse intent bits
        # were (barrier); the journal is from another boot.
        with open(jpath, "r+b") as f:
            for off in slot_off:
                f.seek(off)
                f.write(bytes(plane_bytes))
            f.seek(0)
            hdr = bytearray(f.read(128))
            hdr[85:101] = b"\xee" * 16                       # another boot id
            _struct.pack_into("<I", hdr, 124, _crc.crc32c(bytes(hdr[:124])))
            f.seek(0)
            f.write(hdr)
    m = GenerationMap.open(tmp_path / "v.genmap", volume_size=size, volume_id=VID)
    assert m.recovered
    gen = m.current_generation
    sel = m.blocks_in_generations(gen, gen)
    exact = bitarray(len(sel))
    exact.setall(0)
    for off, n in marked:
        a, k = m.block_range(off, n)
        assert sel[a:a + k].all(), (off, n)           # no acknowledged write missed
        exact[a:a + k] = 1
    if reboot:
        assert sel.count() >= exact.count()           # coarse regions: false positives only
    else:
        assert sel == exact                           # same boot: the exact fine bits
    m.close()


# -- two-phase cuts: the map changes only when the backup's stream was read to its end --------
def test_abandoned_differential_cut_leaves_the_map_as_it_was(tmp_path):
    m = make(tmp_path)
    m.begin_full()
    m.mark(2 * G, G)
    before = (m.current_generation, m.counts(), m.base_id)
    cut = m.cut_differential(1)
    assert cut.plan.generation_range == (1, 1) and as_list(cut.plan.selection) == [2]
    m.mark(5 * G, G)                               # after the cut
    # Until commit the map reports its old state; the post-cut write is simply "current".
    assert m.current_generation == 1 and as_list(m.blocks_in_generations(1, 1)) == [2, 5]
    assert m.generation_of(5) == 1 and m.counts()[1] == 2
    with pytest.raises(MapBusy):
        m.apply_restored(0, 1, 1)
    with pytest.raises(MapBusy):
        m.cut_full()
    cut.abandon()
    assert m.pending_cut is None
    assert (m.current_generation, m.base_id) == (before[0], before[2])
    assert as_list(m.blocks_in_generations(1, 1)) == [2, 5]
    m.close()
    m = GenerationMap.open(tmp_path / "v.genmap", volume_size=64 * G, volume_id=VID)
    assert not m.recovered and m.current_generation == 1
    assert as_list(m.blocks_in_generations(1, 1)) == [2, 5]
    cut = m.cut_differential(1)                    # the next cut is ordinary
    cut.commit()
    assert m.current_generation == 2 and as_list(m.blocks_in_generations(1, 1)) == [2, 5]
    m.close()


def test_committed_cuts_put_post_cut_writes_in_the_next_generation(tmp_path):
    m = make(tmp_path)
    m.mark(0, 3 * G)
    cut = m.cut_full()
    m.mark(7 * G, G)
    base = m.base_id
    assert base == bytes(16) and m.current_generation == 1
    cut.commit()
    assert m.base_id == cut.plan.base_id != bytes(16)
    assert m.current_generation == 1 and as_list(m.blocks_in_generations(1, 1)) == [7]
    cut = m.cut_differential(1)
    m.mark(8 * G, G)
    cut.commit()
    assert m.current_generation == 2
    assert as_list(m.blocks_in_generations(1, 1)) == [7]
    assert as_list(m.blocks_in_generations(2, 2)) == [8]
    with pytest.raises(MapError):
        cut.commit()
    m.close()


@pytest.mark.parametrize("kind", ["full", "diff"])
def test_crash_with_a_pending_cut_recovers_as_if_no_backup_began(tmp_path, kind):
    m = make(tmp_path)
    m.begin_full()
    m.mark(1 * G, G)
    m.begin_differential(1)                        # generation 1 = {1}
    m.mark(4 * G, G)                               # generation 2
    cut = m.cut_full() if kind == "full" else m.cut_differential(1)
    m.mark(6 * G, G)                               # after the cut
    base = m.base_id
    m._release()                                   # the process dies with the cut pending
    m._closed = True
    m = GenerationMap.open(tmp_path / "v.genmap", volume_size=64 * G, volume_id=VID)
    assert m.recovered and m.current_generation == 2 and m.base_id == base
    assert as_list(m.blocks_in_generations(2, 2)) == [4, 6]
    assert as_list(m.blocks_in_generations(1, 1)) == [1]
    del cut
    m.close()


@settings(max_examples=80, deadline=None)
@given(vals=st.lists(st.integers(0, (1 << 10) - 1), min_size=1, max_size=300),
       nplanes=st.integers(0, 10), seed=st.integers(0, 1 << 20))
def test_counts_within_a_mask_equal_counting_the_masked_blocks_one_by_one(vals, nplanes, seed):
    import random
    from volume.genmap import _counts_within
    rnd = random.Random(seed)
    vals = [v & ((1 << nplanes) - 1) for v in vals]
    n = len(vals)
    planes = [bitarray([bool(v >> p & 1) for v in vals], endian="little") for p in range(nplanes)]
    mask = bitarray([rnd.random() < 0.4 for _ in range(n)], endian="little")
    before = [p.copy() for p in planes], mask.copy()
    got = _counts_within(planes, mask, n, mask.count())
    want = [0] * (1 << nplanes)
    for v, m in zip(vals, mask):
        if m:
            want[v] += 1
    assert got == want
    assert (planes, mask) == before              # the caller's arrays are left alone
