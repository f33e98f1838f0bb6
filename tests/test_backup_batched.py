"""The batched paths of the backup engine (scattered differentials of thousands
of one-block records): FileStore.readinto_many/write_many, BackupPlan.run_batches,
the encoder's batched framing, the decoder's column checks and record_batches
sink, the restorer's batches, and the reader/writer threads of backup.py.
Each is checked against the one-record-at-a-time path it must agree with."""
from __future__ import annotations

import io
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from volume.backup import restore, verify, write_stream
from volume.filestore import FileStore
from volume.genmap import BackupPlan, GenerationMap
from volume.memstore import MemoryStore
from volume.store import StoreError
from volume.stream import (HEADER_SIZE, RECORD_HEADER_SIZE, Record, StreamDecoder,
                           StreamEncoder)

BS = 512
VID = b"batched"
BASE = bytes(range(16))
SID = bytes(range(50, 66))


# -- FileStore batched I/O -----------------------------------------------------------------
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ranges=st.lists(st.tuples(st.integers(0, 60), st.integers(1, 3)), min_size=1, max_size=40),
       seed=st.integers(0, 100))
def test_write_many_and_readinto_many_equal_single_calls(tmp_path_factory, ranges, seed):
    d = tmp_path_factory.mktemp("fs")
    size = 64 * BS
    a = FileStore(d / "a.img", size=size, create=True)
    b = MemoryStore(size)
    rnd = random.Random(seed)
    offs, datas = [], []
    for blk, n in ranges:                    # neighbours (merged into one pwritev) and repeats
        n = min(n, 64 - blk)
        data = memoryview(rnd.randbytes(n * BS))
        offs.append(blk * BS)
        datas.append(data)
    a.write_many(offs, datas)
    for off, data in zip(offs, datas):       # later writes win, in order
        b.write(off, data)
    assert bytes(a.read(0, size)) == bytes(b.read(0, size))
    bufs = [memoryview(bytearray(len(x))) for x in datas]
    a.readinto_many(offs, bufs)
    assert [bytes(x) for x in bufs] == [bytes(b.read(o, len(x))) for o, x in zip(offs, datas)]
    a.close()


def test_batched_io_merges_more_neighbours_than_one_vectored_call_takes(tmp_path):
    s = FileStore(tmp_path / "v.img", size=3000 * 8, create=True)
    data = [memoryview(bytes([i % 251]) * 8) for i in range(3000)]
    s.write_many([i * 8 for i in range(3000)], data)
    bufs = [memoryview(bytearray(8)) for _ in range(3000)]
    s.readinto_many([i * 8 for i in range(3000)], bufs)
    assert [bytes(x) for x in bufs] == [bytes(x) for x in data]
    s.close()


def test_batched_io_checks_ranges_and_mode(tmp_path):
    s = FileStore(tmp_path / "v.img", size=4 * BS, create=True)
    with pytest.raises(StoreError):
        s.write_many([0, 3 * BS], [bytes(BS), bytes(2 * BS)])
    with pytest.raises(StoreError):
        s.readinto_many([-BS], [memoryview(bytearray(BS))])
    s.close()
    with pytest.raises(StoreError):
        s.write_many([0], [bytes(BS)])
    r = FileStore(tmp_path / "v.img", read_only=True)
    with pytest.raises(StoreError):
        r.write_many([0], [bytes(BS)])
    r.close()


def test_readinto_many_reads_zeroes_past_a_shrunken_file(tmp_path):
    s = FileStore(tmp_path / "v.img", size=4 * BS, create=True)
    s.write(0, b"\xff" * 4 * BS)
    os.truncate(tmp_path / "v.img", BS)      # another process shrank it
    bufs = [memoryview(bytearray(b"\x01" * BS)) for _ in range(3)]
    s.readinto_many([0, BS, 2 * BS], bufs)
    assert [bytes(x) for x in bufs] == [b"\xff" * BS, bytes(BS), bytes(BS)]
    s.close()


# -- run_batches -----------------------------------------------------------------------------
def reference_runs(gens: list[int | None]):
    """Maximal runs of one generation, by a per-block scan."""
    out, i = [], 0
    while i < len(gens):
        if gens[i] is None:
            i += 1
            continue
        j = i
        while j < len(gens) and gens[j] == gens[i]:
            j += 1
        out.append((i, j - i, gens[i]))
        i = j
    return out


