"""Disk (SBC direct-access block device) logical unit."""
from __future__ import annotations

import logging
import threading
from dataclasses import replace

from volume.store import BlockStore

from . import devices
from .capabilities import BlockLimits, Geometry, Provisioning
from .command import Command, Deferred, Response, TaskAttr
from .dispatch import DispatchTable
from .lane import WorkerLane
from .lun import Identity, LogicalUnit
from .sbc import ASYNC_FAST
from . import sense as S

_SIMPLE = (TaskAttr.UNTAGGED, TaskAttr.SIMPLE)
_GROW_RETRY = 3.0            # seconds between attempts of a growth a stream holds up
log = logging.getLogger("scsi_target.scsi")


class DiskLU(LogicalUnit):
    """A disk over a block store; limits and provisioning are fixed at construction.

    ``limits`` (VPD B0h): unset fields follow from the geometry; ``provisioning``
    (VPD B2h) defaults to the store's ``thin``.  The dispatch table follows from
    both (devices.disk_table), so what the LU advertises is what it answers.
    """

    device_type = 0x00
    dpofua = True   # DPO and FUA accepted in READ/WRITE CDBs

    def __init__(self, store: BlockStore, block_size: int = 512, read_only: bool = False,
                 identity: Identity | None = None, *, removable: bool = False,
                 physical_block_size: int | None = None, limits: BlockLimits | None = None,
                 provisioning: Provisioning | None = None,
                 table: DispatchTable | None = None) -> None:
        if block_size not in (512, 1024, 2048, 4096):
            raise ValueError(f"block size {block_size} not supported (512, 1024, 2048, 4096)")
        ratio = (physical_block_size or block_size) // block_size
        if ratio < 1 or ratio * block_size != (physical_block_size or block_size) \
                or ratio & (ratio - 1) or ratio > 1 << 15:
            raise ValueError(f"physical block size {physical_block_size} is not a power-of-two "
                             f"multiple of the block size {block_size}")
        if store.size % block_size:
            raise ValueError(f"store size {store.size} is not a multiple of block size {block_size}")
        super().__init__(identity)
        self.store = store
        self.geometry = Geometry(block_size, store.size // block_size, ratio.bit_length() - 1)
        # Copies of the frozen geometry: the SBC handlers read them per command.
        self.block_size = block_size
        self.num_blocks = self.geometry.num_blocks
        self.read_only = read_only or store.read_only
        # RMB in INQUIRY: enables START STOP UNIT LOEJ and PREVENT ALLOW semantics.
        self.removable = removable
        self.limits = (limits or BlockLimits()).resolve(self.geometry)
        self.provisioning = provisioning or Provisioning(thin=bool(store.thin))
        self._dispatch = table or devices.disk_table(self.provisioning, self.read_only)
        # An asynchronous store (RBD): plain READ/WRITE are submitted to it, the
        # rest runs on the LU's worker lane (lane.py); never on the caller's thread.
        self._lane = WorkerLane(self, super().execute) if store.asynchronous else None
        if self._lane is not None and store.watches_size:
            # A resized image (rbd resize) is adopted between commands; every
            # initiator then hears CAPACITY DATA HAS CHANGED before its next command.
            store.watch_size(lambda size: self._lane.call(self._resized, size))
        self._grow_waits = False
        self._wanted_size = store.size
        if store.tracked:
            # A tracked volume that grew (its image resized, or a restore of the grown
            # volume's differential onto it) is served at its new size from then on.
            store.grow_listeners.append(self._store_grew)

    def _store_grew(self, size: int) -> None:
        blocks = size // self.block_size
        if blocks > self.num_blocks:
            self.adopt_capacity(blocks)

    def _resized(self, size: int) -> None:
        """On the lane, alone: adopt an image size the watcher saw (``rbd resize``).

        A tracked store grows its generation map first (durably, the new blocks
        changed in the current generation) and only then is the new size served;
        while a backup or restore stream is open the growth waits (retried every
        few seconds).  A tracked volume never shrinks: the old size stays served
        and I/O past the image's new end fails (ILLEGAL REQUEST, LBA OUT OF RANGE)."""
        self._wanted_size = size
        blocks = size // self.block_size
        tracked = self.store.tracked
        if tracked and blocks >= self.num_blocks:
            self.store.limit_to(None)           # grown back after a refused shrink
        if blocks == self.num_blocks or blocks == 0:
            return
        if tracked:
            from volume.tracked import TrackingBusy, TrackingError
            new = blocks * self.block_size
            if blocks < self.num_blocks:
                self.store.limit_to(new)
                log.error("%s shrank from %d to %d bytes while tracked: keeping %d bytes "
                          "(the generation map cannot shrink); I/O past byte %d fails with "
                          "LBA OUT OF RANGE. Grow the image back, or serve it untracked",
                          self.store.volume_label(), self.num_blocks * self.block_size, new,
                          self.num_blocks * self.block_size, new)
                return
            try:
                self.store.grow(new)
            except TrackingBusy as exc:
                if not self._grow_waits:        # said once per growth, retried quietly
                    log.warning("%s; retrying every %g s", exc, _GROW_RETRY)
                self._grow_waits = True
                self._retry_resize()
                return
            except TrackingError as exc:
                log.error("%s: the growth to %d bytes failed, keeping %d bytes: %s",
                          self.store.volume_label(), new, self.num_blocks * self.block_size, exc)
                return
            self._grow_waits = False
            log.info("%s grew to %d bytes: generation map grown, new blocks marked changed",
                     self.store.volume_label(), new)
            return                              # served from now on: _store_grew
        self.store.size = blocks * self.block_size
        self.adopt_capacity(blocks)

    def adopt_capacity(self, blocks: int) -> None:
        """Serve ``blocks`` blocks from now on; every initiator hears CAPACITY DATA HAS
        CHANGED before its next command."""
        self.geometry = replace(self.geometry, num_blocks=blocks)
        self.num_blocks = blocks
        self.ua.establish(S.CAPACITY_DATA_HAS_CHANGED)

    def _retry_resize(self) -> None:
        def again() -> None:
            if self._lane is not None:
                self._lane.call(lambda: self._resized(self._wanted_size))
        t = threading.Timer(_GROW_RETRY, again)
        t.daemon = True
        t.start()

    def execute(self, cmd: Command) -> Response | Deferred:
        lane = self._lane
        if lane is None:
            return super().execute(cmd)
        answer = None
        cdb = cmd.cdb
        if cdb and not lane.busy and cmd.task_attr in _SIMPLE:
            submit = ASYNC_FAST.get(cdb[0])
            if submit is not None and self.ua.quiet(cmd.nexus) and self.pr.idle \
                    and self.not_ready_reason() is None:
                answer = submit(self, cmd)
        if answer is None:
            answer = lane.submit(cmd)
        if isinstance(answer, Deferred) and not cmd.may_defer:
            return answer.wait()
        return answer

    @property
    def lbppbe(self) -> int:
        return self.geometry.lbppbe

    @property
    def thin(self) -> bool:
        return self.provisioning.thin

    @property
    def table(self) -> DispatchTable:
        return self._dispatch

    def close(self) -> None:
        if self._lane is not None:
            self._lane.close()
        self.store.close()
