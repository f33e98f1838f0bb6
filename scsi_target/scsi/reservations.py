"""Reservations of a logical unit: SPC-2 RESERVE/RELEASE and persistent reservations.

The state machine lives here; spc.py decodes CDBs/parameter lists and calls
the methods below.  :meth:`Reservations.conflicts` is what the LU's execution
path asks before running any command (SPC-4 5.13.1, table of commands allowed
in the presence of each reservation type).

Persistent reservations are kept in memory only (PTPL_C=0: they do not
survive a power loss, and the target says so in REPORT CAPABILITIES).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..codes import Code
from .dispatch import Conflict
from . import sense as S

if TYPE_CHECKING:  # pragma: no cover
    from .command import Command, Nexus
    from .dispatch import OpEntry
    from .lun import LogicalUnit


class PrType(Code):
    WRITE_EXCLUSIVE = 1
    EXCLUSIVE_ACCESS = 3
    WRITE_EXCLUSIVE_REGISTRANTS_ONLY = 5
    EXCLUSIVE_ACCESS_REGISTRANTS_ONLY = 6
    WRITE_EXCLUSIVE_ALL_REGISTRANTS = 7
    EXCLUSIVE_ACCESS_ALL_REGISTRANTS = 8

    @property
    def all_registrants(self) -> bool:
        return self in (PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS, PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS)

    @property
    def registrants_only(self) -> bool:
        return self in (PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY, PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY)

    @property
    def exclusive_access(self) -> bool:
        return self in (PrType.EXCLUSIVE_ACCESS, PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY,
                        PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS)


# Opcodes another nexus may still use while an SPC-2 RESERVE is held
# (SPC-2 5.5.1): identification, sense, and RELEASE (a no-op for them).
_SPC2_ALLOWED = frozenset({
    0x03,  # REQUEST SENSE
    0x12,  # INQUIRY
    0x17,  # RELEASE(6)
    0x4D,  # LOG SENSE
    0x57,  # RELEASE(10)
    0xA0,  # REPORT LUNS
    0xA3,  # MAINTENANCE IN (report commands)
})
_PREVENT_ALLOW = 0x1E


class ReservationConflict(Exception):
    """A PR OUT/RESERVE that must end in RESERVATION CONFLICT status."""


@dataclass
class PersistentReservation:
    holder: "Nexus"
    type: PrType
    key: int


class Reservations:
    """SPC-2 and persistent reservation state of one LU."""

    def __init__(self, lu: "LogicalUnit") -> None:
        self.lu = lu
        self.spc2_holder: "Nexus | None" = None
        self.registrations: dict["Nexus", int] = {}
        self.generation = 0
        self.reservation: PersistentReservation | None = None

    # -- access control ---------------------------------------------------
    @property
    def idle(self) -> bool:
        """No reservation of either kind: :meth:`conflicts` is False for every command."""
        return self.spc2_holder is None and self.reservation is None

    def conflicts(self, nexus: "Nexus", entry: "OpEntry", cmd: "Command") -> bool:
        opcode = entry.opcode
        if self.spc2_holder is not None and self.spc2_holder != nexus:
            if opcode in _SPC2_ALLOWED:
                return False
            if opcode == _PREVENT_ALLOW and len(cmd.cdb) > 4 and cmd.cdb[4] & 0x03 == 0:
                return False
            return True
        res = self.reservation
        if res is None or entry.conflict == Conflict.ALLOWED or self.is_holder(nexus):
            return False
        if opcode == _PREVENT_ALLOW and len(cmd.cdb) > 4 and cmd.cdb[4] & 0x03 == 0:
            return False
        registered = nexus in self.registrations
        if res.type in (PrType.WRITE_EXCLUSIVE,):
            return entry.conflict != Conflict.READ
        if res.type == PrType.EXCLUSIVE_ACCESS:
            return True
        # Registrants-only and all-registrants types: registrants have full access.
        if registered:
            return False
        if res.type.exclusive_access:
            return True
        return entry.conflict != Conflict.READ

    def is_holder(self, nexus: "Nexus") -> bool:
        res = self.reservation
        if res is None:
            return False
        if res.type.all_registrants:
            return nexus in self.registrations
        return res.holder == nexus

    # -- SPC-2 RESERVE/RELEASE ---------------------------------------------
    def reserve6(self, nexus: "Nexus") -> None:
        # A persistent reservation (or registration) excludes the SPC-2 kind.
        if self.reservation is not None:
            raise ReservationConflict()
        if self.spc2_holder is not None and self.spc2_holder != nexus:
            raise ReservationConflict()
        self.spc2_holder = nexus

    def release6(self, nexus: "Nexus") -> None:
        if self.reservation is not None:
            raise ReservationConflict()
        if self.spc2_holder == nexus:
            self.spc2_holder = None
        # Releasing from any other nexus is a no-op (GOOD).

    # -- PERSISTENT RESERVE OUT ------------------------------------------------
    def _check_key(self, nexus: "Nexus", key: int) -> None:
        if self.registrations.get(nexus) != key:
            raise ReservationConflict()

    def _bump(self) -> None:
        self.generation = (self.generation + 1) & 0xFFFFFFFF

    def _unregister(self, nexus: "Nexus") -> None:
        del self.registrations[nexus]
        res = self.reservation
        if res is None:
            return
        if res.type.all_registrants:
            if not self.registrations:
                self.reservation = None
            return
        if res.holder == nexus:
            self.reservation = None
            if res.type.registrants_only:
                for other in self.registrations:
                    self.lu.ua.establish(S.RESERVATIONS_RELEASED, nexus=other)

    def register(self, nexus: "Nexus", key: int, sark: int, ignore_existing: bool) -> None:
        current = self.registrations.get(nexus)
        if current is None:
            if not ignore_existing and key != 0:
                raise ReservationConflict()
            if sark == 0:
                return  # nothing to register or remove
            self.registrations[nexus] = sark
        else:
            if not ignore_existing and key != current:
                raise ReservationConflict()
            if sark == 0:
                self._unregister(nexus)
            else:
                self.registrations[nexus] = sark
                res = self.reservation
                if res is not None and res.holder == nexus and not res.type.all_registrants:
                    res.key = sark
        self._bump()

    def reserve(self, nexus: "Nexus", key: int, pr_type: PrType) -> None:
        self._check_key(nexus, key)
        if self.spc2_holder is not None and self.spc2_holder != nexus:
            raise ReservationConflict()
        res = self.reservation
        if res is None:
            self.reservation = PersistentReservation(nexus, pr_type, key)
            return
        if self.is_holder(nexus) and res.type == pr_type:
            return
        raise ReservationConflict()

    def release(self, nexus: "Nexus", key: int, pr_type: PrType) -> None:
        self._check_key(nexus, key)
        res = self.reservation
        if res is None or not self.is_holder(nexus):
            return
        if res.type != pr_type:
            raise S.illegal_request(S.INVALID_RELEASE_OF_PERSISTENT_RESERVATION)
        self.reservation = None
        if res.type.registrants_only or res.type.all_registrants:
            for other in self.registrations:
                if other != nexus:
                    self.lu.ua.establish(S.RESERVATIONS_RELEASED, nexus=other)

    def clear(self, nexus: "Nexus", key: int) -> None:
        self._check_key(nexus, key)
        for other in self.registrations:
            if other != nexus:
                self.lu.ua.establish(S.RESERVATIONS_PREEMPTED, nexus=other)
        self.registrations.clear()
        self.reservation = None
        self._bump()

    def preempt(self, nexus: "Nexus", key: int, sark: int, pr_type: PrType) -> None:
        """PREEMPT and PREEMPT AND ABORT (no task set here, so nothing else to abort)."""
        self._check_key(nexus, key)
        res = self.reservation
        if res is not None and res.type.all_registrants and sark == 0:
            # Preempting an all-registrants reservation: everyone else goes.
            victims = [n for n in self.registrations if n != nexus]
            self._remove(victims)
            self.reservation = PersistentReservation(nexus, pr_type, key)
        elif res is not None and not res.type.all_registrants and sark == res.key:
            victims = [n for n, k in self.registrations.items() if k == sark and n != nexus]
            self._remove(victims)
            self.reservation = PersistentReservation(nexus, pr_type, key)
        else:
            if sark == 0:
                raise S.invalid_param_field(8)
            victims = [n for n, k in self.registrations.items() if k == sark and n != nexus]
            if not victims:
                raise ReservationConflict()
            self._remove(victims)
        self._bump()

    def _remove(self, victims: list["Nexus"]) -> None:
        for n in victims:
            self.registrations.pop(n, None)
            self.lu.ua.establish(S.REGISTRATIONS_PREEMPTED, nexus=n)
        res = self.reservation
        if res is not None and res.type.all_registrants and not self.registrations:
            self.reservation = None

    # -- events -------------------------------------------------------------------
    def nexus_lost(self, nexus: "Nexus") -> None:
        """SPC-2 reservations end with the nexus; persistent ones stay."""
        if self.spc2_holder == nexus:
            self.spc2_holder = None

    def reset(self) -> None:
        """LOGICAL UNIT RESET / target reset: SPC-2 reservations are released."""
        self.spc2_holder = None
