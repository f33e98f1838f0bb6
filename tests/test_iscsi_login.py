"""Whole logins PDU by PDU against LoginMachine (RFC 7143 6.3, 11.12/11.13, 12)."""
import hashlib

import pytest

from scsi_target.protocol import params as K
from scsi_target.target.login import LOGIN_CHUNK, LoginMachine, Status
from scsi_target.protocol.pdu import LoginRequest, LoginResponse, NopOut
from scsi_target.scsi.lun import LunMap
from scsi_target.target.registry import Chap, Portal, TargetDef, TargetRegistry

INI = "iqn.2024-01.org.example:host1"
TGT = "iqn.2024-01.org.example:disk1"
ISID = bytes.fromhex("400001370000")
OP_KEYS = [("HeaderDigest", "None,CRC32C"), ("DataDigest", "None"), ("InitialR2T", "No"),
           ("ImmediateData", "Yes"), ("MaxBurstLength", "262144"),
           ("FirstBurstLength", "262144"), ("DefaultTime2Wait", "2"),
           ("DefaultTime2Retain", "0"), ("MaxOutstandingR2T", "1"),
           ("ErrorRecoveryLevel", "0"), ("IFMarker", "No"), ("OFMarker", "No"),
           ("MaxConnections", "1"), ("MaxRecvDataSegmentLength", "65536"),
           ("DataPDUInOrder", "Yes"), ("DataSequenceInOrder", "Yes")]


def registry(**target_kw) -> TargetRegistry:
    reg = TargetRegistry(portals=[Portal("127.0.0.1", 3261)])
    reg.add(TargetDef(name=TGT, luns=LunMap(TGT), alias="disk one", **target_kw))
    return reg


def machine(reg=None, **kw) -> LoginMachine:
    return LoginMachine(reg or registry(), 1, Portal("127.0.0.1", 3261),
                        max_recv_dsl=131072, initial_statsn=1000, **kw)


def req(pairs=(), *, csg=1, nsg=3, t=True, c=False, tsih=0, cid=0, itt=7, cmdsn=55,
        data=None, **kw) -> LoginRequest:
    return LoginRequest(transit=t, cont=c, csg=csg, nsg=nsg if t else 0, isid=ISID, tsih=tsih,
                        itt=itt, cid=cid, cmdsn=cmdsn, expstatsn=0, immediate=True,
                        data=K.encode_text(pairs) if data is None else data, **kw)


def keys(resp: LoginResponse) -> dict[str, str]:
    return K.unique(K.decode_text(resp.data))


def status(resp: LoginResponse) -> int:
    return resp.status_class << 8 | resp.status_detail


def names(session="Normal", target=TGT):
    out = [("InitiatorName", INI), ("SessionType", session)]
    if target:
        out.insert(1, ("TargetName", target))
    return out


def md5(ident, secret, challenge):
    return hashlib.md5(bytes([ident]) + secret.encode() + challenge).digest()


# ---------------------------------------------------------------- no auth
def test_operational_only_login_no_auth():
    m = machine()
    r = m.receive(req(names() + OP_KEYS))
    assert status(r) == 0 and r.transit and (r.csg, r.nsg) == (1, 3)
    assert (r.itt, r.isid, r.tsih, r.statsn, r.expcmdsn) == (7, ISID, 0, 1000, 55)
    assert (r.version_max, r.version_active) == (0, 0)
    k = keys(r)
    assert k["TargetPortalGroupTag"] == "1" and k["TargetAlias"] == "disk one"
    assert k["HeaderDigest"] == "None" and k["DataDigest"] == "None"
    assert k["InitialR2T"] == "No" and k["ImmediateData"] == "Yes"
    assert k["MaxBurstLength"] == "262144" and k["FirstBurstLength"] == "262144"
    assert k["DefaultTime2Retain"] == "0" and k["MaxConnections"] == "1"
    assert k["ErrorRecoveryLevel"] == "0" and k["IFMarker"] == "No"
    assert k["MaxRecvDataSegmentLength"] == "131072"
    assert "InitiatorName" not in k and "SessionType" not in k
    assert m.done and not m.failed
    res = m.result
    assert res.session_type == "Normal" and not res.discovery
    assert res.initiator_name == INI and res.isid == ISID and res.target.name == TGT
    assert res.statsn == 1001 and res.exp_cmdsn == 55 and res.tsih == 0
    p = res.params
    assert p.max_xmit_data_segment_length == 65536 and p.max_recv_data_segment_length == 131072
    assert p.header_digest is False and p.initial_r2t is False and p.immediate_data is True


