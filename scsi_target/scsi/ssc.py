"""SSC-4 stream commands for tape LUs (command set ``SSC``).

Stacked after SPC; the entries for INQUIRY, REQUEST SENSE and MODE SENSE/
SELECT replace SPC's because a sequential-access device reports a density
block descriptor, its own VPD page B0h and keeps the stream bits (FILEMARK,
EOM, ILI, INFORMATION) of the last sense.  Every handler reaches the medium
through ``lu.drive`` (tape.drive) and turns tape conditions into sense with
``tape_sense`` -- the one mapping.

Reads and writes that stop part way (filemark, end-of-data, early warning,
incorrect length) answer CHECK CONDITION *with* the data that was moved, as
SSC-4 requires; :func:`_partial` builds those responses.
"""
from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from tape import errors as TE
from tape import mam
from tape.drive import Slot
from volume.buffers import READ_BUFFERS

from . import inquiry, spc, vpd
from . import sense as S
from . import ssc_pages as P
from .command import Command, Direction, Response, Status
from .dispatch import CommandSet, Conflict, data_out
from .layouts import mode as LM, tape as LT
from .modepages import PC_SAVED
from .tape_lu import MAX_TRANSFER, PAGE_MEDIUM_PARTITION, early_warning, tape_sense

if TYPE_CHECKING:  # pragma: no cover
    from .tape_lu import TapeLU

SSC = CommandSet("SSC")

OP_REWIND = 0x01
OP_READ_BLOCK_LIMITS = 0x05
OP_READ6 = 0x08
OP_WRITE6 = 0x0A
OP_WRITE_FILEMARKS6 = 0x10
OP_SPACE6 = 0x11
OP_ERASE6 = 0x19
OP_LOAD_UNLOAD = 0x1B
OP_LOCATE10 = 0x2B
OP_READ_POSITION = 0x34
OP_REPORT_DENSITY_SUPPORT = 0x44
OP_LOG_SENSE = 0x4D
OP_READ_ATTRIBUTE = 0x8C
OP_WRITE_ATTRIBUTE = 0x8D
OP_SPACE16 = 0x91
OP_LOCATE16 = 0x92

SPACE_BLOCKS, SPACE_FILEMARKS, SPACE_EOD = 0, 1, 3


def _cmd(opcode: int, name: str, usage: bytes, direction: Direction = Direction.NONE, *,
         conflict: Conflict = Conflict.OTHER, ua_exempt: bool = False, needs_ready: bool = True):
    register = SSC.command(opcode, name, len(usage), direction=direction, usage=usage,
                           ua_exempt=ua_exempt, conflict=conflict, needs_ready=needs_ready)
    size = len(usage)

    def wrap(fn):
        # A CDB shorter than its opcode's size (in-process callers) is malformed,
        # not an internal error.
        def handler(lu, cmd):
            if len(cmd.cdb) < size:
                raise S.invalid_cdb_field(0)
            return fn(lu, cmd)
        handler.__name__ = handler.__qualname__ = fn.__name__
        handler.__doc__ = fn.__doc__
        register(handler)
        return fn
    return wrap


def _signed24(b: bytes) -> int:
    v = int.from_bytes(b, "big")
    return v - (1 << 24) if v & 0x800000 else v


def _signed64(b: bytes) -> int:
    v = int.from_bytes(b, "big")
    return v - (1 << 64) if v & (1 << 63) else v


def _partial(lu: "TapeLU", cmd: Command, err: S.SenseError, data=b"") -> Response:
    """CHECK CONDITION that still transfers ``data`` (SSC-4: blocks before the stop)."""
    # Delivered with the status (autosense): nothing is kept for REQUEST SENSE,
    # as for every other CHECK CONDITION (LogicalUnit._check_condition).
    sense = S.render_sense(err, descriptor=lu.mode.descriptor_sense)
    release = partial(READ_BUFFERS.put, data) if READ_BUFFERS.pooled(data) else None
    edtl = cmd.expected_length
    if edtl is None:
        return Response(Status.CHECK_CONDITION, data, sense, 0, release)
    if cmd.needed is not None:  # a write: the data-out the CDB asked for was taken
        return Response(Status.CHECK_CONDITION, b"", sense, edtl - cmd.needed, release)
    if len(data) > edtl:
        data = memoryview(data)[:edtl]
    return Response(Status.CHECK_CONDITION, data, sense, edtl - len(data), release)


