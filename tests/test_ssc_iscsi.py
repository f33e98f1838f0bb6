"""A tape LUN served by `scsi-target serve --tape IMAGE`, driven over iSCSI by our initiator.

Covers what only the transport path shows: CHECK CONDITION with Data-In
(filemark / incorrect length), residuals in the SCSI Response, sense
decoding at the initiator, and kill -9 of the server in the middle of a
stream of acknowledged writes.
"""
from __future__ import annotations

import os
import threading
import time

import pytest

from scsi_target.initiator.sync import SyncIscsiClient
from scsi_target.scsi.layouts import mode as LM, tape as LT
from scsi_target.scsi.layouts.sense import decode_sense
from scsi_target.testing.process import ServerProcess
from tape import TapeImage


@pytest.fixture
def served(tmp_path):
    img = tmp_path / "t.img"
    TapeImage.create(img, 64 << 20, barcode="ISCSI1").close()
    srv = ServerProcess.from_flags(tmp_path, "--tape", img).start()
    try:
        yield srv, img
    finally:
        srv.stop()


def _ok(c, cdb, **kw):
    r = c.execute(bytes(cdb), **kw)
    assert r.good, (r.status, r.sense and decode_sense(r.sense).summary())
    return r


def test_stream_write_read_position_over_iscsi(served):
    srv, img = served
    assert "LUN 0: tape" in "\n".join(srv.banner)
    recs = [os.urandom(256 << 10) for _ in range(6)]
    with SyncIscsiClient(srv.url()) as c:
        c.test_unit_ready()  # power-on unit attention
        assert _ok(c, [0x00] * 6).status == 0
        inq = _ok(c, [0x12, 0, 0, 0, 96, 0], read_length=96).data
        assert inq[0] == 0x01 and inq[1] & 0x80
        for r in recs[:3]:
            _ok(c, LT.write6(len(r)), data_out=r)
        _ok(c, [0x10, 0, 0, 0, 1, 0])
        # fixed mode, 64 KiB blocks, three per command
        _ok(c, [0x15, 0x10, 0, 0, 12, 0],
            data_out=bytes([0, 0, 0x10, 8, 0x80, 0, 0, 0, 0]) + (65536).to_bytes(3, "big"))
        blocks = b"".join(recs[3:])[:3 * 65536]
        _ok(c, LT.write6(3, fixed=True), data_out=blocks)
        _ok(c, [0x10, 0, 0, 0, 1, 0])
        pos = LT.ReadPositionLong.unpack(_ok(c, [0x34, 6, 0, 0, 0, 0, 0, 0, 32, 0],
                                             read_length=32).data)
        assert (pos.logical_object, pos.logical_file) == (8, 2)
        _ok(c, [0x01, 0, 0, 0, 0, 0])
        _ok(c, [0x15, 0x10, 0, 0, 12, 0], data_out=bytes([0, 0, 0x10, 8]) + bytes(8))
        for r in recs[:3]:
            assert bytes(_ok(c, LT.read6(len(r)), read_length=len(r)).data) == r
        # the filemark: CHECK CONDITION, FILEMARK, INFORMATION = requested length
        res = c.execute(LT.read6(1000), read_length=1000)
        s = decode_sense(res.sense)
        assert (res.status, s.key, s.asc, s.ascq, s.filemark, s.information) == \
            (2, 0, 0, 1, True, 1000)
        # an incorrect-length read: the record's first 1000 bytes come with the sense
        res = c.execute(LT.read6(1000), read_length=1000)
        s = decode_sense(res.sense)
        assert res.status == 2 and s.ili and s.information == (1000 - 65536) & 0xFFFFFFFF
        assert bytes(res.data) == blocks[:1000]
        # underlength with SILI: GOOD, residual in the response
        _ok(c, [0x2B, 0, 0, 0, 0, 0, 5, 0, 0, 0])
        res = _ok(c, LT.read6(100000, sili=True), read_length=100000)
        assert bytes(res.data) == blocks[65536:131072] and res.residual == 100000 - 65536
        _ok(c, [0x11, 3, 0, 0, 0, 0])
        res = c.execute(LT.read6(10), read_length=10)
        assert res.status == 2 and decode_sense(res.sense).key == 8  # BLANK CHECK
        mp = LM.ModeParameters.unpack(_ok(c, [0x1A, 0, 0x3F, 0, 255, 0], read_length=255).data,
                                      False, sequential=True)
        assert mp.block_descriptors[0].density_code == 0x80
        attrs = {a.id: a for a in LT.parse_attribute_values(
            _ok(c, LT.read_attribute(first=0x0806), read_length=4096).data)}
        assert attrs[0x0806].value.rstrip() == b"ISCSI1"
        _ok(c, [0x1B, 0, 0, 0, 0, 0])  # eject
        res = c.execute(bytes(6))
        assert res.status == 2 and decode_sense(res.sense).asc == 0x3A
        _ok(c, [0x1B, 0, 0, 0, 1, 0])


def test_kill_9_server_during_writes_keeps_acknowledged_records(tmp_path):
    img = tmp_path / "crash.img"
    TapeImage.create(img, 1 << 30).close()
    srv = ServerProcess.from_flags(tmp_path, "--tape", img).start()
    acked: list[int] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with SyncIscsiClient(srv.url(), timeout=10) as c:
                c.test_unit_ready()
                k = 0
                while True:
                    rec = k.to_bytes(4, "big") + os.urandom(60000 + k % 5000)
                    r = c.execute(LT.write6(len(rec)), data_out=rec)
                    if not r.good:
                        return
                    acked.append(len(rec))
                    k += 1
        except BaseException as e:  # the connection dies with the server
            errors.append(e)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 80 and time.monotonic() < deadline:
        time.sleep(0.05)
    srv.kill()
    t.join(30)
    assert len(acked) >= 80
    image = TapeImage.open(img)
    n = len(acked)
    assert image.count >= n
    for k in range(image.count):
        buf = memoryview(bytearray(image.length(k)))
        image.read_into(k, buf)
        assert int.from_bytes(buf[:4], "big") == k
        if k < n:
            assert len(buf) == acked[k]
    assert image.verify() == []
