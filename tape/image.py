"""A tape image file: frames on disk, the index in memory, crash-safe appends.

Appends are ordered so that a crash (kill -9, or power loss at a sync point)
leaves an image that opens at the last acknowledged object:

1. writing anywhere but end-of-data first cuts the file there (``ftruncate``
   and ``fdatasync``), so stale frames past the new end can never come back;
2. a frame is header + payload in one ``pwritev``; the in-memory index grows
   only after the write returned, and the caller acknowledges after that;
3. on open the frame chain is followed from the start and ends at the first
   header that is missing, torn (bad CRC), out of sequence (object number,
   epoch) or whose payload runs past the end of the file.  Bytes after the
   last good frame are a torn tail: reported, and cut before the next write.

Power loss is covered at sync points (``sync``: filemarks, rewind, unload,
close) or after every object with ``sync_each=True``.
"""
from __future__ import annotations

import fcntl
import os
import time
import uuid as uuidlib
from array import array
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path

from crc32c import crc32c

from . import format as F
from . import mam
from .errors import ImageFormatError, MamError, RecordCorrupt, TapeIOError

IOV_MAX = 1024
SCAN_WINDOW = 1 << 20


def _lock(fd: int, path: Path) -> None:
    """One writer per cartridge: two servers appending to one image would interleave frames.

    Read-only opens (``tape info``/``check`` of a cartridge in use) take no lock.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise TapeIOError(f"{path} is in use by another process (open for writing)") from None


@dataclass(frozen=True)
class ScanReport:
    """What open found: the chain it kept and what it dropped."""
    objects: int
    torn_bytes: int               # bytes after the last valid frame


class TapeImage:
    """One cartridge.  Object ``i`` (0-based) is a record or a filemark; ``count`` is EOD."""

    def __init__(self, path: Path, fd: int, sb: F.Superblock, read_only: bool,
                 sync_each: bool) -> None:
        self.path = path
        self._fd = fd
        self.sb = sb
        self.read_only = read_only
        self.sync_each = sync_each
        # The index: frame offset of every object plus the end offset (EOD),
        # payload lengths (0 = filemark) and the sorted object numbers of filemarks.
        self._offsets = array("Q", [sb.data_start])
        self._lengths = array("L")
        self._filemarks = array("Q")
        # Payload CRC32C per object and whether the frame carries one.
        self._crcs = array("L")
        self._crc_flags = bytearray()
        self._epoch = 1
        self._meta_seq = 0
        self._meta_flags = 0
        self._attrs: dict[int, mam.Attribute] = {}
        self.torn_bytes = 0
        self.closed = False

    # ----------------------------------------------------------- lifecycle
    @classmethod
    def create(cls, path: str | os.PathLike, capacity: int, *, early_warning: int | None = None,
               crc: bool = True, barcode: str = "", label: str = "",
               write_protect: bool = False, serial: str | None = None,
               density_code: int = 0x80, overwrite: bool = False,
               uuid: bytes | None = None, created: int | None = None) -> "TapeImage":
        """Make a blank cartridge (superblock, one metadata slot) and open it.

        ``uuid`` and ``created`` exist for reproducible images (golden vectors).
        """
        p = Path(path)
        if capacity < 64 << 10:
            raise ValueError(f"capacity {capacity} bytes is below the 64 KiB minimum")
        if early_warning is None:
            early_warning = max(min(capacity // 64, 64 << 20), 32 << 10)
        if not 0 < early_warning < capacity:
            raise ValueError(f"early-warning zone {early_warning} must be between 0 and the "
                             f"capacity {capacity}")
        u = uuidlib.UUID(bytes=uuid) if uuid is not None else uuidlib.uuid4()
        serial = serial if serial is not None else u.hex[:16].upper()
        now = int(time.time()) if created is None else created
        sb = F.Superblock(capacity, early_warning, F.FLAG_SUPER_CRC if crc else 0, density_code,
                          now, serial, u.bytes)
        flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        try:
            fd = os.open(p, flags, 0o644)
        except FileExistsError:
            raise ValueError(f"{p} already exists") from None
        try:
            _lock(fd, p)
            os.pwrite(fd, sb.pack().ljust(sb.meta_offset, b"\x00"), 0)
            os.ftruncate(fd, sb.data_start)
            img = cls(p, fd, sb, False, False)
            attrs = {
                mam.ID_MANUFACTURER: mam.Attribute(mam.ID_MANUFACTURER, mam.FORMAT_ASCII,
                                                   mam.ascii_value("PYSCSI", 8), True),
                mam.ID_SERIAL: mam.Attribute(mam.ID_SERIAL, mam.FORMAT_ASCII,
                                             mam.ascii_value(serial, 32), True),
                mam.ID_MANUFACTURE_DATE: mam.Attribute(
                    mam.ID_MANUFACTURE_DATE, mam.FORMAT_ASCII,
                    time.strftime("%Y%m%d", time.gmtime(now)).encode(), True),
                mam.ID_MEDIUM_TYPE: mam.Attribute(mam.ID_MEDIUM_TYPE, mam.FORMAT_BINARY,
                                                  b"\x00", True),
                mam.ID_LOAD_COUNT: mam.Attribute(mam.ID_LOAD_COUNT, mam.FORMAT_BINARY,
                                                 bytes(8), True),
            }
            if barcode:
                attrs[mam.ID_BARCODE] = mam.Attribute(mam.ID_BARCODE, mam.FORMAT_ASCII,
                                                      mam.ascii_value(barcode, 32))
            if label:
                attrs[mam.ID_LABEL] = mam.Attribute(
                    mam.ID_LABEL, mam.FORMAT_TEXT, label.encode()[:160].ljust(160, b"\x00"))
            img._attrs = attrs
            img._meta_flags = F.FLAG_META_WP if write_protect else 0
            img._commit_meta()
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        return img

    @classmethod
    def open(cls, path: str | os.PathLike, *, read_only: bool = False,
             sync_each: bool = False) -> "TapeImage":
        p = Path(path)
        if not read_only and not os.access(p, os.W_OK) and p.exists():
            read_only = True  # a read-only file is a write-protected cartridge
        try:
            fd = os.open(p, os.O_RDONLY if read_only else os.O_RDWR)
        except OSError as e:
            raise TapeIOError(f"cannot open {p}: {e.strerror or e}") from None
        try:
            if not read_only:
                _lock(fd, p)
            sb = F.Superblock.unpack(os.pread(fd, F.SUPER_SIZE, 0))
            img = cls(p, fd, sb, read_only, sync_each)
            img._load_meta()
            img._scan()
        except ImageFormatError as e:
            os.close(fd)
            raise ImageFormatError(f"{p}: {e}") from None
        except BaseException:
            os.close(fd)
            raise
        return img

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if not self.read_only:
                os.fsync(self._fd)
        finally:
            os.close(self._fd)

    def __enter__(self) -> "TapeImage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------- geometry
    @property
    def count(self) -> int:
        """Logical objects on the medium (the object number of end-of-data)."""
        return len(self._lengths)

    @property
    def used(self) -> int:
        """Bytes of frames written (what the capacity is measured in)."""
        return self._offsets[-1] - self.sb.data_start

    @property
    def capacity(self) -> int:
        return self.sb.capacity

    @property
    def remaining(self) -> int:
        return self.sb.capacity - self.used

    def used_at(self, index: int) -> int:
        """Bytes of frames before object ``index``."""
        return self._offsets[index] - self.sb.data_start

    def in_early_warning(self, index: int) -> bool:
        return self.used_at(index) >= self.sb.capacity - self.sb.early_warning

    @property
    def write_protected(self) -> bool:
        return self.read_only or bool(self._meta_flags & F.FLAG_META_WP)

    @property
    def write_protect_tab(self) -> bool:
        """The cartridge's own write-protect flag (not whether this file is open read-only)."""
        return bool(self._meta_flags & F.FLAG_META_WP)

    @property
    def crc_records(self) -> bool:
        return self.sb.crc_records

    # ---------------------------------------------------------------- index
    def is_filemark(self, index: int) -> bool:
        return self._lengths[index] == 0

    def length(self, index: int) -> int:
        return self._lengths[index]

    def lengths(self, start: int, stop: int) -> array:
        return self._lengths[start:stop]

    def filemarks_before(self, index: int) -> int:
        """Filemarks among objects 0..index-1 (the logical file number at ``index``)."""
        return bisect_left(self._filemarks, index)

    @property
    def filemark_count(self) -> int:
        return len(self._filemarks)

    def filemark_at(self, n: int) -> int:
        """Object number of the n-th filemark (0-based)."""
        return self._filemarks[n]

    def payload_bytes(self, start: int = 0, stop: int | None = None) -> int:
        stop = self.count if stop is None else stop
        return self._offsets[stop] - self._offsets[start] - F.FRAME_SIZE * (stop - start)

    # ----------------------------------------------------------------- read
    def read_into(self, start: int, buf: memoryview) -> None:
        """Payloads of the records ``start``, ``start+1``, ... back to back into ``buf``.

        ``buf`` must be exactly the sum of their lengths (the caller sized it
        from :meth:`lengths`).  Records with a CRC are checked; a mismatch
        raises RecordCorrupt with the number of records left unread.
        """
        views: list[memoryview] = []
        heads = bytearray(F.FRAME_SIZE)
        pos = 0
        i = start
        while pos < len(buf):
            n = self._lengths[i]
            views.append(memoryview(heads))
            views.append(buf[pos:pos + n])
            pos += n
            i += 1
        stop = i
        offset = self._offsets[start]
        for j in range(0, len(views), IOV_MAX):
            chunk = views[j:j + IOV_MAX]
            want = sum(len(v) for v in chunk)
            try:
                got = os.preadv(self._fd, chunk, offset)
            except OSError as e:
                raise TapeIOError(f"read of {self.path} failed: {e.strerror or e}") from None
            if got != want:
                raise TapeIOError(f"{self.path} is shorter than its index (truncated "
                                  "while in use?)")
            offset += want
        self._verify(start, stop, buf)

    def _verify(self, start: int, stop: int, buf: memoryview) -> None:
        """CRC32C of every record that carries one (headers re-read only for those)."""
        if not any(self._crc_flags[start:stop]):
            return
        pos = 0
        for i in range(start, stop):
            n = self._lengths[i]
            if self._crc_flags[i] and crc32c(buf[pos:pos + n]) != self._crcs[i]:
                raise RecordCorrupt(stop - i, i)
            pos += n

    # ---------------------------------------------------------------- write
    def _prepare_write(self, at: int) -> None:
        if at > self.count:
            raise ValueError(f"write at object {at} past end-of-data {self.count}")
        end = self._offsets[at]
        if at < self.count or self.torn_bytes:
            self._cut(at)
        elif end != self._offsets[-1]:  # pragma: no cover - index invariant
            raise AssertionError("index end mismatch")

    def _cut(self, at: int) -> None:
        """Make ``at`` end-of-data on disk and in the index (durably: see module doc)."""
        end = self._offsets[at]
        try:
            os.ftruncate(self._fd, end)
            os.fdatasync(self._fd)
        except OSError as e:
            raise TapeIOError(f"cannot truncate {self.path}: {e.strerror or e}") from None
        del self._offsets[at + 1:]
        del self._lengths[at:]
        del self._crcs[at:]
        del self._crc_flags[at:]
        del self._filemarks[bisect_left(self._filemarks, at):]
        self.torn_bytes = 0
        # Frames written from now on belong to a newer write session than any
        # frame that might linger from before the cut.
        self._epoch += 1

    def truncate(self, at: int) -> None:
        """Erase from object ``at`` to the end (ERASE, or a write that is not an append)."""
        if at > self.count:
            raise ValueError(f"erase at object {at} past end-of-data {self.count}")
        if at < self.count or self.torn_bytes:
            self._cut(at)

    def append_records(self, at: int, records: list[memoryview]) -> None:
        """Write ``records`` as objects ``at``, ``at+1``, ...; everything after is gone.

        The caller has checked the capacity.  Either every record is in the
        index when this returns, or TapeIOError is raised and the medium ends
        at ``at`` again.
        """
        self._prepare_write(at)
        crc = self.crc_records
        flags = F.FLAG_FRAME_CRC if crc else 0
        views: list = []
        offset = self._offsets[-1]
        new_offsets = array("Q")
        new_lengths = array("L")
        new_crcs = array("L")
        pos = offset
        for k, rec in enumerate(records):
            n = len(rec)
            c = crc32c(rec) if crc else 0
            views.append(F.pack_frame(F.KIND_RECORD, n, self._epoch, at + k, flags, c))
            views.append(rec)
            pos += F.FRAME_SIZE + n
            new_offsets.append(pos)
            new_lengths.append(n)
            new_crcs.append(c)
        self._write(views, offset)
        self._offsets.extend(new_offsets)
        self._lengths.extend(new_lengths)
        self._crcs.extend(new_crcs)
        self._crc_flags.extend((b"\x01" if crc else b"\x00") * len(records))

    def append_filemarks(self, at: int, count: int) -> None:
        self._prepare_write(at)
        offset = self._offsets[-1]
        frames = b"".join(F.pack_frame(F.KIND_FILEMARK, 0, self._epoch, at + k)
                          for k in range(count))
        self._write([frames], offset)
        self._offsets.extend(range(offset + F.FRAME_SIZE, offset + F.FRAME_SIZE * (count + 1),
                                   F.FRAME_SIZE))
        self._lengths.extend(array("L", [0]) * count)
        self._crcs.extend(array("L", [0]) * count)
        self._crc_flags.extend(bytes(count))
        self._filemarks.extend(range(at, at + count))

    def _write(self, views: list, offset: int) -> None:
        try:
            for j in range(0, len(views), IOV_MAX):
                chunk = views[j:j + IOV_MAX]
                want = sum(len(v) for v in chunk)
                got = os.pwritev(self._fd, chunk, offset)
                if got != want:
                    raise OSError(28, "short write (file system full?)")
                offset += want
            if self.sync_each:
                os.fdatasync(self._fd)
        except OSError as e:
            # Nothing of this request is acknowledged: cut it off again.
            try:
                os.ftruncate(self._fd, self._offsets[-1])
            except OSError:
                pass
            raise TapeIOError(f"write to {self.path} failed: {e.strerror or e}") from None

    def sync(self) -> None:
        """Everything written so far survives power loss (a filemark's flush point)."""
        if self.read_only:
            return
        try:
            os.fdatasync(self._fd)
        except OSError as e:
            raise TapeIOError(f"fdatasync of {self.path} failed: {e.strerror or e}") from None

    # -------------------------------------------------------------- metadata
    def _load_meta(self) -> None:
        sb = self.sb
        best: F.MetaSlot | None = None
        for k in range(2):
            slot = F.MetaSlot.unpack(os.pread(self._fd, sb.meta_slot_size,
                                              sb.meta_offset + k * sb.meta_slot_size))
            if slot is not None and (best is None or slot.seq > best.seq):
                best = slot
        if best is None:
            raise ImageFormatError("no valid metadata slot")
        try:
            attrs = mam.decode(best.attributes)
        except MamError as e:
            raise ImageFormatError(f"metadata attributes: {e}") from None
        self._meta_seq = best.seq
        self._meta_flags = best.flags
        self._attrs = {a.id: a for a in attrs}

    def _commit_meta(self) -> None:
        """Write the next metadata slot (the older one of the two), then fsync.

        A torn slot fails its CRC and the other, older slot stays current.
        """
        body = mam.encode(self._attrs)
        if len(body) > F.MAX_ATTRIBUTE_BYTES:
            raise MamError(f"attributes need {len(body)} bytes; the medium holds "
                           f"{F.MAX_ATTRIBUTE_BYTES}")
        seq = self._meta_seq + 1
        slot = F.MetaSlot(seq, self._meta_flags, body).pack()
        where = self.sb.meta_offset + (seq % 2) * self.sb.meta_slot_size
        try:
            os.pwrite(self._fd, slot, where)
            os.fdatasync(self._fd)
        except OSError as e:
            raise TapeIOError(f"metadata write to {self.path} failed: {e.strerror or e}") from None
        self._meta_seq = seq

    def attributes(self) -> dict[int, mam.Attribute]:
        return dict(self._attrs)

    def attribute(self, attr_id: int) -> mam.Attribute | None:
        return self._attrs.get(attr_id)

    def set_attributes(self, changes: list[mam.Attribute], *, internal: bool = False) -> None:
        """Store (or, with an empty value, delete) attributes; all or nothing."""
        if self.read_only:
            raise MamError("the image is open read-only")
        if not internal:
            for a in changes:
                mam.check_write(a)
        old = dict(self._attrs)
        for a in changes:
            if a.value:
                self._attrs[a.id] = a
            else:
                self._attrs.pop(a.id, None)
        try:
            self._commit_meta()
        except BaseException:
            self._attrs = old
            raise

    def set_write_protect(self, on: bool) -> None:
        if self.read_only:
            raise MamError("the image is open read-only")
        self._meta_flags = (self._meta_flags | F.FLAG_META_WP) if on \
            else (self._meta_flags & ~F.FLAG_META_WP)
        self._commit_meta()

    def barcode(self) -> str:
        a = self._attrs.get(mam.ID_BARCODE)
        return a.text() if a else ""

    def label(self) -> str:
        a = self._attrs.get(mam.ID_LABEL)
        return a.text() if a else ""

    # ------------------------------------------------------------------ scan
    def _scan(self) -> None:
        """Rebuild the index by following the frame chain (see the module doc)."""
        fd = self._fd
        size = os.fstat(fd).st_size
        pos = self.sb.data_start
        offsets, lengths, filemarks = self._offsets, self._lengths, self._filemarks
        epoch = 1
        index = 0
        win_start, window = pos, b""
        while pos + F.FRAME_SIZE <= size:
            if pos < win_start or pos + F.FRAME_SIZE > win_start + len(window):
                win_start, window = pos, os.pread(fd, SCAN_WINDOW, pos)
            head = F.FrameHeader.unpack(window, pos - win_start)
            if head is None or head.index != index or head.epoch < epoch:
                break
            end = pos + F.FRAME_SIZE + head.length
            if end > size:
                break
            epoch = head.epoch
            if head.kind == F.KIND_FILEMARK:
                filemarks.append(index)
            lengths.append(head.length)
            self._crcs.append(head.payload_crc)
            self._crc_flags.append(head.flags & F.FLAG_FRAME_CRC)
            offsets.append(end)
            index += 1
            pos = end
        self._epoch = epoch
        self.torn_bytes = size - pos
        if size < self.sb.data_start:
            raise ImageFormatError("shorter than its metadata area")

    def report(self) -> ScanReport:
        return ScanReport(self.count, self.torn_bytes)

    def verify(self) -> list[tuple[int, str]]:
        """Read every record and check its CRC32C: [(object number, problem)]."""
        problems: list[tuple[int, str]] = []
        for i in range(self.count):
            n = self._lengths[i]
            if not n:
                continue
            buf = memoryview(bytearray(n))
            try:
                self.read_into(i, buf)
            except RecordCorrupt:
                problems.append((i, "CRC32C mismatch"))
            except TapeIOError as e:
                problems.append((i, str(e)))
        return problems
