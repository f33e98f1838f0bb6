"""iSCSI-level and tape faults without sockets: the rule language, the connection's
decisions (scsi_target/target/hooks.py markers), the tape drive's injected boundaries,
the TOML config and FAULT CONTROL."""
from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scsi_target.config import ConfigError, build_registry
from scsi_target.protocol import pdu as P
from scsi_target.protocol.framing import FramingError, PduReader, encode_pdu
from scsi_target.protocol.params import SessionParams
from scsi_target.scsi.command import Status
from scsi_target.scsi.disk import DiskLU
from scsi_target.scsi.lun import LunMap
from scsi_target.scsi.sense import SenseKey
from scsi_target.target import connection as CONN
from scsi_target.target.hooks import Hold
from scsi_target.target.registry import Portal, TargetDef, TargetRegistry
from scsi_target.target.session import Session, SessionTable
from scsi_target.testing import (FaultInjector, FaultRuleError, InProcessTarget,
                                 fault_control_cdb, parse_rules)
from volume.memstore import MemoryStore

IQN = "iqn.2026-12.org.pyscsi.test:tfaults"


# ------------------------------------------------------------ a connection, no sockets
class Conn:
    def __init__(self, rules=(), *, header_digest=False, data_digest=False):
        luns = LunMap(IQN)
        luns.add(0, DiskLU(MemoryStore(8 << 20), 512))
        self.faults = FaultInjector(parse_rules(list(rules)) if rules else [])
        reg = TargetRegistry()
        reg.add(TargetDef(IQN, luns, transport_faults=self.faults.connection))
        sessions = SessionTable()
        c = self.c = CONN.TargetConnection(reg, sessions, Portal())
        c.session = Session(tsih=1, initiator_name="iqn.2026-12.test:i", isid=bytes(6),
                            target=reg.get(IQN), discovery=False, exp_cmdsn=0)
        c.session.connection = c
        sessions.add(c.session)
        self.hd, self.dd = header_digest, data_digest
        c.start_full_feature(SessionParams(
            max_recv_data_segment_length=256 << 10, max_xmit_data_segment_length=256 << 10,
            max_burst_length=256 << 10, first_burst_length=64 << 10, initial_r2t=True,
            immediate_data=True, max_outstanding_r2t=1, header_digest=header_digest,
            data_digest=data_digest))
        self.cmdsn = 0

    def send(self, pdu) -> list:
        """Feed one PDU; the output as PDUs, with Hold markers where they are."""
        self.c.receive_data(b"".join(bytes(b) for b in encode_pdu(pdu, self.hd, self.dd)))
        return self.decode(self.c.take_output())

    def decode(self, items) -> list:
        out, chunk = [], []

        def flush():
            reader = PduReader(max_data=1 << 24)
            reader.header_digest, reader.data_digest = self.hd, self.dd
            reader.feed(b"".join(chunk))
            while (p := reader.next_pdu()) is not None:
                out.append(p)
            chunk.clear()
        for b in items:
            if isinstance(b, Hold):
                flush()
                out.append(b)
            elif not isinstance(b, CONN.AfterSend):
                chunk.append(bytes(b))
        flush()
        return out

    def command(self, cdb: bytes, *, read=0, write=b"", itt=None) -> P.ScsiCommand:
        self.cmdsn += 1
        cdb = cdb + bytes(16 - len(cdb))
        return P.ScsiCommand(read=bool(read), write=bool(write), itt=itt or self.cmdsn,
                             edtl=read or len(write), cmdsn=self.cmdsn - 1, cdb=cdb)


def read10(lba, n):
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, n, 0)


def write10(lba, n):
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, n, 0)


def test_no_rules_no_markers():
    k = Conn()
    out = k.send(k.command(bytes(6)))
    assert [type(p) for p in out] == [P.ScsiResponse]


