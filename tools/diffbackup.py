"""`diffbackup`: the patent's control command (207) over a running target or a local volume.

    diffbackup full SOURCE -o FILE
    diffbackup diff SOURCE --scope K -o FILE
    diffbackup restore DEST FILE... [--skip-generation [N:]G]...
    diffbackup verify FILE...
    diffbackup status SOURCE
    diffbackup estimate SOURCE --scope K [--compressed]
    diffbackup merge FULL|DIFF DIFF... -o FILE
    diffbackup audit SOURCE [--rate N | --full]
    diffbackup full|diff SOURCE ... --tape TAPE [--tape TAPE2]... [--record-size BYTES]
    diffbackup restore DEST --tape TAPE... --file [C:]N...
    diffbackup catalog TAPE [--verify]

TAPE: a tape image file or the iscsi:// URL of a tape LUN (docs/tape-backups.md).

SOURCE/DEST: ``iscsi://host[:port]/iqn/lun`` (the tracked disk's LUN, or its
backup device's LUN) of a running target -- streams move through the backup
pseudo device, control through the vendor commands -- or the path of a
local volume no server has open.  Exit codes: 0 success, 1 something failed
(summary printed), 2 usage error.  Errors are one line, never a traceback.
"""
from __future__ import annotations

import os
import sys
# collections.deque is this C type: the collections module (its Python classes and
# the modules they import) is a millisecond of a run's start-up.
from _collections import deque

from scsi_target.record import field, record

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import NoReturn, Protocol, Sequence


PROG = "diffbackup"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
CHUNK_BLOCKS = 8192          # 4 MiB per READ/WRITE to the backup device (never past its capacity)
DEV_BLOCK = 512
# READs/WRITEs of the backup device kept outstanding all the time (the
# initiator's CmdSN window allows more), each with a buffer of its own.  The
# target executes reads only while less than its send-queue bound (8 MiB,
# scsi_target/target/budget.py) waits for the socket, and resumes as soon as
# the queue drains (TargetConnection.resume), so 4 MiB reads are fine.
PIPELINE = 8
# A backup's reads: four outstanding (16 MiB) keep the target's 8 MiB send
# queue fed (eight gave no better wall time in alternating runs), and every
# read in flight holds a populated 4 MiB buffer (~1.5 ms of zero-filled pages
# to map, ~0.3 ms to unmap): with the
# reads and the writer's queue, a 512 MiB full maps 10 of them (13 while
# statuses rode along every fourth read only).
READ_PIPELINE, READ_CHUNK_BLOCKS = 4, 8192
# Reads per REPORT BACKUP STATUS riding in the read pipeline.  A read's data goes
# to the output once a status after it says it is stream: with a status after
# every read each chunk is handed to the writer as it arrives, so the writer is
# at most about one chunk behind when the last one comes (with one in four it
# got four at a time, and a 512 MiB full waited 5-10 ms for the last of them
# to be written instead of 2-3 ms).  A status costs no round trip of its own.
STATUS_EVERY = 1
SPARSE_FROM = 64 * 1024      # allocation lengths received into a _sparse buffer
# REPORT GENERATIONS asks for this much first: room for 1018 generations' counts,
# received into a buffer that costs nothing to make (the whole report is asked
# for, up to 1 MiB, only when it says it is longer).
GENERATIONS_ASK = 16 * 1024


class _Console:
    """rich's Console, imported when first needed (rich is a fifth of the start-up
    of a run whose only output is one summary line): a plain line -- no markup,
    nothing rich would render differently -- to a stream that is no terminal is
    written as it is."""

    def __init__(self, **kw) -> None:
        self._kw = kw
        self._console = None

    @property
    def console(self):
        if self._console is None:
            from rich.console import Console
            self._console = Console(**self._kw)
        return self._console

    def print(self, *objects, **kw) -> None:
        if self._console is None and not kw and len(objects) == 1 and \
                type(objects[0]) is str and not _marked_up(objects[0]):
            f = sys.stderr if self._kw.get("stderr") else sys.stdout
            if not f.isatty():
                f.write(objects[0] + "\n")
                return
        self.console.print(*objects, **kw)

    def __getattr__(self, name):
        return getattr(self.console, name)


def _marked_up(text: str) -> bool:
    r"""Whether rich could render ``text`` differently from the plain line: a
    bracket (markup) or an emoji code (``:name:``, no space inside), the match
    of ``re.search(r"[\[\]]|:\S+:", text)`` without importing re."""
    if "[" in text or "]" in text:
        return True
    if text.count(":") < 2:
        return False
    for word in text.split():           # \S as str.split sees whitespace
        if word.find(":") + 2 <= word.rfind(":"):
            return True
    return False


err = _Console(stderr=True, highlight=False)
out = _Console(highlight=False, soft_wrap=True)


class Failure(Exception):
    """One-line error; exit 1 (or 2 for usage)."""

    def __init__(self, msg: str, code: int = EXIT_FAILED) -> None:
        super().__init__(msg)
        self.code = code


