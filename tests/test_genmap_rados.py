"""The generation map in RADOS (volume/radosmap.py) through its public interface:
the same bytes as the files (golden vectors), the same answers as the file backend
after the same operations (hypothesis), crash recovery from another client, the
barrier, fencing of a stale holder, and the tracked volume's sidecar in RADOS."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from volume import durability
from volume.genmap import GenerationMap, MapBusy, MapCorrupt, MapError, journal_path
from volume.radosmap import MapFenced, RadosMapStorage, journal_object
from volume.store import StoreFenced
from volume.tracked import TrackingError, TrackingStore
from volume.memstore import MemoryStore

pytestmark = pytest.mark.ceph

GOLDEN = Path(__file__).parent / "golden"
REPO = Path(__file__).resolve().parents[1]
VID = b"golden-volume-01"
BASE = bytes(range(16))
SIZE = (1 << 20) + 512
G = 4096
POOL = "maps"


@pytest.fixture(scope="module")
def rados_io(ceph_cluster):
    from volume import ceph_bindings
    rados = ceph_bindings.load("rados")
    try:
        ceph_cluster.create_pool(POOL)
    except Exception:
        pass                                  # another module made it
    c = rados.Rados(conffile=str(ceph_cluster.conf))
    c.connect()
    io = c.open_ioctx(POOL)
    yield c, io
    io.close()
    c.shutdown()


def _name() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def _storage(rados_io, base: str, **kw) -> RadosMapStorage:
    c, io = rados_io
    kw.setdefault("lock_duration", 4)
    return RadosMapStorage(c, io, base, **kw)


def _objects(rados_io, base: str) -> dict[str, bytes]:
    _, io = rados_io
    out = {}
    for o in io.list_objects():
        if o.key.startswith(base + "."):
            size, _ = io.stat(o.key)
            out[o.key] = io.read(o.key, size) if size else b""
    return out


def _omap(rados_io, base: str) -> dict:
    from volume import ceph_bindings
    rados = ceph_bindings.load("rados")
    _, io = rados_io
    with rados.ReadOpCtx() as op:
        it, _ = io.get_omap_vals(op, "", "", 100)
        io.operate_read_op(op, journal_object(base))
        return dict(it)


# --------------------------------------------------------------- golden vectors
def _build(where, pending: bool) -> GenerationMap:
    m = GenerationMap.create(where, volume_size=SIZE, granularity=G, volume_id=VID, sync=True)
    m.mark(0, 3 * G)
    m.begin_full()
    m.set_base_id(BASE)
    m.save()
    m.mark(5 * G, 2 * G)
    m.mark(256 * G, 512)
    m.begin_differential(1)
    m.mark(9 * G, G)
    m.begin_differential(2)
    m.mark(100 * G, 4 * G)
    if pending:
        m.cut_differential(1)
        m.mark(200 * G, G)
    return m


def _fine_journal(raw: bytes) -> bytes:
    """Header page (boot id and CRC zeroed) and the two fine slots: the golden's bytes
    (coarse bits differ: the golden was made on a RAM file system)."""
    b = bytearray(raw)
    b[85:101] = bytes(16)
    b[124:128] = bytes(4)
    return bytes(b[:4096 + 2 * 4096])


_CRASHER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {repo!r})
    from volume import ceph_bindings
    from volume.radosmap import RadosMapStorage
    sys.path.insert(0, {tests!r})
    from test_genmap_rados import _build
    rados = ceph_bindings.load("rados")
    c = rados.Rados(conffile={conf!r}); c.connect()
    io = c.open_ioctx({pool!r})
    m = _build(RadosMapStorage(c, io, {base!r}, lock_duration=3), {pending!r})
    m.sync_marks()
    print("ready", flush=True)
    os.kill(os.getpid(), 9)
""")


def _crash_build(ceph_cluster, base: str, pending: bool) -> None:
    code = _CRASHER.format(repo=str(REPO), tests=str(REPO / "tests"), conf=str(ceph_cluster.conf),
                           pool=POOL, base=base, pending=pending)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "ready" in r.stdout, r.stderr
    assert r.returncode == -signal.SIGKILL


