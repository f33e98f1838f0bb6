"""Target-side backup (the patent's embodiment 2): `diffbackup ... --tape URL --target-side`
has the target copy the backup device's stream to its own tape LUN with EXTENDED COPY
(block-to-stream segments, type 00h); the tape then holds the same stream a client-side
backup produces, and restores byte-exact."""
from __future__ import annotations

import io
import random

import pytest

from scsi_target.initiator.sync import SyncIscsiClient
from tape import TapeImage
from tape import backupset as BS

from scsi_target.testing.process import ServerProcess
from scsi_target.testing.seed import random_file


def _ok(r):
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _stream(cart: str, n: int) -> bytes:
    d = BS.LocalTape(cart)
    try:
        sink = io.BytesIO()
        BS.read_backup(d, n, sink, lambda *_: (_ for _ in ()).throw(BS.NoMoreCartridges("x")))
        return sink.getvalue()
    finally:
        d.close()


@pytest.mark.timeout(300)
def test_target_side_full_and_differential_match_client_side(diffbackup, tmp_path):
    random_file(tmp_path / "vol.img", 8 << 20, density=0.4, seed=21)
    cart = str(tmp_path / "t.img")
    TapeImage.create(cart, 128 << 20).close()
    rnd = random.Random(21)
    with ServerProcess.from_flags(tmp_path, "--disk", str(tmp_path / "vol.img"), "--backup-device",
                                  "--tape", cart) as srv:
        tape = srv.url(2)
        # The client-side stream first, then the target's copy of the same state.
        _ok(diffbackup("full", srv.url(0), "-o", str(tmp_path / "full.stream")))
        r = _ok(diffbackup("full", srv.url(0), "--tape", tape, "--target-side"))
        assert "file 0 (copied by the target)" in r.stdout
        with SyncIscsiClient(srv.url(0)) as c:
            for _ in range(20):
                c.write(rnd.randrange(16000), rnd.randbytes(512 * rnd.randint(1, 40)))
            final = b"".join(bytes(c.read(lba, 2048)) for lba in range(0, 16384, 2048))
        r = _ok(diffbackup("diff", srv.url(0), "--scope", "1", "--tape", tape, "--target-side",
                           "--record-size", "64K"))
        assert "differential (scope 1)" in r.stdout and "file 1" in r.stdout
        cat = _ok(diffbackup("catalog", tape, "--verify"))
        assert cat.stdout.count("│ ok ") == 2, cat.stdout
    full = (tmp_path / "full.stream").read_bytes()
    assert len(full) % 512                      # the last partial block is exercised
    # The same stream a client-side backup of the same state produces: the same length,
    # header and records at the same offsets with the same data.  Not byte for byte: a
    # stream carries its own identity (creation time, stream id, and record checksums
    # seeded by it), which differs between any two backups.
    from dataclasses import replace
    from volume.stream import Record, StreamDecoder
    ours = _stream(cart, 0)
    assert len(ours) == len(full)

    def decoded(raw: bytes):
        dec = StreamDecoder()
        recs = [(r.first_block, r.nblocks, r.generation, r.kind, r.offset, r.length,
                 None if r.data is None else bytes(r.data))
                for r in dec.feed(raw) if isinstance(r, Record)]
        end = dec.finish()
        assert end.complete, end
        return replace(dec.header, created_ns=0, stream_id=b"", base_id=b""), recs
    a, b = decoded(ours), decoded(full)
    assert a[0] == b[0] and len(a[1]) == len(b[1]) > 0 and a[1] == b[1]
    dest = tmp_path / "restored.img"
    _ok(diffbackup("restore", str(dest), "--tape", cart, "--file", "0", "--file", "1"))
    assert dest.read_bytes() == final


def test_target_side_usage_errors(diffbackup, tmp_path):
    img = str(tmp_path / "l.img")
    TapeImage.create(img, 1 << 20).close()
    for args, text in (
            (("full", "iscsi://127.0.0.1:1/iqn.2026-01.x:y/0", "--tape", img, "--target-side"),
             "needs an iscsi:// SOURCE and one iscsi:// --tape"),
            (("full", "iscsi://127.0.0.1:1/iqn.2026-01.x:y/0", "--tape",
              "iscsi://127.0.0.1:2/iqn.2026-01.x:y/1", "--target-side"), "on the SOURCE's target"),
            (("full", "iscsi://127.0.0.1:1/iqn.2026-01.x:y/0", "-o", "f", "--target-side"),
             "goes with --tape"),
            (("full", "iscsi://127.0.0.1:1/iqn.2026-01.x:y/0", "--tape",
              "iscsi://127.0.0.1:1/iqn.2026-01.x:y/1", "--target-side", "--record-size", "1000"),
             "multiple of 512")):
        r = diffbackup(*args)
        assert r.returncode == 2 and text in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.timeout(120)
