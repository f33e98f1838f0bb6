"""The one backup engine in volume/ (issue 8, item 5): library callers get the same two-phase
rules and the same widening as the pseudo device and the CLI."""
from __future__ import annotations

import io
import os

import pytest

from volume import backup as B
from volume.filestore import FileStore
from volume.genmap import GenerationMap
from volume.memstore import MemoryStore
from volume.session import (BackupRefused, ScopeError, StreamGone, VolumeIncomplete,
                            check_scope)
from volume.stream import Record, StreamDecoder
from volume.tracked import TrackingStore, map_paths

G = 4096


def _blocks(raw: bytes) -> set[int]:
    return {b for i in StreamDecoder().feed(raw) if isinstance(i, Record)
            for b in range(i.first_block, i.first_block + i.nblocks)}


def _tracked(tmp_path, size=1 << 20) -> TrackingStore:
    p = tmp_path / "v.img"
    return TrackingStore.open(FileStore(p, size=size, create=not p.exists()), p)


def test_library_differential_honours_an_older_releases_unfinished_stream(tmp_path):
    vol = _tracked(tmp_path)
    B.full_backup(vol, vol.map, io.BytesIO())
    vol.write(0, os.urandom(G))                       # generation 1
    vol.map.begin_differential(1)                     # an older release's abandoned stream
    vol.state.pending_lo = 1
    vol.save_state()
    vol.write(5 * G, os.urandom(G))                   # generation 2
    vol.close()
    vol = _tracked(tmp_path)
    try:
        out = io.BytesIO()
        res = B.differential_backup(vol, vol.map, 1, out)
        assert res.generation_range == (1, 2)         # widened: block 0 is not missed
        assert _blocks(out.getvalue()) == {0, 5}
        assert vol.state.pending_lo is None
    finally:
        vol.close()


class _Broken(io.RawIOBase):
    def writable(self):
        return True

    def write(self, b):
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize("tracked", [True, False], ids=["tracked", "plain-map"])
def test_a_library_backup_that_fails_changes_nothing(tmp_path, tracked):
    if tracked:
        vol = _tracked(tmp_path)
        store, gmap = vol, vol.map
    else:
        vol = None
        store = MemoryStore(1 << 20)
        gmap = GenerationMap.create(tmp_path / "m", volume_size=1 << 20, volume_id=b"v" * 16)
    try:
        B.full_backup(store, gmap, io.BytesIO())
        store.write(3 * G, os.urandom(G))
        gmap.mark(3 * G, G)
        before = (gmap.current_generation, gmap.counts(), gmap.base_id)
        for call in (lambda: B.differential_backup(store, gmap, 1, _Broken()),
                     lambda: B.full_backup(store, gmap, _Broken())):
            with pytest.raises(OSError):
                call()
            assert (gmap.current_generation, gmap.counts(), gmap.base_id) == before
            assert gmap.pending_cut is None
        out = io.BytesIO()
        B.differential_backup(store, gmap, 1, out)
        assert _blocks(out.getvalue()) == {3}
    finally:
        (vol or gmap).close()


def test_the_state_machine_keeps_one_stream_open(tmp_path):
    vol = _tracked(tmp_path)
    try:
        vol.write(0, os.urandom(1 << 20))
        s = vol.sessions
        with pytest.raises(BackupRefused, match="full backup first"):
            s.start_backup(full=False, scope=1)
        r = s.start_backup(full=True)
        buf = memoryview(bytearray(4096))
        r.readinto(0, buf)
        w = s.start_restore()                          # a restore abandons the backup
        assert r.abandoned and s.reader is None and vol.map.pending_cut is None
        with pytest.raises(StreamGone):
            r.readinto(4096, buf)
        s.start_backup(full=True)                      # ... and a backup the restore
        assert w.finished and w.result.state == "abandoned"
        assert not vol.state.full_done
        with pytest.raises(ScopeError):
            check_scope(vol, True, 1)
        with pytest.raises(ScopeError):
            check_scope(vol, False, 2)
    finally:
        vol.close()
    # The abandoned streams left nothing behind.
    vol = _tracked(tmp_path)
    try:
        assert vol.map.current_generation == 1 and vol.map.base_id == bytes(16)
        assert vol.state.restore is None and not vol.map.recovered
        assert vol.map.counts()[1] == vol.map.entries    # the writes are still "since the full"
    finally:
        vol.close()


def test_incomplete_volume_refuses_differentials_and_a_full_backup_clears_it(tmp_path):
    vol = _tracked(tmp_path)
    try:
        B.full_backup(vol, vol.map, io.BytesIO())
        from volume.tracked import RestoreMark
        from bitarray import bitarray
        u = bitarray(vol.map.entries, endian="little")
        u.setall(0)
        u[7] = 1
        vol.state.restore = RestoreMark(None, u)
        vol.save_state()
        with pytest.raises(VolumeIncomplete, match="1 blocks were not recovered"):
            B.differential_backup(vol, vol.map, 1, io.BytesIO())
        B.full_backup(vol, vol.map, io.BytesIO())
        assert vol.state.restore is None
        B.differential_backup(vol, vol.map, 1, io.BytesIO())
    finally:
        vol.close()
    assert all(os.path.exists(p) for p in map_paths(tmp_path / "v.img"))
