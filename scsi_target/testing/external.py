"""External programs a test needs (libiscsi's tools, qemu-img, tshark, tgt...).

:func:`require_tool` returns the program's path; when it is missing the test is
skipped — except when the environment says ``CI=true``: then it fails, so a CI
image that lost a package cannot turn a suite of interop tests silently green.
:func:`require_root` is the same rule for tests that need root, and
:func:`run_tool` runs a program with a timeout that fails the test (with what
the program printed) instead of hanging it.  These import pytest: use them from
tests.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

# Debian packages that provide the tools, for the skip/fail message (longest prefix first).
PACKAGES = {"iscsi": "libiscsi-bin", "qemu-system": "qemu-system-x86", "qemu": "qemu-utils",
            "tgt": "tgt", "tshark": "tshark", "dumpcap": "tshark", "busybox": "busybox-static",
            "mt-st": "mt-st", "vmlinuz": "linux-image-cloud-amd64"}


def on_ci() -> bool:
    """``CI=true`` in the environment: missing tools and privileges fail instead of skip."""
    return os.environ.get("CI", "").lower() == "true"


def find_tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}",) if os.path.exists(p)), None)


def package_of(name: str) -> str:
    return next((p for prefix, p in PACKAGES.items() if name.startswith(prefix)), "?")


def require_tool(name: str) -> str:
    """Path of ``name``; skip the test if it is missing (fail instead when CI=true)."""
    path = find_tool(name)
    if path:
        return path
    msg = f"{name} is not installed (Debian package {package_of(name)})"
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


def run_tool(args: list, timeout: float = 60.0, **kw) -> subprocess.CompletedProcess:
    """Run a program, capturing text output; a hang fails the test with what it printed."""
    try:
        # errors="replace": iscsi-inq prints binary designators (NAA) raw.
        return subprocess.run(args, capture_output=True, text=True, errors="replace",
                              timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        out = e.stdout or ""
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        pytest.fail(f"{' '.join(map(str, args))} did not finish in {timeout:g} s; "
                    f"last output:\n{out[-4000:]}", pytrace=False)
