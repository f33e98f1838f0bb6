"""Third-party copy data (SPC-4 6.4, 6.18): the EXTENDED COPY (LID1) parameter list and
the RECEIVE COPY RESULTS replies (COPY STATUS, RECEIVE DATA, OPERATING PARAMETERS,
FAILED SEGMENT DETAILS).

Only the descriptor kinds the copy manager implements have layouts: the
identification CSCD descriptor (E4h) and the block-to-block segment (02h).
:meth:`ExtendedCopyList.unpack` is a plain decoder for the initiator and for
tests; the target validates a list descriptor by descriptor (each failure has
its own sense) and uses the fixed parts declared here for the fields.
"""
from __future__ import annotations

import struct

from ...record import field, record
from .fields import Struct, bit, bits, raw, u8, u16, u24, u32, u64

SEG_BLOCK_TO_BLOCK = 0x02
CSCD_IDENTIFICATION = 0xE4
# CSCD descriptor ID naming the LU that holds the copy manager (SPC-4 table 150).
CSCD_ID_COPY_MANAGER_LU = 0xFFFF
# CSCD descriptor types whose descriptors are 64 bytes long (IPv6, IP copy service).
CSCD_LONG_TYPES = frozenset({0xEA, 0xEB})
CSCD_LEN = 32
CSCD_LONG_LEN = 64

# LIST ID USAGE (parameter list header byte 1 bits 4-3).
USAGE_HOLD = 0b00
USAGE_DISCARD = 0b10
USAGE_NO_LIST_ID = 0b11

# COPY MANAGER STATUS of COPY STATUS.
STATUS_IN_PROGRESS = 0x00
STATUS_DONE = 0x01
STATUS_FAILED = 0x02
STATUS_NAMES = {STATUS_IN_PROGRESS: "in progress", STATUS_DONE: "completed without errors",
                STATUS_FAILED: "completed with errors"}

# TRANSFER COUNT UNITS: the count is in 1024**units bytes.
TRANSFER_UNIT_NAMES = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")

SEGMENT_TYPE_NAMES = {0x00: "block->stream", 0x01: "stream->block", 0x02: "block->block",
                      0x03: "stream->stream", 0x04: "inline->stream", 0x05: "embedded->stream",
                      0x06: "stream->discard", 0x07: "verify CSCD", 0x08: "block<o>->stream",
                      0x09: "stream->block<o>", 0x0A: "block<o>->block<o>",
                      0x0B: "block->stream+application client",
                      0x0C: "stream->block+application client",
                      0x0D: "block->block+application client",
                      0x0E: "stream->stream+application client",
                      0x0F: "stream->discard+application client", 0x10: "populate token",
                      0x11: "write using token", 0x12: "block->block (write using token)",
                      0xBE: "register key", 0xBF: "third-party copy"}
CSCD_TYPE_NAMES = {0xE0: "Fibre Channel N_Port_Name", 0xE1: "Fibre Channel N_Port_ID",
                   0xE2: "Fibre Channel N_Port_ID with N_Port_Name",
                   0xE3: "Parallel Interface T_L", 0xE4: "identification descriptor",
                   0xE5: "IPv4", 0xE6: "alias", 0xE7: "RDMA", 0xE8: "IEEE 1394 EUI-64",
                   0xE9: "SAS serial SCSI protocol", 0xEA: "IPv6", 0xEB: "IP copy service",
                   0xFE: "ROD"}


def encode_transfer_count(nbytes: int) -> tuple[int, int]:
    """(TRANSFER COUNT UNITS, TRANSFER COUNT): the smallest unit whose count fits 32 bits."""
    units = 0
    while nbytes > 0xFFFFFFFF:
        nbytes >>= 10
        units += 1
    return units, nbytes


# -- RECEIVE COPY RESULTS ---------------------------------------------------------

@record
class CopyStatus(Struct):
    """COPY STATUS parameter data (service action 00h)."""
    available_data: int = 8
    hdd: bool = False                 # held data discarded
    status: int = STATUS_IN_PROGRESS
    segments_processed: int = 0
    transfer_count_units: int = 0
    transfer_count: int = 0

    SIZE = 12
    FIELDS = (u32("available_data", 0), bit("hdd", 4, 7), bits("status", 4, 0, 7),
              u16("segments_processed", 5), u8("transfer_count_units", 7),
              u32("transfer_count", 8))

    @property
    def bytes_transferred(self) -> int:
        return self.transfer_count << (10 * self.transfer_count_units)

    @property
    def status_name(self) -> str:
        return STATUS_NAMES.get(self.status, f"{self.status:02x}h")


@record
class ReceiveData:
    """RECEIVE DATA parameter data (service action 01h): data held by the copy manager."""
    data: bytes = b""

    def pack(self) -> bytes:
        return struct.pack(">I", len(self.data)) + bytes(self.data)

    @classmethod
    def unpack(cls, data) -> "ReceiveData":
        if len(data) < 4:
            raise ValueError("RECEIVE DATA parameter data shorter than 4 bytes")
        n = int.from_bytes(data[0:4], "big")
        return cls(bytes(data[4:4 + n]))

    def to_dict(self) -> dict:
        return {"held_data": self.data.hex()}


