"""Sense data: the one place where SCSI errors become bytes.

Handlers raise :class:`SenseError` (or one of the helpers below); the dispatcher
catches it and calls :func:`render_sense` with the LU's sense format (fixed or
descriptor, from the control mode page D_SENSE bit).
"""
from __future__ import annotations

from collections import namedtuple

from .asc_table import asc_name as _asc_name
# SenseKey and parse_sense live with the layouts (what an initiator needs of sense
# data, without the target's error classes and ASC constants).
from .layouts.sense import SenseData, SenseKey, decode_sense, parse_sense  # noqa: F401


class Asc(namedtuple("Asc", ("asc", "ascq", "name"))):
    """An additional sense code and qualifier with its name (a tuple; typing's
    NamedTuple would cost the typing module)."""
    __slots__ = ()


# Additional sense codes used by the target (values from SPC-4 Annex D).
NO_ADDITIONAL_SENSE = Asc(0x00, 0x00, "NO ADDITIONAL SENSE INFORMATION")
FILEMARK_DETECTED = Asc(0x00, 0x01, "FILEMARK DETECTED")
END_OF_PARTITION_MEDIUM_DETECTED = Asc(0x00, 0x02, "END-OF-PARTITION/MEDIUM DETECTED")
BEGINNING_OF_PARTITION_MEDIUM_DETECTED = Asc(0x00, 0x04, "BEGINNING-OF-PARTITION/MEDIUM DETECTED")
END_OF_DATA_DETECTED = Asc(0x00, 0x05, "END-OF-DATA DETECTED")
LUN_NOT_READY_CAUSE_NOT_REPORTABLE = Asc(0x04, 0x00, "LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE")
LUN_NOT_READY_INIT_REQUIRED = Asc(0x04, 0x02, "LOGICAL UNIT NOT READY, INITIALIZING COMMAND REQUIRED")
LUN_NOT_READY_MANUAL_INTERVENTION = Asc(0x04, 0x03, "LOGICAL UNIT NOT READY, MANUAL INTERVENTION REQUIRED")
WRITE_ERROR = Asc(0x0C, 0x00, "WRITE ERROR")
UNRECOVERED_READ_ERROR = Asc(0x11, 0x00, "UNRECOVERED READ ERROR")
MISCOMPARE_DURING_VERIFY = Asc(0x1D, 0x00, "MISCOMPARE DURING VERIFY OPERATION")
PARAMETER_LIST_LENGTH_ERROR = Asc(0x1A, 0x00, "PARAMETER LIST LENGTH ERROR")
INVALID_COMMAND_OPERATION_CODE = Asc(0x20, 0x00, "INVALID COMMAND OPERATION CODE")
LBA_OUT_OF_RANGE = Asc(0x21, 0x00, "LOGICAL BLOCK ADDRESS OUT OF RANGE")
INVALID_FIELD_IN_CDB = Asc(0x24, 0x00, "INVALID FIELD IN CDB")
INVALID_FIELD_IN_INFORMATION_UNIT = Asc(0x0E, 0x03, "INVALID FIELD IN COMMAND INFORMATION UNIT")
LOGICAL_UNIT_NOT_SUPPORTED = Asc(0x25, 0x00, "LOGICAL UNIT NOT SUPPORTED")
INVALID_FIELD_IN_PARAMETER_LIST = Asc(0x26, 0x00, "INVALID FIELD IN PARAMETER LIST")
PARAMETER_NOT_SUPPORTED = Asc(0x26, 0x01, "PARAMETER NOT SUPPORTED")
PARAMETER_VALUE_INVALID = Asc(0x26, 0x02, "PARAMETER VALUE INVALID")
INVALID_RELEASE_OF_PERSISTENT_RESERVATION = Asc(0x26, 0x04, "INVALID RELEASE OF PERSISTENT RESERVATION")
WRITE_PROTECTED = Asc(0x27, 0x00, "WRITE PROTECTED")
NOT_READY_TO_READY_CHANGE = Asc(0x28, 0x00, "NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED")
POWER_ON_RESET = Asc(0x29, 0x00, "POWER ON, RESET, OR BUS DEVICE RESET OCCURRED")
POWER_ON_OCCURRED = Asc(0x29, 0x01, "POWER ON OCCURRED")
BUS_RESET_OCCURRED = Asc(0x29, 0x02, "SCSI BUS RESET OCCURRED")
BUS_DEVICE_RESET_FUNCTION_OCCURRED = Asc(0x29, 0x03, "BUS DEVICE RESET FUNCTION OCCURRED")
I_T_NEXUS_LOSS_OCCURRED = Asc(0x29, 0x07, "I_T NEXUS LOSS OCCURRED")
PARAMETERS_CHANGED = Asc(0x2A, 0x00, "PARAMETERS CHANGED")
MODE_PARAMETERS_CHANGED = Asc(0x2A, 0x01, "MODE PARAMETERS CHANGED")
RESERVATIONS_PREEMPTED = Asc(0x2A, 0x03, "RESERVATIONS PREEMPTED")
RESERVATIONS_RELEASED = Asc(0x2A, 0x04, "RESERVATIONS RELEASED")
REGISTRATIONS_PREEMPTED = Asc(0x2A, 0x05, "REGISTRATIONS PREEMPTED")
CAPACITY_DATA_HAS_CHANGED = Asc(0x2A, 0x09, "CAPACITY DATA HAS CHANGED")
COMMANDS_CLEARED_BY_ANOTHER_INITIATOR = Asc(0x2F, 0x00, "COMMANDS CLEARED BY ANOTHER INITIATOR")
INCOMPATIBLE_MEDIUM_INSTALLED = Asc(0x30, 0x00, "INCOMPATIBLE MEDIUM INSTALLED")
CANNOT_READ_MEDIUM_UNKNOWN_FORMAT = Asc(0x30, 0x01, "CANNOT READ MEDIUM - UNKNOWN FORMAT")
MEDIUM_FORMAT_CORRUPTED = Asc(0x31, 0x00, "MEDIUM FORMAT CORRUPTED")
CANNOT_WRITE_MEDIUM_INCOMPATIBLE_FORMAT = Asc(0x30, 0x05, "CANNOT WRITE MEDIUM - INCOMPATIBLE FORMAT")
COMMAND_SEQUENCE_ERROR = Asc(0x2C, 0x00, "COMMAND SEQUENCE ERROR")
SAVING_PARAMETERS_NOT_SUPPORTED = Asc(0x39, 0x00, "SAVING PARAMETERS NOT SUPPORTED")
MEDIUM_NOT_PRESENT = Asc(0x3A, 0x00, "MEDIUM NOT PRESENT")
SEQUENTIAL_POSITIONING_ERROR = Asc(0x3B, 0x00, "SEQUENTIAL POSITIONING ERROR")
INQUIRY_DATA_HAS_CHANGED = Asc(0x3F, 0x03, "INQUIRY DATA HAS CHANGED")
REPORTED_LUNS_DATA_HAS_CHANGED = Asc(0x3F, 0x0E, "REPORTED LUNS DATA HAS CHANGED")
INTERNAL_TARGET_FAILURE = Asc(0x44, 0x00, "INTERNAL TARGET FAILURE")
INVALID_MESSAGE_ERROR = Asc(0x49, 0x00, "INVALID MESSAGE ERROR")
COMMAND_PHASE_ERROR = Asc(0x4A, 0x00, "COMMAND PHASE ERROR")
DATA_PHASE_ERROR = Asc(0x4B, 0x00, "DATA PHASE ERROR")
INVALID_TARGET_PORT_TRANSFER_TAG = Asc(0x4B, 0x01, "INVALID TARGET PORT TRANSFER TAG RECEIVED")
TOO_MUCH_WRITE_DATA = Asc(0x4B, 0x02, "TOO MUCH WRITE DATA")
DATA_OFFSET_ERROR = Asc(0x4B, 0x05, "DATA OFFSET ERROR")
UNEXPECTED_UNSOLICITED_DATA = Asc(0x0C, 0x0C, "WRITE ERROR - UNEXPECTED UNSOLICITED DATA")
NOT_ENOUGH_UNSOLICITED_DATA = Asc(0x0C, 0x0D, "WRITE ERROR - NOT ENOUGH UNSOLICITED DATA")
INITIATOR_DETECTED_ERROR = Asc(0x48, 0x00, "INITIATOR DETECTED ERROR MESSAGE RECEIVED")
OVERLAPPED_COMMANDS_ATTEMPTED = Asc(0x4E, 0x00, "OVERLAPPED COMMANDS ATTEMPTED")
END_OF_MEDIUM_REACHED = Asc(0x3B, 0x0F, "END OF MEDIUM REACHED")
MEDIUM_REMOVAL_PREVENTED = Asc(0x53, 0x02, "MEDIUM REMOVAL PREVENTED")
INSUFFICIENT_REGISTRATION_RESOURCES = Asc(0x55, 0x04, "INSUFFICIENT REGISTRATION RESOURCES")
INSUFFICIENT_RESOURCES = Asc(0x55, 0x03, "INSUFFICIENT RESOURCES")
SPACE_ALLOCATION_FAILED_WRITE_PROTECT = Asc(0x27, 0x07, "SPACE ALLOCATION FAILED WRITE PROTECT")
INVALID_DATA_OUT_BUFFER_INTEGRITY_CHECK = Asc(0x26, 0x0F, "INVALID DATA-OUT BUFFER INTEGRITY CHECK VALUE")
LOGICAL_UNIT_COMMUNICATION_FAILURE = Asc(0x08, 0x00, "LOGICAL UNIT COMMUNICATION FAILURE")
LOGICAL_UNIT_COMMUNICATION_TIMEOUT = Asc(0x08, 0x01, "LOGICAL UNIT COMMUNICATION TIME-OUT")
LU_NOT_ACCESSIBLE_TARGET_PORT_UNAVAILABLE = Asc(
    0x04, 0x0C, "LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE")