@pytest.mark.parametrize("pending", [False, True], ids=["closed", "crashed-with-pending-cut"])
def test_rados_objects_hold_the_golden_map_and_journal_bytes(rados_io, ceph_cluster, pending):
    name = "genmap_pending_v1" if pending else "genmap_v1"
    base = _name()
    if pending:
        _crash_build(ceph_cluster, base, pending=True)   # another process, killed
    else:
        _build(_storage(rados_io, base), pending=False).close()
    objs = _objects(rados_io, base)
    omap = _omap(rados_io, base)
    ptr = json.loads(omap["map"])
    assert sorted(objs) == sorted([journal_object(base), ptr["object"]])
    assert ptr["object"].startswith(f"{base}.genmap.map.1.")
    gold_map = (GOLDEN / f"{name}.map").read_bytes()
    gold_jrn = (GOLDEN / f"{name}.map.dirty").read_bytes()
    assert objs[ptr["object"]] == gold_map
    assert ptr == {"format": "pyscsi-genmap-pointer", "version": 1, "object": ptr["object"],
                   "length": len(gold_map), "crc32c": __import__("crc32c").crc32c(gold_map)}
    assert _fine_journal(objs[journal_object(base)]) == _fine_journal(gold_jrn)
    assert len(objs[journal_object(base)]) == len(gold_jrn)
    assert omap["epoch"] == b"%020d" % 1
    # A clean close takes the owner record away; a crash leaves it for the next opener.
    owner = omap.get("owner")
    assert (owner is not None) == pending
    if owner is not None:
        doc = json.loads(owner)
        assert doc["format"] == "pyscsi-genmap-owner" and doc["epoch"] == 1 and doc["addr"]
    # Another client opens it (taking over from a dead holder when crashed).
    st2 = _storage(rados_io, base)
    t0 = time.monotonic()
    m = GenerationMap.open(st2, volume_size=SIZE, volume_id=VID)
    try:
        assert m.recovered == pending
        assert m.current_generation == 3 and m.base_id == BASE
        extra = 1 if pending else 0
        assert m.counts() == {0: 257 - 8 - extra, 1: 3, 2: 1, 3: 4 + extra}
        assert [m.generation_of(b) for b in (0, 5, 6, 9, 100, 103, 256)] == [0, 1, 1, 2, 3, 3, 1]
        assert st2.epoch == 2
        if pending:
            assert st2.took_over_from["epoch"] == 1
            assert time.monotonic() - t0 < 30
    finally:
        m.close()


def test_the_pointer_record_golden():
    """The pointer's bytes, as documented (docs/genmap-format.md, "In RADOS"), and what
    a reader makes of damaged or newer ones."""
    from volume.genmap import MapMismatch
    from volume.radosmap import parse_pointer, pointer_record
    gold = (GOLDEN / "genmap_rados_pointer_v1.json").read_bytes()
    data = bytes(range(256)) * 32
    assert pointer_record("rbd_map.vol0.genmap.map.7.3", data) == gold
    assert parse_pointer(gold, "j") == {"format": "pyscsi-genmap-pointer", "version": 1,
                                        "object": "rbd_map.vol0.genmap.map.7.3",
                                        "length": 8192, "crc32c": 661714778}
    with pytest.raises(MapMismatch, match="version 2"):
        parse_pointer(gold.replace(b'"version": 1', b'"version": 2'), "j")
    for bad in (b"", b"[]", b"{}", gold.replace(b"8192", b'"x"'), b"\xff"):
        with pytest.raises(MapCorrupt, match="malformed map pointer"):
            parse_pointer(bad, "j")


# ------------------------------------------------------ the seam: file == RADOS
_ops = st.lists(st.one_of(
    st.tuples(st.just("mark"), st.integers(0, 256), st.integers(1, 20)),
    st.tuples(st.just("full")), st.tuples(st.just("diff"), st.integers(1, 3)),
    st.tuples(st.just("cut"), st.booleans(), st.booleans()),
    st.tuples(st.just("restored"), st.integers(0, 250), st.integers(1, 6), st.integers(0, 4)),
    st.tuples(st.just("reopen"))), max_size=14)


def _apply(m: GenerationMap, op, where, reopen) -> GenerationMap:
    kind = op[0]
    if kind == "mark":
        off = op[1] * G
        m.mark(off, min(op[2] * G, SIZE - off), sync=False)
    elif kind == "full":
        m.begin_full()
        m.set_base_id(BASE)
    elif kind == "diff" and op[1] <= m.current_generation:
        m.begin_differential(op[1])
    elif kind == "cut":
        cut = m.cut_full() if op[1] else m.cut_differential(1)
        m.mark(7 * G, G, sync=False)
        cut.commit() if op[2] else cut.abandon()
        if op[1] and op[2]:
            m.set_base_id(BASE)
    elif kind == "restored":
        m.apply_restored(op[1], op[2], op[3])
    elif kind == "reopen":
        m.close()
        m = reopen()
    return m


