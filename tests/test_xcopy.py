"""EXTENDED COPY (LID1), RECEIVE COPY RESULTS and VPD page 8Fh.

The parameter lists are built the way libiscsi's test-tool builds them
(16-byte header, 32-byte E4h CSCD descriptors, 28-byte block-to-block
segments), so these cases mirror ExtendedCopy.* and ReceiveCopyResults.*.
"""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from scsi_target.scsi import sense as S
from scsi_target.scsi import xcopy as X
from scsi_target.scsi.command import Command, Direction, Nexus, Status
from scsi_target.scsi.disk import DiskLU
from scsi_target.scsi.dispatch import DispatchTable
from scsi_target.scsi.lun import Identity, LunMap
from volume.store import BlockStore

BS = 512
NBLOCKS = 8192


class BytesStore(BlockStore):
    """A bytearray-backed store that records the size of every I/O."""

    def __init__(self, size: int, read_only: bool = False) -> None:
        self.size = size
        self.read_only = read_only
        self.buf = bytearray(size)
        self.io_sizes: list[int] = []

    def readinto(self, offset: int, buf: memoryview) -> None:
        self.io_sizes.append(len(buf))
        buf[:] = self.buf[offset:offset + len(buf)]

    def write(self, offset: int, data) -> None:
        data = memoryview(data)
        self.io_sizes.append(len(data))
        self.buf[offset:offset + len(data)] = data


class XcopyDisk(DiskLU):
    """A disk LU that only knows the third-party copy commands."""
    _table = DispatchTable([X.XCOPY])

    @property
    def table(self) -> DispatchTable:
        return self._table


def make_map(nluns: int = 1, read_only: tuple[int, ...] = (), block_size: int = BS,
             nblocks: int = NBLOCKS) -> LunMap:
    m = LunMap("iqn.2026-11.test:xcopy")
    for lun in range(nluns):
        store = BytesStore(nblocks * block_size)
        lu = XcopyDisk(store, block_size, read_only=lun in read_only,
                       identity=Identity.derive(m.name, lun))
        m.add(lun, lu)
    return m


NEXUS = Nexus("iqn.test-initiator,i,0x1")


def _settle(m: LunMap, nexus: Nexus) -> None:
    """Consume the power-on unit attention a nexus sees first: not under test here."""
    for lu in m.luns.values():
        lu.ua.first_contact(nexus)
        while lu.ua.pop(nexus) is not None:
            pass


def run(m: LunMap, cdb: bytes, data: bytes | None = None, lun: int = 0, nexus: Nexus = NEXUS,
        expected: int | None = None):
    _settle(m, nexus)
    if data is not None:
        return m.execute(Command(cdb=cdb, lun=lun, data_out=data, direction=Direction.OUT,
                                 expected_length=len(data), nexus=nexus))
    return m.execute(Command(cdb=cdb, lun=lun, direction=Direction.IN,
                             expected_length=expected, nexus=nexus))


# -- parameter list builders (libiscsi layout) ------------------------------------

def naa_designator(lu) -> bytes:
    return bytes([0x01, 0x03, 0x00, 0x08]) + lu.identity.naa.to_bytes(8, "big")


def cscd(lu=None, *, code: int = 0xE4, lu_id_type: int = 0, nul: int = 0, dev_type: int = 0,
         block_size: int = BS, designator: bytes | None = None) -> bytes:
    d = bytearray(32)
    d[0] = code
    d[1] = (lu_id_type << 6) | (nul << 5) | dev_type
    desig = designator if designator is not None else naa_designator(lu)
    d[4:4 + len(desig)] = desig
    d[29:32] = block_size.to_bytes(3, "big")
    return bytes(d)


