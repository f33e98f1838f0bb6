"""Vital product data pages (SPC-4 7.8, SBC-3 6.6) built from an LU's attributes.

Disk-only pages (B0/B1/B2) appear only for LUs with block geometry
(``block_size``/``num_blocks``).  The third-party copy page (8F) appears when
the EXTENDED COPY module provides ``third_party_copy_vpd``.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Callable

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

# Defaults for the block limits page; a DiskLU may override any of them with
# an attribute of the same name.
DEFAULT_MAX_UNMAP_BLOCKS = 1 << 20
DEFAULT_MAX_UNMAP_DESCRIPTORS = 256
DEFAULT_MAX_COMPARE_WRITE_BLOCKS = 1


def is_disk(lu: "LogicalUnit") -> bool:
    return hasattr(lu, "block_size") and hasattr(lu, "num_blocks")


def _xcopy_vpd() -> Callable[["LogicalUnit"], bytes] | None:
    """The EXTENDED COPY module's page builder, if that module exists yet."""
    try:
        from . import xcopy  # type: ignore[attr-defined]
    except Exception:  # absent, or broken mid-edit: INQUIRY must still answer
        return None
    return getattr(xcopy, "third_party_copy_vpd", None)


def has_third_party_copy() -> bool:
    return _xcopy_vpd() is not None


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
    if has_third_party_copy():
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
        fn = _xcopy_vpd()
        assert fn is not None
        return fn(lu)
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
    target_name = getattr(lu, "target_name", "") or ""
    port_name = nexus.target if ",t,0x" in nexus.target else \
        (f"{target_name},t,0x{nexus.relative_port:04x}" if target_name else "")
    if port_name:
        out += _designator(_CODE_UTF8, _ASSOC_PORT, _TYPE_NAME, _name_string(port_name), piv=True)
    if target_name:
        out += _designator(_CODE_UTF8, _ASSOC_TARGET, _TYPE_NAME, _name_string(target_name), piv=True)
    return bytes(out)


def _thin(lu: "LogicalUnit") -> bool:
    thin = getattr(lu, "thin", None)
    if thin is None:
        thin = getattr(getattr(lu, "store", None), "thin", False)
    return bool(thin)


def _attr(lu: "LogicalUnit", name: str, default: int) -> int:
    return int(getattr(lu, name, default))


def block_limits(lu: "LogicalUnit") -> bytes:
    """Block Limits (B0h): the values the SBC handlers enforce, from DiskLU attributes."""
    thin = _thin(lu)
    max_xfer = _attr(lu, "max_transfer_blocks", 0)
    page = L.BlockLimits(
        wsnz=bool(getattr(lu, "write_same_non_zero", False)),
        max_compare_write_length=_attr(lu, "max_compare_blocks",
                                       DEFAULT_MAX_COMPARE_WRITE_BLOCKS) & 0xFF,
        # One physical block: smaller writes cost a read-modify-write below us.
        optimal_transfer_length_granularity=1 << _attr(lu, "lbppbe", 0),
        max_transfer_length=max_xfer,
        optimal_transfer_length=max_xfer,
        max_write_same_length=_attr(lu, "max_write_same_blocks", max_xfer),
        # Atomic write limits (SBC-4): zero unless the LU supports WRITE ATOMIC.
        max_atomic_transfer_length=_attr(lu, "atomic_max_blocks", 0),
        atomic_alignment=_attr(lu, "atomic_alignment", 0),
        atomic_transfer_length_granularity=_attr(lu, "atomic_granularity", 0),
        max_atomic_transfer_length_with_boundary=_attr(lu, "atomic_max_boundary_blocks", 0),
        max_atomic_boundary_size=_attr(lu, "atomic_boundary_blocks", 0))
    if thin:
        page.max_unmap_lba_count = _attr(lu, "max_unmap_blocks", DEFAULT_MAX_UNMAP_BLOCKS)
        page.max_unmap_descriptor_count = _attr(lu, "max_unmap_descriptors",
                                                DEFAULT_MAX_UNMAP_DESCRIPTORS)
        page.optimal_unmap_granularity = 1
    return page.pack()


def logical_block_provisioning(lu: "LogicalUnit") -> bytes:
    """Logical Block Provisioning (B2h): UNMAP and WRITE SAME unmapping on thin LUs."""
    if not _thin(lu):
        return L.LogicalBlockProvisioning().pack()
    # UNMAP and both WRITE SAME unmapping forms; thin provisioning type.
    return L.LogicalBlockProvisioning(
        lbpu=True, lbpws=True, lbpws10=True,
        lbprz=bool(getattr(lu, "lbprz", True)),          # unmapped blocks read zero
        anc_sup=bool(getattr(lu, "anc_sup", False)),
        provisioning_type=2).pack()