def test_crc32c_digests_negotiated():
    m = machine()
    ops = [("HeaderDigest", "CRC32C,None"), ("DataDigest", "CRC32C")]
    r = m.receive(req(names() + ops))
    assert keys(r)["HeaderDigest"] == "CRC32C" and keys(r)["DataDigest"] == "CRC32C"
    assert m.result.params.header_digest and m.result.params.data_digest


def test_security_stage_with_auth_none_then_operational():
    m = machine()
    r = m.receive(req(names() + [("AuthMethod", "None")], csg=0, nsg=1))
    assert status(r) == 0 and r.transit and (r.csg, r.nsg) == (0, 1)
    assert keys(r)["AuthMethod"] == "None" and "TargetPortalGroupTag" in keys(r)
    assert not m.done
    r2 = m.receive(req(OP_KEYS))
    assert status(r2) == 0 and r2.transit and (r2.csg, r2.nsg) == (1, 3)
    assert r2.statsn == r.statsn + 1
    assert keys(r2)["MaxRecvDataSegmentLength"] == "131072"
    assert m.done and m.result.statsn == r2.statsn + 1


def test_security_straight_to_full_feature():
    m = machine()
    r = m.receive(req(names() + [("AuthMethod", "None")], csg=0, nsg=3))
    assert r.transit and (r.csg, r.nsg) == (0, 3) and m.done
    assert keys(r)["MaxRecvDataSegmentLength"] == "131072"


def test_initiator_chap_offer_when_target_needs_none():
    m = machine()
    r = m.receive(req(names() + [("AuthMethod", "CHAP,None")], csg=0, nsg=1))
    assert keys(r)["AuthMethod"] == "None" and r.transit


def test_operational_stage_without_transit_waits():
    m = machine()
    r = m.receive(req(names() + OP_KEYS[:3], t=False))
    assert status(r) == 0 and not r.transit and r.csg == 1 and not m.done
    r = m.receive(req(OP_KEYS[3:]))
    assert m.done and keys(r)["ImmediateData"] == "Yes"


# ---------------------------------------------------------------- CHAP
def chap_login(m, secret="initiator-secret", user="alice", mutual=None):
    """Drive the libiscsi-style CHAP sequence; returns the list of responses."""
    out = [m.receive(req(names() + [("AuthMethod", "CHAP,None")], csg=0, nsg=1))]
    if m.failed:
        return out
    assert keys(out[0])["AuthMethod"] == "CHAP" and not out[0].transit
    out.append(m.receive(req([("CHAP_A", "5")], csg=0, nsg=1, t=False)))
    if m.failed:
        return out
    k = keys(out[-1])
    assert k["CHAP_A"] == "5" and not out[-1].transit
    ident = int(k["CHAP_I"])
    challenge = bytes.fromhex(k["CHAP_C"][2:])
    pairs = [("CHAP_N", user), ("CHAP_R", "0x" + md5(ident, secret, challenge).hex())]
    if mutual:
        pairs += [("CHAP_I", str(mutual[0])), ("CHAP_C", "0x" + mutual[1].hex())]
    out.append(m.receive(req(pairs, csg=0, nsg=1)))
    if m.failed:
        return out
    out.append(m.receive(req(OP_KEYS)))
    return out


def test_one_way_chap():
    m = machine(registry(chap=Chap("alice", "initiator-secret")))
    rs = chap_login(m)
    assert [status(r) for r in rs] == [0, 0, 0, 0]
    assert rs[2].transit and (rs[2].csg, rs[2].nsg) == (0, 1)
    assert "CHAP_N" not in keys(rs[2])
    assert m.done and m.result.auth_method == "CHAP"
    assert [r.statsn for r in rs] == [1000, 1001, 1002, 1003]


def test_chap_challenge_differs_per_login():
    reg = registry(chap=Chap("alice", "initiator-secret"))
    cs = []
    for _ in range(2):
        m = machine(reg)
        m.receive(req(names() + [("AuthMethod", "CHAP")], csg=0, nsg=1))
        cs.append(keys(m.receive(req([("CHAP_A", "7,5")], csg=0, nsg=1, t=False)))["CHAP_C"])
    assert cs[0] != cs[1]


def test_mutual_chap():
    m = machine(registry(chap=Chap("alice", "initiator-secret"),
                         mutual_chap=Chap("target-user", "target-secret")))
    their = bytes(range(50, 82))
    rs = chap_login(m, mutual=(9, their))
    assert [status(r) for r in rs] == [0, 0, 0, 0]
    k = keys(rs[2])
    assert k["CHAP_N"] == "target-user"
    assert k["CHAP_R"] == "0x" + md5(9, "target-secret", their).hex()
    assert m.done


