"""Sans-I/O pieces of sending a SCSI command, shared by the blocking and the
asyncio clients: argument checks, the command's buffers, and the SCSI Command
PDU with its immediate data and the extent of the unsolicited Data-Out that
follows it (RFC 7143 ImmediateData / InitialR2T / FirstBurstLength)."""
from __future__ import annotations

from ..protocol import pdu as P
from ..scsi.lunaddr import encode_lun


def lun_field(lun: int) -> int:
    """The LUN as the 8-byte field of a PDU header."""
    return int.from_bytes(encode_lun(lun), "big")


def check_command(cdb, data_out, read_length: int) -> None:
    if not 1 <= len(cdb) <= 260:
        raise ValueError(f"CDB of {len(cdb)} bytes")
    if data_out is not None and len(data_out) and read_length:
        raise ValueError("bidirectional commands are not supported")


def command_buffers(data_out, read_length: int, read_into):
    """(the Data-Out as a byte view or None, the expected transfer length, the buffer
    Data-In lands in or None); ``read_into`` is the caller's own buffer, if any."""
    view = memoryview(data_out).cast("B") if data_out is not None and len(data_out) else None
    edtl = len(view) if view is not None else read_length
    if read_into is not None and read_length:
        read_buf = memoryview(read_into).cast("B")
        if read_buf.readonly or len(read_buf) < read_length:
            raise ValueError(f"read_into must be a writable buffer of at least "
                             f"{read_length} bytes")
        read_buf = read_buf[:read_length]
    else:
        read_buf = bytearray(read_length) if read_length else None
    return view, edtl, read_buf


def scsi_command(cdb, view, read_length: int, edtl: int, params, *, attr: int, lun: int,
                 itt: int, cmdsn: int, expstatsn: int) -> tuple[P.ScsiCommand, int]:
    """The SCSI Command PDU (immediate data in it) and where the unsolicited Data-Out
    that must follow it ends (no more than the immediate data: none follows)."""
    cdb16, ahs = bytes(cdb[:16]).ljust(16, b"\x00"), b""
    if len(cdb) > 16:
        # Extended CDB AHS (RFC 7143 11.3.1.3): length counts the type-specific byte.
        rest = bytes(cdb[16:])
        ahs = (len(rest) + 1).to_bytes(2, "big") + b"\x01\x00" + rest
        ahs += b"\x00" * (-len(ahs) % 4)
    cmd = P.ScsiCommand(final=True, read=bool(read_length), write=view is not None,
                        attr=attr, lun=lun_field(lun), itt=itt, edtl=edtl, cmdsn=cmdsn,
                        expstatsn=expstatsn, cdb=cdb16, ahs=ahs)
    unsolicited_end = 0
    if view is not None:
        sent = 0
        if params.immediate_data:
            sent = min(len(view), params.first_burst_length,
                       params.max_xmit_data_segment_length)
            cmd.data = view[:sent]
        unsolicited_end = (sent if params.initial_r2t
                           else min(len(view), params.first_burst_length))
        if unsolicited_end > sent:
            cmd.final = False                   # unsolicited Data-Out follows
    return cmd, unsolicited_end
