"""Data-out sequencer: the tasks of one connection and the data they wait for, sans I/O.

A SCSI command becomes a :class:`Task` on arrival (before its CmdSN turn, so
its data may flow early).  A write's data comes as immediate data in the
command PDU, as unsolicited Data-Out up to FirstBurstLength (InitialR2T=No),
and then as Data-Out answering our R2Ts, at most MaxOutstandingR2T at a time
and MaxBurstLength each (RFC 7143 sections 4.1, 11.7, 11.8; DataPDUInOrder and
DataSequenceInOrder are Yes, so every sequence is checked in order).

Write budgets (:mod:`.budget`): a write that needs a buffer reserves its
whole expected length in the connection's budget and its target's before its
first R2T, and waits in line (no buffer, no R2T) while either is full; one
larger than a budget is refused.  Its
buffer is taken when its first data arrives, not when the command does; data
that comes in one piece covering the whole transfer (the usual 4 KiB write
with immediate data) is used as it is, without a copy or a reservation.

A data-out sequence error ends the command, not the connection: the task
answers CHECK CONDITION / ABORTED COMMAND with the error's ASC once its CmdSN
turn comes, and later Data-Out PDUs for it are discarded.
"""
from __future__ import annotations

import logging
import sys
import threading
from collections import deque
from typing import Callable

from . import budget as B

from ..protocol import params as K
from ..protocol.pdu import R2T, RESERVED_TAG, DataOut, RejectReason, ScsiCommand
from ..scsi import sense as S
from .errors import ProtocolError

log = logging.getLogger("scsi_target.target")

# Writes larger than this are refused before any data is accepted (bounds memory).
MAX_WRITE_BUFFER = 256 << 20   # 65536 blocks of 4 KiB: the largest DiskLU transfer


class WriteBuffers:
    """Recycled write buffers, by exact size.

    A fresh multi-megabyte ``bytearray`` per write costs more than receiving
    into it (zero fill and a page fault per 4 KiB on first touch).  A buffer
    comes back through :meth:`recycle` once its command executed, and only if
    nothing else still refers to it (the LU or an interceptor may keep the
    data-out it was given, or a view of it): whatever holds a reference holds
    the buffer.  Contents of a buffer taken again are stale; a write's buffer
    is filled completely before its command executes.
    """

    def __init__(self, max_cached: int = 64 << 20) -> None:
        self._free: dict[int, list[bytearray]] = {}
        self._cached = 0
        self._max_cached = max_cached
        self._lock = threading.Lock()

    def get(self, n: int) -> bytearray:
        with self._lock:
            free = self._free.get(n)
            if free:
                self._cached -= n
                return free.pop()
        return bytearray(n)

    def recycle(self, buf: bytearray) -> bool:
        """Keep ``buf`` for a later write if the caller's reference is the only
        one left (the caller must drop it); whether it was kept."""
        # References: the caller's, this frame's, getrefcount's argument.
        if type(buf) is not bytearray or sys.getrefcount(buf) != 3:
            return False
        n = len(buf)
        with self._lock:
            if self._cached + n > self._max_cached:
                return False
            self._free.setdefault(n, []).append(buf)
            self._cached += n
        return True


# Writes smaller than this take a fresh buffer (cheap to allocate).
MIN_RECYCLED = 64 << 10
WRITE_BUFFERS = WriteBuffers()


class DataSequenceError(Exception):
    """A Data-Out PDU out of sequence; ``asc`` names what went wrong (SAM-5 / SPC-4 ASC)."""

    def __init__(self, asc) -> None:
        super().__init__(asc.name)
        self.asc = asc


class R2TState:
    """One outstanding R2T: the range asked for and how far its Data-Out got."""
    __slots__ = ("offset", "end", "next_offset", "datasn")

    def __init__(self, offset: int, end: int) -> None:
        self.offset = offset
        self.end = end
        self.next_offset = offset
        self.datasn = 0


