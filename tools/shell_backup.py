"""scsi-shell commands of the backup engine (vendor-specific opcodes C0h-C8h).

The CDBs and parameter data come from ``scsi_target.scsi.layouts.backup``; a
target without the backup engine answers INVALID COMMAND OPERATION CODE, which
becomes a plain "not supported by this target".
"""
from __future__ import annotations

import struct
from typing import Any

from .shell_backend import UsageError
from .shell_commands import CheckCondition, NotSupported, Out, Session, arg, command, number

# The vendor CDB shape (docs/vendor-commands.md): opcode, flags, scope(4), length(4), 0, control.
OP_SELECT_BACKUP, OP_REPORT_GENERATIONS, OP_ESTIMATE_BACKUP = 0xC0, 0xC2, 0xC3
OP_REPORT_MAP_EXTENTS = 0xC8
FLAG_FULL, FLAG_COMPRESS = 0x01, 0x02
_ALLOC = 1 << 16


def _layouts():
    try:
        from scsi_target.scsi.layouts import backup
    except ImportError:  # pragma: no cover - only before the backup engine existed
        return None
    return backup


def _cdb(opcode: int, flags: int = 0, scope: int = 0, length: int = 0) -> bytes:
    L = _layouts()
    if L is not None:
        return L.cdb(opcode, flags=flags, scope=scope, length=length)
    return struct.pack(">BBIIBB", opcode, flags, scope, length, 0, 0)


def _run(s: Session, name: str, cdb: bytes, read_length: int = 0):
    try:
        return s.run(cdb, read_length=read_length)
    except CheckCondition as e:
        if e.sense is not None and e.sense.key == 0x5 and (e.sense.asc, e.sense.ascq) == (0x20, 0):
            raise NotSupported(f"{name}: not supported by this target (opcode {cdb[0]:02X}h is "
                               "not implemented here; the backup commands are served by a "
                               "backup LUN of scsi-target)") from None
        raise


def _generations(s: Session, name: str):
    r = _run(s, name, _cdb(OP_REPORT_GENERATIONS, length=_ALLOC), _ALLOC)
    L = _layouts()
    if L is None:  # pragma: no cover
        raise NotSupported(f"{name}: this build cannot decode REPORT GENERATIONS")
    return L.GenerationsReport.unpack(r.data)


@command("gen", "REPORT GENERATIONS: current generation and map state of the backup LU", "backup")
def cmd_gen(s: Session, a) -> Out:
    rep = _generations(s, "gen")
    h = rep.header
    f: dict[str, Any] = {k: v for k, v in h.items()
                         if k not in ("additional_length", "volume_id", "descriptor_count")}
    f["volume_id"] = rep.volume_id.hex()
    f["base_id"] = h.base_id.hex()
    return Out("Backup generations", f, text=f"current generation {h.current_generation}")


def _map_extents(s: Session, name: str, L) -> list[tuple[int, int, int]] | None:
    """REPORT MAP EXTENTS page by page; None if the target does not have it."""
    out: list[tuple[int, int, int]] = []
    length = L.MapExtentsHeader.SIZE + 4096 * L.MapExtentDesc.SIZE
    while True:
        try:
            r = _run(s, name, _cdb(OP_REPORT_MAP_EXTENTS, scope=len(out), length=length), length)
        except NotSupported:
            return None
        h, ext = L.unpack_map_extents(r.data)
        out += ext
        if not ext or len(out) >= h.total_descriptors:
            return out


@command("counts", "REPORT GENERATIONS + MAP EXTENTS: changed blocks per generation, and "
         "where on the volume they lie", "backup")
@arg("--cells", type=number, default=64, help="regions in the drawn strip (default 64)")
def cmd_counts(s: Session, a) -> Out:
    rep = _generations(s, "counts")
    h = rep.header
    o = Out(f"Changed blocks per generation (current {h.current_generation})",
            columns=["generation", "blocks"],
            rows=[[g, n] for g, n in sorted(rep.counts.items())])
    if a.cells < 1:
        raise UsageError("counts: --cells must be at least 1")
    L = _layouts()
    ext = _map_extents(s, "counts", L) if L is not None else None
    if ext is None:
        o.notes.append("this target does not report map extents (REPORT MAP EXTENTS, C8h)")
        return o
    from .map_render import render
    # the extents themselves, for scripts: `diffbackup status --json`
    o.text = "\n".join(t.plain for t in render(h.volume_size, h.granularity, h.entries,
                                               h.current_generation, rep.counts, ext, a.cells))
    return o


def _flags(a) -> int:
    return (FLAG_FULL if a.full else 0) | (FLAG_COMPRESS if a.compress else 0)


@command("scope", "SELECT BACKUP: the next backup covers generations K..current", "backup")
@arg("k", type=number, nargs="?", default=0, metavar="K")
@arg("--full", action="store_true", help="a full backup (K must be 0 or omitted)")
@arg("--compress", action="store_true", help="compress the stream")
def cmd_scope(s: Session, a) -> Out:
    if not a.full and a.k <= 0:
        raise UsageError("scope: give a generation K >= 1, or --full")
    _run(s, "scope", _cdb(OP_SELECT_BACKUP, _flags(a), 0 if a.full else a.k))
    what = "full backup" if a.full else f"differential backup from generation {a.k}"
    return Out(text=f"selected {what}{' (compressed)' if a.compress else ''}")


@command("estimate", "ESTIMATE BACKUP: blocks and stream size for scope K", "backup")
@arg("k", type=number, nargs="?", default=0, metavar="K")
@arg("--full", action="store_true", help="estimate a full backup")
@arg("--compress", action="store_true", help="estimate a compressed stream")
def cmd_estimate(s: Session, a) -> Out:
    if not a.full and a.k <= 0:
        raise UsageError("estimate: give a generation K >= 1, or --full")
    r = _run(s, "estimate", _cdb(OP_ESTIMATE_BACKUP, _flags(a), 0 if a.full else a.k, 32), 32)
    L = _layouts()
    if L is None:  # pragma: no cover
        return Out("ESTIMATE BACKUP", data=r.data)
    est = L.Estimate.unpack(r.data)
    return Out("ESTIMATE BACKUP", {k: v for k, v in est.items() if k != "additional_length"})
