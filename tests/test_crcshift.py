"""volume/crcshift.py and the chained block CRCs of the recorder (volume/blockcrc.py)."""
import random
from array import array
from itertools import accumulate

import crc32c
import pytest
from bitarray import bitarray
from hypothesis import given, settings, strategies as st

from volume import blockcrc, crcshift
from volume.memstore import MemoryStore


@pytest.mark.parametrize("bs", [512, 4096, 65536])
def test_unchain_gives_each_blocks_own_crc(bs):
    rnd = random.Random(bs)
    n = 300
    data = memoryview(rnd.randbytes(n * bs))
    direct = array("I", [crc32c.crc32c(data[i * bs:(i + 1) * bs]) for i in range(n)])
    table = array("I", direct)
    chained = bitarray(n, endian="little")
    chained.setall(0)
    i = 0
    while i < n:
        k = min(n - i, rnd.choice([1, 2, 3, 17, 64]))
        if rnd.random() < 0.7:
            run = data[i * bs:(i + k) * bs]
            vals = list(accumulate((run[j * bs:(j + 1) * bs] for j in range(k)),
                                   lambda c, b: crc32c.crc32c(b, c), initial=0))[1:]
            assert vals[-1] == crc32c.crc32c(run)           # the run's CRC, in the same pass
            table[i:i + k] = array("I", vals)
            chained[i + 1:i + k] = 1
        i += k
    crcshift.unchain_masked(table, chained, bs)
    assert table == direct


