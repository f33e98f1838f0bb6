"""The plugin serialises pytest's assertion rewriting (scsi_target/testing/rewrite_lock.py).

Two threads rewrite a large module over and over while every garbage collection
runs Python code and the interpreter switches threads every 10 us: the
conditions under which CPython 3.11's shared AST depth counter broke an import
of scsi_target/target/server.py in this suite.  Through the unwrapped function
the same loop fails within a few hundred rewrites (checked by hand with
``rewrite._rewrite_test.__wrapped__``, on 3.11.2 and 3.11.7).
"""
from __future__ import annotations

import gc
import shutil
import sys
import threading
from pathlib import Path

from _pytest.assertion import rewrite

from scsi_target.testing import rewrite_lock

SOURCE = Path(__file__).resolve().parent.parent / "scsi_target" / "target" / "server.py"


def test_the_plugin_installed_the_lock():
    assert rewrite_lock.install() is True
    assert hasattr(rewrite._rewrite_test, "__wrapped__")


def test_concurrent_rewrites_do_not_corrupt_each_other(tmp_path, pytestconfig):
    files = []
    for i in range(2):
        files.append(tmp_path / f"mod{i}.py")
        shutil.copy(SOURCE, files[-1])
    errors: list[BaseException] = []

    def work(fn: Path) -> None:
        try:
            for _ in range(80):
                rewrite._rewrite_test(fn, pytestconfig)
        except BaseException as e:       # noqa: BLE001 - reported below
            errors.append(e)

    def busy(*_):
        sum(range(50))                    # Python code inside every collection

    old_interval, old_threshold = sys.getswitchinterval(), gc.get_threshold()
    gc.callbacks.append(busy)
    sys.setswitchinterval(1e-5)
    gc.set_threshold(50)
    try:
        threads = [threading.Thread(target=work, args=(fn,)) for fn in files]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        gc.callbacks.remove(busy)
        sys.setswitchinterval(old_interval)
        gc.set_threshold(*old_threshold)
    assert not any(t.is_alive() for t in threads)
    assert not errors, f"{type(errors[0]).__name__}: {errors[0]}"