@record
class OperatingParametersHead(Struct):
    """The fixed 44 bytes of OPERATING PARAMETERS (service action 03h)."""
    available_data: int = 40
    snlid: bool = False               # supports no list identifier
    max_cscd_descriptors: int = 0
    max_segment_descriptors: int = 0
    max_descriptor_list_length: int = 0
    max_segment_length: int = 0
    max_inline_data_length: int = 0
    held_data_limit: int = 0
    max_stream_device_transfer_size: int = 0
    total_concurrent_copies: int = 0
    max_concurrent_copies: int = 0
    data_segment_granularity: int = 0   # log2 of bytes
    inline_data_granularity: int = 0
    held_data_granularity: int = 0
    implemented_descriptor_list_length: int = 0

    SIZE = 44
    FIELDS = (u32("available_data", 0), bit("snlid", 4, 0), u16("max_cscd_descriptors", 8),
              u16("max_segment_descriptors", 10), u32("max_descriptor_list_length", 12),
              u32("max_segment_length", 16), u32("max_inline_data_length", 20),
              u32("held_data_limit", 24), u32("max_stream_device_transfer_size", 28),
              u16("total_concurrent_copies", 34), u8("max_concurrent_copies", 36),
              u8("data_segment_granularity", 37), u8("inline_data_granularity", 38),
              u8("held_data_granularity", 39), u8("implemented_descriptor_list_length", 43))


@record
class OperatingParameters:
    """OPERATING PARAMETERS: the fixed part plus the implemented descriptor type codes.

    The two length fields of ``head`` are computed by :meth:`pack`."""
    head: OperatingParametersHead = field(default_factory=OperatingParametersHead)
    implemented: bytes = b""

    def pack(self) -> bytes:
        h = self.head
        h.implemented_descriptor_list_length = len(self.implemented)
        h.available_data = OperatingParametersHead.SIZE - 4 + len(self.implemented)
        return h.pack() + bytes(self.implemented)

    @classmethod
    def unpack(cls, data) -> "OperatingParameters":
        if len(data) < 4:
            raise ValueError("OPERATING PARAMETERS data shorter than 4 bytes")
        head = OperatingParametersHead.unpack(data)
        start = OperatingParametersHead.SIZE
        end = min(start + head.implemented_descriptor_list_length, 4 + head.available_data)
        return cls(head, bytes(data[start:end]))

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.head.items()
             if k not in ("available_data", "implemented_descriptor_list_length")}
        d["implemented_descriptors"] = [
            f"{c:02x}h " + (SEGMENT_TYPE_NAMES.get(c) or CSCD_TYPE_NAMES.get(c) or "?")
            for c in self.implemented]
        return d


@record
class FailedSegmentHead(Struct):
    """The fixed 60 bytes of FAILED SEGMENT DETAILS (service action 04h)."""
    available_data: int = 56
    completion_status: int = 0      # the SCSI status EXTENDED COPY ended with
    sense_length: int = 0

    SIZE = 60
    FIELDS = (u32("available_data", 0), u8("completion_status", 56), u16("sense_length", 58))


@record
class FailedSegmentDetails:
    """FAILED SEGMENT DETAILS; ``sense`` None means none held (AVAILABLE DATA 0, 4 bytes)."""
    completion_status: int = 0
    sense: bytes | None = None

    def pack(self) -> bytes:
        if self.sense is None:
            return bytes(4)
        sense = bytes(self.sense)
        head = FailedSegmentHead(FailedSegmentHead.SIZE - 4 + len(sense),
                                 self.completion_status, len(sense))
        return head.pack() + sense

    @classmethod
    def unpack(cls, data) -> "FailedSegmentDetails":
        if len(data) < 4:
            raise ValueError("FAILED SEGMENT DETAILS data shorter than 4 bytes")
        head = FailedSegmentHead.unpack(data)
        if head.available_data == 0:
            return cls()
        start = FailedSegmentHead.SIZE
        return cls(head.completion_status, bytes(data[start:start + head.sense_length]))

    def to_dict(self) -> dict:
        return {"completion_status": self.completion_status,
                "sense": None if self.sense is None else self.sense.hex()}


# -- EXTENDED COPY (LID1) parameter list --------------------------------------------

@record
class ParameterListHeader(Struct):
    list_id: int = 0
    str_: bool = False                # sequential striped
    list_id_usage: int = USAGE_HOLD
    priority: int = 0
    cscd_list_length: int = 0
    segment_list_length: int = 0
    inline_data_length: int = 0

    SIZE = 16
    FIELDS = (u8("list_id", 0), bit("str_", 1, 5), bits("list_id_usage", 1, 3, 2),
              bits("priority", 1, 0, 3), u16("cscd_list_length", 2),
              u32("segment_list_length", 8), u32("inline_data_length", 12))


