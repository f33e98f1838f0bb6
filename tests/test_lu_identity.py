"""Device identity (unit serial VPD 80h, NAA designator VPD 83h) per volume (issue 12).

Two servers with one IQN and LUN number but different images must not report
one serial or NAA (udev by-id and multipath would merge them); the same image
must keep its identity across restarts; a config ``serial`` still wins.
Through the real server process and our initiator.
"""
from __future__ import annotations

import os
import shutil

import pytest

from scsi_target.testing.process import Lun, ServerProcess, Target
from scsi_target.identity import XATTR
from scsi_target.initiator.sync import SyncIscsiClient
from scsi_target.scsi.layouts import vpd as V

IQN = "iqn.2026-11.org.pyscsi:default"      # what every quick-start server calls itself


def identity(srv: ServerProcess, lun: int = 0) -> tuple[str, str]:
    """(serial, NAA hex) as an initiator reads them."""
    with SyncIscsiClient(srv.url(lun), timeout=10) as c:
        serial = V.parse_serial(V.VpdPage.unpack(c.inquiry(evpd=True, page=0x80, lun=lun)).body)
        ids = V.parse_device_id(V.VpdPage.unpack(c.inquiry(evpd=True, page=0x83, lun=lun)).body)
    naa = [d.value.hex() for d in ids if d.designator_type == 3 and d.association == 0]
    assert len(naa) == 1, ids
    return serial, naa[0]


def served(workdir, **options) -> ServerProcess:
    luns = [Lun(0, "2M", options=dict(options))]
    if options.get("track", True) and not options.get("read_only"):
        luns.append(Lun(1, options={"kind": "backup", "source": 0}))
    return ServerProcess(workdir, [Target(IQN, luns)])


@pytest.mark.parametrize("options", [{}, {"track": False}, {"read_only": True}],
                         ids=["tracked", "untracked", "read-only"])
def test_identity_unique_per_volume_and_stable_across_restarts(tmp_path, options):
    a, b = served(tmp_path / "a", **options), served(tmp_path / "b", **options)
    try:
        # Both servers run at once, as two hosts with the default IQN would.
        a.start(), b.start()
        ida, idb = identity(a), identity(b)
        assert ida[0] != idb[0] and ida[1] != idb[1], (ida, idb)
        assert len(ida[0]) == 16 and ida[1][0] == "5"    # NAA 5 (IEEE Registered)
        if "track" not in options and "read_only" not in options:
            dev_a, dev_b = identity(a, 1), identity(b, 1)
            assert len({dev_a, dev_b, ida, idb}) == 4     # backup devices too
        a.restart()
        assert identity(a) == ida
        if "track" not in options and "read_only" not in options:
            assert identity(a, 1) == dev_a
    finally:
        a.stop(), b.stop()


def test_explicit_serial_wins_and_copies_differ(tmp_path):
    a = served(tmp_path / "a", track=False)
    a.start()
    try:
        first = identity(a)
    finally:
        a.stop()
    img = next((tmp_path / "a").glob("*.img"))
    with open(img, "r+b") as f:
        f.write(os.urandom(1 << 20))
    # A plain copy (no xattrs) of the image is another volume.
    (tmp_path / "b").mkdir()
    shutil.copyfile(img, tmp_path / "b" / img.name)
    b = served(tmp_path / "b", track=False, read_only=True)
    b.start()
    try:
        assert identity(b)[0] != first[0] and identity(b)[1] != first[1]
    finally:
        b.stop()
    c = served(tmp_path / "a", track=False, serial="DISK-0042")
    c.start()
    try:
        serial, naa = identity(c)
        assert serial == "DISK-0042" and naa != first[1]
    finally:
        c.stop()


def test_identity_kept_when_tracking_is_switched_off(tmp_path):
    """A tracked volume served untracked later keeps the identity of its sidecar."""
    a = served(tmp_path / "a")
    a.start()
    try:
        tracked = identity(a)
    finally:
        a.stop()
    a.targets[0].luns = [Lun(0, "2M", options={"track": False})]
    a.start()
    try:
        assert identity(a) == tracked
    finally:
        a.stop()


def test_untracked_volume_id_lives_in_an_xattr(tmp_path):
    a = served(tmp_path / "a", track=False)
    a.start()
    try:
        first = identity(a)
    finally:
        a.stop()
    img = next((tmp_path / "a").glob("*.img"))
    vid = os.getxattr(img, XATTR)
    assert len(vid) == 16
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.name.startswith(img.name)) \
        == [img.name]                    # no new file beside the image
    os.removexattr(img, XATTR)            # the operator resets it: a new identity
    a.start()
    try:
        assert identity(a) != first
    finally:
        a.stop()


@pytest.mark.parametrize("bad", ["", "has space", "x" * 33, "caf\u00e9"])
def test_bad_serial_is_one_line(tmp_path, bad):
    from scsi_target import config as C
    with pytest.raises(C.ConfigError) as ei:
        C.parse_config({"target": [{"iqn": IQN, "lun": [
            {"lun": 0, "path": "d.img", "size": "1M", "create": True, "serial": bad}]}]},
            source="t.toml", base=tmp_path)
    assert str(ei.value) == (f"t.toml: target[0].lun[0].serial: {bad!r}: expected 1..32 "
                             "printable ASCII characters without spaces")
