"""Concatenated volumes from the config: one LUN over several backing files."""
from __future__ import annotations

import struct

import pytest

from scsi_target import config as C
from scsi_target.scsi.command import Command, Direction


def _cfg(tmp_path, parts_toml: str, track: str = "true") -> str:
    p = tmp_path / "c.toml"
    p.write_text(f"""
[[target]]
iqn = "iqn.2026-11.org.pyscsi.test:concat"
[[target.lun]]
lun = 0
path = "a.img"
size = "1M"
create = true
track = {track}
parts = {parts_toml}
""")
    return str(p)


def _rw(lu_map, lba, nblocks, data=None):
    if data is None:
        cdb = struct.pack(">BBIBHB", 0x28, 0, lba, 0, nblocks, 0)
        return lu_map.execute(Command(cdb=cdb, expected_length=512 * nblocks,
                                      direction=Direction.IN))
    cdb = struct.pack(">BBIBHB", 0x2A, 0, lba, 0, nblocks, 0)
    return lu_map.execute(Command(cdb=cdb, data_out=data, expected_length=len(data),
                                  direction=Direction.OUT))


def test_lun_spans_its_parts_and_writes_across_the_seam(tmp_path):
    cfg = C.load_file(_cfg(tmp_path, '[{ path = "b.img", size = "2M" }, '
                                     '{ path = "c.img", size = "512K" }]'))
    reg = C.build_registry(cfg)
    try:
        luns = reg.targets["iqn.2026-11.org.pyscsi.test:concat"].luns
        lu = luns.get(0)
        assert lu.num_blocks == (1 + 2 + 0.5) * 2048
        luns.execute(Command(cdb=bytes(6)))        # power-on unit attention
        seam = 2048 - 2                             # last two blocks of a.img, first of b.img
        payload = bytes(range(256)) * 2 * 4 + b"\x11" * 512 * 2
        assert _rw(luns, seam, 6, payload).ok
        assert bytes(_rw(luns, seam, 6).data_in) == payload
        assert "a.img + " in C.lun_summary(cfg.targets[0].luns[0])
    finally:
        reg.close()
    a = (tmp_path / "a.img").read_bytes()
    b = (tmp_path / "b.img").read_bytes()
    assert a[-1024:] == payload[:1024] and b[:2048] == payload[1024:]
    assert (tmp_path / "a.img.genmap").exists()    # the map lives beside the first file


@pytest.mark.parametrize("parts,message", [
    ("[]", "non-empty array"),
    ('[{ path = "a.img", size = "1M" }]', "already part of this volume"),
    ('[{ path = "b.img" }]', "no size is given"),
    ('[{ path = "b.img", size = "1000" }]', "not a multiple of the block size"),
    ('[{ path = "b.img", size = "1M", colour = "red" }]', "unknown key"),
])
def test_bad_parts_are_refused_with_a_precise_message(tmp_path, parts, message):
    with pytest.raises(C.ConfigError) as exc:
        C.load_file(_cfg(tmp_path, parts))
    assert message in str(exc.value) and "parts" in str(exc.value)
