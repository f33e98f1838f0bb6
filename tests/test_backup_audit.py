"""Tracker self-audit (volume/audit.py, volume/blockcrc.py, `diffbackup audit`):
writes made behind the tracker's back -- straight into the backing file -- are
found, re-marked, and carried by the next differential."""
from __future__ import annotations

import json
import os
import random
from array import array
from pathlib import Path

import crc32c
import pytest

from tools.diffbackup import main
from volume import blockcrc
from volume.audit import phase_for
from volume.filestore import FileStore
from volume.tracked import TrackingStore

from scsi_target.testing.seed import random_file, tracked_writes

SIZE = (6 << 20) + 2560          # 1537 tracking blocks, the last one partial
BS = 4096
GOLDEN = Path(__file__).parent / "golden"


def run(*args) -> int:
    return main(["-q", *map(str, args)])


def _map_facts(vol) -> tuple[bytes, int, int]:
    v = TrackingStore.open(FileStore(str(vol)), str(vol))
    try:
        return v.map.base_id, v.map.current_generation, v.map.entries
    finally:
        v.close()


def _behind_the_back(vol, blocks, seed=5) -> None:
    rnd = random.Random(seed)
    fd = os.open(vol, os.O_WRONLY)
    try:
        for b in blocks:
            os.pwrite(fd, rnd.randbytes(100), b * BS + rnd.randrange(BS - 100))
    finally:
        os.close(fd)


def _chain(tmp_path, density=1.0):
    vol = tmp_path / "vol.img"
    random_file(vol, SIZE, density=density, seed=3)
    files = [tmp_path / "full.bk"]
    assert run("full", vol, "-o", files[0]) == 0
    for i in (1, 2):
        tracked_writes(vol, SIZE, writes=40, seed=i)
        files.append(tmp_path / f"d{i}.bk")
        assert run("diff", vol, "--scope", 1, "-o", files[-1]) == 0
    return vol, files


def test_clean_volume_audits_ok(tmp_path, capsys):
    vol, _files = _chain(tmp_path, density=0.2)
    tracked_writes(vol, SIZE, writes=30, seed=9)     # seen by the tracker: not a miss
    capsys.readouterr()
    assert run("audit", vol) == 0
    assert "audit ok" in capsys.readouterr().out
    assert run("audit", vol, "--full") == 0
    text = capsys.readouterr().out
    _base, _cur, entries = _map_facts(vol)
    checked = int(text.split("audit ok: ")[1].split()[0])
    assert 0 < checked < entries and "every unchanged block" in text


def test_missed_writes_found_remarked_and_restored(tmp_path, capsys):
    vol, files = _chain(tmp_path)
    base, cur, entries = _map_facts(vol)
    phase = phase_for(base, cur, 1024)
    # one block the sample checks, and three it does not: the escalation finds them
    a = (phase + 300) % 1400 + 10                 # never next to the phase or the last block
    missed = [phase, a, a + 1, 1536 if phase < 1530 else 5]
    _behind_the_back(vol, missed)
    capsys.readouterr()
    assert run("audit", vol, "--rate", 1024) == 1
    text = capsys.readouterr().out
    assert "AUDIT FAILED: 4 blocks changed without the tracker seeing it" in text
    exts = sorted({(phase, phase), (a, a + 1), (missed[3], missed[3])})
    assert "(blocks " + ", ".join(f"{a}..{b}" for a, b in exts) + ")" in text
    assert "escalated to a full compare" in text
    assert "4 blocks marked in generation" in text
    # the next differential carries exactly the missed blocks
    nxt = tmp_path / "d3.bk"
    assert run("diff", vol, "--scope", 1, "-o", nxt) == 0
    assert "4 blocks" in capsys.readouterr().out
    dest = tmp_path / "restored.img"
    assert run("restore", dest, *files, nxt) == 0
    assert dest.read_bytes() == vol.read_bytes()
    # the table now holds what d3 sent: the volume audits clean again
    assert run("audit", vol, "--full") == 0


def test_a_miss_outside_the_sample_needs_full(tmp_path, capsys):
    vol, _files = _chain(tmp_path)
    base, cur, _entries = _map_facts(vol)
    b = (phase_for(base, cur, 1024) + 17) % 1537
    _behind_the_back(vol, [b])
    assert run("audit", vol) == 0               # one block in 1024: not this one
    assert run("audit", vol, "--full") == 1
    assert f"blocks {b}..{b}" in capsys.readouterr().out


