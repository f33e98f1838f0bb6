"""Full-feature-phase Text Requests: SendTargets, continuation, MaxRecvDataSegmentLength."""
import pytest

from scsi_target.protocol import params as K
from scsi_target.protocol.pdu import RESERVED_TAG, RejectReason, TextRequest
from scsi_target.target.text import TextNegotiator, TextProtocolError
from scsi_target.scsi.lun import LunMap
from scsi_target.target.registry import Portal, TargetDef, TargetRegistry

INI = "iqn.2024-01.org.example:host1"


def registry(n=3, portals=(Portal("127.0.0.1", 3261), Portal("::1", 3262))):
    reg = TargetRegistry(portals=list(portals))
    for i in range(n):
        name = f"iqn.2024-01.org.example:t{i}"
        acl = frozenset({"iqn.2024-01.org.example:other"}) if i == 1 else None
        reg.add(TargetDef(name=name, luns=LunMap(name), allowed_initiators=acl,
                          portal_group_tag=1 + i % 2))
    return reg


def req(pairs=(), *, itt=5, ttt=RESERVED_TAG, final=True, cont=False, data=None):
    return TextRequest(final=final, cont=cont, itt=itt, ttt=ttt, cmdsn=1, expstatsn=1,
                       data=K.encode_text(pairs) if data is None else data)


def pairs(resp):
    return K.decode_text(resp.data)


def test_sendtargets_all_in_discovery():
    reg = registry()
    t = TextNegotiator(K.SessionParams(), reg, None, INI)
    r = t.receive(req([("SendTargets", "All")]))
    assert r.final and not r.cont and r.ttt == RESERVED_TAG and r.itt == 5
    assert pairs(r) == [
        ("TargetName", "iqn.2024-01.org.example:t0"),
        ("TargetAddress", "127.0.0.1:3261,1"), ("TargetAddress", "[::1]:3262,1"),
        # t1 is hidden by its ACL
        ("TargetName", "iqn.2024-01.org.example:t2"),
        ("TargetAddress", "127.0.0.1:3261,1"), ("TargetAddress", "[::1]:3262,1"),
    ]
    assert r.data.endswith(b"\x00")


def test_sendtargets_all_without_initiator_name_lists_everything():
    t = TextNegotiator(K.SessionParams(), registry(), None)
    names = [v for k, v in pairs(t.receive(req([("SendTargets", "All")]))) if k == "TargetName"]
    assert len(names) == 3


def test_sendtargets_named_target():
    t = TextNegotiator(K.SessionParams(), registry(), None, INI)
    r = t.receive(req([("SendTargets", "iqn.2024-01.org.example:t2")]))
    assert pairs(r)[0] == ("TargetName", "iqn.2024-01.org.example:t2")
    assert t.receive(req([("SendTargets", "iqn.2024-01.org.example:t1")])).data == b""
    assert t.receive(req([("SendTargets", "iqn.none:x")])).data == b""


def test_sendtargets_in_normal_session():
    reg = registry()
    tgt = reg.get("iqn.2024-01.org.example:t0")
    t = TextNegotiator(K.SessionParams(), reg, tgt, INI)
    got = pairs(t.receive(req([("SendTargets", "")])))
    assert got[0] == ("TargetName", tgt.name) and len(got) == 3
    assert pairs(t.receive(req([("SendTargets", "All")]))) == [("SendTargets", "Reject")]
    assert t.receive(req([("SendTargets", "iqn.2024-01.org.example:t2")])).data == b""


def test_long_response_split_with_continue_and_ttt():
    reg = registry(n=60)
    p = K.SessionParams(max_xmit_data_segment_length=512)
    t = TextNegotiator(p, reg, None, None)
    r = t.receive(req([("SendTargets", "All")], itt=9))
    assert r.cont and not r.final and r.ttt != RESERVED_TAG and len(r.data) == 512
    ttt = r.ttt
    got = bytearray(r.data)
    n = 1
    while r.cont:
        r = t.receive(req(itt=9, ttt=ttt))
        assert len(r.data) <= 512 and r.itt == 9
        got += r.data
        n += 1
    assert r.final and r.ttt == RESERVED_TAG and n > 2
    names = [v for k, v in K.decode_text(bytes(got)) if k == "TargetName"]
    assert len(names) == 60


def test_unknown_ttt_is_protocol_error():
    t = TextNegotiator(K.SessionParams(), registry(), None)
    with pytest.raises(TextProtocolError) as e:
        t.receive(req([("SendTargets", "All")], ttt=1234))
    assert e.value.reason == RejectReason.INVALID_PDU_FIELD


def test_new_request_abandons_unfinished_response():
    t = TextNegotiator(K.SessionParams(max_xmit_data_segment_length=512),
                       registry(n=60), None)
    r = t.receive(req([("SendTargets", "All")]))
    assert r.cont
    r2 = t.receive(req([("X-foo", "1")], itt=6))
    assert r2.final and pairs(r2) == [("X-foo", "NotUnderstood")]
    with pytest.raises(TextProtocolError):
        t.receive(req(itt=5, ttt=r.ttt))


def test_multi_pdu_request_with_continue_bit():
    t = TextNegotiator(K.SessionParams(), registry(), None, INI)
    text = K.encode_text([("SendTargets", "iqn.2024-01.org.example:t0")])
    r = t.receive(req(data=text[:7], final=False, cont=True))
    assert r.data == b"" and not r.final and r.ttt != RESERVED_TAG
    r = t.receive(req(data=text[7:], ttt=r.ttt))
    assert r.final and pairs(r)[0] == ("TargetName", "iqn.2024-01.org.example:t0")


def test_max_recv_data_segment_length_renegotiation():
    p = K.SessionParams(max_xmit_data_segment_length=8192)
    t = TextNegotiator(p, registry(), None)
    r = t.receive(req([("MaxRecvDataSegmentLength", "16384")]))
    assert r.final and r.data == b""
    assert t.max_xmit_data_segment_length == 16384 and p.max_xmit_data_segment_length == 16384
    r = t.receive(req([("MaxRecvDataSegmentLength", "12")]))
    assert pairs(r) == [("MaxRecvDataSegmentLength", "Reject")]
    assert t.max_xmit_data_segment_length == 16384


@pytest.mark.parametrize("key,answer", [
    ("MaxBurstLength", "Reject"), ("HeaderDigest", "Reject"), ("TargetAlias", "Reject"),
    ("AuthMethod", "Reject"), ("X-com.example.z", "NotUnderstood"), ("Foo", "NotUnderstood"),
])
def test_other_keys(key, answer):
    t = TextNegotiator(K.SessionParams(), registry(), None)
    assert pairs(t.receive(req([(key, "1")]))) == [(key, answer)]


def test_initiator_alias_needs_no_answer():
    t = TextNegotiator(K.SessionParams(), registry(), None)
    assert t.receive(req([("InitiatorAlias", "box")])).data == b""


def test_malformed_text_is_protocol_error():
    t = TextNegotiator(K.SessionParams(), registry(), None)
    with pytest.raises(TextProtocolError):
        t.receive(req(data=b"nonsense\x00"))
    with pytest.raises(TextProtocolError):
        t.receive(req(data=b"A=1\x00A=2\x00"))


def test_initiator_f0_keeps_exchange_open():
    t = TextNegotiator(K.SessionParams(), registry(), None)
    r = t.receive(req([("X-a", "1")], final=False))
    assert not r.final and r.ttt != RESERVED_TAG
    r = t.receive(req([("X-b", "1")], ttt=r.ttt))
    assert r.final and pairs(r) == [("X-b", "NotUnderstood")]
