"""CDBs and parameter data of the vendor-specific backup commands
(docs/vendor-commands.md), declared once for the target
(scsi_target/scsi/vendor_backup.py) and the initiator (tools/diffbackup.py).

Every command has a 12-byte CDB of the same shape::

    0  OPERATION CODE          6..9  ALLOCATION / PARAMETER LIST LENGTH
    1  FLAGS                   10    reserved
    2..5 SCOPE                 11    CONTROL
"""
from __future__ import annotations

import struct

from ...record import field, record
from .fields import Struct, bit, raw, u8, u16, u32, u64

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import ClassVar

OP_SELECT_BACKUP = 0xC0
OP_START_BACKUP = 0xC1
OP_REPORT_GENERATIONS = 0xC2
OP_ESTIMATE_BACKUP = 0xC3
OP_REPORT_RESTORE_RESULTS = 0xC4
OP_SET_RESTORE_OPTIONS = 0xC5
OP_REPORT_BACKUP_STATUS = 0xC6
OP_AUDIT_TRACKER = 0xC7
OP_REPORT_MAP_EXTENTS = 0xC8
OP_COMMIT_BACKUP = 0xC9
CDB_LEN = 12

# CDB byte 1 flags
FLAG_FULL = 0x01
FLAG_COMPRESS = 0x02
# SELECT BACKUP: the stream's cut commits at COMMIT BACKUP, not when its end is read
# (the reader stores the stream first: docs/vendor-commands.md, "Held streams").
FLAG_HOLD = 0x04
CDB_FLAGS_ALLOWED = {
    OP_SELECT_BACKUP: FLAG_FULL | FLAG_COMPRESS | FLAG_HOLD,
    # START BACKUP with a selection of its own (flags and scope as SELECT BACKUP's)
    # selects and starts in one command; GenerationsHeader.start_selects says so.
    OP_START_BACKUP: FLAG_FULL | FLAG_COMPRESS | FLAG_HOLD,
    OP_REPORT_GENERATIONS: 0,
    OP_ESTIMATE_BACKUP: FLAG_FULL | FLAG_COMPRESS,
    OP_REPORT_RESTORE_RESULTS: 0,
    OP_SET_RESTORE_OPTIONS: 0,
    OP_REPORT_BACKUP_STATUS: 0,
    OP_AUDIT_TRACKER: FLAG_FULL,          # FULL: compare every unchanged block
    OP_REPORT_MAP_EXTENTS: 0,
    OP_COMMIT_BACKUP: 0,
}
MAX_SKIP_GENERATIONS = 256
MAX_BAD_DESCRIPTORS = 1024
MAX_EXTENT_DESCRIPTORS = 1024
MAX_MESSAGE = 4096


@record(frozen=True)
class VendorCdb(Struct):
    """The 16-byte CDB of the vendor backup commands."""
    opcode: int
    flags: int = 0
    scope: int = 0
    length: int = 0
    reserved: int = 0
    control: int = 0
    FIELDS: ClassVar = (u8("opcode", 0), u8("flags", 1), u32("scope", 2), u32("length", 6),
                        u8("reserved", 10), u8("control", 11))
    SIZE: ClassVar = CDB_LEN


def cdb(opcode: int, *, flags: int = 0, scope: int = 0, length: int = 0) -> bytes:
    return VendorCdb(opcode, flags, scope, length).pack()


# ---------------------------------------------------------------- backup status
STATE_NONE, STATE_ACTIVE, STATE_COMPLETE, STATE_HELD = 0, 1, 2, 3


@record(frozen=True)
class BackupStatus(Struct):
    """START BACKUP / REPORT BACKUP STATUS parameter data (80 bytes)."""
    additional_length: int = 76
    state: int = STATE_NONE
    full: bool = False
    compressed: bool = False
    generation_lo: int = 0
    generation_hi: int = 0
    block_count: int = 0
    size_bound: int = 0
    produced: int = 0
    read_prefix: int = 0
    total: int = 0
    stream_id: bytes = bytes(16)
    FIELDS: ClassVar = (u32("additional_length", 0), u8("state", 4), bit("full", 5, 0),
                        bit("compressed", 5, 1), u32("generation_lo", 8),
                        u32("generation_hi", 12), u64("block_count", 16), u64("size_bound", 24),
                        u64("produced", 32), u64("read_prefix", 40), u64("total", 48),
                        raw("stream_id", 56, 16))
    SIZE: ClassVar = 80


