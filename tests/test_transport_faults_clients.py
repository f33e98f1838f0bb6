"""iSCSI-level and tape faults seen by real clients: libiscsi (qemu-io, iscsi-inq,
iscsi-ls), our initiator and diffbackup, against the plugin's served target and the
real server process steered from its TOML config and FAULT CONTROL."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from scsi_target.testing.external import require_tool, run_tool
from scsi_target.initiator.errors import (IscsiTimeout, LoginError, ProtocolViolation,
                                          TransportError)
from scsi_target.initiator.sync import SyncIscsiClient
from scsi_target.testing import fault_control_cdb

BS = 512
REPO = Path(__file__).resolve().parent.parent


def qemu_io(target: str, *commands: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """qemu-io on an iscsi:// URL, or on --image-opts when ``target`` is an options string."""
    args = [require_tool("qemu-io")]
    args += ["--image-opts"] if target.startswith("driver=") else ["-f", "raw"]
    for c in commands:
        args += ["-c", c]
    return run_tool(args + [target], timeout=120, env=dict(os.environ, **(env or {})))


def image_opts(server, lun: int = 0, **extra) -> str:
    opts = dict(driver="iscsi", transport="tcp", portal=f"127.0.0.1:{server.port}",
                target=server.target.name, lun=str(lun), **extra)
    return ",".join(f"{k}={v}" for k, v in opts.items())


def read10(lba: int, n: int) -> bytes:
    return bytes([0x28, 0]) + lba.to_bytes(4, "big") + b"\0" + n.to_bytes(2, "big") + b"\0"


def sessions_ended(log) -> int:
    """Sessions that ended (logout or a lost connection): the log's I_T NEXUS LOSS records."""
    return sum(1 for r in log if r.name == "I_T NEXUS LOSS")


def wait_sessions_ended(log, n: int) -> int:
    """Sessions ended once ``n`` have (or 10 s passed): a client's logout is
    handled at the target after the client process may already be gone."""
    deadline = time.monotonic() + 10
    while sessions_ended(log) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    return sessions_ended(log)


def clear_after_session_ends(log) -> None:
    """Clear the log once the session of the client that just exited has ended at
    the target too."""
    assert wait_sessions_ended(log, 1) >= 1, log.format()
    log.clear()


def one_line(r: subprocess.CompletedProcess) -> str:
    err = r.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# ------------------------------------------------------------- drop after N PDUs
def test_drop_after_pdus_received_our_initiator_reconnects(iscsi_server):
    with SyncIscsiClient(iscsi_server.url(0)) as c:
        c.test_unit_ready()
        c.write(3, b"\x5a" * BS)
        # Counted from when the rule is added, on connections already open too.
        rule = iscsi_server.target.faults.add(action="drop_after_pdus", pdus=2,
                                              direction="received")
        assert c.test_unit_ready().good
        with pytest.raises(TransportError, match="connection lost"):
            c.read(3, 1)                                # the second PDU: never acted on
        c.reconnect()                                   # once: the new connection stays
        c.test_unit_ready()
        assert bytes(c.read(3, 1)) == b"\x5a" * BS
    assert rule.fired == 1
    reads = iscsi_server.target.log.select("READ")
    assert len(reads) == 1                              # the dropped READ never ran


def test_drop_after_pdus_sent_qemu_io_reconnects_and_retries(iscsi_server):
    assert "wrote 65536/65536" in qemu_io(iscsi_server.url(0), "write -P 0x3e 0 65536").stdout
    rule = iscsi_server.target.faults.add(action="drop_after_pdus", pdus=4, direction="sent")
    log = iscsi_server.target.log
    clear_after_session_ends(log)
    r = qemu_io(iscsi_server.url(0), *[f"read -P 0x3e {k * 4096} 4096" for k in range(8)])
    out = r.stdout + r.stderr
    assert out.count("read 4096/4096") == 8 and "Pattern verification failed" not in out, out
    assert rule.fired == 1 and wait_sessions_ended(log, 2) == 2, log.format()   # drop, logout


