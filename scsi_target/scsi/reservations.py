"""Reservations (minimal first version; the SPC module owns the full one)."""
from __future__ import annotations


class Reservations:
    def __init__(self, lu) -> None:
        self.lu = lu

    def conflicts(self, nexus, entry, cmd) -> bool:
        return False

    def reset(self) -> None:
        pass
