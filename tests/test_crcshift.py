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
    blockcrc._take(old, new, sel)
    assert old == want


@settings(max_examples=80, deadline=None)
@given(reads=st.lists(st.tuples(st.integers(0, 190), st.sampled_from([1, 1, 1, 2, 3, 5, 31, 32, 40])),
                      min_size=1, max_size=25), batch=st.integers(1, 8), seed=st.integers(0, 99))
def test_recorder_batches_of_whole_blocks_equal_block_by_block_notes(reads, batch, seed):
    # One-block, multi-block and chained views, neighbours and re-reads, in batches:
    # the table, the sent bits and the returned CRCs equal one-block-at-a-time notes.
    rnd = random.Random(seed)
    size = 200 * 4096 + 1000
    store = MemoryStore(size)
    store.write(0, rnd.randbytes(size))
    entries = -(-size // 4096)
    a = blockcrc.CrcRecorder(store, 4096, entries)
    b = blockcrc.CrcRecorder(store, 4096, entries)
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
