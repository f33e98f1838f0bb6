"""The iSCSI initiator (scsi_target.initiator.client*).

Three layers of tests:
* pure: URL parsing, the login state machine against scripted responses;
* a scripted fake target (asyncio, in this process) for the protocol corners
  a real target will not produce on demand: R2T/unsolicited Data-Out splitting,
  status collapse, the CmdSN window, target pings, timeouts, connection loss,
  ABORT TASK, Reject;
* real targets from tests/client_targets.py (tgtd; our own server with
  CLIENT_TEST_TARGETS=tgt,ours): discovery, CHAP, digests, data integrity
  around the burst limits, concurrency, NOP, TMF, logout, reconnect.
"""
from __future__ import annotations

import asyncio
import os
import time

import pytest
from hypothesis import given, strategies as st

from client_targets import FACTORIES, TargetInfo, selected
from scsi_target.protocol import pdu as P
from scsi_target.initiator import cdb as cdbs
from scsi_target.initiator.client import DiscoveredTarget, IscsiClient
from scsi_target.initiator.errors import (IscsiRejected, IscsiTimeout, LoginError,
                                             NegotiationError, ScsiCheckCondition, TaskAborted,
                                             TaskManagementError,
                                             TransportError)
from scsi_target.initiator.login import Credentials, InitiatorLogin, LoginOptions
from scsi_target.initiator.sync import SyncIscsiClient
from scsi_target.initiator.url import parse_url
from scsi_target.initiator.errors import UrlError
from scsi_target.protocol.framing import PduReader, encode_pdu
from scsi_target.protocol.params import Negotiation, TargetPolicy, decode_text, encode_text
from scsi_target.protocol import chap
from scsi_target.scsi.sense import SenseKey, SenseError, render_sense, LBA_OUT_OF_RANGE

pytestmark = pytest.mark.timeout(120)


# ====================================================================== URLs
def test_url_full_form():
    u = parse_url("iscsi://alice%s3cret@10.0.0.1:3270/iqn.2026-01.x:t%3Aa/3")
    assert (u.host, u.port, u.target, u.lun) == ("10.0.0.1", 3270, "iqn.2026-01.x:t:a", 3)
    assert (u.user, u.secret, u.mutual) == ("alice", "s3cret", False)


def test_url_defaults_colon_secret_ipv6_and_mutual():
    u = parse_url("iscsi://bob:pw@[::1]/iqn.x:t/0?target_user=tu&target_password=tp"
                  "&header_digest=crc32c&data_digest=none")
    assert (u.host, u.port, u.user, u.secret) == ("::1", 3260, "bob", "pw")
    assert (u.target_user, u.target_secret, u.mutual) == ("tu", "tp", True)
    assert (u.header_digest, u.data_digest) == ("CRC32C", "None")
    assert u.portal == "[::1]:3260"


def test_url_portal_only_for_discovery():
    u = parse_url("iscsi://127.0.0.1:3271", need_target=False)
    assert u.target is None and u.port == 3271
    with pytest.raises(UrlError):
        parse_url("iscsi://127.0.0.1:3271")


@pytest.mark.parametrize("bad", [
    "http://h/iqn/0", "iscsi:///iqn.x/0", "iscsi://h:99999/iqn.x/0", "iscsi://h/iqn.x/",
    "iscsi://h/iqn.x/zz", "iscsi://h/iqn.x", "iscsi://u@h/iqn.x/0",
    "iscsi://h/iqn.x/0?target_user=a&target_password=b",       # mutual without one-way
    "iscsi://u%p@h/iqn.x/0?target_user=a",                      # half a mutual pair
    "iscsi://h/iqn.x/0?header_digest=md5", "iscsi://h/iqn.x/0?bogus=1", "iscsi://::1/iqn.x/0",
])
def test_url_rejects(bad):
    with pytest.raises(UrlError):
        parse_url(bad)


_name = st.text("abcdefghijklmnopqrstuvwxyz0123456789.-", min_size=1, max_size=20)


@given(user=_name, secret=_name, host=st.sampled_from(["h", "10.1.2.3", "[fe80::1]"]),
       port=st.integers(1, 65535), iqn=_name.map(lambda s: "iqn.2026-01.t:" + s),
       lun=st.integers(0, 16383))
def test_url_round_trip(user, secret, host, port, iqn, lun):
    u = parse_url(f"iscsi://{user}%{secret}@{host}:{port}/{iqn}/{lun}")
    assert (u.user, u.secret, u.host, u.port, u.target, u.lun) == \
        (user, secret, host.strip("[]"), port, iqn, lun)


