"""Fuzz: the target's PDU reader and codec, bytes to PDUs, login phase and full feature phase.

Bytes from an initiator -- valid sessions mutated (bit flips, cut, doubled
runs, garbage), cut into random pieces the way TCP delivers them -- go into
the sans-I/O TargetConnection.  It never raises; everything it answers is
well-framed PDUs our own reader decodes (with the digests it negotiated);
and it holds no more than one PDU's worth of unparsed input.  Seeds:
tests/iscsi_fuzz_seeds.py; corpus: tests/fuzz_corpus/pdu/.
"""
from __future__ import annotations

import random

import pytest

import fuzz_util as F
import iscsi_fuzz_seeds as S
from scsi_target.protocol import pdu as P
from scsi_target.protocol.framing import PduReader
from scsi_target.target import connection as CONN

SEEDS = S.sessions()
# Unparsed input a connection may hold: one header + AHS + the largest data
# segment it accepts (+ digests); anything more would be reading ahead unboundedly.
MAX_HELD = 48 + 1020 + 4 + (1 << 24) + 8


def _run(rng: random.Random, data: bytes) -> list:
    conn = S.connection()
    out_reader = PduReader(max_data=1 << 24)
    answers = []
    for piece in F.chunks(rng, data):
        conn.receive_data(piece)
        for b in conn.take_output():
            if isinstance(b, CONN.AfterSend):
                b.callback()
                continue
            out_reader.feed(bytes(b))
        # Digests in force from the first PDU after the login response (RFC 7143 13.1).
        while (p := out_reader.next_pdu()) is not None:
            answers.append(p)
            if isinstance(p, P.ScsiResponse) and p.status == 2 and len(p.data) > 2:
                # HARDWARE ERROR / INTERNAL TARGET FAILURE is LunMap's guard catching a crash.
                sense = bytes(p.data[2:])
                assert not (sense[2] & 0x0F == 0x04 and sense[12] == 0x44), sense.hex()
            if isinstance(p, P.LoginResponse) and p.transit and p.nsg == 3 and \
                    p.status_class == 0:
                out_reader.header_digest = conn.params.header_digest
                out_reader.data_digest = conn.params.data_digest
        assert conn.reader.buffered <= MAX_HELD
        if conn.closing:
            break
    assert out_reader.buffered == 0, "a partial PDU was sent"
    conn.connection_lost()
    return answers


def test_seed_sessions_log_in_and_get_answers():
    rng = random.Random(0)
    for seed, kinds in zip(SEEDS, ("normal", "normal", "digests", "discovery", "chap")):
        answers = _run(rng, seed)
        logins = [a for a in answers if isinstance(a, P.LoginResponse)]
        assert logins and logins[0].status_class == 0, kinds
        if kinds in ("normal", "digests"):
            assert any(isinstance(a, P.ScsiResponse) for a in answers), kinds
            assert any(isinstance(a, P.LogoutResponse) for a in answers), kinds
            datain = [a for a in answers if isinstance(a, P.DataIn) and a.itt == 14]
            assert datain, kinds                       # the READ got its data
        if kinds == "discovery":
            assert any(isinstance(a, P.TextResponse) and b"TargetName=" + S.TGT.encode()
                       in bytes(a.data) for a in answers)
        if kinds == "chap":                            # the wrong response fails the login
            assert logins[-1].status_class == 2


@pytest.mark.parametrize("name, data", F.cases("pdu"))
def test_pdu_corpus(name, data):
    _run(random.Random(name), data)


def test_pdu_mutants_login_phase():
    rng = random.Random(0x1091)
    for data in F.mutants(rng, SEEDS, F.count(1200)):
        _run(rng, data)


def test_pdu_mutants_full_feature_phase():
    """The login stays intact, the session's PDUs take the damage."""
    rng = random.Random(0xFFF0)
    for seed in SEEDS:
        keep = S.login_length(seed)
        for data in F.mutants(rng, [seed], F.count(250), keep=keep, random_share=0):
            _run(rng, data)


def test_random_bytes_after_login():
    rng = random.Random(0xB17E)
    for seed in SEEDS[:3]:
        login = seed[:S.login_length(seed)]
        for _ in range(F.count(100)):
            _run(rng, login + rng.randbytes(rng.randint(1, 300)))


# ----------------------------------------------------- R2T dialogue (solicited data)
def _r2t_login() -> bytes:
    keys = [(k, {"InitialR2T": "Yes", "ImmediateData": "Yes", "MaxBurstLength": "65536",
                 "FirstBurstLength": "16384", "MaxOutstandingR2T": "2"}.get(k, v))
            for k, v in S.OP_KEYS]
    return S.wire([P.LoginRequest(transit=True, csg=1, nsg=3, isid=S.ISID, itt=1, immediate=True,
                                  data=S.K.encode_text([("InitiatorName", S.INI),
                                                        ("TargetName", S.TGT)] + keys))])


