"""Fault injection: rules that make a LUN map misbehave on purpose.

A :class:`FaultRule` is a match (LUN, LBA range, opcodes, initiator, every Nth
matching command, a seeded probability) and an action (the kinds in
:data:`ACTIONS`), fired once, N times or for ever (``times = "sticky"``).
Rules come from one place, :func:`parse_rule`, whether they are written in
Python (``FaultRule.make(...)``), in the TOML config (``[[target.fault]]``) or
sent as JSON with the FAULT CONTROL vendor command (docs/vendor-commands.md);
a bad rule gets a one-line :class:`FaultRuleError`.

:class:`FaultInjector` is the interceptor of :mod:`.chain`: ``before`` may
answer a command itself (errors, BUSY, dropped writes), ``after`` may change
the answer (bit flips, short transfers, RECOVERED ERROR).  Added latency is
returned as a delay for the front end to apply: the in-process API sleeps;
a served target holds that connection's responses without blocking the event
loop for other sessions.
"""
from __future__ import annotations

import itertools
import json
import random
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from ..scsi import sense as S
from ..scsi.command import Command, Response, Status
from ..scsi.tape_lu import TapeLU
from .cmdlog import BLOCK_OPS, WRITE_OPS, block_range
from .transport import ConnectionFaults

FAULT_CONTROL_OPCODE = 0xD5       # vendor specific, 12-byte CDB (docs/vendor-commands.md)
READ_OPS = frozenset(op for op, v in BLOCK_OPS.items() if not v[3] and "READ" in v[0])
TAPE_WRITE_OPS = frozenset((0x0A, 0x10))     # WRITE(6), WRITE FILEMARKS(6) (SSC)

ACTIONS = {
    # action: extra keys it takes
    "medium_error": (),           # MEDIUM ERROR, 11h/00h (read) or 0Ch/00h (write), INFORMATION = LBA
    "check_condition": ("key", "asc", "ascq", "information"),
    "status": ("status", "key", "asc", "ascq", "information"),
    "recovered_error": ("asc", "ascq"),   # the command runs; RECOVERED ERROR with its data
    "unit_attention": ("asc", "ascq"),    # established for the initiator: its next command sees it
    "delay": ("seconds",),
    "busy": (),
    "task_set_full": (),
    "corrupt_read": ("bits",),    # the read runs; ``bits`` bits of its data are flipped
    "drop_write": (),             # GOOD, nothing written
    "short_transfer": ("keep",),  # the read returns ``keep`` bytes (default half), residual set
    # Served targets: the command is not executed and its connection is closed
    # without an answer (in process: TASK ABORTED).
    "drop_connection": (),
    # Served targets: a normal-session login to this target is refused with
    # ``login_status`` (default 0301h SERVICE UNAVAILABLE); matched by initiator name.
    "reject_login": ("login_status",),
    # Tape LUs: a write that reaches logical object ``block`` ends in the early
    # warning (CHECK CONDITION, NO SENSE, EOM, 00h/02h: written) or at end of
    # medium (VOLUME OVERFLOW, EOM, 00h/02h: objects from ``block`` on not written).
    "tape_early_warning": ("block",),
    "tape_end_of_medium": ("block",),
    # iSCSI level (served targets; scsi_target/interceptors/transport.py):
    # the connection closes on its ``pdus``-th PDU counted in ``direction``.
    "drop_after_pdus": ("pdus", "direction"),
    # the R2T or the SCSI response (with its Data-In) of a matching command
    # is held ``seconds``, or until the rule is cleared when seconds is absent.
    "stall": ("pdu", "seconds"),
    # the header or data digest of a matching command's answer is wrong.
    "corrupt_digest": ("digest",),
    # the NOP-In answering an initiator's NOP-Out is held ``seconds``.
    "delay_nop_in": ("seconds",),
}
TAPE_ACTIONS = frozenset(("tape_early_warning", "tape_end_of_medium"))
# Acted on by the iSCSI connection, never by the LUN map's chain.
TRANSPORT_ACTIONS = frozenset(("reject_login", "drop_after_pdus", "stall", "corrupt_digest",
                               "delay_nop_in"))
