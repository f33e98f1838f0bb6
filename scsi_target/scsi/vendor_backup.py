"""Vendor-specific backup commands of the backup pseudo device (opcodes C0h-C8h).

Layouts live in :mod:`scsi_target.scsi.layouts.backup`; semantics and byte
tables in docs/vendor-commands.md.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from volume import backup as B
from volume.audit import DEFAULT_RATE, audit
from volume.mapview import map_view
from volume.session import check_scope
from volume.stream import HEADER_SIZE, RECORD_HEADER_SIZE, TRAILER_SIZE

from .command import Command, Direction
from .dispatch import CommandSet, Conflict, data_out
from .layouts import backup as L
from . import sense as S

if TYPE_CHECKING:  # pragma: no cover
    from .backup_lu import BackupLU

VENDOR_BACKUP = CommandSet("VENDOR-BACKUP")


def _usage(opcode: int, flags: int) -> bytes:
    return bytes([opcode, flags, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00])


def _parse(cmd: Command) -> L.VendorCdb:
    cdb = cmd.cdb
    if len(cdb) < L.CDB_LEN:
        raise S.invalid_cdb_field(0)
    c = L.VendorCdb.unpack(cdb)
    bad = c.flags & ~L.CDB_FLAGS_ALLOWED[c.opcode]
    if bad:
        raise S.invalid_cdb_field(1, bad.bit_length() - 1)
    if c.reserved:
        raise S.invalid_cdb_field(10)
    if c.control:
        raise S.invalid_cdb_field(11)
    return c


def _check_scope(lu: "BackupLU", c: L.VendorCdb, full: bool) -> None:
    check_scope(lu.tracked, full, c.scope)     # ScopeError -> INVALID FIELD IN CDB (byte 2)


def _no_data(c: L.VendorCdb) -> None:
    if c.scope and c.opcode != L.OP_SELECT_BACKUP:
        raise S.invalid_cdb_field(2)


@VENDOR_BACKUP.command(L.OP_SELECT_BACKUP, "SELECT BACKUP", L.CDB_LEN, conflict=Conflict.WRITE,
                       usage=_usage(L.OP_SELECT_BACKUP,
                                    L.FLAG_FULL | L.FLAG_COMPRESS | L.FLAG_HOLD))
def select_backup(lu: "BackupLU", cmd: Command) -> None:
    c = _parse(cmd)
    if c.length:
        raise S.invalid_cdb_field(6)
    full = bool(c.flags & L.FLAG_FULL)
    _check_scope(lu, c, full)
    lu.medium.select(full, c.scope, bool(c.flags & L.FLAG_COMPRESS),
                     bool(c.flags & L.FLAG_HOLD))


def _status(lu: "BackupLU") -> L.BackupStatus:
    r = lu.medium.reader
    if r is None:
        return L.BackupStatus()
    lo, hi = r.header.generation_range
    state = L.STATE_COMPLETE if r.complete else L.STATE_HELD if r.read_through else \
        L.STATE_ACTIVE
    return L.BackupStatus(state=state,
                          full=r.header.full, compressed=r.compress, generation_lo=lo,
                          generation_hi=hi, block_count=r.header.block_count,
                          size_bound=r.size_bound, produced=r.produced,
                          read_prefix=r.cov.prefix, total=r.total or 0,
                          stream_id=r.header.stream_id)


@VENDOR_BACKUP.command(L.OP_START_BACKUP, "START BACKUP", L.CDB_LEN, direction=Direction.IN,
                       conflict=Conflict.WRITE,
                       usage=_usage(L.OP_START_BACKUP,
                                    L.FLAG_FULL | L.FLAG_COMPRESS | L.FLAG_HOLD))
def start_backup(lu: "BackupLU", cmd: Command) -> bytes:
    """The stream chosen with SELECT BACKUP; with FLAGS or SCOPE set, the stream they
    choose (as SELECT BACKUP's would), selected and started in one command."""
    c = _parse(cmd)
    with lu.medium.lock:
        if c.flags or c.scope:
            full = bool(c.flags & L.FLAG_FULL)
            if full:
                _check_scope(lu, c, True)
            # A full one's scope is checked first (as SELECT BACKUP's); a
            # differential's by the start itself, after any open stream was
            # abandoned, as every other refused start leaves it.
            lu.medium.start_selected(full, c.scope, bool(c.flags & L.FLAG_COMPRESS),
                                     bool(c.flags & L.FLAG_HOLD))
        else:
            lu.medium.start_backup()
        return _status(lu).pack()[:c.length]


@VENDOR_BACKUP.command(L.OP_COMMIT_BACKUP, "COMMIT BACKUP", L.CDB_LEN, conflict=Conflict.WRITE,
                       usage=_usage(L.OP_COMMIT_BACKUP, 0))
def commit_backup(lu: "BackupLU", cmd: Command) -> None:
    """Commit a held stream read to its end (the reader has stored it)."""
    c = _parse(cmd)
    _no_data(c)
    if c.length:
        raise S.invalid_cdb_field(6)
    with lu.medium.lock:
        lu.medium.sessions.commit_backup()


@VENDOR_BACKUP.command(L.OP_REPORT_BACKUP_STATUS, "REPORT BACKUP STATUS", L.CDB_LEN,
                       direction=Direction.IN, conflict=Conflict.ALLOWED,
                       usage=_usage(L.OP_REPORT_BACKUP_STATUS, 0))
def report_backup_status(lu: "BackupLU", cmd: Command) -> bytes:
    c = _parse(cmd)
    _no_data(c)
    with lu.medium.lock:
        return _status(lu).pack()[:c.length]


@VENDOR_BACKUP.command(L.OP_REPORT_GENERATIONS, "REPORT GENERATIONS", L.CDB_LEN,
                       direction=Direction.IN, conflict=Conflict.ALLOWED,
                       usage=_usage(L.OP_REPORT_GENERATIONS, 0))
def report_generations(lu: "BackupLU", cmd: Command) -> bytes:
    c = _parse(cmd)
    _no_data(c)
    vol = lu.tracked
    gmap = vol.map
    st = vol.state
    vid = gmap.volume_id
    mark = st.restore
    h = L.GenerationsHeader(
        current_generation=gmap.current_generation, granularity=gmap.granularity,
        source_lun=lu.source_lun, full_done=st.full_done,
        stream_active=lu.medium.reader is not None and not lu.medium.reader.complete,
        pending_valid=st.pending_lo is not None, volume_id_length=len(vid),
        volume_size=gmap.volume_size, entries=gmap.entries, pending_lo=st.pending_lo or 0,
        base_id=gmap.base_id, volume_id=vid,
        restore_incomplete=mark is not None and mark.incomplete,
        restore_interrupted=mark is not None and mark.stream is not None and
        (lu.medium.sessions.writer is None or lu.medium.sessions.writer.finished),
        unrecovered_blocks=mark.unrecovered_blocks if mark is not None else 0,
        start_selects=bool(L.CDB_FLAGS_ALLOWED[L.OP_START_BACKUP]))
    return L.GenerationsReport(h, gmap.counts()).pack()[:c.length]


@VENDOR_BACKUP.command(L.OP_ESTIMATE_BACKUP, "ESTIMATE BACKUP", L.CDB_LEN, direction=Direction.IN,
                       conflict=Conflict.ALLOWED,
                       usage=_usage(L.OP_ESTIMATE_BACKUP, L.FLAG_FULL | L.FLAG_COMPRESS))
def estimate_backup(lu: "BackupLU", cmd: Command) -> bytes:
    c = _parse(cmd)
    full = bool(c.flags & L.FLAG_FULL)
    _check_scope(lu, c, full)
    compressed = bool(c.flags & L.FLAG_COMPRESS)
    vol = lu.tracked
    gmap = vol.map
    if full:
        # Every block, one record per maximal run of 1 MiB.
        maxb = max(1, (1 << 20) // gmap.granularity)
        blocks = gmap.entries
        nbytes = HEADER_SIZE + TRAILER_SIZE + -(-blocks // maxb) * RECORD_HEADER_SIZE \
            + gmap.volume_size
        packed = _sample_ratio(vol, maxb * gmap.granularity) * nbytes if compressed else 0
        packed = int(packed)
    else:
        blocks = gmap.estimate_blocks(c.scope)
        nbytes = B.estimate(gmap, c.scope, False)
        packed = B.estimate(gmap, c.scope, True, store=vol, seed=0) if compressed else 0
    return L.Estimate(scope=c.scope, blocks=blocks, stream_bytes=nbytes,
                      compressed_bytes=packed).pack()[:c.length]


def _sample_ratio(vol, chunk: int, samples: int = 32) -> float:
    """zlib ratio of evenly spread chunks of the volume (zero chunks cost nothing)."""
    import zlib
    size = vol.size
    step = max(chunk, size // samples)
    raw = packed = 0
    for off in range(0, size, step):
        n = min(chunk, size - off)
        data = vol.read(off, n)
        raw += n
        if data.count(0) != n:
            packed += min(n, len(zlib.compress(data, 1)))
    return packed / raw if raw else 1.0


_STATE_CODE = {name: i for i, name in enumerate(L.RESTORE_STATES)}


def restore_report(lu: "BackupLU") -> L.RestoreReportData:
    res = lu.medium.last_restore
    chk = res.check
    h = res.header
    lo, hi = h.generation_range if h else (0, 0)
    bad = []
    for d in (chk.damage if chk else []):
        bad.append(L.BadRecordDesc(block_valid=d.first_block is not None,
                                   generation=d.generation or 0, first_block=d.first_block or 0,
                                   nblocks=d.nblocks or 0, stream_offset=d.offset))
    ext = [L.ExtentDesc(a, n) for a, n in res.unrecovered]
    msgs = list(res.errors) + (list(chk.errors) if chk else [])
    msgs += [f"offset {d.offset}: {d.reason}" for d in (chk.damage if chk else [])][:64]
    hdr = L.RestoreHeader(
        state=_STATE_CODE.get(res.state, 0), full=bool(h and h.full), generation_lo=lo,
        generation_hi=hi, bytes_received=res.bytes,
        records_applied=chk.applied if chk else 0,
        skipped_older=chk.skipped_older if chk else 0,
        skipped_forbidden=chk.skipped_forbidden if chk else 0,
        bad_records=len(chk.damage) if chk else 0,
        blocks_written=chk.blocks_written if chk else 0,
        unrecovered_blocks=sum(n for _a, n in res.unrecovered),
        stream_id=h.stream_id if h else bytes(16))
    return L.RestoreReportData(hdr, bad, ext, "\n".join(msgs))


@VENDOR_BACKUP.command(L.OP_REPORT_RESTORE_RESULTS, "REPORT RESTORE RESULTS", L.CDB_LEN,
                       direction=Direction.IN, conflict=Conflict.ALLOWED,
                       usage=_usage(L.OP_REPORT_RESTORE_RESULTS, 0))
def report_restore_results(lu: "BackupLU", cmd: Command) -> bytes:
    c = _parse(cmd)
    _no_data(c)
    with lu.medium.lock:
        return restore_report(lu).pack()[:c.length]


@VENDOR_BACKUP.command(L.OP_SET_RESTORE_OPTIONS, "SET RESTORE OPTIONS", L.CDB_LEN,
                       direction=Direction.OUT, conflict=Conflict.WRITE,
                       usage=_usage(L.OP_SET_RESTORE_OPTIONS, 0))
def set_restore_options(lu: "BackupLU", cmd: Command) -> None:
    c = _parse(cmd)
    _no_data(c)
    if c.length < 4 or c.length > 4 + 4 * L.MAX_SKIP_GENERATIONS or c.length % 4:
        raise S.invalid_cdb_field(6)
    raw = data_out(cmd, c.length)
    try:
        gens = L.unpack_restore_options(raw)
    except ValueError as exc:
        raise S.invalid_param_field(int(exc.args[0])) from None
    if 4 + 4 * len(gens) != c.length:
        raise S.illegal_request(S.PARAMETER_LIST_LENGTH_ERROR)
    if raw[2] or raw[3]:
        raise S.invalid_param_field(2)
    with lu.medium.lock:
        lu.medium.skip_generations = gens


@VENDOR_BACKUP.command(L.OP_AUDIT_TRACKER, "AUDIT TRACKER", L.CDB_LEN, direction=Direction.IN,
                       conflict=Conflict.WRITE, usage=_usage(L.OP_AUDIT_TRACKER, L.FLAG_FULL))
def audit_tracker(lu: "BackupLU", cmd: Command) -> bytes:
    """Re-read a sample (SCOPE = rate, 0: 1 in 1024; FULL: all) of the blocks the
    map calls unchanged and compare with the CRC32C the backups sent; mismatching
    blocks are re-marked (volume/audit.py).  AuditUnavailable is a BackupRefused:
    COMMAND SEQUENCE ERROR, through volume_sense."""
    c = _parse(cmd)
    full = bool(c.flags & L.FLAG_FULL)
    if full and c.scope:
        raise S.invalid_cdb_field(2)
    rep = audit(lu.tracked, rate=c.scope or DEFAULT_RATE, full=full)
    h = L.AuditHeader(mismatch=not rep.ok, escalated=rep.escalated, full=rep.rate == 1,
                      rate=rep.rate, phase=rep.phase, generation=rep.generation,
                      candidates=rep.candidates, checked=rep.checked,
                      mismatched_blocks=rep.mismatched_blocks, remarked_blocks=rep.remarked)
    return L.AuditReportData(h, [L.ExtentDesc(a, n) for a, n in rep.mismatched]).pack()[:c.length]


@VENDOR_BACKUP.command(L.OP_REPORT_MAP_EXTENTS, "REPORT MAP EXTENTS", L.CDB_LEN,
                       direction=Direction.IN, conflict=Conflict.ALLOWED,
                       usage=_usage(L.OP_REPORT_MAP_EXTENTS, 0))
def report_map_extents(lu: "BackupLU", cmd: Command) -> bytes:
    """Extents of the blocks written since the full backup, by generation; SCOPE
    is the index of the first descriptor wanted (an answer that does not fit the
    allocation length is continued from there)."""
    c = _parse(cmd)
    v = map_view(lu.tracked.map)
    return L.pack_map_extents(v.current_generation, v.granularity, v.entries, v.extents,
                              c.scope, c.length)[:c.length]
