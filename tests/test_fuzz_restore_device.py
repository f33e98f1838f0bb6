"""Fuzz: restore through the backup pseudo device (WRITEs of a stream to the LU).

Invariant 2: a restore never writes a block it cannot verify.  Damaged,
truncated, spliced and garbage streams -- and streams written out of order --
are written to the device of a volume that holds data of its own; afterwards
every block of that volume holds either what it held before or exactly what
the source volume held at the backup.  Never a mixed or foreign block, and
never an internal error (HARDWARE ERROR) from the device.
Corpus: tests/fuzz_corpus/restore/ (streams, replayed onto the same source).
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest

import fuzz_util as F
from scsi_target import config as C
from scsi_target.scsi.command import Command
from scsi_target.scsi.layouts import backup as L
from scsi_target.scsi.sense import SenseKey, parse_sense

BS = 512
# 4 MiB: a full stream of 1 MiB records has four, so damage to one leaves others to apply.
SIZE = 4 << 20
GRAIN = 4096                      # the generation map's block: a record's unit
BLOCKS = SIZE // BS


class Rig:
    """One tracked 4 MiB disk and its backup device, in process (LunMap.execute)."""

    def __init__(self, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        cfg = C.from_flags(listen=["127.0.0.1:0"], disks=[f"{d}/disk.img:{SIZE}"],
                           backup_device=True)
        self.reg = C.build_registry(cfg)
        self.luns = self.reg.targets[C.DEFAULT_IQN].luns
        self.disk, self.dev = self.luns.luns[0], self.luns.luns[1]
        for lun in (0, 1):
            self.run(lun, bytes(6))                  # the power-on unit attention

    def run(self, lun: int, cdb: bytes, data_out=None):
        r = self.luns.execute(Command(cdb, lun=lun, data_out=data_out))
        if r.status == 2:
            key, asc, ascq = parse_sense(r.sense)
            assert key != SenseKey.HARDWARE_ERROR, (hex(asc), hex(ascq))   # a crash, caught
        return r

    def write(self, lba: int, data: bytes) -> None:
        cdb = bytes([0x8A, 0]) + lba.to_bytes(8, "big") + (len(data) // BS).to_bytes(4, "big") \
            + bytes(2)
        assert self.run(0, cdb, data).ok

    def write_dev(self, lba: int, data: bytes):
        data = data + bytes(-len(data) % BS)
        cdb = bytes([0x8A, 0]) + lba.to_bytes(8, "big") + (len(data) // BS).to_bytes(4, "big") \
            + bytes(2)
        return self.run(1, cdb, data)

    def read_stream(self) -> bytes:
        out = bytearray()
        blocks = self.dev.medium.size // BS
        for lba in range(0, blocks, 256):
            n = min(256, blocks - lba)
            r = self.run(1, bytes([0x88, 0]) + lba.to_bytes(8, "big") + n.to_bytes(4, "big")
                         + bytes(2))
            assert r.ok
            out += r.data_in
        st = L.BackupStatus.unpack(bytes(self.run(1, L.cdb(L.OP_REPORT_BACKUP_STATUS,
                                                            length=80)).data_in))
        assert st.state == L.STATE_COMPLETE and st.total
        return bytes(out[:st.total])

    def volume(self) -> bytes:
        return bytes(self.disk.store.read(0, SIZE))

    def close(self) -> None:
        self.reg.close()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A sparse volume (data, holes, a zero-filled run) with its full and one differential."""
    rng = random.Random(0x50CE)
    a = Rig(tmp_path_factory.mktemp("src"))
    try:
        a.write(0, rng.randbytes(192 << 10))
        a.write(640, bytes(32 << 10))                       # written zeros
        a.write(2048, rng.randbytes(40 << 10))
        a.write(5000, rng.randbytes(300 << 10))
        a.write(BLOCKS - 8, rng.randbytes(4096))            # the last blocks
        assert a.run(1, L.cdb(L.OP_SELECT_BACKUP, flags=L.FLAG_FULL)).ok
        full = a.read_stream()
        at_full = a.volume()
        a.write(16, rng.randbytes(12 << 10))
        a.write(1500, rng.randbytes(8 << 10))
        a.write(6000, rng.randbytes(4 << 10))
        a.write(BLOCKS - 64, rng.randbytes(16 << 10))
        assert a.run(1, L.cdb(L.OP_SELECT_BACKUP, scope=1)).ok
        diff = a.read_stream()
        at_diff = a.volume()
    finally:
        a.close()
    assert len(full) > SIZE // 4 and len(diff) < len(full)
    return {"full": full, "at_full": at_full, "diff": diff, "at_diff": at_diff}


