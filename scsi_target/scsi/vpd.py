"""Vital product data pages (SPC-4 7.8, SBC-3 6.6) derived from an LU's records and table.

Disk pages (B0/B1/B2) appear for LUs with block geometry; the third-party copy
page (8F) when the LU's dispatch table holds EXTENDED COPY and RECEIVE COPY
RESULTS (xcopy.is_copy_manager), so a page is listed exactly when it is true.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from . import xcopy
from .layouts import vpd as L

if TYPE_CHECKING:  # pragma: no cover
    from .command import Nexus
    from .lun import LogicalUnit

PAGE_SUPPORTED = L.PAGE_SUPPORTED
PAGE_SERIAL = L.PAGE_SERIAL
PAGE_DEVICE_ID = L.PAGE_DEVICE_ID
PAGE_THIRD_PARTY_COPY = L.PAGE_THIRD_PARTY_COPY
PAGE_BLOCK_LIMITS = L.PAGE_BLOCK_LIMITS
PAGE_BLOCK_CHARACTERISTICS = L.PAGE_BLOCK_CHARACTERISTICS
PAGE_LBP = L.PAGE_LBP

# Designator fields (SPC-4 7.8.6.1).
_CODE_BINARY, _CODE_ASCII, _CODE_UTF8 = L.CODE_BINARY, L.CODE_ASCII, L.CODE_UTF8
_ASSOC_LU, _ASSOC_PORT, _ASSOC_TARGET = L.ASSOC_LU, L.ASSOC_PORT, L.ASSOC_TARGET
_TYPE_T10, _TYPE_NAA, _TYPE_REL_PORT, _TYPE_NAME = L.TYPE_T10, L.TYPE_NAA, L.TYPE_REL_PORT, L.TYPE_NAME
_PROTO_ISCSI = L.PROTO_ISCSI


def is_disk(lu: "LogicalUnit") -> bool:
    return lu.geometry is not None and lu.limits is not None and lu.provisioning is not None


def has_third_party_copy(lu: "LogicalUnit") -> bool:
    return xcopy.is_copy_manager(lu.table)


def _page(lu: "LogicalUnit", code: int, body: bytes) -> bytes:
    return L.VpdPage(code, body, device_type=lu.device_type & 0x1F).pack()


def _designator(code_set: int, assoc: int, dtype: int, value: bytes, piv: bool = False) -> bytes:
    return L.Designator(code_set, assoc, dtype, value,
                        protocol_id=_PROTO_ISCSI if piv else 0, piv=piv).pack()


def _name_string(name: str) -> bytes:
    """SCSI name string: null terminated, padded to a multiple of 4."""
    raw = name.encode() + b"\x00"
    return raw + b"\x00" * (-len(raw) % 4)


def supported_pages(lu: "LogicalUnit") -> list[int]:
    pages = [PAGE_SUPPORTED, PAGE_SERIAL, PAGE_DEVICE_ID]
    if has_third_party_copy(lu):
        pages.append(PAGE_THIRD_PARTY_COPY)
    if is_disk(lu):
        pages += [PAGE_BLOCK_LIMITS, PAGE_BLOCK_CHARACTERISTICS, PAGE_LBP]
    return pages


def build(lu: "LogicalUnit", code: int, nexus: "Nexus") -> bytes | None:
    """The page bytes, or None when the LU does not support ``code``."""
    if code not in supported_pages(lu):
        return None
    if code == PAGE_SUPPORTED:
        return _page(lu, code, bytes(supported_pages(lu)))
    if code == PAGE_SERIAL:
        return _page(lu, code, lu.identity.serial.encode("ascii", "replace"))
    if code == PAGE_DEVICE_ID:
        return _page(lu, code, device_identification(lu, nexus))
    if code == PAGE_THIRD_PARTY_COPY:
        return xcopy.third_party_copy_vpd(lu)
    if code == PAGE_BLOCK_LIMITS:
        return _page(lu, code, block_limits(lu))
    if code == PAGE_BLOCK_CHARACTERISTICS:
        # MEDIUM ROTATION RATE 1: non-rotating medium.
        return _page(lu, code, L.BlockCharacteristics(medium_rotation_rate=1).pack())
    if code == PAGE_LBP:
        return _page(lu, code, logical_block_provisioning(lu))
    return None  # pragma: no cover - every listed page is handled above


def device_identification(lu: "LogicalUnit", nexus: "Nexus") -> bytes:
    ident = lu.identity
    out = bytearray()
    if ident.naa:
        out += _designator(_CODE_BINARY, _ASSOC_LU, _TYPE_NAA, ident.naa.to_bytes(8, "big"))
    vendor = ident.vendor.encode("ascii", "replace")[:8].ljust(8)
    t10 = vendor + (ident.t10_vendor_specific or ident.serial).encode("ascii", "replace")
    out += _designator(_CODE_ASCII, _ASSOC_LU, _TYPE_T10, t10[:252])
    # Port designators as iSCSI targets give them: the relative port the
    # command came in on, the target port name and the target device name.
    out += _designator(_CODE_BINARY, _ASSOC_PORT, _TYPE_REL_PORT,
                       struct.pack(">HH", 0, nexus.relative_port & 0xFFFF), piv=True)
    target_name = lu.target_name
    port_name = nexus.target if ",t,0x" in nexus.target else \
        (f"{target_name},t,0x{nexus.relative_port:04x}" if target_name else "")
    if port_name:
        out += _designator(_CODE_UTF8, _ASSOC_PORT, _TYPE_NAME, _name_string(port_name), piv=True)
    if target_name:
        out += _designator(_CODE_UTF8, _ASSOC_TARGET, _TYPE_NAME, _name_string(target_name), piv=True)
    return bytes(out)


def block_limits(lu: "LogicalUnit") -> bytes:
    """Block Limits (B0h): the values the SBC handlers enforce."""
    lim, geo, thin = lu.limits, lu.geometry, lu.provisioning.thin
    page = L.BlockLimits(
        wsnz=lim.write_same_non_zero,
        max_compare_write_length=lim.max_compare_blocks & 0xFF,
        # One physical block: smaller writes cost a read-modify-write below us.
        optimal_transfer_length_granularity=geo.blocks_per_physical,
        max_transfer_length=lim.max_transfer_blocks,
        optimal_transfer_length=lim.optimal_transfer_length(geo),
        max_write_same_length=lim.max_write_same_blocks,
        max_atomic_transfer_length=lim.atomic_max_blocks,
        atomic_alignment=lim.atomic_alignment,
        atomic_transfer_length_granularity=lim.atomic_granularity,
        max_atomic_transfer_length_with_boundary=lim.atomic_max_boundary_blocks,
        max_atomic_boundary_size=lim.atomic_boundary_blocks)
    if thin:
        page.max_unmap_lba_count = lim.max_unmap_blocks
        page.max_unmap_descriptor_count = lim.max_unmap_descriptors
        page.optimal_unmap_granularity = 1
    return page.pack()


def logical_block_provisioning(lu: "LogicalUnit") -> bytes:
    """Logical Block Provisioning (B2h): UNMAP and WRITE SAME unmapping on thin LUs."""
    prov = lu.provisioning
    if not prov.thin:
        return L.LogicalBlockProvisioning().pack()
    return L.LogicalBlockProvisioning(
        lbpu=True, lbpws=True, lbpws10=True, lbprz=prov.lbprz, anc_sup=prov.anc_sup,
        provisioning_type=2).pack()
