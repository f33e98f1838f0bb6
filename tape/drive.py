"""The drive: a cartridge slot, load state and the logical position on the medium.

Positions are logical object numbers (records and filemarks both count, as in
SSC): 0 is beginning-of-partition, ``image.count`` is end-of-data.  Every
movement is O(log n) on the image index (bisect over the filemark list), never
a walk over the objects.

Results that are partly done come back as data (:class:`ReadResult`,
:class:`WriteResult`) with the condition that stopped them; conditions that
do nothing raise (:mod:`tape.errors`).  A backup writer uses the same calls a
SCSI front end does: ``write_records`` in chunks, then ``write_filemarks(1)``.
"""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from enum import Enum
from itertools import accumulate

from . import format as F
from . import mam
from .errors import (BeginningOfMedium, EndOfData, FilemarkDetected, NoMedium, NotLoaded,
                     PositionCondition, RecordCorrupt, TapeError, WriteProtected)
from .image import TapeImage


class Slot(Enum):
    EMPTY = "empty"               # no cartridge
    EJECTED = "ejected"           # unloaded and ejected; still in the mouth, LOAD takes it back
    HELD = "held"                 # unloaded but held in the drive (LOAD UNLOAD HOLD=1)
    LOADED = "loaded"             # ready


@dataclass
class ReadResult:
    data: memoryview              # what is transferred (whole records, back to back)
    records: int                  # records read in full
    stop: PositionCondition | None = None   # why it stopped early, if it did
    wrong_length: int | None = None         # length of a record that did not fit the request


@dataclass
class WriteResult:
    objects: int                  # objects written
    early_warning: bool           # the position after the write is in the early-warning zone
    overflow: bool = False        # end-of-medium: not everything was written


@dataclass
class Counters:
    """Per-load and lifetime traffic (LOG SENSE 0Ch/17h, MAM 0220h-0223h)."""
    bytes_written: int = 0
    bytes_read: int = 0
    records_written: int = 0
    records_read: int = 0
    filemarks_written: int = 0


