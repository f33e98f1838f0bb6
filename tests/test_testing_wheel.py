"""The plugin works from an installed wheel: `pip install` is all a user needs.

Builds the wheel (from a copy of the tracked files), installs it (with its dependencies) in a fresh venv in a
temporary directory, copies docs/examples/test_plugin_example.py there and runs
it with that venv's pytest, from that directory: the source tree is not on the
path (the run checks where scsi_target was imported from).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "docs" / "examples" / "test_plugin_example.py"


def _run(args, cwd, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"{' '.join(map(str, args))} failed ({r.returncode}):\n" \
                              f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
def test_example_runs_from_installed_wheel(tmp_path):
    # Built from a copy of the files git knows (not ignored): pip builds in the tree it is given,
    # and a build/ left in the checkout would ship modules deleted since.
    src = tmp_path / "src"
    files = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                 cwd=REPO).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
          "-w", str(wheels), str(src)], cwd=tmp_path)
    wheel = next(wheels.glob("scsi_target-*.whl"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    py = venv / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", f"{wheel}[test]"], cwd=tmp_path)
    work = tmp_path / "user-project"
    work.mkdir()
    shutil.copy(EXAMPLE, work / EXAMPLE.name)
    where = _run([str(py), "-c", "import scsi_target; print(scsi_target.__file__)"], cwd=work)
    assert str(venv) in where.stdout and str(REPO) not in where.stdout, where.stdout
    r = _run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", EXAMPLE.name], cwd=work)
    assert " passed" in r.stdout and "failed" not in r.stdout, r.stdout
    assert "skipped" not in r.stdout and "error" not in r.stdout, r.stdout
