"""scsi_target.testing.external (tools a test needs, CI=true strictness) and
scsi_target.testing.libiscsi (iscsi-test-cu output)."""
from __future__ import annotations

import os
import sys

import pytest

from scsi_target.testing.external import package_of, require_root, require_tool, run_tool
from scsi_target.testing.libiscsi import cu_summary, unavoidable

MISSING = "iscsi-no-such-tool-xyz"


def test_require_tool_returns_the_path_of_an_installed_program():
    assert require_tool("sh").endswith("/sh")


def test_missing_tool_skips_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"iscsi-no-such-tool-xyz is not installed "
                                                    r"\(Debian package libiscsi-bin\)"):
        require_tool(MISSING)


@pytest.mark.parametrize("ci", ["true", "TRUE"])
def test_missing_tool_fails_under_ci(monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="CI=true requires every interop tool"):
        require_tool(MISSING)


def test_package_names_by_prefix():
    assert package_of("qemu-system-x86_64") == "qemu-system-x86"
    assert package_of("qemu-img") == "qemu-utils"
    assert package_of("dumpcap") == "tshark"
    assert package_of("frobnicate") == "?"


def test_require_root_skips_or_fails_for_non_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="capture needs root"):
        require_root("capture")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="capture needs root, and CI=true"):
        require_root("capture")


def test_require_root_passes_for_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("CI", "true")
    assert require_root("capture") is None


def test_run_tool_captures_text_and_fails_a_hang_with_its_output():
    r = run_tool([sys.executable, "-c", "print('hello')"])
    assert (r.returncode, r.stdout) == (0, "hello\n")
    with pytest.raises(pytest.fail.Exception, match=r"did not finish in 0.5 s; last output:\n"
                                                    r"started"):
        run_tool([sys.executable, "-c", "import time; print('started', flush=True); "
                  "time.sleep(600)"], timeout=0.5)


CU_OUTPUT = """
     CUnit - A unit testing framework for C - Version 2.1-3

Suite: Sanitize
  Test: BlockErase ...    [SKIPPED] --allow-sanitize flag is not set. Skipping test.
passed
Suite: TestUnitReady
  Test: Simple ...passed
Suite: Read10
  Test: Flags ...    [SKIPPED] no FUA support
    [SKIPPED] no DPO support
passed
  Test: Simple ...FAILED

Run Summary:    Type  Total    Ran Passed Failed Inactive
              suites      3      3    n/a      1        0
               tests      4      4      3      1        0
             asserts      9      9      8      1      n/a
"""


def test_cu_summary_counts_failures_and_skips_inside_a_pass():
    s = cu_summary(CU_OUTPUT)
    assert (s.ran, s.passed, s.failed) == (4, 3, 1)
    assert s.failures == ["Read10.Simple"]
    assert s.skipped == {"Sanitize.BlockErase": "--allow-sanitize flag is not set. Skipping test.",
                         "Read10.Flags": "no FUA support; no DPO support"}
    assert str(s) == "ran 4, passed 3, failed 1, skipped inside a pass 2"
    assert unavoidable(s.skipped["Sanitize.BlockErase"])
    assert not unavoidable(s.skipped["Read10.Flags"])


def test_cu_summary_without_a_run_summary_says_so():
    with pytest.raises(AssertionError, match="no CUnit Run Summary"):
        cu_summary("Segmentation fault\n")