@settings(max_examples=300, deadline=None)
@given(gens=st.lists(st.one_of(st.none(), st.integers(5, 13)), min_size=1, max_size=200),
       lo=st.integers(0, 5), window=st.sampled_from([1, 2, 3, 8, 64, 1 << 18]),
       one_generation=st.booleans())
def test_run_batches_are_the_maximal_runs(gens, lo, window, one_generation):
    if one_generation:                         # a plan of one generation: no planes to split runs
        gens = [None if g is None else lo for g in gens]
        hi = lo
    else:
        gens = [None if g is None else g - 5 + lo for g in gens]
        hi = lo + 8
    plan = BackupPlan.from_generations(gens, lo, hi, granularity=BS, volume_size=len(gens) * BS,
                                       volume_id=VID, base_id=BASE)
    got = [t for f, n, g in plan.run_batches(window=window) for t in zip(f, n, g)]
    assert got == reference_runs(gens)
    assert list(plan.runs()) == got


# -- encoder, decoder, restorer --------------------------------------------------------------
def scattered_volume(tmp_path, nblocks: int, seed: int, zero_every: int = 0):
    """A FileStore and a MemoryStore with the same content (zero blocks sprinkled in)."""
    rnd = random.Random(seed)
    f = FileStore(tmp_path / f"src{seed}.img", size=nblocks * BS - 100, create=True)
    m = MemoryStore(f.size)
    for b in range(nblocks):
        if zero_every and b % zero_every == 0:
            continue
        off = b * BS
        data = rnd.randbytes(min(BS, f.size - off))
        f.write(off, data)
        m.write(off, data)
    return f, m


def scattered_plan(nblocks: int, seed: int, lo: int = 2, hi: int = 4) -> BackupPlan:
    rnd = random.Random(seed)
    gens = [rnd.randint(lo, hi) if rnd.random() < 0.4 else None for _ in range(nblocks)]
    return BackupPlan.from_generations(gens, lo, hi, granularity=BS, volume_size=nblocks * BS - 100,
                                       volume_id=VID, base_id=BASE)


def encode(store, plan, chunk: int, **kw) -> bytes:
    enc = StreamEncoder(store, plan, stream_id=SID, created_ns=7, **kw)
    out = bytearray()
    buf = bytearray(chunk)
    while True:
        k = enc.readinto(buf)
        if not k:
            return bytes(out)
        out += buf[:k]


@pytest.mark.parametrize("zero_every", [0, 3, 7])
@pytest.mark.parametrize("chunk", [HEADER_SIZE + 1, 4096, 1 << 20])
@pytest.mark.parametrize("maxrec", [BS, 4 * BS])
def test_batched_encoder_matches_the_record_at_a_time_encoder(tmp_path, zero_every, chunk, maxrec):
    # FileStore has readinto_many (batched reads); MemoryStore goes record by record.
    f, m = scattered_volume(tmp_path, 400, 1, zero_every)
    plan = scattered_plan(400, 2)
    a = encode(f, plan, chunk, max_record_bytes=maxrec)
    b = encode(m, plan, chunk, max_record_bytes=maxrec)
    assert a == b
    # and the same stream through the per-record decoder path
    dec = StreamDecoder()
    items = dec.feed(a)
    end = dec.finish()
    assert end.complete, end.errors
    zeros = sum(r.nblocks for r in items if r.data is None)
    assert (zeros > 0) == bool(zero_every)
    f.close()


def decode_batched(raw: bytes, chunks: list[int]):
    """(first, n, gen, data) of every record and the Damage items, in stream order."""
    out: list = []
    dec = StreamDecoder(borrow=True, record_batches=lambda b: out.extend(
        ("rec", f, n, g, None if d is None else bytes(d)) for f, n, g, d in b))

    def sink(item):
        if isinstance(item, Record):
            out.append(("rec", item.first_block, item.nblocks, item.generation,
                        None if item.data is None else bytes(item.data)))
        else:
            out.append(("damage", item.first_block, item.reason))
    mv = memoryview(bytearray(raw))
    pos = 0
    for n in chunks + [len(raw)]:
        dec.feed(mv[pos:pos + n], sink)
        pos += n
        if pos >= len(raw):
            break
    return out, dec.finish()


