"""Layouts (scsi_target.scsi.layouts): round trips of every layout, golden decodes of
responses captured from tgt (tests/golden/tgt, made by tools/capture_golden.py), the
ASC/ASCQ table, and the target rendering through the same layouts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from scsi_target.scsi import asc_table
from scsi_target.scsi import sense as S
from scsi_target.scsi.layouts import capacity as LC, inquiry as LI, mode as LM, pr as LP
from scsi_target.scsi.layouts import rsoc as LR, sense as LS, tape as LT, vpd as LV
from scsi_target.scsi.layouts import cdbs as LCDB, xcopy as LX
from scsi_target.scsi.layouts.fields import F, Struct
from scsi_target.scsi.layouts.luns import ReportLuns

GOLDEN = Path(__file__).parent / "golden" / "tgt"

FLAT = [LI.StandardInquiry, LV.VpdHeader, LV.DesignatorHeader, LV.BlockLimits,
        LV.BlockCharacteristics, LV.LogicalBlockProvisioning, LC.ReadCapacity10,
        LC.ReadCapacity16, LC.LbaStatusDescriptor, LM.ModeHeader6, LM.ModeHeader10,
        LM.ShortBlockDescriptor, LM.GeneralBlockDescriptor, LM.LongBlockDescriptor,
        LM.ReadWriteErrorRecovery, LM.Caching, LM.Control, LM.InformationalExceptions,
        LM.DataCompression, LM.DeviceConfiguration, LR.TimeoutsDescriptor,
        LR.CommandDescriptor, LR.OneCommandHeader, LP.ReservationDescriptor, LP.PrCapabilities,
        LT.ReadPositionShort, LT.ReadPositionLong, LT.BlockLimitsData, LS.FixedSense,
        LS.DescriptorSenseHeader, LP.FullStatusHead, LX.CopyStatus, LX.OperatingParametersHead,
        LX.FailedSegmentHead, LX.ParameterListHeader, LX.IdentificationCscd,
        LX.BlockToBlockSegment]


def _field_value(f: F) -> st.SearchStrategy:
    if f.kind == "bool":
        return st.booleans()
    if f.kind == "bytes":
        return st.binary(min_size=f.size, max_size=f.size)
    if f.kind == "ascii":
        return st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E),
                       max_size=f.size)
    return st.integers(0, f.mask)


def _instances(cls: type[Struct]) -> st.SearchStrategy:
    return st.fixed_dictionaries({f.name: _field_value(f) for f in cls.FIELDS}).map(
        lambda kw: cls(**kw))


def test_field_tables_do_not_overlap() -> None:
    """No two fields of a layout claim the same bit (a typo'd offset would)."""
    for cls in FLAT:
        used: dict[int, str] = {}
        for f in cls.FIELDS:
            for b in range(f.bits):
                pos = (f.offset + f.size) * 8 - 1 - (f.shift + b)   # absolute bit, MSB first
                assert pos not in used, f"{cls.__name__}: {f.name} overlaps {used[pos]}"
                used[pos] = f.name


@pytest.mark.parametrize("cls", FLAT, ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_flat_round_trip(cls, data) -> None:
    obj = data.draw(_instances(cls))
    raw = obj.pack()
    assert len(raw) >= cls.SIZE
    back = cls.unpack(raw)
    for f in cls.FIELDS:
        assert getattr(back, f.name) == getattr(obj, f.name), f.name
    assert back.pack() == raw


def test_pack_refuses_values_that_do_not_fit() -> None:
    with pytest.raises(ValueError):
        LC.ReadCapacity10(last_lba=1 << 32).pack()
    with pytest.raises(ValueError):
        LM.Control(qam=16).pack()


def test_short_data_reads_as_zero() -> None:
    rc = LC.ReadCapacity16.unpack(bytes.fromhex("00000000000000ff00000200"))
    assert (rc.last_lba, rc.block_size, rc.lbpme) == (255, 512, False)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 0xFFFF), max_size=8), st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=8))
def test_standard_inquiry_version_descriptors(vds, vendor) -> None:
    vds = [v for v in vds if v]
    raw = LI.StandardInquiry(vendor=vendor, version_descriptors=tuple(vds)).pack()
    back = LI.StandardInquiry.unpack(raw)
    assert back.version_descriptors == tuple(vds) and back.vendor == vendor


