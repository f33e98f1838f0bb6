"""volume/rbdstore.py against real RBD images on the test cluster (and its error typing)."""
from __future__ import annotations

import errno
import os
import random
import threading
import time
import uuid

import pytest

from scsi_target.testing.ceph import require_ceph
from volume.rbdstore import RbdSpec, RbdStore, parse_rbd_name, rbd_error
from volume.store import (StoreError, StoreFenced, StoreLockedError, StoreNoSpace,
                          StoreTimeout)

MiB = 1 << 20
POOL = "pyscsi-rbd-store"


@pytest.fixture(scope="module")
def pool(ceph_cluster):
    ceph_cluster.create_pool(POOL)
    return ceph_cluster


def _image(cluster, size="64M", features=None) -> RbdSpec:
    name = f"img-{uuid.uuid4().hex[:10]}"
    args = ["rbd", "create", f"{POOL}/{name}", "--size", size]
    if features is not None:
        args += ["--image-feature", features]
    cluster.run(*args)
    return RbdSpec(POOL, name, conf=str(cluster.conf))


@pytest.fixture
def store(pool):
    s = RbdStore(_image(pool))
    yield s
    s.close()


def _wait(submit, *args, **kw):
    """Run one submit_* call and wait for its completion: (result...)."""
    done = threading.Event()
    got = []

    def cb(*res):
        got.append(res)
        done.set()
    submit(*args, cb, **kw)
    assert done.wait(30), "no completion"
    return got[0]


# -- data -----------------------------------------------------------------------
@pytest.mark.ceph
def test_random_unaligned_writes_read_back_like_a_model(store):
    rng = random.Random(7)
    model = bytearray(store.size)
    for _ in range(60):
        n = rng.choice([1, 7, 511, 512, 4096, 65537, 1 * MiB + 3])
        off = rng.randrange(0, store.size - n)
        data = rng.randbytes(n)
        store.write(off, data if rng.random() < 0.5 else bytearray(data))
        model[off:off + n] = data
    for _ in range(40):
        n = rng.choice([1, 513, 8192, 3 * MiB])
        off = rng.randrange(0, store.size - n)
        buf = memoryview(bytearray(n))
        store.readinto(off, buf)
        assert buf == model[off:off + n]
    assert store.read(0, store.size) == model


@pytest.mark.ceph
def test_never_written_image_reads_zeros_and_is_unmapped(store):
    assert store.read(17, 3 * MiB) == bytes(3 * MiB)
    assert list(store.allocation(0, store.size)) == [(0, store.size, False)]
    assert store.thin


@pytest.mark.ceph
def test_16_mib_ios_sync_and_async(store):
    data = os.urandom(16 * MiB)
    store.write(8 * MiB, data)
    assert store.read(8 * MiB, 16 * MiB) == data
    data2 = bytearray(os.urandom(16 * MiB))
    assert _wait(store.submit_write, 30 * MiB, data2) == (None,)
    got, err = _wait(store.submit_read, 30 * MiB, 16 * MiB)
    assert err is None and got == data2 and isinstance(got, bytes)


@pytest.mark.ceph
def test_discard_and_write_zeroes_read_back_zeros_even_unaligned(store):
    data = os.urandom(12 * MiB)
    store.write(0, data)
    store.discard(1000, 9 * MiB)              # partial objects at both ends
    assert store.read(0, 1000) == data[:1000]
    assert store.read(1000, 9 * MiB) == bytes(9 * MiB)
    assert store.read(1000 + 9 * MiB, 100) == data[1000 + 9 * MiB:1100 + 9 * MiB]
    store.write_zeroes(10 * MiB + 5, 4096)
    assert store.read(10 * MiB + 5, 4096) == bytes(4096)
    assert store.read(10 * MiB, 5) == data[10 * MiB:10 * MiB + 5]
    store.flush()
    # The whole 4 MiB object at 4 MiB was discarded: reported deallocated.
    ext = list(store.allocation(0, 12 * MiB))
    assert sum(n for _, n, _ in ext) == 12 * MiB
    assert any(off <= 4 * MiB and off + n >= 8 * MiB and not mapped for off, n, mapped in ext)


