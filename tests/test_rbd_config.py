"""RBD LUNs in the TOML file and on the command line: parsing and one-line errors
(no cluster needed: nothing here connects)."""
from __future__ import annotations

import pytest

from scsi_target import cli
from scsi_target import config as C


def _load(tmp_path, lun_body: str):
    (tmp_path / "ceph.conf").write_text("[global]\n")
    f = tmp_path / "site.toml"
    f.write_text('[[target]]\niqn = "iqn.2026-12.test:rbd"\n[[target.lun]]\nlun = 0\n'
                 + lun_body + "\n")
    return C.load_file(f)


def test_rbd_table_becomes_the_spec(tmp_path):
    (tmp_path / "kr").write_text("")
    cfg = _load(tmp_path, 'rbd = { pool = "rbd", image = "vol0", conf = "ceph.conf", '
                          'client_id = "iscsi", keyring = "kr", op_timeout = 10, '
                          'mount_timeout = 7.5 }\nblock_size = 4096\nserial = "VOL0"')
    spec = cfg.targets[0].luns[0]
    r = spec.rbd
    assert (r.pool, r.image, r.client_id, r.op_timeout, r.mount_timeout) == \
        ("rbd", "vol0", "iscsi", 10.0, 7.5)
    assert r.conf == str(tmp_path / "ceph.conf") and r.keyring == str(tmp_path / "kr")
    assert (spec.track, spec.block_size, spec.serial, spec.backing) == \
        (True, 4096, "VOL0", "rbd:rbd/vol0")
    assert (spec.track_map, spec.track_map_path, spec.track_map_lock) == ("rados", None, None)
    assert C.lun_summary(spec) == (f"LUN 0: disk rbd:rbd/vol0 (client.iscsi, {tmp_path}/ceph.conf),"
                                   " 4096-byte blocks, read-write, exclusive lock, tracking on "
                                   "(map in RADOS: rbd/rbd_map.vol0.genmap.*)")


def test_rbd_tracking_options(tmp_path):
    """Where an RBD volume's map lives (docs/rados-maps.md): RADOS by default, files on
    request; tracking off like a file LUN."""
    spec = _load(tmp_path, 'rbd = { pool = "p", image = "i" }\ntrack_map_lock = 5\n'
                           'track_granularity = "64K"\ncow_size = "8M"').targets[0].luns[0]
    assert (spec.track_map_lock, spec.track_granularity, spec.cow_size) == (5.0, 65536, 8 << 20)
    spec = _load(tmp_path, 'rbd = { pool = "p", image = "i" }\ntrack_map = "file"\n'
                           'track_map_path = "maps/vol"').targets[0].luns[0]
    assert (spec.track_map, spec.track_map_path) == ("file", tmp_path / "maps/vol")
    assert C.lun_summary(spec).endswith(f"tracking on (map in {tmp_path}/maps/vol.genmap)")
    spec = _load(tmp_path, 'rbd = { pool = "p", image = "i" }\ntrack = false').targets[0].luns[0]
    assert not spec.track and C.lun_summary(spec).endswith("tracking off")


def test_rbd_subtable_form_and_defaults(tmp_path):
    cfg = _load(tmp_path, '[target.lun.rbd]\npool = "p"\nimage = "i"')
    r = cfg.targets[0].luns[0].rbd
    assert (r.conf, r.client_id, r.keyring, r.op_timeout) == (None, "admin", None, 30.0)


