"""Block stores: FileStore, MemoryStore, ConcatStore against a bytearray model."""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings, strategies as st

from volume.concat import ConcatStore
from volume.filestore import FileStore, StoreLockedError
from volume.memstore import MemoryStore
from volume.store import StoreError

SIZE = 64 * 1024


@pytest.fixture(params=["memory", "file", "concat"])
def store(request, tmp_path):
    if request.param == "memory":
        s = MemoryStore(SIZE, granularity=512)
    elif request.param == "file":
        s = FileStore(tmp_path / "disk.img", size=SIZE, create=True)
    else:
        s = ConcatStore([MemoryStore(10_000, 8), FileStore(tmp_path / "b.img", size=20_000, create=True),
                         MemoryStore(SIZE - 30_000, 8)])
    yield s
    s.close()


def test_fresh_store_reads_zero(store):
    assert store.size == SIZE
    assert store.read(0, SIZE) == bytes(SIZE)


def test_write_then_read_back(store):
    store.write(9_990, b"x" * 100)   # crosses the first concat boundary
    assert store.read(9_980, 120) == bytes(10) + b"x" * 100 + bytes(10)


def test_readinto_fills_callers_buffer(store):
    store.write(0, b"abcdef")
    buf = bytearray(4)
    store.readinto(2, memoryview(buf))
    assert buf == b"cdef"


def test_discard_reads_back_zero(store):
    store.write(0, b"\xff" * SIZE)
    store.discard(4096, 8192)
    data = store.read(0, SIZE)
    assert data[:4096] == b"\xff" * 4096
    assert data[4096:12288] == bytes(8192)
    assert data[12288:] == b"\xff" * (SIZE - 12288)


def test_write_zeroes(store):
    store.write(0, b"\x01" * 3000)
    store.write_zeroes(1000, 1000)
    assert store.read(0, 3000) == b"\x01" * 1000 + bytes(1000) + b"\x01" * 1000


def test_out_of_range_is_store_error(store):
    with pytest.raises(StoreError):
        store.write(SIZE - 1, b"ab")
    with pytest.raises(StoreError):
        store.read(-1, 2)


def test_allocation_covers_range_exactly(store):
    store.write(20_000, b"z" * 5000)
    extents = list(store.allocation(0, SIZE))
    assert extents[0][0] == 0
    pos = 0
    for off, length, _ in extents:
        assert off == pos and length > 0
        pos += length
    assert pos == SIZE
    mapped = [(o, n) for o, n, m in extents if m]
    assert any(o <= 20_000 and o + n >= 25_000 for o, n in mapped)


def test_memory_allocation_tracks_discard():
    s = MemoryStore(16 * 4096, granularity=4096)
    assert list(s.allocation(0, s.size)) == [(0, s.size, False)]
    s.write(4096, b"a" * 8192)
    assert list(s.allocation(0, s.size)) == [(0, 4096, False), (4096, 8192, True),
                                            (12288, s.size - 12288, False)]
    s.discard(4096, 4096)                  # whole chunk: deallocated
    s.discard(8192 + 100, 100)             # partial chunk: stays mapped, zeroed
    assert list(s.allocation(0, s.size)) == [(0, 8192, False), (8192, 4096, True),
                                            (12288, s.size - 12288, False)]
    assert s.read(8192 + 100, 100) == bytes(100)


def test_file_store_is_sparse_and_punches_holes(tmp_path):
    path = tmp_path / "sparse.img"
    s = FileStore(path, size=1 << 20, create=True)
    try:
        assert os.stat(path).st_blocks == 0
        assert s.thin
        s.write(65536, b"q" * 65536)
        assert (65536, 65536, True) in list(s.allocation(0, 1 << 20))
        s.discard(65536, 65536)
        assert all(not m for _, _, m in s.allocation(0, 1 << 20))
        assert s.read(65536, 65536) == bytes(65536)
    finally:
        s.close()


def test_file_store_exclusive_lock_names_the_file(tmp_path):
    path = tmp_path / "locked.img"
    s = FileStore(path, size=4096, create=True)
    try:
        with pytest.raises(StoreLockedError, match="locked.img"):
            FileStore(path)
    finally:
        s.close()
    FileStore(path).close()   # released on close


def test_file_store_read_only(tmp_path):
    path = tmp_path / "ro.img"
    FileStore(path, size=4096, create=True).close()
    s = FileStore(path, read_only=True)
    try:
        assert s.read_only and not s.thin and s.size == 4096
        with pytest.raises(StoreError):
            s.write(0, b"x")
    finally:
        s.close()


def test_file_store_missing_or_empty(tmp_path):
    with pytest.raises(StoreError, match="nope.img"):
        FileStore(tmp_path / "nope.img")
    (tmp_path / "empty.img").touch()
    with pytest.raises(StoreError, match="empty"):
        FileStore(tmp_path / "empty.img")


def test_file_store_larger_file_served_as_prefix(tmp_path):
    path = tmp_path / "big.img"
    path.write_bytes(b"\x07" * 8192)
    s = FileStore(path, size=4096)
    try:
        assert s.size == 4096
        with pytest.raises(StoreError):
            s.read(4000, 200)
    finally:
        s.close()
    assert path.stat().st_size == 8192


def test_concat_properties():
    a, b = MemoryStore(100), MemoryStore(50)
    c = ConcatStore([a, b])
    assert c.size == 150 and c.thin
    c.write(90, bytes(range(20)))
    assert a.read(90, 10) == bytes(range(10))
    assert b.read(0, 10) == bytes(range(10, 20))
    with pytest.raises(ValueError):
        ConcatStore([])


ops = st.lists(st.tuples(st.sampled_from(["write", "discard", "zero"]),
                         st.integers(0, 3999), st.integers(0, 600), st.integers(0, 255)),
               max_size=25)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_concat_matches_model(operations):
    """Any sequence of writes/discards on a concatenation reads back like one bytearray."""
    members = [MemoryStore(1000, 16), MemoryStore(7, 1), MemoryStore(1993, 64), MemoryStore(1000, 4)]
    c = ConcatStore(members)
    model = bytearray(c.size)
    for op, off, length, byte in operations:
        length = min(length, c.size - off)
        if op == "write":
            c.write(off, bytes([byte]) * length)
            model[off:off + length] = bytes([byte]) * length
        elif op == "discard":
            c.discard(off, length)
            model[off:off + length] = bytes(length)
        else:
            c.write_zeroes(off, length)
            model[off:off + length] = bytes(length)
    assert c.read(0, c.size) == model
    # Allocation never reports deallocated bytes that hold data.
    for off, length, mapped in c.allocation(0, c.size):
        if not mapped:
            assert model[off:off + length] == bytes(length)


def test_file_write_zeroes_keeps_blocks_mapped(tmp_path):
    s = FileStore(tmp_path / "z.img", size=1 << 20, create=True)
    try:
        s.write(0, b"\x09" * 65536)
        s.write_zeroes(4096, 8192)
        assert s.read(0, 16384) == b"\x09" * 4096 + bytes(8192) + b"\x09" * 4096
        assert list(s.allocation(0, 65536)) == [(0, 65536, True)]
    finally:
        s.close()
