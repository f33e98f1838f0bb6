"""Growth of a tracked volume (issue 15: rbd resize under a tracked LUN), on files:
GenerationMap.grow, its crash safety (journal replaced before the map, the
interrupted growth completed at open), TrackingStore growth at open and while
open, the restore onto a target that grows with the chain, the block CRC table
across a growth, and the refusal of a shrink."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tools.diffbackup import main
from volume import blockcrc
from volume.filestore import FileStore
from volume.genmap import GenerationMap, MapError
from volume.mapstorage import FileMapStorage
from volume.memstore import MemoryStore
from volume.tracked import TrackingBusy, TrackingError, TrackingStore

from scsi_target.testing.seed import random_file, tracked_writes

BS = 4096
VID = bytes(range(16))


def run(*args) -> int:
    return main(["-q", *map(str, args)])


def _map(tmp_path, size=10 * BS + 100) -> GenerationMap:
    g = GenerationMap.create(tmp_path / "m", volume_size=size, volume_id=VID)
    g.begin_full()
    g.mark(0, BS)                 # generation 1
    g.begin_differential(1)
    g.mark(3 * BS, 10)            # generation 2, open
    return g


def test_grow_marks_the_new_blocks_and_the_old_partial_one(tmp_path):
    g = _map(tmp_path)
    assert g.counts() == {0: 9, 1: 1, 2: 1} and g.entries == 11
    g.grow(20 * BS)
    assert g.volume_size == 20 * BS and g.entries == 20
    assert list(g.blocks_in_generations(2, 2).search(1)) == [3, *range(10, 20)]
    assert g.counts() == {0: 8, 1: 1, 2: 11}
    g.mark(19 * BS, BS)                       # the new range takes marks
    with pytest.raises(ValueError):
        g.mark(20 * BS, 1)
    g.close()
    # Durable and in the unchanged format: reopened at the new size...
    g = GenerationMap.open(tmp_path / "m", volume_size=20 * BS, volume_id=VID)
    assert g.counts() == {0: 8, 1: 1, 2: 11}
    plan = g.begin_differential(1)
    assert list(plan.selection.search(1)) == [3, *range(10, 20)]
    assert plan.volume_size == 20 * BS and plan.entries == 20
    # ... and the map never shrinks.
    with pytest.raises(MapError, match="cannot shrink"):
        g.grow(5 * BS)
    g.close()


def test_grow_without_marking_for_a_restore_target(tmp_path):
    g = _map(tmp_path)
    g.grow(16 * BS, mark_new=False)
    assert g.counts() == {0: 14, 1: 1, 2: 1}
    g.close()


def test_grow_is_refused_while_a_cut_is_pending(tmp_path):
    g = _map(tmp_path)
    cut = g.cut_differential(1)
    with pytest.raises(MapError, match="pending"):
        g.grow(20 * BS)
    cut.abandon()
    g.grow(20 * BS)
    g.close()


def test_open_with_grow_grows_a_map_of_a_smaller_volume(tmp_path):
    g = _map(tmp_path)
    g.close()
    with pytest.raises(MapError, match="made for"):
        GenerationMap.open(tmp_path / "m", volume_size=30 * BS, volume_id=VID)
    g = GenerationMap.open(tmp_path / "m", volume_size=30 * BS, volume_id=VID, grow=True)
    assert g.entries == 30
    assert list(g.blocks_in_generations(2, 2).search(1)) == [3, *range(10, 30)]
    g.close()


class _CrashAfterJournal(FileMapStorage):
    """Dies (an exception standing for kill -9) between the journal's rename and the
    map's replacement."""

    def replace(self, journal, map_chunks, sync):
        def die(*a, **k):
            raise KeyboardInterrupt("killed between journal and map")
        self.write_map = die
        return super().replace(journal, map_chunks, sync)


