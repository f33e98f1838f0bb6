"""Table-driven command dispatch.

Each command set (spc, sbc, ssc, vendor) is a :class:`CommandSet`: a table of
:class:`OpEntry` keyed by (opcode, service action).  A logical unit stacks the
command sets of its device type; REPORT SUPPORTED OPERATION CODES is generated
from the same tables.

A handler is ``handler(lu, cmd) -> None | bytes-like | Response``:

* ``None``: GOOD, no data;
* bytes-like: GOOD with data-in (the dispatcher trims it to the expected
  transfer length and computes the residual);
* :class:`Response`: full control (rarely needed).

Handlers raise :class:`~scsi_target.scsi.sense.SenseError` for CHECK CONDITION.
Handlers moving data-out call :func:`data_out` so the dispatcher knows how many
bytes the CDB asked for and can report residuals.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

from volume.store import byte_view

from ..codes import Code
from .command import Command, Direction
from . import sense as S

if TYPE_CHECKING:  # pragma: no cover
    from .lun import LogicalUnit


class Conflict(Code):
    """How a command behaves under another nexus's reservation (SPC-4 5.13).

    ALLOWED: never conflicts (INQUIRY, REPORT LUNS, REQUEST SENSE, PR IN/OUT ...)
    READ:    medium read access (conflicts with Exclusive Access types)
    WRITE:   medium write access (conflicts with Write Exclusive and Exclusive Access)
    OTHER:   conflicts with any reservation held by another nexus that is not
             a registrant under a registrants-only/all-registrants type
    """
    ALLOWED = 1
    READ = 2
    WRITE = 3
    OTHER = 4


Handler = Callable[["LogicalUnit", Command], object]


@dataclass(frozen=True)
class OpEntry:
    opcode: int
    name: str
    handler: Handler
    cdb_length: int
    direction: Direction = Direction.NONE
    service_action: int | None = None
    # CDB USAGE DATA for REPORT SUPPORTED OPERATION CODES: byte 0 is the opcode,
    # later bytes have a 1 in every bit the target looks at.  Defaults to all
    # ones except the opcode (good enough for callers that do not care).
    usage: bytes | None = None
    # Commands that neither report nor clear a pending unit attention.
    ua_exempt: bool = False
    conflict: Conflict = Conflict.OTHER
    # Allowed while the medium/LU is not ready (e.g. TEST UNIT READY reports it).
    needs_ready: bool = True
    # ``fast(lu, cmd) -> Response | None``: the command's common case without
    # the general path (see LogicalUnit.execute); None hands it to the general
    # path.  It may answer only what the general path would answer the same way.
    fast: Handler | None = None

    def cdb_usage(self) -> bytes:
        if self.usage is not None:
            return self.usage
        data = bytearray([0xFF] * self.cdb_length)
        data[0] = self.opcode
        if self.service_action is not None:
            data[1] = self.service_action & 0x1F
        data[-1] = 0x00  # CONTROL: NACA/LINK not supported
        return bytes(data)


@dataclass
class CommandSet:
    name: str
    entries: dict[tuple[int, int | None], OpEntry] = field(default_factory=dict)
    # Opcodes that carry a service action in CDB byte 1 bits 0-4.
    service_action_opcodes: set[int] = field(default_factory=set)

    def add(self, entry: OpEntry) -> OpEntry:
        key = (entry.opcode, entry.service_action)
        if key in self.entries:
            raise ValueError(f"{self.name}: duplicate entry for {key}")
        self.entries[key] = entry
        if entry.service_action is not None:
            self.service_action_opcodes.add(entry.opcode)
        return entry

    def command(self, opcode: int, name: str, cdb_length: int, **kw) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`add`."""
        def register(fn: Handler) -> Handler:
            self.add(OpEntry(opcode, name, fn, cdb_length, **kw))
            return fn
        return register

    def __iter__(self):
        return iter(self.entries.values())


