"""Fault injection and the command log, in process (the same LunMap path iSCSI takes)."""
from __future__ import annotations

import json
import os
import random

import pytest

from scsi_target.config import ConfigError, build_registry, parse_config
from scsi_target.interceptors.cmdlog import CommandLog
from scsi_target.scsi.command import Command, Direction, Nexus, Status
from scsi_target.scsi.lun import LunMap
from scsi_target.scsi.sense import SenseKey
from scsi_target.testing import (CowStore, FaultRule, FaultRuleError, InProcessTarget,
                                 LuSpecError, fault_control_cdb, parse_rules)
from volume.memstore import MemoryStore

BS = 512


def read10(lba: int, n: int) -> bytes:
    return bytes([0x28, 0]) + lba.to_bytes(4, "big") + b"\0" + n.to_bytes(2, "big") + b"\0"


def write10(lba: int, n: int) -> bytes:
    return bytes([0x2A, 0]) + lba.to_bytes(4, "big") + b"\0" + n.to_bytes(2, "big") + b"\0"


@pytest.fixture
def t():
    tg = InProcessTarget()
    tg.add_lu("disk", size="4M")
    yield tg
    tg.close()


def seeded(t, lba=0, blocks=64):
    data = random.Random(lba).randbytes(blocks * BS)
    assert t.write(lba, data).ok
    return data


# ------------------------------------------------------------------ actions
def test_medium_error_on_read_reports_first_failing_lba(t):
    t.faults.add(action="medium_error", lba=[10, 20], opcode="read")
    r = t.submit(read10(5, 10), read_length=10 * BS)
    assert r.status == Status.CHECK_CONDITION
    assert r.sense == (SenseKey.MEDIUM_ERROR, 0x11, 0x00)
    assert r.information == 10
    assert t.submit(read10(5, 10), read_length=10 * BS).ok      # once by default


def test_medium_error_on_write_is_write_error_and_nothing_written(t):
    before = t.read(30, 1)
    t.faults.add(action="medium_error", lba=30)
    r = t.write(28, os.urandom(4 * BS))
    assert r.sense == (SenseKey.MEDIUM_ERROR, 0x0C, 0x00) and r.information == 30
    assert t.read(30, 1) == before


def test_reads_outside_the_range_are_untouched(t):
    t.faults.add(action="medium_error", lba=[10, 20], times="sticky")
    assert t.submit(read10(0, 10), read_length=10 * BS).ok
    assert t.submit(read10(20, 4), read_length=4 * BS).ok
    assert not t.submit(read10(19, 1), read_length=BS).ok


def test_chosen_status_and_sense(t):
    t.faults.add(action="check_condition", key="hardware_error", asc=0x44, ascq=0, information=7)
    r = t.submit(read10(0, 1), read_length=BS)
    assert r.sense == (SenseKey.HARDWARE_ERROR, 0x44, 0) and r.information == 7
    t.faults.add(action="status", status="reservation_conflict")
    assert t.submit(read10(0, 1), read_length=BS).status == Status.RESERVATION_CONFLICT


@pytest.mark.parametrize("action,status", [("busy", Status.BUSY),
                                           ("task_set_full", Status.TASK_SET_FULL)])
def test_busy_and_task_set_full(t, action, status):
    t.faults.add(action=action, opcode="write")
    data = os.urandom(BS)
    r = t.write(3, data)
    assert r.status == status and not r.resp.sense
    assert t.read(3, 1) != data                 # not executed
    assert t.write(3, data).ok and t.read(3, 1) == data


def test_recovered_error_delivers_the_data(t):
    data = seeded(t, 0, 8)
    t.faults.add(action="recovered_error", lba=[4, 5])
    r = t.submit(read10(0, 8), read_length=8 * BS)
    assert r.sense == (SenseKey.RECOVERED_ERROR, 0x17, 0x01) and r.information == 4
    assert r.data == data


def test_unit_attention_on_the_next_command(t):
    t.faults.add(action="unit_attention", asc=0x2A, ascq=0x09, opcode=0x00)
    r = t.submit(bytes(6))
    assert r.sense == (SenseKey.UNIT_ATTENTION, 0x2A, 0x09)
    assert t.submit(bytes(6)).ok


def test_corrupt_read_flips_exactly_the_bits_asked(t):
    data = seeded(t, 0, 16)
    t.faults.add(action="corrupt_read", bits=3)
    r = t.submit(read10(0, 16), read_length=16 * BS)
    assert r.ok and len(r.data) == len(data)
    flipped = sum(bin(a ^ b).count("1") for a, b in zip(r.data, data))
    assert flipped in (1, 3)                    # two flips of one bit cancel
    assert t.read(0, 16) == data                # the medium is intact