def test_discovered_target_portal_forms():
    d = DiscoveredTarget("iqn.x:t", "[::1]:3270,2")
    assert (d.host, d.port, d.tpgt) == ("::1", 3270, 2)
    d = DiscoveredTarget("iqn.x:t", "192.0.2.1,1")
    assert (d.host, d.port, d.tpgt) == ("192.0.2.1", 3260, 1)
    d = DiscoveredTarget("iqn.x:t", "host.example:3261")
    assert (d.host, d.port, d.tpgt) == ("host.example", 3261, None)


def test_cdb_golden_bytes():
    assert cdbs.read16(0x0102030405060708, 0x11223344) == \
        bytes.fromhex("88000102030405060708112233440000")
    assert cdbs.write16(1, 2, fua=True) == bytes.fromhex("8a080000000000000001000000020000")
    assert cdbs.inquiry(evpd=True, page=0x83, alloc=0x1234) == bytes.fromhex("120183123400")
    assert cdbs.read_capacity16() == bytes.fromhex("9e100000000000000000000000200000")
    assert cdbs.report_luns(4096) == bytes.fromhex("a0000000000000001000" + "0000")
    cap = cdbs.parse_read_capacity16(bytes.fromhex("00000000000003ff00001000" + "0003c000") +
                                     bytes(16))
    assert (cap.blocks, cap.block_size, cap.lbppbe, cap.tpe, cap.bytes) == \
        (1024, 4096, 3, True, 4 << 20)
    luns = cdbs.parse_report_luns(bytes.fromhex("00000010 00000000 0000000000000000"
                                                "0001000000000000".replace(" ", "")))
    assert luns == [0, 1]


# ====================================================================== login machine
def _resp(req: P.LoginRequest, keys, *, transit=True, csg=None, nsg=None, status=(0, 0),
          tsih=7, cont=False) -> P.LoginResponse:
    return P.LoginResponse(transit=transit, cont=cont, csg=req.csg if csg is None else csg,
                           nsg=(nsg if nsg is not None else (req.nsg if transit else 0)),
                           isid=req.isid, tsih=tsih, itt=req.itt, statsn=5, expcmdsn=req.cmdsn,
                           maxcmdsn=req.cmdsn + 8, status_class=status[0],
                           status_detail=status[1], data=encode_text(keys))


def _login(opts=None, creds=None):
    return InitiatorLogin(opts or LoginOptions(), target="iqn.2026-01.t:x", isid=b"\x80\x01\x02\x03\x00\x00",
                          itt=9, cmdsn=1, credentials=creds)


def test_login_first_request_bytes():
    req = _login().first_request()
    b = bytes(encode_pdu(req)[0])
    assert b[0] == 0x43                       # Login Request always has the I bit
    assert b[1] == 0x81                       # T=1, CSG=0, NSG=1
    keys = dict(decode_text(req.data))
    assert keys["AuthMethod"] == "None" and keys["SessionType"] == "Normal"
    assert keys["TargetName"] == "iqn.2026-01.t:x"


def test_login_operational_answers_are_applied():
    m = _login(LoginOptions(max_burst_length=1 << 20, first_burst_length=1 << 18))
    req = m.first_request()
    req = m.receive(_resp(req, [("AuthMethod", "None")]))
    offers = dict(decode_text(req.data))
    assert offers["HeaderDigest"] == "CRC32C,None" and offers["InitialR2T"] == "No"
    assert req.csg == 1 and req.nsg == 3 and req.transit
    done = m.receive(_resp(req, [("HeaderDigest", "CRC32C"), ("DataDigest", "None"),
                                 ("MaxRecvDataSegmentLength", "4096"), ("InitialR2T", "Yes"),
                                 ("ImmediateData", "Yes"), ("MaxBurstLength", "65536"),
                                 ("FirstBurstLength", "16384"), ("MaxOutstandingR2T", "1"),
                                 ("TargetPortalGroupTag", "3")]))
    assert done is None
    p = m.result.params
    assert (p.header_digest, p.data_digest, p.max_xmit_data_segment_length) == (True, False, 4096)
    assert (p.initial_r2t, p.max_burst_length, p.first_burst_length) == (True, 65536, 16384)
    assert m.result.tsih == 7 and m.result.target_keys["TargetPortalGroupTag"] == "3"


