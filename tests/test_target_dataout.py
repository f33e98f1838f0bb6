"""The data-out sequencer alone: command and Data-Out PDUs in, R2Ts and ready tasks out."""
from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings, strategies as st

from scsi_target.protocol import pdu as P
from scsi_target.protocol.params import SessionParams
from scsi_target.scsi import sense as S
from scsi_target.target.dataout import MAX_WRITE_BUFFER, DataOutSequencer
from scsi_target.target.errors import ProtocolError
from scsi_target.target.tags import TagAllocator


def _seq(budget=None, **kw) -> tuple[DataOutSequencer, list]:
    r2ts: list = []
    params = SessionParams(**{"max_burst_length": 65536, "first_burst_length": 16384,
                              "initial_r2t": True, "immediate_data": True,
                              "max_outstanding_r2t": 1, **kw})
    return DataOutSequencer(params, r2ts.append, TagAllocator(), budget=budget), r2ts


def _write(itt, edtl, data=b"", final=True) -> P.ScsiCommand:
    return P.ScsiCommand(write=True, final=final, itt=itt, edtl=edtl, data=data)


def _answer(seq, r2t, data, chunk=None):
    """Data-Out PDUs for one R2T; the task if the last one made it ready."""
    chunk = chunk or r2t.length
    ready = None
    for i, off in enumerate(range(r2t.offset, r2t.offset + r2t.length, chunk)):
        end = min(off + chunk, r2t.offset + r2t.length)
        ready = seq.data_out(P.DataOut(final=end == r2t.offset + r2t.length, itt=r2t.itt,
                                       ttt=r2t.ttt, datasn=i, offset=off, data=data[off:end]))
    return ready


@settings(max_examples=200, deadline=None)
@given(edtl=st.integers(1, 1 << 20), imm=st.integers(0, 1 << 16), initial_r2t=st.booleans(),
       first_burst=st.integers(512, 1 << 18), max_burst=st.integers(512, 1 << 18),
       max_r2t=st.integers(1, 4), chunk=st.integers(512, 1 << 16), seed=st.integers(0, 1 << 30),
       deliver_first=st.booleans(), unsolicited=st.booleans())
def test_every_byte_is_asked_for_once_and_lands_in_place(edtl, imm, initial_r2t, first_burst,
                                                          max_burst, max_r2t, chunk, seed,
                                                          deliver_first, unsolicited):
    imm = min(imm, edtl, first_burst)
    first_burst = max(first_burst, imm)
    rng = random.Random(seed)
    data = os.urandom(edtl)
    seq, r2ts = _seq(first_burst_length=first_burst, max_burst_length=max_burst,
                     initial_r2t=initial_r2t, max_outstanding_r2t=max_r2t)
    # Unsolicited Data-Out up to FirstBurstLength, when allowed and the initiator
    # chooses to (the command's F bit says whether it follows).
    end_unsol = imm if initial_r2t or not unsolicited else min(first_burst, edtl)
    cmd = _write(1, edtl, data[:imm], final=end_unsol == imm)
    task = seq.arrival(cmd, 0)
    if deliver_first:
        assert seq.deliver(cmd) is (task if edtl == imm else None)
    ready = None
    for i, off in enumerate(range(imm, end_unsol, chunk)):
        end = min(off + chunk, end_unsol)
        ready = seq.data_out(P.DataOut(final=end == end_unsol, itt=1, datasn=i, offset=off,
                                       data=data[off:end]))
    asked = []
    outstanding: dict = {}
    sent = {}                                          # TTT -> (DataSN, next offset)
    while True:
        for r in r2ts:
            assert r.r2tsn == len(asked) and r.ttt not in outstanding
            assert 0 < r.length <= max_burst
            outstanding[r.ttt] = r
            sent[r.ttt] = (0, r.offset)
            asked.append((r.offset, r.length))
        r2ts.clear()
        assert len(outstanding) <= max_r2t
        if not outstanding:
            break
        # The initiator may interleave the sequences of outstanding R2Ts.
        ttt = rng.choice(sorted(outstanding))
        r = outstanding[ttt]
        datasn, off = sent[ttt]
        end = min(off + chunk, r.offset + r.length)
        last = end == r.offset + r.length
        ready = seq.data_out(P.DataOut(final=last, itt=1, ttt=ttt, datasn=datasn, offset=off,
                                       data=data[off:end]))
        sent[ttt] = (datasn + 1, end)
        if last:
            del outstanding[ttt]
    # R2Ts ask for exactly what was not sent unsolicited, in order, once.
    pos = end_unsol
    for off, length in asked:
        assert off == pos
        pos += length
    assert pos == edtl
    assert task.error is None and bytes(task.buffer) == data
    if deliver_first:
        assert ready is task or edtl == imm
    else:
        assert ready is None and seq.deliver(cmd) is task
    seq.finish(task)
    assert seq.inflight == 0 and not seq.tasks


