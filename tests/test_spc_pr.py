"""Persistent reservations and SPC-2 RESERVE/RELEASE across two I_T nexuses."""
from __future__ import annotations

import struct

import pytest

from scsi_target.scsi.command import Status
from scsi_target.scsi.sense import SenseKey
from test_spc_misc import NEXUS1, NEXUS2, Harness

EA, WE, EARO, WERO, EAAR, WEAR = 3, 1, 6, 5, 8, 7
REG, RES, REL, CLEAR, PREEMPT, PREEMPT_ABORT, REG_IGNORE = 0, 1, 2, 3, 4, 5, 6
CONFLICT = Status.RESERVATION_CONFLICT


def prout(h, sa, key=0, sark=0, pr_type=0, nexus=NEXUS1, flags=0, length=24):
    params = struct.pack(">QQIBBH", key, sark, 0, flags, 0, 0)[:length]
    cdb = [0x5F, sa, pr_type, 0, 0, 0, 0, 0, length, 0]
    return h.run(cdb, data=params, nexus=nexus).status


def prin(h, sa, alloc=4096, nexus=NEXUS1) -> bytes:
    return h.ok([0x5E, sa, 0, 0, 0, 0, 0, alloc >> 8, alloc & 0xFF, 0], length=alloc, nexus=nexus)


def read_keys(h) -> tuple[int, list[int]]:
    data = prin(h, 0)
    gen, n = struct.unpack(">II", data[:8])
    return gen, [struct.unpack(">Q", data[8 + i:16 + i])[0] for i in range(0, n, 8)]


def read_reservation(h):
    data = prin(h, 1)
    gen, n = struct.unpack(">II", data[:8])
    if not n:
        return None
    key, _, _, scope_type, _ = struct.unpack(">QIBBH", data[8:24])
    return key, scope_type & 0x0F


def can_read(h, nexus) -> bool:
    st = h.run([0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0], length=512, nexus=nexus).status
    assert st in (Status.GOOD, CONFLICT)
    return st == Status.GOOD


def can_write(h, nexus) -> bool:
    st = h.run([0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0], data=bytes(512), nexus=nexus).status
    assert st in (Status.GOOD, CONFLICT)
    return st == Status.GOOD


def test_register_read_keys_reregister_unregister():
    h = Harness()
    gen0, keys = read_keys(h)
    assert keys == []
    assert prout(h, REG_IGNORE, sark=0x1234) == Status.GOOD
    gen1, keys = read_keys(h)
    assert keys == [0x1234] and gen1 == gen0 + 1
    # A registered nexus re-registering with a wrong reservation key conflicts.
    assert prout(h, REG, key=0, sark=0x1235) == CONFLICT
    assert prout(h, REG, key=0x1234, sark=0) == Status.GOOD
    assert read_keys(h)[1] == []


def test_unregistered_register_with_nonzero_key_conflicts():
    h = Harness()
    assert prout(h, REG, key=5, sark=6) == CONFLICT
    assert prout(h, REG, key=0, sark=6) == Status.GOOD


# (type, reg_i2_read, reg_i2_write, unreg_i2_read, unreg_i2_write) as libiscsi checks them
ACCESS = [
    (EA, False, False, False, False),
    (WE, True, False, True, False),
    (EARO, True, True, False, False),
    (WERO, True, True, True, False),
    (EAAR, True, True, False, False),
    (WEAR, True, True, True, False),
]


@pytest.mark.parametrize("pr_type,rr,rw,ur,uw", ACCESS)
def test_reservation_access(pr_type, rr, rw, ur, uw):
    h = Harness()
    k1, k2 = 0xA1, 0xB2
    assert prout(h, REG_IGNORE, sark=k1) == Status.GOOD
    assert prout(h, REG_IGNORE, sark=k2, nexus=NEXUS2) == Status.GOOD
    assert prout(h, RES, key=k1, pr_type=pr_type) == Status.GOOD
    all_reg = pr_type in (EAAR, WEAR)
    assert read_reservation(h) == (0 if all_reg else k1, pr_type)
    assert can_read(h, NEXUS1) and can_write(h, NEXUS1)
    assert (can_read(h, NEXUS2), can_write(h, NEXUS2)) == (rr, rw)
    assert prout(h, REG, key=k2, sark=0, nexus=NEXUS2) == Status.GOOD
    assert (can_read(h, NEXUS2), can_write(h, NEXUS2)) == (ur, uw)
    assert prout(h, REL, key=k1, pr_type=pr_type) == Status.GOOD
    assert prout(h, REG, key=k1, sark=0) == Status.GOOD
    assert read_reservation(h) is None


@pytest.mark.parametrize("pr_type,shared", [(EA, False), (WE, False), (EARO, False),
                                            (WERO, False), (EAAR, True), (WEAR, True)])