def decode_plain(raw: bytes):
    dec = StreamDecoder()
    out = []
    for item in dec.feed(raw):
        if isinstance(item, Record):
            out.append(("rec", item.first_block, item.nblocks, item.generation,
                        None if item.data is None else bytes(item.data)))
        else:
            out.append(("damage", item.first_block, item.reason))
    return out, dec.finish()


@pytest.fixture(scope="module")
def scattered_stream(tmp_path_factory):
    d = tmp_path_factory.mktemp("enc")
    f, _m = scattered_volume(d, 600, 3, zero_every=11)
    plan = scattered_plan(600, 4)
    raw = encode(f, plan, 1 << 20)
    f.close()
    return raw


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pos=st.integers(HEADER_SIZE, 10 ** 6), flip=st.integers(1, 255),
       chunks=st.lists(st.integers(1, 30000), max_size=6))
def test_column_checks_report_exactly_what_the_record_path_reports(scattered_stream, pos, flip,
                                                                   chunks):
    raw = bytearray(scattered_stream)
    pos = pos % (len(raw) - HEADER_SIZE) + HEADER_SIZE
    raw[pos] ^= flip
    raw = bytes(raw)
    got, end_a = decode_batched(raw, chunks)
    want, end_b = decode_plain(raw)
    assert got == want
    assert (end_a.records, end_a.damaged, end_a.blocks, end_a.errors) == \
        (end_b.records, end_b.damaged, end_b.blocks, end_b.errors)


def test_column_checks_on_an_intact_stream(scattered_stream):
    got, end = decode_batched(scattered_stream, [5000, 70000])
    want, _ = decode_plain(scattered_stream)
    assert got == want and end.complete
    assert len(got) > 100


def test_restore_of_scattered_differentials_onto_a_file_store(tmp_path):
    """Full + two scattered differentials through FileStore.write_many, with a
    damaged record in the last one: everything else restored, the damage reported."""
    nblocks = 3000
    size = nblocks * BS
    src = FileStore(tmp_path / "src.img", size=size, create=True)
    gmap = GenerationMap.create(tmp_path / "src.genmap", volume_size=size, granularity=BS,
                                volume_id=VID, sync=False)
    rnd = random.Random(9)
    src.write(0, rnd.randbytes(size))
    streams = [tmp_path / "full.bin"]
    write_stream(src, gmap.begin_full(), streams[0])
    snaps = []
    for k in range(2):
        for _ in range(400):
            b = rnd.randrange(nblocks)
            data = bytes(BS) if rnd.random() < 0.05 else rnd.randbytes(BS)
            gmap.mark(b * BS, BS)
            src.write(b * BS, data)
        streams.append(tmp_path / f"d{k}.bin")
        write_stream(src, gmap.begin_differential(1), streams[-1])
        snaps.append(bytes(src.read(0, size)))
    dst = FileStore(tmp_path / "dst.img", size=size, create=True)
    dmap = GenerationMap.create(tmp_path / "dst.genmap", volume_size=size, granularity=BS,
                                volume_id=VID, sync=False)
    rep = restore(dst, dmap, streams[:2])
    assert rep.ok, rep.errors
    assert bytes(dst.read(0, size)) == snaps[0]
    # damage one data record's payload in the middle of the last stream
    raw = bytearray(streams[2].read_bytes())
    dec = StreamDecoder()
    recs = [r for r in dec.feed(bytes(raw)) if isinstance(r, Record) and r.data is not None]
    victim = recs[len(recs) // 2]
    raw[victim.offset + RECORD_HEADER_SIZE + 3] ^= 0x40
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bytes(raw))
    rep = restore(dst, dmap, [bad])
    assert [d.first_block for d in rep.bad_records] == [victim.first_block]
    assert rep.unrecovered == [(victim.first_block, victim.nblocks)]
    got = bytes(dst.read(0, size))
    lo, hi = victim.first_block * BS, (victim.first_block + victim.nblocks) * BS
    assert got[:lo] == snaps[1][:lo] and got[hi:] == snaps[1][hi:]
    assert got[lo:hi] == snaps[0][lo:hi]            # the older copy stays
    for x in (src, dst, gmap, dmap):
        x.close()


