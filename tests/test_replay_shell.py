"""scsi-shell `record` and `replay` (tools/shell_replay.py), in-process targets."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from trace_capture import GOLDEN

from scsi_target.trace.records import read_trace

ROOT = Path(__file__).resolve().parent.parent
IQN = "iqn.2026-12.org.pyscsi:shell-replay"


def _cfg(tmp: Path, name: str) -> Path:
    p = tmp / f"{name}.toml"
    p.write_text(f'[[target]]\niqn = "{IQN}"\n\n  [[target.lun]]\n  lun = 0\n'
                 f'  path = "{tmp / (name + ".img")}"\n  size = "4M"\n  create = true\n')
    return p


def shell(cfg: Path, line: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.shell", "--config", str(cfg), *extra,
                           "-c", line], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_record_then_replay_on_a_fresh_target(tmp_path):
    trace = tmp_path / "console.jsonl"
    r = shell(_cfg(tmp_path, "a"), f"record {trace}; record; write 7 --pattern 0x5a --count 3; "
              "read 7 3; inq; read 99999 1; record stop", "--json")
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert lines[1]["fields"]["recording"] is True
    assert lines[-1]["fields"]["recording"] is False and lines[-1]["fields"]["commands"] >= 4
    t = read_trace(open(trace))
    assert t.header["source"] == "recorder" and t.summary["commands"] == len(t.commands)
    w = [c for c in t.commands if c.cdb[0] in (0x2A, 0x8A)][0]
    assert w.data_out == b"\x5a" * 3 * 512
    assert any(c.sense_tuple == (5, 0x21, 0) for c in t.commands)
    # The same commands on a fresh volume: the same answers.
    r = shell(_cfg(tmp_path, "b"), f"replay {trace}", "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0, r.stderr
    assert out["fields"]["same"] and out["fields"]["matched"] == len(t.commands)


def test_replay_reports_differences_and_bad_files(tmp_path):
    cfg = _cfg(tmp_path, "c")
    # The synthetic capture's target answered reads with data this volume lacks.
    r = shell(cfg, f"replay {GOLDEN / 'synthetic.pcapng'} --lun 1", "--json")
    out = json.loads(r.stdout)
    assert out["fields"]["differed"] >= 1
    assert {row["field"] for row in out["table"]} >= {"data_in"}
    r = shell(cfg, f"replay {tmp_path / 'missing.jsonl'}")
    assert r.returncode != 0 and "replay:" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"garbage" * 10)
    r = shell(cfg, f"replay {bad}")
    assert "not a pcap or pcapng file" in r.stderr and "Traceback" not in r.stderr
    r = shell(cfg, "record stop")
    assert "not recording" in r.stderr
