"""Third-party copy: EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.18).

The LU that receives EXTENDED COPY is the copy manager.  It copies between
disk LUs of the same target: a copy target (CSCD) is named either by an
identification descriptor (type E4h) holding the LU's NAA designator from VPD
page 83h, or by CSCD descriptor ID FFFFh, which names the copy manager's own
LU.  Block-to-block segments (type 02h) are supported, and block-to-stream
segments (type 00h, SPC-4 6.4.6.2) from a disk-like LU -- typically the
backup device, so a backup stream goes to tape without crossing the network
(the patent's embodiment 2) -- to a tape LU of the same target, written as
variable-length records of STREAM DEVICE TRANSFER LENGTH bytes at the tape's
position.

Copying goes through each LU's ``store`` in bounded chunks (the stores'
interceptors, e.g. the difference tracker, see every write), never one block
at a time.  Results are kept per (I_T nexus, list identifier) on the copy
manager LU, bounded in number, for RECEIVE COPY RESULTS.
"""
from __future__ import annotations

import struct
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import sense as S
from .command import Command, Direction, Nexus, Status
from .dispatch import CommandSet, Conflict, OpEntry, data_out
from .layouts import xcopy as LX

if TYPE_CHECKING:  # pragma: no cover
    from .lun import LogicalUnit

XCOPY = CommandSet("xcopy")

OP_EXTENDED_COPY = 0x83
OP_RECEIVE_COPY_RESULTS = 0x84
SA_COPY_STATUS = 0x00
SA_RECEIVE_DATA = 0x01
SA_OPERATING_PARAMETERS = 0x03
SA_FAILED_SEGMENT_DETAILS = 0x04

# Descriptor type codes we implement (the layouts live in layouts/xcopy.py).
SEG_BLOCK_TO_BLOCK = LX.SEG_BLOCK_TO_BLOCK
SEG_BLOCK_TO_STREAM = 0x00
SEGMENT_B2S_LEN = 24
CSCD_IDENTIFICATION = LX.CSCD_IDENTIFICATION
CSCD_ID_COPY_MANAGER_LU = LX.CSCD_ID_COPY_MANAGER_LU

# Limits advertised in OPERATING PARAMETERS and VPD page 8Fh.  The descriptor
# list bound is large enough for both maximum counts at once.
MAX_CSCD_DESCRIPTORS = 16
MAX_SEGMENT_DESCRIPTORS = 64
MAX_DESCRIPTOR_LIST_LENGTH = 4096
# NUMBER OF BLOCKS is 16 bits, so 0xFFFF blocks of 4 KiB always fit.
MAX_SEGMENT_LENGTH = 1 << 28
MAX_INLINE_DATA_LENGTH = 0
MAX_CONCURRENT_COPIES = 16
# Bytes moved per store read/write: bounds memory whatever the segment size.
COPY_CHUNK = 1 << 20
# Completed results kept per copy manager LU before the oldest are dropped.
MAX_RETAINED_RESULTS = 64

HEADER_LEN = LX.ParameterListHeader.SIZE
CSCD_LEN = LX.CSCD_LEN
SEGMENT_B2B_LEN = LX.BlockToBlockSegment.SIZE

USAGE_HOLD = LX.USAGE_HOLD
USAGE_DISCARD = LX.USAGE_DISCARD
USAGE_NO_LIST_ID = LX.USAGE_NO_LIST_ID

STATUS_IN_PROGRESS = LX.STATUS_IN_PROGRESS
STATUS_DONE = LX.STATUS_DONE
STATUS_FAILED = LX.STATUS_FAILED


# -- parameter list ----------------------------------------------------------

@dataclass(frozen=True)
class Cscd:
    """One identification (E4h) CSCD descriptor."""
    offset: int               # byte offset of the descriptor in the parameter list
    nul: bool
    device_type: int
    designator: bytes         # the whole designation descriptor (header + value)
    block_length: int         # DISK BLOCK LENGTH (device type specific parameters)


