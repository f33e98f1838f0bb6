"""Fuzz: the tape image opener (tape/image.py), as the server opens a cartridge.

A damaged image (bit flips, cut short, runs doubled, garbage) either opens --
and then every record reads back or reports RecordCorrupt, verify() lists the
bad ones, the MAM attributes decode -- or is refused with a TapeError naming
the file.  Never another exception.  Seeds: the golden image and a small one
made here (records of several sizes, filemarks, attributes, a second metadata
slot); corpus: tests/fuzz_corpus/tape_image/.
"""
from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest

import fuzz_util as F
from tape import TapeImage, mam
from tape.errors import RecordCorrupt, TapeError

GOLDEN = Path(__file__).resolve().parent / "golden" / "tape" / "image_v1.img.gz"


def _small_seed(tmp: Path) -> bytes:
    rng = random.Random(7)
    p = tmp / "seed.img"
    img = TapeImage.create(p, 1 << 20, barcode="FUZZ01", label="fuzz", serial="S123",
                           uuid=bytes(range(16)), created=1)
    try:
        at = 0
        for n in (1, 80, 512, 3000):
            img.append_records(at, [memoryview(rng.randbytes(n))])
            at += 1
        img.append_filemarks(at, 2)
        at += 2
        img.append_records(at, [memoryview(rng.randbytes(700)) for _ in range(3)])
        img.set_attributes([mam.Attribute(mam.ID_BARCODE, mam.FORMAT_ASCII,
                                          b"FUZZ02".ljust(32))])
        img.sync()
    finally:
        img.close()
    return p.read_bytes()


def _open(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        img = TapeImage.open(path)
    except TapeError as e:
        assert str(e) and "\n" not in str(e)
        return
    try:
        img.verify()
        img.attributes(), img.barcode(), img.label()
        for i in range(img.count):
            n = img.length(i)
            if n:
                try:
                    img.read_into(i, memoryview(bytearray(n)))
                except RecordCorrupt:
                    pass
        img.filemark_count, img.payload_bytes()
    finally:
        img.close()


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return [_small_seed(tmp_path_factory.mktemp("tape")), gzip.decompress(GOLDEN.read_bytes())]


@pytest.mark.parametrize("name, data", F.cases("tape_image"))
def test_tape_image_corpus(tmp_path, name, data):
    _open(tmp_path / "t.img", data)


def test_tape_image_mutants(tmp_path, seeds):
    rng = random.Random(0x7A9E)
    for data in F.mutants(rng, seeds, F.count(600)):
        _open(tmp_path / "t.img", data)


def test_tape_image_data_area_mutants(tmp_path, seeds):
    """Superblock and metadata kept intact: the frames and payloads take the damage."""
    rng = random.Random(0xDA7A)
    for seed in seeds:
        (tmp_path / "s.img").write_bytes(seed)
        img = TapeImage.open(tmp_path / "s.img", read_only=True)
        start = img.sb.data_start
        img.close()
        for data in F.mutants(rng, [seed], F.count(600), keep=start, random_share=0):
            _open(tmp_path / "t.img", data)
