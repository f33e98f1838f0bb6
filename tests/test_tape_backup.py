"""tape.backupset on local images: labels, appends, spanning at early warning, reading back."""
from __future__ import annotations

import hashlib
import io
import os
import random

import pytest

from tape import TapeImage
from tape import backupset as BS
from tape.errors import TapeError


def _cart(tmp_path, name: str, capacity: int = 16 << 20, ew: int | None = None) -> str:
    p = tmp_path / name
    TapeImage.create(p, capacity, early_warning=ew).close()
    return str(p)


def _label(data: bytes, **kw) -> BS.Label:
    return BS.Label(kw.pop("full", True), kw.pop("generation", (0, 0)), kw.pop("scope", 0),
                    len(data), BS.file_crc(io.BytesIO(data))[1], **kw)


class Chain:
    """The next-cartridge callback over a list of images (raises when it runs out)."""

    def __init__(self, paths: list[str]) -> None:
        self.paths, self.i = paths, 0
        self.opened: list[BS.LocalTape] = []

    def first(self) -> BS.LocalTape:
        d = BS.LocalTape(self.paths[0])
        self.opened.append(d)
        return d

    def next(self, dev, *_):
        dev.close()
        self.i += 1
        if self.i >= len(self.paths):
            raise BS.NoMoreCartridges("out of cartridges")
        d = BS.LocalTape(self.paths[self.i])
        self.opened.append(d)
        return d


def test_label_golden_vector():
    lab = BS.Label(False, (2, 3), 2, 1_000_000, 0x12345678, bytes(range(16)), 8 << 20,
                   "iscsi://h/iqn/0", created=1_700_000_000, set_id=bytes([0xAB]) * 16,
                   record_size=256 << 10, part=2, offset=4096)
    raw = lab.pack()
    assert len(raw) == BS.LABEL_SIZE
    assert raw[:8] == b"DBKLABEL" and raw[8:10] == b"\x00\x01" and raw[10] == 2 and raw[11] == 0
    assert raw[12:16] == (2).to_bytes(4, "big") and raw[16:32] == bytes([0xAB]) * 16
    assert raw[32:40] == (4096).to_bytes(8, "big")
    # The whole record pinned: a change of layout must be a new label version.
    assert hashlib.sha256(raw).hexdigest()[:16] == GOLDEN_LABEL_SHA
    assert BS.Label.unpack(raw) == lab
    bad = bytearray(raw)
    bad[100] ^= 1
    with pytest.raises(BS.BackupSetError, match="CRC32C"):
        BS.Label.unpack(bytes(bad))
    assert BS.Label.unpack(os.urandom(BS.LABEL_SIZE)) is None      # some other file


GOLDEN_LABEL_SHA = "9dbba859118ca7fb"


def test_several_backups_append_and_read_back(tmp_path):
    path = _cart(tmp_path, "a.img")
    rnd = random.Random(1)
    streams = [rnd.randbytes(n) for n in (700_001, 65536, 1, 3 * 262144)]
    chain = Chain([path])
    for k, s in enumerate(streams):
        dev = BS.LocalTape(path)
        placed, dev = BS.write_backup(dev, io.BytesIO(s), _label(s, full=k == 0,
                                      generation=(k, k), scope=0 if k == 0 else 1),
                                      chain.next)
        dev.close()
        assert [(p.file_number, p.part) for p in placed] == [(k, 1)]
    dev = BS.LocalTape(path)
    infos = list(BS.catalog(dev))
    assert [(i.file_number, i.label.full, i.label.generation, i.complete) for i in infos] == \
        [(0, True, (0, 0), True), (1, False, (1, 1), True), (2, False, (2, 2), True),
         (3, False, (3, 3), True)]
    for k in (2, 0, 3, 1):             # any order: by file number
        sink = io.BytesIO()
        lab, dev = BS.read_backup(dev, k, sink, chain.next)
        assert sink.getvalue() == streams[k] and lab.generation == (k, k)
    dev.close()


