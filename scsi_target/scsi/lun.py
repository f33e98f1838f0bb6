"""Logical units and the target-level LUN map.

:class:`LogicalUnit` holds what SPC says every LU has — identity, unit
attentions per I_T nexus, mode pages, reservations — and runs the common
execution path: lookup in the dispatch table, unit attention, reservation
conflict, handler, data-in trimming and residual, sense rendering.  Device
types (disk, tape, pseudo devices) subclass it and add a command set.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from functools import partial

from volume import durability
from volume.buffers import READ_BUFFERS
from volume.lending import Gather

from .capabilities import BlockLimits, Geometry, Placement, Provisioning
from .command import Command, Deferred, Nexus, Response, Status
from .dispatch import DispatchTable, check_direction
from .layouts.luns import ReportLuns
from .modepages import ModePages
from .reservations import Reservations
from . import sense as S

log = logging.getLogger("scsi_target.scsi")


@dataclass
class Identity:
    vendor: str = "PYSCSI"
    product: str = "VIRTUAL-DISK"
    revision: str = "0001"
    serial: str = ""
    # 64-bit NAA IEEE Registered identifier (NAA 5): OUI + vendor specific.
    naa: int = 0
    t10_vendor_specific: str = ""

    @classmethod
    def derive(cls, target_name: str, lun: int, product: str = "VIRTUAL-DISK",
               serial: str | None = None, volume_id: bytes | None = None) -> "Identity":
        """Serial and NAA from ``volume_id`` (unique per volume, scsi_target/identity.py),
        or, without one, from the target name and LUN (unique per LUN map only)."""
        if volume_id is None:
            digest = hashlib.sha256(f"{target_name}/{lun}".encode()).digest()
        else:
            # An explicit serial also changes the NAA, so two copies of one
            # image told apart by serial are told apart by NAA too.
            digest = hashlib.sha256(b"pyscsi-lu\0" + volume_id + b"\0"
                                    + (serial or "").encode()).digest()
        ser = serial or digest[:8].hex()
        # NAA 5: 4-bit NAA, 24-bit OUI (locally administered 0x000000 is
        # reserved; use an arbitrary fixed value), 36-bit vendor specific.
        oui = 0x0A_5C_51
        vendor_bits = int.from_bytes(digest[8:13], "big") & ((1 << 36) - 1)
        naa = (0x5 << 60) | (oui << 36) | vendor_bits
        return cls(product=product, serial=ser, naa=naa,
                   t10_vendor_specific=f"{target_name}:{lun}:{ser}")


class UnitAttentions:
    """Pending unit attention conditions per I_T nexus (SAM-5 5.14)."""

    MAX_PENDING = 16

    def __init__(self) -> None:
        self._pending: dict[Nexus, list[S.Asc]] = {}
        self._known: set[Nexus] = set()

    def first_contact(self, nexus: Nexus) -> None:
        if nexus not in self._known:
            self._known.add(nexus)
            self._pending.setdefault(nexus, []).insert(0, S.POWER_ON_RESET)

    def establish(self, asc: S.Asc, *, nexus: Nexus | None = None,
                  exclude: Nexus | None = None) -> None:
        """Queue ``asc`` for one nexus, or for every known nexus but ``exclude``."""
        targets = [nexus] if nexus is not None else [n for n in self._known if n != exclude]
        for n in targets:
            q = self._pending.setdefault(n, [])
            if asc not in q and len(q) < self.MAX_PENDING:
                q.append(asc)

    def reset(self, exclude: Nexus | None = None) -> None:
        """A LU reset: every nexus but ``exclude`` gets POWER ON/RESET."""
        for n in self._known:
            if n == exclude:
                continue
            self._pending[n] = [S.POWER_ON_RESET]

    def forget(self, nexus: Nexus) -> None:
        self._pending.pop(nexus, None)
        self._known.discard(nexus)

    def pending(self, nexus: Nexus) -> bool:
        return bool(self._pending.get(nexus))

    def quiet(self, nexus: Nexus) -> bool:
        """Seen before and nothing pending: a command from it neither gets nor clears one."""
        return nexus in self._known and not self._pending.get(nexus)

    def pop(self, nexus: Nexus) -> S.Asc | None:
        q = self._pending.get(nexus)
        if not q:
            return None
        return q.pop(0)


class LogicalUnit:
    """Base for every LU type; subclasses set ``table`` and ``device_type``.

    The capability fields below are what INQUIRY, VPD and MODE SENSE report;
    a device type sets them once, in its constructor (None: not that kind of LU).
    """

    device_type: int = 0x1F
    table: DispatchTable
    removable: bool = False
    read_only: bool = False
    dpofua: bool = False
    # Block devices only.
    geometry: Geometry | None = None
    limits: BlockLimits | None = None
    provisioning: Provisioning | None = None
    # INQUIRY version descriptors; None: the defaults of the device type.
    version_descriptors: tuple[int, ...] | None = None

    def __init__(self, identity: Identity | None = None) -> None:
        self.identity = identity or Identity()
        self.ua = UnitAttentions()
        self.mode = ModePages(self)
        self.pr = Reservations(self)
        self.placement = Placement()
        self.lock = threading.RLock()  # serialises commands that must be atomic
        self.stopped = False  # START STOP UNIT
        # Per-nexus state kept by command sets (e.g. copy results): called with
        # the nexus on I_T nexus loss, with None on a LU reset.
        self.forget_hooks: list = []
        self.medium_present = True  # removable LUs: START STOP UNIT with LOEJ
        # I_T nexuses holding PREVENT MEDIUM REMOVAL (SPC-4 6.13).
        self.prevent: set[Nexus] = set()

    @property
    def lun(self) -> int:
        return self.placement.lun

    @property
    def target_name(self) -> str:
        return self.placement.target_name

    def place(self, placement: Placement) -> None:
        """Called by the LunMap that serves this LU (REPORT LUNS, copy targets)."""
        self.placement = placement

    # -- device-type hooks ----------------------------------------------
    def mode_device_specific(self) -> int:
        """DEVICE-SPECIFIC PARAMETER of the mode parameter header."""
        value = 0x80 if self.read_only or self.mode.software_write_protect else 0x00
        if self.dpofua:
            value |= 0x10
        return value

    def load_eject(self, load: bool) -> None:
        """START STOP UNIT with LOEJ on a removable LU."""
        self.medium_present = load

    # -- readiness ------------------------------------------------------
    def not_ready_reason(self) -> S.SenseError | None:
        """A NOT READY error when media access is impossible, else None."""
        if not self.medium_present:
            return S.not_ready(S.MEDIUM_NOT_PRESENT)
        if self.stopped:
            return S.not_ready(S.LUN_NOT_READY_INIT_REQUIRED)
        return None

    # -- execution ------------------------------------------------------
    def execute(self, cmd: Command) -> Response:
        nexus = cmd.nexus
        cdb = cmd.cdb
        if cdb:
            # Fast path (READ/WRITE of a disk): while no unit attention waits
            # for this nexus, no reservation exists and the LU is ready, the
            # steps below before the handler cannot refuse the command, so
            # the entry's fast handler may answer it (or return None for
            # anything but its plain common case, before any side effect).
            fast = self.table.fast.get(cdb[0])
            if fast is not None and self.ua.quiet(nexus) and self.pr.idle \
                    and self.not_ready_reason() is None:
                try:
                    resp = fast(self, cmd)
                except BaseException:
                    if not cmd.defer_barrier:
                        durability.barrier()
                    raise
                if resp is not None:
                    if not cmd.defer_barrier:
                        durability.barrier()   # as the general path does, below
                    return resp
        try:
            entry = self.table.lookup(cmd.cdb)
            check_direction(entry, cmd)
        except S.SenseError as err:
            return self._check_condition(cmd, err)
        self.ua.first_contact(nexus)
        if not entry.ua_exempt and self.ua.pending(nexus):
            asc = self.ua.pop(nexus)
            return self._check_condition(cmd, S.unit_attention(asc))
        if entry.conflict is not None and self.pr.conflicts(nexus, entry, cmd):
            return Response(Status.RESERVATION_CONFLICT, residual=self._no_data_residual(cmd))
        try:
            if entry.needs_ready:
                reason = self.not_ready_reason()
                if reason is not None:
                    raise reason
            result = entry.handler(self, cmd)
        except S.SenseError as err:
            return self._check_condition(cmd, err)
        finally:
            # Write intents of this command are durable before it is answered,
            # unless the front end batches that barrier for several commands.
            if not cmd.defer_barrier:
                durability.barrier()
        return self._good(cmd, result)

    def _no_data_residual(self, cmd: Command) -> int:
        return cmd.expected_length or 0

    def _good(self, cmd: Command, result, release=None) -> Response:
        """GOOD with ``result`` (data, None or a whole Response); ``release``: the
        data's own give-back (else a pooled read buffer goes back to the pool)."""
        if isinstance(result, Response):
            return result
        edtl = cmd.expected_length
        if result is None:
            if cmd.needed is not None and edtl is not None:
                return Response(Status.GOOD, residual=edtl - cmd.needed)
            return Response(Status.GOOD, residual=edtl or 0)
        data = result
        n = len(data)
        if release is None and READ_BUFFERS.pooled(data):
            release = partial(READ_BUFFERS.put, data)
        if edtl is None:
            return Response(Status.GOOD, data, release=release)
        if n > edtl:
            cut = data[:edtl] if type(data) is Gather else memoryview(data)[:edtl]
            return Response(Status.GOOD, cut, residual=edtl - n, release=release)
        return Response(Status.GOOD, data, residual=edtl - n, release=release)

    def _check_condition(self, cmd: Command, err: S.SenseError) -> Response:
        # Delivered with the status (autosense): nothing is kept for REQUEST SENSE.
        sense = S.render_sense(err, descriptor=self.mode.descriptor_sense)
        edtl = cmd.expected_length or 0
        residual = edtl
        if cmd.needed is not None and cmd.needed > edtl:
            residual = edtl - cmd.needed  # overflow: report how much was missing
        return Response(Status.CHECK_CONDITION, sense=sense, residual=residual)

    # -- events from the transport -------------------------------------
    def nexus_lost(self, nexus: Nexus) -> None:
        """The I_T nexus went away (logout, connection drop)."""
        self.prevent.discard(nexus)
        self.pr.nexus_lost(nexus)
        for hook in self.forget_hooks:
            hook(nexus)

    def reset(self, by: Nexus | None = None) -> None:
        """LOGICAL UNIT RESET task management function."""
        self.pr.reset()
        self.mode.reset()
        self.prevent.clear()
        self.ua.reset(exclude=None)
        for hook in self.forget_hooks:
            hook(None)

    def close(self) -> None:
        pass


