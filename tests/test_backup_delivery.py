"""Fast delivery over iSCSI (issue 14, item 1): the pieces that make it fast keep the
stream exact -- lent (uncopied) reads of the backup device, recycled buffers on both
ends, pipelined reads and writes, batched block CRCs -- and a backup taken while
writes continue is still a point-in-time image."""
from __future__ import annotations

import os
import random
import threading

import pytest

from scsi_target import config as C
from scsi_target.initiator import cdb as cdbs
from scsi_target.initiator.sync import SyncIscsiClient
from scsi_target.scsi.command import Command, Nexus
from scsi_target.scsi.layouts import backup as L
from scsi_target.target.dataout import WriteBuffers
from volume import blockcrc
from volume.session import _CHUNK_BUFFERS, CHUNK, HEAD_KEEP, LEND_MAX, WINDOW
from volume.stream import StreamDecoder

from scsi_target.testing.process import ServerProcess
from scsi_target.testing.seed import random_file as fill_random

MiB = 1 << 20
BS = 512
OWNER = Nexus("iqn.2026-01.test:delivery", b"\x00\x02\x3d\x00\x00\x07", "iqn.t", 1)


@pytest.fixture
def shm(shm_dir):
    return shm_dir


class Rig:
    """A tracked disk and its backup device, in process."""

    def __init__(self, d, size: int, density: float = 1.0) -> None:
        self.path = d / "v.img"
        fill_random(self.path, size, density=density, seed=size)
        cfg = C.from_flags(listen=["127.0.0.1:0"], disks=[str(self.path)], backup_device=True)
        self.reg = C.build_registry(cfg)
        luns = self.reg.targets[C.DEFAULT_IQN].luns
        self.disk, self.dev = luns.luns[0], luns.luns[1]
        for lu in (self.disk, self.dev):
            lu.execute(Command(bytes(6), nexus=OWNER))     # the power-on unit attention

    def vendor(self, op: int, **kw):
        return self.dev.execute(Command(L.cdb(op, **kw), nexus=OWNER))

    def start_full(self):
        assert self.vendor(L.OP_SELECT_BACKUP, flags=L.FLAG_FULL).ok
        assert self.vendor(L.OP_START_BACKUP, length=80).ok
        return self.dev.medium.sessions.reader

    def read(self, offset: int, n: int):
        cdb = bytes([0x88, 0]) + (offset // BS).to_bytes(8, "big") + \
            (n // BS).to_bytes(4, "big") + bytes(2)
        r = self.dev.execute(Command(cdb, nexus=OWNER, expected_length=n))
        assert r.ok, r.sense
        return r

    def close(self) -> None:
        self.reg.close()


def _decode(raw: bytes):
    dec = StreamDecoder()
    items = dec.feed(raw)
    end = dec.finish()
    assert end.complete and not end.errors, end.errors
    return items, end


def _image_of(items, size: int) -> bytes:
    img = bytearray(size)
    for it in items:
        if getattr(it, "data", None) is not None:
            img[it.first_block * 4096:it.first_block * 4096 + len(it.data)] = it.data
    return bytes(img)


def test_lent_reads_and_copied_re_reads_give_one_exact_stream(shm):
    size = 24 * MiB + 3 * 4096          # the last lent read runs past the stream's end
    rig = Rig(shm, size)
    r = rig.start_full()
    cap = rig.dev.medium.size
    out = bytearray()
    resp = []
    while r.total is None or len(out) < r.total:
        x = rig.read(len(out), min(LEND_MAX, cap - len(out)))
        assert isinstance(x.data_in, memoryview) and x.data_in.readonly and \
            x.release is not None                       # lent, not copied
        resp.append(x)
        if not r.complete:      # a complete stream keeps only its head
            # A re-read of what was just lent is served from the window, by copy.
            again = rig.read(len(out), 64 * 1024)
            assert bytes(again.data_in) == bytes(x.data_in[:64 * 1024])
        out += x.data_in
    assert r.complete
    stream = bytes(out[:r.total])
    assert not any(out[r.total:])                       # zeros after the stream
    items, end = _decode(stream)
    assert _image_of(items, size) == rig.path.read_bytes()
    for x in resp:                                      # views stay valid until released
        x.release()


def test_a_lent_view_outlives_the_window_and_its_buffer_is_reused_only_after_release(shm):
    rig = Rig(shm, 80 * MiB)
    r = rig.start_full()
    first = rig.read(0, LEND_MAX)
    keep = bytes(first.data_in)
    buf = first.data_in.obj
    pos = LEND_MAX
    while pos < 76 * MiB:                               # far past the window
        x = rig.read(pos, LEND_MAX)
        assert r.kept_bytes <= WINDOW + CHUNK + HEAD_KEEP
        x.release()                                     # as the transport does once sent
        pos += LEND_MAX
    assert all(c is not buf for _s, _m, c in ((s, m, k.buf) for s, m, k in r._chunks))
    assert bytes(first.data_in) == keep                 # not reused while lent
    first.release()
    # Now it is free: the next chunk of that size may be it.
    assert any(b is buf for b in _CHUNK_BUFFERS._free.get(LEND_MAX, []))


def test_a_streams_chunk_buffers_all_serve_the_next_stream(shm, monkeypatch):
    # The transport sends a lent view after its READ returns: the last few are
    # still held when the stream is taken.  Every buffer of the stream -- the
    # window's, those held views', and the shorter last read's -- is kept for the
    # next stream, which then makes no new one (zero fill and first-touch page
    # faults of 4 MiB each).
    from volume import session
    monkeypatch.setattr(session, "_CHUNK_BUFFERS", session._ChunkBuffers())
    rig = Rig(shm, WINDOW + 10 * MiB + 3 * MiB)     # ends 3 MiB into a read

    def stream() -> list:
        r = rig.start_full()
        total = r.size_bound                        # random data: nothing elided
        pos, held, bufs = 0, [], []
        while pos < total:
            n = -(-min(LEND_MAX, total - pos) // BS) * BS
            x = rig.read(pos, n)
            assert x.release is not None and len(x.data_in) == n
            bufs.append(x.data_in.obj)
            held.append(x)
            if len(held) > 3:                       # the send queue: 8 MiB and a READ
                held.pop(0).release()
            pos += n
        assert r.complete and n < LEND_MAX
        for x in held:
            x.release()
        return bufs

    first = stream()
    made = {id(b): b for b in first}
    free = session._CHUNK_BUFFERS._free
    assert {id(b) for v in free.values() for b in v} == set(made)     # all of them kept
    second = stream()
    assert all(id(b) in made for b in second)       # ... and reused, the last read's too
    rig.close()


def test_reads_that_are_not_sequential_are_copied_and_stay_correct(shm):
    rig = Rig(shm, 8 * MiB, density=0.8)
    r = rig.start_full()
    a = rig.read(0, 1 * MiB)                    # lent
    b = rig.read(2 * MiB, 1 * MiB)              # ahead of the stream position: copied
    assert b.release is None or not b.data_in.readonly
    c = rig.read(1 * MiB, 1 * MiB)              # fills the hole: copied
    raw = bytes(a.data_in) + bytes(c.data_in) + bytes(b.data_in)
    pos, cap = 3 * MiB, rig.dev.medium.size
    while not r.complete:
        assert pos < cap
        raw += bytes(rig.read(pos, min(MiB, cap - pos)).data_in)
        pos += MiB
    items, _ = _decode(raw[:r.total])
    assert _image_of(items, 8 * MiB) == rig.path.read_bytes()


def test_batched_block_crcs_equal_the_one_by_one_notes():
    from volume.memstore import MemoryStore
    rnd = random.Random(5)
    size = 1 * MiB + 1000                           # a partial last block
    store = MemoryStore(size)
    store.write(0, rnd.randbytes(size))
    entries = -(-size // 4096)
    a = blockcrc.CrcRecorder(store, 4096, entries)
    b = blockcrc.CrcRecorder(store, 4096, entries)
    blocks = sorted(rnd.sample(range(entries - 1), 50))
    views = [memoryview(bytearray(4096)) for _ in blocks]
    a.readinto_many([k * 4096 for k in blocks], views)
    for k in blocks:
        b.readinto(k * 4096, memoryview(bytearray(4096)))
    # A batch that is not all whole blocks takes the general path.
    last = entries - 1
    tail = memoryview(bytearray(size - last * 4096))
    a.readinto_many([0, last * 4096], [memoryview(bytearray(8192)), tail])
    b.readinto(0, memoryview(bytearray(8192)))
    b.readinto(last * 4096, memoryview(bytearray(size - last * 4096)))
    assert a.table == b.table and a.sent == b.sent
    assert a.sent.count() == len(set(blocks) | {0, 1, last})


def test_crc_recorder_checksums_a_mixed_batch_once_like_block_by_block_reads():
    # One-block, multi-block, a partial block inside the volume (not noted) and the
    # partial last block (noted): the table and sent bits equal block-by-block
    # reads, and each view's returned CRC32C is that of its bytes.
    import crc32c
    from volume.memstore import MemoryStore
    rnd = random.Random(7)
    size = 64 * 4096 + 1000
    store = MemoryStore(size)
    store.write(0, rnd.randbytes(size))
    entries = -(-size // 4096)
    a = blockcrc.CrcRecorder(store, 4096, entries)
    b = blockcrc.CrcRecorder(store, 4096, entries)
    last = entries - 1
    offsets = [0, 2 * 4096, 10 * 4096, 20 * 4096, 21 * 4096, 40 * 4096, last * 4096]
    lengths = [4096, 3 * 4096, 4096, 4096, 6000, 8 * 4096, size - last * 4096]
    views = [memoryview(bytearray(n)) for n in lengths]
    crcs = a.readinto_many_crcs(offsets, views)
    for off, n in zip(offsets, lengths):
        b.readinto(off, memoryview(bytearray(n)))
    assert a.table == b.table and a.sent == b.sent
    assert crcs == [crc32c.crc32c(store.read(o, n)) for o, n in zip(offsets, lengths)]
    assert not a.sent[22]                       # 6000 bytes at block 21: block 22 in part
    assert a.sent[21] and a.sent[last]


@pytest.mark.parametrize("shape", ["few", "scattered", "runs", "dense"])
def test_a_differentials_crcs_merge_into_the_table_exactly(shape):
    """CrcRecorder.merged takes exactly the sent blocks' entries into the stored
    table, whichever way it does so (extent by extent, entry by entry, whole
    arrays): a few blocks, thousands scattered, long runs, most of the volume."""
    from array import array
    from volume.memstore import MemoryStore
    rnd = random.Random(len(shape))
    entries = 131072
    store = MemoryStore(entries * 512)
    store.write(0, rnd.randbytes(entries * 512))
    rec = blockcrc.CrcRecorder(store, 512, entries)
    if shape == "runs":
        blocks = [b for a in rnd.sample(range(0, entries - 600, 600), 40)
                  for b in range(a, a + 500)]
    else:
        k = {"few": 7, "scattered": 4096, "dense": 100000}[shape]
        blocks = rnd.sample(range(entries), k)
    rec.readinto_many(sorted(b * 512 for b in blocks),
                      [memoryview(bytearray(512)) for _ in blocks])
    assert rec.sent.count() == len(blocks) and len(set(rec.table[b] for b in blocks)) > 1
    old = array("I", (rnd.getrandbits(32) for _ in range(entries)))
    prev = blockcrc.BlockCrcs(512, entries * 512, entries, bytes(16), 1, True, array("I", old))
    got = rec.merged(prev, full=False, base_id=bytes(16), generation=2,
                     volume_size=entries * 512)
    want = array("I", old)
    for b in blocks:
        want[b] = rec.table[b]
    assert got.table == want and got.generation == 2


def test_write_buffers_come_back_only_when_nobody_holds_them():
    pool = WriteBuffers(max_cached=4 * MiB)

    def run(keep_view: bool, keep_object: list | None = None):
        data_out = pool.get(MiB)
        held = memoryview(data_out) if keep_view else None
        if keep_object is not None:
            keep_object.append(data_out)
        kept = pool.recycle(data_out)
        data_out = None
        return kept, held

    assert run(False)[0]
    again = pool.get(MiB)                               # the recycled one
    assert pool.recycle(again) is True
    kept, held = run(True)
    assert not kept and held is not None                # a view is a reference
    box: list = []
    assert not run(False, box)[0]                       # so is the object itself
    assert pool.get(MiB) is not box[0]
    assert not pool.recycle(bytes(16))                  # only bytearrays
    big = [bytearray(MiB) for _ in range(6)]
    assert sum(pool.recycle(big.pop()) for _ in range(6)) <= 4   # bounded


def test_pipeline_reads_into_callers_buffers_in_order(shm):
    vol = shm / "v.img"
    fill_random(vol, 16 * MiB, seed=3)
    image = vol.read_bytes()
    with ServerProcess.from_flags(shm, "--disk", str(vol), "--backup-device") as srv, SyncIscsiClient(srv.url(0)) as c:
        c.test_unit_ready()                             # the power-on unit attention
        bufs = [bytearray(MiB) for _ in range(3)]
        cmds = [dict(cdb=cdbs.read16(i * (MiB // BS), MiB // BS), read_length=MiB,
                     read_into=bufs[i % 3]) for i in range(16)]
        got = []
        for r in c.pipeline(iter(cmds), 2):     # at most 2 outstanding: 3 buffers suffice
            assert r.good and type(r.data) is memoryview
            got.append(bytes(r.data))
        assert b"".join(got) == image
        # The result is the caller's buffer; a short buffer is refused.
        r = c.execute(cdbs.read16(8, 8), read_length=8 * BS, read_into=bufs[0])
        assert r.data.obj is bufs[0] and bytes(r.data) == image[8 * BS:16 * BS]
        with pytest.raises(ValueError):
            c.execute(cdbs.read16(0, 8), read_length=8 * BS, read_into=bytearray(100))
        # Closing the pipeline early waits for what is outstanding.
        own = [dict(cdb=cdbs.read16(i * (MiB // BS), MiB // BS), read_length=MiB,
                    read_into=bytearray(MiB)) for i in range(6)]
        it = c.pipeline(iter(own), 4)
        first = next(it)
        it.close()
        assert bytes(first.data) == image[:MiB]
        c.test_unit_ready()


def test_pipelined_writes_keep_their_order_at_the_target(shm):
    """Four 4 MiB writes to the same range, unsolicited data interleaving-free: the
    last one issued is the one on the medium."""
    vol = shm / "v.img"
    fill_random(vol, 8 * MiB, seed=4)
    datas = [os.urandom(4 * MiB) for _ in range(4)]
    with ServerProcess.from_flags(shm, "--disk", str(vol), "--backup-device") as srv, SyncIscsiClient(srv.url(0)) as c:
        c.test_unit_ready()
        futs = [c.start(cdbs.write16(0, 4 * MiB // BS), data_out=d) for d in datas]
        assert all(c.result(f).good for f in futs)
        assert bytes(c.read(0, 4 * MiB // BS)) == datas[-1]


def test_full_backup_over_iscsi_while_writes_continue_is_a_point_in_time_image(shm, diffbackup):
    size = 48 * MiB
    vol = shm / "v.img"
    fill_random(vol, size, seed=8)
    before = vol.read_bytes()
    rnd = random.Random(8)
    targets = rnd.sample(range(size // 4096), 10000)
    news = [rnd.randbytes(4096) for _ in targets]
    with ServerProcess.from_flags(shm, "--disk", str(vol), "--backup-device") as srv:
        done = threading.Event()
        written = []

        def writer():
            with SyncIscsiClient(srv.url(0)) as w:
                for blk, data in zip(targets, news):
                    if done.is_set():
                        break
                    w.write(blk * 8, data)
                    written.append(blk)

        t = threading.Thread(target=writer)
        t.start()
        r = diffbackup("full", srv.url(0), "-o", str(shm / "full.bin"))
        done.set()
        t.join()
        assert r.returncode == 0, r.stderr
    items, _ = _decode((shm / "full.bin").read_bytes())
    img = _image_of(items, size)
    # The image is the volume at one instant: the writes before it, none after.
    k = 0
    for i, (blk, data) in enumerate(zip(targets, news)):
        got = img[blk * 4096:(blk + 1) * 4096]
        if got == data:
            assert k == i, f"write {i} in the image but write {k} is not"
            k += 1
        else:
            assert got == before[blk * 4096:(blk + 1) * 4096]
    expect = bytearray(before)
    for blk, data in zip(targets[:k], news[:k]):
        expect[blk * 4096:(blk + 1) * 4096] = data
    assert 0 < k < len(written)         # writes before the cut are in, those during it are not
    assert img == bytes(expect)
    # And it restores over iSCSI byte for byte.
    dst = shm / "dst.img"
    with open(dst, "wb") as f:
        f.truncate(size)
    with ServerProcess.from_flags(shm, "--disk", str(dst), "--backup-device") as srv:
        r = diffbackup("restore", srv.url(0), str(shm / "full.bin"))
        assert r.returncode == 0, r.stdout + r.stderr
    assert dst.read_bytes() == bytes(expect)


def test_a_differential_reads_no_further_than_the_streams_size_bound(shm, diffbackup):
    """START BACKUP's SIZE BOUND caps the reads: a differential of nothing is one
    512-byte READ (not a 4 MiB one of padding), a small one a READ of its bound;
    the device is found and started in few round trips, and the stream is exact."""
    from tools.diffbackup import RemoteVolume
    vol = shm / "v.img"
    fill_random(vol, 8 * MiB, seed=9)
    with ServerProcess.from_flags(shm, "--disk", str(vol), "--backup-device") as srv:
        assert diffbackup("full", srv.url(0), "-o", str(shm / "f.bin")).returncode == 0
        for nblocks in (0, 3):
            if nblocks:
                with SyncIscsiClient(srv.url(0)) as c:
                    c.test_unit_ready()
                    for b in (5, 700, 1500)[:nblocks]:
                        c.write(b * 8, os.urandom(4096))
            v = RemoteVolume(srv.url(0))
            reads = []
            real = v.c.submit

            def spy(cdb, **kw):             # every READ sent, in or out of the pipeline
                if cdb[0] == 0x88:
                    reads.append(kw["read_length"])
                return real(cdb, **kw)

            v.c.submit = spy
            try:
                out = shm / f"d{nblocks}.bin"
                res = v.backup(False, 1, str(out), False)
            finally:
                v.close()
            assert res.blocks == nblocks
            size = out.stat().st_size
            assert reads == [-(-size // BS) * BS]
            items, _ = _decode(out.read_bytes())
            assert sum(getattr(it, "nblocks", 0) for it in items) == nblocks


def _sent(monkeypatch) -> list:
    """Spy on the blocking client diffbackup uses: [opcode, SCSI status, task] of
    every command from now on, in the order sent (statuses as they are waited for)."""
    from scsi_target.initiator.blocking import BlockingIscsiClient as B
    log: list = []
    submit, wait = B.submit, B.wait

    def sub(self, cdb, **kw):
        task = submit(self, cdb, **kw)
        log.append([cdb[0], None, task])
        return task

    def wt(self, task):
        r = wait(self, task)
        for e in log:
            if e[2] is task:
                e[1] = r.status
        return r

    monkeypatch.setattr(B, "submit", sub)
    monkeypatch.setattr(B, "wait", wt)
    return log


def _differential(url: str, out) -> object:
    """A differential of scope 1 of ``url`` into ``out`` by RemoteVolume, in process
    (so the test's patches of the client see every command); its outcome."""
    from tools.diffbackup import RemoteVolume
    v = RemoteVolume(url)
    try:
        return v.backup(False, 1, str(out), False)
    finally:
        v.close()


@pytest.mark.parametrize("nblocks", [0, 3])
def test_a_differential_costs_few_round_trips(shm, diffbackup, nblocks, monkeypatch):
    """The fixed cost of `diffbackup diff` on the wire: a login of one exchange (no
    security stage without CHAP), the device (the next LUN) found in two round
    trips with no command answered UNIT ATTENTION (TEST UNIT READY takes it along,
    with the INQUIRYs), START BACKUP
    selecting its stream itself with READ CAPACITY, a differential the counts say
    is empty read along with it, the reads' last status riding with the last
    read (no REPORT BACKUP STATUS of its own), then COMMIT BACKUP."""
    from scsi_target.initiator import login as LG
    vol = shm / "v.img"
    fill_random(vol, 8 * MiB, seed=19)
    logins = []
    real_receive = LG.InitiatorLogin.receive
    monkeypatch.setattr(LG.InitiatorLogin, "receive",
                        lambda self, resp: logins.append(resp) or real_receive(self, resp))
    INQ, RL, TUR, GENS, START, RC, READ, STATUS, COMMIT = \
        0x12, 0xA0, 0x00, 0xC2, 0xC1, 0x9E, 0x88, 0xC6, 0xC9
    found = [INQ, RL, TUR, INQ, TUR, GENS]
    with ServerProcess.from_flags(shm, "--disk", str(vol), "--backup-device") as srv:
        assert diffbackup("full", srv.url(0), "-o", str(shm / "f.bin")).returncode == 0
        if nblocks:
            with SyncIscsiClient(srv.url(0)) as c:
                c.test_unit_ready()
                for b in (5, 700, 1500)[:nblocks]:
                    c.write(b * 8, os.urandom(4096))
        logins.clear()
        log = _sent(monkeypatch)
        res = _differential(srv.url(0), shm / "d.bin")
        assert len(logins) == 1 and res.blocks == nblocks
        assert [e[0] for e in log] == found + [START, RC, READ, STATUS, COMMIT]
        # The new session's UNIT ATTENTIONs went to the TEST UNIT READYs, no command
        # had to be sent again.
        assert [e[0] for e in log if e[1] != 0] == [TUR, TUR]
        items, _ = _decode((shm / "d.bin").read_bytes())
        assert sum(getattr(it, "nblocks", 0) for it in items) == nblocks
        # A stream longer than the counts said (written in between): the read along
        # with START is set aside and the stream read from its start, exactly.
        monkeypatch.setattr("tools.diffbackup._empty_differential", lambda g, scope: True)
        with SyncIscsiClient(srv.url(0)) as c:
            c.test_unit_ready()
            c.write(9 * 8, os.urandom(4096))
        log.clear()
        res = _differential(srv.url(0), shm / "d2.bin")
        assert res.blocks == 1
        assert [e[0] for e in log][len(found):] == [START, RC, READ, STATUS, READ, STATUS, COMMIT]
        items, _ = _decode((shm / "d2.bin").read_bytes())
        assert [it.first_block for it in items if getattr(it, "nblocks", 0)] == [9]


def test_the_backup_device_is_found_whatever_the_layout(shm):
    """Finding a disk's backup device tries the next LUN first (one disk served with
    --backup-device: two round trips); where that is another disk, or the device
    of another disk, every LUN is asked; a device's own URL is itself."""
    from tools.diffbackup import RemoteVolume
    for name in ("a.img", "b.img"):
        fill_random(shm / name, 2 * MiB, seed=len(name))
    with ServerProcess.from_flags(shm, "--disk", str(shm / "a.img"), "--disk",
                                  str(shm / "b.img"), "--backup-device") as srv:
        # LUN 0 a, 1 b, 2 the backup device of a, 3 that of b
        for lun, dev in ((0, 2), (1, 3), (2, 2), (3, 3)):
            v = RemoteVolume(srv.url(lun))
            try:
                assert v.dev == dev
                assert v.generations().header.source_lun == dev - 2
            finally:
                v.close()


def test_every_read_of_a_backup_has_its_status_behind_it(shm, diffbackup, monkeypatch):
    """A status rides behind every READ of the stream (no round trip of its own),
    so each chunk goes to the output as soon as it arrives instead of four at a
    time: the writer is about one chunk behind when the last one comes."""
    vol = shm / "v.img"
    fill_random(vol, 8 * MiB, seed=23)
    with ServerProcess.from_flags(shm, "--disk", str(vol), "--backup-device") as srv:
        assert diffbackup("full", srv.url(0), "-o", str(shm / "f.bin")).returncode == 0
        with SyncIscsiClient(srv.url(0)) as c:
            c.test_unit_ready()
            c.write(0, os.urandom(8 * MiB))                   # every block: ~8.4 MB stream
        log = _sent(monkeypatch)
        res = _differential(srv.url(0), shm / "d.bin")
        ops = [e[0] for e in log]
        reads = ops[ops.index(0xC1) + 2:-1]                    # after START and READ CAPACITY
        assert reads == [0x88, 0xC6] * 3 and ops[-1] == 0xC9
        items, _ = _decode((shm / "d.bin").read_bytes())
        assert res.blocks == 2048 and _image_of(items, 8 * MiB) == vol.read_bytes()


def test_a_target_without_start_selects_gets_select_then_start(shm, diffbackup, tmp_path,
                                                                monkeypatch):
    """Against a target of the release before START_SELECTS (SELECT BACKUP's HOLD, no
    selection in START BACKUP): SELECT BACKUP with HOLD, then START BACKUP with READ
    CAPACITY, then the reads; the stream and the commit are as with a newer one."""
    from pathlib import Path
    from tools.diffbackup import RemoteVolume
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "from scsi_target.scsi.layouts import backup as L\n"
        "L.CDB_FLAGS_ALLOWED[L.OP_START_BACKUP] = 0\n")
    repo = Path(__file__).resolve().parent.parent
    monkeypatch.setenv("PYTHONPATH", f"{site}{os.pathsep}{repo}")
    vol = shm / "v.img"
    fill_random(vol, 8 * MiB, seed=29)
    with ServerProcess.from_flags(shm, "--disk", str(vol), "--backup-device") as srv:
        assert diffbackup("full", srv.url(0), "-o", str(shm / "f.bin")).returncode == 0
        with SyncIscsiClient(srv.url(0)) as c:
            c.test_unit_ready()
            c.write(3 * 8, os.urandom(4096))
        log = _sent(monkeypatch)
        v = RemoteVolume(srv.url(0))
        try:
            assert not v.generations(v.dev).header.start_selects
            res = v.backup(False, 1, str(shm / "d.bin"), False)
            g = v.generations(v.dev)
        finally:
            v.close()
        ops = [e[0] for e in log]
        assert ops[ops.index(0xC0):] == [0xC0, 0xC1, 0x9E, 0x88, 0xC6, 0xC9, 0xC2]
        assert res.blocks == 1 and g.header.current_generation == 2     # held, then committed
        items, _ = _decode((shm / "d.bin").read_bytes())
        assert [it.first_block for it in items if getattr(it, "nblocks", 0)] == [3]
