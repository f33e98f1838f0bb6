"""How a ``diffbackup`` process ends (tools.diffbackup.run / _end): at once when
main() is done and nothing is left -- but never losing buffered output, an
atexit handler, or a thread still running."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def _child(body: str) -> subprocess.CompletedProcess:
    code = "import sys, tools.diffbackup as d\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)


def test_buffered_output_and_code_survive_the_fast_exit():
    r = _child("""
        sys.stdout.write("x" * 200_000)          # more than any buffer holds
        sys.stderr.write("warning\\n")
        d._end(3)
        print("never")
    """)
    assert r.returncode == 3
    assert r.stdout == "x" * 200_000
    assert r.stderr == "warning\n"


def test_atexit_handlers_run():
    r = _child("""
        import atexit
        atexit.register(lambda: print("handler ran", flush=True))
        d._end(0)
    """)
    assert (r.returncode, r.stdout) == (0, "handler ran\n")


def test_a_live_thread_is_waited_for():
    r = _child("""
        import threading, time
        t = threading.Thread(target=lambda: (time.sleep(0.3), print("thread done")))
        t.start()
        d._end(5)
    """)
    assert r.returncode == 5
    assert r.stdout == "thread done\n"


@pytest.mark.parametrize("code", [None, "usage"])
def test_other_exit_values_end_the_usual_way(code):
    r = _child(f"d._end({code!r})")
    assert r.returncode == (0 if code is None else 1)
    assert r.stderr == ("" if code is None else "usage\n")


def test_a_real_run_reports_and_exits_with_its_code(tmp_path):
    missing = tmp_path / "missing.bk"
    r = subprocess.run([sys.executable, "-m", "tools.diffbackup", "verify", str(missing)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert r.stderr.startswith("diffbackup: ") and r.stderr.count("\n") == 1