# Third-party copy (EXTENDED COPY / RECEIVE COPY RESULTS), SPC-4 6.4 and 6.18.
OPERATION_IN_PROGRESS = Asc(0x00, 0x16, "OPERATION IN PROGRESS")
UNREACHABLE_COPY_TARGET = Asc(0x08, 0x04, "UNREACHABLE COPY TARGET")
COPY_TARGET_DEVICE_NOT_REACHABLE = Asc(0x0D, 0x02, "COPY TARGET DEVICE NOT REACHABLE")
INCORRECT_COPY_TARGET_DEVICE_TYPE = Asc(0x0D, 0x03, "INCORRECT COPY TARGET DEVICE TYPE")
COPY_TARGET_DEVICE_DATA_UNDERRUN = Asc(0x0D, 0x04, "COPY TARGET DEVICE DATA UNDERRUN")
COPY_TARGET_DEVICE_DATA_OVERRUN = Asc(0x0D, 0x05, "COPY TARGET DEVICE DATA OVERRUN")
TOO_MANY_TARGET_DESCRIPTORS = Asc(0x26, 0x06, "TOO MANY TARGET DESCRIPTORS")
UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE = Asc(0x26, 0x07, "UNSUPPORTED TARGET DESCRIPTOR TYPE CODE")
TOO_MANY_SEGMENT_DESCRIPTORS = Asc(0x26, 0x08, "TOO MANY SEGMENT DESCRIPTORS")
UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE = Asc(0x26, 0x09, "UNSUPPORTED SEGMENT DESCRIPTOR TYPE CODE")