designators = st.builds(LV.Designator, st.integers(0, 15), st.integers(0, 3), st.integers(0, 15),
                        st.binary(max_size=40), st.integers(0, 15), st.booleans())


@settings(max_examples=80, deadline=None)
@given(st.lists(designators, max_size=6), st.integers(0, 255), st.integers(0, 31))
def test_device_id_page_round_trip(ds, code, dtype) -> None:
    page = LV.VpdPage(code, LV.device_id_body(ds), dtype).pack()
    back = LV.VpdPage.unpack(page)
    assert (back.page_code, back.device_type) == (code, dtype)
    assert LV.parse_device_id(back.body) == ds


@settings(max_examples=80, deadline=None)
@given(st.lists(st.builds(LC.LbaStatusDescriptor, st.integers(0, 2**64 - 1),
                          st.integers(0, 2**32 - 1), st.integers(0, 15)), max_size=20))
def test_lba_status_round_trip(descs) -> None:
    assert LC.LbaStatus.unpack(LC.LbaStatus(descs).pack()).descriptors == descs


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 16383), max_size=30))
def test_report_luns_round_trip(luns) -> None:
    assert ReportLuns.unpack(ReportLuns.of(luns).pack()).numbers == luns


timeouts = st.builds(LR.TimeoutsDescriptor, st.just(0x0A), st.integers(0, 255),
                     st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))


@st.composite
def command_descriptors(draw):
    ctdp = draw(st.booleans())
    return LR.CommandDescriptor(draw(st.integers(0, 255)), draw(st.integers(0, 0xFFFF)), ctdp,
                                draw(st.booleans()), draw(st.integers(0, 0xFFFF)),
                                draw(timeouts) if ctdp else None)


@settings(max_examples=80, deadline=None)
@given(st.lists(command_descriptors(), max_size=20))
def test_rsoc_all_round_trip(descs) -> None:
    assert LR.AllCommands.unpack(LR.AllCommands(descs).pack()).descriptors == descs


@settings(max_examples=80, deadline=None)
@given(st.sampled_from([3, 5]), st.binary(min_size=1, max_size=32), st.none() | timeouts)
def test_rsoc_one_round_trip(support, usage, t) -> None:
    assert LR.OneCommand.unpack(LR.OneCommand(support, usage, t).pack()) == \
        LR.OneCommand(support, usage, t)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.integers(0, 2**64 - 1), max_size=10),
       st.none() | st.builds(LP.ReservationDescriptor, st.integers(0, 2**64 - 1),
                             st.integers(0, 15), st.integers(0, 15)))
def test_pr_in_round_trips(gen, keys, res) -> None:
    assert LP.PrReadKeys.unpack(LP.PrReadKeys(gen, keys).pack()) == LP.PrReadKeys(gen, keys)
    assert LP.PrReadReservation.unpack(LP.PrReadReservation(gen, res).pack()) == \
        LP.PrReadReservation(gen, res)


pages = st.builds(LM.ModePage, st.integers(0, 0x3E), st.integers(1, 254),
                  st.binary(max_size=40), st.booleans(), st.just(True)) | \
    st.builds(LM.ModePage, st.integers(0, 0x3E), st.just(0), st.binary(max_size=40),
              st.booleans(), st.just(False))


@settings(max_examples=80, deadline=None)
@given(st.booleans(), st.lists(pages, max_size=5), st.integers(0, 3), st.integers(0, 255))
def test_mode_parameters_round_trip(ten, ps, nbd, dsp) -> None:
    bds = [LM.ShortBlockDescriptor(i, 512) for i in range(nbd)]
    h = LM.ModeHeader10(device_specific=dsp) if ten else LM.ModeHeader6(device_specific=dsp)
    if not ten and 4 + 8 * nbd + sum(len(p.pack()) for p in ps) > 256:
        return
    raw = LM.ModeParameters(h, bds, ps).pack()
    back = LM.ModeParameters.unpack(raw, ten)
    assert back.block_descriptors == bds and back.pages == ps
    assert back.header.device_specific == dsp


sense_data = st.builds(
    LS.SenseData, st.integers(0, 15), st.integers(0, 255), st.integers(0, 255), st.booleans(),
    st.booleans(), st.none() | st.integers(0, 2**32 - 1), st.none() | st.integers(1, 2**32 - 1),
    st.none() | st.integers(0, 2**23 - 1), st.booleans(), st.booleans(), st.booleans())