def _state(m: GenerationMap):
    return (m.current_generation, m.counts(), m.blocks_in_generations(0, 40).tobytes(),
            m.blocks_in_generations(m.current_generation, m.current_generation).tobytes(),
            [m.generation_of(b) for b in range(0, 257, 7)], m.nplanes)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(ops=_ops)
def test_file_and_rados_backends_give_the_same_map(rados_io, tmp_path_factory, ops):
    d = tmp_path_factory.mktemp("seam")
    base = _name()
    fpath = d / "vol.genmap"
    fm = GenerationMap.create(fpath, volume_size=SIZE, granularity=G, volume_id=VID)
    rm = GenerationMap.create(_storage(rados_io, base), volume_size=SIZE, granularity=G,
                              volume_id=VID)
    try:
        for op in ops:
            fm = _apply(fm, op, fpath, lambda: GenerationMap.open(fpath, volume_size=SIZE,
                                                                  volume_id=VID))
            rm = _apply(rm, op, base, lambda: GenerationMap.open(
                _storage(rados_io, base), volume_size=SIZE, volume_id=VID))
            durability.barrier()
            assert _state(fm) == _state(rm), op
        fm.save()
        rm.save()
        fm.close()
        rm.close()
        # Byte for byte the same map; the journals' fine slots too.
        ptr = json.loads(_omap(rados_io, base)["map"])
        objs = _objects(rados_io, base)
        assert objs[ptr["object"]] == fpath.read_bytes()
        fj = Path(journal_path(fpath)).read_bytes()
        assert _fine_journal(objs[journal_object(base)]) == _fine_journal(fj)
    finally:
        for m in (fm, rm):
            m.close()


# ------------------------------------------------------------- barrier, crash
def test_a_mark_reaches_rados_at_the_barrier_and_not_before(rados_io):
    base = _name()
    m = GenerationMap.create(_storage(rados_io, base), volume_size=SIZE, volume_id=VID)
    try:
        m.mark(40 * G, G, sync=False)
        raw = _objects(rados_io, base)[journal_object(base)]
        assert not raw[4096 + 5] & 1                 # block 40 = bit 0 of byte 5 of slot 0
        durability.barrier()
        raw = _objects(rados_io, base)[journal_object(base)]
        assert raw[4096 + 5] & 1
        done = []
        m.mark_async(41 * G, G, done.append)          # group commit for async writers
        deadline = time.monotonic() + 10
        while not done and time.monotonic() < deadline:
            time.sleep(0.01)
        assert done == [None]
        assert _objects(rados_io, base)[journal_object(base)][4096 + 5] & 2
    finally:
        m.close()


def test_a_second_opener_is_refused_while_the_holder_renews(rados_io):
    base = _name()
    m = GenerationMap.create(_storage(rados_io, base, lock_duration=3), volume_size=SIZE,
                             volume_id=VID)
    try:
        time.sleep(4)                                # beyond one duration: renewed
        with pytest.raises(MapBusy, match="is held by .* pid %d" % os.getpid()):
            GenerationMap.open(_storage(rados_io, base, lock_duration=3, takeover_timeout=1),
                               volume_size=SIZE, volume_id=VID)
        m.mark(0, G)                                 # the holder goes on
    finally:
        m.close()
    # Closed cleanly: the next opener gets it at once.
    t0 = time.monotonic()
    GenerationMap.open(_storage(rados_io, base), volume_size=SIZE, volume_id=VID).close()
    assert time.monotonic() - t0 < 3


_HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from volume import ceph_bindings, durability
    from volume.genmap import GenerationMap
    from volume.radosmap import RadosMapStorage
    rados = ceph_bindings.load("rados")
    c = rados.Rados(conffile={conf!r}); c.connect()
    io = c.open_ioctx({pool!r})
    m = GenerationMap.open(RadosMapStorage(c, io, {base!r}, lock_duration=3),
                           volume_size={size}, volume_id={vid!r})
    print("ready", flush=True)
    sys.stdin.readline()                  # paused (SIGSTOP) and resumed around this
    for block in (90, 91):
        try:
            m.mark(block * 4096, 4096, sync=False)
            durability.barrier()
            print("acked", block, flush=True)
        except Exception as e:
            print("refused", block, type(e).__name__, e, flush=True)
