"""Invariant 1 across hosts: an RBD-backed tracked LUN keeps its generation map in RADOS,
so when target A dies (kill -9) under a write load, target B -- another process with
another state directory, same pool and image -- takes the volume over and its next
differential holds every block A acknowledged.  And a paused A (SIGSTOP) that comes back
after B took over is fenced: its writes are refused and B's map stays B's."""
from __future__ import annotations

import random
import signal
import struct
import threading
import time
from pathlib import Path

import pytest

from scsi_target.initiator.sync import SyncIscsiClient

from conftest import run_diffbackup as diffbackup
from scsi_target.config import DEFAULT_IQN
from scsi_target.testing.process import ServerProcess

pytestmark = [pytest.mark.ceph, pytest.mark.timeout(900)]

POOL = "failover"
SIZE = 16 << 20
BLOCK = 4096
BLOCKS = SIZE // BLOCK
LOCK = 4                       # track_map_lock of the servers, seconds


@pytest.fixture(scope="module")
def cluster(ceph_cluster):
    try:
        ceph_cluster.create_pool(POOL)
    except Exception:
        pass
    # B starts once librbd breaks the dead A's image lock (A's watch times out:
    # about 30 s); by then A's map lock (track_map_lock) has lapsed too.
    yield ceph_cluster


class Target(ServerProcess):
    """``scsi-target serve --config`` in its own state directory (one "host")."""

    def __init__(self, state: Path, conf: str, image: str, *, attempts_until: float = 90,
                 take_over: bool = False):
        state.mkdir(parents=True, exist_ok=True)
        cfg = state / "target.toml"
        cfg.write_text(
            'portals = ["127.0.0.1:0"]\n\n[[target]]\n'
            f'iqn = "{DEFAULT_IQN}"\n\n[[target.lun]]\nlun = 0\ntrack_map_lock = {LOCK}\n'
            f'[target.lun.rbd]\npool = "{POOL}"\nimage = "{image}"\nconf = "{conf}"\n'
            f'take_over = {"true" if take_over else "false"}\n\n'
            '[[target.lun]]\nlun = 1\nkind = "backup"\nsource = 0\n')
        super().__init__(state, None, args=("--config", str(cfg)))
        # Until A's image lock is broken, B is refused ("already served"): retried.
        self.start_when_free(attempts_until)
        self.started = time.monotonic()

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def kill(self) -> int | None:
        self.signal(signal.SIGCONT)      # a stopped process takes SIGKILL too, but wait() on it
        return super().kill()