@settings(max_examples=150, deadline=None)
@given(sense_data, st.booleans())
def test_sense_round_trip_both_formats(sd, desc) -> None:
    back = LS.decode_sense(sd.pack(desc))
    assert back.descriptor_format == desc
    for name in ("key", "asc", "ascq", "deferred", "information", "command_specific", "sks",
                 "filemark", "eom", "ili"):
        assert getattr(back, name) == getattr(sd, name), name


def test_render_sense_golden_vectors() -> None:
    """The target's sense bytes, pinned: fixed with field pointer, descriptor with info."""
    err = S.invalid_cdb_field(2, 7)
    assert S.render_sense(err) == bytes.fromhex("700005000000000a00000000240000cf0002")
    assert S.render_sense(err, descriptor=True) == bytes.fromhex(
        "7205240000000008" "02060000cf000200")
    mis = S.miscompare(0x1234)
    assert S.render_sense(mis) == bytes.fromhex("f0000e000012340a000000001d0000000000")
    assert S.render_sense(mis, descriptor=True) == bytes.fromhex(
        "720e1d000000000c" "000a800000000000" "00001234")
    assert S.describe_sense(S.render_sense(err)) == \
        "ILLEGAL REQUEST, ASC/ASCQ 24h/00h INVALID FIELD IN CDB (field: CDB byte 2 bit 7)"


# ------------------------------------------------------------------- ASC table
def test_asc_table() -> None:
    names = asc_table.ASC_NAMES
    assert len(names) > 700
    assert names[(0x24, 0x00)] == "INVALID FIELD IN CDB"
    assert names[(0x3A, 0x00)] == "MEDIUM NOT PRESENT"
    assert names[(0x29, 0x07)] == "I_T NEXUS LOSS OCCURRED"
    assert names[(0x5D, 0xFF)] == "FAILURE PREDICTION THRESHOLD EXCEEDED (FALSE)"
    assert asc_table.asc_name(0x40, 0x91) == "DIAGNOSTIC FAILURE ON COMPONENT 91h (80h-FFh)"
    assert asc_table.asc_name(0x4D, 0x07) == "TAGGED OVERLAPPED COMMANDS (07h = TASK TAG)"
    assert "VENDOR SPECIFIC" in asc_table.asc_name(0x85, 0x00)
    assert "VENDOR SPECIFIC" in asc_table.asc_name(0x04, 0x90)
    assert asc_table.asc_name(0x7F, 0x01).startswith("UNKNOWN")
    # Every Asc constant the target raises has the table's name.
    for v in vars(S).values():
        if isinstance(v, S.Asc) and v.name:
            assert (v.asc, v.ascq) in names, v


def test_duplicate_table_line_is_refused() -> None:
    with pytest.raises(ValueError):
        asc_table._parse("24 00 A\n24 00 B")


# ------------------------------------------------------------ golden from tgt
def _g(name: str) -> bytes:
    return (GOLDEN / f"{name}.bin").read_bytes()


def test_golden_manifest_matches_files() -> None:
    m = json.loads((GOLDEN / "manifest.json").read_text())
    for name, rec in m.items():
        if "file" in rec:
            assert (GOLDEN / rec["file"]).exists(), name
    assert sum("file" in r for r in m.values()) >= 40


def test_golden_tgt_inquiry_and_vpd() -> None:
    inq = LI.StandardInquiry.unpack(_g("inquiry_std"))
    assert (inq.vendor, inq.product, inq.revision) == ("IET", "VIRTUAL-DISK", "0001")
    assert inq.device_type == 0 and inq.cmdque and inq.hisup and inq.response_data_format == 2
    assert inq.version == 5 and inq.additional_length == 61
    assert inq.version_descriptors == (0x04C0, 0x0960, 0x0300)
    assert LI.StandardInquiry.unpack(_g("tape_inquiry_std")).device_type == 1
    assert LV.decode_page(_g("vpd_00")).decoded == [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]
    assert LV.decode_page(_g("vpd_80")).decoded.strip() == "beaf11"   # tgt right-aligns it
    ds = LV.decode_page(_g("vpd_83")).decoded
    assert [(d.designator_type, d.association, d.code_set) for d in ds] == \
        [(LV.TYPE_T10, 0, 2), (LV.TYPE_NAA, 0, 1), (LV.TYPE_NAA, 0, 1)]
    assert ds[0].text == "IET     00010001" and ds[2].value.hex().startswith("6000")
    bl = LV.decode_page(_g("vpd_b0")).decoded
    assert bl.max_compare_write_length == 128 and bl.max_transfer_length == 0
    assert LV.decode_page(_g("vpd_b2")).decoded == LV.LogicalBlockProvisioning()