_CONNECTION_KEYS = ("initiator", "every", "probability", "seed", "times")
_LOGIN_KEYS = _CONNECTION_KEYS + ("login_status", "action")
DIRECTIONS = ("received", "sent", "any")
STALL_PDUS = ("r2t", "response")
DIGESTS = ("header", "data")
LOGIN_STATUSES = (0x0200, 0x0201, 0x0202, 0x0203, 0x0204, 0x0205, 0x0206, 0x0207, 0x0208,
                  0x0209, 0x020A, 0x020B, 0x0300, 0x0301, 0x0302)
_MATCH_KEYS = ("lun", "lba", "opcode", "initiator", "every", "probability", "seed", "times")
_STATUS_NAMES = {s.name.lower(): s for s in Status if s != Status.GOOD}


class FaultRuleError(ValueError):
    """A bad fault rule; ``str()`` is one line naming the key at fault."""


@dataclass
class FaultRule:
    action: str
    lun: int | None = None
    lba: tuple[int, int] | None = None           # [first, end) LBAs the command must overlap
    opcodes: frozenset[int] | None = None        # None: any command
    initiator: str | None = None                 # substring of the initiator port name
    every: int = 1                               # fire on every Nth matching command
    probability: float | None = None
    seed: int = 0
    times: int | None = 1                        # None: sticky
    status: int = int(Status.CHECK_CONDITION)
    key: int | None = None
    asc: int | None = None
    ascq: int = 0
    information: int | None = None
    seconds: float = 0.0
    bits: int = 1
    keep: int | None = None
    login_status: int = 0x0301
    block: int = 0                               # tape actions: logical object number
    pdus: int = 0                                # drop_after_pdus
    direction: str = "any"
    pdu: str = "response"                        # stall: "r2t" or "response"
    digest: str = "header"                       # corrupt_digest
    # state
    serial: int = field(default_factory=itertools.count().__next__, repr=False)
    matched: int = 0
    fired: int = 0
    released: bool = False                       # cleared: what it holds goes on
    spec: dict = field(default_factory=dict, repr=False)
    _rng: random.Random | None = field(default=None, repr=False)
    _waiters: list = field(default_factory=list, repr=False)
    # release() comes from the test's thread, on_release() from the server's loop.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def make(cls, action: str, **kw) -> "FaultRule":
        """Python form of a rule: ``FaultRule.make("medium_error", lba=(100, 200))``."""
        return parse_rule({"action": action, **kw})

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.fired >= self.times

    def describe(self) -> str:
        return json.dumps(self.spec, sort_keys=True, default=str)

    def selects(self) -> bool:
        """One more match: True when ``every`` and ``probability`` let it act (not counted
        as fired: :meth:`fire` does that, for rules that act later than they match)."""
        self.matched += 1
        if self.matched % self.every:
            return False
        if self.probability is not None:
            if self._rng is None:
                self._rng = random.Random(self.seed)
            if self._rng.random() >= self.probability:
                return False
        return True

    def fire(self) -> None:
        self.fired += 1

    def _fires(self) -> bool:
        if not self.selects():
            return False
        self.fired += 1
        return True

    # -- release: what a stall rule holds goes on once the rule is cleared
    def on_release(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from any thread) when the rule is cleared; now if it is."""
        with self._lock:
            if not self.released:
                self._waiters.append(callback)
                return
        callback()

    def release(self) -> None:
        with self._lock:
            self.released = True
            waiters, self._waiters = self._waiters, []
        for cb in waiters:
            cb()

    def matches_login(self, initiator_name: str) -> bool:
        if self.action != "reject_login" or self.exhausted:
            return False
        if self.initiator is not None and self.initiator not in initiator_name:
            return False
        return self._fires()

    def applies_to(self, lun: int, cdb, initiator: str, rng: tuple[int, int] | None) -> bool:
        """The command match (LUN, opcodes, initiator, LBA range), nothing counted."""
        if self.lun is not None and lun != self.lun:
            return False
        if self.opcodes is not None and (not cdb or cdb[0] not in self.opcodes):
            return False
        if self.initiator is not None and self.initiator not in initiator:
            return False
        if self.lba is not None:
            if rng is None or rng[0] >= self.lba[1] or rng[0] + max(rng[1], 1) <= self.lba[0]:
                return False
        return True

    def matches(self, cmd: Command, rng: tuple[int, int] | None) -> bool:
        """A SCSI-level rule firing on ``cmd`` (transport and tape rules never do here)."""
        if self.exhausted or self.action in TRANSPORT_ACTIONS or self.action in TAPE_ACTIONS:
            return False
        if not self.applies_to(cmd.lun, cmd.cdb, cmd.nexus.initiator, rng):
            return False
        return self._fires()

    def failing_lba(self, rng: tuple[int, int] | None) -> int | None:
        if rng is None:
            return None
        return rng[0] if self.lba is None else max(rng[0], self.lba[0])


# ---------------------------------------------------------------- parsing
def _int(spec: dict, k: str, lo: int, hi: int, where: str) -> int:
    v = spec[k]
    if isinstance(v, bool) or not isinstance(v, int):
        raise FaultRuleError(f"{where}{k}: expected an integer, got {v!r}")
    if not lo <= v <= hi:
        raise FaultRuleError(f"{where}{k}: {v} is out of range {lo}..{hi}")
    return v


def _opcodes(v: Any, where: str) -> frozenset[int]:
    items = v if isinstance(v, list) else [v]
    if not items:
        raise FaultRuleError(f"{where}opcode: empty list")
    out: set[int] = set()
    by_name = {name.upper(): op for op, (name, *_r) in BLOCK_OPS.items()}
    for it in items:
        if isinstance(it, int) and not isinstance(it, bool) and 0 <= it <= 0xFF:
            out.add(it)
        elif isinstance(it, str):
            s = it.strip().upper()
            if s in ("READ", "READS"):
                out |= READ_OPS
            elif s in ("WRITE", "WRITES"):
                out |= WRITE_OPS
            elif s in by_name:
                out.add(by_name[s])
            else:
                try:
                    n = int(s, 16) if s.startswith("0X") else None
                except ValueError:
                    n = None
                if n is None or not 0 <= n <= 0xFF:
                    raise FaultRuleError(
                        f"{where}opcode: {it!r} is not an opcode (0..255, \"0x28\", \"read\", "
                        f"\"write\" or a name such as \"WRITE(10)\")")
                out.add(n)
        else:
            raise FaultRuleError(f"{where}opcode: {it!r} is not an opcode")
    return frozenset(out)


def parse_rule(spec: Any, where: str = "") -> FaultRule:
    """A rule from its dict form (TOML table, JSON object, keyword arguments)."""
    if not isinstance(spec, dict):
        raise FaultRuleError(f"{where or 'fault rule'}: expected a table/object, got {spec!r}")
    w = f"{where}." if where else ""
    action = spec.get("action")
    if action not in ACTIONS:
        raise FaultRuleError(f"{w}action: {action!r} is not one of {', '.join(ACTIONS)}")
    allowed = _allowed_keys(action)
    for k in spec:
        if k not in allowed:
            raise FaultRuleError(f"{w}{k}: not a key of action {action!r} "
                                 f"(allowed: {', '.join(sorted(allowed))})")
    r = FaultRule(action=action, spec=dict(spec))
    if "lun" in spec:
        r.lun = _int(spec, "lun", 0, 16383, w)
    if "lba" in spec:
        v = spec["lba"]
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            r.lba = (v, v + 1)
        elif isinstance(v, (list, tuple)) and len(v) == 2 and all(
                isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v) \
                and v[0] < v[1]:
            r.lba = (v[0], v[1])
        else:
            raise FaultRuleError(f"{w}lba: {v!r}: expected an LBA or [first, end) with first < end")
    if "opcode" in spec:
        r.opcodes = _opcodes(spec["opcode"], w)
    elif action in ("corrupt_read", "short_transfer"):
        r.opcodes = READ_OPS
    elif action == "drop_write":
        r.opcodes = WRITE_OPS
    elif action in TAPE_ACTIONS:
        r.opcodes = TAPE_WRITE_OPS
    if action in TAPE_ACTIONS and r.opcodes - TAPE_WRITE_OPS:
        raise FaultRuleError(f"{w}opcode: {action} applies to WRITE(6) and WRITE FILEMARKS(6) "
                             "only")
    if action in ("corrupt_read", "short_transfer") and r.opcodes - READ_OPS:
        raise FaultRuleError(f"{w}opcode: {action} applies to reads only")
    if action == "drop_write" and r.opcodes - WRITE_OPS:
        raise FaultRuleError(f"{w}opcode: drop_write applies to writes only")
    if "initiator" in spec:
        if not isinstance(spec["initiator"], str) or not spec["initiator"]:
            raise FaultRuleError(f"{w}initiator: expected a non-empty string")
        r.initiator = spec["initiator"]
    if "every" in spec:
        r.every = _int(spec, "every", 1, 1 << 31, w)
    if "probability" in spec:
        p = spec["probability"]
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise FaultRuleError(f"{w}probability: {p!r} is not a number in 0..1")
        r.probability = float(p)
    if "seed" in spec:
        r.seed = _int(spec, "seed", 0, (1 << 63) - 1, w)
    if "times" in spec:
        t = spec["times"]
        if t == "once":
            r.times = 1
        elif t == "sticky":
            r.times = None
        elif isinstance(t, int) and not isinstance(t, bool) and t >= 1:
            r.times = t
        else:
            raise FaultRuleError(f"{w}times: {t!r}: expected \"once\", \"sticky\" or a count >= 1")
    if "status" in spec:
        st = spec["status"]
        if isinstance(st, str) and st.lower().replace(" ", "_") in _STATUS_NAMES:
            r.status = int(_STATUS_NAMES[st.lower().replace(" ", "_")])
        elif isinstance(st, int) and not isinstance(st, bool) and 0 <= st <= 0xFF and st != 0:
            r.status = st
        else:
            raise FaultRuleError(f"{w}status: {st!r}: expected a non-GOOD status byte or one of "
                                 f"{', '.join(_STATUS_NAMES)}")
    if "key" in spec:
        k = spec["key"]
        if isinstance(k, str) and k.upper().replace(" ", "_") in S.SenseKey.__members__:
            r.key = int(S.SenseKey[k.upper().replace(" ", "_")])
        elif isinstance(k, int) and not isinstance(k, bool) and 0 <= k <= 0xF:
            r.key = k
        else:
            raise FaultRuleError(f"{w}key: {k!r} is not a sense key (0..15 or a name)")
    for k in ("asc", "ascq"):
        if k in spec:
            setattr(r, k, _int(spec, k, 0, 0xFF, w))
    if "information" in spec:
        r.information = _int(spec, "information", 0, (1 << 64) - 1, w)
    if action == "check_condition" and (r.key is None or r.asc is None):
        raise FaultRuleError(f"{w}check_condition needs key and asc")
    if action == "status" and r.status == Status.CHECK_CONDITION and r.key is None:
        raise FaultRuleError(f"{w}status CHECK_CONDITION needs a sense key (key, asc, ascq)")
    if "seconds" in spec:
        s = spec["seconds"]
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s <= 600:
            raise FaultRuleError(f"{w}seconds: {s!r} is not a delay in (0, 600]")
        r.seconds = float(s)
    elif action in ("delay", "delay_nop_in"):
        raise FaultRuleError(f"{w}{action} needs seconds")
    if "bits" in spec:
        r.bits = _int(spec, "bits", 1, 1 << 20, w)
    if "keep" in spec:
        r.keep = _int(spec, "keep", 0, 1 << 40, w)
    if "login_status" in spec:
        st = spec["login_status"]
        if isinstance(st, (list, tuple)) and len(st) == 2 and all(
                isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 0xFF for x in st):
            st = st[0] << 8 | st[1]          # [status class, status detail]
        if isinstance(st, bool) or not isinstance(st, int) or st not in LOGIN_STATUSES:
            raise FaultRuleError(f"{w}login_status: {st!r} is not a login failure status "
                                 "(0x0200..0x020b, 0x0300..0x0302, or [class, detail])")
        r.login_status = st
    _parse_transport_keys(spec, r, w)
    return r


def _allowed_keys(action: str) -> set[str]:
    if action == "reject_login":
        return set(_LOGIN_KEYS)
    if action in ("drop_after_pdus", "delay_nop_in"):
        return set(_CONNECTION_KEYS) | set(ACTIONS[action]) | {"action"}
    keys = set(_MATCH_KEYS) | set(ACTIONS[action]) | {"action"}
    if action in TAPE_ACTIONS:
        keys.discard("lba")             # the position is the drive's, not in the CDB
    return keys


def _choice(spec: dict, k: str, choices: tuple[str, ...], w: str) -> str:
    v = spec[k]
    if v not in choices:
        raise FaultRuleError(f"{w}{k}: {v!r} is not one of {', '.join(choices)}")
    return v


def _parse_transport_keys(spec: dict, r: FaultRule, w: str) -> None:
    """The keys of the tape and iSCSI-level actions (docs/testing.md)."""
    a = r.action
    if a in TAPE_ACTIONS:
        if "block" not in spec:
            raise FaultRuleError(f"{w}{a} needs block (the logical object number)")
        r.block = _int(spec, "block", 0, (1 << 63) - 1, w)
    elif a == "drop_after_pdus":
        if "pdus" not in spec:
            raise FaultRuleError(f"{w}drop_after_pdus needs pdus (a count >= 1)")
        r.pdus = _int(spec, "pdus", 1, 1 << 31, w)
        if "direction" in spec:
            r.direction = _choice(spec, "direction", DIRECTIONS, w)
    elif a == "stall":
        if "pdu" not in spec:
            raise FaultRuleError(f"{w}stall needs pdu (\"r2t\" or \"response\")")
        r.pdu = _choice(spec, "pdu", STALL_PDUS, w)
    elif a == "corrupt_digest":
        if "digest" not in spec:
            raise FaultRuleError(f"{w}corrupt_digest needs digest (\"header\" or \"data\")")
        r.digest = _choice(spec, "digest", DIGESTS, w)


def parse_rules(specs: Any, where: str = "fault") -> list[FaultRule]:
    items = specs if isinstance(specs, list) else [specs]
    return [parse_rule(s, f"{where}[{i}]") for i, s in enumerate(items)]


# ------------------------------------------------------------- the injector
def _sense(key: int, asc: int, ascq: int, information: int | None = None) -> S.SenseError:
    return S.SenseError(S.SenseKey(key), S.Asc(asc, ascq, S.asc_name(asc, ascq)),
                        information=information)


def _check(cmd: Command, err: S.SenseError, descriptor: bool = False) -> Response:
    return Response(Status.CHECK_CONDITION, sense=S.render_sense(err, descriptor),
                    residual=cmd.expected_length or 0)


class FaultInjector:
    """The rules of one LUN map, tried in order; the first that fires acts."""

    def __init__(self, rules: list[FaultRule] | None = None, *, control: bool = False,
                 seed: int = 0) -> None:
        self.rules: list[FaultRule] = list(rules or [])
        self.control = control          # answer FAULT CONTROL (D5h)
        self._flip = random.Random(seed)
        self.lunmap = None              # set by the chain

    def add(self, rule: FaultRule | dict | None = None, /, **kw) -> FaultRule:
        if rule is None:
            rule = parse_rule(kw)
        elif isinstance(rule, dict):
            rule = parse_rule(rule)
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule; what stall rules hold goes on."""
        rules = list(self.rules)
        self.rules.clear()
        for r in rules:
            r.release()

    def remove(self, rule: FaultRule) -> None:
        self.rules.remove(rule)
        rule.release()

    def connection(self, initiator: str):
        """TargetDef.transport_faults: the iSCSI-level decisions for one connection of
        ``initiator`` (its port name), read from these rules as they change."""
        return ConnectionFaults(self, initiator)

    def login_check(self, initiator_name: str) -> int | None:
        """TargetDef.login_check: the status refusing this login, or None."""
        for rule in self.rules:
            if rule.matches_login(initiator_name):
                return rule.login_status
        return None

    # The chain calls before(); a Response ends the command there.
    def before(self, cmd: Command) -> tuple[Response | None, FaultRule | None, float]:
        cdb = cmd.cdb
        if self.control and cdb and cdb[0] == FAULT_CONTROL_OPCODE:
            return self._control(cmd), None, 0.0
        if not self.rules:
            return None, None, 0.0
        rng = block_range(cdb)
        for rule in self.rules:
            if rule.action in TAPE_ACTIONS:
                if self._tape_boundary(rule, cmd):
                    return None, rule, 0.0
            elif rule.matches(cmd, rng):
                return self._act(rule, cmd, rng)
        return None, None, 0.0

    def _tape_lu(self, lun: int) -> TapeLU | None:
        lu = self.lunmap.get(lun) if self.lunmap is not None else None
        return lu if isinstance(lu, TapeLU) else None

    def _tape_boundary(self, rule: FaultRule, cmd: Command) -> bool:
        """A tape rule fires on a write that reaches its block: the drive then sees an
        early-warning point or end of medium there for this one command (after() lifts it),
        and answers with its own conditions (docs/ssc.md)."""
        cdb = cmd.cdb
        if rule.exhausted or len(cdb) < 6 or \
                not rule.applies_to(cmd.lun, cdb, cmd.nexus.initiator, None):
            return False
        lu = self._tape_lu(cmd.lun)
        if lu is None or lu.not_ready_reason() is not None:
            return False
        count = int.from_bytes(cdb[2:5], "big")
        objects = count if cdb[0] == 0x10 or cdb[1] & 1 else min(count, 1)
        if not objects:
            return False
        end = lu.drive.pos + objects
        if not (end >= rule.block if rule.action == "tape_early_warning" else end > rule.block):
            return False
        if not rule._fires():
            return False
        if rule.action == "tape_early_warning":
            lu.drive.early_warning_at = rule.block
        else:
            lu.drive.end_at = rule.block
        return True

    def _act(self, rule: FaultRule, cmd: Command, rng):
        a = rule.action
        if a == "delay":
            return None, rule, rule.seconds
        if a == "busy":
            return Response(Status.BUSY, residual=cmd.expected_length or 0), rule, 0.0
        if a == "task_set_full":
            return Response(Status.TASK_SET_FULL, residual=cmd.expected_length or 0), rule, 0.0
        if a == "medium_error":
            writes = bool(cmd.cdb) and cmd.cdb[0] in WRITE_OPS
            asc = S.WRITE_ERROR if writes else S.UNRECOVERED_READ_ERROR
            return _check(cmd, S.SenseError(S.SenseKey.MEDIUM_ERROR, asc,
                                            information=rule.failing_lba(rng))), rule, 0.0
        if a == "check_condition" or (a == "status" and rule.key is not None):
            info = rule.information if rule.information is not None else None
            err = _sense(rule.key, rule.asc or 0, rule.ascq, info)
            resp = _check(cmd, err)
            resp.status = Status(rule.status) if rule.status in Status \
                else rule.status
            return resp, rule, 0.0
        if a == "status":
            return Response(rule.status, residual=cmd.expected_length or 0), rule, 0.0
        if a == "unit_attention":
            lu = self.lunmap.get(cmd.lun) if self.lunmap is not None else None
            if lu is not None:
                asc = rule.asc if rule.asc is not None else 0x29
                lu.ua.first_contact(cmd.nexus)
                lu.ua.establish(S.Asc(asc, rule.ascq, S.asc_name(asc, rule.ascq)),
                                nexus=cmd.nexus)
            return None, rule, 0.0
        if a == "drop_write":
            return Response(Status.GOOD, residual=0), rule, 0.0
        if a == "drop_connection":
            return Response(Status.TASK_ABORTED, residual=cmd.expected_length or 0), rule, 0.0
        # recovered_error, corrupt_read, short_transfer act on the answer
        return None, rule, 0.0

    def after(self, rule: FaultRule, cmd: Command, resp: Response) -> Response:
        a = rule.action
        if a in TAPE_ACTIONS:
            lu = self._tape_lu(cmd.lun)
            if lu is not None:
                lu.drive.early_warning_at = lu.drive.end_at = None
            return resp
        if resp.status != Status.GOOD:
            return resp
        if a == "recovered_error":
            asc = rule.asc if rule.asc is not None else 0x17   # RECOVERED DATA WITH RETRIES
            ascq = rule.ascq if rule.asc is not None else 0x01
            sense = S.render_sense(_sense(S.SenseKey.RECOVERED_ERROR, asc, ascq,
                                          rule.failing_lba(block_range(cmd.cdb))))
            return Response(Status.CHECK_CONDITION, resp.data_in, sense, resp.residual,
                            resp.release)
        if a in ("corrupt_read", "short_transfer"):
            data = bytearray(bytes(resp.data_in))      # a Gather too (Command.may_gather)
            if resp.release is not None:
                resp.release()      # the pooled buffer is copied: give it back now
            if a == "corrupt_read":
                nbits = len(data) * 8
                for _ in range(min(rule.bits, nbits)):
                    bit = self._flip.randrange(nbits)
                    data[bit >> 3] ^= 1 << (bit & 7)
                return Response(Status.GOOD, data, residual=resp.residual)
            keep = len(data) // 2 if rule.keep is None else min(rule.keep, len(data))
            return Response(Status.GOOD, data[:keep], residual=resp.residual + len(data) - keep)
        return resp

    # ------------------------------------------------- FAULT CONTROL (D5h)
    def _control(self, cmd: Command) -> Response:
        """CDB: [D5h, ACTION, 0, 0, 0, 0, LENGTH(4), 0, CONTROL]; 0 ADD (data-out: JSON rule
        or list), 1 CLEAR, 2 LIST (data-in: JSON of the rules with their counts)."""
        cdb = bytes(cmd.cdb)
        if len(cdb) < 12:
            return _check(cmd, S.invalid_cdb_field(0))
        action = cdb[1]
        length = int.from_bytes(cdb[6:10], "big")
        if any(cdb[2:6]) or cdb[10]:
            bad = next(i for i in (2, 3, 4, 5, 10) if cdb[i])
            return _check(cmd, S.invalid_cdb_field(bad))
        if action == 0:
            data = bytes(cmd.data_out or b"")
            if len(data) != length or length == 0:
                return _check(cmd, S.SenseError(S.SenseKey.ILLEGAL_REQUEST,
                                                S.PARAMETER_LIST_LENGTH_ERROR))
            try:
                specs = json.loads(data.decode("utf-8"))
                rules = parse_rules(specs, "rule")
            except (UnicodeDecodeError, json.JSONDecodeError, FaultRuleError) as e:
                self.last_error = str(e).splitlines()[0]
                return _check(cmd, S.invalid_param_field(0))
            self.last_error = ""
            self.rules.extend(rules)
            return Response(Status.GOOD)
        if action == 1:
            if length:
                return _check(cmd, S.invalid_cdb_field(6))
            self.clear()
            return Response(Status.GOOD)
        if action == 2:
            doc = json.dumps({"rules": [dict(r.spec, matched=r.matched, fired=r.fired)
                                        for r in self.rules],
                              "last_error": getattr(self, "last_error", "")}).encode()
            edtl = cmd.expected_length if cmd.expected_length is not None else length
            out = doc[:min(length, edtl)]
            return Response(Status.GOOD, out, residual=edtl - len(out))
        return _check(cmd, S.invalid_cdb_field(1))


def fault_control_cdb(action: int, length: int = 0) -> bytes:
    """CDB of FAULT CONTROL: 0 add (data-out JSON), 1 clear, 2 list (data-in JSON)."""
    return bytes([FAULT_CONTROL_OPCODE, action, 0, 0, 0, 0]) + length.to_bytes(4, "big") + b"\0\0"


Delay = Callable[[float], None]