class _NoProgress:
    """What the commands use of rich's Progress, when there is none to show."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def add_task(self, *a, **kw) -> int:
        return 0

    def update(self, *a, **kw) -> None:
        pass

    def advance(self, *a, **kw) -> None:
        pass


def _progress(enabled: bool):
    if not enabled:
        return _NoProgress()
    from rich.progress import (BarColumn, DownloadColumn, Progress, TimeRemainingColumn,
                               TransferSpeedColumn)
    return Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=err.console,
                    transient=False)


# --------------------------------------------------------------------- results
@record
class StreamOutcome:
    """What applying one stream did (from the target's restore report or the local restorer)."""
    name: str
    state: str = "done"
    generation: tuple[int, int] = (0, 0)
    full: bool = False
    applied: int = 0
    blocks_written: int = 0
    skipped_older: int = 0
    skipped_forbidden: int = 0
    bad: list[tuple] = field(default_factory=list)      # (block|None, nblocks, generation, offset)
    errors: list[str] = field(default_factory=list)
    unrecovered: list[tuple[int, int]] = field(default_factory=list)
    unrecovered_total: int = 0       # blocks of the volume not recovered (all extents)

    @property
    def ok(self) -> bool:
        return self.state == "done" and not self.bad and not self.errors


@record
class BackupOutcome:
    """A finished backup: stream bytes, generation range, blocks carried."""
    nbytes: int
    generation: tuple[int, int]
    blocks: int


@record
class VolumeStatus:
    """A tracked volume's backup state, as `status` shows it."""
    volume_id: bytes
    volume_size: int
    granularity: int
    current: int
    counts: dict[int, int]
    full_done: bool
    pending_lo: int | None = None
    stream_open: bool = False
    restore_incomplete: bool = False
    restore_interrupted: bool = False
    unrecovered: int = 0


if TYPE_CHECKING:  # pragma: no cover - an interface for the type checker (typing costs a run)
    class Volume(Protocol):
        """What every command needs of a tracked volume, local or behind a target."""

        def backup(self, full: bool, scope: int, out, show: bool) -> BackupOutcome: ...
        def restore_one(self, path, skips: list[int], prog, task) -> StreamOutcome: ...
        def status(self) -> VolumeStatus: ...
        def map_extents(self) -> list[tuple[int, int, int]]: ...
        def audit(self, rate: int, full: bool): ...
        def estimate(self, scope: int, compressed: bool) -> tuple[int, int, int]: ...
        def close(self) -> None: ...


def _output(out):
    """The backup's output as a stream-store writer (volume/streamstore.py): a FILE is
    written as FILE.partial and renamed once complete, an s3:// key is a multipart
    upload completed only at the end; a failure leaves nothing under the name."""
    if isinstance(out, (str, os.PathLike)):
        from volume.streamstore import FileStreams
        return FileStreams().create(os.fspath(out), force=True)
    return out


def _open_stream(src):
    """A restore's input: a stored stream (volume/streamstore.StreamRef) or a path."""
    from volume.streamstore import StreamRef
    if isinstance(src, StreamRef):
        return src.open()
    return open(src, "rb", buffering=0)


# ---------------------------------------------------------------------- remote
class RemoteVolume:
    """A tracked disk served by a running target, reached through its backup device."""

    def __init__(self, url: str, initiator_name: str | None = None) -> None:
        from scsi_target.initiator.blocking import BlockingIscsiClient
        from scsi_target.initiator.url import parse_url
        from scsi_target.scsi.layouts import backup as L
        self.L = L
        lun = parse_url(url).lun
        from scsi_target.initiator.login import LoginOptions
        # Every byte of a 4 MiB write may go unsolicited (InitialR2T=No): no
        # R2T round trip per 256 KiB burst; Data-In in 1 MiB PDUs.  Digests are
        # offered but not preferred (libiscsi's, so qemu-img's, default): every
        # record of a stream carries its own CRC32C, checked by verify and by
        # the target before a restore applies it; a URL's header_digest /
        # data_digest argument still forces them.
        # A login of one round trip: with no CHAP credentials in the URL it
        # starts in the operational stage (LoginOptions.skip_security_stage).
        chunk = CHUNK_BLOCKS * DEV_BLOCK
        opts = LoginOptions(max_recv_data_segment_length=1 << 20, max_burst_length=chunk,
                            first_burst_length=chunk, header_digest="None,CRC32C",
                            data_digest="None,CRC32C", skip_security_stage=True)
        # The blocking client: no event loop or thread to start, commands sent
        # and answers received from this thread (the CmdSN window and Data-In
        # into the window's buffers as the asyncio client has them).
        self.c = BlockingIscsiClient(url, initiator_name=initiator_name, options=opts)
        # The device's REPORT GENERATIONS when finding it took one (a disk's URL):
        # the first generations() of this session answers with it, no round trip.
        self._first_generations = None
        try:
            self.dev = self._find_device(lun)
        except BaseException:
            self.c.close()
            raise

    @staticmethod
    def _inquiry_cmd(lun: int) -> dict:
        from scsi_target.scsi.layouts.cdbs import inquiry
        return {"cdb": inquiry(alloc=255), "read_length": 255, "lun": lun}

    @staticmethod
    def _tur_cmd(lun: int) -> dict:
        # TEST UNIT READY, answer ignored: it takes the LU's UNIT ATTENTION of
        # the new session (INQUIRY and REPORT LUNS never report one) in a round
        # trip that is made anyway, so that the first vendor command to the
        # device is not answered with it and sent again.
        return {"cdb": bytes(6), "lun": lun}

    @staticmethod
    def _is_device(r) -> bool:
        r.raise_for_status()               # INQUIRY reports no unit attention
        return bytes(r.data[16:32]).decode("ascii", "replace").strip() == "DIFF-BACKUP"

    def _find_device(self, lun: int) -> int:
        """The backup device of ``lun`` (itself when it is one).  In two round trips
        where it is the next LUN (as ``--backup-device`` lays out a single disk):
        INQUIRY of the LUN and of the next one with REPORT LUNS, then REPORT
        GENERATIONS of the next one; else after those, INQUIRY of every other LUN
        together, then REPORT GENERATIONS of every device among them together.
        Vendor commands go only to LUNs whose INQUIRY names the device."""
        # The layouts themselves, not initiator.cdb (its READ CAPACITY namedtuple
        # would import collections): the same builders and decoders.
        from scsi_target.scsi.layouts.cdbs import report_luns
        from scsi_target.scsi.layouts.luns import ReportLuns
        nxt = lun + 1
        first = [self._inquiry_cmd(lun),
                 {"cdb": report_luns(4096), "read_length": 4096, "lun": 0}, self._tur_cmd(lun)]
        if nxt < 16384:
            first += [self._inquiry_cmd(nxt), self._tur_cmd(nxt)]
        res = self.c.execute_many(first)
        if self._is_device(res[0]):
            return lun
        others = [n for n in ReportLuns.unpack(bytes(res[1].raise_for_status().data)).numbers
                  if n != lun]
        if nxt in others:               # (an answer for a LUN that is not there is not looked at)
            if self._is_device(res[3]):
                found = self._device_of(lun, [nxt])
                if found is not None:
                    return found
            others.remove(nxt)
        answers = self.c.execute_many([c for n in others
                                       for c in (self._inquiry_cmd(n), self._tur_cmd(n))])
        found = self._device_of(lun, [n for n, r in zip(others, answers[::2])
                                      if self._is_device(r)])
        if found is not None:
            return found
        raise Failure(f"LUN {lun} has no backup device on this target (serve it with "
                      f"--backup-device or a kind = \"backup\" LUN)")

    def _device_of(self, lun: int, devices: list[int]) -> int | None:
        """Which of ``devices`` (backup devices) is ``lun``'s: REPORT GENERATIONS of
        all of them in one round trip; its report is kept for generations()."""
        cdb = self.L.cdb(self.L.OP_REPORT_GENERATIONS, length=GENERATIONS_ASK)
        cmds = [{"cdb": cdb, "read_length": GENERATIONS_ASK, "lun": n} for n in devices]
        gens = self.c.execute_many(cmds)
        for n, r, cmd in zip(devices, gens, cmds):
            g = self._whole_generations(
                bytes(self._checked(r, cmd, "REPORT GENERATIONS").data), n)
            if g.header.source_lun == lun:
                self._first_generations = g
                return n
        return None

    def _cmd(self, opcode: int, *, lun: int | None = None, flags: int = 0, scope: int = 0,
             length: int = 0, data_out=None) -> bytes:
        cdb = self.L.cdb(opcode, flags=flags, scope=scope, length=length)
        read = 0 if data_out is not None else length
        # An allocation length far beyond the usual answer (1 MiB for a few
        # hundred bytes of REPORT GENERATIONS): received into memory mapped as
        # the answer lands in it, not a buffer zero-filled first.
        into = _sparse(read) if read >= SPARSE_FROM else None
        r = self._exec(cdb, lun=self.dev if lun is None else lun, read_length=read,
                       data_out=data_out, what=self._opname(opcode), read_into=into)
        return bytes(r.data)

    def _exec(self, cdb: bytes, *, lun: int, what: str, **kw):
        """Execute; a pending UNIT ATTENTION (new session, reset) is reported once and retried."""
        from scsi_target.initiator.errors import ScsiCheckCondition
        from scsi_target.scsi.layouts.sense import SenseKey
        for attempt in range(4):
            try:
                return self.c.execute(cdb, lun=lun, check=True, **kw)
            except ScsiCheckCondition as e:
                if e.key == SenseKey.UNIT_ATTENTION and attempt < 3:
                    continue
                raise Failure(f"target refused {what}: {' '.join(str(e).split())}") from None

    def _read(self, cdb: bytes, length: int) -> bytes:
        return bytes(self._exec(cdb, lun=self.dev, read_length=length,
                                what="READ of the backup stream").data)

    def _opname(self, opcode: int) -> str:
        return {0xC0: "SELECT BACKUP", 0xC1: "START BACKUP", 0xC2: "REPORT GENERATIONS",
                0xC3: "ESTIMATE BACKUP", 0xC4: "REPORT RESTORE RESULTS",
                0xC5: "SET RESTORE OPTIONS", 0xC6: "REPORT BACKUP STATUS",
                0xC7: "AUDIT TRACKER", 0xC8: "REPORT MAP EXTENTS",
                0xC9: "COMMIT BACKUP"}.get(opcode, hex(opcode))

    def generations(self, lun: int | None = None):
        g, self._first_generations = self._first_generations, None
        if g is not None and lun is None:
            return g
        return self._whole_generations(
            self._cmd(self.L.OP_REPORT_GENERATIONS, lun=lun, length=GENERATIONS_ASK), lun)

    def _whole_generations(self, data: bytes, lun: int | None):
        """REPORT GENERATIONS from ``data``, an answer to GENERATIONS_ASK bytes; asked
        again with room for all of it when it says it is longer (a thousand
        generations and more)."""
        L = self.L
        h = L.GenerationsHeader.unpack(data)
        if h.additional_length + 4 > len(data) and len(data) == GENERATIONS_ASK:
            data = self._cmd(L.OP_REPORT_GENERATIONS, lun=lun, length=1 << 20)
        return L.GenerationsReport.unpack(data)

    def backup_status(self):
        return self.L.BackupStatus.unpack(self._cmd(self.L.OP_REPORT_BACKUP_STATUS, length=80))

    def status(self) -> VolumeStatus:
        g = self.generations()
        h = g.header
        return VolumeStatus(g.volume_id, h.volume_size, h.granularity, h.current_generation,
                            g.counts, h.full_done, h.pending_lo if h.pending_valid else None,
                            h.stream_active, h.restore_incomplete, h.restore_interrupted,
                            h.unrecovered_blocks)

    def estimate(self, scope: int, compressed: bool) -> tuple[int, int, int]:
        e = self.L.Estimate.unpack(self._cmd(
            self.L.OP_ESTIMATE_BACKUP, scope=scope, length=32,
            flags=self.L.FLAG_COMPRESS if compressed else 0))
        return e.blocks, e.stream_bytes, e.compressed_bytes

    def backup(self, full: bool, scope: int, out, show: bool) -> BackupOutcome:
        L = self.L
        if not full:
            g = self.generations()
            h = g.header
            if h.restore_incomplete:
                raise Failure("the volume is incomplete after a restore (see diffbackup status): "
                              "a differential backup would record wrong data as good; finish "
                              "the restore, or take a full backup")
            if not h.full_done:
                raise Failure("no full backup of this volume was completed since tracking "
                              "began: take a full backup first")
        else:
            # What finding the device by a disk's URL learnt, if it did (no round trip).
            g, self._first_generations = self._first_generations, None
        # HOLD: the target commits the cut only at COMMIT BACKUP, sent once the
        # output is complete (renamed, upload completed), so no generation is
        # recorded without its stream.  A target before HOLD refuses the bit:
        # then it commits when the last byte is read, as it always did.
        flags = (L.FLAG_FULL if full else 0) | L.FLAG_HOLD
        sel = 0 if full else scope
        from scsi_target.scsi.layouts.capacity import ReadCapacity16
        from scsi_target.scsi.layouts.cdbs import read_capacity16
        rc = {"cdb": read_capacity16(32), "read_length": 32, "lun": self.dev}
        status_cdb = L.cdb(L.OP_REPORT_BACKUP_STATUS, length=80)
        head = None
        if g is not None and g.header.start_selects:
            # START BACKUP with the selection in its CDB and READ CAPACITY in one
            # round trip (in CmdSN order; READ CAPACITY changes nothing, and a
            # refused START stops the run below).  A differential that the
            # generations' counts say is empty is read along (one 512-byte READ
            # at LBA 0, which never starts a stream by itself, and its status):
            # most likely the whole of it, in the same round trip.
            held = True
            start = {"cdb": L.cdb(L.OP_START_BACKUP, flags=flags, scope=sel, length=80),
                     "read_length": 80, "lun": self.dev}
            cmds = [start, rc]
            if not full and _empty_differential(g, scope):
                cmds += [{"cdb": _rw16(0x88, 0, 1), "read_length": DEV_BLOCK, "lun": self.dev,
                          "read_into": bytearray(DEV_BLOCK)},
                         {"cdb": status_cdb, "read_length": 80, "lun": self.dev}]
            r_start, r_cap, *head = self.c.execute_many(cmds)
        else:
            try:
                self._cmd(L.OP_SELECT_BACKUP, flags=flags, scope=sel)
                held = True
            except Failure as e:
                if "INVALID FIELD IN CDB" not in str(e).upper():
                    raise
                self._cmd(L.OP_SELECT_BACKUP, flags=flags & ~L.FLAG_HOLD, scope=sel)
                held = False
            # START BACKUP and READ CAPACITY in one round trip (as above).
            start = {"cdb": L.cdb(L.OP_START_BACKUP, length=80), "read_length": 80,
                     "lun": self.dev}
            r_start, r_cap = self.c.execute_many([start, rc])
        st = L.BackupStatus.unpack(bytes(self._checked(r_start, start, "START BACKUP").data))
        # Never read past the device, nor past the stream's bound: the stream (at
        # most size_bound bytes) ends before the device's capacity, and its length
        # is known once its end was produced.
        cap = bytes(self._checked(r_cap, rc, "READ CAPACITY").data)
        if len(cap) < 12:           # as initiator.cdb.parse_read_capacity16 refuses it
            raise ValueError(f"READ CAPACITY(16) data is {len(cap)} bytes, needs 12")
        blocks = ReadCapacity16.unpack(cap).blocks
        capacity = min(blocks * DEV_BLOCK, -(-st.size_bound // DEV_BLOCK) * DEV_BLOCK) \
            if st.size_bound else blocks * DEV_BLOCK
        head = self._whole_stream(st, *head) if head else None
        from volume.streamstore import StreamStoreError
        try:
            res = self._read_stream(st, capacity, status_cdb, _output(out), show, head)
        except StreamStoreError as e:
            raise Failure(self._taken_advice(e, full, scope)) from None
        if held:
            try:
                self._cmd(L.OP_COMMIT_BACKUP)
            except Failure as e:
                raise Failure(f"{e}: the stream is stored, but the target did not record the "
                              f"backup; the next differential of the same scope covers its "
                              f"blocks again") from None
        return res

    def _taken_advice(self, e: Exception, full: bool, scope: int) -> str:
        """The output failed after the stream was read.  Over iSCSI the target commits
        its cut once the stream's last byte was read, which the output's completion
        (rename, upload completion) necessarily follows: when that fails, say
        what the map now holds and how the next backup still covers it."""
        try:
            st = self.backup_status()
            taken = st.state == self.L.STATE_COMPLETE     # a held stream is not taken
        except Exception:  # noqa: BLE001 - the connection is gone: the target abandons it
            taken = False
        if not taken:
            return f"{e}; the backup was not taken (the volume's map is unchanged)"
        if full:
            return f"{e}; the target already recorded this full backup as taken: take a " \
                   f"full backup again before any differential"
        return f"{e}; the target already recorded generations {st.generation_lo}.." \
               f"{st.generation_hi} as backed up: the next differential must be taken with " \
               f"--scope {scope + 1} to cover them again"

    def _whole_stream(self, st, r_read, r_status):
        """The read sent along with START BACKUP and the status after it: (the
        stream's bytes, its final status) when that read held all of the stream
        START BACKUP opened (its status names the same stream, read to its end),
        else None -- the stream is then read from its start as any other (its
        first 64 KiB are kept for re-reads).  A failure of either is left to
        the reads that follow, which meet it again."""
        L = self.L
        if not (r_read.good and r_status.good):
            return None
        last = L.BackupStatus.unpack(bytes(r_status.data))
        data = memoryview(r_read.data)
        if last.stream_id != st.stream_id or not last.total or last.total > len(data) or \
                last.state not in (L.STATE_COMPLETE, L.STATE_HELD):
            return None
        return data[:last.total], last

    def _read_stream(self, st, capacity: int, status_cdb: bytes, sink, show: bool,
                     head=None):
        L = self.L
        if head is not None:
            data, st = head
            with sink as f, _progress(show) as prog:
                task = prog.add_task("backup", total=len(data))
                f.write(data)
                prog.update(task, completed=len(data))
            return BackupOutcome(len(data), (st.generation_lo, st.generation_hi),
                                 st.block_count)
        # READ_PIPELINE reads in flight all the time, each into a buffer of its
        # own that is reused once its data is stored; a REPORT BACKUP STATUS
        # rides along every STATUS_EVERY reads (no round trip of its own): once
        # the encoder reached the end its TOTAL says where the stream stops and
        # no read is issued past it.  Data read is held until a status says it
        # lies inside the stream (a status without TOTAL: the encoder had not
        # reached the end, so every read before it was stream), so the device's
        # zero padding never reaches the output (an upload cannot be truncated).
        # Buffers are made as the window first needs them (a stream of a few
        # kilobytes never zero-fills 32 MiB), then recycled, the one handed back
        # last first: the writer has just read it, so it is still in the CPU's
        # cache when the next read lands in it (oldest first cycles all of them
        # through memory).
        # The reads' last status is sent after the read that reaches the end
        # (asked as soon as that read is, not once its data is stored): in CmdSN
        # order, after every read of the stream, so its STATE says whether the
        # target saw the stream read to its end -- no round trip of its own.
        free: deque = deque()
        # (cmd, what, buffer, stream bytes asked for up to this command), in order
        sent: deque = deque()
        total = st.total or None

        def commands():
            at = n = 0
            unchecked = False               # reads sent since the last status
            while at < capacity and (total is None or at < total):
                nblocks = min(READ_CHUNK_BLOCKS, (capacity - at) // DEV_BLOCK)
                # Only the stream's last read is shorter than a chunk: its buffer (the
                # whole one of a small stream) is made as long as the read.
                size = nblocks * DEV_BLOCK
                fresh = not (free and len(free[-1]) >= size)
                buf = _buffer(size, populate=False) if fresh else free.pop()
                cmd = {"cdb": _rw16(0x88, at // DEV_BLOCK, nblocks),
                       "read_length": nblocks * DEV_BLOCK, "lun": self.dev, "read_into": buf}
                at += nblocks * DEV_BLOCK
                sent.append((cmd, "READ of the backup stream", buf, at))
                yield cmd
                if fresh:
                    # Its pages are mapped now, while the target produces what it
                    # asked for (never later than it is received: the pipeline asks
                    # for the next command before it waits for this one).
                    _populate(buf)
                n += 1
                unchecked = True
                if n % STATUS_EVERY == 0 or at >= capacity or \
                        (total is not None and at >= total):
                    cmd = {"cdb": status_cdb, "read_length": 80, "lun": self.dev}
                    sent.append((cmd, "REPORT BACKUP STATUS", None, at))
                    unchecked = False
                    yield cmd
            if unchecked:         # the end became known after the last read was sent
                sent.append(({"cdb": status_cdb, "read_length": 80, "lun": self.dev},
                             "REPORT BACKUP STATUS", None, at))
                yield sent[-1][0]

        pos = 0
        last = None                  # a status sent after every read of the stream
        with sink as f, _progress(show) as prog, _Writer(f, free) as out:
            task = prog.add_task("backup", total=st.size_bound)
            pending: deque = deque()   # (data, buffer) read, not yet stored
            # READ_PIPELINE reads in flight, and the statuses among them
            depth = READ_PIPELINE + -(-READ_PIPELINE // STATUS_EVERY)
            for r in self.c.pipeline(commands(), depth):
                cmd, what, buf, asked = sent.popleft()
                if buf is not None and total is not None and pos >= total:
                    free.append(buf)          # a read past the end, sent before it was known
                    continue
                r = self._checked(r, cmd, what)
                if buf is None:
                    st = L.BackupStatus.unpack(bytes(r.data))
                    if st.total:
                        total = st.total
                    if total is not None and asked >= total:
                        last = st
                else:
                    pending.append((memoryview(r.data), buf))
                if buf is None or total is not None:
                    while pending:
                        data, b = pending.popleft()
                        if total is not None:
                            data = data[:max(0, total - pos)]
                        # b comes back to free once written
                        out.write(data, b, last=total is not None and pos + len(data) >= total)
                        pos += len(data)
                    prog.update(task, completed=pos)
                if last is not None and pos >= total:
                    break
            if total is None or pos < total:
                raise Failure(f"the backup stream did not end within the device's "
                              f"{capacity} bytes")
            out.close()                                 # all stored (or its error raised)
            st = last
            if st is None or st.state not in (L.STATE_COMPLETE, L.STATE_HELD):
                st = self.backup_status()        # a read retried after it (UNIT ATTENTION)
            prog.update(task, completed=pos, total=pos)
            if st.state not in (L.STATE_COMPLETE, L.STATE_HELD):
                raise Failure("the target does not report the backup stream complete")
        return BackupOutcome(pos, (st.generation_lo, st.generation_hi), st.block_count)

    def _checked(self, r, cmd: dict, what: str):
        """A pipelined command's result: a UNIT ATTENTION answer (new session,
        reset) is retried alone, like _exec; any other failure is a Failure.
        Stream reads and writes address byte offsets, so a retried one lands
        where it belongs whatever ran in between."""
        from scsi_target.initiator.errors import ScsiCheckCondition
        from scsi_target.scsi.layouts.sense import SenseKey
        if r.good:
            return r
        if r.sense_key == SenseKey.UNIT_ATTENTION:
            return self._exec(what=what, **cmd)
        try:
            r.raise_for_status()
        except ScsiCheckCondition as e:
            raise Failure(f"target refused {what}: {' '.join(str(e).split())}") from None
        except Exception as e:     # a transport-level answer
            raise Failure(f"target failed {what}: {e}") from None
        return r

    def restore_one(self, path, skips: list[int], prog, task) -> StreamOutcome:
        L = self.L
        self._cmd(L.OP_SET_RESTORE_OPTIONS, length=4 + 4 * len(set(skips)),
                  data_out=L.pack_restore_options(skips))
        refused = None
        # PIPELINE writes in flight, each from a buffer of its own that is
        # refilled from the file once its write completed; the restore takes
        # them at their offsets (in order or reordered within its bound).  The
        # write at LBA 0 starts the stream, so it goes alone: a later, shorter
        # write could otherwise get its data in first and run first.
        chunk = CHUNK_BLOCKS * DEV_BLOCK
        free: deque = deque()        # filled as buffers come back
        # (reused last back first, as a backup's reads reuse theirs)
        sent: deque = deque()      # (cmd, buffer, bytes), in order
        what = "WRITE of the restore stream"
        with _open_stream(path) as f:
            def next_write(lba: int) -> dict | None:
                buf = free.pop() if free else _buffer(chunk)
                n = 0
                while n < chunk:                 # whole chunks, whatever readinto returns
                    k = f.readinto(memoryview(buf)[n:])
                    if not k:
                        break
                    n += k
                if not n:
                    free.append(buf)
                    return None
                if n % DEV_BLOCK:
                    pad = DEV_BLOCK - n % DEV_BLOCK
                    buf[n:n + pad] = bytes(pad)
                    n += pad
                cmd = {"cdb": _rw16(0x8A, lba, n // DEV_BLOCK),
                       "data_out": memoryview(buf)[:n], "lun": self.dev}
                sent.append((cmd, buf, n))
                return cmd

            def commands():
                lba = CHUNK_BLOCKS
                while (cmd := next_write(lba)) is not None:
                    yield cmd
                    lba += CHUNK_BLOCKS

            first = next_write(0)
            if first is not None:
                cmd, buf, n = sent.popleft()
                try:
                    self._checked(self.c.execute(check=False, **cmd), cmd, what)
                except Failure as e:
                    refused = str(e)
                free.append(buf)
                prog.advance(task, n)
                if refused is None and n == chunk:
                    for r in self.c.pipeline(commands(), PIPELINE):
                        cmd, buf, n = sent.popleft()
                        try:
                            self._checked(r, cmd, what)
                        except Failure as e:
                            refused = str(e)
                            break
                        free.append(buf)
                        prog.advance(task, n)
        rep = L.RestoreReportData.unpack(self._cmd(L.OP_REPORT_RESTORE_RESULTS, length=1 << 20))
        h = rep.header
        o = StreamOutcome(str(path), rep.state, (h.generation_lo, h.generation_hi), h.full,
                          h.records_applied, h.blocks_written, h.skipped_older,
                          h.skipped_forbidden)
        o.bad = [(d.first_block if d.block_valid else None, d.nblocks, d.generation,
                  d.stream_offset) for d in rep.bad]
        o.unrecovered = [(e.first_block, e.nblocks) for e in rep.unrecovered]
        o.unrecovered_total = h.unrecovered_blocks
        o.errors = [m for m in rep.message.splitlines() if m and not m.startswith("offset ")]
        if refused and not o.errors:
            o.errors.append(refused)
        if o.state == "running":
            o.errors.append("the stream ended before its trailer (truncated file?)")
        return o

    def map_extents(self) -> list[tuple[int, int, int]]:
        """Every extent, REPORT MAP EXTENTS page by page (SCOPE = first descriptor)."""
        L = self.L
        out: list[tuple[int, int, int]] = []
        length = L.MapExtentsHeader.SIZE + 65536 * L.MapExtentDesc.SIZE
        while True:
            h, ext = L.unpack_map_extents(self._cmd(L.OP_REPORT_MAP_EXTENTS, scope=len(out),
                                                    length=length))
            out += ext
            if not ext or len(out) >= h.total_descriptors:
                return out

    def audit(self, rate: int, full: bool):
        from volume.audit import AuditReport
        L = self.L
        length = L.AuditHeader.SIZE + L.MAX_EXTENT_DESCRIPTORS * L.ExtentDesc.SIZE
        try:
            rep = L.AuditReportData.unpack(self._cmd(
                L.OP_AUDIT_TRACKER, flags=L.FLAG_FULL if full else 0,
                scope=0 if full else rate, length=length))
        except Failure as e:
            if "COMMAND SEQUENCE ERROR" in str(e).upper():
                raise Failure(f"cannot audit: {e} (no block CRC table for the current full "
                              f"backup, or a backup stream is open)") from None
            raise
        h = rep.header
        r = AuditReport(h.rate, h.phase, h.generation, h.candidates, h.checked, h.escalated,
                        [(e.first_block, e.nblocks) for e in rep.mismatched], h.remarked_blocks,
                        mismatch_total=h.mismatched_blocks)
        return r

    def close(self) -> None:
        self.c.close()


class _Writer:
    """The backup's output written from a thread of its own, so that storing one
    chunk (a file write, an upload part) overlaps receiving the next: the two
    are about equal costs of a full backup, both outside the GIL.  At most
    ``DEPTH`` chunks wait; each buffer goes back to ``free`` once written.  The
    first error of the output is raised in the caller, by the next ``write``
    or by ``close``; leaving the ``with`` block waits for the thread.

    The thread starts with the first chunk that is not the stream's last: a
    stream of one chunk (a differential with little or nothing changed) has
    nothing to overlap, and is written by the caller without one (nor the
    modules a thread and its queue import)."""
    DEPTH = 4

    def __init__(self, f, free: deque) -> None:
        self.f, self.free = f, free
        self.error: BaseException | None = None
        self._q = None
        self._t = None

    def _start(self) -> None:
        import queue
        import threading
        self._q = queue.Queue(self.DEPTH)
        self._t = threading.Thread(target=self._run, name="diffbackup-output", daemon=True)
        self._t.start()

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            data, buf = item
            item = None
            if self.error is None:
                try:
                    self.f.write(data)
                except BaseException as e:      # noqa: BLE001 - raised in the caller
                    self.error = e
            data = None             # no view of buf left here: it may be unmapped once back
            self.free.append(buf)

    def write(self, data, buf, last: bool = False) -> None:
        """Store ``data`` (then hand ``buf`` back); ``last``: nothing follows it."""
        if self.error is not None:
            raise self.error
        if self._t is None:
            if last:
                try:
                    self.f.write(data)
                except BaseException as e:
                    self.error = e
                    raise
                finally:
                    self.free.append(buf)
                return
            self._start()
        self._q.put((data, buf))

    def _stop(self, unmap: bool = False) -> None:
        if self._t is not None and self._t.is_alive():
            self._q.put(None)
            # The stream is read: no buffer is used again.  Unmapping each one
            # as the thread hands it back overlaps its munmap (~0.3 ms for
            # 4 MiB) with the writes still queued, instead of all of them
            # following the last write.
            while unmap and self._t.is_alive():
                if self.free:
                    _unmap(self.free.popleft())
                else:
                    self._t.join(0.002)
            self._t.join()
        while unmap and self.free:         # those handed back after the last look
            _unmap(self.free.popleft())

    def close(self) -> None:
        """Wait for everything queued to be stored (raising the output's first
        error); the buffers handed back meanwhile are unmapped, not kept."""
        self._stop(unmap=True)
        if self.error is not None:
            raise self.error

    def __enter__(self) -> "_Writer":
        return self

    def __exit__(self, *exc) -> None:
        self._stop()


def _unmap(buf) -> None:
    """Release a window buffer (a :func:`_buffer` map) now rather than when its
    last reference goes; one a view is still alive of (the last result's) goes
    then, as do buffers of other kinds."""
    mmap = sys.modules.get("mmap")      # not loaded: no buffer of this run is a map
    if mmap is not None and isinstance(buf, mmap.mmap):
        try:
            buf.close()
        except BufferError:
            pass


def _rw16(opcode: int, lba: int, nblocks: int) -> bytes:
    """READ(16)/WRITE(16) of ``nblocks`` at ``lba``."""
    return bytes([opcode, 0]) + lba.to_bytes(8, "big") + nblocks.to_bytes(4, "big") + bytes(2)


def _empty_differential(g, scope: int) -> bool:
    """Whether REPORT GENERATIONS ``g`` counts no block in the generations a
    differential of ``scope`` would carry (down to an unfinished stream's, as
    the target widens it): its stream is then header and trailer only."""
    h = g.header
    lo = h.current_generation - scope + 1
    if h.pending_valid and h.pending_lo < lo:
        lo = h.pending_lo
    return not any(n for gen, n in g.counts.items() if lo <= gen <= h.current_generation)


def _sparse(size: int):
    """A receive buffer for an answer usually much shorter than the command's
    allocation length: anonymous memory whose pages are mapped only as data
    lands in them.  A bytearray of 1 MiB is zero-filled whole first, ~0.7 ms of
    page faults for a 300-byte REPORT GENERATIONS."""
    import mmap
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _buffer(size: int, populate: bool = True):
    """A writable buffer for a window slot: anonymous memory, populated when it
    is made -- the kernel zero-fills all its pages in one pass, where letting
    the first recv or read fault them in one 4 KiB page at a time cost a full
    backup of 512 MiB about 40 ms of CPU for its 13 buffers, and a bytearray
    would be zero-filled by a pass of Python's own.  Not in transparent huge
    pages: MADV_HUGEPAGE made populating 4 MiB ~0.3 ms instead of ~1.3 ms, but
    with the kernel's defrag=madvise the first buffer after memory churn stalled
    47-100 ms in synchronous compaction.

    ``populate=False``: made unpopulated, for :func:`_populate` to map once the
    command it is for was sent (no longer before the command)."""
    import mmap
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    if not _LATE_POPULATE:
        return mmap.mmap(-1, size, flags=flags | getattr(mmap, "MAP_POPULATE", 0))
    buf = mmap.mmap(-1, size, flags=flags)
    if populate:
        _populate(buf)
    return buf


# madvise(MADV_POPULATE_WRITE) (Linux 5.14): MAP_POPULATE's pass over a mapping
# that already exists.  Where it is refused, later buffers are made with
# MAP_POPULATE (Linux; elsewhere they are faulted in as they are used).
_MADV_POPULATE_WRITE = 23
_LATE_POPULATE = sys.platform.startswith("linux")


def _populate(buf) -> None:
    """Map every page of a ``_buffer(..., populate=False)`` now (see there)."""
    global _LATE_POPULATE
    if not _LATE_POPULATE:
        return
    try:
        buf.madvise(_MADV_POPULATE_WRITE)
    except (OSError, ValueError):       # an older kernel: later buffers are made populated
        _LATE_POPULATE = False


# -------------------------------------------------------------------- tape
def _backup_to_tape(args, full: bool) -> int:
    from tools.diffbackup_tape import backup_to_tape
    if args.output:
        raise Failure("give -o FILE or --tape TAPE, not both", EXIT_USAGE)
    if args.target_side:
        from tools.diffbackup_tape import backup_target_side
        return backup_target_side(args, full)
    return backup_to_tape(args, full, _open)


def _restore_from_tape(args) -> int:
    from tools.diffbackup_tape import restore_from_tape
    if args.files:
        raise Failure("give stream FILEs or --tape with --file, not both", EXIT_USAGE)
    if not args.tape or not args.file:
        raise Failure("--tape and --file go together", EXIT_USAGE)
    return restore_from_tape(args, cmd_restore)


# -------------------------------------------------------------------- commands
def _is_s3(name: str) -> bool:
    return name.startswith("s3://")


def _s3_options(args, *, writing: bool = False) -> dict:
    """S3 client settings from the command line (credentials: boto3's default chain)."""
    opts: dict = {"endpoint": getattr(args, "s3_endpoint", None)}
    if writing:
        if args.part_size is not None:
            opts["part_size"] = args.part_size
        if args.s3_uploads is not None:
            opts["uploads"] = args.s3_uploads
        opts["md5"] = not args.no_s3_md5
    return opts


def _stream_refs(names, args) -> list:
    """The streams a restore/verify reads: files or s3:// objects (one client per bucket)."""
    from volume.streamstore import FileStreams, StreamStoreError
    refs = []
    stores: dict = {}
    try:
        for n in names:
            if _is_s3(n):
                from volume.s3streams import S3Streams, parse_s3_url
                bucket, key = parse_s3_url(n, want_key=True)
                if bucket not in stores:
                    stores[bucket] = S3Streams(bucket, **_s3_options(args))
                refs.append(stores[bucket].ref(key))
            else:
                refs.append(FileStreams().ref(n))
    except StreamStoreError as e:
        raise Failure(str(e)) from None
    return refs


def _open(spec: str, *, start_tracking: bool = False, create_from=None,
          initiator_name: str | None = None) -> Volume:
    if spec.startswith("iscsi://"):
        return RemoteVolume(spec, initiator_name)
    from tools.diffbackup_commands import LocalVolume
    return LocalVolume(spec, start_tracking=start_tracking, create_from=create_from)


def _open_output(args):
    """The stream writer of ``-o`` (a file, or an S3 key), or a one-line Failure."""
    from volume.streamstore import StreamStoreError, open_writer
    try:
        return open_writer(args.output, force=args.force or not _is_s3(args.output),
                           s3_options=_s3_options(args, writing=True))
    except StreamStoreError as e:
        raise Failure(str(e)) from None


def cmd_backup(args, full: bool) -> int:
    if args.tape:
        return _backup_to_tape(args, full)
    if not args.output:
        raise Failure("give -o FILE or --tape TAPE", EXIT_USAGE)
    if args.target_side:
        raise Failure("--target-side goes with --tape", EXIT_USAGE)
    from volume.streamstore import StreamStoreError
    # The output first: a missing bucket, bad credentials or an existing key
    # cost no backup.  Then the volume (a failure there aborts the output).
    sink = _open_output(args)
    try:
        v = _open(args.source, start_tracking=full, initiator_name=args.initiator_name)
    except BaseException:
        sink.abort()
        raise
    try:
        res = v.backup(full, getattr(args, "scope", None) or 1, sink, not args.quiet)
    except StreamStoreError as e:
        raise Failure(f"{e}; the backup was not taken (the volume's map is unchanged)") \
            from None
    finally:
        sink.abort()          # a no-op once committed
        v.close()
    kind = "full" if full else f"differential (scope {args.scope})"  # noqa
    out.print(f"{kind} backup of generations {res.generation[0]}..{res.generation[1]}: "
              f"{res.blocks} blocks, {res.nbytes} bytes -> {args.output}")
    return EXIT_OK


def _parse_skips(items: list[str], nfiles: int) -> list[list[int]]:
    per = [[] for _ in range(nfiles)]
    for s in items or []:
        idx, sep, g = s.rpartition(":")
        try:
            gen = int(g)
            which = [int(idx) - 1] if sep else list(range(nfiles))
        except ValueError:
            raise Failure(f"--skip-generation {s!r}: expected G or N:G (N = stream position "
                          f"1..{nfiles})", EXIT_USAGE) from None
        for i in which:
            if not 0 <= i < nfiles or gen < 0:
                raise Failure(f"--skip-generation {s!r}: no stream {i + 1} in the list",
                              EXIT_USAGE)
            per[i].append(gen)
    return per


def cmd_restore(args) -> int:
    if args.tape or args.file:
        return _restore_from_tape(args)
    if not args.files:
        raise Failure("give stream FILEs, or --tape TAPE --file N", EXIT_USAGE)
    from volume.stream import HEADER_SIZE, StreamError, StreamHeader
    from volume.streamstore import StreamStoreError
    skips = _parse_skips(args.skip_generation, len(args.files))
    refs = _stream_refs(args.files, args)
    total = sum(r.size() for r in refs)
    outcomes: list[StreamOutcome] = []
    first = None
    if not args.dest.startswith("iscsi://"):
        try:
            first = StreamHeader.unpack(refs[0].read_range(0, HEADER_SIZE))
        except (StreamError, StreamStoreError, OSError):
            first = None  # the restore below reports the unreadable stream
    v = _open(args.dest, start_tracking=True,
              create_from=first if first is not None and first.full else None,
              initiator_name=args.initiator_name)
    try:
        with _progress(not args.quiet) as prog:
            task = prog.add_task("restore", total=total)
            for f, sk in zip(refs, skips):
                try:
                    o = v.restore_one(f, sk, prog, task)
                except StreamStoreError as e:    # the store failed mid-stream
                    o = StreamOutcome(str(f), "abandoned", errors=[
                        f"{e}: the restore of this stream was interrupted; apply it again"])
                    outcomes.append(o)
                    break
                outcomes.append(o)
                if o.state == "rejected":
                    break             # a stream refused: the later ones cannot follow it
    finally:
        v.close()
    return _summary(outcomes)


def _summary(outcomes: list[StreamOutcome]) -> int:
    from rich.table import Table
    t = Table(title="restore")
    for col in ("stream", "generations", "result", "records applied", "blocks written",
                "skipped (older)", "skipped (forbidden)", "bad records"):
        t.add_column(col)
    for o in outcomes:
        t.add_row(o.name, f"{'full' if o.full else f'{o.generation[0]}..{o.generation[1]}'}",
                  "ok" if o.ok else o.state if o.state != "done" else "damaged",
                  str(o.applied), str(o.blocks_written), str(o.skipped_older),
                  str(o.skipped_forbidden), str(len(o.bad)))
    out.print(t)
    failed = False
    for o in outcomes:
        for blk, n, g, off in o.bad:
            where = f"blocks {blk}..{blk + n - 1}, generation {g}" if blk is not None \
                else "unknown blocks (record header unreadable)"
            out.print(f"bad record in {o.name} at byte {off}: {where} (not applied)")
            failed = True
        for e in o.errors:
            out.print(f"{o.name}: {e}")
            failed = True
        if o.state != "done":
            failed = True
    final = outcomes[-1].unrecovered if outcomes else []
    if final or (outcomes and outcomes[-1].unrecovered_total):
        n = max(sum(k for _a, k in final), outcomes[-1].unrecovered_total)
        out.print(f"[bold red]{n} blocks not recovered[/]: " +
                  ", ".join(f"{a}..{a + k - 1}" for a, k in final[:10]) +
                  (" ..." if len(final) > 10 else ""))
        failed = True
    elif outcomes and outcomes[-1].state == "done":
        out.print("every block of the restored generations was recovered"
                  + (" (later streams replaced the damaged records)" if failed else ""))
    if failed:
        out.print("[bold red]restore finished with problems[/]")
        return EXIT_FAILED
    out.print("restore complete")
    return EXIT_OK


def build_parser():
    """The argparse parser of every command (tools/diffbackup_parser.py; argparse is
    imported only when a command line is not one :mod:`tools.diffbackup_argv` knows)."""
    from tools.diffbackup_parser import build_parser
    return build_parser()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        from tools.diffbackup_argv import recognize
        args = recognize(sys.argv[1:] if argv is None else list(argv)) or \
            build_parser().parse_args(argv)
        if not hasattr(args, "quiet"):
            args.quiet = False
        if getattr(args, "scope", 1) is not None and getattr(args, "scope", 1) < 1:
            raise Failure("--scope must be at least 1", EXIT_USAGE)
        if args.initiator_name is not None:
            from scsi_target.protocol.names import name_problem
            problem = name_problem(args.initiator_name)
            if problem:
                raise Failure(f"--initiator-name: {problem}", EXIT_USAGE)
        cmd = args.command
        if cmd == "full":
            return cmd_backup(args, True)
        if cmd == "diff":
            return cmd_backup(args, False)
        if cmd == "restore":
            return cmd_restore(args)
        if cmd in ("verify", "status", "merge", "audit", "estimate"):
            from tools import diffbackup_commands as commands
            return getattr(commands, f"cmd_{cmd}")(args)
        if cmd == "catalog":
            if _is_s3(args.tape):
                from tools.diffbackup_s3 import cmd_catalog_s3
                return cmd_catalog_s3(args)
            from tools.diffbackup_tape import cmd_catalog
            return cmd_catalog(args)
        if cmd == "cleanup":
            from tools.diffbackup_s3 import cmd_cleanup
            return cmd_cleanup(args)
        raise Failure(f"unknown command {cmd!r}", EXIT_USAGE)
    except Failure as e:
        print(f"{PROG}: {' '.join(str(e).split())}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:   # iSCSI, OS and format errors: one line
        text = " ".join((getattr(e, "strerror", None) or str(e) or type(e).__name__).split())
        print(f"{PROG}: {type(e).__name__}: {text}", file=sys.stderr)
        return EXIT_FAILED


def run() -> NoReturn:
    """The ``diffbackup`` command (bin/diffbackup, the installed script, and
    ``python -m tools.diffbackup``): :func:`main` in a process of its own, ended as
    soon as it is done."""
    # A run makes its objects at start-up (the imports) and few after: collections
    # of the young generation while importing are most of the collector's work and
    # find nothing to free; collect rarely instead.
    import gc
    gc.set_threshold(50_000, 20, 20)
    _end(main())


def _end(code: int) -> NoReturn:
    """End the process with ``code``.  Once main() returned, every file it wrote is
    closed (streams committed or removed, the session logged out): what the
    interpreter's teardown still does -- finalising modules, freeing each object
    one by one -- is 5-6 ms of a run whose memory the kernel frees anyway.  So
    the process ends at once (atexit handlers run first) when nothing else is
    left: the standard streams flushed and no other thread alive.  Otherwise,
    or if a flush fails (a closed pipe), it ends the usual way, which reports
    that as Python always does."""
    if type(code) is not int:
        raise SystemExit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        raise SystemExit(code) from None
    threading = sys.modules.get("threading")
    if threading is None or threading.active_count() == 1:
        import atexit
        atexit._run_exitfuncs()          # CPython's own exit path runs them the same way
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    # tools.diffbackup_tape imports this module by name: let it find this one, so
    # its Failure is the class main() catches.
    sys.modules.setdefault("tools.diffbackup", sys.modules[__name__])
    run()
