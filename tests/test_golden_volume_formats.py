"""Golden vectors of the files beside a tracked volume (DESIGN invariant 5): the map file, its
write-intent journal (also as a crash left it, with a backup cut pending) and the identity
sidecar with a restore mark.  Files written by this release are read by every later one,
and this release writes exactly these bytes.  docs/genmap-format.md describes them.

Regenerate (only for a deliberate format change, with a version bump):
    PYSCSI_REGEN_GOLDEN=1 python -m pytest tests/test_golden_volume_formats.py
"""
from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
from bitarray import bitarray

from volume.genmap import GenerationMap, journal_path
from volume.tracked import (BackupState, RestoreMark, TrackingStore, read_sidecar)

GOLDEN = Path(__file__).parent / "golden"
VID = b"golden-volume-01"
BASE = bytes(range(16))
SIZE = (1 << 20) + 512              # 257 tracking blocks, the last one partial
G = 4096
REGEN = os.environ.get("PYSCSI_REGEN_GOLDEN") == "1"

# Journal bytes that are not the format's: the boot id (85..100) and the header CRC
# (124..127) that covers it, and the coarse intent bitmaps, set only on disk filesystems.
_BOOT = slice(85, 101)
_CRC = slice(124, 128)


def _build(d: Path, name: str, pending: bool) -> GenerationMap:
    m = GenerationMap.create(d / name, volume_size=SIZE, granularity=G, volume_id=VID,
                             sync=False)
    m.mark(0, 3 * G)
    m.begin_full()
    m.set_base_id(BASE)
    m.save()
    m.mark(5 * G, 2 * G)                 # generation 1
    m.mark(256 * G, 512)                 # the partial last block
    m.begin_differential(1)
    m.mark(9 * G, G)                     # generation 2
    m.begin_differential(2)
    m.mark(100 * G, 4 * G)               # generation 3, the live slot
    if pending:
        m.cut_differential(1)
        m.mark(200 * G, G)               # after the cut
    return m


def _expected(m: GenerationMap, pending: bool) -> None:
    assert m.current_generation == 3 and m.base_id == BASE and m.entries == 257
    assert [m.generation_of(b) for b in (0, 5, 6, 9, 100, 103, 256)] == [0, 1, 1, 2, 3, 3, 1]
    extra = 1 if pending else 0          # block 200, written after the cut: generation 3
    assert m.counts() == {0: 257 - 8 - extra, 1: 3, 2: 1, 3: 4 + extra}


def _crash(m: GenerationMap) -> None:
    m.sync_marks()
    m._release()                         # the process dies: no clean close
    m._closed = True