def test_a_growth_cut_between_journal_and_map_is_completed_at_open(tmp_path):
    path = tmp_path / "m"
    g = _map(tmp_path)
    g.close()
    g = GenerationMap.open(_CrashAfterJournal(path), volume_size=10 * BS + 100, volume_id=VID)
    g.mark(5 * BS, 1)
    with pytest.raises(KeyboardInterrupt):
        g.grow(20 * BS)
    g._storage.close()                       # the process is gone: its flock too
    # The map file is the old one; the journal is the grown one.
    raw = open(path, "rb").read()
    assert GenerationMap.open is not None and len(raw) > 0
    with pytest.raises(MapError):
        GenerationMap.open(path, volume_size=10 * BS + 100, volume_id=VID)
    g = GenerationMap.open(path, volume_size=20 * BS, volume_id=VID, grow=True)
    assert g.recovered and g.entries == 20
    # Every mark made before the growth, and the new blocks, are in the open generation.
    assert list(g.blocks_in_generations(2, 2).search(1)) == [3, 5, *range(10, 20)]
    g.close()
    g = GenerationMap.open(path, volume_size=20 * BS, volume_id=VID)   # completed: plain open
    assert g.counts() == {0: 7, 1: 1, 2: 12}
    g.close()


def test_a_growth_cut_before_the_journal_rename_leaves_the_old_map(tmp_path):
    path = tmp_path / "m"
    g = _map(tmp_path)
    g.close()
    # What a kill -9 while writing the new journal leaves: a partial temp file.
    Path(str(path) + ".dirty.grow").write_bytes(b"\x89GMJRNL\n" + bytes(50))
    g = GenerationMap.open(path, volume_size=10 * BS + 100, volume_id=VID)
    assert g.counts() == {0: 9, 1: 1, 2: 1}
    g.grow(12 * BS)                          # and the next growth goes through
    g.close()


def test_tracked_file_volume_grows_at_open_and_the_chain_restores_onto_a_growing_target(tmp_path):
    size0 = (3 << 20) + 1536                 # a partial last block
    vol = tmp_path / "vol.img"
    random_file(vol, size0, seed=1)
    full, d1, d2 = tmp_path / "full.bk", tmp_path / "d1.bk", tmp_path / "d2.bk"
    assert run("full", vol, "-o", full) == 0
    tracked_writes(vol, size0, writes=20, seed=2)
    # Grown while no target serves it (truncate -s): the new area is zeroes, and
    # some of it is written afterwards.
    size1 = 5 << 20
    os.truncate(vol, size1)
    v = TrackingStore.open(FileStore(vol), vol)
    assert v.size == size1 and v.map.volume_size == size1
    rnd = random.Random(3)
    for _ in range(10):
        off = rnd.randrange(size0 - BS, size1 - BS)
        v.write(off, rnd.randbytes(BS))
    v.close()
    assert run("diff", vol, "--scope", 1, "-o", d1) == 0
    tracked_writes(vol, size1, writes=20, seed=4)
    assert run("diff", vol, "--scope", 1, "-o", d2) == 0
    # The restore target is created at the full's size and grows with the first
    # differential of the grown volume.
    out = tmp_path / "restored.img"
    assert run("restore", out, full, d1, d2) == 0
    assert out.read_bytes() == vol.read_bytes()
    # Onto a fresh target, full + first differential: the volume as it was then.
    out2 = tmp_path / "restored2.img"
    assert run("restore", out2, full, d1) == 0
    assert os.path.getsize(out2) == size1


def test_growth_while_open_and_its_refusals(tmp_path):
    vol = tmp_path / "vol.img"
    random_file(vol, 1 << 20, seed=1)
    v = TrackingStore.open(FileStore(vol, size=1 << 20), vol)
    try:
        reader = v.sessions.start_backup(full=True)
        with pytest.raises(TrackingBusy, match="backup stream"):
            v.grow(2 << 20)
        v.sessions.abandon_backup()
        seen = []
        v.grow_listeners.append(seen.append)
        v.grow(2 << 20)
        assert seen == [2 << 20] and v.size == 2 << 20
        assert v.map.counts()[v.map.current_generation] == 256
        with pytest.raises(TrackingError, match="shrinking a tracked volume is refused"):
            v.grow(1 << 20)
        del reader
    finally:
        v.close()
    v = TrackingStore.open(FileStore(vol), vol)      # the sidecar holds the new size
    assert v.size == 2 << 20
    v.close()