def test_mutual_chap_without_target_secret_fails():
    m = machine(registry(chap=Chap("alice", "initiator-secret")))
    rs = chap_login(m, mutual=(9, bytes(16)))
    assert status(rs[-1]) == Status.AUTH_FAILURE and m.failed


def test_mutual_chap_reflected_challenge_refused():
    m = machine(registry(chap=Chap("alice", "initiator-secret"),
                         mutual_chap=Chap("target-user", "target-secret")))
    m.receive(req(names() + [("AuthMethod", "CHAP")], csg=0, nsg=1))
    k = keys(m.receive(req([("CHAP_A", "5")], csg=0, nsg=1, t=False)))
    ident, challenge = int(k["CHAP_I"]), bytes.fromhex(k["CHAP_C"][2:])
    r = m.receive(req([("CHAP_N", "alice"),
                       ("CHAP_R", "0x" + md5(ident, "initiator-secret", challenge).hex()),
                       ("CHAP_I", str(ident)), ("CHAP_C", k["CHAP_C"])], csg=0, nsg=1))
    assert status(r) == Status.AUTH_FAILURE and m.failed


@pytest.mark.parametrize("secret,user", [("wrong-secret", "alice"), ("initiator-secret", "bob")])
def test_chap_wrong_credentials(secret, user):
    m = machine(registry(chap=Chap("alice", "initiator-secret")))
    rs = chap_login(m, secret=secret, user=user)
    r = rs[-1]
    assert status(r) == Status.AUTH_FAILURE and r.status_class == 2
    assert m.failed and not m.done and r.data == b"" and not r.transit


def test_chap_required_but_initiator_skips_security():
    m = machine(registry(chap=Chap("alice", "initiator-secret")))
    r = m.receive(req(names() + OP_KEYS))
    assert status(r) == Status.AUTH_FAILURE and m.failed


def test_chap_required_but_only_none_offered():
    m = machine(registry(chap=Chap("alice", "initiator-secret")))
    r = m.receive(req(names() + [("AuthMethod", "None")], csg=0, nsg=1))
    assert status(r) == Status.AUTH_FAILURE


def test_chap_required_transit_without_authmethod():
    m = machine(registry(chap=Chap("alice", "initiator-secret")))
    r = m.receive(req(names(), csg=0, nsg=1))
    assert status(r) == Status.AUTH_FAILURE


def test_chap_unsupported_algorithm():
    m = machine(registry(chap=Chap("alice", "initiator-secret")))
    m.receive(req(names() + [("AuthMethod", "CHAP")], csg=0, nsg=1))
    r = m.receive(req([("CHAP_A", "6,7")], csg=0, nsg=1, t=False))
    assert status(r) == Status.AUTH_FAILURE


def test_chap_response_before_challenge():
    m = machine(registry(chap=Chap("alice", "initiator-secret")))
    m.receive(req(names() + [("AuthMethod", "CHAP")], csg=0, nsg=1))
    r = m.receive(req([("CHAP_N", "alice"), ("CHAP_R", "0x00")], csg=0, nsg=1))
    assert status(r) == Status.AUTH_FAILURE


def test_authmethod_and_chap_a_in_one_pdu():
    m = machine(registry(chap=Chap("alice", "initiator-secret")))
    r = m.receive(req(names() + [("AuthMethod", "CHAP"), ("CHAP_A", "5")], csg=0, nsg=1))
    k = keys(r)
    assert k["AuthMethod"] == "CHAP" and k["CHAP_A"] == "5" and "CHAP_C" in k


def test_transit_attempt_during_chap_is_held_back():
    m = machine(registry(chap=Chap("alice", "initiator-secret")))
    m.receive(req(names() + [("AuthMethod", "CHAP")], csg=0, nsg=1))
    r = m.receive(req([("CHAP_A", "5")], csg=0, nsg=1, t=True))
    assert status(r) == 0 and not r.transit and r.csg == 0


# ---------------------------------------------------------------- refusals
def test_unknown_target():
    m = machine()
    r = m.receive(req(names(target="iqn.2024-01.org.example:nope") + OP_KEYS))
    assert status(r) == Status.NOT_FOUND and m.failed and r.data == b""


def test_acl_refusal():
    m = machine(registry(allowed_initiators=frozenset({"iqn.2024-01.org.example:other"})))
    r = m.receive(req(names() + OP_KEYS))
    assert status(r) == Status.FORBIDDEN and m.failed


