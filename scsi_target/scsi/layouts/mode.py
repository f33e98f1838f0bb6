"""Mode parameter data (SPC-4 7.5): headers (6)/(10), block descriptors, and the pages
the targets serve: 01h, 08h, 0Ah, 1Ch (SBC/SPC) and 0Fh, 10h (SSC)."""
from __future__ import annotations

from ...record import field, record
from .fields import Struct, bit, bits, raw, u8, u16, u24, u32, u64

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import ClassVar

PC_CURRENT, PC_CHANGEABLE, PC_DEFAULT, PC_SAVED = 0, 1, 2, 3
PC_NAMES = {"current": PC_CURRENT, "changeable": PC_CHANGEABLE, "default": PC_DEFAULT,
            "saved": PC_SAVED}


@record
class ModeHeader6(Struct):
    mode_data_length: int = 0
    medium_type: int = 0
    device_specific: int = 0          # disk: WP bit 7, DPOFUA bit 4; tape: WP, buffered mode, speed
    block_descriptor_length: int = 0

    SIZE = 4
    FIELDS = (u8("mode_data_length", 0), u8("medium_type", 1), u8("device_specific", 2),
              u8("block_descriptor_length", 3))

    @property
    def wp(self) -> bool:
        return bool(self.device_specific & 0x80)


@record
class ModeHeader10(Struct):
    mode_data_length: int = 0
    medium_type: int = 0
    device_specific: int = 0
    longlba: bool = False
    block_descriptor_length: int = 0

    SIZE = 8
    FIELDS = (u16("mode_data_length", 0), u8("medium_type", 2), u8("device_specific", 3),
              bit("longlba", 4, 0), u16("block_descriptor_length", 6))

    @property
    def wp(self) -> bool:
        return bool(self.device_specific & 0x80)


@record
class ShortBlockDescriptor(Struct):
    """Short LBA block descriptor of direct-access devices."""
    blocks: int = 0
    block_length: int = 0

    SIZE = 8
    FIELDS = (u32("blocks", 0), u24("block_length", 5))


@record
class GeneralBlockDescriptor(Struct):
    """General (e.g. sequential-access) block descriptor with a density code."""
    density_code: int = 0
    blocks: int = 0
    block_length: int = 0

    SIZE = 8
    FIELDS = (u8("density_code", 0), u24("blocks", 1), u24("block_length", 5))


@record
class LongBlockDescriptor(Struct):
    blocks: int = 0
    block_length: int = 0

    SIZE = 16
    FIELDS = (u64("blocks", 0), u32("block_length", 12))


# ---------------------------------------------------------------- pages
@record
class ReadWriteErrorRecovery(Struct):
    ps: bool = False
    page_code: int = 0x01
    page_length: int = 0x0A
    awre: bool = False
    arre: bool = False
    tb: bool = False
    rc: bool = False
    eer: bool = False
    per: bool = False
    dte: bool = False
    dcr: bool = False
    read_retry_count: int = 0
    write_retry_count: int = 0
    recovery_time_limit: int = 0

    CODE: ClassVar[int] = 0x01
    SIZE = 12
    FIELDS = (bit("ps", 0, 7), bits("page_code", 0, 0, 6), u8("page_length", 1),
              bit("awre", 2, 7), bit("arre", 2, 6), bit("tb", 2, 5), bit("rc", 2, 4),
              bit("eer", 2, 3), bit("per", 2, 2), bit("dte", 2, 1), bit("dcr", 2, 0),
              u8("read_retry_count", 3), u8("write_retry_count", 8),
              u16("recovery_time_limit", 10))


@record
class Caching(Struct):
    ps: bool = False
    page_code: int = 0x08
    page_length: int = 0x12
    ic: bool = False
    abpf: bool = False
    cap: bool = False
    disc: bool = False
    size: bool = False
    wce: bool = False
    mf: bool = False
    rcd: bool = False
    demand_read_retention: int = 0
    write_retention: int = 0
    disable_prefetch_length: int = 0
    minimum_prefetch: int = 0
    maximum_prefetch: int = 0
    maximum_prefetch_ceiling: int = 0
    fsw: bool = False
    lbcss: bool = False
    dra: bool = False
    nv_dis: bool = False
    cache_segments: int = 0
    cache_segment_size: int = 0

    CODE: ClassVar[int] = 0x08
    SIZE = 20
    FIELDS = (bit("ps", 0, 7), bits("page_code", 0, 0, 6), u8("page_length", 1),
              bit("ic", 2, 7), bit("abpf", 2, 6), bit("cap", 2, 5), bit("disc", 2, 4),
              bit("size", 2, 3), bit("wce", 2, 2), bit("mf", 2, 1), bit("rcd", 2, 0),
              bits("demand_read_retention", 3, 4, 4), bits("write_retention", 3, 0, 4),
              u16("disable_prefetch_length", 4), u16("minimum_prefetch", 6),
              u16("maximum_prefetch", 8), u16("maximum_prefetch_ceiling", 10),
              bit("fsw", 12, 7), bit("lbcss", 12, 6), bit("dra", 12, 5), bit("nv_dis", 12, 0),
              u8("cache_segments", 13), u16("cache_segment_size", 14))