class Task:
    """A SCSI command from arrival to response.

    Class attributes are the defaults of a command without data-out, so a
    read costs two attribute stores; writes set what they use.
    """
    want = 0                    # bytes of data-out the task waits for
    buffer = None               # data-out received so far (None: nothing yet)
    received = 0
    delivered = False           # reached in CmdSN order
    accepting = False           # Data-Out PDUs are taken (False: discarded)
    unsolicited_left = 0
    unsolicited_datasn = 0
    unsolicited_offset = 0
    next_r2t_offset = 0         # first byte not yet asked for
    r2tsn = 0
    outstanding: dict | None = None   # TTT -> R2TState
    reserved = 0                # bytes reserved in the write budgets (0: not admitted)
    early: list | None = None   # (offset, data) that came before admission
    recycled = False            # ``buffer`` is from WRITE_BUFFERS (give it back after execution)
    # Set when the data-out phase went wrong or the command was refused: it
    # ends in CHECK CONDITION with this error instead of executing.
    error: S.SenseError | None = None

    def __init__(self, pdu: ScsiCommand, lun: int) -> None:
        self.pdu = pdu
        self.lun = lun

    @property
    def data_complete(self) -> bool:
        return self.received >= self.want

    @property
    def ready(self) -> bool:
        """Delivered, and either all its data is in or it already failed."""
        return self.delivered and (self.received >= self.want or self.error is not None)