def test_acl_admits_listed_initiator():
    m = machine(registry(allowed_initiators=frozenset({INI})))
    m.receive(req(names() + OP_KEYS))
    assert m.done


@pytest.mark.parametrize("pairs,code", [
    ([("TargetName", TGT)], Status.MISSING_PARAMETER),
    ([("InitiatorName", INI)], Status.MISSING_PARAMETER),
    ([("InitiatorName", INI), ("SessionType", "Weird")], Status.SESSION_TYPE_UNSUPPORTED),
    ([("InitiatorName", INI), ("TargetName", TGT), ("InitiatorName", INI)],
     Status.INITIATOR_ERROR),
])
def test_missing_or_bad_identity(pairs, code):
    m = machine()
    assert status(m.receive(req(pairs))) == code


def test_malformed_text_is_initiator_error():
    m = machine()
    r = m.receive(req(data=b"InitiatorName=" + INI.encode() + b"\x00garbage\x00"))
    assert status(r) == Status.INITIATOR_ERROR


def test_unsupported_version():
    m = machine()
    r = m.receive(req(names(), version_min=1, version_max=2))
    assert status(r) == Status.UNSUPPORTED_VERSION and (r.version_max, r.version_active) == (0, 0)


def test_add_connection_refused():
    m = machine()
    r = m.receive(req(names() + OP_KEYS, tsih=5, cid=1))
    assert status(r) == Status.TOO_MANY_CONNECTIONS
    m = machine(tsih_exists=lambda tsih: False)
    r = m.receive(req(names() + OP_KEYS, tsih=5, cid=1))
    assert status(r) == Status.SESSION_DOES_NOT_EXIST


def test_reinstatement_is_reported_not_refused():
    reg = registry()
    results = []
    for _ in range(2):
        m = machine(reg)
        m.receive(req(names() + OP_KEYS))
        results.append(m.result)
    assert results[0].isid == results[1].isid == ISID
    assert results[0].initiator_name == results[1].initiator_name == INI
    assert results[1].tsih == 0


# ---------------------------------------------------------------- stages
@pytest.mark.parametrize("kw", [
    dict(csg=1, nsg=1, t=True),      # no transition to the same stage
    dict(csg=1, nsg=0, t=True),      # backwards
    dict(csg=0, nsg=2, t=True),      # reserved stage
    dict(csg=2, nsg=3, t=True),      # reserved current stage
    dict(csg=3, nsg=3, t=True),      # starting in full feature phase
    dict(csg=1, nsg=3, t=True, c=True),   # T and C together
])
def test_bad_stage_transitions(kw):
    m = machine()
    r = m.receive(req(names() + [("AuthMethod", "None")] * (kw["csg"] == 0), **kw))
    assert status(r) == Status.INITIATOR_ERROR and m.failed


def test_csg_must_follow_the_login():
    m = machine()
    m.receive(req(names() + [("AuthMethod", "None")], csg=0, nsg=1, t=False))
    r = m.receive(req(OP_KEYS, csg=1, nsg=3))      # never transited to stage 1
    assert status(r) == Status.INITIATOR_ERROR


def test_isid_change_during_login():
    m = machine()
    m.receive(req(names(), t=False))
    bad = req(OP_KEYS)
    bad.isid = bytes(6)
    assert status(m.receive(bad)) == Status.INITIATOR_ERROR


def test_security_keys_in_operational_stage():
    m = machine()
    r = m.receive(req(names() + [("AuthMethod", "None")]))
    assert status(r) == Status.INITIATOR_ERROR


def test_renegotiating_a_key_fails_login():
    m = machine()
    m.receive(req(names() + [("MaxBurstLength", "65536")], t=False))
    r = m.receive(req([("MaxBurstLength", "65536")]))
    assert status(r) == Status.INITIATOR_ERROR


def test_identical_name_repeat_is_tolerated_but_change_is_not():
    m = machine()
    m.receive(req(names() + [("AuthMethod", "None")], csg=0, nsg=1))
    r = m.receive(req([("InitiatorName", INI)] + OP_KEYS))
    assert status(r) == 0 and m.done
    m = machine()
    m.receive(req(names() + [("AuthMethod", "None")], csg=0, nsg=1))
    r = m.receive(req([("InitiatorName", "iqn.x:y")] + OP_KEYS))
    assert status(r) == Status.INITIATOR_ERROR


def test_endless_login_is_cut_off():
    m = machine()
    m.receive(req(names(), t=False))
    for _ in range(100):
        r = m.receive(req([], t=False))
        if m.failed:
            break
    assert m.failed and status(r) == Status.INITIATOR_ERROR


