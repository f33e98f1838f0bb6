"""Command and response records of the in-process SCSI API.

A front end (iSCSI, tests, tools) builds a :class:`Command`, gives it to
:meth:`scsi_target.scsi.lun.LunMap.execute` (or a LU's ``execute``) and
gets a :class:`Response`.  Nothing here knows about iSCSI.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

from ..codes import Code
from .layouts.pr import iscsi_transport_id


class Status(Code):
    GOOD = 0x00
    CHECK_CONDITION = 0x02
    CONDITION_MET = 0x04
    BUSY = 0x08
    RESERVATION_CONFLICT = 0x18
    TASK_SET_FULL = 0x28
    ACA_ACTIVE = 0x30
    TASK_ABORTED = 0x40


class Direction(Code):
    NONE = 0
    IN = 1       # data from target to initiator (READ)
    OUT = 2      # data from initiator to target (WRITE)
    BIDI = 3


class TaskAttr(Code):
    UNTAGGED = 0
    SIMPLE = 1
    ORDERED = 2
    HEAD_OF_QUEUE = 3
    ACA = 4


@dataclass(frozen=True, slots=True)
class Nexus:
    """An I_T nexus: the initiator port and the target port it came in on.

    For iSCSI the initiator port is ``name,i,0x<ISID>`` and the target port
    ``name,t,0x<TPGT>``; the in-process API may use any stable strings.
    """
    initiator: str
    target: str = "local"
    # Relative target port identifier and transport id are needed by PR IN
    # READ FULL STATUS; the transport fills them in.
    relative_port: int = 1
    initiator_name: str = ""
    isid: int = 0
    # A nexus is a dict key in every LU's unit attention and reservation
    # tables, looked up several times per command: hash the fields once.
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.initiator, self.target, self.relative_port,
                                                self.initiator_name, self.isid)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def transport_id(self) -> bytes:
        """iSCSI TransportID (format 01b: name + ",i,0x" + ISID), padded to 4."""
        return iscsi_transport_id(self.initiator_name or self.initiator, self.isid)


@dataclass(slots=True)
class Command:
    """One SCSI command as a front end hands it to an LU."""
    cdb: bytes
    lun: int = 0
    data_out: bytes | bytearray | memoryview | None = None
    # Expected data transfer length from the transport (EDTL); None = derive
    # from the CDB (in-process callers that don't care about residuals).
    expected_length: int | None = None
    direction: Direction = Direction.NONE
    nexus: Nexus = field(default_factory=lambda: Nexus("local-initiator"))
    task_tag: int = 0
    task_attr: TaskAttr = TaskAttr.SIMPLE
    # Set by handlers (via dispatch.data_out): bytes of data-out the CDB needs.
    needed: int | None = None
    # The front end promises to run volume.durability.barrier() before sending
    # the response (group commit over a batch of commands); otherwise the LU
    # runs it before returning.
    defer_barrier: bool = False
    # The front end takes a :class:`Deferred` answer (completed later, from any
    # thread) from LUs over asynchronous stores; otherwise they wait for it.
    may_defer: bool = False
    # The front end takes a ``data_in`` that is a :class:`volume.lending.Gather`
    # (parts, some of them loans of a volume's map that it resolves only as it
    # hands them to the kernel); otherwise data_in is one buffer.
    may_gather: bool = False


@dataclass(slots=True)
class Response:
    """An LU's answer to a Command: status, data, sense, residuals."""
    status: Status = Status.GOOD
    data_in: bytes | bytearray | memoryview = b""      # or a Gather (Command.may_gather)
    sense: bytes = b""
    # Positive: underflow (fewer bytes moved than expected); negative: overflow.
    residual: int = 0
    # Called by the front end once ``data_in`` has been sent and may be reused
    # (pooled read buffers); in-process callers may ignore it.
    release: Callable[[], None] | None = None

    @property
    def ok(self) -> bool:
        return self.status == Status.GOOD

    @property
    def underflow(self) -> int:
        return self.residual if self.residual > 0 else 0

    @property
    def overflow(self) -> int:
        return -self.residual if self.residual < 0 else 0


class Deferred:
    """The answer of a command still running on an asynchronous store.

    The LU completes it exactly once, from whichever thread finished the I/O;
    the front end either registers a callback (:meth:`then`) or waits.
    """
    __slots__ = ("response", "_callback", "_event", "_lock")

    def __init__(self) -> None:
        self.response: Response | None = None
        self._callback: Callable[[Response], None] | None = None
        self._event: threading.Event | None = None
        self._lock = threading.Lock()

    def complete(self, response: Response) -> None:
        with self._lock:
            if self.response is not None:
                return
            self.response = response
            callback, event = self._callback, self._event
        if callback is not None:
            callback(response)
        if event is not None:
            event.set()

    def then(self, callback: Callable[[Response], None]) -> None:
        """Call ``callback(response)`` once: now if complete, else on completion."""
        with self._lock:
            if self.response is None:
                self._callback = callback
                return
        callback(self.response)

    def wait(self) -> Response:
        with self._lock:
            if self.response is not None:
                return self.response
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        event.wait()
        return self.response
