"""Fuzz: the trace readers (pcap/pcapng captures and JSON-lines traces) that scsi-replay loads.

Every input yields a Trace or one of the readers' own errors (CaptureError,
TraceFormatError, the tool's UsageError) -- whatever the bytes.  Seeds: the
golden captures and trace; corpus: tests/fuzz_corpus/trace/.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest

import fuzz_util as F
from scsi_target.trace.pcapfile import CaptureError
from scsi_target.trace.records import TraceFormatError
from tools import replay

GOLDEN = Path(__file__).resolve().parent / "golden" / "trace"
SEEDS = [(GOLDEN / n).read_bytes() for n in
         ("synthetic.pcapng", "synthetic_mangled.pcap", "synthetic.trace.jsonl")]
DEFINED = (CaptureError, TraceFormatError, replay.UsageError)


def _load(tmp_path: Path, data: bytes) -> None:
    p = tmp_path / "in"
    p.write_bytes(data)
    try:
        t = replay.load(str(p), None, False)
    except DEFINED as e:
        msg = str(e)
        assert msg and "\n" not in msg, repr(msg)
        return
    assert t.header                       # a Trace that says what it is


@pytest.mark.parametrize("name, data", F.cases("trace"))
def test_trace_corpus(tmp_path, name, data):
    _load(tmp_path, data)


def test_trace_mutants(tmp_path):
    rng = random.Random(0x7ACE)
    n = 0
    # Keep the magic now and then so the mutants get past the first check.
    for data in F.mutants(rng, SEEDS, F.count(500)):
        _load(tmp_path, data)
        n += 1
    for data in F.mutants(rng, SEEDS, F.count(300), keep=32):
        _load(tmp_path, data)
        n += 1
    assert n == F.count(800)
