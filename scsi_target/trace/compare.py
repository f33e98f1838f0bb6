"""Recorded answer vs replayed answer: which fields differ.

Compared: iSCSI response, SCSI status, sense key/ASC/ASCQ (not the whole
sense: information and field pointers legitimately differ between
implementations only when the key does), data-in bytes and residual.
A *scope* names the commands a rule applies to: ``0x12`` (opcode),
``INQUIRY`` / ``read(10)`` (command name), ``cdb=1201`` (CDB hex prefix) or
``*`` (every command).
"""
from __future__ import annotations

from dataclasses import dataclass

from .records import Exchange, command_name, sense_key_asc_ascq

FIELDS = ("response", "status", "sense", "data_in", "residual")


class ScopeError(ValueError):
    pass


@dataclass(frozen=True)
class Scope:
    text: str
    opcode: int | None = None
    name: str | None = None
    prefix: bytes | None = None

    @classmethod
    def parse(cls, text: str) -> "Scope":
        t = text.strip()
        if not t:
            raise ScopeError("empty command scope")
        if t == "*":
            return cls(t)
        if t.lower().startswith("cdb="):
            try:
                return cls(t, prefix=bytes.fromhex(t[4:]))
            except ValueError:
                raise ScopeError(f"bad CDB prefix {t[4:]!r} (hex bytes, e.g. cdb=1201)") from None
        if t.lower().startswith("0x"):
            try:
                op = int(t, 16)
            except ValueError:
                op = -1
            if not 0 <= op <= 0xFF:
                raise ScopeError(f"bad opcode {t!r} (0x00..0xff)")
            return cls(t, opcode=op)
        return cls(t, name=t.upper())

    def matches(self, cdb: bytes) -> bool:
        if self.opcode is not None:
            return bool(cdb) and cdb[0] == self.opcode
        if self.prefix is not None:
            return cdb.startswith(self.prefix)
        if self.name is not None:
            return command_name(cdb).upper() == self.name
        return True


@dataclass(frozen=True)
class IgnoreRule:
    scope: Scope
    fields: frozenset

    @classmethod
    def parse(cls, text: str) -> "IgnoreRule":
        """``FIELD[,FIELD]`` or ``SCOPE:FIELD[,FIELD]``."""
        scope_s, sep, fields_s = text.rpartition(":")
        if not sep:
            scope_s, fields_s = "*", text
        fields = frozenset(f.strip() for f in fields_s.split(",") if f.strip())
        bad = fields - set(FIELDS)
        if bad or not fields:
            raise ScopeError(f"unknown field {', '.join(sorted(bad)) or '(none)'} in "
                             f"--ignore {text!r} (fields: {', '.join(FIELDS)})")
        return cls(Scope.parse(scope_s), fields)


@dataclass(frozen=True)
class Outcome:
    """What the replayed command got back."""
    status: int | None
    response: int = 0
    sense: bytes = b""
    data_in: bytes = b""
    residual: int = 0
    error: str = ""          # transport failure (no answer at all)
    latency: float = 0.0


@dataclass(frozen=True)
class Difference:
    seq: int
    opcode: int
    name: str
    field: str
    recorded: str
    replayed: str

    def to_json(self) -> dict:
        return {"seq": self.seq, "opcode": self.opcode, "name": self.name, "field": self.field,
                "recorded": self.recorded, "replayed": self.replayed}


def _status(s) -> str:
    names = {0: "GOOD", 2: "CHECK CONDITION", 4: "CONDITION MET", 8: "BUSY",
             0x18: "RESERVATION CONFLICT", 0x28: "TASK SET FULL", 0x30: "ACA ACTIVE",
             0x40: "TASK ABORTED"}
    return "none" if s is None else names.get(s, f"0x{s:02x}")


def _sense(t) -> str:
    return "none" if t is None else f"{t[0]:X}/{t[1]:02X}/{t[2]:02X}"


def _data(a: bytes, b: bytes) -> tuple[str, str]:
    if len(a) != len(b):
        return f"{len(a)} bytes", f"{len(b)} bytes"
    first = next(i for i in range(len(a)) if a[i] != b[i])
    return (f"byte {first}: {a[first:first + 8].hex()}",
            f"byte {first}: {b[first:first + 8].hex()}")


def compare(rec: Exchange, got: Outcome, ignored: set[str]) -> list[Difference]:
    name = command_name(rec.cdb)

    def diff(field: str, a: str, b: str) -> Difference:
        return Difference(rec.seq, rec.opcode, name, field, a, b)

    if got.error:
        return [diff("transport", _status(rec.status), got.error)]
    out = []
    if "response" not in ignored and rec.response != got.response:
        out.append(diff("response", str(rec.response), str(got.response)))
    if "status" not in ignored and rec.status != got.status:
        out.append(diff("status", _status(rec.status), _status(got.status)))
    if "sense" not in ignored:
        a, b = sense_key_asc_ascq(rec.sense), sense_key_asc_ascq(got.sense)
        if a != b:
            out.append(diff("sense", _sense(a), _sense(b)))
    if "data_in" not in ignored and bytes(rec.data_in) != bytes(got.data_in):
        out.append(diff("data_in", *_data(bytes(rec.data_in), bytes(got.data_in))))
    if "residual" not in ignored and rec.residual != got.residual:
        out.append(diff("residual", str(rec.residual), str(got.residual)))
    return out


def ignored_fields(rules: list[IgnoreRule], cdb: bytes) -> set[str]:
    out: set[str] = set()
    for r in rules:
        if r.scope.matches(cdb):
            out |= r.fields
    return out