def test_spanning_three_cartridges(tmp_path):
    paths = [_cart(tmp_path, f"c{i}.img", 1 << 20, 128 << 10) for i in range(3)]
    data = random.Random(2).randbytes(2 << 20)      # larger than one cartridge
    w = Chain(paths)
    placed, dev = BS.write_backup(w.first(), io.BytesIO(data), _label(data, record_size=65536),
                                  w.next)
    dev.close()
    assert [p.cartridge for p in placed] == paths
    assert placed[0].offset == 0 and 0 < placed[1].offset < placed[2].offset < len(data)
    r = Chain(paths)
    sink = io.BytesIO()
    BS.read_backup(r.first(), 0, sink, r.next)[1].close()
    assert sink.getvalue() == data
    # The second cartridge's catalog says which part it holds.
    d = BS.LocalTape(paths[1])
    (info,) = BS.catalog(d)
    d.close()
    assert info.label.part == 2 and info.label.offset == placed[1].offset and not info.complete
    # Starting at a continuation part is refused.
    d = BS.LocalTape(paths[1])
    with pytest.raises(BS.BackupSetError, match="part 2 of a spanning backup"):
        BS.read_backup(d, 0, io.BytesIO(), r.next)
    d.close()


def test_out_of_cartridges_while_writing_and_reading(tmp_path):
    paths = [_cart(tmp_path, "s0.img", 1 << 20, 128 << 10),
             _cart(tmp_path, "s1.img", 1 << 20, 128 << 10)]
    data = random.Random(3).randbytes(3 << 20)
    w = Chain(paths)
    with pytest.raises(BS.NoMoreCartridges):
        BS.write_backup(w.first(), io.BytesIO(data), _label(data), w.next)
    for d in w.opened:
        if d.drive.image is not None:
            d.close()
    # Reading the part on the first cartridge alone: no end record, no next cartridge.
    r = Chain(paths[:1])
    with pytest.raises(BS.NoMoreCartridges):
        BS.read_backup(r.first(), 0, io.BytesIO(), r.next)


def test_wrong_cartridge_order_is_refused(tmp_path):
    paths = [_cart(tmp_path, f"o{i}.img", 1 << 20, 128 << 10) for i in range(3)]
    data = random.Random(4).randbytes(2 << 20)
    w = Chain(paths)
    BS.write_backup(w.first(), io.BytesIO(data), _label(data), w.next)[1].close()
    r = Chain([paths[0], paths[2]])          # the middle cartridge is missing
    with pytest.raises(BS.BackupSetError, match="part 2 of the backup is not on"):
        BS.read_backup(r.first(), 0, io.BytesIO(), r.next)
    r.opened[-1].close()


def test_damaged_record_is_an_error_not_silent(tmp_path):
    path = _cart(tmp_path, "d.img")
    data = random.Random(5).randbytes(1 << 20)
    BS.write_backup(BS.LocalTape(path), io.BytesIO(data), _label(data), Chain([path]).next)[1] \
        .close()
    raw = bytearray(open(path, "rb").read())
    at = raw.find(data[500_000:500_064])
    assert at > 0
    raw[at + 10] ^= 0xFF
    open(path, "wb").write(raw)
    d = BS.LocalTape(path)
    with pytest.raises(TapeError):           # the image's per-record CRC32C
        BS.read_backup(d, 0, io.BytesIO(), Chain([path]).next)
    d.close()


def test_no_such_file_and_foreign_files(tmp_path):
    path = _cart(tmp_path, "f.img")
    d = BS.LocalTape(path)
    d.write([b"tar header" * 10])
    d.write_filemark()
    with pytest.raises(BS.BackupSetError, match="no file 5"):
        BS.read_backup(d, 5, io.BytesIO(), Chain([path]).next)
    with pytest.raises(BS.BackupSetError, match="not a backup"):
        BS.read_backup(d, 0, io.BytesIO(), Chain([path]).next)
    (info,) = BS.catalog(d)
    assert info.label is None
    d.close()


def test_record_size_bounds(tmp_path):
    path = _cart(tmp_path, "r.img")
    d = BS.LocalTape(path)
    for bad in (0, BS.MAX_RECORD + 1):
        with pytest.raises(BS.BackupSetError, match="record size"):
            BS.write_backup(d, io.BytesIO(b"x"), _label(b"x", record_size=bad), lambda _d: _d)
    d.close()