@pytest.mark.ceph
def test_many_concurrent_async_writes_then_reads(store):
    blocks = 64
    payloads = [bytearray(os.urandom(64 * 1024)) for _ in range(blocks)]
    left = threading.Semaphore(0)
    errors = []

    def done(err):
        if err is not None:
            errors.append(err)
        left.release()
    for i, p in enumerate(payloads):
        store.submit_write(i * 64 * 1024, p, done, fua=(i % 8 == 0))
    for _ in range(blocks):
        assert left.acquire(timeout=30)
    assert not errors and store.inflight == 0 and store.drain(1)
    got = []
    for i in range(blocks):
        store.submit_read(i * 64 * 1024, 64 * 1024, lambda d, e, i=i: (got.append((i, d, e)),
                                                                      left.release()))
    for _ in range(blocks):
        assert left.acquire(timeout=30)
    assert sorted((i, d) for i, d, e in got if e is None) == list(enumerate(map(bytes, payloads)))
    assert _wait(store.submit_flush) == (None,)


@pytest.mark.ceph
def test_ranges_outside_the_image_and_closed_store_are_refused(pool):
    s = RbdStore(_image(pool, "8M"))
    with pytest.raises(StoreError, match="outside"):
        s.read(8 * MiB - 1, 2)
    with pytest.raises(StoreError, match="outside"):
        s.submit_write(8 * MiB, b"x", lambda e: None)
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.read(0, 1)


# -- opening, locking, identity ------------------------------------------------------
@pytest.mark.ceph
def test_second_opener_is_refused_while_the_first_holds_the_lock(pool):
    spec = _image(pool, "8M")
    first = RbdStore(spec)
    try:
        assert first.lock_owner
        with pytest.raises(StoreLockedError, match=rf"rbd:{POOL}/{spec.image} is already "
                                                   r"served by another client \(exclusive "
                                                   r"lock held by 127\.0\.0\.1"):
            RbdStore(spec)
        first.write(0, b"first")
    finally:
        first.close()
    second = RbdStore(spec)          # released with the first store's close
    try:
        assert second.read(0, 5) == b"first"
    finally:
        second.close()


@pytest.mark.ceph
def test_read_only_opens_without_the_lock_and_refuses_writes(pool):
    spec = _image(pool, "8M")
    with RbdStore(spec) as writer:
        writer.write(0, b"data")
        with RbdStore(spec, read_only=True) as reader:   # beside the lock holder
            assert reader.read(0, 4) == b"data"
            with pytest.raises(StoreError, match="read-only"):
                reader.write(0, b"x")


@pytest.mark.ceph
def test_image_without_exclusive_lock_feature_is_refused(pool):
    spec = _image(pool, "8M", features="layering")
    with pytest.raises(StoreError, match="lacks the exclusive-lock feature.*rbd feature enable"):
        RbdStore(spec)


@pytest.mark.ceph
def test_identity_is_the_image_and_objects_go_beside_it(pool):
    spec = _image(pool, "8M")
    with RbdStore(spec) as s:
        vid, obj = s.volume_id, s.object_name("genmap")
        assert s.ioctx.get_pool_name() == POOL
    with RbdStore(spec) as s:
        assert s.volume_id == vid and len(vid) == 16
    assert obj == f"rbd_map.{spec.image}.genmap"


@pytest.mark.ceph
def test_create_size_makes_a_lockable_image_with_an_object_map(pool):
    spec = RbdSpec(POOL, f"new-{uuid.uuid4().hex[:8]}", conf=str(pool.conf))
    with pytest.raises(StoreError, match="does not exist \\(give a size to create it\\)"):
        RbdStore(spec)
    with RbdStore(spec, create_size=16 * MiB) as s:
        assert s.size == 16 * MiB
        assert s.features & s.rbd.RBD_FEATURE_OBJECT_MAP
        s.write(4 * MiB, b"z" * 4096)
        assert list(s.allocation(0, s.size)) == [(0, 4 * MiB, False), (4 * MiB, 4 * MiB, True),
                                                 (8 * MiB, 8 * MiB, False)]
    out = pool.run("rbd", "info", f"{POOL}/{spec.image}").stdout.decode()
    assert "exclusive-lock" in out and "16 MiB" in out


