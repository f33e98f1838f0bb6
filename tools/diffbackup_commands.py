"""The ``diffbackup`` commands that no backup or restore run needs: ``verify``,
``status``, ``estimate``, ``merge``, ``audit``, and the local volume (a volume
file no server has open).  :mod:`tools.diffbackup` imports this module when a
command line asks for one of them: a full, differential or restore over iSCSI
loads none of it (a smaller module is less bytecode to read at every start).
"""
from __future__ import annotations

import os

from tools.diffbackup import (EXIT_FAILED, EXIT_OK, EXIT_USAGE, BackupOutcome, Failure,
                              StreamOutcome, VolumeStatus, _open, _open_output, _open_stream,
                              _output, _progress, _stream_refs, out)


class LocalVolume:
    """A tracked volume file no server has open, driven through its session state machine."""

    def __init__(self, path: str, *, create_from=None, start_tracking: bool = True) -> None:
        from volume.filestore import FileStore, StoreLockedError
        from volume.store import StoreError
        from volume.tracked import TrackingError, TrackingStore, map_paths
        self.path = path
        size = None
        if not os.path.exists(path):
            if create_from is None:
                raise Failure(f"{path} does not exist")
            size = create_from.volume_size
        elif not start_tracking and not any(os.path.exists(p) for p in map_paths(path)):
            # A query must not turn an arbitrary file into a tracked volume.
            raise Failure(f"{path} is not a tracked volume (no {map_paths(path)[0]}): serve it "
                          f"with scsi-target, or take a full backup first")
        try:
            store = FileStore(path, size=size, create=size is not None)
        except StoreLockedError:
            raise Failure(f"{path} is open by a running server: use its iscsi:// URL") from None
        except StoreError as e:
            raise Failure(str(e)) from None
        try:
            vid = create_from.volume_id if create_from is not None else None
            self.vol = TrackingStore.open(store, path, volume_id=vid)
        except TrackingError as e:
            store.close()
            raise Failure(str(e)) from None
        except BaseException:
            store.close()
            raise

    def backup(self, full: bool, scope: int, out, show: bool) -> BackupOutcome:
        from volume import backup as B
        from volume.session import VolumeError
        s = self.vol.sessions
        try:
            reader = s.start_backup(full=full, scope=None if full else scope)
        except VolumeError as e:
            raise Failure(str(e)) from None
        try:
            # The output is complete (renamed, upload completed) before the
            # cut commits: never a generation recorded without its stream.
            with _output(out) as f, _progress(show) as prog:
                task = prog.add_task("backup", total=None)
                res = B.write_stream(self.vol, reader.cut.plan, f, encoder=reader.enc,
                                     progress=lambda d, t: prog.update(task, completed=d,
                                                                       total=t))
        except BaseException:
            s.abandon_backup()
            raise
        from volume.session import finish_backup
        finish_backup(reader)
        return BackupOutcome(res.bytes_written, res.generation_range, res.blocks)

    def restore_one(self, path, skips: list[int], prog, task) -> StreamOutcome:
        from volume.session import RestoreRejected
        w = self.vol.sessions.start_restore(skip_generations=skips, name=str(path))
        from volume.streamstore import StreamStoreError
        pos = 0
        lost = None
        with _open_stream(path) as f:
            while not w.finished:
                try:
                    chunk = f.read(8 << 20)
                except StreamStoreError as e:     # the store failed mid-stream
                    lost = str(e)
                    break
                if not chunk:
                    break
                try:
                    w.write(pos, chunk)
                except RestoreRejected:
                    break
                pos += len(chunk)
                prog.advance(task, len(chunk))
        if not w.finished:
            w.abandon()
        r = w.result
        chk = r.check
        h = r.header
        o = StreamOutcome(str(path), r.state, h.generation_range if h else (0, 0), bool(h and h.full))
        if chk:
            o.applied, o.blocks_written = chk.applied, chk.blocks_written
            o.skipped_older, o.skipped_forbidden = chk.skipped_older, chk.skipped_forbidden
            o.bad = [(d.first_block, d.nblocks, d.generation, d.offset) for d in chk.damage]
            o.errors = [e for e in chk.errors if e not in r.errors]
        o.errors = list(r.errors) + o.errors + ([lost] if lost else [])
        o.unrecovered = list(r.unrecovered)
        o.unrecovered_total = sum(n for _a, n in r.unrecovered)
        return o

    def status(self) -> VolumeStatus:
        v = self.vol
        m = v.map
        mark = v.state.restore
        return VolumeStatus(m.volume_id, m.volume_size, m.granularity, m.current_generation,
                            m.counts(), v.state.full_done, v.state.pending_lo, False,
                            mark is not None and mark.incomplete,
                            mark is not None and mark.stream is not None,
                            mark.unrecovered_blocks if mark is not None else 0)

    def estimate(self, scope: int, compressed: bool) -> tuple[int, int, int]:
        from volume import backup as B
        from volume.session import ScopeError, check_scope
        m = self.vol.map
        try:
            check_scope(self.vol, False, scope)
        except ScopeError as e:
            raise Failure(str(e)) from None
        blocks = m.estimate_blocks(scope)
        nbytes = B.estimate(m, scope, False)
        packed = B.estimate(m, scope, True, store=self.vol, seed=0) if compressed else 0
        return blocks, nbytes, packed

    def map_extents(self) -> list[tuple[int, int, int]]:
        from volume.mapview import map_view
        return map_view(self.vol.map).extents

    def audit(self, rate: int, full: bool):
        from volume.audit import AuditUnavailable, audit
        try:
            return audit(self.vol, rate=rate, full=full)
        except AuditUnavailable as e:
            raise Failure(f"cannot audit: {e}") from None

    def close(self) -> None:
        self.vol.close()


