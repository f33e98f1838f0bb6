"""iSCSI name comparison (RFC 3722, the stringprep profile for iSCSI names).

Two names that differ only in case or in Unicode compatibility form are one
name: RFC 7143 4.2.7.2 makes names case-insensitive through this profile,
so an ACL or a session lookup compares the normalised forms.
"""
from __future__ import annotations

__all__ = ["normalize_name", "name_problem", "MAX_NAME_BYTES"]


def normalize_name(name: str) -> str:
    """The RFC 3722 form of ``name``: map (table B.1 removed, B.2 case-folded), then NFKC.

    Prohibited characters are not checked here: a name containing one simply
    matches nothing but itself.  ASCII names, the usual case, only lowercase.
    """
    if name.isascii():
        return name.lower()
    # Imported here: the tables are for the rare non-ASCII name, and a client's
    # start-up would otherwise pay for them with every run.
    import stringprep
    import unicodedata
    mapped = "".join("" if stringprep.in_table_b1(c) else stringprep.map_table_b2(c)
                     for c in name)
    return unicodedata.normalize("NFKC", mapped)


MAX_NAME_BYTES = 223          # RFC 7143 4.2.7.1
_PREFIXES = ("iqn.", "eui.", "naa.")
_ASCII_ALLOWED = frozenset("-.:abcdefghijklmnopqrstuvwxyz0123456789")


def name_problem(name: object) -> str | None:
    """None if ``name`` can be sent as an iSCSI name, else why not.

    RFC 7143 4.2.7.2: after RFC 3722 normalisation only '-', '.', ':',
    lowercase ASCII letters, digits and non-ASCII characters remain.  Case is
    not an error (normalisation lowercases it), so this is the sender's check;
    the config's stricter one insists on the normalised form.
    """
    if not isinstance(name, str):
        return f"expected a string, got {type(name).__name__}"
    if not name:
        return "empty name"
    if len(name.encode()) > MAX_NAME_BYTES:
        return f"{name[:40]!r}...: longer than {MAX_NAME_BYTES} bytes"
    norm = normalize_name(name)
    if not norm.startswith(_PREFIXES):
        return f"{name!r} does not start with iqn., eui. or naa."
    bad = next((c for c in norm if c.isascii() and c not in _ASCII_ALLOWED), None)
    if bad is not None:
        return f"{name!r}: character {bad!r} is not allowed in an iSCSI name"
    return None