def test_stall_response_puts_a_hold_before_the_answer():
    k = Conn([{"action": "stall", "pdu": "response", "seconds": 2.5, "opcode": "read"}])
    k.send(k.command(bytes(6)))                                        # the power-on UA
    out = k.send(k.command(read10(0, 2), read=1024))
    assert isinstance(out[0], Hold) and out[0].seconds == 2.5
    assert [type(p) for p in out[1:]][-1] in (P.DataIn, P.ScsiResponse)
    assert [type(p) for p in k.send(k.command(read10(0, 2), read=1024))][0] is not Hold  # once


def test_sticky_stall_is_released_when_the_rule_is_cleared():
    k = Conn([{"action": "stall", "pdu": "response", "opcode": 0x00}])
    out = k.send(k.command(bytes(6)))
    hold = out[0]
    assert isinstance(hold, Hold) and hold.seconds == 0
    released = []
    hold.on_release(lambda: released.append(1))
    assert not released
    k.faults.clear()
    assert released == [1]
    hold.on_release(lambda: released.append(2))      # already released: at once
    assert released == [1, 2]


def test_stall_every_nth_matching_command_n_times():
    k = Conn([{"action": "stall", "pdu": "response", "seconds": 1, "opcode": "read",
               "every": 2, "times": 2}])
    k.send(k.command(bytes(6)))
    held = [isinstance(k.send(k.command(read10(0, 1), read=512))[0], Hold) for _ in range(7)]
    assert held == [False, True, False, True, False, False, False]
    assert isinstance(k.send(k.command(bytes(6)))[0], P.ScsiResponse)     # not a READ


def test_delay_nop_in_probability_is_seeded():
    def run(seed):
        k = Conn([{"action": "delay_nop_in", "seconds": 1, "probability": 0.5, "seed": seed,
                   "times": "sticky"}])
        return [isinstance(k.send(P.NopOut(itt=i + 1, ttt=P.RESERVED_TAG, cmdsn=0,
                                           immediate=True))[0], Hold) for i in range(40)]
    a, b, c = run(3), run(3), run(4)
    assert a == b and a != c and 5 < sum(a) < 35


def test_stall_r2t_puts_a_hold_before_the_r2t():
    k = Conn([{"action": "stall", "pdu": "r2t", "seconds": 1}])
    k.send(k.command(bytes(6)))
    out = k.send(k.command(write10(0, 256), write=bytes(128 << 10)))
    assert isinstance(out[0], Hold) and isinstance(out[1], P.R2T)


def test_drop_after_pdus_received_closes_on_the_nth_without_acting_on_it():
    k = Conn([{"action": "drop_after_pdus", "pdus": 3, "direction": "received"}])
    assert k.send(k.command(bytes(6))) and k.send(k.command(bytes(6)))
    assert k.send(k.command(bytes(6))) == [] and k.c.closing
    assert k.faults.rules[0].fired == 1


def test_drop_after_pdus_sent_sends_exactly_n():
    k = Conn([{"action": "drop_after_pdus", "pdus": 3, "direction": "sent"}])
    k.send(k.command(bytes(6)))
    out = k.send(k.command(read10(0, 8), read=4096)) + k.send(k.command(read10(0, 8), read=4096))
    assert k.c.closing
    # 1 TUR response + 2 more PDUs: the READs' Data-In/response, cut after the third
    assert len(out) == 2


def test_drop_rule_added_later_counts_from_then():
    k = Conn()
    for _ in range(5):
        k.send(k.command(bytes(6)))
    k.faults.add(action="drop_after_pdus", pdus=2, direction="received")
    assert k.send(k.command(bytes(6))) and not k.c.closing
    assert k.send(k.command(bytes(6))) == [] and k.c.closing


def test_drop_rule_every_second_connection():
    faults = FaultInjector(parse_rules([{"action": "drop_after_pdus", "pdus": 1,
                                         "every": 2, "times": "sticky"}]))
    dropped = [faults.connection("iqn.x:i,i,0x1").received() for _ in range(4)]
    assert dropped == [False, True, False, True]


