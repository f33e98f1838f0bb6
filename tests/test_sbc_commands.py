"""SBC command set through the in-process API (LunMap.execute)."""
from __future__ import annotations

import struct

import pytest

from scsi_target.scsi.capabilities import BlockLimits
from scsi_target.scsi.command import Command, Direction, Status
from scsi_target.scsi.disk import DiskLU
from scsi_target.scsi.sense import SenseKey, parse_sense
from scsi_target.testing import InProcessTarget
from volume.memstore import MemoryStore
from volume.store import StoreError

BS = 512
NBLOCKS = 2048


class Harness:
    def __init__(self, read_only: bool = False, store=None, block_size: int = BS,
                 **lu_records) -> None:
        self.store = store if store is not None else MemoryStore(NBLOCKS * block_size, 512)
        self.lu = DiskLU(self.store, block_size, read_only=read_only, **lu_records)
        self.target = InProcessTarget("iqn.2026-11.test:t", power_on_ua=True,
                                      fault_control=False)
        self.target.attach(0, self.lu)
        self.map = self.target.luns
        self.bs = block_size
        self.run(bytes(6))   # consume the power-on unit attention

    def run(self, cdb: bytes, data: bytes | None = None, edtl: int | None = None):
        direction = Direction.OUT if data is not None else Direction.IN
        if edtl is None and data is not None:
            edtl = len(data)
        return self.map.execute(Command(cdb=cdb, data_out=data, expected_length=edtl,
                                        direction=direction))

    def ok(self, cdb: bytes, data: bytes | None = None, edtl: int | None = None):
        r = self.run(cdb, data, edtl)
        assert r.status == Status.GOOD, parse_sense(r.sense) if r.sense else r
        return r

    def fails(self, cdb: bytes, key: SenseKey, asc: int, ascq: int = 0, data=None, edtl=None):
        r = self.run(cdb, data, edtl)
        assert r.status == Status.CHECK_CONDITION
        assert parse_sense(r.sense) == (key, asc, ascq)
        return r

    def write(self, lba: int, data: bytes) -> None:
        self.ok(write16(lba, len(data) // self.bs), data)

    def read(self, lba: int, n: int) -> bytes:
        return bytes(self.ok(read16(lba, n)).data_in)


def read10(lba, n, flags=0):
    return struct.pack(">BBIBHB", 0x28, flags, lba, 0, n, 0)


def write10(lba, n, flags=0):
    return struct.pack(">BBIBHB", 0x2A, flags, lba, 0, n, 0)


def read16(lba, n, flags=0):
    return struct.pack(">BBQIBB", 0x88, flags, lba, n, 0, 0)


def write16(lba, n, flags=0):
    return struct.pack(">BBQIBB", 0x8A, flags, lba, n, 0, 0)


def cdb16(op, flags, lba, n):
    return struct.pack(">BBQIBB", op, flags, lba, n, 0, 0)


@pytest.fixture
def h():
    return Harness()


ILLEGAL, LBA_OOB, INVALID_CDB = SenseKey.ILLEGAL_REQUEST, 0x21, 0x24


# -- READ / WRITE --------------------------------------------------------
def test_write_read_roundtrip_all_sizes(h):
    data = bytes(range(256)) * 4
    h.ok(write10(7, 2), data)
    assert bytes(h.ok(read10(7, 2)).data_in) == data
    assert bytes(h.ok(struct.pack(">BBIIBB", 0xA8, 0, 7, 2, 0, 0)).data_in) == data
    assert h.read(7, 2) == data
    h.ok(bytes([0x0A, 0, 0, 9, 1, 0]), b"\x11" * BS)            # WRITE(6)
    assert bytes(h.ok(bytes([0x08, 0, 0, 9, 1, 0])).data_in) == b"\x11" * BS


def test_read6_zero_length_means_256(h):
    r = h.ok(bytes([0x08, 0, 0, 0, 0, 0]))
    assert len(r.data_in) == 256 * BS


@pytest.mark.parametrize("lba,n", [(NBLOCKS, 1), (NBLOCKS - 1, 2), (2**63, 1), (2**64 - 1, 1),
                                   (NBLOCKS + 1, 0)])
def test_beyond_end_is_lba_out_of_range(h, lba, n):
    h.fails(read16(lba, n), ILLEGAL, LBA_OOB)
    h.fails(write16(lba, n), ILLEGAL, LBA_OOB, data=bytes(n * BS))


def test_zero_blocks_is_good(h):
    assert h.ok(read10(0, 0)).data_in == b""
    h.ok(write10(0, 0), b"")


@pytest.mark.parametrize("protect", range(1, 8))
def test_rdprotect_wrprotect_refused(h, protect):
    h.fails(read10(0, 1, protect << 5), ILLEGAL, INVALID_CDB)
    h.fails(write10(0, 1, protect << 5), ILLEGAL, INVALID_CDB, data=bytes(BS))


def test_dpo_fua_accepted_and_fua_flushes(h):
    flushes = []
    h.store.flush = lambda: flushes.append(1)
    h.ok(write10(0, 1, 0x18), b"f" * BS)
    assert flushes == [1]
    h.ok(read10(0, 1, 0x18))
    h.ok(write10(0, 1, 0x10), b"f" * BS)
    assert flushes == [1]


def test_transfer_longer_than_maximum_refused(h):
    h = Harness(limits=BlockLimits(max_transfer_blocks=8))
    h.fails(read10(0, 9), ILLEGAL, INVALID_CDB)


def test_write_protected(h, monkeypatch):
    ro = Harness(read_only=True)
    ro.fails(write10(0, 1), SenseKey.DATA_PROTECT, 0x27, data=bytes(BS))
    ro.ok(read10(0, 1))
    # Control mode page SWP, however the SPC side stores it.
    monkeypatch.setattr(type(h.lu.mode), "software_write_protect", property(lambda self: True))
    h.fails(write16(0, 1), SenseKey.DATA_PROTECT, 0x27, data=bytes(BS))
    h.fails(cdb16(0x93, 0x08, 0, 1), SenseKey.DATA_PROTECT, 0x27, edtl=0)
    h.fails(struct.pack(">BBIBHB", 0x42, 0, 0, 0, 24, 0), SenseKey.DATA_PROTECT, 0x27,
            data=bytes(24))


def test_store_errors_become_medium_errors(h):
    def broken(*a, **k):
        raise StoreError("disk on fire")
    h.store.readinto = broken
    h.store.write = broken
    h.fails(read10(0, 1), SenseKey.MEDIUM_ERROR, 0x11)
    h.fails(write10(0, 1), SenseKey.MEDIUM_ERROR, 0x0C, data=bytes(BS))


# -- residuals (libiscsi iSCSIResiduals expectations) -------------------------
def test_read_residuals(h):
    r = h.ok(read10(0, 1), edtl=0)
    assert r.overflow == BS and len(r.data_in) == 0
    r = h.ok(read10(0, 1), edtl=10000)
    assert r.underflow == 10000 - BS and len(r.data_in) == BS
    r = h.ok(read10(0, 2), edtl=BS)
    assert r.overflow == BS and len(r.data_in) == BS


def test_write_edtl_shorter_writes_only_what_arrived(h):
    h.write(0, b"a" * 2 * BS)
    r = h.ok(write10(0, 2), b"b" * BS, edtl=BS)
    assert r.overflow == BS
    assert h.read(0, 2) == b"b" * BS + b"a" * BS
    r = h.ok(write10(0, 1), b"", edtl=0)
    assert r.overflow == BS
    r = h.ok(write10(0, 1), b"c" * 200, edtl=200)
    assert r.overflow == BS - 200
    assert h.read(0, 1) == b"b" * BS


def test_write_edtl_longer_writes_cdb_amount(h):
    h.write(0, b"a" * 2 * BS)
    r = h.ok(write10(0, 1), b"b" * 2 * BS, edtl=2 * BS)
    assert r.underflow == BS
    assert h.read(0, 2) == b"b" * BS + b"a" * BS


# -- VERIFY / WRITE AND VERIFY ------------------------------------------------
def verify10(lba, n, bytchk=1, dpo=0):
    return struct.pack(">BBIBHB", 0x2F, (dpo << 4) | (bytchk << 1), lba, 0, n, 0)


def test_verify_match_and_miscompare_offset(h):
    data = bytes(range(256)) * 8
    h.write(100, data)
    h.ok(verify10(100, 4), data)
    bad = bytearray(data)
    bad[1234] ^= 0x55
    r = h.fails(verify10(100, 4), SenseKey.MISCOMPARE, 0x1D, data=bytes(bad))
    assert r.sense[0] & 0x80 and struct.unpack(">I", r.sense[3:7])[0] == 1234


def test_verify_bytchk0_ignores_data_and_bytchk3_one_block(h):
    h.write(0, b"\x42" * 4 * BS)
    h.ok(verify10(0, 4, bytchk=0, dpo=1), b"garbage" * 10)
    h.ok(verify10(0, 4, bytchk=3), b"\x42" * BS)
    h.fails(verify10(0, 4, bytchk=3), SenseKey.MISCOMPARE, 0x1D, data=b"\x43" * BS)
    h.fails(verify10(0, 4, bytchk=2), ILLEGAL, INVALID_CDB, data=b"\x42" * BS)
    h.fails(verify10(NBLOCKS, 1), ILLEGAL, LBA_OOB, data=bytes(BS))


def test_write_and_verify(h):
    cdb = struct.pack(">BBIBHB", 0x2E, 0x02, 5, 0, 2, 0)
    h.ok(cdb, b"w" * 2 * BS)
    assert h.read(5, 2) == b"w" * 2 * BS
    r = h.ok(cdb, b"v" * BS, edtl=BS)
    assert r.overflow == BS


# -- WRITE SAME / UNMAP / GET LBA STATUS -------------------------------------------
def ws10(lba, n, flags=0):
    return struct.pack(">BBIBHB", 0x41, flags, lba, 0, n, 0)


def get_lba_status(lba, alloc=24):
    return struct.pack(">BBQIBB", 0x9E, 0x12, lba, alloc, 0, 0)


def test_write_same_pattern(h):
    h.ok(ws10(10, 300), b"\x5a" * BS)
    assert h.read(10, 300) == b"\x5a" * BS * 300
    h.ok(cdb16(0x93, 0, 500, 3), bytes(BS))
    assert h.read(500, 3) == bytes(3 * BS)


def test_write_same_checks(h):
    h.fails(ws10(0, 0), ILLEGAL, INVALID_CDB, data=bytes(BS))        # WSNZ
    h.fails(ws10(0, 1, 0x10), ILLEGAL, INVALID_CDB, data=bytes(BS))  # ANCHOR without UNMAP
    h.fails(ws10(0, 1, 0x18), ILLEGAL, INVALID_CDB, data=bytes(BS))  # no ANC_SUP
    h.fails(ws10(NBLOCKS, 1), ILLEGAL, LBA_OOB, data=bytes(BS))
    h.fails(ws10(0, 1, 0x08), ILLEGAL, INVALID_CDB, data=bytes(2 * BS))
    r = h.run(ws10(0, 1, 0x08), bytes(BS // 2))
    assert r.status == Status.CHECK_CONDITION
    h = Harness(limits=BlockLimits(max_write_same_blocks=16))
    h.fails(ws10(0, 17), ILLEGAL, INVALID_CDB, data=bytes(BS))


def test_write_same_unmap_deallocates(h):
    h.write(0, b"\xff" * 128 * BS)
    h.ok(ws10(0, 64, 0x08), b"\xff" * BS)   # UNMAP wins over the data (LBPRZ)
    assert h.read(0, 64) == bytes(64 * BS)
    desc = h.ok(get_lba_status(0, 40)).data_in
    assert struct.unpack(">QIB", desc[8:21]) == (0, 64, 1)
    assert struct.unpack(">QIB", desc[24:37]) == (64, 64, 0)


def test_write_same16_ndob_writes_zeroes(h):
    h.write(3, b"\x01" * BS)
    h.ok(cdb16(0x93, 0x01, 3, 1), None, edtl=0)
    assert h.read(3, 1) == bytes(BS)


def unmap_params(*extents):
    body = b"".join(struct.pack(">QI4x", lba, n) for lba, n in extents)
    return struct.pack(">HH4x", 6 + len(body), len(body)) + body


def unmap_cdb(plen):
    return struct.pack(">BBIBHB", 0x42, 0, 0, 0, plen, 0)


def test_unmap_and_lba_status(h):
    h.write(0, b"a" * 300 * BS)
    params = unmap_params((10, 5), (100, 20))
    h.ok(unmap_cdb(len(params)), params)
    assert h.read(10, 5) == bytes(5 * BS)
    data = h.ok(get_lba_status(0, 8 + 16 * 10)).data_in
    (length,) = struct.unpack(">I", data[:4])
    runs = [struct.unpack(">QIB", data[8 + 16 * i:8 + 16 * i + 13]) for i in range((length - 4) // 16)]
    assert runs == [(0, 10, 0), (10, 5, 1), (15, 85, 0), (100, 20, 1), (120, 180, 0),
                    (300, NBLOCKS - 300, 1)]   # never written: deallocated
    # Asking from the middle of a run starts the descriptor at that LBA.
    assert struct.unpack(">QIB", h.ok(get_lba_status(12)).data_in[8:21]) == (12, 3, 1)


def test_unmap_parameter_checks(h):
    h.ok(unmap_cdb(0), None, edtl=0)
    h.ok(unmap_cdb(8), unmap_params())
    h.ok(unmap_cdb(24), unmap_params((NBLOCKS, 0)))
    h.fails(unmap_cdb(6), ILLEGAL, 0x1A, data=bytes(6))
    params = unmap_params((NBLOCKS - 1, 2))
    h.fails(unmap_cdb(len(params)), ILLEGAL, LBA_OOB, data=params)
    h = Harness(limits=BlockLimits(max_unmap_descriptors=1))
    params = unmap_params((0, 1), (5, 1))
    h.fails(unmap_cdb(len(params)), ILLEGAL, 0x26, data=params)


def test_unmap_on_thick_store_is_unsupported():
    class Thick(MemoryStore):
        thin = False
    t = Harness(store=Thick(NBLOCKS * BS))
    t.fails(unmap_cdb(8), ILLEGAL, 0x20, data=unmap_params())
    t.fails(ws10(0, 1, 0x08), ILLEGAL, INVALID_CDB, data=bytes(BS))
    cap = t.ok(cdb16(0x9E, 0x10, 0, 32)).data_in
    assert cap[14] & 0xC0 == 0


def test_get_lba_status_beyond_end(h):
    h.fails(get_lba_status(NBLOCKS), ILLEGAL, LBA_OOB)
    h.fails(get_lba_status(2**64 - 1), ILLEGAL, LBA_OOB)


# -- COMPARE AND WRITE / ORWRITE / WRITE ATOMIC ----------------------------------
def caw(lba, n, flags=0):
    return struct.pack(">BBQ3xBBB", 0x89, flags, lba, n, 0, 0)


def test_compare_and_write(h):
    h.write(50, b"A" * 2 * BS)
    h.ok(caw(50, 2, 0x08), b"A" * 2 * BS + b"B" * 2 * BS)
    assert h.read(50, 2) == b"B" * 2 * BS
    bad = bytearray(b"B" * 2 * BS)
    bad[-27] = ord("C")
    r = h.fails(caw(50, 2), SenseKey.MISCOMPARE, 0x1D, data=bytes(bad) + b"X" * 2 * BS)
    assert struct.unpack(">I", r.sense[3:7])[0] == 2 * BS - 27
    assert h.read(50, 2) == b"B" * 2 * BS


def test_compare_and_write_lengths(h):
    h.ok(caw(0, 0, 0x18), bytes(BS))                       # 0 blocks: nothing to do
    h.fails(caw(0, 1), ILLEGAL, INVALID_CDB, data=bytes(4 * BS))
    r = h.run(caw(0, 3), bytes(4 * BS))
    assert r.status == Status.CHECK_CONDITION and r.overflow == 2 * BS
    # More data than MAXIMUM COMPARE AND WRITE LENGTH allows (libiscsi sends
    # 256 blocks with the 8-bit length wrapped to 0).
    h.fails(caw(0, 0), ILLEGAL, INVALID_CDB, data=bytes(2 * 256 * BS))
    h.fails(caw(NBLOCKS, 1), ILLEGAL, LBA_OOB, data=bytes(2 * BS))


def test_orwrite(h):
    h.write(0, bytes(2 * BS))
    h.ok(cdb16(0x8B, 0, 0, 2), b"\xa5" * 2 * BS)
    h.ok(cdb16(0x8B, 0, 0, 2), b"\x5a" * 2 * BS)
    assert h.read(0, 2) == b"\xff" * 2 * BS


def test_write_atomic(h):
    cdb = struct.pack(">BBQHHBB", 0x9C, 0x08, 7, 0, 3, 0, 0)
    h.ok(cdb, b"t" * 3 * BS)
    assert h.read(7, 3) == b"t" * 3 * BS
    h.ok(struct.pack(">BBQHHBB", 0x9C, 0, 0, 0, 0, 0, 0), None, edtl=0)
    h.fails(struct.pack(">BBQHHBB", 0x9C, 0, NBLOCKS - 1, 0, 2, 0, 0), ILLEGAL, LBA_OOB,
            data=bytes(2 * BS))
    h = Harness(limits=BlockLimits(atomic_max_blocks=2))
    h.fails(cdb, ILLEGAL, INVALID_CDB, data=bytes(3 * BS))


# -- capacity, cache, prefetch, defects ------------------------------------------
def test_read_capacity(h):
    assert h.ok(struct.pack(">B9x", 0x25)).data_in == struct.pack(">II", NBLOCKS - 1, BS)
    h.fails(struct.pack(">BBI4x", 0x25, 0, 5), ILLEGAL, INVALID_CDB)   # LBA without PMI
    data = h.ok(cdb16(0x9E, 0x10, 0, 32)).data_in
    assert data == struct.pack(">QIBBH", NBLOCKS - 1, BS, 0, 0, 0xC000) + bytes(16)
    for alloc in range(16):
        assert len(h.ok(cdb16(0x9E, 0x10, 0, alloc)).data_in) == alloc


def test_sync_cache_prefetch(h):
    flushes = []
    h.store.flush = lambda: flushes.append(1)
    h.ok(struct.pack(">BBIBHB", 0x35, 0x02, 0, 0, 0, 0))
    h.ok(cdb16(0x91, 0, 0, 10))
    assert flushes == [1, 1]
    h.ok(struct.pack(">BBIBHB", 0x34, 0x02, 0, 3, 1, 0))
    h.ok(cdb16(0x90, 0, NBLOCKS - 256, 256))
    h.fails(struct.pack(">BBIBHB", 0x34, 0, NBLOCKS + 1, 0, 0, 0), ILLEGAL, LBA_OOB)


def test_read_defect_data(h):
    assert h.ok(struct.pack(">BBBxxxxHB", 0x37, 0, 0x18, 32, 0)).data_in == bytes([0, 0x18, 0, 0])
    assert h.ok(struct.pack(">BBxxxxIBB", 0xB7, 0x0D, 32, 0, 0)).data_in == bytes([0, 0x0D]) + bytes(6)


def test_format_unit(h):
    h.ok(bytes(6).replace(b"\x00", b"\x04", 1))
    h.ok(bytes([0x04, 0x10, 0, 0, 0, 0]), bytes(4))
    h.fails(bytes([0x04, 0x10, 0, 0, 0, 0]), ILLEGAL, 0x26, data=bytes([0, 0, 0, 8]))


def test_block_size_4096():
    big = Harness(store=MemoryStore(256 * 4096), block_size=4096)
    big.write(1, b"k" * 4096)
    assert big.read(1, 1) == b"k" * 4096
    assert big.ok(struct.pack(">B9x", 0x25)).data_in == struct.pack(">II", 255, 4096)


def test_conflict_and_direction_metadata():
    from scsi_target.scsi.dispatch import Conflict
    from scsi_target.scsi.sbc import SBC
    entries = {(e.opcode, e.service_action): e for e in SBC}
    assert entries[(0x28, None)].conflict is Conflict.READ
    assert entries[(0x2A, None)].conflict is Conflict.WRITE
    assert entries[(0x2A, None)].direction is Direction.OUT
    assert entries[(0x88, None)].direction is Direction.IN
    for e in SBC:
        usage = e.cdb_usage()
        assert len(usage) == e.cdb_length and usage[0] == e.opcode


def test_file_backed_disk(tmp_path):
    from volume.filestore import FileStore
    f = Harness(store=FileStore(tmp_path / "d.img", size=NBLOCKS * BS, create=True))
    f.write(3, b"file" * 128)
    assert f.read(3, 1) == b"file" * 128
    params = unmap_params((3, 1))
    f.ok(unmap_cdb(len(params)), params)
    assert f.read(3, 1) == bytes(BS)
    f.lu.close()


def test_write_same_zero_blocks_to_end_when_wsnz_clear(h):
    h = Harness(limits=BlockLimits(write_same_non_zero=False, max_write_same_blocks=16))
    h.ok(ws10(NBLOCKS - 100, 0), b"\x77" * BS)
    assert h.read(NBLOCKS - 100, 100) == b"\x77" * 100 * BS
    h.fails(ws10(NBLOCKS + 1, 0), ILLEGAL, LBA_OOB, data=bytes(BS))


def test_read_capacity16_reports_physical_block_exponent(h):
    h = Harness(physical_block_size=8 * BS)
    assert h.ok(cdb16(0x9E, 0x10, 0, 32)).data_in[13] == 3


def test_verify_without_bytchk_reads_the_medium(h):
    calls = []
    real = h.store.readinto

    def spy(offset, buf):
        calls.append((offset, len(buf)))
        return real(offset, buf)
    h.store.readinto = spy
    h.ok(verify10(8, 3, bytchk=0))
    assert calls == [(8 * BS, 3 * BS)]

    def broken(offset, buf):
        raise StoreError("bad sector")
    h.store.readinto = broken
    h.fails(verify10(8, 3, bytchk=0), SenseKey.MEDIUM_ERROR, 0x11)


def test_write_with_less_data_than_the_expected_length_fails_instead_of_claiming_success():
    import struct as _s
    from scsi_target.scsi.command import Command as _C, Direction as _D
    t = InProcessTarget("iqn.2026-11.org.pyscsi.test:short", power_on_ua=True)
    t.add_lu("disk", 0, size="1M", block_size=512)
    m = t.luns
    m.execute(_C(bytes(6)))
    cdb = _s.pack(">BBIBHB", 0x2A, 0, 0, 0, 8, 0)
    for data in (None, b"x" * 1000):
        r = m.execute(_C(cdb, data_out=data, expected_length=4096, direction=_D.OUT))
        assert r.status == 2 and r.sense[2] & 0x0F == 0x05 and (r.sense[12], r.sense[13]) == (0x0E, 0x03)