def _content(block: int, version: int) -> bytes:
    return struct.pack("<QQ", block, version) * (BLOCK // 16)


class Load:
    """Random 4 KiB writes with versioned content from ``threads`` sessions; every
    acknowledged write is recorded (block -> last acknowledged version), and so is
    every write sent (it may have landed without an answer)."""

    def __init__(self, url: str, seed: int, versions: dict, threads: int = 4):
        self.acked: dict[int, int] = {}
        self.sent: dict[int, list[int]] = {}
        self.count = 0
        self.versions = versions
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(url, random.Random(seed * 31 + i), i,
                                                                 threads), daemon=True)
                        for i in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self, url: str, rnd: random.Random, lane: int, lanes: int) -> None:
        try:
            with SyncIscsiClient(url, timeout=10) as c:
                while not self.stop.is_set():
                    block = rnd.randrange(lane, BLOCKS, lanes)     # disjoint per session
                    with self.lock:
                        v = self.versions.get(block, 0) + 1
                        self.versions[block] = v
                        self.sent.setdefault(block, []).append(v)
                    r = c.write(block * 8, _content(block, v))
                    if not r.good:
                        return
                    with self.lock:
                        self.acked[block] = v
                        self.count += 1
        except Exception:
            pass                      # the target died under us

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def _restore(tmp: Path, streams: list[Path], name: str) -> bytes:
    out = tmp / name
    r = diffbackup("restore", str(out), *map(str, streams), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return out.read_bytes()


TAKE_OVER = pytest.mark.parametrize("take_over", [False, True], ids=["waits", "takes-over"])


@TAKE_OVER
def test_kill9_failover_keeps_every_acknowledged_block(cluster, tmp_path, take_over):
    """B waits for A's locks to lapse, or (take_over) fences A and breaks them at once."""
    conf = str(cluster.conf)
    image = f"vol-kill-{take_over:d}"
    cluster.run("rbd", "create", f"{POOL}/{image}", "--size", "16M")
    first = Target(tmp_path / "host0", conf, image)
    streams = [tmp_path / "full"]
    r = diffbackup("full", first.url(0), "-o", str(streams[0]))
    assert r.returncode == 0, r.stderr
    serving = first
    versions: dict[int, int] = {}
    expect: dict[int, int] = {}          # block -> last acknowledged version, all hosts
    in_flight: dict[int, set[int]] = {}  # versions sent after it (may have landed)
    kills = acked_total = 0
    missed: list = []
    takeover = []
    rnd = random.Random(15)
    for it in range(1, 5):
        load = Load(serving.url(0), it, versions)
        time.sleep(rnd.uniform(1.0, 3.0))
        serving.kill()                   # kill -9 mid-load: no shutdown path runs
        kills += 1
        load.finish()
        acked_total += load.count
        for block, sent in load.sent.items():
            a = load.acked.get(block)
            if a is not None:
                expect[block] = a
                in_flight[block] = {v for v in sent if v > a}
            else:
                in_flight.setdefault(block, set()).update(sent)
        t0 = time.monotonic()
        serving = Target(tmp_path / f"host{it}", conf, image,      # another "host"
                         take_over=take_over)
        takeover.append(time.monotonic() - t0)
        streams.append(tmp_path / f"diff{it}")
        r = diffbackup("diff", serving.url(0), "--scope", "1", "-o", str(streams[-1]))
        assert r.returncode == 0, r.stdout + r.stderr
        restored = _restore(tmp_path, streams, f"restored{it}")
        for block, v in expect.items():
            got = restored[block * BLOCK:(block + 1) * BLOCK]
            if got != _content(block, v) and \
                    not any(got == _content(block, w) for w in in_flight.get(block, ())):
                missed.append((it, block, v))
        # The restore is the volume as B serves it (the diff is its point in time).
        with SyncIscsiClient(serving.url(0), timeout=30) as c:
            live = bytes(c.read(0, SIZE // 512))
        diff_blocks = [b for b in range(BLOCKS)
                       if live[b * BLOCK:(b + 1) * BLOCK] != restored[b * BLOCK:(b + 1) * BLOCK]]
        assert not diff_blocks, f"kill {it}: restore differs from the volume at {diff_blocks[:8]}"
    serving.stop()
    print(f"\nfailover: {acked_total} acknowledged writes, {kills} kills, {len(missed)} missed "
          f"blocks; takeover {', '.join(f'{t:.1f}' for t in takeover)} s")
    assert not missed, f"acknowledged blocks missing from the restore: {missed[:10]}"
    assert acked_total > 100 and kills == 4
    if take_over:
        assert max(takeover) < 15, f"take-over took {takeover} s"


@TAKE_OVER
def test_a_paused_target_is_fenced_after_another_takes_over(cluster, tmp_path, take_over):
    conf = str(cluster.conf)
    image = f"vol-pause-{take_over:d}"
    cluster.run("rbd", "create", f"{POOL}/{image}", "--size", "16M")
    a = Target(tmp_path / "hostA", conf, image)
    b = None
    try:
        full = tmp_path / "full"
        assert diffbackup("full", a.url(0), "-o", str(full)).returncode == 0
        ca = SyncIscsiClient(a.url(0), timeout=60)
        ca.__enter__()
        assert ca.write(0, _content(0, 1)).good               # A serves
        a.signal(signal.SIGSTOP)
        t0 = time.monotonic()
        b = Target(tmp_path / "hostB", conf, image,          # waits out A's locks,
                   take_over=take_over)                      # or breaks them at once
        if take_over:
            assert time.monotonic() - t0 < 15, "take-over of a paused holder took too long"
        with SyncIscsiClient(b.url(0), timeout=30) as cb:
            for blk in (1, 2, 3):
                assert cb.write(blk * 8, _content(blk, 2)).good
        a.signal(signal.SIGCONT)
        refused = 0
        for blk in (2, 3, 4):
            try:
                r = ca.write(blk * 8, _content(blk, 99))
                refused += not r.good
            except Exception:
                refused += 1                                  # or A dropped the session
        assert refused == 3, "a stale target acknowledged a write after the takeover"
        try:
            ca.__exit__(None, None, None)
        except Exception:
            pass
        diff = tmp_path / "diff"
        r = diffbackup("diff", b.url(0), "--scope", "1", "-o", str(diff))
        assert r.returncode == 0, r.stdout + r.stderr
        restored = _restore(tmp_path, [full, diff], "restored")
        with SyncIscsiClient(b.url(0), timeout=30) as cb:
            live = bytes(cb.read(0, SIZE // 512))
        assert restored == live
        for blk, v in ((0, 1), (1, 2), (2, 2), (3, 2)):
            assert live[blk * BLOCK:(blk + 1) * BLOCK] == _content(blk, v)
        assert live[4 * BLOCK:5 * BLOCK] == bytes(BLOCK)     # A's refused write is not there
    finally:
        a.kill()
        if b is not None:
            b.stop()


def _write_behind_the_back(conf: str, image: str, offset: int, data: bytes) -> None:
    """A write the tracker never sees: straight into the image with the python rbd
    binding, while no target holds it."""
    from volume import ceph_bindings
    rados, rbd = ceph_bindings.load("rados"), ceph_bindings.load("rbd")
    c = rados.Rados(conffile=conf, conf={"rados_osd_op_timeout": "30",
                                         "rados_mon_op_timeout": "30"})
    c.connect(timeout=30)
    try:
        io = c.open_ioctx(POOL)
        try:
            img = rbd.Image(io, image)
            try:
                assert img.write(data, offset) == len(data)
                img.flush()
            finally:
                img.close()
        finally:
            io.close()
    finally:
        c.shutdown()


def test_the_audit_table_is_in_rados_and_b_finds_a_write_behind_the_trackers_back(cluster,
                                                                                 tmp_path):
    """The block CRC table of A's full backup is kept in RADOS beside the map; a write
    straight into the image (python rbd binding) while no target served it is found by
    `diffbackup audit` on target B after a kill -9 of A: exit 1, the block named and
    re-marked, and B's next differential restores, with the full, equal to rbd export."""
    conf = str(cluster.conf)
    image = "vol-audit"
    cluster.run("rbd", "create", f"{POOL}/{image}", "--size", "16M")
    a = Target(tmp_path / "hostA", conf, image)
    full, diff = tmp_path / "full", tmp_path / "diff"
    try:
        with SyncIscsiClient(a.url(0), timeout=30) as c:
            for blk in range(0, BLOCKS, 7):
                assert c.write(blk * 8, _content(blk, 1)).good
        r = diffbackup("full", a.url(0), "-o", str(full))
        assert r.returncode == 0, r.stdout + r.stderr
        r = diffbackup("audit", a.url(0), "--full")
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        a.stop()                                  # a clean stop: the image is free
    objects = cluster.run("rados", "-p", POOL, "ls", timeout=60).stdout.decode()
    assert f"rbd_map.{image}.genmap.blockcrc." in objects, objects
    missed = 701                                  # a block the map calls unchanged
    _write_behind_the_back(conf, image, missed * BLOCK + 100, b"\xee" * 200)
    a = Target(tmp_path / "hostA", conf, image)   # A serves again, and dies
    with SyncIscsiClient(a.url(0), timeout=30) as c:
        assert c.write(3 * 8, _content(3, 2)).good
    a.kill()
    b = Target(tmp_path / "hostB", conf, image, take_over=True)   # another host, no local table
    try:
        r = diffbackup("audit", b.url(0), "--full")
        out = r.stdout + r.stderr
        assert r.returncode == 1, out
        assert "AUDIT FAILED: 1 blocks changed without the tracker seeing it" in out, out
        assert f"blocks {missed}..{missed}" in out, out
        r = diffbackup("diff", b.url(0), "--scope", "1", "-o", str(diff))
        assert r.returncode == 0, r.stdout + r.stderr
        r = diffbackup("audit", b.url(0), "--full")          # the table follows the diff
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        b.stop()
    restored = _restore(tmp_path, [full, diff], "restored")
    exported = tmp_path / "exported"
    cluster.run("rbd", "export", f"{POOL}/{image}", str(exported), timeout=120)
    assert restored == exported.read_bytes()
    assert restored[missed * BLOCK + 100:missed * BLOCK + 300] == b"\xee" * 200
