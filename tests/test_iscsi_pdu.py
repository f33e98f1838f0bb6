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


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_generic_and_compiled_codecs_agree(cls, data):
    # A type's first uses go through the generic codec (the plan interpreted),
    # later ones through the compiled one: the same bytes and PDUs either way,
    # for valid headers and for any 48 bytes with the type's opcode.
    P._codec(cls)
    plan = P._plan(cls)
    pdu = data.draw(_strategy_for(cls))
    pdu.data = data.draw(st.binary(max_size=70))
    pdu.ahs = data.draw(st.sampled_from([b"", bytes(4), bytes(range(8))]))
    assert plan.encode(pdu) == pdu.encode_bhs()
    raw = bytearray(data.draw(st.binary(min_size=48, max_size=48)))
    raw[0] = (raw[0] & 0xC0) | cls.OPCODE
    assert plan.decode(cls, bytes(raw), b"", b"x") == cls.from_bhs(bytes(raw), b"", b"x")
    assert plan.decode(cls, pdu.encode_bhs(), pdu.ahs, pdu.data) == pdu


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


# ---------------------------------------------------------------- RFC 7143 by hand
# Each header below is written from the byte diagram of its RFC 7143 section,
# byte offset by byte offset, without the codec's field table: decoding it must
# give the fields the diagram names, and encoding those fields the same bytes.
def _bhs(parts: dict[int, bytes]) -> bytes:
    out = bytearray(P.BHS_LEN)
    for off, value in parts.items():
        out[off:off + len(value)] = value
    return bytes(out)


def _u(n: int, size: int) -> bytes:
    return n.to_bytes(size, "big")


def _check(raw: bytes, cls, **fields_) -> None:
    pdu = P.decode_bhs(raw)
    assert type(pdu) is cls
    for name, value in fields_.items():
        assert getattr(pdu, name) == value, name
    assert bytes(pdu.encode_bhs()) == raw


def test_rfc7143_11_12_login_request():
    isid = bytes.fromhex("80a1b2c3d4e5")      # type 10b (random), 11.12.5
    raw = _bhs({0: b"\x43",                    # I=1, opcode 0x03
                1: bytes([0x80 | 0x40 | (1 << 2) | 3]),   # T, C, CSG=1, NSG=3
                2: b"\x00", 3: b"\x00", 4: b"\x00", 5: _u(0x1234, 3),
                8: isid, 14: _u(0x0007, 2), 16: _u(0xDEADBEEF, 4), 20: _u(0x0102, 2),
                24: _u(0x01020304, 4), 28: _u(0xA0B0C0D0, 4)})
    pdu = P.decode_bhs(raw)
    assert P.header_lengths(raw) == (0, 0x1234)
    pdu.data = bytes(0x1234)                   # the length byte comes from the data
    assert bytes(pdu.encode_bhs()) == raw
    for name, value in dict(immediate=True, transit=True, cont=True, csg=1, nsg=3, isid=isid,
                            tsih=7, itt=0xDEADBEEF, cid=0x0102, cmdsn=0x01020304,
                            expstatsn=0xA0B0C0D0).items():
        assert getattr(pdu, name) == value, name


def test_rfc7143_11_13_login_response_status():
    raw = _bhs({0: b"\x23", 1: bytes([0x80 | (0 << 2) | 1]), 2: b"\x00", 3: b"\x00",
                8: bytes.fromhex("400001000001"), 14: _u(0, 2), 16: _u(9, 4),
                24: _u(0xFFFFFFFE, 4), 28: _u(3, 4), 32: _u(130, 4),
                36: b"\x02", 37: b"\x01"})     # 11.13.5: 0201 = authentication failure
    _check(raw, P.LoginResponse, transit=True, csg=0, nsg=1, itt=9, statsn=0xFFFFFFFE,
           expcmdsn=3, maxcmdsn=130, status_class=2, status_detail=1)


def test_rfc7143_11_4_scsi_response():
    raw = _bhs({0: b"\x21", 1: bytes([0x80 | 0x10 | 0x02]),   # o (bidi overflow), U
                2: b"\x00", 3: b"\x02",                         # CHECK CONDITION
                16: _u(0x0A0B0C0D, 4), 20: _u(0, 4), 24: _u(77, 4), 28: _u(78, 4),
                32: _u(200, 4), 36: _u(3, 4), 40: _u(5, 4), 44: _u(4096, 4)})
    _check(raw, P.ScsiResponse, final=True, bidi_overflow=True, bidi_underflow=False,
           overflow=False, underflow=True, response=0, status=2, itt=0x0A0B0C0D, statsn=77,
           expcmdsn=78, maxcmdsn=200, expdatasn=3, bidi_residual=5, residual=4096)


