"""Data-In segmenter: one SCSI response as the PDUs that carry it (RFC 7143 11.4, 11.7).

Read data is cut into Data-In PDUs of at most MaxXmitDataSegmentLength (the
initiator's MaxRecvDataSegmentLength) that never straddle a MaxBurstLength
boundary; the last PDU of each burst has the F bit.  A GOOD status without
sense travels in the last Data-In (status collapse, 11.7.3); any other status
gets its own SCSI Response after the data.  The PDUs share the read buffer
(memoryview slices), nothing is copied.  Gathered data (a backup stream
whose record data are loans of the volume's map, volume/lending.py) is cut the
same way into sub-gathers: each PDU's data is then a list of parts that the
framing emits as they are and the socket driver resolves as it sends.

Sequence numbers are the connection's business: the PDUs leave here without
StatSN/ExpCmdSN/MaxCmdSN, and the last one of the list is always the one that
carries the status, so the caller gives it the next StatSN.
"""
from __future__ import annotations

from volume.lending import Gather

from ..protocol import params as K
from ..protocol.pdu import DataIn, ScsiCommand, ScsiResponse
from ..scsi.command import Response, Status

_GOOD = int(Status.GOOD)


def residual_fields(residual: int) -> tuple[bool, bool, int]:
    """(underflow, overflow, residual count) for a ``Response.residual``.

    The SCSI layer keeps one signed number (positive: fewer bytes moved than
    expected); iSCSI sends two flags and an unsigned count (11.4.5).
    """
    if residual > 0:
        return True, False, residual
    if residual < 0:
        return False, True, -residual
    return False, False, 0


class DataInSegmenter:
    """Turns (command, response) into PDUs within the negotiated limits."""
    __slots__ = ("params",)

    def __init__(self, params: K.SessionParams) -> None:
        self.params = params    # read at every response: a Text renegotiation applies at once

    def respond(self, cmd: ScsiCommand, resp: Response, expdatasn: int = 0) -> list:
        """PDUs answering ``cmd``; ``expdatasn`` is what a response without data reports
        (the number of R2Ts sent for a write)."""
        data = resp.data_in
        if type(data) is memoryview and (data.format != "B" or data.ndim != 1):
            data = data.cast("B")   # lengths and offsets count bytes
        n = len(data) if cmd.read else 0
        status = int(resp.status)
        good = status == _GOOD and not resp.sense
        if n:
            seg = self.params.max_xmit_data_segment_length
            burst = self.params.max_burst_length
            if n <= seg and n <= burst and good:
                # The common case: one PDU with the data and the status.
                if not resp.residual:
                    return [DataIn(final=True, has_status=True, status=status, lun=cmd.lun,
                                   itt=cmd.itt, data=data)]
                under, over, count = residual_fields(resp.residual)
                return [DataIn(final=True, has_status=True, status=status, lun=cmd.lun,
                               itt=cmd.itt, data=data, underflow=under, overflow=over,
                               residual=count)]
            out = self.segments(cmd, data, n, seg, burst)
            if good:
                last = out[-1]
                last.has_status, last.status = True, status
                last.underflow, last.overflow, last.residual = residual_fields(resp.residual)
                return out
            expdatasn = len(out)
        else:
            out = []
        rsp = ScsiResponse(status=status, itt=cmd.itt, expdatasn=expdatasn)
        if resp.residual:
            rsp.underflow, rsp.overflow, rsp.residual = residual_fields(resp.residual)
        if resp.sense:
            rsp.data = len(resp.sense).to_bytes(2, "big") + bytes(resp.sense)
        out.append(rsp)
        return out

    @staticmethod
    def segments(cmd: ScsiCommand, data, n: int, seg: int, burst: int) -> list[DataIn]:
        """Data-In PDUs covering ``data[:n]`` in order, without status."""
        view = data if type(data) is Gather else memoryview(data)
        out = []
        lun, itt = cmd.lun, cmd.itt
        offset = datasn = 0
        while offset < n:
            length = min(seg, n - offset, burst - offset % burst)
            end = offset + length
            out.append(DataIn(final=end >= n or end % burst == 0, lun=lun, itt=itt,
                              datasn=datasn, offset=offset, data=view[offset:end]))
            datasn += 1
            offset = end
        return out
