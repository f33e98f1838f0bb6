"""volume/streamstore.py: the stream-store interfaces are abstract base classes, and
merge works through them alone: an in-memory store here (files and S3 are the two
real ones; tests/test_s3_backups.py has S3)."""
from __future__ import annotations

import io

import pytest

from tools.diffbackup import main
from volume.merge import MergeError, MergeRefused, merge
from volume.stream import Damage, StreamDecoder
from volume.streamstore import CommitOnExit, StreamRef, StreamWriter, same_stream

from scsi_target.testing.seed import random_file, tracked_writes

SIZE = (2 << 20) + 512


class MemRef(StreamRef):
    def __init__(self, name: str, data: bytes) -> None:
        self.name = name
        self.data = data
        self.opened = 0

    def size(self) -> int:
        return len(self.data)

    def open(self):
        self.opened += 1
        return io.BytesIO(self.data)


class MemWriter(StreamWriter):
    def __init__(self, name: str) -> None:
        self.name = name
        self.written = 0
        self.buf = bytearray()
        self.state = "open"

    def write(self, data) -> int:
        self.buf += data
        self.written += len(data)
        return len(data)

    def commit(self) -> None:
        if self.state == "open":
            self.state = "committed"

    def abort(self) -> None:
        if self.state == "open":
            self.state = "aborted"


def test_the_interfaces_are_abstract():
    for cls in (StreamRef, StreamWriter, CommitOnExit):
        with pytest.raises(TypeError):
            cls()

    class NoOpen(StreamRef):
        def size(self) -> int:
            return 0
    with pytest.raises(TypeError):
        NoOpen()
    assert same_stream("a/../b", "b") and not same_stream("s3://x/b", "b")


def test_with_commits_on_a_clean_exit_and_aborts_on_an_exception():
    with MemWriter("a") as w:
        w.write(b"x")
    assert w.state == "committed"
    with pytest.raises(ValueError):
        with MemWriter("b") as w:
            raise ValueError
    assert w.state == "aborted"


@pytest.fixture
def chain(tmp_path):
    vol = tmp_path / "vol.img"
    random_file(vol, SIZE, seed=5)
    files = [tmp_path / "full"]
    assert main(["-q", "full", str(vol), "-o", str(files[0])]) == 0
    for i in (1, 2):
        tracked_writes(vol, SIZE, writes=25, seed=i)
        files.append(tmp_path / f"d{i}")
        assert main(["-q", "diff", str(vol), "--scope", "1", "-o", str(files[-1])]) == 0
    return vol, files


def _restore(tmp_path, name: str, files) -> bytes:
    assert main(["-q", "restore", str(tmp_path / name), *map(str, files)]) == 0
    return (tmp_path / name).read_bytes()


def test_merge_through_the_interface_alone(tmp_path, chain):
    vol, files = chain
    refs = [MemRef(f"mem:{f.name}", f.read_bytes()) for f in files]
    out = MemWriter("mem:synth")
    res = merge(refs, out)
    assert out.state == "committed" and res.output == "mem:synth"
    assert all(r.opened == 3 for r in refs)      # the header, pass 1, pass 2: one reader each
    (tmp_path / "synth").write_bytes(out.buf)
    assert _restore(tmp_path, "a.img", [tmp_path / "synth"]) == vol.read_bytes()


def test_an_input_changed_between_the_passes_aborts_the_output(tmp_path, chain):
    _vol, files = chain
    refs = [MemRef(f"mem:{f.name}", f.read_bytes()) for f in files]
    rec = next(i for i in StreamDecoder().feed(refs[2].data)
               if not isinstance(i, Damage) and i.kind == 0)
    changed = bytearray(refs[2].data)
    changed[rec.offset + 40 + 7] ^= 1
    plain_open = refs[2].open

    def second_open_changed():
        f = plain_open()
        if refs[2].opened == 3:                       # pass 2
            return io.BytesIO(bytes(changed))
        return f
    refs[2].open = second_open_changed
    out = MemWriter("mem:synth")
    with pytest.raises(MergeError, match=r"mem:d2 changed while it was merged \(record "
                       rf"{rec.seq} at byte {rec.offset} no longer checks out\)"):
        merge(refs, out)
    assert out.state == "aborted"


def test_a_refused_merge_aborts_the_output(tmp_path, chain):
    _vol, files = chain
    data = bytearray(files[1].read_bytes())
    data[-40] ^= 1                                       # the trailer
    refs = [MemRef("mem:full", files[0].read_bytes()), MemRef("mem:d1", bytes(data))]
    out = MemWriter("mem:synth")
    with pytest.raises(MergeRefused, match="no valid trailer"):
        merge(refs, out)
    assert out.state == "aborted" and not out.buf
    out = MemWriter("mem:d1")
    with pytest.raises(MergeRefused, match="is one of the inputs"):
        merge(refs, out)
    assert out.state == "aborted"


def test_a_stream_file_is_durable_with_its_name_before_commit_returns(tmp_path, monkeypatch):
    """FILE.partial is fsynced, renamed to FILE, and the directory fsynced (the
    rename made durable) before commit() returns: diffbackup sends COMMIT BACKUP
    only then, so no generation is recorded whose stream a crash could unname."""
    import os
    from volume.streamstore import FileStreams
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}") or
                       os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(a, b):
        events.append(("replace", os.path.basename(a), os.path.basename(b)))
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "s.bk"
    with FileStreams().create(str(target), force=True) as f:
        f.write(b"stream bytes")
    assert events == [("fsync", str(tmp_path / "s.bk.partial")),
                      ("replace", "s.bk.partial", "s.bk"), ("fsync", True)]
    assert target.read_bytes() == b"stream bytes"
