"""The READ/WRITE fast path answers exactly what the general dispatch path answers.

Two disks start alike: one with the fast handlers (the default table), one whose
table has none (``DispatchTable(..., fast=False)``), so every command takes the
general path (lookup, direction, unit attention, reservations, readiness,
handler).  A corpus of READ/WRITE(10/16) CDBs — flags, CONTROL bits, ranges,
lengths, transfer directions, expected lengths, data-out sizes — goes through
both in LU states that make the general path refuse or differ (pending unit
attention, first contact, reservations, stopped, write protected, read-only,
failing medium); responses and medium contents must be identical.
"""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from scsi_target.scsi import devices, modepages
from scsi_target.scsi import sense as S
from scsi_target.scsi.command import Command, Direction, Nexus, Status
from scsi_target.scsi.disk import DiskLU
from scsi_target.scsi.dispatch import DispatchTable
from scsi_target.scsi.reservations import PrType
from volume.memstore import MemoryStore
from volume.store import StoreError

BS = 512
NBLOCKS = 256
MAX_TRANSFER = 64
BAD_LBA = 200          # the failing store refuses I/O touching this block
ME = Nexus("iqn.2026-11.test:me,i,0x000000000001")
OTHER = Nexus("iqn.2026-11.test:other,i,0x000000000002")


class FailingStore(MemoryStore):
    def _bad(self, offset: int, n: int) -> bool:
        return offset <= BAD_LBA * BS < offset + n

    def readinto(self, offset, buf):
        if self._bad(offset, len(buf)):
            raise StoreError("injected read failure")
        return super().readinto(offset, buf)

    def write(self, offset, data):
        if self._bad(offset, len(memoryview(data).cast("B"))):
            raise StoreError("injected write failure")
        return super().write(offset, data)


