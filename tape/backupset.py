"""Backup sets on tape: backup streams as tape files, spanning cartridges.

One backup is one tape file per cartridge it touches (docs/tape-backups.md):

    [label record] [stream records of record_size ...] [end record]  FILEMARK

The label (512 bytes) says what the file holds (full/differential,
generations, scope, date, the stream's size and CRC32C, which part of a
spanning backup it is and at which stream byte that part starts); the end
record (64 bytes) is written only after the last stream byte of the backup,
so a file without one is either a part that continues on the next cartridge
(its label's set id links them) or an interrupted write.

Nothing here knows SCSI: a :class:`TapeDevice` is anything with the few
SSC-shaped movements below -- :class:`LocalTape` over :class:`TapeDrive`
here, an SSC-over-iSCSI adapter in ``scsi_target.initiator.tape``.
"""
from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator, Protocol

from crc32c import crc32c

from .drive import TapeDrive
from .errors import EndOfData, FilemarkDetected, TapeError
from .image import TapeImage

LABEL_MAGIC = b"DBKLABEL"
END_MAGIC = b"DBKEND\x00\x01"
LABEL_VERSION = 1
LABEL_SIZE = 512
END_SIZE = 64
KIND_FIRST, KIND_CONTINUATION = 1, 2
DEFAULT_RECORD = 256 << 10
MAX_RECORD = 8 << 20          # the largest record the image format guarantees

# magic, version, kind, flags, part, set id, offset, record size, gen lo, gen hi,
# scope, created, volume id, volume size, stream bytes, stream crc32c, source
_LABEL = struct.Struct(">8sHBBI16sQIIII Q16sQQI64s")
_END = struct.Struct(">8s16sIQQI")   # magic, set id, parts, stream bytes, crc32c, records


class BackupSetError(TapeError):
    """A tape file is not (or not the expected part of) a backup written by this module."""


class NoMoreCartridges(BackupSetError):
    """Early warning was reached and no next cartridge was given."""


@dataclass
class Label:
    full: bool
    generation: tuple[int, int]
    scope: int
    stream_bytes: int
    stream_crc: int
    volume_id: bytes = bytes(16)
    volume_size: int = 0
    source: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    set_id: bytes = field(default_factory=lambda: os.urandom(16))
    record_size: int = DEFAULT_RECORD
    part: int = 1
    offset: int = 0               # stream byte at which this part starts
    crc_known: bool = True        # False: written by the target (no CRC was computed)

    @property
    def kind(self) -> int:
        return KIND_FIRST if self.part == 1 else KIND_CONTINUATION

    def pack(self) -> bytes:
        body = _LABEL.pack(LABEL_MAGIC, LABEL_VERSION, self.kind,
                           (1 if self.full else 0) | (0 if self.crc_known else 2),
                           self.part, self.set_id, self.offset, self.record_size,
                           self.generation[0], self.generation[1], self.scope, self.created,
                           self.volume_id, self.volume_size, self.stream_bytes,
                           self.stream_crc, self.source.encode("utf-8", "replace")[:64])
        body += bytes(LABEL_SIZE - 4 - len(body))
        return body + struct.pack(">I", crc32c(body))

    @classmethod
    def unpack(cls, data) -> "Label | None":
        """The label in ``data``, or None when the record is not one (any other file)."""
        data = bytes(data)
        if len(data) != LABEL_SIZE or not data.startswith(LABEL_MAGIC):
            return None
        if crc32c(data[:-4]) != struct.unpack(">I", data[-4:])[0]:
            raise BackupSetError("backup label fails its CRC32C check")
        (_m, ver, kind, flags, part, set_id, offset, rsize, glo, ghi, scope, created, vid,
         vsize, nbytes, crc, src) = _LABEL.unpack_from(data)
        if ver != LABEL_VERSION or kind not in (KIND_FIRST, KIND_CONTINUATION):
            raise BackupSetError(f"backup label version {ver} kind {kind} is not supported")
        return cls(bool(flags & 1), (glo, ghi), scope, nbytes, crc, vid, vsize,
                   src.rstrip(b"\0").decode("utf-8", "replace"), created, set_id, rsize,
                   part, offset, not flags & 2)


def end_record(label: Label, parts: int, records: int) -> bytes:
    """The record that closes a backup (after its last stream byte)."""
    body = _END.pack(END_MAGIC, label.set_id, parts, label.stream_bytes, label.stream_crc,
                     records)
    body += bytes(END_SIZE - 4 - len(body))
    return body + struct.pack(">I", crc32c(body))


