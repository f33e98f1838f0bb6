"""Where each generation's blocks lie: volume/mapview.py, REPORT MAP EXTENTS (C8h),
`diffbackup status` (drawing and --json) and scsi-shell's `counts`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scsi_target.initiator.sync import SyncIscsiClient
from scsi_target.scsi.layouts import backup as L
from tools.diffbackup import main
from volume import durability
from volume.filestore import FileStore
from volume.mapview import cell_range, strip
from volume.tracked import TrackingStore

from scsi_target.testing.process import ServerProcess
from test_backup_device import Rig

REPO = Path(__file__).resolve().parent.parent

G = 4096


def test_strip_regions():
    ext = [(0, 1, 1), (15, 20, 2), (99, 1, 3)]
    assert strip(ext, 100, 10) == [1, 2, 2, 2, 0, 0, 0, 0, 0, 3]
    assert strip(ext, 100, 1) == [3]
    assert strip([], 100, 4) == [0, 0, 0, 0]
    # more cells than blocks: one cell per block
    assert strip([(1, 1, 4)], 3, 80) == [0, 4, 0]
    # uneven regions: every block belongs to exactly the region cell_range says
    for b in range(37):
        cells = strip([(b, 1, 1)], 37, 5)
        (c,) = [i for i, g in enumerate(cells) if g]
        lo, hi = cell_range(c, 5, 37)
        assert lo <= b < hi


def _write_blocks(path, blocks) -> None:
    vol = TrackingStore.open(FileStore(str(path)), str(path))
    try:
        for b in blocks:
            vol.write(b * G, os.urandom(G))
        durability.barrier()
    finally:
        vol.close()


def _volume(tmp_path):
    """256 blocks; generation 1 holds 10..11, generation 2 (open) 12 and 200."""
    vol = tmp_path / "vol.img"
    vol.write_bytes(os.urandom(256 * G))
    assert main(["-q", "full", str(vol), "-o", str(tmp_path / "f.bk")]) == 0
    _write_blocks(vol, [10, 11, 12])
    assert main(["-q", "diff", str(vol), "--scope", "1", "-o", str(tmp_path / "d.bk")]) == 0
    _write_blocks(vol, [200, 12])
    return vol


EXPECT = {"granularity": G, "entries": 256, "volume_size": 256 * G, "current_generation": 2,
          "full_done": True, "pending_lo": None, "stream_open": False,
          "restore_incomplete": False, "restore_interrupted": False, "unrecovered": 0,
          "counts": {"0": 252, "1": 2, "2": 2},
          "extents": [[10, 2, 1], [12, 1, 2], [200, 1, 2]]}


def test_status_json_and_drawing(tmp_path, capsys):
    vol = _volume(tmp_path)
    capsys.readouterr()
    assert main(["status", str(vol), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc.pop("volume_id")) == 32
    assert doc == EXPECT
    assert main(["status", str(vol), "--cells", "16"]) == 0
    text = capsys.readouterr().out
    assert "16 regions of 16 blocks (64.0 KiB)" in text
    assert "\n|2···········2···|\n" in text
    bars = [ln for ln in text.splitlines() if " gen " in ln]
    assert len(bars) == 3
    assert bars[0].startswith("· gen   0 ") and "252 blocks (1008.0 KiB, 98.4%)" in bars[0]
    assert bars[1].startswith("1 gen   1 █░") and "2 blocks (8.0 KiB, 0.8%)" in bars[1]
    assert bars[2].startswith("2 gen   2 █░")
    assert main(["status", str(vol), "--cells", "0"]) == 2


def test_map_extents_pages(tmp_path):
    rig = Rig(tmp_path)
    try:
        for b in range(0, 40, 2):                 # 20 one-block extents, generation 1
            rig.write(b * (G // 512), os.urandom(G))
        want = [(b, 1, 1) for b in range(0, 40, 2)]
        got = []
        while len(got) < 20:
            length = L.MapExtentsHeader.SIZE + 7 * L.MapExtentDesc.SIZE + 5   # 7 fit
            r = rig.vendor(L.OP_REPORT_MAP_EXTENTS, scope=len(got), length=length)
            assert r.ok
            h, ext = L.unpack_map_extents(bytes(r.data_in))
            assert h.total_descriptors == 20 and h.first_descriptor == len(got)
            assert h.descriptors == len(ext) == min(7, 20 - len(got))
            got += ext
        assert got == want
        r = rig.vendor(L.OP_REPORT_MAP_EXTENTS, scope=0, length=16)      # header cut short
        assert r.ok and len(r.data_in) == 16
    finally:
        rig.close()


def test_status_and_counts_over_iscsi(diffbackup, tmp_path):
    vol = tmp_path / "v.img"
    with ServerProcess.from_flags(tmp_path, "--disk", f"{vol}:1M", "--backup-device") as srv:
        url = srv.url(0)
        with SyncIscsiClient(url) as c:
            c.write(8 * 10, os.urandom(2 * G))
        assert diffbackup("full", url, "-o", str(tmp_path / "f.bk")).returncode == 0
        with SyncIscsiClient(url) as c:
            for b in (10, 11, 12):
                c.write(8 * b, os.urandom(G))
        assert diffbackup("diff", url, "--scope", "1", "-o", str(tmp_path / "d.bk")).returncode == 0
        with SyncIscsiClient(url) as c:
            for b in (200, 12):
                c.write(8 * b, os.urandom(G))
        r = diffbackup("status", url, "--json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        doc.pop("volume_id")
        assert doc == EXPECT
        r = diffbackup("status", url, "--cells", "16")
        assert "\n|2···········2···|\n" in r.stdout
        sh = subprocess.run([sys.executable, "-m", "tools.shell", srv.url(1), "-c",
                             "counts --cells 16"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
        assert sh.returncode == 0, sh.stderr
        assert "|2···········2···|" in sh.stdout and "2 gen   2 █" in sh.stdout
