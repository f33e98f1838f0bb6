"""Disk (SBC direct-access block device) logical unit."""
from __future__ import annotations

from volume.store import BlockStore

from .dispatch import DispatchTable
from .lun import Identity, LogicalUnit


class DiskLU(LogicalUnit):
    device_type = 0x00

    def __init__(self, store: BlockStore, block_size: int = 512, read_only: bool = False,
                 identity: Identity | None = None, *, removable: bool = False,
                 physical_block_size: int | None = None) -> None:
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
        self.block_size = block_size
        self.read_only = read_only or store.read_only
        self.num_blocks = store.size // block_size
        # RMB in INQUIRY: enables START STOP UNIT LOEJ and PREVENT ALLOW semantics.
        self.removable = removable
        # READ CAPACITY(16) LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (e.g. 3 for
        # 512-byte blocks on 4096-byte physical blocks); a hint for alignment.
        self.lbppbe = ratio.bit_length() - 1
        # Largest transfer we accept in one command, in blocks (VPD B0).  65536
        # because libiscsi's WriteSame16.Unmap writes 65536 blocks with one
        # WRITE(16) without consulting the Block Limits page.
        self.max_transfer_blocks = 65536
        # -- limits and capabilities the SBC handlers enforce and the VPD pages
        #    (B0 Block Limits, B2 Logical Block Provisioning) report.
        # WRITE SAME: NUMBER OF LOGICAL BLOCKS 0 is refused (WSNZ=1) and at
        # most this many blocks per command (MAXIMUM WRITE SAME LENGTH).
        self.write_same_non_zero = True
        self.max_write_same_blocks = min(self.num_blocks, 1 << 22) or 1
        # COMPARE AND WRITE: MAXIMUM COMPARE AND WRITE LENGTH (blocks).
        self.max_compare_blocks = 255
        # UNMAP: MAXIMUM UNMAP LBA COUNT / MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT.
        self.max_unmap_blocks = 0xFFFFFFFF
        self.max_unmap_descriptors = 4096
        # Deallocated blocks read back as zeroes (LBPRZ); no anchored state.
        self.lbprz = True
        self.anc_sup = False
        # WRITE ATOMIC(16): MAXIMUM ATOMIC TRANSFER LENGTH, ATOMIC ALIGNMENT,
        # ATOMIC TRANSFER LENGTH GRANULARITY (0 = no constraint), and the
        # boundary fields (0: atomic writes never cross a boundary we report).
        self.atomic_max_blocks = self.max_transfer_blocks
        # Whole physical blocks only: a torn physical block is what atomicity
        # must rule out (0 = no constraint on one-block-per-physical-block LUs).
        self.atomic_alignment = ratio if ratio > 1 else 0
        self.atomic_granularity = ratio if ratio > 1 else 0
        self.atomic_max_boundary_blocks = 0
        self.atomic_boundary_blocks = 0

    @property
    def thin(self) -> bool:
        """Logical block provisioning management enabled (LBPME, LBPU, LBPWS, LBPWS10)."""
        return bool(self.store.thin)

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
        from .xcopy import XCOPY
        _TABLE = DispatchTable([SPC, SBC, XCOPY])
    return _TABLE