def test_a_refused_shrink_answers_io_past_the_end_out_of_range(tmp_path):
    from volume.store import StoreOutOfRange
    v = TrackingStore.in_memory(MemoryStore(1 << 20))
    try:
        v.limit_to(512 << 10)
        v.write(0, b"x" * 512)
        with pytest.raises(StoreOutOfRange):
            v.write((512 << 10) - 256, b"y" * 512)
        with pytest.raises(StoreOutOfRange):
            v.readinto(600 << 10, memoryview(bytearray(512)))
        v.limit_to(None)
        v.write(600 << 10, b"z" * 512)
    finally:
        v.close()


def test_audit_across_a_growth(tmp_path):
    size0 = (2 << 20) + 2560
    vol = tmp_path / "vol.img"
    random_file(vol, size0, seed=1)
    assert run("full", vol, "-o", tmp_path / "full.bk") == 0
    os.truncate(vol, 3 << 20)
    # The grown map has more blocks than the table: the table's are audited, the
    # new ones (and the old partial block) are in the open generation.
    assert run("audit", vol, "--full") == 0
    assert run("diff", vol, "--scope", 1, "-o", tmp_path / "d1.bk") == 0
    crcs = blockcrc.load(blockcrc.crc_path(str(vol) + ".volume"))
    assert crcs.entries == (3 << 20) // BS and crcs.volume_size == 3 << 20
    assert run("audit", vol, "--full") == 0
    # A write behind the tracker's back in the new area is found.
    fd = os.open(vol, os.O_WRONLY)
    os.pwrite(fd, b"behind" * 10, (3 << 20) - 3000)
    os.close(fd)
    assert run("audit", vol, "--full") == 1
    assert run("diff", vol, "--scope", 1, "-o", tmp_path / "d2.bk") == 0
    out = tmp_path / "r.img"
    assert run("restore", out, tmp_path / "full.bk", tmp_path / "d1.bk", tmp_path / "d2.bk") == 0
    assert out.read_bytes() == vol.read_bytes()


def _grown_chain(tmp_path, seed=7):
    """A file volume, its full at ``size0``, grown to ``size1``, written old and new: a differential."""
    size0, size1 = (2 << 20) + 1536, 3 << 20
    vol = tmp_path / "src.img"
    random_file(vol, size0, seed=seed)
    full, d1 = tmp_path / "full.bk", tmp_path / "d1.bk"
    assert run("full", vol, "-o", full) == 0
    os.truncate(vol, size1)
    v = TrackingStore.open(FileStore(vol), vol)
    rnd = random.Random(seed)
    for _ in range(12):
        v.write(rnd.randrange(0, size1 - BS), rnd.randbytes(BS))
    v.close()
    assert run("diff", vol, "--scope", 1, "-o", d1) == 0
    return vol, size0, size1, full, d1


def _push(v: TrackingStore, stream: Path) -> None:
    w = v.sessions.start_restore(name=stream.name)
    data = stream.read_bytes()
    for off in range(0, len(data), 1 << 16):
        w.write(off, data[off:off + (1 << 16)])
    assert w.finished and w.result.state == "done", w.result