def test_reservation_ownership_after_holder_unregisters(pr_type, shared):
    h = Harness()
    k1, k2 = 0x11, 0x22
    prout(h, REG_IGNORE, sark=k1)
    prout(h, REG_IGNORE, sark=k2, nexus=NEXUS2)
    assert prout(h, RES, key=k1, pr_type=pr_type) == Status.GOOD
    assert prout(h, REG, key=k1, sark=0) == Status.GOOD
    if shared:
        assert read_reservation(h) == (0, pr_type)
        assert prout(h, REL, key=k2, pr_type=pr_type, nexus=NEXUS2) == Status.GOOD
    else:
        assert read_reservation(h) is None
        h.clear_ua(NEXUS2)  # registrants-only types tell NEXUS2 RESERVATIONS RELEASED
    assert prout(h, REG, key=k2, sark=0, nexus=NEXUS2) == Status.GOOD


def test_registrants_only_release_tells_other_registrants():
    h = Harness()
    prout(h, REG_IGNORE, sark=1)
    prout(h, REG_IGNORE, sark=2, nexus=NEXUS2)
    prout(h, RES, key=1, pr_type=WERO)
    prout(h, REL, key=1, pr_type=WERO)
    h.check([0, 0, 0, 0, 0, 0], SenseKey.UNIT_ATTENTION, 0x2A, 0x04, nexus=NEXUS2)


def test_reserve_rules():
    h = Harness()
    assert prout(h, RES, key=1, pr_type=EA) == CONFLICT       # not registered
    prout(h, REG_IGNORE, sark=1)
    prout(h, REG_IGNORE, sark=2, nexus=NEXUS2)
    assert prout(h, RES, key=9, pr_type=EA) == CONFLICT       # wrong key
    assert prout(h, RES, key=1, pr_type=2) == Status.CHECK_CONDITION  # no such type
    assert prout(h, RES, key=1, pr_type=0x10 | EA) == Status.CHECK_CONDITION  # scope
    assert prout(h, RES, key=1, pr_type=EA) == Status.GOOD
    assert prout(h, RES, key=1, pr_type=EA) == Status.GOOD    # same holder, same type
    assert prout(h, RES, key=1, pr_type=WE) == CONFLICT       # holder, other type
    assert prout(h, RES, key=2, pr_type=EA, nexus=NEXUS2) == CONFLICT
    # release with the wrong type
    r = h.run([0x5F, REL, WE, 0, 0, 0, 0, 0, 24, 0], data=struct.pack(">Q", 1) + bytes(16))
    assert r.sense == (SenseKey.ILLEGAL_REQUEST, 0x26, 0x04)
    # release by a non-holder registrant is a no-op
    assert prout(h, REL, key=2, pr_type=EA, nexus=NEXUS2) == Status.GOOD
    assert read_reservation(h) == (1, EA)


def test_clear_bumps_generation_once_and_notifies():
    h = Harness()
    prout(h, REG_IGNORE, sark=7)
    prout(h, REG_IGNORE, sark=8, nexus=NEXUS2)
    gen, keys = read_keys(h)
    assert sorted(keys) == [7, 8]
    prout(h, RES, key=7, pr_type=EA)
    assert read_keys(h)[0] == gen                     # RESERVE does not bump it
    assert prout(h, CLEAR, key=7) == Status.GOOD
    assert read_reservation(h) is None
    assert read_keys(h) == (gen + 1, [])
    h.check([0, 0, 0, 0, 0, 0], SenseKey.UNIT_ATTENTION, 0x2A, 0x03, nexus=NEXUS2)


def test_preempt_removes_registration_like_libiscsi():
    h = Harness()
    k1, k2 = 0x100, 0x200
    prout(h, REG_IGNORE, sark=k1)
    prout(h, CLEAR, key=k1)
    prout(h, REG_IGNORE, sark=k1)
    prout(h, REG_IGNORE, sark=k2, nexus=NEXUS2)
    gen, keys = read_keys(h)
    assert len(keys) == 2
    assert prout(h, PREEMPT, key=k2, sark=k1, pr_type=EA, nexus=NEXUS2) == Status.GOOD
    h.check([0, 0, 0, 0, 0, 0], SenseKey.UNIT_ATTENTION, 0x2A, 0x05)
    h.clear_ua(NEXUS1)
    h.clear_ua(NEXUS2)
    assert read_keys(h) == (gen + 1, [k2])


def test_preempt_holder_takes_over_reservation():
    h = Harness()
    prout(h, REG_IGNORE, sark=1)
    prout(h, REG_IGNORE, sark=2, nexus=NEXUS2)
    prout(h, RES, key=1, pr_type=WE)
    assert prout(h, PREEMPT_ABORT, key=2, sark=1, pr_type=EA, nexus=NEXUS2) == Status.GOOD
    h.check([0, 0, 0, 0, 0, 0], SenseKey.UNIT_ATTENTION, 0x2A, 0x05)
    assert read_reservation(h) == (2, EA)
    assert read_keys(h)[1] == [2]
    assert prout(h, PREEMPT, key=2, sark=5, pr_type=EA, nexus=NEXUS2) == CONFLICT  # no such key


def test_preempt_all_registrants_with_zero_key():
    h = Harness()
    prout(h, REG_IGNORE, sark=1)
    prout(h, REG_IGNORE, sark=2, nexus=NEXUS2)
    prout(h, RES, key=1, pr_type=WEAR)
    assert prout(h, PREEMPT, key=2, sark=0, pr_type=WE, nexus=NEXUS2) == Status.GOOD
    h.clear_ua(NEXUS1)
    assert read_reservation(h) == (2, WE)
    assert read_keys(h)[1] == [2]


