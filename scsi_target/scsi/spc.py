"""SPC-4 primary commands: the command set every logical unit type stacks first.

Handlers decode the CDB, call the state objects the LU owns (mode pages,
reservations, unit attentions) and return data-in bytes; errors are raised as
SenseError.  Each entry's ``usage`` is the exact CDB usage map reported by
REPORT SUPPORTED OPERATION CODES.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from .command import Command, Direction, Response, Status
from .dispatch import CommandSet, Conflict, OpEntry, data_out
from . import inquiry, vpd
from . import sense as S
from .layouts import mode as LM, pr as LP, rsoc as LR
from .layouts.luns import ReportLuns
from .modepages import PC_SAVED
from .reservations import PrType, ReservationConflict

if TYPE_CHECKING:  # pragma: no cover
    from .lun import LogicalUnit

SPC = CommandSet("spc")

OP_TEST_UNIT_READY = 0x00
OP_REQUEST_SENSE = 0x03
OP_INQUIRY = 0x12
OP_MODE_SELECT6 = 0x15
OP_RESERVE6 = 0x16
OP_RELEASE6 = 0x17
OP_MODE_SENSE6 = 0x1A
OP_START_STOP_UNIT = 0x1B
OP_PREVENT_ALLOW = 0x1E
OP_MODE_SELECT10 = 0x55
OP_RESERVE10 = 0x56
OP_RELEASE10 = 0x57
OP_MODE_SENSE10 = 0x5A
OP_PR_IN = 0x5E
OP_PR_OUT = 0x5F
OP_SEND_DIAGNOSTIC = 0x1D
OP_REPORT_LUNS = 0xA0
OP_MAINTENANCE_IN = 0xA3
SA_REPORT_SUPPORTED_OPCODES = 0x0C

# Timeouts reported with RCTD (seconds): nothing here takes long.
NOMINAL_TIMEOUT = 0
RECOMMENDED_TIMEOUT = 30


def _cmd(opcode: int, name: str, usage: bytes, direction: Direction = Direction.NONE, *,
         sa: int | None = None, conflict: Conflict = Conflict.OTHER, ua_exempt: bool = False,
         needs_ready: bool = False):
    if sa is not None:
        usage = bytes([usage[0], (usage[1] & 0xE0) | sa]) + usage[2:]
    return SPC.command(opcode, name, len(usage), direction=direction, service_action=sa,
                       usage=usage, ua_exempt=ua_exempt, conflict=conflict,
                       needs_ready=needs_ready)


def _conflict_response(cmd: Command) -> Response:
    return Response(Status.RESERVATION_CONFLICT, residual=cmd.expected_length or 0)


# ---------------------------------------------------------------------------
# TEST UNIT READY / REQUEST SENSE
# ---------------------------------------------------------------------------
@_cmd(OP_TEST_UNIT_READY, "TEST UNIT READY", bytes([0x00, 0, 0, 0, 0, 0]),
      conflict=Conflict.ALLOWED)
def test_unit_ready(lu: "LogicalUnit", cmd: Command) -> None:
    reason = lu.not_ready_reason()
    if reason is not None:
        raise reason


@_cmd(OP_REQUEST_SENSE, "REQUEST SENSE", bytes([0x03, 0x01, 0, 0, 0xFF, 0]), Direction.IN,
      conflict=Conflict.ALLOWED, ua_exempt=True)
def request_sense(lu: "LogicalUnit", cmd: Command) -> bytes:
    desc = bool(cmd.cdb[1] & 0x01)
    alloc = cmd.cdb[4]
    asc = lu.ua.pop(cmd.nexus)
    if asc is not None:
        data = S.render_sense(S.unit_attention(asc), descriptor=desc)
    elif (reason := lu.not_ready_reason()) is not None:
        data = S.render_sense(reason, descriptor=desc)
    else:
        # A CHECK CONDITION's sense went out with its status (autosense), so
        # there is nothing left to report (SPC-4 5.12, as tgt answers).
        data = S.render_sense(S.SenseError(S.SenseKey.NO_SENSE, S.NO_ADDITIONAL_SENSE), descriptor=desc)
    return data[:alloc]


# ---------------------------------------------------------------------------
# INQUIRY
# ---------------------------------------------------------------------------
@_cmd(OP_INQUIRY, "INQUIRY", bytes([0x12, 0x01, 0xFF, 0xFF, 0xFF, 0]), Direction.IN,
      conflict=Conflict.ALLOWED, ua_exempt=True)
def inquiry_cmd(lu: "LogicalUnit", cmd: Command) -> bytes:
    cdb = cmd.cdb
    evpd = cdb[1] & 0x01
    if cdb[1] & 0xFE:  # CMDDT (obsolete) and reserved bits
        raise S.invalid_cdb_field(1, 1 if cdb[1] & 0x02 else None)
    page = cdb[2]
    alloc = int.from_bytes(cdb[3:5], "big")
    if not evpd:
        if page:
            raise S.invalid_cdb_field(2)
        data = inquiry.standard_data(lu)
    else:
        built = vpd.build(lu, page, cmd.nexus)
        if built is None:
            raise S.invalid_cdb_field(2)
        data = built
    return data[:alloc]


# ---------------------------------------------------------------------------
# REPORT LUNS
# ---------------------------------------------------------------------------
@_cmd(OP_REPORT_LUNS, "REPORT LUNS", bytes([0xA0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0]),
      Direction.IN, conflict=Conflict.ALLOWED, ua_exempt=True)
def report_luns(lu: "LogicalUnit", cmd: Command) -> Response | bytes:
    luns = lu.placement.luns
    if luns is not None:
        return luns.report_luns(cmd)
    # A stand-alone LU (tests, tools) reports just itself.
    alloc = int.from_bytes(cmd.cdb[6:10], "big")
    if alloc < 16:
        raise S.invalid_cdb_field(6)
    return ReportLuns.of([lu.lun]).pack()[:alloc]


# ---------------------------------------------------------------------------
# MODE SENSE / MODE SELECT
# ---------------------------------------------------------------------------
def _block_descriptor(lu: "LogicalUnit", long_lba: bool) -> bytes:
    geo = lu.geometry
    if geo is None:
        return b""
    blocks, bsize = geo.num_blocks, geo.block_size
    if long_lba:
        return LM.LongBlockDescriptor(blocks, bsize).pack()
    return LM.ShortBlockDescriptor(min(blocks, 0xFFFFFFFF), bsize).pack()


def _mode_sense(lu: "LogicalUnit", cmd: Command, ten: bool) -> bytes:
    cdb = cmd.cdb
    dbd = bool(cdb[1] & 0x08)
    llbaa = ten and bool(cdb[1] & 0x10)
    pc = cdb[2] >> 6
    code = cdb[2] & 0x3F
    subpage = cdb[3]
    alloc = int.from_bytes(cdb[7:9], "big") if ten else cdb[4]
    if pc == PC_SAVED:
        raise S.illegal_request(S.SAVING_PARAMETERS_NOT_SUPPORTED, 2, 7)
    keys = lu.mode.pages(code, subpage)
    if not keys:
        known = lu.mode.pages(code, 0xFF) if code != 0x3F else [1]
        raise S.invalid_cdb_field(3 if known else 2)
    pages = b"".join(lu.mode.page_bytes(k, pc) for k in keys)
    bd = b"" if dbd else _block_descriptor(lu, llbaa)
    dsp = lu.mode_device_specific() & 0xFF
    if ten:
        length = 8 + len(bd) + len(pages)
        head = LM.ModeHeader10(length - 2, 0, dsp, bool(bd and llbaa), len(bd)).pack()
    else:
        length = 4 + len(bd) + len(pages)
        if length > 256:  # MODE SENSE(6) cannot describe more; cut at a page boundary
            raise S.invalid_cdb_field(2)
        head = LM.ModeHeader6(length - 1, 0, dsp, len(bd)).pack()
    return (head + bd + pages)[:alloc]


@_cmd(OP_MODE_SENSE6, "MODE SENSE(6)", bytes([0x1A, 0x08, 0xFF, 0xFF, 0xFF, 0]), Direction.IN,
      conflict=Conflict.READ)
def mode_sense6(lu: "LogicalUnit", cmd: Command) -> bytes:
    return _mode_sense(lu, cmd, ten=False)


@_cmd(OP_MODE_SENSE10, "MODE SENSE(10)",
      bytes([0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0]), Direction.IN,
      conflict=Conflict.READ)
def mode_sense10(lu: "LogicalUnit", cmd: Command) -> bytes:
    return _mode_sense(lu, cmd, ten=True)


def _mode_select(lu: "LogicalUnit", cmd: Command, ten: bool) -> None:
    cdb = cmd.cdb
    if cdb[1] & 0x01:  # SP: nothing can be saved
        raise S.invalid_cdb_field(1, 0)
    length = int.from_bytes(cdb[7:9], "big") if ten else cdb[4]
    if length == 0:
        return
    data = data_out(cmd, length)
    with lu.lock:
        lu.mode.select(data, long_header=ten, nexus=cmd.nexus)


@_cmd(OP_MODE_SELECT6, "MODE SELECT(6)", bytes([0x15, 0x11, 0, 0, 0xFF, 0]), Direction.OUT)
def mode_select6(lu: "LogicalUnit", cmd: Command) -> None:
    _mode_select(lu, cmd, ten=False)


@_cmd(OP_MODE_SELECT10, "MODE SELECT(10)", bytes([0x55, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0]),
      Direction.OUT)
def mode_select10(lu: "LogicalUnit", cmd: Command) -> None:
    _mode_select(lu, cmd, ten=True)


# ---------------------------------------------------------------------------
# REPORT SUPPORTED OPERATION CODES
# ---------------------------------------------------------------------------
def _timeouts() -> LR.TimeoutsDescriptor:
    return LR.TimeoutsDescriptor(0x0A, 0, NOMINAL_TIMEOUT, RECOMMENDED_TIMEOUT)


def _one_command(entry: OpEntry | None, rctd: bool) -> bytes:
    if entry is None:
        return LR.OneCommand(support=1).pack()  # SUPPORT 001b: not supported
    return LR.OneCommand(3, entry.cdb_usage(), _timeouts() if rctd else None).pack()


@_cmd(OP_MAINTENANCE_IN, "REPORT SUPPORTED OPERATION CODES",
      bytes([0xA3, 0x00, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0]), Direction.IN,
      sa=SA_REPORT_SUPPORTED_OPCODES, conflict=Conflict.ALLOWED)
def report_supported_opcodes(lu: "LogicalUnit", cmd: Command) -> bytes:
    cdb = cmd.cdb
    rctd = bool(cdb[2] & 0x80)
    options = cdb[2] & 0x07
    op = cdb[3]
    sa = int.from_bytes(cdb[4:6], "big")
    alloc = int.from_bytes(cdb[6:10], "big")
    table = lu.table
    if options == 0:
        data = LR.AllCommands([
            LR.CommandDescriptor(e.opcode, e.service_action or 0, rctd,
                                 e.service_action is not None, e.cdb_length,
                                 _timeouts() if rctd else None)
            for e in table.entries()]).pack()
    elif options == 1:
        if table.has_service_actions(op):
            raise S.invalid_cdb_field(3)
        data = _one_command(table.find(op), rctd)
    elif options == 2:
        if not table.has_service_actions(op):
            raise S.invalid_cdb_field(3)
        data = _one_command(table.find(op, sa), rctd)
    elif options == 3:
        if table.has_service_actions(op):
            data = _one_command(table.find(op, sa), rctd)
        else:
            data = _one_command(table.find(op) if sa == 0 else None, rctd)
    else:
        raise S.invalid_cdb_field(2, 0)
    return data[:alloc]


# ---------------------------------------------------------------------------
# RESERVE / RELEASE (SPC-2)
# ---------------------------------------------------------------------------
def _reserve(lu: "LogicalUnit", cmd: Command) -> Response | None:
    if cmd.cdb[1] & 0x13:  # LONGID/3RDPTY/extents: not supported
        raise S.invalid_cdb_field(1)
    with lu.lock:
        try:
            lu.pr.reserve6(cmd.nexus)
        except ReservationConflict:
            return _conflict_response(cmd)
    return None


def _release(lu: "LogicalUnit", cmd: Command) -> Response | None:
    if cmd.cdb[1] & 0x13:
        raise S.invalid_cdb_field(1)
    with lu.lock:
        try:
            lu.pr.release6(cmd.nexus)
        except ReservationConflict:
            return _conflict_response(cmd)
    return None


@_cmd(OP_RESERVE6, "RESERVE(6)", bytes([0x16, 0, 0, 0, 0, 0]))
def reserve6(lu: "LogicalUnit", cmd: Command) -> Response | None:
    return _reserve(lu, cmd)


@_cmd(OP_RELEASE6, "RELEASE(6)", bytes([0x17, 0, 0, 0, 0, 0]))
def release6(lu: "LogicalUnit", cmd: Command) -> Response | None:
    return _release(lu, cmd)


@_cmd(OP_RESERVE10, "RESERVE(10)", bytes([0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0]))
def reserve10(lu: "LogicalUnit", cmd: Command) -> Response | None:
    return _reserve(lu, cmd)


@_cmd(OP_RELEASE10, "RELEASE(10)", bytes([0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0]))
def release10(lu: "LogicalUnit", cmd: Command) -> Response | None:
    return _release(lu, cmd)


# ---------------------------------------------------------------------------
# PERSISTENT RESERVE IN
# ---------------------------------------------------------------------------
PRIN_READ_KEYS, PRIN_READ_RESERVATION, PRIN_REPORT_CAPABILITIES, PRIN_READ_FULL_STATUS = 0, 1, 2, 3
_PRIN_USAGE = bytes([0x5E, 0x00, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0])


def _prin_alloc(cmd: Command) -> int:
    return int.from_bytes(cmd.cdb[7:9], "big")


@_cmd(OP_PR_IN, "PERSISTENT RESERVE IN", _PRIN_USAGE, Direction.IN, sa=PRIN_READ_KEYS,
      conflict=Conflict.ALLOWED)
def prin_read_keys(lu: "LogicalUnit", cmd: Command) -> bytes:
    with lu.lock:
        data = LP.PrReadKeys(lu.pr.generation, list(lu.pr.registrations.values())).pack()
    return data[:_prin_alloc(cmd)]


@_cmd(OP_PR_IN, "PERSISTENT RESERVE IN", _PRIN_USAGE, Direction.IN, sa=PRIN_READ_RESERVATION,
      conflict=Conflict.ALLOWED)
def prin_read_reservation(lu: "LogicalUnit", cmd: Command) -> bytes:
    with lu.lock:
        res = lu.pr.reservation
        desc = None
        if res is not None:
            key = 0 if res.type.all_registrants else res.key
            desc = LP.ReservationDescriptor(key, 0, int(res.type))
        data = LP.PrReadReservation(lu.pr.generation, desc).pack()
    return data[:_prin_alloc(cmd)]


@_cmd(OP_PR_IN, "PERSISTENT RESERVE IN", _PRIN_USAGE, Direction.IN, sa=PRIN_REPORT_CAPABILITIES,
      conflict=Conflict.ALLOWED)
def prin_report_capabilities(lu: "LogicalUnit", cmd: Command) -> bytes:
    # CRH=0, SIP_C=0, ATP_C=0, PTPL_C=0; TMV=1 with ALLOW COMMANDS=000b; all six types.
    data = LP.PrCapabilities(8, tmv=True, wr_ex_ar=True, ex_ac_ro=True, wr_ex_ro=True,
                             ex_ac=True, wr_ex=True, ex_ac_ar=True).pack()
    return data[:_prin_alloc(cmd)]


@_cmd(OP_PR_IN, "PERSISTENT RESERVE IN", _PRIN_USAGE, Direction.IN, sa=PRIN_READ_FULL_STATUS,
      conflict=Conflict.ALLOWED)
def prin_read_full_status(lu: "LogicalUnit", cmd: Command) -> bytes:
    with lu.lock:
        pr = lu.pr
        res = pr.reservation
        descs = []
        for nexus, key in pr.registrations.items():
            holder = pr.is_holder(nexus)
            descs.append(LP.FullStatusDescriptor(
                key, r_holder=holder, type=int(res.type) if (holder and res is not None) else 0,
                relative_target_port=nexus.relative_port & 0xFFFF,
                transport_id=nexus.transport_id))
        data = LP.PrReadFullStatus(pr.generation, descs).pack()
    return data[:_prin_alloc(cmd)]


# ---------------------------------------------------------------------------
# PERSISTENT RESERVE OUT
# ---------------------------------------------------------------------------
PROUT_REGISTER, PROUT_RESERVE, PROUT_RELEASE, PROUT_CLEAR = 0, 1, 2, 3
PROUT_PREEMPT, PROUT_PREEMPT_AND_ABORT, PROUT_REGISTER_AND_IGNORE = 4, 5, 6
_PROUT_USAGE = bytes([0x5F, 0x00, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0])
_PROUT_PARAM_LEN = 24


def _prout_params(cmd: Command) -> tuple[int, int]:
    """(reservation key, service action reservation key) after validating the list."""
    length = int.from_bytes(cmd.cdb[5:9], "big")
    if length != _PROUT_PARAM_LEN:
        raise S.illegal_request(S.PARAMETER_LIST_LENGTH_ERROR)
    p = data_out(cmd, length)
    flags = p[20]
    if flags & 0x08:  # SPEC_I_PT: not supported (SIP_C=0)
        raise S.invalid_param_field(20, 3)
    if flags & 0x04:  # ALL_TG_PT: not supported (ATP_C=0)
        raise S.invalid_param_field(20, 2)
    if flags & 0x01:  # APTPL: not supported (PTPL_C=0)
        raise S.invalid_param_field(20, 0)
    key, sark = struct.unpack_from(">QQ", p, 0)
    return key, sark


def _pr_type(cmd: Command) -> PrType:
    if cmd.cdb[2] >> 4:  # only LU scope exists in SPC-4
        raise S.invalid_cdb_field(2, 4)
    try:
        return PrType(cmd.cdb[2] & 0x0F)
    except ValueError:
        raise S.invalid_cdb_field(2, 0) from None


def _prout(lu: "LogicalUnit", cmd: Command, action) -> Response | None:
    with lu.lock:
        try:
            action()
        except ReservationConflict:
            return _conflict_response(cmd)
    return None


def _prout_entry(sa: int):
    return _cmd(OP_PR_OUT, "PERSISTENT RESERVE OUT", _PROUT_USAGE, Direction.OUT, sa=sa,
                conflict=Conflict.ALLOWED)


@_prout_entry(PROUT_REGISTER)
def prout_register(lu: "LogicalUnit", cmd: Command) -> Response | None:
    key, sark = _prout_params(cmd)
    return _prout(lu, cmd, lambda: lu.pr.register(cmd.nexus, key, sark, ignore_existing=False))


@_prout_entry(PROUT_REGISTER_AND_IGNORE)
def prout_register_and_ignore(lu: "LogicalUnit", cmd: Command) -> Response | None:
    key, sark = _prout_params(cmd)
    return _prout(lu, cmd, lambda: lu.pr.register(cmd.nexus, key, sark, ignore_existing=True))


@_prout_entry(PROUT_RESERVE)
def prout_reserve(lu: "LogicalUnit", cmd: Command) -> Response | None:
    pr_type = _pr_type(cmd)
    key, _ = _prout_params(cmd)
    return _prout(lu, cmd, lambda: lu.pr.reserve(cmd.nexus, key, pr_type))


@_prout_entry(PROUT_RELEASE)
def prout_release(lu: "LogicalUnit", cmd: Command) -> Response | None:
    pr_type = _pr_type(cmd)
    key, _ = _prout_params(cmd)
    return _prout(lu, cmd, lambda: lu.pr.release(cmd.nexus, key, pr_type))


@_prout_entry(PROUT_CLEAR)
def prout_clear(lu: "LogicalUnit", cmd: Command) -> Response | None:
    key, _ = _prout_params(cmd)
    return _prout(lu, cmd, lambda: lu.pr.clear(cmd.nexus, key))


@_prout_entry(PROUT_PREEMPT)
def prout_preempt(lu: "LogicalUnit", cmd: Command) -> Response | None:
    pr_type = _pr_type(cmd)
    key, sark = _prout_params(cmd)
    return _prout(lu, cmd, lambda: lu.pr.preempt(cmd.nexus, key, sark, pr_type))


@_prout_entry(PROUT_PREEMPT_AND_ABORT)
def prout_preempt_and_abort(lu: "LogicalUnit", cmd: Command) -> Response | None:
    pr_type = _pr_type(cmd)
    key, sark = _prout_params(cmd)
    return _prout(lu, cmd, lambda: lu.pr.preempt(cmd.nexus, key, sark, pr_type))


# ---------------------------------------------------------------------------
# START STOP UNIT / PREVENT ALLOW MEDIUM REMOVAL
# ---------------------------------------------------------------------------
@_cmd(OP_START_STOP_UNIT, "START STOP UNIT", bytes([0x1B, 0x01, 0, 0x0F, 0xF7, 0]))
def start_stop_unit(lu: "LogicalUnit", cmd: Command) -> None:
    b4 = cmd.cdb[4]
    power_condition = b4 >> 4
    loej = bool(b4 & 0x02)
    start = bool(b4 & 0x01)
    if power_condition:
        # Power conditions are accepted and have no effect: there is no spindle
        # to spin down, and START/LOEJ are ignored with a non-zero condition.
        return
    with lu.lock:
        if loej:
            if not lu.removable:
                raise S.invalid_cdb_field(4, 1)
            if lu.prevent:
                raise S.illegal_request(S.MEDIUM_REMOVAL_PREVENTED)
            lu.load_eject(start)
        # A removable LU keeps its medium ready when only START changes: nothing
        # spins down, and libiscsi StartStopUnit.NoLoej expects TEST UNIT READY
        # GOOD after START=0 LOEJ=0.  Fixed disks do enter the stopped state.
        if loej or not lu.removable:
            lu.stopped = not start


@_cmd(OP_PREVENT_ALLOW, "PREVENT ALLOW MEDIUM REMOVAL", bytes([0x1E, 0, 0, 0, 0x03, 0]))
def prevent_allow(lu: "LogicalUnit", cmd: Command) -> None:
    prevent = cmd.cdb[4] & 0x03
    if prevent > 1:  # 10b/11b are for media changers
        raise S.invalid_cdb_field(4, 1)
    with lu.lock:
        if prevent:
            lu.prevent.add(cmd.nexus)
        else:
            lu.prevent.discard(cmd.nexus)


# ---------------------------------------------------------------------------
# SEND DIAGNOSTIC
# ---------------------------------------------------------------------------
# SELF-TEST CODE (SPC-4 table 219): the foreground tests finish before the
# command does; background tests would need the Self-Test Results log page.
_SELF_TEST_FOREGROUND = (0b101, 0b110)


@_cmd(OP_SEND_DIAGNOSTIC, "SEND DIAGNOSTIC", bytes([0x1D, 0xF7, 0, 0xFF, 0xFF, 0]),
      Direction.OUT)
def send_diagnostic(lu: "LogicalUnit", cmd: Command) -> None:
    cdb = cmd.cdb
    code = cdb[1] >> 5
    selftest = bool(cdb[1] & 0x04)
    length = int.from_bytes(cdb[3:5], "big")
    if selftest:
        # The default self-test: a virtual LU has nothing that can fail it.
        if code:
            raise S.invalid_cdb_field(1, 7)
        if length:
            raise S.invalid_cdb_field(3)
        return
    if code:
        if code not in _SELF_TEST_FOREGROUND:
            raise S.invalid_cdb_field(1, 7)
        if length:
            raise S.invalid_cdb_field(3)
        return
    if length:
        # No diagnostic pages are implemented: the first page code is unsupported.
        data_out(cmd, length)
        raise S.invalid_param_field(0)
