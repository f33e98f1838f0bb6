"""CDB builders for the commands the initiator side sends (SPC-4, SBC-3, SSC-3)."""
from __future__ import annotations

import struct

# Operation codes.
TEST_UNIT_READY = 0x00
REWIND = 0x01
REQUEST_SENSE = 0x03
READ_BLOCK_LIMITS = 0x05
WRITE_FILEMARKS = 0x10
SPACE = 0x11
INQUIRY = 0x12
MODE_SENSE_6 = 0x1A
LOAD_UNLOAD = 0x1B
READ_CAPACITY_10 = 0x25
LOCATE_10 = 0x2B
READ_POSITION = 0x34
MODE_SENSE_10 = 0x5A
PR_IN = 0x5E
PR_OUT = 0x5F
EXTENDED_COPY = 0x83
RECEIVE_COPY_RESULTS = 0x84
READ_16 = 0x88
WRITE_16 = 0x8A
LOCATE_16 = 0x92
SERVICE_ACTION_IN_16 = 0x9E
SAI_READ_CAPACITY_16 = 0x10
SAI_GET_LBA_STATUS = 0x12
REPORT_LUNS = 0xA0
MAINTENANCE_IN = 0xA3
SA_REPORT_SUPPORTED_OPCODES = 0x0C

# RECEIVE COPY RESULTS service actions (SPC-4 6.18).
RCR_COPY_STATUS, RCR_RECEIVE_DATA, RCR_OPERATING_PARAMETERS, RCR_FAILED_SEGMENT_DETAILS = 0, 1, 3, 4
# PERSISTENT RESERVE IN / OUT service actions (SPC-4 6.13, 6.14).
PRIN_READ_KEYS, PRIN_READ_RESERVATION, PRIN_REPORT_CAPABILITIES, PRIN_READ_FULL_STATUS = 0, 1, 2, 3
PROUT_REGISTER, PROUT_RESERVE, PROUT_RELEASE, PROUT_CLEAR = 0, 1, 2, 3
PROUT_PREEMPT, PROUT_PREEMPT_AND_ABORT, PROUT_REGISTER_AND_IGNORE = 4, 5, 6

# SPACE codes (SSC-3 7.7).
SPACE_BLOCKS, SPACE_FILEMARKS, SPACE_SEQ_FILEMARKS, SPACE_EOD = 0, 1, 2, 3


def test_unit_ready() -> bytes:
    return bytes(6)


def request_sense(alloc: int = 252, descriptor: bool = False) -> bytes:
    return bytes([REQUEST_SENSE, 1 if descriptor else 0, 0, 0, alloc & 0xFF, 0])


def inquiry(evpd: bool = False, page: int = 0, alloc: int = 255) -> bytes:
    if not evpd and page:
        raise ValueError("a page code needs evpd=True")
    return struct.pack(">BBBHB", INQUIRY, 1 if evpd else 0, page, alloc, 0)


def read_capacity10() -> bytes:
    return bytes([READ_CAPACITY_10]) + bytes(9)


def read_capacity16(alloc: int = 32) -> bytes:
    return struct.pack(">BBQIBB", SERVICE_ACTION_IN_16, SAI_READ_CAPACITY_16, 0, alloc, 0, 0)


def get_lba_status(lba: int, alloc: int = 4096) -> bytes:
    return struct.pack(">BBQIBB", SERVICE_ACTION_IN_16, SAI_GET_LBA_STATUS, lba, alloc, 0, 0)


def read16(lba: int, blocks: int, *, fua: bool = False) -> bytes:
    return struct.pack(">BBQIBB", READ_16, 0x08 if fua else 0, lba, blocks, 0, 0)


def write16(lba: int, blocks: int, *, fua: bool = False) -> bytes:
    return struct.pack(">BBQIBB", WRITE_16, 0x08 if fua else 0, lba, blocks, 0, 0)


def report_luns(alloc: int = 4096, select: int = 0) -> bytes:
    return struct.pack(">BBBBBBIBB", REPORT_LUNS, 0, select, 0, 0, 0, alloc, 0, 0)


def mode_sense6(page: int, subpage: int = 0, pc: int = 0, *, dbd: bool = False,
                alloc: int = 255) -> bytes:
    return bytes([MODE_SENSE_6, 0x08 if dbd else 0, ((pc & 3) << 6) | (page & 0x3F), subpage,
                  alloc & 0xFF, 0])