def _perturb(rng: random.Random, r2t: P.R2T) -> list:
    """Data-Out answering ``r2t``: usually right, sometimes wrong in one way."""
    pieces, off, datasn = [], r2t.offset, 0
    end = r2t.offset + r2t.length
    while off < end:
        n = min(rng.choice((512, 4096, 8192, 65536)), end - off)
        pieces.append(P.DataOut(final=off + n == end, itt=r2t.itt, ttt=r2t.ttt, datasn=datasn,
                                offset=off, data=rng.randbytes(n)))
        off += n
        datasn += 1
    if rng.random() < 0.35 and pieces:
        p = rng.choice(pieces)
        what = rng.randrange(8)
        if what == 0:
            p.ttt ^= 1 + rng.randrange(0xFFFF)
        elif what == 1:
            p.offset = rng.choice((0, p.offset + 1, 0xFFFFFFF0, end))
        elif what == 2:
            p.datasn = (p.datasn + rng.choice((1, -1, 1000))) % (1 << 32)
        elif what == 3:
            p.data = bytes(p.data) + b"extra"
        elif what == 4:
            p.data = bytes(p.data)[:-1]
        elif what == 5:
            p.final = not p.final
        elif what == 6:
            p.itt ^= 0x5A5A
        else:
            pieces.insert(rng.randrange(len(pieces) + 1), p)       # sent twice
    if rng.random() < 0.1:
        rng.shuffle(pieces)
    if rng.random() < 0.05:
        pieces = pieces[:rng.randrange(len(pieces) + 1)]          # never finished
    return pieces


def test_r2t_dialogue_with_a_sloppy_initiator():
    """Writes that need R2Ts, answered late, wrongly or not at all; TMFs in between.

    Beyond never raising: once the connection is gone the target's write
    budget is whole again (no reservation leaks from any of these paths).
    """
    rng = random.Random(0x0B2B)
    login = _r2t_login()
    for _ in range(F.count(60)):
        conn = S.connection()
        conn.receive_data(login)
        out = PduReader(max_data=1 << 24)
        out.feed(b"".join(bytes(b) for b in conn.take_output()
                          if not isinstance(b, CONN.AfterSend)))
        assert isinstance(out.next_pdu(), P.LoginResponse) and conn.session is not None
        budget = conn.sessions.write_budget(conn.session.target)
        cmdsn, itt, pending = 0, 100, []
        for _ in range(rng.randint(5, 25)):
            act = rng.random()
            if act < 0.45:
                blocks = rng.choice((1, 32, 64, 200, 512))
                edtl = blocks * 512 if rng.random() < 0.9 else rng.randint(0, 1 << 20)
                lba = rng.randrange(0, 2048 - blocks)
                imm = rng.randbytes(min(edtl, rng.choice((0, 512, 16384))))
                pdus = [P.ScsiCommand(itt=itt, cmdsn=cmdsn, write=True, edtl=edtl,
                                      final=True, data=imm,
                                      cdb=bytes([0x2A, 0]) + lba.to_bytes(4, "big") + b"\0"
                                      + blocks.to_bytes(2, "big") + bytes(7))]
                itt, cmdsn = itt + 1, cmdsn + 1
            elif act < 0.6:
                pdus = [P.ScsiCommand(itt=itt, cmdsn=cmdsn, read=True, edtl=8192,
                                      cdb=bytes([0x28, 0, 0, 0, 0, 8, 0, 0, 16, 0]) + bytes(6))]
                itt, cmdsn = itt + 1, cmdsn + 1
            elif act < 0.7:
                fn = rng.choice((1, 2, 5, 6))              # abort task/task set, LU/target reset
                pdus = [P.TaskMgmtRequest(function=fn, itt=itt, rtt=rng.randrange(100, itt + 1),
                                          refcmdsn=max(0, cmdsn - 1), cmdsn=cmdsn,
                                          immediate=True)]
                itt += 1
            else:
                rng.shuffle(pending)
                pdus = []
                for r2t in pending[:rng.randint(1, 3)]:
                    pdus += _perturb(rng, r2t)
                pending = pending[3:]
            conn.receive_data(S.wire(pdus))
            out.feed(b"".join(bytes(b) for b in conn.take_output()
                              if not isinstance(b, CONN.AfterSend)))
            while (p := out.next_pdu()) is not None:
                if isinstance(p, P.R2T):
                    assert 0 < p.length <= 65536
                    pending.append(p)
            assert budget.held <= budget.limit
            if conn.closing:
                break
        conn.connection_lost()
        assert budget.held == 0, "write budget not returned"