def test_golden_tgt_capacity_luns_lba_status() -> None:
    assert LC.ReadCapacity10.unpack(_g("readcap10")) == LC.ReadCapacity10(32767, 512)
    rc = LC.ReadCapacity16.unpack(_g("readcap16"))
    assert (rc.blocks, rc.block_size, rc.lbppbe, rc.lbpme) == (32768, 512, 3, False)
    assert ReportLuns.unpack(_g("report_luns")).numbers == [0, 1, 2]
    assert LC.LbaStatus.unpack(_g("get_lba_status")).descriptors == \
        [LC.LbaStatusDescriptor(0, 32768, LC.DEALLOCATED)]


def test_golden_tgt_mode_pages() -> None:
    mp = LM.ModeParameters.unpack(_g("mode_sense10_all"), True)
    assert mp.header.block_descriptor_length == 8 and mp.header.device_specific == 0x10
    assert mp.block_descriptors == [LM.ShortBlockDescriptor(0, 512)]
    by_code = {p.code: p.decoded() for p in mp.pages if not p.spf}
    cache = by_code[0x08]
    assert cache.wce and cache.disc and cache.fsw and cache.cache_segments == 20
    assert by_code[0x0A].gltsd and by_code[0x0A].qam == 1
    assert by_code[0x1C].dexcpt
    six = LM.ModeParameters.unpack(_g("mode_sense6_all"), False)
    assert [p.pack() for p in six.pages] == [p.pack() for p in mp.pages]
    ch = LM.ModeParameters.unpack(_g("mode_sense10_08_changeable"), True)
    assert ch.pages[0].code == 0x08
    tape = LM.ModeParameters.unpack(_g("tape_mode_sense10_all"), True, sequential=True)
    tp = {p.code: p.decoded() for p in tape.pages if not p.spf}
    assert isinstance(tp[0x10], LM.DeviceConfiguration) and tp[0x10].read_buffer_empty_ratio == 128
    assert tp[0x10].write_delay_time == 0x8000
    assert isinstance(tp[0x0F], LM.DataCompression) and not tp[0x0F].dce
    assert tp[0x01].read_retry_count == 8 and tp[0x01].write_retry_count == 8
    assert tape.block_descriptors == [LM.GeneralBlockDescriptor(0, 0, 0)]
    for name, code in (("tape_mode_sense10_0f", 0x0F), ("tape_mode_sense10_10", 0x10)):
        only = LM.ModeParameters.unpack(_g(name), True, sequential=True)
        assert [p.code for p in only.pages] == [code]


def test_golden_tgt_rsoc_pr_sense() -> None:
    allc = LR.AllCommands.unpack(_g("rsoc_all_rctd"))
    assert len(allc.descriptors) == 50 and all(d.ctdp and d.timeouts for d in allc.descriptors)
    plain = LR.AllCommands.unpack(_g("rsoc_all"))
    assert [(d.opcode, d.service_action) for d in plain.descriptors] == \
        [(d.opcode, d.service_action) for d in allc.descriptors]
    assert any(d.opcode == 0x88 for d in plain.descriptors)
    one = LR.OneCommand.unpack(_g("rsoc_one_read16_rctd"))
    assert one.supported and one.usage[0] == 0x88 and len(one.usage) == 16 and one.timeouts
    keys = LP.PrReadKeys.unpack(_g("pr_in_read_keys"))
    assert keys == LP.PrReadKeys(1, [0x1122334455667788])
    res = LP.PrReadReservation.unpack(_g("pr_in_read_reservation"))
    assert res.reservation == LP.ReservationDescriptor(0x1122334455667788, 0, 3)
    cap = LP.PrCapabilities.unpack(_g("pr_in_report_capabilities"))
    assert cap.tmv and cap.wr_ex and cap.ex_ac_ar and not cap.ptpl_c
    cases = {"sense_lba_out_of_range": (5, 0x21, 0), "sense_bad_opcode": (5, 0x20, 0),
             "sense_invalid_cdb_field": (5, 0x24, 0), "tape_sense_space_past_eod": (0, 0, 5)}
    for name, (key, asc, ascq) in cases.items():
        sd = LS.decode_sense(_g(name))
        assert (sd.key, sd.asc, sd.ascq) == (key, asc, ascq), name
        assert not sd.descriptor_format
    eod = LS.decode_sense(_g("tape_sense_read_eod"))
    assert eod.key == 0x8 and eod.eom and eod.key_name == "BLANK CHECK"
    assert LS.decode_sense(_g("tape_sense_space_past_eod")).asc_name == "END-OF-DATA DETECTED"