def test_dropped_write_is_acknowledged_but_not_written(t):
    old = seeded(t, 100, 4)
    t.faults.add(action="drop_write", lba=[100, 104])
    assert t.write(100, os.urandom(4 * BS)).ok
    assert t.read(100, 4) == old


def test_short_transfer_sets_the_residual(t):
    data = seeded(t, 0, 8)
    t.faults.add(action="short_transfer", keep=1000)
    r = t.submit(read10(0, 8), read_length=8 * BS)
    assert r.ok and r.data == data[:1000] and r.residual == 8 * BS - 1000


def test_delay_in_process_sleeps(t):
    import time
    t.faults.add(action="delay", seconds=0.2)
    t0 = time.perf_counter()
    assert t.submit(read10(0, 1), read_length=BS).ok
    assert time.perf_counter() - t0 >= 0.2


# ----------------------------------------------------------------- matching
def test_every_nth_and_times(t):
    t.faults.add(action="busy", every=3, times=2)
    got = [t.submit(bytes(6)).status for _ in range(10)]
    busy = [i for i, s in enumerate(got) if s == Status.BUSY]
    assert busy == [2, 5]


def test_probability_is_deterministic_per_seed(t):
    def run(seed):
        t.faults.clear()
        t.faults.add(action="busy", probability=0.3, seed=seed, times="sticky")
        return [t.submit(bytes(6)).status == Status.BUSY for _ in range(200)]
    a, b, c = run(5), run(5), run(6)
    assert a == b and a != c
    assert 30 < sum(a) < 90


def test_initiator_and_lun_match(t):
    t.add_lu("disk", size="1M")
    other = Nexus("iqn.2026-12.x:other,i,0x000000000002", initiator_name="iqn.2026-12.x:other")
    t.faults.add(action="busy", initiator="x:other", lun=1, times="sticky")
    assert t.submit(bytes(6), lun=1).status != Status.BUSY
    assert t.submit(bytes(6), lun=1, nexus=other).status == Status.BUSY
    assert t.submit(bytes(6), lun=0, nexus=other).status != Status.BUSY


@pytest.mark.parametrize("spec,where", [
    ({"action": "explode"}, "action"),
    ({"action": "busy", "lba": [5, 5]}, "lba"),
    ({"action": "busy", "probability": 1.5}, "probability"),
    ({"action": "busy", "times": 0}, "times"),
    ({"action": "busy", "opcode": "FROB"}, "opcode"),
    ({"action": "busy", "seconds": 1}, "seconds"),
    ({"action": "delay"}, "delay needs seconds"),
    ({"action": "corrupt_read", "opcode": "write"}, "reads only"),
    ({"action": "check_condition", "key": 3}, "needs key and asc"),
    ({"action": "status", "status": "good"}, "status"),
    ({"action": "busy", "every": True}, "every"),
])
def test_bad_rules_get_one_line(spec, where):
    with pytest.raises(FaultRuleError) as e:
        parse_rules([spec])
    msg = str(e.value)
    assert "\n" not in msg and where in msg and msg.startswith("fault[0]")


# ---------------------------------------------------------------- config
def _cfg(tmp_path, faults: str, control: str = ""):
    import tomllib
    text = f"""
[[target]]
iqn = "iqn.2026-12.org.x:t"
{control}
[[target.lun]]
lun = 0
path = "{tmp_path / 'd.img'}"
size = "1M"
create = true
track = false
{faults}
"""
    return parse_config(tomllib.loads(text), "t.toml", tmp_path)


def test_config_rules_are_in_force(tmp_path):
    cfg = _cfg(tmp_path, '[[target.fault]]\naction = "medium_error"\nlba = [4, 8]\n')
    reg = build_registry(cfg)
    try:
        luns = reg.get("iqn.2026-12.org.x:t").luns
        nx = Nexus("i")
        luns.execute(Command(bytes(6), nexus=nx))          # power-on UA
        r = luns.execute(Command(read10(0, 8), expected_length=8 * BS, direction=Direction.IN,
                                 nexus=nx))
        assert r.status == Status.CHECK_CONDITION and r.sense[2] == 0x03
        # fault_control is off: D5h is an unknown opcode
        r = luns.execute(Command(fault_control_cdb(1), nexus=nx))
        assert r.sense[12] == 0x20
    finally:
        reg.close()


def test_config_without_faults_leaves_the_map_alone(tmp_path):
    reg = build_registry(_cfg(tmp_path, ""))
    try:
        assert "execute" not in vars(reg.get("iqn.2026-12.org.x:t").luns)
    finally:
        reg.close()


def test_bad_config_rule_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, '[[target.fault]]\naction = "medium_error"\nprobability = -1\n')
    assert str(e.value) == ("t.toml: target[0].fault[0].probability: -1 is not a number in 0..1")
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, "", 'fault = "x"')
    assert "target[0].fault: expected an array of tables" in str(e.value)


