"""The trace recorder: `scsi-target serve --record FILE [--record-pcapng FILE]`
and the LunMap hook it hangs on."""
from __future__ import annotations

import io
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from scsi_target.testing.process import Lun, ServerProcess, Target, config_toml
from scsi_target.testing.external import require_root, require_tool
from trace_capture import (Dumpcap, libiscsi_workload, our_initiator_workload,
                           tshark_pdus)

from scsi_target.config import LunSpec, build_lu
from scsi_target.scsi.command import Command, Direction, Nexus
from scsi_target.scsi.lun import LunMap
from scsi_target.trace.extract import trace_from_capture
from scsi_target.trace.recorder import Recorder
from scsi_target.trace.records import read_trace

REPO = Path(__file__).resolve().parent.parent

IQN = "iqn.2026-12.org.pyscsi:rec"


def _lunmap(tmp_path):
    m = LunMap(IQN)
    m.add(0, build_lu(LunSpec(lun=0, path=tmp_path / "d.img", size=4 << 20, create=True), IQN))
    return m


def _commands():
    rnd = random.Random(3)
    nx = Nexus("iqn.2026-12.test:ini,i,0x800000000007", f"{IQN},t,0x0001")
    data = rnd.randbytes(2048)
    return data, [
        Command(bytes(16), nexus=nx, expected_length=0),                    # UA
        Command(bytes(6), nexus=nx, expected_length=0),
        Command(bytes([0x2A, 0, 0, 0, 0, 8, 0, 0, 4, 0]) + bytes(6), data_out=data, nexus=nx,
                expected_length=2048, direction=Direction.OUT),
        Command(bytes([0x28, 0, 0, 0, 0, 8, 0, 0, 4, 0]) + bytes(6), nexus=nx,
                expected_length=2048, direction=Direction.IN),
        Command(bytes([0x12, 0, 0, 0, 0xFF, 0]) + bytes(10), nexus=nx, expected_length=255,
                direction=Direction.IN),
        Command(bytes([0xE7]) + bytes(15), nexus=nx, expected_length=0),   # not supported
        Command(bytes([0x28, 0, 0, 0x7F, 0xFF, 0xFF, 0, 0, 1, 0]) + bytes(6), nexus=nx,
                expected_length=512, direction=Direction.IN),               # past the end
    ]


def test_recorder_writes_what_the_lun_map_answered(tmp_path):
    m = _lunmap(tmp_path)
    trace, pcap = io.StringIO(), io.BytesIO()
    m.recorder = rec = Recorder(trace, pcap)
    data, cmds = _commands()
    answers = [m.execute(c) for c in cmds]
    rec._flush()
    t = read_trace(io.StringIO(trace.getvalue()))
    assert t.header["source"] == "recorder"
    assert [c.status for c in t.commands] == [int(a.status) for a in answers]
    assert [c.cdb for c in t.commands][2][:1] == b"\x2a" and len(t.commands[2].cdb) == 10
    assert t.commands[0].sense_tuple == (6, 0x29, 0)
    assert t.commands[2].data_out == data and t.commands[3].data_in == data
    assert t.commands[4].residual == 255 - len(t.commands[4].data_in) > 0
    assert t.commands[5].sense_tuple == (5, 0x20, 0)
    assert t.commands[6].sense_tuple == (5, 0x21, 0) and t.commands[6].residual == 512
    assert all(c.latency >= 0 for c in t.commands)
    assert t.commands[0].nexus.initiator == "iqn.2026-12.test:ini,i,0x800000000007"
    m.close()


def test_recorder_pcapng_holds_the_same_trace(tmp_path):
    m = _lunmap(tmp_path)
    trace, pcap_path = io.StringIO(), tmp_path / "rec.pcapng"
    with open(pcap_path, "wb") as pf:
        m.recorder = rec = Recorder(trace, pf)
        _, cmds = _commands()
        for c in cmds:
            m.execute(c)
        rec._flush()
        from_json = read_trace(io.StringIO(trace.getvalue()))
        from_pcap = trace_from_capture(pcap_path)
    fields = ("cdb", "edtl", "direction", "data_out", "status", "sense", "data_in", "residual")
    assert [tuple(getattr(c, f) for f in fields) for c in from_pcap.commands] == \
        [tuple(getattr(c, f) for f in fields) for c in from_json.commands]
    assert [(c.nexus.initiator, c.nexus.target, c.nexus.lun) for c in from_pcap.commands] == \
        [(c.nexus.initiator, c.nexus.target, c.nexus.lun) for c in from_json.commands]
    m.close()


