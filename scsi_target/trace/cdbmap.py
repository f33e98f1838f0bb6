"""Where block commands keep their LBA and transfer length (SBC-4), so that
a replay can move them (``--lba-offset``) and find the blocks a trace read.

Only direct-access opcodes are listed: in a trace of a tape or changer the
same opcodes mean other things, and the replay tools say so when asked to
shift them.
"""
from __future__ import annotations

# opcode -> (LBA offset, LBA bytes, length offset, length bytes); 6-byte
# READ/WRITE keep a 21-bit LBA and treat length 0 as 256 (handled below).
BLOCK_FIELDS: dict[int, tuple[int, int, int, int]] = {
    0x08: (1, 3, 4, 1), 0x0A: (1, 3, 4, 1),
    0x28: (2, 4, 7, 2), 0x2A: (2, 4, 7, 2), 0x2E: (2, 4, 7, 2), 0x2F: (2, 4, 7, 2),
    0x41: (2, 4, 7, 2),
    0xA8: (2, 4, 6, 4), 0xAA: (2, 4, 6, 4), 0xAE: (2, 4, 6, 4), 0xAF: (2, 4, 6, 4),
    0x88: (2, 8, 10, 4), 0x8A: (2, 8, 10, 4), 0x8E: (2, 8, 10, 4), 0x8F: (2, 8, 10, 4),
    0x89: (2, 8, 13, 1), 0x8B: (2, 8, 10, 4), 0x90: (2, 8, 10, 4), 0x93: (2, 8, 10, 4),
}
READS = frozenset({0x08, 0x28, 0xA8, 0x88})
WRITES = frozenset({0x0A, 0x2A, 0xAA, 0x8A, 0x2E, 0xAE, 0x8E, 0x41, 0x93, 0x89, 0x8B})


def extent(cdb: bytes) -> tuple[int, int] | None:
    """(LBA, blocks) of a block command, None for other opcodes or short CDBs."""
    spec = BLOCK_FIELDS.get(cdb[0]) if cdb else None
    if spec is None:
        return None
    lo, ln, to, tn = spec
    if len(cdb) < max(lo + ln, to + tn):
        return None
    lba = int.from_bytes(cdb[lo:lo + ln], "big")
    n = int.from_bytes(cdb[to:to + tn], "big")
    if ln == 3:
        lba &= 0x1FFFFF
        if cdb[0] in (0x08, 0x0A) and n == 0:
            n = 256
    return lba, n


def shift_lba(cdb: bytes, offset: int) -> bytes:
    """The CDB with its LBA moved by ``offset``; ValueError when it does not fit."""
    spec = BLOCK_FIELDS.get(cdb[0]) if cdb else None
    if spec is None or not offset:
        return cdb
    lo, ln, _, _ = spec
    lba, _ = extent(cdb) or (0, 0)
    new = lba + offset
    limit = 1 << (21 if ln == 3 else ln * 8)
    if not 0 <= new < limit:
        raise ValueError(f"LBA {lba} + offset {offset} does not fit the CDB of opcode "
                         f"0x{cdb[0]:02X}")
    out = bytearray(cdb)
    if ln == 3:
        out[1] = (out[1] & 0xE0) | (new >> 16)
        out[2:4] = (new & 0xFFFF).to_bytes(2, "big")
    else:
        out[lo:lo + ln] = new.to_bytes(ln, "big")
    return bytes(out)
