"""Tape (SSC sequential-access device) logical unit.

A :class:`TapeLU` owns a :class:`tape.TapeDrive` (the slot, load state and
position) and the SSC state SPC does not know: the block length and density
of the mode block descriptor.  The command set is in ssc.py; this module also
holds :func:`tape_sense`, the one place where a tape condition
(:mod:`tape.errors`) becomes sense data.
"""
from __future__ import annotations

from tape import TapeDrive, TapeImage
from tape import errors as TE
from tape.drive import Slot

from .dispatch import DispatchTable
from .lun import Identity, LogicalUnit
from .modepages import PC_CURRENT, PageDef, _page
from . import sense as S

DENSITY_CODE = 0x80               # vendor-specific range (SSC-4 table: 80h-FFh)
MAX_BLOCK_LENGTH = (1 << 24) - 1  # READ(6)/WRITE(6) transfer length is 24 bits
MIN_BLOCK_LENGTH = 1
# One command moves at most this much (fixed-mode counts are 24 bits of blocks):
# bounded memory per command (invariant 3).
MAX_TRANSFER = 64 << 20

PAGE_DATA_COMPRESSION = 0x0F
PAGE_DEVICE_CONFIGURATION = 0x10
PAGE_MEDIUM_PARTITION = 0x11
_DC_SWP = (10, 0x04)              # device configuration: software write protect


def tape_pages() -> list[PageDef]:
    """SSC mode pages 0Fh, 10h, 11h (offsets count from the page code byte)."""
    return [
        # Data compression: DCC=0 (the medium stores records as written), so DCE
        # stays 0 and is not changeable (SSC-4 8.3.2).
        _page(PAGE_DATA_COMPRESSION, 0x0E),
        # Device configuration: LOIS (logical object identifiers supported), EEG
        # (EOD generation) and SEW (synchronise at early warning) set; software
        # write protect is the one changeable bit.
        _page(PAGE_DEVICE_CONFIGURATION, 0x0E, set_bits={8: 0x40, 10: 0x18},
              changeable={_DC_SWP[0]: _DC_SWP[1]}),
        # Medium partition: one partition (no additional partitions), format and
        # partition recognition, partition size in MB (filled in per medium).
        _page(PAGE_MEDIUM_PARTITION, 0x08, set_bits={4: 0x10, 5: 0x03}),
    ]


