"""Fuzz: login text (key=value) parsing and negotiation (RFC 7143 6, 13).

Text built from a grammar -- every key the target knows, unknown and
malformed keys, numbers out of range, huge, hex, negative; lists; empty and
over-long values; duplicates; bad UTF-8; missing '=' and NULs -- goes to the
login machine in one or several PDUs (the C bit), and after a login to the
Text negotiation of a full-feature session.  Every request gets a login
response (or Text response / Reject) whose text decodes; a login that
succeeds has parameters inside RFC 7143's ranges.  Raw bytes go to the text
decoder, which answers with pairs or TextError.  Corpus:
tests/fuzz_corpus/login_text/ (text segments).
"""
from __future__ import annotations

import random

import pytest

import fuzz_util as F
import iscsi_fuzz_seeds as S
from scsi_target.protocol import params as K
from scsi_target.protocol import pdu as P
from scsi_target.protocol.framing import PduReader
from scsi_target.target import connection as CONN
from scsi_target.target.login import LoginMachine
from scsi_target.target.registry import Portal

KEYS = list(K.KEYS) + ["X-com.example.thing", "X#vendor", "OFMarkInt", "IFMarkInt",
                       "Unknown", "maxburstlength", "", "Key With Space", "K" * 64]
NUMBERS = ["0", "1", "511", "512", "8192", "65536", "262144", "16777215", "16777216",
           "4294967296", "18446744073709551616", "-1", "+5", "0x", "0x200", "0X10000",
           "0x" + "f" * 40, "1" * 5000, "١٢٣", "1e3", " 512", "512 ", "0b101"]
WORDS = ["Yes", "No", "yes", "None", "CRC32C", "None,CRC32C", "CRC32C,None", "CHAP,None",
         "SRP", "Normal", "Discovery", "Reject", "Irrelevant", "NotUnderstood", "", ",",
         "None,,CRC32C", "A" * 255, "A" * 256, "B" * 8192, S.TGT, S.INI, "All", "5", "7,5",
         "0x" + "00" * 16, "0b" + "1" * 100, "iqn.bad name"]


def _plausible(rng: random.Random, key: str) -> str:
    """A value of the right kind for ``key``, often at the edge of its range."""
    d = K.KEYS.get(key)
    if d is None:
        return rng.choice(WORDS)
    if d.kind in (K.Kind.MIN, K.Kind.MAX) or (d.kind == K.Kind.DECLARE and d.hi):
        return str(rng.choice((d.lo, d.hi, d.lo + 1, d.hi - 1, (d.lo + d.hi) // 2,
                               rng.randint(d.lo, d.hi))))
    if d.kind in (K.Kind.AND, K.Kind.OR):
        return rng.choice(("Yes", "No"))
    if d.kind == K.Kind.LIST:
        vals = list(d.values) + ["Bogus"]
        return ",".join(rng.sample(vals, rng.randint(1, len(vals))))
    return rng.choice(WORDS)


def _value(rng: random.Random, key: str) -> str:
    r = rng.random()
    if r < 0.6:
        return _plausible(rng, key)
    return rng.choice(NUMBERS) if r < 0.8 else rng.choice(WORDS)


def text(rng: random.Random) -> bytes:
    """One text segment from the grammar, sometimes broken at the byte level."""
    pairs = []
    if rng.random() < 0.9:
        pairs += [("InitiatorName", rng.choice([S.INI, S.INI, S.INI.upper(), "", "iqn.x"]))]
    if rng.random() < 0.85:
        pairs += [("TargetName", rng.choice([S.TGT, S.TGT, S.CHAP_TGT,
                                              "iqn.2026-11.org.nowhere:x"]))]
    keys = KEYS if rng.random() < 0.3 else list(K.KEYS)   # now and then keys we don't know
    for _ in range(rng.randint(0, 12)):
        key = rng.choice(keys)
        pairs.append((key, _value(rng, key)))
    rng.shuffle(pairs)
    if pairs and rng.random() < 0.05:
        pairs.append(rng.choice(pairs))                    # a key twice
    if rng.random() < 0.6:                                 # each key once, as initiators do
        pairs = list(dict(pairs).items())
    raw = b"".join(k.encode() + b"=" + v.encode() + b"\0" for k, v in pairs)
    r = rng.random() * 2
    if r < 0.05:
        raw = raw.rstrip(b"\0")                            # no terminating NUL
    elif r < 0.1:
        raw = raw.replace(b"=", b"", 1)                    # a pair without '='
    elif r < 0.15:
        raw += b"\xff\xfe=\xc3\x28\0"                      # not UTF-8
    elif r < 0.2:
        raw = raw.replace(b"\0", b"\0\0", 1)               # an empty pair
    return raw