def test_golden_tgt_tape_position_and_limits() -> None:
    bl = LT.BlockLimitsData.unpack(_g("tape_read_block_limits"))
    assert bl == LT.BlockLimitsData(9, 1 << 20, 4)
    short = LT.ReadPositionShort.unpack(_g("tape_read_position_short_bop"))
    # tgt's SSC reports BYCU and LOLU (no byte count, location unknown) at load time.
    assert short.bycu and short.lolu and short.partition == 0
    long = LT.ReadPositionLong.unpack(_g("tape_read_position_long_bop"))
    assert long.logical_object == 0 and long.partition == 0


# ------------------------------------------------- the target uses the layouts
def test_target_responses_decode_with_the_same_layouts(tmp_path) -> None:
    from scsi_target.config import LunSpec, build_lu
    from scsi_target.scsi.command import Command, Direction
    from scsi_target.scsi.lun import LunMap
    m = LunMap("iqn.2026-11.test:layouts")
    m.add(0, build_lu(LunSpec(lun=0, path=tmp_path / "d.img", size=1 << 20, create=True),
                      "iqn.2026-11.test:layouts"))

    def run(cdb: bytes, n: int = 4096) -> bytes:
        for _ in range(3):
            r = m.execute(Command(cdb=cdb, expected_length=n, direction=Direction.IN))
            if r.ok:
                return bytes(r.data_in)
        raise AssertionError(r.sense.hex())

    from scsi_target.scsi.layouts import cdbs as C
    inq = LI.StandardInquiry.unpack(run(C.inquiry(alloc=255), 255))
    assert inq.vendor and inq.cmdque and inq.version == 6
    rc = LC.ReadCapacity16.unpack(run(C.read_capacity16()))
    assert rc.blocks == 2048 and rc.block_size == 512
    mp = LM.ModeParameters.unpack(run(C.mode_sense10(0x3F)), True)
    assert {p.code for p in mp.pages} >= {0x01, 0x08, 0x0A, 0x1C}
    assert mp.block_descriptors == [LM.ShortBlockDescriptor(2048, 512)]
    allc = LR.AllCommands.unpack(run(C.report_supported_opcodes(0, rctd=True, alloc=65536)))
    assert all(d.timeouts.recommended_timeout == 30 for d in allc.descriptors)
    assert ReportLuns.unpack(run(C.report_luns())).numbers == [0]
    m.close()


# ------------------------------------- PR READ FULL STATUS, third-party copy data
def _tid(name: str, isid: int | None) -> bytes:
    return LP.iscsi_transport_id(name, isid)