def test_recorder_chained_runs_and_rereads_equal_block_by_block_notes():
    rnd = random.Random(11)
    size = 200 * 4096 + 1000                        # a partial last block
    store = MemoryStore(size)
    store.write(0, rnd.randbytes(size))
    entries = -(-size // 4096)
    a = blockcrc.CrcRecorder(store, 4096, entries)
    b = blockcrc.CrcRecorder(store, 4096, entries)
    reads = [(0, 16), (16, 1), (20, 5), (30, 64), (100, 1), (101, 2),
             (40, 3),                               # a re-read inside a chained run
             (150, 49), (199, 2)]                   # the last run ends at the partial block
    for first, k in reads:
        n = min(k * 4096, size - first * 4096)
        views = [memoryview(bytearray(n))]
        crcs = a.readinto_many_crcs([first * 4096], views)
        assert crcs == [crc32c.crc32c(store.read(first * 4096, n))]
        b.readinto(first * 4096, memoryview(bytearray(n)))
    assert a.table == b.table and a.sent == b.sent


def test_differential_table_update_takes_exactly_the_sent_entries():
    rnd = random.Random(4)
    n = 5000
    old = array("I", [rnd.getrandbits(32) for _ in range(n)])
    new = array("I", [rnd.getrandbits(32) for _ in range(n)])
    sel = bitarray(n, endian="little")
    sel.setall(0)
    for i in rnd.sample(range(n), 1700):
        sel[i] = 1
    want = array("I", [b if sel[i] else a for i, (a, b) in enumerate(zip(old, new))])
    before = array("I", new)
    blockcrc._take(old, new, sel)
    assert old == want
    assert new == before                       # the source table is only read
    old.append(0)                              # no view of the arrays is left behind


def _two_recorders(seed: int):
    """(size, store, a, b): 200 random 4 KiB blocks and 1000 bytes over, and two
    recorders over them (one fed in batches, one view by view)."""
    size = 200 * 4096 + 1000
    store = MemoryStore(size)
    store.write(0, random.Random(seed).randbytes(size))
    entries = -(-size // 4096)
    return (size, store, blockcrc.CrcRecorder(store, 4096, entries),
            blockcrc.CrcRecorder(store, 4096, entries))


@settings(max_examples=80, deadline=None)
@given(reads=st.lists(st.tuples(st.integers(0, 190), st.sampled_from([1, 1, 1, 2, 3, 5, 31, 32, 40])),
                      min_size=1, max_size=25), batch=st.integers(1, 8), seed=st.integers(0, 99))
def test_recorder_batches_of_whole_blocks_equal_block_by_block_notes(reads, batch, seed):
    # One-block, multi-block and chained views, neighbours and re-reads, in batches:
    # the table, the sent bits and the returned CRCs equal one-block-at-a-time notes.
    size, store, a, b = _two_recorders(seed)
    for i in range(0, len(reads), batch):
        part = reads[i:i + batch]
        offs = [f * 4096 for f, _k in part]
        views = [memoryview(bytearray(min(k * 4096, size - f * 4096))) for f, k in part]
        crcs = a.readinto_many_crcs(offs, views)
        assert crcs == [crc32c.crc32c(store.read(o, len(v))) for o, v in zip(offs, views)]
        for o, v in zip(offs, views):
            for x in range(0, len(v), 4096):
                b.readinto(o + x, memoryview(bytearray(min(4096, len(v) - x))))
    assert a.table == b.table and a.sent == b.sent


@settings(max_examples=80, deadline=None)
@given(reads=st.lists(st.tuples(st.integers(0, 195), st.sampled_from([0, 0, 0, 0, 512, 1]),
                                st.sampled_from([0, 100, 4096, 4096, 8192, 4096 + 512, 3 * 4096])),
                      min_size=1, max_size=12), seed=st.integers(0, 99))
def test_recorder_batches_with_unaligned_empty_or_partial_views_equal_view_by_view_notes(
        reads, seed):
    # What a stream never reads -- offsets off a block boundary, views of no bytes,
    # parts of blocks -- mixed into a batch: noted exactly as each view read alone
    # (an unaligned view notes nothing, a partial block is not known whole).
    size, store, a, b = _two_recorders(seed)
    offs = [min(f * 4096 + d, size - 1) for f, d, _n in reads]
    views = [memoryview(bytearray(min(n, size - o))) for o, (_f, _d, n) in zip(offs, reads)]
    crcs = a.readinto_many_crcs(offs, views)
    assert crcs == [crc32c.crc32c(store.read(o, len(v))) for o, v in zip(offs, views)]
    for o, v in zip(offs, views):
        b.readinto(o, memoryview(bytearray(len(v))))
    assert a.table == b.table and a.sent == b.sent


def _chained_table(data: memoryview, bs: int, runs) -> tuple[array, bitarray, array]:
    """(table, chained bits, each block's own CRC) for chained ``runs`` (first, k)."""
    n = len(data) // bs
    direct = array("I", [crc32c.crc32c(data[i * bs:(i + 1) * bs]) for i in range(n)])
    table = array("I", direct)
    chained = bitarray(n, endian="little")
    chained.setall(0)
    for first, k in runs:
        run = data[first * bs:(first + k) * bs]
        table[first:first + k] = array("I", list(accumulate(
            (run[j * bs:(j + 1) * bs] for j in range(k)), lambda c, b: crc32c.crc32c(b, c),
            initial=0))[1:])
        chained[first + 1:first + k] = 1
    return table, chained, direct


def test_unchain_runs_across_spans(monkeypatch):
    # A chained run crossing a span boundary: the span after it needs the chained
    # value the span before it rewrites (a volume of more than 2**20 blocks).
    monkeypatch.setattr(crcshift, "_SPAN", 8)
    bs = 512
    data = memoryview(random.Random(3).randbytes(60 * bs))
    table, chained, direct = _chained_table(data, bs, [(5, 25), (31, 2), (33, 27)])
    crcshift.unchain_masked(table, chained, bs)
    assert table == direct


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(1, 119), min_size=1, max_size=12, unique=True),
       span=st.sampled_from([1, 2, 3, 7, 64]), window=st.tuples(st.integers(0, 120),
                                                                 st.integers(0, 120)))
