"""pcap and pcapng files: frames in, frames out.

Reading yields :class:`Frame` records (number from 1 as in Wireshark, time in
seconds, link type, bytes).  Every way a file can be wrong — not a capture,
cut short, a block length that does not add up — raises :class:`CaptureError`
with one line saying where; nothing is read past a bad length.
Writing produces pcapng (one section, one interface), which is what the
recorder emits so that tshark decodes it without options.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D
MAX_FRAME = 1 << 20          # refuse absurd record lengths instead of allocating them

LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW = 0, 1, 101
LINKTYPE_LOOP, LINKTYPE_LINUX_SLL, LINKTYPE_IPV4, LINKTYPE_IPV6 = 108, 113, 228, 229
LINKTYPE_LINUX_SLL2 = 276


class CaptureError(ValueError):
    """The capture cannot be read; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class Frame:
    number: int
    time: float
    linktype: int
    data: bytes


def read_frames(path) -> Iterator[Frame]:
    try:
        f = open(path, "rb")
    except OSError as e:
        raise CaptureError(f"{path}: {e.strerror or e}") from None
    with f:
        head = f.read(4)
        if len(head) < 4:
            raise CaptureError(f"{path}: empty or truncated file (not a pcap/pcapng capture)")
        magic_le = struct.unpack("<I", head)[0]
        magic_be = struct.unpack(">I", head)[0]
        if magic_le == PCAPNG_SHB:
            yield from _read_pcapng(path, f, head)
        elif PCAP_MAGIC_US in (magic_le, magic_be) or PCAP_MAGIC_NS in (magic_le, magic_be):
            yield from _read_pcap(path, f, head)
        else:
            raise CaptureError(f"{path}: not a pcap or pcapng file (starts with {head.hex()})")


def _read_exact(path, f: BinaryIO, n: int, what: str, offset: int) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise CaptureError(f"{path}: truncated {what} at byte {offset} "
                           f"(needs {n} bytes, {len(b)} left)")
    return b


def _read_pcap(path, f: BinaryIO, head: bytes) -> Iterator[Frame]:
    rest = _read_exact(path, f, 20, "pcap file header", 4)
    magic_le = struct.unpack("<I", head)[0]
    endian = "<" if magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS) else ">"
    magic = struct.unpack(endian + "I", head)[0]
    scale = 1e-9 if magic == PCAP_MAGIC_NS else 1e-6
    _vmaj, _vmin, _zone, _sig, _snap, linktype = struct.unpack(endian + "HHiIII", rest)
    rec = struct.Struct(endian + "IIII")
    offset, number = 24, 0
    while True:
        h = f.read(16)
        if not h:
            return
        if len(h) < 16:
            raise CaptureError(f"{path}: truncated pcap record header at byte {offset}")
        sec, frac, incl, _orig = rec.unpack(h)
        if incl > MAX_FRAME:
            raise CaptureError(f"{path}: pcap record at byte {offset} claims {incl} bytes")
        data = _read_exact(path, f, incl, "pcap record", offset + 16)
        number += 1
        yield Frame(number, sec + frac * scale, linktype & 0xFFFF, data)
        offset += 16 + incl


def _read_pcapng(path, f: BinaryIO, head: bytes) -> Iterator[Frame]:
    endian = "<"
    interfaces: list[tuple[int, float]] = []   # (linktype, seconds per tick)
    offset, number = 0, 0
    first = True
    while True:
        h = head if first else f.read(4)
        if not h:
            return
        if len(h) < 4:
            raise CaptureError(f"{path}: truncated pcapng block at byte {offset}")
        if first:
            # The byte order comes from the section header's byte-order magic.
            blen_raw = _read_exact(path, f, 8, "pcapng section header", 4)
            bom = blen_raw[4:8]
            if struct.unpack("<I", bom)[0] == PCAPNG_BOM:
                endian = "<"
            elif struct.unpack(">I", bom)[0] == PCAPNG_BOM:
                endian = ">"
            else:
                raise CaptureError(f"{path}: pcapng section header without byte-order magic")
            btype = PCAPNG_SHB
            blen = struct.unpack(endian + "I", blen_raw[:4])[0]
            body_prefix = bom
            first = False
        else:
            btype = struct.unpack(endian + "I", h)[0]
            blen = struct.unpack(endian + "I", _read_exact(path, f, 4, "pcapng block", offset))[0]
            body_prefix = b""
        if blen < 12 or blen % 4 or blen > MAX_FRAME + 64:
            raise CaptureError(f"{path}: pcapng block at byte {offset} has bad length {blen}")
        body = body_prefix + _read_exact(path, f, blen - 8 - len(body_prefix) - 4,
                                         "pcapng block", offset)
        trailer = _read_exact(path, f, 4, "pcapng block trailer", offset + blen - 4)
        if struct.unpack(endian + "I", trailer)[0] != blen:
            raise CaptureError(f"{path}: pcapng block at byte {offset}: trailing length "
                               "differs from the leading one")
        if btype == PCAPNG_SHB:
            interfaces = []
        elif btype == 1:    # Interface Description Block
            if len(body) < 8:
                raise CaptureError(f"{path}: short pcapng interface block at byte {offset}")
            linktype = struct.unpack(endian + "H", body[:2])[0]
            interfaces.append((linktype, _tsresol(body[8:], endian)))
        elif btype in (6, 3):   # Enhanced / Simple Packet Block
            if btype == 6:
                if len(body) < 20:
                    raise CaptureError(f"{path}: short pcapng packet block at byte {offset}")
                iface, hi, lo, caplen, _orig = struct.unpack(endian + "IIIII", body[:20])
                data = body[20:20 + caplen]
                if len(data) < caplen:
                    raise CaptureError(f"{path}: pcapng packet block at byte {offset} "
                                       "is shorter than its captured length")
            else:
                iface, hi, lo = 0, 0, 0
                data = body[4:]
            if iface >= len(interfaces):
                raise CaptureError(f"{path}: pcapng packet block at byte {offset} names "
                                   f"interface {iface}, which was not described")
            linktype, tick = interfaces[iface]
            number += 1
            yield Frame(number, ((hi << 32) | lo) * tick, linktype, data)
        offset += blen


def _tsresol(options: bytes, endian: str) -> float:
    pos = 0
    while pos + 4 <= len(options):
        code, length = struct.unpack(endian + "HH", options[pos:pos + 4])
        if code == 0:
            break
        if code == 9 and length >= 1:
            v = options[pos + 4]
            return 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -v
        pos += 4 + length + (-length % 4)
    return 1e-6


class PcapngWriter:
    """Append-only pcapng writer: one section, one interface, nanosecond stamps."""

    def __init__(self, f: BinaryIO, linktype: int = LINKTYPE_ETHERNET) -> None:
        self.f = f
        shb_body = struct.pack("<IHHq", PCAPNG_BOM, 1, 0, -1)
        self._block(PCAPNG_SHB, shb_body)
        tsresol = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)
        self._block(1, struct.pack("<HHI", linktype, 0, 0) + tsresol)

    def _block(self, btype: int, body: bytes) -> None:
        body += b"\x00" * (-len(body) % 4)
        n = len(body) + 12
        self.f.write(struct.pack("<II", btype, n) + body + struct.pack("<I", n))

    def write(self, time: float, data: bytes) -> None:
        ts = int(round(time * 1e9))
        self._block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data))
                    + data)