# -- reader/writer threads -----------------------------------------------------------------
class FailingWriter(io.RawIOBase):
    def __init__(self, after: int) -> None:
        self.left = after

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if self.left <= 0:
            raise OSError(28, "No space left on device")
        n = min(len(b), self.left)
        self.left -= n
        return n


def test_write_stream_raises_the_writer_threads_error(tmp_path):
    _f, m = scattered_volume(tmp_path, 200, 5)
    plan = scattered_plan(200, 6)
    with pytest.raises(OSError, match="No space"):
        write_stream(m, plan, FailingWriter(5000), chunk_size=4096)
    out = io.BytesIO()
    res = write_stream(m, plan, out, chunk_size=4096)
    assert res.bytes_written == len(out.getvalue())
    dec = StreamDecoder()
    dec.feed(out.getvalue())
    assert dec.finish().complete


class FailingReader(io.BytesIO):
    """Reads fail once the position passes ``fail_at`` (a medium error mid-stream)."""

    def __init__(self, data: bytes, fail_at: int) -> None:
        super().__init__(data)
        self.fail_at = fail_at

    def readinto(self, b) -> int:
        if self.tell() >= self.fail_at:
            raise OSError(5, "Input/output error")
        return super().readinto(memoryview(b)[:self.fail_at - self.tell()])