def test_login_skipping_the_security_stage_is_one_exchange():
    """skip_security_stage, no credentials: the first request is in the operational
    stage (T=1, CSG=1, NSG=3) with every offer and no AuthMethod; one response ends
    the login.  With credentials the option changes nothing: CHAP, security stage."""
    m = _login(LoginOptions(skip_security_stage=True))
    req = m.first_request()
    assert bytes(encode_pdu(req)[0])[1] == 0x87      # T=1, CSG=1, NSG=3
    keys = dict(decode_text(req.data))
    assert "AuthMethod" not in keys and keys["SessionType"] == "Normal"
    assert keys["InitiatorName"] and keys["TargetName"] == "iqn.2026-01.t:x"
    assert keys["HeaderDigest"] == "CRC32C,None" and keys["InitialR2T"] == "No"
    done = m.receive(_resp(req, [("HeaderDigest", "None"), ("DataDigest", "None"),
                                 ("MaxRecvDataSegmentLength", "8192"), ("InitialR2T", "No"),
                                 ("ImmediateData", "Yes"), ("MaxBurstLength", "262144"),
                                 ("FirstBurstLength", "65536"), ("MaxOutstandingR2T", "1")]))
    assert done is None and m.result.auth_method == "None"
    assert m.result.params.max_xmit_data_segment_length == 8192
    m = _login(LoginOptions(skip_security_stage=True), creds=Credentials("alice", "alicesecret12"))
    req = m.first_request()
    assert req.csg == 0 and dict(decode_text(req.data))["AuthMethod"] == "CHAP"


@pytest.mark.parametrize("key,value", [
    ("MaxBurstLength", "999999999"),          # MIN key answered above our offer
    ("HeaderDigest", "MD5"),                  # not in our list
    ("InitialR2T", "No"),                     # OR: our Yes cannot come back No
])
def test_login_bad_answers(key, value):
    opts = LoginOptions(initial_r2t=True)     # OR: offering Yes cannot come back No
    m = _login(opts)
    req = m.receive(_resp(m.first_request(), []))
    with pytest.raises(NegotiationError):
        m.receive(_resp(req, [(key, value)]))


@given(offer=st.integers(512, 2**24 - 1), answer=st.integers(512, 2**24 - 1))
def test_login_min_key_property(offer, answer):
    """A MIN key's answer is accepted and applied iff it does not exceed our offer."""
    m = _login(LoginOptions(max_burst_length=offer, first_burst_length=512))
    req = m.receive(_resp(m.first_request(), []))
    resp = _resp(req, [("MaxBurstLength", str(answer))])
    if answer <= offer:
        assert m.receive(resp) is None and m.result.params.max_burst_length == answer
    else:
        with pytest.raises(NegotiationError):
            m.receive(resp)


def test_login_forced_digest_rejected():
    m = _login(LoginOptions(header_digest="CRC32C"))
    req = m.receive(_resp(m.first_request(), []))
    with pytest.raises(NegotiationError):
        m.receive(_resp(req, [("HeaderDigest", "Reject")]))


def test_login_answers_target_offers():
    m = _login()
    req = m.receive(_resp(m.first_request(), []))
    req = m.receive(_resp(req, [("MaxRecvDataSegmentLength", "8192"), ("OFMarker", "Yes"),
                                ("X-vendor-key", "1")], transit=False))
    answers = dict(decode_text(req.data))
    assert answers == {"OFMarker": "No", "X-vendor-key": "NotUnderstood"}


def test_login_status_error_has_meaning():
    m = _login()
    with pytest.raises(LoginError) as ei:
        m.receive(_resp(m.first_request(), [], status=(2, 3)))
    assert ei.value.status == 0x0203 and ei.value.meaning == "Not found"
    assert "0x0203" in str(ei.value)


def _chap_exchange(mutual_secret_ok=True):
    creds = Credentials("alice", "alicesecret12", "tgt", "tgtsecret1234")
    m = _login(creds=creds)
    req = m.first_request()
    assert dict(decode_text(req.data))["AuthMethod"] == "CHAP" and not req.transit
    req = m.receive(_resp(req, [("AuthMethod", "CHAP")], transit=False))
    assert dict(decode_text(req.data)) == {"CHAP_A": "5"}
    ours = chap.Challenge(17, bytes(range(16)))
    req = m.receive(_resp(req, ours.keys(), transit=False))
    keys = dict(decode_text(req.data))
    assert req.transit and req.nsg == 1
    assert keys["CHAP_N"] == "alice"
    assert ours.verify("alice", "alicesecret12", keys["CHAP_N"], keys["CHAP_R"])
    # The target answers the initiator's challenge.
    secret = "tgtsecret1234" if mutual_secret_ok else "wrong-secret"
    resp = chap.chap_response(int(keys["CHAP_I"]), secret, chap.decode_binary(keys["CHAP_C"]))
    return m, _resp(req, [("CHAP_N", "tgt"), ("CHAP_R", chap.encode_binary(resp))], nsg=1)


def test_login_mutual_chap_verifies_target():
    m, resp = _chap_exchange()
    req = m.receive(resp)
    assert req.csg == 1                       # on to the operational stage


