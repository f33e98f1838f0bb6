"""The backup pseudo device and its vendor commands, in process and through iSCSI;
the difference tracker's identity checks; qemu-io writes appear in the next differential."""
from __future__ import annotations

import os
import subprocess

import pytest

from scsi_target import config as C
from volume.tracked import TrackingError, TrackingStore, map_paths
from scsi_target.scsi.command import Command
from scsi_target.scsi.layouts import backup as L
from scsi_target.scsi.sense import SenseKey, parse_sense
from volume.filestore import FileStore
from volume.memstore import MemoryStore
from volume.stream import Damage, Record, StreamDecoder

from scsi_target.testing.process import ServerProcess
from scsi_target.testing.external import require_tool
from scsi_target.config import DEFAULT_IQN as IQN

SIZE = 4 << 20
BS = 512


class Rig:
    def __init__(self, tmp_path, size: str = "4M") -> None:
        cfg = C.from_flags(listen=["127.0.0.1:0"], disks=[f"{tmp_path}/a.img:{size}"],
                           backup_device=True)
        self.reg = C.build_registry(cfg)
        luns = self.reg.targets[C.DEFAULT_IQN].luns
        self.disk, self.dev = luns.luns[0], luns.luns[1]
        for lu in (self.disk, self.dev):
            lu.execute(Command(bytes(6)))            # clear the power-on unit attention

    def run(self, lu, cdb: bytes, data_out=None):
        return lu.execute(Command(cdb, data_out=data_out))

    def vendor(self, op: int, **kw):
        data_out = kw.pop("data_out", None)
        return self.run(self.dev, L.cdb(op, **kw), data_out)

    def write(self, lba: int, data: bytes) -> None:
        cdb = bytes([0x2A, 0]) + lba.to_bytes(4, "big") + b"\0" + \
            (len(data) // BS).to_bytes(2, "big") + b"\0"
        assert self.run(self.disk, cdb, data).ok

    def read_dev(self, lba: int, n: int) -> bytes:
        cdb = bytes([0x88, 0]) + lba.to_bytes(8, "big") + n.to_bytes(4, "big") + bytes(2)
        r = self.run(self.dev, cdb)
        assert r.ok, r
        return bytes(r.data_in)

    def write_dev(self, lba: int, data: bytes):
        data = data + bytes(-len(data) % BS)
        cdb = bytes([0x8A, 0]) + lba.to_bytes(8, "big") + (len(data) // BS).to_bytes(4, "big") \
            + bytes(2)
        return self.run(self.dev, cdb, data)

    def read_stream(self) -> bytes:
        """A copy of the whole device, as dd makes it (a stream started by a READ
        at LBA 0 is taken once every LBA was read); returns the stream part."""
        out = bytearray()
        lba = 0
        blocks = self.dev.medium.size // BS
        while lba < blocks:
            out += self.read_dev(lba, min(256, blocks - lba))
            lba += 256
        st = L.BackupStatus.unpack(bytes(self.vendor(L.OP_REPORT_BACKUP_STATUS,
                                                     length=80).data_in))
        assert st.state == L.STATE_COMPLETE and st.total
        return bytes(out[:st.total])

    def close(self) -> None:
        self.reg.close()


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()


def _illegal(resp, asc=0x24, field=None, bit=None):
    assert resp.status == 2, resp
    key, a, q = parse_sense(resp.sense)
    assert key == SenseKey.ILLEGAL_REQUEST and a == asc, (key, hex(a), hex(q))
    if field is not None:
        s = resp.sense
        assert s[15] & 0x80 and int.from_bytes(s[16:18], "big") == field, s.hex()
        if bit is not None:
            assert s[15] & 0x08 and s[15] & 7 == bit


def test_rsoc_lists_vendor_commands(rig):
    cdb = bytes([0xA3, 0x0C, 0, 0, 0, 0]) + (65536).to_bytes(4, "big") + bytes(2)
    r = rig.run(rig.dev, cdb)
    assert r.ok
    data = bytes(r.data_in)
    n = int.from_bytes(data[0:4], "big")
    ops = set()
    for off in range(4, 4 + n, 8):
        ops.add(data[off])
        if data[off] >= 0xC0:
            assert int.from_bytes(data[off + 6:off + 8], "big") == L.CDB_LEN
    assert {0xC0, 0xC1, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC9} <= ops
    assert 0x28 in ops and 0x2A in ops          # READ/WRITE of the stream medium
    # The disk LU itself does not list them.
    r = rig.run(rig.disk, cdb)
    data = bytes(r.data_in)
    assert not any(data[o] >= 0xC0 for o in range(4, 4 + int.from_bytes(data[:4], "big"), 8))


def test_bad_cdb_fields(rig):
    _illegal(rig.vendor(L.OP_SELECT_BACKUP, flags=0x80), field=1, bit=7)
    _illegal(rig.vendor(L.OP_SELECT_BACKUP, scope=0), field=2)            # differential needs K>=1
    _illegal(rig.vendor(L.OP_SELECT_BACKUP, scope=2), field=2)            # only generation 1 exists
    _illegal(rig.vendor(L.OP_SELECT_BACKUP, flags=L.FLAG_FULL, scope=1), field=2)
    _illegal(rig.vendor(L.OP_SELECT_BACKUP, length=8), field=6)
    _illegal(rig.vendor(L.OP_REPORT_GENERATIONS, scope=1, length=96), field=2)
    _illegal(rig.vendor(L.OP_REPORT_GENERATIONS, flags=L.FLAG_FULL, length=96), field=1, bit=0)
    cdb = bytearray(L.cdb(L.OP_REPORT_GENERATIONS, length=96))
    cdb[11] = 0x04
    _illegal(rig.run(rig.dev, bytes(cdb)), field=11)
    cdb[11], cdb[10] = 0, 1
    _illegal(rig.run(rig.dev, bytes(cdb)), field=10)
    _illegal(rig.run(rig.dev, bytes([0xC2, 0, 0])), field=0)             # short CDB
    _illegal(rig.vendor(L.OP_SET_RESTORE_OPTIONS, length=6, data_out=bytes(6)), field=6)
    bad_count = (3).to_bytes(2, "big") + bytes(2) + (1).to_bytes(4, "big")
    _illegal(rig.vendor(L.OP_SET_RESTORE_OPTIONS, length=8, data_out=bad_count), asc=0x26,
             field=0)
    # A differential before any full backup: COMMAND SEQUENCE ERROR.
    assert rig.vendor(L.OP_SELECT_BACKUP, scope=1).ok
    _illegal(rig.vendor(L.OP_START_BACKUP, length=80), asc=0x2C)
    # Unknown vendor opcode.
    _illegal(rig.run(rig.dev, bytes([0xCF]) + bytes(11)), asc=0x20)


def test_generations_estimate_and_streams(rig):
    rig.write(0, b"A" * 8192)
    assert rig.vendor(L.OP_SELECT_BACKUP, flags=L.FLAG_FULL).ok
    full = rig.read_stream()
    dec = StreamDecoder()
    items = dec.feed(full)
    assert dec.finish().complete and all(isinstance(i, Record) for i in items)
    rig.write(64, b"B" * 4096)          # block 8 (4 KiB tracking)
    rig.write(2048, b"C" * 512)         # block 256
    g = L.GenerationsReport.unpack(bytes(rig.vendor(L.OP_REPORT_GENERATIONS,
                                                    length=4096).data_in))
    assert g.header.current_generation == 1 and g.header.full_done
    assert g.counts == {0: SIZE // 4096 - 2, 1: 2}
    assert g.volume_id == rig.disk.store.volume_id
    e = L.Estimate.unpack(bytes(rig.vendor(L.OP_ESTIMATE_BACKUP, scope=1, length=32,
                                           flags=L.FLAG_COMPRESS).data_in))
    assert e.blocks == 2 and e.stream_bytes == 160 + 80 + 2 * 40 + 2 * 4096
    assert 0 < e.compressed_bytes < e.stream_bytes
    # A READ at LBA 0 starts the selected differential.
    assert rig.vendor(L.OP_SELECT_BACKUP, scope=1).ok
    diff = rig.read_stream()
    dec = StreamDecoder()
    recs = [i for i in dec.feed(diff) if isinstance(i, Record)]
    assert [(r.first_block, r.generation) for r in recs] == [(8, 1), (256, 1)]
    # Reads past the end of the stream return zeros.
    assert rig.read_dev((len(diff) + BS) // BS + 1, 4) == bytes(4 * BS)


def test_abandoned_differential_changes_nothing_and_the_next_one_misses_no_block(rig):
    # Two-phase (issue 8 item 2): an abandoned stream leaves the map as it was, so
    # the next differential of the same scope covers the abandoned one's blocks.
    assert rig.vendor(L.OP_SELECT_BACKUP, flags=L.FLAG_FULL).ok
    rig.read_stream()
    rig.write(0, b"1" * 4096)                      # generation 1
    assert rig.vendor(L.OP_SELECT_BACKUP, scope=1).ok
    st = L.BackupStatus.unpack(bytes(rig.vendor(L.OP_START_BACKUP, length=80).data_in))
    assert (st.generation_lo, st.generation_hi) == (1, 1)
    rig.read_dev(0, 1)                             # ... and never read to its end
    rig.write(16, b"2" * 4096)                     # still generation 1: nothing was committed
    g = L.GenerationsReport.unpack(bytes(rig.vendor(L.OP_REPORT_GENERATIONS,
                                                    length=4096).data_in))
    assert g.header.current_generation == 1 and g.header.stream_active
    assert g.counts[1] == 2
    st = L.BackupStatus.unpack(bytes(rig.vendor(L.OP_START_BACKUP, length=80).data_in))
    assert (st.generation_lo, st.generation_hi) == (1, 1)
    recs = [i for i in StreamDecoder().feed(rig.read_stream()) if isinstance(i, Record)]
    assert {r.first_block for r in recs} == {0, 2}
    g = L.GenerationsReport.unpack(bytes(rig.vendor(L.OP_REPORT_GENERATIONS,
                                                    length=4096).data_in))
    assert not g.header.pending_valid and g.header.current_generation == 2
    assert not g.header.stream_active


def _gens(rig):
    return L.GenerationsReport.unpack(bytes(rig.vendor(L.OP_REPORT_GENERATIONS,
                                                       length=4096).data_in))


def _bstatus(rig):
    return L.BackupStatus.unpack(bytes(rig.vendor(L.OP_REPORT_BACKUP_STATUS,
                                                  length=80).data_in))


def _read_to_end(rig, st) -> bytes:
    out = bytearray()
    while len(out) < st.total or not st.total:
        out += rig.read_dev(len(out) // BS, 64)
        st = _bstatus(rig)
    return bytes(out[:st.total])


def test_held_stream_commits_only_at_commit_backup(rig):
    """SELECT BACKUP with HOLD: the stream read to its end is *held* (state 3), the map
    unchanged, until COMMIT BACKUP; a held stream abandoned before it commits nothing."""
    assert rig.vendor(L.OP_SELECT_BACKUP, flags=L.FLAG_FULL).ok
    rig.read_stream()
    rig.write(0, b"1" * 4096)                                  # generation 1
    # COMMIT BACKUP with nothing open, and with bad fields.
    assert rig.vendor(L.OP_COMMIT_BACKUP).ok                   # the full one: committed
    _illegal(rig.vendor(L.OP_COMMIT_BACKUP, flags=L.FLAG_FULL), field=1, bit=0)
    _illegal(rig.vendor(L.OP_COMMIT_BACKUP, scope=1), field=2)
    _illegal(rig.vendor(L.OP_COMMIT_BACKUP, length=4), field=6)
    assert rig.vendor(L.OP_SELECT_BACKUP, scope=1, flags=L.FLAG_HOLD).ok
    st = L.BackupStatus.unpack(bytes(rig.vendor(L.OP_START_BACKUP, length=80).data_in))
    assert st.state == L.STATE_ACTIVE
    _illegal(rig.vendor(L.OP_COMMIT_BACKUP), asc=0x2C)         # not read to its end
    _read_to_end(rig, st)
    assert _bstatus(rig).state == L.STATE_HELD
    g = _gens(rig)
    assert g.header.current_generation == 1 and g.header.stream_active
    assert rig.vendor(L.OP_COMMIT_BACKUP).ok
    assert rig.vendor(L.OP_COMMIT_BACKUP).ok                   # repeated: still GOOD
    assert _bstatus(rig).state == L.STATE_COMPLETE
    assert _gens(rig).header.current_generation == 2
    # Held, read through, then abandoned by a new START BACKUP: nothing committed.
    rig.write(16, b"2" * 4096)                                 # generation 2
    assert rig.vendor(L.OP_SELECT_BACKUP, scope=1, flags=L.FLAG_HOLD).ok
    st = L.BackupStatus.unpack(bytes(rig.vendor(L.OP_START_BACKUP, length=80).data_in))
    _read_to_end(rig, st)
    assert _bstatus(rig).state == L.STATE_HELD
    assert rig.vendor(L.OP_SELECT_BACKUP, scope=1).ok
    st = L.BackupStatus.unpack(bytes(rig.vendor(L.OP_START_BACKUP, length=80).data_in))
    assert (st.generation_lo, st.generation_hi) == (2, 2)      # the same generation again
    recs = [i for i in StreamDecoder().feed(_read_to_end(rig, st)) if isinstance(i, Record)]
    assert {r.first_block for r in recs} == {2}
    assert _gens(rig).header.current_generation == 3           # not held: committed at its end


def _start(rig, **kw):
    r = rig.vendor(L.OP_START_BACKUP, length=80, **kw)
    assert r.ok, r
    return L.BackupStatus.unpack(bytes(r.data_in))


def test_start_backup_with_a_selection_of_its_own(rig):
    """START BACKUP with FLAGS/SCOPE selects and starts in one command (REPORT
    GENERATIONS says START_SELECTS), exactly as SELECT BACKUP then START BACKUP;
    its bad fields are refused as SELECT BACKUP's are; the selection stays."""
    assert _gens(rig).header.start_selects
    st = _start(rig, flags=L.FLAG_FULL | L.FLAG_HOLD)
    assert st.state == L.STATE_ACTIVE and st.full
    _read_to_end(rig, st)
    assert _bstatus(rig).state == L.STATE_HELD                 # HOLD came with the START
    assert rig.vendor(L.OP_COMMIT_BACKUP).ok
    rig.write(0, b"1" * 4096)                                  # generation 1: block 0
    st = _start(rig, flags=L.FLAG_HOLD, scope=1)
    assert not st.full and (st.generation_lo, st.generation_hi) == (1, 1)
    recs = [i for i in StreamDecoder().feed(_read_to_end(rig, st)) if isinstance(i, Record)]
    assert [r.first_block for r in recs] == [0]
    assert rig.vendor(L.OP_COMMIT_BACKUP).ok and _gens(rig).header.current_generation == 2
    # The selection stays in force: a plain START BACKUP starts the same kind (held).
    rig.write(8, b"2" * 4096)                                  # generation 2: block 1
    st = _start(rig)
    assert not st.full and (st.generation_lo, st.generation_hi) == (2, 2)
    _read_to_end(rig, st)
    assert _bstatus(rig).state == L.STATE_HELD
    # Refused fields: as SELECT BACKUP's.  A full takes no scope (checked first:
    # the open stream stays); a differential's scope is checked as the start
    # begins, which abandons the open stream as any START BACKUP does.
    _illegal(rig.vendor(L.OP_START_BACKUP, flags=L.FLAG_FULL, scope=1, length=80), field=2)
    assert _bstatus(rig).state == L.STATE_HELD
    _illegal(rig.vendor(L.OP_START_BACKUP, flags=0x08, length=80), field=1, bit=3)
    _illegal(rig.vendor(L.OP_START_BACKUP, flags=L.FLAG_HOLD, scope=9, length=80), field=2)
    assert _bstatus(rig).state == 0                            # abandoned: nothing committed
    assert _gens(rig).header.current_generation == 2
    # REPORT SUPPORTED OPERATION CODES, one command: the flags START BACKUP takes.
    cdb = bytes([0xA3, 0x0C, 0x01, L.OP_START_BACKUP, 0, 0]) + (64).to_bytes(4, "big") + bytes(2)
    usage = bytes(rig.run(rig.dev, cdb).data_in)[4:]
    assert usage[1] == L.FLAG_FULL | L.FLAG_COMPRESS | L.FLAG_HOLD and usage[2:6] == b"\xff" * 4


def test_restore_by_writes_reports_bad_records(tmp_path):
    a = Rig(tmp_path / "a" if (tmp_path / "a").mkdir() is None else tmp_path)
    b = Rig(tmp_path / "b" if (tmp_path / "b").mkdir() is None else tmp_path)
    try:
        a.write(0, os.urandom(SIZE // 4))
        assert a.vendor(L.OP_SELECT_BACKUP, flags=L.FLAG_FULL).ok
        full = a.read_stream()
        a.write(8, os.urandom(4096 * 3))
        assert a.vendor(L.OP_SELECT_BACKUP, scope=1).ok
        diff = bytearray(a.read_stream())
        diff[160 + 40 + 100] ^= 0xFF                 # data of the first (only) record
        assert b.write_dev(0, full).ok
        rep = L.RestoreReportData.unpack(bytes(b.vendor(L.OP_REPORT_RESTORE_RESULTS,
                                                        length=65536).data_in))
        assert rep.state == "done" and rep.header.full and rep.header.bad_records == 0
        assert b.disk.store.volume_id == a.disk.store.volume_id     # became that volume
        assert b.vendor(L.OP_SET_RESTORE_OPTIONS, length=8,
                        data_out=L.pack_restore_options([7])).ok
        assert b.write_dev(0, bytes(diff)).ok
        rep = L.RestoreReportData.unpack(bytes(b.vendor(L.OP_REPORT_RESTORE_RESULTS,
                                                        length=65536).data_in))
        assert rep.state == "done" and rep.header.bad_records == 1
        d = rep.bad[0]
        assert d.block_valid and d.first_block == 1 and d.nblocks == 3 and d.generation == 1
        assert rep.header.unrecovered_blocks == 3 and "checksum" in rep.message
        # Nothing of the bad record was written: blocks 1..3 still hold the full's data.
        assert b.disk.store.read(4096, 3 * 4096) == bytes(full[160 + 40 + 4096:][:3 * 4096])
        # A stream of another volume's lineage is refused with sense, nothing written.
        r = b.write_dev(0, bytes(160))
        assert r.status == 2
    finally:
        a.close()
        b.close()


def _open_fails(path, match):
    fs = FileStore(path)
    try:
        with pytest.raises(TrackingError, match=match):
            TrackingStore.open(fs, path)       # on failure the caller still owns the store
    finally:
        fs.close()


def test_tracker_identity_and_size_checks(tmp_path):
    path = tmp_path / "v.img"
    st = TrackingStore.open(FileStore(path, size=1 << 20, create=True), path)
    st.write(0, b"x" * 512)
    assert st.map.counts()[1] == 1
    st.close()
    mpath, jpath, spath = map_paths(path)
    # Another volume's map copied in: refused.
    other = tmp_path / "w.img"
    TrackingStore.open(FileStore(other, size=1 << 20, create=True), other).close()
    for suffix in (".genmap", ".genmap.dirty"):
        os.replace(str(other) + suffix, str(path) + suffix)
    _open_fails(path, "belongs to volume")
    # A shrink: refused with a clear message (growth is accepted: test_genmap_grow.py).
    os.truncate(path, 512 << 10)
    _open_fails(path, "shrinking a tracked volume is refused")
    # Map without sidecar: refused.
    os.unlink(spath)
    _open_fails(path, "sidecar")


def test_memory_tracking_marks_every_kind_of_change():
    st = TrackingStore.in_memory(MemoryStore(1 << 20))
    st.write(4096, b"a" * 100)
    st.write_zeroes(8192 * 4, 4096 * 2)
    st.discard(4096 * 100, 4096)
    c = st.map.counts()
    assert c[1] == 4
    d = st._tmpdir
    st.close()
    assert not os.path.exists(d)


def test_server_config_backup_kind(tmp_path):
    doc = {"target": [{"iqn": IQN, "lun": [
        {"lun": 0, "path": str(tmp_path / "d.img"), "size": "1M", "create": True},
        {"lun": 5, "kind": "backup", "source": 0}]}]}
    cfg = C.parse_config(doc)
    assert cfg.targets[0].luns[1].kind == "backup"
    for bad, msg in (({"lun": 5, "kind": "backup", "source": 9}, "not defined"),
                     ({"lun": 5, "kind": "backup", "source": 0, "path": "x"}, "not allowed"),
                     ({"lun": 5, "kind": "backup"}, "missing")):
        doc["target"][0]["lun"][1] = bad
        with pytest.raises(C.ConfigError, match=msg):
            C.parse_config(doc)
    doc["target"][0]["lun"][0]["track"] = False
    doc["target"][0]["lun"][1] = {"lun": 5, "kind": "backup", "source": 0}
    with pytest.raises(C.ConfigError, match="tracking"):
        C.parse_config(doc)


@pytest.mark.interop
def test_qemu_io_writes_appear_in_next_differential(diffbackup, tmp_path):
    qemu_io = require_tool("qemu-io")
    qemu_img = require_tool("qemu-img")
    with ServerProcess.from_flags(tmp_path, "--disk", f"{tmp_path}/vol.img:8M",
                                  "--backup-device") as srv:
        assert diffbackup("full", srv.url(0), "-o", str(tmp_path / "full")).returncode == 0
        ops = [("0x10000", "0x1000"), ("0x123000", "0x3000"), ("0x7ff000", "0x1000")]
        for off, n in ops:
            p = subprocess.run([qemu_io, "-f", "raw", "-c", f"write -P 0x5a {off} {n}",
                                srv.url(0)], capture_output=True, text=True, timeout=60)
            assert p.returncode == 0, p.stderr
        r = diffbackup("diff", srv.url(0), "--scope", "1", "-o", str(tmp_path / "d1"))
        assert r.returncode == 0, r.stderr
        recs = [i for i in StreamDecoder().feed((tmp_path / "d1").read_bytes())
                if isinstance(i, Record)]
        blocks = {b for r in recs for b in range(r.first_block, r.first_block + r.nblocks)}
        want = {b for off, n in ops
                for b in range(int(off, 16) // 4096, (int(off, 16) + int(n, 16)) // 4096)}
        assert blocks == want
        assert all(bytes(r.data) == b"\x5a" * r.length for r in recs)
        # qemu-img convert of the backup device (LUN 1) is a valid stream file:
        # the zero padding after the trailer is ignored by the decoder.
        out = tmp_path / "conv.bin"
        p = subprocess.run([qemu_img, "convert", "-f", "raw", "-O", "raw", srv.url(1), str(out)],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        dec = StreamDecoder()
        items = dec.feed(out.read_bytes())
        assert dec.finish().complete and not any(isinstance(i, Damage) for i in items)
        v = diffbackup("verify", str(tmp_path / "full"), str(tmp_path / "d1"), str(out))
        assert v.returncode == 0, v.stdout
