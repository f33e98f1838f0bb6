"""Point-in-time cuts (volume/pitcut.py): a backup stream equals the volume at
START BACKUP whatever writes run while it is read; the preservation store is
bounded, freed as the stream passes, and its exhaustion fails the stream."""
from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from volume import session as BIO
from volume.session import begin_backup, finish_backup
from volume.tracked import TrackingStore
from volume.filestore import FileStore
from volume.memstore import MemoryStore
from volume.pitcut import CowSettings, PreservationExhausted, open_cut
from volume.store import BlockStore
from volume.stream import Record, StreamDecoder, StreamEncoder


def make_volume(size: int, gran: int = 512, seed: int = 0) -> TrackingStore:
    ms = MemoryStore(size)
    ms.write(0, random.Random(seed).randbytes(size))
    return TrackingStore.in_memory(ms, granularity=gran)


def apply_stream(stream: bytes, img: bytearray, bs: int) -> list[Record]:
    dec = StreamDecoder()
    recs = [it for it in dec.feed(stream) if isinstance(it, Record)]
    end = dec.finish()
    assert end.complete, end
    for r in recs:
        a = r.first_block * bs
        img[a:a + r.length] = r.data if r.data is not None else bytes(r.length)
    return recs


def write_op(vol: TrackingStore, rng: random.Random, kind: str, off: int, n: int) -> None:
    if kind == "write":
        vol.write(off, rng.randbytes(n))
    elif kind == "zeroes":
        vol.write_zeroes(off, n)
    elif kind == "discard":
        vol.discard(off, n)
    else:                                     # two ranges in one write_many
        half = n // 2
        vol.write_many([off, off + half], [rng.randbytes(half), rng.randbytes(n - half)])


OPS = st.lists(st.one_of(
    st.tuples(st.just("read"), st.integers(1, 6000)),
    st.tuples(st.sampled_from(["write", "zeroes", "discard", "many"]),
              st.floats(0, 1), st.integers(1, 5000))), max_size=60)


def run_interleaved(vol: TrackingStore, full: bool, scope: int, ops, seed: int,
                    capacity: int | None = None):
    """Start a backup, interleave ``ops`` with reads of its stream by the encoder
    (any chunk size), then read the rest; return (stream, snapshot at the cut, cut)."""
    rng = random.Random(seed)
    size = vol.size
    if capacity is not None:
        vol.cow_settings = CowSettings(size=capacity)
    reader = begin_backup(vol, full=full, scope=scope)
    plan = reader.cut.plan
    snap = bytes(vol.read(0, size))
    cut = open_cut(vol, plan)   # the component itself, driven by its own encoder
    enc = StreamEncoder(cut.view, plan, max_record_bytes=rng.choice([512, 2048, 1 << 20]))
    out = bytearray()
    for op in ops:
        if op[0] == "read":
            buf = bytearray(op[1])
            out += buf[:enc.readinto(buf)]
        else:
            kind, where, n = op
            n = min(n, size)
            write_op(vol, rng, kind, int(where * (size - n)), n)
    out += enc.read()
    return bytes(out), snap, cut, reader


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.integers(1, 40), tail=st.sampled_from([0, 100, 511]), ops=OPS,
       seed=st.integers(0, 2**32))
def test_full_stream_equals_the_cut(blocks, tail, ops, seed):
    vol = make_volume(blocks * 512 + tail, seed=seed)
    try:
        stream, snap, cut, _ = run_interleaved(vol, True, 1, ops, seed)
        img = bytearray(vol.size)
        apply_stream(stream, img, 512)
        assert img == snap
        assert vol.cow is None and cut.released and cut.lost is None
        assert cut.held == 0
    finally:
        vol.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.integers(2, 40), before=OPS, ops=OPS, seed=st.integers(0, 2**32))
def test_differential_stream_equals_the_cut(blocks, before, ops, seed):
    vol = make_volume(blocks * 512 + 300, seed=seed)
    try:
        full, base, _, reader = run_interleaved(vol, True, 1, [], seed)
        finish_backup(reader)
        rng = random.Random(seed + 1)
        for op in before:                        # what the differential must carry
            if op[0] != "read":
                n = min(op[2], vol.size)
                write_op(vol, rng, op[0], int(op[1] * (vol.size - n)), n)
        stream, snap, cut, _ = run_interleaved(vol, False, 1, ops, seed + 2)
        img = bytearray(vol.size)
        apply_stream(full, img, 512)
        assert img == base
        apply_stream(stream, img, 512)
        assert img == snap                       # full + differential = the volume at the cut
        assert cut.released and vol.cow is None
    finally:
        vol.close()


