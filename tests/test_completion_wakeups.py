"""The server's completion queue (asynchronous stores answer through it) never loses
a wakeup: a completion posted from another thread while the loop is draining the
queue still runs.  A lost wakeup left a tracked RBD LUN silent under 4 KiB QD32
writes (the regression test through qemu-img is in test_rbd_lun)."""
from __future__ import annotations

import asyncio
import os
import threading
import time

from scsi_target.target import server


async def _until(pred, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        await asyncio.sleep(0.01)
    return pred()


def test_a_post_racing_the_wakeup_read_does_not_silence_later_posts(monkeypatch):
    """The worst interleaving, forced: another thread posts while the loop is about to
    read the eventfd.  Every later completion must still wake the loop."""
    async def main() -> list:
        comps = server._Completions(asyncio.get_running_loop())
        ran: list = []
        real_read = os.eventfd_read
        reads = 0

        def racing_read(fd):
            nonlocal reads
            reads += 1
            if reads == 1:          # a completion thread posts at this very moment
                comps.post(ran.append, "raced")
            return real_read(fd)
        monkeypatch.setattr(server.os, "eventfd_read", racing_read)
        try:
            threading.Thread(target=comps.post, args=(ran.append, "first")).start()
            assert await _until(lambda: len(ran) == 2, 5), ran
            threading.Thread(target=comps.post, args=(ran.append, "after")).start()
            await _until(lambda: "after" in ran, 5)
            return ran
        finally:
            comps.close()
    assert asyncio.run(main()) == ["first", "raced", "after"]


def test_completions_from_many_threads_all_run():
    threads, per_thread = 4, 20000

    async def main() -> int:
        comps = server._Completions(asyncio.get_running_loop())
        count = [0]

        def bump(_):
            count[0] += 1

        def poster():
            for i in range(per_thread):
                comps.post(bump, i)
                if i % 97 == 0:
                    time.sleep(0)     # let the loop drain mid-burst
        workers = [threading.Thread(target=poster) for _ in range(threads)]
        for w in workers:
            w.start()
        try:
            await _until(lambda: count[0] == threads * per_thread, 30)
            return count[0]
        finally:
            for w in workers:
                w.join()
            comps.close()
    assert asyncio.run(main()) == threads * per_thread
