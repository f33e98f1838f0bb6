"""scsi-shell's tape commands against our tape LUN (the same script test_shell runs on tgt)."""
from __future__ import annotations

import json

from tape import TapeImage
from tests.test_shell import shell
from scsi_target.testing.process import ServerProcess


def test_tape_commands_against_ours(tmp_path) -> None:
    img = tmp_path / "t.img"
    TapeImage.create(img, 8 << 20, barcode="SHELL1").close()
    srv = ServerProcess.from_flags(tmp_path, "--tape", img).start()
    try:
        url = srv.url()
        r = shell(url, "--json", "-c", "load; inq; rewind; blocklimits; pos; "
                  "raw 0a 00 00 02 00 00 --data " + "41" * 512 + "; wfm 2; pos; rewind; "
                  "space --filemarks 1; modesense 10; modesense 0f; locate 1; pos; unload",
                  tmp=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        objs = [json.loads(x) for x in r.stdout.splitlines()]
        assert all(o["ok"] for o in objs)
        assert objs[1]["fields"]["device_type"].startswith("01h")
        assert objs[3]["fields"]["max_block_length"] == (1 << 24) - 1
        after = objs[7]["fields"]
        assert after["short"]["first_location"] == 3 and after["long"]["logical_file"] == 2
        assert "density_code" in objs[10]["fields"]["block_descriptor[0]"]
        assert objs[12]["text"] == "located to block 1"
        assert objs[13]["fields"]["short"]["first_location"] == 1
        r = shell(url, "-c", "load; rewind; space --filemarks 9", tmp=tmp_path)
        assert r.returncode == 1 and "BLANK CHECK" in r.stderr and "END-OF-DATA" in r.stderr
    finally:
        srv.stop()
