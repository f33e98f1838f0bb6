"""Disk (SBC direct-access block device) logical unit."""
from __future__ import annotations

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
        self._lane = WorkerLane(self, super().execute) if getattr(store, "asynchronous", False) else None
        if self._lane is not None and hasattr(store, "watch_size"):
            # A resized image (rbd resize) is adopted between commands; every
            # initiator then hears CAPACITY DATA HAS CHANGED before its next command.
            store.watch_size(lambda size: self._lane.call(self._resized, size))

    def _resized(self, size: int) -> None:
        blocks = size // self.block_size
        if blocks == self.num_blocks or blocks == 0:
            return
        self.store.size = blocks * self.block_size
        self.geometry = replace(self.geometry, num_blocks=blocks)
        self.num_blocks = blocks
        self.ua.establish(S.CAPACITY_DATA_HAS_CHANGED)

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