@pytest.mark.ceph
@pytest.mark.parametrize("spec_args, message", [
    (dict(pool="no-such-pool", image="x"), "cannot open pool 'no-such-pool': it does not exist"),
    (dict(pool=POOL, image="no-such-image"), "the image does not exist"),
])
def test_missing_pool_or_image_is_one_line(pool, spec_args, message):
    with pytest.raises(StoreError, match=message):
        RbdStore(RbdSpec(conf=str(pool.conf), **spec_args))


def test_missing_conf_file_is_refused_before_connecting(tmp_path):
    require_ceph(bindings=True)
    with pytest.raises(StoreError, match="ceph.conf .*nope.conf does not exist"):
        RbdStore(RbdSpec("p", "i", conf=str(tmp_path / "nope.conf")))


# -- pure functions ------------------------------------------------------------------
@pytest.mark.parametrize("code, cls", [
    (errno.ETIMEDOUT, StoreTimeout), (errno.ENOSPC, StoreNoSpace), (errno.EDQUOT, StoreNoSpace),
    (errno.EROFS, StoreFenced), (errno.ESHUTDOWN, StoreFenced), (errno.EIO, StoreError),
])
def test_librados_errors_become_typed_store_errors(code, cls):
    err = rbd_error(OSError(code, os.strerror(code)), "write of rbd:p/i")
    assert type(err) is cls and err.args[0] == f"write of rbd:p/i: {os.strerror(code)}"
    neg = rbd_error(OSError(-code, "x"), "w")        # librbd's negative return codes
    assert type(neg) is cls


