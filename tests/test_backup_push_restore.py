"""Push-style restore (volume.restore.StreamRestorer): a stream fed in any chunking,
chained over several restorer instances, gives exactly what restore() from the
files gives; damaged, truncated, misplaced streams are detected and nothing
wrong is written; memory stays bounded whatever the chunking."""
from __future__ import annotations

import os
import random
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from volume.backup import differential_backup, full_backup, restore
from volume.genmap import GenerationMap
from volume.memstore import MemoryStore
from volume.restore import ChainState, RestoreRejected, RestoreReport, StreamRestorer
from volume.stream import HEADER_SIZE, RECORD_HEADER_SIZE, StreamError

VID = b"push-restore"
GR = 1024
FILL = b"\xee"


class Week:
    """A source volume with a full backup and ``days`` scope-2 differentials."""

    def __init__(self, d: Path, days: int = 4, seed: int = 7, size: int = 48 * GR - 200,
                 compress: bool = False) -> None:
        rnd = random.Random(seed)
        self.size = size
        self.store = MemoryStore(size)
        self.map = GenerationMap.create(d / "src.genmap", volume_size=size, granularity=GR,
                                        volume_id=VID, sync=False)
        self.streams: list[Path] = []
        self.snaps: list[bytes] = []
        for b in range(0, size, GR):
            self.write(b, self.payload(rnd, min(GR, size - b)))
        self._backup(d, None, compress)
        for _ in range(days):
            for _ in range(5):
                off = rnd.randrange(size - 3 * GR)
                self.write(off, self.payload(rnd, rnd.randrange(1, 3 * GR)))
            self._backup(d, min(2, self.map.current_generation), compress)
        self.map.close()

    @staticmethod
    def payload(rnd: random.Random, n: int) -> bytes:
        k = rnd.random()
        if k < 0.2:
            return bytes(n)
        return rnd.randbytes(n)

    def write(self, off: int, data: bytes) -> None:
        self.map.mark(off, len(data))
        self.store.write(off, data)

    def _backup(self, d: Path, scope: int | None, compress: bool) -> None:
        p = d / f"s{len(self.streams)}.bin"
        if scope is None:
            full_backup(self.store, self.map, p, compress=compress, max_record_bytes=4 * GR)
        else:
            differential_backup(self.store, self.map, scope, p, compress=compress,
                                max_record_bytes=4 * GR)
        self.streams.append(p)
        self.snaps.append(bytes(self.store.read(0, self.size)))


def target(d: Path, size: int, name: str, *, vid: bytes = VID, gran: int = GR):
    store = MemoryStore(size)
    store.write(0, FILL * size)            # every block must be restored to match
    m = GenerationMap.create(d / f"{name}.genmap", volume_size=size, granularity=gran,
                             volume_id=vid, sync=False)
    return store, m


def chunks(raw: bytes, cuts: list[int]):
    """raw split at the given cut points (mod its length), as reused-buffer views."""
    pts = sorted({c % (len(raw) + 1) for c in cuts} | {0, len(raw)})
    buf = bytearray(max(1, len(raw)))
    for a, b in zip(pts, pts[1:]):
        if a == b:
            continue
        buf[:b - a] = raw[a:b]
        yield memoryview(buf)[:b - a]
        buf[:b - a] = b"\xff" * (b - a)      # the caller reuses its buffer after feed()


def push_chain(store, gmap, paths, cuts, *, skip=(), state=None) -> RestoreReport:
    rep = None
    for p in paths:
        r = StreamRestorer(store, gmap, expect_previous=state, name=str(p), skip_generations=skip)
        for piece in chunks(p.read_bytes(), cuts):
            r.feed(piece)
        rep = r.finish()
        assert not rep.errors, rep.errors
        s = rep.streams[-1]             # every intact record is accounted for
        assert s.applied + s.skipped_older + s.skipped_forbidden == s.records, s
        state = rep.chain
    return rep


def summary(rep: RestoreReport):
    return (rep.errors, rep.unrecovered, rep.uncertain, rep.generation, rep.wrote,
            [(s.name, s.records, s.blocks, s.bytes, s.errors, s.applied, s.blocks_written,
              s.skipped_older, s.skipped_forbidden,
              [(b.offset, b.reason, b.first_block, b.nblocks, b.generation) for b in s.damage])
             for s in rep.streams])