class DataOutSequencer:
    """Tasks by ITT, their data-out sequences, and the R2Ts that ask for it.

    ``emit`` takes each R2T produced (sequence numbers are the caller's);
    ``new_ttt`` is the connection's tag allocator.  Methods that can make a
    task ready to execute return it; the caller then calls :meth:`finish`.
    """

    def __init__(self, params: K.SessionParams, emit: Callable[[R2T], None],
                 new_ttt: Callable[[], int], budget: int | None = None,
                 shared: B.SharedBudget | None = None,
                 woken: Callable[[], None] | None = None) -> None:
        self.params = params
        self.emit = emit
        self.new_ttt = new_ttt
        self.budget = B.CONNECTION_WRITE_BUDGET if budget is None else budget
        # The target's budget, shared with its other connections; ``woken`` is
        # told when a release elsewhere let this sequencer emit R2Ts.
        self.shared = shared if shared is not None else B.SharedBudget(1 << 62)
        self.woken = woken
        self.tasks: dict[int, Task] = {}
        self.inflight = 0                  # reserved by admitted writes, not yet executed
        self.waiting: deque[Task] = deque()  # writes waiting for budget, in arrival order

    # ------------------------------------------------------------ commands
    def arrival(self, pdu: ScsiCommand, lun: int) -> Task:
        """A SCSI Command PDU arrived (in any CmdSN order)."""
        itt = pdu.itt
        if itt in self.tasks:
            raise ProtocolError(f"ITT 0x{itt:08x} already in use", RejectReason.INVALID_PDU_FIELD)
        task = self.tasks[itt] = Task(pdu, lun)
        immediate = len(pdu.data)
        if pdu.write:
            self._start_write(task, immediate)
        elif immediate:
            raise ProtocolError("data segment on a command without the W bit",
                                RejectReason.PROTOCOL_ERROR)
        return task

    def _start_write(self, task: Task, immediate: int) -> None:
        pdu = task.pdu
        edtl = pdu.edtl
        if edtl > MAX_WRITE_BUFFER or edtl > self.budget or edtl > self.shared.limit:
            # Larger than any LU accepts in one command, or than a budget could
            # ever hold: refuse without buffering a byte (its unsolicited data
            # is discarded).
            task.error = S.SenseError(S.SenseKey.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_CDB)
            return
        params = self.params
        if immediate > edtl or (immediate and not params.immediate_data):
            raise ProtocolError("immediate data beyond EDTL or not negotiated",
                                RejectReason.PROTOCOL_ERROR)
        task.want = edtl
        task.accepting = True
        if edtl == immediate:
            if immediate:
                self._store(task, 0, pdu.data, immediate)
            return
        task.outstanding = {}
        self._admit(task)
        if immediate:
            self._store(task, 0, pdu.data, immediate)
        if not params.initial_r2t and not pdu.final:
            # F=0: unsolicited Data-Out follows, up to FirstBurstLength (11.3.1);
            # with F=1 the rest is solicited at once.
            unsolicited_end = min(params.first_burst_length, edtl)
            task.unsolicited_left = max(0, unsolicited_end - immediate)
            task.unsolicited_offset = immediate
            task.next_r2t_offset = max(immediate, unsolicited_end)
        else:
            task.next_r2t_offset = immediate
        if task.reserved:
            self._issue_r2ts(task)

    def deliver(self, pdu: ScsiCommand) -> Task | None:
        """The command's CmdSN turn came: the task if it can execute now."""
        task = self.tasks.get(pdu.itt)
        if task is None or task.pdu is not pdu:
            return None  # aborted while queued
        task.delivered = True
        return task if task.received >= task.want or task.error is not None else None

    def finish(self, task: Task) -> None:
        """The task executes now: it leaves the table and frees its budget."""
        del self.tasks[task.pdu.itt]
        if task.reserved:
            self._release(task)

    # ------------------------------------------------------------ data-out
    def data_out(self, pdu: DataOut) -> Task | None:
        """A Data-Out PDU: the task if this completed a delivered command."""
        task = self.tasks.get(pdu.itt)
        if task is None or not task.accepting:
            return None  # for an aborted, refused or failed task: discard
        try:
            self._accept(task, pdu)
        except DataSequenceError as exc:
            self._fail(task, exc.asc)
            return task if task.delivered else None
        if task.received >= task.want:
            return task if task.delivered else None
        if task.reserved and not task.outstanding and task.unsolicited_left == 0:
            self._issue_r2ts(task)
        return None

    def _accept(self, task: Task, pdu: DataOut) -> None:
        n = len(pdu.data)
        offset = pdu.offset
        if pdu.ttt == RESERVED_TAG:
            if pdu.datasn != task.unsolicited_datasn or offset != task.unsolicited_offset \
                    or n > task.unsolicited_left:
                raise DataSequenceError(S.UNEXPECTED_UNSOLICITED_DATA
                                        if n > task.unsolicited_left else S.DATA_OFFSET_ERROR)
            task.unsolicited_datasn += 1
            task.unsolicited_offset += n
            task.unsolicited_left -= n
            if pdu.final:
                task.unsolicited_left = 0
        else:
            r2t = task.outstanding.get(pdu.ttt) if task.outstanding else None
            if r2t is None:
                raise DataSequenceError(S.INVALID_TARGET_PORT_TRANSFER_TAG)
            if pdu.datasn != r2t.datasn or offset != r2t.next_offset or offset + n > r2t.end:
                raise DataSequenceError(S.DATA_OFFSET_ERROR)
            r2t.datasn += 1
            r2t.next_offset += n
            if r2t.next_offset == r2t.end:
                if not pdu.final:
                    raise DataSequenceError(S.DATA_PHASE_ERROR)
                del task.outstanding[pdu.ttt]
            elif pdu.final:
                raise DataSequenceError(S.DATA_PHASE_ERROR)
        if n:
            self._store(task, offset, pdu.data, n)

    @staticmethod
    def _store(task: Task, offset: int, data, n: int) -> None:
        buf = task.buffer
        if buf is None:
            if n == task.want:
                # All of it in one piece (offset 0 follows from the sequence
                # checks): the PDU's own buffer is the data-out.
                task.buffer = data
                task.received = n
                return
            if not task.reserved:
                # Unsolicited data of a write still waiting for budget: kept
                # as it came until the write is admitted.
                if task.early is None:
                    task.early = []
                task.early.append((offset, data))
                task.received += n
                if task.received >= task.want:
                    _assemble(task)    # all of it came unsolicited: no R2T, no wait
                return
            buf = task.buffer = _new_buffer(task)
        buf[offset:offset + n] = data
        task.received += n

    def _fail(self, task: Task, asc) -> None:
        task.accepting = False
        task.buffer = task.early = None
        if task.outstanding:
            task.outstanding.clear()
        self._release(task)
        task.error = S.SenseError(S.SenseKey.ABORTED_COMMAND, asc)
        log.info("ITT 0x%08x: data-out error %s", task.pdu.itt, asc.name)

    # ------------------------------------------------------------ budget
    def _admit(self, task: Task) -> None:
        """Reserve the write's buffer in both budgets, or put it in line."""
        n = task.want
        waiting = self.waiting
        while waiting and self._settled(waiting[0]):
            waiting.popleft()
        if not waiting and self._fits(n):
            self._take(task, n)
        else:
            waiting.append(task)
            if self.inflight + n <= self.budget:
                self.shared.wait(self._wake)   # only the target's budget is short

    def _settled(self, task: Task) -> bool:
        """A waiting write that no longer needs admission (gone, failed, or complete)."""
        return self.tasks.get(task.pdu.itt) is not task or not task.accepting \
            or task.received >= task.want

    def _fits(self, n: int) -> bool:
        return self.inflight + n <= self.budget and self.shared.fits(n)

    def _take(self, task: Task, n: int) -> None:
        self.inflight += n
        self.shared.take(n)
        task.reserved = n

    def _release(self, task: Task) -> None:
        """The task no longer holds its buffer: let waiting writes go on."""
        n = task.reserved
        if n:
            task.reserved = 0
            self.inflight -= n
            self.shared.give(n)
        self._admit_waiting()

    def _admit_waiting(self) -> bool:
        """Admit waiting writes in arrival order while they fit; whether any was."""
        waiting = self.waiting
        admitted = False
        while waiting:
            task = waiting[0]
            if self._settled(task):
                waiting.popleft()
                continue
            if not self._fits(task.want):
                if self.inflight + task.want <= self.budget:
                    self.shared.wait(self._wake)
                break
            waiting.popleft()
            self._take(task, task.want)
            if task.early:
                _assemble(task)
            self._issue_r2ts(task)
            admitted = True
        return admitted

    def _wake(self) -> None:
        """The target's budget has room again (released by another connection)."""
        if self._admit_waiting() and self.woken is not None:
            self.woken()

    # ------------------------------------------------------------ R2T
    def _issue_r2ts(self, task: Task) -> None:
        edtl = task.want
        burst = self.params.max_burst_length
        max_r2t = max(1, self.params.max_outstanding_r2t)
        outstanding = task.outstanding
        pdu = task.pdu
        while task.next_r2t_offset < edtl and len(outstanding) < max_r2t:
            offset = task.next_r2t_offset
            length = min(burst, edtl - offset)
            ttt = self.new_ttt()
            outstanding[ttt] = R2TState(offset, offset + length)
            self.emit(R2T(lun=pdu.lun, itt=pdu.itt, ttt=ttt, r2tsn=task.r2tsn,
                          offset=offset, length=length))
            task.r2tsn += 1
            task.next_r2t_offset = offset + length

    # ------------------------------------------------------------ task set
    def get(self, itt: int) -> Task | None:
        return self.tasks.get(itt)

    def abort(self, task: Task) -> None:
        """Drop a task without a response (ABORT TASK, resets).

        A queued PDU stays in the session's pending queue so its CmdSN still
        advances the window; :meth:`deliver` skips it because its task is gone.
        """
        if self.tasks.get(task.pdu.itt) is task:
            del self.tasks[task.pdu.itt]
        task.accepting = False
        self._release(task)

    def abort_lun(self, lun: int | None) -> None:
        """Abort every task of ``lun`` (None: of every LUN)."""
        for task in [t for t in self.tasks.values() if lun is None or t.lun == lun]:
            self.abort(task)

    def drop(self, itt: int) -> None:
        """A command that will never be delivered (CmdSN outside the window)."""
        task = self.tasks.pop(itt, None)
        if task is not None:
            task.accepting = False
            self._release(task)

    def clear(self) -> None:
        """The connection is gone: every task ends and the target gets its budget back."""
        self.shared.forget(self._wake)
        held = sum(t.reserved for t in self.tasks.values())
        for t in self.tasks.values():
            t.reserved = 0
            t.accepting = False
        self.tasks.clear()
        self.waiting.clear()
        self.inflight = 0
        if held:
            self.shared.give(held)


def _new_buffer(task: Task) -> bytearray:
    n = task.want
    if n < MIN_RECYCLED:
        return bytearray(n)
    task.recycled = True
    return WRITE_BUFFERS.get(n)


def take_buffer(task: Task):
    """The task's data-out, handed over to execute it; the task keeps no reference."""
    buf, task.buffer = task.buffer, None
    return buf


def _assemble(task: Task) -> None:
    """The pieces that came before admission, in the task's own buffer."""
    buf = task.buffer = _new_buffer(task)
    for offset, data in task.early:
        buf[offset:offset + len(data)] = data
    task.early = None