def test_rfc7143_11_8_r2t():
    raw = _bhs({0: b"\x31", 1: b"\x80", 8: _u(0x0003000000000000, 8), 16: _u(0x51, 4),
                20: _u(0x7F000001, 4), 24: _u(10, 4), 28: _u(11, 4), 32: _u(42, 4),
                36: _u(2, 4), 40: _u(65536, 4), 44: _u(262144, 4)})
    _check(raw, P.R2T, lun=0x0003000000000000, itt=0x51, ttt=0x7F000001, statsn=10,
           expcmdsn=11, maxcmdsn=42, r2tsn=2, offset=65536, length=262144)


def test_rfc7143_11_5_task_management_request():
    raw = _bhs({0: b"\x42", 1: bytes([0x80 | 5]),             # I, LOGICAL UNIT RESET
                8: _u(0x0001000000000000, 8), 16: _u(0x99, 4), 20: _u(0xFFFFFFFF, 4),
                24: _u(12, 4), 28: _u(13, 4), 32: _u(12, 4), 36: _u(0, 4)})
    _check(raw, P.TaskMgmtRequest, immediate=True, function=P.TmfFunction.LOGICAL_UNIT_RESET,
           lun=0x0001000000000000, itt=0x99, rtt=0xFFFFFFFF, cmdsn=12, expstatsn=13,
           refcmdsn=12)


def test_rfc7143_11_14_and_11_15_logout():
    req = _bhs({0: b"\x46", 1: bytes([0x80 | 1]),              # close the connection
                16: _u(0x1000, 4), 20: _u(0x0002, 2), 24: _u(30, 4), 28: _u(31, 4)})
    _check(req, P.LogoutRequest, immediate=True, reason=1, itt=0x1000, cid=2, cmdsn=30,
           expstatsn=31)
    resp = _bhs({0: b"\x26", 1: b"\x80", 2: b"\x00", 16: _u(0x1000, 4), 24: _u(31, 4),
                 28: _u(31, 4), 32: _u(60, 4), 40: _u(2, 2), 42: _u(20, 2)})
    _check(resp, P.LogoutResponse, response=0, itt=0x1000, statsn=31, expcmdsn=31, maxcmdsn=60,
           time2wait=2, time2retain=20)


def test_rfc7143_11_17_reject_carries_the_header():
    rejected = _bhs({0: b"\x10", 1: b"\x80", 16: _u(0xFFFFFFFF, 4)})   # a SNACK
    raw = _bhs({0: b"\x3f", 1: b"\x80", 2: b"\x05", 5: _u(48, 3),   # COMMAND NOT SUPPORTED
                16: _u(0xFFFFFFFF, 4), 24: _u(5, 4), 28: _u(6, 4), 32: _u(70, 4)})
    pdu = P.decode_bhs(raw, b"", rejected)
    assert (pdu.reason, pdu.itt, pdu.statsn, pdu.expcmdsn, pdu.maxcmdsn) == \
        (P.RejectReason.COMMAND_NOT_SUPPORTED, 0xFFFFFFFF, 5, 6, 70)
    assert bytes(pdu.encode_bhs()) == raw and type(P.decode_bhs(pdu.data)) is P.SnackRequest


def _reference_bhs(pdu) -> bytes:
    """The header built field by field from the SPEC, independently of the generated codec."""
    import struct
    buf = bytearray(48)
    buf[0] = pdu.OPCODE | (0x40 if pdu.immediate else 0)
    for name, off, kind in pdu.SPEC:
        val = getattr(pdu, name)
        if isinstance(kind, tuple):
            if kind[0] == "bit":
                buf[off] |= kind[1] if val else 0
            else:
                buf[off] |= (val << kind[2]) & kind[1]
        else:
            struct.pack_into(">" + kind, buf, off, val)
    buf[4] = len(pdu.ahs) // 4
    buf[5:8] = len(pdu.data).to_bytes(3, "big")
    return bytes(buf)


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_generated_codec_matches_the_spec_field_by_field(cls, data):
    pdu = data.draw(_strategy_for(cls))
    pdu.data = data.draw(st.binary(max_size=64))
    pdu.ahs = bytes(4 * data.draw(st.integers(0, 3)))
    assert pdu.encode_bhs() == _reference_bhs(pdu)
    back = cls.from_bhs(_reference_bhs(pdu), pdu.ahs, pdu.data)
    assert back == pdu
