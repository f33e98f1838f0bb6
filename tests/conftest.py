"""Shared fixtures.  The targets themselves come from the testing library's
pytest plugin (scsi_target/testing/plugin.py: ``iscsi_target``, ``iscsi_server``,
``iscsi_server_process``, ...); this adds what only this suite needs:

``interop_server``  one server process for the whole session with every target
                    the interop modules need (see INTEROP_TARGETS); tests pick
                    the target by IQN and never depend on another test's data.
``diffbackup``      ``diffbackup(*args, cwd=None, timeout=180)`` runs
                    ``python -m tools.diffbackup -q ARGS`` (a CompletedProcess, text).
``shm_dir``         a directory on tmpfs when there is one (volumes of tens of MiB),
                    else a temporary directory; removed after the test.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from scsi_target.testing.process import Lun, ServerProcess, Target

REPO = Path(__file__).resolve().parent.parent
SHM = Path("/dev/shm") if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None

IQN_BASE = "iqn.2026-11.org.pyscsi"
IQN_PLAIN = f"{IQN_BASE}:interop"          # LUN 0 64 MiB, LUN 1 4096-byte blocks
IQN_QEMU = f"{IQN_BASE}:qemu"              # LUN 0 160 MiB for the 128 MiB convert
IQN_CU = f"{IQN_BASE}:conformance"         # LUN 0 plain disk for the full libiscsi run
IQN_CU_LU = f"{IQN_BASE}:lu-properties"    # LUNs with the properties libiscsi skips without
IQN_CHAP = f"{IQN_BASE}:chap"
IQN_ACL = f"{IQN_BASE}:acl"
CHAP_USER, CHAP_SECRET = "interop-user", "0123456789abcdef"
ALLOWED_INITIATOR = f"{IQN_BASE}:allowed-initiator"

# LUNs of IQN_CU_LU, by the libiscsi skip they remove.
LUN_REMOVABLE, LUN_4K_PHYSICAL, LUN_READ_ONLY = 0, 1, 2

INTEROP_TARGETS = [
    Target(IQN_PLAIN, [Lun(0, "64M"), Lun(1, "32M", {"block_size": 4096})]),
    Target(IQN_QEMU, [Lun(0, "160M")]),
    Target(IQN_CU, [Lun(0, "128M")]),
    Target(IQN_CU_LU, [
        Lun(LUN_REMOVABLE, "64M", {"removable": True}),
        # 512-byte logical on 4096-byte physical blocks (LBPPB 8), and WRITE SAME
        # with 0 blocks allowed (WSNZ=0).
        Lun(LUN_4K_PHYSICAL, "64M", {"physical_block_size": 4096, "write_same_zero": True}),
        Lun(LUN_READ_ONLY, "16M", {"read_only": True}),
    ]),
    Target(IQN_CHAP, [Lun(0, "16M")], chap=(CHAP_USER, CHAP_SECRET)),
    Target(IQN_ACL, [Lun(0, "16M")], initiators=[ALLOWED_INITIATOR]),
]


@pytest.fixture(scope="session")
def interop_server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("interop"), INTEROP_TARGETS).start()
    yield srv
    rc = srv.stop()
    assert rc == 0, f"server exit status {rc} after SIGTERM:\n{srv.log_tail()}"


def run_diffbackup(*args: str, cwd: Path | None = None, timeout: float = 180):
    return subprocess.run([sys.executable, "-m", "tools.diffbackup", "-q", *args],
                          cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def diffbackup():
    return run_diffbackup


@pytest.fixture
def shm_dir(tmp_path):
    if SHM is None:
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(prefix="pyscsi-test-", dir=SHM))
    yield d
    shutil.rmtree(d, ignore_errors=True)
