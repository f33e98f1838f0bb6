"""A tracked disk LU over an asynchronous store follows its store's size (the way a
tracked RBD LUN follows rbd resize), without Ceph: the map grows on the lane before
the new capacity is served, a growth waits while a backup stream is open, and a
shrink is refused with I/O past the store's new end answered LBA OUT OF RANGE."""
from __future__ import annotations

import time

from scsi_target.scsi.command import Command, Direction, Nexus
from scsi_target.scsi.disk import DiskLU
from scsi_target.scsi.lun import LunMap
from scsi_target.scsi.sense import SenseKey, parse_sense
from volume.tracked import TrackingStore

from test_async_store_lun import SlowAsyncStore, _rw10

BS = 512
MiB = 1 << 20


class ResizableStore(SlowAsyncStore):
    """Room for 4 MiB, serving ``size``; ``resize`` is what rbd resize looks like to
    the watcher."""
    watches_size = True

    def __init__(self, size: int) -> None:
        super().__init__(4 * MiB)
        self.size = size
        self.changed = None

    def watch_size(self, changed, interval: float = 2.0) -> None:
        self.changed = changed

    def resize(self, size: int) -> None:
        self.changed(size)


def _capacity(luns: LunMap, nexus: Nexus) -> int:
    r = luns.execute(Command(bytes([0x25]) + bytes(9), expected_length=8,
                             direction=Direction.IN, nexus=nexus))
    assert r.ok, r
    return int.from_bytes(bytes(r.data_in)[:4], "big") + 1


def _until(cond, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_tracked_async_lu_grows_after_its_map_and_refuses_a_shrink(tmp_path):
    inner = ResizableStore(2 * MiB)
    vol = TrackingStore.open(inner, tmp_path / "vol")
    lu = DiskLU(vol, BS)
    luns = LunMap("iqn.2026-12.test:grow")
    luns.add(0, lu)
    nexus = Nexus("in-process")
    try:
        luns.execute(Command(bytes(6), nexus=nexus))          # power-on unit attention
        assert _capacity(luns, nexus) == 2 * MiB // BS
        # A backup stream is open: the growth waits for it.
        vol.sessions.start_backup(full=True)
        inner.resize(3 * MiB)
        time.sleep(0.5)
        assert vol.map.volume_size == 2 * MiB and _capacity(luns, nexus) == 2 * MiB // BS
        vol.sessions.abandon_backup()
        _until(lambda: vol.map.volume_size == 3 * MiB)
        r = luns.execute(Command(bytes(6), nexus=nexus))
        assert parse_sense(r.sense) == (SenseKey.UNIT_ATTENTION, 0x2A, 0x09)
        assert _capacity(luns, nexus) == 3 * MiB // BS
        gen = vol.map.current_generation
        assert vol.map.counts()[gen] == MiB // 4096                 # the new blocks
        w = luns.execute(Command(_rw10(0x2A, (3 * MiB - BS) // BS, 1), data_out=b"\x07" * BS,
                                 expected_length=BS, direction=Direction.OUT, nexus=nexus))
        assert w.ok
        # A shrink: the old size stays served, the lost range is marked, and I/O past
        # the store's new end is out of range.
        inner.resize(2 * MiB + 256 * 1024)
        _until(lambda: vol._limit is not None)
        assert _capacity(luns, nexus) == 3 * MiB // BS
        r = luns.execute(Command(_rw10(0x28, (2 * MiB + 512 * 1024) // BS, 1),
                                 expected_length=BS, direction=Direction.IN, nexus=nexus))
        assert parse_sense(r.sense) == (SenseKey.ILLEGAL_REQUEST, 0x21, 0x00)
        r = luns.execute(Command(_rw10(0x28, 10, 1), expected_length=BS,
                                 direction=Direction.IN, nexus=nexus))
        assert r.ok
        inner.resize(3 * MiB)                                        # grown back
        _until(lambda: vol._limit is None)
        r = luns.execute(Command(_rw10(0x28, (2 * MiB + 512 * 1024) // BS, 1),
                                 expected_length=BS, direction=Direction.IN, nexus=nexus))
        assert r.ok
    finally:
        luns.close()
