"""libiscsi's conformance suites for block commands, against a served disk LUN.

Serves a disk LUN on a free loopback port with the testing library's pytest
plugin (``iscsi_server``, LU options by indirect parametrization) and runs
``iscsi-test-cu -V --dataloss`` on the SBC suites and the iSCSI residual
tests, with 512- and 4096-byte blocks.  Any failed test fails this one, and
so does any change in what libiscsi skips: it reports a test it could not
run as *passed* with a "[SKIPPED] reason" note, so the notes are parsed and
must be exactly :data:`EXPECTED_SKIPS`.  Missing libiscsi-bin skips the test,
or fails it under CI=true (scsi_target.testing.external.require_tool).
"""
from __future__ import annotations

import pytest

from scsi_target.testing.external import require_tool, run_tool
from scsi_target.testing.libiscsi import cu_summary
IQN = "iqn.2026-11.test:sbc-conformance"

SBC_SUITES = ",".join([
    "SCSI.CompareAndWrite", "SCSI.GetLBAStatus", "SCSI.Mandatory", "SCSI.NoMedia",
    "SCSI.OrWrite", "SCSI.Prefetch10", "SCSI.Prefetch16", "SCSI.Read6", "SCSI.Read10",
    "SCSI.Read12", "SCSI.Read16", "SCSI.ReadCapacity10", "SCSI.ReadCapacity16",
    "SCSI.ReadDefectData10", "SCSI.ReadDefectData12", "SCSI.ReadOnly", "SCSI.Unmap",
    "SCSI.Verify10", "SCSI.Verify12", "SCSI.Verify16", "SCSI.Write10", "SCSI.Write12",
    "SCSI.Write16", "SCSI.WriteAtomic16", "SCSI.WriteSame10", "SCSI.WriteSame16",
    "SCSI.WriteVerify10", "SCSI.WriteVerify12", "SCSI.WriteVerify16",
    "iSCSI.iSCSIResiduals",
])

# Every test libiscsi skips here, the note it prints, and why that is right.
# The LU properties (removable, write-protected, LBPPB >= 2, WSNZ=0, atomic
# alignment) are not those of this plain LUN; the suites that need them run
# unskipped on LUNs that have them in tests/test_interop_conformance.py
# (test_lu_property_suites).
_LBPPB = ("LBPPB < 2. Skipping test",
          "needs several logical blocks per physical block; this LUN has 1")
EXPECTED_SKIPS: dict[str, tuple[str, str]] = {
    "CompareAndWrite.InvalidDataOutSize": _LBPPB,
    "WriteSame10.InvalidDataOutSize": _LBPPB,
    "WriteSame16.InvalidDataOutSize": _LBPPB,
    "WriteSame10.UnmapUnaligned": _LBPPB,
    "WriteSame16.UnmapUnaligned": _LBPPB,
    "NoMedia.NoMediaSBC": ("LUN is not removable. Skipping test.",
                           "medium removal needs a removable LU (RMB=1)"),
    "ReadOnly.ReadOnlySBC": ("Logical unit is not write-protected. Skipping test.",
                             "needs a write-protected LU"),
    "WriteAtomic16.VPD": ("No alignment restrictions on this LUN; No granularity restrictions "
                          "on this LUN", "VPD B0h reports no atomic alignment/granularity, so "
                          "there is nothing to check against"),
    "WriteSame10.ZeroBlocks": ("WRITESAME10 does not support 0-blocks.",
                               "VPD B0h WSNZ=1 (NUMBER OF LOGICAL BLOCKS 0 is refused) unless "
                               "the LUN sets write_same_zero"),
    "WriteSame16.ZeroBlocks": ("WRITESAME16 does not support 0-blocks.",
                               "VPD B0h WSNZ=1, as for WRITE SAME(10)"),
}

pytestmark = pytest.mark.interop


def disk(block_size: int) -> dict:
    """A file-backed, untracked disk (what the served config used to be)."""
    return {"size": "64M" if block_size == 512 else "512M", "block_size": block_size,
            "backing": "file", "track": False}


def _run_suites(url: str) -> str:
    exe = require_tool("iscsi-test-cu")
    out = run_tool([exe, "-V", "--dataloss", "-t", SBC_SUITES, url], timeout=600)
    return out.stdout + out.stderr


def skip_audit(skipped: dict[str, str]) -> list[str]:
    """What differs from EXPECTED_SKIPS, one line per test, naming it."""
    problems = []
    for name, reason in sorted(skipped.items()):
        want = EXPECTED_SKIPS.get(name)
        if want is None:
            problems.append(f"new skip {name}: {reason!r} (fix the target, or add it to "
                            "EXPECTED_SKIPS with the reason it is right)")
        elif reason != want[0]:
            problems.append(f"{name} skipped for another reason: {reason!r}, expected {want[0]!r}")
    for name in sorted(EXPECTED_SKIPS.keys() - skipped.keys()):
        problems.append(f"{name} is no longer skipped: remove it from EXPECTED_SKIPS")
    return problems


@pytest.mark.scsi_target(name=IQN)
@pytest.mark.parametrize("iscsi_target", [disk(512), disk(4096)], indirect=True,
                         ids=["512", "4096"])
def test_libiscsi_sbc_suites_pass(iscsi_server):
    output = _run_suites(iscsi_server.url(0))
    s = cu_summary(output)
    assert s.failed == 0 and not s.failures, \
        f"{s.failed} libiscsi tests failed: {s.failures}\n{output[-4000:]}"
    assert s.ran >= 100 and s.passed == s.ran, s
    problems = skip_audit(s.skipped)
    assert not problems, "libiscsi [SKIPPED] notes changed:\n" + "\n".join(problems)


def test_skip_audit_names_new_changed_and_vanished_skips():
    """The audit above can fail: a new skip, a new reason and a vanished skip are named."""
    output = """
Suite: Read10
  Test: Simple ...    [SKIPPED] Not supported by this LUN. Skipping test.
passed
Suite: NoMedia
  Test: NoMediaSBC ...    [SKIPPED] Something else
passed
Run Summary:    Type  Total    Ran Passed Failed Inactive
               tests      2      2      2      0        0
"""
    problems = skip_audit(cu_summary(output).skipped)
    assert any(p.startswith("new skip Read10.Simple: 'Not supported by this LUN.")
               for p in problems), problems
    assert any(p.startswith("NoMedia.NoMediaSBC skipped for another reason: 'Something else'")
               for p in problems), problems
    assert "ReadOnly.ReadOnlySBC is no longer skipped" in "\n".join(problems)
    assert len(problems) == 2 + len(EXPECTED_SKIPS) - 1
    assert skip_audit({k: v[0] for k, v in EXPECTED_SKIPS.items()}) == []