def test_after_failure_everything_fails():
    m = machine()
    m.receive(req(names(target="iqn.x:none")))
    r = m.receive(req(names() + OP_KEYS))
    assert status(r) == Status.INVALID_DURING_LOGIN


def test_non_login_pdu_during_login():
    m = machine()
    m.receive(req(names(), t=False))
    r = m.invalid_request(NopOut(itt=99))
    assert status(r) == Status.INVALID_DURING_LOGIN and r.itt == 99 and m.failed


def test_unknown_keys_answered_not_understood():
    m = machine()
    r = m.receive(req(names() + [("X-com.example.Thing", "1"), ("Whatever", "2")]))
    k = keys(r)
    assert k["X-com.example.Thing"] == "NotUnderstood" and k["Whatever"] == "NotUnderstood"
    assert m.done


# ---------------------------------------------------------------- C bit
def test_multi_pdu_request_with_continue_bit():
    m = machine()
    text = K.encode_text(names() + OP_KEYS)
    parts = [text[:10], text[10:100], text[100:]]   # splits inside key=value pairs
    r1 = m.receive(req(data=parts[0], t=False, c=True))
    assert status(r1) == 0 and r1.data == b"" and not r1.transit and not r1.cont
    r2 = m.receive(req(data=parts[1], t=False, c=True))
    assert r2.data == b"" and not m.done
    r3 = m.receive(req(data=parts[2]))
    assert m.done and keys(r3)["MaxBurstLength"] == "262144"
    assert [r1.statsn, r2.statsn, r3.statsn] == [1000, 1001, 1002]


def test_multi_pdu_response_with_continue_bit():
    m = machine()
    # Many unknown keys make our answer longer than one login PDU may carry.
    many = [(f"X-com.example.k{i:04d}", "v") for i in range(600)]
    r = m.receive(req(names() + many + OP_KEYS))
    got = bytearray()
    pdus = 0
    while True:
        pdus += 1
        assert status(r) == 0 and len(r.data) <= LOGIN_CHUNK
        got += r.data
        if not r.cont:
            break
        assert not r.transit and not m.done
        r = m.receive(req([]))           # the initiator's empty acknowledgement
    assert pdus >= 2 and r.transit and m.done
    k = K.unique(K.decode_text(bytes(got)))
    assert k["X-com.example.k0599"] == "NotUnderstood" and k["MaxBurstLength"] == "262144"


def test_text_during_our_continuation_is_error():
    m = machine()
    many = [(f"X-com.example.k{i:04d}", "v") for i in range(600)]
    r = m.receive(req(names() + many))
    assert r.cont
    r = m.receive(req([("MaxBurstLength", "512")]))
    assert status(r) == Status.INITIATOR_ERROR


def test_oversized_login_text():
    m = machine()
    chunk = b"X-a=" + b"b" * 200 + b"\x00"
    for _ in range(400):
        r = m.receive(req(data=chunk * 40, t=False, c=True))
        if m.failed:
            break
    assert m.failed and status(r) == Status.OUT_OF_RESOURCES


# ---------------------------------------------------------------- discovery
def test_discovery_session_no_target_name():
    m = machine()
    ops = [("HeaderDigest", "None"), ("MaxBurstLength", "262144"),
           ("MaxRecvDataSegmentLength", "32768")]
    r = m.receive(req(names("Discovery", target=None) + ops))
    k = keys(r)
    assert status(r) == 0 and m.done
    assert k["MaxBurstLength"] == "Irrelevant" and k["HeaderDigest"] == "None"
    assert "TargetPortalGroupTag" not in k
    res = m.result
    assert res.discovery and res.target is None
    assert res.params.max_xmit_data_segment_length == 32768


def test_discovery_with_chap():
    reg = registry()
    reg.discovery_chap = Chap("disc", "discovery-secret")
    m = machine(reg)
    r = m.receive(req(names("Discovery", target=None) + [("AuthMethod", "CHAP,None")],
                      csg=0, nsg=1))
    assert keys(r)["AuthMethod"] == "CHAP"
    k = keys(m.receive(req([("CHAP_A", "5")], csg=0, nsg=1, t=False)))
    ident, challenge = int(k["CHAP_I"]), bytes.fromhex(k["CHAP_C"][2:])
    r = m.receive(req([("CHAP_N", "disc"),
                       ("CHAP_R", "0x" + md5(ident, "discovery-secret", challenge).hex())],
                      csg=0, nsg=3))
    assert status(r) == 0 and r.transit and m.done and m.result.discovery
    m = machine(reg)
    r = m.receive(req(names("Discovery", target=None)))
    assert status(r) == Status.AUTH_FAILURE