def test_a_failing_recorder_never_fails_a_command(tmp_path, caplog):
    m = _lunmap(tmp_path)
    f = io.StringIO()
    m.recorder = rec = Recorder(f)
    f.close()                       # every write now raises
    _, cmds = _commands()
    answers = [m.execute(c) for c in cmds]
    assert [int(a.status) for a in answers][:3] == [2, 0, 0]
    assert rec.failed and "trace recorder stopped" in caplog.text
    m.close()


# ---------------------------------------------------------------- the server
def test_serve_record_bad_path_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "scsi_target", "serve", "--record",
                        str(tmp_path / "no" / "such" / "t.jsonl")], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "cannot write" in r.stderr and "No such file" in r.stderr


@pytest.mark.interop
def test_recorded_pcapng_decodes_in_tshark_like_a_real_capture(tmp_path):
    """Same CDBs and statuses in tshark from --record-pcapng as from dumpcap on lo."""
    require_tool("dumpcap")
    require_tool("tshark")
    require_root("capturing on loopback")
    trace_path, rec_pcap, real_pcap = (tmp_path / "rec.jsonl", tmp_path / "rec.pcapng",
                                       tmp_path / "real.pcapng")
    srv = ServerProcess(tmp_path / "srv", [Target(IQN, [Lun(0, "16M")])],
                        args=("--record", trace_path, "--record-pcapng", rec_pcap)).start()
    port = srv.port
    try:
        with Dumpcap(real_pcap, port):
            libiscsi_workload("127.0.0.1", port, IQN, 0)
            our_initiator_workload(f"iscsi://127.0.0.1:{port}/{IQN}/0")
    finally:
        rc = srv.stop()             # SIGTERM; exit 0 also closes the --record files
    assert rc == 0, srv.log_tail()

    def exchanges(pdus):
        cmds, out = {}, []
        for x in pdus:
            op = x.get("iscsi.opcode")
            if op == "0x01":
                cmds[(x["frame"], x["iscsi.initiatortasktag"])] = x
                out.append([x["scsi"].get("scsi_sbc.opcode"), None, x["iscsi.initiatortasktag"]])
        # Status: SCSI Response, or a Data-In with S (tshark: iscsi.scsidata.S).
        by_itt = {}
        for row in out:
            by_itt.setdefault(row[2], []).append(row)
        for x in pdus:
            st = None
            if x.get("iscsi.opcode") == "0x21":
                st = x["iscsi.scsiresponse.status"]
            elif x.get("iscsi.opcode") == "0x25" and x.get("iscsi.scsidata.S") == "1":
                st = x["iscsi.scsiresponse.status"]
            if st is not None:
                rows = [r for r in by_itt.get(x["iscsi.initiatortasktag"], []) if r[1] is None]
                if rows:
                    rows[0][1] = int(st, 16)
        return [(r[0], r[1]) for r in out]

    real = exchanges(tshark_pdus(real_pcap, [port]))
    recorded = exchanges(tshark_pdus(rec_pcap, [3260]))
    assert len(real) > 30 and recorded == real
    # The JSON trace holds the same commands, and replays on a fresh target unchanged.
    t = read_trace(open(trace_path))
    assert [(f"0x{c.opcode:02x}", c.status) for c in t.commands] == real
    assert t.summary == {"type": "summary", "commands": len(real)}
    from tools.replay import main
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "t.toml").write_text(config_toml([Target(IQN, [Lun(0, "16M")])], fresh, 0))
    # (Serial number and designators may be new on a fresh volume.)
    assert main([str(trace_path), "--config", str(fresh / "t.toml"), "--json",
                 "--ignore", "cdb=120180:data_in", "--ignore", "cdb=120183:data_in"]) == 0