def test_parameter_list_checks():
    h = Harness()
    r = h.run([0x5F, REG_IGNORE, 0, 0, 0, 0, 0, 0, 20, 0], data=bytes(20))
    assert r.sense == (SenseKey.ILLEGAL_REQUEST, 0x1A, 0)
    for flag in (0x01, 0x04, 0x08):  # APTPL, ALL_TG_PT, SPEC_I_PT unsupported
        assert prout(h, REG_IGNORE, sark=1, flags=flag) == Status.CHECK_CONDITION


def test_prin_service_action_range():
    h = Harness()
    for sa in range(4):
        prin(h, sa)
    for sa in range(4, 0x20):
        r = h.run([0x5E, sa, 0, 0, 0, 0, 0, 16, 0, 0])
        assert r.status == Status.CHECK_CONDITION


def test_report_capabilities():
    data = prin(Harness(), 2)
    assert data == bytes([0, 8, 0x00, 0x80, 0xEA, 0x01, 0, 0])
    assert (data[3] >> 4) & 7 <= 5


def test_read_keys_truncated_keeps_additional_length():
    h = Harness()
    prout(h, REG_IGNORE, sark=3)
    data = prin(h, 0, alloc=8)
    assert len(data) == 8 and struct.unpack(">I", data[4:8])[0] == 8


def test_read_full_status():
    h = Harness()
    prout(h, REG_IGNORE, sark=3)
    prout(h, REG_IGNORE, sark=4, nexus=NEXUS2)
    prout(h, RES, key=3, pr_type=WE)
    data = prin(h, 3)
    gen, n = struct.unpack(">II", data[:8])
    pos, seen = 8, {}
    while pos < 8 + n:
        key, _, flags, st, _, rtpi, tlen = struct.unpack(">QIBBIHI", data[pos:pos + 24])
        tid = data[pos + 24:pos + 24 + tlen]
        assert tid[0] & 0x0F == 5 and tlen % 4 == 0     # iSCSI TransportID
        seen[key] = (flags & 1, st & 0x0F, rtpi, tid)
        pos += 24 + tlen
    assert seen[3][:3] == (1, WE, 1) and seen[4][:2] == (0, 0)
    assert b"init1" in seen[3][3] and b"init2" in seen[4][3]


def test_persistent_state_survives_nexus_loss_and_lu_reset():
    h = Harness()
    prout(h, REG_IGNORE, sark=3)
    prout(h, RES, key=3, pr_type=EA)
    h.lu.nexus_lost(NEXUS1)
    h.lu.reset()
    h.clear_ua(NEXUS1)
    assert read_reservation(h) == (3, EA)


# -- SPC-2 RESERVE(6)/RELEASE(6) -------------------------------------------------------
RESERVE6, RELEASE6, MODE_SENSE = [0x16, 0, 0, 0, 0, 0], [0x17, 0, 0, 0, 0, 0], \
    [0x1A, 0, 0x3F, 0, 255, 0]


def test_reserve6_two_initiators_like_libiscsi():
    h = Harness()
    assert h.run(RESERVE6).status == Status.GOOD
    assert h.run(RESERVE6).status == Status.GOOD
    assert h.run(RESERVE6, nexus=NEXUS2).status == CONFLICT
    assert h.run(RELEASE6, nexus=NEXUS2).status == Status.GOOD      # no-op
    assert h.run(MODE_SENSE).status == Status.GOOD
    assert h.run(MODE_SENSE, nexus=NEXUS2).status == CONFLICT
    assert h.run([0x12, 0, 0, 0, 36, 0], nexus=NEXUS2).status == Status.GOOD
    assert h.run(RESERVE6, nexus=NEXUS2).status == CONFLICT
    assert h.run(RELEASE6).status == Status.GOOD
    assert h.run(RESERVE6, nexus=NEXUS2).status == Status.GOOD
    assert h.run(RELEASE6, nexus=NEXUS2).status == Status.GOOD


@pytest.mark.parametrize("event", ["nexus_lost", "reset"])
def test_reserve6_released_by_nexus_loss_and_reset(event):
    h = Harness()
    assert h.run([0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0]).status == Status.GOOD   # RESERVE(10)
    if event == "nexus_lost":
        h.lu.nexus_lost(NEXUS1)
    else:
        h.lu.reset()
        h.clear_ua(NEXUS2)
    assert h.run(RESERVE6, nexus=NEXUS2).status == Status.GOOD


def test_reserve6_and_persistent_reservations_exclude_each_other():
    h = Harness()
    prout(h, REG_IGNORE, sark=1)
    prout(h, RES, key=1, pr_type=WE)
    assert h.run(RESERVE6).status == CONFLICT
    prout(h, REL, key=1, pr_type=WE)
    assert h.run(RESERVE6).status == Status.GOOD
    assert prout(h, REG_IGNORE, sark=2, nexus=NEXUS2) == CONFLICT
