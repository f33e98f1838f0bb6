"""RBD-backed disk LUNs served by the real server process, exercised by real clients.

qemu-img/qemu-io (libiscsi inside qemu), libiscsi's iscsi-test-cu SBC suites,
our initiator; the exclusive lock between two server processes; and an OSD
killed under the LUN, which must become sense data within the op timeout.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from scsi_target.config import DEFAULT_IQN
from scsi_target.testing.process import ServerProcess
from scsi_target.testing.external import require_tool, run_tool
from scsi_target.testing.libiscsi import cu_summary
from scsi_target.initiator.sync import SyncIscsiClient
from scsi_target.scsi.sense import SenseKey
from conftest import run_diffbackup
from test_sbc_libiscsi import SBC_SUITES, skip_audit

pytestmark = pytest.mark.ceph

MiB = 1 << 20
POOL = "pyscsi-rbd-lun"


def rbd_server(workdir: Path, conf: Path, image: str, *, rbd_extra: str = "",
               lun_extra: str = "") -> ServerProcess:
    """``scsi-target serve --config`` of one target with one RBD LUN (not started)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / f"{image}.toml"
    config.write_text(
        'portals = ["127.0.0.1:0"]\n[[target]]\n'
        f'iqn = "{DEFAULT_IQN}"\n[[target.lun]]\nlun = 0\n{lun_extra}\n'
        f'rbd = {{ pool = "{POOL}", image = "{image}", conf = "{conf}"{rbd_extra} }}\n')
    return ServerProcess.from_flags(workdir, "--config", str(config))


@pytest.fixture(scope="module")
def pool(ceph_cluster):
    ceph_cluster.create_pool(POOL)
    return ceph_cluster


def new_image(cluster, size: str = "64M") -> str:
    name = f"lun-{uuid.uuid4().hex[:10]}"
    cluster.run("rbd", "create", f"{POOL}/{name}", "--size", size)
    return name


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_qemu_img_convert_roundtrip_lands_in_the_image(pool, tmp_path):
    qemu_img = require_tool("qemu-img")
    image = new_image(pool, "64M")
    src, back, exported = tmp_path / "src.raw", tmp_path / "back.raw", tmp_path / "exp.raw"
    src.write_bytes(os.urandom(48 * MiB))
    with rbd_server(tmp_path, pool.conf, image) as srv:
        r = run_tool([qemu_img, "convert", "-n", "-f", "raw", "-O", "raw", str(src), srv.url()],
                     timeout=180)
        assert r.returncode == 0, r.stderr
        r = run_tool([qemu_img, "info", srv.url()], timeout=30)
        assert r.returncode == 0 and "64 MiB" in r.stdout, r.stdout + r.stderr
        r = run_tool([qemu_img, "convert", "-O", "raw", "--image-opts",
                      f"driver=raw,size={48 * MiB},file.driver=iscsi,file.transport=tcp,"
                      f"file.portal=127.0.0.1:{srv.port},file.target={DEFAULT_IQN},file.lun=0",
                      str(back)], timeout=180)
        assert r.returncode == 0, r.stderr
    assert sha256(back) == sha256(src)
    # What the initiator wrote is in the RBD image itself, read without our target.
    pool.run("rbd", "export", f"{POOL}/{image}", str(exported), timeout=120)
    assert hashlib.sha256(exported.read_bytes()[:48 * MiB]).hexdigest() == sha256(src)


