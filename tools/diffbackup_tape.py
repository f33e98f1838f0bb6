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


# ------------------------------------------------------------ target-side backup
SEGMENT_BLOCKS = 0xFFFF          # BLOCK DEVICE NUMBER OF BLOCKS is 16 bits
SEGMENTS_PER_COPY = 64           # the copy manager's MAX SEGMENT DESCRIPTORS


def _naa(client, lun: int) -> bytes:
    """The LU's NAA designation descriptor from VPD page 83h (what a CSCD names)."""
    d = bytes(client.inquiry(evpd=True, page=0x83, alloc=255, lun=lun))
    pos = 4
    while pos + 4 <= len(d):
        n = d[pos + 3]
        if d[pos + 1] & 0x0F == 3 and d[pos + 1] & 0x30 == 0:
            return d[pos:pos + 4 + n]
        pos += 4 + n
    raise Failure(f"LUN {lun} reports no NAA designator (VPD 83h): EXTENDED COPY cannot name it")


def _copy_list(list_id: int, src: bytes, dst: bytes, segments: list[tuple[int, int]],
               record: int) -> bytes:
    """An EXTENDED COPY (LID1) list: CSCD 0 the backup device, CSCD 1 the tape (variable
    records), one block-to-stream (00h) segment per (lba, blocks)."""
    def cscd(desig: bytes, dtype: int, block_length: int) -> bytes:
        return bytes([0xE4, dtype & 0x1F, 0, 0]) + desig.ljust(24, b"\0") + bytes(1) + \
            block_length.to_bytes(3, "big")
    cscds = cscd(src, 0x00, 512) + cscd(dst, 0x01, 0)
    segs = b"".join(bytes([0x00, 0]) + (20).to_bytes(2, "big") + (0).to_bytes(2, "big") +
                    (1).to_bytes(2, "big") + bytes(1) + record.to_bytes(3, "big") + bytes(2) +
                    n.to_bytes(2, "big") + lba.to_bytes(8, "big") for lba, n in segments)
    head = bytes([list_id, 0x00]) + len(cscds).to_bytes(2, "big") + bytes(4) + \
        len(segs).to_bytes(4, "big") + bytes(4)
    return head + cscds + segs


def backup_target_side(args, full: bool) -> int:
    """The target copies the backup device's stream to its tape LUN (EXTENDED COPY, segment
    type 00h); only the label, the end record and the stream's last partial block cross
    the network."""
    from scsi_target.initiator.tape import RemoteTape, TapeCommandError
    from scsi_target.initiator.url import parse_url
    from tape import backupset as BS
    from tools.diffbackup import RemoteVolume
    if len(args.tape) != 1 or not args.tape[0].startswith("iscsi://") or \
            not args.source.startswith("iscsi://"):
        raise Failure("--target-side needs an iscsi:// SOURCE and one iscsi:// --tape of the "
                      "same target", EXIT_USAGE)
    s, t = parse_url(args.source), parse_url(args.tape[0])
    if (s.host, s.port, s.target) != (t.host, t.port, t.target):
        raise Failure("--target-side: the tape LUN must be on the SOURCE's target", EXIT_USAGE)
    rsize = args.record_size or BS.DEFAULT_RECORD
    if rsize % 512 or not 0 < rsize <= BS.MAX_RECORD:
        raise Failure(f"--record-size {rsize}: --target-side needs a multiple of 512 up to "
                      f"{BS.MAX_RECORD}", EXIT_USAGE)
    v = RemoteVolume(args.source, args.initiator_name)
    try:
        try:
            tape = RemoteTape(args.tape[0], client=v.c)
        except TapeCommandError as e:
            raise Failure(str(e)) from None
        return _target_side(args, full, v, tape, rsize, BS)
    finally:
        v.close()


