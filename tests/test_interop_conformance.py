"""libiscsi's conformance suite (iscsi-test-cu) in full against the served disk LUN.

libiscsi reports a test it could not run as *passed* with a "[SKIPPED] ..."
log line, so the CUnit totals alone would hide whole suites.  Every run here
is verbose and every skip is checked:

* allowed anywhere: SANITIZE (needs --allow-sanitize), multipath (needs a
  second URL to the same LU);
* allowed in the full run on the plain LUN only when the skip is an LU
  property (not removable, not write-protected, one logical block per physical
  block, WSNZ=1, no atomic alignment) AND the test runs, unskipped, against a
  LUN with that property in ``test_lu_property_suites``.
"""
from __future__ import annotations

import pytest

from conftest import IQN_CU, IQN_CU_LU, LUN_4K_PHYSICAL, LUN_READ_ONLY, LUN_REMOVABLE
from scsi_target.testing.external import require_tool, run_tool
from scsi_target.testing.libiscsi import cu_summary, unavoidable
pytestmark = pytest.mark.interop

# Suites run against the LUN that has the property their tests skip without.
LU_PROPERTY_RUNS = {
    "removable": (LUN_REMOVABLE, ["SCSI.PreventAllow", "SCSI.StartStopUnit", "SCSI.NoMedia"]),
    "read-only": (LUN_READ_ONLY, ["SCSI.ReadOnly"]),
    "4k-physical": (LUN_4K_PHYSICAL, ["SCSI.CompareAndWrite", "SCSI.WriteSame10",
                                      "SCSI.WriteSame16", "SCSI.WriteAtomic16"]),
}
COVERED = {s.removeprefix("SCSI.") for _, suites in LU_PROPERTY_RUNS.values() for s in suites}

# Partial skips of one assert inside a test that otherwise runs: the
# MAXIMUM WRITE SAME LENGTH boundary asserts need a LUN larger than that limit,
# and the limit is the whole LUN (WRITE SAME may cover all of it).
ASSERT_SKIPS = ("LUN too small. Skipping assert",)


def run_cu(url: str, tests: str, timeout: float = 240.0):
    exe = require_tool("iscsi-test-cu")
    r = run_tool([exe, "-V", "--dataloss", "-t", tests, url], timeout=timeout)
    out = r.stdout + r.stderr
    return cu_summary(out), out


def _bad_skips(summary, allow_covered: bool) -> dict[str, str]:
    bad = {}
    for name, reason in summary.skipped.items():
        reasons = [r for r in reason.split("; ")
                   if not unavoidable(r) and not any(a in r for a in ASSERT_SKIPS)]
        if not reasons:
            continue
        if allow_covered and name.split(".")[0] in COVERED:
            continue
        bad[name] = "; ".join(reasons)
    return bad


def test_libiscsi_scsi_suite_full(interop_server):
    summary, out = run_cu(interop_server.url(0, IQN_CU), "SCSI")
    print(f"iscsi-test-cu -t SCSI: {summary}")
    assert summary.failed == 0 and not summary.failures, \
        f"{summary}: failed {summary.failures}\n{out[-3000:]}"
    assert summary.ran >= 200, summary
    assert summary.passed >= 180, summary
    # For the record: how many ran without any skip note at all.
    print(f"  without any [SKIPPED] note: {summary.passed - len(summary.skipped)}")
    bad = _bad_skips(summary, allow_covered=True)
    assert not bad, f"tests skipped for reasons no LU configuration here covers: {bad}"


def test_libiscsi_iscsi_suite_full(interop_server):
    summary, out = run_cu(interop_server.url(0, IQN_CU), "iSCSI")
    print(f"iscsi-test-cu -t iSCSI: {summary}")
    assert summary.failed == 0 and not summary.failures, f"{summary}\n{out[-3000:]}"
    assert summary.ran == summary.passed == 15, summary
    assert not _bad_skips(summary, allow_covered=False), summary.skipped


@pytest.mark.parametrize("prop", list(LU_PROPERTY_RUNS))
def test_lu_property_suites(interop_server, prop):
    lun, suites = LU_PROPERTY_RUNS[prop]
    summary, out = run_cu(interop_server.url(lun, IQN_CU_LU), ",".join(suites))
    print(f"iscsi-test-cu -t {','.join(suites)} on the {prop} LUN: {summary}")
    assert summary.failed == 0 and not summary.failures, \
        f"{summary}: failed {summary.failures}\n{out[-3000:]}"
    assert summary.ran > 0
    bad = _bad_skips(summary, allow_covered=False)
    assert not bad, f"still skipped on the {prop} LUN: {bad}"


def test_summary_parser_sees_failures_and_skips():
    """The checks above can fail: the parser finds failures and skips."""
    out = """
Suite: PreventAllow
  Test: Simple ...    [SKIPPED] Logical unit is not removable. Skipping test.
passed
Suite: Read10
  Test: Simple ...FAILED
    1. test_read10_simple.c:40  - CU_ASSERT_EQUAL(ret,0)
Run Summary:    Type  Total    Ran Passed Failed Inactive
              suites      2      2    n/a      1        0
               tests      2      2      1      1        0
"""
    s = cu_summary(out)
    assert (s.ran, s.passed, s.failed) == (2, 1, 1)
    assert s.failures == ["Read10.Simple"]
    assert s.skipped == {"PreventAllow.Simple": "Logical unit is not removable. Skipping test."}
    assert _bad_skips(s, allow_covered=False) == s.skipped
    assert _bad_skips(s, allow_covered=True) == {}