def segment(src: int, dst: int, blocks: int, src_lba: int, dst_lba: int, *,
            code: int = 0x02, dc: int = 0) -> bytes:
    if code != 0x02:
        d = bytearray(20)
        d[0], d[1] = code, dc << 1
        d[2:4] = (16).to_bytes(2, "big")
        d[4:8] = struct.pack(">HH", src, dst)
        return bytes(d)
    return struct.pack(">BBHHHHHQQ", code, dc << 1, 0x18, src, dst, 0, blocks, src_lba, dst_lba)


def plist(cscds: list[bytes], segs: list[bytes], list_id: int = 1, usage: int = 0,
          inline: int = 0) -> bytes:
    c, s = b"".join(cscds), b"".join(segs)
    head = struct.pack(">BBH4xII", list_id, usage << 3, len(c), len(s), inline)
    return head + c + s


def xcopy_cdb(plen: int, sa: int = 0) -> bytes:
    return bytes([0x83, sa]) + bytes(8) + plen.to_bytes(4, "big") + bytes(2)


def rcr_cdb(sa: int, list_id: int = 0, alloc: int = 1024) -> bytes:
    return bytes([0x84, sa, list_id]) + bytes(7) + alloc.to_bytes(4, "big") + bytes(2)


def xcopy(m: LunMap, data: bytes, lun: int = 0, nexus: Nexus = NEXUS):
    return run(m, xcopy_cdb(len(data)), data, lun=lun, nexus=nexus)


def check(resp, key: S.SenseKey, asc: S.Asc) -> None:
    assert resp.status == Status.CHECK_CONDITION, resp
    assert S.parse_sense(resp.sense) == (key, asc.asc, asc.ascq)


