"""The initiator's receive path: bytes from the socket → PDUs, Data-In placed in place.

A :class:`asyncio.BufferedProtocol` lets us choose where each ``recv_into``
lands.  Headers and small PDUs go to a scratch buffer and are parsed there
(same checks as :class:`~..protocol.framing.PduReader`: header digest, negotiated
length limit, data digest).  When a Data-In header names a command whose
result buffer can take the segment, the rest of the segment is received
straight into that buffer at the PDU's buffer offset, so 1 MiB reads cost no
Python-level copy; only bytes that arrived in the scratch buffer together
with the header are copied over.
"""
from __future__ import annotations

import asyncio
import socket
from typing import Protocol

from ..protocol import pdu as P
from .errors import IscsiError, ProtocolViolation
from ..protocol.framing import FramingError, UnknownOpcode, crc32c, data_digest_ok, split_header

SCRATCH = 64 * 1024
# A header (with digest) and the trailer (padding, data digest) of the PDU before it.
_SMALL_READ = P.BHS_LEN + 4 + 3 + 4


class RxClient(Protocol):
    """What the protocol needs from its client."""

    def _dispatch(self, proto, pdu: P.Pdu) -> None: ...
    def _placement(self, proto, pdu: P.DataIn, dlen: int) -> memoryview | None: ...
    def _fail(self, err, proto) -> None: ...
    def _lost(self, proto, exc) -> None: ...


class RxProtocol(asyncio.BufferedProtocol):
    """Framing plus write flow control for one client connection."""

    def __init__(self, client: RxClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.header_digest = False
        self.data_digest = False
        self.max_data = 8192                # before negotiation: the login limit
        self._can_write = asyncio.Event()
        self._can_write.set()
        self.lost = False
        self._buf = bytearray(SCRATCH)
        self._start = 0                     # unparsed bytes are _buf[_start:_end]
        self._end = 0
        self._need = P.BHS_LEN              # bytes the current parse step waits for
        self._small = False                 # next read: just a header (a segment may follow)
        # The PDU whose header is parsed and whose data segment is outstanding.
        self._pdu: P.Pdu | None = None
        self._bhs = b""
        self._dlen = 0
        # Placement of that segment in a command's buffer: the whole region and what is unfilled.
        self._dest: memoryview | None = None
        self._hole: memoryview | None = None

    # ---------------------------------------------------------------- asyncio
    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._hole is not None:
            return self._hole
        buf, start, end = self._buf, self._start, self._end
        if start == end:
            self._start = self._end = start = end = 0
        want = max(self._need, _SMALL_READ)
        if start + want > len(buf):
            if want > len(buf):
                # A segment bigger than scratch: a fresh buffer (asyncio holds no view now).
                nb = bytearray(max(want, 2 * len(buf)))
                nb[:end - start] = memoryview(buf)[start:end]
                self._buf = buf = nb
            else:
                buf[:end - start] = buf[start:end]
            self._start, self._end = 0, end - start
            end -= start
        stop = end + _SMALL_READ if self._small else len(buf)
        return memoryview(buf)[end:min(stop, len(buf))]

    def buffer_updated(self, nbytes: int) -> None:
        if self.lost:
            return
        try:
            if self._hole is not None:
                hole = self._hole[nbytes:]
                self._hole = hole if len(hole) else None
                if self._hole is not None:
                    return
                self._need = self._trailer()
            else:
                self._end += nbytes
            self._parse()
        except UnknownOpcode as exc:
            self.client._fail(ProtocolViolation(f"target sent an unknown PDU: {exc}"), self)
        except FramingError as exc:
            self.client._fail(ProtocolViolation(f"framing error from target: {exc}"), self)
        except IscsiError as exc:
            self.client._fail(exc, self)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def connection_lost(self, exc) -> None:
        self._can_write.set()
        self._hole = self._dest = None
        if not self.lost:
            self.lost = True
            self.client._lost(self, exc)

    # ---------------------------------------------------------------- framing
    def _trailer(self) -> int:
        dlen = self._dlen
        return -dlen % 4 + (4 if self.data_digest and dlen else 0)

    def _parse(self) -> None:
        buf = self._buf
        while not self.lost:
            avail = self._end - self._start
            if self._dest is not None:
                # Placed segment complete: its padding and digest are in scratch.
                t = self._trailer()
                if avail < t:
                    self._need = t
                    return
                self._finish_placed(t)
                continue
            if self._pdu is None:
                s = self._start
                got = split_header(buf, s, avail, self.header_digest, self.max_data)
                if isinstance(got, int):
                    self._need = got
                    return
                hlen, bhs, ahs, dlen = got
                self._start = s + hlen
                try:
                    pdu = P.decode_bhs(bhs, ahs)
                except P.PduFormatError as exc:
                    raise UnknownOpcode(str(exc), bhs) from None
                if not dlen:
                    self.client._dispatch(self, pdu)
                    continue
                self._pdu, self._bhs, self._dlen = pdu, bhs, dlen
                if type(pdu) is P.DataIn:
                    dest = self.client._placement(self, pdu, dlen)
                    if dest is not None:
                        self._place(dest)
                        if self._hole is not None:
                            return
                        continue
                avail = self._end - self._start
            # A segment that goes through scratch.
            dlen = self._dlen
            t = self._trailer()
            if avail < dlen + t:
                self._need = dlen + t
                self._small = False
                return
            s = self._start
            view = memoryview(buf)
            data = bytes(view[s:s + dlen]) if dlen < 4096 else bytearray(view[s:s + dlen])
            if self.data_digest:
                padded = dlen + (-dlen % 4)
                if not data_digest_ok(view[s:s + padded], view[s + padded:s + padded + 4]):
                    view.release()
                    self._pdu = None
                    self._start = s + dlen + t
                    raise FramingError("data digest mismatch", 0x02, self._bhs)
            view.release()
            self._start = s + dlen + t
            pdu, self._pdu = self._pdu, None
            pdu.data = data
            self._small = False
            self.client._dispatch(self, pdu)
        self._need = P.BHS_LEN

    def _place(self, dest: memoryview) -> None:
        """Start receiving the current segment into ``dest``: what scratch holds first."""
        have = min(self._end - self._start, len(dest))
        if have:
            s = self._start
            dest[:have] = memoryview(self._buf)[s:s + have]
            self._start = s + have
        self._dest = dest
        # Big segments come in trains: read only the next header so the next one lands in
        # place too.  Small ones: read all that is there, fewer trips through the loop.
        self._small = len(dest) >= SCRATCH // 4
        if have < len(dest):
            self._hole = dest[have:]
        else:
            self._need = self._trailer()

    def _finish_placed(self, t: int) -> None:
        dest, pdu = self._dest, self._pdu
        s = self._start
        if self.data_digest:
            pad_end = s + (-self._dlen % 4)
            crc = crc32c(dest)
            crc = crc32c(memoryview(self._buf)[s:pad_end], crc)
            got = int.from_bytes(self._buf[pad_end:pad_end + 4], "little")
            if crc != got:
                self._dest = self._pdu = None
                self._start = s + t
                raise FramingError("data digest mismatch", 0x02, self._bhs)
        self._start = s + t
        self._dest = self._pdu = None
        pdu.data = dest
        self.client._dispatch(self, pdu)