# ------------------------------------------------------- FAULT CONTROL D5h
def test_fault_control_add_list_clear(t):
    doc = json.dumps([{"action": "medium_error", "lba": [0, 1]}]).encode()
    assert t.submit(fault_control_cdb(0, len(doc)), data_out=doc).ok
    assert not t.submit(read10(0, 1), read_length=BS).ok
    r = t.submit(fault_control_cdb(2, 4096), read_length=4096)
    listed = json.loads(r.data)
    assert listed["rules"][0]["fired"] == 1 and listed["rules"][0]["action"] == "medium_error"
    assert t.submit(fault_control_cdb(1)).ok and t.faults.rules == []


@pytest.mark.parametrize("payload,asc,why", [
    (b"{not json", 0x26, "Expecting"),
    (json.dumps({"action": "busy", "every": 0}).encode(), 0x26, "every"),
])
def test_fault_control_bad_parameter_list(t, payload, asc, why):
    r = t.submit(fault_control_cdb(0, len(payload)), data_out=payload)
    assert r.sense == (SenseKey.ILLEGAL_REQUEST, asc, 0)
    assert t.faults.rules == []
    listed = json.loads(t.submit(fault_control_cdb(2, 4096), read_length=4096).data)
    assert why in listed["last_error"] and "\n" not in listed["last_error"]


def test_fault_control_bad_cdb(t):
    assert t.submit(fault_control_cdb(0, 10), data_out=b"{}").sense == \
        (SenseKey.ILLEGAL_REQUEST, 0x1A, 0)
    assert t.submit(fault_control_cdb(9)).sense == (SenseKey.ILLEGAL_REQUEST, 0x24, 0)
    cdb = bytearray(fault_control_cdb(1))
    cdb[3] = 1
    assert t.submit(bytes(cdb)).sense == (SenseKey.ILLEGAL_REQUEST, 0x24, 0)
    assert t.submit(b"\xd5\x01").sense == (SenseKey.ILLEGAL_REQUEST, 0x24, 0)


# ---------------------------------------------------------------- the log
def test_log_records_decoded_commands(t):
    t.write(7, os.urandom(2 * BS))
    rec = t.log.assert_once("WRITE(10)")
    assert (rec.lba, rec.blocks, rec.data_out_length, rec.status) == (7, 2, 2 * BS, Status.GOOD)
    assert rec.initiator.startswith("iqn.2026-12.org.pyscsi.test:initiator")
    t.submit(bytes([0x12, 0, 0, 0, 36, 0]), read_length=36)
    assert t.log.select("INQUIRY")[0].name == "INQUIRY"


def test_log_assertion_messages_show_the_commands(t):
    t.write(7, os.urandom(BS))
    t.write(900, os.urandom(BS))
    with pytest.raises(AssertionError) as e:
        t.log.assert_writes_within(0, 100)
    assert "WRITE(10) LBA 900 x1" in str(e.value) and "LBA 7 " not in str(e.value)
    with pytest.raises(AssertionError) as e:
        t.log.assert_synced()
    assert str(e.value).startswith("2 write(s) never followed by SYNCHRONIZE CACHE")
    t.sync()
    t.log.assert_synced()
    t.write(8, os.urandom(BS))
    with pytest.raises(AssertionError) as e:
        t.log.assert_synced()
    assert "LBA 8 x1" in str(e.value) and "LBA 900" not in str(e.value)
    with pytest.raises(AssertionError) as e:
        t.log.assert_once("WRITE FILEMARKS")
    assert "expected exactly 1 WRITE FILEMARKS command(s), saw 0" in str(e.value)


def test_failed_sync_does_not_count(t):
    t.write(1, os.urandom(BS))
    t.faults.add(action="medium_error", opcode="SYNCHRONIZE CACHE(10)")
    assert not t.sync().ok
    with pytest.raises(AssertionError):
        t.log.assert_synced()
    assert "fault=medium_error" in t.log.format()


def test_log_is_a_bounded_ring():
    tg = InProcessTarget(log_size=5)
    tg.add_lu("disk", size="1M")
    for i in range(12):
        tg.submit(bytes(6))
    assert len(tg.log) == 5 and [r.seq for r in tg.log] == list(range(8, 13))
    assert tg.log.dropped == 7
    with pytest.raises(ValueError):
        CommandLog(0)