@record
class Control(Struct):
    ps: bool = False
    page_code: int = 0x0A
    page_length: int = 0x0A
    tst: int = 0
    tmf_only: bool = False
    dpicz: bool = False
    d_sense: bool = False
    gltsd: bool = False
    rlec: bool = False
    qam: int = 0                      # queue algorithm modifier
    nuar: bool = False
    qerr: int = 0
    rac: bool = False
    ua_intlck_ctrl: int = 0
    swp: bool = False                 # software write protect
    ato: bool = False
    tas: bool = False
    atmpe: bool = False
    rwwp: bool = False
    autoload_mode: int = 0
    busy_timeout: int = 0
    extended_selftest_time: int = 0

    CODE: ClassVar[int] = 0x0A
    SIZE = 12
    FIELDS = (bit("ps", 0, 7), bits("page_code", 0, 0, 6), u8("page_length", 1),
              bits("tst", 2, 5, 3), bit("tmf_only", 2, 4), bit("dpicz", 2, 3),
              bit("d_sense", 2, 2), bit("gltsd", 2, 1), bit("rlec", 2, 0),
              bits("qam", 3, 4, 4), bit("nuar", 3, 3), bits("qerr", 3, 1, 2),
              bit("rac", 4, 6), bits("ua_intlck_ctrl", 4, 4, 2), bit("swp", 4, 3),
              bit("ato", 5, 7), bit("tas", 5, 6), bit("atmpe", 5, 5), bit("rwwp", 5, 4),
              bits("autoload_mode", 5, 0, 3), u16("busy_timeout", 8),
              u16("extended_selftest_time", 10))


@record
class InformationalExceptions(Struct):
    ps: bool = False
    page_code: int = 0x1C
    page_length: int = 0x0A
    perf: bool = False
    ebf: bool = False
    ewasc: bool = False
    dexcpt: bool = False
    test: bool = False
    ebackerr: bool = False
    logerr: bool = False
    mrie: int = 0
    interval_timer: int = 0
    report_count: int = 0

    CODE: ClassVar[int] = 0x1C
    SIZE = 12
    FIELDS = (bit("ps", 0, 7), bits("page_code", 0, 0, 6), u8("page_length", 1),
              bit("perf", 2, 7), bit("ebf", 2, 5), bit("ewasc", 2, 4), bit("dexcpt", 2, 3),
              bit("test", 2, 2), bit("ebackerr", 2, 1), bit("logerr", 2, 0),
              bits("mrie", 3, 0, 4), u32("interval_timer", 4), u32("report_count", 8))


@record
class DataCompression(Struct):
    """SSC data compression page (0Fh)."""
    ps: bool = False
    page_code: int = 0x0F
    page_length: int = 0x0E
    dce: bool = False                 # data compression enable
    dcc: bool = False                 # data compression capable
    dde: bool = False                 # data decompression enable
    red: int = 0
    compression_algorithm: int = 0
    decompression_algorithm: int = 0

    CODE: ClassVar[int] = 0x0F
    SIZE = 16
    FIELDS = (bit("ps", 0, 7), bits("page_code", 0, 0, 6), u8("page_length", 1),
              bit("dce", 2, 7), bit("dcc", 2, 6), bit("dde", 3, 7), bits("red", 3, 5, 2),
              u32("compression_algorithm", 4), u32("decompression_algorithm", 8))


@record
class DeviceConfiguration(Struct):
    """SSC device configuration page (10h)."""
    ps: bool = False
    page_code: int = 0x10
    page_length: int = 0x0E
    cap: bool = False
    caf: bool = False
    active_format: int = 0
    active_partition: int = 0
    write_buffer_full_ratio: int = 0
    read_buffer_empty_ratio: int = 0
    write_delay_time: int = 0
    obr: bool = False
    lois: bool = False
    rsmk: bool = False
    avc: bool = False
    socf: int = 0
    robo: bool = False
    rew: bool = False
    gap_size: int = 0
    eod_defined: int = 0
    eeg: bool = False
    sew: bool = False
    swp: bool = False
    baml: bool = False
    bam: bool = False
    buffer_size_at_early_warning: int = 0
    select_data_compression_algorithm: int = 0
    asocwp: bool = False
    perswp: bool = False
    prmwp: bool = False

    CODE: ClassVar[int] = 0x10
    SIZE = 16
    FIELDS = (bit("ps", 0, 7), bits("page_code", 0, 0, 6), u8("page_length", 1),
              bit("cap", 2, 6), bit("caf", 2, 5), bits("active_format", 2, 0, 5),
              u8("active_partition", 3), u8("write_buffer_full_ratio", 4),
              u8("read_buffer_empty_ratio", 5), u16("write_delay_time", 6),
              bit("obr", 8, 7), bit("lois", 8, 6), bit("rsmk", 8, 5), bit("avc", 8, 4),
              bits("socf", 8, 2, 2), bit("robo", 8, 1), bit("rew", 8, 0), u8("gap_size", 9),
              bits("eod_defined", 10, 5, 3), bit("eeg", 10, 4), bit("sew", 10, 3),
              bit("swp", 10, 2), bit("baml", 10, 1), bit("bam", 10, 0),
              u24("buffer_size_at_early_warning", 11),
              u8("select_data_compression_algorithm", 14),
              bit("asocwp", 15, 2), bit("perswp", 15, 1), bit("prmwp", 15, 0))


