"""Point-in-time backups end to end: a writer changes versioned blocks over iSCSI
while `diffbackup` reads full and differential streams from the pseudo device;
the restored volume equals the writer's log at one instant.  Plus the
preservation bound over SCSI (MEDIUM ERROR 55/03), the --cow-* flags, and
kill -9 during a backup."""
from __future__ import annotations

import os
import random
import signal
import struct
import threading
import time

import pytest

from scsi_target import config as C
from scsi_target.cli import main as cli_main
from scsi_target.initiator.sync import SyncIscsiClient
from scsi_target.scsi.command import Command
from scsi_target.scsi.layouts import backup as L
from scsi_target.scsi.sense import SenseKey, parse_sense

from scsi_target.testing.process import Lun, ServerProcess, Target

BS = 4096
SIZE = 128 << 20                 # >= 128 MiB: see the pseudo device capacity bug (issue 8.1)
NBLK = SIZE // BS
HDR = struct.Struct("<QQ")       # block number, version (= 1 + index in the writer's log)


def initial_image(seed: int) -> bytearray:
    img = bytearray(random.Random(seed).randbytes(SIZE))
    for b in range(NBLK):
        HDR.pack_into(img, b * BS, b, 0)
    return img


class Writer(threading.Thread):
    """Sequential 4 KiB writes of random blocks; each acknowledged before the next."""

    def __init__(self, url: str, seed: int) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.rng = random.Random(seed)
        self.log: list[tuple[int, bytes]] = []
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with SyncIscsiClient(self.url, timeout=60) as c:
                while not self.halt.is_set():
                    b = self.rng.randrange(NBLK)
                    data = HDR.pack(b, len(self.log) + 1) + self.rng.randbytes(BS - HDR.size)
                    r = c.write(b * (BS // 512), data)
                    assert r.good, r
                    self.log.append((b, data))
        except BaseException as exc:      # reported by the test
            self.error = exc

    def wait_for(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.log) < n:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"writer stuck at {len(self.log)} writes"
            time.sleep(0.01)


def check_cut(path, initial: bytearray, log, lo: int, hi: int) -> tuple[int, int]:
    """(k, wrong): the image must be ``initial`` plus the first k writes, lo <= k <= hi."""
    img = open(path, "rb").read()
    assert len(img) == SIZE
    k = max(HDR.unpack_from(img, b * BS)[1] for b in range(NBLK))
    expected = bytearray(initial)
    for b, data in log[:k]:
        expected[b * BS:(b + 1) * BS] = data
    e, m = memoryview(expected), memoryview(img)
    wrong = sum(1 for b in range(NBLK) if e[b * BS:(b + 1) * BS] != m[b * BS:(b + 1) * BS])
    assert lo <= k <= hi, (lo, k, hi)
    return k, wrong


# The target holds the answer to each stream's first READ (at LBA 0) for a while
# after executing it (the cut is taken by then), so the writer's writes land after
# the cut and while the stream is read, however fast the stream is delivered:
# what the point-in-time check needs.
SLOW_FIRST_READ = {"action": "stall", "pdu": "response", "seconds": 1.0, "lun": 1,
                   "opcode": "read", "lba": [0, 1], "times": "sticky"}


@pytest.mark.interop
def test_full_and_differential_are_point_in_time_while_a_writer_runs(diffbackup, tmp_path):
    initial = initial_image(1)
    (tmp_path / "v.img").write_bytes(initial)
    target = Target(C.DEFAULT_IQN, [Lun(0, None, path=tmp_path / "v.img"),
                                    Lun(1, None, {"kind": "backup", "source": 0})],
                    faults=[SLOW_FIRST_READ])
    with ServerProcess(tmp_path, [target]) as srv:
        w = Writer(srv.url(0), 2)
        w.start()
        try:
            w.wait_for(300)
            n0 = len(w.log)
            r = diffbackup("full", srv.url(1), "-o", str(tmp_path / "full.bin"), timeout=300)
            n1 = len(w.log)
            assert r.returncode == 0, r.stderr
            w.wait_for(n1 + 300)
            n2 = len(w.log)
            r = diffbackup("diff", "--scope", "1", srv.url(1), "-o", str(tmp_path / "diff.bin"),
                           timeout=300)
            n3 = len(w.log)
            assert r.returncode == 0, r.stderr
        finally:
            w.halt.set()
            w.join(60)
        assert w.error is None, w.error
    r = diffbackup("restore", str(tmp_path / "r1.img"), str(tmp_path / "full.bin"), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    k1, wrong = check_cut(tmp_path / "r1.img", initial, w.log, n0, n1)
    assert wrong == 0
    r = diffbackup("restore", str(tmp_path / "r2.img"), str(tmp_path / "full.bin"),
                   str(tmp_path / "diff.bin"), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    k2, wrong = check_cut(tmp_path / "r2.img", initial, w.log, n2, n3)
    assert wrong == 0
    # The writer really ran while the streams were read (else nothing was tested).
    assert n1 - k1 >= 20 and n3 - k2 >= 20, (n0, k1, n1, n2, k2, n3)
    print(f"full: cut after write {k1} of {n0}..{n1}; diff: cut after {k2} of {n2}..{n3}")


@pytest.mark.interop
def test_exhausted_preservation_space_fails_diffbackup_and_completes_nothing(diffbackup, tmp_path):
    initial = initial_image(3)
    (tmp_path / "v.img").write_bytes(initial)
    # The stall holds the stream's first read after the cut, so the writer overruns the
    # 64 KiB of preservation space however fast the rest is delivered.
    target = Target(C.DEFAULT_IQN, [Lun(0, None, {"cow_size": "64K"}, path=tmp_path / "v.img"),
                                    Lun(1, None, {"kind": "backup", "source": 0})],
                    faults=[SLOW_FIRST_READ])
    with ServerProcess(tmp_path, [target]) as srv:
        w = Writer(srv.url(0), 4)
        w.start()
        try:
            w.wait_for(100)
            r = diffbackup("full", srv.url(1), "-o", str(tmp_path / "full.bin"), timeout=300)
            w.wait_for(len(w.log) + 50)
        finally:
            w.halt.set()
            w.join(60)
        assert w.error is None, w.error          # the writes never failed
        assert r.returncode == 1, r.stdout + r.stderr
        err = r.stderr.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert "MEDIUM_ERROR" in err and "55/03" in err and "INSUFFICIENT RESOURCES" in err, err
        # Not completed: a differential still needs a full backup first.
        r = diffbackup("diff", "--scope", "1", srv.url(1), "-o", str(tmp_path / "d.bin"))
        assert r.returncode != 0 and "no full backup" in r.stderr, r.stderr
        # Every write landed: the volume holds the writer's last version of each block.
        with SyncIscsiClient(srv.url(0), timeout=30) as c:
            last = {b: data for b, data in w.log}
            for b in random.Random(0).sample(sorted(last), min(200, len(last))):
                assert bytes(c.read(b * (BS // 512), BS // 512)) == last[b]
    assert "preservation space exhausted" in srv.log_tail(1 << 20)      # the server says why


# -- the preservation bound through the SCSI layer (in process) ---------------------
class Rig:
    def __init__(self, tmp_path, cow_size: str) -> None:
        cfg = C.from_flags(listen=["127.0.0.1:0"], disks=[f"{tmp_path}/a.img:4M"],
                           backup_device=True, cow_size=cow_size)
        self.reg = C.build_registry(cfg)
        luns = self.reg.targets[C.DEFAULT_IQN].luns
        self.luns = luns
        self.disk, self.dev = luns.luns[0], luns.luns[1]
        for lu in (self.disk, self.dev):
            lu.execute(Command(bytes(6)))

    def run(self, lu, cdb: bytes, data_out=None):
        return lu.execute(Command(cdb, data_out=data_out))

    def write(self, lba: int, data: bytes) -> None:
        cdb = bytes([0x2A, 0]) + lba.to_bytes(4, "big") + b"\0" + \
            (len(data) // 512).to_bytes(2, "big") + b"\0"
        r = self.run(self.disk, cdb, data)
        assert r.ok, r

    def read_dev(self, lba: int, n: int):
        cdb = bytes([0x88, 0]) + lba.to_bytes(8, "big") + n.to_bytes(4, "big") + bytes(2)
        return self.run(self.dev, cdb)

    def status(self):
        r = self.run(self.dev, L.cdb(L.OP_REPORT_BACKUP_STATUS, length=80))
        assert r.ok, r
        return L.BackupStatus.unpack(bytes(r.data_in))


def test_exhausted_preservation_space_fails_the_stream_with_sense(tmp_path, caplog):
    rig = Rig(tmp_path, "64K")
    rig.write(0, os.urandom(1 << 20))
    vol = rig.disk.store
    st = rig.run(rig.dev, L.cdb(L.OP_START_BACKUP, length=80))
    assert st.ok and vol.cow is not None
    data = os.urandom(128 << 10)                  # 32 blocks of 4 KiB > 64 KiB allowed
    rig.write(1024, data)
    cdb = bytes([0x88, 0]) + (1024).to_bytes(8, "big") + (8).to_bytes(4, "big") + bytes(2)
    assert bytes(rig.run(rig.disk, cdb).data_in) == data[:4096]      # the write landed
    r = rig.read_dev(0, 8)
    assert not r.ok
    assert parse_sense(r.sense) == (SenseKey.MEDIUM_ERROR, 0x55, 0x03)
    assert "preservation space exhausted" in caplog.text and "65536 bytes" in caplog.text
    assert rig.read_dev(8, 8).ok is False        # and it stays failed
    assert vol.state.full_done is False   # not completed: a two-phase backup committed nothing
    # A new backup works again (and writes before its cut are in it).
    st = rig.run(rig.dev, L.cdb(L.OP_START_BACKUP, length=80))
    assert st.ok and rig.read_dev(0, 8).ok
    for lu in (rig.dev, rig.disk):
        lu.close()


def test_cow_flags_reach_the_volume_and_bad_values_are_one_line(tmp_path, capsys):
    cfg = C.from_flags(disks=[f"{tmp_path}/a.img:1M"], cow_dir=str(tmp_path), cow_size="256K")
    reg = C.build_registry(cfg)
    lu = reg.targets[C.DEFAULT_IQN].luns.luns[0]
    assert (lu.store.cow_settings.dir, lu.store.cow_settings.size) == (str(tmp_path), 256 << 10)
    lu.close()
    for args, msg in [(["--cow-dir", str(tmp_path / "missing")], "is not a directory"),
                      (["--cow-size", "lots"], "cannot read 'lots' as a size"),
                      (["--cow-size", "1M", "--no-track"], "need tracking")]:
        rc = cli_main(["serve", "--listen", "127.0.0.1:0", "--disk", f"{tmp_path}/b.img:1M",
                       *args])
        err = capsys.readouterr().err
        assert rc != 0 and msg in err and "Traceback" not in err and len(err.splitlines()) == 1
    rc = cli_main(["serve", "--config", str(tmp_path / "x.toml"), "--cow-size", "1M"])
    assert rc == 2 and "--cow-size" in capsys.readouterr().err


@pytest.mark.interop
def test_kill_9_during_a_backup_leaves_no_preservation_file(diffbackup, tmp_path):
    initial = initial_image(5)
    (tmp_path / "v.img").write_bytes(initial)
    cow = tmp_path / "cow"
    cow.mkdir()
    srv = ServerProcess.from_flags(tmp_path, "--disk", str(tmp_path / "v.img"), "--backup-device",
                                   "--cow-dir", str(cow), "--cow-size", "512M").start()
    try:
        with SyncIscsiClient(srv.url(1), timeout=30) as dev, \
                SyncIscsiClient(srv.url(0), timeout=30) as disk:
            dev.test_unit_ready()                 # the power-on unit attention
            assert dev.execute(L.cdb(L.OP_START_BACKUP, length=80), read_length=80).good
            dev.read(0, 2048)                     # 1 MiB of the stream
            for b in range(4000, 4400):           # unsent blocks: preserved
                assert disk.write(b * 8, os.urandom(BS)).good
            fds = os.listdir(f"/proc/{srv.proc.pid}/fd")
            links = []
            for n in fds:
                try:
                    links.append(os.readlink(f"/proc/{srv.proc.pid}/fd/{n}"))
                except OSError:
                    pass
            assert any(x.startswith(str(cow)) and x.endswith("(deleted)") for x in links), links
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(30)
    finally:
        srv.kill()
    assert os.listdir(cow) == []
    # Restart: the abandoned backup is not completed, a new full one works.
    with ServerProcess.from_flags(tmp_path, "--disk", str(tmp_path / "v.img"), "--backup-device",
                                  "--cow-dir", str(cow)) as srv:
        r = diffbackup("diff", "--scope", "1", srv.url(1), "-o", str(tmp_path / "d.bin"))
        assert r.returncode != 0 and "no full backup" in r.stderr, r.stderr       # no full backup was completed
        r = diffbackup("full", srv.url(1), "-o", str(tmp_path / "f.bin"), timeout=300)
        assert r.returncode == 0, r.stderr
    assert os.listdir(cow) == []