def _condition(lu: "TapeLU", exc: TE.TapeError, *, writing: bool = False) -> S.SenseError:
    """Tape condition -> sense, noting the TapeAlert flags SSC-4 Annex A ties to it."""
    if isinstance(exc, TE.WriteProtected):
        lu.tape_alerts.add(P.TA_WRITE_PROTECT)
    elif isinstance(exc, TE.RecordCorrupt):
        lu.tape_alerts.add(P.TA_READ_FAILURE)
    elif isinstance(exc, TE.TapeIOError):
        lu.tape_alerts.add(P.TA_WRITE_FAILURE if writing else P.TA_READ_FAILURE)
    return tape_sense(exc, writing=writing)


def _check_writable(lu: "TapeLU") -> None:
    if lu.write_protected:
        raise _condition(lu, TE.WriteProtected())


# ---------------------------------------------------------------------------
# INQUIRY / REQUEST SENSE (SSC flavours of the SPC commands)
# ---------------------------------------------------------------------------
_TAPE_VPD = (vpd.PAGE_SUPPORTED, vpd.PAGE_SERIAL, vpd.PAGE_DEVICE_ID, P.PAGE_SEQ_CAPABILITIES)


@_cmd(spc.OP_INQUIRY, "INQUIRY", bytes([0x12, 0x01, 0xFF, 0xFF, 0xFF, 0]), Direction.IN,
      conflict=Conflict.ALLOWED, ua_exempt=True, needs_ready=False)
def inquiry_cmd(lu: "TapeLU", cmd: Command) -> bytes:
    cdb = cmd.cdb
    if cdb[1] & 0xFE:
        raise S.invalid_cdb_field(1, 1 if cdb[1] & 0x02 else None)
    page = cdb[2]
    alloc = int.from_bytes(cdb[3:5], "big")
    if not cdb[1] & 0x01:
        if page:
            raise S.invalid_cdb_field(2)
        data = bytearray(inquiry.standard_data(lu))
        data[5] &= ~0x08  # TPC: EXTENDED COPY is not in the tape command set
        return bytes(data[:alloc])
    if page not in _TAPE_VPD:
        raise S.invalid_cdb_field(2)
    if page == vpd.PAGE_SUPPORTED:
        data = bytes([lu.device_type, 0, 0, len(_TAPE_VPD)]) + bytes(_TAPE_VPD)
    elif page == P.PAGE_SEQ_CAPABILITIES:
        data = P.sequential_capabilities(lu)
    else:
        data = vpd.build(lu, page, cmd.nexus) or b""
    return data[:alloc]


@_cmd(spc.OP_REQUEST_SENSE, "REQUEST SENSE", bytes([0x03, 0x01, 0, 0, 0xFF, 0]), Direction.IN,
      conflict=Conflict.ALLOWED, ua_exempt=True, needs_ready=False)
def request_sense(lu: "TapeLU", cmd: Command) -> bytes:
    desc = bool(cmd.cdb[1] & 0x01)
    alloc = cmd.cdb[4]
    asc = lu.ua.pop(cmd.nexus)
    if asc is not None:
        data = S.render_sense(S.unit_attention(asc), descriptor=desc)
    elif (reason := lu.not_ready_reason()) is not None:
        data = S.render_sense(reason, descriptor=desc)
    else:
        data = S.render_sense(S.SenseError(S.SenseKey.NO_SENSE, S.NO_ADDITIONAL_SENSE),
                              descriptor=desc)
    return data[:alloc]


# ---------------------------------------------------------------------------
# MODE SENSE / MODE SELECT with the sequential-access block descriptor
# ---------------------------------------------------------------------------
def _device_specific(lu: "TapeLU") -> int:
    # WP, BUFFERED MODE (001b: a write is answered once the image file has it;
    # 000b: once it is on stable storage), SPEED 0.
    return (0x80 if lu.write_protected else 0) | (0x10 if lu.buffered else 0)


