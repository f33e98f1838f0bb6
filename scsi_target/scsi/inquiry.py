"""Standard INQUIRY data (SPC-4 6.6.2) of a logical unit."""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import vpd
from .layouts.inquiry import STANDARD_LENGTH, StandardInquiry

if TYPE_CHECKING:  # pragma: no cover
    from .lun import LogicalUnit

VERSION_SPC4 = 0x06

# Version descriptors (SPC-4 table 29).
VD_SAM5 = 0x00A0
VD_ISCSI = 0x0960
VD_SPC4 = 0x0460
VD_SBC3 = 0x04C0
VD_SSC3 = 0x0300


def version_descriptors(lu: "LogicalUnit") -> list[int]:
    """What the LU claims to conform to: its own list, else its device type's."""
    own = lu.version_descriptors
    if own is not None:
        return list(own)[:8]
    vds = [VD_SAM5, VD_ISCSI, VD_SPC4]
    if lu.device_type == 0x00:
        vds.append(VD_SBC3)
    elif lu.device_type == 0x01:
        vds.append(VD_SSC3)
    return vds


def standard_data(lu: "LogicalUnit") -> bytes:
    ident = lu.identity
    return StandardInquiry(
        device_type=lu.device_type & 0x1F,    # peripheral qualifier 000b: connected
        rmb=bool(lu.removable),
        version=VERSION_SPC4,
        hisup=True, response_data_format=2,
        additional_length=STANDARD_LENGTH - 5,
        tpc=vpd.has_third_party_copy(lu),
        cmdque=True,                          # tagged command queuing
        vendor=ident.vendor, product=ident.product, revision=ident.revision,
        version_descriptors=tuple(version_descriptors(lu)),
    ).pack()