@pytest.mark.parametrize("body, message", [
    ('rbd = { pool = "p" }', r"target\[0\]\.lun\[0\]\.rbd\.image: missing \(required\)"),
    ('rbd = { pool = "p", image = "i", colour = 1 }', r"rbd\.colour: unknown key"),
    ('rbd = { pool = "p", image = "a/b" }', r"rbd: 'p/a/b': the image name may contain neither"),
    ('rbd = { pool = "p", image = "i", conf = "nope.conf" }',
     r"rbd\.conf: .*nope\.conf does not exist or is not a file"),
    ('rbd = { pool = "p", image = "i", client_id = "client.admin" }',
     r"rbd\.client_id: 'client\.admin': expected the id alone"),
    ('rbd = { pool = "p", image = "i", op_timeout = 0 }', r"rbd\.op_timeout: 0: expected seconds"),
    ('rbd = { pool = "p", image = "i", op_timeout = true }', r"rbd\.op_timeout: True"),
    ('rbd = { pool = "p", image = "i" }\npath = "x.img"',
     r"lun\[0\]\.path: an RBD-backed LUN has no backing file"),
    ('rbd = { pool = "p", image = "i" }\ntrack = false\ncow_size = "1M"',
     r"lun\[0\]\.cow_size: only for tracked disks"),
    ('rbd = { pool = "p", image = "i" }\ntrack_map = "s3"',
     r"lun\[0\]\.track_map: 's3': expected \"rados\""),
    ('rbd = { pool = "p", image = "i" }\ntrack_map = "file"',
     r"lun\[0\]\.track_map: \"file\" needs track_map_path"),
    ('rbd = { pool = "p", image = "i" }\ntrack_map_path = "x"',
     r"lun\[0\]\.track_map_path: only with track_map = \"file\""),
    ('rbd = { pool = "p", image = "i" }\ntrack_map_lock = 1',
     r"lun\[0\]\.track_map_lock: 1: expected seconds, 2 to 3600"),
    ('rbd = { pool = "p", image = "i" }\nread_only = true\ntrack_map_lock = 9',
     r"lun\[0\]\.track_map_lock: only for tracked disks"),
    ('path = "x.img"\nsize = "1M"\ncreate = true\ntrack_map = "rados"',
     r"lun\[0\]\.track_map: only for RBD-backed LUNs"),
    ('rbd = { pool = "p", image = "i" }\nsize = "1G"',
     r"lun\[0\]\.size: the capacity comes from the image"),
    ('rbd = { pool = "p", image = "i" }\ncreate = true', r"lun\[0\]\.create: needs a size"),
    ('rbd = { pool = "p", image = "i" }\ncreate = true\nsize = "1000"',
     r"lun\[0\]\.size: 1000 bytes is not a multiple of the block size 512"),
    ('rbd = { pool = "p", image = "i" }\nkind = "tape"',
     r'lun\[0\]\.rbd: not allowed for kind = "tape"'),
    ('rbd = { pool = "p", image = "i" }\nblock_size = 1000', r"block_size: 1000 is not supported"),
    ('rbd = "p/i"', r"lun\[0\]\.rbd: expected a table"),
    ('rbd = { pool = "p", image = "i", take_over = "yes" }', r"rbd\.take_over: "),
])
def test_bad_rbd_luns_get_one_line(tmp_path, body, message):
    with pytest.raises(C.ConfigError, match=message) as e:
        _load(tmp_path, body)
    assert "\n" not in str(e.value)


def test_one_image_backs_one_lun(tmp_path):
    (tmp_path / "site.toml").write_text(
        '[[target]]\niqn = "iqn.2026-12.test:rbd"\n'
        '[[target.lun]]\nlun = 0\nrbd = { pool = "p", image = "i" }\n'
        '[[target.lun]]\nlun = 1\nrbd = { pool = "p", image = "i" }\n')
    with pytest.raises(C.ConfigError, match=r"lun\[1\]\.rbd: rbd:p/i is already used by "
                                            r"target\[0\]\.lun\[0\]"):
        C.load_file(tmp_path / "site.toml")


def test_quick_flag_rbd_disks(tmp_path):
    conf = tmp_path / "ceph.conf"
    conf.write_text("")
    cfg = C.from_flags(disks=["rbd:rbd/a", "rbd:rbd/b:1G", str(tmp_path / "f.img:1M")],
                       ceph_conf=str(conf), ceph_id="iscsi")
    a, b, f = cfg.targets[0].luns
    assert (a.rbd.name, a.size, a.create, a.track, a.rbd.conf, a.rbd.client_id) == \
        ("rbd:rbd/a", None, False, True, str(conf), "iscsi")
    assert (b.rbd.name, b.size, b.create) == ("rbd:rbd/b", 1 << 30, True)
    assert f.rbd is None and f.track


