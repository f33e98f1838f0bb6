"""Injected faults seen by real clients over iSCSI: qemu-io and libiscsi's iscsi-inq
(libiscsi inside), and our own initiator; the served target comes from the plugin."""
from __future__ import annotations

import json
import os
import re
import threading
import time

import pytest

from scsi_target.testing.external import require_tool, run_tool
from scsi_target.initiator.sync import SyncIscsiClient
from scsi_target.testing import fault_control_cdb

BS = 512


def qemu_io(url: str, *commands: str) -> str:
    args = [require_tool("qemu-io"), "-f", "raw"]
    for c in commands:
        args += ["-c", c]
    r = run_tool(args + [url], timeout=60)
    return r.stdout + r.stderr


def read10(lba: int, n: int) -> bytes:
    return bytes([0x28, 0]) + lba.to_bytes(4, "big") + b"\0" + n.to_bytes(2, "big") + b"\0"


@pytest.fixture
def client(iscsi_server):
    with SyncIscsiClient(iscsi_server.url(0)) as c:
        c.test_unit_ready()      # the power-on unit attention
        yield c


def test_qemu_io_sees_medium_error(iscsi_server):
    iscsi_server.target.faults.add(action="medium_error", lba=[8, 16], opcode="read",
                                   times="sticky")
    out = qemu_io(iscsi_server.url(0), "read 0 4096", "read 4096 4096")
    assert "read 4096/4096 bytes at offset 0" in out
    assert re.search(r"read failed: Input/output error", out), out
    rec = iscsi_server.target.log.select("READ", lun=0)
    assert any(r.fault == "medium_error" and r.lba <= 8 for r in rec)


def test_qemu_io_sees_write_error(iscsi_server):
    iscsi_server.target.faults.add(action="medium_error", opcode="write", times="sticky")
    out = qemu_io(iscsi_server.url(0), "write -P 0x5a 0 4096")
    assert "write failed: Input/output error" in out, out


def test_qemu_io_pattern_check_catches_corrupt_read(iscsi_server):
    out = qemu_io(iscsi_server.url(0), "write -P 0xa5 0 65536")
    assert "wrote 65536/65536" in out, out
    iscsi_server.target.faults.add(action="corrupt_read", bits=1, lba=[0, 128])
    out = qemu_io(iscsi_server.url(0), "read -P 0xa5 0 65536")
    assert "Pattern verification failed" in out, out
    out = qemu_io(iscsi_server.url(0), "read -P 0xa5 0 65536")   # once: the medium is fine
    assert "Pattern verification failed" not in out and "read 65536/65536" in out, out


def test_qemu_io_verification_catches_dropped_write(iscsi_server):
    iscsi_server.target.faults.add(action="drop_write", lba=[0, 8])
    out = qemu_io(iscsi_server.url(0), "write -P 0x3c 0 4096", "read -P 0x3c 0 4096")
    assert "wrote 4096/4096" in out and "Pattern verification failed" in out, out


def test_qemu_io_sees_added_latency(iscsi_server):
    qemu_io(iscsi_server.url(0), "read 0 512")          # warm: tool start-up, login
    t0 = time.monotonic()
    qemu_io(iscsi_server.url(0), "read 0 512")
    base = time.monotonic() - t0
    iscsi_server.target.faults.add(action="delay", seconds=1.0, opcode="read", lba=[0, 1])
    t0 = time.monotonic()
    out = qemu_io(iscsi_server.url(0), "read 0 512")
    assert "read 512/512" in out, out
    assert time.monotonic() - t0 >= base + 0.9


def test_iscsi_inq_sees_chosen_sense(iscsi_server):
    iscsi_server.target.faults.add(action="check_condition", opcode=0x12, key="hardware_error",
                                   asc=0x44, ascq=0, times="sticky")
    r = run_tool([require_tool("iscsi-inq"), iscsi_server.url(0)])
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "HARDWARE_ERROR" in out.upper().replace(" ", "_"), out


