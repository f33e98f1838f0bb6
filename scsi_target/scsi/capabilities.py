"""What a logical unit is and may do, as frozen records given at construction.

INQUIRY, the VPD pages, MODE SENSE and the SBC handlers read these records;
nothing probes an LU for optional attributes.  What an LU *answers* is its
dispatch table (devices.py); what it *advertises* is derived from the table and
these records together (vpd.py, inquiry.py), so the two cannot disagree.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .lun import LunMap

# Linux sd drops an OPTIMAL TRANSFER LENGTH above 0xFFFF blocks (SD_DEF_XFER_BLOCKS,
# "Optimal transfer size ... > dev_max") on LUs addressed with 10-byte CDBs.
LINUX_MAX_OPTIMAL_BLOCKS = 0xFFFF


@dataclass(frozen=True)
class Geometry:
    """Block addressing of a direct-access LU (READ CAPACITY, block descriptors)."""
    block_size: int
    num_blocks: int
    # LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (READ CAPACITY(16)).
    lbppbe: int = 0

    @property
    def blocks_per_physical(self) -> int:
        return 1 << self.lbppbe


@dataclass(frozen=True)
class BlockLimits:
    """The Block Limits VPD page (B0h): each value is what the SBC handlers enforce.

    Fields left None follow from the geometry (:meth:`resolve`, which the LU
    calls once at construction).
    """
    # 65536 because libiscsi's WriteSame16.Unmap writes 65536 blocks with one
    # WRITE(16) without consulting this page.
    max_transfer_blocks: int = 65536
    optimal_transfer_blocks: int | None = None     # see optimal_transfer_length
    # WRITE SAME: NUMBER OF LOGICAL BLOCKS 0 is refused (WSNZ=1).
    write_same_non_zero: bool = True
    max_write_same_blocks: int | None = None       # min(capacity, 4 Mi blocks)
    max_compare_blocks: int = 255
    max_unmap_blocks: int = 0xFFFFFFFF
    max_unmap_descriptors: int = 4096
    # WRITE ATOMIC(16); 0 = no constraint.
    atomic_max_blocks: int = 65536
    atomic_alignment: int | None = None            # one physical block
    atomic_granularity: int | None = None          # one physical block
    atomic_max_boundary_blocks: int = 0
    atomic_boundary_blocks: int = 0

    def resolve(self, geometry: Geometry) -> "BlockLimits":
        """Every field set, checked against ``geometry``."""
        ratio = geometry.blocks_per_physical
        # Whole physical blocks only: a torn physical block is what atomicity
        # must rule out (0 = no constraint when blocks are physical blocks).
        per_physical = ratio if ratio > 1 else 0
        done = replace(
            self,
            optimal_transfer_blocks=self.optimal_transfer_length(geometry),
            max_write_same_blocks=(min(geometry.num_blocks, 1 << 22) or 1)
            if self.max_write_same_blocks is None else self.max_write_same_blocks,
            atomic_alignment=per_physical if self.atomic_alignment is None
            else self.atomic_alignment,
            atomic_granularity=per_physical if self.atomic_granularity is None
            else self.atomic_granularity)
        done.check(geometry)
        return done

    def optimal_transfer_length(self, geometry: Geometry) -> int:
        """OPTIMAL TRANSFER LENGTH: a hint a kernel keeps.

        Linux ignores the hint unless it is at most min(MAXIMUM TRANSFER LENGTH,
        0xFFFF) and a whole number of physical blocks; the largest power of two
        within that bound is both (physical blocks are powers of two).
        """
        if self.optimal_transfer_blocks is not None:
            return self.optimal_transfer_blocks
        bound = min(self.max_transfer_blocks, LINUX_MAX_OPTIMAL_BLOCKS)
        otl = 1 << (bound.bit_length() - 1)
        return otl if otl >= geometry.blocks_per_physical else 0

    def check(self, geometry: Geometry) -> None:
        """ValueError when a value could not be honoured or a kernel would drop it."""
        ratio = geometry.blocks_per_physical
        if self.max_transfer_blocks < 1:
            raise ValueError("max_transfer_blocks must be at least 1")
        otl = self.optimal_transfer_length(geometry)
        if otl and (otl > min(self.max_transfer_blocks, LINUX_MAX_OPTIMAL_BLOCKS)
                    or otl % ratio):
            raise ValueError(f"optimal transfer length {otl} blocks must be a multiple of "
                             f"{ratio} and at most the maximum transfer length (and 65535)")


@dataclass(frozen=True)
class Provisioning:
    """Logical block provisioning (VPD B2h, READ CAPACITY(16) LBPME/LBPRZ)."""
    thin: bool = False          # UNMAP and WRITE SAME unmapping (LBPU, LBPWS, LBPWS10)
    lbprz: bool = True          # deallocated blocks read back as zeroes
    anc_sup: bool = False       # no anchored state


@dataclass(frozen=True)
class Placement:
    """Where a LunMap put the LU: its number, the target name, the LUs beside it."""
    lun: int = 0
    target_name: str = ""
    luns: "LunMap | None" = None
