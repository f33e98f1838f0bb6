"""Fuzz: CDBs per opcode for the LUs the SPC/SSC fuzz tests do not drive: a tracked disk
(SPC + SBC + EXTENDED COPY) and its backup pseudo device (SPC + SBC + vendor backup).

For every opcode (and service action) of each LU's dispatch table, seeded
random CDBs of the opcode's length -- and shorter and longer ones --, with
random parameter lists or data-out sized to what the CDB asks, run in
sequences through LunMap.execute (the in-process API).  Every answer is a
defined status; a CHECK CONDITION carries parseable sense that is never
HARDWARE ERROR (LunMap's guard turning a crash into INTERNAL TARGET FAILURE);
the LU answers INQUIRY afterwards.  tests/test_spc_fuzz.py and
tests/test_ssc_fuzz.py cover the SPC table and the tape LU the same way.
Corpus: tests/fuzz_corpus/cdb/ -- byte 0 is the LUN (0 disk, 1 backup
device), byte 1 the CDB length, then the CDB, then the data-out (if any).
"""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

import fuzz_util as F
from scsi_target import config as C
from scsi_target.scsi.command import Command, Direction, Nexus, Status
from scsi_target.scsi.sense import SenseKey, parse_sense

DEFINED = (Status.GOOD, Status.CHECK_CONDITION, Status.RESERVATION_CONFLICT,
           Status.CONDITION_MET, Status.BUSY, Status.TASK_SET_FULL)
NEXUS = [Nexus(f"iqn.2026-11.test:i{i},i,0x00000000000{i}", "iqn.2026-11.test:t,t,0x0001",
               initiator_name=f"iqn.2026-11.test:i{i}", isid=i) for i in (1, 2)]
MAX_DATA = 64 << 10               # random data-out at most this long: cheap, still past any page


class Rig:
    def __init__(self, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        self.reg = C.build_registry(C.from_flags(listen=["127.0.0.1:0"],
                                                 disks=[f"{d}/disk.img:1M"], backup_device=True))
        self.luns = self.reg.targets[C.DEFAULT_IQN].luns

    def run(self, lun: int, cdb: bytes, data: bytes | None, nexus: Nexus) -> None:
        direction = Direction.OUT if data is not None else Direction.IN
        length = len(data) if data is not None else MAX_DATA
        r = self.luns.execute(Command(cdb, lun=lun, data_out=data, expected_length=length,
                                      direction=direction, nexus=nexus))
        assert r.status in DEFINED, (cdb.hex(), r.status)
        if r.status == Status.CHECK_CONDITION:
            key, asc, ascq = parse_sense(r.sense)
            assert key != SenseKey.HARDWARE_ERROR, (cdb.hex(), hex(asc), hex(ascq))
        assert len(r.data_in) <= max(length, 0) or data is not None, cdb.hex()

    def step(self, rng: random.Random, lun: int, entry) -> None:
        nexus = rng.choice(NEXUS)
        self.run(lun, _cdb(rng, entry), _data(rng, entry), nexus)
        if entry.opcode == 0x1B:
            # A random START STOP UNIT may stop the LU; start it again so the
            # commands after it get past NOT READY.
            self.run(lun, bytes([0x1B, 0, 0, 0, 1, 0]), None, nexus)

    def alive(self) -> None:
        for lun in (0, 1):
            for nexus in NEXUS:
                r = self.luns.execute(Command(bytes([0x12, 0, 0, 0, 36, 0]), lun=lun,
                                              expected_length=36, direction=Direction.IN,
                                              nexus=nexus))
                assert r.status in (Status.GOOD, Status.CHECK_CONDITION)   # a UA at most once

    def close(self) -> None:
        self.reg.close()


def _cdb(rng: random.Random, entry) -> bytes:
    n = entry.cdb_length
    r = rng.random()
    if r < 0.05:
        n = rng.randint(1, max(1, n - 1))                  # short: the IndexErrors
    elif r < 0.08:
        n = n + rng.randint(1, 16)                         # longer than the opcode's length
    cdb = bytearray(rng.randbytes(n))
    if rng.random() < 0.5:                                 # mostly-zero CDBs reach deeper
        for i in range(1, n):
            if rng.random() < 0.7:
                cdb[i] = 0
    cdb[0] = entry.opcode
    if entry.service_action is not None and n > 1:
        cdb[1] = (cdb[1] & 0xE0) | entry.service_action
    if n > 1 and rng.random() < 0.9:
        cdb[-1] &= 0xFC                                    # NACA/LINK mostly clear
    return bytes(cdb)


def _data(rng: random.Random, entry) -> bytes | None:
    if entry.direction == Direction.OUT or rng.random() < 0.1:
        return rng.randbytes(rng.choice((0, 1, 4, 8, 24, 512, 4096, rng.randint(0, MAX_DATA))))
    return None


def _tables(rig: Rig):
    return [(lun, rig.luns.luns[lun].table.entries()) for lun in (0, 1)]


@pytest.mark.parametrize("name, data", F.cases("cdb"))
def test_cdb_corpus(tmp_path, name, data):
    rig = Rig(tmp_path)
    try:
        lun, n = data[0], data[1]
        cdb, rest = data[2:2 + n], data[2 + n:]
        for nexus in NEXUS:
            rig.run(lun, cdb, rest if rest else None, nexus)
        rig.alive()
    finally:
        rig.close()


def test_every_opcode_random_cdbs(tmp_path):
    """Each opcode in turn, many CDBs each, on one LU pair (state carries over)."""
    rng = random.Random(0xCDB0)
    rig = Rig(tmp_path / "a")
    per_op: Counter = Counter()
    try:
        for lun, entries in _tables(rig):
            for entry in entries:
                for _ in range(F.count(150)):
                    rig.step(rng, lun, entry)
                    per_op[lun, entry.opcode, entry.service_action] += 1
            rig.alive()
    finally:
        rig.close()
    assert len(per_op) > 60 and min(per_op.values()) == F.count(150)


def test_random_command_sequences(tmp_path):
    """Mixed sequences across both LUs and two initiators: reservations, backups, restores."""
    rng = random.Random(0x5E0)
    for k in range(F.count(6)):
        rig = Rig(tmp_path / f"s{k}")
        try:
            tables = _tables(rig)
            for _ in range(400):
                lun, entries = rng.choice(tables)
                rig.step(rng, lun, rng.choice(entries))
            rig.alive()
        finally:
            rig.close()