def mode_sense10(page: int, subpage: int = 0, pc: int = 0, *, dbd: bool = False,
                 llbaa: bool = False, alloc: int = 4096) -> bytes:
    b1 = (0x08 if dbd else 0) | (0x10 if llbaa else 0)
    return struct.pack(">BBBBxxxHB", MODE_SENSE_10, b1, ((pc & 3) << 6) | (page & 0x3F),
                       subpage, alloc, 0)


def report_supported_opcodes(options: int = 0, opcode: int = 0, service_action: int = 0, *,
                             rctd: bool = False, alloc: int = 65536) -> bytes:
    return struct.pack(">BBBBHIBB", MAINTENANCE_IN, SA_REPORT_SUPPORTED_OPCODES,
                       (0x80 if rctd else 0) | (options & 7), opcode, service_action, alloc, 0, 0)


def pr_in(service_action: int, alloc: int = 8192) -> bytes:
    return struct.pack(">BBxxxxxHB", PR_IN, service_action & 0x1F, alloc, 0)


def pr_out(service_action: int, pr_type: int = 0, scope: int = 0, param_len: int = 24) -> bytes:
    """PERSISTENT RESERVE OUT; the basic parameter list is 24 bytes."""
    return struct.pack(">BBBxxIB", PR_OUT, service_action & 0x1F,
                       ((scope & 0xF) << 4) | (pr_type & 0xF), param_len, 0)


def extended_copy(param_len: int) -> bytes:
    """EXTENDED COPY (LID1), service action 00h."""
    return struct.pack(">BBxxxxxxxxIxB", EXTENDED_COPY, 0, param_len, 0)


def receive_copy_results(service_action: int, list_id: int = 0, alloc: int = 4096) -> bytes:
    """RECEIVE COPY RESULTS (LID1 service actions 00h-04h)."""
    return struct.pack(">BBBxxxxxxxIxB", RECEIVE_COPY_RESULTS, service_action & 0x1F,
                       list_id & 0xFF, alloc, 0)


# -- SSC -------------------------------------------------------------------
def rewind(immed: bool = False) -> bytes:
    return bytes([REWIND, 1 if immed else 0, 0, 0, 0, 0])


def read_block_limits() -> bytes:
    return bytes([READ_BLOCK_LIMITS, 0, 0, 0, 0, 0])


def write_filemarks(count: int = 1, immed: bool = False) -> bytes:
    if not 0 <= count < 1 << 24:
        raise ValueError("filemark count must fit 24 bits")
    return bytes([WRITE_FILEMARKS, 1 if immed else 0]) + count.to_bytes(3, "big") + b"\x00"


def space(count: int, code: int = SPACE_BLOCKS) -> bytes:
    """SPACE(6); a negative count spaces backwards (24-bit two's complement)."""
    if not -(1 << 23) <= count < 1 << 23:
        raise ValueError("space count must fit 24 bits signed")
    return bytes([SPACE, code & 0x0F]) + (count & 0xFFFFFF).to_bytes(3, "big") + b"\x00"


def read_position(service_action: int = 0, alloc: int = 0) -> bytes:
    """READ POSITION; service action 0 (short form) takes no allocation length."""
    return struct.pack(">BBxxxxxHB", READ_POSITION, service_action & 0x1F, alloc, 0)


def locate10(block: int, partition: int | None = None) -> bytes:
    cp = partition is not None
    return struct.pack(">BBxIxBB", LOCATE_10, 0x02 if cp else 0, block, partition or 0, 0)


def locate16(logical_object: int, partition: int | None = None) -> bytes:
    cp = partition is not None
    return struct.pack(">BBxBQxxBB", LOCATE_16, 0x02 if cp else 0, partition or 0,
                       logical_object, 0, 0)


def load_unload(load: bool, *, hold: bool = False, eot: bool = False, reten: bool = False,
                immed: bool = False) -> bytes:
    b4 = (0x08 if hold else 0) | (0x04 if eot else 0) | (0x02 if reten else 0) | (1 if load else 0)
    return bytes([LOAD_UNLOAD, 1 if immed else 0, 0, 0, b4, 0])