@dataclass(frozen=True)
class Segment:
    """One block-to-block segment descriptor."""
    offset: int
    dc: bool
    src_id: int
    dst_id: int
    blocks: int
    src_lba: int
    dst_lba: int


@dataclass(frozen=True)
class StreamSegment:
    """One block-to-stream segment descriptor (00h)."""
    offset: int
    src_id: int
    dst_id: int
    transfer_length: int      # bytes per WRITE to the stream device (one record)
    blocks: int
    src_lba: int


@dataclass(frozen=True)
class CopyList:
    list_id: int
    usage: int
    cscds: tuple[Cscd, ...]
    segments: tuple[Segment | StreamSegment, ...]


def _plist_error(asc: S.Asc, field: int | None = None, bit: int | None = None) -> S.SenseError:
    return S.illegal_request(asc, field, bit, in_cdb=False)


def parse_parameter_list(data: memoryview | bytes) -> CopyList:
    """Decode and validate an EXTENDED COPY (LID1) parameter list.

    Checks run in the order SPC-4 6.4.3 implies: lengths first (PARAMETER
    LIST LENGTH ERROR), then descriptor counts and type codes.
    """
    data = memoryview(data)
    plen = len(data)
    if plen < HEADER_LEN:
        raise _plist_error(S.PARAMETER_LIST_LENGTH_ERROR)
    head = LX.ParameterListHeader.unpack(data)
    list_id, usage = head.list_id, head.list_id_usage
    cscd_len, seg_len = head.cscd_list_length, head.segment_list_length
    inline_len = head.inline_data_length
    if HEADER_LEN + cscd_len + seg_len + inline_len > plen:
        raise _plist_error(S.PARAMETER_LIST_LENGTH_ERROR)
    if cscd_len + seg_len > MAX_DESCRIPTOR_LIST_LENGTH:
        raise _plist_error(S.PARAMETER_LIST_LENGTH_ERROR)
    if usage == 0b01:
        raise _plist_error(S.INVALID_FIELD_IN_PARAMETER_LIST, 1, 4)
    if usage == USAGE_NO_LIST_ID and list_id != 0:
        raise _plist_error(S.INVALID_FIELD_IN_PARAMETER_LIST, 0)
    if inline_len > MAX_INLINE_DATA_LENGTH:
        raise _plist_error(S.INVALID_FIELD_IN_PARAMETER_LIST, 12)
    cscds = _parse_cscds(data, HEADER_LEN, cscd_len)
    segments = _parse_segments(data, HEADER_LEN + cscd_len, seg_len)
    return CopyList(list_id, usage, tuple(cscds), tuple(segments))


def _parse_cscds(data: memoryview, start: int, length: int) -> list[Cscd]:
    out: list[Cscd] = []
    pos, end = start, start + length
    while pos < end:
        if len(out) == MAX_CSCD_DESCRIPTORS:
            raise _plist_error(S.TOO_MANY_TARGET_DESCRIPTORS)
        code = data[pos]
        size = LX.CSCD_LONG_LEN if code in LX.CSCD_LONG_TYPES else CSCD_LEN
        if code != CSCD_IDENTIFICATION:
            raise _plist_error(S.UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE, pos)
        if pos + size > end:
            raise _plist_error(S.INVALID_FIELD_IN_PARAMETER_LIST, 2)
        desc = LX.IdentificationCscd.unpack(data, pos)
        # LU ID TYPE is ignored: SPC-4 made it obsolete for identification descriptors.
        if desc.designator_length > 16:
            raise _plist_error(S.INVALID_FIELD_IN_PARAMETER_LIST, pos + 7)
        out.append(Cscd(offset=pos, nul=desc.nul, device_type=desc.device_type,
                        designator=desc.designator, block_length=desc.block_length))
        pos += size
    return out


