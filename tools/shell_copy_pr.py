"""scsi-shell commands for persistent reservations (PERSISTENT RESERVE IN) and
third-party copy (EXTENDED COPY, RECEIVE COPY RESULTS).

CDBs come from ``scsi_target.scsi.layouts.cdbs``, the data from
``layouts.pr`` and ``layouts.xcopy`` -- the layouts the target packs with.
"""
from __future__ import annotations

import argparse
from typing import Any

from scsi_target.scsi.layouts import capacity as LC, cdbs as C, pr as LP, vpd as LV
from scsi_target.scsi.layouts import xcopy as LX
from scsi_target.scsi.layouts.sense import decode_sense

from .shell_backend import ShellError, UsageError
from .shell_commands import Out, Session, arg, command, number

_ALLOC = 8192

# ================================================================= reservations
_PRIN_ACTIONS = {"keys": C.PRIN_READ_KEYS, "reservation": C.PRIN_READ_RESERVATION,
                 "caps": C.PRIN_REPORT_CAPABILITIES, "fullstatus": C.PRIN_READ_FULL_STATUS}
_CAP_TYPES = (("wr_ex", 1), ("ex_ac", 3), ("wr_ex_ro", 5), ("ex_ac_ro", 6), ("wr_ex_ar", 7),
              ("ex_ac_ar", 8))


@command("prin", "PERSISTENT RESERVE IN: keys, reservation, caps or fullstatus", "reservations")
@arg("action", choices=sorted(_PRIN_ACTIONS), help="service action")
def cmd_prin(s: Session, a) -> Out:
    r = s.run(C.pr_in(_PRIN_ACTIONS[a.action], _ALLOC), read_length=_ALLOC)
    if a.action == "keys":
        rk = LP.PrReadKeys.unpack(r.data)
        return Out("PERSISTENT RESERVE IN: READ KEYS", {"generation": rk.generation},
                   columns=["key"] if rk.keys else [], rows=[[f"0x{k:016x}"] for k in rk.keys],
                   text="" if rk.keys else "no registered keys")
    if a.action == "reservation":
        rr = LP.PrReadReservation.unpack(r.data)
        f: dict[str, Any] = {"generation": rr.generation}
        if rr.reservation is None:
            return Out("PERSISTENT RESERVE IN: READ RESERVATION", f, text="no reservation")
        f.update(rr.to_dict()["reservation"])
        return Out("PERSISTENT RESERVE IN: READ RESERVATION", f)
    if a.action == "caps":
        caps = LP.PrCapabilities.unpack(r.data)
        f = {k: v for k, v in caps.items() if k != "length"}
        if caps.tmv:
            f["types"] = [LP.PR_TYPE_NAMES[t] for name, t in _CAP_TYPES if getattr(caps, name)]
        return Out("PERSISTENT RESERVE IN: REPORT CAPABILITIES", f)
    fs = LP.PrReadFullStatus.unpack(r.data)
    rows = [[f"0x{d.key:016x}", "yes" if d.r_holder else "",
             LP.PR_TYPE_NAMES.get(d.type, d.type) if d.r_holder else "", d.scope,
             "yes" if d.all_tg_pt else "", d.relative_target_port,
             LP.describe_transport_id(d.transport_id)] for d in fs.descriptors]
    return Out("PERSISTENT RESERVE IN: READ FULL STATUS", {"generation": fs.generation},
               columns=["key", "holder", "type", "scope", "all TG_PT", "rel. port",
                        "transport ID"] if rows else [], rows=rows,
               text="" if rows else "no registrations")


# ============================================================ third-party copy
@command("copyparams", "RECEIVE COPY RESULTS: the copy manager's operating parameters", "copy")
def cmd_copyparams(s: Session, a) -> Out:
    r = s.run(C.receive_copy_results(C.RCR_OPERATING_PARAMETERS, 0, 1024), read_length=1024)
    return Out("RECEIVE COPY RESULTS: OPERATING PARAMETERS",
               LX.OperatingParameters.unpack(r.data).to_dict())


@command("copystatus", "RECEIVE COPY RESULTS: COPY STATUS of a list (and FAILED SEGMENT "
         "DETAILS when it failed)", "copy")
