"""Lent views of a store's memory, and the rule that keeps them byte-stable.

A store that reads from a mapping of its file (volume/filestore.py on tmpfs)
can answer a backup stream's reads with views of the map instead of copies:
the encoder puts them in the stream as they are, the target hands them to
``sendmsg``, and the bytes are copied once, by the kernel.  A view of the map
is only as stable as the file under it, though: a WRITE, WRITE SAME, UNMAP (a
punched hole), COMPARE AND WRITE, XCOPY, a restore or a growth changes the
bytes (or the mapping) and a view not yet sent would then carry the new bytes
-- a record whose CRC no longer matches, and a stream that is no longer the
point-in-time image (DESIGN invariant 4).

One rule closes that: **before the store's bytes or mapping change, every view
of its map still held anywhere is turned into a copy**.  The pieces:

* :class:`Loan` -- one lent view.  Holders never keep the view itself, only the
  loan (through :class:`LoanSlice` and :class:`Gather`) and look the bytes up
  when they use them (the target: right before ``sendmsg``, in the same call).
  :meth:`Loan.materialize` replaces the view with a copy of the same bytes, so
  every holder sees the same bytes before and after.
* :class:`LoanRegistry` -- the store's live loans (weakly: a loan nobody holds
  any more, sent or dropped with its connection, leaves by itself).  The
  store's write path calls :meth:`LoanRegistry.materialize` before it changes
  anything; with no loan out that is one length test.

What is held is bounded by what the target keeps of a stream: the send queue
(``scsi_target/target/budget.py``: SEND_QUEUE_BOUND plus one READ) and the backup reader's
re-read window (``volume/session.py``: WINDOW).  Each lent byte is copied at
most once (a materialized loan is a copy and leaves the registry), so a backup
with writes running copies no more than the copying path did, and one without
copies nothing.  Bytes already passed to ``sendmsg`` are the kernel's (no
MSG_ZEROCOPY): nothing to do for them.
"""
from __future__ import annotations

__all__ = ["Loan", "LoanSlice", "LoanRegistry", "Gather", "resolved"]


class Loan:
    """A read-only view of a store's memory (``buf``), until it is materialized."""
    __slots__ = ("buf", "__weakref__")

    def __init__(self, view: memoryview) -> None:
        self.buf = view

    def materialize(self) -> None:
        """The same bytes, as a copy of their own: the store may change after this."""
        self.buf = memoryview(bytes(self.buf))


class LoanSlice:
    """Bytes ``[start, stop)`` of a loan: what holders keep in place of a view."""
    __slots__ = ("loan", "start", "stop")

    def __init__(self, loan: Loan, start: int, stop: int) -> None:
        self.loan = loan
        self.start = start
        self.stop = stop

    @property
    def nbytes(self) -> int:
        return self.stop - self.start

    def __len__(self) -> int:
        return self.stop - self.start

    def view(self) -> memoryview:
        """The bytes as they are now: use at once, do not keep."""
        return self.loan.buf[self.start:self.stop]

    def __getitem__(self, s: slice) -> "LoanSlice":
        a, b, _ = s.indices(self.stop - self.start)
        return LoanSlice(self.loan, self.start + a, self.start + max(a, b))

    def __bytes__(self) -> bytes:
        return bytes(self.loan.buf[self.start:self.stop])


class LoanRegistry:
    """The loans a store has out (see the module doc)."""
    __slots__ = ("_loans", "_lock")

    def __init__(self) -> None:
        # Imported here: the initiator imports this module (through the PDU
        # framing's Gather) and its backup path starts without threading or
        # weakref (with types, itertools and _weakrefset).
        import threading
        import weakref
        self._loans: weakref.WeakSet[Loan] = weakref.WeakSet()
        self._lock = threading.Lock()

    def lend(self, view: memoryview) -> Loan:
        loan = Loan(view)
        with self._lock:
            self._loans.add(loan)
        return loan

    def __len__(self) -> int:
        return len(self._loans)

    def materialize(self) -> int:
        """Copy every loan still held; the bytes copied.  Call before any change."""
        with self._lock:
            loans = list(self._loans)
            self._loans.clear()
        n = 0
        for loan in loans:
            n += len(loan.buf)
            loan.materialize()
        return n


class Gather:
    """Bytes as an ordered list of parts: owned buffers (memoryviews) and
    :class:`LoanSlice` s.  What the backup device answers a READ with when the
    front end takes it (``Command.may_gather``); a front end resolves loan slices
    with ``view()`` only as it hands them to the kernel."""
    __slots__ = ("parts", "nbytes")

    def __init__(self, parts: list) -> None:
        out = []
        n = 0
        for p in parts:
            if type(p) is not LoanSlice:
                p = memoryview(p)
                if p.ndim != 1 or p.format != "B":
                    p = p.cast("B")
            k = p.nbytes
            if k:
                out.append(p)
                n += k
        self.parts = out
        self.nbytes = n

    def __len__(self) -> int:
        return self.nbytes

    def __getitem__(self, s: slice) -> "Gather":
        """The parts covering bytes ``s`` (no step), without copying."""
        a, b, _ = s.indices(self.nbytes)
        out = []
        pos = 0
        for p in self.parts:
            k = p.nbytes
            end = pos + k
            if end > a and pos < b:
                out.append(p if (pos >= a and end <= b) else p[max(a - pos, 0):min(b, end) - pos])
            if end >= b:
                break
            pos = end
        return Gather(out)

    def views(self) -> list[memoryview]:
        """Every part as a view of its bytes now: use at once, do not keep."""
        return list(map(resolved, self.parts))

    def __bytes__(self) -> bytes:
        return b"".join(self.views())


def resolved(part):
    """A part's bytes as they are now: a loan slice's view, any other buffer itself
    (use at once, do not keep)."""
    return part.view() if type(part) is LoanSlice else part