def _is_end(rec, set_id: bytes) -> bool:
    rec = bytes(rec)
    return (len(rec) == END_SIZE and rec.startswith(END_MAGIC) and rec[8:24] == set_id
            and crc32c(rec[:-4]) == struct.unpack(">I", rec[-4:])[0])


class TapeDevice(Protocol):
    """What a backup set needs of a drive with a cartridge loaded."""

    name: str

    def rewind(self) -> None: ...
    def to_eod(self) -> None: ...
    def locate_file(self, n: int) -> bool: ...          # False: no such file (at EOD)
    def file_number(self) -> int: ...
    def write(self, records: list) -> tuple[int, bool, bool]: ...  # written, EW, overflow
    def write_filemark(self) -> bool: ...               # early warning after it
    def read_record(self, max_length: int) -> memoryview | None: ...  # None: filemark/EOD
    def last_record_of_file(self, n: int, max_length: int) -> memoryview | None: ...
    def close(self) -> None: ...


class LocalTape:
    """A tape image file in a drive of our own (no SCSI)."""

    def __init__(self, path: str) -> None:
        self.name = path
        self.drive = TapeDrive(TapeImage.open(path))

    def rewind(self) -> None:
        self.drive.rewind()

    def to_eod(self) -> None:
        self.drive.space_eod()

    def locate_file(self, n: int) -> bool:
        try:
            self.drive.locate_file(n)
        except EndOfData:
            return False
        return not self.drive.at_eod

    def file_number(self) -> int:
        return self.drive.file_number

    def write(self, records: list) -> tuple[int, bool, bool]:
        r = self.drive.write_records(records)
        return r.objects, r.early_warning, r.overflow

    def write_filemark(self) -> bool:
        r = self.drive.write_filemarks(1)
        if r.overflow:
            raise BackupSetError(f"{self.name}: no room for a filemark")
        return r.early_warning

    def read_record(self, max_length: int) -> memoryview | None:
        try:
            return self.drive.read(max_length, None, lambda n: memoryview(bytearray(n))).data
        except (FilemarkDetected, EndOfData):
            return None

    def last_record_of_file(self, n: int, max_length: int) -> memoryview | None:
        d = self.drive
        self.locate_file(n + 1)       # the start of file n+1, or end-of-data
        if d.file_number > n:
            d.space_filemarks(-1)     # onto the filemark that ends file n
        try:
            d.space_blocks(-1)
        except (FilemarkDetected, TapeError):
            return None
        return self.read_record(max_length)

    def close(self) -> None:
        self.drive.remove()


# ------------------------------------------------------------------- writing
@dataclass
class Placement:
    cartridge: str
    file_number: int
    part: int
    offset: int


def write_backup(dev: TapeDevice, stream: BinaryIO, label: Label,
                 next_cartridge: Callable[[TapeDevice], TapeDevice],
                 progress: Callable[[int], None] | None = None,
                 batch: int = 16) -> tuple[list[Placement], TapeDevice]:
    """Append the stream as one backup at end-of-data, spanning cartridges at early warning.

    ``next_cartridge(full_device)`` returns the next cartridge's device (it may
    raise :class:`NoMoreCartridges`); the last device used is returned with
    where each part went.
    """
    rs = label.record_size
    if not 0 < rs <= MAX_RECORD:
        raise BackupSetError(f"record size {rs} is not 1..{MAX_RECORD}")
    placements: list[Placement] = []
    done = 0
    records = 0

    def start_part(d: TapeDevice) -> TapeDevice:
        d.to_eod()
        while True:
            label.offset = done
            label.part = len(placements) + 1
            fileno = d.file_number()
            n, ew, over = d.write([label.pack()])
            if n == 1 and not ew:
                placements.append(Placement(d.name, fileno, label.part, done))
                return d
            # No useful room on this cartridge: close the label's file, go on.
            if n == 1:
                d.write_filemark()
            d = next_cartridge(d)
            d.to_eod()

    dev = start_part(dev)
    while True:
        chunk = stream.read(rs * batch)
        if not chunk:
            break
        mv = memoryview(chunk)
        recs = [mv[k:k + rs] for k in range(0, len(mv), rs)]
        while recs:
            n, ew, over = dev.write(recs)
            records += n
            done += sum(len(r) for r in recs[:n])
            recs = recs[n:]
            if progress:
                progress(done)
            if ew or over:
                dev.write_filemark()
                dev = start_part(next_cartridge(dev))
    if done != label.stream_bytes:
        raise BackupSetError(f"the stream has {done} bytes, the label says "
                             f"{label.stream_bytes}")
    n, _ew, over = dev.write([end_record(label, len(placements), records)])
    if n != 1:
        raise BackupSetError(f"{dev.name}: no room for the end record at end-of-medium")
    dev.write_filemark()
    return placements, dev