def _journal_without_noise(raw: bytes, entries: int) -> bytes:
    b = bytearray(raw)
    b[_BOOT] = bytes(16)
    b[_CRC] = bytes(4)
    page = 4096
    slot = -(-(-(-entries // 8)) // page) * page
    return bytes(b[:page + 2 * slot])    # header page and the two fine slots


@pytest.mark.parametrize("pending", [False, True], ids=["closed", "crashed-with-pending-cut"])
def test_map_and_journal_golden(tmp_path, pending):
    name = "genmap_pending_v1" if pending else "genmap_v1"
    m = _build(tmp_path, name, pending)
    if pending:
        _crash(m)
    else:
        m.close()
    made_map = (tmp_path / name).read_bytes()
    made_jrn = Path(journal_path(tmp_path / name)).read_bytes()
    if REGEN:
        (GOLDEN / f"{name}.map").write_bytes(made_map)
        (GOLDEN / f"{name}.map.dirty").write_bytes(made_jrn)
    gold_map = (GOLDEN / f"{name}.map").read_bytes()
    gold_jrn = (GOLDEN / f"{name}.map.dirty").read_bytes()
    # This release writes exactly the golden bytes ...
    assert made_map == gold_map
    assert _journal_without_noise(made_jrn, 257) == _journal_without_noise(gold_jrn, 257)
    # ... and reads the golden files (a copy: opening takes the journal over).
    shutil.copy(GOLDEN / f"{name}.map", tmp_path / "copy.map")
    shutil.copy(GOLDEN / f"{name}.map.dirty", journal_path(tmp_path / "copy.map"))
    m = GenerationMap.open(tmp_path / "copy.map", volume_size=SIZE, volume_id=VID)
    try:
        assert m.recovered == pending
        _expected(m, pending)
    finally:
        m.close()
    hdr = gold_map[:256]
    assert hdr[:8] == b"\x89GENMAP\n" and struct.unpack_from("<HH", hdr, 8) == (1, 256)
    assert struct.unpack_from("<I", hdr, 40)[0] == 3 and hdr[56:72] == BASE
    jh = gold_jrn[:128]
    assert jh[:8] == b"\x89GMJRNL\n" and struct.unpack_from("<HH", jh, 8) == (2, 128)
    seqs = struct.unpack_from("<QQ", jh, 36)
    assert seqs == ((5, 4) if pending else (3, 4))   # live slot tagged with the map's seq 4


def _sidecar_state() -> BackupState:
    unrec = bitarray(257, endian="little")
    unrec.setall(0)
    unrec[10:20] = 1
    unrec[256] = 1
    return BackupState(full_done=False, restore=RestoreMark(
        {"id": "00112233445566778899aabbccddeeff", "full": False, "lo": 2, "hi": 3,
         "start_generation": 2}, unrec))


def _inflated(raw: bytes) -> bytes:
    import base64
    import zlib
    doc = json.loads(raw)
    bm = doc["backup"]["restore"]["unrecovered"]
    bm["zlib_base64"] = zlib.decompress(base64.b64decode(bm["zlib_base64"])).hex()
    return raw.split(b'"zlib_base64"')[0] + json.dumps(doc, sort_keys=True).encode()


def test_sidecar_golden(tmp_path):
    doc = TrackingStore._sidecar_doc(VID, SIZE, G, _sidecar_state())
    made = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
    if REGEN:
        (GOLDEN / "volume_sidecar_v1.json").write_bytes(made)
    gold = (GOLDEN / "volume_sidecar_v1.json").read_bytes()
    # Byte for byte, but for the deflate stream (zlib builds may compress differently).
    assert _inflated(made) == _inflated(gold)
    doc = read_sidecar(str(GOLDEN / "volume_sidecar_v1.json"))
    assert doc["format"] == "pyscsi-volume" and doc["version"] == 1
    mark = RestoreMark.from_doc(doc["backup"]["restore"], 257, "golden")
    assert mark.incomplete and mark.unrecovered_blocks == 11
    assert mark.stream == _sidecar_state().restore.stream
    assert list(mark.unrecovered.search(1)) == list(range(10, 20)) + [256]


def test_a_tracked_volume_opens_with_the_golden_sidecar_and_reports_it(tmp_path):
    from volume.filestore import FileStore
    path = tmp_path / "v.img"
    fs = FileStore(path, size=SIZE, create=True)
    vol = TrackingStore.open(fs, path, volume_id=VID)
    vol.close()
    doc = json.loads((GOLDEN / "volume_sidecar_v1.json").read_text())
    doc["volume_id"] = VID.hex()
    (tmp_path / "v.img.volume").write_text(json.dumps(doc))
    vol = TrackingStore.open(FileStore(path), path)
    try:
        assert vol.state.restore.incomplete and vol.state.restore.unrecovered_blocks == 11
        from volume.session import VolumeIncomplete
        with pytest.raises(VolumeIncomplete):
            vol.sessions.start_backup(full=False, scope=1)
    finally:
        vol.close()


@pytest.mark.parametrize("restore,match", [
    ({"stream": {"id": "x"}, "unrecovered": None}, "malformed restore record"),
    ({"stream": None, "unrecovered": {"blocks": 3, "count": 0, "zlib_base64": ""}},
     "unrecovered bitmap of 3 blocks"),
    ({"stream": None, "unrecovered": {"blocks": 257, "count": 99,
                                      "zlib_base64": "eJxj+MPPgA8wAgAhcwEN"}}, "count mismatch"),
    ({"stream": None, "unrecovered": {"blocks": 257, "count": 1, "zlib_base64": "!!"}},
     "malformed restore record"),
])
def test_a_malformed_restore_mark_is_refused_with_the_reason(tmp_path, restore, match):
    from volume.filestore import FileStore
    from volume.tracked import TrackingError
    path = tmp_path / "v.img"
    TrackingStore.open(FileStore(path, size=SIZE, create=True), path, volume_id=VID).close()
    doc = json.loads((tmp_path / "v.img.volume").read_text())
    doc["backup"]["restore"] = restore
    (tmp_path / "v.img.volume").write_text(json.dumps(doc))
    fs = FileStore(path)
    try:
        with pytest.raises(TrackingError, match=match):
            TrackingStore.open(fs, path)
    finally:
        fs.close()
