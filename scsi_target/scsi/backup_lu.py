"""The patent's pseudo device: a disk-type LU bound to a tracked disk LU.

Its medium is a byte window onto backup streams of the source volume
(docs/vendor-commands.md, "The backup device"); the rules of that window
(when a read starts a backup, what probes get, how a write starts a restore)
are the volume's session state machine, ``volume.session.VolumeSessions``:

* READ returns the open backup stream (START BACKUP opens the one chosen with
  SELECT BACKUP; with none open, a READ at LBA 0 of at least 64 KiB opens it).
  Past the end of the stream, far ahead of it, and with no stream open the
  device reads as zeros.
* WRITE applies a stream to the source volume (restore): a WRITE at LBA 0
  starts a new restore stream, later writes continue it.

Everything goes through :class:`StreamMedium`, a BlockStore, so the SBC
command set (READ/WRITE/READ CAPACITY/...) is reused unchanged.  The medium
raises the engine's typed errors; :func:`volume_sense` is the one place they
become sense data.
"""
from __future__ import annotations

import threading

from volume.session import (BackupRefused, RestoreRejected, ScopeError, StreamCutLost, StreamGone,
                            StreamOrderError, VolumeError, VolumeSessions, capacity_bound)
from volume.store import BlockStore
from volume.tracked import TrackingStore

from . import devices
from .command import Command, Response
from .disk import DiskLU
from .lun import Identity
from . import sense as S

BLOCK_SIZE = 512


def volume_sense(exc: VolumeError) -> S.SenseError:
    """The engine's errors as sense data (the one mapping)."""
    info = exc.offset // BLOCK_SIZE if exc.offset is not None else None
    if isinstance(exc, ScopeError):
        return S.invalid_cdb_field(2)
    if isinstance(exc, RestoreRejected):
        return S.SenseError(S.SenseKey.ILLEGAL_REQUEST, S.CANNOT_WRITE_MEDIUM_INCOMPATIBLE_FORMAT)
    if isinstance(exc, StreamCutLost):
        # The point-in-time image could not be kept: the stream stops here.
        asc = S.INSUFFICIENT_RESOURCES if exc.exhausted else S.UNRECOVERED_READ_ERROR
        return S.SenseError(S.SenseKey.MEDIUM_ERROR, asc, information=info)
    if isinstance(exc, (BackupRefused, StreamGone, StreamOrderError)):
        if info is not None:
            return S.SenseError(S.SenseKey.ILLEGAL_REQUEST, S.COMMAND_SEQUENCE_ERROR,
                                information=info)
        return S.SenseError(S.SenseKey.ILLEGAL_REQUEST, S.COMMAND_SEQUENCE_ERROR)
    return S.SenseError(S.SenseKey.HARDWARE_ERROR, S.INTERNAL_TARGET_FAILURE)


class StreamMedium(BlockStore):
    """Reads serve backup streams, writes feed restore streams (see module doc)."""

    read_only = False
    thin = False
    lends = True              # sequential stream reads go out without a copy

    def __init__(self, source: TrackingStore) -> None:
        self.source = source
        self.sessions: VolumeSessions = source.sessions
        self.size = -(-capacity_bound(source.size, source.map.granularity) // BLOCK_SIZE) \
            * BLOCK_SIZE
        self.sessions.device_size = self.size
        self.lock = threading.RLock()
        self.skip_generations: list[int] = []
        self.nexus = None            # the I_T nexus of the command being executed
        self.gather = False          # ... and whether its front end takes a Gather (may_gather)
        self.hold = False            # SELECT BACKUP's HOLD: commit at COMMIT BACKUP

    @property
    def reader(self):
        return self.sessions.reader

    @property
    def last_restore(self):
        return self.sessions.last_restore

    def select(self, full: bool, scope: int, compress: bool, hold: bool = False) -> None:
        self.sessions.selection = (full, scope, compress)
        self.hold = hold

    def start_backup(self):
        full, scope, compress = self.sessions.selection
        return self.sessions.start_backup(full=full, scope=scope, compress=compress,
                                          owner=self.nexus, hold=self.hold)

    def start_selected(self, full: bool, scope: int, compress: bool, hold: bool):
        """SELECT BACKUP and START BACKUP in one: the selection is kept (as a SELECT
        BACKUP leaves it) once the stream started."""
        r = self.sessions.start_backup(full=full, scope=scope, compress=compress,
                                       owner=self.nexus, hold=hold)
        self.select(full, scope, compress, hold)
        return r

    def readinto(self, offset: int, buf: memoryview) -> None:
        self.sessions.read(offset, buf, owner=self.nexus)

    def lend(self, offset: int, length: int):
        # A front end that takes gathered data gets the stream's record data as
        # loans of the volume's map (volume/lending.py); others one buffer.
        return self.sessions.lend(offset, length, owner=self.nexus, gather=self.gather)

    def write(self, offset: int, data) -> None:
        self.sessions.write(offset, data, skip_generations=self.skip_generations,
                            owner=self.nexus)

    # write_zeroes/discard: the BlockStore defaults write zeroes through write(),
    # which is what zero padding after a stream (qemu-img's WRITE SAME) needs.

    def close(self) -> None:
        self.sessions.close()


class BackupLU(DiskLU):
    """The backup pseudo device bound to the tracked disk LU ``source_lun``."""

    def __init__(self, source: DiskLU, source_lun: int, identity: Identity | None = None) -> None:
        store = source.store
        if not isinstance(store, TrackingStore):
            raise ValueError(f"LUN {source_lun} is not tracked: a backup device needs tracking on")
        self.medium = StreamMedium(store)
        super().__init__(self.medium, BLOCK_SIZE, False, identity, table=devices.BACKUP)
        self.source = source
        self.source_lun = source_lun
        self.identity.product = "DIFF-BACKUP"
        self.forget_hooks.append(self._nexus_gone)
        store.grow_listeners.append(self._source_grew)

    def _source_grew(self, size: int) -> None:
        """The tracked volume grew (rbd resize): its streams may now be longer, so the
        device's capacity follows (CAPACITY DATA HAS CHANGED, as on the disk)."""
        m = self.medium
        with m.lock:
            m.size = -(-capacity_bound(size, m.source.map.granularity) // BLOCK_SIZE) * BLOCK_SIZE
            m.sessions.device_size = m.size
            self.adopt_capacity(m.size // BLOCK_SIZE)

    def execute(self, cmd: Command) -> Response:
        m = self.medium
        with m.lock:
            m.nexus = cmd.nexus
            m.gather = cmd.may_gather
            try:
                return super().execute(cmd)
            except VolumeError as exc:
                return self._check_condition(cmd, volume_sense(exc))
            finally:
                m.nexus = None
                m.gather = False

    def _nexus_gone(self, nexus) -> None:
        # An opener that logged out or dropped its connection abandons its
        # streams; on a LU reset (None) every stream is abandoned.
        if nexus is None:
            self.medium.sessions.close()
        else:
            self.medium.sessions.owner_gone(nexus)

    @property
    def tracked(self) -> TrackingStore:
        return self.medium.source

    def close(self) -> None:
        self.medium.close()      # the source LU closes its own store

