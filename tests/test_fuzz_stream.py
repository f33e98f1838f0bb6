"""Fuzz: the backup stream decoder (volume/stream.py, format v1).

For any bytes: the decoder never raises (StreamError only for misuse); what
it reports does not depend on how the bytes were cut into feeds; and every
record it delivers intact is one the original stream holds, block for block
(a damaged record is reported as Damage, never delivered with wrong data).
Seeds: the golden full and zlib differential streams; corpus:
tests/fuzz_corpus/stream/.
"""
from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

import fuzz_util as F
from volume.stream import HEADER_SIZE, Damage, Record, StreamDecoder

GOLDEN = Path(__file__).resolve().parent / "golden"
SEEDS = [(GOLDEN / n).read_bytes() for n in ("stream_full_v1.bin", "stream_diff_zlib_v1.bin")]


def _decode(parts) -> tuple[list, list[str]]:
    dec = StreamDecoder()
    items = []
    for p in parts:
        items += dec.feed(p)
    end = dec.finish()
    summary = []
    for it in items:
        if isinstance(it, Record):
            summary.append(("R", it.seq, it.first_block, it.nblocks, it.generation, it.kind,
                            None if it.data is None else bytes(it.data), it.offset))
        else:
            assert isinstance(it, Damage) and it.length >= 0 and it.reason
            summary.append(("D", it.offset, it.length, it.first_block, it.nblocks))
    return summary, [str(e) for e in end.errors] + [f"records={end.records} "
                                                     f"damaged={end.damaged} blocks={end.blocks}"]


ORIGINAL = {}
for seed in SEEDS:
    items, errors = _decode([seed])
    assert errors == [errors[-1]] and all(i[0] == "R" for i in items)   # the seeds are clean
    for i in items:
        ORIGINAL[(i[2], i[3], i[6])] = True


def _check(rng: random.Random, data: bytes) -> None:
    whole = _decode([data])
    assert _decode(F.chunks(rng, data)) == whole                   # chunking does not matter
    for it in whole[0]:
        if it[0] == "R":
            assert (it[2], it[3], it[6]) in ORIGINAL, it[:6]       # nothing forged or altered


@pytest.mark.parametrize("name, data", F.cases("stream"))
def test_stream_corpus(name, data):
    _check(random.Random(name), data)


def test_stream_mutants():
    rng = random.Random(0x5743)
    for data in F.mutants(rng, SEEDS, F.count(6000)):
        _check(rng, data)


def test_stream_body_mutants():
    """Header intact: the records, markers and trailer take the damage."""
    rng = random.Random(0xB0D1)
    for data in F.mutants(rng, SEEDS, F.count(6000), keep=HEADER_SIZE, random_share=0):
        _check(rng, data)


def test_concatenated_and_interleaved_streams():
    rng = random.Random(0x1717)
    for _ in range(F.count(1000)):
        a, b = rng.choice(SEEDS), rng.choice(SEEDS)
        i, j = rng.randrange(len(a)), rng.randrange(len(b))
        _check(rng, a[:i] + b[j:])
