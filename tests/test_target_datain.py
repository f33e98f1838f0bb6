"""The Data-In segmenter alone: (command, response) in, PDUs out (no connection, no sockets)."""
from __future__ import annotations

import os

from hypothesis import given, settings, strategies as st

from scsi_target.protocol import pdu as P
from scsi_target.protocol.params import SessionParams
from scsi_target.scsi.command import Response, Status
from scsi_target.target.datain import DataInSegmenter, residual_fields


def _seg(max_xmit: int, max_burst: int) -> DataInSegmenter:
    return DataInSegmenter(SessionParams(max_xmit_data_segment_length=max_xmit,
                                         max_burst_length=max_burst))


def _read(itt=7, lun=0x0001000000000000, edtl=0) -> P.ScsiCommand:
    return P.ScsiCommand(read=True, itt=itt, lun=lun, edtl=edtl)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 1 << 20), seg=st.integers(512, 1 << 18), burst=st.integers(512, 1 << 20),
       residual=st.integers(-(1 << 20), 1 << 20), good=st.booleans())
def test_pdus_cover_the_data_once_in_order_within_the_limits(n, seg, burst, residual, good):
    data = os.urandom(n)
    status = Status.GOOD if good else Status.CHECK_CONDITION
    sense = b"" if good else bytes([0x70, 0, 5]) + bytes(15)
    cmd = _read()
    pdus = _seg(seg, burst).respond(cmd, Response(status, data, sense=sense, residual=residual))
    dins = [p for p in pdus if isinstance(p, P.DataIn)]
    got = bytearray()
    for i, d in enumerate(dins):
        assert d.datasn == i and d.offset == len(got)
        assert 0 < len(d.data) <= seg
        end = d.offset + len(d.data)
        assert d.offset // burst == (end - 1) // burst          # never straddles a burst
        assert d.final == (end == n or end % burst == 0)          # F ends each burst
        assert (d.itt, d.lun, d.ttt) == (cmd.itt, cmd.lun, P.RESERVED_TAG)
        assert d.has_status == (good and i == len(dins) - 1)
        got += d.data
    assert bytes(got) == data
    under, over, count = (residual > 0, residual < 0, abs(residual))
    last = pdus[-1]
    if good:
        assert last is dins[-1] and len(pdus) == len(dins)       # status collapsed
    else:
        assert isinstance(last, P.ScsiResponse) and len(pdus) == len(dins) + 1
        assert last.expdatasn == len(dins) and last.status == int(status)
        assert bytes(last.data) == len(sense).to_bytes(2, "big") + sense
    assert (last.underflow, last.overflow, last.residual) == (under, over, count)


def test_data_of_a_command_without_the_r_bit_is_not_sent():
    cmd = P.ScsiCommand(itt=3, edtl=0)
    (rsp,) = _seg(8192, 65536).respond(cmd, Response(Status.GOOD, b"\x01" * 100), expdatasn=4)
    assert isinstance(rsp, P.ScsiResponse) and rsp.expdatasn == 4 and rsp.data == b""


def test_single_pdu_read_shares_the_buffer():
    buf = bytearray(os.urandom(4096))
    (d,) = _seg(8192, 65536).respond(_read(edtl=4096), Response(Status.GOOD, buf))
    assert d.data is buf and d.final and d.has_status and not (d.underflow or d.overflow)


def test_multi_pdu_read_slices_the_buffer_without_copying():
    buf = bytearray(os.urandom(20000))
    pdus = _seg(8192, 1 << 20).respond(_read(edtl=20000), Response(Status.GOOD, buf))
    assert [len(p.data) for p in pdus] == [8192, 8192, 3616]
    assert all(isinstance(p.data, memoryview) and p.data.obj is buf for p in pdus)


def test_segment_length_follows_the_record_when_it_changes():
    params = SessionParams(max_xmit_data_segment_length=8192, max_burst_length=1 << 20)
    seg = DataInSegmenter(params)
    data = os.urandom(16384)
    assert len(seg.respond(_read(), Response(Status.GOOD, data))) == 2
    params.max_xmit_data_segment_length = 16384          # e.g. renegotiated by a Text request
    assert len(seg.respond(_read(), Response(Status.GOOD, data))) == 1


def test_non_byte_memoryview_is_sent_as_bytes():
    words = memoryview(bytearray(os.urandom(64))).cast("I")
    (d,) = _seg(8192, 65536).respond(_read(edtl=16), Response(Status.GOOD, words))
    assert d.data.format == "B" and len(d.data) == 64


def test_residual_fields():
    assert residual_fields(512) == (True, False, 512)
    assert residual_fields(-4096) == (False, True, 4096)
    assert residual_fields(0) == (False, False, 0)
