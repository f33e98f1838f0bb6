"""Valid initiator byte streams for the iSCSI fuzz tests, and the sans-I/O target they go to.

Built with the project's own codec, so they are what a well-behaved
initiator sends: a login (security then operational stage, or straight to
the operational stage; with and without digests; discovery), then a
full-feature session (TUR, INQUIRY, WRITE with immediate and unsolicited
data, READ, NOP-Out, Text, task management, Logout).
"""
from __future__ import annotations

import struct

from scsi_target.protocol import params as K
from scsi_target.protocol import pdu as P
from scsi_target.protocol.framing import PduReader, encode_pdu
from scsi_target.scsi.disk import DiskLU
from scsi_target.scsi.lun import LunMap
from scsi_target.target import connection as CONN
from scsi_target.target.registry import Chap, Portal, TargetDef, TargetRegistry
from scsi_target.target.session import SessionTable
from volume.memstore import MemoryStore

TGT = "iqn.2026-11.org.pyscsi.fuzz:disk"
CHAP_TGT = "iqn.2026-11.org.pyscsi.fuzz:chap"
INI = "iqn.2026-11.org.pyscsi.fuzz:host"
ISID = bytes.fromhex("400001370000")
OP_KEYS = [("HeaderDigest", "None"), ("DataDigest", "None"), ("InitialR2T", "No"),
           ("ImmediateData", "Yes"), ("MaxBurstLength", "262144"),
           ("FirstBurstLength", "65536"), ("DefaultTime2Wait", "2"),
           ("DefaultTime2Retain", "0"), ("MaxOutstandingR2T", "1"),
           ("ErrorRecoveryLevel", "0"), ("IFMarker", "No"), ("OFMarker", "No"),
           ("MaxConnections", "1"), ("MaxRecvDataSegmentLength", "65536"),
           ("DataPDUInOrder", "Yes"), ("DataSequenceInOrder", "Yes")]


def registry() -> TargetRegistry:
    reg = TargetRegistry(portals=[Portal("127.0.0.1", 3260)])
    luns = LunMap(TGT)
    luns.add(0, DiskLU(MemoryStore(1 << 20), 512))
    reg.add(TargetDef(TGT, luns, alias="fuzz"))
    reg.add(TargetDef(CHAP_TGT, LunMap(CHAP_TGT), chap=Chap("user", "0123456789abcdef")))
    return reg


def connection(reg: TargetRegistry | None = None) -> CONN.TargetConnection:
    return CONN.TargetConnection(reg or registry(), SessionTable(), Portal("127.0.0.1", 3260),
                                 peer="fuzz")


def wire(pdus, header_digest=False, data_digest=False) -> bytes:
    return b"".join(bytes(b) for p in pdus for b in encode_pdu(p, header_digest, data_digest))


def _login(pairs, *, csg, nsg, itt=1, cmdsn=0, transit=True) -> P.LoginRequest:
    return P.LoginRequest(transit=transit, csg=csg, nsg=nsg if transit else 0, isid=ISID,
                          itt=itt, cmdsn=cmdsn, immediate=True, data=K.encode_text(pairs))


def _cdb(op, lba, n) -> bytes:
    return (struct.pack(">BBIBHB", op, 0, lba, 0, n, 0) + bytes(6))


def full_feature(cmdsn: int = 0) -> list:
    data = bytes(range(256)) * 16
    c = cmdsn
    out = [P.ScsiCommand(itt=10, cmdsn=c, cdb=bytes(16)),                          # TUR
           P.ScsiCommand(itt=11, cmdsn=c + 1, read=True, edtl=36,
                         cdb=bytes([0x12, 0, 0, 0, 36, 0]) + bytes(10)),           # INQUIRY
           P.ScsiCommand(itt=12, cmdsn=c + 2, write=True, edtl=4096,
                         cdb=_cdb(0x2A, 8, 8), data=data),                         # immediate
           P.ScsiCommand(itt=13, cmdsn=c + 3, write=True, edtl=8192, final=False,
                         cdb=_cdb(0x2A, 16, 16), data=data),                       # + unsolicited
           P.DataOut(final=True, itt=13, datasn=0, offset=4096, data=data),
           P.ScsiCommand(itt=14, cmdsn=c + 4, read=True, edtl=8192, cdb=_cdb(0x28, 8, 16)),
           P.NopOut(itt=15, cmdsn=c + 5, immediate=True, data=b"ping"),
           P.TextRequest(itt=16, cmdsn=c + 5, data=K.encode_text([("SendTargets", "All")])),
           P.TaskMgmtRequest(function=1, itt=17, rtt=14, refcmdsn=c + 4, cmdsn=c + 6, immediate=True),
           P.LogoutRequest(itt=18, cmdsn=c + 6, reason=0)]
    return out


def normal_session() -> bytes:
    return wire([_login([("InitiatorName", INI), ("TargetName", TGT), ("SessionType", "Normal"),
                         ("AuthMethod", "None")], csg=0, nsg=1),
                 _login(OP_KEYS, csg=1, nsg=3)] + full_feature())


def operational_only_session() -> bytes:
    return wire([_login([("InitiatorName", INI), ("TargetName", TGT)] + OP_KEYS, csg=1, nsg=3)]
                + full_feature())


def digest_session() -> bytes:
    keys = [k if k[0] not in ("HeaderDigest", "DataDigest") else (k[0], "CRC32C")
            for k in OP_KEYS]
    login = wire([_login([("InitiatorName", INI), ("TargetName", TGT)] + keys, csg=1, nsg=3)])
    return login + wire(full_feature(), header_digest=True, data_digest=True)


def discovery_session() -> bytes:
    return wire([_login([("InitiatorName", INI), ("SessionType", "Discovery")] + OP_KEYS[:2],
                        csg=1, nsg=3),
                 P.TextRequest(itt=2, cmdsn=0, data=K.encode_text([("SendTargets", "All")])),
                 P.LogoutRequest(itt=3, cmdsn=1, reason=0)])


def chap_session() -> bytes:
    return wire([_login([("InitiatorName", INI), ("TargetName", CHAP_TGT),
                         ("AuthMethod", "CHAP,None")], csg=0, nsg=1, transit=False),
                 _login([("CHAP_A", "5")], csg=0, nsg=1, transit=False, itt=1),
                 _login([("CHAP_N", "user"), ("CHAP_R", "0x" + "00" * 16)], csg=0, nsg=1,
                        itt=1)])


def sessions() -> list[bytes]:
    return [normal_session(), operational_only_session(), digest_session(),
            discovery_session(), chap_session()]


def login_length(stream: bytes) -> int:
    """Bytes of the login PDUs at the start of ``stream`` (to fuzz what follows them)."""
    r = PduReader(max_data=1 << 24)
    r.feed(stream)
    n = 0
    while True:
        before = r.buffered
        p = r.next_pdu()
        if not isinstance(p, P.LoginRequest):
            return n
        n += before - r.buffered
