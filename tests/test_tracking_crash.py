"""DESIGN invariant 1 against the real server: kill -9 during a write load, restart,
take a differential backup: every block whose write was acknowledged is in it."""
from __future__ import annotations

import random
import threading
import time

import pytest

from scsi_target.initiator.sync import SyncIscsiClient
from volume.stream import Record, StreamDecoder

from scsi_target.testing.process import ServerProcess

SIZE = 16 << 20
BS = 512
GRAN = 4096


def _load(url: str, rnd: random.Random, acked: list, stop: threading.Event) -> None:
    try:
        with SyncIscsiClient(url, timeout=5) as c:
            while not stop.is_set():
                lba = rnd.randrange(SIZE // BS - 64)
                n = rnd.randint(1, 64)
                c.write(lba, rnd.randbytes(n * BS)).raise_for_status()
                acked.append((lba, n))
    except Exception:
        pass          # the server was killed under us


def _blocks_in(path) -> set[int]:
    dec = StreamDecoder()
    got: set[int] = set()
    with open(path, "rb") as f:
        for item in dec.feed(f.read()):
            assert isinstance(item, Record), item
            got.update(range(item.first_block, item.first_block + item.nblocks))
    assert dec.finish().complete
    return got


@pytest.mark.timeout(600)
def test_kill9_during_writes_never_loses_a_block(diffbackup, tmp_path):
    rnd = random.Random(1)
    disk = f"{tmp_path}/vol.img:16M"
    with ServerProcess.from_flags(tmp_path, "--disk", disk, "--backup-device") as srv:
        r = diffbackup("full", srv.url(0), "-o", str(tmp_path / "full"))
        assert r.returncode == 0, r.stderr
    total_acked = 0
    for it in range(20):
        srv = ServerProcess.from_flags(tmp_path, "--disk", disk, "--backup-device").start()
        acked: list = []
        stop = threading.Event()
        t = threading.Thread(target=_load, args=(srv.url(0), random.Random(it), acked, stop))
        t.start()
        time.sleep(rnd.uniform(0.1, 0.6))
        srv.kill()                       # SIGKILL: no shutdown path runs
        stop.set()
        t.join(30)
        snapshot = list(acked)
        total_acked += len(snapshot)
        with ServerProcess.from_flags(tmp_path, "--disk", disk, "--backup-device") as srv2:
            out = tmp_path / f"diff{it}"
            r = diffbackup("diff", srv2.url(0), "--scope", "1", "-o", str(out))
            assert r.returncode == 0, r.stderr
        got = _blocks_in(out)
        missing = [(lba, n) for lba, n in snapshot
                   if not set(range(lba * BS // GRAN, ((lba + n) * BS - 1) // GRAN + 1)) <= got]
        assert not missing, f"iteration {it}: acknowledged writes missing: {missing[:5]}"
    assert total_acked > 100          # the load really ran