# ------------------------------------------------------------ generations report
@record(frozen=True)
class GenerationsHeader(Struct):
    """REPORT GENERATIONS header (96 bytes); GenerationCount descriptors follow."""
    additional_length: int = 0
    current_generation: int = 0
    granularity: int = 0
    source_lun: int = 0
    full_done: bool = False
    stream_active: bool = False
    pending_valid: bool = False
    volume_id_length: int = 0
    volume_size: int = 0
    entries: int = 0
    pending_lo: int = 0
    descriptor_count: int = 0
    base_id: bytes = bytes(16)
    volume_id: bytes = bytes(32)
    restore_incomplete: bool = False
    restore_interrupted: bool = False
    unrecovered_blocks: int = 0
    start_selects: bool = False          # START BACKUP takes a selection in its CDB
    FIELDS: ClassVar = (u32("additional_length", 0), u32("current_generation", 4),
                        u32("granularity", 8), u16("source_lun", 12), bit("full_done", 14, 0),
                        bit("stream_active", 14, 1), bit("pending_valid", 14, 2),
                        bit("restore_incomplete", 14, 3), bit("restore_interrupted", 14, 4),
                        bit("start_selects", 14, 5),
                        u8("volume_id_length", 15), u64("volume_size", 16), u64("entries", 24),
                        u32("pending_lo", 32), u32("descriptor_count", 36),
                        raw("base_id", 40, 16), raw("volume_id", 56, 32),
                        u64("unrecovered_blocks", 88))
    SIZE: ClassVar = 96


@record(frozen=True)
class GenerationCount(Struct):
    """One REPORT GENERATIONS descriptor: a generation and its block count."""
    generation: int = 0
    blocks: int = 0
    FIELDS: ClassVar = (u32("generation", 0), u64("blocks", 8))
    SIZE: ClassVar = 16


@record
class GenerationsReport:
    """REPORT GENERATIONS parameter data: header and block counts per generation."""
    header: GenerationsHeader
    counts: dict[int, int]

    @property
    def volume_id(self) -> bytes:
        return self.header.volume_id[:self.header.volume_id_length]

    def pack(self) -> bytes:
        body = b"".join(GenerationCount(g, n).pack() for g, n in sorted(self.counts.items()))
        h = self.header
        h = GenerationsHeader(**{**dict(h.items()),
                                 "additional_length": GenerationsHeader.SIZE - 4 + len(body),
                                 "descriptor_count": len(self.counts)})
        return h.pack() + body

    @classmethod
    def unpack(cls, data: bytes) -> "GenerationsReport":
        h = GenerationsHeader.unpack(data)
        counts = {}
        off = GenerationsHeader.SIZE
        for _ in range(h.descriptor_count):
            if off + GenerationCount.SIZE > len(data):
                break
            d = GenerationCount.unpack(data, off)
            counts[d.generation] = d.blocks
            off += GenerationCount.SIZE
        return cls(h, counts)


# ------------------------------------------------------------------- estimate
@record(frozen=True)
class Estimate(Struct):
    """ESTIMATE BACKUP parameter data (32 bytes)."""
    additional_length: int = 28
    scope: int = 0
    blocks: int = 0
    stream_bytes: int = 0
    compressed_bytes: int = 0
    FIELDS: ClassVar = (u32("additional_length", 0), u32("scope", 4), u64("blocks", 8),
                        u64("stream_bytes", 16), u64("compressed_bytes", 24))
    SIZE: ClassVar = 32


# -------------------------------------------------------------- restore results
RESTORE_STATES = ("idle", "running", "done", "rejected", "abandoned")


