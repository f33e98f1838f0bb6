"""Memory budgets of the target: how much write data may be buffered, and how much read data queued.

Defaults, used where the configuration sets no ``[limits]`` (docs/config.md):

``CONNECTION_WRITE_BUDGET``
    bytes of write buffers one connection may hold: every write that needs a
    buffer (more data than its immediate data) reserves its whole expected
    length before its first R2T; beyond the budget, writes wait in arrival
    order without a buffer and without R2Ts.
``TARGET_WRITE_BUDGET``
    the same, summed over every connection to one target.
``SEND_QUEUE_BOUND``
    bytes of responses queued for a connection (produced, not yet taken by
    the kernel) above which the connection stops executing commands — and the
    driver stops reading its socket — until the queue drains.

A write larger than a budget (or than ``dataout.MAX_WRITE_BUFFER``) is
refused at once with CHECK CONDITION / INVALID FIELD IN CDB, so the memory
held for write buffers never exceeds the budgets; keep them at least as large
as the largest transfer the LUs advertise (MAX_WRITE_BUFFER, 256 MiB, by
default).  Admitted writes hold all they need, so they always complete and
the budgets cannot deadlock a connection; a connection whose peer never sends
the data it was asked for keeps its reservation until it is aborted or
closed.  Unsolicited data (InitialR2T=No) that arrives for a write still
waiting is kept as it came, bounded by FirstBurstLength per command and the
CmdSN window.
"""
from __future__ import annotations

from collections import deque
from typing import Callable

CONNECTION_WRITE_BUDGET = 512 << 20
TARGET_WRITE_BUDGET = 1 << 30
SEND_QUEUE_BOUND = 8 << 20


class SharedBudget:
    """Bytes reserved by several holders (the connections of one target), with a wait line.

    A holder that could not reserve registers a wake-up callable; every
    release calls the registered ones in order until the budget is full again.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._waiters: deque[Callable[[], None]] = deque()

    def fits(self, n: int) -> bool:
        return self.held + n <= self.limit

    def take(self, n: int) -> None:
        self.held += n

    def wait(self, wake: Callable[[], None]) -> None:
        if wake not in self._waiters:
            self._waiters.append(wake)

    def forget(self, wake: Callable[[], None]) -> None:
        try:
            self._waiters.remove(wake)
        except ValueError:
            pass

    def give(self, n: int) -> None:
        self.held -= n
        # Each wake-up may take budget again (and re-register); one pass only.
        for _ in range(len(self._waiters)):
            if self.held >= self.limit or not self._waiters:
                break
            self._waiters.popleft()()