def test_login_mutual_chap_wrong_target_secret():
    m, resp = _chap_exchange(mutual_secret_ok=False)
    with pytest.raises(LoginError) as ei:
        m.receive(resp)
    assert ei.value.status is None and "mutual" in str(ei.value)


def test_login_refuses_auth_downgrade():
    m = _login(creds=Credentials("alice", "alicesecret12"))
    with pytest.raises(LoginError):
        m.receive(_resp(m.first_request(), [("AuthMethod", "None")], transit=False))


# ====================================================================== fake target
class FakeTarget:
    """Logs the initiator in (answers from params.Negotiation), then hands every
    PDU to ``handler(ft, pdu)``.  ``send`` frames a PDU for the initiator."""

    def __init__(self, handler, policy: TargetPolicy | None = None, window: int = 32) -> None:
        self.handler = handler
        self.policy = policy or TargetPolicy(digests=("None",))
        self.window = window
        self.statsn = 1
        self.expcmdsn = 0
        self.received: list[P.Pdu] = []
        self.writer: asyncio.StreamWriter | None = None
        self.server = None

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        if self.writer:
            self.writer.close()

    @property
    def url(self) -> str:
        return f"iscsi://127.0.0.1:{self.port}/iqn.2026-01.t:fake/0"

    def sn(self, **kw) -> dict:
        return dict(expcmdsn=self.expcmdsn, maxcmdsn=self.expcmdsn + self.window - 1, **kw)

    def send(self, pdu: P.Pdu) -> None:
        self.writer.writelines(encode_pdu(pdu))

    def status_pdu(self, cls, **kw):
        kw.setdefault("statsn", self.statsn)
        self.statsn += 1
        return cls(**self.sn(), **kw)

    async def _conn(self, reader, writer):
        self.writer = writer
        pr = PduReader(1 << 20)
        neg = Negotiation(self.policy)
        try:
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    return
                pr.feed(data)
                while (pdu := pr.next_pdu()) is not None:
                    if isinstance(pdu, P.LoginRequest):
                        self._login(pdu, neg)
                        continue
                    self.received.append(pdu)
                    if isinstance(pdu, P.LogoutRequest):
                        self.send(self.status_pdu(P.LogoutResponse, itt=pdu.itt))
                        continue
                    if not pdu.immediate and isinstance(pdu, (P.ScsiCommand, P.TextRequest)):
                        self.expcmdsn = pdu.cmdsn + 1
                    r = self.handler(self, pdu)
                    if asyncio.iscoroutine(r):
                        await r
        except (ConnectionError, asyncio.CancelledError):
            pass

    def _login(self, req: P.LoginRequest, neg: Negotiation) -> None:
        answers = []
        for k, v in decode_text(req.data):
            if k == "AuthMethod":
                answers.append((k, "None"))
            elif k in ("InitiatorName", "TargetName", "SessionType", "InitiatorAlias"):
                continue
            else:
                a = neg.respond(k, v)
                if a is not None:
                    answers.append((k, a))
        if req.csg == 1:
            answers += neg.declarations()
        self.expcmdsn = req.cmdsn
        self.send(P.LoginResponse(immediate=False, transit=req.transit, csg=req.csg,
                                  nsg=req.nsg, isid=req.isid, tsih=1 if req.nsg == 3 else 0,
                                  itt=req.itt, statsn=0, **self.sn(),
                                  data=encode_text(answers)))


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def _opts(**kw) -> LoginOptions:
    kw.setdefault("header_digest", "None")
    kw.setdefault("data_digest", "None")
    return LoginOptions(**kw)


def test_fake_data_in_reassembly_and_status_collapse():
    payload = os.urandom(3000)

    def handler(ft, pdu):
        if isinstance(pdu, P.ScsiCommand):
            for i, off in enumerate(range(0, 3000, 1024)):
                last = off + 1024 >= 3000
                kw = dict(final=last, lun=0, itt=pdu.itt, datasn=i, offset=off,
                          data=payload[off:off + 1024])
                if last:
                    ft.send(ft.status_pdu(P.DataIn, has_status=True, status=0, underflow=True,
                                          residual=4096 - 3000, **kw))
                else:
                    ft.send(P.DataIn(**ft.sn(), **kw))

    async def main():
        async with FakeTarget(handler) as ft:
            async with await IscsiClient.connect(ft.url, options=_opts()) as c:
                r = await c.execute(b"\x28" + bytes(9), read_length=4096)
        assert r.status == 0 and r.residual == 1096 and bytes(r.data) == payload
    _run(main())


