"""Where a connection lets a test misbehave on purpose: the questions and the markers.

A target with fault injection (``TargetDef.transport_faults``) gives each of
its normal-session connections a :class:`TransportFaults`; the connection asks
it at each decision point and stays sans I/O: a drop is a close, a stall is a
:class:`Hold` marker in the output that the driver (server.py) honours.  The
implementation lives with the rules (scsi_target/interceptors/transport.py);
this package never imports it.
"""
from __future__ import annotations

from typing import Callable, Protocol


class StallDecision(Protocol):
    seconds: float                  # 0: until released

    def on_release(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from any thread) once the stall may end."""


class TransportFaults(Protocol):
    def received(self) -> bool:
        """A PDU came in; True: close the connection on it, without acting on it."""

    def sent(self, n: int) -> int | None:
        """``n`` PDUs are to go out: None, or how many go before the connection closes."""

    def r2t(self, lun: int, cdb) -> StallDecision | None:
        """An R2T of this command is to go out."""

    def response(self, lun: int, cdb, *, header_digest: bool, data_digest: bool,
                 has_data: bool) -> tuple[StallDecision | None, str | None]:
        """The command's answer is to go out: a stall, and "header"/"data" to corrupt."""

    def nop_in(self) -> StallDecision | None:
        """The NOP-In answering a NOP-Out is to go out."""


class Hold:
    """Output marker: nothing after it is sent for ``seconds`` (0: until released)."""
    __slots__ = ("seconds", "on_release")

    def __init__(self, stall: StallDecision) -> None:
        self.seconds = stall.seconds
        self.on_release = stall.on_release
