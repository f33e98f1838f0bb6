"""The sans-I/O target connection in full feature phase, PDU by PDU (no sockets)."""
from __future__ import annotations

import struct

import pytest

from scsi_target.target import connection as CONN
from scsi_target.target import budget as BUDGET
from scsi_target.protocol import pdu as P
from scsi_target.protocol.params import SessionParams
from scsi_target.protocol.framing import PduReader, encode_pdu
from scsi_target.target.session import Session, SessionTable
from scsi_target.scsi.disk import DiskLU
from scsi_target.scsi.lun import LunMap
from scsi_target.target.registry import Portal, TargetDef, TargetRegistry
from volume.memstore import MemoryStore

IQN = "iqn.2026-11.org.pyscsi.test:conn"


def _logged_in(max_burst=256 << 10, initial_r2t=True) -> CONN.TargetConnection:
    luns = LunMap(IQN)
    luns.add(0, DiskLU(MemoryStore(64 << 20), 512))
    reg = TargetRegistry()
    reg.add(TargetDef(IQN, luns))
    sessions = SessionTable()
    c = CONN.TargetConnection(reg, sessions, Portal())
    # Skip login: the parameters below are what it would have negotiated.
    c.session = Session(tsih=1, initiator_name="iqn.2026-11.test:i", isid=bytes(6),
                        target=reg.get(IQN), discovery=False, exp_cmdsn=0)
    c.session.connection = c
    sessions.add(c.session)
    c.start_full_feature(_params(max_burst, initial_r2t))
    return c


def _params(max_burst=256 << 10, initial_r2t=True) -> SessionParams:
    return SessionParams(max_recv_data_segment_length=256 << 10,
                         max_xmit_data_segment_length=256 << 10, max_burst_length=max_burst,
                         first_burst_length=64 << 10, initial_r2t=initial_r2t,
                         immediate_data=True, max_outstanding_r2t=1)


def _send(c, pdu) -> list:
    c.receive_data(b"".join(bytes(b) for b in encode_pdu(pdu)))
    reader = PduReader(max_data=1 << 24)
    reader.feed(b"".join(bytes(b) for b in c.take_output() if not isinstance(b, CONN.AfterSend)))
    out = []
    while (p := reader.next_pdu()) is not None:
        out.append(p)
    return out