def test_fake_scsi_response_sense():
    sense = render_sense(SenseError(SenseKey.ILLEGAL_REQUEST, LBA_OUT_OF_RANGE))

    def handler(ft, pdu):
        if isinstance(pdu, P.ScsiCommand):
            ft.send(ft.status_pdu(P.ScsiResponse, itt=pdu.itt, status=2,
                                  data=len(sense).to_bytes(2, "big") + sense))

    async def main():
        async with FakeTarget(handler) as ft:
            async with await IscsiClient.connect(ft.url, options=_opts()) as c:
                r = await c.execute(b"\x28" + bytes(9), read_length=512)
                assert (r.status, r.sense, r.sense_key, r.asc, r.ascq) == \
                    (2, sense, SenseKey.ILLEGAL_REQUEST, 0x21, 0x00)
                with pytest.raises(ScsiCheckCondition) as ei:
                    await c.execute(b"\x28" + bytes(9), read_length=512, check=True)
                assert ei.value.key == SenseKey.ILLEGAL_REQUEST and ei.value.asc == 0x21
    _run(main())


def _write_handler(r2ts):
    """Answer a write with the R2Ts in ``r2ts`` (offset, length), one at a time."""
    state = {}

    def handler(ft, pdu):
        if isinstance(pdu, P.ScsiCommand):
            state.update(cmd=pdu, got=bytearray(pdu.edtl), todo=list(r2ts), n=len(pdu.data))
            state["got"][:len(pdu.data)] = pdu.data
        elif isinstance(pdu, P.DataOut):
            state["got"][pdu.offset:pdu.offset + len(pdu.data)] = pdu.data
            state["n"] += len(pdu.data)
        else:
            return
        if (isinstance(pdu, P.ScsiCommand) and pdu.final) or \
                (isinstance(pdu, P.DataOut) and pdu.final):
            cmd = state["cmd"]
            if state["todo"]:
                off, ln = state["todo"].pop(0)
                ft.send(P.R2T(**ft.sn(), statsn=ft.statsn, lun=0, itt=cmd.itt, ttt=0x100 + off,
                              r2tsn=len(r2ts) - len(state["todo"]) - 1, offset=off, length=ln))
            elif state["n"] >= cmd.edtl:
                ft.send(ft.status_pdu(P.ScsiResponse, itt=cmd.itt, status=0))
    return handler, state


def _dataouts(ft):
    return [(p.offset, len(p.data), p.datasn, p.ttt, p.final) for p in ft.received
            if isinstance(p, P.DataOut)]


def test_fake_r2t_split_at_target_mrdsl():
    data = os.urandom(5000)
    handler, state = _write_handler([(0, 3000), (3000, 2000)])
    policy = TargetPolicy(digests=("None",), max_recv_data_segment_length=1024, initial_r2t=True,
                          immediate_data=False)

    async def main():
        async with FakeTarget(handler, policy) as ft:
            async with await IscsiClient.connect(ft.url, options=_opts()) as c:
                await c.execute(b"\x2a" + bytes(9), data_out=data)
            return ft
    ft = _run(main())
    assert bytes(state["got"]) == data
    assert len(state["cmd"].data) == 0 and state["cmd"].final
    assert _dataouts(ft) == [(0, 1024, 0, 0x100, False), (1024, 1024, 1, 0x100, False),
                             (2048, 952, 2, 0x100, True), (3000, 1024, 0, 0x100 + 3000, False),
                             (4024, 976, 1, 0x100 + 3000, True)]


def test_fake_immediate_and_unsolicited_data_then_r2t():
    data = os.urandom(6000)
    handler, state = _write_handler([(4096, 1904)])
    policy = TargetPolicy(digests=("None",), max_recv_data_segment_length=1024, initial_r2t=False,
                          immediate_data=True, first_burst_length=4096)

    async def main():
        async with FakeTarget(handler, policy) as ft:
            async with await IscsiClient.connect(ft.url,
                                                 options=_opts(first_burst_length=4096)) as c:
                await c.execute(b"\x2a" + bytes(9), data_out=data)
            return ft
    ft = _run(main())
    assert bytes(state["got"]) == data
    assert len(state["cmd"].data) == 1024 and not state["cmd"].final
    R = P.RESERVED_TAG
    assert _dataouts(ft) == [(1024, 1024, 0, R, False), (2048, 1024, 1, R, False),
                             (3072, 1024, 2, R, True), (4096, 1024, 0, 0x100 + 4096, False),
                             (5120, 880, 1, 0x100 + 4096, True)]


