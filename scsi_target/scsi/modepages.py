"""Mode pages (minimal first version; the SPC module owns the full one)."""
from __future__ import annotations


class ModePages:
    def __init__(self, lu) -> None:
        self.lu = lu
        self.descriptor_sense = False

    def reset(self) -> None:
        pass
