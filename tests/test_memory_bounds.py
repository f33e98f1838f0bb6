"""Memory stays bounded by the target's budgets, whatever an initiator sends (socket level, RSS).

The server runs in its own process so its resident set size can be read from
/proc; the attacks come from tools/bench_memory.py (the same code that
measures them before and after for the notes).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scsi_target.protocol import pdu as P
from scsi_target.target import budget as B
from tools import bench_memory as M

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20
SLACK = 24 * MiB          # interpreter noise: PDU objects, receive buffers, logging

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")


def test_writes_with_a_huge_length_and_no_data_take_no_memory(tmp_path):
    with M.serve(REPO, tmp_path / "d.img") as (proc, port):
        ini = M.RawInitiator("127.0.0.1", port)
        try:
            before = M.settle(proc.pid, 0.5)
            M.attack_writes(ini, count=6, edtl=256 * MiB)
            assert M.settle(proc.pid) - before < SLACK        # was 1.5 GiB
            # The connection still serves: a small write and its read back.
            data = os.urandom(4096)
            ini.send(ini.command(M.write16(8, 4096), write=4096, data=data))
            ini.send(ini.command(M.read16(8, 4096), read=4096))
            replies: list = []
            while len(replies) < 2:
                replies += [p for p in ini.receive(1) if not isinstance(p, P.R2T)]
            assert replies[0].status == 0 and bytes(replies[1].data) == data
        finally:
            ini.close()


def test_pipelined_reads_of_a_peer_that_does_not_read_are_held_back(tmp_path):
    with M.serve(REPO, tmp_path / "d.img") as (proc, port):
        pattern = os.urandom(32 * MiB)
        ini = M.RawInitiator("127.0.0.1", port)
        try:
            assert M.write(ini, 0, pattern[:1 * MiB]) == 0
            before = M.settle(proc.pid, 0.5)
            M.attack_reads(ini, count=24, size=32 * MiB)
            growth = M.settle(proc.pid, 2.0) - before
            # One command's data beyond the send bound, not 24 (was 770 MiB).
            assert growth < B.SEND_QUEUE_BOUND + 32 * MiB + SLACK
            # Once the peer reads, every command is answered, in order, with its data.
            got, statuses = bytearray(), []
            while len(statuses) < 24:
                (p,) = ini.receive(1, timeout=30)
                if len(statuses) == 0 and len(got) < 1 * MiB:
                    got += p.data
                if getattr(p, "has_status", False) or isinstance(p, P.ScsiResponse):
                    statuses.append((p.itt, p.status))
            assert bytes(got[:1 * MiB]) == pattern[:1 * MiB]
            assert [s for _, s in statuses] == [0] * 24
            assert [i for i, _ in statuses] == sorted(i for i, _ in statuses)
        finally:
            ini.close()


_LAUNCHER = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from scsi_target.config import LunSpec, build_lu
    from scsi_target.scsi.lun import LunMap
    from scsi_target.target.registry import Portal, TargetDef, TargetRegistry
    from scsi_target.target.server import IscsiServer

    async def main(path, iqn, conn_budget, target_budget):
        registry = TargetRegistry(portals=[Portal("127.0.0.1", 0)])
        luns = LunMap(iqn)
        luns.add(0, build_lu(LunSpec(lun=0, path=Path(path), size=512 << 20, create=True), iqn))
        registry.add(TargetDef(iqn, luns))
        server = IscsiServer(registry, write_budget=conn_budget, target_write_budget=target_budget)
        await server.start()
        print(server.bound_portals[0][1], flush=True)
        await server.serve_forever()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
""")


def test_write_budgets_per_connection_and_per_target_bound_admitted_buffers(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(tmp_path / "d.img"), M.IQN,
                             str(64 * MiB), str(96 * MiB)], cwd=REPO, stdout=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), start_new_session=True)
    conns = []
    try:
        port = int(proc.stdout.readline())
        a = M.RawInitiator("127.0.0.1", port, isid=1)
        b = M.RawInitiator("127.0.0.1", port, isid=2)
        conns = [a, b]
        before = M.settle(proc.pid, 0.5)
        # Three 32 MiB writes on each connection; the data of each first R2T is sent,
        # so every admitted write holds its whole buffer.
        ra = M.attack_writes(a, count=3, edtl=32 * MiB, answer_first_r2t=True)
        rb = M.attack_writes(b, count=3, edtl=32 * MiB, answer_first_r2t=True)
        assert len({r.itt for r in ra}) == 2          # the connection's 64 MiB
        assert len({r.itt for r in rb}) == 1          # what is left of the target's 96 MiB
        growth = M.settle(proc.pid) - before
        assert growth < 96 * MiB + SLACK              # all six at once would be 192 MiB
        # A goes away: its budget returns to the target and B's waiting write is asked for.
        a.close()
        conns = [b]
        (r2t,) = [p for p in b.receive(1, timeout=10)]
        assert isinstance(r2t, P.R2T) and r2t.itt not in {r.itt for r in rb} and r2t.offset == 0
    finally:
        for c in conns:
            c.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_commands_held_back_by_the_send_bound_go_on_when_the_kernel_took_the_output(tmp_path):
    """Reads pipelined past the send bound, by a peer that does read: when the kernel
    takes a batch's output at once, the commands left unread must still be answered
    at once (they once waited for the next keepalive tick, ~30 s)."""
    with M.serve(REPO, tmp_path / "d.img", size="64M",
                 extra=("--send-queue-bound", "64K")) as (_proc, port):
        pattern = os.urandom(64 * 1024)
        ini = M.RawInitiator("127.0.0.1", port)
        try:
            assert M.write(ini, 0, pattern) == 0
            count = 32
            ini.send(*[ini.command(M.read16(0, len(pattern)), read=len(pattern))
                       for _ in range(count)])
            got, statuses = bytearray(), []
            while len(statuses) < count:
                for p in ini.receive(1, timeout=10):   # a stall fails here, not in 30 s
                    if isinstance(p, P.DataIn):
                        got += bytes(p.data)
                        if p.has_status:
                            statuses.append(p.status)
                    elif isinstance(p, P.ScsiResponse):
                        statuses.append(p.status)
            assert statuses == [0] * count
            assert bytes(got) == pattern * count
        finally:
            ini.close()