def test_interceptor_bug_keeps_the_never_crash_guard(t, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("bug")
    monkeypatch.setattr(t.faults, "before", boom)
    monkeypatch.setattr(t.log, "record", boom)
    assert t.submit(bytes(6)).ok


# --------------------------------------------------------------- building
def test_lu_kinds_are_data_and_bad_specs_one_line():
    tg = InProcessTarget()
    with pytest.raises(LuSpecError, match="^LU kind 'jukebox' is not known"):
        tg.add_lu("jukebox")
    with pytest.raises(LuSpecError, match="takes no option 'colour'"):
        tg.add_lu("disk", colour="red")
    with pytest.raises(LuSpecError, match="block_size 520"):
        tg.add_lu("disk", block_size=520)
    with pytest.raises(LuSpecError, match="source LUN 3 is not defined"):
        tg.add_lu("backup", source=3)
    with pytest.raises(LuSpecError, match="not tracked"):
        tg.add_lu("disk", 0, size="1M")
        tg.add_lu("backup", 1, source=0)
    tg.add_lu("disk", 2, size="1M", track=True)
    tg.add_lu("backup", 3, source=2)
    assert tg.submit(bytes([0x12, 0, 0, 0, 36, 0]), lun=3, read_length=36).data[16:27] \
        == b"DIFF-BACKUP"
    tg.close()


def test_thick_and_thin_and_file_backing(tmp_path):
    tg = InProcessTarget()
    assert tg.add_lu("disk", size="1M", thin=True).thin
    assert not tg.add_lu("disk", size="1M", thin=False).thin
    lu = tg.add_lu("disk", size="2M", backing=str(tmp_path / "f.img"), block_size=4096)
    assert (tmp_path / "f.img").stat().st_size == 2 << 20 and lu.num_blocks == 512
    tg.close()


def test_cow_snapshot_is_independent_and_reads_through():
    base = MemoryStore(1 << 20)
    seed = random.Random(3).randbytes(1 << 20)
    base.write(0, seed)
    a, b = CowStore(base, chunk=4096), CowStore(base, chunk=4096)
    patch = os.urandom(6000)
    a.write(3000, patch)
    assert a.read(0, 1 << 20) == seed[:3000] + patch + seed[9000:]
    assert b.read(0, 1 << 20) == seed and base.read(0, 1 << 20) == seed
    assert a.copied_bytes == 3 * 4096


def test_server_process_fixture_serves_and_stops_cleanly(iscsi_server_process):
    from scsi_target.initiator.sync import SyncIscsiClient
    from scsi_target.testing.process import Lun, Target
    iqn = "iqn.2026-12.org.pyscsi.test:process"
    proc = iscsi_server_process([Target(iqn, [Lun(0, "4M", {"track": False})])])
    data = os.urandom(BS)
    with SyncIscsiClient(proc.url(0)) as c:
        c.test_unit_ready()
        c.write(5, data)
    proc.restart()                     # SIGTERM exits 0; the data is in the backing file
    with SyncIscsiClient(proc.url(0)) as c:
        c.test_unit_ready()
        assert c.read(5, 1) == data
    assert proc.stop() == 0 and not proc.alive()


def test_drop_connection_in_process_is_task_aborted_and_not_executed(t):
    old = t.read(9, 1)
    t.faults.add(action="drop_connection", opcode="write")
    assert t.write(9, os.urandom(BS)).status == Status.TASK_ABORTED
    assert t.read(9, 1) == old


def test_reject_login_rules_take_only_login_keys_and_known_statuses(t):
    with pytest.raises(FaultRuleError, match="lba: not a key of action 'reject_login'"):
        parse_rules([{"action": "reject_login", "lba": 3}])
    with pytest.raises(FaultRuleError, match="login_status: 1 is not a login failure status"):
        parse_rules([{"action": "reject_login", "login_status": 1}])
    rule = t.faults.add(action="reject_login", initiator="evil", login_status=0x0202)
    assert t.submit(bytes(6)).ok and rule.matched == 0      # commands never match it
    assert t.faults.login_check("iqn.x:good") is None
    assert t.faults.login_check("iqn.x:evil") == 0x0202
    assert t.faults.login_check("iqn.x:evil") is None       # once


def test_tape_kind_when_the_tree_has_tape_lus():
    """Registered from the config's LU kinds (scsi_target/config.py LU_KINDS)."""
    from scsi_target.testing import LU_KINDS
    assert "tape" in LU_KINDS
    tg = InProcessTarget()
    tg.add_lu("tape", size="16M")
    assert tg.submit(bytes([0x10, 0, 0, 0, 1, 0])).ok          # WRITE FILEMARKS(6), 1
    tg.log.assert_once("WRITE FILEMARKS")
    assert tg.submit(bytes([0x10, 0, 0, 0, 2, 0])).ok
    with pytest.raises(AssertionError, match="expected exactly 1 WRITE FILEMARKS command"
                                             r"\(s\), saw 2"):
        tg.log.assert_once("WRITE FILEMARKS")
    tg.close()
