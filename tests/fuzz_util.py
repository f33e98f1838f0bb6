"""What every fuzz test shares: the kept corpus, seeded mutators, the one rule for a crash.

Each test_fuzz_*.py replays its corpus directory (tests/fuzz_corpus/<parser>/:
inputs that once broke a parser, and hand-made edge cases) on every run, then
a fixed number of mutants of the corpus and of valid seed inputs from a
seeded ``random.Random`` -- deterministic, so a failure reproduces with the
same seed, and bounded by count (a few seconds each), never by a clock.

A new finding is kept by writing the input into the corpus directory
(``save(parser, name, data)``, or by hand): from then on it is replayed
first, as a regression case.
"""
from __future__ import annotations

import gzip
import os
import random
from pathlib import Path
from typing import Iterable, Iterator

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
# FUZZ_SCALE=10 runs ten times the mutants (a longer local hunt); CI runs 1.
SCALE = max(1, int(os.environ.get("FUZZ_SCALE", "1") or 1))

_INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, 0x3D, 0x0A)   # '=' and '\n' for text
_INTERESTING_WORDS = (b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff",
                      b"\x80\x00\x00\x00", b"\x00\x00\x00\x01", b"\x00\xff\xff\xff")


def corpus(parser: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of every kept input of ``parser``, in name order (``.gz`` files unpacked)."""
    d = CORPUS / parser
    out = []
    for p in sorted(d.iterdir()) if d.is_dir() else []:
        if p.is_file():
            data = p.read_bytes()
            out.append((p.name, gzip.decompress(data) if p.suffix == ".gz" else data))
    return out


def cases(parser: str) -> list:
    """The corpus as pytest parameters (name, data), each named by its file."""
    import pytest
    return [pytest.param(name, data, id=name) for name, data in corpus(parser)]


def save(parser: str, name: str, data: bytes) -> Path:
    """Keep an input; large ones gzipped (mostly padding, e.g. a tape image's metadata area)."""
    d = CORPUS / parser
    d.mkdir(parents=True, exist_ok=True)
    if len(data) > 16 << 10:
        data, name = gzip.compress(data, mtime=0), name + ".gz"
    p = d / name
    p.write_bytes(data)
    return p


def count(n: int) -> int:
    return n * SCALE


def mutate(rng: random.Random, data: bytes, *, keep: int = 0) -> bytes:
    """One to four random edits of ``data``; the first ``keep`` bytes stay as they are."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        lo = min(keep, len(b))
        op = rng.randrange(9)
        if op == 0 and len(b) > lo:                          # flip one bit
            i = rng.randrange(lo, len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and len(b) > lo:                        # an interesting byte
            b[rng.randrange(lo, len(b))] = rng.choice(_INTERESTING)
        elif op == 2 and len(b) >= lo + 4:                   # an interesting 32-bit word
            i = rng.randrange(lo, len(b) - 3)
            b[i:i + 4] = rng.choice(_INTERESTING_WORDS)
        elif op == 3 and len(b) > lo:                        # truncate
            del b[rng.randrange(lo, len(b)):]
        elif op == 4 and len(b) > lo:                        # delete a run
            i = rng.randrange(lo, len(b))
            del b[i:i + rng.randint(1, 64)]
        elif op == 5:                                        # insert random bytes
            i = rng.randint(lo, len(b))
            b[i:i] = rng.randbytes(rng.randint(1, 32))
        elif op == 6 and len(b) > lo:                        # duplicate a run
            i = rng.randrange(lo, len(b))
            j = min(len(b), i + rng.randint(1, 256))
            k = rng.randint(lo, len(b))
            b[k:k] = b[i:j]
        elif op == 7 and len(b) > lo:                        # small arithmetic on a byte
            i = rng.randrange(lo, len(b))
            b[i] = (b[i] + rng.choice((-2, -1, 1, 2))) & 0xFF
        elif op == 8 and len(b) > lo + 1:                    # swap two runs
            i, j = sorted(rng.sample(range(lo, len(b)), 2))
            n = min(rng.randint(1, 16), j - i, len(b) - j)
            b[i:i + n], b[j:j + n] = b[j:j + n], b[i:i + n]
    return bytes(b)


def mutants(rng: random.Random, seeds: Iterable[bytes], n: int, *,
            keep: int = 0, random_share: float = 0.05) -> Iterator[bytes]:
    """``n`` inputs: mostly mutants of the seeds, now and then plain random bytes."""
    pool = [s for s in seeds]
    for _ in range(n):
        if not pool or rng.random() < random_share:
            yield rng.randbytes(rng.randint(0, 512))
        else:
            yield mutate(rng, rng.choice(pool), keep=keep)


def chunks(rng: random.Random, data: bytes) -> list[bytes]:
    """``data`` cut at random places (how a socket or a sequence of WRITEs delivers it)."""
    out, i = [], 0
    while i < len(data):
        n = rng.choice((1, 7, 48, 512, 4096, 65536, len(data)))
        out.append(data[i:i + n])
        i += n
    return out