def _parse_segments(data: memoryview, start: int, length: int) -> list[Segment]:
    out: list[Segment] = []
    pos, end = start, start + length
    while pos < end:
        if len(out) == MAX_SEGMENT_DESCRIPTORS:
            raise _plist_error(S.TOO_MANY_SEGMENT_DESCRIPTORS)
        code = data[pos]
        if code == SEG_BLOCK_TO_STREAM:
            out.append(_parse_stream_segment(data, pos, end))
            pos += SEGMENT_B2S_LEN
            continue
        if code != SEG_BLOCK_TO_BLOCK:
            raise _plist_error(S.UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE, pos)
        if pos + 4 > end:
            raise _plist_error(S.INVALID_FIELD_IN_PARAMETER_LIST, 8)
        desc_len = int.from_bytes(data[pos + 2:pos + 4], "big")
        if desc_len != SEGMENT_B2B_LEN - 4:
            raise _plist_error(S.INVALID_FIELD_IN_PARAMETER_LIST, pos + 2)
        if pos + SEGMENT_B2B_LEN > end:
            raise _plist_error(S.INVALID_FIELD_IN_PARAMETER_LIST, 8)
        d = LX.BlockToBlockSegment.unpack(data, pos)
        out.append(Segment(pos, d.dc, d.src_id, d.dst_id, d.blocks, d.src_lba, d.dst_lba))
        pos += SEGMENT_B2B_LEN
    return out


# -- copy results kept for RECEIVE COPY RESULTS --------------------------------

@dataclass
class CopyRecord:
    status: int = STATUS_IN_PROGRESS
    segments_processed: int = 0
    bytes_copied: int = 0
    sense: bytes | None = None      # sense data of a failed copy (FAILED SEGMENT DETAILS)
    status_taken: bool = False       # COPY STATUS of the finished copy was returned


@dataclass
class _Results:
    lock: threading.Lock = field(default_factory=threading.Lock)
    records: "OrderedDict[tuple[Nexus, int], CopyRecord]" = field(default_factory=OrderedDict)

    def begin(self, key: tuple[Nexus, int]) -> CopyRecord:
        with self.lock:
            old = self.records.get(key)
            if old is not None and old.status == STATUS_IN_PROGRESS:
                raise S.illegal_request(S.OPERATION_IN_PROGRESS, 0, in_cdb=False)
            rec = CopyRecord()
            self.records.pop(key, None)
            self.records[key] = rec
            self._trim()
            return rec

    def _trim(self) -> None:
        excess = len(self.records) - MAX_RETAINED_RESULTS
        if excess <= 0:
            return
        for key in [k for k, r in self.records.items() if r.status != STATUS_IN_PROGRESS][:excess]:
            del self.records[key]

    def get(self, key: tuple[Nexus, int]) -> CopyRecord | None:
        with self.lock:
            return self.records.get(key)

    def drop_if_spent(self, key: tuple[Nexus, int]) -> None:
        with self.lock:
            rec = self.records.get(key)
            if rec is not None and rec.status_taken and rec.sense is None:
                del self.records[key]

    def forget(self, nexus: Nexus | None) -> None:
        with self.lock:
            for key in [k for k in self.records if nexus is None or k[0] == nexus]:
                del self.records[key]


_RESULTS: "weakref.WeakKeyDictionary[LogicalUnit, _Results]" = weakref.WeakKeyDictionary()
_RESULTS_LOCK = threading.Lock()


def _results(lu: "LogicalUnit") -> _Results:
    with _RESULTS_LOCK:
        res = _RESULTS.get(lu)
        if res is None:
            res = _RESULTS[lu] = _Results()
            lu.forget_hooks.append(res.forget)  # nexus loss / LU reset drop kept results
        return res


def forget(lu: "LogicalUnit", nexus: Nexus | None = None) -> None:
    """Discard copy results of ``nexus`` (I_T nexus loss) or of all (LU reset)."""
    _results(lu).forget(nexus)


# -- copy engine ---------------------------------------------------------------