@pytest.mark.scsi_lu("disk", lun=0, size="8M", track=True)
@pytest.mark.scsi_lu("backup", lun=1, source=0)
def test_drop_and_stall_during_a_backup_diffbackup(diffbackup, iscsi_server, tmp_path):
    t = iscsi_server.target
    assert t.write(0, os.urandom(256 * BS)).ok
    rule = t.faults.add(action="drop_after_pdus", pdus=12, direction="sent")
    r = diffbackup("full", iscsi_server.url(1), "-o", str(tmp_path / "a.stream"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "connection lost" in one_line(r) and rule.fired == 1
    assert not (tmp_path / "a.stream").exists()          # a failed backup leaves no file
    # A response stalled for a second: the backup is slower, and complete.
    stall = t.faults.add(action="stall", pdu="response", seconds=1.0, lun=1, opcode="read")
    t0 = time.monotonic()
    r = diffbackup("full", iscsi_server.url(1), "-o", str(tmp_path / "b.stream"))
    assert r.returncode == 0, r.stderr
    assert stall.fired == 1 and time.monotonic() - t0 >= 1.0
    v = subprocess.run([sys.executable, "-m", "tools.diffbackup", "verify",
                        str(tmp_path / "b.stream")], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert v.returncode == 0, v.stdout + v.stderr


# ----------------------------------------------------------------------- stalls
def test_stall_response_for_a_duration_qemu_io(iscsi_server):
    qemu_io(iscsi_server.url(0), "read 0 512")          # warm: tool start-up, login
    t0 = time.monotonic()
    qemu_io(iscsi_server.url(0), "read 0 512")
    base = time.monotonic() - t0
    rule = iscsi_server.target.faults.add(action="stall", pdu="response", seconds=1.5,
                                          opcode="read", lba=[0, 1])
    t0 = time.monotonic()
    r = qemu_io(iscsi_server.url(0), "read 0 512")
    assert "read 512/512" in r.stdout, r.stdout + r.stderr
    assert time.monotonic() - t0 >= base + 1.4 and rule.fired == 1


def test_stall_r2t_for_a_duration_qemu_io_write_waits(iscsi_server):
    rule = iscsi_server.target.faults.add(action="stall", pdu="r2t", seconds=1.5)
    t0 = time.monotonic()
    r = qemu_io(iscsi_server.url(0), "write -P 0x71 0 1M", "read -P 0x71 0 1M")
    out = r.stdout + r.stderr
    assert "wrote 1048576/1048576" in out and "Pattern verification failed" not in out, out
    assert rule.fired == 1 and time.monotonic() - t0 >= 1.5


@pytest.mark.parametrize("pdu", ["r2t", "response"])
def test_sticky_stall_holds_until_the_rule_is_cleared(iscsi_server, pdu):
    t = iscsi_server.target
    data = os.urandom(512 << 10)
    with SyncIscsiClient(iscsi_server.url(0)) as c:
        c.test_unit_ready()
        c.write(0, data)
        rule = t.faults.add(action="stall", pdu=pdu, opcode="write" if pdu == "r2t" else "read")
        done = threading.Event()
        got = {}

        def io():
            got["r"] = c.write(2048, data) if pdu == "r2t" else bytes(c.read(0, 1024))
            done.set()
        th = threading.Thread(target=io, daemon=True)
        th.start()
        deadline = time.monotonic() + 30
        while rule.fired == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rule.fired == 1
        assert not done.wait(0.5)                    # held: nothing comes back
        t.faults.clear()                             # the rule goes: so does the stall
        assert done.wait(30)
        th.join(5)
        if pdu == "response":
            assert got["r"] == data
        else:
            assert bytes(c.read(2048, 1024)) == data


def test_sticky_stall_our_initiator_times_out_with_one_error(iscsi_server):
    iscsi_server.target.faults.add(action="stall", pdu="response", opcode="read")
    with SyncIscsiClient(iscsi_server.url(0), timeout=1.0) as c:
        c.test_unit_ready()
        with pytest.raises(IscsiTimeout, match="timed out after 1 s"):
            c.read(0, 1)
    iscsi_server.target.faults.clear()


# ------------------------------------------------------------- digest corruption
def test_corrupt_header_digest_libiscsi_sees_a_checksum_error_and_reconnects(iscsi_server):
    t = iscsi_server.target
    opts = image_opts(iscsi_server, **{"header-digest": "crc32c"})
    assert "wrote 4096/4096" in qemu_io(opts, "write -P 0x2c 0 4096").stdout
    rule = t.faults.add(action="corrupt_digest", digest="header", opcode="read")
    clear_after_session_ends(t.log)
    r = qemu_io(opts, "read -P 0x2c 0 4096", env={"LIBISCSI_DEBUG": "1"})
    out = r.stdout + r.stderr
    assert "header checksum verification failed" in out, out
    assert "read 4096/4096" in out and "Pattern verification failed" not in out, out
    assert rule.fired == 1 and wait_sessions_ended(t.log, 2) == 2, t.log.format()  # drop, logout


def test_corrupt_digest_without_digests_does_nothing(iscsi_server):
    rule = iscsi_server.target.faults.add(action="corrupt_digest", digest="header",
                                          times="sticky")
    r = run_tool([require_tool("iscsi-inq"), iscsi_server.url(0)])   # libiscsi: None first
    assert r.returncode == 0 and "PYSCSI" in r.stdout, r.stdout + r.stderr
    assert rule.fired == 0


@pytest.mark.parametrize("digest", ["header", "data"])
def test_corrupt_digest_our_initiator_reports_and_reconnects(iscsi_server, digest):
    url = iscsi_server.url(0) + "?header_digest=CRC32C&data_digest=CRC32C"
    iscsi_server.target.faults.add(action="corrupt_digest", digest=digest, opcode="read")
    with SyncIscsiClient(url) as c:
        assert c.params.header_digest and c.params.data_digest
        c.test_unit_ready()
        c.write(9, b"\x17" * BS)
        with pytest.raises(ProtocolViolation, match=f"{digest} digest mismatch"):
            c.read(9, 1)
        c.reconnect()
        c.test_unit_ready()
        assert bytes(c.read(9, 1)) == b"\x17" * BS


# ------------------------------------------------------------------ login, NOP-In
def test_reject_login_with_class_and_detail_from_fault_control(iscsi_server):
    doc = json.dumps({"action": "reject_login", "login_status": [2, 1], "times": 2}).encode()
    with SyncIscsiClient(iscsi_server.url(0)) as c:
        assert c.execute(fault_control_cdb(0, len(doc)), data_out=doc).good
    r = run_tool([require_tool("iscsi-ls"), "-s", f"iscsi://{iscsi_server.portal}"])
    out = r.stdout + r.stderr
    # discovery works (the target is listed), the login to list its LUNs is refused
    assert r.returncode != 0 and iscsi_server.target.name in r.stdout, out
    assert "Failed to log in to target. Status: Authentication failure(513)" in out, out
    with pytest.raises(LoginError) as e:
        SyncIscsiClient(iscsi_server.url(0))
    assert e.value.status == 0x0201
    with SyncIscsiClient(iscsi_server.url(0)) as c:     # times=2: the third works
        assert c.test_unit_ready() is not None


def test_delay_nop_in_our_initiator_ping_waits_then_times_out(iscsi_server):
    iscsi_server.target.faults.add(action="delay_nop_in", seconds=1.0)
    with SyncIscsiClient(iscsi_server.url(0)) as c:
        c.test_unit_ready()
        assert c.ping(b"x") >= 1.0
        assert c.ping(b"y") < 1.0                       # once
    iscsi_server.target.faults.add(action="delay_nop_in", seconds=5.0)
    with SyncIscsiClient(iscsi_server.url(0), timeout=1.0) as c:
        with pytest.raises(IscsiTimeout, match="NOP-Out ping timed out"):
            c.ping()


# ------------------------------------------------------------------------- tape
@pytest.mark.scsi_lu("tape", lun=0, size="16M")
def test_tape_boundaries_seen_by_our_initiator(iscsi_server):
    t = iscsi_server.target
    # The first rule that fires acts: end of medium first, early warning before it.
    t.faults.add(action="tape_end_of_medium", block=4, lun=0, times="sticky")
    t.faults.add(action="tape_early_warning", block=2, lun=0, times="sticky")
    with SyncIscsiClient(iscsi_server.url(0)) as c:
        c.test_unit_ready()
        got = [c.execute(bytes([0x0A, 0, 0, 0x01, 0, 0]), data_out=bytes(256)) for _ in range(5)]
    assert [r.status for r in got] == [0, 2, 2, 2, 2]
    assert [(r.sense_key, r.asc, r.ascq) for r in got[1:]] == \
        [(0, 0, 2)] * 3 + [(0x0D, 0, 2)]


@pytest.mark.scsi_lu("disk", lun=0, size="8M", track=True)
@pytest.mark.scsi_lu("backup", lun=1, source=0)
@pytest.mark.scsi_lu("tape", lun=2, size="64M")
@pytest.mark.scsi_lu("tape", lun=3, size="64M")
def test_tape_early_warning_makes_diffbackup_span_cartridges(diffbackup, iscsi_server,
                                                             tmp_path):
    t = iscsi_server.target
    vol = os.urandom(4 << 20)
    assert t.write(0, vol).ok
    rule = t.faults.add(action="tape_early_warning", lun=2, block=6, times="sticky")
    a, b = iscsi_server.url(2), iscsi_server.url(3)
    r = diffbackup("full", iscsi_server.url(0), "--tape", a, "--tape", b, "--record-size", "256K")
    assert r.returncode == 0, r.stdout + r.stderr
    assert rule.fired >= 1
    dest = tmp_path / "restored.img"
    r = diffbackup("restore", str(dest), "--tape", a, "--tape", b, "--file", "0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert dest.read_bytes()[:len(vol)] == vol


@pytest.mark.scsi_lu("disk", lun=0, size="8M", track=True)
@pytest.mark.scsi_lu("backup", lun=1, source=0)
@pytest.mark.scsi_lu("tape", lun=2, size="64M")
def test_tape_end_of_medium_without_a_next_cartridge_is_one_line(diffbackup, iscsi_server,
                                                                 tmp_path):
    t = iscsi_server.target
    assert t.write(0, os.urandom(4 << 20)).ok
    t.faults.add(action="tape_end_of_medium", lun=2, block=3, times="sticky")
    r = diffbackup("full", iscsi_server.url(0), "--tape", iscsi_server.url(2),
                   "--record-size", "256K", cwd=tmp_path)
    assert r.returncode == 1
    err = one_line(r)
    assert "kept in" in err, err


# ----------------------------------------- the server process: TOML and FAULT CONTROL
def test_server_process_from_toml_and_steered_by_fault_control(iscsi_server_process):
    from scsi_target.testing.process import Lun, Target
    iqn = "iqn.2026-12.org.pyscsi.test:tfaults"
    proc = iscsi_server_process([Target(iqn, [Lun(0, "4M", {"track": False})],
                                        fault_control=True,
                                        faults=[{"action": "drop_after_pdus", "pdus": 3,
                                                 "direction": "received"}])])
    with SyncIscsiClient(proc.url(0)) as c:
        c.test_unit_ready()        # two PDUs: the power-on unit attention, the retry
        with pytest.raises(TransportError):
            c.test_unit_ready()    # the third
        c.reconnect()
        c.test_unit_ready()
        doc = json.dumps({"action": "stall", "pdu": "response", "seconds": 1.0,
                          "opcode": "read"}).encode()
        assert c.execute(fault_control_cdb(0, len(doc)), data_out=doc).good
        listed = json.loads(bytes(c.execute(fault_control_cdb(2, 4096), read_length=4096).data))
        assert [(x["action"], x["fired"]) for x in listed["rules"]] == \
            [("drop_after_pdus", 1), ("stall", 0)]
    r = qemu_io(proc.url(0), "read 0 512")
    assert "read 512/512" in r.stdout, r.stdout + r.stderr
    with SyncIscsiClient(proc.url(0)) as c:
        c.test_unit_ready()
        listed = json.loads(bytes(c.execute(fault_control_cdb(2, 4096), read_length=4096).data))
        assert listed["rules"][1]["fired"] == 1
        assert c.execute(fault_control_cdb(1)).good


def test_held_output_counts_against_the_send_bound(iscsi_target):
    """A response held until cleared while the initiator keeps reading: the target stops
    executing once the held data reaches its send bound, and goes on when released."""
    t = iscsi_target
    with t.serve(send_queue_bound=256 << 10) as server:
        with SyncIscsiClient(server.url(0)) as c:
            c.test_unit_ready()
            rule = t.faults.add(action="stall", pdu="response", opcode="read")
            t.log.clear()
            results = {}
            th = threading.Thread(target=lambda: results.update(r=c.execute_many(
                [dict(cdb=read10(k * 128, 128), read_length=128 * BS) for k in range(32)])),
                daemon=True)
            th.start()
            deadline = time.monotonic() + 30
            while rule.fired == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.5)                      # let it run as far as it can
            executed = len(t.log.select("READ"))
            assert 1 <= executed <= 8, executed  # 64 KiB each: the bound, not all 32
            t.faults.clear()
            th.join(60)
            assert [r.status for r in results["r"]] == [0] * 32
    assert len(t.log.select("READ")) == 32


def test_tshark_sees_exactly_the_corrupted_digests(iscsi_server, tmp_path):
    """The reference decoder agrees: one bad header digest (libiscsi's read) and one bad
    data digest (our initiator's), each the complement of the right one; the rest good."""
    from scsi_target.testing.external import require_root
    from iscsi_golden import capture
    require_root("capturing on lo")
    dumpcap, tshark = require_tool("dumpcap"), require_tool("tshark")
    t = iscsi_server.target
    opts = image_opts(iscsi_server, **{"header-digest": "crc32c"})

    def traffic():
        t.faults.add(action="corrupt_digest", digest="header", opcode="read")
        qemu_io(opts, "read 0 4096")
        t.faults.add(action="corrupt_digest", digest="data", opcode="read")
        with SyncIscsiClient(iscsi_server.url(0) + "?data_digest=CRC32C") as c:
            c.test_unit_ready()
            with pytest.raises(ProtocolViolation):
                c.read(0, 8)
    pcap = tmp_path / "digests.pcap"
    capture(dumpcap, iscsi_server.port, pcap, traffic)
    r = run_tool([tshark, "-r", str(pcap), "-d", f"tcp.port=={iscsi_server.port},iscsi", "-V"])
    lines = [ln.strip() for ln in r.stdout.splitlines() if ln.strip().startswith(
        ("HeaderDigest: 0x", "DataDigest: 0x"))]
    bad = [ln for ln in lines if "Bad CRC32" in ln]
    assert [b.split(":")[0] for b in bad] == ["HeaderDigest", "DataDigest"], "\n".join(lines)
    for b in bad:          # "HeaderDigest: 0x205fe8e0 (Bad CRC32, should be 0xdfa0171f)"
        got, want = (int(x, 16) for x in re.findall(r"0x([0-9a-f]{8})", b))
        assert got ^ want == 0xFFFFFFFF, b
    assert sum("Good CRC32" in ln for ln in lines) > 10


def test_a_long_stall_is_not_taken_for_a_dead_initiator(iscsi_target):
    """The target's keepalive ping would sit behind the held output: while it holds,
    the initiator's silence does not close the connection."""
    t = iscsi_target
    with t.serve(nop_interval=0.2, nop_timeout=0.3) as server:
        with SyncIscsiClient(server.url(0)) as c:
            c.test_unit_ready()
            rule = t.faults.add(action="stall", pdu="response", opcode="read")
            threading.Timer(2.0, t.faults.clear).start()   # past interval + timeout, twice
            assert len(c.read(0, 1)) == BS and rule.released
            assert c.test_unit_ready().good


@pytest.mark.timeout(120)
def test_delay_nop_in_qemu_io_times_out_its_pings_and_reconnects(iscsi_server):
    """qemu's iSCSI driver pings every 5 s and reconnects with 3 pings unanswered (its
    MAX_NOP_FAILURES): three held NOP-Ins make it reconnect at ~20 s; the read after works."""
    assert "wrote 512/512" in qemu_io(iscsi_server.url(0), "write -P 0x44 0 512").stdout
    rule = iscsi_server.target.faults.add(action="delay_nop_in", seconds=60, times=3)
    r = qemu_io(iscsi_server.url(0), "sleep 21000", "read -P 0x44 0 512")
    out = r.stdout + r.stderr
    assert "iSCSI: NOP timeout. Reconnecting..." in out, out
    assert "read 512/512" in out and "Pattern verification failed" not in out, out
    assert rule.fired == 3