class TapeDrive:
    # Injected boundaries (fault injection in tests), logical object numbers on top
    # of the cartridge's own byte-measured zone: at or past ``early_warning_at`` a
    # write reports early warning; no object is written at or past ``end_at``.
    early_warning_at: int | None = None
    end_at: int | None = None

    def __init__(self, image: TapeImage | None = None) -> None:
        self.image: TapeImage | None = None
        self.slot = Slot.EMPTY
        self.pos = 0
        self.load_counters = Counters()
        if image is not None:
            self.insert(image)

    # ------------------------------------------------------------- the slot
    def insert(self, image: TapeImage) -> None:
        """An operator puts a cartridge in; the drive threads it (loaded, at BOP)."""
        if self.image is not None:
            self.remove()
        self.image = image
        self.slot = Slot.HELD
        self.load()

    def remove(self) -> TapeImage | None:
        """The operator takes the cartridge out (closing the image)."""
        img = self.image
        if img is not None:
            if self.slot == Slot.LOADED:
                self._save_counters()
            img.close()
        self.image = None
        self.slot = Slot.EMPTY
        self.pos = 0
        return img

    def load(self) -> None:
        if self.image is None:
            raise NoMedium("no cartridge to load")
        if self.slot != Slot.LOADED:
            self.slot = Slot.LOADED
            self.load_counters = Counters()
            img = self.image
            if not img.read_only:
                old = img.attribute(mam.ID_LOAD_COUNT)
                n = int.from_bytes(old.value, "big") + 1 if old else 1
                img.set_attributes([mam.Attribute(mam.ID_LOAD_COUNT, mam.FORMAT_BINARY,
                                                  n.to_bytes(8, "big"), True)], internal=True)
        self.pos = 0

    def unload(self, hold: bool = False) -> None:
        """Rewind, flush, and unload; without ``hold`` the cartridge is ejected."""
        img = self._medium()
        img.sync()
        self._save_counters()
        self.pos = 0
        self.slot = Slot.HELD if hold else Slot.EJECTED

    def _save_counters(self) -> None:
        img = self.image
        if img is None or img.read_only:
            return
        c = self.load_counters
        changes = []
        for load_id, life_id, n in ((mam.ID_MB_WRITTEN_LOAD, mam.ID_MB_WRITTEN_LIFE,
                                     c.bytes_written),
                                    (mam.ID_MB_READ_LOAD, mam.ID_MB_READ_LIFE, c.bytes_read)):
            old = img.attribute(life_id)
            life = (int.from_bytes(old.value, "big") if old else 0) + n // 1_000_000
            changes.append(mam.Attribute(load_id, mam.FORMAT_BINARY,
                                         (n // 1_000_000).to_bytes(8, "big"), True))
            changes.append(mam.Attribute(life_id, mam.FORMAT_BINARY, life.to_bytes(8, "big"),
                                         True))
        img.set_attributes(changes, internal=True)

    def _medium(self) -> TapeImage:
        if self.slot == Slot.LOADED and self.image is not None:
            return self.image
        if self.slot in (Slot.HELD,):
            raise NotLoaded("cartridge unloaded")
        raise NoMedium("no cartridge loaded")

    @property
    def ready(self) -> bool:
        return self.slot == Slot.LOADED

    # ------------------------------------------------------------ position
    @property
    def file_number(self) -> int:
        return self._medium().filemarks_before(self.pos)

    @property
    def at_bop(self) -> bool:
        return self.pos == 0

    @property
    def at_eod(self) -> bool:
        return self.pos == self._medium().count

    @property
    def in_early_warning(self) -> bool:
        return self._ew(self._medium(), self.pos)

    def _ew(self, img: TapeImage, pos: int) -> bool:
        ew = self.early_warning_at
        return img.in_early_warning(pos) or (ew is not None and pos >= ew)

    def _room(self, fits: int) -> int:
        """``fits`` objects that fit the capacity, cut at an injected end of medium."""
        end = self.end_at
        return fits if end is None else max(0, min(fits, end - self.pos))

    def rewind(self) -> None:
        img = self._medium()
        img.sync()
        self.pos = 0

    def locate(self, index: int) -> None:
        img = self._medium()
        if index > img.count:
            self.pos = img.count
            raise EndOfData(0, f"object {index} is past end-of-data ({img.count})")
        self.pos = index

    def locate_file(self, file_number: int) -> None:
        """To the first object of logical file ``file_number`` (after that many filemarks)."""
        img = self._medium()
        if file_number == 0:
            self.pos = 0
        elif file_number <= img.filemark_count:
            self.pos = img.filemark_at(file_number - 1) + 1
        else:
            self.pos = img.count
            raise EndOfData(0, f"file {file_number} is past end-of-data")

    def space_eod(self) -> None:
        self.pos = self._medium().count

    def space_blocks(self, n: int) -> None:
        img = self._medium()
        pos = self.pos
        if n > 0:
            i = img.filemarks_before(pos)
            fence = img.filemark_at(i) if i < img.filemark_count else img.count
            if pos + n <= fence:
                self.pos = pos + n
            elif fence < img.count:
                self.pos = fence + 1
                raise FilemarkDetected(n - (fence - pos))
            else:
                self.pos = fence
                raise EndOfData(n - (fence - pos))
        elif n < 0:
            m = -n
            i = img.filemarks_before(pos) - 1
            fence = img.filemark_at(i) if i >= 0 else -1
            if pos - m > fence:
                self.pos = pos - m
            elif fence >= 0:
                self.pos = fence
                raise FilemarkDetected(m - (pos - fence - 1))
            else:
                self.pos = 0
                raise BeginningOfMedium(m - pos)

    def space_filemarks(self, n: int) -> None:
        img = self._medium()
        pos = self.pos
        if n > 0:
            i = img.filemarks_before(pos)
            if i + n - 1 < img.filemark_count:
                self.pos = img.filemark_at(i + n - 1) + 1
            else:
                self.pos = img.count
                raise EndOfData(n - (img.filemark_count - i))
        elif n < 0:
            m = -n
            i = img.filemarks_before(pos) - 1
            if i - m + 1 >= 0:
                self.pos = img.filemark_at(i - m + 1)
            else:
                self.pos = 0
                raise BeginningOfMedium(m - (i + 1))

    # ---------------------------------------------------------------- read
    def read(self, count: int, block_length: int | None, alloc) -> ReadResult:
        """Read ``count`` fixed blocks of ``block_length`` (or one variable record).

        ``alloc(n)`` returns a writable memoryview of n bytes for the data.
        Variable mode (``block_length`` None): ``count`` is the requested
        length; the whole record is read, the caller trims it.
        """
        img = self._medium()
        pos = self.pos
        if block_length is None:
            if pos == img.count:
                raise EndOfData(count)
            n = img.length(pos)
            if n == 0:
                self.pos = pos + 1
                raise FilemarkDetected(count)
            buf = alloc(n)
            try:
                img.read_into(pos, buf)
            except RecordCorrupt:
                self.pos = pos + 1  # past the bad record, so a reader can go on
                raise RecordCorrupt(count, pos) from None
            self.pos = pos + 1
            self.load_counters.bytes_read += n
            self.load_counters.records_read += 1
            return ReadResult(buf, 1, None, n if n != count else None)
        # Fixed: the run of records of exactly block_length starting here.
        stop = min(pos + count, img.count)
        lengths = img.lengths(pos, stop)
        good = len(lengths)
        if lengths.count(block_length) != good:
            good = next(k for k, ln in enumerate(lengths) if ln != block_length)
        buf = alloc(good * block_length)
        if good:
            try:
                img.read_into(pos, buf)
            except RecordCorrupt as e:
                # The blocks before the bad one are good and are transferred;
                # the position moves past the bad one so a reader can go on.
                done = good - e.residue
                self.pos = pos + done + 1
                self.load_counters.bytes_read += done * block_length
                self.load_counters.records_read += done
                return ReadResult(buf[:done * block_length], done,
                                  RecordCorrupt(count - done, e.index))
        self.pos = pos + good
        self.load_counters.bytes_read += good * block_length
        self.load_counters.records_read += good
        if good == count:
            return ReadResult(buf, good)
        at = pos + good
        if at == img.count:
            return ReadResult(buf, good, EndOfData(count - good))
        n = img.length(at)
        self.pos = at + 1
        if n == 0:
            return ReadResult(buf, good, FilemarkDetected(count - good))
        return ReadResult(buf, good, None, n)

    # --------------------------------------------------------------- write
    def _writable(self) -> TapeImage:
        img = self._medium()
        if img.write_protected:
            raise WriteProtected("cartridge is write protected")
        return img

    def write_records(self, records: list) -> WriteResult:
        """Write whole records at the position (everything after it is erased)."""
        img = self._writable()
        room = img.capacity - img.used_at(self.pos)
        sizes = list(accumulate(F.FRAME_SIZE + len(r) for r in records))
        fits = self._room(bisect_left(sizes, room + 1))
        if fits:
            img.append_records(self.pos, records[:fits])
        elif self.pos < img.count:
            img.truncate(self.pos)
        self.pos += fits
        c = self.load_counters
        c.records_written += fits
        c.bytes_written += sizes[fits - 1] - F.FRAME_SIZE * fits if fits else 0
        return WriteResult(fits, self._ew(img, self.pos), fits < len(records))

    def write_filemarks(self, count: int, *, sync: bool = True) -> WriteResult:
        img = self._writable()
        fits = self._room(min(count, (img.capacity - img.used_at(self.pos)) // F.FRAME_SIZE))
        if fits:
            img.append_filemarks(self.pos, fits)
        elif count and self.pos < img.count:
            img.truncate(self.pos)
        self.pos += fits
        self.load_counters.filemarks_written += fits
        if sync:
            img.sync()
        return WriteResult(fits, self._ew(img, self.pos), fits < count)

    # ------------------------------------------------- streams (backups to tape)
    def write_stream(self, data, record_size: int, *, batch: int = 64) -> WriteResult:
        """Write ``data`` as records of ``record_size`` bytes (the last may be shorter).

        Zero-copy (memoryview slices), ``batch`` records per image append.
        Stops at end-of-medium (``overflow``; ``objects`` says how many
        records made it) -- a backup writer then continues on the next
        cartridge from byte ``objects * record_size``.  ``early_warning`` is
        the state after the last record written.
        """
        if not 0 < record_size <= F.MAX_RECORD:
            raise ValueError(f"record size {record_size} is not 1..{F.MAX_RECORD}")
        mv = memoryview(data).cast("B")
        done = 0
        ew = self.in_early_warning
        for start in range(0, len(mv), record_size * batch):
            chunk = mv[start:start + record_size * batch]
            recs = [chunk[k:k + record_size] for k in range(0, len(chunk), record_size)]
            r = self.write_records(recs)
            done += r.objects
            ew = r.early_warning
            if r.overflow:
                return WriteResult(done, ew, True)
        return WriteResult(done, ew)

    def read_file(self, max_record: int = F.MAX_RECORD):
        """Yield the records from the position up to the next filemark (skipped) or EOD."""
        while True:
            try:
                r = self.read(max_record, None, lambda n: memoryview(bytearray(n)))
            except (FilemarkDetected, EndOfData):
                return
            yield r.data

    def erase(self) -> None:
        """End-of-data at the position: everything from here on is gone."""
        img = self._writable()
        img.truncate(self.pos)
        img.sync()


__all__ = ["Slot", "TapeDrive", "ReadResult", "WriteResult", "Counters", "TapeError"]