def test_fake_cmdsn_window_holds_commands():
    held = []

    def handler(ft, pdu):
        if isinstance(pdu, P.ScsiCommand):
            held.append(pdu)

    async def main():
        async with FakeTarget(handler, window=1) as ft:
            async with await IscsiClient.connect(ft.url, options=_opts()) as c:
                h1 = await c.submit(bytes(6))
                second = asyncio.ensure_future(c.submit(bytes(6)))
                await asyncio.sleep(0.2)
                assert len(held) == 1 and not second.done()     # window closed
                ft.send(ft.status_pdu(P.ScsiResponse, itt=held[0].itt, status=0))
                assert (await h1).status == 0
                h2 = await asyncio.wait_for(second, 5)
                await asyncio.sleep(0.05)
                ft.send(ft.status_pdu(P.ScsiResponse, itt=held[1].itt, status=0))
                assert (await h2).status == 0
                assert held[1].cmdsn == held[0].cmdsn + 1
    _run(main())


def test_fake_target_ping_is_answered_and_abort_task():
    def handler(ft, pdu):
        if isinstance(pdu, P.TaskMgmtRequest):
            ft.send(ft.status_pdu(P.TaskMgmtResponse, itt=pdu.itt, response=0))

    async def main():
        async with FakeTarget(handler) as ft:
            async with await IscsiClient.connect(ft.url, options=_opts()) as c:
                ft.send(P.NopIn(**ft.sn(), statsn=ft.statsn, itt=P.RESERVED_TAG, ttt=0x55,
                                data=b"ping!"))
                h = await c.submit(bytes(6))
                await asyncio.sleep(0.1)
                assert await c.abort_task(h) == P.TmfResponse.COMPLETE
                with pytest.raises(TaskAborted):
                    await h
                nops = [p for p in ft.received if isinstance(p, P.NopOut)]
                assert len(nops) == 1 and nops[0].ttt == 0x55 and nops[0].immediate
                assert bytes(nops[0].data) == b"ping!" and nops[0].itt == P.RESERVED_TAG
                tmf = [p for p in ft.received if isinstance(p, P.TaskMgmtRequest)][0]
                assert (tmf.function, tmf.rtt, tmf.refcmdsn) == (1, h.itt, h.cmdsn)
    _run(main())


def test_fake_timeout_drops_connection_without_hanging():
    async def main():
        async with FakeTarget(lambda ft, pdu: None) as ft:
            c = await IscsiClient.connect(ft.url, options=_opts(), timeout=0.5)
            t0 = time.monotonic()
            with pytest.raises(IscsiTimeout):
                await c.execute(bytes(6))
            assert time.monotonic() - t0 < 3
            with pytest.raises(TransportError):
                await c.ping()
            await c.close()
    _run(main())


def test_fake_connection_loss_fails_outstanding():
    def handler(ft, pdu):
        if isinstance(pdu, P.ScsiCommand):
            ft.writer.transport.abort()

    async def main():
        async with FakeTarget(handler) as ft:
            c = await IscsiClient.connect(ft.url, options=_opts(), timeout=10)
            t0 = time.monotonic()
            with pytest.raises(TransportError):
                await c.execute(bytes(6))
            assert time.monotonic() - t0 < 3 and not c.connected
            await c.close()
    _run(main())


def test_fake_reject_fails_the_command_only():
    def handler(ft, pdu):
        if isinstance(pdu, P.ScsiCommand):
            ft.send(ft.status_pdu(P.Reject, reason=P.RejectReason.COMMAND_NOT_SUPPORTED,
                                  data=bytes(pdu.encode_bhs())))
        elif isinstance(pdu, P.NopOut) and pdu.itt != P.RESERVED_TAG:
            ft.send(ft.status_pdu(P.NopIn, itt=pdu.itt, data=pdu.data))

    async def main():
        async with FakeTarget(handler) as ft:
            async with await IscsiClient.connect(ft.url, options=_opts()) as c:
                with pytest.raises(IscsiRejected) as ei:
                    await c.execute(bytes(6))
                assert ei.value.reason == P.RejectReason.COMMAND_NOT_SUPPORTED
                await c.ping(b"still here")
    _run(main())


def test_fake_login_timeout():
    async def main():
        srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(IscsiTimeout):
            await IscsiClient.connect(f"iscsi://127.0.0.1:{port}/iqn.2026-01.t:x/0",
                                      timeout=0.5)
        assert time.monotonic() - t0 < 3
        srv.close()
    _run(main())


def test_fake_login_redirect_is_followed():
    async def main():
        async with FakeTarget(lambda ft, pdu: None) as real:
            async def redirector(reader, writer):
                pr = PduReader()
                pr.feed(await reader.read(65536))
                req = pr.next_pdu()
                writer.writelines(encode_pdu(P.LoginResponse(
                    csg=req.csg, isid=req.isid, itt=req.itt, status_class=1, status_detail=1,
                    data=encode_text([("TargetAddress", f"127.0.0.1:{real.port},1")]))))
                await writer.drain()
                writer.close()
            srv = await asyncio.start_server(redirector, "127.0.0.1", 0)
            port = srv.sockets[0].getsockname()[1]
            async with await IscsiClient.connect(f"iscsi://127.0.0.1:{port}/iqn.2026-01.t:x/0",
                                                 options=_opts()) as c:
                assert c.connected and c.tsih == 1
            srv.close()
    _run(main())


