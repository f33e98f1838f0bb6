"""Zero-copy full streams (volume/lending.py): record data lent from a tmpfs
volume's map is the same stream byte for byte as the copying encoder's, cut
into Data-In PDUs with and without data digests, and a loan keeps the bytes it
was lent with whatever the volume does next (write, discard, growth, close)."""
from __future__ import annotations

import random

import crc32c
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from scsi_target.protocol import params as K
from scsi_target.protocol.framing import PduReader, encode_pdu
from scsi_target.protocol.pdu import ScsiCommand
from scsi_target.scsi.command import Response
from scsi_target.target.datain import DataInSegmenter
from volume.filestore import FileStore
from volume.genmap import BackupPlan
from volume.lending import Gather, LoanSlice
from volume.stream import StreamDecoder, StreamEncoder

VID = b"zero-copy-test"
BASE = bytes(16)
SID = bytes(range(16))


def _volume(path, seed: int, blocks: int, bs: int, tail: int, zero_share: float) -> FileStore:
    """Random data, some all-zero blocks (elided records), a partial last block."""
    rnd = random.Random(seed)
    size = blocks * bs - tail
    img = bytearray(rnd.randbytes(size))
    for b in range(blocks):
        if rnd.random() < zero_share:
            img[b * bs:(b + 1) * bs] = bytes(len(img[b * bs:(b + 1) * bs]))
    path.write_bytes(img)
    st_ = FileStore(path, mmap_reads=True)
    assert st_.lends_views
    return st_


def _plan(store: FileStore, bs: int, full: bool = True, gens=None) -> BackupPlan:
    entries = -(-store.size // bs)
    if gens is None:
        gens = [0] * entries
    return BackupPlan.from_generations(gens, 0 if full else 1, 0 if full else 3, granularity=bs,
                                       volume_size=store.size, volume_id=VID, base_id=BASE,
                                       full=full)


def _copied(store, plan, **kw) -> bytes:
    enc = StreamEncoder(store, plan, stream_id=SID, created_ns=1, **kw)
    enc.lends = False               # the copying path, for reference
    return enc.read()


def _gathered(store, plan, sizes, **kw) -> tuple[list[Gather], StreamEncoder]:
    enc = StreamEncoder(store, plan, stream_id=SID, created_ns=1, **kw)
    out = []
    for n in sizes + [1 << 20] * 100000:
        g = Gather(enc.readparts(n))
        if not len(g):
            break
        out.append(g)
    return out, enc


@pytest.fixture
def shm(shm_dir):
    return shm_dir


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), blocks=st.integers(1, 80), tail=st.integers(0, 4095),
       zero_share=st.sampled_from([0.0, 0.3, 1.0]), elide=st.booleans(),
       maxrec=st.sampled_from([4096, 3 * 4096, 64 << 10, 1 << 20]),
       sizes=st.lists(st.integers(1, 300_000), max_size=20), mix=st.booleans())
def test_lent_stream_equals_the_copying_stream(shm, seed, blocks, tail, zero_share, elide, maxrec,
                                               sizes, mix):
    bs = 4096
    path = shm / f"v{seed}.img"
    store = _volume(path, seed, blocks, bs, tail, zero_share)
    try:
        plan = _plan(store, bs)
        ref = _copied(store, plan, elide_zeros=elide, max_record_bytes=maxrec)
        enc = StreamEncoder(store, plan, stream_id=SID, created_ns=1, elide_zeros=elide,
                            max_record_bytes=maxrec)
        assert enc.lends
        got = bytearray()
        lent = 0
        for i, n in enumerate(sizes + [1 << 20] * 10000):
            if mix and i % 3 == 1:          # readinto and readparts mixed
                buf = bytearray(n)
                k = enc.readinto(buf)
                got += buf[:k]
            else:
                g = Gather(enc.readparts(n))
                lent += sum(p.nbytes for p in g.parts if type(p) is LoanSlice)
                k = len(g)
                got += bytes(g)
            if not k:
                break
        assert bytes(got) == ref
        assert enc.finished
        if not mix and zero_share < 1.0 and store.size > 2 * maxrec:
            assert lent > 0                 # record data really went out uncopied
        items = StreamDecoder().feed(ref)
        dec = StreamDecoder()
        dec.feed(bytes(got))
        assert dec.finish().complete
        assert items
    finally:
        store.close()
        path.unlink()