def test_block_to_stream_segment_refusals(tmp_path):
    """Each bad block-to-stream list gets its own sense; nothing reaches the tape."""
    from tools.diffbackup_tape import _copy_list, _naa
    random_file(tmp_path / "v.img", 1 << 20, seed=3)
    cart = str(tmp_path / "r.img")
    TapeImage.create(cart, 16 << 20).close()
    with ServerProcess.from_flags(tmp_path, "--disk", str(tmp_path / "v.img"), "--backup-device",
                                  "--tape", cart) as srv, \
            SyncIscsiClient(srv.url(0)) as c:
        disk, tape = _naa(c, 0), _naa(c, 2)

        def xcopy(plist: bytes):
            cdb = bytes([0x83, 0]) + bytes(8) + len(plist).to_bytes(4, "big") + bytes(2)
            for _ in range(3):
                r = c.execute(cdb, lun=0, data_out=plist)
                if r.sense_key is None or r.sense_key.name != "UNIT_ATTENTION":
                    return r
            return r

        def sense(r):
            return (r.status, r.sense_key.name if r.sense_key else None, r.asc, r.ascq)
        good = _copy_list(1, disk, tape, [(0, 128)], 65536)
        # A tape CSCD with a fixed STREAM BLOCK LENGTH: not supported (variable records).
        bad_bl = bytearray(good)
        bad_bl[16 + 32 + 29:16 + 32 + 32] = (512).to_bytes(3, "big")
        assert sense(xcopy(bytes(bad_bl))) == (2, "COPY_ABORTED", 0x0D, 0x03)
        # The destination named as a disk (the copy manager's own LU, FFFFh).
        bad_dst = bytearray(good)
        bad_dst[16 + 64 + 6:16 + 64 + 8] = b"\xff\xff"
        assert sense(xcopy(bytes(bad_dst))) == (2, "COPY_ABORTED", 0x0D, 0x03)
        # Disk to disk through a stream segment (CSCD 1 is a disk LU).
        assert sense(xcopy(_copy_list(1, disk, disk, [(0, 8)], 65536))) == \
            (2, "COPY_ABORTED", 0x0D, 0x03)
        # STREAM DEVICE TRANSFER LENGTH 0 and a descriptor length that is not 20.
        zero_tl = bytearray(good)
        zero_tl[16 + 64 + 9:16 + 64 + 12] = bytes(3)
        assert sense(xcopy(bytes(zero_tl))) == (2, "ILLEGAL_REQUEST", 0x26, 0x00)
        bad_len = bytearray(good)
        bad_len[16 + 64 + 3] = 0x18
        assert sense(xcopy(bytes(bad_len)))[:3] == (2, "ILLEGAL_REQUEST", 0x26)
        # Past the source's last block.
        assert sense(xcopy(_copy_list(1, disk, tape, [(2040, 100)], 65536))) == \
            (2, "COPY_ABORTED", 0x00, 0x00)
        # Nothing reached the tape; then a good list copies 128 blocks as one 64 KiB record.
        def position() -> int:
            for _ in range(3):
                r = c.execute(bytes([0x34, 0x06]) + bytes(8), lun=2, read_length=32)
                if r.status == 0:
                    return int.from_bytes(bytes(r.data)[8:16], "big")
            raise AssertionError(sense(r))
        assert position() == 0
        assert xcopy(good).status == 0
        assert position() == 1


@pytest.mark.timeout(300)
def test_target_side_backup_of_written_zero_blocks_is_padded_not_refused(diffbackup, tmp_path):
    """Blocks written as zeros (allocated, not holes) are elided by the encoder, so the
    stream comes out shorter than the bound the label was written with: the tape file is
    the stream plus zero padding, and it restores byte-exact."""
    vol = tmp_path / "vol.img"
    random_file(vol, 8 << 20, density=0.5, seed=5)
    with open(vol, "r+b") as f:                 # 4 MiB of allocated zeros amid the data:
        f.seek(2 << 20)                         # whole records of zeros, elided
        f.write(bytes(4 << 20))
    cart = str(tmp_path / "t.img")
    TapeImage.create(cart, 64 << 20).close()
    with ServerProcess.from_flags(tmp_path, "--disk", str(vol), "--backup-device", "--tape",
                                  cart) as srv:
        with SyncIscsiClient(srv.url(0)) as c:
            want = b"".join(bytes(c.read(lba, 2048)) for lba in range(0, 16384, 2048))
        r = _ok(diffbackup("full", srv.url(0), "--tape", srv.url(2), "--target-side"))
        assert "file 0 (copied by the target)" in r.stdout
        cat = _ok(diffbackup("catalog", srv.url(2), "--verify"))
        assert cat.stdout.count("│ ok ") == 1, cat.stdout
    dest = tmp_path / "restored.img"
    _ok(diffbackup("restore", str(dest), "--tape", cart, "--file", "0"))
    assert dest.read_bytes() == want