def test_a_restore_growth_cut_short_after_the_medium_grew_is_finished_at_open(tmp_path):
    """kill -9 between the medium's growth and the map's: the sidecar's restore_growth
    tells the next open to leave the new blocks at generation 0, so the
    differential's records still apply there (marked as written, they would not)."""
    vol, size0, size1, full, d1 = _grown_chain(tmp_path)
    out = tmp_path / "out.img"
    assert run("restore", out, full) == 0
    v = TrackingStore.open(FileStore(out), out)
    gen = v.map.current_generation
    v.state.restore_growth = size1          # what grow(restoring=True) records first,
    v.save_state()
    v.inner.grow(size1)                     # then the medium grows; the map never did
    v.close()
    v = TrackingStore.open(FileStore(out), out)
    try:
        assert v.size == v.map.volume_size == size1
        assert v.state.restore_growth is None
        assert v.map.counts()[gen] == 0     # nothing counts as written since the full
        _push(v, d1)
    finally:
        v.close()
    assert out.read_bytes() == vol.read_bytes()
    # Without the record (a growth nobody announced) the new blocks count as written.
    out2 = tmp_path / "out2.img"
    assert run("restore", out2, full) == 0
    os.truncate(out2, size1)
    v = TrackingStore.open(FileStore(out2), out2)
    assert v.map.counts()[v.map.current_generation] > 0
    v.close()


class _FullPool(FileStore):
    def grow(self, size: int) -> None:
        from volume.store import StoreNoSpace
        raise StoreNoSpace(f"resize of {self.path} to {size} bytes: No space left on device")


def test_a_refused_restore_growth_is_a_precise_rejection_and_changes_nothing(tmp_path):
    from volume.session import RestoreRejected
    from volume.tracked import read_sidecar
    vol, size0, size1, full, d1 = _grown_chain(tmp_path, seed=8)
    out = tmp_path / "out.img"
    assert run("restore", out, full) == 0
    v = TrackingStore.open(_FullPool(out), out)
    try:
        w = v.sessions.start_restore(name="d1.bk")
        with pytest.raises(RestoreRejected, match=f"d1.bk is for the volume grown to {size1} "
                           "bytes; the target could not grow: .*No space left on device"):
            w.write(0, d1.read_bytes())
        assert v.size == v.map.volume_size == os.path.getsize(out) == size0
        assert v.state.restore_growth is None and v.state.restore is None
    finally:
        v.close()
    assert "restore_growth" not in read_sidecar(str(out) + ".volume")["backup"]
    v = TrackingStore.open(FileStore(out), out)     # the next try goes through
    try:
        _push(v, d1)
    finally:
        v.close()
    assert out.read_bytes() == vol.read_bytes()


def _refused_restore(out, name: str, stream: bytes, size0: int, size1: int):
    """Push ``stream`` (for a ``size0``-byte volume) onto the ``size1``-byte tracked
    file ``out``: it must be refused; the volume's size, its map's and its restore
    mark afterwards."""
    from volume.session import RestoreRejected
    v = TrackingStore.open(FileStore(out), out)
    try:
        w = v.sessions.start_restore(name=name)
        with pytest.raises(RestoreRejected, match=f"{name} is for a {size0}-byte volume; "
                           f"the target holds {size1} bytes"):
            w.write(0, stream)
        return v.size, v.map.volume_size, v.state.restore
    finally:
        v.close()