def test_a_transfer_in_one_piece_is_used_without_a_copy():
    seq, r2ts = _seq()
    data = bytearray(os.urandom(4096))
    cmd = _write(1, 4096, data)
    task = seq.arrival(cmd, 0)
    assert not r2ts and seq.deliver(cmd) is task and task.buffer is data
    # Solicited in one Data-Out: the same.
    seq.finish(task)
    task = seq.arrival(_write(2, 8192), 0)
    (r2t,) = r2ts
    payload = bytearray(os.urandom(8192))
    seq.data_out(P.DataOut(final=True, itt=2, ttt=r2t.ttt, offset=0, data=payload))
    assert task.buffer is payload


def test_buffer_is_taken_only_when_data_arrives():
    seq, r2ts = _seq()
    task = seq.arrival(_write(1, MAX_WRITE_BUFFER), 0)
    assert task.buffer is None and len(r2ts) == 1        # asked for, not allocated
    _answer(seq, r2ts[0], os.urandom(65536), chunk=8192)
    assert len(task.buffer) == MAX_WRITE_BUFFER and task.received == 65536


def test_budget_admits_writes_in_order():
    seq, r2ts = _seq(budget=100_000)
    a = seq.arrival(_write(1, 65536), 0)
    b = seq.arrival(_write(2, 65536), 0)
    assert [r.itt for r in r2ts] == [1] and seq.inflight == 65536
    assert list(seq.waiting) == [b]
    r2ts.clear()
    _answer(seq, P.R2T(itt=1, ttt=1, offset=0, length=65536), os.urandom(65536))
    seq.deliver(a.pdu)
    seq.finish(a)                                       # a executes: b gets its R2T
    assert [r.itt for r in r2ts] == [2] and seq.inflight == 65536 and not seq.waiting


def test_a_write_larger_than_a_budget_is_refused_without_buffering():
    from scsi_target.target.budget import SharedBudget
    for kw in ({"budget": 65535}, {"shared": SharedBudget(65535)}):
        r2ts: list = []
        seq = DataOutSequencer(SessionParams(), r2ts.append, TagAllocator(), **kw)
        cmd = _write(1, 65536, final=False)
        task = seq.arrival(cmd, 0)
        assert not r2ts and task.error.asc == S.INVALID_FIELD_IN_CDB and seq.inflight == 0
        assert seq.deliver(cmd) is task
        assert seq.arrival(_write(2, 65535), 0).reserved == 65535


@pytest.mark.parametrize("bad,asc", [
    ({"datasn": 3}, S.DATA_OFFSET_ERROR),
    ({"offset": 512}, S.DATA_OFFSET_ERROR),
    ({"ttt": 0x4242}, S.INVALID_TARGET_PORT_TRANSFER_TAG),
    ({"final": False}, S.DATA_PHASE_ERROR),
    ({"length": 1024, "final": True}, S.DATA_PHASE_ERROR),
    ({"length": 8192}, S.DATA_OFFSET_ERROR),
])
def test_sequence_errors_fail_the_task_and_free_its_budget(bad, asc):
    seq, r2ts = _seq()
    cmd = _write(1, 4096)
    task = seq.arrival(cmd, 0)
    (r2t,) = r2ts
    f = {"final": True, "ttt": r2t.ttt, "datasn": 0, "offset": 0, "length": 4096, **bad}
    length = f.pop("length")
    assert seq.data_out(P.DataOut(itt=1, data=os.urandom(length), **f)) is None
    assert task.error.key == S.SenseKey.ABORTED_COMMAND and task.error.asc == asc
    assert seq.inflight == 0 and task.buffer is None
    # Later data for it is discarded; its turn makes it ready to answer.
    assert seq.data_out(P.DataOut(final=True, itt=1, ttt=r2t.ttt, data=b"x" * 4096)) is None
    assert seq.deliver(cmd) is task


