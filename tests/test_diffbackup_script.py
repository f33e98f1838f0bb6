"""The `diffbackup` command as installed (bin/diffbackup, pyproject.toml script-files):
it runs from the environment's bin directory, answers as tools.diffbackup does,
and starts without re (what pip's generated entry-point wrapper imports)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
INSTALLED = Path(sys.executable).parent / "diffbackup"


def _run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, cwd=REPO, **kw)


@pytest.mark.skipif(not INSTALLED.is_file(), reason="the package is not installed here")
def test_the_installed_command_runs():
    first = INSTALLED.read_text().splitlines()[0]
    assert first.startswith("#!") and "python" in first     # pip gave it the interpreter
    r = _run(str(INSTALLED), "--help")
    assert r.returncode == 0 and "full" in r.stdout and "restore" in r.stdout, r.stderr
    r = _run(str(INSTALLED), "diff", "vol.img", "-o", "x.bk")          # --scope missing
    assert r.returncode == 2 and r.stderr.startswith("diffbackup: "), r.stderr
    r = _run(str(INSTALLED), "verify", str(REPO / "no-such.bk"))
    assert r.returncode == 1 and r.stderr.startswith("diffbackup: "), r.stderr


def test_the_script_imports_no_re(tmp_path):
    # A full over iSCSI as the benchmark starts it: python -S, the tree and
    # site-packages on the path.
    import site

    from scsi_target.testing.process import ServerProcess
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + site.getsitepackages())
    with ServerProcess.from_flags(tmp_path, "--disk", f"{tmp_path}/vol.img:4M",
                                  "--backup-device") as srv:
        r = _run(sys.executable, "-S", "-X", "importtime", str(REPO / "bin" / "diffbackup"),
                 "-q", "full", srv.url(0), "-o", str(tmp_path / "full.bk"), env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    mods = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}
    assert "tools.diffbackup" in mods and "scsi_target.initiator.blocking" in mods
    assert not [m for m in ("re", "argparse") if m in mods]