def test_reader_thread_errors_reach_the_caller(scattered_stream):
    with pytest.raises(OSError, match="Input/output"):
        verify([FailingReader(scattered_stream, len(scattered_stream) // 2)])
    rep = verify([io.BytesIO(scattered_stream)])
    assert rep.ok, (rep.errors, [s.errors for s in rep.streams])


def test_zero_records_of_any_length_are_elided_in_batches(tmp_path):
    # a 100-block zero run (not a size the encoder precomputes) among data records
    nblocks = 300
    f = FileStore(tmp_path / "z.img", size=nblocks * BS, create=True)
    m = MemoryStore(f.size)
    rnd = random.Random(3)
    for b in list(range(0, 100)) + list(range(200, 300)):
        data = rnd.randbytes(BS)
        f.write(b * BS, data)
        m.write(b * BS, data)
    gens = [3 if 100 <= b < 200 or (b % 2 and not 98 <= b <= 201) else None
            for b in range(nblocks)]
    plan = BackupPlan.from_generations(gens, 3, 3, granularity=BS, volume_size=f.size,
                                       volume_id=VID, base_id=BASE)
    a = encode(f, plan, 1 << 20, max_record_bytes=256 * BS)
    assert a == encode(m, plan, 1 << 20, max_record_bytes=256 * BS)
    dec = StreamDecoder()
    zero = [r for r in dec.feed(a) if isinstance(r, Record) and r.data is None]
    assert [(r.first_block, r.nblocks) for r in zero] == [(100, 100)]
    assert dec.finish().complete
    f.close()


# -- FileStore mapped reads (files on memory filesystems) -------------------------------------
def _file_bytes(path, offs, lens) -> list[bytes]:
    with open(path, "rb") as f:
        raw = f.read()
    return [raw[o:o + n] + bytes(max(0, o + n - len(raw))) for o, n in zip(offs, lens)]


def _both_ways(s: FileStore, offs, lens) -> tuple[list[bytes], list[bytes]]:
    """readinto_many through the mapping, then through preadv (the same store)."""
    s.mmap_reads = True
    mapped = [memoryview(bytearray(b"\x5a" * n)) for n in lens]
    s.readinto_many(offs, mapped)
    assert s._map_view is not None                 # the mapped path was taken
    s.mmap_reads = False
    plain = [memoryview(bytearray(b"\xa5" * n)) for n in lens]
    s.readinto_many(offs, plain)
    s.mmap_reads = True
    return [bytes(x) for x in mapped], [bytes(x) for x in plain]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blocks=st.integers(1, 40), tail=st.integers(0, 4095), seed=st.integers(0, 1 << 30),
       nranges=st.integers(1, 30), grow=st.integers(0, 9000))
def test_mapped_reads_equal_preadv_reads(tmp_path_factory, blocks, tail, seed, nranges, grow):
    d = tmp_path_factory.mktemp("mm")
    rnd = random.Random(seed)
    size = blocks * 4096 + tail                    # a partial last block when tail > 0
    path = d / "v.img"
    path.write_bytes(rnd.randbytes(size))
    s = FileStore(path, mmap_reads=True)

    def ranges(size):
        offs, lens = [], []
        for _ in range(nranges):
            kind = rnd.random()
            if kind < 0.2:                         # up to the volume's end (its partial block)
                n = rnd.randint(0, min(size, 3 * 4096))
                o = size - n
            else:
                o = rnd.randrange(size)
                n = rnd.randint(0, size - o)
            offs.append(o)
            lens.append(n)
        if rnd.random() < 0.5:                     # sorted: neighbours merged by preadv
            pairs = sorted(zip(offs, lens))
            offs, lens = [o for o, _n in pairs], [n for _o, n in pairs]
        if rnd.random() < 0.5:                     # the rest of the file, range after range
            o = rnd.randrange(size)
            cut = sorted(rnd.sample(range(o, size + 1), min(5, size + 1 - o)))
            offs += cut[:-1]
            lens += [b - a for a, b in zip(cut, cut[1:])]
        return offs, lens

    offs, lens = ranges(size)
    mapped, plain = _both_ways(s, offs, lens)
    assert mapped == plain == _file_bytes(path, offs, lens)
    # written through the store: the mapping sees it at once
    o = rnd.randrange(size)
    s.write(o, rnd.randbytes(min(size - o, 3 * 4096)))
    mapped, plain = _both_ways(s, offs, lens)
    assert mapped == plain == _file_bytes(path, offs, lens)
    if grow:
        s.grow(size + grow)                        # remapped for reads past the old end
        offs, lens = ranges(size + grow)
        offs.append(size + grow - 1)               # the new last byte
        lens.append(1)
        mapped, plain = _both_ways(s, offs, lens)
        assert mapped == plain == _file_bytes(path, offs, lens)
        assert len(s._map_view) == size + grow
    s.close()


def test_mapped_reads_stop_when_the_file_is_cut_shorter_and_resume_when_it_is_long_again(tmp_path):
    path = tmp_path / "v.img"
    size = 16 * 4096 + 100
    data = random.Random(4).randbytes(size)
    path.write_bytes(data)
    s = FileStore(path, mmap_reads=True)
    offs, lens = [0, 5 * 4096, 15 * 4096], [4096, 8192, 4196]
    bufs = [memoryview(bytearray(n)) for n in lens]
    s.readinto_many(offs, bufs)
    assert s._map_view is not None
    os.truncate(path, 6 * 4096)                    # another process, ignoring the lock
    bufs = [memoryview(bytearray(b"\x01" * n)) for n in lens]
    s.readinto_many(offs, bufs)                    # no SIGBUS: preadv, zeros past the end
    assert s._map_view is None
    assert [bytes(x) for x in bufs] == [data[:4096], data[5 * 4096:6 * 4096] + bytes(4096),
                                        bytes(4196)]
    with open(path, "r+b") as f:
        f.truncate(size)
        f.seek(15 * 4096)
        f.write(b"\x07" * 4196)
    s.readinto_many(offs, bufs)
    assert s._map_view is not None and bytes(bufs[2]) == b"\x07" * 4196
    s.close()
    assert s._map_view is None


def test_mapped_reads_check_ranges_like_preadv(tmp_path):
    s = FileStore(tmp_path / "v.img", size=4 * BS, create=True, mmap_reads=True)
    for offs, n in (([-BS], BS), ([3 * BS], 2 * BS)):
        with pytest.raises(StoreError, match="outside"):
            s.readinto_many(offs, [memoryview(bytearray(n))])
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.readinto_many([0], [memoryview(bytearray(BS))])


def test_mapped_reads_are_chosen_for_files_on_memory_filesystems_only(tmp_path):
    from volume.filestore import _on_memory_fs
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    path = f"/dev/shm/pyscsi-test-{os.getpid()}.img"
    try:
        s = FileStore(path, size=8192, create=True)
        assert s.mmap_reads and _on_memory_fs(s._fd)
        s.close()
    finally:
        os.unlink(path)
    d = FileStore(tmp_path / "d.img", size=8192, create=True)
    assert d.mmap_reads == _on_memory_fs(d._fd)
    d.close()
    fd = os.open("/proc/self/status", os.O_RDONLY)
    try:
        assert not _on_memory_fs(fd)
    finally:
        os.close(fd)


# -- the encoder's column path against its record-at-a-time path ------------------------------
def _plan_from(sel: list[int], nblocks: int, vsize: int) -> BackupPlan:
    gens = [g or None for g in sel]
    return BackupPlan.from_generations(gens, 1, 3, granularity=BS, volume_size=vsize,
                                       volume_id=VID, base_id=BASE)


@settings(max_examples=60, deadline=None)
@given(runs=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 40)), min_size=1, max_size=30),
       tail=st.integers(1, BS), chunk=st.sampled_from([HEADER_SIZE + 1, 700, 4096, 1 << 16]),
       maxb=st.integers(1, 9), batch=st.sampled_from([2, 3, 2048]), seed=st.integers(0, 1000),
       zeros=st.booleans(), keep=st.sampled_from([0, 2, 1 << 17]), slot_min=st.sampled_from([1, 64]))
