"""PDU framing: bytes from the wire ⇄ PDU records (RFC 7143 11.2).

:class:`PduReader` is a receive buffer plus a two-state parser (waiting for a
header, waiting for a data segment).  It checks lengths against the negotiated
limit and verifies CRC32C digests.  :func:`encode_pdu` returns the list of
buffers to send (header, data, padding, digests) so that large data segments go
to the socket without being copied into one string.
"""
from __future__ import annotations

import struct
import sys

from .pdu import BHS_LEN, Pdu, PduFormatError, decode_bhs, header_lengths, pdu_class

_LE32 = struct.Struct("<I")
_PAD = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")


class _Crc32cOnFirstUse:
    """The crc32c module, imported when a digest is first computed: the import
    costs an initiator's start-up more than anything else it does (crc32c reads
    its version through importlib.metadata), and a session without digests
    never needs it.  The first use puts the module itself in its place."""

    def __getattr__(self, name):
        global _crc32c
        import crc32c
        _crc32c = crc32c
        return getattr(crc32c, name)


_crc32c = _Crc32cOnFirstUse()


def crc32c(data, value: int = 0) -> int:
    return _crc32c.crc32c(data, value)


def digest_bytes(*parts) -> bytes:
    """iSCSI digest of the concatenation of ``parts`` (sent little-endian)."""
    crc = 0
    for p in parts:
        crc = _crc32c.crc32c(p, crc)
    return _LE32.pack(crc)


class FramingError(Exception):
    """The byte stream cannot be trusted any more; the connection must close.

    ``reject_reason`` (when set) is the Reject reason to send first, with
    ``bhs`` the header that caused it.
    """

    def __init__(self, message: str, reject_reason: int | None = None, bhs: bytes = b"") -> None:
        super().__init__(message)
        self.reject_reason = reject_reason
        self.bhs = bhs


def split_header(buf, start: int, avail: int, header_digest: bool,
                 max_data: int) -> tuple[int, bytes, bytes, int] | int:
    """Check the header at ``buf[start:]`` (``avail`` bytes there).

    Returns the number of bytes needed when the header (with AHS and digest) is
    not complete yet, else ``(header length, BHS, AHS, data segment length)``.
    Raises :class:`FramingError` on a header digest mismatch or a data segment
    longer than ``max_data`` — both leave a stream that cannot be trusted.
    """
    if avail < BHS_LEN:
        return BHS_LEN
    with memoryview(buf) as view:   # released before the caller resizes ``buf``
        ahs_len, dlen = header_lengths(view[start:start + BHS_LEN])
        hlen = BHS_LEN + ahs_len + (4 if header_digest else 0)
        if avail < hlen:
            return hlen
        bhs = bytes(view[start:start + BHS_LEN])
        ahs = bytes(view[start + BHS_LEN:start + BHS_LEN + ahs_len])
        digest = bytes(view[start + hlen - 4:start + hlen]) if header_digest else b""
    if header_digest and digest_bytes(bhs, ahs) != digest:
        raise FramingError("header digest mismatch", None, bhs)
    if dlen > max_data:
        # Cannot resynchronise safely on a stream whose lengths we refuse.
        raise FramingError(f"data segment of {dlen} bytes exceeds the negotiated "
                           f"{max_data}", 0x04, bhs)
    return hlen, bhs, ahs, dlen


def data_digest_ok(padded_data, digest) -> bool:
    """Whether ``digest`` (4 wire bytes) is the CRC32C of the padded data segment."""
    return digest_bytes(padded_data) == bytes(digest)


