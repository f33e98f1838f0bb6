"""The initiator's side of login (RFC 7143 6.3, 11.12-11.13), sans I/O.

:class:`InitiatorLogin` produces Login Requests and consumes Login Responses;
the asyncio client only moves them over the socket.  It proposes the
operational keys in :class:`LoginOptions`, checks every answer against the
rules of :mod:`..protocol.params` (an answer may never be "better" than our offer),
answers the target's own offers, and runs CHAP (one-way or mutual) with the
helpers of :mod:`..protocol.chap`.  The outcome is a :class:`GrantedSession` whose
``params`` use the target connection's field names: ``max_recv_...`` is what
we accept, ``max_xmit_...`` what the target accepts from us.
"""
from __future__ import annotations

import os

from ..record import field, record
from ..protocol import pdu as P
from .errors import LoginError, NegotiationError
from ..protocol.params import (IRRELEVANT, KEYS, NOT_UNDERSTOOD, REJECT, Kind, SessionParams, TextError,
                     decode_text, encode_text, fmt_bool, negotiate_list, negotiate_value,
                     parse_bool, parse_number)

CSG_SECURITY, CSG_OPERATIONAL, CSG_FFP = 0, 1, 3
# A login that needs more round trips than this is going in circles.
MAX_ROUNDS = 32
MAX_LOGIN_TEXT = 64 * 1024

DEFAULT_INITIATOR = "iqn.2026-01.org.scsi-target:initiator"


class _ChapOnFirstUse:
    """The CHAP helpers (hashlib, hmac), imported when a login first runs CHAP: most
    sessions authenticate with AuthMethod=None, and a short-lived program's start-up
    should not pay for them."""

    def __getattr__(self, name):
        global chap
        from ..protocol import chap as module
        chap = module
        return getattr(module, name)


chap = _ChapOnFirstUse()


def new_isid() -> bytes:
    """A random-format ISID (type 10b, RFC 7143 11.12.5): 0x80, 3 random bytes, qualifier."""
    return bytes([0x80]) + os.urandom(3) + os.urandom(2)


@record
class LoginOptions:
    """What we propose.  Digest values are offer lists in preference order:
    "CRC32C,None" prefers digests, "CRC32C" forces them, "None" refuses them."""
    initiator_name: str = DEFAULT_INITIATOR
    initiator_alias: str | None = None
    header_digest: str = "CRC32C,None"
    data_digest: str = "CRC32C,None"
    max_recv_data_segment_length: int = 262144
    max_burst_length: int = 262144
    first_burst_length: int = 65536
    immediate_data: bool = True
    initial_r2t: bool = False
    max_outstanding_r2t: int = 1
    default_time2wait: int = 2
    default_time2retain: int = 20
    # Without CHAP credentials, begin in the operational stage with every offer
    # in the first request (RFC 3720 5.3.3: operational negotiation may start
    # "with the first Login Request if the initiator does not propose any
    # security/integrity option"): a login of one round trip, not two.  A
    # target that requires CHAP refuses it with AUTHENTICATION FAILURE (0201h),
    # as it refuses AuthMethod=None.  Off by default: the security stage is
    # what most initiators open with.
    skip_security_stage: bool = False


@record
class Credentials:
    """CHAP secrets: ours, and the target's for mutual CHAP."""
    user: str
    secret: str
    target_user: str | None = None       # set for mutual CHAP
    target_secret: str | None = None

    @property
    def mutual(self) -> bool:
        return self.target_user is not None


@record
class GrantedSession:
    """What a successful login leaves: negotiated parameters and the session's numbers."""
    params: SessionParams
    tsih: int
    statsn: int
    expcmdsn: int
    maxcmdsn: int
    target_keys: dict[str, str] = field(default_factory=dict)   # declarations (alias, TPGT...)
    auth_method: str = "None"


