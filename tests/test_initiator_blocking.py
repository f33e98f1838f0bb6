"""The blocking iSCSI client (scsi_target.initiator.blocking), through its public
interface, against the plugin's served target: data in and out on every write
path (immediate, unsolicited, R2T), digests, the CmdSN window, Data-In into the
caller's buffers, and the failures -- login refused, connection refused, the
target dropping the connection, a stalled answer -- each one typed error; and
diffbackup, which uses it, turning each into one line."""
from __future__ import annotations

import json
import mmap
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scsi_target.initiator.blocking import BlockingIscsiClient
from scsi_target.initiator.errors import (IscsiTimeout, LoginError, ProtocolViolation,
                                          ScsiCheckCondition, TransportError)
from scsi_target.initiator.login import LoginOptions
from scsi_target.scsi.sense import SenseKey
from scsi_target.testing import fault_control_cdb

pytestmark = pytest.mark.timeout(120)

BS = 512
REPO = Path(__file__).resolve().parent.parent


def rw16(opcode: int, lba: int, blocks: int) -> bytes:
    return bytes([opcode, 0]) + lba.to_bytes(8, "big") + blocks.to_bytes(4, "big") + bytes(2)


def read16(lba: int, blocks: int) -> bytes:
    return rw16(0x88, lba, blocks)


def write16(lba: int, blocks: int) -> bytes:
    return rw16(0x8A, lba, blocks)


def ready(c: BlockingIscsiClient) -> None:
    """Past the new session's UNIT ATTENTION."""
    assert c.test_unit_ready().good


def one_line(r: subprocess.CompletedProcess) -> str:
    err = r.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# ------------------------------------------------------------------ data paths