def test_delay_does_not_block_other_sessions(iscsi_server):
    """One session's delayed READ; another session's commands go on meanwhile."""
    iscsi_server.target.faults.add(action="delay", seconds=1.5, lba=[0, 1], opcode="read")
    done = {}
    with SyncIscsiClient(iscsi_server.url(0)) as slow, SyncIscsiClient(iscsi_server.url(0)) as fast:
        slow.test_unit_ready()
        fast.test_unit_ready()

        def slow_read():
            t0 = time.monotonic()
            slow.read(0, 1)
            done["slow"] = time.monotonic() - t0
        th = threading.Thread(target=slow_read)
        th.start()
        time.sleep(0.2)
        t0 = time.monotonic()
        for i in range(20):
            fast.read(100 + i, 1)
        fast_time = time.monotonic() - t0
        th.join(10)
    assert done["slow"] >= 1.4
    assert fast_time < 1.0, f"the other session waited {fast_time:.2f} s"


@pytest.mark.parametrize("action,status", [("busy", 0x08), ("task_set_full", 0x28)])
def test_our_initiator_sees_busy(client, iscsi_server, action, status):
    iscsi_server.target.faults.add(action=action)
    assert client.execute(read10(0, 1), read_length=BS).status == status
    assert client.execute(read10(0, 1), read_length=BS).status == 0


def test_our_initiator_sees_recovered_error_with_data(client, iscsi_server):
    data = os.urandom(4 * BS)
    client.write(20, data)
    iscsi_server.target.faults.add(action="recovered_error", lba=[21, 22])
    r = client.execute(read10(20, 4), read_length=4 * BS)
    assert r.status == 0x02 and r.sense_key == 0x01 and (r.asc, r.ascq) == (0x17, 0x01)
    assert bytes(r.data) == data


def test_our_initiator_sees_unit_attention(client, iscsi_server):
    iscsi_server.target.faults.add(action="unit_attention", asc=0x2A, ascq=0x09)
    r = client.execute(bytes(6))
    assert r.sense_key == 0x06 and (r.asc, r.ascq) == (0x2A, 0x09)
    assert client.execute(bytes(6)).good
    # The initiator's helpers repeat a command that met a unit attention.
    iscsi_server.target.faults.add(action="unit_attention", asc=0x2A, ascq=0x09)
    log = iscsi_server.target.log
    log.clear()
    assert client.test_unit_ready().good
    turs = log.select("TEST UNIT READY")
    assert [r.status for r in turs] == [0x02, 0x00], log.format()


def test_our_initiator_sees_short_transfer(client, iscsi_server):
    data = os.urandom(8 * BS)
    client.write(0, data)
    iscsi_server.target.faults.add(action="short_transfer", keep=1536)
    r = client.execute(read10(0, 8), read_length=8 * BS)
    assert r.status == 0 and r.residual == 8 * BS - 1536 and bytes(r.data) == data[:1536]


def test_fault_control_steers_a_running_server(client, iscsi_server):
    doc = json.dumps({"action": "medium_error", "lba": [40, 41], "times": 2}).encode()
    assert client.execute(fault_control_cdb(0, len(doc)), data_out=doc).good
    assert client.execute(read10(40, 1), read_length=BS).sense_key == 0x03
    listed = json.loads(bytes(client.execute(fault_control_cdb(2, 4096), read_length=4096).data))
    assert listed["rules"][0]["fired"] == 1
    assert client.execute(fault_control_cdb(1)).good
    assert client.execute(read10(40, 1), read_length=BS).good


def test_drop_connection_our_initiator_reconnects(iscsi_server):
    from scsi_target.initiator.errors import IscsiError
    iscsi_server.target.faults.add(action="drop_connection", opcode="read", lba=[7, 8])
    data = os.urandom(BS)
    with SyncIscsiClient(iscsi_server.url(0)) as c:
        c.test_unit_ready()
        c.write(7, data)
        with pytest.raises((IscsiError, OSError, ConnectionError)):
            c.read(7, 1)
        c.reconnect()
        c.test_unit_ready()
        assert c.read(7, 1) == data
    reads = iscsi_server.target.log.select("READ(16)")
    assert [r.status for r in reads] == [0x40, 0x00]     # the dropped one was never answered