def _disk(fast: bool, read_only: bool) -> DiskLU:
    from scsi_target.scsi.capabilities import BlockLimits, Provisioning
    store = FailingStore(NBLOCKS * BS, 512)
    MemoryStore.write(store, 0, bytes(range(256)) * (NBLOCKS * BS // 256))
    prov = Provisioning(thin=bool(store.thin))
    table = DispatchTable(devices.disk_table(prov, read_only).sets, fast=fast)
    lu = DiskLU(store, BS, read_only=read_only, limits=BlockLimits(max_transfer_blocks=MAX_TRANSFER),
                provisioning=prov, table=table)
    return lu


def _tur(lu: DiskLU, nexus: Nexus) -> None:
    lu.execute(Command(cdb=bytes(6), nexus=nexus))


STATES = {
    "quiet": lambda lu: _tur(lu, ME),
    "first contact": lambda lu: None,
    "pending UA": lambda lu: (_tur(lu, ME), lu.ua.establish(S.MODE_PARAMETERS_CHANGED, nexus=ME)),
    "SPC-2 reserved by other": lambda lu: (_tur(lu, ME), _tur(lu, OTHER), lu.pr.reserve6(OTHER)),
    "SPC-2 reserved by me": lambda lu: (_tur(lu, ME), lu.pr.reserve6(ME)),
    "PR write exclusive by other": lambda lu: (
        _tur(lu, ME), _tur(lu, OTHER), lu.pr.register(OTHER, 0, 7, False),
        lu.pr.reserve(OTHER, 7, PrType.WRITE_EXCLUSIVE)),
    "PR exclusive access by other": lambda lu: (
        _tur(lu, ME), _tur(lu, OTHER), lu.pr.register(OTHER, 0, 7, False),
        lu.pr.reserve(OTHER, 7, PrType.EXCLUSIVE_ACCESS)),
    "stopped": lambda lu: (_tur(lu, ME), setattr(lu, "stopped", True)),
    "software write protect": lambda lu: (
        _tur(lu, ME), lu.mode.set_bit(modepages.PAGE_CONTROL, 0, *modepages._CTL_SWP, True)),
}

OPCODES = {0x28: 10, 0x88: 16, 0x2A: 10, 0x8A: 16}


def _cdb(opcode: int, flags: int, lba: int, n: int, control: int, size_cut: int) -> bytes:
    if OPCODES[opcode] == 10:
        cdb = struct.pack(">BBIBHB", opcode, flags, lba & 0xFFFFFFFF, 0, n & 0xFFFF, control)
    else:
        cdb = struct.pack(">BBQIBB", opcode, flags, lba, n & 0xFFFFFFFF, 0, control)
    # iSCSI pads CDBs to 16 bytes; a cut one is malformed.
    return (cdb + bytes(16 - len(cdb)))[:len(cdb) + 6 - size_cut] if size_cut else \
        cdb + bytes(16 - len(cdb))


# Each field's values, the plain one among them.
VALUES = {
    "flags": [0, 0x08, 0x10, 0x18, 0x02, 0x20, 0x40, 0xE0, 0x04],
    "lba": [0, 1, 17, BAD_LBA - 1, NBLOCKS - 8, NBLOCKS - 1, NBLOCKS, NBLOCKS + 1, 0xFFFFFFFF,
            1 << 63],
    "n": [0, 1, 2, 8, MAX_TRANSFER, MAX_TRANSFER + 1, 300],
    "control": [0, 0x01, 0x04, 0x40],
    "size_cut": [0, 7, 10],
    "direction": list(Direction) + [3],   # 3: BIDI as a plain int (in-process callers)
    # expected length relative to the CDB's transfer
    "edtl": ["none", "exact", "zero", "less", "more"],
    "data": ["none", "exact", "short", "long", "empty"],
    "defer": [False, True],
}
commands = st.fixed_dictionaries({"opcode": st.sampled_from(sorted(OPCODES)),
                                  **{k: st.sampled_from(v) for k, v in VALUES.items()}})


def _command(c: dict, nexus: Nexus) -> Command:
    cdb = _cdb(c["opcode"], c["flags"], c["lba"], c["n"], c["control"], c["size_cut"])
    want = (c["n"] if c["n"] <= 300 else 0) * BS
    edtl = {"none": None, "exact": want, "zero": 0, "less": max(0, want - BS),
            "more": want + BS}[c["edtl"]]
    data = {"none": None, "exact": bytes([0xA5]) * want, "short": bytes([0x5A]) * max(0, want - 7),
            "long": bytes([0x3C]) * (want + BS), "empty": b""}[c["data"]]
    return Command(cdb=cdb, data_out=None if data is None else bytearray(data),
                   expected_length=edtl, direction=c["direction"], nexus=nexus,
                   defer_barrier=c["defer"])


def _outcome(resp) -> tuple:
    return (resp.status, bytes(resp.data_in), bytes(resp.sense), resp.residual)


def _plain(opcode: int) -> dict:
    write = opcode in (0x2A, 0x8A)
    return {"opcode": opcode, "flags": 0, "lba": 17, "n": 8, "control": 0, "size_cut": 0,
            "direction": Direction.OUT if write else Direction.IN, "edtl": "exact",
            "data": "exact" if write else "none", "defer": False}


# The plain command, then the plain command with one field changed to each other
# value of its range: every way a command can leave the fast path, one at a time.
CORPUS = [(op, {}) for op in sorted(OPCODES)] + [
    (op, {key: value})
    for op in sorted(OPCODES)
    for key, values in VALUES.items()
    for value in values if value != _plain(op)[key]]


@pytest.mark.parametrize("state", sorted(STATES))
@pytest.mark.parametrize("read_only", [False, True])
def test_corpus_gets_the_same_answers_on_both_paths(state, read_only):
    for opcode, change in CORPUS:
        c = {**_plain(opcode), **change}
        for nexus in (ME, OTHER):
            fast, general = _disk(True, read_only), _disk(False, read_only)
            for lu in (fast, general):
                STATES[state](lu)
            a = fast.execute(_command(c, nexus))
            b = general.execute(_command(c, nexus))
            assert _outcome(a) == _outcome(b), (state, read_only, nexus, c)
            assert (a.release is None) == (b.release is None)
            assert fast.store._data == general.store._data, (state, read_only, nexus, c)


@settings(max_examples=300, deadline=None)
@given(state=st.sampled_from(sorted(STATES)), read_only=st.booleans(),
       batch=st.lists(commands, min_size=1, max_size=4),
       from_other=st.lists(st.booleans(), min_size=4, max_size=4))
def test_fast_path_answers_like_the_general_path(state, read_only, batch, from_other):
    fast, general = _disk(True, read_only), _disk(False, read_only)
    assert fast.table.fast and not general.table.fast
    for lu in (fast, general):
        STATES[state](lu)
    for c, other in zip(batch, from_other):
        nexus = OTHER if other else ME
        a = fast.execute(_command(c, nexus))
        b = general.execute(_command(c, nexus))
        assert _outcome(a) == _outcome(b), (state, c)
        assert (a.release is None) == (b.release is None)
    assert fast.store._data == general.store._data


def test_fast_path_is_taken_for_plain_reads_and_writes(monkeypatch):
    """Otherwise the comparison above proves nothing: plain commands skip the lookup."""
    lu = _disk(True, False)
    _tur(lu, ME)

    def general_path(*a, **k):
        raise AssertionError("general dispatch used")
    monkeypatch.setattr(lu.table, "lookup", general_path)
    for opcode in OPCODES:
        write = opcode in (0x2A, 0x8A)
        cmd = _command({"opcode": opcode, "flags": 0, "lba": 8, "n": 8, "control": 0,
                        "size_cut": 0, "direction": Direction.OUT if write else Direction.IN,
                        "edtl": "exact", "data": "exact" if write else "none",
                        "defer": False}, ME)
        resp = lu.execute(cmd)
        assert resp.status == Status.GOOD and resp.residual == 0
        assert len(resp.data_in) == (0 if write else 8 * BS)
    assert bytes(lu.execute(_command({"opcode": 0x28, "flags": 0, "lba": 8, "n": 1, "control": 0,
                                      "size_cut": 0, "direction": Direction.IN, "edtl": "exact",
                                      "data": "none", "defer": False}, ME)).data_in) == \
        bytes([0xA5]) * BS


@pytest.mark.parametrize("opcode", sorted(OPCODES))
def test_a_table_without_fast_handlers_never_uses_them(opcode):
    assert opcode in DispatchTable(devices.DISK.sets).fast
    assert opcode not in DispatchTable(devices.DISK.sets, fast=False).fast
