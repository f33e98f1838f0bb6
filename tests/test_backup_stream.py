"""Backup stream format v1: golden vectors, round trips at any chunking, damage
and truncation detection, identity/order checks at restore."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import crc32c
import pytest
from hypothesis import given, settings, strategies as st

from volume.backup import restore, verify
from volume.genmap import BackupPlan, GenerationMap
from volume.memstore import MemoryStore
from volume.stream import (HEADER_SIZE, KIND_DATA, KIND_ZERO, KIND_ZLIB, RECORD_HEADER_SIZE,
                           TRAILER_SIZE, Damage, Record, StreamDecoder, StreamEncoder,
                           StreamError, StreamHeader)

GOLDEN = Path(__file__).parent / "golden"
BS = 512
VSIZE = 7 * BS + 100                 # 8 tracking blocks, the last one partial
VID = b"golden-volume"
BASE = bytes(range(16))
SID = bytes(range(100, 116))


def golden_volume() -> MemoryStore:
    s = MemoryStore(VSIZE)
    s.write(0, b"A" * BS)                                  # block 0
    # block 1 stays zero
    s.write(2 * BS, bytes(range(256)) * 2)                 # block 2
    s.write(3 * BS, b"Hello, generation map! " * 22 + b"xx")  # block 3 (compressible)
    s.write(4 * BS, bytes((i * 37 + 11) & 0xFF for i in range(3 * BS)))  # blocks 4-6
    s.write(7 * BS, b"tail" * 25)                          # block 7, 100 bytes
    return s


def golden_streams() -> dict[str, bytes]:
    store = golden_volume()
    full = BackupPlan.from_generations([0] * 8, 0, 0, granularity=BS, volume_size=VSIZE,
                                       volume_id=VID, base_id=BASE, full=True)
    diff = BackupPlan.from_generations([None, 2, 3, 3, None, 2, 2, 3], 2, 3, granularity=BS,
                                       volume_size=VSIZE, volume_id=VID, base_id=BASE)
    common = dict(stream_id=SID, created_ns=1_700_000_000_000_000_000, max_record_bytes=2 * BS)
    return {
        "full_v1": StreamEncoder(store, full, **common).read(),
        "diff_zlib_v1": StreamEncoder(store, diff, compress=True, **common).read(),
    }


def decode_all(data: bytes, chunks=None):
    dec = StreamDecoder()
    items = []
    if chunks is None:
        items += dec.feed(data)
    else:
        pos = 0
        for n in chunks:
            items += dec.feed(data[pos:pos + n])
            pos += n
        items += dec.feed(data[pos:])
    return dec, items, dec.finish()


def describe(dec, items, end) -> dict:
    h = dec.header
    return {
        "header": {"volume_id": h.volume_id.hex(), "block_size": h.block_size,
                   "volume_size": h.volume_size, "entries": h.entries,
                   "generation_range": list(h.generation_range), "block_count": h.block_count,
                   "flags": h.flags, "max_record_blocks": h.max_record_blocks,
                   "base_id": h.base_id.hex(), "stream_id": h.stream_id.hex(),
                   "created_ns": h.created_ns},
        "records": [{"seq": r.seq, "first_block": r.first_block, "nblocks": r.nblocks,
                     "generation": r.generation, "kind": r.kind,
                     "data": None if r.data is None else bytes(r.data).hex()}
                    for r in items],
        "trailer": {"record_count": end.trailer.record_count,
                    "block_count": end.trailer.block_count,
                    "stored_bytes": end.trailer.stored_bytes,
                    "digest": end.trailer.digest.hex()},
    }


# -- golden vectors -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["full_v1", "diff_zlib_v1"])
def test_golden_vector_decodes_to_expected_content(name):
    raw = (GOLDEN / f"stream_{name}.bin").read_bytes()
    expected = json.loads((GOLDEN / f"stream_{name}.json").read_text())
    dec, items, end = decode_all(raw)
    assert end.complete, end.errors
    assert all(isinstance(i, Record) for i in items)
    assert describe(dec, items, end) == expected


@pytest.mark.parametrize("name", ["full_v1", "diff_zlib_v1"])
def test_encoder_reproduces_golden_bytes(name):
    if os.environ.get("REGEN_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        for n, raw in golden_streams().items():
            (GOLDEN / f"stream_{n}.bin").write_bytes(raw)
            dec, items, end = decode_all(raw)
            (GOLDEN / f"stream_{n}.json").write_text(
                json.dumps(describe(dec, items, end), indent=1) + "\n")
    assert golden_streams()[name] == (GOLDEN / f"stream_{name}.bin").read_bytes()


def test_golden_layout_by_hand():
    """The documented offsets, checked without the codec."""
    raw = (GOLDEN / "stream_full_v1.bin").read_bytes()
    assert raw[:8] == b"\x89DIFFBK\n"
    assert struct.unpack_from("<HHIII", raw, 8) == (1, 160, 1, BS, 2)
    assert struct.unpack_from("<QQIIQ", raw, 24) == (VSIZE, 8, 0, 0, 8)
    assert raw[64:80] == BASE and raw[80:96] == SID and raw[96] == len(VID)
    assert struct.unpack_from("<I", raw, 156)[0] == crc32c.crc32c(raw[:156])
    rec = raw[HEADER_SIZE:HEADER_SIZE + RECORD_HEADER_SIZE]
    assert rec[:4] == b"REC\xa5"
    sync, seq, first, n, gen, kind, stored, dcrc = struct.unpack_from("<4sIQIIB3xII", rec)
    assert (seq, first, n, gen, kind, stored) == (0, 0, 2, 0, KIND_DATA, 2 * BS)
    assert dcrc == crc32c.crc32c(b"A" * BS + bytes(BS))
    assert struct.unpack_from("<I", rec, 36)[0] == crc32c.crc32c(rec[:36], crc32c.crc32c(SID))
    tr = raw[-TRAILER_SIZE:]
    assert tr[:4] == b"END\xa5"
    assert struct.unpack_from("<I", tr, 76)[0] == crc32c.crc32c(tr[:76], crc32c.crc32c(SID))


def test_golden_kinds():
    _, items, _ = decode_all((GOLDEN / "stream_diff_zlib_v1.bin").read_bytes())
    kinds = {(r.first_block, r.kind) for r in items}
    assert kinds == {(1, KIND_ZERO), (2, KIND_ZLIB), (5, KIND_ZLIB), (7, KIND_ZLIB)}


# -- round trips ---------------------------------------------------------------------------
def random_volume(seed: int, entries: int, bs: int = BS, tail: int = 0):
    import random
    rnd = random.Random(seed)
    size = entries * bs - tail
    s = MemoryStore(size)
    for _ in range(entries // 2):
        a = rnd.randrange(entries)
        kind = rnd.random()
        blk = (bytes(rnd.randrange(256) for _ in range(16)) * (bs // 16)) if kind < 0.5 else \
            os.urandom(bs) if kind < 0.8 else bytes(bs)
        s.write(a * bs, blk[:min(bs, size - a * bs)])
    return s


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 1000), compress=st.booleans(), elide=st.booleans(),
       gens=st.lists(st.one_of(st.none(), st.integers(3, 6)), min_size=20, max_size=20),
       out_chunks=st.lists(st.integers(1, 5000), max_size=30),
       in_chunks=st.lists(st.integers(0, 5000), max_size=30),
       maxrec=st.sampled_from([BS, 3 * BS, 64 << 10]))
def test_round_trip_any_chunking(seed, compress, elide, gens, out_chunks, in_chunks, maxrec):
    store = random_volume(seed, 20, tail=17)
    plan = BackupPlan.from_generations(gens, 3, 6, granularity=BS, volume_size=store.size,
                                       volume_id=VID, base_id=BASE)
    enc = StreamEncoder(store, plan, compress=compress, elide_zeros=elide, max_record_bytes=maxrec)
    parts = []
    for n in out_chunks + [7919] * 1000:
        buf = bytearray(n)
        k = enc.readinto(buf)
        if not k:
            break
        parts.append(bytes(buf[:k]))
    raw = b"".join(parts)
    assert len(raw) <= enc.size_bound
    if not compress and not elide:
        assert len(raw) == enc.total_size
    _, items, end = decode_all(raw, in_chunks)
    assert end.complete, end.errors
    got = {}
    for r in items:
        for b in range(r.first_block, r.first_block + r.nblocks):
            assert plan.generation_of(b) == r.generation
        got[r.first_block] = (r.nblocks, r.generation, r.data)
    covered = sorted(b for r in items for b in range(r.first_block, r.first_block + r.nblocks))
    assert covered == [i for i, g in enumerate(gens) if g is not None]
    for r in items:
        off, length = plan.byte_range(r.first_block, r.nblocks)
        want = bytes(store.read(off, length))
        assert (bytes(length) if r.data is None else bytes(r.data)) == want


def test_zero_padding_after_trailer_is_accepted():
    raw = golden_streams()["full_v1"]
    _, _, end = decode_all(raw + bytes(5000), [len(raw) - 3, 10])
    assert end.complete
    _, _, end = decode_all(raw + b"\0\0x")
    assert not end.complete and "after the trailer" in end.errors[0]


# -- damage ---------------------------------------------------------------------------------
def originals(raw: bytes) -> dict[int, Record]:
    _, items, _ = decode_all(raw)
    return {r.seq: r for r in items}


@settings(max_examples=300, deadline=None)
@given(which=st.sampled_from(["full_v1", "diff_zlib_v1"]), pos=st.integers(0, 10 ** 6),
       flip=st.integers(1, 255), chunk=st.integers(1, 700))
def test_any_corrupted_byte_is_detected_and_never_yields_wrong_data(which, pos, flip, chunk):
    raw = golden_streams()[which]
    good = originals(raw)
    bad = bytearray(raw)
    pos %= len(raw)
    bad[pos] ^= flip
    _, items, end = decode_all(bytes(bad), [chunk] * (len(raw) // chunk + 1))
    assert any(isinstance(i, Damage) for i in items) or end.errors
    for r in items:
        if isinstance(r, Record):
            o = good[r.seq]
            assert (r.first_block, r.nblocks, r.generation) == (o.first_block, o.nblocks, o.generation)
            assert r.data == o.data or bytes(r.data) == bytes(o.data)


def test_damaged_record_loses_only_itself():
    raw = bytearray(golden_streams()["full_v1"])
    first_payload = HEADER_SIZE + RECORD_HEADER_SIZE + 10
    raw[first_payload] ^= 1                      # data of record 0
    _, items, end = decode_all(bytes(raw))
    dmg = [i for i in items if isinstance(i, Damage)]
    assert len(dmg) == 1 and "data checksum" in dmg[0].reason
    assert (dmg[0].first_block, dmg[0].nblocks, dmg[0].generation) == (0, 2, 0)
    assert [r.seq for r in items if isinstance(r, Record)] == [1, 2, 3]


def test_damaged_record_header_resynchronises():
    raw = bytearray(golden_streams()["full_v1"])
    raw[HEADER_SIZE + 9] ^= 0xFF                 # first block field of record 0
    _, items, end = decode_all(bytes(raw))
    assert isinstance(items[0], Damage) and "header checksum" in items[0].reason
    assert items[0].offset == HEADER_SIZE
    assert any(isinstance(i, Damage) and "records 0..0 missing" in i.reason for i in items)
    assert [r.seq for r in items if isinstance(r, Record)] == [1, 2, 3]
    assert end.trailer is not None


def test_header_damage_makes_stream_unusable():
    raw = bytearray(golden_streams()["full_v1"])
    raw[30] ^= 1
    dec, items, end = decode_all(bytes(raw))
    assert dec.header is None and not any(isinstance(i, Record) for i in items)
    assert "header" in end.errors[0]
    with pytest.raises(StreamError, match="checksum"):
        StreamHeader.unpack(raw[:HEADER_SIZE])


@pytest.mark.parametrize("which", ["full_v1", "diff_zlib_v1"])
def test_every_truncation_is_detected(which):
    raw = golden_streams()[which]
    good = originals(raw)
    for cut in range(0, len(raw)):
        _, items, end = decode_all(raw[:cut], [97] * (cut // 97 + 1))
        assert end.errors and not end.complete, cut
        for r in items:
            assert isinstance(r, Record) and bytes(r.data or b"") == bytes(good[r.seq].data or b"")


def test_embedded_stream_records_are_not_ours():
    """A backed-up volume that holds a backup stream: resync must not pick its records up."""
    inner = golden_streams()["full_v1"]
    store = MemoryStore(16 * BS)
    store.write(BS, inner[:3 * BS])
    plan = BackupPlan.from_generations([0] * 16, 0, 0, granularity=BS, volume_size=16 * BS,
                                       volume_id=VID, base_id=BASE, full=True)
    raw = bytearray(StreamEncoder(store, plan, max_record_bytes=16 * BS, elide_zeros=False).read())
    raw[HEADER_SIZE + 3] ^= 1                     # break our only record's sync marker
    _, items, end = decode_all(bytes(raw))
    assert not any(isinstance(i, Record) for i in items)


def test_decoder_bounds_record_size():
    h = StreamHeader(VID, BS, VSIZE, 8, (0, 0), 8, 1, 1 << 20, BASE, SID)
    with pytest.raises(StreamError, match="limit"):
        StreamHeader.unpack(h.pack())


# -- identity, block size, order at restore: detected, nothing written ---------------------
def make_chain(tmp_path, vid=VID, gran=BS, name="src"):
    size = 32 * gran
    store = MemoryStore(size)
    m = GenerationMap.create(tmp_path / f"{name}.genmap", volume_size=size, granularity=gran,
                             volume_id=vid, sync=False)
    from volume.backup import differential_backup, full_backup
    paths = []

    def write(off, data):
        m.mark(off, len(data))
        store.write(off, data)
    write(0, os.urandom(5 * gran))
    paths.append(tmp_path / f"{name}-full.bin")
    full_backup(store, m, paths[-1])
    for day in range(3):
        write((day + 6) * gran, os.urandom(gran))
        paths.append(tmp_path / f"{name}-d{day}.bin")
        differential_backup(store, m, 2 if day else 1, paths[-1])
    m.close()
    return size, paths


def fresh_target(tmp_path, size, vid=VID, gran=BS, name="dst"):
    store = MemoryStore(size)
    store.write(0, b"\x5a" * size)
    m = GenerationMap.create(tmp_path / f"{name}.genmap", volume_size=size, granularity=gran,
                             volume_id=vid, sync=False)
    return store, m


def assert_untouched(store):
    assert bytes(store.read(0, store.size)) == b"\x5a" * store.size


def test_wrong_volume_identity_refused(tmp_path):
    size, paths = make_chain(tmp_path)
    store, m = fresh_target(tmp_path, size, vid=b"another-volume")
    rep = restore(store, m, paths)
    assert not rep.ok and "backup of volume" in rep.errors[0] and not rep.wrote
    assert_untouched(store)


def test_other_block_size_refused(tmp_path):
    size, paths = make_chain(tmp_path)
    store, m = fresh_target(tmp_path, size, gran=2 * BS)
    rep = restore(store, m, paths)
    assert any("512-byte blocks" in e for e in rep.errors)
    assert_untouched(store)


def test_other_volume_size_refused(tmp_path):
    size, paths = make_chain(tmp_path)
    store, m = fresh_target(tmp_path, size + BS)
    rep = restore(store, m, paths)
    assert any(f"{size}-byte volume" in e for e in rep.errors)
    assert_untouched(store)


def test_out_of_order_and_gaps_refused(tmp_path):
    size, (full, d1, d2, d3) = make_chain(tmp_path)   # generations 1..1, 1..2, 2..3
    for i, (chain, msg) in enumerate([([full, d2, d1], "out of order"), ([full, d1, d1], "out of order"),
                       ([d1, d2], "no full restore"), ([full, d1, full], "only come first"),
                       ([full, d3], "generation 1 is missing")]):
        store, m = fresh_target(tmp_path, size, name=f"dst{i}")
        rep = restore(store, m, chain)
        assert any(msg in e for e in rep.errors), (msg, rep.errors)
        assert_untouched(store)
        m.close()
    # Wednesday's scope-2 stream covers a missing Tuesday: 1..1 then 2..3 is fine
    store, m = fresh_target(tmp_path, size, name="ok")
    assert restore(store, m, [full, d1, d3]).ok


def test_streams_of_another_full_backup_refused(tmp_path):
    size, (full, d1, _, _) = make_chain(tmp_path)
    _, (full_b, d1_b, _, _) = make_chain(tmp_path, name="other")
    store, m = fresh_target(tmp_path, size)
    rep = restore(store, m, [full, d1_b])
    assert any("another full backup" in e for e in rep.errors)
    assert_untouched(store)


def test_verify_reports_damage_per_stream(tmp_path):
    size, paths = make_chain(tmp_path)
    raw = bytearray(paths[2].read_bytes())
    raw[HEADER_SIZE + RECORD_HEADER_SIZE + 1] ^= 4
    paths[2].write_bytes(raw)
    rep = verify(paths)
    assert not rep.ok and [s.ok for s in rep.streams] == [True, True, False, True]
    bad = rep.streams[2].damage[0]
    assert bad.generation in (1, 2) and bad.first_block is not None
    assert verify([paths[0]]).ok


@pytest.mark.parametrize("chunk", [1, 3, 41, 160, 999, 1 << 20])
def test_borrowed_buffer_feeding(chunk):
    """A reused buffer fed with borrow=True: records must be used before the next feed."""
    raw = golden_streams()["diff_zlib_v1"] + golden_streams()["full_v1"][:0]
    want = [(r.seq, bytes(r.data or b"")) for r in decode_all(raw)[1]]
    dec = StreamDecoder(borrow=True)
    buf = bytearray(chunk)
    got = []
    for pos in range(0, len(raw), chunk):
        piece = raw[pos:pos + chunk]
        buf[:len(piece)] = piece
        for r in dec.feed(memoryview(buf)[:len(piece)]):
            got.append((r.seq, bytes(r.data or b"")))
        buf[:] = b"\xff" * len(buf)           # the caller reuses its buffer
    assert got == want and dec.finish().complete