PAGE_CLASSES: dict[int, type[Struct]] = {c.CODE: c for c in (  # type: ignore[attr-defined]
    ReadWriteErrorRecovery, Caching, Control, InformationalExceptions, DataCompression,
    DeviceConfiguration)}
PAGE_NAMES = {0x01: "Read-Write Error Recovery", 0x02: "Disconnect-Reconnect",
              0x08: "Caching", 0x0A: "Control", 0x0F: "Data Compression",
              0x10: "Device Configuration", 0x11: "Medium Partition", 0x1A: "Power Condition",
              0x1C: "Informational Exceptions Control"}


@record
class ModePage:
    """One page as sent: header bits, code, subpage and the parameter bytes after the header."""
    code: int
    subpage: int = 0
    params: bytes = b""
    ps: bool = False
    spf: bool = False

    def pack(self) -> bytes:
        b0 = (0x80 if self.ps else 0) | (0x40 if self.spf else 0) | self.code
        if self.spf:
            return bytes([b0, self.subpage]) + len(self.params).to_bytes(2, "big") + self.params
        return bytes([b0, len(self.params)]) + self.params

    @property
    def raw(self) -> bytes:
        return self.pack()

    def decoded(self) -> Struct | None:
        """The typed page (subpage 0 pages this module knows), else None."""
        cls = PAGE_CLASSES.get(self.code)
        if cls is None or self.spf:
            return None
        return cls.unpack(self.raw)

    @property
    def name(self) -> str:
        base = PAGE_NAMES.get(self.code, f"page {self.code:02x}h")
        return f"{base} (subpage {self.subpage:02x}h)" if self.spf else base


def parse_pages(data: bytes) -> list[ModePage]:
    out: list[ModePage] = []
    pos = 0
    while pos + 2 <= len(data):
        b0 = data[pos]
        spf = bool(b0 & 0x40)
        if spf:
            if pos + 4 > len(data):
                break
            sub = data[pos + 1]
            n = int.from_bytes(data[pos + 2:pos + 4], "big")
            hl = 4
        else:
            sub, n, hl = 0, data[pos + 1], 2
        out.append(ModePage(b0 & 0x3F, sub, bytes(data[pos + hl:pos + hl + n]),
                            bool(b0 & 0x80), spf))
        pos += hl + n
    return out


@record
class ModeParameters:
    """MODE SENSE data: header, block descriptors and pages."""
    header: ModeHeader6 | ModeHeader10
    block_descriptors: list[Struct] = field(default_factory=list)
    pages: list[ModePage] = field(default_factory=list)

    def pack(self) -> bytes:
        bd = b"".join(d.pack() for d in self.block_descriptors)
        pages = b"".join(p.pack() for p in self.pages)
        h = self.header
        h.block_descriptor_length = len(bd)
        h.mode_data_length = h.SIZE + len(bd) + len(pages) - (1 if isinstance(h, ModeHeader6) else 2)
        return h.pack() + bd + pages

    @classmethod
    def unpack(cls, data, ten: bool, *, sequential: bool = False) -> "ModeParameters":
        """``sequential``: block descriptors carry a density code (tape)."""
        data = bytes(data)
        hcls = ModeHeader10 if ten else ModeHeader6
        if len(data) < hcls.SIZE:
            raise ValueError(f"mode parameter data shorter than its {hcls.SIZE}-byte header")
        h = hcls.unpack(data)
        total = min(len(data), h.mode_data_length + (2 if ten else 1))
        pos = hcls.SIZE
        bd_end = min(pos + h.block_descriptor_length, total)
        long_lba = ten and bool(getattr(h, "longlba", False))
        dcls: type[Struct] = LongBlockDescriptor if long_lba else \
            (GeneralBlockDescriptor if sequential else ShortBlockDescriptor)
        bds = [dcls.unpack(data, off) for off in range(pos, bd_end - dcls.SIZE + 1, dcls.SIZE)]
        return cls(h, bds, parse_pages(data[bd_end:total]))


__all__ = ["ModeHeader6", "ModeHeader10", "ShortBlockDescriptor", "GeneralBlockDescriptor",
           "LongBlockDescriptor", "ModePage", "ModeParameters", "parse_pages", "raw"]