@pytest.mark.parametrize("digest", ["header", "data"])
def test_corrupt_digest_is_a_digest_error_for_the_reader(digest):
    k = Conn([{"action": "corrupt_digest", "digest": digest, "opcode": "read"}],
             header_digest=True, data_digest=True)
    k.send(k.command(bytes(6)))
    k.c.receive_data(b"".join(bytes(b) for b in encode_pdu(k.command(read10(0, 8), read=4096),
                                                           True, True)))
    reader = PduReader(max_data=1 << 24)
    reader.header_digest = reader.data_digest = True
    reader.feed(b"".join(bytes(b) for b in k.c.take_output() if not isinstance(b, CONN.AfterSend)))
    with pytest.raises(FramingError, match=f"{digest} digest"):
        while reader.next_pdu() is not None:
            pass


def test_corrupt_digest_needs_the_digest_negotiated():
    k = Conn([{"action": "corrupt_digest", "digest": "header"}])
    k.send(k.command(bytes(6)))
    assert k.send(k.command(bytes(6)))                  # decodes fine without digests
    assert k.faults.rules[0].matched == 0 and k.faults.rules[0].fired == 0


def test_delay_nop_in_holds_the_answer_to_a_ping():
    k = Conn([{"action": "delay_nop_in", "seconds": 3}])
    out = k.send(P.NopOut(itt=7, ttt=P.RESERVED_TAG, cmdsn=0, immediate=True, data=b"hi"))
    assert isinstance(out[0], Hold) and out[0].seconds == 3
    assert isinstance(out[1], P.NopIn) and out[1].itt == 7 and bytes(out[1].data) == b"hi"


def test_transport_rules_never_act_on_the_lun_map():
    t = InProcessTarget()
    t.add_lu("disk", size="1M")
    for spec in ({"action": "stall", "pdu": "response", "times": "sticky"},
                 {"action": "corrupt_digest", "digest": "header", "times": "sticky"},
                 {"action": "drop_after_pdus", "pdus": 1, "times": "sticky"},
                 {"action": "delay_nop_in", "seconds": 1, "times": "sticky"}):
        t.faults.add(spec)
    assert all(t.submit(bytes(6)).ok for _ in range(3))
    assert all(r.matched == 0 for r in t.faults.rules)
    t.close()


# ---------------------------------------------------------------------- rule language
@pytest.mark.parametrize("spec,why", [
    ({"action": "drop_after_pdus"}, "drop_after_pdus needs pdus"),
    ({"action": "drop_after_pdus", "pdus": 0}, "pdus: 0 is out of range"),
    ({"action": "drop_after_pdus", "pdus": 3, "direction": "up"}, "direction: 'up' is not one"),
    ({"action": "drop_after_pdus", "pdus": 3, "lba": 4}, "lba: not a key"),
    ({"action": "stall"}, "stall needs pdu"),
    ({"action": "stall", "pdu": "nop"}, "pdu: 'nop' is not one of r2t, response"),
    ({"action": "stall", "pdu": "r2t", "seconds": 0}, "seconds: 0 is not a delay"),
    ({"action": "corrupt_digest"}, "corrupt_digest needs digest"),
    ({"action": "corrupt_digest", "digest": "crc"}, "digest: 'crc' is not one"),
    ({"action": "delay_nop_in"}, "delay_nop_in needs seconds"),
    ({"action": "delay_nop_in", "seconds": 1, "opcode": "read"}, "opcode: not a key"),
    ({"action": "tape_early_warning"}, "needs block"),
    ({"action": "tape_end_of_medium", "block": -1}, "block: -1 is out of range"),
    ({"action": "tape_end_of_medium", "block": 5, "lba": 3}, "lba: not a key"),
    ({"action": "tape_early_warning", "block": 5, "opcode": "read"}, "WRITE(6) and WRITE FILEMARKS"),
    ({"action": "reject_login", "login_status": [1, 0]}, "login_status"),
])
def test_bad_transport_and_tape_rules_get_one_line(spec, why):
    with pytest.raises(FaultRuleError) as e:
        parse_rules([spec])
    msg = str(e.value)
    assert "\n" not in msg and why in msg and msg.startswith("fault[0]."), msg