def test_a_differential_or_compressed_stream_does_not_lend(shm):
    store = _volume(shm / "v.img", 1, 16, 4096, 100, 0.0)
    try:
        gens = [None, 2, 3, None] * 4
        assert not StreamEncoder(store, _plan(store, 4096, False, gens)).lends
        assert not StreamEncoder(store, _plan(store, 4096), compress=True).lends
        assert StreamEncoder(store, _plan(store, 4096)).lends
    finally:
        store.close()


def _pdus_bytes(gather: Gather, seg: int, burst: int, digest: bool) -> tuple[bytes, list]:
    params = K.SessionParams()
    params.max_xmit_data_segment_length = seg
    params.max_burst_length = burst
    params.data_digest = digest
    cmd = ScsiCommand(read=True, final=True, itt=7, edtl=len(gather))
    pdus = DataInSegmenter(params).respond(cmd, Response(data_in=gather))
    bufs = []
    for p in pdus:
        bufs += encode_pdu(p, False, digest)
    return b"".join(bytes(b) for b in bufs), bufs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 1000), n=st.integers(1, 600_000) | st.integers(200, 20_000), digest=st.booleans(),
       seg=st.sampled_from([512, 8192, 65536, 262144]), burst=st.sampled_from([65536, 262144, 1 << 20]))
def test_data_in_pdus_of_a_gather_equal_those_of_its_bytes(shm, seed, n, digest, seg, burst):
    """Cut across part boundaries, with the data digest chained over the parts:
    the same wire bytes as the one-buffer path."""
    path = shm / f"g{seed}.img"
    store = _volume(path, seed, 40, 4096, 0, 0.0)
    try:
        enc = StreamEncoder(store, _plan(store, 4096), stream_id=SID, created_ns=1,
                            max_record_bytes=3 * 4096)
        g = Gather(enc.readparts(n))
        flat, bufs = _pdus_bytes(g, seg, burst, digest)
        ref, _ = _pdus_bytes(Gather([bytes(g)]), seg, burst, digest)
        assert flat == ref
        if any(type(p) is LoanSlice for p in g.parts):
            assert any(type(b) is LoanSlice for b in bufs)  # loans reach the send list as loans
        # And a reader (checking digests when on) takes every PDU back: the data again.
        r = PduReader(max_data=1 << 24)
        r.data_digest = digest
        r.feed(flat)
        data = b""
        while (pdu := r.next_pdu()) is not None:
            data += bytes(pdu.data)
        assert data == bytes(g) and not r.buffered
    finally:
        store.close()
        path.unlink()


def test_loans_keep_their_bytes_through_write_discard_growth_and_close(shm):
    bs = 4096
    path = shm / "v.img"
    store = _volume(path, 5, 64, bs, 0, 0.0)
    before = path.read_bytes()
    plan = _plan(store, bs)
    ref = _copied(store, plan, max_record_bytes=8 * bs)
    gathers, enc = _gathered(store, plan, [100_000, 50_000], max_record_bytes=8 * bs)
    assert b"".join(map(bytes, gathers)) == ref
    # Change everything the loans point at, every way the store offers.
    store.write(0, b"\xff" * (16 * bs))
    store.write_many([20 * bs, 30 * bs], [b"\xee" * bs, b"\xdd" * bs])
    store.discard(32 * bs, 8 * bs)
    store.write_zeroes(40 * bs, 8 * bs)
    store.grow(store.size + (1 << 20))
    assert path.read_bytes()[:16 * bs] == b"\xff" * (16 * bs)
    assert b"".join(map(bytes, gathers)) == ref           # the lent bytes did not move
    store.close()                                           # no BufferError: nothing points in
    assert b"".join(map(bytes, gathers)) == ref
    assert before != path.read_bytes()[:len(before)]


def test_without_materialization_a_loan_would_show_the_new_bytes(shm, monkeypatch):
    """The hazard itself, shown at the store: what the rule prevents."""
    path = shm / "v.img"
    store = _volume(path, 6, 16, 4096, 0, 0.0)
    monkeypatch.setattr(FileStore, "_before_change", lambda self: None)
    (loan,) = store.lend_many([0], [4096])
    old = bytes(loan.buf)
    store.write(0, b"\x01" * 4096)
    assert bytes(loan.buf) != old
    monkeypatch.undo()
    del loan
    store.close()


def test_a_crc_in_the_stream_is_the_crc_of_what_is_sent(shm):
    path = shm / "v.img"
    store = _volume(path, 7, 8, 4096, 0, 0.0)
    (loan,) = store.lend_many([4096], [8192])
    crc = crc32c.crc32c(loan.buf)
    store.write(4096, bytes(8192))
    assert crc32c.crc32c(loan.buf) == crc
    store.close()