def test_a_later_smaller_stream_is_refused_and_a_memory_target_cannot_grow(tmp_path):
    from volume.session import RestoreRejected
    vol, size0, size1, full, d1 = _grown_chain(tmp_path, seed=9)
    # A target larger than the stream: a restore never shrinks it.
    out = tmp_path / "out.img"
    assert run("restore", out, full, d1) == 0
    size, _map_size, _restore = _refused_restore(out, "full.bk", full.read_bytes(), size0, size1)
    assert size == size1
    # A differential whose header says a smaller volume (after the grown one):
    # refused before anything is written, the target's size kept.
    from dataclasses import replace
    from volume.stream import HEADER_SIZE, StreamHeader
    tracked_writes(vol, size1, writes=5, seed=10)
    d2 = tmp_path / "d2.bk"
    assert run("diff", vol, "--scope", 1, "-o", d2) == 0
    raw = d2.read_bytes()
    h = StreamHeader.unpack(raw[:HEADER_SIZE])
    small = replace(h, volume_size=size0, entries=-(-size0 // BS))
    d2.write_bytes(small.pack() + raw[HEADER_SIZE:])
    size, map_size, restore = _refused_restore(out, "d2.bk", d2.read_bytes(), size0, size1)
    assert size == map_size == size1 and restore is None
    # A medium that cannot grow (memory): refused, saying so.
    v = TrackingStore.in_memory(MemoryStore(size0))
    try:
        _push(v, full)
        w = v.sessions.start_restore(name="d1.bk")
        with pytest.raises(RestoreRejected, match="cannot grow to the stream's .* resize it first"):
            w.write(0, d1.read_bytes())
    finally:
        v.close()


def test_a_chain_across_a_growth_restores_onto_a_served_file_lun_over_iscsi(tmp_path):
    """The file-LUN form of tests/test_rbd_lun.py's growth restore: a source grown
    between its full and its differential, both restored over iSCSI onto a served
    file LUN of the full's size, which grows, says CAPACITY DATA HAS CHANGED, and
    ends equal to the source; its own differential then restores with the chain."""
    from conftest import run_diffbackup
    from scsi_target.initiator.sync import SyncIscsiClient
    from scsi_target.scsi.sense import SenseKey
    from scsi_target.testing.process import ServerProcess
    size0, size1 = 4 << 20, 6 << 20
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    random_file(src, size0, seed=21)
    full, d1, own = tmp_path / "full.pyb", tmp_path / "d1.pyb", tmp_path / "own.pyb"
    rnd = random.Random(22)

    def ok(r):
        assert r.returncode == 0, r.stdout + r.stderr
        return r
    with ServerProcess.from_flags(tmp_path / "s1", "--disk", str(src), "--backup-device") as srv:
        ok(run_diffbackup("full", srv.url(0), "-o", str(full)))
    os.truncate(src, size1)                  # grown while not served: grows at the next open
    with ServerProcess.from_flags(tmp_path / "s2", "--disk", str(src), "--backup-device") as srv:
        with SyncIscsiClient(srv.url(0)) as c:
            c.execute(bytes(6))
            for off in (size0 + 8192, size0 - 4096, 100 * BS):
                assert c.write(off // 512, rnd.randbytes(3 * BS)).good
        ok(run_diffbackup("diff", srv.url(0), "--scope", "1", "-o", str(d1)))
    with open(dst, "wb") as f:
        f.truncate(size0)
    with ServerProcess.from_flags(tmp_path / "d", "--disk", str(dst), "--backup-device") as srv:
        with SyncIscsiClient(srv.url(0)) as c:
            c.execute(bytes(6))
            assert c.read_capacity16().blocks == size0 // 512
            assert "restore complete" in ok(run_diffbackup("restore", srv.url(0), str(full),
                                                           str(d1))).stdout
            r = c.execute(bytes(6))
            assert (r.sense_key, r.asc, r.ascq) == (SenseKey.UNIT_ATTENTION, 0x2A, 0x09)
            assert c.read_capacity16().blocks == size1 // 512
        assert dst.read_bytes() == src.read_bytes()
        assert "restore: complete" in ok(run_diffbackup("status", srv.url(0))).stdout
        with SyncIscsiClient(srv.url(0)) as c:
            c.execute(bytes(6))
            assert c.write((size1 - BS) // 512, rnd.randbytes(BS)).good
        ok(run_diffbackup("diff", srv.url(0), "--scope", "1", "-o", str(own)))
        r = run_diffbackup("restore", srv.url(0), str(full))
        assert r.returncode != 0 and f"is for a {size0}-byte volume; the target holds " \
            f"{size1} bytes" in r.stdout + r.stderr, r.stdout + r.stderr
    out = tmp_path / "again.img"
    assert run("restore", out, full, d1, own) == 0
    assert out.read_bytes() == dst.read_bytes()
