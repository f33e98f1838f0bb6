"""AUDIT TRACKER (C7h) on the backup pseudo device: in process through
LunMap-level execute, and `diffbackup audit iscsi://...` against a running target."""
from __future__ import annotations

import os
import random

from scsi_target.initiator.sync import SyncIscsiClient
from scsi_target.scsi.layouts import backup as L
from scsi_target.scsi.sense import SenseKey, parse_sense

from scsi_target.testing.process import ServerProcess
from test_backup_device import Rig, _illegal

BS = 512
GRAN = 4096


def _audit(rig, **kw) -> L.AuditReportData:
    r = rig.vendor(L.OP_AUDIT_TRACKER, length=4096, **kw)
    assert r.ok, parse_sense(r.sense)
    return L.AuditReportData.unpack(bytes(r.data_in))


def _poke(path, blocks, seed=1) -> None:
    rnd = random.Random(seed)
    fd = os.open(path, os.O_WRONLY)
    try:
        for b in blocks:
            os.pwrite(fd, rnd.randbytes(64), b * GRAN + 1000)
    finally:
        os.close(fd)


def test_audit_tracker_in_process(tmp_path):
    rig = Rig(tmp_path)
    try:
        rnd = random.Random(3)
        for _ in range(30):
            rig.write(rnd.randrange(8000), rnd.randbytes(BS * 4))
        # nothing to compare before a full backup: COMMAND SEQUENCE ERROR
        r = rig.vendor(L.OP_AUDIT_TRACKER, length=4096)
        _illegal(r, asc=0x2C)
        # FULL and a rate together, unknown flags: INVALID FIELD IN CDB
        _illegal(rig.vendor(L.OP_AUDIT_TRACKER, flags=L.FLAG_FULL, scope=8, length=64),
                 field=2)
        _illegal(rig.vendor(L.OP_AUDIT_TRACKER, flags=0x02, length=64), field=1, bit=1)
        rig.read_stream()                          # a full backup, as dd takes it
        rep = _audit(rig, flags=L.FLAG_FULL)
        h = rep.header
        assert not h.mismatch and h.full and h.rate == 1
        assert h.candidates == h.checked == (4 << 20) // GRAN and not rep.mismatched
        rep = _audit(rig, scope=16)
        assert rep.header.rate == 16 and rep.header.checked == 1024 // 16 and \
            not rep.header.mismatch
        # behind the tracker's back, then a sampled audit that escalates
        ph = rep.header.phase
        b = (ph + 300) % 900 + 10                  # never next to the sampled block
        _poke(f"{tmp_path}/a.img", [ph, b, b + 1])
        rep = _audit(rig, scope=16)
        h = rep.header
        assert h.mismatch and h.escalated and h.checked == h.candidates
        assert [(e.first_block, e.nblocks) for e in rep.mismatched] == sorted([(ph, 1), (b, 2)])
        assert h.mismatched_blocks == h.remarked_blocks == 3
        g = L.GenerationsReport.unpack(bytes(rig.vendor(L.OP_REPORT_GENERATIONS,
                                                        length=1 << 16).data_in))
        assert g.counts[g.header.current_generation] == 3
        # re-marked blocks are in the open generation: the audit no longer flags them
        assert not _audit(rig, flags=L.FLAG_FULL).header.mismatch
        # a too-short allocation length gets the header's first bytes, no error
        r = rig.vendor(L.OP_AUDIT_TRACKER, length=8)
        assert r.ok and len(r.data_in) == 8
    finally:
        rig.close()


def test_rsoc_lists_audit(tmp_path):
    rig = Rig(tmp_path)
    try:
        cdb = bytes([0xA3, 0x0C, 0, 0, 0, 0]) + (65536).to_bytes(4, "big") + bytes(2)
        data = bytes(rig.run(rig.dev, cdb).data_in)
        n = int.from_bytes(data[0:4], "big")
        assert 0xC7 in {data[off] for off in range(4, 4 + n, 8)}
    finally:
        rig.close()


def test_diffbackup_audit_over_iscsi(diffbackup, tmp_path):
    vol = tmp_path / "vol.img"
    with ServerProcess.from_flags(tmp_path, "--disk", f"{vol}:8M", "--backup-device") as srv:
        url = srv.url(0)
        rnd = random.Random(5)
        with SyncIscsiClient(url) as c:
            for _ in range(40):
                c.write(rnd.randrange(16000), rnd.randbytes(BS * rnd.randint(1, 16)))
        r = diffbackup("audit", url)
        assert r.returncode == 1 and "cannot audit" in r.stderr and \
            len(r.stderr.splitlines()) == 1, r.stderr
        assert diffbackup("full", url, "-o", str(tmp_path / "f.bk")).returncode == 0
        with SyncIscsiClient(url) as c:
            for _ in range(40):
                c.write(rnd.randrange(16000), rnd.randbytes(BS * rnd.randint(1, 16)))
        assert diffbackup("diff", url, "--scope", "1", "-o", str(tmp_path / "d1.bk")).returncode == 0
        r = diffbackup("audit", url, "--full")
        assert r.returncode == 0 and "audit ok" in r.stdout, r.stdout + r.stderr
        _poke(vol, [1900, 1901, 2000])              # 8 MiB: 2048 blocks; unchanged ones
        r = diffbackup("audit", url, "--full")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "AUDIT FAILED: 3 blocks changed without the tracker seeing it (blocks 1900..1901, " \
            "2000..2000)" in r.stdout
        r = diffbackup("diff", url, "--scope", "1", "-o", str(tmp_path / "d2.bk"))
        assert r.returncode == 0 and "3 blocks" in r.stdout, r.stdout
        with SyncIscsiClient(url) as c:
            image = b"".join(bytes(c.read(lba, 2048)) for lba in range(0, (8 << 20) // BS, 2048))
    dest = tmp_path / "restored.img"
    r = diffbackup("restore", str(dest), *(str(tmp_path / f) for f in ("f.bk", "d1.bk", "d2.bk")))
    assert r.returncode == 0, r.stdout
    assert dest.read_bytes() == image