# -- the backup reader over a tracked volume: loans, the cut, and writes mixed --------
def _tracked_rig(d, size: int, seed: int):
    from scsi_target import config as C
    from scsi_target.scsi.command import Command, Nexus
    from scsi_target.scsi.layouts import backup as L
    from scsi_target.testing.seed import random_file
    path = d / "t.img"
    random_file(path, size, density=0.9, seed=seed)
    reg = C.build_registry(C.from_flags(listen=["127.0.0.1:0"], disks=[str(path)],
                                        backup_device=True))
    luns = reg.targets[C.DEFAULT_IQN].luns
    disk, dev = luns.luns[0], luns.luns[1]
    owner = Nexus("iqn.2026-01.test:zc", b"\x00\x02\x3d\x00\x00\x09", "iqn.t", 1)
    for lu in (disk, dev):
        lu.execute(Command(bytes(6), nexus=owner))
    assert dev.execute(Command(L.cdb(L.OP_SELECT_BACKUP, flags=L.FLAG_FULL), nexus=owner)).ok
    assert dev.execute(Command(L.cdb(L.OP_START_BACKUP, length=80), nexus=owner)).ok
    return path, reg, disk, dev, owner


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 1000),
       steps=st.lists(st.tuples(st.sampled_from(["write", "discard", "reread"]),
                                st.floats(-1.0, 1.0), st.integers(1, 40)), max_size=25))
@example(seed=401, steps=[("write", 0.0, 4), ("write", 0.0, 40)] + [("reread", 0.0, 1)] * 5)
def test_gathered_reads_with_writes_between_them_give_the_cut_image(shm, seed, steps):
    """Lent reads of the backup device (gather) with writes and discards of blocks
    behind and ahead of the stream between them, and re-reads of the window: the
    stream is the volume at the cut, and each gather read keeps its bytes even
    though it is only looked at after all the writes."""
    from volume.session import LEND_MAX
    size = 12 * (1 << 20) + 7 * 512
    path, reg, disk, dev, owner = _tracked_rig(shm, size, seed)
    try:
        cut_image = path.read_bytes()
        sessions = dev.medium.sessions
        r = sessions.reader
        rnd = random.Random(seed)
        gathers = []
        rereads: list[tuple[int, bytes]] = []
        pos = 0
        steps = list(steps)
        while r.total is None:
            got = sessions.lend(pos, LEND_MAX, owner=owner, gather=True)
            assert got is not None
            gathers.append(got[0])
            pos += LEND_MAX
            for op, where, n in steps[:3]:
                cursor = r.pit.cursor
                b = max(0, min(size // 4096 - n - 1, int(cursor + where * 600)))
                if op == "write":
                    disk.store.write(b * 4096, rnd.randbytes(n * 4096))
                elif op == "discard":
                    disk.store.discard(b * 4096, n * 4096)
                elif not r.complete:
                    back = max(0, pos - rnd.randrange(1, 2 * LEND_MAX))
                    mv = memoryview(bytearray(4096))
                    r.readinto(back, mv)
                    rereads.append((back, bytes(mv)))
                    if back + 4096 <= pos:       # inside what was lent: the same bytes
                        stream_so_far = b"".join(map(bytes, gathers))
                        same = bytes(mv) == stream_so_far[back:back + 4096]
                        assert same, f"re-read at {back} differs from the lent bytes"
            del steps[:3]
        stream = b"".join(map(bytes, gathers))[:r.total]
        if len(stream) < r.total:
            # A re-read reaching past the lent bytes made the encoder produce on
            # to the stream's end (and got those bytes): the rest is read as the
            # device serves a read of bytes already produced.
            rest = memoryview(bytearray(r.total - len(stream)))
            r.readinto(len(stream), rest)
            stream += bytes(rest)
        padded = stream + bytes(4096)           # zeros past the end
        for back, got in rereads:
            assert got == padded[back:back + 4096], f"re-read at {back} is not the stream"
        dec = StreamDecoder()
        items = dec.feed(stream)
        end = dec.finish()
        assert end.complete and end.damaged == 0, end.errors
        img = bytearray(size)
        for it in items:
            if it.data is not None:
                img[it.first_block * 4096:it.first_block * 4096 + len(it.data)] = it.data
        assert bytes(img) == cut_image
    finally:
        reg.close()
