"""`scsi-target tape new|info|check`, `--tape IMAGE` and `kind = "tape"` in the TOML config."""
from __future__ import annotations

import json
import os

import pytest

from scsi_target import cli
from scsi_target import config as C
from scsi_target.scsi.tape_lu import TapeLU
from tape import TapeDrive, TapeImage
from tape import format as F


def _run(capsys, *argv):
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_new_info_check(tmp_path, capsys):
    img = str(tmp_path / "a.img")
    rc, out, err = _run(capsys, "tape", "new", img, "--capacity", "8M", "--barcode", "VOL007",
                        "--label", "weekly full")
    assert rc == 0 and "8 MiB native capacity" in out and "VOL007" in out
    d = TapeDrive(TapeImage.open(img))
    d.write_records([memoryview(os.urandom(3000)) for _ in range(4)])
    d.write_filemarks(1)
    d.write_records([memoryview(os.urandom(100))])
    d.remove()
    rc, out, _ = _run(capsys, "tape", "info", img)
    assert rc == 0 and "VOL007" in out and "5 records" in out and "1 filemarks" in out
    assert "weekly full" in out and "BARCODE" in out
    rc, out, _ = _run(capsys, "tape", "info", img, "--json")
    info = json.loads(out)
    assert info["records"] == 5 and info["files"] == 2 and info["barcode"] == "VOL007"
    assert [f["records"] for f in info["file_list"]] == [4, 1]
    rc, out, _ = _run(capsys, "tape", "check", img)
    assert rc == 0 and "OK" in out


def test_check_reports_damage_with_exit_3(tmp_path, capsys):
    img = tmp_path / "d.img"
    t = TapeImage.create(img, 1 << 20)
    t.append_records(0, [memoryview(os.urandom(500)) for _ in range(3)])
    t.close()
    with open(img, "r+b") as f:
        f.seek(F.DATA_START + (F.FRAME_SIZE + 500) + F.FRAME_SIZE + 7)
        f.write(b"\x55\xaa")
    rc, out, _ = _run(capsys, "tape", "check", str(img))
    assert rc == 3 and "object 1: CRC32C mismatch" in out and "1 damaged record" in out


def test_check_reports_a_torn_tail(tmp_path, capsys):
    img = tmp_path / "t.img"
    TapeImage.create(img, 1 << 20).close()
    with open(img, "ab") as f:
        f.write(b"TOBJ\x01")
    rc, out, _ = _run(capsys, "tape", "check", str(img))
    assert rc == 0 and "5 bytes after object 0 are an interrupted write" in out


