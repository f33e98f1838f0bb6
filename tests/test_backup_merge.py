"""`diffbackup merge`: synthetic full and merged differentials from stream files alone
(volume/merge.py).  Every check restores both the chain and the merged stream and
compares the volumes byte for byte."""
from __future__ import annotations

import os

import pytest

from tools.diffbackup import main
from volume.stream import Damage, StreamDecoder, read_header

from scsi_target.testing.seed import random_file, tracked_writes

# Not a multiple of the 4 KiB tracking block: the last block is partial.
SIZE = (6 << 20) + 2560


def run(*args) -> int:
    return main(["-q", *map(str, args)])


def chain(tmp_path, *, density: float, scopes=(1, 1, 2, 1, 3), seed: int = 1,
          name: str = "vol.img"):
    """A volume, its full backup and one differential per scope, writes in between."""
    vol = tmp_path / name
    random_file(vol, SIZE, density=density, seed=seed)
    files = [tmp_path / f"{name}.full"]
    assert run("full", vol, "-o", files[0]) == 0
    for i, k in enumerate(scopes, 1):
        tracked_writes(vol, SIZE, writes=30 + 10 * i, seed=seed * 100 + i)
        files.append(tmp_path / f"{name}.d{i}")
        assert run("diff", vol, "--scope", k, "-o", files[-1]) == 0
    return vol, files


def restored(tmp_path, name: str, files) -> bytes:
    dest = tmp_path / name
    assert run("restore", dest, *files) == 0
    return dest.read_bytes()


@pytest.mark.parametrize("density", [1.0, 0.05])
def test_synthetic_full_restores_like_the_chain(tmp_path, capsys, density):
    vol, files = chain(tmp_path, density=density)
    merged = tmp_path / "synth.full"
    assert run("merge", *files, "-o", merged) == 0
    assert "synthetic full of generations 0..5" in capsys.readouterr().out
    h = read_header(merged)
    assert h.full and h.generation_range == (0, 5)
    assert h.base_id == read_header(files[0]).base_id
    by_chain = restored(tmp_path, "a.img", files)
    by_merge = restored(tmp_path, "b.img", [merged])
    assert by_merge == by_chain == vol.read_bytes()
    assert not (tmp_path / "synth.full.partial").exists()
    # newer copies replace older ones: never more than the full plus the changed blocks
    changed = sum(os.path.getsize(f) for f in files[1:])
    assert os.path.getsize(merged) <= os.path.getsize(files[0]) + changed


def test_next_differential_continues_a_synthetic_full(tmp_path):
    vol, files = chain(tmp_path, density=1.0, scopes=(1, 1, 1))
    merged = tmp_path / "synth.full"
    assert run("merge", *files, "-o", merged) == 0
    tracked_writes(vol, SIZE, writes=25, seed=99)
    nxt = tmp_path / "next.diff"
    assert run("diff", vol, "--scope", 1, "-o", nxt) == 0
    assert restored(tmp_path, "b.img", [merged, nxt]) == vol.read_bytes()
    # and a synthetic full of a synthetic full plus that differential
    again = tmp_path / "synth2.full"
    assert run("merge", merged, nxt, "-o", again) == 0
    assert read_header(again).generation_range == (0, 4)
    assert restored(tmp_path, "c.img", [again]) == vol.read_bytes()


def test_merged_differential(tmp_path, capsys):
    vol, files = chain(tmp_path, density=0.3)
    one = tmp_path / "d1-5.diff"
    assert run("merge", *files[1:], "-o", one) == 0
    assert "merged differential of generations 1..5" in capsys.readouterr().out
    h = read_header(one)
    assert not h.full and h.generation_range == (1, 5)
    assert restored(tmp_path, "a.img", [files[0], one]) == vol.read_bytes()
    # part of a chain: full + d1 + merged(d2..d4) + d5
    mid = tmp_path / "d2-4.diff"
    assert run("merge", *files[2:5], "-o", mid) == 0
    assert restored(tmp_path, "b.img", [files[0], files[1], mid, files[5]]) == vol.read_bytes()


def _records(path):
    dec = StreamDecoder()
    items = dec.feed(path.read_bytes())
    return [i for i in items if not isinstance(i, Damage) and i.kind == 0]


