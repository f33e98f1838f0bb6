"""What libiscsi's conformance suite (``iscsi-test-cu``) reported, parsed.

Run ``iscsi-test-cu`` against a served target (``server.url(0)``) and hand its
output to :func:`cu_summary`: the CUnit "Run Summary" counts, the tests that
failed, and the tests libiscsi skipped *inside a pass* (it reports such a test
as passed, with a ``[SKIPPED] reason`` log line).  :func:`unavoidable` tells the
skips no LU configuration can remove from the others.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


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
    """Parse iscsi-test-cu output: the CUnit tests row and each test's [SKIPPED] notes."""
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
