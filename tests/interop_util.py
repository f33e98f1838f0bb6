"""Helpers for tests that run real initiators against the real server process.

* :func:`require_tool` — an external program the test needs; missing means
  skip, except on CI (``CI=true``) where it means fail, so a CI image that lost
  libiscsi-bin or qemu-utils cannot turn the interop suite silently green.
* :class:`ServedTarget` — ``python -m scsi_target serve --config FILE`` as a
  subprocess on a free port, with the config written from small specs (the
  testing library's ServerProcess, scsi_target/testing/process.py, run from
  the source tree and failing the test when it does not start).
* :func:`run_tool` / :func:`cu_summary` — run a program with a timeout; parse
  libiscsi's ``iscsi-test-cu`` output (CUnit "Run Summary" and skip notes).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
START_TIMEOUT = 20.0

# Debian packages that provide the tools, for the skip/fail message.
_PACKAGES = {"iscsi": "libiscsi-bin", "qemu-system": "qemu-system-x86", "qemu": "qemu-utils",
             "tgt": "tgt", "tshark": "tshark", "dumpcap": "tshark", "busybox": "busybox-static",
             "mt-st": "mt-st", "vmlinuz": "linux-image-cloud-amd64"}


def on_ci() -> bool:
    return os.environ.get("CI") == "true"


def require_tool(name: str) -> str:
    """Path of ``name``; skip the test if it is missing (fail instead when CI=true)."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}",) if os.path.exists(p)), None)
    if path:
        return path
    pkg = next((p for prefix, p in _PACKAGES.items() if name.startswith(prefix)), "?")
    msg = f"{name} is not installed (Debian package {pkg})"
    if on_ci():
        pytest.fail(f"{msg}; CI=true requires every interop tool", pytrace=False)
    pytest.skip(msg)


def require_root(what: str) -> None:
    """Skip a test that needs root when not root; fail instead when CI=true (CI runs as root)."""
    if os.geteuid() == 0:
        return
    if on_ci():
        pytest.fail(f"{what} needs root, and CI=true requires this test", pytrace=False)
    pytest.skip(f"{what} needs root")


def run_tool(args: list[str], timeout: float = 60.0, **kw) -> subprocess.CompletedProcess:
    """Run a program, capturing text output; a hang fails the test with what it printed."""
    try:
        # errors="replace": iscsi-inq prints binary designators (NAA) raw.
        return subprocess.run(args, capture_output=True, text=True, errors="replace",
                              timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"")[-4000:] if isinstance(e.stdout, bytes) else (e.stdout or "")[-4000:]
        pytest.fail(f"{' '.join(map(str, args))} did not finish in {timeout:g} s; "
                    f"last output:\n{out}", pytrace=False)


# The config specs and the server process live in the testing library
# (scsi_target/testing/process.py, also the plugin's iscsi_server_process).
from scsi_target.testing.process import Lun, Target, config_toml  # noqa: E402,F401
from scsi_target.testing.process import ServerProcess  # noqa: E402


class ServedTarget(ServerProcess):
    """The library's server process run from the source tree; a failed start fails the test."""

    def __init__(self, workdir: Path, targets: list[Target]) -> None:
        super().__init__(workdir, targets)
        self.cwd = REPO

    def fail(self, message: str):
        pytest.fail(message, pytrace=False)


# ------------------------------------------------------------ iscsi-test-cu output
@dataclass
class CuSummary:
    ran: int
    passed: int
    failed: int
    skipped: dict[str, str]          # "Suite.Test" -> reason
    failures: list[str]              # "Suite.Test" names that failed

    def __str__(self) -> str:
        return (f"ran {self.ran}, passed {self.passed}, failed {self.failed}, "
                f"skipped inside a pass {len(self.skipped)}")


_SUMMARY_RE = re.compile(r"^\s*tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", re.M)


def cu_summary(output: str) -> CuSummary:
    """Parse iscsi-test-cu output: the CUnit tests row and each test's [SKIPPED] notes.

    libiscsi reports a skipped test as *passed* with a "[SKIPPED] reason" log
    line, so the skips are collected per test from the log.
    """
    m = _SUMMARY_RE.search(output)
    if not m:
        raise AssertionError("no CUnit Run Summary in iscsi-test-cu output:\n" + output[-3000:])
    _total, ran, passed, failed, _inactive = map(int, m.groups())
    suite = test = ""
    skipped: dict[str, str] = {}
    failures: list[str] = []
    for line in output.splitlines():
        s = re.match(r"^Suite: (\S+)", line)
        if s:
            suite = s.group(1)
        t = re.search(r"Test: (\S+) \.\.\.", line)
        if t:
            test = t.group(1)
        name = f"{suite}.{test}"
        k = line.find("[SKIPPED]")
        if k >= 0:
            reason = line[k + 9:].strip()
            skipped[name] = f"{skipped[name]}; {reason}" if name in skipped else reason
        if line.strip() == "FAILED" or line.rstrip().endswith("...FAILED"):
            failures.append(name)
    return CuSummary(ran, passed, failed, skipped, failures)


# Skip reasons no LU configuration can remove: destructive SANITIZE needs an
# opt-in flag, multipath tests need a second URL to the same LU.
UNAVOIDABLE_SKIPS = ("--allow-sanitize", "multipath", "second lun", "second url",
                     "initiator-name-2")


def unavoidable(reason: str) -> bool:
    r = reason.lower()
    return any(k in r for k in UNAVOIDABLE_SKIPS)