def _aborted(asc: S.Asc, segment: int) -> S.SenseError:
    # COMMAND-SPECIFIC INFORMATION names the segment being processed (SPC-4 6.4.5).
    return S.SenseError(S.SenseKey.COPY_ABORTED, asc, command_specific=segment)


def _parse_stream_segment(data: memoryview, pos: int, end: int) -> StreamSegment:
    if pos + SEGMENT_B2S_LEN > end:
        raise _plist_error(S.INVALID_FIELD_IN_PARAMETER_LIST, 8)
    if int.from_bytes(data[pos + 2:pos + 4], "big") != SEGMENT_B2S_LEN - 4:
        raise _plist_error(S.INVALID_FIELD_IN_PARAMETER_LIST, pos + 2)
    d = bytes(data[pos:pos + SEGMENT_B2S_LEN])
    tl = int.from_bytes(d[9:12], "big")
    if tl == 0:
        raise _plist_error(S.INVALID_FIELD_IN_PARAMETER_LIST, pos + 9)
    return StreamSegment(pos, int.from_bytes(d[4:6], "big"), int.from_bytes(d[6:8], "big"), tl,
                         int.from_bytes(d[14:16], "big"), int.from_bytes(d[16:24], "big"))


def _naa_designator(lu: "LogicalUnit") -> bytes | None:
    """The LU's NAA designation descriptor as VPD page 83h renders it."""
    naa = lu.identity.naa
    if not naa:
        return None
    # Code set binary, association LU, designator type NAA, length 8.
    return LX.naa_designation(naa)


def _same_designator(a: bytes, b: bytes) -> bool:
    # PIV (byte 1 bit 7) and the protocol identifier nibble do not name the LU.
    return (len(a) == len(b) and a[0] & 0x0F == b[0] & 0x0F
            and a[1] & 0x3F == b[1] & 0x3F and a[3:] == b[3:])


def _is_disk(lu: "LogicalUnit") -> bool:
    return lu.device_type == 0x00 and lu.geometry is not None


def _find_lu(manager: "LogicalUnit", designator: bytes) -> "LogicalUnit | None":
    luns = manager.placement.luns
    candidates = list(luns.luns.values()) if luns is not None else [manager]
    for cand in candidates:
        mine = _naa_designator(cand)
        if mine is not None and _same_designator(mine, designator):
            return cand
    return None


def _resolve(manager: "LogicalUnit", plist: CopyList, cscd_id: int, seg_no: int,
             cmd: Command, write: bool) -> "LogicalUnit":
    if cscd_id == CSCD_ID_COPY_MANAGER_LU:
        lu = manager
    else:
        if cscd_id >= len(plist.cscds):
            raise _aborted(S.UNREACHABLE_COPY_TARGET, seg_no)
        cscd = plist.cscds[cscd_id]
        if cscd.nul:
            # Null LUs are obsolete in SPC-4 and not emulated.
            raise _aborted(S.COPY_TARGET_DEVICE_NOT_REACHABLE, seg_no)
        found = _find_lu(manager, cscd.designator)
        if found is None:
            raise _aborted(S.COPY_TARGET_DEVICE_NOT_REACHABLE, seg_no)
        lu = found
        if not _is_disk(lu) or cscd.device_type != 0x00 or cscd.block_length != lu.block_size:
            raise _aborted(S.INCORRECT_COPY_TARGET_DEVICE_TYPE, seg_no)
    if not _is_disk(lu):
        raise _aborted(S.INCORRECT_COPY_TARGET_DEVICE_TYPE, seg_no)
    if lu is not manager:
        # The dispatcher checked readiness and reservations of the manager LU
        # only; the copy acts for the same initiator on the other LU.
        if lu.not_ready_reason() is not None:
            raise _aborted(S.COPY_TARGET_DEVICE_NOT_REACHABLE, seg_no)
        probe = _WRITE_PROBE if write else _READ_PROBE
        if lu.pr.conflicts(cmd.nexus, probe, cmd):
            raise _aborted(S.COPY_TARGET_DEVICE_NOT_REACHABLE, seg_no)
    return lu