def _restore(rig: Rig, rng: random.Random, stream: bytes) -> None:
    """Write ``stream`` to the device in pieces: mostly in order, sometimes out of order."""
    padded = stream + bytes(-len(stream) % BS)
    pieces = []
    pos = 0
    while pos < len(padded):
        n = rng.choice((1, 8, 64, 256, 2048)) * BS
        pieces.append((pos, padded[pos:pos + n]))
        pos += n
    if rng.random() < 0.15 and len(pieces) > 1:
        i, j = rng.sample(range(len(pieces)), 2)
        pieces[i], pieces[j] = pieces[j], pieces[i]
    if rng.random() < 0.1:
        pieces.insert(rng.randrange(len(pieces) + 1), rng.choice(pieces))   # a re-sent piece
    for off, data in pieces:
        rig.write_dev(off // BS, data)
    rig.run(1, L.cdb(L.OP_REPORT_RESTORE_RESULTS, length=65536))


def _only_verified(before: bytes, after: bytes, good: bytes) -> None:
    for off in range(0, SIZE, GRAIN):
        blk = after[off:off + GRAIN]
        assert blk == before[off:off + GRAIN] or blk == good[off:off + GRAIN], \
            f"block {off // GRAIN} holds data that is neither its old contents nor the backup's"


def _fresh_target(tmp: Path, rng: random.Random) -> Rig:
    b = Rig(tmp)
    for _ in range(6):                                      # data of its own, to tell apart
        b.write(rng.randrange(0, BLOCKS - 64), rng.randbytes(rng.choice((1, 8, 64)) * BS))
    return b


def _case(tmp: Path, rng: random.Random, src: dict, stream: bytes, onto_full: bool) -> None:
    b = _fresh_target(tmp, rng)
    try:
        if onto_full:                   # a differential goes onto its full, restored clean
            _restore(b, random.Random(0), src["full"])
            assert b.volume() == src["at_full"]
            good = src["at_diff"]
        else:
            good = src["at_full"]
        before = b.volume()
        _restore(b, rng, stream)
        _only_verified(before, b.volume(), good)
    finally:
        b.close()


def test_clean_streams_restore_exactly(tmp_path, source):
    b = _fresh_target(tmp_path / "b", random.Random(1))
    try:
        _restore(b, random.Random(2), source["full"])
        assert b.volume() == source["at_full"]
        _restore(b, random.Random(3), source["diff"])
        assert b.volume() == source["at_diff"]
    finally:
        b.close()


@pytest.mark.parametrize("name, data", F.cases("restore"))
def test_restore_corpus(tmp_path, source, name, data):
    _case(tmp_path / "b", random.Random(name), source, data, onto_full=name.startswith("diff"))


def test_damaged_full_streams(tmp_path, source):
    rng = random.Random(0xF011)
    for i, data in enumerate(F.mutants(rng, [source["full"]], F.count(60), random_share=0)):
        _case(tmp_path / f"b{i}", rng, source, data, onto_full=False)


def test_damaged_differential_streams(tmp_path, source):
    rng = random.Random(0xD1FF)
    for i, data in enumerate(F.mutants(rng, [source["diff"]], F.count(40), random_share=0)):
        _case(tmp_path / f"b{i}", rng, source, data, onto_full=True)