class NoSuchLun(LogicalUnit):
    """Answers for a LUN that is not configured (SPC-4 6.6.2: qualifier 011b)."""

    device_type = 0x1F

    def __init__(self, target: "LunMap") -> None:
        super().__init__()
        self.target_map = target

    def execute(self, cmd: Command) -> Response:
        op = cmd.cdb[0] if cmd.cdb else -1
        if op == 0x12:  # INQUIRY: peripheral qualifier 3, type 0x1F
            alloc = int.from_bytes(cmd.cdb[3:5], "big") if len(cmd.cdb) >= 5 else 0
            data = bytearray(36)
            data[0] = 0x7F
            data[2] = 0x06
            data[3] = 0x02
            data[4] = 31
            return self._good(cmd, bytes(data[:alloc]))
        if op == 0xA0 and self.target_map is not None:  # REPORT LUNS
            return self.target_map.report_luns(cmd)
        if op == 0x03:  # REQUEST SENSE
            err = S.illegal_request(S.LOGICAL_UNIT_NOT_SUPPORTED)
            alloc = cmd.cdb[4] if len(cmd.cdb) >= 5 else 0
            return self._good(cmd, S.render_sense(err)[:alloc])
        return self._check_condition(cmd, S.illegal_request(S.LOGICAL_UNIT_NOT_SUPPORTED))