def test_write_then_read_round_trip_and_inquiry(iscsi_server):
    data = os.urandom(1 << 20)
    with BlockingIscsiClient(iscsi_server.url(0)) as c:
        assert c.connected and c.login_result is not None
        ready(c)
        assert b"PYSCSI" in c.inquiry()
        assert c.read_capacity16().block_size == BS
        assert c.execute(write16(64, len(data) // BS), data_out=data, check=True).good
        r = c.execute(read16(64, len(data) // BS), read_length=len(data), check=True)
        assert bytes(r.data) == data and r.residual == 0
    assert not c.connected
    assert iscsi_server.target.read(64, len(data) // BS) == data


@pytest.mark.parametrize("opts", [
    # Every byte solicited: no immediate data, R2Ts of at most 64 KiB.
    dict(initial_r2t=True, immediate_data=False, max_burst_length=65536,
         first_burst_length=65536),
    # Immediate data, then the unsolicited burst, then R2Ts for the rest.
    dict(initial_r2t=False, immediate_data=True, max_burst_length=131072,
         first_burst_length=262144),
    # Unsolicited Data-Out without immediate data.
    dict(initial_r2t=False, immediate_data=False, first_burst_length=65536),
], ids=["r2t-only", "immediate+unsolicited+r2t", "unsolicited-no-immediate"])
def test_every_write_path_keeps_the_data(iscsi_server, opts):
    data = os.urandom(3 << 20)
    with BlockingIscsiClient(iscsi_server.url(0), options=LoginOptions(**opts)) as c:
        p = c.params
        assert p.initial_r2t == opts["initial_r2t"]
        assert p.immediate_data == opts["immediate_data"]
        ready(c)
        cmds = [{"cdb": write16(2048 + i * 2048, 2048),
                 "data_out": memoryview(data)[i << 20:(i + 1) << 20]} for i in range(3)]
        assert all(r.good for r in c.pipeline(cmds, 3))
        r = c.execute(read16(2048, len(data) // BS), read_length=len(data))
        assert bytes(r.data) == data


def test_pipelined_reads_land_in_the_callers_buffers(iscsi_server):
    data = os.urandom(8 << 20)
    assert iscsi_server.target.write(0, data).ok
    bufs = [mmap.mmap(-1, 1 << 20) for _ in range(4)]
    got = bytearray()
    with BlockingIscsiClient(iscsi_server.url(0), options=LoginOptions(
            max_recv_data_segment_length=256 << 10)) as c:
        ready(c)
        cmds = ({"cdb": read16(i * 2048, 2048), "read_length": 1 << 20,
                 "read_into": bufs[i % 4]} for i in range(8))
        for i, r in enumerate(c.pipeline(cmds, 3)):
            assert r.good
            assert isinstance(r.data, memoryview) and r.data.obj is bufs[i % 4]
            got += r.data
    assert bytes(got) == data


def test_more_commands_than_the_cmdsn_window_admits(iscsi_server):
    with BlockingIscsiClient(iscsi_server.url(0)) as c:
        ready(c)
        window = c.login_result.maxcmdsn - c.login_result.expcmdsn + 1
        n = window * 3 + 5
        rs = c.execute_many([{"cdb": read16(i, 1), "read_length": BS} for i in range(n)])
        assert len(rs) == n and all(r.good and len(r.data) == BS for r in rs)


def test_digests_header_and_data(iscsi_server):
    data = os.urandom(600 << 10)
    url = iscsi_server.url(0) + "?header_digest=CRC32C&data_digest=CRC32C"
    with BlockingIscsiClient(url) as c:
        assert c.params.header_digest and c.params.data_digest
        ready(c)
        assert c.execute(write16(10, len(data) // BS), data_out=data).good
        assert bytes(c.execute(read16(10, len(data) // BS), read_length=len(data)).data) == data
        assert c.ping(b"abc") >= 0


@pytest.mark.parametrize("digests", ["", "?header_digest=CRC32C&data_digest=CRC32C",
                                     "?header_digest=CRC32C", "?data_digest=CRC32C"])
def test_data_in_trains_and_padded_segments_in_one_pipeline(iscsi_server, digests):
    # A segment's rest and the next header come in one receive: segments of many
    # sizes (padded ones among them: INQUIRY's 255 bytes), digests on and off.
    data = os.urandom(2 << 20)
    assert iscsi_server.target.write(0, data).ok
    mrdsl = (4096, 8192, 1 << 20)
    for size in mrdsl:
        with BlockingIscsiClient(iscsi_server.url(0) + digests, options=LoginOptions(
                max_recv_data_segment_length=size)) as c:
            ready(c)
            bufs = [bytearray(n * BS) for n in (1, 7, 2048, 3, 1024)]
            cmds = []
            for i, b in enumerate(bufs):
                cmds.append({"cdb": read16(i * 64, len(b) // BS), "read_length": len(b),
                             "read_into": b})
                cmds.append({"cdb": bytes([0x12, 0, 0, 0, 255, 0]), "read_length": 255})
            rs = c.execute_many(cmds)
            assert all(r.good for r in rs)
            for i, b in enumerate(bufs):
                assert bytes(b) == data[i * 64 * BS:i * 64 * BS + len(b)]
                assert len(rs[2 * i + 1].data) >= 36
            assert c.ping(b"xyz") >= 0


def test_check_condition_is_a_result_or_raised_on_request(iscsi_server):
    with BlockingIscsiClient(iscsi_server.url(0)) as c:
        first = c.execute(read16(0, 1), read_length=BS)        # the session's UA
        assert first.sense_key == SenseKey.UNIT_ATTENTION
        r = c.execute(read16(1 << 40, 1), read_length=BS)
        assert r.status == 2 and r.sense_key == SenseKey.ILLEGAL_REQUEST and not r.good
        with pytest.raises(ScsiCheckCondition, match="ILLEGAL_REQUEST"):
            c.execute(read16(1 << 40, 1), read_length=BS, check=True)
        assert c.execute(read16(0, 1), read_length=BS).good      # still usable


# -------------------------------------------------------------------- failures
def test_login_refused_is_a_login_error(iscsi_server):
    doc = json.dumps({"action": "reject_login", "login_status": [2, 1], "times": 1}).encode()
    with BlockingIscsiClient(iscsi_server.url(0)) as c:
        assert c.execute(fault_control_cdb(0, len(doc)), data_out=doc).good
    with pytest.raises(LoginError) as e:
        BlockingIscsiClient(iscsi_server.url(0))
    assert e.value.status == 0x0201 and "Authentication failure" in str(e.value)
    with BlockingIscsiClient(iscsi_server.url(0)) as c:      # times=1: the next one works
        ready(c)


def test_nobody_listening_is_a_transport_error():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(TransportError, match="cannot connect"):
        BlockingIscsiClient(f"iscsi://127.0.0.1:{port}/iqn.2026-01.x:t/0")


def test_target_drops_the_connection(iscsi_server):
    with BlockingIscsiClient(iscsi_server.url(0)) as c:
        ready(c)
        rule = iscsi_server.target.faults.add(action="drop_after_pdus", pdus=1,
                                              direction="received")
        with pytest.raises(TransportError, match="connection lost"):
            c.execute(read16(0, 8), read_length=8 * BS)
        assert not c.connected and rule.fired == 1
        with pytest.raises(TransportError, match="connection lost"):   # and stays failed
            c.execute(read16(0, 8), read_length=8 * BS)


def test_drop_fails_every_outstanding_command(iscsi_server):
    with BlockingIscsiClient(iscsi_server.url(0)) as c:
        ready(c)
        iscsi_server.target.faults.add(action="drop_after_pdus", pdus=3, direction="sent")
        tasks, errors = [], []
        try:
            for i in range(6):
                tasks.append(c.submit(read16(i * 8, 8), read_length=8 * BS))
        except TransportError as e:     # the drop can come while still sending
            errors.append(e)
        for t in tasks:
            try:
                c.wait(t)
            except TransportError as e:
                errors.append(e)
        assert errors and all("connection lost" in str(e) for e in errors)
        assert all(t.done() for t in tasks) and not c.connected


def test_a_stalled_answer_times_out_and_a_short_stall_completes(iscsi_server):
    t = iscsi_server.target
    with BlockingIscsiClient(iscsi_server.url(0), timeout=5.0) as c:
        ready(c)
        t.faults.add(action="stall", pdu="response", seconds=0.5, opcode="read")
        t0 = time.monotonic()
        assert c.execute(read16(0, 1), read_length=BS).good
        assert time.monotonic() - t0 >= 0.5
    t.faults.add(action="stall", pdu="response", opcode="read")       # sticky
    try:
        with BlockingIscsiClient(iscsi_server.url(0), timeout=1.0) as c:
            ready(c)
            t0 = time.monotonic()
            with pytest.raises(IscsiTimeout, match="timed out after 1 s"):
                c.execute(read16(0, 1), read_length=BS)
            assert time.monotonic() - t0 < 4 and not c.connected
    finally:
        t.faults.clear()


def test_a_digest_mismatch_is_a_protocol_violation(iscsi_server):
    url = iscsi_server.url(0) + "?header_digest=CRC32C&data_digest=CRC32C"
    iscsi_server.target.faults.add(action="corrupt_digest", digest="data", opcode="read")
    with BlockingIscsiClient(url) as c:
        ready(c)
        with pytest.raises(ProtocolViolation, match="data digest mismatch"):
            c.execute(read16(0, 1), read_length=BS)
        assert not c.connected


def test_bad_arguments_send_nothing(iscsi_server):
    with BlockingIscsiClient(iscsi_server.url(0)) as c:
        with pytest.raises(ValueError):
            c.execute(b"")
        with pytest.raises(ValueError):
            c.execute(read16(0, 1), read_length=BS, read_into=bytes(BS))     # read-only
        with pytest.raises(ValueError):
            c.execute(write16(0, 1), data_out=bytes(BS), read_length=BS)
        with pytest.raises(ValueError):
            c.pipeline([], 0).__next__()
        ready(c)


# ---------------------------------------------------- diffbackup over the client
@pytest.mark.scsi_lu("disk", lun=0, size="8M", track=True)
@pytest.mark.scsi_lu("backup", lun=1, source=0)
def test_diffbackup_login_refused_and_nobody_listening_are_one_line(diffbackup,
                                                                   iscsi_server, tmp_path):
    doc = json.dumps({"action": "reject_login", "login_status": [2, 1], "times": 1}).encode()
    with BlockingIscsiClient(iscsi_server.url(0)) as c:
        assert c.execute(fault_control_cdb(0, len(doc)), data_out=doc).good
    out = tmp_path / "a.stream"
    r = diffbackup("full", iscsi_server.url(1), "-o", str(out))
    assert r.returncode == 1 and "LoginError" in one_line(r) and not out.exists()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = diffbackup("full", f"iscsi://127.0.0.1:{port}/{iscsi_server.target.name}/1", "-o",
                   str(out))
    assert r.returncode == 1 and "cannot connect" in one_line(r) and not out.exists()
    r = diffbackup("full", iscsi_server.url(1), "-o", str(out))           # and then it works
    assert r.returncode == 0, r.stderr
    v = subprocess.run([sys.executable, "-m", "tools.diffbackup", "verify", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert v.returncode == 0, v.stdout + v.stderr
