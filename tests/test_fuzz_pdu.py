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
