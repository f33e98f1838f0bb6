"""tools/ssc_suite.py against our tape LUN (everything passes) and tgt's (exactly the tests
that carry a documented tgt departure fail, every other passes), and its command line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tape import TapeImage
from tools import ssc_suite

from scsi_target.testing.process import ServerProcess

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_suite_passes_against_ours(tmp_path):
    img = tmp_path / "s.img"
    TapeImage.create(img, 64 << 20, barcode="SUITE1").close()
    srv = ServerProcess.from_flags(tmp_path, "--tape", img).start()
    try:
        log: list[str] = []
        res = ssc_suite.run(srv.url(), log=log.append)
    finally:
        srv.stop()
    assert len(res) == len(ssc_suite.TESTS) >= 40
    assert all(o.ok for o in res), "\n".join(log)
    assert {t.suite for t in ssc_suite.TESTS} >= {
        "TEST UNIT READY", "INQUIRY", "REQUEST SENSE", "READ BLOCK LIMITS", "MODE SENSE(6)",
        "MODE SELECT(6)", "WRITE(6)", "READ(6)", "WRITE FILEMARKS(6)", "SPACE(6)", "REWIND",
        "READ POSITION", "LOCATE(10)", "LOCATE(16)", "ERASE", "REPORT DENSITY SUPPORT",
        "LOG SENSE", "READ ATTRIBUTE", "LOAD UNLOAD"}


@pytest.mark.timeout(180)
def test_suite_against_tgt_fails_exactly_its_documented_departures(tmp_path):
    from client_targets import TgtFactory
    f = TgtFactory(tmp_path)
    try:
        iqn = "iqn.2026-01.org.scsi-target.suite:tape"
        img = tmp_path / "tgt.img"
        subprocess.run(["tgtimg", "--op", "new", "--device-type", "tape", "--barcode", "SUITE1",
                        "--size", "64", "--type", "data", "--file", str(img)],
                       check=True, capture_output=True)
        f.adm("--mode", "target", "--op", "new", "--tid", "1", "--targetname", iqn)
        f.adm("--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1",
              "--device-type", "tape", "--bstype", "ssc", "--backing-store", str(img))
        f.adm("--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL")
        log: list[str] = []
        res = ssc_suite.run(f"iscsi://127.0.0.1:{f.port}/{iqn}/1", log=log.append)
    finally:
        f.close()
    failed = {f"{o.test.suite}.{o.test.name}" for o in res if not o.ok}
    documented = {f"{t.suite}.{t.name}" for t in ssc_suite.TESTS if t.tgt}
    assert failed == documented, "\n".join(log)
    assert "documented departures of tgt" in ssc_suite.summary(res)


def test_command_line():
    def run(*args):
        return subprocess.run([sys.executable, "-m", "tools.ssc_suite", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
    r = run()
    assert r.returncode == 2 and "iscsi:// URL" in r.stderr
    r = run("--list")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == len(ssc_suite.TESTS)
    r = run("iscsi://127.0.0.1:1/iqn.2026-01.x:none/0")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