iqn_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-:", min_size=1, max_size=60)
full_status_descriptors = st.builds(
    LP.FullStatusDescriptor, st.integers(0, 2**64 - 1), st.booleans(), st.integers(0, 15),
    st.integers(0, 15), st.booleans(), st.integers(0, 0xFFFF),
    st.builds(_tid, iqn_names, st.none() | st.integers(0, 2**48 - 1)) | st.binary(max_size=40))


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(full_status_descriptors, max_size=6))
def test_pr_read_full_status_round_trip(gen, descs) -> None:
    data = LP.PrReadFullStatus(gen, descs).pack()
    assert LP.PrReadFullStatus.unpack(data) == LP.PrReadFullStatus(gen, descs)
    # A short allocation length drops the descriptors it cuts, never misreads them.
    for cut in (8, len(data) // 2, len(data) - 1):
        part = LP.PrReadFullStatus.unpack(data[:max(cut, 8)])
        assert part.descriptors == descs[:len(part.descriptors)]


@given(iqn_names, st.none() | st.integers(0, 2**48 - 1))
def test_iscsi_transport_id(name, isid) -> None:
    tid = LP.iscsi_transport_id(name, isid)
    assert len(tid) % 4 == 0 and tid[0] == (0x05 if isid is None else 0x45)
    assert int.from_bytes(tid[2:4], "big") == len(tid) - 4
    text = LP.describe_transport_id(tid)
    assert text == (name if isid is None else f"{name},i,0x{isid:012x}")


def test_pr_read_full_status_golden() -> None:
    """Two registrants, init1 holding an Exclusive Access reservation (the target's
    rendering, captured before READ FULL STATUS moved to the layout)."""
    raw = bytes.fromhex(
        "0000000200000088"
        "0000000000001111" "00000000" "0103" "00000000" "0001" "0000002c"
        "4500002869716e2e323032362d31312e746573743a696e6974312c692c3078303030303030303030303031"
        "00"
        "0000000000002222" "00000000" "0000" "00000000" "0001" "0000002c"
        "4500002869716e2e323032362d31312e746573743a696e6974322c692c3078303030303030303030303032"
        "00")
    fs = LP.PrReadFullStatus.unpack(raw)
    assert fs.generation == 2 and [d.key for d in fs.descriptors] == [0x1111, 0x2222]
    assert [(d.r_holder, d.type) for d in fs.descriptors] == [(True, 3), (False, 0)]
    assert LP.describe_transport_id(fs.descriptors[1].transport_id) == \
        "iqn.2026-11.test:init2,i,0x000000000002"
    assert fs.to_dict()["registrations"][0]["type"] == "Exclusive Access"
    assert fs.pack() == raw


@given(st.integers(0, 2**70))
def test_transfer_count_encoding(n) -> None:
    units, count = LX.encode_transfer_count(n)
    assert count <= 0xFFFFFFFF
    cs = LX.CopyStatus(transfer_count_units=units, transfer_count=count)
    assert cs.bytes_transferred <= n < cs.bytes_transferred + (1 << (10 * units))
    assert units == 0 or count > 0xFFFFFFFF >> 10   # the smallest unit that fits


@settings(max_examples=80, deadline=None)
@given(st.builds(LX.OperatingParametersHead, **{
    f.name: _field_value(f) for f in LX.OperatingParametersHead.FIELDS
    if f.name not in ("available_data", "implemented_descriptor_list_length")}),
    st.binary(max_size=40), st.none() | st.binary(min_size=8, max_size=252),
    st.integers(0, 255), st.binary(max_size=64))
def test_receive_copy_results_round_trips(head, impl, sense, cstatus, held) -> None:
    op = LX.OperatingParameters.unpack(LX.OperatingParameters(head, impl).pack())
    assert op.implemented == impl and op.head == head
    assert op.head.available_data == 40 + len(impl)
    fd = LX.FailedSegmentDetails(cstatus if sense is not None else 0, sense)
    raw = fd.pack()
    assert len(raw) == (4 if sense is None else 60 + len(sense))
    assert LX.FailedSegmentDetails.unpack(raw) == fd
    assert LX.ReceiveData.unpack(LX.ReceiveData(held).pack()) == LX.ReceiveData(held)


def test_receive_copy_results_golden() -> None:
    """OPERATING PARAMETERS of a 512-byte-block copy manager, a COPY STATUS and the
    FAILED SEGMENT DETAILS of a list aborted in segment 1 (captured from the target
    before these replies moved to the layouts)."""
    op = LX.OperatingParameters.unpack(bytes.fromhex(
        "0000002a00000000001000400000100010000000000000000000000000000000"
        "00000010100900000000000202e4"))
    assert (op.head.max_cscd_descriptors, op.head.max_segment_descriptors) == (16, 64)
    assert op.head.max_segment_length == 1 << 28 and op.head.data_segment_granularity == 9
    assert op.head.total_concurrent_copies == op.head.max_concurrent_copies == 16
    assert op.implemented == bytes([0x02, 0xE4]) and not op.head.snlid
    assert op.to_dict()["implemented_descriptors"] == ["02h block->block",
                                                      "e4h identification descriptor"]
    cs = LX.CopyStatus.unpack(bytes.fromhex("000000080100020000002800"))
    assert (cs.status, cs.segments_processed, cs.bytes_transferred) == (1, 2, 10240)
    assert cs.status_name == "completed without errors"
    fd = LX.FailedSegmentDetails.unpack(bytes.fromhex(
        "0000004a" + "00" * 52 + "02000012" + "70000a000000000a00000001000000000000"))
    assert fd.completion_status == 2
    sd = LS.decode_sense(fd.sense)
    assert (sd.key, sd.asc, sd.ascq, sd.command_specific) == (0x0A, 0, 0, 1)
    assert LX.FailedSegmentDetails.unpack(bytes(4)).sense is None


designations = st.binary(min_size=0, max_size=16).map(
    lambda v: bytes([0x01, 0x03, 0x00, len(v)]) + v)
b2b_segments = st.builds(LX.BlockToBlockSegment, src_id=st.integers(0, 0xFFFF),
                         dst_id=st.integers(0, 0xFFFF), blocks=st.integers(0, 0xFFFF),
                         src_lba=st.integers(0, 2**64 - 1), dst_lba=st.integers(0, 2**64 - 1),
                         dc=st.booleans())


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 255), st.sampled_from([LX.USAGE_HOLD, LX.USAGE_DISCARD]),
       st.lists(st.tuples(designations, st.integers(0, 2**24 - 1)), max_size=4),
       st.lists(b2b_segments, max_size=6))