def test_damaged_newest_copy_is_named_and_nothing_written(tmp_path, capsys):
    _vol, files = chain(tmp_path, density=1.0)
    last = files[-1]
    # a record of the newest generation: no other stream has a copy as new
    rec = next(r for r in _records(last) if r.generation == 5)
    raw = bytearray(last.read_bytes())
    raw[rec.offset + 40 + 100] ^= 0xFF          # in the record's data
    last.write_bytes(raw)
    out = tmp_path / "synth.full"
    assert run("merge", *files, "-o", out) == 1
    text = capsys.readouterr()
    assert f"data checksum mismatch (blocks {rec.first_block}..{rec.first_block + rec.nblocks - 1}" \
        in text.out
    assert f"{rec.nblocks} blocks have a damaged newest copy: {rec.first_block}.." \
        f"{rec.first_block + rec.nblocks - 1};" in text.out
    assert "merge refused" in text.err and len(text.err.splitlines()) == 1
    assert not out.exists() and not (tmp_path / "synth.full.partial").exists()


def test_damage_in_an_older_copy_still_refuses(tmp_path, capsys):
    # A damaged full record whose blocks all have newer copies: nothing of it is
    # needed, but a damaged input is never merged.
    _vol, files = chain(tmp_path, density=1.0)
    raw = bytearray(files[0].read_bytes())
    raw[-40] ^= 1                               # in the trailer
    files[0].write_bytes(raw)
    assert run("merge", *files, "-o", tmp_path / "x") == 1
    text = capsys.readouterr().out
    assert "no valid trailer" in text and "damaged newest copy" not in text
    assert not (tmp_path / "x").exists()


def test_truncated_input(tmp_path, capsys):
    _vol, files = chain(tmp_path, density=0.5, scopes=(1, 1))
    raw = files[1].read_bytes()
    files[1].write_bytes(raw[:len(raw) // 2])
    assert run("merge", *files, "-o", tmp_path / "x") == 1
    assert "truncated" in capsys.readouterr().out
    assert not (tmp_path / "x").exists()


def test_mismatched_chains(tmp_path, capsys):
    _vol, files = chain(tmp_path, density=0.5, scopes=(1, 1, 1))
    _other, ofiles = chain(tmp_path, density=0.5, scopes=(1,), seed=2, name="other.img")
    x = tmp_path / "x"
    # another volume
    assert run("merge", files[0], files[1], ofiles[1], "-o", x) == 1
    assert "is a backup of volume" in capsys.readouterr().out
    # a gap in generations
    assert run("merge", files[0], files[1], files[3], "-o", x) == 1
    assert "generation 2 is missing" in capsys.readouterr().out
    # out of order
    assert run("merge", files[0], files[2], files[1], "-o", x) == 1
    assert "out of order" in capsys.readouterr().out
    # a full stream in the middle
    assert run("merge", files[1], files[0], "-o", x) == 1
    assert "can only come first" in capsys.readouterr().out
    assert not x.exists()


def test_bad_arguments(tmp_path, capsys):
    _vol, files = chain(tmp_path, density=0.2, scopes=(1,))
    assert run("merge", *files, "-o", files[1]) == 2
    assert "one of the input streams" in capsys.readouterr().err
    assert run("merge", files[0], tmp_path / "nope", "-o", tmp_path / "x") == 1
    assert "no such stream file" in capsys.readouterr().err
    junk = tmp_path / "junk"
    junk.write_bytes(os.urandom(5000))
    assert run("merge", files[0], junk, "-o", tmp_path / "x") == 1
    assert "not a backup stream" in capsys.readouterr().out
    assert run("merge", "-o", tmp_path / "x") == 2


def test_compressed_inputs(tmp_path):
    """zlib records (compressible data) are decompressed, re-checked and merged."""
    from volume import backup as B
    from volume.filestore import FileStore
    from volume.tracked import TrackingStore
    vol = tmp_path / "text.img"
    vol.write_bytes((b"compressible line of backup text\n" * 200_000)[:SIZE])
    files = []
    for i in range(3):
        v = TrackingStore.open(FileStore(str(vol)), str(vol))
        try:
            if i:
                for k in range(20):
                    v.write((k * 67 + i * 13) * 4096, b"changed %d %d " % (i, k) * 300)
            files.append(tmp_path / f"s{i}.bk")
            with open(files[-1], "wb") as f:
                if i == 0:
                    B.full_backup(v, v.map, f, compress=True)
                else:
                    B.differential_backup(v, v.map, 1, f, compress=True)
        finally:
            v.close()
    assert read_header(files[0]).flags & 2
    assert any(r.kind == 2 for r in StreamDecoder().feed(files[1].read_bytes())
               if not isinstance(r, Damage))
    merged = tmp_path / "m.bk"
    assert run("merge", *files, "-o", merged) == 0
    assert restored(tmp_path, "a.img", [merged]) == restored(tmp_path, "b.img", files) == \
        vol.read_bytes()