def test_nothing_to_compare(tmp_path, capsys):
    vol = tmp_path / "vol.img"
    random_file(vol, SIZE, density=0.5, seed=1)
    assert run("audit", vol) == 1
    assert "is not a tracked volume" in capsys.readouterr().err
    tracked_writes(vol, SIZE, writes=5, seed=1)
    assert run("audit", vol) == 1
    assert "no backup recorded block CRCs" in capsys.readouterr().err
    assert run("full", vol, "-o", tmp_path / "f.bk") == 0
    assert run("audit", vol, "--rate", 0) == 2
    assert run("audit", vol, "--rate", 1) == 0
    # a restore replaces the data the table describes: it is gone
    assert run("restore", vol, tmp_path / "f.bk") == 0
    capsys.readouterr()
    assert run("audit", vol) == 1
    assert "no backup recorded block CRCs" in capsys.readouterr().err
    # a damaged table is named, never trusted
    assert run("full", vol, "-o", tmp_path / "f2.bk") == 0
    path = str(vol) + ".blockcrc"
    raw = bytearray(Path(path).read_bytes())
    raw[100] ^= 1
    Path(path).write_bytes(raw)
    assert run("audit", vol) == 1
    assert "table checksum mismatch" in capsys.readouterr().err


def test_an_abandoned_backup_leaves_the_table(tmp_path):
    vol, _files = _chain(tmp_path)
    path = str(vol) + ".blockcrc"
    before = Path(path).read_bytes()
    tracked_writes(vol, SIZE, writes=20, seed=11)
    v = TrackingStore.open(FileStore(str(vol)), str(vol))
    try:
        r = v.sessions.start_backup(full=False, scope=1)
        r.readinto(0, memoryview(bytearray(300)))     # the header and a little: not the end
        v.sessions.abandon_backup()
    finally:
        v.close()
    assert Path(path).read_bytes() == before
    assert run("audit", vol, "--full") == 0


def _held_differential(v) -> None:
    r = v.sessions.start_backup(full=False, scope=1, hold=True)
    buf, pos = memoryview(bytearray(1 << 20)), 0
    while not r.read_through:
        r.readinto(pos, buf)
        pos += len(buf)
    v.sessions.commit_backup()


def test_a_differential_of_nothing_rewrites_neither_table_nor_sidecar(tmp_path):
    """A differential that sends no block changes no table entry and nothing the
    sidecar holds: its commit (the map's new generation) rewrites neither file;
    one that sends blocks replaces the table with their CRCs (and still not the
    sidecar), and the audit agrees with both."""
    vol, _files = _chain(tmp_path)
    table, sidecar = Path(str(vol) + ".blockcrc"), Path(str(vol) + ".volume")

    def files():            # replaced (a new inode) or not, and what they hold
        return [(p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in (table, sidecar)]

    v = TrackingStore.open(FileStore(str(vol)), str(vol))
    try:
        cur = v.map.current_generation
        before = files()
        _held_differential(v)
        assert v.map.current_generation == cur + 1            # committed: a new generation
        assert files() == before
        for b in (3, 700, 1536):
            v.write(b * BS, os.urandom(min(BS, SIZE - b * BS)))
        _held_differential(v)
        after = files()
        assert after[0] != before[0] and after[1] == before[1]
        assert blockcrc.load(str(table)).generation == cur + 1
    finally:
        v.close()
    assert run("audit", vol, "--full") == 0


def _golden_table() -> blockcrc.BlockCrcs:
    data = bytes(range(256)) * 16
    crcs = [crc32c.crc32c(data), crc32c.crc32c(bytes(BS)), crc32c.crc32c(b"\xff" * BS),
            crc32c.crc32c(data[:512])]               # the partial last block: its 512 bytes
    return blockcrc.BlockCrcs(BS, 3 * BS + 512, 4, bytes(range(16)), 3, True,
                              array("I", crcs))


def test_golden_vector():
    raw = (GOLDEN / "blockcrc_v1.bin").read_bytes()
    doc = json.loads((GOLDEN / "blockcrc_v1.json").read_text())
    assert _golden_table().pack() == raw
    t = blockcrc.BlockCrcs.unpack(raw)
    assert [t.block_size, t.volume_size, t.entries, t.base_id.hex(), t.generation, t.complete,
            list(t.table)] == [doc["block_size"], doc["volume_size"], doc["entries"],
                               doc["base_id"], doc["generation"], doc["complete"], doc["table"]]
    for k, why in ((0, "not a block CRC table"), (20, "header checksum"),
                   (70, "table checksum")):
        bad = bytearray(raw)
        bad[k] ^= 1
        with pytest.raises(blockcrc.BlockCrcError, match=why):
            blockcrc.BlockCrcs.unpack(bytes(bad))
    with pytest.raises(blockcrc.BlockCrcError, match="truncated"):
        blockcrc.BlockCrcs.unpack(raw[:-1])