def test_reader_interleaved_with_small_chunks(monkeypatch):
    """The pseudo device's BackupReader: random writes between stream reads."""
    monkeypatch.setattr(BIO, "CHUNK", 4096)
    size = 2 << 20
    vol = make_volume(size, gran=4096, seed=3)
    rng = random.Random(3)
    r = begin_backup(vol, full=True, scope=1)
    snap = bytes(vol.read(0, size))
    out = bytearray()
    while not r.complete:
        for _ in range(4):
            n = rng.randrange(1, 20000)
            vol.write(rng.randrange(size - n), rng.randbytes(n))
        buf = bytearray(rng.choice([512, 4096, 65536]))
        r.readinto(len(out), memoryview(buf))
        out += buf
    img = bytearray(size)
    apply_stream(bytes(out), img, 4096)
    assert img == snap
    assert r.pit.preserved_total > 50           # the test did exercise copy-before-write
    assert vol.state.full_done and vol.state.active is None
    vol.close()


def test_sent_and_unplanned_blocks_cost_nothing():
    vol = make_volume(64 * 512, seed=5)
    full, _, _, reader = run_interleaved(vol, True, 1, [], 5)
    finish_backup(reader)
    vol.write(10 * 512, os.urandom(512))         # block 10 is the only one in the next plan
    vol.write(40 * 512, os.urandom(512))         # and block 40
    plan = begin_backup(vol, full=False, scope=1).cut.plan
    assert plan.block_count == 2
    cut = open_cut(vol, plan)
    vol.write(0, os.urandom(10 * 512))           # not in the plan
    vol.write(11 * 512, os.urandom(29 * 512))
    assert cut.preserved_total == 0
    enc = StreamEncoder(cut.view, plan, max_record_bytes=512)
    first = bytearray(60)
    enc.readinto(first)                           # header only: nothing sent yet
    vol.write(9 * 512, os.urandom(3 * 512))      # covers block 10: preserved
    assert cut.preserved_total == 1 and cut.held == 1
    rest = bytearray(100 + 40 + 512)      # the rest of the header, one record
    enc.readinto(rest)                            # block 10's record is read
    assert cut.cursor >= 11 and cut.held == 0    # its preserved copy was freed
    vol.write(10 * 512, os.urandom(512))         # already sent: free
    assert cut.preserved_total == 1
    vol.write(40 * 512, os.urandom(512))         # not sent yet: preserved
    assert cut.preserved_total == 2
    enc.read()
    assert cut.released and vol.cow is None
    vol.write(40 * 512, os.urandom(512))
    assert cut.preserved_total == 2
    vol.close()


class CountingStore(BlockStore):
    def __init__(self, inner: BlockStore) -> None:
        self.inner, self.size, self.reads = inner, inner.size, 0

    def readinto(self, offset, buf):
        self.reads += 1
        self.inner.readinto(offset, buf)

    def readinto_many(self, offsets, bufs):
        self.reads += 1
        self.inner.readinto_many(offsets, bufs)

    def write(self, offset, data):
        self.inner.write(offset, data)


def test_a_long_write_is_one_vectored_copy():
    ms = MemoryStore(8 << 20)
    ms.write(0, os.urandom(8 << 20))
    inner = CountingStore(ms)
    vol = TrackingStore.in_memory(inner, granularity=4096)
    plan = begin_backup(vol, full=True, scope=1).cut.plan
    cut = open_cut(vol, plan)
    vol.write(4096 * 7 + 100, os.urandom(4 << 20))   # unaligned: 1025 blocks
    assert inner.reads == 1
    assert cut.preserved_total == 1025             # blocks 7..1031
    vol.close()


def test_exhaustion_fails_the_stream_not_the_writes():
    vol = make_volume(32 * 512, seed=7)
    vol.cow_settings = CowSettings(size=3 * 512)
    r = begin_backup(vol, full=True, scope=1)
    vol.write(0, os.urandom(2 * 512))
    assert r.pit.lost is None and r.pit.used_bytes == 1024
    data = os.urandom(2 * 512)
    vol.write(5 * 512, data)                      # 4 blocks > 3 allowed
    assert bytes(vol.read(5 * 512, 1024)) == data  # the write itself landed
    with pytest.raises(BIO.StreamCutLost, match="preservation space exhausted.*1536 bytes") as e:
        r.readinto(0, memoryview(bytearray(4096)))
    assert e.value.exhausted
    with pytest.raises(BIO.StreamCutLost):
        r.readinto(0, memoryview(bytearray(4096)))
    assert not r.complete
    assert vol.state.full_done is False                 # not advanced: nothing committed
    assert vol.cow is None                        # later writes cost nothing
    vol.close()


def test_zero_capacity_means_any_overlapping_write_loses_the_cut():
    vol = make_volume(8 * 512)
    vol.cow_settings = CowSettings(size=0)
    plan = begin_backup(vol, full=True, scope=1).cut.plan
    cut = open_cut(vol, plan)
    vol.write_zeroes(512, 1)
    assert isinstance(cut.lost, PreservationExhausted)
    vol.close()


def test_a_new_backup_supersedes_the_open_cut():
    vol = make_volume(16 * 512)
    old = begin_backup(vol, full=True, scope=1)
    new = begin_backup(vol, full=True, scope=1)   # one stream per volume: the old one ends
    with pytest.raises(BIO.StreamGone, match="abandoned"):
        old.readinto(0, memoryview(bytearray(512)))
    assert old.pit.released and vol.cow is new.pit
    vol.close()


