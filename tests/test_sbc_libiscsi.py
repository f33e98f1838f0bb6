"""libiscsi's conformance suites for block commands, against a served disk LUN.

Starts ``python -m scsi_target serve`` on a free loopback port and runs
``iscsi-test-cu --dataloss`` on the SBC suites and the iSCSI residual tests;
any failed test fails this one.  Skipped when libiscsi-bin is not installed.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IQN = "iqn.2026-11.test:sbc-conformance"

SBC_SUITES = ",".join([
    "SCSI.CompareAndWrite", "SCSI.GetLBAStatus", "SCSI.Mandatory", "SCSI.NoMedia",
    "SCSI.OrWrite", "SCSI.Prefetch10", "SCSI.Prefetch16", "SCSI.Read6", "SCSI.Read10",
    "SCSI.Read12", "SCSI.Read16", "SCSI.ReadCapacity10", "SCSI.ReadCapacity16",
    "SCSI.ReadDefectData10", "SCSI.ReadDefectData12", "SCSI.ReadOnly", "SCSI.Unmap",
    "SCSI.Verify10", "SCSI.Verify12", "SCSI.Verify16", "SCSI.Write10", "SCSI.Write12",
    "SCSI.Write16", "SCSI.WriteAtomic16", "SCSI.WriteSame10", "SCSI.WriteSame16",
    "SCSI.WriteVerify10", "SCSI.WriteVerify12", "SCSI.WriteVerify16",
    "iSCSI.iSCSIResiduals",
])

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which("iscsi-test-cu") is None, reason="libiscsi-bin not installed"),
]


@pytest.fixture
def served_disk(tmp_path, request):
    block_size = getattr(request, "param", 512)
    config = tmp_path / "target.toml"
    config.write_text(f"""
portals = ["127.0.0.1:0"]
[[target]]
iqn = "{IQN}"
  [[target.lun]]
  lun = 0
  path = "disk.img"
  size = "{64 if block_size == 512 else 512}M"
  block_size = {block_size}
  create = true
  track = false
""")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "scsi_target", "serve", "--config", str(config),
                             "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        port = None
        for _ in range(20):
            line = proc.stdout.readline()
            if not line:
                break
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        if port is None:
            pytest.fail(f"server did not start: {line!r}")
        yield f"iscsi://127.0.0.1:{port}/{IQN}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _run_suites(url: str) -> str:
    out = subprocess.run(["iscsi-test-cu", "--dataloss", "-t", SBC_SUITES, url],
                         capture_output=True, text=True, timeout=600)
    return out.stdout + out.stderr


def _summary(output: str) -> tuple[int, int, int]:
    m = re.search(r"^\s*tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", output, re.M)
    assert m, output[-2000:]
    total, ran, passed, failed = map(int, m.groups())
    return ran, passed, failed


@pytest.mark.parametrize("served_disk", [512, 4096], indirect=True)
def test_libiscsi_sbc_suites_pass(served_disk):
    output = _run_suites(served_disk)
    ran, passed, failed = _summary(output)
    failures, current = [], None
    for line in output.splitlines():
        m = re.match(r"\s*Test: (\S+) \.\.\.", line)
        if m:
            current = m.group(1)
        if line.rstrip().endswith("FAILED") and current and current not in failures:
            failures.append(current)
    assert failed == 0, f"{failed} libiscsi tests failed: {failures}\n{output[-4000:]}"
    assert ran >= 100 and passed == ran