def test_drop_connection_qemu_io_reconnects_and_retries(iscsi_server):
    out = qemu_io(iscsi_server.url(0), "write -P 0x6b 0 4096")
    assert "wrote 4096/4096" in out, out
    iscsi_server.target.faults.add(action="drop_connection", opcode="read", lba=[0, 8])
    out = qemu_io(iscsi_server.url(0), "read -P 0x6b 0 4096")
    assert "read 4096/4096" in out and "Pattern verification failed" not in out, out
    reads = [r for r in iscsi_server.target.log.select("READ") if r.lba == 0]
    assert [r.fault for r in reads][:2] == ["drop_connection", ""], \
        iscsi_server.target.log.format(reads)


def test_assert_synced_sees_a_write_left_unsynced_at_logout(iscsi_server):
    log = iscsi_server.target.log
    with SyncIscsiClient(iscsi_server.url(0)) as c:
        c.test_unit_ready()
        c.write(3, os.urandom(BS))
        c.execute(bytes([0x35]) + bytes(9))          # SYNCHRONIZE CACHE(10)
    log.assert_synced()
    with SyncIscsiClient(iscsi_server.url(0)) as c:
        c.test_unit_ready()
        c.write(4, os.urandom(BS))
    # A SYNCHRONIZE CACHE after that session ended does not make it right.
    with SyncIscsiClient(iscsi_server.url(0)) as c:
        c.test_unit_ready()
        c.execute(bytes([0x35]) + bytes(9))
    with pytest.raises(AssertionError) as e:
        log.assert_synced()
    msg = str(e.value)
    assert msg.startswith("1 write(s) never followed by SYNCHRONIZE CACHE")
    assert "WRITE(16) LBA 4 x1" in msg and "I_T NEXUS LOSS" in msg and "LBA 3 " not in msg


def test_reject_login_seen_by_iscsi_ls_and_our_initiator(iscsi_server):
    from scsi_target.initiator.errors import LoginError
    iscsi_server.target.faults.add(action="reject_login", times=2)
    r = run_tool([require_tool("iscsi-inq"), iscsi_server.url(0)])
    out = r.stdout + r.stderr
    assert r.returncode != 0 and re.search(r"login|Login", out), out
    with pytest.raises(LoginError) as e:
        SyncIscsiClient(iscsi_server.url(0))
    assert e.value.status == 0x0301, str(e.value)
    with SyncIscsiClient(iscsi_server.url(0)) as c:     # times=2: the third login works
        c.test_unit_ready()
        assert c.test_unit_ready().good
    assert iscsi_server.target.faults.rules[0].fired == 2


@pytest.mark.scsi_lu("disk", lun=0, size="8M", track=True)
@pytest.mark.scsi_lu("backup", lun=1, source=0)
def test_diffbackup_reports_a_medium_error_of_the_backup_device(iscsi_server, tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parent.parent
    t = iscsi_server.target
    assert t.write(0, os.urandom(64 * BS)).ok

    def full(out):
        return subprocess.run([sys.executable, "-m", "tools.diffbackup", "-q", "full",
                               iscsi_server.url(1), "-o", str(out)], cwd=repo,
                              capture_output=True, text=True, timeout=120)
    rule = t.faults.add(action="medium_error", lun=1, opcode="read", times="sticky")
    r = full(tmp_path / "bad.stream")
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "MEDIUM_ERROR ASC/ASCQ 11/00" in r.stderr and len(r.stderr.strip().splitlines()) == 1, \
        r.stderr
    assert rule.fired >= 1
    t.faults.clear()
    r = full(tmp_path / "good.stream")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "good.stream").stat().st_size > 64 * BS