def test_extended_copy_list_round_trip_and_target_parse(list_id, usage, cscds, segs) -> None:
    """A list the initiator packs decodes to the same values, and the target's
    validating parser reads the same fields from it."""
    from scsi_target.scsi import xcopy as X
    lst = LX.block_copy_list(list_id, [d for d, _ in cscds], [b for _, b in cscds], segs,
                             usage=usage)
    raw = lst.pack()
    assert len(raw) == 16 + 32 * len(cscds) + 28 * len(segs)
    assert LX.ExtendedCopyList.unpack(raw) == lst
    parsed = X.parse_parameter_list(raw)
    assert (parsed.list_id, parsed.usage) == (list_id, usage)
    assert [(c.designator, c.block_length) for c in parsed.cscds] == cscds
    assert [(p.src_id, p.dst_id, p.blocks, p.src_lba, p.dst_lba, p.dc) for p in parsed.segments] \
        == [(g.src_id, g.dst_id, g.blocks, g.src_lba, g.dst_lba, g.dc) for g in segs]
    assert [c.designator for c in lst.cscds] == [d for d, _ in cscds]


def test_extended_copy_list_golden() -> None:
    """The list libiscsi's ExtendedCopy tests send, byte for byte: one E4h CSCD naming
    an NAA designator, one 02h segment of 2048 blocks, list id 1, HOLD."""
    naa = 0x6001405DEADBEEF1
    lst = LX.block_copy_list(1, [LX.naa_designation(naa)], [512],
                             [LX.BlockToBlockSegment(src_id=0, dst_id=0, blocks=2048,
                                                     src_lba=0, dst_lba=4096)])
    assert lst.pack() == bytes.fromhex(
        "0100" "0020" "00000000" "0000001c" "00000000"
        "e4000000" "01030008" "6001405deadbeef1" + "00" * 12 + "00" "000200"
        "0200" "0018" "0000" "0000" "0000" "0800" "0000000000000000" "0000000000001000")
    with pytest.raises(ValueError):
        LX.ExtendedCopyList.unpack(bytes.fromhex("01000020" + "00" * 12 + "e5" + "00" * 31))


def test_copy_and_pr_cdb_builders() -> None:
    from scsi_target.initiator import cdb as client_cdb
    assert LCDB.extended_copy(0x4C) == bytes.fromhex("83" "00" + "00" * 8 + "0000004c" "00" "00")
    assert LCDB.receive_copy_results(LCDB.RCR_OPERATING_PARAMETERS, 0, 1024) == \
        bytes.fromhex("84" "03" "00" + "00" * 7 + "00000400" "00" "00")
    assert LCDB.receive_copy_results(LCDB.RCR_COPY_STATUS, 7, 12)[1:3] == b"\x00\x07"
    assert LCDB.pr_out(LCDB.PROUT_RESERVE, 3) == bytes.fromhex("5f" "01" "03" "0000" "00000018" "00")
    assert LCDB.pr_in(LCDB.PRIN_READ_FULL_STATUS, 8192) == bytes.fromhex("5e03" + "00" * 5 + "2000" "00")
    # The initiator side re-exports the same builders and decoders.
    assert client_cdb.extended_copy is LCDB.extended_copy
    assert client_cdb.CopyStatus is LX.CopyStatus and client_cdb.PrReadFullStatus is LP.PrReadFullStatus