def test_column_encoder_equals_the_record_at_a_time_encoder(runs, tail, chunk, maxb, batch, seed,
                                                           zeros, keep, slot_min):
    import volume.stream as S
    sel: list[int] = []
    for g, n in runs:                          # g 0: not selected; runs longer than a record
        sel += [g] * n
    nblocks = len(sel)
    vsize = (nblocks - 1) * BS + tail          # the last block partial unless tail == BS
    rnd = random.Random(seed)
    m = MemoryStore(vsize)
    for b in range(nblocks):
        if not (zeros and b % 5 == 0):
            m.write(b * BS, rnd.randbytes(min(BS, vsize - b * BS)))
    plan = _plan_from(sel, nblocks, vsize)
    old, old_keep, old_slot = S._ENCODE_BATCH, S._KEEP_RUNS, S._SLOT_CRC_MIN
    S._ENCODE_BATCH = batch                    # long runs cut over several batches
    S._KEEP_RUNS = keep                        # the runs counted at the start kept, or found again
    S._SLOT_CRC_MIN = slot_min                 # header CRCs as byte columns in every batch, or not
    try:
        a = encode(m, plan, chunk, max_record_bytes=maxb * BS)
    finally:
        S._ENCODE_BATCH, S._KEEP_RUNS, S._SLOT_CRC_MIN = old, old_keep, old_slot
    fast = S.StreamEncoder._fast_records
    S.StreamEncoder._fast_records = lambda self, mv, w: w       # every record by _encode_into
    try:
        b = encode(m, plan, chunk, max_record_bytes=maxb * BS)
    finally:
        S.StreamEncoder._fast_records = fast
    assert a == b
    dec = StreamDecoder()
    items = dec.feed(a)
    assert dec.finish().complete
    assert sum(r.nblocks for r in items) == sum(1 for g in sel if g)
    assert max((r.nblocks for r in items), default=0) <= maxb


def test_encoding_a_scattered_differential_triggers_no_garbage_collection(tmp_path):
    # Each 4 MiB of one-block records is thousands of views, slices and column
    # lists alive at once: without a pause of the cyclic collector they trigger
    # collections (of older generations too) that free nothing.  The collector is
    # running again afterwards -- and stays off where the caller had turned it off.
    import gc
    f, m = scattered_volume(tmp_path, 40000, 3)
    plan = scattered_plan(40000, 4)
    seen = []

    def count(phase, info):
        if phase == "start":
            seen.append(info["generation"])
    enc = StreamEncoder(f, plan, stream_id=SID, created_ns=7)
    buf = bytearray(4 << 20)
    assert gc.isenabled()
    gc.collect()
    gc.callbacks.append(count)
    try:
        k = enc.readinto(buf)
        assert k > 1 << 20 and enc.records > 1000 and not seen
        assert gc.isenabled()
        gc.disable()
        try:
            enc.readinto(buf)
            assert not gc.isenabled()
        finally:
            gc.enable()
    finally:
        gc.callbacks.remove(count)
    while enc.readinto(buf):
        pass
    assert encode(m, plan, 4 << 20) == encode(f, plan, 1 << 20)
    f.close()
