"""PDU header codec and framing: round trips, golden bytes, digests, bad input."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from scsi_target.protocol import pdu as P
from scsi_target.protocol.framing import (FramingError, PduReader, UnknownOpcode, digest_bytes,
                                       encode_pdu)

U32 = st.integers(0, 0xFFFFFFFF)


def _strategy_for(cls):
    kw = {}
    for name, off, kind in cls.SPEC:
        if isinstance(kind, tuple):
            if kind[0] == "bit":
                kw[name] = st.booleans()
            else:
                mask, shift = kind[1], kind[2]
                kw[name] = st.integers(0, mask >> shift)
        elif kind == "B":
            kw[name] = st.integers(0, 0xFF)
        elif kind == "H":
            kw[name] = st.integers(0, 0xFFFF)
        elif kind == "I":
            kw[name] = U32
        elif kind == "Q":
            kw[name] = st.integers(0, (1 << 64) - 1)
        else:
            size = int(kind[:-1])
            kw[name] = st.binary(min_size=size, max_size=size)
    kw["immediate"] = st.booleans()
    return st.builds(cls, **kw)


ALL_TYPES = [P.pdu_class(op) for op in P.Op]


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_header_round_trip(cls, data):
    pdu = data.draw(_strategy_for(cls))
    payload = data.draw(st.binary(max_size=64))
    pdu.data = payload
    bhs = pdu.encode_bhs()
    assert len(bhs) == 48
    back = P.decode_bhs(bhs, b"", payload)
    assert back == pdu


@settings(max_examples=100, deadline=None)
@given(payload=st.binary(max_size=300), hd=st.booleans(), dd=st.booleans(),
       chunk=st.integers(1, 97))
def test_framing_round_trip_any_chunking(payload, hd, dd, chunk):
    pdu = P.NopOut(itt=7, cmdsn=9, expstatsn=3, data=payload)
    wire = b"".join(bytes(b) for b in encode_pdu(pdu, hd, dd))
    assert len(wire) % 4 == 0
    reader = PduReader(max_data=1024)
    reader.header_digest, reader.data_digest = hd, dd
    got = []
    for i in range(0, len(wire), chunk):
        reader.feed(wire[i:i + chunk])
        while (p := reader.next_pdu()) is not None:
            got.append(p)
    assert len(got) == 1
    assert bytes(got[0].data) == payload and got[0].itt == 7 and got[0].cmdsn == 9


def test_golden_scsi_command_header():
    cmd = P.ScsiCommand(final=True, read=True, attr=1, lun=0x0001000000000000, itt=0x11223344,
                        edtl=4096, cmdsn=5, expstatsn=6,
                        cdb=bytes([0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0]) + bytes(6))
    expected = bytes.fromhex(
        "01c10000" "00000000" "0001000000000000" "11223344" "00001000" "00000005" "00000006"
        "28000000000800000800000000000000")
    assert bytes(cmd.encode_bhs()) == expected


def test_golden_data_in_with_status():
    din = P.DataIn(final=True, has_status=True, underflow=True, status=0, itt=1, ttt=0xFFFFFFFF,
                   statsn=2, expcmdsn=3, maxcmdsn=4, datasn=5, offset=512, residual=10,
                   data=b"x" * 5)
    bhs = bytes(din.encode_bhs())
    assert bhs[0] == 0x25 and bhs[1] == 0x83 and bhs[5:8] == b"\x00\x00\x05"
    assert bhs[40:44] == (512).to_bytes(4, "big") and bhs[44:48] == (10).to_bytes(4, "big")


def test_crc32c_rfc7143_vectors():
    # RFC 7143 appendix B.4: the digest bytes as they appear on the wire.
    assert digest_bytes(bytes(32)).hex() == "aa36918a"
    assert digest_bytes(b"\xff" * 32).hex() == "43aba862"
    assert digest_bytes(bytes(range(32))).hex() == "4e79dd46"
    assert digest_bytes(bytes(range(31, -1, -1))).hex() == "5cdb3f11"


def test_padding_is_zero_and_counted():
    parts = encode_pdu(P.NopOut(data=b"abcde"))
    wire = b"".join(bytes(p) for p in parts)
    assert len(wire) == 48 + 8 and wire[-3:] == b"\x00\x00\x00"


def test_header_digest_mismatch_is_fatal():
    wire = bytearray(b"".join(bytes(p) for p in encode_pdu(P.NopOut(itt=1), True, False)))
    wire[49] ^= 0xFF
    reader = PduReader()
    reader.header_digest = True
    reader.feed(wire)
    with pytest.raises(FramingError) as exc:
        reader.next_pdu()
    assert exc.value.reject_reason is None


def test_data_digest_mismatch_gives_reject_reason():
    wire = bytearray(b"".join(bytes(p) for p in encode_pdu(P.NopOut(itt=1, data=b"ping"),
                                                              False, True)))
    wire[-1] ^= 0x01
    reader = PduReader()
    reader.data_digest = True
    reader.feed(wire)
    with pytest.raises(FramingError) as exc:
        reader.next_pdu()
    assert exc.value.reject_reason == P.RejectReason.DATA_DIGEST_ERROR


def test_oversized_data_segment_refused_before_buffering():
    pdu = P.NopOut(itt=1, data=b"x" * 16)
    bhs = bytearray(pdu.encode_bhs())
    bhs[5:8] = (1 << 23).to_bytes(3, "big")  # claims 8 MiB
    reader = PduReader(max_data=8192)
    reader.feed(bytes(bhs))
    with pytest.raises(FramingError):
        reader.next_pdu()


def test_unknown_opcode_is_reported_with_its_header():
    bhs = bytearray(48)
    bhs[0] = 0x1C
    reader = PduReader()
    reader.feed(bytes(bhs))
    with pytest.raises(UnknownOpcode) as exc:
        reader.next_pdu()
    assert exc.value.bhs[0] == 0x1C


def test_truncated_header_waits_for_more():
    reader = PduReader()
    reader.feed(bytes(47))
    assert reader.next_pdu() is None


@settings(max_examples=300, deadline=None)
@given(junk=st.binary(min_size=0, max_size=400))
def test_fuzz_reader_never_crashes(junk):
    reader = PduReader(max_data=256)
    reader.feed(junk)
    for _ in range(20):
        try:
            if reader.next_pdu() is None:
                break
        except (FramingError, UnknownOpcode):
            continue
