"""Names of additional sense codes (ASC/ASCQ pairs), after SPC-4 Annex D (T10's list).

The table is written as text, one ``ASC ASCQ NAME`` per line, because that is the
shape people check it against; it lives in :mod:`scsi_target.scsi.asc_text`, read (and parsed)
when a name is first asked for.  Some ASC values carry a parameter in the ASCQ
(e.g. 40h/NNh DIAGNOSTIC FAILURE ON COMPONENT NN); :func:`asc_name` handles
those and the vendor-specific ranges (ASC 80h-FFh, or ASCQ 80h-FFh).
"""
from __future__ import annotations

# ASC values whose ASCQ is a parameter: name with "NN" standing for it.
_PARAMETERIZED = {
    0x40: "DIAGNOSTIC FAILURE ON COMPONENT NN (80h-FFh)",
    0x4D: "TAGGED OVERLAPPED COMMANDS (NN = TASK TAG)",
    0x70: "DECOMPRESSION EXCEPTION SHORT ALGORITHM ID OF NN",
}


def _parse(text: str) -> dict[tuple[int, int], str]:
    out: dict[tuple[int, int], str] = {}
    for line in text.strip().splitlines():
        asc, ascq, name = line.split(" ", 2)
        key = (int(asc, 16), int(ascq, 16))
        if key in out:
            raise ValueError(f"ASC/ASCQ {asc}/{ascq} listed twice")
        out[key] = name
    return out


# The table is read and parsed when a name is first asked for (PEP 562 for
# ASC_NAMES): most programs -- a backup run, a target at start-up -- never name
# one, and its 800-odd lines (30 KB of bytecode to load) and their parsing were
# most of this module's import time.
_names: dict[tuple[int, int], str] | None = None


def _table() -> dict[tuple[int, int], str]:
    global _names
    if _names is None:
        from .asc_text import TABLE
        _names = _parse(TABLE)
    return _names


def __getattr__(name: str):
    if name == "ASC_NAMES":
        return _table()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def asc_name(asc: int, ascq: int) -> str:
    """The name of an ASC/ASCQ pair; vendor-specific and unknown pairs get a descriptive name."""
    name = _table().get((asc, ascq))
    if name is not None:
        return name
    if asc in _PARAMETERIZED and not (asc == 0x40 and ascq == 0):
        return _PARAMETERIZED[asc].replace("NN", f"{ascq:02X}h", 1)
    if asc >= 0x80:
        return f"VENDOR SPECIFIC (ASC {asc:02X}h, ASCQ {ascq:02X}h)"
    if ascq >= 0x80:
        return f"VENDOR SPECIFIC QUALIFIER {ascq:02X}h OF ASC {asc:02X}h"
    return f"UNKNOWN ASC/ASCQ {asc:02X}h/{ascq:02X}h"