def _noop(lu, cmd):  # pragma: no cover - only used as a reservation probe
    return None


_READ_PROBE = OpEntry(OP_EXTENDED_COPY, "copy source read", _noop, 16, conflict=Conflict.READ)
_WRITE_PROBE = OpEntry(OP_EXTENDED_COPY, "copy destination write", _noop, 16, conflict=Conflict.WRITE)


def _copy_bytes(src: "LogicalUnit", src_off: int, dst: "LogicalUnit", dst_off: int,
                length: int, seg_no: int) -> None:
    """Move ``length`` bytes in bounded chunks, safe for overlapping ranges."""
    from volume.store import StoreError
    buf = bytearray(min(length, COPY_CHUNK))
    mv = memoryview(buf)
    # Within one store a forward copy would overwrite source bytes not yet read
    # when the destination starts inside the source range: go backwards then.
    backwards = src.store is dst.store and src_off < dst_off < src_off + length
    done = 0
    while done < length:
        n = min(len(buf), length - done)
        rel = length - done - n if backwards else done
        try:
            src.store.readinto(src_off + rel, mv[:n])
        except StoreError:
            raise _aborted(S.UNRECOVERED_READ_ERROR, seg_no) from None
        try:
            # The destination lock keeps COMPARE AND WRITE style atomic
            # commands on that LU from interleaving with a chunk.
            with dst.lock:
                dst.store.write(dst_off + rel, mv[:n])
        except StoreError:
            raise _aborted(S.WRITE_ERROR, seg_no) from None
        done += n


def _resolve_tape(manager: "LogicalUnit", plist: CopyList, cscd_id: int, seg_no: int,
                  cmd: Command) -> "LogicalUnit":
    """The destination of a block-to-stream segment: a tape LU named by its CSCD."""
    if cscd_id >= len(plist.cscds):
        # FFFFh names the copy manager, which is a disk: never a stream device.
        raise _aborted(S.UNREACHABLE_COPY_TARGET if cscd_id != CSCD_ID_COPY_MANAGER_LU
                       else S.INCORRECT_COPY_TARGET_DEVICE_TYPE, seg_no)
    cscd = plist.cscds[cscd_id]
    if cscd.nul:
        raise _aborted(S.COPY_TARGET_DEVICE_NOT_REACHABLE, seg_no)
    lu = _find_lu(manager, cscd.designator)
    if lu is None:
        raise _aborted(S.COPY_TARGET_DEVICE_NOT_REACHABLE, seg_no)
    # Variable-length records only: STREAM BLOCK LENGTH 0 in the CSCD.
    if lu.device_type != 0x01 or getattr(lu, "drive", None) is None or \
            cscd.device_type != 0x01 or cscd.block_length != 0:
        raise _aborted(S.INCORRECT_COPY_TARGET_DEVICE_TYPE, seg_no)
    if lu.not_ready_reason() is not None:
        raise _aborted(S.COPY_TARGET_DEVICE_NOT_REACHABLE, seg_no)
    if lu.pr.conflicts(cmd.nexus, _WRITE_PROBE, cmd):
        raise _aborted(S.COPY_TARGET_DEVICE_NOT_REACHABLE, seg_no)
    return lu


