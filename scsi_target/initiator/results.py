"""Result records of the initiator: one SCSI command's outcome (and, from
:mod:`.discovery`, one SendTargets entry)."""
from __future__ import annotations

from ..record import record
from ..scsi.layouts.sense import SenseKey, parse_sense
from .errors import ScsiCheckCondition, ScsiCommandError


# SCSI status codes (scsi.command.Status; that module, with the target's command
# records, is more than a client's start-up needs).
_GOOD, _CHECK_CONDITION = 0x00, 0x02


@record
class ScsiResult:
    """Outcome of one SCSI command.

    ``data`` holds the Data-In bytes actually transferred (trimmed to the
    highest offset the target sent).  ``residual`` is positive for an
    underflow (less transferred than expected), negative for an overflow.
    ``response`` is the iSCSI response code (0 = command completed at target).
    """
    status: int
    data: bytes | bytearray = b""
    sense: bytes = b""
    sense_key: SenseKey | None = None
    asc: int | None = None
    ascq: int | None = None
    residual: int = 0
    response: int = 0

    @property
    def good(self) -> bool:
        return self.response == 0 and self.status == _GOOD

    def raise_for_status(self) -> "ScsiResult":
        if self.response != 0:
            raise ScsiCommandError(f"iSCSI response 0x{self.response:02x} (target failure)", self)
        if self.status == _CHECK_CONDITION:
            raise ScsiCheckCondition(self)
        if self.status != _GOOD:
            from ..scsi.command import Status
            try:
                name = Status(self.status).name
            except ValueError:
                name = f"0x{self.status:02x}"
            raise ScsiCommandError(f"SCSI status {name}", self)
        return self


def response_result(pdu, data) -> "ScsiResult":
    """The result a SCSI Response PDU gives a command whose Data-In is ``data``: the
    status, the sense data and its key/ASC/ASCQ (None when undecodable), the residual
    (positive: underflow, negative: overflow) and the iSCSI response code."""
    sense = b""
    key = asc = ascq = None
    raw = bytes(pdu.data)
    if len(raw) >= 2:
        sense = raw[2:2 + int.from_bytes(raw[:2], "big")]
        if sense:
            try:
                key, asc, ascq = parse_sense(sense)
            except ValueError:
                pass            # kept raw in .sense for the caller to show
    residual = pdu.residual if pdu.underflow else -pdu.residual if pdu.overflow else 0
    return ScsiResult(pdu.status, data, sense, key, asc, ascq, residual, pdu.response)


def __getattr__(name: str):
    # DiscoveredTarget is a namedtuple (the collections module): made for discovery
    # and login redirection only, not for every session's start-up.
    if name == "DiscoveredTarget":
        from .discovery import DiscoveredTarget
        return DiscoveredTarget
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