def qemu_io(url: str, *commands: str) -> str:
    args = [require_tool("qemu-io"), "-f", "raw"]
    for c in commands:
        args += ["-c", c]
    r = run_tool(args + [url], timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    bad = [ln for ln in out.splitlines() if re.search(r"fail|error|mismatch|Pattern", ln, re.I)]
    assert not bad, out
    return out


def test_qemu_io_large_aio_discard_and_zeroes(pool, tmp_path):
    image = new_image(pool, "96M")
    with rbd_server(tmp_path, pool.conf, image) as srv:
        qemu_io(srv.url(),
                "write -P 0xa5 0 4M", "aio_write -P 0x5a 16M 16M", "aio_write -P 0x3c 40M 64k",
                "aio_flush", "read -P 0xa5 0 4M", "read -P 0x5a 16M 16M",
                "read -P 0x3c 40M 64k", "flush")
        # qemu-io's discard is UNMAP, write -z is WRITE SAME with zeroes: both read back 0.
        qemu_io(srv.url(), "discard 16M 8M", "read -P 0 16M 8M", "read -P 0x5a 24M 8M",
                "write -z 1M 2M", "read -P 0 1M 2M", "read -P 0xa5 0 1M", "read -P 0xa5 3M 1M")
        # unaligned for the 4 MiB objects, aligned for the 512-byte blocks
        qemu_io(srv.url(), "write -P 0x77 4095k 3k", "read -P 0x77 4095k 3k",
                "read -P 0xa5 4094k 1k")


def test_libiscsi_sbc_suites_pass_on_an_rbd_lun(pool, tmp_path):
    exe = require_tool("iscsi-test-cu")
    image = new_image(pool, "64M")
    with rbd_server(tmp_path, pool.conf, image) as srv:
        out = run_tool([exe, "-V", "--dataloss", "-t", SBC_SUITES, srv.url()], timeout=600)
    output = out.stdout + out.stderr
    s = cu_summary(output)
    assert s.failed == 0 and not s.failures, f"{s.failures}\n{output[-4000:]}"
    assert s.ran >= 100 and s.passed == s.ran, s
    # The same skips as a file-backed disk: nothing is missing on RBD.
    problems = skip_audit(s.skipped)
    assert not problems, "\n".join(problems)


def test_capacity_provisioning_and_identity_come_from_the_image(pool, tmp_path):
    image = new_image(pool, "40M")
    with rbd_server(tmp_path, pool.conf, image) as srv:
        with SyncIscsiClient(srv.url()) as c:
            c.execute(bytes(6))                  # the power-on unit attention
            cap = c.read_capacity16()
            assert (cap.blocks, cap.block_size, cap.tpe) == (40 * MiB // 512, 512, True)
            serial = c.execute(bytes([0x12, 1, 0x80, 0, 255, 0]), read_length=255).data[4:]
    with rbd_server(tmp_path, pool.conf, image, lun_extra="block_size = 4096") as srv:
        with SyncIscsiClient(srv.url()) as c:
            c.execute(bytes(6))
            cap = c.read_capacity16()
            assert (cap.blocks, cap.block_size) == (40 * MiB // 4096, 4096)
            # The same image is the same device, whichever host serves it.
            assert c.execute(bytes([0x12, 1, 0x80, 0, 255, 0]), read_length=255).data[4:] \
                == serial


def _serve_flags(pool, image: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scsi_target", "serve", "--disk",
                           f"rbd:{POOL}/{image}", "--ceph-conf", str(pool.conf), "--listen",
                           "127.0.0.1:0", *extra], capture_output=True, text=True, timeout=60)


def test_a_second_server_for_the_same_image_is_refused_in_one_line(pool, tmp_path):
    image = new_image(pool, "16M")
    with rbd_server(tmp_path, pool.conf, image) as srv:
        r = _serve_flags(pool, image)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, r.stderr
        assert re.fullmatch(rf"scsi-target: error: command line: --disk rbd:{POOL}/{image}: "
                            rf"rbd:{POOL}/{image} is already served by another client "
                            rf"\(exclusive lock held by 127\.0\.0\.1:0/\d+\)", lines[0]), lines
        with SyncIscsiClient(srv.url()) as c:     # the first one still serves
            c.execute(bytes(6))
            assert c.write(0, b"\x42" * 512).good
    # Once the first server stopped, the image is free for the next one.
    srv2 = rbd_server(tmp_path / "b", pool.conf, image).start()
    try:
        with SyncIscsiClient(srv2.url()) as c:
            c.execute(bytes(6))
            assert bytes(c.read(0, 1)) == b"\x42" * 512
    finally:
        srv2.stop()


def test_missing_image_and_tracking_are_one_line_errors(pool, tmp_path):
    r = _serve_flags(pool, "no-such-image")
    assert r.returncode == 2
    assert r.stderr.strip() == (f"scsi-target: error: command line: --disk rbd:{POOL}/"
                                f"no-such-image: rbd:{POOL}/no-such-image: the image does not "
                                "exist (give a size to create it)")
    name = f"made-{uuid.uuid4().hex[:6]}"
    srv = rbd_server(tmp_path, pool.conf, name, lun_extra='size = "8M"\ncreate = true').start()
    try:
        with SyncIscsiClient(srv.url()) as c:
            c.execute(bytes(6))
            assert c.read_capacity16().blocks == 8 * MiB // 512
    finally:
        srv.stop()


# -- a dead OSD: timeouts become sense data, never a hang -----------------------------
def test_osd_loss_gives_timeout_sense_within_the_op_timeout(tmp_path):
    from scsi_target.testing.ceph import CephCluster, require_ceph
    require_ceph()
    with CephCluster(tmp_path / "ceph") as cluster:      # private: this test kills its OSD
        cluster.create_pool(POOL)
        image = new_image(cluster, "16M")
        srv = rbd_server(tmp_path, cluster.conf, image,
                        rbd_extra=", op_timeout = 3, mount_timeout = 5").start()
        try:
            with SyncIscsiClient(srv.url(), timeout=30) as c:
                c.execute(bytes(6))
                assert c.write(0, os.urandom(8 * 512)).good
                cluster.kill_daemon("osd.0")
                time.sleep(0.5)
                for cdb, data, read_len in [
                        (bytes([0x28, 0, 0, 0, 0, 64, 0, 0, 8, 0]), None, 4096),   # READ(10)
                        (bytes([0x2A, 0, 0, 0, 0, 64, 0, 0, 8, 0]), bytes(4096), 0),  # WRITE(10)
                        (bytes([0x35] + [0] * 9), None, 0)]:                    # SYNC CACHE
                    t0 = time.monotonic()
                    r = c.execute(cdb, data_out=data, read_length=read_len, timeout=30)
                    took = time.monotonic() - t0
                    if cdb[0] == 0x35 and r.good:
                        continue        # nothing left to flush: nothing to wait for
                    assert (r.status, r.sense_key, r.asc, r.ascq) == \
                        (2, SenseKey.ABORTED_COMMAND, 0x08, 0x01), r
                    assert took < 15, f"{cdb.hex()} took {took:.1f} s"
                # The server still answers what needs no medium.
                assert c.execute(bytes([0x12, 0, 0, 0, 36, 0]), read_length=36).good
            assert srv.proc.poll() is None
        finally:
            srv.stop()
        assert srv.proc.returncode is not None


def test_a_resized_image_is_announced_and_served_at_its_new_size(pool, tmp_path):
    image = new_image(pool, "16M")
    # Untracked: a tracked volume keeps the size its generation map was made for.
    with rbd_server(tmp_path, pool.conf, image, lun_extra="track = false") as srv:
        with SyncIscsiClient(srv.url()) as c:
            c.execute(bytes(6))
            assert c.read_capacity16().blocks == 16 * MiB // 512
            far = 20 * MiB // 512
            r = c.execute(bytes([0x28, 0]) + far.to_bytes(4, "big") + bytes([0, 0, 1, 0]),
                          read_length=512)
            assert (r.sense_key, r.asc) == (SenseKey.ILLEGAL_REQUEST, 0x21)   # out of range
            pool.run("rbd", "resize", "--size", "24M", f"{POOL}/{image}")
            deadline = time.monotonic() + 20
            while True:
                r = c.execute(bytes(6))
                if not r.good:
                    break
                assert time.monotonic() < deadline, "no unit attention after the resize"
                time.sleep(0.2)
            assert (r.sense_key, r.asc, r.ascq) == (SenseKey.UNIT_ATTENTION, 0x2A, 0x09)
            assert c.read_capacity16().blocks == 24 * MiB // 512
            assert c.write(far, b"\x99" * 512).good
            assert bytes(c.read(far, 1)) == b"\x99" * 512


# -- tracked RBD LUN under sustained queue-depth-32 writes ----------------------------
def test_tracked_lun_completes_sustained_qd32_writes_and_the_map_holds_them(pool, tmp_path):
    """Tracking on (the map in RADOS), qemu-img bench's 4 KiB writes at queue depth 32,
    three runs of 20000: every run completes (a lost completion wakeup once left the
    LUN silent after a few thousand), and a full + differential restore equals the
    image -- the map holds every block written."""
    qemu_img = require_tool("qemu-img")
    image = new_image(pool, "96M")      # 20000 x 4 KiB = 78 MiB: the rest stays as seeded
    state = tmp_path / "state"
    state.mkdir()
    cfg = state / "target.toml"
    cfg.write_text(
        'portals = ["127.0.0.1:0"]\n[[target]]\n'
        f'iqn = "{DEFAULT_IQN}"\n[[target.lun]]\nlun = 0\n'
        f'rbd = {{ pool = "{POOL}", image = "{image}", conf = "{pool.conf}" }}\n'
        '[[target.lun]]\nlun = 1\nkind = "backup"\nsource = 0\n')
    src = tmp_path / "base.raw"
    src.write_bytes(os.urandom(96 * MiB))
    written = 20000 * 4096
    full, diff = tmp_path / "full.pyb", tmp_path / "diff.pyb"
    with ServerProcess.from_flags(state, "--config", str(cfg)) as srv:
        r = run_tool([qemu_img, "convert", "-n", "-f", "raw", "-O", "raw", str(src), srv.url()],
                     timeout=180)
        assert r.returncode == 0, r.stderr
        r = run_diffbackup("full", srv.url(0), "-o", str(full))
        assert r.returncode == 0, r.stderr
        for pattern in (0x11, 0x22, 0x33):
            r = run_tool([qemu_img, "bench", "-f", "raw", "-t", "none", "-w", "-c", "20000",
                          "-d", "32", "-s", "4096", f"--pattern={pattern}", srv.url()],
                         timeout=120)
            assert r.returncode == 0 and "Run completed" in r.stdout, r.stdout + r.stderr
        r = run_diffbackup("diff", srv.url(0), "--scope", "1", "-o", str(diff))
        assert r.returncode == 0, r.stderr
        qemu_io(srv.url(), f"read -P 0x33 0 {written}")
    restored, exported = tmp_path / "restored.raw", tmp_path / "exported.raw"
    restored.write_bytes(bytes(96 * MiB))
    r = run_diffbackup("restore", str(restored), str(full), str(diff), timeout=300)
    assert r.returncode == 0, r.stderr
    pool.run("rbd", "export", f"{POOL}/{image}", str(exported), timeout=120)
    assert sha256(restored) == sha256(exported)
    assert exported.read_bytes()[written:] == src.read_bytes()[written:]


# -- a tracked RBD LUN follows rbd resize ---------------------------------------------
def _tracked_config(state: Path, conf: Path, image: str) -> Path:
    state.mkdir(parents=True, exist_ok=True)
    cfg = state / "target.toml"
    cfg.write_text(
        'portals = ["127.0.0.1:0"]\n[[target]]\n'
        f'iqn = "{DEFAULT_IQN}"\n[[target.lun]]\nlun = 0\ntrack_map_lock = 4\n'
        f'rbd = {{ pool = "{POOL}", image = "{image}", conf = "{conf}", take_over = true }}\n'
        '[[target.lun]]\nlun = 1\nkind = "backup"\nsource = 0\n')
    return cfg


def _start_after_kill(srv: ServerProcess, until: float = 120) -> None:
    """Start again after a kill -9 (with ``take_over`` the dead holder's locks are
    broken at once; without, librbd waits about 30 s for its watch to time out)."""
    srv.start_when_free(until)


def _wait_capacity_change(c: SyncIscsiClient, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        r = c.execute(bytes(6))
        if not r.good:
            return r
        assert time.monotonic() < deadline, "no unit attention after the resize"
        time.sleep(0.2)


def _write16(lba: int, data: bytes) -> bytes:
    return bytes([0x8A, 0]) + lba.to_bytes(8, "big") + (len(data) // 512).to_bytes(4, "big") \
        + bytes(2)


def _restored_equals_export(pool, tmp_path: Path, image: str, streams: list[Path], name: str):
    restored, exported = tmp_path / f"{name}.raw", tmp_path / f"{name}.export"
    r = run_diffbackup("restore", str(restored), *map(str, streams), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    pool.run("rbd", "export", f"{POOL}/{image}", str(exported), timeout=120)
    assert restored.stat().st_size == exported.stat().st_size
    assert sha256(restored) == sha256(exported), f"{name}: restore differs from rbd export"
    exported.unlink()


def test_a_tracked_lun_grows_with_its_image_and_differentials_carry_the_new_blocks(pool,
                                                                                   tmp_path):
    """rbd resize under a tracked LUN served by the server process: the map grows (in
    RADOS) before the new size is served, qemu-io writes in the new area, and the
    chain full + differentials restores onto a file growing with it equal to rbd
    export -- also across a kill -9 right after a growth.  A shrink is refused:
    the old size stays served, I/O past the image's end is LBA OUT OF RANGE, and
    the lost range counts as changed."""
    image = new_image(pool, "16M")
    state = tmp_path / "state"
    srv = ServerProcess.from_flags(state, "--config", str(_tracked_config(state, pool.conf, image)))
    srv.start()
    streams = [tmp_path / "full.pyb"]
    try:
        qemu_io(srv.url(), "write -P 0x11 0 16M")
        r = run_diffbackup("full", srv.url(0), "-o", str(streams[0]))
        assert r.returncode == 0, r.stderr
        with SyncIscsiClient(srv.url()) as c:
            c.execute(bytes(6))
            assert c.read_capacity16().blocks == 16 * MiB // 512
            pool.run("rbd", "resize", "--size", "24M", f"{POOL}/{image}")
            r = _wait_capacity_change(c)
            assert (r.sense_key, r.asc, r.ascq) == (SenseKey.UNIT_ATTENTION, 0x2A, 0x09)
            assert c.read_capacity16().blocks == 24 * MiB // 512
        qemu_io(srv.url(), "write -P 0x22 20M 1M", "write -P 0x33 15M 2M",
                "read -P 0 17M 3M", "read -P 0x22 20M 1M")
        streams.append(tmp_path / "d1.pyb")
        r = run_diffbackup("diff", srv.url(0), "--scope", "1", "-o", str(streams[-1]))
        assert r.returncode == 0, r.stderr
        _restored_equals_export(pool, tmp_path, image, streams, "after-growth")

        # A shrink while tracked: refused, the old size served, the lost range marked.
        pool.run("rbd", "resize", "--size", "20M", "--allow-shrink", f"{POOL}/{image}")
        deadline = time.monotonic() + 20
        while "shrank from" not in srv.log_tail(20000):
            assert time.monotonic() < deadline, srv.log_tail()
            time.sleep(0.2)
        assert f"shrank from {24 * MiB} to {20 * MiB} bytes while tracked" in srv.log_tail(20000)
        with SyncIscsiClient(srv.url()) as c:
            c.execute(bytes(6))
            assert c.read_capacity16().blocks == 24 * MiB // 512
            r = c.execute(_write16(22 * MiB // 512, b"\x55" * 4096), data_out=b"\x55" * 4096)
            assert (r.sense_key, r.asc, r.ascq) == (SenseKey.ILLEGAL_REQUEST, 0x21, 0x00)
            assert c.write(MiB // 512, b"\x66" * 4096).good
            pool.run("rbd", "resize", "--size", "24M", f"{POOL}/{image}")    # back again
            deadline = time.monotonic() + 20
            while not c.execute(_write16(22 * MiB // 512, b"\x55" * 4096),
                                data_out=b"\x55" * 4096).good:
                assert time.monotonic() < deadline, "writes past the old shrink still refused"
                time.sleep(0.3)
        streams.append(tmp_path / "d2.pyb")
        r = run_diffbackup("diff", srv.url(0), "--scope", "1", "-o", str(streams[-1]))
        assert r.returncode == 0, r.stderr
        _restored_equals_export(pool, tmp_path, image, streams, "after-shrink")

        # kill -9 during or right after a growth: the restarted target serves the new
        # size with a consistent map (grown at open if the kill came first).
        pool.run("rbd", "resize", "--size", "32M", f"{POOL}/{image}")
        time.sleep(2.1)
        srv.kill()
    finally:
        srv.kill()
    _start_after_kill(srv)
    try:
        with SyncIscsiClient(srv.url()) as c:
            c.execute(bytes(6))
            assert c.read_capacity16().blocks == 32 * MiB // 512
        qemu_io(srv.url(), "write -P 0x44 30M 1M", "write -P 0x45 23M 2M")
        streams.append(tmp_path / "d3.pyb")
        r = run_diffbackup("diff", srv.url(0), "--scope", "1", "-o", str(streams[-1]))
        assert r.returncode == 0, r.stderr
        _restored_equals_export(pool, tmp_path, image, streams, "after-kill")
    finally:
        srv.stop()


# -- a chain across a growth restored onto a served RBD LUN ------------------------------
def _write_all(c: SyncIscsiClient, offset: int, data: bytes, chunk: int = 256 << 10) -> None:
    for off in range(0, len(data), chunk):
        r = c.write((offset + off) // 512, data[off:off + chunk])
        assert r.good, r


def test_a_chain_across_a_growth_restores_onto_a_served_rbd_lun_that_grows_with_it(pool,
                                                                                  tmp_path):
    """Full backup of a tracked RBD LUN at 16 MiB, rbd resize to 24 MiB, writes in the
    new and the old area, a differential; then a second served tracked RBD LUN at
    16 MiB gets ``diffbackup restore`` of both over iSCSI: it resizes its own image
    (librbd), grows its map, announces CAPACITY DATA HAS CHANGED, and ends equal
    to rbd export of the source.  Its map is consistent: its own differential
    afterwards restores (with the chain) equal to its export.  A smaller stream
    (the full again) is then refused precisely, nothing shrunk."""
    import random
    src_img, dst_img = new_image(pool, "16M"), new_image(pool, "16M")
    src_state, dst_state = tmp_path / "src", tmp_path / "dst"
    src = ServerProcess.from_flags(src_state, "--log-level", "info", "--config",
                                   str(_tracked_config(src_state, pool.conf, src_img)))
    dst = ServerProcess.from_flags(dst_state, "--log-level", "info", "--config",
                                   str(_tracked_config(dst_state, pool.conf, dst_img)))
    rnd = random.Random(20261201)
    full, d1, own = tmp_path / "full.pyb", tmp_path / "d1.pyb", tmp_path / "own.pyb"
    src.start()
    try:
        dst.start()
        with SyncIscsiClient(src.url()) as c:
            c.execute(bytes(6))
            _write_all(c, 0, rnd.randbytes(16 * MiB))
        r = run_diffbackup("full", src.url(0), "-o", str(full))
        assert r.returncode == 0, r.stderr
        with SyncIscsiClient(src.url()) as c:
            c.execute(bytes(6))
            pool.run("rbd", "resize", "--size", "24M", f"{POOL}/{src_img}")
            r = _wait_capacity_change(c)
            assert (r.sense_key, r.asc, r.ascq) == (SenseKey.UNIT_ATTENTION, 0x2A, 0x09)
            assert c.read_capacity16().blocks == 24 * MiB // 512
            _write_all(c, 20 * MiB, rnd.randbytes(MiB))          # the new area
            _write_all(c, 15 * MiB, rnd.randbytes(2 * MiB))      # across the old end
            _write_all(c, 3 * MiB + 4096, rnd.randbytes(300 << 10))   # the old area
        r = run_diffbackup("diff", src.url(0), "--scope", "1", "-o", str(d1))
        assert r.returncode == 0, r.stderr
        src_export = tmp_path / "src.export"
        pool.run("rbd", "export", f"{POOL}/{src_img}", str(src_export), timeout=120)

        with SyncIscsiClient(dst.url()) as c:
            c.execute(bytes(6))                                  # the power-on attention
            assert c.read_capacity16().blocks == 16 * MiB // 512
            r = run_diffbackup("restore", dst.url(0), str(full), str(d1), timeout=300)
            assert r.returncode == 0, r.stdout + r.stderr
            assert "restore complete" in r.stdout, r.stdout
            r = c.execute(bytes(6))
            assert (r.sense_key, r.asc, r.ascq) == (SenseKey.UNIT_ATTENTION, 0x2A, 0x09)
            assert c.read_capacity16().blocks == 24 * MiB // 512
            assert c.read(22 * MiB // 512, 8) == src_export.read_bytes()[22 * MiB:][:4096]
        assert f"resized from {16 * MiB} to {24 * MiB} bytes" in dst.log_tail(50000)
        info = pool.run("rbd", "info", "--format", "json", f"{POOL}/{dst_img}")
        assert f'"size":{24 * MiB}' in info.stdout.decode().replace(" ", "")
        dst_export = tmp_path / "dst.export"
        pool.run("rbd", "export", f"{POOL}/{dst_img}", str(dst_export), timeout=120)
        assert sha256(dst_export) == sha256(src_export), "restored image differs from the source"

        st = run_diffbackup("status", dst.url(0))
        assert st.returncode == 0, st.stderr
        assert "restore: complete" in st.stdout, st.stdout
        # The map follows the grown image: the restored LUN's own differential
        # (writes in its new area and its old one) restores with the chain.
        with SyncIscsiClient(dst.url()) as c:
            c.execute(bytes(6))
            _write_all(c, 23 * MiB, rnd.randbytes(64 << 10))
            _write_all(c, 8 * MiB, rnd.randbytes(64 << 10))
        r = run_diffbackup("diff", dst.url(0), "--scope", "1", "-o", str(own))
        assert r.returncode == 0, r.stderr
        _restored_equals_export(pool, tmp_path, dst_img, [full, d1, own], "restored-lun")

        # Shrink is never done by a restore: the 16 MiB full onto the 24 MiB LUN.
        r = run_diffbackup("restore", dst.url(0), str(full), timeout=300)
        assert r.returncode != 0
        assert f"is for a {16 * MiB}-byte volume; the target holds {24 * MiB} bytes" in \
            r.stdout + r.stderr, r.stdout + r.stderr
        info = pool.run("rbd", "info", "--format", "json", f"{POOL}/{dst_img}")
        assert f'"size":{24 * MiB}' in info.stdout.decode().replace(" ", "")
        assert "shrank from" not in dst.log_tail(50000)
        assert "waits until it ends" not in dst.log_tail(50000)
    finally:
        src.stop()
        dst.stop()