def test_login_status_as_class_and_detail():
    t = InProcessTarget()
    t.faults.add(action="reject_login", login_status=[2, 1])
    assert t.faults.login_check("iqn.x:i") == 0x0201


_VALID = st.one_of(
    st.fixed_dictionaries({"action": st.just("drop_after_pdus"),
                           "pdus": st.integers(1, 1 << 31)},
                          optional={"direction": st.sampled_from(["received", "sent", "any"]),
                                    "initiator": st.text(min_size=1, max_size=8),
                                    "every": st.integers(1, 100),
                                    "times": st.one_of(st.just("once"), st.just("sticky"),
                                                       st.integers(1, 9))}),
    st.fixed_dictionaries({"action": st.just("stall"),
                           "pdu": st.sampled_from(["r2t", "response"])},
                          optional={"seconds": st.floats(0.001, 600),
                                    "lun": st.integers(0, 16383),
                                    "probability": st.floats(0, 1), "seed": st.integers(0, 99)}),
    st.fixed_dictionaries({"action": st.just("corrupt_digest"),
                           "digest": st.sampled_from(["header", "data"])},
                          optional={"lba": st.integers(0, 1 << 40), "opcode": st.just("read")}),
    st.fixed_dictionaries({"action": st.sampled_from(["tape_early_warning",
                                                      "tape_end_of_medium"]),
                           "block": st.integers(0, 1 << 40)},
                          optional={"lun": st.integers(0, 9)}),
    st.fixed_dictionaries({"action": st.just("delay_nop_in"), "seconds": st.floats(0.001, 600)}),
)


@settings(max_examples=300, deadline=None)
@given(_VALID, st.sampled_from(["colour", "bits", "keep", "status"]), st.integers())
def test_rules_parse_and_survive_json_and_stray_keys_are_refused(spec, stray, value):
    rule = parse_rules([spec])[0]
    again = parse_rules(json.loads(json.dumps([spec])))[0]    # the FAULT CONTROL form
    assert (rule.action, rule.pdus, rule.pdu, rule.digest, rule.block, rule.seconds) == \
        (again.action, again.pdus, again.pdu, again.digest, again.block, again.seconds)
    with pytest.raises(FaultRuleError) as e:
        parse_rules([dict(spec, **{stray: value})])
    assert "\n" not in str(e.value) and f"{stray}: not a key" in str(e.value)


# ------------------------------------------------------------------------- tape
def write6(n: int, fixed: bool = False) -> bytes:
    return bytes([0x0A, int(fixed)]) + n.to_bytes(3, "big") + b"\0"


TAPE = pytest.mark.scsi_lu("tape", lun=0, size="16M")     # the plugin's iscsi_target


@TAPE
def test_early_warning_at_block_n(iscsi_target):
    tape = iscsi_target
    tape.faults.add(action="tape_early_warning", block=3, times="sticky")
    got = [tape.submit(write6(100), data_out=bytes(100)) for _ in range(4)]
    assert [r.ok for r in got] == [True, True, False, False]
    assert got[2].sense == (SenseKey.NO_SENSE, 0x00, 0x02) and got[2].information == 0
    assert got[2].resp.sense[2] & 0x40                   # EOM
    assert tape.lu(0).drive.pos == 4                     # written all the same
    assert tape.lu(0).drive.early_warning_at is None     # only while the command runs


