"""The initiator's receive protocol (client_rx): framing with in-place Data-In, under any
split of the byte stream into socket reads."""
from __future__ import annotations

import asyncio

from hypothesis import given, settings, strategies as st

from scsi_target.protocol import pdu as P
from scsi_target.initiator.errors import ProtocolViolation
from scsi_target.initiator.rx import RxProtocol
from scsi_target.protocol.framing import encode_pdu


class FakeClient:
    """Places Data-In for ITT 1 into ``buf``; records everything else."""

    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self.pdus: list[tuple[str, bytes, bool]] = []
        self.errors: list[Exception] = []

    def _placement(self, proto, pdu, dlen):
        if pdu.itt != 1 or pdu.offset + dlen > len(self.buf):
            return None
        return memoryview(self.buf)[pdu.offset:pdu.offset + dlen]

    def _dispatch(self, proto, pdu):
        data = pdu.data
        placed = isinstance(data, memoryview) and data.obj is self.buf
        if not placed and type(pdu) is P.DataIn and pdu.itt == 1:
            self.buf[pdu.offset:pdu.offset + len(data)] = data
        self.pdus.append((type(pdu).__name__, bytes(data), placed))

    def _fail(self, err, proto):
        self.errors.append(err)
        proto.lost = True

    def _lost(self, proto, exc):
        pass


def _new(size: int, hd: bool, dd: bool) -> tuple[RxProtocol, FakeClient]:
    client = FakeClient(size)
    proto = RxProtocol(client)
    proto.header_digest, proto.data_digest, proto.max_data = hd, dd, 1 << 20
    return proto, client


def _feed(proto: RxProtocol, wire: bytes, cuts: list[int]) -> None:
    """What asyncio's transport does: recv_into(get_buffer()), then buffer_updated(n)."""
    pos = 0
    cuts = cuts or [len(wire)]
    i = 0
    while pos < len(wire) and not proto.lost:
        view = proto.get_buffer(-1)
        assert len(view) > 0
        n = min(len(view), cuts[i % len(cuts)], len(wire) - pos)
        view[:n] = wire[pos:pos + n]
        del view
        proto.buffer_updated(n)
        pos += n
        i += 1


def _wire(pdus, hd: bool, dd: bool) -> bytes:
    return b"".join(bytes(b) for p in pdus for b in encode_pdu(p, hd, dd))


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.integers(0, 70000), min_size=1, max_size=5),
       cuts=st.lists(st.integers(1, 100000), max_size=6),
       hd=st.booleans(), dd=st.booleans())
def test_stream_any_split_places_data_in(sizes, cuts, hd, dd):
    total = sum(sizes)
    payload = bytes((i * 7 + 3) & 0xFF for i in range(total))
    pdus: list[P.Pdu] = []
    off = 0
    for sn, n in enumerate(sizes):
        pdus.append(P.DataIn(itt=1, datasn=sn, offset=off, data=payload[off:off + n]))
        pdus.append(P.NopIn(itt=7, ttt=P.RESERVED_TAG, data=b"ping"[:sn % 5]))
        off += n
    pdus.append(P.DataIn(itt=9, offset=0, data=b"unplaced"))       # no buffer: via scratch
    pdus.append(P.ScsiResponse(itt=1))
    proto, client = _new(total, hd, dd)
    _feed(proto, _wire(pdus, hd, dd), cuts)
    assert client.errors == []
    assert bytes(client.buf) == payload
    assert [name for name, _, _ in client.pdus] == [type(p).__name__ for p in pdus]
    for (name, data, placed), p in zip(client.pdus, pdus):
        assert data == bytes(p.data)
        assert placed == (name == "DataIn" and p.itt == 1 and len(p.data) > 0)


def test_big_segment_lands_in_place():
    """After the header, a 256 KiB segment is received into the command's buffer itself."""
    n = 256 * 1024
    proto, client = _new(n, False, True)
    wire = _wire([P.DataIn(itt=1, offset=0, data=b"\xab" * n)], False, True)
    view = proto.get_buffer(-1)
    view[:P.BHS_LEN] = wire[:P.BHS_LEN]
    del view
    proto.buffer_updated(P.BHS_LEN)
    hole = proto.get_buffer(-1)
    assert hole.obj is client.buf and len(hole) == n
    del hole
    _feed(proto, wire[P.BHS_LEN:], [])
    assert client.errors == [] and client.pdus[0][2] and client.buf == b"\xab" * n


@given(dlen=st.integers(1, 40000), flip=st.integers(0, 39999), cut=st.integers(1, 50000))
@settings(max_examples=40, deadline=None)
def test_data_digest_mismatch_fails_placed_and_scratch(dlen, flip, cut):
    for itt in (1, 9):
        proto, client = _new(dlen, False, True)
        wire = bytearray(_wire([P.DataIn(itt=itt, offset=0, data=b"\x5a" * dlen)], False, True))
        wire[P.BHS_LEN + flip % dlen] ^= 0x01
        _feed(proto, bytes(wire), [cut])
        assert client.pdus == []
        assert len(client.errors) == 1 and isinstance(client.errors[0], ProtocolViolation)
        assert "data digest" in str(client.errors[0])


def test_header_digest_mismatch_and_oversized_segment():
    proto, client = _new(16, True, False)
    wire = bytearray(_wire([P.NopIn(itt=3)], True, False))
    wire[20] ^= 0xFF
    _feed(proto, bytes(wire), [])
    assert "header digest" in str(client.errors[0])

    proto, client = _new(16, False, False)
    proto.max_data = 100
    _feed(proto, _wire([P.NopIn(itt=3, data=b"x" * 101)], False, False), [])
    assert "exceeds" in str(client.errors[0])


def test_unknown_opcode_is_a_protocol_violation():
    proto, client = _new(16, False, False)
    bhs = bytearray(P.BHS_LEN)
    bhs[0] = 0x3A
    _feed(proto, bytes(bhs), [])
    assert isinstance(client.errors[0], ProtocolViolation) and "unknown PDU" in str(client.errors[0])


def test_flow_control_and_connection_lost():
    async def run():
        lost = []
        client = FakeClient(0)
        client._lost = lambda proto, exc: lost.append(exc)
        proto = RxProtocol(client)
        proto.pause_writing()
        assert not proto._can_write.is_set()
        proto.connection_lost(None)
        assert proto._can_write.is_set() and proto.lost and lost == [None]
        proto.connection_lost(None)                 # reported once
        assert lost == [None]
    asyncio.run(run())
