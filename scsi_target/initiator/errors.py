"""Typed errors of the iSCSI initiator."""
from __future__ import annotations

from ..scsi.asc_table import asc_name

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from ..scsi.layouts.sense import SenseKey

# RFC 7143 11.13.5: (status class, status detail) → meaning.
LOGIN_STATUS = {
    (0x00, 0x00): "Success",
    (0x01, 0x01): "Target moved temporarily",
    (0x01, 0x02): "Target moved permanently",
    (0x02, 0x00): "Initiator error",
    (0x02, 0x01): "Authentication failure",
    (0x02, 0x02): "Authorization failure",
    (0x02, 0x03): "Not found",
    (0x02, 0x04): "Target removed",
    (0x02, 0x05): "Unsupported version",
    (0x02, 0x06): "Too many connections",
    (0x02, 0x07): "Missing parameter",
    (0x02, 0x08): "Can't include in session",
    (0x02, 0x09): "Session type not supported",
    (0x02, 0x0A): "Session does not exist",
    (0x02, 0x0B): "Invalid during login",
    (0x03, 0x00): "Target error",
    (0x03, 0x01): "Service unavailable",
    (0x03, 0x02): "Out of resources",
}
_CLASS = {0: "success", 1: "redirection", 2: "initiator error", 3: "target error"}


def login_status_text(status_class: int, status_detail: int) -> str:
    text = LOGIN_STATUS.get((status_class, status_detail))
    if text is None:
        text = f"unknown detail of {_CLASS.get(status_class, 'unknown class')}"
    return text


class IscsiError(Exception):
    """Base of every error raised by the initiator."""


class UrlError(IscsiError, ValueError):
    """Raised by url.parse_url; derives from IscsiError so one except clause catches all."""


class InitiatorNameError(IscsiError, ValueError):
    """The initiator name to present is not a valid iSCSI name (nothing was sent)."""


class TransportError(IscsiError):
    """The connection is gone or did not answer in time; outstanding commands failed."""


class IscsiTimeout(TransportError, TimeoutError):
    """A wait ran out; the connection was dropped because its state is unknown."""


class ProtocolViolation(TransportError):
    """The target sent something the protocol forbids; the connection was dropped."""


class LoginError(IscsiError):
    """The login failed.

    ``status_class``/``status_detail`` are the target's Login Response status
    (RFC 7143 11.13.5) or None when the initiator itself ended the login (e.g.
    the target failed mutual authentication or answered a key wrongly).
    """

    def __init__(self, message: str, status_class: int | None = None,
                 status_detail: int | None = None) -> None:
        if status_class is not None:
            meaning = login_status_text(status_class, status_detail or 0)
            message = f"{message}: status 0x{status_class:02x}{status_detail or 0:02x} ({meaning})"
        super().__init__(message)
        self.status_class = status_class
        self.status_detail = status_detail
        # TargetAddress of a redirection (class 1), which open() follows.
        self.redirect: str | None = None

    @property
    def status(self) -> int | None:
        """Class and detail as one number, e.g. 0x0201 for an authentication failure."""
        if self.status_class is None:
            return None
        return (self.status_class << 8) | (self.status_detail or 0)

    @property
    def meaning(self) -> str | None:
        if self.status_class is None:
            return None
        return login_status_text(self.status_class, self.status_detail or 0)


class NegotiationError(LoginError):
    """The target's answer to an operational key is not acceptable."""


class ScsiCommandError(IscsiError):
    """A SCSI command did not complete with GOOD status (raised only on request)."""

    def __init__(self, message: str, result) -> None:
        super().__init__(message)
        self.result = result


class ScsiCheckCondition(ScsiCommandError):
    """CHECK CONDITION; ``sense`` is the raw sense, ``key``/``asc``/``ascq`` decoded."""

    def __init__(self, result) -> None:
        self.sense: bytes = result.sense
        self.key: SenseKey | None = result.sense_key
        self.asc: int | None = result.asc
        self.ascq: int | None = result.ascq
        name = self.key.name if self.key is not None else "?"
        if self.asc is not None:
            asc = f"{self.asc:02x}/{self.ascq:02x} ({asc_name(self.asc, self.ascq or 0)})"
        else:
            asc = "??/??"
        super().__init__(f"CHECK CONDITION {name} ASC/ASCQ {asc}", result)


class TaskAborted(IscsiError):
    """The command was aborted by a task management function before it completed."""


class TaskManagementError(IscsiError):
    """The target did not complete a task management function."""

    def __init__(self, message: str, response: int) -> None:
        super().__init__(message)
        self.response = response


class IscsiRejected(IscsiError):
    """The target rejected one of our PDUs (Reject PDU with this reason)."""

    def __init__(self, message: str, reason: int) -> None:
        super().__init__(message)
        self.reason = reason
