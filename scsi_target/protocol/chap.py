"""CHAP with MD5 (CHAP_A=5) for iSCSI login (RFC 1994, RFC 7143 section 12.1.3).

The target challenges, the initiator answers MD5(identifier || secret ||
challenge); with mutual CHAP the initiator sends its own CHAP_I/CHAP_C in
the same PDU as its answer and the target answers with CHAP_N/CHAP_R.
Binary values travel as "0x" hex or "0b" base64 (RFC 7143 6.1).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass

from .params import parse_number

CHAP_MD5 = 5
CHALLENGE_LEN = 16
# RFC 7143 12.1.3: binary CHAP values are at most 1024 bytes.
MAX_BINARY = 1024


class ChapError(ValueError):
    """A CHAP exchange that must end the login with an authentication failure."""


def encode_binary(value: bytes, *, b64: bool = False) -> str:
    if b64:
        return "0b" + base64.b64encode(value).decode("ascii")
    return "0x" + value.hex()


def decode_binary(text: str) -> bytes:
    """Bytes of a "0x..." or "0b..." binary value; ChapError if malformed."""
    prefix, body = text[:2].lower(), text[2:]
    try:
        if prefix == "0x":
            if len(body) % 2:
                body = "0" + body   # an odd digit count means a leading zero nibble
            raw = bytes.fromhex(body)
        elif prefix == "0b":
            raw = base64.b64decode(body, validate=True)
        else:
            raise ChapError(f"binary value without 0x/0b prefix: {text[:20]!r}")
    except (ValueError, binascii.Error):
        raise ChapError(f"malformed binary value {text[:20]!r}") from None
    if not raw or len(raw) > MAX_BINARY:
        raise ChapError(f"binary value of {len(raw)} bytes")
    return raw


def chap_response(ident: int, secret: str | bytes, challenge: bytes) -> bytes:
    """MD5(identifier || secret || challenge), RFC 1994 section 4.1."""
    s = secret.encode("utf-8") if isinstance(secret, str) else secret
    return hashlib.md5(bytes([ident]) + s + challenge).digest()


def choose_algorithm(offer: str) -> int | None:
    """CHAP_A offer is a list of algorithm numbers; we only do MD5."""
    for v in offer.split(","):
        if parse_number(v) == CHAP_MD5:
            return CHAP_MD5
    return None


@dataclass
class Challenge:
    """A CHAP challenge: identifier and challenge bytes."""
    ident: int
    challenge: bytes

    @classmethod
    def new(cls) -> "Challenge":
        return cls(os.urandom(1)[0], os.urandom(CHALLENGE_LEN))

    def keys(self) -> list[tuple[str, str]]:
        return [("CHAP_A", str(CHAP_MD5)), ("CHAP_I", str(self.ident)),
                ("CHAP_C", encode_binary(self.challenge))]

    def verify(self, username: str, secret: str, chap_n: str, chap_r: str) -> bool:
        """True when the initiator's name and response match (compare in constant time)."""
        try:
            got = decode_binary(chap_r)
        except ChapError:
            return False
        want = chap_response(self.ident, secret, self.challenge)
        name_ok = hmac.compare_digest(chap_n.encode("utf-8"), username.encode("utf-8"))
        resp_ok = hmac.compare_digest(got, want)
        return name_ok and resp_ok


def mutual_answer(ours: Challenge, chap_i: str, chap_c: str, username: str,
                  secret: str) -> list[tuple[str, str]]:
    """CHAP_N/CHAP_R answering the initiator's challenge (mutual CHAP).

    Refuses a challenge equal to the one we sent: echoing it back would let
    an attacker use us as an oracle for our own challenge (reflection).
    """
    ident = parse_number(chap_i)
    if ident is None or not 0 <= ident <= 255:
        raise ChapError(f"bad CHAP_I {chap_i!r}")
    challenge = decode_binary(chap_c)
    if hmac.compare_digest(challenge, ours.challenge):
        raise ChapError("initiator reflected our challenge")
    b64 = chap_c[:2].lower() == "0b"
    return [("CHAP_N", username),
            ("CHAP_R", encode_binary(chap_response(ident, secret, challenge), b64=b64))]