def _check_params(p: K.SessionParams) -> None:
    assert 512 <= p.max_recv_data_segment_length <= 2**24 - 1
    assert 512 <= p.max_xmit_data_segment_length <= 2**24 - 1
    assert 512 <= p.first_burst_length <= p.max_burst_length <= 2**24 - 1
    assert 1 <= p.max_outstanding_r2t <= 65535 and 1 <= p.max_connections <= 65535
    assert 0 <= p.error_recovery_level <= 2
    assert 0 <= p.default_time2wait <= 3600 and 0 <= p.default_time2retain <= 3600


def _login(rng: random.Random, segments: list[bytes]) -> None:
    m = LoginMachine(S.registry(), None, Portal("127.0.0.1", 3260), max_recv_dsl=65536,
                     tsih_exists=lambda tsih: False)
    csg = rng.choice((0, 1))
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        req = P.LoginRequest(transit=last and rng.random() < 0.8, cont=not last, csg=csg,
                             nsg=rng.choice((1, 3)) if csg == 0 else 3, isid=S.ISID, itt=1,
                             immediate=True, data=seg)
        if not req.transit:
            req.nsg = 0
        resp = m.receive(req)
        assert isinstance(resp, P.LoginResponse)
        K.decode_text(resp.data)                           # what we answer is valid text
        if m.done or m.failed:
            break
    if m.done and not m.failed and m.result is not None:
        _check_params(m.result.params)


def _segments(rng: random.Random, raw: bytes) -> list[bytes]:
    if rng.random() < 0.3 and len(raw) > 1:               # a pair straddling PDUs (C bit)
        cut = rng.randrange(1, len(raw))
        return [raw[:cut], raw[cut:]]
    return [raw]


@pytest.mark.parametrize("name, data", F.cases("login_text"))
def test_login_text_corpus(name, data):
    rng = random.Random(name)
    for _ in range(5):
        _login(rng, _segments(rng, data))
    _decode_only(data)


def test_login_text_grammar():
    rng = random.Random(0x7E47)
    for _ in range(F.count(1500)):
        _login(rng, _segments(rng, text(rng)))


def test_login_text_grammar_two_stages():
    """Security stage, then operational stage, each with grammar text."""
    rng = random.Random(0x5EC)
    for _ in range(F.count(500)):
        m = LoginMachine(S.registry(), None, Portal("127.0.0.1", 3260), max_recv_dsl=65536,
                         tsih_exists=lambda tsih: False)
        first = K.encode_text([("InitiatorName", S.INI), ("TargetName", S.TGT),
                               ("AuthMethod", rng.choice(["None", "CHAP,None", "CHAP"]))]) \
            + text(rng)
        for csg, nsg, data in ((0, 1, first), (1, 3, text(rng))):
            resp = m.receive(P.LoginRequest(transit=True, csg=csg, nsg=nsg, isid=S.ISID, itt=1,
                                            immediate=True, data=data))
            K.decode_text(resp.data)
            if m.done or m.failed:
                break
        if m.done and not m.failed and m.result is not None:
            _check_params(m.result.params)


def _decode_only(data: bytes) -> None:
    try:
        pairs = K.decode_text(data)
    except K.TextError as e:
        assert str(e)
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in pairs)


def test_text_decoder_bytes():
    rng = random.Random(0xDEC0)
    seeds = [text(rng) for _ in range(50)]
    for data in F.mutants(rng, seeds, F.count(3000)):
        _decode_only(data)


def test_text_negotiation_in_full_feature_phase():
    """Text requests (renegotiation, SendTargets) with grammar text on a logged-in session."""
    rng = random.Random(0x7E77)
    seed = S.operational_only_session()
    login = seed[:S.login_length(seed)]
    for _ in range(F.count(150)):
        conn = S.connection()
        conn.receive_data(login)
        out = PduReader(max_data=1 << 24)
        cmdsn = 0
        for i in range(rng.randint(1, 3)):
            raw = text(rng)
            final = rng.random() < 0.8
            conn.receive_data(S.wire([P.TextRequest(final=final, cont=not final, itt=100 + i,
                                                    cmdsn=cmdsn, data=raw)]))
            cmdsn += 1
            if conn.closing:
                break
        for b in conn.take_output():
            if not isinstance(b, CONN.AfterSend):
                out.feed(bytes(b))
        while (p := out.next_pdu()) is not None:
            if isinstance(p, P.TextResponse):
                K.decode_text(p.data)
        if not conn.closing:
            _check_params(conn.params)
        conn.connection_lost()