class InitiatorLogin:
    """One login on one connection: ``first_request()``, then ``receive(resp)``
    until it returns None; ``result`` is then set.  Raises LoginError."""

    def __init__(self, options: LoginOptions, *, target: str | None, isid: bytes,
                 tsih: int = 0, cid: int = 0, itt: int = 0, cmdsn: int = 1,
                 credentials: Credentials | None = None) -> None:
        self.opts = options
        self.target = target                  # None = discovery session
        self.isid = isid
        self.tsih = tsih
        self.cid = cid
        self.itt = itt
        self.cmdsn = cmdsn
        self.creds = credentials
        self.expstatsn = 0
        self.stage = CSG_SECURITY
        self.result: GrantedSession | None = None
        self.params = SessionParams(max_recv_data_segment_length=options.max_recv_data_segment_length)
        self.offered: dict[str, str] = {}
        self.answered: set[str] = set()
        self.target_keys: dict[str, str] = {}
        self.auth_method = "None"
        self._chap_state = "none"             # none → algorithm → response → done
        self._our_challenge: chap.Challenge | None = None
        self._partial = bytearray()           # text of a response sent with the C bit
        self._rounds = 0
        self._sent_operational = False

    @property
    def discovery(self) -> bool:
        return self.target is None

    # ------------------------------------------------------------------ requests
    def _request(self, keys: list[tuple[str, str]], transit: bool, nsg: int) -> P.LoginRequest:
        # Login requests always carry the I bit (byte 0 is 0x43).
        return P.LoginRequest(immediate=True, transit=transit, cont=False, csg=self.stage,
                              nsg=nsg if transit else 0, version_max=0, version_min=0,
                              isid=self.isid, tsih=self.tsih, itt=self.itt, cid=self.cid,
                              cmdsn=self.cmdsn, expstatsn=self.expstatsn,
                              data=encode_text(keys))

    def _leading_keys(self) -> list[tuple[str, str]]:
        keys = [("InitiatorName", self.opts.initiator_name)]
        if self.opts.initiator_alias:
            keys.append(("InitiatorAlias", self.opts.initiator_alias))
        if self.discovery:
            keys.append(("SessionType", "Discovery"))
        else:
            keys.append(("SessionType", "Normal"))
            keys.append(("TargetName", self.target))
        return keys

    def _operational_offers(self) -> list[tuple[str, str]]:
        o = self.opts
        offers = [("HeaderDigest", o.header_digest), ("DataDigest", o.data_digest),
                  ("MaxRecvDataSegmentLength", str(o.max_recv_data_segment_length))]
        if not self.discovery:
            offers += [
                ("InitialR2T", fmt_bool(o.initial_r2t)),
                ("ImmediateData", fmt_bool(o.immediate_data)),
                ("MaxBurstLength", str(o.max_burst_length)),
                ("FirstBurstLength", str(min(o.first_burst_length, o.max_burst_length))),
                ("MaxOutstandingR2T", str(o.max_outstanding_r2t)),
                ("MaxConnections", "1"),
                ("ErrorRecoveryLevel", "0"),
                ("DataPDUInOrder", "Yes"),
                ("DataSequenceInOrder", "Yes"),
                ("DefaultTime2Wait", str(o.default_time2wait)),
                ("DefaultTime2Retain", str(o.default_time2retain)),
            ]
        for k, v in offers:
            if k != "MaxRecvDataSegmentLength":      # a declaration, no answer expected
                self.offered[k] = v
        self._sent_operational = True
        return offers

    def first_request(self) -> P.LoginRequest:
        keys = self._leading_keys()
        if self.creds is not None:
            # Offer CHAP only: a target that would let us in without it must not
            # downgrade an initiator that was given a secret.
            keys.append(("AuthMethod", "CHAP"))
            return self._request(keys, transit=False, nsg=0)
        if self.opts.skip_security_stage:
            self.stage = CSG_OPERATIONAL
            return self._request(keys + self._operational_offers(), transit=True, nsg=CSG_FFP)
        keys.append(("AuthMethod", "None"))
        return self._request(keys, transit=True, nsg=CSG_OPERATIONAL)

    # ------------------------------------------------------------------ responses
    def receive(self, resp: P.Pdu) -> P.LoginRequest | None:
        if not isinstance(resp, P.LoginResponse):
            raise LoginError(f"expected a Login Response, got {type(resp).__name__}")
        self._rounds += 1
        if self._rounds > MAX_ROUNDS:
            raise LoginError(f"login did not finish in {MAX_ROUNDS} exchanges")
        if resp.status_class != 0:
            if resp.status_class == 1:
                # Redirection: the caller may follow TargetAddress.
                try:
                    self.target_keys.update(decode_text(resp.data))
                except TextError:
                    pass
            raise LoginError("login rejected", resp.status_class, resp.status_detail)
        if resp.version_active != 0:
            raise LoginError(f"target speaks iSCSI version {resp.version_active}, we speak 0")
        if resp.itt != self.itt:
            raise LoginError(f"login response for ITT 0x{resp.itt:08x}, ours is 0x{self.itt:08x}")
        self.expstatsn = (resp.statsn + 1) & 0xFFFFFFFF
        self._partial += bytes(resp.data)
        if len(self._partial) > MAX_LOGIN_TEXT:
            raise LoginError("login text from the target is too long")
        if resp.cont:
            # More text follows: ask for it with an empty request (RFC 7143 6.6).
            if resp.transit:
                raise LoginError("target set both C and T bits")
            return self._request([], transit=False, nsg=0)
        try:
            pairs = decode_text(self._partial)
        except TextError as exc:
            raise LoginError(f"malformed login text from the target: {exc}") from None
        self._partial.clear()
        if resp.csg != self.stage:
            raise LoginError(f"target answered in stage {resp.csg}, we are in {self.stage}")
        if self.stage == CSG_SECURITY:
            return self._security(resp, pairs)
        return self._operational(resp, pairs)

    def _security(self, resp: P.LoginResponse, pairs: list[tuple[str, str]]):
        keys = dict(pairs)
        answers: list[tuple[str, str]] = []
        for k, v in pairs:
            if k == "AuthMethod":
                if v == "CHAP" and self.creds is not None:
                    self.auth_method = "CHAP"
                elif v == "None" and self.creds is None:
                    self.auth_method = "None"
                else:
                    raise LoginError(f"target chose AuthMethod={v}, we offered "
                                     f"{'CHAP' if self.creds else 'None'}")
            elif k in ("TargetAlias", "TargetAddress", "TargetPortalGroupTag"):
                self.target_keys[k] = v
            elif k not in ("CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R"):
                # Operational keys may be offered in the security stage too.
                ans = self._answer_target_offer(k, v)
                if ans is not None:
                    answers.append((k, ans))
        if self.auth_method == "CHAP":
            if self._chap_state == "none" and not resp.transit:
                self._chap_state = "algorithm"
                return self._request([("CHAP_A", str(chap.CHAP_MD5))] + answers, False, 0)
            if self._chap_state == "algorithm" and "CHAP_C" in keys:
                return self._chap_answer(keys, answers)
            if self._chap_state == "response" and resp.transit:
                self._verify_target(keys)
        if self.creds is not None and self._chap_state not in ("done",) and resp.transit:
            raise LoginError("target let us through without completing CHAP")
        if resp.transit:
            if resp.nsg == CSG_FFP:
                return self._finish(resp)
            if resp.nsg != CSG_OPERATIONAL:
                raise LoginError(f"target moves to stage {resp.nsg} from security")
            self.stage = CSG_OPERATIONAL
            return self._request(self._operational_offers(), True, CSG_FFP)
        if self.creds is not None and self._chap_state != "done":
            raise LoginError(f"unexpected CHAP step from the target: {sorted(keys)}")
        # Security is over on our side; ask to move on.
        return self._request(answers, True, CSG_OPERATIONAL)

    def _chap_answer(self, keys: dict[str, str], answers: list) -> P.LoginRequest:
        creds = self.creds
        assert creds is not None
        if parse_number(keys.get("CHAP_A", "")) != chap.CHAP_MD5:
            raise LoginError(f"target chose CHAP_A={keys.get('CHAP_A')}, we only do MD5 (5)")
        ident = parse_number(keys.get("CHAP_I", ""))
        if ident is None or not 0 <= ident <= 255:
            raise LoginError(f"bad CHAP_I {keys.get('CHAP_I')!r} from the target")
        try:
            challenge = chap.decode_binary(keys["CHAP_C"])
        except chap.ChapError as exc:
            raise LoginError(f"bad CHAP_C from the target: {exc}") from None
        out = [("CHAP_N", creds.user),
               ("CHAP_R", chap.encode_binary(chap.chap_response(ident, creds.secret, challenge)))]
        if creds.mutual:
            ours = chap.Challenge.new()
            while ours.challenge == challenge:      # never hand the target its own challenge
                ours = chap.Challenge.new()
            self._our_challenge = ours
            out += [(k, v) for k, v in ours.keys() if k != "CHAP_A"]
            self._chap_state = "response"
        else:
            self._chap_state = "done"
        return self._request(out + answers, True, CSG_OPERATIONAL)

    def _verify_target(self, keys: dict[str, str]) -> None:
        creds, ours = self.creds, self._our_challenge
        assert creds is not None and ours is not None
        if "CHAP_N" not in keys or "CHAP_R" not in keys:
            raise LoginError("mutual CHAP: the target did not answer our challenge")
        if not ours.verify(creds.target_user or "", creds.target_secret or "",
                           keys["CHAP_N"], keys["CHAP_R"]):
            raise LoginError("mutual CHAP: the target's CHAP_N/CHAP_R are wrong "
                             "(the target does not know the secret)")
        self._chap_state = "done"

    def _operational(self, resp: P.LoginResponse, pairs: list[tuple[str, str]]):
        answers: list[tuple[str, str]] = []
        for k, v in pairs:
            ans = self._take(k, v)
            if ans is not None:
                answers.append((k, ans))
        if resp.transit:
            if resp.nsg != CSG_FFP:
                raise LoginError(f"target moves to stage {resp.nsg} from operational")
            return self._finish(resp)
        return self._request(answers, True, CSG_FFP)

    # ------------------------------------------------------------------ keys
    def _take(self, key: str, value: str) -> str | None:
        """Record one key of the target; the answer to send if it was an offer."""
        if key in ("TargetAlias", "TargetAddress", "TargetPortalGroupTag"):
            self.target_keys[key] = value
            return None
        if key == "MaxRecvDataSegmentLength":
            n = parse_number(value)
            if n is None or n < 512:
                raise NegotiationError(f"target declared MaxRecvDataSegmentLength={value}")
            self.params.max_xmit_data_segment_length = min(n, 2**24 - 1)
            return None
        if key in self.offered and key not in self.answered:
            self.answered.add(key)
            self._check_answer(key, value)
            return None
        return self._answer_target_offer(key, value)

    def _check_answer(self, key: str, value: str) -> None:
        offer = self.offered[key]
        d = KEYS[key]
        if value in (IRRELEVANT, NOT_UNDERSTOOD):
            return                                  # the default stays in force
        if d.kind is Kind.LIST:
            if value == REJECT or value not in offer.split(","):
                raise NegotiationError(f"{key}: we offered {offer}, target answered {value}")
            setattr(self.params, "header_digest" if key == "HeaderDigest" else "data_digest",
                    value == "CRC32C")
            return
        if value == REJECT:
            if key in ("MaxConnections", "ErrorRecoveryLevel", "DataPDUInOrder",
                       "DataSequenceInOrder"):
                return                              # defaults are what we need anyway
            raise NegotiationError(f"{key}: target rejected our offer {offer}")
        if d.kind in (Kind.AND, Kind.OR):
            mine, got = parse_bool(offer), parse_bool(value)
            if got is None:
                raise NegotiationError(f"{key}: answer {value!r} is not Yes/No")
            # AND may only turn Yes into No, OR only No into Yes.
            if (d.kind is Kind.AND and got and not mine) or (d.kind is Kind.OR and mine and not got):
                raise NegotiationError(f"{key}: we offered {offer}, target answered {value}")
            self._set(key, got)
            return
        mine_n, got_n = parse_number(offer), parse_number(value)
        if got_n is None or not d.lo <= got_n <= d.hi:
            raise NegotiationError(f"{key}: answer {value!r} out of range")
        if (d.kind is Kind.MIN and got_n > mine_n) or (d.kind is Kind.MAX and got_n < mine_n):
            raise NegotiationError(f"{key}: we offered {offer}, target answered {value}")
        self._set(key, got_n)

    def _answer_target_offer(self, key: str, value: str) -> str | None:
        d = KEYS.get(key)
        if d is None:
            return NOT_UNDERSTOOD
        if d.kind is Kind.DECLARE or d.kind is Kind.SECURITY:
            self.target_keys[key] = value
            return None
        if d.kind is Kind.LIST:
            mine = tuple(v for v in self.opts.header_digest.split(",")) \
                if key == "HeaderDigest" else tuple(self.opts.data_digest.split(","))
            ans = negotiate_list(value, mine)
            if ans != REJECT:
                setattr(self.params, "header_digest" if key == "HeaderDigest" else "data_digest",
                        ans == "CRC32C")
            return ans
        ours = self._ours(key)
        if ours is None:
            return IRRELEVANT
        ans, res = negotiate_value(d, value, ours)
        if res is not None:
            self._set(key, res)
        return ans

    def _ours(self, key: str):
        o = self.opts
        return {"InitialR2T": o.initial_r2t, "ImmediateData": o.immediate_data,
                "MaxBurstLength": o.max_burst_length, "FirstBurstLength": o.first_burst_length,
                "MaxOutstandingR2T": o.max_outstanding_r2t, "MaxConnections": 1,
                "ErrorRecoveryLevel": 0, "DataPDUInOrder": True, "DataSequenceInOrder": True,
                "DefaultTime2Wait": o.default_time2wait,
                "DefaultTime2Retain": o.default_time2retain,
                "IFMarker": False, "OFMarker": False}.get(key)

    _FIELDS = {"InitialR2T": "initial_r2t", "ImmediateData": "immediate_data",
               "MaxBurstLength": "max_burst_length", "FirstBurstLength": "first_burst_length",
               "MaxOutstandingR2T": "max_outstanding_r2t", "MaxConnections": "max_connections",
               "ErrorRecoveryLevel": "error_recovery_level",
               "DataPDUInOrder": "data_pdu_in_order",
               "DataSequenceInOrder": "data_sequence_in_order",
               "DefaultTime2Wait": "default_time2wait",
               "DefaultTime2Retain": "default_time2retain"}

    def _set(self, key: str, value) -> None:
        name = self._FIELDS.get(key)
        if name is not None:
            setattr(self.params, name, value)

    def _finish(self, resp: P.LoginResponse) -> None:
        if self.creds is not None and self._chap_state != "done":
            raise LoginError("target ended the login before CHAP completed")
        p = self.params
        p.first_burst_length = min(p.first_burst_length, p.max_burst_length)
        if p.error_recovery_level != 0:
            raise NegotiationError(f"ErrorRecoveryLevel {p.error_recovery_level} not supported")
        if not (p.data_pdu_in_order and p.data_sequence_in_order):
            raise NegotiationError("out-of-order data PDUs/sequences are not supported")
        if not self.discovery and resp.tsih == 0:
            raise LoginError("target finished the login without a TSIH")
        self.result = GrantedSession(params=p, tsih=resp.tsih, statsn=resp.statsn,
                                  expcmdsn=resp.expcmdsn, maxcmdsn=resp.maxcmdsn,
                                  target_keys=dict(self.target_keys),
                                  auth_method=self.auth_method)
        return None
