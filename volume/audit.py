"""Tracker self-audit: does the map miss writes? (docs/backup-audit.md)

The map says a block whose entry is older than the current generation was not
written since the backup that closed that generation -- which sent it and
kept its CRC32C (volume/blockcrc.py).  The audit re-reads a deterministic
sample of those blocks (every ``rate``-th block, from a phase that moves with
the generation, so successive audits cover other blocks; ``rate=1``: all) and
compares.  One mismatch means a write reached the volume without the tracker
seeing it (a bug, or a write behind its back): the map cannot be trusted, so
the audit escalates to every unchanged block, marks each mismatching block in
the current generation (the next differential carries exactly what was
missed) and reports them.  False alarms are impossible by construction: the
table is written before a backup's cut commits and deleted by any restore.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import crc32c
from bitarray import bitarray

from . import blockcrc
from .genmap import extents
from .session import BackupRefused
from .tracked import TrackingStore

__all__ = ["audit", "AuditReport", "AuditUnavailable", "DEFAULT_RATE"]

DEFAULT_RATE = 1024
_READ_BLOCKS = 256                  # blocks read per call (1 MiB of 4 KiB blocks)


class AuditUnavailable(BackupRefused):
    """Nothing to compare against (no table, another full backup, a stream open).
    A refusal like a backup's: the SCSI side answers COMMAND SEQUENCE ERROR."""


@dataclass
class AuditReport:
    rate: int
    phase: int
    generation: int                  # the current (open) generation
    candidates: int                  # blocks the map calls unchanged since their backup
    checked: int = 0
    escalated: bool = False          # a sampled mismatch made it compare every candidate
    mismatched: list[tuple[int, int]] = field(default_factory=list)    # block extents
    remarked: int = 0                # blocks marked for the next differential
    seconds: float = 0.0
    # set when ``mismatched`` may be cut short (a report over the wire)
    mismatch_total: int | None = None

    @property
    def mismatched_blocks(self) -> int:
        if self.mismatch_total is not None:
            return self.mismatch_total
        return sum(k for _a, k in self.mismatched)

    @property
    def ok(self) -> bool:
        return self.mismatched_blocks == 0


def phase_for(base_id: bytes, generation: int, rate: int) -> int:
    """The sample's first block: fixed for a generation, different for the next."""
    return (crc32c.crc32c(base_id) + generation) % rate


def _compare(vol: TrackingStore, sel: bitarray, table, bs: int) -> tuple[int, bitarray]:
    """CRC every selected block; return (blocks checked, mismatch bits)."""
    size = vol.size
    bad = bitarray(len(sel), endian="little")
    bad.setall(0)
    crc = crc32c.crc32c
    buf = bytearray(_READ_BLOCKS * bs)
    checked = 0
    store = vol.inner                    # the backing data itself: what a restore would read
    for a, k in extents(sel):
        while k:
            n = min(k, _READ_BLOCKS)
            off = a * bs
            length = min((a + n) * bs, size) - off
            mv = memoryview(buf)[:length]
            store.readinto(off, mv)
            for i in range(n):
                if crc(mv[i * bs:(i + 1) * bs]) != table[a + i]:
                    bad[a + i] = 1
            checked += n
            a += n
            k -= n
    return checked, bad


def audit(vol: TrackingStore, *, rate: int = DEFAULT_RATE, full: bool = False,
          remark: bool = True) -> AuditReport:
    """Audit ``vol`` (rate: check one block in ``rate``; full: all of them)."""
    if rate < 1:
        raise ValueError("rate must be at least 1")
    if not vol.keeps_crcs:
        raise AuditUnavailable("this volume keeps no block CRC table (a memory volume)")
    try:
        crcs = vol.load_crcs()
    except blockcrc.BlockCrcError as e:
        raise AuditUnavailable(f"{e}; take a full backup to start a new one") from None
    gmap = vol.map
    if crcs is None:
        raise AuditUnavailable("no backup recorded block CRCs for this volume yet (the table "
                               "starts with the next full backup)")
    # A table shorter than the map: the volume grew since; its added blocks are in
    # the current generation until the next differential sends them (and the
    # table grows), so only the table's blocks are candidates.
    if not crcs.complete or crcs.base_id != gmap.base_id or crcs.entries > gmap.entries or \
            crcs.block_size != gmap.granularity:
        raise AuditUnavailable("the block CRC table belongs to another full backup than the "
                               "map's: take a full backup")
    if gmap.pending_cut is not None:
        raise AuditUnavailable("a backup stream is open: audit once it was read to its end "
                               "(or abandoned)")
    t0 = time.perf_counter()
    rate = 1 if full else rate
    cur = gmap.current_generation
    entries, bs = gmap.entries, gmap.granularity
    unchanged = gmap.blocks_older_than(0, entries, cur)
    if crcs.entries < entries:
        # the old partial last block too: its bytes past the old end are new
        unchanged[crcs.volume_size // bs:] = 0
    phase = phase_for(gmap.base_id, cur, rate)
    rep = AuditReport(rate, phase, cur, unchanged.count())
    sample = bitarray(entries, endian="little")
    sample.setall(0)
    sample[phase::rate] = 1
    sample &= unchanged
    rep.checked, bad = _compare(vol, sample, crcs.table, bs)
    if bad.any() and rate > 1:
        rep.escalated = True
        rest = unchanged & ~sample
        more, bad2 = _compare(vol, rest, crcs.table, bs)
        rep.checked += more
        bad |= bad2
    # A block written while the audit read it was marked before its data
    # changed (the tracker marks first): it is the map doing its job, not a miss.
    bad &= gmap.blocks_older_than(0, entries, cur)
    rep.mismatched = list(extents(bad))
    if rep.mismatched and remark:
        size = vol.size
        for a, k in rep.mismatched:
            off = a * bs
            gmap.mark(off, min((a + k) * bs, size) - off)
        rep.remarked = rep.mismatched_blocks
    rep.seconds = time.perf_counter() - t0
    return rep
