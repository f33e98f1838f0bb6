"""volume/crcshift.py and the chained block CRCs of the recorder (volume/blockcrc.py)."""
import random
from array import array
from itertools import accumulate

import crc32c
import pytest
from bitarray import bitarray

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