@pytest.mark.parametrize("argv,msg", [
    (["tape", "new", "{d}/x.img", "--capacity", "4Q"], "--capacity: cannot read '4Q'"),
    (["tape", "new", "{d}/x.img", "--capacity", "1K"], "below the 64 KiB minimum"),
    (["tape", "new", "{d}/x.img", "--capacity", "1M", "--early-warning", "2M"],
     "early-warning zone"),
    (["tape", "info", "{d}/missing.img"], "cannot open"),
    (["tape", "check", "{d}/junk.img"], "shorter than the 512-byte superblock"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, msg):
    (tmp_path / "junk.img").write_bytes(b"junk")
    rc, out, err = _run(capsys, *[a.format(d=tmp_path) for a in argv])
    assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1


def test_new_refuses_to_overwrite_without_force(tmp_path, capsys):
    img = str(tmp_path / "a.img")
    assert _run(capsys, "tape", "new", img)[0] == 0
    rc, _, err = _run(capsys, "tape", "new", img)
    assert rc == 2 and "already exists" in err
    assert _run(capsys, "tape", "new", img, "--force", "--no-crc")[0] == 0
    assert not TapeImage.open(img).crc_records


# ------------------------------------------------------------------ config
def test_tape_flag_builds_a_tape_lun_after_the_disks(tmp_path):
    img = tmp_path / "t.img"
    TapeImage.create(img, 1 << 20).close()
    cfg = C.from_flags(tapes=[str(img)])
    (spec,) = cfg.targets[0].luns
    assert spec.kind == "tape" and spec.lun == 0
    cfg = C.from_flags(disks=[f"{tmp_path / 'd.img'}:1M"], tapes=[str(img)])
    kinds = [(s.lun, s.kind) for s in cfg.targets[0].luns]
    assert kinds == [(0, "disk"), (1, "tape")]
    reg = C.build_registry(cfg)
    try:
        lu = reg.get(cfg.targets[0].iqn).luns.get(1)
        assert isinstance(lu, TapeLU) and lu.drive.ready
    finally:
        reg.close()


def test_tape_flag_errors(tmp_path):
    with pytest.raises(C.ConfigError, match="does not exist .create it with `scsi-target tape new`"):
        C.from_flags(tapes=[str(tmp_path / "none.img")])
    img = tmp_path / "t.img"
    TapeImage.create(img, 1 << 20).close()
    with pytest.raises(C.ConfigError, match="already used by LUN 0"):
        C.from_flags(tapes=[str(img), str(img)])
    (tmp_path / "bad.img").write_bytes(b"x" * 600)
    with pytest.raises(C.ConfigError, match="bad magic"):
        C.build_registry(C.from_flags(tapes=[str(tmp_path / "bad.img")]))


TOML = """
[[target]]
iqn = "iqn.2026-11.org.x:tapes"
[[target.lun]]
lun = 0
kind = "tape"
path = "{path}"
{extra}
"""


def test_toml_tape_lun_created_and_served(tmp_path):
    cfg = C.parse_config(__import__("tomllib").loads(TOML.format(
        path=tmp_path / "new.img", extra="create = true\nsize = '2M'")), base=tmp_path)
    spec = cfg.targets[0].luns[0]
    assert spec.kind == "tape" and spec.size == 2 << 20
    assert "tape" in C.lun_summary(spec) and "new 2 MiB image" in C.lun_summary(spec)
    reg = C.build_registry(cfg)
    reg.close()
    assert TapeImage.open(tmp_path / "new.img").capacity == 2 << 20


@pytest.mark.parametrize("extra,key,msg", [
    ("", "path", "does not exist"),
    ("create = true", "size", "no size (capacity)"),
    ("block_size = 512", "block_size", "not allowed for kind = \"tape\""),
    ("track = true", "track", "not allowed for kind = \"tape\""),
])
def test_toml_tape_errors(tmp_path, extra, key, msg):
    data = __import__("tomllib").loads(TOML.format(path=tmp_path / "x.img", extra=extra))
    with pytest.raises(C.ConfigError) as e:
        C.parse_config(data, base=tmp_path)
    assert f"target[0].lun[0].{key}" in str(e.value) and msg in str(e.value)


def test_toml_read_only_tape_is_write_protected(tmp_path):
    TapeImage.create(tmp_path / "ro.img", 1 << 20).close()
    cfg = C.parse_config(__import__("tomllib").loads(TOML.format(
        path=tmp_path / "ro.img", extra="read_only = true")), base=tmp_path)
    reg = C.build_registry(cfg)
    try:
        lu = reg.get(cfg.targets[0].iqn).luns.get(0)
        assert lu.write_protected
    finally:
        reg.close()


def test_two_tape_images_behind_one_iqn_and_lun_have_different_identities(tmp_path):
    """Serial and NAA come from each cartridge's uuid, not from the IQN/LUN."""
    from scsi_target.config import LunSpec, build_lu
    from tape import TapeImage

    idents = []
    for name in ("a.tape", "b.tape", "a.tape"):
        path = tmp_path / name
        if not path.exists():
            TapeImage.create(path, 64 << 20).close()
        lu = build_lu(LunSpec(lun=0, path=path, kind="tape", track=False, where=name),
                      "iqn.2026-12.test:same")
        idents.append((lu.identity.serial, lu.identity.naa))
        lu.close()
    assert idents[0] != idents[1]
    assert idents[0] == idents[2]      # the same cartridge again: the same device