def test_unchain_a_range_fixes_exactly_its_chains(cuts, span, window):
    # Runs between the cut points; only those inside [start, stop) are fixed,
    # whatever the span size; everything else stays as it was.
    bs = 512
    data = memoryview(random.Random(len(cuts)).randbytes(120 * bs))
    edges = [0] + sorted(cuts) + [120]
    runs = [(a, b - a) for a, b in zip(edges, edges[1:])]
    start, stop = sorted(window)
    table, chained, direct = _chained_table(data, bs, runs)
    want = array("I", table)
    for a, k in runs:
        if start <= a and a + k <= stop:
            want[a:a + k] = direct[a:a + k]
    inside = [(a, k) for a, k in runs if start <= a and a + k <= stop]
    lo = min((a for a, _k in inside), default=start)
    hi = max((a + k for a, k in inside), default=lo)
    old = crcshift._SPAN
    crcshift._SPAN = span
    try:
        crcshift.unchain_masked(table, chained, bs, lo, hi)
    finally:
        crcshift._SPAN = old
    assert table == want


def _recorder(seed: int, bs: int, n: int):
    """A store of ``n`` random blocks and a recorder over it."""
    store = MemoryStore(n * bs)
    store.write(0, random.Random(seed).randbytes(n * bs))
    return store, blockcrc.CrcRecorder(store, bs, n)


def _count_passes(monkeypatch) -> list[tuple[int, int]]:
    """The (start, stop) of every unchain pass the recorder makes from now on,
    early passes made once 64 entries wait."""
    monkeypatch.setattr(blockcrc, "_SETTLE_EVERY", 64)
    passes: list[tuple[int, int]] = []
    real = crcshift.unchain_masked

    def counted(table, chained, length, start=0, stop=None):
        passes.append((start, stop))
        real(table, chained, length, start, stop)
    monkeypatch.setattr(crcshift, "unchain_masked", counted)
    return passes


def test_recorder_settles_a_full_streams_table_as_it_goes(monkeypatch):
    # The chained entries of a long sequential read are settled on the way once
    # enough wait, so little is left for the table's first look; the values are
    # the blocks' own CRCs either way.
    passes = _count_passes(monkeypatch)
    bs, n = 4096, 1000
    store, rec = _recorder(5, bs, n)
    for first in range(0, n, 40):
        k = min(40, n - first)
        rec.readinto_many_crcs([first * bs], [memoryview(bytearray(k * bs))])
    assert len(passes) == n // 80 and all(hi - lo == 80 for lo, hi in passes)
    direct = array("I", [crc32c.crc32c(store.read(i * bs, bs)) for i in range(n)])
    assert rec.table == direct and rec.sent.all()


def test_recorder_keeps_scattered_runs_for_one_pass(monkeypatch):
    # Long runs far apart: an early pass would cost the whole range each time,
    # so they wait for the table's first look.
    passes = _count_passes(monkeypatch)
    bs, n = 4096, 4000
    store, rec = _recorder(6, bs, n)
    firsts = list(range(0, n - 40, 400))
    for first in firsts:
        rec.readinto_many_crcs([first * bs], [memoryview(bytearray(40 * bs))])
    assert not passes
    t = rec.table
    assert passes == [(firsts[0], firsts[-1] + 40)]
    for first in firsts:
        assert t[first:first + 40] == array(
            "I", [crc32c.crc32c(store.read(i * bs, bs)) for i in range(first, first + 40)])


@settings(max_examples=150, deadline=None)
@given(length=st.integers(1, 48), extra=st.integers(0, 8), count=st.integers(0, 90),
       seed=st.integers(0, 2 ** 32 - 1), data=st.randoms(use_true_random=False),
       const=st.sets(st.integers(0, 47)))
def test_slot_crcs_equal_a_crc_call_per_slot(length, extra, count, seed, data, const):
    stride = length + extra
    buf = bytearray(data.randbytes(stride * count))
    for p in const:                            # columns of one value: folded into the constant
        if p < length:
            buf[p::stride] = bytes([buf[p] if buf else 0]) * count
    buf = bytes(buf)
    got = crcshift.slot_crcs(buf, stride, length, count, seed)
    assert list(got) == [crc32c.crc32c(buf[i * stride:i * stride + length], seed)
                         for i in range(count)]