def test_connect_refused_is_transport_error():
    with pytest.raises(TransportError):
        SyncIscsiClient("iscsi://127.0.0.1:1/iqn.2026-01.t:x/0", timeout=2)


# ====================================================================== real targets
@pytest.fixture(scope="module", params=selected())
def factory(request, tmp_path_factory):
    f = FACTORIES[request.param](tmp_path_factory.mktemp(request.param))
    try:
        yield f
    finally:
        f.close()                             # tgtd is killed even when tests fail


@pytest.fixture(scope="module")
def target(factory) -> TargetInfo:
    return factory.new_target()


def _client(t: TargetInfo, **kw) -> SyncIscsiClient:
    return SyncIscsiClient(t.url(), timeout=20, **kw)


def test_real_discovery(factory, target):
    found = SyncIscsiClient.discover(target.portal_url, timeout=10)
    mine = [d for d in found if d.target == target.iqn]
    assert mine, found
    assert mine[0].port == target.port and mine[0].host == target.host


def test_real_login_none_and_basic_commands(target):
    with _client(target) as c:
        assert c.login_result.auth_method == "None"
        c.test_unit_ready()
        inq = c.inquiry()
        assert inq[0] & 0x1F == 0 and len(inq) >= 36
        cap = c.read_capacity16()
        assert cap.bytes == target.size and cap.block_size == 512
        assert target.lun in c.report_luns()
        vpd = c.inquiry(evpd=True, page=0x00)
        assert vpd[1] == 0x00 and 0x80 in vpd[4:4 + vpd[3]]


def test_real_chap_one_way_and_wrong_secret(factory):
    t = factory.new_target(chap=("alice", "alicesecret12"))
    with SyncIscsiClient(t.url(user="alice", secret="alicesecret12"), timeout=10) as c:
        assert c.login_result.auth_method == "CHAP"
        c.test_unit_ready()
    with pytest.raises(LoginError) as ei:
        SyncIscsiClient(t.url(user="alice", secret="wrongsecret99"), timeout=10)
    assert ei.value.status == 0x0201 and ei.value.meaning == "Authentication failure"
    with pytest.raises(LoginError) as ei:
        SyncIscsiClient(t.url(), timeout=10)     # no credentials at all
    assert ei.value.status_class == 2


def test_real_login_skipping_the_security_stage(factory, target, monkeypatch):
    """The blocking client with skip_security_stage logs in in one exchange and works;
    a target that requires CHAP refuses such a login without credentials (status
    class 2, as it refuses AuthMethod=None), and with them CHAP runs as always."""
    from scsi_target.initiator.blocking import BlockingIscsiClient
    from scsi_target.initiator.login import InitiatorLogin
    seen = []
    real = InitiatorLogin.receive
    monkeypatch.setattr(InitiatorLogin, "receive",
                        lambda self, resp: seen.append(resp.csg) or real(self, resp))
    opts = LoginOptions(skip_security_stage=True)
    with BlockingIscsiClient(target.url(), options=opts, timeout=20) as c:
        assert c.login_result.auth_method == "None" and seen == [1]
        c.test_unit_ready()
        assert c.read_capacity16().bytes == target.size
    t = factory.new_target(chap=("carol", "carolsecret12"))
    with pytest.raises(LoginError) as ei:
        BlockingIscsiClient(t.url(), options=opts, timeout=10)
    assert ei.value.status_class == 2
    seen.clear()
    with BlockingIscsiClient(t.url(user="carol", secret="carolsecret12"), options=opts,
                             timeout=10) as c:
        assert c.login_result.auth_method == "CHAP" and seen[0] == 0
        c.test_unit_ready()


def test_real_chap_mutual(factory):
    t = factory.new_target(chap=("bob", "bobsecret1234"), mutual=("tgtname", "tgtsecret5678"))
    with SyncIscsiClient(t.url(user="bob", secret="bobsecret1234", target_user="tgtname",
                               target_secret="tgtsecret5678"), timeout=10) as c:
        c.ping()
    with pytest.raises(LoginError) as ei:
        SyncIscsiClient(t.url(user="bob", secret="bobsecret1234", target_user="tgtname",
                              target_secret="not-the-secret"), timeout=10)
    assert ei.value.status is None and "mutual" in str(ei.value)


