"""Tape media and drive model for SSC LUNs.

* :mod:`tape.format` — the image format v1 layouts (docs/tape-image-format.md);
* :mod:`tape.image` — one cartridge file: index, crash-safe appends, MAM slots;
* :mod:`tape.drive` — load state and logical position, SSC-shaped movements;
* :mod:`tape.mam` — medium auxiliary memory attributes (SPC-4 7.4);
* :mod:`tape.errors` — the typed conditions the SSC layer turns into sense.

Nothing here imports scsi_target (tests/test_layering.py).
"""
from .drive import ReadResult, Slot, TapeDrive, WriteResult
from .errors import TapeError
from .image import TapeImage

__all__ = ["TapeDrive", "TapeImage", "TapeError", "ReadResult", "WriteResult", "Slot"]