def _page_bytes(lu: "TapeLU", key: tuple[int, int], pc: int) -> bytes:
    data = lu.mode.page_bytes(key, pc)
    if key == (PAGE_MEDIUM_PARTITION, 0) and pc != 1 and lu.image is not None:
        b = bytearray(data)
        b[4] |= 0x10                                   # PSUM 10b: sizes in MB
        b[8:10] = min(lu.image.capacity // 1_000_000, 0xFFFF).to_bytes(2, "big")
        data = bytes(b)
    return data


def _mode_sense(lu: "TapeLU", cmd: Command, ten: bool) -> bytes:
    cdb = cmd.cdb
    dbd = bool(cdb[1] & 0x08)
    pc = cdb[2] >> 6
    code = cdb[2] & 0x3F
    subpage = cdb[3]
    alloc = int.from_bytes(cdb[7:9], "big") if ten else cdb[4]
    if pc == PC_SAVED:
        raise S.illegal_request(S.SAVING_PARAMETERS_NOT_SUPPORTED, 2, 7)
    if code == 0 and subpage == 0:
        # Page 0 (no page format): header and block descriptor only -- what the
        # Linux st driver asks for when it opens the device.
        keys = []
    else:
        keys = lu.mode.pages(code, subpage)
        if not keys:
            known = lu.mode.pages(code, 0xFF) if code != 0x3F else [1]
            raise S.invalid_cdb_field(3 if known else 2)
    pages = b"".join(_page_bytes(lu, k, pc) for k in keys)
    bd = b"" if dbd else LM.GeneralBlockDescriptor(
        lu.density_code if lu.image is not None else 0, 0,
        lu.block_length if pc != 1 else 0xFFFFFF).pack()
    dsp = _device_specific(lu)
    if ten:
        head = LM.ModeHeader10(6 + len(bd) + len(pages), 0, dsp, False, len(bd)).pack()
    else:
        if 4 + len(bd) + len(pages) > 256:
            raise S.invalid_cdb_field(2)
        head = LM.ModeHeader6(3 + len(bd) + len(pages), 0, dsp, len(bd)).pack()
    return (head + bd + pages)[:alloc]


def _mode_select(lu: "TapeLU", cmd: Command, ten: bool) -> None:
    cdb = cmd.cdb
    if cdb[1] & 0x01:  # SP: nothing can be saved
        raise S.invalid_cdb_field(1, 0)
    length = int.from_bytes(cdb[7:9], "big") if ten else cdb[4]
    if length == 0:
        return
    data = bytes(data_out(cmd, length))
    hdr = 8 if ten else 4
    if len(data) < hdr:
        raise S.illegal_request(S.PARAMETER_LIST_LENGTH_ERROR)
    if ten and data[4] & 0x01:
        raise S.invalid_param_field(4, 0)  # LONGLBA: direct-access devices only
    bd_len = int.from_bytes(data[6:8], "big") if ten else data[3]
    dsp = data[3] if ten else data[2]
    if (dsp >> 4) & 0x07 > 1:  # BUFFERED MODE 000b or 001b
        raise S.invalid_param_field(hdr - 2 if not ten else 3, 4)
    buffered = bool((dsp >> 4) & 0x07)
    new_len, new_density = lu.block_length, lu.density_code
    if bd_len:
        if bd_len != 8 or hdr + 8 > len(data):
            raise S.invalid_param_field(3 if not ten else 6)  # BLOCK DESCRIPTOR LENGTH
        bd = LM.GeneralBlockDescriptor.unpack(data, hdr)
        if bd.density_code not in (0, 0x7F, lu.density_code):
            raise S.invalid_param_field(hdr)
        if bd.block_length and not lu.min_block_length <= bd.block_length <= lu.max_block_length:
            raise S.invalid_param_field(hdr + 5)
        new_len = bd.block_length
    with lu.lock:
        # Pages first: ModePages validates the whole list before changing anything.
        lu.mode.select(data, long_header=ten, nexus=cmd.nexus)
        lu.buffered = buffered
        if (new_len, new_density) != (lu.block_length, lu.density_code):
            lu.block_length, lu.density_code = new_len, new_density
            lu.ua.establish(S.MODE_PARAMETERS_CHANGED, exclude=cmd.nexus)


@_cmd(spc.OP_MODE_SENSE6, "MODE SENSE(6)", bytes([0x1A, 0x08, 0xFF, 0xFF, 0xFF, 0]),
      Direction.IN, conflict=Conflict.READ, needs_ready=False)
def mode_sense6(lu: "TapeLU", cmd: Command) -> bytes:
    return _mode_sense(lu, cmd, ten=False)


@_cmd(spc.OP_MODE_SENSE10, "MODE SENSE(10)",
      bytes([0x5A, 0x08, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0]), Direction.IN,
      conflict=Conflict.READ, needs_ready=False)
def mode_sense10(lu: "TapeLU", cmd: Command) -> bytes:
    return _mode_sense(lu, cmd, ten=True)


@_cmd(spc.OP_MODE_SELECT6, "MODE SELECT(6)", bytes([0x15, 0x11, 0, 0, 0xFF, 0]), Direction.OUT,
      needs_ready=False)
def mode_select6(lu: "TapeLU", cmd: Command) -> None:
    _mode_select(lu, cmd, ten=False)


@_cmd(spc.OP_MODE_SELECT10, "MODE SELECT(10)",
      bytes([0x55, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0]), Direction.OUT, needs_ready=False)
def mode_select10(lu: "TapeLU", cmd: Command) -> None:
    _mode_select(lu, cmd, ten=True)


# ---------------------------------------------------------------------------
# READ BLOCK LIMITS / REPORT DENSITY SUPPORT
# ---------------------------------------------------------------------------
@_cmd(OP_READ_BLOCK_LIMITS, "READ BLOCK LIMITS", bytes([0x05, 0x01, 0, 0, 0, 0]), Direction.IN,
      conflict=Conflict.ALLOWED, needs_ready=False)
def read_block_limits(lu: "TapeLU", cmd: Command) -> bytes:
    if cmd.cdb[1] & 0x01:  # MLOI: logical object numbers are 64 bits
        return LT.MaximumLogicalObjectId((1 << 64) - 1).pack()
    return LT.BlockLimitsData(0, lu.max_block_length, lu.min_block_length).pack()


@_cmd(OP_REPORT_DENSITY_SUPPORT, "REPORT DENSITY SUPPORT",
      bytes([0x44, 0x01, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0]), Direction.IN,
      conflict=Conflict.ALLOWED, needs_ready=False)
def report_density_support(lu: "TapeLU", cmd: Command) -> bytes:
    cdb = cmd.cdb
    if cdb[1] & 0x02:  # MEDIUM TYPE: medium type descriptors are not reported
        raise S.invalid_cdb_field(1, 1)
    media = bool(cdb[1] & 0x01)
    if media and (reason := lu.not_ready_reason()) is not None:
        raise reason
    alloc = int.from_bytes(cdb[7:9], "big")
    return LT.density_support(P.density_descriptors(lu, media))[:alloc]


# ---------------------------------------------------------------------------
# READ(6) / WRITE(6)
# ---------------------------------------------------------------------------
def _transfer(lu: "TapeLU", cdb: bytes) -> tuple[bool, int, int]:
    """(fixed, count, bytes) of READ(6)/WRITE(6), checked against the mode and limits."""
    fixed = bool(cdb[1] & 0x01)
    n = int.from_bytes(cdb[2:5], "big")
    if fixed:
        if lu.block_length == 0:
            raise S.invalid_cdb_field(1, 0)  # FIXED with variable-block mode
        nbytes = n * lu.block_length
        if nbytes > MAX_TRANSFER:
            raise S.invalid_cdb_field(2)
        return True, n, nbytes
    if n > lu.max_block_length or (n and n < lu.min_block_length):
        raise S.invalid_cdb_field(2)
    return False, n, n


@_cmd(OP_READ6, "READ(6)", bytes([0x08, 0x03, 0xFF, 0xFF, 0xFF, 0]), Direction.IN,
      conflict=Conflict.READ)
def read6(lu: "TapeLU", cmd: Command):
    cdb = cmd.cdb
    if cdb[1] & 0xFC:
        raise S.invalid_cdb_field(1)
    sili = bool(cdb[1] & 0x02)
    if sili and cdb[1] & 0x01:
        raise S.invalid_cdb_field(1, 1)  # SILI with FIXED
    fixed, n, _ = _transfer(lu, cdb)
    if n == 0:
        return None
    with lu.lock:
        try:
            r = lu.drive.read(n, lu.block_length if fixed else None, READ_BUFFERS.get)
        except TE.TapeError as e:
            raise _condition(lu, e) from None
    if r.stop is not None:
        return _partial(lu, cmd, _condition(lu, r.stop), r.data)
    if fixed:
        if r.wrong_length is not None:
            return _partial(lu, cmd, S.SenseError(S.SenseKey.NO_SENSE, S.NO_ADDITIONAL_SENSE,
                                                  information=n - r.records, ili=True), r.data)
        return r.data
    actual = len(r.data)
    if actual == n:
        return r.data
    data = r.data if actual < n else r.data[:n]
    # SSC-4 READ(6): with SILI an underlength record is no error, and neither is
    # an overlength one while the mode block length is 0.
    if sili and (actual < n or lu.block_length == 0):
        return data
    return _partial(lu, cmd, S.SenseError(S.SenseKey.NO_SENSE, S.NO_ADDITIONAL_SENSE,
                                          information=n - actual, ili=True), data)


@_cmd(OP_WRITE6, "WRITE(6)", bytes([0x0A, 0x01, 0xFF, 0xFF, 0xFF, 0]), Direction.OUT,
      conflict=Conflict.WRITE)
def write6(lu: "TapeLU", cmd: Command):
    cdb = cmd.cdb
    if cdb[1] & 0xFE:
        raise S.invalid_cdb_field(1)
    fixed, n, nbytes = _transfer(lu, cdb)
    _check_writable(lu)
    if n == 0:
        return None
    data = data_out(cmd, nbytes)
    if fixed:
        bl = lu.block_length
        records = [data[k:k + bl] for k in range(0, nbytes, bl)]
    else:
        records = [data]
    with lu.lock:
        try:
            r = lu.drive.write_records(records)
        except TE.TapeError as e:
            raise _condition(lu, e, writing=True) from None
    if r.overflow:
        # SSC-4 4.2.5: nothing past end-of-medium; INFORMATION is what was not written.
        residue = n - r.objects if fixed else n
        raise tape_sense(TE.VolumeOverflow(residue))
    if r.early_warning:
        return _partial(lu, cmd, early_warning())
    return None


# ---------------------------------------------------------------------------
# WRITE FILEMARKS / ERASE
# ---------------------------------------------------------------------------
@_cmd(OP_WRITE_FILEMARKS6, "WRITE FILEMARKS(6)", bytes([0x10, 0x0D, 0xFF, 0xFF, 0xFF, 0]),
      conflict=Conflict.WRITE)
def write_filemarks6(lu: "TapeLU", cmd: Command):
    cdb = cmd.cdb
    if cdb[1] & 0x02:  # WMSK: setmarks are not supported
        raise S.invalid_cdb_field(1, 1)
    if cdb[1] & 0xF0:
        raise S.invalid_cdb_field(1)
    immed = bool(cdb[1] & 0x01)
    n = int.from_bytes(cdb[2:5], "big")
    with lu.lock:
        if n == 0:
            # A count of zero only flushes (SSC-4 7.11); nothing is written.
            if not immed and lu.image is not None:
                try:
                    lu.image.sync()
                except TE.TapeError as e:
                    raise _condition(lu, e, writing=True) from None
            return None
        _check_writable(lu)
        try:
            r = lu.drive.write_filemarks(n, sync=not immed)
        except TE.TapeError as e:
            raise _condition(lu, e, writing=True) from None
    if r.overflow:
        raise tape_sense(TE.VolumeOverflow(n - r.objects))
    if r.early_warning:
        raise early_warning()
    return None


@_cmd(OP_ERASE6, "ERASE(6)", bytes([0x19, 0x03, 0, 0, 0, 0]), conflict=Conflict.WRITE)
def erase6(lu: "TapeLU", cmd: Command) -> None:
    if cmd.cdb[1] & 0xFC:
        raise S.invalid_cdb_field(1)
    # Short and long erase both leave end-of-data at the position: on this medium
    # there is no erase gap to write and nothing past EOD can be read.
    _check_writable(lu)
    with lu.lock:
        try:
            lu.drive.erase()
        except TE.TapeError as e:
            raise _condition(lu, e, writing=True) from None


# ---------------------------------------------------------------------------
# Positioning: REWIND, SPACE(6/16), LOCATE(10/16), READ POSITION
# ---------------------------------------------------------------------------
def _move(lu: "TapeLU", fn, *args) -> None:
    with lu.lock:
        try:
            fn(*args)
        except TE.TapeError as e:
            raise _condition(lu, e) from None


@_cmd(OP_REWIND, "REWIND", bytes([0x01, 0x01, 0, 0, 0, 0]), conflict=Conflict.READ)
def rewind(lu: "TapeLU", cmd: Command) -> None:
    if cmd.cdb[1] & 0xFE:
        raise S.invalid_cdb_field(1)
    _move(lu, lu.drive.rewind)


def _space(lu: "TapeLU", code: int, count: int) -> None:
    drive = lu.drive
    if code == SPACE_BLOCKS:
        _move(lu, drive.space_blocks, count)
    elif code == SPACE_FILEMARKS:
        _move(lu, drive.space_filemarks, count)
    elif code == SPACE_EOD:
        _move(lu, drive.space_eod)
    else:  # sequential filemarks, setmarks: not supported
        raise S.invalid_cdb_field(1, 3)


@_cmd(OP_SPACE6, "SPACE(6)", bytes([0x11, 0x0F, 0xFF, 0xFF, 0xFF, 0]), conflict=Conflict.READ)
def space6(lu: "TapeLU", cmd: Command) -> None:
    cdb = cmd.cdb
    if cdb[1] & 0xF0:
        raise S.invalid_cdb_field(1)
    _space(lu, cdb[1] & 0x0F, _signed24(cdb[2:5]))


@_cmd(OP_SPACE16, "SPACE(16)", bytes([0x91, 0x0F, 0, 0] + [0xFF] * 8 + [0xFF, 0xFF, 0, 0]),
      conflict=Conflict.READ)
def space16(lu: "TapeLU", cmd: Command) -> None:
    cdb = cmd.cdb
    if cdb[1] & 0xF0:
        raise S.invalid_cdb_field(1)
    if int.from_bytes(cdb[12:14], "big"):
        raise S.invalid_cdb_field(12)  # PARAMETER LENGTH: no positioning parameter list
    _space(lu, cdb[1] & 0x0F, _signed64(cdb[4:12]))


def _check_partition(cdb: bytes, cp: bool, field: int) -> None:
    if cp and cdb[field] != 0:
        raise S.invalid_cdb_field(field)  # one partition: only partition 0 exists


@_cmd(OP_LOCATE10, "LOCATE(10)", bytes([0x2B, 0x07, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0]),
      conflict=Conflict.READ)
def locate10(lu: "TapeLU", cmd: Command) -> None:
    cdb = cmd.cdb
    if cdb[1] & 0xF8:
        raise S.invalid_cdb_field(1)
    _check_partition(cdb, bool(cdb[1] & 0x02), 8)
    # BT=1 asks for device-specific block addresses; ours are the logical object numbers.
    _move(lu, lu.drive.locate, int.from_bytes(cdb[3:7], "big"))


@_cmd(OP_LOCATE16, "LOCATE(16)",
      bytes([0x92, 0x1B, 0x01, 0xFF] + [0xFF] * 8 + [0, 0, 0, 0]), conflict=Conflict.READ)
def locate16(lu: "TapeLU", cmd: Command) -> None:
    cdb = cmd.cdb
    if cdb[1] & 0xE4:
        raise S.invalid_cdb_field(1)
    _check_partition(cdb, bool(cdb[1] & 0x02), 3)
    dest = (cdb[1] >> 3) & 0x03
    target = int.from_bytes(cdb[4:12], "big")
    if dest == 0:
        _move(lu, lu.drive.locate, target)
    elif dest == 1:
        _move(lu, lu.drive.locate_file, target)
    elif dest == 3:
        _move(lu, lu.drive.space_eod)
    else:
        raise S.invalid_cdb_field(1, 4)


@_cmd(OP_READ_POSITION, "READ POSITION", bytes([0x34, 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0]),
      Direction.IN, conflict=Conflict.READ)
def read_position(lu: "TapeLU", cmd: Command) -> bytes:
    cdb = cmd.cdb
    sa = cdb[1] & 0x1F
    alloc = int.from_bytes(cdb[7:9], "big")
    drive = lu.drive
    with lu.lock:
        pos = drive.pos
        bop, eop = drive.at_bop, drive.in_early_warning
        if sa in (LT.RP_SHORT, LT.RP_SHORT_VENDOR):
            big = pos > 0xFFFFFFFF
            data = LT.ReadPositionShort(bop=bop, eop=eop, perr=big,
                                        first_location=pos & 0xFFFFFFFF,
                                        last_location=pos & 0xFFFFFFFF).pack()
        elif sa == LT.RP_LONG:
            data = LT.ReadPositionLong(bop=bop, eop=eop, logical_object=pos,
                                       logical_file=drive.file_number).pack()
        elif sa == LT.RP_EXTENDED:
            return LT.ReadPositionExtended(bop=bop, eop=eop, first_location=pos,
                                           last_location=pos).pack()[:alloc]
        else:
            raise S.invalid_cdb_field(1, 4)
    # The short and long forms have a fixed size; an allocation length of 0 asks for all of it.
    return data[:alloc] if alloc else data


# ---------------------------------------------------------------------------
# LOAD UNLOAD
# ---------------------------------------------------------------------------
@_cmd(OP_LOAD_UNLOAD, "LOAD UNLOAD", bytes([0x1B, 0x01, 0, 0, 0x0F, 0]), needs_ready=False)
def load_unload(lu: "TapeLU", cmd: Command) -> None:
    cdb = cmd.cdb
    if cdb[1] & 0xFE:
        raise S.invalid_cdb_field(1)
    b4 = cdb[4]
    if b4 & 0xF0:
        raise S.invalid_cdb_field(4)
    load, eot, hold = bool(b4 & 0x01), bool(b4 & 0x04), bool(b4 & 0x08)
    drive = lu.drive
    with lu.lock:
        if load:
            if eot:
                raise S.invalid_cdb_field(4, 2)  # EOT only with LOAD=0
            if drive.image is None or drive.slot == Slot.EMPTY:
                raise S.not_ready(S.MEDIUM_NOT_PRESENT)
            changed = drive.slot == Slot.EJECTED
            try:
                drive.load()
            except TE.TapeError as e:
                raise _condition(lu, e) from None
            if changed:
                # The cartridge came back from the mouth: it may be another one.
                lu.ua.establish(S.NOT_READY_TO_READY_CHANGE, exclude=cmd.nexus)
            return
        if drive.slot in (Slot.EMPTY, Slot.EJECTED):
            raise S.not_ready(S.MEDIUM_NOT_PRESENT)
        if not hold and lu.prevent:
            raise S.illegal_request(S.MEDIUM_REMOVAL_PREVENTED)
        if drive.slot == Slot.HELD:
            if not hold:
                drive.slot = Slot.EJECTED
            return
        try:
            drive.unload(hold=hold)
        except TE.TapeError as e:
            raise _condition(lu, e) from None


# ---------------------------------------------------------------------------
# LOG SENSE
# ---------------------------------------------------------------------------
@_cmd(OP_LOG_SENSE, "LOG SENSE", bytes([0x4D, 0x00, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0]),
      Direction.IN, conflict=Conflict.ALLOWED, needs_ready=False)
def log_sense(lu: "TapeLU", cmd: Command) -> bytes:
    cdb = cmd.cdb
    if cdb[1] & 0x01:
        raise S.invalid_cdb_field(1, 0)  # SP: log parameters are not saved
    if cdb[1] & 0x02:
        raise S.invalid_cdb_field(1, 1)  # PPC (obsolete)
    code = cdb[2] & 0x3F
    subpage = cdb[3]
    pointer = int.from_bytes(cdb[5:7], "big")
    alloc = int.from_bytes(cdb[7:9], "big")
    with lu.lock:
        page = P.log_page(lu, code, subpage)
    if page is None:
        raise S.invalid_cdb_field(3 if code in P.LOG_PAGES else 2)
    if pointer and code != P.LOG_SUPPORTED:
        page = _from_pointer(page, pointer)
    return page[:alloc]


def _from_pointer(page: bytes, pointer: int) -> bytes:
    """Only the parameters whose code is at least PARAMETER POINTER (SPC-4 6.7)."""
    pos, keep = 4, bytearray()
    while pos + 4 <= len(page):
        n = page[pos + 3]
        if int.from_bytes(page[pos:pos + 2], "big") >= pointer:
            keep += page[pos:pos + 4 + n]
        pos += 4 + n
    return page[:2] + len(keep).to_bytes(2, "big") + bytes(keep)


# ---------------------------------------------------------------------------
# READ ATTRIBUTE / WRITE ATTRIBUTE (medium auxiliary memory)
# ---------------------------------------------------------------------------
def _check_volume(cdb: bytes) -> None:
    if cdb[5]:
        raise S.invalid_cdb_field(5)  # LOGICAL VOLUME NUMBER: one volume
    if cdb[7]:
        raise S.invalid_cdb_field(7)  # PARTITION NUMBER: one partition


@_cmd(OP_READ_ATTRIBUTE, "READ ATTRIBUTE",
      bytes([0x8C, 0x1F, 0, 0, 0, 0xFF, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0]),
      Direction.IN, conflict=Conflict.READ)
def read_attribute(lu: "TapeLU", cmd: Command) -> bytes:
    cdb = cmd.cdb
    sa = cdb[1] & 0x1F
    _check_volume(cdb)
    first = int.from_bytes(cdb[8:10], "big")
    alloc = int.from_bytes(cdb[10:14], "big")
    with lu.lock:
        attrs = [a for a in P.all_attributes(lu) if a.id >= first]
    if sa == LT.RA_VALUES:
        data = LT.attribute_values([LT.MamAttribute(a.id, a.format, a.value, a.read_only)
                                    for a in attrs])
    elif sa == LT.RA_LIST:
        data = LT.attribute_list([a.id for a in attrs])
    elif sa == LT.RA_SUPPORTED:
        data = LT.attribute_list([i for i in sorted(mam.KNOWN) if i >= first])
    elif sa in (LT.RA_VOLUME_LIST, LT.RA_PARTITION_LIST):
        data = bytes([0, 2, 0, 1])  # first number 0, one volume / one partition
    else:
        raise S.invalid_cdb_field(1, 4)
    return data[:alloc]


@_cmd(OP_WRITE_ATTRIBUTE, "WRITE ATTRIBUTE",
      bytes([0x8D, 0x01, 0, 0, 0, 0xFF, 0, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0]),
      Direction.OUT, conflict=Conflict.WRITE)
def write_attribute(lu: "TapeLU", cmd: Command) -> None:
    cdb = cmd.cdb
    if cdb[1] & 0xFE:
        raise S.invalid_cdb_field(1)
    _check_volume(cdb)
    length = int.from_bytes(cdb[10:14], "big")
    if length == 0:
        return
    if length < 4:
        raise S.illegal_request(S.PARAMETER_LIST_LENGTH_ERROR)
    if length > 4 + (64 << 10):
        raise S.invalid_cdb_field(10)
    data = bytes(data_out(cmd, length))
    if int.from_bytes(data[:4], "big") != length - 4:
        raise S.invalid_param_field(0)
    changes: list[mam.Attribute] = []
    pos = 4
    while pos < length:
        if pos + 5 > length:
            raise S.illegal_request(S.PARAMETER_LIST_LENGTH_ERROR)
        aid = int.from_bytes(data[pos:pos + 2], "big")
        fmt = data[pos + 2]
        n = int.from_bytes(data[pos + 3:pos + 5], "big")
        if pos + 5 + n > length:
            raise S.illegal_request(S.PARAMETER_LIST_LENGTH_ERROR)
        attr = mam.Attribute(aid, fmt & 0x03, data[pos + 5:pos + 5 + n])
        try:
            mam.check_write(attr)
        except TE.MamError:
            raise S.invalid_param_field(pos) from None
        changes.append(attr)
        pos += 5 + n
    _check_writable(lu)
    with lu.lock:
        img = lu.image
        if img is None:  # pragma: no cover - needs_ready refuses this earlier
            raise S.not_ready(S.MEDIUM_NOT_PRESENT)
        try:
            img.set_attributes(changes)
        except TE.MamError:
            raise S.invalid_param_field(4) from None
        except TE.TapeError as e:
            raise _condition(lu, e, writing=True) from None