class LunMap:
    """The LUs behind one target name, numbered by LUN."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.luns: dict[int, LogicalUnit] = {}
        self._missing = NoSuchLun(self)
        # Trace recorder (scsi_target.trace.recorder): sees every command here.
        self.recorder = None

    def add(self, lun: int, lu: LogicalUnit) -> None:
        if lun in self.luns:
            raise ValueError(f"LUN {lun} already in use on {self.name}")
        if not 0 <= lun < 16384:
            raise ValueError(f"LUN {lun} out of range 0..16383")
        lu.place(Placement(lun, self.name, self))
        self.luns[lun] = lu

    def get(self, lun: int) -> LogicalUnit:
        return self.luns.get(lun, self._missing)

    def execute(self, cmd: Command) -> Response | Deferred:
        """Run one command; never raises (invariant 3).

        This is the one never-crash guard for every front end (the iSCSI
        connection, the in-process API, tools): a bug below turns into
        HARDWARE ERROR / INTERNAL TARGET FAILURE for that command only.
        Only with ``cmd.may_defer`` may the answer be a :class:`Deferred`
        (a LU over an asynchronous store, scsi_target/scsi/lane.py).
        """
        rec = self.recorder
        t0 = rec.clock() if rec is not None else 0.0
        lu = self.get(cmd.lun)
        try:
            resp = lu.execute(cmd)
        except Exception:
            log.exception("internal error executing CDB %s on LUN %d",
                          bytes(cmd.cdb).hex(), cmd.lun)
            err = S.SenseError(S.SenseKey.HARDWARE_ERROR, S.INTERNAL_TARGET_FAILURE)
            resp = Response(Status.CHECK_CONDITION, sense=S.render_sense(err),
                            residual=cmd.expected_length or 0)
        if rec is not None:
            if isinstance(resp, Deferred):
                resp.then(lambda r: rec.command(cmd, r, t0))
            else:
                rec.command(cmd, resp, t0)      # never raises
        return resp

    def commit(self) -> None:
        """Make the write intents of every command answered so far durable.

        Front ends that answer several commands per batch (``defer_barrier``)
        call this once before any of those responses leaves (invariant 1).
        """
        durability.barrier()

    def report_luns(self, cmd: Command) -> Response:
        cdb = cmd.cdb
        if len(cdb) < 12:
            return self._missing._check_condition(cmd, S.invalid_cdb_field(0))
        select = cdb[2]
        alloc = int.from_bytes(cdb[6:10], "big")
        if select not in (0x00, 0x01, 0x02, 0x10, 0x11, 0x12):
            return self._missing._check_condition(cmd, S.invalid_cdb_field(2))
        if alloc < 16:
            return self._missing._check_condition(cmd, S.invalid_cdb_field(6))
        if select in (0x01, 0x10, 0x11):
            luns = []  # no well-known LUs, no administrative LUs (no LU conglomerates)
        elif select == 0x12 and cmd.lun != 0:
            luns = []
        else:
            luns = sorted(self.luns)
        data = ReportLuns.of(luns).pack()
        return self._missing._good(cmd, data[:alloc])

    def close(self) -> None:
        for lu in self.luns.values():
            lu.close()
