"""scsi-shell driven as a user would: a real terminal (pexpect) for completion,
history, wrong commands, CHECK CONDITION and a dropped connection; -c/--batch/--json
runs and exit codes against our target (served in process by the testing library)
and tgt (tape LUN)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from tests.client_targets import TgtFactory

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
IQN = "iqn.2026-11.org.pyscsi:shelltest"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Our target comes from the testing library's pytest plugin: every test's LUs are
# 16 MiB disks (markers), served in process with the power-on unit attention.
pytestmark = pytest.mark.scsi_target(name=IQN, power_on_ua=True, fault_control=False)
DISK = pytest.mark.scsi_disk(size="16M")


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ, HOME=str(tmp), TERM="xterm", NO_COLOR="1", COLUMNS="120",
               PYTHONPATH=str(ROOT))
    env.pop("SCSI_SHELL_HISTORY", None)
    env.pop("SCSI_SHELL_DEBUG", None)
    return env


def shell(*args: str, tmp: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "tools.shell", *args], cwd=ROOT, env=_env(tmp),
                          capture_output=True, text=True, input=stdin, timeout=120)


def spawn(url: str, tmp: Path) -> pexpect.spawn:
    child = pexpect.spawn(PY, ["-m", "tools.shell", url], cwd=str(ROOT), env=_env(tmp),
                          encoding="utf-8", timeout=30, dimensions=(50, 160))
    child.expect("connected to")
    child.expect_exact("scsi> ")
    return child


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


# ----------------------------------------------------------------- interactive
@DISK
def test_console_completion_wrong_command_and_check_condition(iscsi_server, tmp_path) -> None:
    c = spawn(iscsi_server.url(), tmp_path)
    try:
        c.send("modes\t")                          # command name completes
        c.expect_exact("modesense ")
        c.send("--p\t")                            # option completes
        c.expect_exact("--pc ")
        c.send("chang\t")                          # option value completes
        c.expect_exact("changeable ")
        c.sendline("08")
        c.expect("MODE SENSE\\(10\\) page 08h, changeable values")
        c.expect("wce +True")                      # WCE is the changeable bit of page 08h
        c.expect_exact("scsi> ")
        c.sendline("bogus 1 2")
        c.expect_exact("usage: unknown command 'bogus' (type 'help' for the list)")
        c.expect_exact("scsi> ")
        c.sendline("read 1 two")
        c.expect_exact("usage: read: argument count: not a number: 'two'")
        c.expect_exact("scsi> ")
        c.sendline("read 99999999 1")
        c.expect_exact("CHECK CONDITION: ILLEGAL REQUEST, ASC/ASCQ 21h/00h "
                       "LOGICAL BLOCK ADDRESS OUT OF RANGE")
        c.expect_exact("scsi> ")
        c.sendline("help modesense")
        c.expect("--pc \\{changeable,current,default,saved\\}")
        c.expect_exact("scsi> ")
        c.sendline("quit")
        c.expect(pexpect.EOF)
        _no_traceback(c.before)
    finally:
        c.close(force=True)
    assert c.exitstatus == 0


@DISK
def test_console_history_survives_restart(iscsi_server, tmp_path) -> None:
    c = spawn(iscsi_server.url(), tmp_path)
    c.sendline("luns")
    c.expect("LUN")
    c.expect_exact("scsi> ")
    c.sendline("tur")
    c.expect_exact("ready")
    c.expect_exact("scsi> ")
    c.sendeof()                                    # Ctrl-D: leave, history saved
    c.expect(pexpect.EOF)
    c.close()
    hist = (tmp_path / ".scsi_shell_history").read_text().splitlines()
    assert hist[-2:] == ["luns", "tur"]
    c = spawn(iscsi_server.url(), tmp_path)
    try:
        c.send("\x1b[A\x1b[A")                     # Up, Up: back to 'luns'
        c.expect_exact("luns")
        c.send("\r")
        c.expect("0000000000000000")               # LUN 0's address in the table
        c.expect_exact("scsi> ")
    finally:
        c.sendline("quit")
        c.close(force=True)


@DISK
def test_console_dropped_connection_and_reconnect(iscsi_target, tmp_path) -> None:
    srv = iscsi_target.serve().start()
    c = spawn(srv.url(), tmp_path)
    try:
        c.sendline("tur")
        c.expect_exact("ready")
        c.expect_exact("scsi> ")
        srv.stop()                                 # the target dies mid-session
        c.sendline("tur")
        c.expect("connection: connection lost: .*\\(type 'reconnect' to log in again\\)")
        c.expect_exact("scsi> ")
        c.sendline("reconnect")                    # nothing listens: a clear failure
        c.expect("connection: cannot connect to 127.0.0.1:\\d+")
        c.expect_exact("scsi> ")
        srv = iscsi_target.serve(port=srv.port).start()    # back on the same port
        c.sendline("reconnect")
        c.expect("connected to iscsi://127.0.0.1")
        c.expect_exact("scsi> ")
        c.sendline("readcap")
        c.expect("blocks +32768")
        c.expect_exact("scsi> ")
        c.sendline("exit")
        c.expect(pexpect.EOF)
        _no_traceback(c.before)
    finally:
        c.close(force=True)
        srv.stop()


# ------------------------------------------------------------------- scripting
@DISK
def test_c_commands_and_exit_codes(iscsi_server, tmp_path) -> None:
    r = shell(iscsi_server.url(), "-c",
              "inq; readcap; write 3 --pattern 0xa5 --count 2; read 3 1", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "PYSCSI" in r.stdout and "blocks" in r.stdout
    assert "wrote 2 block(s) (1024 bytes) at LBA 3" in r.stdout
    assert "00000000  a5 a5 a5 a5" in r.stdout
    r = shell(iscsi_server.url(), "-c", "tur; read 99999999 1; tur", tmp=tmp_path)
    assert r.returncode == 1
    assert "CHECK CONDITION: ILLEGAL REQUEST, ASC/ASCQ 21h/00h" in r.stderr
    assert r.stdout.count("ready") == 2             # the line goes on after a failure
    r = shell(iscsi_server.url(), "-c", "inq --vpd zz", tmp=tmp_path)
    assert r.returncode == 2 and "not a hex page code: 'zz'" in r.stderr
    r = shell(f"iscsi://127.0.0.1:{_free_port()}/{IQN}/0", "-c", "tur", tmp=tmp_path)
    assert r.returncode == 3 and "cannot connect to 127.0.0.1" in r.stderr
    r = shell(iscsi_server.url().replace(IQN, "iqn.2026-11.org.pyscsi:nosuch"), "-c", "tur",
              tmp=tmp_path)
    assert r.returncode == 3 and "login to" in r.stderr and "failed" in r.stderr
    for res in (r,):
        _no_traceback(res.stderr + res.stdout)


@DISK
def test_json_and_batch(iscsi_server, tmp_path) -> None:
    batch = tmp_path / "cmds.txt"
    batch.write_text("# a comment\ninq --vpd 80\nmodesense control\n\nread 99999999 1\n"
                     "raw 1200000024 00 --in 36\nluns\n")
    r = shell(iscsi_server.url(), "--batch", str(batch), "--json", tmp=tmp_path)
    assert r.returncode == 1
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["command"] for o in objs] == ["inq --vpd 80", "modesense control",
                                            "read 99999999 1", "raw 1200000024 00 --in 36", "luns"]
    assert objs[0]["ok"] and objs[0]["fields"]["serial"]
    assert objs[1]["fields"]["0ah Control"]["qam"] == 1
    assert not objs[2]["ok"] and objs[2]["sense"]["asc"] == 0x21
    assert objs[2]["sense"]["asc_name"] == "LOGICAL BLOCK ADDRESS OUT OF RANGE"
    assert objs[3]["fields"]["bytes"] == 36 and objs[3]["data"].startswith("00")
    assert objs[4]["table"] == [{"LUN": 0, "address": "0000000000000000"}]
    r = shell(iscsi_server.url(), "--batch", "-", tmp=tmp_path, stdin="tur\ntur\n")
    assert r.returncode == 0 and r.stdout.count("ready") == 2


@pytest.mark.scsi_disk(lun=0, size="16M", track=True)
@pytest.mark.scsi_lu("backup", lun=1, source=0)
def test_backup_commands_on_backup_lun(iscsi_server, tmp_path) -> None:
    _backup_commands(iscsi_server, tmp_path)


def _backup_commands(iscsi_server, tmp_path: Path) -> None:
    shell(iscsi_server.url(0), "-c", "write 0 --pattern 1 --count 8", tmp=tmp_path)
    r = shell(iscsi_server.url(1), "--json", "-c", "gen; counts; estimate 1; scope 1", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    gen, counts, est, scope = (json.loads(x) for x in r.stdout.splitlines())
    assert gen["fields"]["current_generation"] >= 1
    assert sum(row["blocks"] for row in counts["table"]) == gen["fields"]["entries"]
    assert est["fields"]["blocks"] >= 1
    assert scope["text"].startswith("selected differential backup from generation 1")
    r = shell(iscsi_server.url(0), "-c", "gen", tmp=tmp_path)  # a disk LUN has no backup commands
    assert r.returncode == 1 and "gen: not supported by this target" in r.stderr


def test_in_process_config(tmp_path) -> None:
    cfg = tmp_path / "site.toml"
    cfg.write_text(f'[[target]]\niqn = "{IQN}"\n\n  [[target.lun]]\n  lun = 0\n'
                   '  path = "local.img"\n  size = "4M"\n  create = true\n')
    r = shell("--config", str(cfg), "-c", "readcap; write 7 --pattern 0x5a; read 7 1; luns",
              tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "8192" in r.stdout and "00000000  5a 5a 5a" in r.stdout
    assert (tmp_path / "local.img").stat().st_size == 4 << 20
    r = shell("--config", str(tmp_path / "missing.toml"), "-c", "tur", tmp=tmp_path)
    assert r.returncode == 3 and "cannot read" in r.stderr
    _no_traceback(r.stderr)


@DISK
def test_prin_actions(iscsi_server, tmp_path) -> None:
    """prin keys/reservation/caps/fullstatus before and after a registration and a
    reservation made in the same session (raw PERSISTENT RESERVE OUT)."""
    import struct
    reg = struct.pack(">QQIBBH", 0, 0xABC, 0, 0, 0, 0).hex()
    res = struct.pack(">QQIBBH", 0xABC, 0, 0, 0, 0, 0).hex()
    r = shell(iscsi_server.url(), "--json", "-c",
              "prin fullstatus; prin keys; prin reservation; prin caps; "
              f"raw 5f06 0000 0000 0000 1800 --data {reg}; raw 5f01 0300 0000 0000 1800 --data {res}; "
              "prin keys; prin reservation; prin fullstatus", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    fs0, k0, r0, caps, _, _, k1, r1, fs1 = (json.loads(x) for x in r.stdout.splitlines())
    assert fs0["text"] == "no registrations" and "table" not in fs0
    assert k0["text"] == "no registered keys" and r0["text"] == "no reservation"
    assert caps["fields"]["tmv"] and "Exclusive Access - All Registrants" in caps["fields"]["types"]
    assert k1["table"] == [{"key": "0x0000000000000abc"}]
    assert k1["fields"]["generation"] == k0["fields"]["generation"] + 1
    assert r1["fields"]["key"] == "0x0000000000000abc" and r1["fields"]["type"] == "Exclusive Access"
    (row,) = fs1["table"]
    assert row["key"] == "0x0000000000000abc" and row["holder"] == "yes"
    assert row["type"] == "Exclusive Access" and row["rel. port"] == 1
    assert row["transport ID"].startswith("iqn.") and ",i,0x" in row["transport ID"]
    r = shell(iscsi_server.url(), "-c", "prin everything", tmp=tmp_path)
    assert r.returncode == 2 and "invalid choice" in r.stderr
    _no_traceback(r.stderr + r.stdout)


@pytest.mark.scsi_disk(lun=0, size="16M")
@pytest.mark.scsi_disk(lun=1, size="16M")
def test_copy_commands_between_two_luns(iscsi_server, tmp_path) -> None:
    """xcopy between LUN 0 and LUN 1 of our target (CSCDs from VPD 83h NAA designators),
    then copystatus, copyparams, and a copy that fails with its failed-segment sense."""
    r = shell(iscsi_server.url(0), "--json", "-c",
              "copyparams; write 10 --pattern 0x5a --count 4; write 40 --pattern 0x33; "
              "xcopy 0:10 1:20 4 --id 7; copystatus 7; xcopy 0:40 0:41 1 --id 8; copystatus 8",
              tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    params, _, _, xc, st, xc_same, st_same = (json.loads(x) for x in r.stdout.splitlines())
    f = params["fields"]
    assert f["max_segment_descriptors"] == 64 and f["max_cscd_descriptors"] == 16
    assert f["implemented_descriptors"] == ["00h block->stream", "02h block->block",
                                            "e4h identification descriptor"]
    assert "copied 4 block(s) (2048 bytes) from LUN 0 LBA 10 to LUN 1 LBA 20" in xc["text"]
    assert st["fields"]["status"] == "completed without errors"
    assert st["fields"]["segments_processed"] == 1 and st["fields"]["bytes"] == 2048
    assert st_same["fields"]["bytes"] == 512
    r = shell(iscsi_server.url(1), "-c", "read 19 6", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    # LBA 19 untouched, 20-23 copied, 24 untouched: the dump shows exactly 4 blocks of 5a.
    assert r.stdout.count("5a 5a 5a 5a") >= 1 and "00000200  5a 5a" in r.stdout
    assert "00000a00  00 00" in r.stdout
    r = shell(iscsi_server.url(0), "-c", "read 41 1", tmp=tmp_path)
    assert "00000000  33 33 33 33" in r.stdout
    # Past the end of LUN 1 (16 MiB = 32768 blocks): the copy is aborted.
    r = shell(iscsi_server.url(0), "-c", "xcopy 0:0 1:32767 2 --id 9; copystatus 9", tmp=tmp_path)
    assert r.returncode == 1
    assert "CHECK CONDITION: COPY ABORTED" in r.stderr
    assert "completed with errors" in r.stdout and "failed: COPY ABORTED" in r.stdout
    r = shell(iscsi_server.url(0), "-c", "copystatus 99", tmp=tmp_path)
    assert r.returncode == 1 and "INVALID FIELD IN CDB" in r.stderr
    r = shell(iscsi_server.url(0), "-c", "xcopy 0:0 5:0 1", tmp=tmp_path)
    assert r.returncode == 1 and "LUN 5 is not available" in r.stderr, r.stderr
    r = shell(iscsi_server.url(0), "-c", "xcopy 0-0 1:0 1", tmp=tmp_path)
    assert r.returncode == 2 and "expected LUN:LBA" in r.stderr
    r = shell(iscsi_server.url(0), "-c", "xcopy 0:0 1:0 70000", tmp=tmp_path)
    assert r.returncode == 2 and "0..65535" in r.stderr
    _no_traceback(r.stderr + r.stdout)


# ------------------------------------------------------------------ tgt (tape)
@pytest.fixture
def tgt_tape(tmp_path):
    f = TgtFactory(tmp_path)
    try:
        info = f.new_target()
        tape = tmp_path / "tape.img"
        subprocess.run(["tgtimg", "--op", "new", "--device-type", "tape", "--barcode", "SHELL1",
                        "--size", "8", "--type", "data", "--file", str(tape)], check=True,
                       capture_output=True)
        tid = info.iqn.rsplit("tgt", 1)[1]
        f.adm("--mode", "logicalunit", "--op", "new", "--tid", tid, "--lun", "2",
              "--device-type", "tape", "--bstype", "ssc", "--backing-store", str(tape))
        yield info
    finally:
        f.close()


def test_tape_commands_against_tgt(tgt_tape, tmp_path) -> None:
    url = tgt_tape.url(lun=2)
    r = shell(url, "--json", "-c", "load; inq; rewind; blocklimits; pos; "
              "raw 0a 00 00 02 00 00 --data " + "41" * 512 + "; wfm 2; pos; rewind; "
              "space --filemarks 1; modesense 10; modesense 0f; unload", tmp=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    objs = {o["command"].split()[0] + str(i): o for i, o in
            enumerate(json.loads(x) for x in r.stdout.splitlines())}
    assert all(o["ok"] for o in objs.values())
    assert objs["inq1"]["fields"]["device_type"].startswith("01h")
    assert objs["blocklimits3"]["fields"]["max_block_length"] == 1 << 20
    assert "short" in objs["pos4"]["fields"]
    assert objs["wfm6"]["text"] == "wrote 2 filemark(s)"
    dev = objs["modesense10"]["fields"]
    assert "10h Device Configuration" in dev and "block_descriptor[0]" in dev
    assert "density_code" in dev["block_descriptor[0]"]
    assert "0fh Data Compression" in objs["modesense11"]["fields"]
    # tgt's SSC implements neither LOCATE(10) nor LOCATE(16): a clear answer, not a crash.
    r = shell(url, "-c", "load; locate 0", tmp=tmp_path)
    assert r.returncode == 1 and "INVALID COMMAND OPERATION CODE" in r.stderr
    r = shell(url, "-c", "load; rewind; space --filemarks 9", tmp=tmp_path)
    assert r.returncode == 1 and "CHECK CONDITION" in r.stderr and "END-OF-DATA" in r.stderr
    r = shell(tgt_tape.url(), "-c", "gen", tmp=tmp_path)    # tgt has no backup engine
    assert r.returncode == 1 and "gen: not supported by this target" in r.stderr