def _run_stream_segment(manager: "LogicalUnit", plist: CopyList, seg: StreamSegment,
                        seg_no: int, cmd: Command) -> int:
    from tape.errors import TapeError
    from volume.store import StoreError
    src = _resolve(manager, plist, seg.src_id, seg_no, cmd, write=False)
    dst = _resolve_tape(manager, plist, seg.dst_id, seg_no, cmd)
    if dst.write_protected:
        raise S.SenseError(S.SenseKey.DATA_PROTECT, S.WRITE_PROTECTED, command_specific=seg_no)
    tl = seg.transfer_length
    if tl > dst.max_block_length or tl < dst.min_block_length:
        raise _plist_error(S.INVALID_FIELD_IN_PARAMETER_LIST, seg.offset + 9)
    if seg.src_lba + seg.blocks > src.num_blocks:
        raise _aborted(S.NO_ADDITIONAL_SENSE, seg_no)
    length = seg.blocks * src.block_size
    chunk = max(tl, COPY_CHUNK // tl * tl)
    buf = bytearray(min(chunk, length) if length else 0)
    mv = memoryview(buf)
    done = 0
    off = seg.src_lba * src.block_size
    while done < length:
        n = min(len(buf), length - done)
        try:
            src.store.readinto(off + done, mv[:n])
        except StoreError:
            raise _aborted(S.UNRECOVERED_READ_ERROR, seg_no) from None
        records = [mv[k:min(k + tl, n)] for k in range(0, n, tl)]
        try:
            with dst.lock:
                r = dst.drive.write_records(records)
        except TapeError:
            raise _aborted(S.WRITE_ERROR, seg_no) from None
        if r.overflow:
            # End-of-medium: the records written stay; the copy stops here.
            raise _aborted(S.COPY_TARGET_DEVICE_DATA_OVERRUN, seg_no)
        done += n
    return length


def _run_segment(manager: "LogicalUnit", plist: CopyList, seg: Segment, seg_no: int,
                 cmd: Command) -> int:
    if isinstance(seg, StreamSegment):
        return _run_stream_segment(manager, plist, seg, seg_no, cmd)
    src = _resolve(manager, plist, seg.src_id, seg_no, cmd, write=False)
    dst = _resolve(manager, plist, seg.dst_id, seg_no, cmd, write=True)
    if dst.read_only:
        raise S.SenseError(S.SenseKey.DATA_PROTECT, S.WRITE_PROTECTED, command_specific=seg_no)
    length = seg.blocks * (dst.block_size if seg.dc else src.block_size)
    if length % src.block_size or length % dst.block_size:
        # Mixed block sizes that do not divide the segment evenly.
        raise _aborted(S.COPY_TARGET_DEVICE_DATA_UNDERRUN, seg_no)
    if length == 0:
        return 0
    src_blocks = length // src.block_size
    dst_blocks = length // dst.block_size
    if seg.src_lba + src_blocks > src.num_blocks or seg.dst_lba + dst_blocks > dst.num_blocks:
        # The copy target would answer LBA OUT OF RANGE; the copy manager
        # reports the segment as aborted.
        raise _aborted(S.NO_ADDITIONAL_SENSE, seg_no)
    _copy_bytes(src, seg.src_lba * src.block_size, dst, seg.dst_lba * dst.block_size,
                length, seg_no)
    return length


# -- command handlers ----------------------------------------------------------

def _require_cdb(cmd: Command, length: int) -> bytes:
    if len(cmd.cdb) < length:
        raise S.invalid_cdb_field(0)
    return cmd.cdb


@XCOPY.command(OP_EXTENDED_COPY, "EXTENDED COPY(LID1)", 16, direction=Direction.OUT,
               service_action=0x00, conflict=Conflict.WRITE)
def extended_copy(lu: "LogicalUnit", cmd: Command) -> None:
    cdb = _require_cdb(cmd, 16)
    plen = int.from_bytes(cdb[10:14], "big")
    if plen == 0:
        return None     # no parameter list: nothing to do, not an error
    plist = parse_parameter_list(data_out(cmd, plen))
    results = _results(lu)
    key = (cmd.nexus, plist.list_id)
    record = results.begin(key) if plist.usage != USAGE_NO_LIST_ID else CopyRecord()
    try:
        for seg_no, seg in enumerate(plist.segments):
            record.bytes_copied += _run_segment(lu, plist, seg, seg_no, cmd)
            record.segments_processed = seg_no + 1
    except S.SenseError as err:
        record.status = STATUS_FAILED
        if plist.usage == USAGE_HOLD:
            record.sense = S.render_sense(err, descriptor=lu.mode.descriptor_sense)
        raise
    except BaseException:
        record.status = STATUS_FAILED
        raise
    record.status = STATUS_DONE
    return None


def _receive_cdb(cmd: Command) -> tuple[int, int]:
    cdb = _require_cdb(cmd, 16)
    return cdb[2], int.from_bytes(cdb[10:14], "big")


@XCOPY.command(OP_RECEIVE_COPY_RESULTS, "RECEIVE COPY RESULTS(COPY STATUS)", 16,
               direction=Direction.IN, service_action=SA_COPY_STATUS,
               conflict=Conflict.READ, needs_ready=False)
def copy_status(lu: "LogicalUnit", cmd: Command) -> bytes:
    list_id, alloc = _receive_cdb(cmd)
    results = _results(lu)
    key = (cmd.nexus, list_id)
    rec = results.get(key)
    if rec is None or rec.status_taken:
        raise S.invalid_cdb_field(2)
    units, count = LX.encode_transfer_count(rec.bytes_copied)
    data = LX.CopyStatus(status=rec.status & 0x7F,
                         segments_processed=min(rec.segments_processed, 0xFFFF),
                         transfer_count_units=units, transfer_count=count).pack()
    if rec.status != STATUS_IN_PROGRESS:
        # Status of a finished copy is reported once, then discarded.
        rec.status_taken = True
        results.drop_if_spent(key)
    return data[:alloc]


_transfer_count = LX.encode_transfer_count


@XCOPY.command(OP_RECEIVE_COPY_RESULTS, "RECEIVE COPY RESULTS(RECEIVE DATA)", 16,
               direction=Direction.IN, service_action=SA_RECEIVE_DATA,
               conflict=Conflict.READ, needs_ready=False)
def receive_data(lu: "LogicalUnit", cmd: Command) -> bytes:
    list_id, alloc = _receive_cdb(cmd)
    if _results(lu).get((cmd.nexus, list_id)) is None:
        raise S.invalid_cdb_field(2)
    # Block-to-block segments never hold data.
    return LX.ReceiveData().pack()[:alloc]


@XCOPY.command(OP_RECEIVE_COPY_RESULTS, "RECEIVE COPY RESULTS(OPERATING PARAMETERS)", 16,
               direction=Direction.IN, service_action=SA_OPERATING_PARAMETERS,
               conflict=Conflict.READ, needs_ready=False)
def operating_parameters(lu: "LogicalUnit", cmd: Command) -> bytes:
    _, alloc = _receive_cdb(cmd)
    return operating_parameters_data(lu)[:alloc]


def operating_parameters_data(lu: "LogicalUnit") -> bytes:
    head = LX.OperatingParametersHead(
        snlid=False,                        # list identifiers are required
        max_cscd_descriptors=MAX_CSCD_DESCRIPTORS,
        max_segment_descriptors=MAX_SEGMENT_DESCRIPTORS,
        max_descriptor_list_length=MAX_DESCRIPTOR_LIST_LENGTH,
        max_segment_length=MAX_SEGMENT_LENGTH,
        max_inline_data_length=MAX_INLINE_DATA_LENGTH,
        held_data_limit=0,
        max_stream_device_transfer_size=0,
        total_concurrent_copies=MAX_CONCURRENT_COPIES,
        max_concurrent_copies=MAX_CONCURRENT_COPIES,
        data_segment_granularity=_log2(_granularity(lu)),
    )
    codes = bytes([SEG_BLOCK_TO_STREAM, SEG_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION])
    return LX.OperatingParameters(head, codes).pack()


def _granularity(lu: "LogicalUnit") -> int:
    return lu.geometry.block_size if lu.geometry is not None else 1


def _log2(n: int) -> int:
    return max(n, 1).bit_length() - 1


@XCOPY.command(OP_RECEIVE_COPY_RESULTS, "RECEIVE COPY RESULTS(FAILED SEGMENT DETAILS)", 16,
               direction=Direction.IN, service_action=SA_FAILED_SEGMENT_DETAILS,
               conflict=Conflict.READ, needs_ready=False)
def failed_segment_details(lu: "LogicalUnit", cmd: Command) -> bytes:
    list_id, alloc = _receive_cdb(cmd)
    results = _results(lu)
    key = (cmd.nexus, list_id)
    rec = results.get(key)
    if rec is None or rec.sense is None or rec.status == STATUS_IN_PROGRESS:
        return LX.FailedSegmentDetails().pack()[:alloc]     # AVAILABLE DATA = 0: nothing held
    # The EXTENDED COPY that failed ended in CHECK CONDITION.
    data = LX.FailedSegmentDetails(int(Status.CHECK_CONDITION), rec.sense).pack()
    if alloc == 0 or alloc >= len(data):
        # Details are discarded once fully transferred, or on request (alloc 0).
        rec.sense = None
        results.drop_if_spent(key)
    return data[:alloc]


# -- what the LU advertises ---------------------------------------------------------

# The commands a copy manager must answer (SPC-4 6.4, 6.18); 3PC and VPD 8Fh
# follow from their presence in an LU's table.
REQUIRED_COMMANDS = (
    (OP_EXTENDED_COPY, 0x00),
    (OP_RECEIVE_COPY_RESULTS, SA_COPY_STATUS),
    (OP_RECEIVE_COPY_RESULTS, SA_RECEIVE_DATA),
    (OP_RECEIVE_COPY_RESULTS, SA_OPERATING_PARAMETERS),
    (OP_RECEIVE_COPY_RESULTS, SA_FAILED_SEGMENT_DETAILS),
)


def is_copy_manager(table) -> bool:
    return all(table.find(op, sa) is not None for op, sa in REQUIRED_COMMANDS)


# -- VPD page 8Fh ----------------------------------------------------------------

def _tpc_descriptor(dtype: int, body: bytes) -> bytes:
    body += bytes(-(len(body) + 4) % 4)     # descriptors are multiples of 4 bytes
    return struct.pack(">HH", dtype, len(body)) + body


def third_party_copy_vpd(lu: "LogicalUnit") -> bytes:
    """The Third-party Copy VPD page (8Fh) describing this copy manager."""
    commands = [
        (OP_EXTENDED_COPY, [0x00]),
        (OP_RECEIVE_COPY_RESULTS, [SA_COPY_STATUS, SA_RECEIVE_DATA,
                                   SA_OPERATING_PARAMETERS, SA_FAILED_SEGMENT_DETAILS]),
    ]
    cmd_list = b"".join(bytes([op, len(sas)]) + bytes(sas) for op, sas in commands)
    supported_commands = _tpc_descriptor(0x0008, bytes([len(cmd_list)]) + cmd_list)
    parameter_data = _tpc_descriptor(0x000C, struct.pack(
        ">4xHHII12x", MAX_CSCD_DESCRIPTORS, MAX_SEGMENT_DESCRIPTORS,
        MAX_DESCRIPTOR_LIST_LENGTH, MAX_INLINE_DATA_LENGTH))
    codes = bytes([SEG_BLOCK_TO_STREAM, SEG_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION])
    supported_descriptors = _tpc_descriptor(0x000D, bytes([len(codes)]) + codes)
    ids = struct.pack(">H", CSCD_ID_COPY_MANAGER_LU)
    supported_ids = _tpc_descriptor(0x000E, struct.pack(">H", len(ids)) + ids)
    general = _tpc_descriptor(0x8001, struct.pack(
        ">IIIBB18x", MAX_CONCURRENT_COPIES, MAX_CONCURRENT_COPIES, MAX_SEGMENT_LENGTH,
        _log2(_granularity(lu)), 0))
    body = supported_commands + parameter_data + supported_descriptors + supported_ids + general
    return bytes([lu.device_type & 0x1F, 0x8F]) + struct.pack(">H", len(body)) + body
