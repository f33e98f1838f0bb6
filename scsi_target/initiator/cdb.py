"""CDB builders and result parsers for the initiator's convenience methods.

Only what scripts and tests use all the time; anything else goes through
``execute(cdb, ...)`` with a CDB the caller builds.
"""
from __future__ import annotations

from collections import namedtuple

from ..scsi.layouts.capacity import ReadCapacity16
from ..scsi.layouts.luns import ReportLuns

# The builders live with the layouts (one definition for every user); re-exported here.
from ..scsi.layouts.cdbs import (INQUIRY, READ_16, REPORT_LUNS, SAI_READ_CAPACITY_16,  # noqa: E402,F401
                                 SERVICE_ACTION_IN_16, TEST_UNIT_READY, WRITE_16, inquiry,
                                 read16, read_capacity16, report_luns, test_unit_ready, write16)
from ..scsi.layouts.cdbs import (  # noqa: E402,F401
    EXTENDED_COPY, PR_IN, PR_OUT, PRIN_READ_FULL_STATUS, PRIN_READ_KEYS, PRIN_READ_RESERVATION,
    PRIN_REPORT_CAPABILITIES, RCR_COPY_STATUS, RCR_FAILED_SEGMENT_DETAILS,
    RCR_OPERATING_PARAMETERS, RCR_RECEIVE_DATA, RECEIVE_COPY_RESULTS, extended_copy, pr_in,
    pr_out, receive_copy_results)
# Decoders of the replies to those commands (same layouts the target packs with), on
# first use (PEP 562): the PERSISTENT RESERVE and EXTENDED COPY layouts are a sizeable
# part of the start-up of every initiator, most of which never reserve or copy.
_XCOPY = frozenset({"CopyStatus", "ExtendedCopyList", "FailedSegmentDetails",
                    "OperatingParameters", "ReceiveData", "block_copy_list"})
_PR = frozenset({"PrCapabilities", "PrReadFullStatus", "PrReadKeys", "PrReadReservation"})


def __getattr__(name: str):
    if name in _XCOPY:
        from ..scsi.layouts import xcopy
        return getattr(xcopy, name)
    if name in _PR:
        from ..scsi.layouts import pr
        return getattr(pr, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Capacity(namedtuple("Capacity", ("blocks", "block_size", "lbppbe", "lowest_aligned", "tpe"),
                          defaults=(0, 0, False))):
    """READ CAPACITY as a tuple: ``blocks`` (RETURNED LBA + 1), ``block_size``,
    ``lbppbe`` (logical blocks per physical block exponent), ``lowest_aligned``,
    ``tpe`` (thin provisioning enabled)."""
    __slots__ = ()

    @property
    def last_lba(self) -> int:
        return self.blocks - 1

    @property
    def bytes(self) -> int:
        return self.blocks * self.block_size


def parse_read_capacity16(data: bytes) -> Capacity:
    if len(data) < 12:
        raise ValueError(f"READ CAPACITY(16) data is {len(data)} bytes, needs 12")
    rc = ReadCapacity16.unpack(data)
    return Capacity(rc.last_lba + 1, rc.block_size, rc.lbppbe, rc.lowest_aligned_lba, rc.lbpme)


def parse_report_luns(data: bytes) -> list[int]:
    """LUN numbers (peripheral/flat addressing; -1 for other formats)."""
    return ReportLuns.unpack(data).numbers
