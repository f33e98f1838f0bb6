"""The dispatch table of every device kind, assembled once from the command sets.

A device kind's table is the list of command sets it stacks (the way tgt builds
one table per device type); REPORT SUPPORTED OPERATION CODES, INQUIRY's 3PC bit
and the VPD page list are derived from it, so a command is advertised exactly
when the LU answers it.
"""
from __future__ import annotations

from .capabilities import Provisioning
from .dispatch import DispatchTable
from .sbc import SBC, SBC_UNMAP
from .spc import SPC
from .ssc import SSC
from .vendor_backup import VENDOR_BACKUP
from .xcopy import XCOPY

DISK = DispatchTable([SPC, SBC, XCOPY])
# UNMAP is a command of thin disks, and of read-only ones, where it reports
# WRITE PROTECTED like every other medium write (libiscsi ReadOnly.ReadOnlySBC).
DISK_UNMAP = DispatchTable([SPC, SBC, SBC_UNMAP, XCOPY])
# The backup pseudo device: SBC reads/writes of its stream medium, the vendor
# backup commands; no third-party copy (its medium is a stream, not blocks).
BACKUP = DispatchTable([SPC, SBC, VENDOR_BACKUP])
# Tape LUs: SSC replaces SPC's INQUIRY, REQUEST SENSE and MODE SENSE/SELECT.
TAPE = DispatchTable([SPC, SSC])


def disk_table(provisioning: Provisioning, read_only: bool) -> DispatchTable:
    return DISK_UNMAP if provisioning.thin or read_only else DISK
