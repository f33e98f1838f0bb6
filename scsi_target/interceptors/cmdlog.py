"""Command log: every command a LUN map answered, in a bounded ring.

Each :class:`CommandRecord` holds the initiator, the CDB (decoded: name, LBA and
block count for the block commands), the data-out length, status, sense and
latency.  The assertion helpers (:meth:`CommandLog.assert_count`,
:meth:`CommandLog.assert_writes_within`, :meth:`CommandLog.assert_synced`, ...)
raise AssertionError with the offending commands decoded, one per line.

The log is one interceptor of the chain in :mod:`.chain`; a LUN map without
interceptors pays nothing.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from ..scsi import sense as S
from ..scsi.command import Command, Response, Status

# Block commands: opcode -> (LBA, block count) decoder, and whether the command
# writes the medium.  Tape and other kinds fall back to the dispatch-table name.
_BE = int.from_bytes


def _rw6(c: bytes):
    return ((c[1] & 0x1F) << 16) | (c[2] << 8) | c[3], c[4] or 256


def _l10(c: bytes):
    return _BE(c[2:6], "big"), _BE(c[7:9], "big")


def _l12(c: bytes):
    return _BE(c[2:6], "big"), _BE(c[6:10], "big")


def _l16(c: bytes):
    return _BE(c[2:10], "big"), _BE(c[10:14], "big")


BLOCK_OPS: dict[int, tuple[str, Callable, int, bool]] = {
    # opcode: (name, decoder, minimum CDB length, writes)
    0x08: ("READ(6)", _rw6, 6, False),
    0x0A: ("WRITE(6)", _rw6, 6, True),
    0x28: ("READ(10)", _l10, 10, False),
    0x2A: ("WRITE(10)", _l10, 10, True),
    0x2E: ("WRITE AND VERIFY(10)", _l10, 10, True),
    0x2F: ("VERIFY(10)", _l10, 10, False),
    0x35: ("SYNCHRONIZE CACHE(10)", _l10, 10, False),
    0x41: ("WRITE SAME(10)", _l10, 10, True),
    0x89: ("COMPARE AND WRITE", lambda c: (_BE(c[2:10], "big"), c[13]), 14, True),
    0x88: ("READ(16)", _l16, 16, False),
    0x8A: ("WRITE(16)", _l16, 16, True),
    0x8E: ("WRITE AND VERIFY(16)", _l16, 16, True),
    0x8F: ("VERIFY(16)", _l16, 16, False),
    0x91: ("SYNCHRONIZE CACHE(16)", _l16, 16, False),
    0x93: ("WRITE SAME(16)", _l16, 16, True),
    0xA8: ("READ(12)", _l12, 12, False),
    0xAA: ("WRITE(12)", _l12, 12, True),
}
SYNC_OPS = frozenset({0x35, 0x91})
# The pseudo record of a session's end (logout or lost connection) on a LUN.
NEXUS_LOSS = "I_T NEXUS LOSS"
WRITE_OPS = frozenset(op for op, v in BLOCK_OPS.items() if v[3]) | {0x42}  # + UNMAP


def block_range(cdb: bytes) -> tuple[int, int] | None:
    """(LBA, blocks) of a block READ/WRITE/VERIFY/SYNC CDB; None for others."""
    if not cdb:
        return None
    spec = BLOCK_OPS.get(cdb[0])
    if spec is None or len(cdb) < spec[2]:
        return None
    return spec[1](bytes(cdb))


@dataclass(frozen=True, slots=True)
class CommandRecord:
    seq: int
    initiator: str
    lun: int
    cdb: bytes
    name: str
    lba: int | None
    blocks: int | None
    data_out_length: int
    status: Status
    sense: bytes
    latency: float       # seconds, the LUN map's execution plus the injected faults
    fault: str = ""      # the fault rule that acted on this command, if any

    @property
    def opcode(self) -> int:
        return self.cdb[0] if self.cdb else -1

    @property
    def writes(self) -> bool:
        return self.opcode in WRITE_OPS

    def describe(self) -> str:
        where = f" LBA {self.lba} x{self.blocks}" if self.lba is not None else ""
        out = f" out={self.data_out_length}" if self.data_out_length else ""
        status = self.status.name if isinstance(self.status, Status) else f"0x{self.status:02x}"
        if self.sense:
            try:
                status += f" [{S.describe_sense(self.sense)}]"
            except Exception:   # undecodable sense still shows as hex
                status += f" [sense {self.sense.hex()}]"
        fault = f" fault={self.fault}" if self.fault else ""
        return (f"#{self.seq} {self.initiator} LUN {self.lun} {self.name}{where}{out} "
                f"cdb={self.cdb.hex()} -> {status} {self.latency * 1e3:.3f} ms{fault}")


def _names(x: str | int | Iterable) -> Callable[[CommandRecord], bool]:
    """A matcher for opcode numbers or (case-insensitive) names, with or without "(10)"."""
    items = [x] if isinstance(x, (str, int)) else list(x)
    ops = {i for i in items if isinstance(i, int)}
    names = {i.upper() for i in items if isinstance(i, str)}

    def match(r: CommandRecord) -> bool:
        if r.opcode in ops:
            return True
        n = r.name.upper()
        return n in names or n.split("(")[0] in names
    return match


class CommandLog:
    """A bounded ring of :class:`CommandRecord` (the oldest fall off first)."""

    def __init__(self, maxlen: int = 10000, name_of: Callable[[int, bytes], str] | None = None):
        if maxlen < 1:
            raise ValueError(f"command log size {maxlen} must be at least 1")
        # Raw tuples on the hot path; decoded into CommandRecords when asked.
        self._ring: collections.deque[tuple] = collections.deque(maxlen=maxlen)
        self.seq = 0
        self._name_of = name_of
        # Deferred commands are recorded from their store's completion threads.
        self._lock = threading.Lock()

    # -- the interceptor -------------------------------------------------
    def record(self, cmd: Command, resp: Response, latency: float, fault: str = "") -> None:
        d = cmd.data_out
        cdb = cmd.cdb
        if type(cdb) is not bytes:      # a view of a receive buffer would change under us
            cdb = bytes(cdb)
        dlen = 0 if d is None else len(d) if not isinstance(d, memoryview) else d.nbytes
        with self._lock:
            self.seq += 1
            self._ring.append((self.seq, cmd.nexus.initiator, cmd.lun, cdb, dlen, resp.status,
                               resp.sense, latency, fault))

    def nexus_lost(self, nexus, lun: int) -> None:
        """Mark the end of an I_T nexus (logout, dropped connection) on ``lun``."""
        if nexus is None:          # a LU reset, not the end of a session
            return
        with self._lock:
            self.seq += 1
            self._ring.append((self.seq, nexus.initiator, lun, b"", 0, Status.GOOD, b"", 0.0,
                               NEXUS_LOSS))

    @property
    def dropped(self) -> int:
        """Commands that fell off the ring."""
        return self.seq - len(self._ring)

    def _decode(self, raw: tuple) -> CommandRecord:
        seq, initiator, lun, cdb, dlen, status, sense, latency, fault = raw
        cdb = bytes(cdb)
        rng = block_range(cdb)
        spec = BLOCK_OPS.get(cdb[0]) if cdb else None
        if fault == NEXUS_LOSS:
            name, fault = NEXUS_LOSS, ""
        elif spec is not None:
            name = spec[0]
        elif self._name_of is not None:
            name = self._name_of(lun, cdb)
        else:
            name = f"opcode 0x{cdb[0]:02x}" if cdb else "(empty CDB)"
        st = Status(status) if status in Status else status
        return CommandRecord(seq, initiator, lun, cdb, name, rng[0] if rng else None,
                             rng[1] if rng else None, dlen, st, bytes(sense), latency, fault)

    @property
    def records(self) -> list[CommandRecord]:
        return [self._decode(r) for r in list(self._ring)]

    # -- queries ---------------------------------------------------------
    def __iter__(self) -> Iterator[CommandRecord]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self._ring)

    def clear(self) -> None:
        self._ring.clear()

    def select(self, what=None, *, lun: int | None = None,
               initiator: str | None = None) -> list[CommandRecord]:
        """Records by opcode/name (one or several), LUN and initiator (substring)."""
        match = _names(what) if what is not None else (lambda r: True)
        return [r for r in self.records if match(r) and (lun is None or r.lun == lun)
                and (initiator is None or initiator in r.initiator)]

    def writes(self, lun: int | None = None) -> list[CommandRecord]:
        return [r for r in self.records if r.writes and (lun is None or r.lun == lun)]

    def format(self, records: Iterable[CommandRecord] | None = None, limit: int = 50) -> str:
        recs = list(self.records if records is None else records)
        lines = [r.describe() for r in recs[-limit:]]
        if len(recs) > limit:
            lines.insert(0, f"... {len(recs) - limit} earlier commands not shown")
        return "\n".join("  " + line for line in lines) or "  (no commands)"

    # -- assertions ------------------------------------------------------
    def assert_count(self, what, expected: int, *, lun: int | None = None) -> list[CommandRecord]:
        """Exactly ``expected`` commands matching ``what`` (e.g. "WRITE FILEMARKS")."""
        got = self.select(what, lun=lun)
        if len(got) != expected:
            raise AssertionError(
                f"expected exactly {expected} {what} command(s), saw {len(got)}:\n"
                f"{self.format(got)}\nwhole log:\n{self.format()}")
        return got

    def assert_once(self, what, *, lun: int | None = None) -> CommandRecord:
        return self.assert_count(what, 1, lun=lun)[0]

    def assert_none(self, what, *, lun: int | None = None) -> None:
        self.assert_count(what, 0, lun=lun)

    def assert_writes_within(self, first_lba: int, end_lba: int, *,
                             lun: int | None = None) -> None:
        """No medium write outside LBAs ``first_lba`` .. ``end_lba`` - 1."""
        bad = []
        for r in self.writes(lun):
            if r.lba is None:          # UNMAP: ranges live in the parameter list
                continue
            if r.lba < first_lba or r.lba + max(r.blocks or 0, 1) > end_lba:
                bad.append(r)
        if bad:
            raise AssertionError(f"{len(bad)} write(s) outside LBA {first_lba}..{end_lba - 1}:\n"
                                 f"{self.format(bad)}")

    def assert_synced(self, *, lun: int | None = None, initiator: str | None = None) -> None:
        """Every successful WRITE was followed by a successful SYNCHRONIZE CACHE from the
        same initiator to the same LUN before that initiator's session ended (logout or
        lost connection) and before the log ends."""
        unsynced: dict[tuple[str, int], list[CommandRecord]] = {}
        bad: list[CommandRecord] = []
        ended: list[CommandRecord] = []
        for r in self.records:
            if (lun is not None and r.lun != lun) or \
                    (initiator is not None and initiator not in r.initiator):
                continue
            key = (r.initiator, r.lun)
            if r.name == NEXUS_LOSS:
                lost = unsynced.pop(key, [])
                if lost:
                    bad += lost
                    ended.append(r)
            elif r.writes and r.status == Status.GOOD:
                unsynced.setdefault(key, []).append(r)
            elif r.opcode in SYNC_OPS and r.status == Status.GOOD:
                unsynced.pop(key, None)
        bad += [r for rs in unsynced.values() for r in rs]
        if bad:
            bad.sort(key=lambda r: r.seq)
            end = f"; sessions that ended first:\n{self.format(ended)}" if ended else ""
            raise AssertionError(f"{len(bad)} write(s) never followed by SYNCHRONIZE CACHE:\n"
                                 f"{self.format(bad)}{end}")

    def assert_all_good(self, what=None, *, lun: int | None = None) -> None:
        bad = [r for r in self.select(what, lun=lun) if r.status != Status.GOOD]
        if bad:
            raise AssertionError(f"{len(bad)} command(s) did not end GOOD:\n{self.format(bad)}")


def now() -> float:
    return time.perf_counter()