@record
class IdentificationCscd(Struct):
    """Identification CSCD descriptor (E4h) with block device parameters.

    ``designation`` holds a designation descriptor as VPD page 83h carries it
    (4-byte header, then DESIGNATOR LENGTH bytes), zero-padded to 24 bytes."""
    code: int = CSCD_IDENTIFICATION
    lu_id_type: int = 0
    nul: bool = False
    device_type: int = 0
    relative_initiator_port: int = 0
    designation: bytes = bytes(24)
    block_length: int = 0             # DISK BLOCK LENGTH

    SIZE = CSCD_LEN
    FIELDS = (u8("code", 0), bits("lu_id_type", 1, 6, 2), bit("nul", 1, 5),
              bits("device_type", 1, 0, 5), u16("relative_initiator_port", 2),
              raw("designation", 4, 24), u24("block_length", 29))

    @property
    def designator_length(self) -> int:
        return self.designation[3]

    @property
    def designator(self) -> bytes:
        """The designation descriptor without its padding (header + value)."""
        return bytes(self.designation[:4 + self.designator_length])


@record
class BlockToBlockSegment(Struct):
    """Block device to block device segment descriptor (02h)."""
    code: int = SEG_BLOCK_TO_BLOCK
    dc: bool = False                  # NUMBER OF BLOCKS counts destination blocks
    cat: bool = False
    descriptor_length: int = 0x18
    src_id: int = 0
    dst_id: int = 0
    blocks: int = 0
    src_lba: int = 0
    dst_lba: int = 0

    SIZE = 28
    FIELDS = (u8("code", 0), bit("dc", 1, 1), bit("cat", 1, 0), u16("descriptor_length", 2),
              u16("src_id", 4), u16("dst_id", 6), u16("blocks", 10), u64("src_lba", 12),
              u64("dst_lba", 20))


@record
class ExtendedCopyList:
    """A LID1 parameter list of identification CSCDs and block-to-block segments.

    :meth:`pack` fills in the header's list lengths (inline data is not carried)."""
    header: ParameterListHeader = field(default_factory=ParameterListHeader)
    cscds: list[IdentificationCscd] = field(default_factory=list)
    segments: list[BlockToBlockSegment] = field(default_factory=list)

    def pack(self) -> bytes:
        c = b"".join(d.pack() for d in self.cscds)
        s = b"".join(d.pack() for d in self.segments)
        h = self.header
        h.cscd_list_length, h.segment_list_length, h.inline_data_length = len(c), len(s), 0
        return h.pack() + c + s

    @classmethod
    def unpack(cls, data) -> "ExtendedCopyList":
        """Decode without policy checks; other descriptor kinds raise ValueError."""
        if len(data) < ParameterListHeader.SIZE:
            raise ValueError("EXTENDED COPY parameter list shorter than its 16-byte header")
        h = ParameterListHeader.unpack(data)
        pos = ParameterListHeader.SIZE
        end = pos + h.cscd_list_length
        if end + h.segment_list_length > len(data):
            raise ValueError("EXTENDED COPY descriptor lists run past the parameter list")
        cscds: list[IdentificationCscd] = []
        while pos < end:
            if data[pos] != CSCD_IDENTIFICATION:
                raise ValueError(f"CSCD descriptor type {data[pos]:02x}h at byte {pos} "
                                 "is not decoded")
            cscds.append(IdentificationCscd.unpack(data, pos))
            pos += CSCD_LEN
        end = pos + h.segment_list_length
        segments: list[BlockToBlockSegment] = []
        while pos < end:
            if data[pos] != SEG_BLOCK_TO_BLOCK:
                raise ValueError(f"segment descriptor type {data[pos]:02x}h at byte {pos} "
                                 "is not decoded")
            segments.append(BlockToBlockSegment.unpack(data, pos))
            pos += BlockToBlockSegment.SIZE
        return cls(h, cscds, segments)

    def to_dict(self) -> dict:
        return {"header": self.header.to_dict(), "cscds": [c.to_dict() for c in self.cscds],
                "segments": [s.to_dict() for s in self.segments]}


def naa_designation(naa: int) -> bytes:
    """The NAA designation descriptor of an LU as VPD page 83h carries it
    (code set binary, association LU, designator type NAA, 8 bytes)."""
    return bytes([0x01, 0x03, 0x00, 0x08]) + naa.to_bytes(8, "big")


def block_copy_list(list_id: int, designations: list[bytes], block_lengths: list[int],
                    segments: list[BlockToBlockSegment], *,
                    usage: int = USAGE_HOLD) -> ExtendedCopyList:
    """A list copying between disk LUs named by designation descriptors (one CSCD each)."""
    cscds = []
    for desig, bl in zip(designations, block_lengths, strict=True):
        if len(desig) > 24:
            raise ValueError("a designation descriptor longer than 24 bytes does not fit a CSCD")
        cscds.append(IdentificationCscd(designation=bytes(desig).ljust(24, b"\x00"),
                                        block_length=bl))
    return ExtendedCopyList(ParameterListHeader(list_id, list_id_usage=usage), cscds,
                            list(segments))