class PduReader:
    # The largest data segment we accept during login, before negotiation.
    LOGIN_MAX_DATA = 8192

    def __init__(self, max_data: int = LOGIN_MAX_DATA) -> None:
        self._buf = bytearray()
        self.max_data = max_data
        self.header_digest = False
        self.data_digest = False
        self._bhs: bytes | None = None
        self._ahs = b""
        self._dlen = 0

    def feed(self, data) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_pdu(self) -> Pdu | None:
        """The next complete PDU, or None when more bytes are needed."""
        buf = self._buf
        if self._bhs is None and not self.header_digest and not self.data_digest \
                and len(buf) >= BHS_LEN and not buf[4]:
            # The usual PDU (no digests, no AHS) whole in the buffer: decoded in
            # place, without copying its header out first.  Anything else, and
            # every error, takes the general path below.
            dlen = (buf[5] << 16) | (buf[6] << 8) | buf[7]
            end = BHS_LEN + dlen + (-dlen % 4)
            cls = pdu_class(buf[0] & 0x3F)
            if len(buf) >= end and dlen <= self.max_data and cls is not None:
                if not dlen:
                    data = b""
                elif dlen < 4096:
                    data = bytes(buf[BHS_LEN:BHS_LEN + dlen])
                else:
                    data = buf[BHS_LEN:BHS_LEN + dlen]   # a bytearray copy
                pdu = cls.from_bhs(buf, b"", data)
                del buf[:end]
                return pdu
        if self._bhs is None:
            # A FramingError leaves the stream unusable: the connection closes.
            got = split_header(buf, 0, len(buf), self.header_digest, self.max_data)
            if isinstance(got, int):
                return None
            hlen, bhs, ahs, dlen = got
            del buf[:hlen]
            self._bhs, self._ahs, self._dlen = bhs, ahs, dlen
        dlen = self._dlen
        total = dlen + (-dlen % 4) + (4 if (self.data_digest and dlen) else 0)
        if len(buf) < total:
            return None
        if dlen:
            view = memoryview(buf)
            data = bytes(view[:dlen]) if dlen < 4096 else bytearray(view[:dlen])
            if self.data_digest:
                padded = dlen + (-dlen % 4)
                ok = data_digest_ok(view[:padded], view[padded:padded + 4])
                view.release()
                if not ok:
                    bhs = self._bhs
                    self._bhs = None
                    del buf[:total]
                    raise FramingError("data digest mismatch", 0x02, bhs)
            else:
                view.release()
        else:
            data = b""
        del buf[:total]
        bhs, ahs = self._bhs, self._ahs
        self._bhs = None
        try:
            return decode_bhs(bhs, ahs, data)
        except PduFormatError as exc:
            raise UnknownOpcode(str(exc), bhs) from None


class UnknownOpcode(Exception):
    """A well-framed PDU whose opcode we do not know: Reject it, keep going."""

    def __init__(self, message: str, bhs: bytes) -> None:
        super().__init__(message)
        self.bhs = bhs


def encode_pdu(pdu: Pdu, header_digest: bool = False, data_digest: bool = False) -> list:
    """Buffers that make up ``pdu`` on the wire."""
    bhs = pdu.encode_bhs()
    out = [bhs]
    if pdu.ahs:
        out.append(pdu.ahs)
    if header_digest:
        out.append(digest_bytes(bhs, pdu.ahs) if pdu.ahs else _LE32.pack(_crc32c.crc32c(bhs)))
    data = pdu.data
    n = len(data)
    if n:
        # A Gather (volume/lending.py) exists only once that module was imported,
        # by the target's backup device: an initiator never loads it.
        lending = sys.modules.get("volume.lending")
        if lending is not None and type(data) is lending.Gather:
            # Parts as they are (loan slices stay loan slices for the socket driver
            # to resolve as it sends); the digest runs over the bytes the parts
            # hold now, which a loan keeps until they are sent (volume/lending.py).
            out.extend(data.parts)
            pad = _PAD[n % 4]
            if pad:
                out.append(pad)
            if data_digest:
                out.append(digest_bytes(*data.views(), pad))
            return out
        out.append(data)
        pad = _PAD[n % 4]
        if pad:
            out.append(pad)
        if data_digest:
            out.append(digest_bytes(data, pad) if pad else _LE32.pack(_crc32c.crc32c(data)))
    return out
