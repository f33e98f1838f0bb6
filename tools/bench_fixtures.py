"""Set-up cost of the pytest plugin's fixtures, measured by pytest itself.

    python -m tools.bench_fixtures [--tests 20] [--seeded-size 1G]

Writes a throw-away test module with N tests using ``iscsi_server`` (a served
64 MiB target on an ephemeral port; each test logs in once with our initiator
so the target really serves) and N using ``iscsi_seeded`` (a copy-on-write
snapshot of one seeded volume; each test writes 1 MiB into it), runs it with
pytest in a subprocess (a conftest hook times each set-up and tear-down with
perf_counter), and reports the median set-up and
tear-down time per test, plus the one-time cost of seeding the volume.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CONFTEST = '''
import json, os, time
import pytest
TIMES = []

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    t0 = time.perf_counter()
    yield
    TIMES.append((item.name, "setup", time.perf_counter() - t0))

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    t0 = time.perf_counter()
    yield
    TIMES.append((item.name, "teardown", time.perf_counter() - t0))

def pytest_sessionfinish(session):
    with open(os.environ["BENCH_FIXTURES_OUT"], "w") as f:
        json.dump(TIMES, f)
'''

MODULE = '''
import os
import pytest
from scsi_target.initiator.sync import SyncIscsiClient

@pytest.mark.parametrize("i", range({n}))
def test_served(iscsi_server, i):
    with SyncIscsiClient(iscsi_server.url(0)) as c:
        c.test_unit_ready()

@pytest.mark.scsi_seeded(size="{size}", seed=1)
@pytest.mark.parametrize("i", range({n}))
def test_seeded(iscsi_seeded, i):
    data = os.urandom(1 << 20)
    assert iscsi_seeded.write(i * 2048, data).ok
    assert iscsi_seeded.read(i * 2048, 2048) == data
'''


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tests", type=int, default=20)
    ap.add_argument("--seeded-size", default="1G")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        mod = Path(tmp) / "test_bench_fixtures.py"
        mod.write_text(MODULE.format(n=a.tests, size=a.seeded_size))
        (Path(tmp) / "conftest.py").write_text(CONFTEST)
        out = Path(tmp) / "times.json"
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            str(mod), f"--basetemp={tmp}/base"],
                           capture_output=True, text=True, cwd=tmp, timeout=1200,
                           env=dict(os.environ, BENCH_FIXTURES_OUT=str(out)))
        if r.returncode:
            print(r.stdout[-3000:], r.stderr[-2000:], file=sys.stderr)
            return 1
        raw = json.loads(out.read_text())
    times: dict[tuple[str, str], dict[int, float]] = {}
    for name, phase, dt in raw:
        m = re.match(r"(test_\w+)\[(\d+)\]", name)
        times.setdefault((m.group(1), phase), {})[int(m.group(2))] = dt

    def med(test, phase, skip_first=False):
        d = times.get((test, phase), {})
        vals = [v for k, v in sorted(d.items()) if not (skip_first and k == 0)]
        want = a.tests - (1 if skip_first else 0)
        if len(vals) != want:     # a missing time is not a zero
            raise SystemExit(f"{test} {phase}: {len(vals)} times recorded, expected {want}")
        return statistics.median(vals) * 1e3
    print(f"iscsi_server  (served 64 MiB target), {a.tests} tests: median set-up "
          f"{med('test_served', 'setup'):.1f} ms, tear-down {med('test_served', 'teardown'):.1f} ms")
    first = times.get(("test_seeded", "setup"), {}).get(0, 0.0)
    print(f"iscsi_seeded  ({a.seeded_size} seeded volume): first set-up (seeding, once per "
          f"session) {first:.2f} s; per test after it: set-up "
          f"{med('test_seeded', 'setup', True):.1f} ms, tear-down "
          f"{med('test_seeded', 'teardown', True):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
