"""Replay a trace against a live target with our initiator, and compare.

Commands go out in trace order, one session per recorded I_T nexus, as
fast as the target answers or at the recorded pace scaled by a factor.
Each answer is compared with the recording (:mod:`.compare`); the result is
a :class:`~.report.ReplayReport`.

Options map the recording onto the target: LUN remapping (a trace with one
LUN maps onto the URL's LUN by default), an LBA offset for block commands,
nexus and LUN filters, opcodes to leave out, fields to ignore.  ``seed``
first writes, for every block a recorded read returned before the trace
itself wrote it, the data that read returned — so that reads on a fresh
volume can match.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from ..initiator.client import IscsiClient
from ..initiator.errors import IscsiError
from ..initiator.url import IscsiUrl, parse_url
from .cdbmap import READS, WRITES, extent, shift_lba
from .compare import IgnoreRule, Outcome, Scope, compare, ignored_fields
from .records import Exchange, Trace
from .report import ReplayReport

SEED_CHUNK = 1 << 20


class ReplayError(Exception):
    """The replay cannot go on (no session, bad option for this trace)."""


@dataclass
class ReplayOptions:
    ignore: list[IgnoreRule] = field(default_factory=list)
    skip: list[Scope] = field(default_factory=list)          # opcodes/commands not replayed
    stop_at_first: bool = False
    lun_map: dict[int, int] = field(default_factory=dict)
    lba_offset: int = 0
    nexus: list[str] = field(default_factory=list)          # substrings of initiator/target
    luns: set[int] = field(default_factory=set)             # recorded LUNs to keep
    seed: bool = False
    timing: float | None = None         # None: as fast as possible; else scale of recorded gaps
    timeout: float = 30.0
    # Commands outstanding per session (1: each waits for the previous answer).
    # More is faster, but a target may then run SIMPLE tasks in another order.
    queue_depth: int = 1


def select(trace: Trace, opts: ReplayOptions) -> tuple[list[Exchange], dict[str, int]]:
    """The commands to replay, and why the others are left out (reason → count)."""
    keep, left = [], {}
    for ex in trace.commands:
        n = ex.nexus
        if opts.nexus and not any(s in f"{n.initiator} {n.target} {n.initiator_addr} "
                                  f"{n.target_addr}" for s in opts.nexus):
            reason = "nexus filter"
        elif opts.luns and n.lun not in opts.luns:
            reason = "LUN filter"
        elif any(s.matches(ex.cdb) for s in opts.skip):
            reason = "ignored opcode"
        elif ex.direction == "bidi":
            reason = "bidirectional (not supported by the initiator)"
        else:
            keep.append(ex)
            continue
        left[reason] = left.get(reason, 0) + 1
    return keep, left


def lun_mapping(commands: list[Exchange], url: IscsiUrl, opts: ReplayOptions) -> dict[int, int]:
    """Recorded LUN → target LUN: ``opts.lun_map``, else a single LUN goes to the URL's."""
    luns = sorted({ex.nexus.lun for ex in commands})
    if opts.lun_map:
        return {lun: opts.lun_map.get(lun, lun) for lun in luns}
    if len(luns) == 1:
        return {luns[0]: url.lun}
    return {lun: lun for lun in luns}


def seed_extents(commands: list[Exchange], block_size: int) -> list[tuple[int, int, bytes]]:
    """(LUN, LBA, data) runs that make a fresh volume answer the trace's reads."""
    written: dict[int, set[int]] = {}
    seeded: dict[int, dict[int, bytes]] = {}
    for ex in commands:
        ext = extent(ex.cdb)
        if ext is None:
            continue
        lba, n = ext
        lun = ex.nexus.lun
        if ex.opcode in WRITES and ex.status in (0, None):
            written.setdefault(lun, set()).update(range(lba, lba + n))
        elif ex.opcode in READS and ex.status == 0 and len(ex.data_in) >= n * block_size:
            w = written.get(lun, set())
            s = seeded.setdefault(lun, {})
            for i in range(n):
                b = lba + i
                if b not in w and b not in s:
                    s[b] = ex.data_in[i * block_size:(i + 1) * block_size]
    runs = []
    for lun, blocks in seeded.items():
        start, buf = None, bytearray()
        for b in sorted(blocks):
            if start is not None and b == start + len(buf) // block_size \
                    and len(buf) < SEED_CHUNK:
                buf += blocks[b]
                continue
            if start is not None:
                runs.append((lun, start, bytes(buf)))
            start, buf = b, bytearray(blocks[b])
        if start is not None:
            runs.append((lun, start, bytes(buf)))
    return runs