class DispatchTable:
    """The merged view of several command sets for one LU type."""

    def __init__(self, sets: Iterable[CommandSet], *, fast: bool = True) -> None:
        self.sets = list(sets)
        self._by_key: dict[tuple[int, int | None], OpEntry] = {}
        self._sa_opcodes: set[int] = set()
        for cs in self.sets:
            for key, entry in cs.entries.items():
                self._by_key[key] = entry  # later sets override earlier ones
            self._sa_opcodes |= cs.service_action_opcodes
        # Opcode -> fast handler of the entry that won (``fast=False``: none,
        # every command takes the general path; the tests compare the two).
        self.fast: dict[int, Handler] = {
            op: e.fast for (op, sa), e in self._by_key.items()
            if fast and e.fast is not None and sa is None and op not in self._sa_opcodes}

    def lookup(self, cdb: bytes) -> OpEntry:
        """The entry for ``cdb``, after the checks every command shares (see check_cdb)."""
        if not cdb:
            raise S.invalid_opcode()
        opcode = cdb[0]
        if opcode in self._sa_opcodes:
            if len(cdb) < 2:
                raise S.invalid_cdb_field(0)   # too short to hold the service action
            entry = self._by_key.get((opcode, cdb[1] & 0x1F))
            if entry is None:
                entry = self._by_key.get((opcode, None))
                if entry is None:
                    # Known opcode, unknown service action: INVALID FIELD IN CDB
                    raise S.invalid_cdb_field(1, 4)
        else:
            entry = self._by_key.get((opcode, None))
            if entry is None:
                raise S.invalid_opcode()
        check_cdb(entry, cdb)
        return entry

    def find(self, opcode: int, service_action: int | None = None) -> OpEntry | None:
        return self._by_key.get((opcode, service_action))

    def has_service_actions(self, opcode: int) -> bool:
        return opcode in self._sa_opcodes

    def entries(self) -> list[OpEntry]:
        return sorted(self._by_key.values(), key=lambda e: (e.opcode, e.service_action or 0))


_NONE, _IN, _OUT, _BIDI = Direction.NONE, Direction.IN, Direction.OUT, Direction.BIDI

# CONTROL byte bits (SAM-5 5.2): INQUIRY reports NormACA=0 and linked commands
# are obsolete, so either bit set is an invalid field.
_NACA, _LINK = 0x04, 0x01


def check_cdb(entry: OpEntry, cdb: bytes) -> None:
    """Checks no handler need repeat: length and CONTROL byte.

    A CDB shorter than its opcode's length is INVALID FIELD IN CDB at the
    operation code (the opcode fixes the length); longer ones are accepted, as
    transports pad CDBs (iSCSI always carries at least 16 bytes).
    """
    n = entry.cdb_length
    if len(cdb) < n:
        raise S.invalid_cdb_field(0)
    control = cdb[n - 1]
    if control & _NACA:
        raise S.invalid_cdb_field(n - 1, 2)
    if control & _LINK:
        raise S.invalid_cdb_field(n - 1, 0)


def check_direction(entry: OpEntry, cmd: Command) -> None:
    """Refuse a transfer the command cannot make (the table's ``direction``).

    A command whose table entry moves data-out (WRITE, MODE SELECT, ...) sent
    with a data-in expectation (the iSCSI R bit with a non-zero expected
    length) or as bidirectional gets CHECK CONDITION, INVALID FIELD IN COMMAND
    INFORMATION UNIT -- what LIO answers when the transport's transfer and the
    CDB's disagree on a write; likewise a bidirectional command to a
    unidirectional entry.  A data-in command (READ) carrying data-out is
    answered GOOD with the data-out ignored: libiscsi's conformance test
    iSCSIResiduals.Read10Invalid requires exactly that.
    Front ends that state no direction (in-process callers, Direction.NONE)
    and zero-length expectations are never refused.
    """
    want = cmd.direction
    if want == entry.direction or want == _NONE or entry.direction == _BIDI:
        return      # the common case first: enum member lookups cost per command
    if want == _BIDI or (entry.direction == _OUT and want == _IN and cmd.expected_length):
        raise S.SenseError(S.SenseKey.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_INFORMATION_UNIT)


def data_out(cmd: Command, nbytes: int) -> memoryview:
    """The first ``nbytes`` of the command's data-out buffer.

    Records how much the CDB asked for, so the dispatcher can report a residual
    when the transport's expected length differs.  If the initiator sent fewer
    bytes than the CDB needs (overflow), the command transfers nothing and
    fails with INVALID FIELD IN COMMAND INFORMATION UNIT (FCP-4/SAM-5 option b),
    the residual reporting the overflow.
    """
    cmd.needed = nbytes
    mv = byte_view(cmd.data_out)
    if len(mv) < nbytes:
        raise S.SenseError(S.SenseKey.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_INFORMATION_UNIT)
    return mv[:nbytes]
