"""`diffbackup` on tape: --tape for full/diff/restore, and the `catalog` command.

The backup-set format and its reading/writing live in ``tape.backupset``
(docs/tape-backups.md); this module only opens cartridges (image files, or tape
LUNs over iSCSI through ``scsi_target.initiator.tape``), asks for the next one
when a list runs out, and prints.

A backup is taken into a staging file first (the engine commits the map cut
once its stream is read to the end) and then appended to the tape; if the
tape write fails the staged stream is kept and its path printed, so the
generations it holds are never lost.
"""
from __future__ import annotations

import datetime
import os
import shutil
import sys
import tempfile

from rich.table import Table

from tools.diffbackup import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Failure, _progress, out


def open_tape(spec: str, initiator_name: str | None = None):
    from tape.errors import TapeError
    try:
        if spec.startswith("iscsi://"):
            from scsi_target.initiator.tape import RemoteTape, TapeCommandError
            try:
                return RemoteTape(spec, initiator_name=initiator_name)
            except TapeCommandError as e:
                raise Failure(str(e)) from None
        from tape.backupset import LocalTape
        if not os.path.isfile(spec):
            raise Failure(f"{spec}: no such tape image (create one with scsi-target tape new)")
        return LocalTape(spec)
    except TapeError as e:
        raise Failure(f"{spec}: {e}") from None


class _Cartridges:
    """The cartridges of one command: the --tape list in order, then a prompt on a tty."""

    def __init__(self, specs: list[str], initiator_name: str | None, start: int = 0) -> None:
        self.specs = list(specs)
        self.i = start
        self.initiator_name = initiator_name
        self.current = open_tape(self.specs[start], initiator_name)

    def next(self, *_why):
        from tape.backupset import NoMoreCartridges
        prev = self.specs[self.i]
        self.current.close()
        self.i += 1
        if self.i >= len(self.specs):
            if not sys.stdin.isatty():
                raise NoMoreCartridges(f"{prev} is full (early warning) or the backup "
                                       f"continues past it, and no further --tape was given")
            err = sys.stderr
            print(f"cartridge {prev} done: insert the next one and give its image or URL "
                  f"(empty: {prev} again, after a media change): ", end="", file=err, flush=True)
            line = sys.stdin.readline().strip()
            self.specs.append(line or prev)
        self.current = open_tape(self.specs[self.i], self.initiator_name)
        return self.current

    def close(self) -> None:
        self.current.close()


def backup_to_tape(args, full: bool, open_volume) -> int:
    from tape import backupset as BS
    from tape.errors import TapeError
    from volume.stream import read_header
    rsize = args.record_size or BS.DEFAULT_RECORD
    if not 0 < rsize <= BS.MAX_RECORD:
        raise Failure(f"--record-size {rsize} is not 1..{BS.MAX_RECORD}", EXIT_USAGE)
    scope = 0 if full else args.scope
    # Open the first cartridge before the backup: a wrong URL costs no generation.
    carts = _Cartridges(args.tape, args.initiator_name)
    if getattr(carts.current, "max_record", 0) and rsize > carts.current.max_record:
        carts.close()
        raise Failure(f"--record-size {rsize} is above the drive's maximum "
                      f"{carts.current.max_record} (READ BLOCK LIMITS)", EXIT_USAGE)
    tmp = tempfile.mkdtemp(prefix="diffbackup-")
    staged = os.path.join(tmp, "stream")
    ok = False
    try:
        v = open_volume(args.source, start_tracking=full, initiator_name=args.initiator_name)
        try:
            res = v.backup(full, scope or 1, staged, not args.quiet)
        finally:
            v.close()
        h = read_header(staged)
        with open(staged, "rb") as f:
            nbytes, crc = BS.file_crc(f)
        label = BS.Label(full, res.generation, scope, nbytes, crc, h.volume_id, h.volume_size,
                         args.source[-64:], record_size=rsize)
        try:
            with open(staged, "rb") as f, _progress(not args.quiet) as prog:
                task = prog.add_task("to tape", total=nbytes)
                placed, _dev = BS.write_backup(carts.current, f, label, carts.next,
                                               progress=lambda d: prog.update(task, completed=d))
        except Exception as e:  # noqa: BLE001 - the staged stream is kept, whatever failed
            keep = os.path.join(os.getcwd(), f"diffbackup-{label.set_id.hex()[:8]}.stream")
            shutil.move(staged, keep)
            raise Failure(f"writing to tape failed ({' '.join(str(e).split())}); the stream "
                          f"of generations {res.generation[0]}..{res.generation[1]} is kept "
                          f"in {keep}") from None
        ok = True
    except TapeError as e:
        raise Failure(str(e)) from None
    finally:
        carts.close()
        shutil.rmtree(tmp, ignore_errors=True)
    kind = "full" if full else f"differential (scope {args.scope})"
    where = ", ".join(f"{p.cartridge} file {p.file_number}" for p in placed)
    out.print(f"{kind} backup of generations {res.generation[0]}..{res.generation[1]}: "
              f"{res.blocks} blocks, {res.nbytes} bytes -> {where}")
    return EXIT_OK if ok else EXIT_FAILED