@pytest.mark.parametrize("text, problem", [
    ("pool", "is not POOL/IMAGE"), ("/img", "is not POOL/IMAGE"), ("pool/", "is not POOL/IMAGE"),
    ("p/a/b", "namespaces and snapshots"), ("p/img@snap", "namespaces and snapshots"),
    ("p/im g", "white space"),
])
def test_bad_image_names_are_refused(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_rbd_name(text)


def test_spec_parse_takes_the_rbd_prefix():
    s = RbdSpec.parse("rbd:pool/img", client_id="libvirt")
    assert (s.pool, s.image, s.client_id, s.name) == ("pool", "img", "libvirt", "rbd:pool/img")


# -- growth ---------------------------------------------------------------------
@pytest.mark.ceph
def test_grow_resizes_the_image_and_the_watcher_reports_only_others_resizes(pool):
    spec = _image(pool, "8M")
    seen: list[int] = []
    with RbdStore(spec) as s:
        s.write(8 * MiB - 5, b"tail!")
        s.watch_size(seen.append, interval=0.1)
        assert s.growable
        s.grow(12 * MiB)
        assert s.size == 12 * MiB and s.image.size() == 12 * MiB
        assert s.read(8 * MiB - 5, 5) == b"tail!" and s.read(8 * MiB, 4 * MiB) == bytes(4 * MiB)
        s.write(12 * MiB - 4096, b"n" * 4096)
        s.grow(10 * MiB)                              # never a shrink
        assert s.size == 12 * MiB and s.image.size() == 12 * MiB
        time.sleep(0.5)
        assert seen == []                             # its own growth is no news
        pool.run("rbd", "resize", "--size", "16M", f"{POOL}/{spec.image}")
        deadline = time.monotonic() + 20
        while not seen:
            assert time.monotonic() < deadline, "the watcher did not see rbd resize"
            time.sleep(0.1)
        assert seen == [16 * MiB] and s.size == 12 * MiB     # adopted by the caller
        s.grow(16 * MiB)                              # as large already: adopted, not resized
        assert s.size == 16 * MiB
    with RbdStore(spec, read_only=True) as r:
        with pytest.raises(StoreError, match="read-only: it cannot grow"):
            r.grow(20 * MiB)


@pytest.mark.ceph
def test_grow_after_the_lock_was_taken_over_is_fenced_and_changes_nothing(pool):
    spec = _image(pool, "8M")
    first = RbdStore(RbdSpec(spec.pool, spec.image, conf=spec.conf, op_timeout=10))
    try:
        second = RbdStore(RbdSpec(spec.pool, spec.image, conf=spec.conf, take_over=True))
        try:
            with pytest.raises(StoreFenced, match=rf"resize of rbd:{POOL}/{spec.image} from "
                                                  rf"{8 * MiB} to {12 * MiB} bytes"):
                first.grow(12 * MiB)
            assert first.size == 8 * MiB and second.image.size() == 8 * MiB
        finally:
            second.close()
    finally:
        first.close()


def _tracked(spec: RbdSpec):
    from volume.radosmap import RadosMapStorage
    from volume.tracked import TrackingStore
    s = RbdStore(spec)
    storage = RadosMapStorage(s.cluster, s.ioctx, s.object_name("genmap").rsplit(".", 1)[0],
                              lock_duration=4, take_over=spec.take_over)
    try:
        return TrackingStore.open_rados(s, storage, volume=str(spec), volume_id=s.volume_id)
    except BaseException:
        s.close()
        raise


def _grown_chain(tmp_path, size0: int, size1: int):
    """Streams of a file volume: full at ``size0``, grown to ``size1`` and written, a differential."""
    from tools.diffbackup import main
    from scsi_target.testing.seed import random_file, tracked_writes
    vol = tmp_path / "src.img"
    random_file(vol, size0, seed=31)
    full, d1 = tmp_path / "full.bk", tmp_path / "d1.bk"
    assert main(["-q", "full", str(vol), "-o", str(full)]) == 0
    os.truncate(vol, size1)
    tracked_writes(vol, size1, writes=30, seed=32)
    assert main(["-q", "diff", str(vol), "--scope", "1", "-o", str(d1)]) == 0
    return vol.read_bytes(), full, d1


def _push(v, stream) -> None:
    w = v.sessions.start_restore(name=stream.name)
    data = stream.read_bytes()
    for off in range(0, len(data), 1 << 18):
        w.write(off, data[off:off + (1 << 18)])
    assert w.finished and w.result.state == "done", w.result


@pytest.mark.ceph
def test_a_tracked_image_grows_for_a_restore_and_a_growth_cut_short_finishes_at_open(pool,
                                                                                     tmp_path):
    """The restore's growth of a tracked RBD volume (map in RADOS): the image resized,
    the map grown with it; and with the map's growth cut short after the image's
    (what kill -9 leaves: restore_growth on record, image grown, map not), the next
    open grows the map with the new blocks at generation 0 and the differential,
    applied then, fills them."""
    src, full, d1 = _grown_chain(tmp_path, 4 * MiB, 6 * MiB)
    for cut_short in (False, True):
        spec = _image(pool, "4M")
        v = _tracked(spec)
        try:
            _push(v, full)
            if cut_short:
                gen = v.map.current_generation
                v.state.restore_growth = 6 * MiB
                v.save_state()
                v.inner.grow(6 * MiB)
        finally:
            v.close()
        v = _tracked(spec)
        try:
            if cut_short:
                assert v.size == v.map.volume_size == 6 * MiB
                assert v.state.restore_growth is None
                assert v.map.counts()[gen] == 0
            _push(v, d1)
            assert v.size == v.map.volume_size == v.inner.image.size() == 6 * MiB
            assert v.inner.read(0, 6 * MiB) == src
        finally:
            v.close()


@pytest.mark.ceph
def test_a_restore_growth_without_the_lock_is_rejected_and_the_new_holder_grows(pool, tmp_path):
    from volume.session import RestoreRejected
    src, full, d1 = _grown_chain(tmp_path, 4 * MiB, 6 * MiB)
    spec = _image(pool, "4M")
    a = _tracked(spec)
    try:
        _push(a, full)
        b = _tracked(RbdSpec(spec.pool, spec.image, conf=spec.conf, take_over=True))
        try:
            w = a.sessions.start_restore(name="d1.bk")
            # The fenced map refuses the growth's record before the image is touched.
            with pytest.raises(RestoreRejected, match=f"d1.bk is for the volume grown to "
                                                      f"{6 * MiB} bytes; the target could not "
                                                      f"grow: .*cannot record the growth to "
                                                      f"{6 * MiB} bytes: .*blocklisted"):
                w.write(0, d1.read_bytes())
            assert a.size == a.map.volume_size == 4 * MiB
            assert b.inner.image.size() == 4 * MiB and b.size == 4 * MiB
            _push(b, d1)
            assert b.size == b.inner.image.size() == 6 * MiB
            assert b.inner.read(0, 6 * MiB) == src
        finally:
            b.close()
    finally:
        try:
            a.close()
        except Exception:       # fenced: its map and image are B's now
            pass