def _write10(itt, cmdsn, lba, nbytes) -> P.ScsiCommand:
    cdb = struct.pack(">BBIBHB", 0x2A, 0, lba, 0, nbytes // 512, 0) + bytes(6)
    return P.ScsiCommand(write=True, itt=itt, edtl=nbytes, cmdsn=cmdsn, cdb=cdb)


def _answer_r2ts(c, r2ts, fill: int) -> list:
    out = []
    for r in r2ts:
        out += _send(c, P.DataOut(final=True, itt=r.itt, ttt=r.ttt, datasn=0, offset=r.offset,
                                  data=bytes([fill]) * r.length))
    return out


def test_r2t_budget_holds_writes_back_until_earlier_ones_complete(monkeypatch):
    monkeypatch.setattr(BUDGET, "CONNECTION_WRITE_BUDGET", 1 << 20)
    c = _logged_in()
    _send(c, P.ScsiCommand(itt=99, cmdsn=0, cdb=bytes(16)))  # TUR: the power-on UA
    first = _send(c, _write10(1, 1, 0, 768 << 10))
    second = _send(c, _write10(2, 2, 2048, 768 << 10))
    assert [type(p) for p in first] == [P.R2T] and not second   # second waits for budget
    # Data for the first write (R2T by R2T) completes it; then the second is admitted.
    out, r2ts = [], first
    while r2ts:
        got = _answer_r2ts(c, r2ts, 0xA1)
        out += got
        r2ts = [p for p in got if isinstance(p, P.R2T) and p.itt == 1]
    responses = [p for p in out if isinstance(p, P.ScsiResponse)]
    assert [(p.itt, p.status) for p in responses] == [(1, 0)]
    assert any(isinstance(p, P.R2T) and p.itt == 2 for p in out)
    assert c.dataout.inflight == 768 << 10


def test_write_larger_than_any_lu_accepts_is_refused_without_buffering():
    c = _logged_in()
    _send(c, P.ScsiCommand(itt=99, cmdsn=0, cdb=bytes(16)))
    cdb = struct.pack(">BBQIBB", 0x8A, 0, 0, (1 << 30) // 512, 0, 0)
    out = _send(c, P.ScsiCommand(write=True, itt=5, edtl=1 << 30, cmdsn=1, cdb=cdb))
    assert len(out) == 1 and isinstance(out[0], P.ScsiResponse)
    assert out[0].status == 2 and out[0].data[2 + 2] & 0x0F == 0x05   # ILLEGAL REQUEST
    assert c.dataout.inflight == 0 and not c.dataout.tasks


def test_out_of_window_cmdsn_is_ignored_and_queued_ones_run_in_order():
    c = _logged_in()
    assert _send(c, P.ScsiCommand(itt=1, cmdsn=500, cdb=bytes(16))) == []   # beyond MaxCmdSN
    assert _send(c, P.ScsiCommand(itt=3, cmdsn=2, cdb=bytes(16))) == []     # queued (gap at 0, 1)
    assert _send(c, P.ScsiCommand(itt=2, cmdsn=1, cdb=bytes(16))) == []
    out = _send(c, P.ScsiCommand(itt=4, cmdsn=0, cdb=bytes(16)))
    assert [p.itt for p in out] == [4, 2, 3]
    assert [p.statsn for p in out] == sorted(p.statsn for p in out)


@pytest.mark.parametrize("bad", ["datasn", "offset", "ttt"])
def test_data_out_sequence_errors_end_the_command_not_the_connection(bad):
    c = _logged_in()
    _send(c, P.ScsiCommand(itt=99, cmdsn=0, cdb=bytes(16)))
    (r2t,) = _send(c, _write10(1, 1, 0, 4096))
    fields = {"datasn": 0, "offset": 0, "ttt": r2t.ttt, bad: {"datasn": 27, "offset": 512,
                                                               "ttt": 0x1234}[bad]}
    out = _send(c, P.DataOut(final=True, itt=1, data=b"x" * 4096, **fields))
    assert len(out) == 1 and out[0].status == 2 and out[0].data[2 + 2] & 0x0F == 0x0B
    assert not c.closing
    assert _send(c, P.ScsiCommand(itt=7, cmdsn=2, cdb=bytes(16)))[0].status == 0


def test_lun_reset_clears_pending_writes_of_other_sessions_too():
    a = _logged_in()
    # A second session on the same target, as another initiator.
    b = CONN.TargetConnection(a.registry, a.sessions, Portal())
    b.session = Session(tsih=2, initiator_name="iqn.2026-11.test:other", isid=bytes(6),
                        target=a.session.target, discovery=False, exp_cmdsn=0)
    b.session.connection = b
    a.sessions.add(b.session)
    b.start_full_feature(_params())
    _send(b, P.ScsiCommand(itt=99, cmdsn=0, cdb=bytes(16)))
    (r2t,) = _send(b, _write10(1, 1, 0, 4096))           # b's write waits for its data
    assert 1 in b.dataout.tasks
    out = _send(a, P.TaskMgmtRequest(immediate=True, function=P.TmfFunction.LOGICAL_UNIT_RESET,
                                     itt=50, cmdsn=0))
    assert [(type(p), p.response) for p in out] == [(P.TaskMgmtResponse, 0)]
    assert not b.dataout.tasks and b.dataout.inflight == 0
    # b's late data is discarded; its next command reports the reset.
    assert _answer_r2ts(b, [r2t], 0x42) == []
    rsp = _send(b, P.ScsiCommand(itt=2, cmdsn=2, cdb=bytes(16)))
    assert rsp[0].status == 2 and rsp[0].data[2 + 2] & 0x0F == 0x06     # UNIT ATTENTION


def _tmf(c, function, *, lun=0, rtt=P.RESERVED_TAG, refcmdsn=0, itt=60):
    from scsi_target.scsi.lunaddr import encode_lun
    out = _send(c, P.TaskMgmtRequest(immediate=True, function=function, itt=itt, rtt=rtt,
                                     refcmdsn=refcmdsn, cmdsn=0,
                                     lun=int.from_bytes(encode_lun(lun), "big")))
    (rsp,) = [p for p in out if isinstance(p, P.TaskMgmtResponse)]
    return rsp.response


@pytest.mark.parametrize("function", [P.TmfFunction.ABORT_TASK_SET, P.TmfFunction.CLEAR_TASK_SET])
def test_abort_and_clear_task_set_drop_waiting_writes(function):
    c = _logged_in()
    _send(c, P.ScsiCommand(itt=99, cmdsn=0, cdb=bytes(16)))
    (r2t,) = _send(c, _write10(1, 1, 0, 4096))
    queued = _send(c, _write10(2, 3, 8, 4096))      # CmdSN 3: queued behind CmdSN 2
    assert [(type(p), p.itt) for p in queued] == [(P.R2T, 2)]   # its data may come already
    assert _tmf(c, function) == P.TmfResponse.COMPLETE
    assert not c.dataout.tasks
    assert _answer_r2ts(c, [r2t], 0x11) == []                       # late data discarded


def test_abort_task_of_a_queued_command_and_of_an_unknown_one():
    c = _logged_in()
    _send(c, P.ScsiCommand(itt=99, cmdsn=0, cdb=bytes(16)))
    assert _send(c, P.ScsiCommand(itt=5, cmdsn=2, cdb=bytes(16))) == []   # waits for CmdSN 1
    assert _tmf(c, P.TmfFunction.ABORT_TASK, rtt=5, refcmdsn=2) == P.TmfResponse.COMPLETE
    out = _send(c, P.ScsiCommand(itt=6, cmdsn=1, cdb=bytes(16)))
    assert [p.itt for p in out] == [6]                                    # 5 never answers
    assert _tmf(c, P.TmfFunction.ABORT_TASK, rtt=77, refcmdsn=0) == \
        P.TmfResponse.TASK_DOES_NOT_EXIST                                 # long gone
    assert _tmf(c, P.TmfFunction.ABORT_TASK, rtt=78, refcmdsn=10) == \
        P.TmfResponse.COMPLETE                                            # not yet arrived


@pytest.mark.parametrize("function,lun,expected", [
    (P.TmfFunction.LOGICAL_UNIT_RESET, 7, P.TmfResponse.LUN_DOES_NOT_EXIST),
    (P.TmfFunction.TASK_REASSIGN, 0, P.TmfResponse.REASSIGNMENT_NOT_SUPPORTED),
    (P.TmfFunction.CLEAR_ACA, 0, P.TmfResponse.NOT_SUPPORTED),
    (0x7E, 0, P.TmfResponse.NOT_SUPPORTED),
    (P.TmfFunction.TARGET_WARM_RESET, 0, P.TmfResponse.COMPLETE),
])
def test_task_management_answers(function, lun, expected):
    c = _logged_in()
    assert _tmf(c, function, lun=lun) == expected
    assert not c.closing


def test_target_cold_reset_answers_then_closes():
    c = _logged_in()
    assert _tmf(c, P.TmfFunction.TARGET_COLD_RESET) == P.TmfResponse.COMPLETE
    assert c.closing


def _read10(itt, cmdsn, lba, nbytes) -> P.ScsiCommand:
    cdb = struct.pack(">BBIBHB", 0x28, 0, lba, 0, nbytes // 512, 0) + bytes(6)
    return P.ScsiCommand(read=True, itt=itt, edtl=nbytes, cmdsn=cmdsn, cdb=cdb)


def _text(itt, cmdsn, pairs, ttt=P.RESERVED_TAG) -> P.TextRequest:
    from scsi_target.protocol.params import encode_text
    return P.TextRequest(final=True, itt=itt, ttt=ttt, cmdsn=cmdsn,
                         data=encode_text(pairs) if pairs else b"")


def test_one_parameters_record_a_text_renegotiation_applies_to_the_next_read():
    import os
    c = _logged_in()
    assert c.params is c.dataout.params is c.datain.params
    _send(c, P.ScsiCommand(itt=99, cmdsn=0, cdb=bytes(16)))
    data = os.urandom(65536)
    for r2t in _send(c, _write10(1, 1, 0, 65536)):
        _send(c, P.DataOut(final=True, itt=1, ttt=r2t.ttt, offset=r2t.offset,
                           data=data[r2t.offset:r2t.offset + r2t.length]))
    assert [len(p.data) for p in _send(c, _read10(2, 2, 0, 65536))] == [65536]
    (rsp,) = _send(c, _text(3, 3, [("MaxRecvDataSegmentLength", "8192")]))
    assert rsp.final and c.text.params is c.params
    assert c.params.max_xmit_data_segment_length == 8192
    dins = _send(c, _read10(4, 4, 0, 65536))
    assert [len(p.data) for p in dins] == [8192] * 8
    assert b"".join(bytes(p.data) for p in dins) == data


def test_r2t_ping_and_text_tags_never_collide():
    c = _logged_in()
    c.registry.portals = [Portal("127.0.0.1", 3260 + i) for i in range(200)]
    c.params.max_xmit_data_segment_length = 512
    _send(c, P.ScsiCommand(itt=99, cmdsn=0, cdb=bytes(16)))
    (r2t,) = _send(c, _write10(1, 1, 0, 4096))
    (txt,) = _send(c, _text(2, 2, [("SendTargets", "")]))
    assert txt.cont and txt.ttt != P.RESERVED_TAG
    c.keepalive(100.0, interval=1, timeout=10, login_timeout=10)   # starts the clock
    c.keepalive(102.0, interval=1, timeout=10, login_timeout=10)
    reader = PduReader()
    reader.feed(b"".join(bytes(b) for b in c.take_output()))
    ping = reader.next_pdu()
    assert isinstance(ping, P.NopIn) and ping.itt == P.RESERVED_TAG
    assert len({r2t.ttt, txt.ttt, ping.ttt}) == 3


def test_write_intents_are_committed_before_the_batch_responses_are_taken():
    c = _logged_in()
    seen = []
    c.session.target.luns.commit = lambda: seen.append(len(c.outbox))
    _send(c, P.ScsiCommand(itt=99, cmdsn=0, cdb=bytes(16)))
    out = _send(c, P.ScsiCommand(write=True, itt=1, edtl=512, cmdsn=1, data=bytes(range(256)) * 2,
                                 cdb=struct.pack(">BBIBHB", 0x2A, 0, 0, 0, 1, 0) + bytes(6)))
    assert [p.status for p in out] == [0]
    assert seen[-1] > 0      # ran with the response produced and not yet handed out


def test_reads_wait_while_the_send_queue_is_over_its_bound():
    import os
    c = _logged_in()
    c.send_bound = 100_000
    _send(c, P.ScsiCommand(itt=99, cmdsn=0, cdb=bytes(16)))
    data = os.urandom(65536)
    wrote = _send(c, P.ScsiCommand(write=True, itt=1, edtl=65536, cmdsn=1, data=data,
                                   cdb=struct.pack(">BBIBHB", 0x2A, 0, 0, 0, 128, 0) + bytes(6)))
    assert [p.status for p in wrote] == [0]
    burst = b"".join(b"".join(bytes(b) for b in encode_pdu(_read10(10 + i, 2 + i, 0, 65536)))
                     for i in range(4))
    c.receive_data(burst)
    out = [p for p in _decode(c.take_output())]
    assert [p.itt for p in out] == [10, 11]            # 2 x 64 KiB reach the bound
    assert bytes(out[0].data) == data
    assert c.has_input and not c.blocked               # the driver took the output ...
    c.unsent = 131072                                  # ... and the kernel took none of it
    assert c.blocked
    c.receive_data(b"")
    assert c.take_output() == []
    c.unsent = 0                                       # drained
    c.receive_data(b"")
    assert [p.itt for p in _decode(c.take_output())] == [12, 13] and not c.has_input


def _decode(bufs) -> list:
    reader = PduReader(max_data=1 << 24)
    reader.feed(b"".join(bytes(b) for b in bufs if not isinstance(b, CONN.AfterSend)))
    out = []
    while (p := reader.next_pdu()) is not None:
        out.append(p)
    return out