def _write16(lba: int, blocks: int) -> bytes:
    return bytes([0x8A, 0]) + lba.to_bytes(8, "big") + blocks.to_bytes(4, "big") + b"\x00\x00"


class Replayer:
    def __init__(self, trace: Trace, url: str, opts: ReplayOptions | None = None) -> None:
        self.trace = trace
        self.url = parse_url(url)
        self.opts = opts or ReplayOptions()
        self._clients: dict[tuple[str, str], IscsiClient] = {}
        self.seeded = 0      # bytes written by seeding

    async def _client(self, it: tuple[str, str]) -> IscsiClient:
        c = self._clients.get(it)
        if c is None:
            try:
                c = await IscsiClient.connect(self.url, timeout=self.opts.timeout)
            except (IscsiError, OSError) as e:
                raise ReplayError(f"cannot open a session to {self.url}: {e}") from None
            self._clients[it] = c
        return c

    async def _close(self) -> None:
        for c in self._clients.values():
            try:
                await c.close()
            except (IscsiError, OSError):
                pass
        self._clients.clear()

    async def run(self) -> ReplayReport:
        commands, left = select(self.trace, self.opts)
        report = ReplayReport(self.trace, str(self.url), left)
        lmap = lun_mapping(commands, self.url, self.opts)
        prepared = []
        for ex in commands:
            try:
                cdb = shift_lba(ex.cdb, self.opts.lba_offset)
            except ValueError as e:
                raise ReplayError(f"command {ex.seq}: {e}") from None
            prepared.append((ex, cdb, lmap.get(ex.nexus.lun, ex.nexus.lun)))
        try:
            if self.opts.seed and commands:
                await self._seed(commands, lmap)
            report.seeded_bytes = self.seeded
            await self._replay(prepared, report)
        finally:
            await self._close()
        return report

    async def _seed(self, commands: list[Exchange], lmap: dict[int, int]) -> None:
        # A session of its own: the recorded nexuses must find the target as
        # the recording did (e.g. their first command meets POWER ON RESET).
        first = await self._client(("seed", "seed"))
        sizes: dict[int, int] = {}
        for lun in set(lmap.values()):
            try:
                await first.execute(bytes(6), lun=lun)   # takes this nexus's unit attention
                sizes[lun] = (await first.read_capacity16(lun)).block_size
            except (IscsiError, OSError) as e:
                raise ReplayError(f"seeding: READ CAPACITY(16) of LUN {lun} failed: {e}") from None
        runs = []
        for rec_lun, lun in lmap.items():
            mine = [ex for ex in commands if ex.nexus.lun == rec_lun]
            runs += [(lun, lba, data, sizes[lun])
                     for _, lba, data in seed_extents(mine, sizes[lun])]
        for lun, lba, data, block_size in runs:
            lba += self.opts.lba_offset
            r = await first.execute(_write16(lba, len(data) // block_size), data_out=data,
                                    lun=lun)
            if not r.good:
                raise ReplayError(f"seeding LBA {lba} of LUN {lun} failed: status "
                                  f"0x{r.status:02x} sense {r.sense.hex()}")
        self.seeded = sum(len(d) for _, _, d, _ in runs)
        await first.close()
        self._clients.pop(("seed", "seed"), None)

    async def _replay(self, prepared, report: ReplayReport) -> None:
        t0_rec = prepared[0][0].t_command if prepared else 0.0
        t0 = time.perf_counter()
        window: list = []          # (exchange, pending answer) in issue order
        qd = max(1, self.opts.queue_depth)
        for ex, cdb, lun in prepared:
            if self.opts.timing is not None:
                due = t0 + (ex.t_command - t0_rec) * self.opts.timing
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            client = await self._client(ex.nexus.it)
            window.append((ex, await self._submit(client, ex, cdb, lun)))
            while len(window) >= qd:
                if await self._settle(window.pop(0), report):
                    await self._drain(window)
                    report.elapsed = time.perf_counter() - t0
                    return
        while window:
            if await self._settle(window.pop(0), report):
                break
        await self._drain(window)
        report.elapsed = time.perf_counter() - t0

    async def _drain(self, window) -> None:
        for _, fut in window:
            fut.cancel()
        for _, fut in window:
            try:
                await fut
            except (asyncio.CancelledError, Exception):
                pass
        window.clear()

    async def _settle(self, item, report: ReplayReport) -> bool:
        """Wait for one answer and compare it; True when the replay stops here."""
        ex, fut = item
        got = await fut
        diffs = [] if ex.status is None else compare(
            ex, got, ignored_fields(self.opts.ignore, ex.cdb))
        report.add(ex, got, diffs)
        if got.error:
            # The session is gone; a new one for the next command.
            self._clients.pop(ex.nexus.it, None)
        if diffs and self.opts.stop_at_first:
            report.stopped_at = ex.seq
            return True
        return False

    async def _submit(self, client: IscsiClient, ex: Exchange, cdb: bytes, lun: int):
        """Put the command on the wire (in trace order); an awaitable of its Outcome."""
        data_out = ex.data_out if ex.direction == "out" else None
        if data_out is not None and len(data_out) < ex.edtl:
            data_out = bytes(data_out) + bytes(ex.edtl - len(data_out))
        read_length = ex.edtl if ex.direction == "in" else 0
        start = time.perf_counter()
        try:
            handle = await client.submit(cdb, data_out=data_out or None,
                                         read_length=read_length, lun=lun,
                                         timeout=self.opts.timeout)
        except (IscsiError, OSError, ValueError) as e:
            return _done(Outcome(None, error=f"{type(e).__name__}: {e}",
                                 latency=time.perf_counter() - start))

        async def answer() -> Outcome:
            try:
                r = await handle.result()
            except (IscsiError, OSError, ValueError) as e:
                return Outcome(None, error=f"{type(e).__name__}: {e}",
                               latency=time.perf_counter() - start)
            return Outcome(r.status, r.response, bytes(r.sense), bytes(r.data), r.residual,
                           latency=time.perf_counter() - start)
        return asyncio.ensure_future(answer())


def _done(outcome: Outcome) -> asyncio.Future:
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(outcome)
    return fut


def replay(trace: Trace, url: str, opts: ReplayOptions | None = None) -> ReplayReport:
    """Blocking form of :meth:`Replayer.run`."""
    return asyncio.run(Replayer(trace, url, opts).run())


def replay_through(trace: Trace, execute, opts: ReplayOptions | None = None, *,
                   default_lun: int = 0, target: str = "") -> ReplayReport:
    """Replay over one caller-provided path, synchronously.

    ``execute(cdb, data_out, read_length, lun) -> Outcome`` runs one command
    (e.g. a console's session, or an in-process LUN map); every recorded
    nexus shares it.  Seeding goes through it too.
    """
    opts = opts or ReplayOptions()
    commands, left = select(trace, opts)
    report = ReplayReport(trace, target, left)
    luns = sorted({ex.nexus.lun for ex in commands})
    lmap = dict(opts.lun_map) if opts.lun_map else (
        {luns[0]: default_lun} if len(luns) == 1 else {lun: lun for lun in luns})
    prepared = []
    for ex in commands:
        try:
            prepared.append((ex, shift_lba(ex.cdb, opts.lba_offset),
                             lmap.get(ex.nexus.lun, ex.nexus.lun)))
        except ValueError as e:
            raise ReplayError(f"command {ex.seq}: {e}") from None
    if opts.seed and commands:
        for rec_lun in luns:
            lun = lmap.get(rec_lun, rec_lun)
            got = execute(bytes([0x9E, 0x10]) + bytes(8) + (32).to_bytes(4, "big") + bytes(2),
                          None, 32, lun)
            if got.status != 0 or len(got.data_in) < 12:
                raise ReplayError(f"seeding: READ CAPACITY(16) of LUN {lun} failed")
            bs = int.from_bytes(got.data_in[8:12], "big")
            for _, lba, data in seed_extents([e for e in commands if e.nexus.lun == rec_lun], bs):
                r = execute(_write16(lba + opts.lba_offset, len(data) // bs), data, 0, lun)
                if r.status != 0:
                    raise ReplayError(f"seeding LBA {lba + opts.lba_offset} of LUN {lun} failed")
                report.seeded_bytes += len(data)
    t0_rec = prepared[0][0].t_command if prepared else 0.0
    t0 = time.perf_counter()
    for ex, cdb, lun in prepared:
        if opts.timing is not None:
            delay = t0 + (ex.t_command - t0_rec) * opts.timing - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        data_out = ex.data_out if ex.direction == "out" else None
        if data_out is not None and len(data_out) < ex.edtl:
            data_out = bytes(data_out) + bytes(ex.edtl - len(data_out))
        got = execute(cdb, data_out or None, ex.edtl if ex.direction == "in" else 0, lun)
        diffs = [] if ex.status is None else compare(ex, got, ignored_fields(opts.ignore, ex.cdb))
        report.add(ex, got, diffs)
        if diffs and opts.stop_at_first:
            report.stopped_at = ex.seq
            break
    report.elapsed = time.perf_counter() - t0
    return report