def _target_side(args, full, v, tape, rsize, BS) -> int:
    from scsi_target.initiator.tape import TapeCommandError
    L = v.L
    g = v.generations()
    h = g.header
    if not full and (h.restore_incomplete or not h.full_done):
        raise Failure("no differential now: the volume is incomplete after a restore, or no "
                      "full backup was completed (see diffbackup status)")
    src_naa, tape_naa = _naa(v.c, v.dev), _naa(v.c, tape.lun)
    try:
        tape.to_eod()
        fileno = tape.file_number()
        v._cmd(L.OP_SELECT_BACKUP, flags=L.FLAG_FULL if full else 0,
               scope=0 if full else args.scope)
        st = L.BackupStatus.unpack(v._cmd(L.OP_START_BACKUP, length=80))
        nbytes = st.size_bound
        label = BS.Label(full, (st.generation_lo, st.generation_hi), 0 if full else args.scope,
                         nbytes, 0, g.volume_id, h.volume_size, args.source[-64:],
                         record_size=rsize, crc_known=False)
        n, _ew, over = tape.write([label.pack()])
        if n != 1:
            raise Failure(f"{tape.name}: no room for the backup's label")
        whole = nbytes // 512
        per = SEGMENT_BLOCKS // (rsize // 512) * (rsize // 512)   # whole records a segment
        segs = [(lba, min(per, whole - lba)) for lba in range(0, whole, per)]
        copied = 0
        for k in range(0, len(segs), SEGMENTS_PER_COPY):
            part = segs[k:k + SEGMENTS_PER_COPY]
            plist = _copy_list(1, src_naa, tape_naa, part, rsize)
            cdb = bytes([0x83, 0]) + bytes(8) + len(plist).to_bytes(4, "big") + bytes(2)
            v._exec(cdb, lun=parse_lun(args.source), data_out=plist, what="EXTENDED COPY")
            # RECEIVE COPY RESULTS (COPY STATUS) says how much the copy manager moved.
            r = v._exec(bytes([0x84, 0x00, 1]) + bytes(7) + (64).to_bytes(4, "big") + bytes(2),
                        lun=parse_lun(args.source), read_length=64,
                        what="RECEIVE COPY RESULTS")
            cs = bytes(r.data)
            status, count = cs[4] & 0x7F, int.from_bytes(cs[8:12], "big")
            if status != 0x01:
                raise Failure(f"the copy manager reports copy status {status:02x}h")
            copied += sum(b for _l, b in part) * 512
            if not args.quiet:
                print(f"target-side copy: {copied} of {nbytes} bytes "
                      f"(copy manager: {count} units)", file=sys.stderr)
        if nbytes % 512:
            blk = bytes([0x88, 0]) + whole.to_bytes(8, "big") + (1).to_bytes(4, "big") + bytes(2)
            tail = v._read(blk, 512)[:nbytes % 512]
            tape.write([tail])
        st = v.backup_status()
        # The bound is exact unless the encoder elided blocks that read as zeros (written
        # zeros, not holes): then the stream is shorter, and the copy carried it followed
        # by zero padding up to the bound, which every stream reader ignores (the
        # pseudo device reads as zeros past the stream's end).  The tape file is valid.
        if st.state != L.STATE_COMPLETE or st.total is None or st.total > nbytes:
            raise Failure(f"the backup stream is {st.total} bytes, not at most the {nbytes} "
                          f"its bound promised: tape file {fileno} is left without its end "
                          f"record")
        tape.write([BS.end_record(label, 1, 0)])
        tape.write_filemark()
    except TapeCommandError as e:
        raise Failure(str(e)) from None
    out.print(f"{'full' if full else f'differential (scope {args.scope})'} backup of "
              f"generations {st.generation_lo}..{st.generation_hi}: {st.block_count} blocks, "
              f"{nbytes} bytes -> {tape.name} file {fileno} (copied by the target)")
    return EXIT_OK


def parse_lun(url: str) -> int:
    from scsi_target.initiator.url import parse_url
    return parse_url(url).lun
