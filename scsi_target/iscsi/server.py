"""asyncio driver for the sans-I/O iSCSI target connection."""
from __future__ import annotations

import asyncio
import logging
import socket

from ..target import Portal, TargetRegistry
from .connection import TargetConnection
from .session import SessionTable

log = logging.getLogger("scsi_target.iscsi")


class _ConnectionProtocol(asyncio.Protocol):
    def __init__(self, server: "IscsiServer", portal: Portal) -> None:
        self.server = server
        self.portal = portal
        self.transport: asyncio.Transport | None = None
        self.conn: TargetConnection | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        portal = Portal(local[0], local[1]) if local else self.portal
        self.conn = TargetConnection(self.server.registry, self.server.sessions, portal,
                                     peer=str(peer))
        self.server._protocols.add(self)
        # Bound what one peer can make us buffer before we stop reading from it.
        transport.set_write_buffer_limits(high=4 << 20, low=1 << 20)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        conn.receive_data(data)
        out = conn.take_output()
        if out:
            self.transport.writelines(out)
        if conn.closing:
            self.transport.close()

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc) -> None:
        if self.conn is not None:
            self.conn.connection_lost()
        self.server._protocols.discard(self)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.close()


class IscsiServer:
    def __init__(self, registry: TargetRegistry) -> None:
        self.registry = registry
        self.sessions = SessionTable()
        self._servers: list[asyncio.base_events.Server] = []
        self._protocols: set[_ConnectionProtocol] = set()
        self.bound_portals: list[tuple[str, int]] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for portal in self.registry.portals:
            try:
                srv = await loop.create_server(lambda p=portal: _ConnectionProtocol(self, p),
                                               portal.host, portal.port, reuse_address=True,
                                               backlog=128)
            except OSError as exc:
                await self.close()
                raise OSError(exc.errno, f"cannot listen on {portal}: {exc.strerror}") from None
            self._servers.append(srv)
            for sock in srv.sockets:
                addr = sock.getsockname()
                self.bound_portals.append((addr[0], addr[1]))
        # SendTargets should advertise the real ports (ephemeral ports in tests).
        if self.bound_portals:
            self.registry.portals = [Portal(h, p) for h, p in self.bound_portals]

    async def serve_forever(self) -> None:
        await asyncio.gather(*(s.serve_forever() for s in self._servers))

    async def close(self) -> None:
        for srv in self._servers:
            srv.close()
        for proto in list(self._protocols):
            proto.abort()
        for srv in self._servers:
            await srv.wait_closed()
        self._servers.clear()
        await asyncio.sleep(0)
        self.registry.close()
