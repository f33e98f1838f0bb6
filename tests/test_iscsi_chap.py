"""CHAP-MD5 (RFC 1994 / RFC 7143 12.1.3): encodings, responses, mutual answers."""
import base64
import hashlib

import pytest
from hypothesis import given, strategies as st

from scsi_target.protocol import chap as C


def md5(ident: int, secret: bytes, challenge: bytes) -> bytes:
    return hashlib.md5(bytes([ident]) + secret + challenge).digest()


def test_response_vector():
    # Computed independently: MD5(0x01 || "secretsecret" || 00 01 .. 0f).
    challenge = bytes(range(16))
    expect = md5(1, b"secretsecret", challenge)
    assert C.chap_response(1, "secretsecret", challenge) == expect
    assert C.chap_response(1, b"secretsecret", challenge) == expect


def test_known_md5_value():
    # MD5(b"\x00" + b"" + b"") is the MD5 of one zero byte.
    assert C.chap_response(0, "", b"").hex() == "93b885adfe0da089cdf634904fd59f71"


@given(st.binary(min_size=1, max_size=C.MAX_BINARY), st.booleans())
def test_binary_round_trip(raw, b64):
    text = C.encode_binary(raw, b64=b64)
    assert text.startswith("0b" if b64 else "0x")
    assert C.decode_binary(text) == raw


def test_binary_forms():
    assert C.decode_binary("0xABcd") == b"\xab\xcd"
    assert C.decode_binary("0X0abc") == b"\x0a\xbc"
    assert C.decode_binary("0xabc") == b"\x0a\xbc"          # odd digit count: leading zero
    assert C.decode_binary("0b" + base64.b64encode(b"hi!").decode()) == b"hi!"


@pytest.mark.parametrize("bad", ["abcd", "0x", "0xzz", "0b!!!!", "0b", "0x" + "00" * 1025])
def test_binary_malformed(bad):
    with pytest.raises(C.ChapError):
        C.decode_binary(bad)


def test_algorithm_choice():
    assert C.choose_algorithm("5") == 5
    assert C.choose_algorithm("7,5") == 5
    assert C.choose_algorithm("7,6") is None


def test_challenge_is_random_and_verifies():
    a, b = C.Challenge.new(), C.Challenge.new()
    assert len(a.challenge) == C.CHALLENGE_LEN and a.challenge != b.challenge
    keys = dict(a.keys())
    assert keys["CHAP_A"] == "5" and int(keys["CHAP_I"]) == a.ident
    assert bytes.fromhex(keys["CHAP_C"][2:]) == a.challenge
    good = "0x" + md5(a.ident, b"pw-123456789", a.challenge).hex()
    assert a.verify("user", "pw-123456789", "user", good)
    assert a.verify("user", "pw-123456789", "user", good.upper().replace("0X", "0x"))
    b64 = "0b" + base64.b64encode(md5(a.ident, b"pw-123456789", a.challenge)).decode()
    assert a.verify("user", "pw-123456789", "user", b64)
    assert not a.verify("user", "pw-123456789", "other", good)
    assert not a.verify("user", "wrong-password", "user", good)
    assert not a.verify("user", "pw-123456789", "user", "0x00")
    assert not a.verify("user", "pw-123456789", "user", "garbage")


def test_mutual_answer():
    ours = C.Challenge(3, bytes(16))
    theirs = bytes(range(100, 132))
    ans = dict(C.mutual_answer(ours, "77", "0x" + theirs.hex(), "tgt", "tsecret12345"))
    assert ans["CHAP_N"] == "tgt"
    assert ans["CHAP_R"] == "0x" + md5(77, b"tsecret12345", theirs).hex()
    ans = dict(C.mutual_answer(ours, "0x4d", "0b" + base64.b64encode(theirs).decode(),
                               "tgt", "tsecret12345"))
    assert C.decode_binary(ans["CHAP_R"]) == md5(0x4D, b"tsecret12345", theirs)


def test_mutual_refuses_reflected_challenge_and_bad_id():
    ours = C.Challenge(3, bytes(range(16)))
    with pytest.raises(C.ChapError):
        C.mutual_answer(ours, "4", "0x" + bytes(range(16)).hex(), "t", "s")
    with pytest.raises(C.ChapError):
        C.mutual_answer(ours, "256", "0x0102", "t", "s")
    with pytest.raises(C.ChapError):
        C.mutual_answer(ours, "x", "0x0102", "t", "s")