class TapeLU(LogicalUnit):
    device_type = 0x01
    removable = True
    # SAM-5, iSCSI, SPC-4, SSC-4 (0520h).
    version_descriptors = (0x00A0, 0x0960, 0x0460, 0x0520)

    def __init__(self, image: TapeImage | None = None, identity: Identity | None = None, *,
                 table: DispatchTable) -> None:
        """``table`` is the tape's dispatch table, ``devices.TAPE`` (SPC + SSC)."""
        ident = identity or Identity()
        if ident.product == "VIRTUAL-DISK":
            ident.product = "VIRTUAL-TAPE"
        super().__init__(ident)
        self.table = table
        self.drive = TapeDrive()
        self.block_length = 0         # mode block descriptor: 0 = variable-block mode
        self.density_code = DENSITY_CODE
        self._buffered = True
        self.max_block_length = MAX_BLOCK_LENGTH
        self.min_block_length = MIN_BLOCK_LENGTH
        self.tape_alerts: set[int] = set()   # TapeAlert flags raised since the last LOG SENSE
        for page in tape_pages():
            self.mode.add_page(page)
        if image is not None:
            self.drive.insert(image)

    # -- medium ------------------------------------------------------------
    @property
    def image(self) -> TapeImage | None:
        return self.drive.image

    def insert(self, image: TapeImage) -> None:
        """An operator changes the cartridge: every nexus sees the medium change."""
        with self.lock:
            self.drive.insert(image)
            image.sync_each = not self._buffered
            self.ua.establish(S.NOT_READY_TO_READY_CHANGE)

    def remove(self) -> TapeImage | None:
        with self.lock:
            return self.drive.remove()

    @property
    def medium_present(self) -> bool:  # type: ignore[override]
        return self.drive.slot not in (Slot.EMPTY, Slot.EJECTED)

    @medium_present.setter
    def medium_present(self, value: bool) -> None:
        pass  # the drive's slot is the truth; LogicalUnit.__init__ assigns a default

    @property
    def buffered(self) -> bool:
        """Mode header BUFFERED MODE: False = every write is fdatasync'ed before GOOD."""
        return self._buffered

    @buffered.setter
    def buffered(self, on: bool) -> None:
        self._buffered = on
        if self.drive.image is not None:
            self.drive.image.sync_each = not on

    @property
    def write_protected(self) -> bool:
        img = self.drive.image
        return (img is not None and img.write_protected) or self.software_write_protect

    @property
    def software_write_protect(self) -> bool:
        page = self.mode.page_bytes((PAGE_DEVICE_CONFIGURATION, 0), PC_CURRENT)
        return bool(page[_DC_SWP[0]] & _DC_SWP[1]) or self.mode.software_write_protect

    def not_ready_reason(self) -> S.SenseError | None:
        slot = self.drive.slot
        if slot == Slot.LOADED:
            return None
        if slot == Slot.HELD:
            return S.not_ready(S.LUN_NOT_READY_INIT_REQUIRED)
        return S.not_ready(S.MEDIUM_NOT_PRESENT)

    def reset(self, by=None) -> None:
        super().reset(by)
        self.block_length = 0
        self.density_code = DENSITY_CODE
        self.buffered = True

    def close(self) -> None:
        self.drive.remove()


def tape_sense(err: TE.TapeError, *, writing: bool = False) -> S.SenseError:
    """The sense data SSC-4 prescribes for a tape condition (the one mapping)."""
    res = getattr(err, "residue", None)
    if isinstance(err, TE.FilemarkDetected):
        return S.SenseError(S.SenseKey.NO_SENSE, S.FILEMARK_DETECTED, information=res,
                            filemark=True)
    if isinstance(err, TE.EndOfData):
        return S.SenseError(S.SenseKey.BLANK_CHECK, S.END_OF_DATA_DETECTED, information=res)
    if isinstance(err, TE.BeginningOfMedium):
        return S.SenseError(S.SenseKey.NO_SENSE, S.BEGINNING_OF_PARTITION_MEDIUM_DETECTED,
                            information=res, eom=True)
    if isinstance(err, TE.VolumeOverflow):
        return S.SenseError(S.SenseKey.VOLUME_OVERFLOW, S.END_OF_PARTITION_MEDIUM_DETECTED,
                            information=res, eom=True)
    if isinstance(err, TE.RecordCorrupt):
        return S.SenseError(S.SenseKey.MEDIUM_ERROR, S.UNRECOVERED_READ_ERROR, information=res)
    if isinstance(err, TE.WriteProtected):
        return S.write_protected()
    if isinstance(err, TE.NoMedium):
        return S.not_ready(S.MEDIUM_NOT_PRESENT)
    if isinstance(err, TE.NotLoaded):
        return S.not_ready(S.LUN_NOT_READY_INIT_REQUIRED)
    if isinstance(err, TE.MamError):
        return S.invalid_param_field(4)
    if isinstance(err, TE.TapeIOError):
        return S.SenseError(S.SenseKey.MEDIUM_ERROR,
                            S.WRITE_ERROR if writing else S.UNRECOVERED_READ_ERROR)
    return S.SenseError(S.SenseKey.HARDWARE_ERROR, S.INTERNAL_TARGET_FAILURE)


def early_warning() -> S.SenseError:
    """A write that completed inside the early-warning zone (SSC-4 4.2.5)."""
    return S.SenseError(S.SenseKey.NO_SENSE, S.END_OF_PARTITION_MEDIUM_DETECTED,
                        information=0, eom=True)

