"""Why a target connection must end (shared by the facade and its parts)."""
from __future__ import annotations


class ProtocolError(Exception):
    """The initiator broke the protocol; reject (if reason) and close."""

    def __init__(self, message: str, reject_reason: int | None = None, bhs: bytes = b"") -> None:
        super().__init__(message)
        self.reject_reason = reject_reason
        self.bhs = bhs
