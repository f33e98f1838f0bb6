"""Initiator names against a target's ACL (issue 12).

RFC 7143 4.2.7.2 / RFC 3722: iSCSI names compare after stringprep
normalisation, so case does not matter, in login and in discovery.  And every
program built on our initiator (the library, diffbackup, scsi-shell) can
present the name an ACL lists.  All through the real server process.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scsi_target.testing.process import ServerProcess
from scsi_target.testing.process import Lun, ServerProcess, Target
from scsi_target.testing.external import require_tool, run_tool
from scsi_target.initiator.errors import InitiatorNameError, LoginError
from scsi_target.initiator.sync import SyncIscsiClient
from scsi_target.protocol.names import name_problem, normalize_name

REPO = Path(__file__).resolve().parent.parent

IQN = "iqn.2026-11.org.pyscsi:acl"
OPEN_IQN = "iqn.2026-11.org.pyscsi:open"
ALLOWED = "iqn.2026-11.org.pyscsi:backup-host"
SHOUTED = "IQN.2026-11.ORG.PyScsi:Backup-Host"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("acl"), [
        Target(IQN, [Lun(0, "4M"), Lun(1, options={"kind": "backup", "source": 0})],
               initiators=[ALLOWED]),
        Target(OPEN_IQN, [Lun(0, "1M", options={"track": False})]),
    ])
    srv.start()
    yield srv
    srv.stop()


def test_normalisation_rules():
    assert normalize_name(SHOUTED) == ALLOWED
    # RFC 3722 maps with table B.2 and NFKC: full-width letters and the
    # soft hyphen (table B.1, mapped to nothing) disappear into plain ASCII.
    assert normalize_name("iqn.2026-11.org.ｐｙ\u00adscsi:x") == "iqn.2026-11.org.pyscsi:x"
    assert name_problem(SHOUTED) is None
    assert "not allowed" in name_problem("iqn.2026-11.org.x:has space")
    assert "does not start" in name_problem("host1")
    assert "longer than 223" in name_problem("iqn.2026-11.org.x:" + "a" * 220)


def test_login_acl_ignores_case(server):
    with pytest.raises(LoginError) as ei:
        SyncIscsiClient(server.url(), timeout=10)
    assert ei.value.status_class == 2 and ei.value.status_detail == 2   # authorization failure
    for name in (ALLOWED, SHOUTED):
        with SyncIscsiClient(server.url(), timeout=10, initiator_name=name) as c:
            data = os.urandom(4096)
            c.write(8, data)
            assert bytes(c.read(8, 8)) == data


def test_discovery_acl_ignores_case(server):
    def names(**kw):
        found = SyncIscsiClient.discover(server.portal_url, timeout=10, **kw)
        return sorted({t.target for t in found})
    assert names() == [OPEN_IQN]
    assert names(initiator_name=SHOUTED) == [IQN, OPEN_IQN]
    assert names(initiator_name=ALLOWED) == [IQN, OPEN_IQN]


def test_invalid_initiator_name_is_refused_before_connecting(server):
    with pytest.raises(InitiatorNameError, match="not allowed in an iSCSI name"):
        SyncIscsiClient(server.url(), timeout=10, initiator_name="iqn.2026-11.org.x:a b")


def test_libiscsi_initiator_name_case(server):
    inq = require_tool("iscsi-inq")
    r = run_tool([inq, "-i", SHOUTED, server.url()])
    assert r.returncode == 0 and "PYSCSI" in r.stdout, r.stdout + r.stderr
    r = run_tool([inq, "-i", "iqn.2026-11.org.pyscsi:intruder", server.url()])
    assert r.returncode != 0


def test_diffbackup_initiator_name(diffbackup, server, tmp_path):
    url = server.url(0)
    r = diffbackup("status", url)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Authorization failure" in r.stderr
    r = diffbackup("--initiator-name", SHOUTED, "status", url)
    assert r.returncode == 0, r.stderr
    assert "volume" in r.stdout
    out = tmp_path / "full.bin"
    r = diffbackup("full", url, "-o", str(out), "--initiator-name", ALLOWED)
    assert r.returncode == 0, r.stderr
    assert diffbackup("verify", str(out)).returncode == 0
    r = diffbackup("status", url, "--initiator-name", "bad name")
    assert r.returncode == 2
    assert r.stderr.strip() == "diffbackup: --initiator-name: 'bad name' does not start with " \
                               "iqn., eui. or naa."


def _shell(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.shell", *args], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO), NO_COLOR="1", TERM="dumb"),
                          capture_output=True, text=True, timeout=120)


def test_shell_initiator_name(server):
    r = _shell(server.url(), "-c", "inq")
    assert r.returncode == 3 and "Authorization failure" in r.stdout + r.stderr
    r = _shell(server.url(), "--initiator-name", SHOUTED, "-c", "inq")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PYSCSI" in r.stdout
    r = _shell(server.url(), "--initiator-name", "iqn.2026-11.org.x:a_b", "-c", "inq")
    assert r.returncode == 2 and "'_' is not allowed" in r.stdout + r.stderr


def test_session_reinstatement_treats_case_variants_as_one_initiator(server):
    """RFC 7143 6.3.5: same InitiatorName (after normalisation) + ISID = the same session."""
    from scsi_target.initiator.errors import IscsiError
    isid = bytes.fromhex("80123456" "0001")
    first = SyncIscsiClient(server.url(), timeout=5, initiator_name=SHOUTED, isid=isid)
    try:
        first.test_unit_ready()
        with SyncIscsiClient(server.url(), timeout=5, initiator_name=ALLOWED, isid=isid) as second:
            second.test_unit_ready()
            # The target reinstated the session: the first connection is gone.
            with pytest.raises(IscsiError):
                for _ in range(3):
                    first.test_unit_ready()
    finally:
        first.close()
