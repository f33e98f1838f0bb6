"""Group commit of write intents: no write is answered before its mark is durable."""
from __future__ import annotations

import struct

import pytest

from volume.tracked import TrackingStore
from scsi_target.scsi.command import Command, Direction
from scsi_target.scsi.disk import DiskLU
from scsi_target.scsi.lun import LunMap
from volume import durability
from volume.filestore import FileStore


def _lu(tmp_path):
    path = tmp_path / "vol.img"
    store = TrackingStore.open(FileStore(path, size=8 << 20, create=True), path)
    luns = LunMap("iqn.2026-11.org.pyscsi.test:dur")
    luns.add(0, DiskLU(store, 512))
    luns.execute(Command(cdb=bytes(6)))  # TEST UNIT READY takes the power-on unit attention
    return luns, store


def _write10(lba: int, nblocks: int, defer: bool) -> Command:
    cdb = struct.pack(">BBIBHB", 0x2A, 0, lba, 0, nblocks, 0)
    return Command(cdb=cdb, data_out=b"\x5a" * 512 * nblocks, expected_length=512 * nblocks,
                   direction=Direction.OUT, defer_barrier=defer)


def _unsynced(store) -> object:
    return store._map._unsynced


def test_in_process_write_is_durably_marked_when_answered(tmp_path):
    luns, store = _lu(tmp_path)
    try:
        assert luns.execute(_write10(8, 8, defer=False)).ok
        assert _unsynced(store) is None, "answered while the mark was not yet msynced"
        gen = store._map.current_generation
        assert store._map.blocks_in_generations(gen, gen)[1]  # LBA 8 = tracking block 1
    finally:
        luns.close()


def test_deferred_barrier_batches_marks_until_the_front_end_commits(tmp_path):
    luns, store = _lu(tmp_path)
    try:
        for lba in (0, 4096, 9000):
            assert luns.execute(_write10(lba, 8, defer=True)).ok
        pending = _unsynced(store)
        assert pending is not None and pending[1] > pending[0]
        durability.barrier()
        assert _unsynced(store) is None
        # Rewriting marked blocks needs no new intent at all.
        assert luns.execute(_write10(0, 8, defer=True)).ok
        assert _unsynced(store) is None
    finally:
        luns.close()


def test_iscsi_connection_commits_before_responses_leave(tmp_path, monkeypatch):
    """The connection's receive path ends with its LUN map's group commit (no response
    without it), even when the batch raised."""
    from types import SimpleNamespace

    from scsi_target.scsi import lun as LUN
    from scsi_target.target import connection as C

    calls = []
    real = durability.barrier
    monkeypatch.setattr(LUN.durability, "barrier", lambda: (calls.append(1), real())[1])
    luns = LUN.LunMap("iqn.test")
    conn = C.TargetConnection.__new__(C.TargetConnection)
    conn.closing = False
    conn.last_heard = 0.0
    conn.session = SimpleNamespace(target=SimpleNamespace(luns=luns))
    conn._receive = lambda data: None
    conn.receive_data(b"")
    assert calls == [1]

    def boom(data):
        raise ValueError("bad batch")
    conn._receive = boom
    with pytest.raises(ValueError):
        conn.receive_data(b"")
    assert calls == [1, 1]


def test_ram_filesystem_detection(tmp_path):
    from volume.genmap import on_ram_filesystem
    # Every mount point the kernel lists as tmpfs is detected as RAM, and procfs is not
    # (no dependence on /dev/shm existing).
    with open("/proc/self/mountinfo") as f:
        tmpfs = [ln.split(" - ")[0].split()[4] for ln in f
                 if " - " in ln and ln.split(" - ")[1].split()[0] == "tmpfs"]
    for mnt in tmpfs:
        assert on_ram_filesystem(mnt.rstrip("/") + "/some.img"), mnt
    assert not on_ram_filesystem("/proc/self/status")


def test_marks_on_disk_filesystems_are_msynced_not_on_tmpfs(tmp_path):
    from volume.genmap import GenerationMap, on_ram_filesystem
    disk_map = GenerationMap.create(tmp_path / "m", volume_size=1 << 20, volume_id=b"v" * 16)
    try:
        assert disk_map._msync_marks == (not on_ram_filesystem(str(tmp_path / "m")))
    finally:
        disk_map.close()


def test_batched_writes_through_the_tracker_mark_every_range(tmp_path):
    luns, store = _lu(tmp_path)
    try:
        offs = [0, 4096 * 10, 4096 * 11, 4096 * 500]
        store.write_many(offs, [b"\x01" * 4096] * len(offs))
        durability.barrier()
        gen = store._map.current_generation
        sel = store._map.blocks_in_generations(gen, gen)
        assert [i for i in range(len(sel)) if sel[i]] == [0, 10, 11, 500]
        bufs = [memoryview(bytearray(4096)) for _ in offs]
        store.readinto_many(offs, bufs)
        assert all(bytes(b) == b"\x01" * 4096 for b in bufs)
    finally:
        luns.close()