@record(frozen=True)
class RestoreHeader(Struct):
    """REPORT RESTORE RESULTS header (80 bytes)."""
    additional_length: int = 0
    state: int = 0
    full: bool = False
    generation_lo: int = 0
    generation_hi: int = 0
    bytes_received: int = 0
    records_applied: int = 0
    skipped_older: int = 0
    skipped_forbidden: int = 0
    bad_records: int = 0
    blocks_written: int = 0
    unrecovered_blocks: int = 0
    bad_descriptors: int = 0
    extent_descriptors: int = 0
    message_length: int = 0
    stream_id: bytes = bytes(16)
    FIELDS: ClassVar = (u32("additional_length", 0), u8("state", 4), bit("full", 5, 0),
                        u32("generation_lo", 8), u32("generation_hi", 12),
                        u64("bytes_received", 16), u32("records_applied", 24),
                        u32("skipped_older", 28), u32("skipped_forbidden", 32),
                        u32("bad_records", 36), u64("blocks_written", 40),
                        u64("unrecovered_blocks", 48), u16("bad_descriptors", 56),
                        u16("extent_descriptors", 58), u16("message_length", 60),
                        raw("stream_id", 64, 16))
    SIZE: ClassVar = 80


@record(frozen=True)
class BadRecordDesc(Struct):
    """One damaged record (32 bytes); BLOCK VALID=0: its header was unreadable."""
    block_valid: bool = False
    generation: int = 0
    first_block: int = 0
    nblocks: int = 0
    stream_offset: int = 0
    FIELDS: ClassVar = (bit("block_valid", 0, 0), u32("generation", 4), u64("first_block", 8),
                        u32("nblocks", 16), u64("stream_offset", 24))
    SIZE: ClassVar = 32


@record(frozen=True)
class ExtentDesc(Struct):
    """An extent of blocks (first block, count)."""
    first_block: int = 0
    nblocks: int = 0
    FIELDS: ClassVar = (u64("first_block", 0), u64("nblocks", 8))
    SIZE: ClassVar = 16


@record
class RestoreReportData:
    """REPORT RESTORE RESULTS parameter data: header, bad records, unrecovered extents, message."""
    header: RestoreHeader
    bad: list[BadRecordDesc] = field(default_factory=list)
    unrecovered: list[ExtentDesc] = field(default_factory=list)
    message: str = ""

    @property
    def state(self) -> str:
        s = self.header.state
        return RESTORE_STATES[s] if s < len(RESTORE_STATES) else f"state {s}"

    def pack(self) -> bytes:
        bad = self.bad[:MAX_BAD_DESCRIPTORS]
        ext = self.unrecovered[:MAX_EXTENT_DESCRIPTORS]
        msg = self.message.encode("utf-8", "replace")[:MAX_MESSAGE]
        body = b"".join(d.pack() for d in bad) + b"".join(e.pack() for e in ext) + msg
        h = RestoreHeader(**{**dict(self.header.items()),
                             "additional_length": RestoreHeader.SIZE - 4 + len(body),
                             "bad_descriptors": len(bad), "extent_descriptors": len(ext),
                             "message_length": len(msg)})
        return h.pack() + body

    @classmethod
    def unpack(cls, data: bytes) -> "RestoreReportData":
        h = RestoreHeader.unpack(data)
        off = RestoreHeader.SIZE
        bad = []
        for _ in range(h.bad_descriptors):
            bad.append(BadRecordDesc.unpack(data, off))
            off += BadRecordDesc.SIZE
        ext = []
        for _ in range(h.extent_descriptors):
            ext.append(ExtentDesc.unpack(data, off))
            off += ExtentDesc.SIZE
        msg = bytes(data[off:off + h.message_length]).decode("utf-8", "replace")
        return cls(h, bad, ext, msg)


# ------------------------------------------------------------ restore options
def pack_restore_options(skip_generations) -> bytes:
    gens = sorted(set(int(g) for g in skip_generations))
    return struct.pack(">HH", len(gens), 0) + b"".join(struct.pack(">I", g) for g in gens)


def unpack_restore_options(data) -> list[int]:
    """Generations to skip; raises ValueError(byte offset) on a malformed list."""
    if len(data) < 4:
        raise ValueError(0)
    count, = struct.unpack_from(">H", data, 0)
    if count > MAX_SKIP_GENERATIONS:
        raise ValueError(0)
    if len(data) < 4 + 4 * count:
        raise ValueError(0)
    return [struct.unpack_from(">I", data, 4 + 4 * i)[0] for i in range(count)]


