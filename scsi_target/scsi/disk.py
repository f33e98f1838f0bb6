"""Disk (SBC direct-access block device) logical unit."""
from __future__ import annotations

from volume.store import BlockStore

from .dispatch import DispatchTable
from .lun import Identity, LogicalUnit


class DiskLU(LogicalUnit):
    device_type = 0x00

    def __init__(self, store: BlockStore, block_size: int = 512, read_only: bool = False,
                 identity: Identity | None = None) -> None:
        if block_size not in (512, 1024, 2048, 4096):
            raise ValueError(f"block size {block_size} not supported (512, 1024, 2048, 4096)")
        if store.size % block_size:
            raise ValueError(f"store size {store.size} is not a multiple of block size {block_size}")
        super().__init__(identity)
        self.store = store
        self.block_size = block_size
        self.read_only = read_only or store.read_only
        self.num_blocks = store.size // block_size
        # Largest transfer we accept in one command, in blocks (VPD B0).
        self.max_transfer_blocks = (8 << 20) // block_size

    @property
    def table(self) -> DispatchTable:
        return _disk_table()

    def close(self) -> None:
        self.store.close()


_TABLE: DispatchTable | None = None


def _disk_table() -> DispatchTable:
    global _TABLE
    if _TABLE is None:
        from .spc import SPC
        from .sbc import SBC
        _TABLE = DispatchTable([SPC, SBC])
    return _TABLE
