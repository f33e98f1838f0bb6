"""Typed tape conditions.

The media and drive model raise these; the SSC command set maps each one to
sense data in one place (``scsi_target.scsi.tape_lu.tape_sense``).  Nothing here knows
SCSI: a condition carries the counts a caller needs (the residue: how much of
the request was not done) and nothing else.
"""
from __future__ import annotations


class TapeError(Exception):
    """Base of every tape condition."""


class ImageFormatError(TapeError):
    """The file is not a tape image this release can read (bad magic, version, checksum)."""


class TapeIOError(TapeError):
    """The host file system failed a read or write of the image."""


class NoMedium(TapeError):
    """No cartridge is loaded (ejected, or never inserted)."""


class NotLoaded(TapeError):
    """A cartridge is in the drive but unloaded (held): a LOAD is required."""


class WriteProtected(TapeError):
    """The cartridge is write protected (its flag, or the image file is read-only)."""


class PositionCondition(TapeError):
    """A read or space stopped early; ``residue`` counts what was not done."""

    def __init__(self, residue: int, message: str = "") -> None:
        super().__init__(message or f"{type(self).__name__} (residue {residue})")
        self.residue = residue


class FilemarkDetected(PositionCondition):
    """A read or block space met a filemark (the position is past it, on the far side)."""


class EndOfData(PositionCondition):
    """A read, space or locate reached end-of-data (the position is at EOD)."""


class BeginningOfMedium(PositionCondition):
    """A backward space reached the beginning of the partition."""


class VolumeOverflow(PositionCondition):
    """A write reached end-of-medium; ``residue`` objects (or bytes) were not written."""


class RecordCorrupt(PositionCondition):
    """A record failed its CRC32C check; ``index`` is its logical object number."""

    def __init__(self, residue: int, index: int) -> None:
        super().__init__(residue, f"record {index} failed its CRC32C check")
        self.index = index


class MamError(TapeError):
    """A MAM attribute write that the medium refuses (read-only, wrong size, no room)."""

    def __init__(self, message: str, attribute: int | None = None) -> None:
        super().__init__(message)
        self.attribute = attribute