# ------------------------------------------------------------------- reading
@dataclass
class FileInfo:
    file_number: int
    label: Label | None           # None: not a backup file of ours
    complete: bool                # the end record is there (the last part of a backup)
    note: str = ""


def read_label(dev: TapeDevice, n: int) -> Label | None:
    if not dev.locate_file(n):
        raise BackupSetError(f"{dev.name}: there is no file {n} on this cartridge")
    rec = dev.read_record(MAX_RECORD)
    if rec is None:
        return None
    return Label.unpack(rec)


def catalog(dev: TapeDevice) -> Iterator[FileInfo]:
    """Every file of the cartridge, in order, with its label and whether it is complete."""
    n = 0
    while dev.locate_file(n):
        try:
            lab = read_label(dev, n)
        except BackupSetError as e:
            yield FileInfo(n, None, False, str(e))
            n += 1
            continue
        if lab is None:
            yield FileInfo(n, None, False, "not a backup file")
        else:
            last = dev.last_record_of_file(n, MAX_RECORD)
            yield FileInfo(n, lab, last is not None and _is_end(last, lab.set_id))
        n += 1


def _find_part(dev: TapeDevice, set_id: bytes, part: int) -> Label | None:
    for info in catalog(dev):
        lab = info.label
        if lab is not None and lab.set_id == set_id and lab.part == part:
            read_label(dev, info.file_number)     # positioned after the label
            return lab
    return None


def read_backup(dev: TapeDevice, file_number: int, sink: BinaryIO,
                next_cartridge: Callable[[TapeDevice, Label], TapeDevice],
                progress: Callable[[int], None] | None = None) -> tuple[Label, TapeDevice]:
    """Copy backup ``file_number`` of the cartridge to ``sink``, across cartridges.

    The stream's size and CRC32C (from the label) are checked; a part out of
    order or from another backup is refused.
    """
    first = read_label(dev, file_number)
    if first is None:
        raise BackupSetError(f"{dev.name}: file {file_number} is not a backup")
    if first.part != 1:
        raise BackupSetError(f"{dev.name}: file {file_number} is part {first.part} of a "
                             f"spanning backup, not its beginning")
    done = 0
    crc = 0
    lab = first
    while True:
        ended = False
        while True:
            rec = dev.read_record(MAX_RECORD)
            if rec is None:
                break
            if len(rec) == END_SIZE and done == first.stream_bytes and _is_end(rec, first.set_id):
                ended = True
                continue
            if done + len(rec) > first.stream_bytes:
                raise BackupSetError(f"{dev.name}: more data than the label's "
                                     f"{first.stream_bytes} bytes")
            sink.write(rec)
            crc = crc32c(rec, crc)
            done += len(rec)
            if progress:
                progress(done)
        if ended:
            break
        nxt = next_cartridge(dev, lab)
        dev = nxt
        lab2 = _find_part(dev, first.set_id, lab.part + 1)
        if lab2 is None:
            raise BackupSetError(f"{dev.name}: part {lab.part + 1} of the backup is not on "
                                 f"this cartridge")
        if lab2.offset != done:
            raise BackupSetError(f"{dev.name}: part {lab2.part} starts at stream byte "
                                 f"{lab2.offset}, {done} were read")
        lab = lab2
    if done != first.stream_bytes or (first.crc_known and crc != first.stream_crc):
        raise BackupSetError(f"the backup read back has {done} bytes (CRC32C {crc:08x}); its "
                             f"label says {first.stream_bytes} ({first.stream_crc:08x})")
    return first, dev


def file_crc(f: BinaryIO) -> tuple[int, int]:
    """(bytes, CRC32C) of a stream file from its position."""
    crc = 0
    n = 0
    while True:
        b = f.read(4 << 20)
        if not b:
            return n, crc
        crc = crc32c(b, crc)
        n += len(b)