# ------------------------------------------------------------------ tracker audit
@record(frozen=True)
class AuditHeader(Struct):
    """AUDIT TRACKER parameter data header (56 bytes); mismatch extents follow."""
    additional_length: int = 0
    mismatch: bool = False
    escalated: bool = False
    full: bool = False
    rate: int = 0
    phase: int = 0
    generation: int = 0
    descriptors: int = 0
    candidates: int = 0
    checked: int = 0
    mismatched_blocks: int = 0
    remarked_blocks: int = 0
    FIELDS: ClassVar = (u32("additional_length", 0), bit("mismatch", 4, 0),
                        bit("escalated", 5, 0), bit("full", 5, 1), u32("rate", 8),
                        u32("phase", 12), u32("generation", 16), u16("descriptors", 20),
                        u64("candidates", 24), u64("checked", 32),
                        u64("mismatched_blocks", 40), u64("remarked_blocks", 48))
    SIZE: ClassVar = 56


@record
class AuditReportData:
    """AUDIT TRACKER parameter data: header and mismatched extents."""
    header: AuditHeader
    mismatched: list[ExtentDesc] = field(default_factory=list)

    def pack(self) -> bytes:
        ext = self.mismatched[:MAX_EXTENT_DESCRIPTORS]
        body = b"".join(e.pack() for e in ext)
        h = AuditHeader(**{**dict(self.header.items()),
                           "additional_length": AuditHeader.SIZE - 4 + len(body),
                           "descriptors": len(ext)})
        return h.pack() + body

    @classmethod
    def unpack(cls, data: bytes) -> "AuditReportData":
        h = AuditHeader.unpack(data)
        ext = []
        off = AuditHeader.SIZE
        for _ in range(h.descriptors):
            if off + ExtentDesc.SIZE > len(data):
                break
            ext.append(ExtentDesc.unpack(data, off))
            off += ExtentDesc.SIZE
        return cls(h, ext)


# ------------------------------------------------------------------- map extents
@record(frozen=True)
class MapExtentsHeader(Struct):
    """REPORT MAP EXTENTS header (40 bytes); MapExtentDesc descriptors follow."""
    additional_length: int = 0
    current_generation: int = 0
    granularity: int = 0
    descriptors: int = 0          # returned in this answer
    entries: int = 0
    total_descriptors: int = 0    # in the whole map
    first_descriptor: int = 0     # index of the first one returned (the CDB's SCOPE)
    FIELDS: ClassVar = (u32("additional_length", 0), u32("current_generation", 4),
                        u32("granularity", 8), u32("descriptors", 12), u64("entries", 16),
                        u64("total_descriptors", 24), u64("first_descriptor", 32))
    SIZE: ClassVar = 40


@record(frozen=True)
class MapExtentDesc(Struct):
    """One REPORT MAP EXTENTS descriptor: an extent and its generation."""
    first_block: int = 0
    nblocks: int = 0
    generation: int = 0
    FIELDS: ClassVar = (u64("first_block", 0), u32("nblocks", 8), u32("generation", 12))
    SIZE: ClassVar = 16


def pack_map_extents(current: int, granularity: int, entries: int,
                     extents: list[tuple[int, int, int]], first: int, length: int) -> bytes:
    """The answer for an allocation length: as many whole descriptors from
    ``first`` as fit (an extent longer than 2^32-1 blocks is split)."""
    ext = []
    for a, n, g in extents:
        while n > 0xFFFFFFFF:
            ext.append((a, 0xFFFFFFFF, g))
            a += 0xFFFFFFFF
            n -= 0xFFFFFFFF
        ext.append((a, n, g))
    room = max(0, (length - MapExtentsHeader.SIZE) // MapExtentDesc.SIZE)
    part = ext[first:first + room]
    body = b"".join(MapExtentDesc(a, n, g).pack() for a, n, g in part)
    h = MapExtentsHeader(MapExtentsHeader.SIZE - 4 + len(body), current, granularity, len(part),
                         entries, len(ext), first)
    return h.pack() + body


def unpack_map_extents(data: bytes) -> tuple[MapExtentsHeader, list[tuple[int, int, int]]]:
    h = MapExtentsHeader.unpack(data)
    out = []
    off = MapExtentsHeader.SIZE
    for _ in range(h.descriptors):
        if off + MapExtentDesc.SIZE > len(data):
            break
        d = MapExtentDesc.unpack(data, off)
        out.append((d.first_block, d.nblocks, d.generation))
        off += MapExtentDesc.SIZE
    return h, out
