"""Link, IP and TCP headers of captured frames: just enough to find TCP segments.

Parsed with struct rather than scapy because a capture of a busy session
holds hundreds of thousands of frames and only the TCP payload matters here.
Frames that are not TCP over IPv4/IPv6 (ARP, UDP, fragments) give None.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from .pcapfile import (LINKTYPE_ETHERNET, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL,
                       LINKTYPE_LINUX_SLL2, LINKTYPE_LOOP, LINKTYPE_NULL, LINKTYPE_RAW)

SYN, FIN, RST = 0x02, 0x01, 0x04
_ETH_IPV4, _ETH_IPV6, _ETH_VLAN, _ETH_QINQ = 0x0800, 0x86DD, 0x8100, 0x88A8
SUPPORTED_LINKTYPES = {LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, 12, 14, LINKTYPE_LOOP,
                       LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_IPV4, LINKTYPE_IPV6}


@dataclass(frozen=True, slots=True)
class Segment:
    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    flags: int
    payload: bytes


def _ip_start(linktype: int, d: bytes) -> int | None:
    """Offset of the IP header in a frame of ``linktype`` (None: not IP)."""
    if linktype == LINKTYPE_ETHERNET:
        off, et = 14, int.from_bytes(d[12:14], "big") if len(d) >= 14 else 0
        while et in (_ETH_VLAN, _ETH_QINQ) and len(d) >= off + 4:
            et = int.from_bytes(d[off + 2:off + 4], "big")
            off += 4
        return off if et in (_ETH_IPV4, _ETH_IPV6) else None
    if linktype in (LINKTYPE_RAW, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6):
        return 0
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        return 4
    if linktype == LINKTYPE_LINUX_SLL:
        return 16 if len(d) >= 16 and int.from_bytes(d[14:16], "big") in (_ETH_IPV4,
                                                                           _ETH_IPV6) else None
    if linktype == LINKTYPE_LINUX_SLL2:
        return 20 if len(d) >= 20 and int.from_bytes(d[0:2], "big") in (_ETH_IPV4,
                                                                         _ETH_IPV6) else None
    return None


def tcp_segment(linktype: int, d: bytes) -> Segment | None:
    off = _ip_start(linktype, d)
    if off is None or len(d) < off + 20:
        return None
    ver = d[off] >> 4
    if ver == 4:
        ihl = (d[off] & 0x0F) * 4
        total = int.from_bytes(d[off + 2:off + 4], "big")
        frag = int.from_bytes(d[off + 6:off + 8], "big")
        if d[off + 9] != 6 or frag & 0x3FFF or ihl < 20:
            return None     # not TCP, or a fragment (never seen on iSCSI paths)
        src = str(ipaddress.IPv4Address(d[off + 12:off + 16]))
        dst = str(ipaddress.IPv4Address(d[off + 16:off + 20]))
        # Ethernet pads short frames; the IP total length says where TCP ends.
        end = off + total if total else len(d)
        t = off + ihl
    elif ver == 6:
        if len(d) < off + 40 or d[off + 6] != 6:
            return None
        plen = int.from_bytes(d[off + 4:off + 6], "big")
        src = str(ipaddress.IPv6Address(d[off + 8:off + 24]))
        dst = str(ipaddress.IPv6Address(d[off + 24:off + 40]))
        t = off + 40
        end = t + plen
    else:
        return None
    if len(d) < t + 20:
        return None
    sport, dport, seq = struct.unpack_from(">HHI", d, t)
    doff = (d[t + 12] >> 4) * 4
    flags = d[t + 13]
    return Segment(src, sport, dst, dport, seq, flags, bytes(d[t + doff:min(end, len(d))]))