def fill(lu, lba: int, blocks: int, pattern: bytes) -> bytes:
    data = (pattern * (blocks * lu.block_size // len(pattern) + 1))[:blocks * lu.block_size]
    lu.store.buf[lba * lu.block_size:(lba + blocks) * lu.block_size] = data
    return data


def blocks_of(lu, lba: int, blocks: int) -> bytes:
    return bytes(lu.store.buf[lba * lu.block_size:(lba + blocks) * lu.block_size])


# -- EXTENDED COPY: data movement ----------------------------------------------------

def test_simple_copy_start_to_end_of_same_lu():
    m = make_map()
    lu = m.get(0)
    want = fill(lu, 0, 2048, b"A")
    resp = xcopy(m, plist([cscd(lu)], [segment(0, 0, 2048, 0, NBLOCKS - 2048)], usage=2))
    assert resp.status == Status.GOOD and resp.residual == 0
    assert blocks_of(lu, NBLOCKS - 2048, 2048) == want


def test_copy_between_lus_by_naa_designator():
    m = make_map(2)
    src, dst = m.get(0), m.get(1)
    want = fill(src, 10, 100, b"0123456789abcdef")
    # Sent to LU 1, the copy pulls from LU 0.
    resp = xcopy(m, plist([cscd(src), cscd(dst)], [segment(0, 1, 100, 10, 500)]), lun=1)
    assert resp.ok
    assert blocks_of(dst, 500, 100) == want
    assert blocks_of(src, 500, 100) == bytes(100 * BS)


def test_cscd_id_ffff_names_the_copy_manager_lu():
    m = make_map(2)
    src, dst = m.get(0), m.get(1)
    want = fill(src, 0, 8, b"xy")
    resp = xcopy(m, plist([cscd(dst)], [segment(0xFFFF, 0, 8, 0, 8)]), lun=0)
    assert resp.ok
    assert blocks_of(dst, 8, 8) == want


def test_several_segments_run_in_order():
    m = make_map()
    lu = m.get(0)
    fill(lu, 0, 4, b"a")
    # Second segment copies what the first one wrote.
    resp = xcopy(m, plist([cscd(lu)], [segment(0, 0, 4, 0, 100), segment(0, 0, 4, 100, 200)]))
    assert resp.ok
    assert blocks_of(lu, 200, 4) == b"a" * 4 * BS


@pytest.mark.parametrize("src_lba,dst_lba", [(0, 3), (3, 0), (0, 0)])
def test_overlapping_ranges_copy_like_memmove(monkeypatch, src_lba, dst_lba):
    monkeypatch.setattr(X, "COPY_CHUNK", 2 * BS)    # force several chunks
    m = make_map()
    lu = m.get(0)
    pattern = b"".join(bytes([i]) * BS for i in range(1, 11))
    lu.store.buf[:len(pattern)] = pattern
    orig = bytes(lu.store.buf[:20 * BS])
    expect = bytearray(orig)
    expect[dst_lba * BS:(dst_lba + 10) * BS] = orig[src_lba * BS:(src_lba + 10) * BS]
    assert xcopy(m, plist([cscd(lu)], [segment(0, 0, 10, src_lba, dst_lba)])).ok
    assert bytes(lu.store.buf[:20 * BS]) == bytes(expect)


def test_copy_io_is_chunked_and_bounded(monkeypatch):
    monkeypatch.setattr(X, "COPY_CHUNK", 64 * 1024)
    m = make_map()
    lu = m.get(0)
    lu.store.io_sizes.clear()
    assert xcopy(m, plist([cscd(lu)], [segment(0, 0, 4000, 0, 4096)])).ok
    assert max(lu.store.io_sizes) == 64 * 1024
    # One read and one write per chunk, not per block.
    assert len(lu.store.io_sizes) == 2 * -(-4000 * BS // (64 * 1024))


def test_dc_bit_counts_destination_blocks_with_mixed_block_sizes():
    m = LunMap("iqn.2026-11.test:mixed")
    small = XcopyDisk(BytesStore(1024 * 512), 512, identity=Identity.derive(m.name, 0))
    big = XcopyDisk(BytesStore(256 * 4096), 4096, identity=Identity.derive(m.name, 1))
    m.add(0, small)
    m.add(1, big)
    want = fill(small, 0, 16, b"q")
    cs = [cscd(small, block_size=512), cscd(big, block_size=4096)]
    assert xcopy(m, plist(cs, [segment(0, 1, 2, 0, 5, dc=1)])).ok     # 2 x 4 KiB
    assert blocks_of(big, 5, 2) == want
    # 3 source blocks do not fill whole 4 KiB destination blocks.
    check(xcopy(m, plist(cs, [segment(0, 1, 3, 0, 5)])), S.SenseKey.COPY_ABORTED,
          S.COPY_TARGET_DEVICE_DATA_UNDERRUN)


def test_zero_blocks_segment_is_a_no_op():
    m = make_map()
    lu = m.get(0)
    assert xcopy(m, plist([cscd(lu)], [segment(0, 0, 0, 0, 1)])).ok


# -- EXTENDED COPY: ParamHdr ----------------------------------------------------------

def test_param_list_truncating_target_descriptor_is_length_error():
    m = make_map()
    data = plist([cscd(m.get(0))], [segment(0, 0, 2048, 0, NBLOCKS - 2048)])
    check(xcopy(m, data[:16 + 32 - 1]), S.SenseKey.ILLEGAL_REQUEST, S.PARAMETER_LIST_LENGTH_ERROR)


def test_param_list_truncating_segment_descriptor_is_length_error():
    m = make_map()
    data = plist([cscd(m.get(0))], [segment(0, 0, 2048, 0, NBLOCKS - 2048)])
    check(xcopy(m, data[:-1]), S.SenseKey.ILLEGAL_REQUEST, S.PARAMETER_LIST_LENGTH_ERROR)


def test_param_list_length_zero_is_good():
    m = make_map()
    _settle(m, NEXUS)
    resp = m.execute(Command(cdb=xcopy_cdb(0), nexus=NEXUS))
    assert resp.ok


def test_param_list_shorter_than_header_is_length_error():
    m = make_map()
    check(xcopy(m, bytes(8)), S.SenseKey.ILLEGAL_REQUEST, S.PARAMETER_LIST_LENGTH_ERROR)


def test_reserved_list_id_usage_points_at_header_byte_1():
    m = make_map()
    resp = xcopy(m, plist([cscd(m.get(0))], [segment(0, 0, 1, 0, 1)], usage=1))
    check(resp, S.SenseKey.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_PARAMETER_LIST)
    # Fixed format: SKSV, C/D = 0 (parameter list), BPV, bit 4, field 1.
    assert resp.sense[15:18] == bytes([0x80 | 0x08 | 4, 0, 1])


def test_inline_data_is_not_supported():
    m = make_map()
    data = plist([cscd(m.get(0))], [segment(0, 0, 1, 0, 1)], inline=4) + bytes(4)
    check(xcopy(m, data), S.SenseKey.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_PARAMETER_LIST)


# -- EXTENDED COPY: DescrLimits ------------------------------------------------------

def test_too_many_target_descriptors():
    m = make_map()
    lu = m.get(0)
    data = plist([cscd(lu)] * (X.MAX_CSCD_DESCRIPTORS + 1), [segment(0, 0, 1, 0, 1)])
    check(xcopy(m, data), S.SenseKey.ILLEGAL_REQUEST, S.TOO_MANY_TARGET_DESCRIPTORS)


def test_too_many_segment_descriptors():
    m = make_map()
    lu = m.get(0)
    data = plist([cscd(lu)], [segment(0, 0, 1, 0, 1)] * (X.MAX_SEGMENT_DESCRIPTORS + 1))
    check(xcopy(m, data), S.SenseKey.ILLEGAL_REQUEST, S.TOO_MANY_SEGMENT_DESCRIPTORS)


def test_descriptor_lists_longer_than_maximum_is_length_error():
    """Even with too many CSCDs, the total length is checked first (libiscsi)."""
    m = make_map()
    lu = m.get(0)
    cs = [cscd(lu)] * (X.MAX_CSCD_DESCRIPTORS + 1)
    room = X.MAX_DESCRIPTOR_LIST_LENGTH + 28 - len(cs) * 32
    data = plist(cs, [segment(0, 0, 1, 0, 1)] * (room // 28))
    check(xcopy(m, data), S.SenseKey.ILLEGAL_REQUEST, S.PARAMETER_LIST_LENGTH_ERROR)


def test_maximum_counts_are_accepted():
    m = make_map()
    lu = m.get(0)
    data = plist([cscd(lu)] * X.MAX_CSCD_DESCRIPTORS,
                 [segment(0, 0, 1, 0, 1)] * X.MAX_SEGMENT_DESCRIPTORS)
    assert xcopy(m, data).ok


# -- EXTENDED COPY: DescrType --------------------------------------------------------

def test_fibre_channel_target_descriptor_is_unsupported():
    m = make_map()
    resp = xcopy(m, plist([cscd(m.get(0), code=0xE0)], [segment(0, 0, 1, 0, 1)]))
    check(resp, S.SenseKey.ILLEGAL_REQUEST, S.UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE)
    assert resp.sense[15:18] == bytes([0x80, 0, 16])     # the descriptor's first byte


def test_stream_to_stream_segment_is_unsupported():
    m = make_map()
    resp = xcopy(m, plist([cscd(m.get(0))], [segment(0, 0, 0, 0, 0, code=0x03)]))
    check(resp, S.SenseKey.ILLEGAL_REQUEST, S.UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE)
    assert resp.sense[15:18] == bytes([0x80, 0, 48])


def test_wrong_block_to_block_descriptor_length():
    m = make_map()
    seg = bytearray(segment(0, 0, 1, 0, 1))
    seg[3] = 0x14
    check(xcopy(m, plist([cscd(m.get(0))], [bytes(seg)])), S.SenseKey.ILLEGAL_REQUEST,
          S.INVALID_FIELD_IN_PARAMETER_LIST)


# -- EXTENDED COPY: ValidTgtDescr / ValidSegDescr ------------------------------------

def test_reserved_lu_id_type_is_ignored_spc4():
    m = make_map()
    lu = m.get(0)
    fill(lu, 0, 2048, b"B")
    assert xcopy(m, plist([cscd(lu, lu_id_type=2)], [segment(0, 0, 2048, 0, NBLOCKS - 2048)])).ok
    assert blocks_of(lu, NBLOCKS - 2048, 1) == b"B" * BS


def test_nul_bit_aborts_the_copy():
    m = make_map()
    resp = xcopy(m, plist([cscd(m.get(0), nul=1)], [segment(0, 0, 1, 0, 1)]))
    check(resp, S.SenseKey.COPY_ABORTED, S.COPY_TARGET_DEVICE_NOT_REACHABLE)


def test_destination_index_past_cscd_list_aborts():
    m = make_map()
    resp = xcopy(m, plist([cscd(m.get(0))], [segment(0, 1, 2048, 0, NBLOCKS - 2048)]))
    check(resp, S.SenseKey.COPY_ABORTED, S.UNREACHABLE_COPY_TARGET)


def test_copy_beyond_destination_capacity_aborts_and_names_segment():
    m = make_map()
    lu = m.get(0)
    before = blocks_of(lu, NBLOCKS - 1, 1)
    fill(lu, 0, 1, b"z")
    resp = xcopy(m, plist([cscd(lu)], [segment(0, 0, 1, 0, 5),
                                       segment(0, 0, 2048, 0, NBLOCKS - 1)]))
    check(resp, S.SenseKey.COPY_ABORTED, S.NO_ADDITIONAL_SENSE)
    assert resp.sense[8:12] == (1).to_bytes(4, "big")   # COMMAND-SPECIFIC INFORMATION: segment 1
    assert blocks_of(lu, NBLOCKS - 1, 1) == before       # nothing of segment 1 was written
    assert blocks_of(lu, 5, 1) == b"z" * BS               # segment 0 was


def test_source_beyond_capacity_aborts():
    m = make_map()
    check(xcopy(m, plist([cscd(m.get(0))], [segment(0, 0, 2, NBLOCKS - 1, 0)])),
          S.SenseKey.COPY_ABORTED, S.NO_ADDITIONAL_SENSE)


def test_unknown_designator_is_not_reachable():
    m = make_map()
    other = bytes([0x01, 0x03, 0x00, 0x08]) + (0x5000000000000001).to_bytes(8, "big")
    resp = xcopy(m, plist([cscd(designator=other)], [segment(0, 0, 1, 0, 1)]))
    check(resp, S.SenseKey.COPY_ABORTED, S.COPY_TARGET_DEVICE_NOT_REACHABLE)


def test_block_length_mismatch_is_incorrect_device_type():
    m = make_map()
    resp = xcopy(m, plist([cscd(m.get(0), block_size=4096)], [segment(0, 0, 1, 0, 1)]))
    check(resp, S.SenseKey.COPY_ABORTED, S.INCORRECT_COPY_TARGET_DEVICE_TYPE)


def test_read_only_destination_is_data_protect():
    m = make_map(2, read_only=(1,))
    src, dst = m.get(0), m.get(1)
    fill(src, 0, 1, b"r")
    resp = xcopy(m, plist([cscd(src), cscd(dst)], [segment(0, 1, 1, 0, 0)]))
    check(resp, S.SenseKey.DATA_PROTECT, S.WRITE_PROTECTED)
    assert blocks_of(dst, 0, 1) == bytes(BS)
    # A read-only source is fine.
    assert xcopy(m, plist([cscd(src), cscd(dst)], [segment(1, 0, 1, 0, 9)])).ok


def test_lid4_service_action_is_invalid_field_in_cdb():
    m = make_map()
    resp = run(m, xcopy_cdb(16, sa=1), bytes(16))
    check(resp, S.SenseKey.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB)


# -- RECEIVE COPY RESULTS --------------------------------------------------------------

def test_operating_parameters_golden():
    m = make_map()
    resp = run(m, rcr_cdb(0x03), expected=1024)
    assert resp.ok
    d = bytes(resp.data_in)
    expect = (struct.pack(">I", 43) + bytes(4)
              + struct.pack(">HHIIIII", 16, 64, 4096, 1 << 28, 0, 0, 0)
              + bytes(2) + struct.pack(">HBBBB", 16, 16, 9, 0, 0)
              + bytes(3) + bytes([3, 0x00, 0x02, 0xE4]))
    assert d == expect
    assert resp.residual == 1024 - len(expect)


def test_operating_parameters_respects_allocation_length():
    m = make_map()
    resp = run(m, rcr_cdb(0x03, alloc=10), expected=10)
    assert resp.ok and len(resp.data_in) == 10


def test_copy_status_without_copy_is_invalid_field_in_cdb():
    m = make_map()
    resp = run(m, rcr_cdb(0x00, list_id=1), expected=1024)
    check(resp, S.SenseKey.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB)
    assert resp.sense[15:18] == bytes([0xC0, 0, 2])


def test_copy_status_after_copy_then_discarded():
    m = make_map()
    lu = m.get(0)
    assert xcopy(m, plist([cscd(lu)], [segment(0, 0, 2048, 0, NBLOCKS - 2048)], list_id=7)).ok
    resp = run(m, rcr_cdb(0x00, list_id=7), expected=1024)
    assert resp.ok
    assert bytes(resp.data_in) == struct.pack(">IBHBI", 8, 0x01, 1, 0, 2048 * BS)
    # Reported once; other nexus never saw it.
    check(run(m, rcr_cdb(0x00, list_id=7), expected=1024), S.SenseKey.ILLEGAL_REQUEST,
          S.INVALID_FIELD_IN_CDB)


def test_copy_results_are_per_nexus():
    m = make_map()
    lu = m.get(0)
    assert xcopy(m, plist([cscd(lu)], [segment(0, 0, 1, 0, 1)], list_id=3)).ok
    other = Nexus("iqn.other,i,0x2")
    check(run(m, rcr_cdb(0x00, list_id=3), nexus=other, expected=64),
          S.SenseKey.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB)
    X.forget(lu, NEXUS)     # I_T nexus loss
    check(run(m, rcr_cdb(0x00, list_id=3), expected=64), S.SenseKey.ILLEGAL_REQUEST,
          S.INVALID_FIELD_IN_CDB)


def test_list_id_usage_11b_keeps_no_results():
    m = make_map()
    lu = m.get(0)
    assert xcopy(m, plist([cscd(lu)], [segment(0, 0, 1, 0, 1)], list_id=0, usage=3)).ok
    check(run(m, rcr_cdb(0x00, list_id=0), expected=64), S.SenseKey.ILLEGAL_REQUEST,
          S.INVALID_FIELD_IN_CDB)
    check(xcopy(m, plist([cscd(lu)], [segment(0, 0, 1, 0, 1)], list_id=5, usage=3)),
          S.SenseKey.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_PARAMETER_LIST)


def test_failed_copy_status_and_failed_segment_details():
    m = make_map()
    lu = m.get(0)
    resp = xcopy(m, plist([cscd(lu)], [segment(0, 0, 10, 0, NBLOCKS - 1)], list_id=9))
    check(resp, S.SenseKey.COPY_ABORTED, S.NO_ADDITIONAL_SENSE)
    st_resp = run(m, rcr_cdb(0x00, list_id=9), expected=64)
    assert bytes(st_resp.data_in) == struct.pack(">IBHBI", 8, 0x02, 0, 0, 0)
    fsd = run(m, rcr_cdb(0x04, list_id=9), expected=1024)
    d = bytes(fsd.data_in)
    assert int.from_bytes(d[0:4], "big") == len(d) - 4
    assert d[56] == 0x02 and int.from_bytes(d[58:60], "big") == len(resp.sense)
    assert d[60:] == resp.sense
    # Discarded after a full transfer.
    assert bytes(run(m, rcr_cdb(0x04, list_id=9), expected=1024).data_in) == bytes(4)


def test_receive_data_holds_nothing():
    m = make_map()
    lu = m.get(0)
    check(run(m, rcr_cdb(0x01, list_id=4), expected=64), S.SenseKey.ILLEGAL_REQUEST,
          S.INVALID_FIELD_IN_CDB)
    assert xcopy(m, plist([cscd(lu)], [segment(0, 0, 1, 0, 1)], list_id=4)).ok
    assert bytes(run(m, rcr_cdb(0x01, list_id=4), expected=64).data_in) == bytes(4)


def test_list_id_in_use_by_running_copy_is_rejected():
    m = make_map()
    lu = m.get(0)
    rec = X._results(lu).begin((NEXUS, 2))
    assert rec.status == X.STATUS_IN_PROGRESS
    check(xcopy(m, plist([cscd(lu)], [segment(0, 0, 1, 0, 1)], list_id=2)),
          S.SenseKey.ILLEGAL_REQUEST, S.OPERATION_IN_PROGRESS)
    status = run(m, rcr_cdb(0x00, list_id=2), expected=64)
    assert bytes(status.data_in)[4] == X.STATUS_IN_PROGRESS
    X.forget(lu)


def test_retained_results_are_bounded():
    m = make_map()
    lu = m.get(0)
    for i in range(X.MAX_RETAINED_RESULTS + 20):
        nexus = Nexus(f"iqn.many,i,0x{i:x}")
        assert xcopy(m, plist([cscd(lu)], [segment(0, 0, 1, 0, 1)], list_id=1), nexus=nexus).ok
    assert len(X._results(lu).records) == X.MAX_RETAINED_RESULTS


def test_unknown_receive_copy_results_service_action():
    m = make_map()
    check(run(m, rcr_cdb(0x02), expected=64), S.SenseKey.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB)


# -- VPD page 8Fh -------------------------------------------------------------------------

def _tpc_descriptors(page: bytes) -> dict[int, bytes]:
    assert page[1] == 0x8F
    assert int.from_bytes(page[2:4], "big") == len(page) - 4
    out, pos = {}, 4
    while pos < len(page):
        dtype, dlen = struct.unpack_from(">HH", page, pos)
        assert (dlen + 4) % 4 == 0
        out[dtype] = page[pos + 4:pos + 4 + dlen]
        pos += 4 + dlen
    assert pos == len(page)
    return out


def test_third_party_copy_vpd_describes_the_implementation():
    lu = make_map().get(0)
    page = X.third_party_copy_vpd(lu)
    assert page[0] == 0x00
    descs = _tpc_descriptors(page)
    assert set(descs) == {0x0008, 0x000C, 0x000D, 0x000E, 0x8001}
    sc = descs[0x0008]
    cmds, pos = {}, 1
    while pos < 1 + sc[0]:
        op, n = sc[pos], sc[pos + 1]
        cmds[op] = list(sc[pos + 2:pos + 2 + n])
        pos += 2 + n
    assert cmds == {0x83: [0x00], 0x84: [0x00, 0x01, 0x03, 0x04]}
    assert struct.unpack_from(">HHII", descs[0x000C], 4) == (16, 64, 4096, 0)
    sd = descs[0x000D]
    assert list(sd[1:1 + sd[0]]) == [0x00, 0x02, 0xE4]     # block->stream, block->block
    ids = descs[0x000E]
    assert ids[:4] == bytes([0, 2, 0xFF, 0xFF])
    assert struct.unpack_from(">IIIB", descs[0x8001], 0) == (16, 16, 1 << 28, 9)


def test_third_party_copy_vpd_golden_bytes():
    lu = make_map().get(0)
    page = X.third_party_copy_vpd(lu)
    assert page[:4] == bytes([0x00, 0x8F, 0x00, len(page) - 4])
    assert page[4:20] == bytes.fromhex("0008000c09830100840400010304" "0000")


# -- whole DiskLU (SPC + SBC + XCOPY) when the other command sets are present -------------

def test_disk_lu_dispatch_table_includes_xcopy():
    pytest.importorskip("scsi_target.scsi.spc")
    pytest.importorskip("scsi_target.scsi.sbc")
    m = LunMap("iqn.2026-11.test:disk")
    lu = DiskLU(BytesStore(NBLOCKS * BS), BS, identity=Identity.derive(m.name, 0))
    m.add(0, lu)
    assert lu.table.find(0x83, 0) is not None and lu.table.find(0x84, 3) is not None
    want = fill(lu, 0, 16, b"D")
    resp = xcopy(m, plist([cscd(lu)], [segment(0, 0, 16, 0, 100)]))
    assert resp.ok
    assert blocks_of(lu, 100, 16) == want


# -- properties ---------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=600))
def test_parser_answers_every_input_with_sense_or_a_list(data):
    try:
        parsed = X.parse_parameter_list(data)
    except S.SenseError as err:
        assert err.key == S.SenseKey.ILLEGAL_REQUEST
    else:
        assert len(parsed.cscds) <= X.MAX_CSCD_DESCRIPTORS
        assert len(parsed.segments) <= X.MAX_SEGMENT_DESCRIPTORS


segments_st = st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
                                 st.integers(0, 0xFFFF), st.integers(0, 2**64 - 1),
                                 st.integers(0, 2**64 - 1), st.booleans()),
                       min_size=0, max_size=X.MAX_SEGMENT_DESCRIPTORS)
designators_st = st.lists(st.binary(min_size=4, max_size=4).map(lambda b: b[:3]).flatmap(
    lambda h: st.binary(min_size=0, max_size=16).map(lambda v: h + bytes([len(v)]) + v)),
    min_size=0, max_size=X.MAX_CSCD_DESCRIPTORS)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 255), st.sampled_from([0, 2]), designators_st, segments_st)
def test_parser_round_trips_built_lists(list_id, usage, desigs, segs):
    data = plist([cscd(designator=d) for d in desigs],
                 [segment(s, d, n, sl, dl, dc=int(dc)) for s, d, n, sl, dl, dc in segs],
                 list_id=list_id, usage=usage)
    parsed = X.parse_parameter_list(data)
    assert (parsed.list_id, parsed.usage) == (list_id, usage)
    assert [c.designator for c in parsed.cscds] == desigs
    assert [(g.src_id, g.dst_id, g.blocks, g.src_lba, g.dst_lba, g.dc) for g in parsed.segments] \
        == [tuple(s) for s in segs]


def test_nexus_loss_and_lu_reset_drop_copy_results():
    m = make_map()
    lu = m.get(0)
    assert xcopy(m, plist([cscd(lu)], [segment(0, 0, 1, 0, 1)], list_id=4)).ok
    assert run(m, rcr_cdb(0x00, list_id=4), expected=64).ok
    lu.nexus_lost(NEXUS)          # what the transport calls on logout/connection loss
    check(run(m, rcr_cdb(0x00, list_id=4), expected=64), S.SenseKey.ILLEGAL_REQUEST,
          S.INVALID_FIELD_IN_CDB)
    assert xcopy(m, plist([cscd(lu)], [segment(0, 0, 1, 0, 1)], list_id=5)).ok
    lu.reset()                    # LOGICAL UNIT RESET
    lu.ua.pop(NEXUS)
    check(run(m, rcr_cdb(0x00, list_id=5), expected=64), S.SenseKey.ILLEGAL_REQUEST,
          S.INVALID_FIELD_IN_CDB)
