"""One assertion rewrite at a time, whichever thread imports.

pytest rewrites the asserts of every module of a package that owns a pytest11
entry point, so each module of this package imported under pytest is read with
``ast.parse`` and compiled back from the tree.  CPython 3.11 keeps the depth
counter of its AST conversions in one per-interpreter structure; when two
threads convert at once (an in-process target's thread importing a module
lazily while the test thread imports another) and a garbage collection runs
Python code in the middle of one, the other thread's conversion resets the
counter and the first fails with ``SystemError: AST constructor recursion depth
mismatch``.  Seen in this suite under Debian's 3.11.2, reproduced with 3.11.7.

:func:`install` wraps pytest's ``_rewrite_test`` (parse, rewrite, compile of one
module; it imports nothing itself) in a lock.  Without that private function
(another pytest) nothing is changed.
"""
from __future__ import annotations

import threading

_installed = False


def install() -> bool:
    """Serialise pytest's assertion rewriting; True when it is (now or before)."""
    global _installed
    if _installed:
        return True
    try:
        from _pytest.assertion import rewrite
    except ImportError:
        return False
    original = getattr(rewrite, "_rewrite_test", None)
    if original is None:
        return False
    # Re-entrant: a collection inside the lock may run a finalizer that imports.
    lock = threading.RLock()

    def _rewrite_test(*args, **kwargs):
        with lock:
            return original(*args, **kwargs)

    _rewrite_test.__wrapped__ = original
    rewrite._rewrite_test = _rewrite_test
    _installed = True
    return True