def test_f_bit_on_the_command_means_no_unsolicited_data_follows():
    seq, r2ts = _seq(initial_r2t=False, first_burst_length=65536)
    seq.arrival(_write(1, 65536, os.urandom(4096), final=True), 0)
    assert [(r.offset, r.length) for r in r2ts] == [(4096, 61440)]
    seq.arrival(_write(2, 65536, os.urandom(4096), final=False), 0)
    assert len(r2ts) == 1                       # waits for its unsolicited first burst


def test_unsolicited_data_beyond_first_burst_is_an_error():
    seq, _ = _seq(initial_r2t=False, first_burst_length=4096)
    cmd = _write(1, 16384, final=False)
    task = seq.arrival(cmd, 0)
    seq.deliver(cmd)
    assert seq.data_out(P.DataOut(final=True, itt=1, offset=0, data=os.urandom(8192))) is task
    assert task.error.asc == S.UNEXPECTED_UNSOLICITED_DATA


def test_refused_write_discards_its_data():
    seq, r2ts = _seq(initial_r2t=False)
    cmd = _write(1, MAX_WRITE_BUFFER + 512, final=False)
    task = seq.arrival(cmd, 0)
    assert not r2ts and task.error.asc == S.INVALID_FIELD_IN_CDB
    assert seq.data_out(P.DataOut(itt=1, offset=0, data=os.urandom(4096))) is None
    assert task.buffer is None and seq.deliver(cmd) is task


@pytest.mark.parametrize("pdu,params", [
    (P.ScsiCommand(read=True, itt=1, edtl=512, data=b"x" * 512), {}),
    (_write(1, 512, b"x" * 1024), {}),
    (_write(1, 512, b"x" * 512), {"immediate_data": False}),
])
def test_protocol_errors(pdu, params):
    seq, _ = _seq(**params)
    with pytest.raises(ProtocolError):
        seq.arrival(pdu, 0)


def test_itt_in_use_is_a_protocol_error():
    seq, _ = _seq()
    seq.arrival(P.ScsiCommand(itt=5, cdb=bytes(16)), 0)
    with pytest.raises(ProtocolError):
        seq.arrival(P.ScsiCommand(itt=5, cdb=bytes(16)), 0)


def test_abort_lun_and_drop_release_the_budget_and_wake_waiters():
    seq, r2ts = _seq(budget=70_000)
    seq.arrival(_write(1, 65536), 3)
    seq.arrival(_write(2, 65536), 4)
    seq.arrival(_write(3, 65536), 4)
    assert [r.itt for r in r2ts] == [1] and seq.inflight == 65536
    seq.abort_lun(3)
    assert [r.itt for r in r2ts] == [1, 2] and 1 not in seq.tasks
    seq.drop(2)
    assert [r.itt for r in r2ts] == [1, 2, 3]
    seq.abort_lun(None)
    assert not seq.tasks and seq.inflight == 0


def test_tags_skip_zero_and_the_reserved_tag():
    tags = TagAllocator()
    tags._next = 0x7FFFFFFF
    assert [tags() for _ in range(3)] == [0x7FFFFFFF, 1, 2]


def _pair(limit):
    from scsi_target.target.budget import SharedBudget
    shared = SharedBudget(limit)
    out = []
    for name in "ab":
        r2ts: list = []
        woken: list = []
        seq = DataOutSequencer(SessionParams(max_burst_length=65536), r2ts.append, TagAllocator(),
                               shared=shared, woken=lambda w=woken: w.append(1))
        out.append((seq, r2ts, woken))
    return shared, out


def test_target_budget_is_shared_and_a_release_wakes_the_other_connection():
    shared, [(a, ra, _), (b, rb, wb)] = _pair(100_000)
    ta = a.arrival(_write(1, 65536), 0)
    tb = b.arrival(_write(1, 65536), 0)
    assert len(ra) == 1 and not rb and shared.held == 65536 and tb.reserved == 0
    _answer(a, ra[0], os.urandom(65536))
    a.deliver(ta.pdu)
    a.finish(ta)                                  # a's write executes: b is admitted
    assert len(rb) == 1 and wb == [1] and shared.held == 65536 and tb.reserved == 65536


def test_a_closed_connection_gives_the_target_its_budget_back():
    shared, [(a, ra, _), (b, rb, wb)] = _pair(100_000)
    a.arrival(_write(1, 65536), 0)
    b.arrival(_write(1, 65536), 0)
    a.clear()
    assert len(rb) == 1 and wb == [1] and shared.held == 65536
    b.clear()
    assert shared.held == 0


