"""The target side of the iSCSI login phase (RFC 7143 sections 6.3, 11.12, 11.13, 12).

:class:`LoginMachine` is sans-I/O: each Login Request PDU goes in through
``receive`` and exactly one Login Response PDU comes out.  The machine
checks stages and flags, joins text split by the C bit (both ways), runs the
security stage (AuthMethod None or CHAP, one-way or mutual) and the
operational stage (:mod:`..protocol.params`), and when the final response is built
sets ``done`` and ``result``.  On any error the response carries a status
class/detail and ``failed`` is set: the caller sends it and closes.

What it leaves to the caller: TSIH allocation and session reinstatement
(``result`` names the ISID and initiator; the caller patches ``tsih``,
``expcmdsn`` and ``maxcmdsn`` into the final response if it wants), and
switching digests on, which must happen only after the final response has
been sent in the clear.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from ..codes import Code
from .registry import Chap, Portal, TargetDef, TargetRegistry
from ..protocol import params as K
from ..protocol.names import normalize_name
from ..protocol.chap import Challenge, ChapError, choose_algorithm, mutual_answer
from ..protocol.pdu import LoginRequest, LoginResponse, Pdu

VERSION = 0x00          # the only iSCSI version there is
LOGIN_CHUNK = 8192      # login PDUs carry at most 8192 bytes of text (RFC 7143 6.6)
MAX_LOGIN_PDUS = 64     # bounds a login that never finishes


class Stage(Code):
    SECURITY = 0
    OPERATIONAL = 1
    FULL_FEATURE = 3


class Status(Code):
    """Status-Class << 8 | Status-Detail (RFC 7143 11.13.5)."""
    SUCCESS = 0x0000
    INITIATOR_ERROR = 0x0200
    AUTH_FAILURE = 0x0201
    FORBIDDEN = 0x0202
    NOT_FOUND = 0x0203
    TARGET_REMOVED = 0x0204
    UNSUPPORTED_VERSION = 0x0205
    TOO_MANY_CONNECTIONS = 0x0206
    MISSING_PARAMETER = 0x0207
    CANT_INCLUDE = 0x0208
    SESSION_TYPE_UNSUPPORTED = 0x0209
    SESSION_DOES_NOT_EXIST = 0x020A
    INVALID_DURING_LOGIN = 0x020B
    TARGET_ERROR = 0x0300
    SERVICE_UNAVAILABLE = 0x0301
    OUT_OF_RESOURCES = 0x0302


class LoginFailure(Exception):
    def __init__(self, status: Status, why: str) -> None:
        super().__init__(f"{status.name} (0x{status:04x}): {why}")
        self.status = status


class _Auth(Code):
    START = 1                # AuthMethod not agreed yet
    WAIT_ALGORITHM = 2       # AuthMethod=CHAP agreed, waiting for CHAP_A
    WAIT_RESPONSE = 3        # challenge sent, waiting for CHAP_N/CHAP_R
    DONE = 4                 # authenticated, or no authentication needed


_NAME_KEYS = frozenset({"InitiatorName", "TargetName", "SessionType", "InitiatorAlias"})
_CHAP_KEYS = frozenset({"CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R"})
_SECURITY_KEYS = _CHAP_KEYS | {"AuthMethod"}


@dataclass
class AcceptedLogin:
    session_type: str                 # "Normal" or "Discovery"
    initiator_name: str
    isid: bytes
    tsih: int                         # as the initiator sent it (0: new session)
    cid: int
    target: TargetDef | None          # None for discovery
    params: K.SessionParams
    statsn: int                       # StatSN of the next response after the final login response
    exp_cmdsn: int                    # CmdSN the first non-immediate command will carry
    initiator_alias: str = ""
    auth_method: str = "None"

    @property
    def discovery(self) -> bool:
        return self.session_type == "Discovery"


@dataclass
class _Outgoing:
    """A response text being sent over several PDUs (our C bit)."""
    chunks: list[bytes]
    transit: bool
    nsg: int
    final: bool = False


class LoginMachine:
    """One connection's login: ``receive(LoginRequest) -> LoginResponse``."""

    def __init__(self, registry: TargetRegistry, portal_group_tag: int | None = None,
                 local_portal: Portal | None = None, max_recv_dsl: int = 262144, *,
                 policy: K.TargetPolicy | None = None, initial_statsn: int | None = None,
                 tsih_exists: Callable[[int], bool] | None = None,
                 cmd_window: int = 32) -> None:
        self.registry = registry
        self.portal_group_tag = portal_group_tag
        self.local_portal = local_portal
        self.policy = policy or K.TargetPolicy(max_recv_data_segment_length=max_recv_dsl)
        if policy is None:
            self.policy.max_recv_data_segment_length = max_recv_dsl
        self.tsih_exists = tsih_exists
        self.cmd_window = cmd_window
        self.statsn = (int.from_bytes(os.urandom(4), "big") if initial_statsn is None
                       else initial_statsn) & 0xFFFFFFFF
        self.done = False
        self.failed = False
        self.result: AcceptedLogin | None = None
        self.failure: LoginFailure | None = None

        self.stage: Stage | None = None
        self._isid: bytes | None = None
        self._tsih = 0
        self._cid = 0
        self._cmdsn = 0
        self._pdus = 0
        self._incoming = bytearray()
        self._outgoing: _Outgoing | None = None
        self._names: dict[str, str] = {}
        self.session_type = "Normal"
        self.target: TargetDef | None = None
        self._chap: Chap | None = None
        self._mutual: Chap | None = None
        self._auth = _Auth.START
        self._auth_method: str | None = None
        self._challenge: Challenge | None = None
        self._neg = K.Negotiation(policy=self.policy)
        self._declared_mrdsl = False

    # ------------------------------------------------------------ public
    def receive(self, req: LoginRequest) -> LoginResponse:
        if self.done or self.failed:
            return self._failure(req, LoginFailure(Status.INVALID_DURING_LOGIN,
                                                   "login request after the login ended"))
        try:
            return self._receive(req)
        except LoginFailure as f:
            return self._failure(req, f)

    def invalid_request(self, pdu: Pdu) -> LoginResponse:
        """Answer to a non-login PDU received during login (0x020b); the login fails."""
        itt = getattr(pdu, "itt", 0)
        return self._failure(LoginRequest(itt=itt, isid=self._isid or bytes(6), tsih=self._tsih,
                                          csg=int(self.stage or 0)),
                             LoginFailure(Status.INVALID_DURING_LOGIN,
                                          f"opcode 0x{pdu.OPCODE:02x} during login"))

    # ------------------------------------------------------------ flow
    def _receive(self, req: LoginRequest) -> LoginResponse:
        self._pdus += 1
        if self._pdus > MAX_LOGIN_PDUS:
            raise LoginFailure(Status.INITIATOR_ERROR, "login takes too many PDUs")
        self._check_header(req)

        if self._outgoing is not None:
            # The initiator acknowledges a partial response of ours with an
            # empty request; anything else breaks the exchange (6.6).
            if len(req.data) or req.cont:
                raise LoginFailure(Status.INITIATOR_ERROR, "text sent while our response continues")
            return self._next_chunk(req)

        self._incoming += req.data
        if len(self._incoming) > K.MAX_TEXT_LEN:
            raise LoginFailure(Status.OUT_OF_RESOURCES, "login text too long")
        if req.cont:
            return self._response(req, transit=False, nsg=0)
        text, self._incoming = bytes(self._incoming), bytearray()
        try:
            keys = K.unique(K.decode_text(text))
        except K.TextError as exc:
            raise LoginFailure(Status.INITIATOR_ERROR, str(exc)) from None

        answers: list[tuple[str, str]] = []
        first = not self._names
        self._identify(keys, answers)
        if self.stage is Stage.SECURITY:
            self._security(keys, answers)
        elif _SECURITY_KEYS & keys.keys():
            raise LoginFailure(Status.INITIATOR_ERROR, "security keys outside the security stage")
        if first and self.stage is Stage.OPERATIONAL:
            self._require_no_auth()
        for k, v in keys.items():
            if k in _NAME_KEYS or k in _SECURITY_KEYS:
                continue
            try:
                ans = self._neg.respond(k, v)
            except K.NegotiationError as exc:
                raise LoginFailure(Status.INITIATOR_ERROR, str(exc)) from None
            if ans is not None:
                answers.append((k, ans))

        transit = self._may_transit(req)
        if (self.stage is Stage.OPERATIONAL or (transit and req.nsg == Stage.FULL_FEATURE)) \
                and not self._declared_mrdsl:
            answers.extend(self._neg.declarations())
            self._declared_mrdsl = True

        chunks = K.split_text(K.encode_text(answers), LOGIN_CHUNK)
        self._outgoing = _Outgoing(chunks, transit, req.nsg if transit else 0)
        return self._next_chunk(req)

    def _check_header(self, req: LoginRequest) -> None:
        if self._isid is None:
            if req.version_min > VERSION:
                raise LoginFailure(Status.UNSUPPORTED_VERSION,
                                   f"versions {req.version_min}..{req.version_max}")
            self._isid = bytes(req.isid)
            self._tsih = req.tsih
            self._cid = req.cid
            self._cmdsn = req.cmdsn
            if req.csg not in (Stage.SECURITY, Stage.OPERATIONAL):
                raise LoginFailure(Status.INITIATOR_ERROR, f"login starts in stage {req.csg}")
            self.stage = Stage(req.csg)
            self._neg.discovery = False
            if req.tsih != 0:
                # Adding or reinstating a connection of an existing session:
                # with MaxConnections=1 and ERL 0 there is nothing to add to.
                if self.tsih_exists is not None and not self.tsih_exists(req.tsih):
                    raise LoginFailure(Status.SESSION_DOES_NOT_EXIST, f"TSIH {req.tsih}")
                raise LoginFailure(Status.TOO_MANY_CONNECTIONS, "one connection per session")
        else:
            if bytes(req.isid) != self._isid or req.tsih != self._tsih or req.cid != self._cid:
                raise LoginFailure(Status.INITIATOR_ERROR, "ISID/TSIH/CID changed during login")
            if req.csg != self.stage:
                raise LoginFailure(Status.INITIATOR_ERROR,
                                   f"CSG {req.csg} but the login is in stage {int(self.stage)}")
        if req.transit and req.cont:
            raise LoginFailure(Status.INITIATOR_ERROR, "T and C bits both set")
        if req.transit and (req.nsg not in (Stage.OPERATIONAL, Stage.FULL_FEATURE)
                            or req.nsg <= req.csg):
            raise LoginFailure(Status.INITIATOR_ERROR,
                               f"transition from stage {req.csg} to {req.nsg}")

    # ------------------------------------------------------------ names
    def _identify(self, keys: dict[str, str], answers: list[tuple[str, str]]) -> None:
        if self._names:
            for k in _NAME_KEYS & keys.keys():
                # 6.2: no redeclaration; an identical repeat is harmless.
                if self._names.get(k, keys[k]) != keys[k]:
                    raise LoginFailure(Status.INITIATOR_ERROR, f"{k} changed during login")
                self._names[k] = keys[k]
            return
        initiator = keys.get("InitiatorName", "")
        if not initiator:
            raise LoginFailure(Status.MISSING_PARAMETER, "no InitiatorName")
        stype = keys.get("SessionType", "Normal")
        if stype not in ("Normal", "Discovery"):
            raise LoginFailure(Status.SESSION_TYPE_UNSUPPORTED, f"SessionType={stype}")
        self._names = {k: keys[k] for k in _NAME_KEYS & keys.keys()}
        self._names.setdefault("SessionType", stype)
        self.session_type = stype
        self._neg.discovery = stype == "Discovery"
        if stype == "Discovery":
            self._chap = self.registry.discovery_chap
            self._mutual = self.registry.discovery_mutual_chap
            return
        name = keys.get("TargetName", "")
        if not name:
            raise LoginFailure(Status.MISSING_PARAMETER, "no TargetName in a normal session")
        target = self.registry.get(name)
        if target is None:
            raise LoginFailure(Status.NOT_FOUND, name)
        if not target.allows(initiator):
            raise LoginFailure(Status.FORBIDDEN, f"{initiator} may not use {name}")
        if target.login_check is not None:      # testing hook: the reject_login fault
            refused = target.login_check(initiator)
            if refused:
                raise LoginFailure(Status(refused), f"login of {initiator} refused by a fault rule")
        self.target = target
        self._chap = target.chap
        self._mutual = target.mutual_chap
        # 13.9: a normal session's first login response names the portal group.
        tpgt = self.portal_group_tag if self.portal_group_tag is not None \
            else target.portal_group_tag
        answers.append(("TargetPortalGroupTag", str(tpgt)))
        if target.alias:
            answers.append(("TargetAlias", target.alias))

    # ------------------------------------------------------------ security
    def _require_no_auth(self) -> None:
        if self._chap is not None:
            raise LoginFailure(Status.AUTH_FAILURE, "authentication required, security stage skipped")
        self._auth = _Auth.DONE

    def _security(self, keys: dict[str, str], answers: list[tuple[str, str]]) -> None:
        if "AuthMethod" in keys:
            if self._auth_method is not None:
                raise LoginFailure(Status.INITIATOR_ERROR, "AuthMethod negotiated twice")
            acceptable = ("CHAP",) if self._chap is not None else ("None",)
            choice = K.negotiate_list(keys["AuthMethod"], acceptable)
            if choice == K.REJECT and self._chap is not None:
                raise LoginFailure(Status.AUTH_FAILURE,
                                   f"AuthMethod={keys['AuthMethod']} but CHAP is required")
            answers.append(("AuthMethod", choice))
            self._auth_method = choice
            self._auth = _Auth.WAIT_ALGORITHM if choice == "CHAP" else _Auth.DONE
        chap_keys = _CHAP_KEYS & keys.keys()
        if not chap_keys:
            return
        if self._auth is _Auth.WAIT_ALGORITHM:
            if chap_keys != {"CHAP_A"}:
                raise LoginFailure(Status.AUTH_FAILURE, f"expected CHAP_A, got {sorted(chap_keys)}")
            if choose_algorithm(keys["CHAP_A"]) is None:
                raise LoginFailure(Status.AUTH_FAILURE, f"CHAP_A={keys['CHAP_A']} (need 5, MD5)")
            self._challenge = Challenge.new()
            answers.extend(self._challenge.keys())
            self._auth = _Auth.WAIT_RESPONSE
        elif self._auth is _Auth.WAIT_RESPONSE:
            self._check_response(keys, chap_keys, answers)
        else:
            raise LoginFailure(Status.AUTH_FAILURE, f"unexpected {sorted(chap_keys)}")

    def _check_response(self, keys: dict[str, str], chap_keys: set[str],
                        answers: list[tuple[str, str]]) -> None:
        assert self._chap is not None and self._challenge is not None
        if not {"CHAP_N", "CHAP_R"} <= chap_keys or "CHAP_A" in chap_keys:
            raise LoginFailure(Status.AUTH_FAILURE, f"expected CHAP_N/CHAP_R, got {sorted(chap_keys)}")
        if not self._challenge.verify(self._chap.username, self._chap.secret,
                                      keys["CHAP_N"], keys["CHAP_R"]):
            raise LoginFailure(Status.AUTH_FAILURE, f"CHAP response of {keys['CHAP_N']!r} is wrong")
        mutual = {"CHAP_I", "CHAP_C"} & chap_keys
        if mutual:
            if mutual != {"CHAP_I", "CHAP_C"}:
                raise LoginFailure(Status.AUTH_FAILURE, "mutual CHAP needs both CHAP_I and CHAP_C")
            if self._mutual is None:
                raise LoginFailure(Status.AUTH_FAILURE, "mutual CHAP asked, no target secret set")
            try:
                answers.extend(mutual_answer(self._challenge, keys["CHAP_I"], keys["CHAP_C"],
                                             self._mutual.username, self._mutual.secret))
            except ChapError as exc:
                raise LoginFailure(Status.AUTH_FAILURE, str(exc)) from None
        self._auth = _Auth.DONE

    def _may_transit(self, req: LoginRequest) -> bool:
        if not req.transit:
            return False
        if self.stage is Stage.SECURITY and self._auth is not _Auth.DONE:
            if self._chap is None:
                self._auth = _Auth.DONE   # nothing to prove: the initiator may move on
                return True
            if self._auth_method is None:
                raise LoginFailure(Status.AUTH_FAILURE, "authentication required, none offered")
            return False                  # exchange still running: stay in this stage
        return True

    # ------------------------------------------------------------ responses
    def _next_chunk(self, req: LoginRequest) -> LoginResponse:
        out = self._outgoing
        assert out is not None
        chunk = out.chunks.pop(0)
        if out.chunks:
            return self._response(req, transit=False, nsg=0, data=chunk, cont=True)
        self._outgoing = None
        resp = self._response(req, transit=out.transit, nsg=out.nsg, data=chunk)
        if out.transit:
            self.stage = Stage(out.nsg)
            if self.stage is Stage.FULL_FEATURE:
                self._finish(req)
        return resp

    def _finish(self, req: LoginRequest) -> None:
        assert self._isid is not None
        self.done = True
        self.result = AcceptedLogin(
            session_type=self.session_type,
            # RFC 3722 form, so session reinstatement, the nexus and PR
            # registrations treat "Host" and "host" as the one initiator they are.
            initiator_name=normalize_name(self._names.get("InitiatorName", "")),
            initiator_alias=self._names.get("InitiatorAlias", ""),
            isid=self._isid, tsih=self._tsih, cid=self._cid, target=self.target,
            params=self._neg.session_params(), statsn=self.statsn,
            exp_cmdsn=self._cmdsn, auth_method=self._auth_method or "None")

    def _response(self, req: LoginRequest, *, transit: bool, nsg: int, data: bytes = b"",
                  cont: bool = False, status: int = 0) -> LoginResponse:
        statsn = self.statsn
        if status == 0:
            # 11.13.4: every login response after the first carries StatSN + 1.
            self.statsn = (statsn + 1) & 0xFFFFFFFF
        return LoginResponse(
            transit=transit, cont=cont, csg=int(self.stage if self.stage is not None else req.csg),
            nsg=nsg, version_max=VERSION, version_active=VERSION,
            isid=self._isid if self._isid is not None else bytes(req.isid), tsih=self._tsih,
            itt=req.itt, statsn=statsn, expcmdsn=self._cmdsn,
            maxcmdsn=(self._cmdsn + self.cmd_window - 1) & 0xFFFFFFFF,
            status_class=status >> 8, status_detail=status & 0xFF, data=data)

    def _failure(self, req: LoginRequest, f: LoginFailure) -> LoginResponse:
        self.failed = True
        self.failure = f
        self._outgoing = None
        if self._isid is None:
            self._cmdsn = req.cmdsn
        return self._response(req, transit=False, nsg=0, status=int(f.status))