def _parse_file(spec: str, ncarts: int) -> tuple[int, int]:
    c, sep, n = spec.rpartition(":")
    try:
        cart = int(c) - 1 if sep else 0
        num = int(n)
    except ValueError:
        raise Failure(f"--file {spec!r}: expected N or C:N", EXIT_USAGE) from None
    if not 0 <= cart < ncarts or num < 0:
        raise Failure(f"--file {spec!r}: no cartridge {cart + 1} among the {ncarts} --tape "
                      f"given" if num >= 0 else f"--file {spec!r}: N must be 0 or more",
                      EXIT_USAGE)
    return cart, num


def restore_from_tape(args, restore_files) -> int:
    from tape import backupset as BS
    from tape.errors import TapeError
    wanted = [_parse_file(s, len(args.tape)) for s in args.file]
    tmp = tempfile.mkdtemp(prefix="diffbackup-")
    try:
        files = []
        for cart, num in wanted:
            name = os.path.join(tmp, f"{os.path.basename(args.tape[cart].rstrip('/'))}#{num}")
            carts = _Cartridges(args.tape, args.initiator_name, cart)
            try:
                with open(name, "wb") as f:
                    BS.read_backup(carts.current, num, f, carts.next)
            except TapeError as e:
                raise Failure(f"{args.tape[cart]} file {num}: {e}") from None
            finally:
                carts.close()
            files.append(name)
        args.files, args.tape, args.file = files, [], []
        return restore_files(args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cmd_catalog(args) -> int:
    from tape import backupset as BS
    from tape.errors import TapeError
    from volume import backup as B
    dev = open_tape(args.tape, args.initiator_name)
    rows = []
    failed = False
    try:
        infos = list(BS.catalog(dev))
        for info in infos:
            lab = info.label
            verified = "not checked"
            if lab is None:
                rows.append((str(info.file_number), "-", "-", "-", "-", "-", "-", "-",
                             info.note or "not a backup"))
                continue
            if args.verify:
                verified = _verify_one(dev, info, BS, B)
                failed |= verified not in ("ok", "spans cartridges")
            kind = "full" if lab.full else "differential"
            part = "" if lab.part == 1 and info.complete else \
                f"part {lab.part} from byte {lab.offset}" if lab.part > 1 else \
                "continues on the next cartridge"
            date = datetime.datetime.fromtimestamp(lab.created, datetime.timezone.utc)
            rows.append((str(info.file_number), kind,
                         f"{lab.generation[0]}..{lab.generation[1]}",
                         str(lab.scope) if not lab.full else "-",
                         date.strftime("%Y-%m-%d %H:%M:%S UTC"), str(lab.stream_bytes),
                         part or "complete", "yes" if info.complete else "no", verified))
    except TapeError as e:
        raise Failure(f"{args.tape}: {e}") from None
    finally:
        dev.close()
    t = Table(title=f"cartridge {args.tape}")
    for col in ("file", "type", "generations", "scope", "date", "stream bytes", "part",
                "end record", "verified"):
        t.add_column(col)
    for r in rows:
        t.add_row(*r)
    # Never folded to a narrow terminal: one line a file, for people and for grep.
    from rich.console import Console
    Console(highlight=False, width=max(out.width, 160)).print(t)
    out.print(f"{sum(1 for r in rows if r[1] != '-')} backup files, {len(rows)} files")
    return EXIT_FAILED if failed else EXIT_OK


def _verify_one(dev, info, BS, B) -> str:
    from tape.errors import TapeError
    lab = info.label
    if lab.part != 1 or not info.complete:
        return "spans cartridges"

    def no_more(*_a):
        raise BS.NoMoreCartridges("the backup continues on another cartridge")
    with tempfile.NamedTemporaryFile(prefix="diffbackup-verify-") as f:
        try:
            BS.read_backup(dev, info.file_number, f, no_more)
        except TapeError as e:
            return f"FAILED: {' '.join(str(e).split())}"
        f.flush()
        rep = B.verify([f.name])
    return "ok" if rep.ok else "DAMAGED (stream records)"


__all__ = ["backup_to_tape", "restore_from_tape", "cmd_catalog", "EXIT_USAGE"]