def image_and_map(store, gmap):
    return (bytes(store.read(0, store.size)),
            [gmap.generation_of(b) for b in range(gmap.entries)], gmap.current_generation)


# -- equivalence with restore() from files ------------------------------------------------
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10 ** 6), cuts=st.lists(st.integers(0, 10 ** 6), max_size=25),
       damage=st.one_of(st.none(), st.tuples(st.integers(1, 4), st.integers(0, 10 ** 6),
                                             st.integers(1, 255))),
       cut_stream=st.one_of(st.none(), st.tuples(st.integers(1, 4), st.floats(0.05, 0.95))),
       compress=st.booleans(), skip=st.sampled_from([(), (2,)]))
def test_push_in_any_chunking_equals_file_restore(seed, cuts, damage, cut_stream, compress, skip):
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        w = Week(d, seed=seed, compress=compress)
        paths = w.streams
        if damage:                      # a byte flipped after the stream header
            i, pos, flip = damage
            raw = bytearray(paths[i].read_bytes())
            raw[HEADER_SIZE + pos % (len(raw) - HEADER_SIZE)] ^= flip
            paths[i].write_bytes(raw)
        if cut_stream:                  # truncated
            i, frac = cut_stream
            raw = paths[i].read_bytes()
            paths[i].write_bytes(raw[:max(HEADER_SIZE, int(len(raw) * frac))])
        a_store, a_map = target(d, w.size, "files")
        want = restore(a_store, a_map, paths, skip_generations=skip)
        b_store, b_map = target(d, w.size, "push")
        got = push_chain(b_store, b_map, paths, cuts, skip=skip)
        assert summary(got) == summary(want)
        assert image_and_map(b_store, b_map) == image_and_map(a_store, a_map)
        if not damage and not cut_stream and not skip:
            assert got.ok and bytes(b_store.read(0, w.size)) == w.snaps[-1]


def test_every_block_verified_or_reported(tmp_path):
    """Fed one byte at a time with a damaged record: no block holds data that was never
    in the volume; every block that differs from the last snapshot is reported."""
    w = Week(tmp_path, days=2)
    raw = bytearray(w.streams[1].read_bytes())
    raw[HEADER_SIZE + RECORD_HEADER_SIZE + 3] ^= 0x40       # data of the first record
    w.streams[1].write_bytes(raw)
    store, m = target(tmp_path, w.size, "t")
    rep = push_chain(store, m, w.streams, list(range(0, 10 ** 6, 1)))
    assert rep.bad_records and rep.bad_records[0].first_block is not None
    doubtful = {b for a, n in rep.unrecovered + rep.uncertain for b in range(a, a + n)}
    img = bytes(store.read(0, w.size))
    for b in range(m.entries):
        blk = img[b * GR:(b + 1) * GR]
        if blk != w.snaps[-1][b * GR:(b + 1) * GR]:
            assert b in doubtful
            assert any(blk == s[b * GR:(b + 1) * GR] for s in w.snaps), b


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10 ** 6), limits=st.sampled_from([(1, 0), (2, 1), (5, 3), (64, 40)]),
       cuts=st.lists(st.integers(0, 10 ** 6), max_size=10))
def test_batching_limits_do_not_change_the_result(seed, limits, cuts):
    """Differential records are applied in batches; any batch size and span limit
    (down to one record per batch) restores the same image, map and report."""
    import volume.restore as R
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        w = Week(d, seed=seed, days=5)
        a_store, a_map = target(d, w.size, "ref")
        want = push_chain(a_store, a_map, w.streams, [])
        saved = R._BATCH_RECORDS, R._BATCH_SPAN
        R._BATCH_RECORDS, R._BATCH_SPAN = limits
        try:
            b_store, b_map = target(d, w.size, "small")
            got = push_chain(b_store, b_map, w.streams, cuts)
        finally:
            R._BATCH_RECORDS, R._BATCH_SPAN = saved
        assert summary(got) == summary(want)
        assert image_and_map(b_store, b_map) == image_and_map(a_store, a_map)
        assert bytes(b_store.read(0, w.size)) == w.snaps[-1]


