"""The patent's pseudo device: a disk-type LU bound to a tracked disk LU.

Its medium is a byte window onto backup streams of the source volume
(docs/vendor-commands.md, "The backup device"):

* READ returns the backup stream selected with SELECT BACKUP (full, or
  differential with a scope).  A READ at LBA 0 starts a new backup when no
  stream is open or the open one was read completely; START BACKUP starts one
  explicitly.  Past the end of the stream the device reads as zeros (the
  decoder ignores zero padding after the trailer, so ``dd``/``qemu-img
  convert`` copies of the whole device are valid stream files).  With no
  stream open, reads elsewhere than LBA 0 return zeros.
* WRITE applies a stream to the source volume (restore): a WRITE at LBA 0
  starts a new restore stream, later writes continue it (in order, or out of
  order within 64 MiB).  Records are applied as they verify; results are
  read back with REPORT RESTORE RESULTS.

Everything goes through :class:`StreamMedium`, a BlockStore, so the SBC
command set (READ/WRITE/READ CAPACITY/...) is reused unchanged.
"""
from __future__ import annotations

import threading

from volume.pitcut import PreservationExhausted
from volume.store import BlockStore, StoreError

from ..backup_stream_io import (BackupReader, BackupRefused, RestoreRejected, RestoreResult,
                                RestoreWriter, StreamGone, StreamOrderError, begin_backup,
                                capacity_bound)
from ..interceptors.tracker import TrackingStore
from .disk import DiskLU
from .dispatch import DispatchTable
from .lun import Identity
from . import sense as S

BLOCK_SIZE = 512


class StreamMedium(BlockStore):
    """Reads serve backup streams, writes feed restore streams (see module doc)."""

    read_only = False
    thin = False

    def __init__(self, source: TrackingStore) -> None:
        self.source = source
        self.size = -(-capacity_bound(source.size, source.map.granularity) // BLOCK_SIZE) \
            * BLOCK_SIZE
        self.lock = threading.RLock()
        # selection for the next backup
        self.full = True
        self.scope = 1
        self.compress = False
        self.reader: BackupReader | None = None
        # restore side
        self.skip_generations: list[int] = []
        self.writer: RestoreWriter | None = None
        self.last_restore = RestoreResult()
        self._chain = None         # ChainState after the last restore stream

    # -- backup -----------------------------------------------------------------
    def start_backup(self) -> BackupReader:
        with self.lock:
            try:
                plan, active = begin_backup(self.source, full=self.full, scope=self.scope)
            except BackupRefused as exc:
                raise S.SenseError(S.SenseKey.ILLEGAL_REQUEST, S.COMMAND_SEQUENCE_ERROR) from exc
            self.reader = BackupReader(self.source, plan, active, compress=self.compress)
            return self.reader

    def readinto(self, offset: int, buf: memoryview) -> None:
        with self.lock:
            r = self.reader
            if offset == 0 and (r is None or r.complete):
                r = self.start_backup()
            if r is None:
                buf[:] = bytes(len(buf))
                return
            try:
                r.readinto(offset, buf)
            except (StreamGone, StreamOrderError) as exc:
                raise S.SenseError(S.SenseKey.ILLEGAL_REQUEST, S.COMMAND_SEQUENCE_ERROR,
                                   information=offset // BLOCK_SIZE) from exc
            except PreservationExhausted as exc:   # the point-in-time image could not be kept
                raise S.SenseError(S.SenseKey.MEDIUM_ERROR, S.INSUFFICIENT_RESOURCES,
                                   information=offset // BLOCK_SIZE) from exc
            except StoreError:
                raise
            except Exception as exc:   # a failed source read surfaces as a medium error
                raise StoreError(str(exc)) from exc

    # -- restore ----------------------------------------------------------------
    def write(self, offset: int, data) -> None:
        with self.lock:
            w = self.writer
            if offset == 0 or w is None:
                if offset != 0:
                    raise S.SenseError(S.SenseKey.ILLEGAL_REQUEST, S.COMMAND_SEQUENCE_ERROR,
                                       information=offset // BLOCK_SIZE)
                if w is not None and not w.finished:
                    w.abandon()
                    self._chain = w.chain
                w = self.writer = RestoreWriter(self.source, skip_generations=self.skip_generations,
                                                name="restore stream", previous=self._chain)
                self.last_restore = w.result
            try:
                w.write(offset, data)
            except RestoreRejected as exc:
                raise S.SenseError(S.SenseKey.ILLEGAL_REQUEST,
                                   S.CANNOT_WRITE_MEDIUM_INCOMPATIBLE_FORMAT) from exc
            except StreamOrderError as exc:
                raise S.SenseError(S.SenseKey.ILLEGAL_REQUEST, S.COMMAND_SEQUENCE_ERROR,
                                   information=offset // BLOCK_SIZE) from exc
            finally:
                if w.finished:
                    self._chain = w.chain

    # write_zeroes/discard: the BlockStore defaults write zeroes through write(),
    # which is what zero padding after a stream (qemu-img's WRITE SAME) needs.

    def close(self) -> None:
        with self.lock:
            if self.writer is not None and not self.writer.finished:
                self.writer.abandon()


class BackupLU(DiskLU):
    """The backup pseudo device bound to the tracked disk LU ``source_lun``."""

    def __init__(self, source: DiskLU, source_lun: int, identity: Identity | None = None) -> None:
        store = source.store
        if not isinstance(store, TrackingStore):
            raise ValueError(f"LUN {source_lun} is not tracked: a backup device needs tracking on")
        self.medium = StreamMedium(store)
        super().__init__(self.medium, BLOCK_SIZE, False, identity)
        self.source = source
        self.source_lun = source_lun
        self.identity.product = "DIFF-BACKUP"

    @property
    def tracked(self) -> TrackingStore:
        return self.medium.source

    @property
    def table(self) -> DispatchTable:
        return _backup_table()

    def close(self) -> None:
        self.medium.close()      # the source LU closes its own store


_TABLE: DispatchTable | None = None


def _backup_table() -> DispatchTable:
    global _TABLE
    if _TABLE is None:
        from .spc import SPC
        from .sbc import SBC
        from .vendor_backup import VENDOR_BACKUP
        _TABLE = DispatchTable([SPC, SBC, VENDOR_BACKUP])
    return _TABLE