@TAPE
def test_end_of_medium_at_block_n_fixed_mode_writes_up_to_it(iscsi_target):
    tape = iscsi_target
    assert tape.submit(bytes([0x15, 0x10, 0, 0, 12, 0]),      # MODE SELECT(6): block length 512
                       data_out=bytes([0, 0, 0x10, 8]) + bytes(5) + (512).to_bytes(3, "big")).ok
    tape.faults.add(action="tape_end_of_medium", block=5)
    r = tape.submit(write6(8, fixed=True), data_out=bytes(8 * 512))
    assert r.status == Status.CHECK_CONDITION
    assert r.sense == (SenseKey.VOLUME_OVERFLOW, 0x00, 0x02) and r.information == 3
    assert r.resp.sense[2] & 0x40 and tape.lu(0).drive.pos == 5
    assert tape.submit(write6(1, fixed=True), data_out=bytes(512)).ok      # once


@TAPE
def test_end_of_medium_filemarks_and_other_initiators(iscsi_target):
    tape = iscsi_target
    from scsi_target.scsi.command import Nexus
    other = Nexus("iqn.2026-12.x:other,i,0x2", initiator_name="iqn.2026-12.x:other")
    tape.faults.add(action="tape_end_of_medium", block=0, initiator="x:other", times="sticky")
    assert tape.submit(bytes([0x10, 0, 0, 0, 1, 0])).ok          # not that initiator
    tape.clear_unit_attentions(nexus=other)
    r = tape.submit(bytes([0x10, 0, 0, 0, 2, 0]), nexus=other)   # WRITE FILEMARKS(6) 2
    assert r.sense == (SenseKey.VOLUME_OVERFLOW, 0x00, 0x02) and r.information == 2


# ------------------------------------------------------------ config and FAULT CONTROL
def _cfg(tmp_path, faults: str):
    """The one-target config of the SCSI fault tests, with fault_control on."""
    from test_testing_faults import _cfg as scsi_faults_cfg
    return scsi_faults_cfg(tmp_path, faults, "fault_control = true")


def test_config_transport_rules_reach_the_target_def(tmp_path):
    cfg = _cfg(tmp_path, '[[target.fault]]\naction = "drop_after_pdus"\npdus = 4\n'
                         'direction = "sent"\n')
    reg = build_registry(cfg)
    try:
        td = reg.get("iqn.2026-12.org.x:t")
        cf = td.transport_faults("iqn.y:i,i,0x1")
        assert [cf.sent(1) for _ in range(3)] == [None] * 3 and cf.sent(2) == 1
    finally:
        reg.close()


def test_bad_config_transport_rule_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, '[[target.fault]]\naction = "stall"\npdu = "status"\n')
    assert str(e.value) == ("t.toml: target[0].fault[0].pdu: 'status' is not one of r2t, "
                            "response")


def test_fault_control_adds_transport_rules_and_clear_releases_them():
    t = InProcessTarget()
    t.add_lu("disk", size="1M")
    doc = json.dumps([{"action": "stall", "pdu": "response"},
                      {"action": "tape_early_warning", "block": 9}]).encode()
    assert t.submit(fault_control_cdb(0, len(doc)), data_out=doc).ok
    stall = t.faults.rules[0]
    listed = json.loads(t.submit(fault_control_cdb(2, 4096), read_length=4096).data)
    assert [r["action"] for r in listed["rules"]] == ["stall", "tape_early_warning"]
    assert t.submit(fault_control_cdb(1)).ok and stall.released and not t.faults.rules
    t.close()


def test_fault_control_refuses_a_bad_transport_rule_with_its_reason():
    t = InProcessTarget()
    t.add_lu("disk", size="1M")
    doc = json.dumps({"action": "drop_after_pdus", "pdus": 3, "direction": "sideways"}).encode()
    r = t.submit(fault_control_cdb(0, len(doc)), data_out=doc)
    assert r.sense == (SenseKey.ILLEGAL_REQUEST, 0x26, 0) and not t.faults.rules
    listed = json.loads(t.submit(fault_control_cdb(2, 4096), read_length=4096).data)
    assert listed["last_error"] == ("rule[0].direction: 'sideways' is not one of received, "
                                    "sent, any")
    t.close()
