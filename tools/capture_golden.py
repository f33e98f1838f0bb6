"""Capture golden SCSI responses from tgt (the real peer) for the layout decoder tests.

    python -m tools.capture_golden [--out tests/golden/tgt]

Starts its own tgtd (root needed) on a free local port with a disk LUN and an
SSC tape LUN, sends each command with the project's initiator and stores the
data-in (or, for CHECK CONDITION, the sense data) as ``NAME.bin``, plus
``manifest.json`` (CDB, status, what each file holds).  Commands tgt rejects
are listed in the manifest without a file.
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scsi_target.initiator.sync import SyncIscsiClient
from scsi_target.scsi.layouts import cdbs as C

IQN = "iqn.2026-01.org.scsi-target.golden:tgt"


def _free_port() -> int:
    """A free port that tgtd also accepts as control port number (it caps -C low)."""
    for port in range(3380, 3400):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if not Path(f"/var/run/tgtd/socket.{port}").exists():
            return port
    sys.exit("no free port in 3380..3399 for tgtd")


def _tool(name: str) -> str:
    path = shutil.which(name) or f"/usr/sbin/{name}"
    if not Path(path).exists():
        sys.exit(f"{name} not found (Debian package tgt)")
    return path


class Tgt:
    def __init__(self, tmp: Path, disk_size: int = 16 << 20) -> None:
        self.port = _free_port()
        self.adm_path = _tool("tgtadm")
        self.proc = subprocess.Popen(
            [_tool("tgtd"), "-f", "-C", str(self.port), "--iscsi", f"portal=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = subprocess.run([self.adm_path, "-C", str(self.port), "--mode", "sys", "--op", "show"],
                               capture_output=True)
            if r.returncode == 0:
                try:
                    socket.create_connection(("127.0.0.1", self.port), 1).close()
                    break
                except OSError:
                    pass
            time.sleep(0.1)
        else:
            self.close()
            sys.exit("tgtd did not start")
        disk = tmp / "disk.img"
        with open(disk, "wb") as f:
            f.truncate(disk_size)
        tape = tmp / "tape.img"
        subprocess.run([_tool("tgtimg"), "--op", "new", "--device-type", "tape", "--barcode",
                        "GOLD01", "--size", "16", "--type", "data", "--file", str(tape)],
                       check=True, capture_output=True)
        self.adm("--mode", "target", "--op", "new", "--tid", "1", "--targetname", IQN)
        self.adm("--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1",
                 "--backing-store", str(disk))
        self.adm("--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "2",
                 "--device-type", "tape", "--bstype", "ssc", "--backing-store", str(tape))
        self.adm("--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL")

    def adm(self, *args: str) -> None:
        subprocess.run([self.adm_path, "-C", str(self.port), "--lld", "iscsi", *args], check=True,
                       capture_output=True)

    def url(self, lun: int) -> str:
        return f"iscsi://127.0.0.1:{self.port}/{IQN}/{lun}"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


# (name, CDB, read length[, data-out]) per LUN; order matters for the tape (position).
DISK = [
    ("inquiry_std", C.inquiry(alloc=255), 255),
    *[(f"vpd_{p:02x}", C.inquiry(True, p, 4096), 4096) for p in (0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2, 0x8F)],
    ("readcap10", C.read_capacity10(), 8),
    ("readcap16", C.read_capacity16(32), 32),
    ("report_luns", C.report_luns(4096), 4096),
    ("mode_sense10_all", C.mode_sense10(0x3F, alloc=4096), 4096),
    ("mode_sense6_all", C.mode_sense6(0x3F, alloc=255), 255),
    ("mode_sense10_all_llbaa", C.mode_sense10(0x3F, llbaa=True, alloc=4096), 4096),
    *[(f"mode_sense10_{p:02x}", C.mode_sense10(p, alloc=4096), 4096) for p in (0x01, 0x08, 0x0A, 0x1C)],
    ("mode_sense10_08_changeable", C.mode_sense10(0x08, pc=1, alloc=4096), 4096),
    ("rsoc_all", C.report_supported_opcodes(0, alloc=65536), 65536),
    ("rsoc_all_rctd", C.report_supported_opcodes(0, rctd=True, alloc=65536), 65536),
    ("rsoc_one_read16", C.report_supported_opcodes(1, 0x88, alloc=512), 512),
    ("rsoc_one_read16_rctd", C.report_supported_opcodes(1, 0x88, rctd=True, alloc=512), 512),
    ("get_lba_status", C.get_lba_status(0, 4096), 4096),
    ("sense_lba_out_of_range", C.read16(1 << 40, 1), 512),
    ("sense_bad_opcode", bytes([0xEE]) + bytes(9), 0),
    ("sense_invalid_cdb_field", C.inquiry(False, 0, 255)[:1] + b"\x00\x80" + C.inquiry()[3:], 255),
    ("request_sense_fixed", C.request_sense(252), 252),
    ("request_sense_desc", C.request_sense(252, True), 252),
    ("pr_out_register", bytes([0x5F, 0, 0, 0, 0, 0, 0, 0, 24, 0]), 0,
     bytes(8) + (0x1122334455667788).to_bytes(8, "big") + bytes(8)),
    ("pr_out_reserve", bytes([0x5F, 1, 3, 0, 0, 0, 0, 0, 24, 0]), 0,
     (0x1122334455667788).to_bytes(8, "big") + bytes(16)),
    ("pr_in_read_keys", C.pr_in(0), 8192),
    ("pr_in_read_reservation", C.pr_in(1), 8192),
    ("pr_in_report_capabilities", C.pr_in(2), 8192),
]
TAPE = [
    ("tape_inquiry_std", C.inquiry(alloc=255), 255),
    ("tape_load", C.load_unload(True), 0),
    ("tape_rewind", C.rewind(), 0),
    ("tape_read_block_limits", C.read_block_limits(), 6),
    ("tape_read_position_short_bop", C.read_position(0), 20),
    ("tape_read_position_long_bop", C.read_position(6, 32), 32),
    ("tape_mode_sense10_all", C.mode_sense10(0x3F, alloc=4096), 4096),
    ("tape_mode_sense6_all", C.mode_sense6(0x3F, alloc=255), 255),
    ("tape_mode_sense10_0f", C.mode_sense10(0x0F, alloc=4096), 4096),
    ("tape_mode_sense10_10", C.mode_sense10(0x10, alloc=4096), 4096),
    ("tape_write_6", bytes([0x0A, 0x01, 0, 0, 2, 0]), 0, b"G" * 1024),   # 2 fixed blocks? variable mode
    ("tape_write_var", bytes([0x0A, 0x00, 0, 0x02, 0x00, 0]), 0, b"V" * 512),
    ("tape_wfm", C.write_filemarks(1), 0),
    ("tape_read_position_short_after", C.read_position(0), 20),
    ("tape_read_position_long_after", C.read_position(6, 32), 32),
    ("tape_rewind2", C.rewind(), 0),
    ("tape_space_filemark", C.space(1, C.SPACE_FILEMARKS), 0),
    ("tape_read_position_short_after_fm", C.read_position(0), 20),
    ("tape_sense_read_eod", bytes([0x08, 0x00, 0, 0x02, 0x00, 0]), 512),
    ("tape_sense_space_past_eod", C.space(5, C.SPACE_FILEMARKS), 0),
    ("tape_unload", C.load_unload(False), 0),
    ("tape_sense_not_ready", C.test_unit_ready(), 0),
]


def capture(client: SyncIscsiClient, plan, out: Path, manifest: dict) -> None:
    # Clear the power-on unit attention first so it doesn't land in the captures.
    for _ in range(5):
        if client.execute(C.test_unit_ready()).status == 0:
            break
    for entry in plan:
        name, cdb, length = entry[:3]
        data_out = entry[3] if len(entry) > 3 else None
        r = client.execute(cdb, read_length=length, data_out=data_out)
        rec = {"cdb": cdb.hex(), "status": r.status}
        if r.status == 0 and r.data:
            (out / f"{name}.bin").write_bytes(bytes(r.data))
            rec["file"], rec["holds"] = f"{name}.bin", "data-in"
        elif r.status == 2 and r.sense:
            (out / f"{name}.bin").write_bytes(bytes(r.sense))
            rec["file"], rec["holds"] = f"{name}.bin", "sense"
        manifest[name] = rec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="tests/golden/tgt", type=Path)
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tgt = Tgt(Path(tmp))
        try:
            manifest: dict = {}
            for lun, plan in ((1, DISK), (2, TAPE)):
                with SyncIscsiClient(tgt.url(lun)) as c:
                    capture(c, plan, a.out, manifest)
        finally:
            tgt.close()
    (a.out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    files = sum(1 for v in manifest.values() if "file" in v)
    print(f"{files} responses captured of {len(manifest)} commands into {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