@arg("list_id", type=number, metavar="LIST_ID")
def cmd_copystatus(s: Session, a) -> Out:
    if not 0 <= a.list_id <= 0xFF:
        raise UsageError("copystatus: a list identifier is 0..255")
    r = s.run(C.receive_copy_results(C.RCR_COPY_STATUS, a.list_id, 12), read_length=12)
    cs = LX.CopyStatus.unpack(r.data)
    f: dict[str, Any] = {
        "status": cs.status_name, "hdd": cs.hdd, "segments_processed": cs.segments_processed,
        "transfer_count": f"{cs.transfer_count} "
                          f"{LX.TRANSFER_UNIT_NAMES[cs.transfer_count_units]}"
        if cs.transfer_count_units < len(LX.TRANSFER_UNIT_NAMES)
        else f"{cs.transfer_count} (units {cs.transfer_count_units})",
        "bytes": cs.bytes_transferred}
    text = ""
    if cs.status == LX.STATUS_FAILED:
        fr = s.run(C.receive_copy_results(C.RCR_FAILED_SEGMENT_DETAILS, a.list_id, 1024),
                   read_length=1024)
        fd = LX.FailedSegmentDetails.unpack(fr.data)
        if fd.sense:
            f["completion_status"] = f"{fd.completion_status:02x}h"
            try:
                sd = decode_sense(fd.sense)
                f["failed_segment_sense"] = sd.to_dict()
                text = f"failed: {sd.summary()}"
            except ValueError:
                f["failed_segment_sense"] = fd.sense.hex()
    return Out(f"RECEIVE COPY RESULTS: COPY STATUS of list {a.list_id}", f, text=text)


def lun_lba(text: str) -> tuple[int, int]:
    lun, sep, lba = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected LUN:LBA, got {text!r}")
    return number(lun), number(lba)


def _naa_designation(s: Session, lun: int) -> bytes:
    """The LU's NAA designation descriptor (header + value) from VPD page 83h."""
    r = s.run(C.inquiry(True, LV.PAGE_DEVICE_ID, alloc=0xFFFF), read_length=0xFFFF, lun=lun)
    dec = LV.decode_page(r.data)
    if dec.page.qualifier != 0:
        # A LUN that does not exist still answers INQUIRY, with qualifier 011b.
        raise ShellError(f"xcopy: LUN {lun} is not available on this target (peripheral "
                         f"qualifier {dec.page.qualifier})")
    if dec.page.page_code != LV.PAGE_DEVICE_ID:
        raise ShellError(f"xcopy: LUN {lun} answered INQUIRY for VPD page 83h with page "
                         f"{dec.page.page_code:02x}h")
    for d in dec.decoded:  # type: ignore[union-attr]
        if d.designator_type == LV.TYPE_NAA and d.association == LV.ASSOC_LU:
            return d.pack()
    raise ShellError(f"xcopy: LUN {lun} reports no NAA designator in VPD page 83h, so a copy "
                     "manager cannot name it")


def _block_size(s: Session, lun: int) -> int:
    r = s.run(C.read_capacity16(32), read_length=32, check=False, lun=lun)
    if r.good:
        return LC.ReadCapacity16.unpack(r.data).block_size
    r = s.run(C.read_capacity10(), read_length=8, lun=lun)
    return LC.ReadCapacity10.unpack(r.data).block_size


@command("xcopy", "EXTENDED COPY of COUNT blocks between LUs of this target "
         "(the session's LU is the copy manager)", "copy")
@arg("src", type=lun_lba, metavar="SRC_LUN:LBA")
@arg("dst", type=lun_lba, metavar="DST_LUN:LBA")
@arg("count", type=number, metavar="COUNT", help="blocks of the source LU (at most 65535)")
@arg("--id", dest="list_id", type=number, default=1, metavar="LIST_ID",
     help="list identifier for copystatus (default 1)")
def cmd_xcopy(s: Session, a) -> Out:
    (src_lun, src_lba), (dst_lun, dst_lba) = a.src, a.dst
    if not 0 <= a.count <= 0xFFFF:
        raise UsageError("xcopy: one segment copies 0..65535 blocks")
    if not 0 <= a.list_id <= 0xFF:
        raise UsageError("xcopy: a list identifier is 0..255")
    if min(src_lun, dst_lun, src_lba, dst_lba) < 0:
        raise UsageError("xcopy: LUNs and LBAs must not be negative")
    luns = [src_lun] if src_lun == dst_lun else [src_lun, dst_lun]
    desigs = [_naa_designation(s, lun) for lun in luns]
    sizes = [_block_size(s, lun) for lun in luns]
    seg = LX.BlockToBlockSegment(src_id=0, dst_id=len(luns) - 1, blocks=a.count,
                                 src_lba=src_lba, dst_lba=dst_lba)
    plist = LX.block_copy_list(a.list_id, desigs, sizes, [seg]).pack()
    s.run(C.extended_copy(len(plist)), data_out=plist)
    nbytes = a.count * sizes[0]
    return Out(text=f"copied {a.count} block(s) ({nbytes} bytes) from LUN {src_lun} LBA {src_lba} "
                    f"to LUN {dst_lun} LBA {dst_lba} (list {a.list_id}; "
                    f"'copystatus {a.list_id}' shows the result)")
