"""Trace extraction: captures → exchanges per I_T_L nexus, the JSON-lines
format (docs/trace-format.md) and its golden vectors."""
from __future__ import annotations

import io
import json

import pytest

from trace_capture import GOLDEN

from scsi_target.trace.extract import trace_from_capture
from scsi_target.trace.records import (Exchange, Nexus, Trace, TraceFormatError, header,
                                       read_trace, write_trace)


def _port(name):
    return json.loads((GOLDEN / (name.rsplit(".", 1)[0] + ".tshark.json")).read_text())


def _trace(name):
    meta = _port(name)
    return trace_from_capture(GOLDEN / name, ports=[meta["port"]]), meta["pdus"]


def _dump(trace) -> str:
    f = io.StringIO()
    write_trace(trace, f)
    return f.getvalue()


def test_golden_vector_synthetic():
    """The trace of the synthetic capture is, byte for byte, the golden vector."""
    t, _ = _trace("synthetic.pcapng")
    assert _dump(t) == (GOLDEN / "synthetic.trace.jsonl").read_text()


def test_golden_vector_reads_back_identically():
    text = (GOLDEN / "synthetic.trace.jsonl").read_text()
    t = read_trace(io.StringIO(text))
    assert _dump(t) == text
    w, r, bad = t.commands
    assert w.cdb[0] == 0x2A
    assert w.direction == "out" and len(w.data_out) == 1024 and w.status == 0
    assert r.direction == "in" and len(r.data_in) == 3069 and r.residual == 1024
    assert len(bad.cdb) == 32 and bad.sense_tuple == (5, 0x20, 0)
    assert t.tmfs[0].function == 5 and t.tmfs[0].response == 0
    assert w.nexus == Nexus("iqn.2026-12.test:i,i,0x80123456789a", "iqn.2026-12.test:t,t,0x0001",
                            1, "10.0.0.1:40000", "10.0.0.2:3260")


def test_tgt_session_exchanges():
    t, _ = _trace("tgt_session.pcap")
    assert all(c.status is not None for c in t.commands)
    write, read = [c for c in t.commands if c.cdb[0] in (0x2A, 0x28) and c.edtl == 96 * 1024]
    # qemu-io wrote 0x5a over 96 KiB (immediate + unsolicited + solicited after R2T) ...
    assert write.data_out == b"\x5a" * 96 * 1024
    # ... and read it back.
    assert read.data_in == write.data_out and read.residual == 0
    past_end = [c for c in t.commands if c.sense_tuple == (5, 0x21, 0)]
    assert len(past_end) == 1 and past_end[0].residual == 512
    inq = [c for c in t.commands if c.cdb[:3] == bytes([0x12, 1, 0x80])]
    assert inq and inq[0].residual == 255 - len(inq[0].data_in)
    # libiscsi's tools, qemu and our initiator: one I_T nexus each session.
    names = {c.nexus.initiator.split(",")[0] for c in t.commands}
    assert {"iqn.2008-11.org.linux-kvm", "iqn.2026-01.org.scsi-target:initiator"} <= names
    assert {c.nexus.lun for c in t.commands} >= {1}


@pytest.mark.parametrize("name", ["ours_session.pcapng", "tgt_session.pcap"])
def test_latency_matches_tshark_response_time(name):
    """tshark's iscsi.time on a status PDU is the command's latency."""
    t, ts = _trace(name)
    by_frame = {}
    for p in ts:
        if "iscsi.time" in p and p["iscsi.opcode"] in ("0x21", "0x25"):
            by_frame.setdefault(p["frame"], []).append(float(p["iscsi.time"]))
    n = 0
    for c in t.commands:
        if c.frames and c.frames[1] in by_frame and c.frames[0] != c.frames[1]:
            assert any(abs(c.latency - x) < 2e-6 for x in by_frame[c.frames[1]]), c
            n += 1
    assert n >= len(t.commands) // 2


def test_round_trip_keeps_every_field():
    ex = Exchange(0, Nexus("i,i,0x1", "t,t,0x0001", 3), bytes.fromhex("2800000000100000080000"),
                  4096, "in", 2, b"", 2, 0, bytes.fromhex("72050000000000") + b"\x00",
                  b"\x01\x02", -12, 1.5, 1.75, 77, 9, (3, 4))
    t = Trace(header("recorder"), [ex])
    back = read_trace(io.StringIO(_dump(t)))
    assert back.commands == [ex]


@pytest.mark.parametrize("text,message", [
    ("", "empty trace"),
    ('{"type": "command"}\n', "line 1 is not a scsi-trace header"),
    ('{"type": "header", "format": "scsi-trace", "version": "2.0"}\n',
     "version 2.0 is newer than this reader"),
    ('{"type": "header", "format": "scsi-trace", "version": "1.0"}\nnot json\n',
     "line 2 is not JSON"),
    ('{"type": "header", "format": "scsi-trace", "version": "1.0"}\n{"type": "command"}\n',
     "line 2: bad command record"),
    ('{"type": "header", "format": "scsi-trace", "version": "1.0"}\n'
     '{"type": "command", "seq": 0, "nexus": {"initiator": "i", "target": "t", "lun": 0}, '
     '"cdb": "00", "data_in": "!!"}\n', "line 2: bad command record"),
])
def test_bad_traces_give_one_line(text, message):
    with pytest.raises(TraceFormatError, match=message) as e:
        read_trace(io.StringIO(text))
    assert "\n" not in str(e.value)


def test_later_minor_versions_are_read():
    text = ('{"type": "header", "format": "scsi-trace", "version": "1.7", "new": 1}\n'
            '{"type": "command", "seq": 0, "nexus": {"initiator": "i", "target": "t", '
            '"lun": 0}, "cdb": "00", "future_key": [1]}\n{"type": "future_record"}\n')
    t = read_trace(io.StringIO(text))
    assert len(t.commands) == 1 and t.commands[0].status is None
