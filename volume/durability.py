"""Group commit of write intents.

Invariant 1 (DESIGN.md) asks that a write is acknowledged only once its
blocks are durably marked in the generation map.  Marking with an msync per
write costs a syscall per command; instead, marks can be made with
``sync=False`` (they survive kill -9 at once, being in a shared mapping) and
every acknowledgement path calls :func:`barrier` first, which msyncs all maps
with unsynced marks — once for a whole batch of commands.
"""
from __future__ import annotations

import threading
from typing import Protocol


class _Syncable(Protocol):
    def sync_marks(self) -> None: ...


_pending: set = set()
_lock = threading.Lock()


def note_unsynced(obj: _Syncable) -> None:
    """``obj`` holds marks that the next barrier must make durable."""
    if obj not in _pending:
        with _lock:
            _pending.add(obj)


def forget(obj: _Syncable) -> None:
    with _lock:
        _pending.discard(obj)


def barrier() -> None:
    """Make every write intent recorded so far durable; call before acknowledging."""
    if not _pending:
        return
    with _lock:
        objs = list(_pending)
        _pending.clear()
    failed: BaseException | None = None
    for obj in objs:
        try:
            obj.sync_marks()
        except BaseException as exc:   # the others must still become durable
            if failed is None:
                failed = exc
    if failed is not None:
        # The failing map kept its marks pending (it re-notes itself), so the
        # next barrier tries again; nothing of this batch may be acknowledged.
        raise failed
