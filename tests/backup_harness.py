"""Helpers for backup tests: a real `scsi-target` subprocess with backup devices, diffbackup runs."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from interop_util import require_tool  # noqa: F401  (re-exported: one rule for every tool)

REPO = Path(__file__).resolve().parent.parent
IQN = "iqn.2026-11.org.pyscsi:default"


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e




class Server:
    def __init__(self, *disks: str, cwd: Path, extra: tuple[str, ...] = ("--backup-device",)):
        args = [sys.executable, "-m", "scsi_target", "serve", "--listen", "127.0.0.1:0",
                "--log-level", "warning"]
        for d in disks:
            args += ["--disk", d]
        args += list(extra)
        self.proc = subprocess.Popen(args, cwd=cwd, env=env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        deadline = time.monotonic() + 30
        nurls = len(disks) * (2 if "--backup-device" in extra else 1)
        while sum(1 for l in self.lines if l.strip().startswith("iscsi://")) < nurls:
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"server did not start: {self.lines}")
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"server exited: {self.proc.wait()} {self.proc.stderr.read()}")
            self.lines.append(line.rstrip("\n"))
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.lines[0])
        self.port = int(m.group(1))

    def url(self, lun: int) -> str:
        return f"iscsi://127.0.0.1:{self.port}/{IQN}/{lun}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def diffbackup(*args: str, cwd: Path | None = None, timeout: float = 120):
    return subprocess.run([sys.executable, "-m", "tools.diffbackup", "-q", *args], cwd=cwd or REPO,
                          env=env(), capture_output=True, text=True, timeout=timeout)