def open_paths() -> list[str]:
    out = []
    for n in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{n}"))
        except OSError:
            pass                                  # the fd listdir itself used
    return out


def test_file_volume_keeps_old_blocks_in_an_unlinked_file(tmp_path):
    path = tmp_path / "v.img"
    fs = FileStore(path, size=1 << 20, create=True)
    fs.write(0, os.urandom(1 << 20))
    vol = TrackingStore.open(fs, path)
    assert vol.cow_settings.dir == str(tmp_path)
    other = tmp_path / "cow"
    other.mkdir()
    vol.cow_settings = CowSettings(dir=str(other), size=64 << 10)
    before = sorted(os.listdir(tmp_path))
    r = begin_backup(vol, full=True, scope=1)
    snap = bytes(vol.read(0, 1 << 20))
    vol.write(0, os.urandom(16 << 10))
    fds = open_paths()
    assert any(f.startswith(str(other)) and f.endswith("(deleted)") for f in fds)
    assert os.listdir(other) == [] and sorted(os.listdir(tmp_path)) == before
    out = bytearray()
    while not r.complete:
        buf = bytearray(1 << 20)
        r.readinto(len(out), memoryview(buf))
        out += buf
    img = bytearray(1 << 20)
    apply_stream(bytes(out), img, 4096)
    assert img == snap
    fds = open_paths()
    assert not any(f.startswith(str(other)) for f in fds)    # closed once the stream passed
    vol.close()


def test_preserved_space_is_freed_as_the_stream_passes():
    vol = make_volume(256 * 512, seed=9)
    plan = begin_backup(vol, full=True, scope=1).cut.plan
    cut = open_cut(vol, plan)
    vol.write(0, os.urandom(256 * 512))           # everything preserved
    assert cut.used_bytes == 256 * 512 and cut.remaining == 0 and vol.cow is None
    enc = StreamEncoder(cut.view, plan, max_record_bytes=512)
    held = []
    while not enc.finished:
        enc.readinto(bytearray(20 * 552))
        held.append(cut.held)
    assert held == sorted(held, reverse=True) and held[-1] == 0 and len(set(held)) > 5
    assert cut.released
    vol.close()


def test_writer_thread_during_full_backups_sees_a_prefix_of_its_writes():
    """Writes from another thread race the stream reads (the cut's lock): each
    stream holds exactly the writer's first k writes for some k."""
    import struct
    import threading
    hdr = struct.Struct("<QQ")
    bs, nblk = 4096, 2048
    vol = make_volume(bs * nblk, gran=bs, seed=11)
    init = bytearray(vol.read(0, vol.size))
    for b in range(nblk):
        hdr.pack_into(init, b * bs, b, 0)
    vol.inner.write(0, init)
    log: list[tuple[int, bytes]] = []
    halt = threading.Event()

    def writer():
        rng = random.Random(12)
        while not halt.is_set():
            b = rng.randrange(nblk)
            data = hdr.pack(b, len(log) + 1) + rng.randbytes(bs - hdr.size)
            vol.write(b * bs, data)
            log.append((b, data))

    t = threading.Thread(target=writer, daemon=True)
    import sys
    old, switch = BIO.CHUNK, sys.getswitchinterval()
    BIO.CHUNK = 64 << 10
    sys.setswitchinterval(1e-6)              # let the writer in between the reader's steps
    t.start()
    try:
        preserved = []
        for _ in range(3):
            while len(log) < 200:
                pass
            r = begin_backup(vol, full=True, scope=1)
            out = bytearray()
            while not r.complete:
                buf = bytearray(32 << 10)
                r.readinto(len(out), memoryview(buf))
                out += buf
            img = bytearray(vol.size)
            apply_stream(bytes(out), img, bs)
            k = max(hdr.unpack_from(img, b * bs)[1] for b in range(nblk))
            expect = bytearray(init)
            for b, data in log[:k]:
                expect[b * bs:(b + 1) * bs] = data
            assert img == expect
            preserved.append(r.pit.preserved_total)
        assert sum(preserved) > 0, preserved
    finally:
        halt.set()
        t.join(10)
        BIO.CHUNK = old
        sys.setswitchinterval(switch)
        vol.close()


def test_space_a_filesystem_cannot_free_stays_counted(monkeypatch):
    from volume import pitcut
    monkeypatch.setattr(pitcut.PreservationStore, "free", lambda self, off, n: False)
    vol = make_volume(64 * 512, seed=13)
    vol.cow_settings = CowSettings(size=4 * 512)
    plan = begin_backup(vol, full=True, scope=1).cut.plan
    cut = open_cut(vol, plan)
    vol.write(0, os.urandom(3 * 512))
    enc = StreamEncoder(cut.view, plan, max_record_bytes=512)
    enc.readinto(bytearray(160 + 4 * 552))           # the three preserved blocks pass
    assert cut.held == 0 and cut.unfreed == 3 and cut.used_bytes == 3 * 512
    vol.write(30 * 512, os.urandom(2 * 512))          # 3 + 2 > 4
    assert isinstance(cut.lost, PreservationExhausted)
    vol.close()