class SenseError(Exception):
    """A command ends in CHECK CONDITION with this sense.

    ``field`` points at the offending byte (and optionally bit) for ILLEGAL
    REQUEST: ``in_cdb`` says whether it is in the CDB or the parameter list.
    ``information`` fills the INFORMATION field (e.g. miscompare offset, tape
    residue); ``filemark``/``eom``/``ili`` are the sequential-access flags.
    """

    def __init__(self, key: SenseKey, asc: Asc, *, field: int | None = None,
                 bit: int | None = None, in_cdb: bool = True,
                 information: int | None = None, filemark: bool = False,
                 eom: bool = False, ili: bool = False,
                 command_specific: int | None = None) -> None:
        super().__init__(f"{key.name} {asc.name}")
        self.key = SenseKey(key)
        self.asc = asc
        self.field = field
        self.bit = bit
        self.in_cdb = in_cdb
        self.information = information
        self.filemark = filemark
        self.eom = eom
        self.ili = ili
        # COMMAND-SPECIFIC INFORMATION (e.g. the failed EXTENDED COPY segment).
        self.command_specific = command_specific


def illegal_request(asc: Asc = INVALID_FIELD_IN_CDB, field: int | None = None,
                    bit: int | None = None, in_cdb: bool = True) -> SenseError:
    return SenseError(SenseKey.ILLEGAL_REQUEST, asc, field=field, bit=bit, in_cdb=in_cdb)


