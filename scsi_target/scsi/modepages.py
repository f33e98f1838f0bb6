"""Mode pages of a logical unit (SPC-4 7.5) and the MODE SENSE/SELECT codecs.

Every LU owns one :class:`ModePages`.  A page is declared once as a
:class:`PageDef` (default bytes + changeable mask); the current values live in
a bytearray per page that MODE SELECT edits.  Parameters are shared by all
I_T nexuses (the simplest model SPC allows); a change made through one nexus
raises MODE PARAMETERS CHANGED for the others.

Other command sets (SBC, SSC) read the values through the properties below or
add their own pages with :meth:`ModePages.add_page`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from . import sense as S

if TYPE_CHECKING:  # pragma: no cover
    from .command import Nexus
    from .lun import LogicalUnit

# Page control field of MODE SENSE.
PC_CURRENT, PC_CHANGEABLE, PC_DEFAULT, PC_SAVED = 0, 1, 2, 3

ALL_PAGES = 0x3F
ALL_SUBPAGES = 0xFF

PAGE_RW_ERROR_RECOVERY = 0x01
PAGE_CACHING = 0x08
PAGE_CONTROL = 0x0A
PAGE_INFO_EXCEPTIONS = 0x1C

# Bits inside the control page (offsets count from the page code byte).
_CTL_DSENSE = (2, 0x04)
_CTL_SWP = (4, 0x08)
_CACHE_WCE = (2, 0x04)


@dataclass(frozen=True)
class PageDef:
    """A page as MODE SENSE returns it (header included) and which bits MODE SELECT may change."""
    code: int
    subpage: int
    default: bytes
    changeable: bytes

    def __post_init__(self) -> None:
        if len(self.default) != len(self.changeable):
            raise ValueError("default and changeable masks differ in length")
        if self.header_len + self.page_length != len(self.default):
            raise ValueError(f"page 0x{self.code:02x}/{self.subpage:02x}: length field is wrong")

    @property
    def header_len(self) -> int:
        return 4 if self.subpage else 2

    @property
    def page_length(self) -> int:
        if self.subpage:
            return int.from_bytes(self.default[2:4], "big")
        return self.default[1]


def _page(code: int, length: int, set_bits: dict[int, int] | None = None,
          changeable: dict[int, int] | None = None, subpage: int = 0) -> PageDef:
    """Build a PageDef of ``length`` parameter bytes; dict keys are offsets from byte 0 of the page."""
    hdr = 4 if subpage else 2
    default = bytearray(hdr + length)
    mask = bytearray(hdr + length)
    if subpage:
        default[0] = 0x40 | code
        default[1] = subpage
        default[2:4] = length.to_bytes(2, "big")
    else:
        default[0] = code
        default[1] = length
    for off, val in (set_bits or {}).items():
        default[off] = val
    for off, val in (changeable or {}).items():
        mask[off] = val
    # The header bytes are never "changeable": MODE SELECT checks them separately.
    return PageDef(code, subpage, bytes(default), bytes(mask))


def standard_pages(lu: "LogicalUnit") -> list[PageDef]:
    """The pages every LU type gets, plus the disk ones for block devices."""
    pages: list[PageDef] = []
    is_disk = lu.device_type == 0x00
    if is_disk:
        # Read-write error recovery: no retry knobs to offer; present because
        # SBC initiators (Linux sd) ask for it.
        pages.append(_page(PAGE_RW_ERROR_RECOVERY, 0x0A))
        # Caching: WCE reported (write-through by default: every write is durable
        # before it is acknowledged, which the difference tracker relies on).
        pages.append(_page(PAGE_CACHING, 0x12, changeable={_CACHE_WCE[0]: _CACHE_WCE[1]}))
    # Control: QAM=1 (unrestricted reordering), busy timeout unlimited.
    # D_SENSE (descriptor sense) and SWP (software write protect) are changeable.
    pages.append(_page(PAGE_CONTROL, 0x0A,
                       set_bits={3: 0x10, 8: 0xFF, 9: 0xFF},
                       changeable={_CTL_DSENSE[0]: _CTL_DSENSE[1], _CTL_SWP[0]: _CTL_SWP[1]}))
    # Control extension subpage: nothing to configure, reported for completeness.
    pages.append(_page(PAGE_CONTROL, 0x1C, subpage=0x01))
    # Informational exceptions: DEXCPT=1 (we never raise exception conditions).
    pages.append(_page(PAGE_INFO_EXCEPTIONS, 0x0A, set_bits={2: 0x08}))
    return pages


class ModePages:
    """Mode parameter state of one LU."""

    def __init__(self, lu: "LogicalUnit") -> None:
        self.lu = lu
        self._defs: dict[tuple[int, int], PageDef] = {}
        self._current: dict[tuple[int, int], bytearray] = {}
        for p in standard_pages(lu):
            self.add_page(p)

    # -- registry --------------------------------------------------------
    def add_page(self, page: PageDef) -> None:
        """Add or replace a page (e.g. a device-type specific one from SSC)."""
        key = (page.code, page.subpage)
        self._defs[key] = page
        self._current[key] = bytearray(page.default)

    def has_page(self, code: int, subpage: int = 0) -> bool:
        return (code, subpage) in self._defs

    def pages(self, code: int, subpage: int) -> list[tuple[int, int]]:
        """Keys selected by a MODE SENSE page/subpage pair (empty if none)."""
        keys = sorted(self._defs)
        if code == ALL_PAGES:
            if subpage == 0:
                return [k for k in keys if k[1] == 0]
            if subpage == ALL_SUBPAGES:
                return keys
            return []
        if subpage == ALL_SUBPAGES:
            return [k for k in keys if k[0] == code]
        return [(code, subpage)] if (code, subpage) in self._defs else []

    def page_bytes(self, key: tuple[int, int], pc: int) -> bytes:
        d = self._defs[key]
        if pc == PC_CHANGEABLE:
            # Header stays as in the page so the initiator can parse it.
            return d.default[:d.header_len] + d.changeable[d.header_len:]
        if pc == PC_DEFAULT:
            return d.default
        return bytes(self._current[key])

    def definition(self, key: tuple[int, int]) -> PageDef:
        return self._defs[key]

    # -- typed views used elsewhere -------------------------------------
    def _bit(self, key: tuple[int, int], where: tuple[int, int]) -> bool:
        cur = self._current.get(key)
        return bool(cur is not None and cur[where[0]] & where[1])

    @property
    def descriptor_sense(self) -> bool:
        """Control page D_SENSE: render sense data in descriptor format."""
        return self._bit((PAGE_CONTROL, 0), _CTL_DSENSE)

    @property
    def software_write_protect(self) -> bool:
        """Control page SWP: medium writes must fail with DATA PROTECT/WRITE PROTECTED."""
        return self._bit((PAGE_CONTROL, 0), _CTL_SWP)

    @property
    def write_cache_enabled(self) -> bool:
        return self._bit((PAGE_CACHING, 0), _CACHE_WCE)

    def set_bit(self, code: int, subpage: int, offset: int, mask: int, value: bool) -> None:
        """Programmatic change (configuration, tests); bypasses the changeable mask."""
        cur = self._current[(code, subpage)]
        cur[offset] = (cur[offset] | mask) if value else (cur[offset] & ~mask)

    # -- MODE SELECT -------------------------------------------------------
    def select(self, data: memoryview | bytes, long_header: bool, nexus: "Nexus | None") -> bool:
        """Apply a MODE SELECT parameter list; True if any value changed.

        Validates the whole list before changing anything, so a failing command
        leaves every page as it was.
        """
        data = bytes(data)
        hdr = 8 if long_header else 4
        if len(data) < hdr:
            raise S.illegal_request(S.PARAMETER_LIST_LENGTH_ERROR)
        if long_header:
            bd_len = int.from_bytes(data[6:8], "big")
            long_lba = bool(data[4] & 0x01)
        else:
            bd_len = data[3]
            long_lba = False
        medium_type = data[2] if long_header else data[1]
        if medium_type != 0:
            raise S.invalid_param_field(2 if long_header else 1)
        pos = hdr
        if bd_len:
            self._check_block_descriptors(data, pos, bd_len, long_lba, hdr)
        pos += bd_len
        if pos > len(data):
            raise S.illegal_request(S.PARAMETER_LIST_LENGTH_ERROR)
        updates: list[tuple[tuple[int, int], bytes]] = []
        while pos < len(data):
            b0 = data[pos]
            code = b0 & 0x3F
            spf = bool(b0 & 0x40)
            if b0 & 0x80:  # PS is reserved in MODE SELECT
                raise S.invalid_param_field(pos, 7)
            if spf:
                if pos + 4 > len(data):
                    raise S.illegal_request(S.PARAMETER_LIST_LENGTH_ERROR)
                sub = data[pos + 1]
                plen = int.from_bytes(data[pos + 2:pos + 4], "big")
                hlen = 4
            else:
                if pos + 2 > len(data):
                    raise S.illegal_request(S.PARAMETER_LIST_LENGTH_ERROR)
                sub = 0
                plen = data[pos + 1]
                hlen = 2
            key = (code, sub)
            d = self._defs.get(key)
            if d is None:
                raise S.invalid_param_field(pos)
            if plen != d.page_length:
                raise S.invalid_param_field(pos + hlen - 1)
            end = pos + hlen + plen
            if end > len(data):
                raise S.illegal_request(S.PARAMETER_LIST_LENGTH_ERROR)
            new = data[pos:end]
            cur = self._current[key]
            for i in range(hlen, len(new)):
                if (new[i] ^ cur[i]) & ~d.changeable[i] & 0xFF:
                    raise S.invalid_param_field(pos + i)
            updates.append((key, new))
            pos = end
        changed = False
        for key, new in updates:
            cur = self._current[key]
            hlen = self._defs[key].header_len
            if cur[hlen:] != new[hlen:]:
                cur[hlen:] = new[hlen:]
                changed = True
        if changed:
            self.lu.ua.establish(S.MODE_PARAMETERS_CHANGED, exclude=nexus)
        return changed

    def _check_block_descriptors(self, data: bytes, pos: int, bd_len: int, long_lba: bool,
                                 hdr: int) -> None:
        """Block descriptors may restate the block length; they cannot change it."""
        size = 16 if long_lba else 8
        if bd_len % size or pos + bd_len > len(data):
            raise S.invalid_param_field(hdr - 1)
        geo = self.lu.geometry
        if geo is None:
            return  # no block geometry on this LU type: nothing to compare
        block_size = geo.block_size
        for off in range(pos, pos + bd_len, size):
            if long_lba:
                blen = int.from_bytes(data[off + 12:off + 16], "big")
            else:
                blen = int.from_bytes(data[off + 5:off + 8], "big")
            if blen != block_size:
                raise S.invalid_param_field(off + (12 if long_lba else 5))

    # -- lifecycle ------------------------------------------------------------
    def reset(self) -> None:
        """Back to defaults (nothing is saved, so the defaults are the saved values)."""
        for key, d in self._defs.items():
            self._current[key] = bytearray(d.default)

    def keys(self) -> Iterable[tuple[int, int]]:
        return sorted(self._defs)
