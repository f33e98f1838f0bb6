"""Commands kept outstanding up to a depth, results handed out in order: the one
loop behind the blocking and the thread-backed clients' ``pipeline``."""
from __future__ import annotations

# collections.deque is this C type: the collections module (its Python classes and
# the modules they import) is a millisecond of a short-lived client's start-up.
from _collections import deque

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Callable, Iterable, Iterator, TypeVar

    T = TypeVar("T")
    R = TypeVar("R")


def pipelined(commands: Iterable[dict], depth: int, start: Callable[[dict], T],
              finish: Callable[[T], R]) -> Iterator[R]:
    """``finish(start(cmd))`` for each command, in order, with up to ``depth`` started
    and unfinished: the next command is taken from the iterable (lazily, so it may
    depend on the results seen so far) as each result is handed out.  Closing the
    generator early finishes the commands already started."""
    if depth < 1:
        raise ValueError("depth must be at least 1")
    it = iter(commands)
    inflight: deque = deque()
    try:
        for cmd in it:
            inflight.append(start(cmd))
            if len(inflight) >= depth:
                break
        while inflight:
            res = finish(inflight.popleft())
            yield res
            # Refill after the consumer is done with ``res``: a command may
            # reuse its buffer.
            if len(inflight) < depth:
                cmd = next(it, None)
                if cmd is not None:
                    inflight.append(start(cmd))
    finally:
        for handle in inflight:
            try:
                finish(handle)
            except Exception:        # already failed: the caller saw the first error
                pass