""")


def test_a_paused_holder_is_fenced_when_another_takes_over(rados_io, ceph_cluster):
    base = _name()
    GenerationMap.create(_storage(rados_io, base), volume_size=SIZE, volume_id=VID).close()
    code = _HOLDER.format(repo=str(REPO), conf=str(ceph_cluster.conf), pool=POOL, base=base,
                          size=SIZE, vid=VID)
    a = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert a.stdout.readline().strip() == "ready", a.stderr.read()
        a.send_signal(signal.SIGSTOP)
        b_storage = _storage(rados_io, base, lock_duration=3)
        b = GenerationMap.open(b_storage, volume_size=SIZE, volume_id=VID)   # waits out A
        assert b_storage.epoch == 3 and b_storage.took_over_from["pid"] == a.pid
        b.mark(10 * G, G)
        a.send_signal(signal.SIGCONT)
        a.stdin.write("\n")
        a.stdin.flush()
        out, err = a.communicate(timeout=60)
        assert "acked" not in out, out + err
        assert out.count("refused") == 2, out + err
        assert "MapFenced" in out
        # A changed nothing of B's map: B's journal still holds exactly B's marks.
        b.mark(11 * G, G)
        assert b.counts()[b.current_generation] == 2
        raw = _objects(rados_io, base)[journal_object(base)]
        assert raw[4096 + 90 // 8] == 0 and raw[4096 + 1] & 0x0C == 0x0C
        b.close()
        m = GenerationMap.open(_storage(rados_io, base), volume_size=SIZE, volume_id=VID)
        assert list(m.blocks_in_generations(1, 1).search(1)) == [10, 11]
        m.close()
    finally:
        if a.poll() is None:
            a.send_signal(signal.SIGCONT)
            a.kill()
            a.wait()


def test_a_fenced_map_refuses_marks_as_a_store_error(rados_io):
    base = _name()
    st1 = _storage(rados_io, base)
    m = GenerationMap.create(st1, volume_size=SIZE, volume_id=VID)
    try:
        st1._fence("test: taken over")
        with pytest.raises(MapFenced) as exc:
            m.mark(0, G)
        assert isinstance(exc.value, StoreFenced) and isinstance(exc.value, MapError)
    finally:
        st1._fenced = None
        m.close()


def test_sync_false_is_refused_on_rados(rados_io):
    with pytest.raises(ValueError, match="sync=False"):
        GenerationMap.create(_storage(rados_io, _name()), volume_size=SIZE, volume_id=VID,
                             sync=False)


def test_a_damaged_pointer_or_missing_map_object_is_reported(rados_io):
    base = _name()
    GenerationMap.create(_storage(rados_io, base), volume_size=SIZE, volume_id=VID).close()
    _, io = rados_io
    ptr = json.loads(_omap(rados_io, base)["map"])
    io.remove_object(ptr["object"])
    with pytest.raises(MapCorrupt, match="is missing"):
        GenerationMap.open(_storage(rados_io, base), volume_size=SIZE, volume_id=VID)
    with pytest.raises(MapError, match="no generation map"):
        GenerationMap.open(_storage(rados_io, _name()), volume_size=SIZE, volume_id=VID)


# --------------------------------------------------------- the tracked volume
def test_a_tracked_volume_keeps_its_sidecar_in_rados(rados_io):
    base = _name()
    inner = MemoryStore(SIZE)
    t = TrackingStore.open_rados(inner, _storage(rados_io, base), volume="rbd:maps/x",
                                 volume_id=VID)
    try:
        t.write(3 * G, b"x" * G)
        durability.barrier()
        t.state.full_done = True
        t.save_state()
        assert t.sidecar is None and t.cow_settings.dir is None
    finally:
        t.close()
    side = json.loads(_omap(rados_io, base)["sidecar"])
    assert side["format"] == "pyscsi-volume" and side["volume_id"] == VID.hex()
    assert side["backup"]["full_done"] is True
    t = TrackingStore.open_rados(MemoryStore(SIZE), _storage(rados_io, base), volume="rbd:maps/x")
    try:
        assert t.volume_id == VID and t.state.full_done and t.map.generation_of(3) == 1
    finally:
        t.close()
    with pytest.raises(TrackingError, match=r"rbd:maps/y is 8192 bytes .* delete the RADOS "
                       r"objects t\w+\.genmap\.\* in pool maps"):
        TrackingStore.open_rados(MemoryStore(8192), _storage(rados_io, base), volume="rbd:maps/y")
    # The refused open let the map go: the next opener gets it at once.
    t0 = time.monotonic()
    TrackingStore.open_rados(MemoryStore(SIZE), _storage(rados_io, base), volume="x").close()
    assert time.monotonic() - t0 < 3


# ------------------------------------------------------------- growth (rbd resize)
def _grown(where) -> GenerationMap:
    m = GenerationMap.create(where, volume_size=SIZE, granularity=G, volume_id=VID, sync=True)
    m.mark(0, 3 * G)
    m.begin_full()
    m.set_base_id(BASE)
    m.save()
    m.mark(5 * G, 2 * G)
    m.begin_differential(1)
    m.mark(9 * G, G)
    m.grow(3 * SIZE)
    m.mark(3 * SIZE - G, G)
    m.sync_marks()
    return m


def test_a_map_grows_in_rados_with_the_bytes_of_a_grown_file_map(rados_io, shm_dir):
    base = _name()
    fm = _grown(shm_dir / "m")
    rm = _grown(_storage(rados_io, base))
    try:
        objs = _objects(rados_io, base)
        versions = [k for k in objs if ".genmap.map." in k]
        assert len(versions) == 1                         # the old version went
        ptr = json.loads(_omap(rados_io, base)["map"])
        assert ptr["object"] == versions[0]
        assert objs[versions[0]] == (shm_dir / "m").read_bytes()
        assert _fine_journal(objs[journal_object(base)]) == \
            _fine_journal((shm_dir / "m.dirty").read_bytes())
        assert rm.counts() == fm.counts()
    finally:
        rm.close()
        fm.close()
    m = GenerationMap.open(_storage(rados_io, base), volume_size=3 * SIZE, volume_id=VID)
    try:
        first_new = SIZE // G                             # the old partial block
        assert list(m.blocks_in_generations(2, 2).search(1)) == \
            [9, *range(first_new, m.entries)]
    finally:
        m.close()


def test_a_fenced_holder_cannot_grow_the_map(rados_io):
    base = _name()
    st1 = _storage(rados_io, base)
    m = GenerationMap.create(st1, volume_size=SIZE, volume_id=VID)
    before = _omap(rados_io, base)["map"]
    try:
        st1._fence("test: taken over")
        with pytest.raises(MapFenced):
            m.grow(2 * SIZE)
        assert _omap(rados_io, base)["map"] == before
        assert [k for k in _objects(rados_io, base) if ".genmap.map." in k] == \
            [json.loads(before)["object"]]
    finally:
        st1._fenced = None
        m.close()


def test_a_tracked_volume_in_rados_grows_at_open_and_refuses_a_shrink(rados_io):
    base = _name()
    t = TrackingStore.open_rados(MemoryStore(SIZE), _storage(rados_io, base), volume="rbd:maps/g",
                                 volume_id=VID)
    t.write(0, b"a" * G)
    t.close()
    t = TrackingStore.open_rados(MemoryStore(2 * SIZE), _storage(rados_io, base),
                                 volume="rbd:maps/g")
    try:
        assert t.size == 2 * SIZE and t.map.volume_size == 2 * SIZE
        assert list(t.map.blocks_in_generations(1, 1).search(1)) == \
            [0, *range(SIZE // G, t.map.entries)]
    finally:
        t.close()
    assert json.loads(_omap(rados_io, base)["sidecar"])["volume_size"] == 2 * SIZE
    with pytest.raises(TrackingError, match="shrinking a tracked volume is refused"):
        TrackingStore.open_rados(MemoryStore(SIZE), _storage(rados_io, base), volume="rbd:maps/g")


# ------------------------------------------------ the audit's block CRC table in RADOS
def test_the_block_crc_table_lives_beside_the_map_in_rados(rados_io):
    from volume import blockcrc
    golden = (GOLDEN / "blockcrc_v1.bin").read_bytes()
    crcs = blockcrc.BlockCrcs.unpack(golden)
    base = _name()
    st = _storage(rados_io, base)
    t = TrackingStore.open_rados(MemoryStore(SIZE), st, volume="rbd:maps/c", volume_id=VID)
    try:
        assert t.keeps_crcs and t.load_crcs() is None
        t.save_crcs(crcs)
        objs = _objects(rados_io, base)
        tables = [k for k in objs if ".genmap.blockcrc." in k]
        assert len(tables) == 1 and objs[tables[0]] == golden      # the file's bytes
        assert json.loads(_omap(rados_io, base)["blockcrc"])["object"] == tables[0]
        t.save_crcs(crcs)                                           # a new version...
        assert [k for k in _objects(rados_io, base) if ".genmap.blockcrc." in k] != tables
        assert len([k for k in _objects(rados_io, base) if ".genmap.blockcrc." in k]) == 1
        st._fence("test: taken over")                               # ...fenced like the map
        with pytest.raises(MapFenced):
            t.save_crcs(crcs)
        st._fenced = None
    finally:
        t.close()
    t = TrackingStore.open_rados(MemoryStore(SIZE), _storage(rados_io, base), volume="x")
    try:
        assert t.load_crcs() == crcs                                # another opener reads it
        t.forget_crcs()
        assert t.load_crcs() is None
        assert not [k for k in _objects(rados_io, base) if ".genmap.blockcrc." in k]
    finally:
        t.close()