def test_many_scattered_records_cross_batches(tmp_path):
    """Thousands of single-block records spread over a wide volume: batches flush on
    count and on span; none is lost."""
    gran, size = 512, 16 << 20
    rnd = random.Random(3)
    store = MemoryStore(size)
    m = GenerationMap.create(tmp_path / "s.genmap", volume_size=size, granularity=gran,
                             volume_id=VID, sync=False)
    full_backup(store, m, tmp_path / "f.bin")
    blocks = sorted(rnd.sample(range(size // gran), 3000))
    for b in blocks:
        m.mark(b * gran, gran)
        store.write(b * gran, rnd.randbytes(gran))
    differential_backup(store, m, 1, tmp_path / "d.bin")
    for cuts in ([], [rnd.randrange(1 << 21) for _ in range(30)]):
        dst, dm = MemoryStore(size), GenerationMap.create(
            tmp_path / f"t{len(cuts)}.genmap", volume_size=size, granularity=gran, volume_id=VID,
            sync=False)
        rep = push_chain(dst, dm, [tmp_path / "f.bin", tmp_path / "d.bin"], cuts)
        assert rep.ok and rep.streams[-1].applied == rep.streams[-1].records > 2000
        assert rep.streams[-1].blocks_written == 3000
        assert dst.read(0, size) == store.read(0, size)
        assert all(dm.generation_of(b) == 1 for b in blocks[::97])


# -- rejected streams: nothing written ---------------------------------------------------
def feed_all(r: StreamRestorer, raw: bytes, step: int = 777) -> None:
    for pos in range(0, len(raw), step):
        r.feed(raw[pos:pos + step])


@pytest.mark.parametrize("order, msg", [
    ([0, 2, 1], "out of order"),          # generations 1..1 after 1..2
    ([0, 1, 1], "out of order"),
    ([0, 3], "generation 1 is missing"),   # 2..3 right after the full one
    ([0, 1, 0], "only come first"),
])
def test_misplaced_stream_rejected_when_its_header_arrives(tmp_path, order, msg):
    w = Week(tmp_path)
    store, m = target(tmp_path, w.size, "t")
    *good, bad = order
    state = push_chain(store, m, [w.streams[i] for i in good], [1000]).chain
    before = image_and_map(store, m)
    r = StreamRestorer(store, m, expect_previous=state, name="bad")
    raw = w.streams[bad].read_bytes()
    r.feed(raw[:HEADER_SIZE - 1])                  # header incomplete: no decision yet
    with pytest.raises(RestoreRejected) as ei:
        r.feed(raw[HEADER_SIZE - 1:HEADER_SIZE + 50])
    assert any(msg in e for e in ei.value.errors), ei.value.errors
    with pytest.raises(RestoreRejected):           # and on every later feed
        r.feed(raw[HEADER_SIZE + 50:])
    rep = r.finish()
    assert r.rejected and any(msg in e for e in rep.errors) and not rep.ok
    assert rep.chain is state                      # the chain is unchanged: retry is possible
    assert image_and_map(store, m) == before


def test_gap_refused_then_right_stream_accepted_with_same_state(tmp_path):
    w = Week(tmp_path)
    store, m = target(tmp_path, w.size, "t")
    state = push_chain(store, m, w.streams[:2], [333]).chain       # full, 1..1
    r = StreamRestorer(store, m, expect_previous=state)
    with pytest.raises(RestoreRejected, match="missing"):
        feed_all(r, w.streams[4].read_bytes())                      # 3..4: generation 2 missing
    r.finish()
    rep = push_chain(store, m, w.streams[2:], [5000], state=state)
    assert rep.ok and bytes(store.read(0, w.size)) == w.snaps[-1]
    assert [s.name for s in rep.streams] == [str(p) for p in w.streams]


@pytest.mark.parametrize("what", ["identity", "block size", "volume size", "header"])
def test_foreign_or_damaged_header_rejected(tmp_path, what):
    w = Week(tmp_path, days=1)
    raw = bytearray(w.streams[0].read_bytes())
    size, vid, gran = w.size, VID, GR
    if what == "identity":
        vid = b"someone-else"
    elif what == "block size":
        gran = 2 * GR
    elif what == "volume size":
        size += GR
    else:
        raw[40] ^= 1                                  # generation range, under the header CRC
    store, m = target(tmp_path, size, "t", vid=vid, gran=gran)
    r = StreamRestorer(store, m, name="full.bin")
    with pytest.raises(RestoreRejected) as ei:
        feed_all(r, bytes(raw), 100)
    rep = r.finish()
    assert rep.errors == ei.value.errors and not rep.wrote and rep.chain is None
    assert bytes(store.read(0, size)) == FILL * size
    assert m.base_id == bytes(16)


def test_differential_needs_a_full_restore_first(tmp_path):
    w = Week(tmp_path, days=1)
    store, m = target(tmp_path, w.size, "t")
    r = StreamRestorer(store, m)
    with pytest.raises(RestoreRejected, match="no full restore"):
        feed_all(r, w.streams[1].read_bytes())
    assert bytes(store.read(0, w.size)) == FILL * w.size


def test_stream_of_another_full_backup_rejected(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    w = Week(tmp_path / "a", days=1)
    other = Week(tmp_path / "b", days=1, seed=99)
    store, m = target(tmp_path, w.size, "t")
    state = push_chain(store, m, w.streams[:1], []).chain
    before = image_and_map(store, m)
    r = StreamRestorer(store, m, expect_previous=state)
    with pytest.raises(RestoreRejected, match="another full backup"):
        feed_all(r, other.streams[1].read_bytes())
    assert image_and_map(store, m) == before


def test_state_of_another_target_rejected(tmp_path):
    w = Week(tmp_path, days=1)
    s1, m1 = target(tmp_path, w.size, "one")
    state = push_chain(s1, m1, w.streams[:1], []).chain
    s2, m2 = target(tmp_path, w.size, "two")
    push_chain(s2, m2, w.streams[:1], [])         # the same backup, but a reset of its own
    m2.reset(os.urandom(16))
    r = StreamRestorer(s2, m2, expect_previous=state)
    with pytest.raises(RestoreRejected, match="reset in between"):
        feed_all(r, w.streams[1].read_bytes())


# -- truncation, padding, separate sessions, hooks ----------------------------------------
def test_truncated_stream_detected_by_finish(tmp_path):
    w = Week(tmp_path, days=2)
    store, m = target(tmp_path, w.size, "t")
    state = push_chain(store, m, w.streams[:2], [2048]).chain
    raw = w.streams[2].read_bytes()
    r = StreamRestorer(store, m, expect_previous=state)
    feed_all(r, raw[:len(raw) // 2], 500)
    assert not r.complete
    rep = r.finish()
    assert any("truncated" in e for e in rep.streams[-1].errors) and not rep.ok
    assert rep.uncertain                            # what the cut-off part may have held
    img = bytes(store.read(0, w.size))
    for b in range(m.entries):
        blk = img[b * GR:(b + 1) * GR]
        assert any(blk == s[b * GR:(b + 1) * GR] for s in w.snaps), b


def test_truncated_full_stream_leaves_unseen_blocks_unrecovered(tmp_path):
    w = Week(tmp_path, days=0)
    raw = w.streams[0].read_bytes()
    store, m = target(tmp_path, w.size, "t")
    r = StreamRestorer(store, m)
    feed_all(r, raw[:len(raw) // 3], 4096)
    rep = r.finish()
    assert rep.unrecovered and rep.unrecovered[-1][0] + rep.unrecovered[-1][1] == m.entries
    lost = {b for a, n in rep.unrecovered for b in range(a, a + n)}
    img = bytes(store.read(0, w.size))
    for b in range(m.entries):
        blk = img[b * GR:(b + 1) * GR]
        want = w.snaps[0][b * GR:(b + 1) * GR]
        assert blk == want if b not in lost else blk in (want, FILL * len(blk))


def test_empty_or_short_stream(tmp_path):
    store, m = target(tmp_path, 8 * GR, "t")
    r = StreamRestorer(store, m, name="x")
    r.feed(b"\x89DIFF")
    rep = r.finish()
    assert rep.errors and "shorter than its header" in rep.errors[0] and not rep.wrote
    assert r.finish() is rep                        # idempotent
    with pytest.raises(StreamError):
        r.feed(b"more")


def test_padding_after_trailer_and_complete_flag(tmp_path):
    w = Week(tmp_path, days=1)
    store, m = target(tmp_path, w.size, "t")
    r = StreamRestorer(store, m)
    feed_all(r, w.streams[0].read_bytes(), 65536)
    assert r.complete
    r.feed(bytes(100000))                           # a fixed-size device write pads with zeros
    rep = r.finish()
    assert rep.ok and rep.generation == 0 and m.current_generation == 1


def test_separate_sessions_continue_from_the_map(tmp_path):
    """expect_previous=None for a differential: it must continue the map as it stands."""
    w = Week(tmp_path, days=3)
    store, m = target(tmp_path, w.size, "t")
    for p in w.streams:
        r = StreamRestorer(store, m)
        feed_all(r, p.read_bytes(), 9000)
        assert r.finish().ok
    assert bytes(store.read(0, w.size)) == w.snaps[-1]
    r = StreamRestorer(store, m)
    with pytest.raises(RestoreRejected, match="out of order"):
        feed_all(r, w.streams[1].read_bytes())


def test_prepare_full_hook_chooses_the_target(tmp_path):
    w = Week(tmp_path, days=1)
    store, m = target(tmp_path, w.size, "t", vid=b"blank")   # not yet that volume
    m2 = GenerationMap.create(tmp_path / "adopted.genmap", volume_size=w.size, granularity=GR,
                              volume_id=VID, sync=False)
    seen = []

    def prepare(h):
        seen.append(h.volume_id)
        return store, m2
    r = StreamRestorer(store, m, prepare_full=prepare)
    feed_all(r, w.streams[0].read_bytes(), 1 << 16)
    assert r.finish().ok and seen == [VID] and m2.base_id != bytes(16)


# -- bounded memory -------------------------------------------------------------------------
def test_memory_bounded_whatever_the_chunking(tmp_path):
    size = 24 << 20
    src = MemoryStore(size)
    src.write(0, os.urandom(size))
    m = GenerationMap.create(tmp_path / "s.genmap", volume_size=size, volume_id=VID, sync=False)
    p = tmp_path / "full.bin"
    full_backup(src, m, p)                          # 1 MiB records
    raw = p.read_bytes()
    garbage = random.Random(5).randbytes(8 << 20)   # no markers to resynchronise on
    for step in (3 << 20, (1 << 20) + 7, 65521):
        dst = MemoryStore(size)
        dm = GenerationMap.create(tmp_path / f"d{step}.genmap", volume_size=size, volume_id=VID,
                                  sync=False)
        r = StreamRestorer(dst, dm)
        tracemalloc.start()
        try:
            for pos in range(0, len(raw), step):
                r.feed(memoryview(raw)[pos:pos + step])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert r.finish().ok and dst.read(0, size) == src.read(0, size)
        assert peak < (3 << 20), (step, peak)      # about one record carried, never the stream
    # a stream of junk after a good header, fed in one huge buffer, then in small pieces
    bad = raw[:HEADER_SIZE] + garbage
    for step in (len(bad), 4093):
        dm = GenerationMap.create(tmp_path / f"g{step}.genmap", volume_size=size, volume_id=VID,
                                  sync=False)
        r = StreamRestorer(MemoryStore(size), dm)
        tracemalloc.start()
        try:
            for pos in range(0, len(bad), step):
                r.feed(memoryview(bad)[pos:pos + step])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        rep = r.finish()
        assert not rep.ok and rep.streams[-1].errors
        assert peak < (1 << 20), (step, peak)


def test_chain_state_is_not_modified_by_the_next_stream(tmp_path):
    w = Week(tmp_path, days=2)
    raw = bytearray(w.streams[1].read_bytes())
    raw[HEADER_SIZE + RECORD_HEADER_SIZE + 3] ^= 0x40
    w.streams[1].write_bytes(raw)
    store, m = target(tmp_path, w.size, "t")
    state = push_chain(store, m, w.streams[:2], []).chain
    assert isinstance(state, ChainState) and state.lost.any()
    lost = state.lost.copy()
    push_chain(store, m, w.streams[2:], [], state=state)
    assert state.lost == lost