def invalid_cdb_field(field: int, bit: int | None = None) -> SenseError:
    return illegal_request(INVALID_FIELD_IN_CDB, field, bit, True)


def invalid_param_field(field: int, bit: int | None = None) -> SenseError:
    return illegal_request(INVALID_FIELD_IN_PARAMETER_LIST, field, bit, False)


def invalid_opcode() -> SenseError:
    return illegal_request(INVALID_COMMAND_OPERATION_CODE, 0)


def lba_out_of_range() -> SenseError:
    return SenseError(SenseKey.ILLEGAL_REQUEST, LBA_OUT_OF_RANGE)


def write_protected() -> SenseError:
    return SenseError(SenseKey.DATA_PROTECT, WRITE_PROTECTED)


def not_ready(asc: Asc = MEDIUM_NOT_PRESENT) -> SenseError:
    return SenseError(SenseKey.NOT_READY, asc)


def unit_attention(asc: Asc) -> SenseError:
    return SenseError(SenseKey.UNIT_ATTENTION, asc)


def miscompare(offset: int) -> SenseError:
    return SenseError(SenseKey.MISCOMPARE, MISCOMPARE_DURING_VERIFY, information=offset)


def _sense_key_specific(err: SenseError) -> int | None:
    """SENSE KEY SPECIFIC field pointer (without SKSV) for ILLEGAL REQUEST errors."""
    if err.field is None or err.key != SenseKey.ILLEGAL_REQUEST:
        return None
    b0 = 0x40 if err.in_cdb else 0  # C/D
    if err.bit is not None:
        b0 |= 0x08 | (err.bit & 7)  # BPV
    return (b0 << 16) | (err.field & 0xFFFF)


def sense_data(err: SenseError) -> SenseData:
    """The layout record of ``err`` (the one definition both formats render from)."""
    return SenseData(int(err.key), err.asc.asc, err.asc.ascq, information=err.information,
                     command_specific=err.command_specific, sks=_sense_key_specific(err),
                     filemark=err.filemark, eom=err.eom, ili=err.ili)


def render_sense(err: SenseError, descriptor: bool = False) -> bytes:
    """Sense data bytes for ``err`` in fixed (0x70) or descriptor (0x72) format."""
    return sense_data(err).pack(descriptor)


def asc_name(asc: int, ascq: int) -> str:
    """Name of an ASC/ASCQ pair from the complete SPC-4 table."""
    return _asc_name(asc, ascq)


def describe_sense(data: bytes) -> str:
    """One line for people: sense key, ASC/ASCQ and its name, field pointer, flags."""
    return decode_sense(data).summary()