SIZES = [512, 8192, 65536 - 512, 65536, 65536 + 512, 262144, (1 << 20) + 512]
MODES = {
    "unsolicited": dict(initial_r2t=False, immediate_data=True),
    "r2t-only": dict(initial_r2t=True, immediate_data=False),
    "immediate+r2t": dict(initial_r2t=True, immediate_data=True),
    "unsolicited-no-immediate": dict(initial_r2t=False, immediate_data=False),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_real_write_read_sizes(target, mode):
    opts = _opts(**MODES[mode])
    with _client(target, options=opts) as c:
        p = c.params
        assert (p.initial_r2t, p.immediate_data) == \
            (MODES[mode]["initial_r2t"], MODES[mode]["immediate_data"])
        lba = 0
        for size in SIZES:
            data = os.urandom(size)
            c.write(lba, data)
            got = c.read(lba, size // 512)
            assert got == data, f"mismatch at {size} bytes"
            lba += size // 512 + 1


@pytest.mark.parametrize("digest", ["CRC32C", "None"])
def test_real_digests(target, digest):
    opts = LoginOptions(header_digest=digest, data_digest=digest)
    with _client(target, options=opts) as c:
        assert c.params.header_digest == c.params.data_digest == (digest == "CRC32C")
        data = os.urandom(300 * 1024 + 512)
        c.write(5000, data)
        assert c.read(5000, len(data) // 512) == data
        c.ping(b"x" * 100)


def test_real_several_outstanding(target):
    bs = 512
    chunks = [os.urandom(64 * 1024) for _ in range(16)]
    with _client(target) as c:
        c.test_unit_ready()
        writes = c.execute_many([dict(cdb=cdbs.write16(20000 + i * 128, 128), data_out=d)
                                 for i, d in enumerate(chunks)], check=True)
        assert all(r.status == 0 for r in writes)
        reads = c.execute_many([dict(cdb=cdbs.read16(20000 + i * 128, 128), read_length=128 * bs)
                                for i in range(16)], check=True)
        assert [bytes(r.data) for r in reads] == chunks


def test_real_check_condition_and_residual(target):
    with _client(target) as c:
        c.test_unit_ready()
        blocks = target.size // 512
        r = c.execute(cdbs.read16(blocks, 1), read_length=512)
        assert r.status == 2 and r.sense_key == SenseKey.ILLEGAL_REQUEST
        assert (r.asc, r.ascq) == (0x21, 0x00) and len(r.sense) >= 14
        with pytest.raises(ScsiCheckCondition) as ei:
            c.read(blocks, 1)
        assert ei.value.asc == 0x21 and ei.value.sense == r.sense
        # Allocation length beyond the standard INQUIRY data: underflow residual.
        r = c.execute(cdbs.inquiry(alloc=4000), read_length=4000, check=True)
        assert r.residual == 4000 - len(r.data) > 0


def test_real_nop_ping_tmf_logout(target):
    with _client(target) as c:
        c.test_unit_ready()
        assert c.ping(b"hello") < 5
        assert c.lun_reset() == P.TmfResponse.COMPLETE
        with pytest.raises(ScsiCheckCondition) as ei:   # the reset leaves a unit attention
            c.execute(bytes(6), check=True)
        assert ei.value.key == SenseKey.UNIT_ATTENTION
        try:                                   # tgt does not implement TARGET WARM RESET
            assert c.target_warm_reset() == P.TmfResponse.COMPLETE
        except TaskManagementError as exc:
            assert exc.response == P.TmfResponse.NOT_SUPPORTED
        c.test_unit_ready()
        c.logout()
        with pytest.raises(TransportError):
            c.ping()


def test_real_abort_completed_task(target):
    async def main():
        async with await IscsiClient.connect(target.url(), timeout=20) as c:
            await c.test_unit_ready()
            h = await c.submit(bytes(6))
            await h
            assert await c.abort_task(h) in (P.TmfResponse.TASK_DOES_NOT_EXIST,
                                             P.TmfResponse.COMPLETE)
            await c.ping()
    _run(main())


def test_real_reconnect_reinstates_session(target):
    with _client(target) as c:
        c.test_unit_ready()
        isid = c.client.isid
        c.write(100, b"\xa5" * 512)
        c.reconnect()
        assert c.client.isid == isid and c.client.tsih != 0
        c.test_unit_ready()
        assert c.read(100, 1) == b"\xa5" * 512


def test_real_target_pings_are_answered(factory):
    t = factory.new_target(params={"nop_interval": "1", "nop_count": "2"})
    with _client(t) as c:
        c.test_unit_ready()
        time.sleep(3.5)                       # tgt drops initiators that miss 2 pings
        c.test_unit_ready()
        assert c.client.connected
