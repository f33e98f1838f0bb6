"""Many sessions at once, command queueing, and session reinstatement, over real sockets."""
from __future__ import annotations

import asyncio
import os

from scsi_target.config import LunSpec, build_lu
from scsi_target.initiator.client import IscsiClient
from scsi_target.target.server import IscsiServer
from scsi_target.scsi.lun import LunMap
from scsi_target.target.registry import Portal, TargetDef, TargetRegistry

IQN = "iqn.2026-11.org.pyscsi.test:sessions"
SIZE = 16 << 20


async def _serve(tmp_path) -> IscsiServer:
    registry = TargetRegistry(portals=[Portal("127.0.0.1", 0)])
    luns = LunMap(IQN)
    luns.add(0, build_lu(LunSpec(lun=0, path=tmp_path / "d.img", size=SIZE, create=True), IQN))
    registry.add(TargetDef(IQN, luns))
    server = IscsiServer(registry)
    await server.start()
    return server


def _url(server) -> str:
    host, port = server.bound_portals[0][:2]
    return f"iscsi://{host}:{port}/{IQN}/0"


async def _settle(client) -> None:
    await client.execute(bytes(6))  # takes the power-on unit attention of a new nexus


def test_sixteen_sessions_with_queued_commands_keep_their_data_apart(tmp_path):
    async def worker(url, n):
        async with await IscsiClient.connect(
                url, initiator_name=f"iqn.2026-11.test:init{n}") as client:
            await _settle(client)
            region = n * 512                       # 512 blocks of 512 bytes per session
            blobs = [os.urandom(512 * 8) for _ in range(16)]
            # 16 writes in flight at once on one session (CmdSN window, R2T per command)
            await asyncio.gather(*(client.write(region + 8 * i, blobs[i]) for i in range(16)))
            reads = await asyncio.gather(*(client.read(region + 8 * i, 8) for i in range(16)))
            assert [bytes(r) for r in reads] == blobs
            await client.logout()
        return n

    async def main():
        server = await _serve(tmp_path)
        try:
            done = await asyncio.wait_for(
                asyncio.gather(*(worker(_url(server), n) for n in range(16))), 60)
            assert sorted(done) == list(range(16))
            await asyncio.sleep(0.1)
            assert len(server.sessions) == 0         # every logout ended its session
        finally:
            await server.close()

    asyncio.run(main())


def test_repeated_isid_reinstates_the_session(tmp_path):
    async def main():
        server = await _serve(tmp_path)
        try:
            isid = bytes.fromhex("80123456789a")
            first = IscsiClient("127.0.0.1", server.bound_portals[0][1], IQN, lun=0)
            first.isid = isid
            await first.open()
            await _settle(first)
            await first.write(0, b"\x01" * 512)
            assert len(server.sessions) == 1
            old = server.sessions.sessions()[0]
            second = IscsiClient("127.0.0.1", server.bound_portals[0][1], IQN, lun=0)
            second.isid = isid
            await second.open()
            # Same initiator name and ISID: the old session is gone, the new one serves.
            assert len(server.sessions) == 1
            assert server.sessions.sessions()[0] is not old
            await _settle(second)
            assert bytes(await second.read(0, 1)) == b"\x01" * 512
            await second.logout()
        finally:
            await server.close()

    asyncio.run(main())


def test_running_out_of_descriptors_pauses_accepting_instead_of_spinning(tmp_path):
    import resource
    import socket

    async def main():
        server = await _serve(tmp_path)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        host, port = server.bound_portals[0][:2]
        loop = asyncio.get_running_loop()
        socks = []
        try:
            # Leave the server (same process) no descriptor for accept().
            used = len(os.listdir("/proc/self/fd"))
            resource.setrlimit(resource.RLIMIT_NOFILE, (used + 4, hard))
            try:
                while True:
                    s = socket.socket()
                    s.setblocking(False)
                    socks.append(s)
                    try:
                        s.connect((host, port))
                    except BlockingIOError:
                        pass
            except OSError:
                pass
            t0 = loop.time()
            calls = 0
            real = server._accept

            def counting(listener):
                nonlocal calls
                calls += 1
                real(listener)
            # Re-register through the pause path, as after a failed accept.
            loop.remove_reader(server._listeners[0].fileno())
            loop.add_reader(server._listeners[0].fileno(), counting, server._listeners[0])
            await asyncio.sleep(0.3)
            assert calls <= 3, f"accept spun {calls} times in {loop.time() - t0:.1f}s"
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            for s in socks:
                s.close()
            await server.close()

    asyncio.run(main())