@pytest.mark.parametrize("kw, message", [
    (dict(disks=["rbd:pool"]), r"--disk rbd:pool: 'pool' is not POOL/IMAGE"),
    (dict(disks=["rbd:p/i:12Q"]), r"--disk rbd:p/i:12Q: "),
    (dict(disks=["rbd:p/i:1000"]), r"1000 bytes is not a multiple of the block size 512"),
    (dict(disks=["rbd:p/i", "rbd:p/i"]), r"--disk rbd:p/i: already used by LUN 0"),
    (dict(disks=["x.img:1M"], ceph_conf="/etc/ceph/ceph.conf"),
     r"--ceph-conf applies to RBD disks only"),
    (dict(disks=["rbd:p/i"], ceph_conf="/nonexistent/ceph.conf"),
     r"--ceph-conf /nonexistent/ceph.conf: does not exist"),
    (dict(disks=["rbd:p/i"], ceph_id="client.x"), r"--ceph-id 'client.x': expected the id alone"),
    (dict(disks=["x.img:1M"], rbd_take_over=True), r"--rbd-take-over applies to RBD disks only"),
    (dict(disks=["rbd:p/i"], backup_device=True, track=False),
     r"--backup-device needs tracking \(drop --no-track\)"),
])
def test_bad_quick_flags_get_one_line(kw, message):
    with pytest.raises(C.ConfigError, match=message):
        C.from_flags(**kw)


def test_serve_refuses_ceph_flags_with_a_config(tmp_path, capsys):
    (tmp_path / "s.toml").write_text("")
    assert cli.main(["serve", "--config", str(tmp_path / "s.toml"), "--ceph-id", "x"]) == 2
    assert "--config cannot be combined with --ceph-id" in capsys.readouterr().err


def test_check_describes_an_rbd_lun(tmp_path, capsys):
    _load(tmp_path, 'rbd = { pool = "p", image = "i" }')
    assert cli.main(["check", str(tmp_path / "site.toml")]) == 0
    out = capsys.readouterr().out
    assert "LUN 0: disk rbd:p/i (client.admin, default ceph.conf), 512-byte blocks, " \
           "read-write, exclusive lock, tracking on (map in RADOS: p/rbd_map.i.genmap.*)" in out


def test_quick_flags_track_rbd_disks_like_files():
    cfg = C.from_flags(disks=["rbd:p/i"], backup_device=True)
    disk, backup = cfg.targets[0].luns
    assert disk.track and disk.track_map == "rados"
    assert (backup.kind, backup.source) == ("backup", 0)
    assert not C.from_flags(disks=["rbd:p/i"], track=False).targets[0].luns[0].track


def test_docs_rbd_example_parses(tmp_path):
    """The RBD example of docs/config.md is a valid config (paths pointed at files here)."""
    from pathlib import Path
    doc = (Path(__file__).resolve().parent.parent / "docs/config.md").read_text()
    section = doc.split("### RBD-backed disks", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    for name in ("ceph.conf", "ceph.client.iscsi.keyring"):
        (tmp_path / name).write_text("")
        example = example.replace(f"/etc/ceph/{name}", str(tmp_path / name))
    (tmp_path / "site.toml").write_text('[[target]]\niqn = "iqn.2026-12.test:doc"\n' + example)
    luns = C.load_file(tmp_path / "site.toml").targets[0].luns
    assert [s.rbd.name for s in luns] == ["rbd:rbd/db0", "rbd:rbd/scratch"]
    assert (luns[0].rbd.client_id, luns[0].block_size) == ("iscsi", 4096)
    assert (luns[1].size, luns[1].create, luns[1].rbd.op_timeout) == (64 << 30, True, 10.0)


def test_take_over_from_the_table_and_the_flag(tmp_path):
    """take_over: break another holder's locks instead of refusing (docs/rbd.md)."""
    spec = _load(tmp_path, 'rbd = { pool = "p", image = "i", take_over = true }').targets[0].luns[0]
    assert spec.rbd.take_over
    assert not _load(tmp_path, 'rbd = { pool = "p", image = "i" }').targets[0].luns[0].rbd.take_over
    a, f = C.from_flags(disks=["rbd:p/i", str(tmp_path / "f.img:1M")],
                        rbd_take_over=True).targets[0].luns
    assert a.rbd.take_over and f.rbd is None
