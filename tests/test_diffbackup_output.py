"""diffbackup's backup output over iSCSI: stored from a thread of its own while the
next chunks arrive (tools.diffbackup._Writer).  Every byte arrives in order, and a
store that fails part-way is one Failure with the map left unchanged."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from volume.streamstore import StreamStoreError

REPO = Path(__file__).resolve().parent.parent
BS = 512


class _Sink:
    """A stream-store writer that keeps what it is given, failing at the Nth write."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.data = bytearray()
        self.writes = 0
        self.fail_at = fail_at
        self.committed = self.aborted = False

    def write(self, data) -> int:
        self.writes += 1
        if self.fail_at is not None and self.writes >= self.fail_at:
            raise StreamStoreError("the store is full")
        self.data += data
        return len(data)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.committed = True
        else:
            self.aborted = True


@pytest.mark.scsi_lu("disk", lun=0, size="48M", track=True)
@pytest.mark.scsi_lu("backup", lun=1, source=0)
def test_every_chunk_is_stored_in_order_and_a_failing_store_takes_nothing(iscsi_server,
                                                                          tmp_path):
    from tools.diffbackup import Failure, RemoteVolume
    t = iscsi_server.target
    for k in range(10):                                    # 40 MiB: ten 4 MiB READs and more
        assert t.write(k * 8192, os.urandom(4 << 20)).ok
    v = RemoteVolume(iscsi_server.url(0))
    try:
        bad = _Sink(fail_at=3)
        with pytest.raises(Failure, match="the store is full; the backup was not taken"):
            v.backup(True, 0, bad, False)
        assert bad.aborted and not bad.committed
        assert not v.status().full_done                    # nothing recorded
        good = _Sink()
        res = v.backup(True, 0, good, False)
        assert good.committed and good.writes > 4 and res.nbytes == len(good.data)
        assert v.status().full_done
    finally:
        v.close()
    path = tmp_path / "full.stream"
    path.write_bytes(good.data)
    r = subprocess.run([sys.executable, "-m", "tools.diffbackup", "verify", str(path)],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_writer_hands_back_every_buffer_and_raises_the_first_error():
    import collections
    from tools.diffbackup import _Writer
    free: collections.deque = collections.deque()
    sink = _Sink(fail_at=5)
    bufs = [bytearray([i]) * 8 for i in range(12)]
    taken = []
    with pytest.raises(StreamStoreError, match="full"):
        with _Writer(sink, free) as w:
            for b in bufs:
                w.write(memoryview(b), b)
                taken.append(b)
            w.close()
    assert bytes(sink.data) == b"".join(bytes(b) for b in bufs[:4])
    assert len(taken) >= 5 and set(map(id, free)) <= set(map(id, taken))
    sink = _Sink()
    free.clear()
    with _Writer(sink, free) as w:
        for b in bufs:
            w.write(memoryview(b), b)
        deadline = time.monotonic() + 30
        while len(free) < 12 and time.monotonic() < deadline:    # each comes back once written
            time.sleep(0.001)
        assert sorted(map(id, free)) == sorted(map(id, bufs))
        w.close()                     # the stream is read: what comes back is released
    assert bytes(sink.data) == b"".join(bytes(b) for b in bufs) and not free


def test_closing_the_writer_unmaps_the_buffers_it_hands_back():
    # Once the stream is read no buffer is used again: close() unmaps each map as
    # the thread hands it back; one with a view still alive is left to its owner.
    import collections
    from tools.diffbackup import _Writer, _buffer
    free: collections.deque = collections.deque()
    sink = _Sink()
    bufs = [_buffer(4096) for _ in range(12)]
    for i, b in enumerate(bufs):
        b[:] = bytes([i]) * 4096
    held = memoryview(bufs[-1])
    with _Writer(sink, free) as w:
        for b in bufs:
            w.write(memoryview(b), b)
        w.close()
    assert bytes(sink.data) == b"".join(bytes([i]) * 4096 for i in range(12))
    assert all(b.closed for b in bufs[:-1]) and not bufs[-1].closed
    assert bytes(held[:2]) == bytes([11, 11])
    held.release()


def test_a_one_chunk_stream_is_written_without_a_thread():
    import collections
    from tools.diffbackup import _Writer
    free: collections.deque = collections.deque()
    sink = _Sink()
    buf = bytearray(b"only")
    with _Writer(sink, free) as w:
        w.write(memoryview(buf), buf, last=True)
        assert w._t is None and bytes(sink.data) == b"only" and list(free) == [buf]
        w.close()
    sink = _Sink(fail_at=1)
    free.clear()
    with pytest.raises(StreamStoreError, match="full"):
        with _Writer(sink, free) as w:
            w.write(memoryview(buf), buf, last=True)
    assert w._t is None and list(free) == [buf]
    sink = _Sink()                  # a first chunk that is not the last: the thread takes it
    bufs = [bytearray(b"a"), bytearray(b"b")]
    with _Writer(sink, free) as w:
        w.write(memoryview(bufs[0]), bufs[0])
        w.write(memoryview(bufs[1]), bufs[1], last=True)
        w.close()
        assert w._t is not None
    assert bytes(sink.data) == b"ab"