# -------------------------------------------------------------------- commands
def cmd_verify(args) -> int:
    from volume import backup as B
    from volume.streamstore import StreamStoreError
    refs = _stream_refs(args.files, args)
    total = sum(r.size() for r in refs)
    try:
        with _progress(not args.quiet) as prog:
            task = prog.add_task("verify", total=total)
            rep = B.verify(refs, progress=lambda d, t: prog.update(task, completed=d))
    except StreamStoreError as e:
        raise Failure(f"verify stopped: {e}") from None
    from rich.table import Table
    t = Table(title="verify")
    for col in ("stream", "type", "generations", "records", "blocks", "result"):
        t.add_column(col)
    for s in rep.streams:
        h = s.header
        t.add_row(s.name, "?" if h is None else "full" if h.full else "differential",
                  "?" if h is None else f"{h.generation_range[0]}..{h.generation_range[1]}",
                  str(s.records), str(s.blocks), "ok" if s.ok else "DAMAGED")
    out.print(t)
    for s in rep.streams:
        for d in s.damage:
            where = f"blocks {d.first_block}+{d.nblocks}, generation {d.generation}" \
                if d.first_block is not None else "unknown blocks"
            out.print(f"{s.name} at byte {d.offset}: {d.reason} ({where})")
        for e in s.errors:
            out.print(f"{s.name}: {e}")
    for e in rep.errors:
        out.print(f"chain: {e}")
    return EXIT_OK if rep.ok else EXIT_FAILED


