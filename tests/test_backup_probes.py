"""Probe-proof pseudo device (issue 8, item 3): reads that are not a backup neither start
nor disturb one, hold no memory beyond the documented bound, and an abandoned stream
costs nothing."""
from __future__ import annotations

import os
import subprocess

import pytest

from scsi_target import config as C
from scsi_target.scsi.command import Command, Nexus
from scsi_target.scsi.layouts import backup as L
from scsi_target.scsi.sense import SenseKey, parse_sense
from volume.session import CHUNK, HEAD_KEEP, WINDOW
from volume.stream import StreamDecoder

from scsi_target.testing.process import ServerProcess
from scsi_target.testing.seed import random_file
from scsi_target.testing.external import require_tool

BS = 512
MiB = 1 << 20
PROBE = Nexus("iqn.probe:udev")
BACKUP = Nexus("iqn.backup:diffbackup")
BOUND = WINDOW + CHUNK + HEAD_KEEP


class Rig:
    def __init__(self, d, size: int, density: float = 0.3) -> None:
        path = d / "v.img"
        random_file(path, size, density=density, seed=size)
        cfg = C.from_flags(listen=["127.0.0.1:0"], disks=[str(path)], backup_device=True)
        self.reg = C.build_registry(cfg)
        luns = self.reg.targets[C.DEFAULT_IQN].luns
        self.disk, self.dev = luns.luns[0], luns.luns[1]
        self.path = path
        self.capacity = self.dev.medium.size
        for n in (PROBE, BACKUP, Command(b"").nexus):
            for lu in (self.disk, self.dev):
                lu.execute(Command(bytes(6), nexus=n))     # clear the power-on unit attention

    @property
    def sessions(self):
        return self.dev.medium.sessions

    def read(self, lba: int, n: int, nexus=PROBE):
        cdb = bytes([0x88, 0]) + lba.to_bytes(8, "big") + n.to_bytes(4, "big") + bytes(2)
        return self.dev.execute(Command(cdb, nexus=nexus))

    def vendor(self, op: int, nexus=BACKUP, **kw):
        return self.dev.execute(Command(L.cdb(op, **kw), nexus=nexus))

    def status(self) -> L.BackupStatus:
        return L.BackupStatus.unpack(bytes(self.vendor(L.OP_REPORT_BACKUP_STATUS,
                                                       length=80).data_in))

    def generations(self) -> L.GenerationsHeader:
        return L.GenerationsReport.unpack(bytes(self.vendor(L.OP_REPORT_GENERATIONS,
                                                            length=4096).data_in)).header

    def stream(self, nexus=BACKUP, start_lba: int = 0, blocks: int = 2048) -> bytes:
        out = bytearray()
        lba = start_lba
        while True:
            r = self.read(lba, min(blocks, self.capacity // BS - lba), nexus=nexus)
            assert r.ok, parse_sense(r.sense)
            out += r.data_in
            lba += blocks
            st = self.status()
            if st.total and len(out) >= st.total:
                return bytes(out[:st.total])

    def full(self) -> bytes:
        assert self.vendor(L.OP_SELECT_BACKUP, flags=L.FLAG_FULL).ok
        assert self.vendor(L.OP_START_BACKUP, length=80).ok
        return self.stream()

    def close(self) -> None:
        self.reg.close()


@pytest.fixture
def d(shm_dir):
    return shm_dir


def _partition_scan(rig: Rig, zeros: bool) -> None:
    last = rig.capacity // BS - 1
    for lba, n in ((0, 8), (last, 1), (last - 33, 34), (1, 1)):   # MBR, GPT alternates
        r = rig.read(lba, n)
        assert r.ok
        if zeros or lba > 1:
            assert bytes(r.data_in) == bytes(n * BS)


@pytest.mark.parametrize("size", [16 * MiB, 256 * MiB], ids=["16M", "256M"])
def test_partition_scan_and_random_reads_start_nothing(d, size):
    rig = Rig(d, size)
    try:
        _partition_scan(rig, zeros=True)                    # no stream open: zeros
        assert rig.sessions.reader is None and rig.disk.store.map.pending_cut is None
        for lba in (12345, rig.capacity // BS // 2):
            r = rig.read(lba, 8)
            assert r.ok and bytes(r.data_in) == bytes(8 * BS)
        assert rig.sessions.reader is None
        rig.full()
        gen = rig.generations()
        _partition_scan(rig, zeros=False)                   # the finished stream's bytes
        for lba in (12345, rig.capacity // BS // 2):
            # Bytes of the finished stream, or (dropped by now) COMMAND SEQUENCE ERROR.
            r = rig.read(lba, 8)
            assert r.ok or parse_sense(r.sense)[1:] == (0x2C, 0)
        assert rig.sessions.reader.complete                 # still the finished full stream
        g = rig.generations()
        assert (g.current_generation, g.full_done, g.base_id) == \
            (gen.current_generation, True, gen.base_id)
        # The differential is not refused.
        assert rig.vendor(L.OP_SELECT_BACKUP, scope=1).ok
        assert rig.vendor(L.OP_START_BACKUP, length=80).ok
    finally:
        rig.close()


def test_probes_during_a_backup_neither_disturb_it_nor_hold_memory(d):
    size = 256 * MiB
    rig = Rig(d, size, density=1.0)
    try:
        assert rig.vendor(L.OP_SELECT_BACKUP, flags=L.FLAG_FULL).ok
        assert rig.vendor(L.OP_START_BACKUP, length=80).ok
        r = rig.sessions.reader
        first = bytes(rig.read(0, 256, nexus=BACKUP).data_in)
        _partition_scan_during = [rig.read(0, 8), rig.read(rig.capacity // BS - 1, 1),
                                  rig.read((200 * MiB) // BS, 2048)]
        assert all(x.ok for x in _partition_scan_during)
        assert bytes(_partition_scan_during[0].data_in) == first[:8 * BS]   # the stream's head
        assert bytes(_partition_scan_during[2].data_in) == bytes(MiB)        # far ahead: zeros
        assert r.kept_bytes <= BOUND and r.produced <= 2 * MiB
        whole = first + rig.stream(start_lba=256)
        assert r.kept_bytes <= BOUND
        dec = StreamDecoder()
        dec.feed(whole)
        assert dec.finish().complete
        assert rig.sessions.reader is r and r.complete
        # A probe at LBA 0 after the stream moved on still gets the head, no new stream.
        assert bytes(rig.read(0, 8).data_in) == first[:8 * BS] and rig.sessions.reader is r
    finally:
        rig.close()


def test_an_implicit_stream_needs_a_64k_read_at_lba_0_and_a_whole_device_copy(d):
    rig = Rig(d, 16 * MiB)
    try:
        rig.full()
        rig.disk.store.write(4096, os.urandom(4096))
        assert rig.vendor(L.OP_SELECT_BACKUP, scope=1).ok
        rig.sessions.abandon_backup()
        assert bytes(rig.read(0, 4).data_in) == bytes(4 * BS)          # a format probe
        assert rig.sessions.reader is None
        r = rig.read(0, 128)                                            # dd bs=64K, qemu-img
        assert r.ok and bytes(r.data_in)[:8] == b"\x89DIFFBK\n"
        reader = rig.sessions.reader
        assert reader is not None and reader.implicit
        # The whole (small) differential was read, but a probe reads no further:
        # nothing is taken until the copy reaches the device's end.
        assert reader.total is not None and reader.total < 128 * BS and not reader.complete
        assert rig.generations().current_generation == 1
        for lba in range(128, rig.capacity // BS, 2048):
            assert rig.read(lba, min(2048, rig.capacity // BS - lba)).ok
        assert reader.complete and rig.generations().current_generation == 2
    finally:
        rig.close()


def test_an_abandoned_stream_costs_nothing(d):
    rig = Rig(d, 64 * MiB, density=1.0)
    try:
        rig.full()
        gmap = rig.disk.store.map
        rig.disk.store.write(0, os.urandom(8192))
        before = (gmap.current_generation, gmap.counts(), gmap.base_id, rig.generations().full_done)
        for full in (True, False):
            assert rig.vendor(L.OP_SELECT_BACKUP, flags=L.FLAG_FULL if full else 0,
                              scope=0 if full else 1).ok
            assert rig.vendor(L.OP_START_BACKUP, length=80).ok
            assert rig.read(0, 1, nexus=BACKUP).ok         # started, not read to its end
            assert gmap.pending_cut is not None
            rig.dev.nexus_lost(BACKUP)                 # the reader logged out mid-stream
            assert rig.sessions.reader is None and gmap.pending_cut is None
            assert (gmap.current_generation, gmap.counts(), gmap.base_id,
                    rig.generations().full_done) == before
        # A reader that went away: another nexus's probe does not keep anything alive.
        rig.read(0, 128, nexus=PROBE)
        assert rig.sessions.reader is not None
        rig.dev.nexus_lost(PROBE)
        assert rig.sessions.reader is None and gmap.pending_cut is None
    finally:
        rig.close()
    # Persistently: nothing of the abandoned streams is on record.
    from volume.tracked import read_sidecar
    doc = read_sidecar(str(rig.path) + ".volume")
    assert doc["backup"]["full_done"] and doc["backup"]["pending_lo"] is None
    assert doc["backup"]["active"] is None


def test_stream_errors_are_sense_not_crashes(d):
    rig = Rig(d, 16 * MiB, density=1.0)
    try:
        assert rig.vendor(L.OP_SELECT_BACKUP, flags=L.FLAG_FULL).ok
        assert rig.vendor(L.OP_START_BACKUP, length=80).ok
        rig.stream()
        # Dropped bytes (behind the window, not the head): COMMAND SEQUENCE ERROR + LBA.
        rig.sessions.reader._chunks.clear()
        r = rig.read(4096, 8, nexus=BACKUP)
        assert r.status == 2
        key, asc, ascq = parse_sense(r.sense)
        assert (key, asc, ascq) == (SenseKey.ILLEGAL_REQUEST, 0x2C, 0)
        # A restore write that does not start at LBA 0 with no restore open.
        cdb = bytes([0x8A, 0]) + (8).to_bytes(8, "big") + (1).to_bytes(4, "big") + bytes(2)
        r = rig.dev.execute(Command(cdb, data_out=bytes(BS), nexus=BACKUP))
        assert r.status == 2 and parse_sense(r.sense)[1] == 0x2C
        # A scope out of range, in one place: INVALID FIELD IN CDB, byte 2.
        r = rig.vendor(L.OP_ESTIMATE_BACKUP, scope=5, length=32)
        assert r.status == 2 and parse_sense(r.sense)[1] == 0x24
    finally:
        rig.close()


@pytest.mark.interop
def test_qemu_img_info_of_the_device_does_not_break_the_next_differential(diffbackup, d):
    qemu_img = require_tool("qemu-img")
    random_file(d / "v.img", 32 * MiB, density=0.2, seed=9)
    with ServerProcess.from_flags(d, "--disk", str(d / "v.img"), "--backup-device") as srv:
        r = diffbackup("full", srv.url(0), "-o", str(d / "full.bin"))
        assert r.returncode == 0, r.stderr
        for _ in range(2):
            p = subprocess.run([qemu_img, "info", srv.url(1)], capture_output=True, text=True,
                               timeout=60)
            assert p.returncode == 0, p.stderr
        st = diffbackup("status", srv.url(0))
        assert "full backup completed: yes" in st.stdout and "stream is open" not in st.stdout
        r = diffbackup("diff", srv.url(0), "--scope", "1", "-o", str(d / "d.bin"))
        assert r.returncode == 0, r.stderr


def test_implicit_start_then_last_lba_then_disconnect_holds_nothing(d):
    """Issue 8's measurement: LBA 0 then the last LBA of a 256 MiB device used to encode
    and keep the whole stream (+254 MiB, kept after disconnect)."""
    rig = Rig(d, 256 * MiB, density=1.0)
    try:
        last = rig.capacity // BS - 1
        assert rig.read(0, 128).ok                          # 64 KiB: a stream starts
        assert rig.read(last, 1).ok and rig.read((200 * MiB) // BS, 2048).ok
        r = rig.sessions.reader
        assert r.produced <= CHUNK and r.kept_bytes <= CHUNK + HEAD_KEEP
        rig.dev.nexus_lost(PROBE)
        assert rig.sessions.reader is None and r.kept_bytes == 0
        assert rig.disk.store.map.pending_cut is None
    finally:
        rig.close()