def test_unsolicited_data_of_a_waiting_write_is_kept_and_lands_in_place():
    seq, r2ts = _seq(budget=100_000, initial_r2t=False, first_burst_length=16384,
                     max_burst_length=65536)
    first = seq.arrival(_write(1, 65536), 0)
    data = os.urandom(65536)
    cmd = _write(2, 65536, data[:4096], final=False)
    task = seq.arrival(cmd, 0)
    assert [r.itt for r in r2ts] == [1] and task.reserved == 0
    for i, off in enumerate(range(4096, 16384, 4096)):
        seq.data_out(P.DataOut(final=off == 12288, itt=2, datasn=i, offset=off,
                               data=data[off:off + 4096]))
    assert task.buffer is None and task.received == 16384     # held as it came, no buffer
    _answer(seq, r2ts[0], os.urandom(65536))
    seq.deliver(first.pdu)
    seq.finish(first)
    (r2t,) = r2ts[1:]
    assert (r2t.itt, r2t.offset, r2t.length) == (2, 16384, 49152)
    assert bytes(task.buffer[:16384]) == data[:16384]
    _answer(seq, r2t, data)
    assert seq.deliver(cmd) is task and bytes(task.buffer) == data


def test_unsolicited_data_completing_a_waiting_write_needs_no_budget():
    seq, r2ts = _seq(budget=65536, initial_r2t=False, first_burst_length=65536)
    seq.arrival(_write(1, 65536), 0)
    data = os.urandom(8192)
    cmd = _write(2, 8192, data[:4096], final=False)
    task = seq.arrival(cmd, 0)
    seq.data_out(P.DataOut(final=True, itt=2, offset=4096, data=data[4096:]))
    assert seq.deliver(cmd) is task and bytes(task.buffer) == data and task.reserved == 0


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.tuples(st.integers(0, 1), st.integers(1, 96 << 10)), min_size=1,
                      max_size=12),
       conn_budget=st.integers(96 << 10, 200 << 10), target_budget=st.integers(96 << 10, 300 << 10),
       seed=st.integers(0, 1 << 30))
def test_budgets_hold_at_every_step_and_every_write_completes(sizes, conn_budget, target_budget,
                                                              seed):
    from scsi_target.target.budget import SharedBudget
    rng = random.Random(seed)
    shared = SharedBudget(target_budget)
    conns = []
    for _ in range(2):
        r2ts: list = []
        seq = DataOutSequencer(SessionParams(max_burst_length=16384, max_outstanding_r2t=2),
                               r2ts.append, TagAllocator(), budget=conn_budget, shared=shared)
        conns.append((seq, r2ts))
    pending = list(enumerate(sizes))        # (itt, (connection, size)) still to send
    data = {itt: os.urandom(size) for itt, (_, size) in pending}
    tasks, outstanding, ready, done = {}, [], [], set()

    def collect():
        for c, (seq, r2ts) in enumerate(conns):
            outstanding.extend((c, r) for r in r2ts)
            r2ts.clear()
            assert 0 <= seq.inflight <= conn_budget
            assert seq.inflight == sum(t.reserved for t in seq.tasks.values())
        assert shared.held == sum(s.inflight for s, _ in conns) <= target_budget

    while pending or outstanding or ready:
        choices = (["send"] if pending else []) + (["data"] if outstanding else []) + \
            (["run"] if ready else [])
        what = rng.choice(choices)
        if what == "send":
            itt, (c, size) = pending.pop(0)
            cmd = _write(itt, size)
            tasks[itt] = (c, conns[c][0].arrival(cmd, 0))
            assert conns[c][0].deliver(cmd) is None
        elif what == "data":
            c, r = outstanding.pop(rng.randrange(len(outstanding)))
            t = _answer(conns[c][0], r, data[r.itt], chunk=rng.choice([4096, 16384]))
            if t is not None:
                ready.append((c, t))
        else:
            c, t = ready.pop(rng.randrange(len(ready)))
            conns[c][0].finish(t)
            assert bytes(t.buffer) == data[t.pdu.itt]
            done.add(t.pdu.itt)
        collect()
    assert done == set(data)                       # nothing left waiting: no deadlock
    assert shared.held == 0
