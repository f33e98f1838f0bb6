"""Target-side liveness: NOP-In pings, dead-initiator detection, login timeout."""
from __future__ import annotations

import asyncio
import socket

import pytest

from scsi_target.config import LunSpec, build_lu
from scsi_target.protocol import pdu as P
from scsi_target.initiator.client import IscsiClient
from scsi_target.target.server import IscsiServer
from scsi_target.scsi.lun import LunMap
from scsi_target.target.registry import Portal, TargetDef, TargetRegistry

IQN = "iqn.2026-11.org.pyscsi.test:keepalive"


async def _serve(tmp_path, **kw) -> IscsiServer:
    registry = TargetRegistry(portals=[Portal("127.0.0.1", 0)])
    luns = LunMap(IQN)
    luns.add(0, build_lu(LunSpec(lun=0, path=tmp_path / "d.img", size=1 << 20, create=True), IQN))
    registry.add(TargetDef(IQN, luns))
    server = IscsiServer(registry, **kw)
    await server.start()
    return server


def _url(server: IscsiServer) -> str:
    host, port = server.bound_portals[0][:2]
    return f"iscsi://{host}:{port}/{IQN}/0"


def _hook_nop_in(monkeypatch, hook):
    """Route the client's NOP-In handling through ``hook(original, client, proto, pdu)``."""
    original = IscsiClient._HANDLERS[P.NopIn]
    handlers = dict(IscsiClient._HANDLERS)
    handlers[P.NopIn] = lambda self, proto, pdu: hook(original, self, proto, pdu)
    monkeypatch.setattr(IscsiClient, "_HANDLERS", handlers)


def test_idle_initiator_is_pinged_and_stays_connected(tmp_path, monkeypatch):
    seen = []

    def counting(original, client, proto, pdu):
        if pdu.itt == P.RESERVED_TAG and pdu.ttt != P.RESERVED_TAG:
            seen.append(pdu.ttt)
        original(client, proto, pdu)
    _hook_nop_in(monkeypatch, counting)

    async def main():
        server = await _serve(tmp_path, nop_interval=0.2, nop_timeout=0.5)
        try:
            client = await IscsiClient.connect(_url(server))
            await asyncio.sleep(1.5)
            # The session still works (first command: the power-on unit attention).
            first = await client.execute(bytes(6))
            assert first.status in (0, 2)
            result = await client.execute(bytes(6), check=True)  # TEST UNIT READY
            assert result.status == 0
            await client.logout()
        finally:
            await server.close()

    asyncio.run(main())
    pings = seen
    assert len(pings) >= 2, "the target never pinged an idle initiator"
    assert len(set(pings)) == len(pings), "each ping needs its own target transfer tag"


def test_initiator_that_ignores_pings_is_dropped(tmp_path, monkeypatch):
    _hook_nop_in(monkeypatch, lambda original, client, proto, pdu: None)  # a hung initiator

    async def main():
        server = await _serve(tmp_path, nop_interval=0.2, nop_timeout=0.3)
        try:
            client = await IscsiClient.connect(_url(server))
            await asyncio.sleep(1.5)
            assert len(server.sessions) == 0, "dead session still holds its nexus"
            with pytest.raises(Exception):
                await client.execute(bytes(6), check=True)
        finally:
            await server.close()

    asyncio.run(main())


def test_connection_that_never_logs_in_is_closed(tmp_path):
    async def main():
        server = await _serve(tmp_path, login_timeout=0.3)
        host, port = server.bound_portals[0][:2]
        loop = asyncio.get_running_loop()
        sock = socket.create_connection((host, port))
        sock.setblocking(False)
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 100), 3)
            assert data == b"", "server should close a silent pre-login connection"
        finally:
            sock.close()
            await server.close()

    asyncio.run(main())


def test_a_login_trickled_byte_by_byte_still_times_out(tmp_path):
    async def main():
        server = await _serve(tmp_path, login_timeout=0.6)
        host, port = server.bound_portals[0][:2]
        loop = asyncio.get_running_loop()
        sock = socket.create_connection((host, port))
        sock.setblocking(False)
        try:
            closed_at = None
            for i in range(30):                  # one byte of a BHS every 0.1 s
                try:
                    await loop.sock_sendall(sock, b"\x43")
                except OSError:
                    closed_at = i
                    break
                try:
                    data = await asyncio.wait_for(loop.sock_recv(sock, 100), 0.1)
                    if data == b"":
                        closed_at = i
                        break
                except asyncio.TimeoutError:
                    pass
            assert closed_at is not None and closed_at < 20, "trickling kept the login open"
        finally:
            sock.close()
            await server.close()

    asyncio.run(main())