def _status_json(st: VolumeStatus, ext) -> dict:
    return {"volume_id": st.volume_id.hex(), "volume_size": st.volume_size,
            "granularity": st.granularity, "entries": -(-st.volume_size // st.granularity),
            "current_generation": st.current, "full_done": st.full_done,
            "pending_lo": st.pending_lo, "stream_open": st.stream_open,
            "restore_incomplete": st.restore_incomplete,
            "restore_interrupted": st.restore_interrupted, "unrecovered": st.unrecovered,
            "counts": {str(g): n for g, n in sorted(st.counts.items())},
            "extents": [list(e) for e in ext]}


def cmd_status(args) -> int:
    if args.cells < 1:
        raise Failure("--cells must be at least 1", EXIT_USAGE)
    v = _open(args.source, initiator_name=args.initiator_name)
    try:
        st = v.status()
        ext = v.map_extents()
    finally:
        v.close()
    if args.json:
        import json
        print(json.dumps(_status_json(st, ext)))
        return EXIT_FAILED if st.restore_incomplete else EXIT_OK
    counts, cur, gran = st.counts, st.current, st.granularity
    from rich.table import Table
    t = Table(title=f"volume {st.volume_id.hex()} ({st.volume_size} bytes, {gran}-byte blocks)")
    t.add_column("generation", justify="right")
    t.add_column("blocks", justify="right")
    t.add_column("bytes", justify="right")
    t.add_column("")
    for gen in sorted(counts):
        note = "unchanged since the full backup" if gen == 0 else \
            "current (open)" if gen == cur else ""
        t.add_row(str(gen), str(counts[gen]), str(counts[gen] * gran), note)
    out.print(t)
    from tools.map_render import render
    for line in render(st.volume_size, gran, -(-st.volume_size // gran), cur, counts, ext,
                       args.cells):
        out.print(line)
    pending = st.pending_lo
    out.print(f"current generation {cur}; full backup completed: {'yes' if st.full_done else 'no'}"
              + (f"; an unfinished differential stream from generation {pending} will be "
                 f"included in the next one" if pending is not None else ""))
    if st.stream_open:
        out.print("a backup stream is open (not read to its end yet): the map changes only "
                  "when it is")
    if st.restore_interrupted:
        out.print("restore INCOMPLETE: a restore was interrupted; apply the same stream again "
                  "(or start over with the full stream)")
    elif st.restore_incomplete:
        out.print(f"restore INCOMPLETE: {st.unrecovered} blocks not recovered")
    else:
        out.print("restore: complete (no blocks known unrecovered)")
    return EXIT_FAILED if st.restore_incomplete else EXIT_OK


def cmd_estimate(args) -> int:
    v = _open(args.source, initiator_name=args.initiator_name)
    try:
        blocks, nbytes, packed = v.estimate(args.scope, args.compressed)
    finally:
        v.close()
    line = f"scope {args.scope}: {blocks} blocks, stream of about {nbytes} bytes"
    if args.compressed:
        line += f", about {packed} bytes compressed"
    out.print(line)
    return EXIT_OK


def cmd_merge(args) -> int:
    """A synthetic full (or one differential) from a chain of stored streams (files,
    s3:// objects); no volume involved.  The output is stored only once it verified."""
    from volume.merge import MergeError, MergeRefused, merge
    from volume.streamstore import StreamStoreError, same_stream
    if any(same_stream(args.output, f) for f in args.files):
        raise Failure(f"-o {args.output} is one of the input streams", EXIT_USAGE)
    refs = _stream_refs(args.files, args)
    total = sum(r.size() for r in refs)
    # The output before any input is read: a missing bucket or an existing key
    # costs no merge.  merge() commits it, or aborts it on any failure.
    sink = _open_output(args)
    try:
        with _progress(not args.quiet) as prog:
            task = prog.add_task("merge", total=total)
            res = merge(refs, sink, progress=lambda d, t: prog.update(task, completed=d))
    except MergeRefused as e:
        for p in e.problems:
            out.print(p, markup=False)
        more = f" (+{len(e.problems) - 1} more above)" if len(e.problems) > 1 else ""
        raise Failure(f"merge refused: {e.problems[0]}{more}; {args.output} not "
                      f"written") from None
    except MergeError as e:              # its message says nothing was written
        raise Failure(f"merge failed: {e}") from None
    except StreamStoreError as e:
        raise Failure(f"merge failed: {e}; {args.output} not written") from None
    finally:
        sink.abort()          # a no-op once committed
    kind = "synthetic full" if res.full else "merged differential"
    out.print(f"{kind} of generations {res.generation_range[0]}..{res.generation_range[1]} from "
              f"{len(res.inputs)} streams ({res.input_bytes} bytes): {res.blocks} blocks, "
              f"{res.records} records, {res.bytes_written} bytes -> {res.output} (verified)")
    return EXIT_OK


def cmd_audit(args) -> int:
    if args.rate < 1:
        raise Failure("--rate must be at least 1", EXIT_USAGE)
    v = _open(args.source, initiator_name=args.initiator_name)
    try:
        rep = v.audit(args.rate, args.full)
    finally:
        v.close()
    how = "every unchanged block" if rep.rate == 1 else f"1 block in {rep.rate} (phase {rep.phase})"
    if rep.ok:
        out.print(f"audit ok: {rep.checked} of {rep.candidates} blocks unchanged since their "
                  f"backup checked ({how}), all match what the backups sent "
                  f"[{rep.seconds:.2f} s]")
        return EXIT_OK
    ext = ", ".join(f"{a}..{a + k - 1}" for a, k in rep.mismatched[:10]) + \
        (" ..." if len(rep.mismatched) > 10 else "")
    out.print(f"[bold red]AUDIT FAILED: {rep.mismatched_blocks} blocks changed without the "
              f"tracker seeing it[/] (blocks {ext})")
    out.print(f"sample: {how}" + ("; escalated to a full compare of all "
                                  f"{rep.candidates} unchanged blocks" if rep.escalated else ""))
    out.print(f"the map cannot be trusted: {rep.remarked} blocks marked in generation "
              f"{rep.generation}, so the next differential carries them; find what writes "
              f"around the target, and consider a new full backup")
    return EXIT_FAILED
