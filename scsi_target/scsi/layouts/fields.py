"""Field tables: a fixed binary layout declared once, packed and unpacked from the table.

A layout class is a record (:mod:`scsi_target.record`: ``__init__``, ``==``,
``repr`` from its annotated attributes) that also carries ``FIELDS`` (where each
attribute lives: byte offset, byte span, bit shift and width) and ``SIZE``.
Both the target (building responses) and the initiator (decoding them) go
through :meth:`Struct.pack` / :meth:`Struct.unpack`, so the two sides cannot
disagree about a bit position.  Variable-length structures (lists of
descriptors) are small hand-written classes built from these fixed parts.

Not for the data path: packing walks the table in Python, which is fine for
the few-hundred-byte control responses these describe.
"""
from __future__ import annotations

from ...record import field_names, record

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, ClassVar, Iterator, TypeVar

    T = TypeVar("T", bound="Struct")


@record(frozen=True, slots=True)
class F:
    """One field: ``size`` bytes at ``offset`` read as a big-endian integer, of which
    ``width`` bits starting at bit ``shift`` belong to the field (width None: all)."""
    name: str
    offset: int
    size: int = 1
    shift: int = 0
    width: int | None = None
    kind: str = "int"          # int | bool | ascii | bytes

    # Its own __init__ (a record keeps the class body's): every layout declares its
    # fields at import, a few hundred F of a client's start-up, and the generic
    # one (binding, then one object.__setattr__ per field from a loop) cost twice this.
    def __init__(self, name: str, offset: int, size: int = 1, shift: int = 0,
                 width: int | None = None, kind: str = "int") -> None:
        put = object.__setattr__
        put(self, "name", name)
        put(self, "offset", offset)
        put(self, "size", size)
        put(self, "shift", shift)
        put(self, "width", width)
        put(self, "kind", kind)

    @property
    def bits(self) -> int:
        return self.width if self.width is not None else self.size * 8

    @property
    def mask(self) -> int:
        return (1 << self.bits) - 1


def u8(name: str, off: int) -> F:
    return F(name, off, 1)


def u16(name: str, off: int) -> F:
    return F(name, off, 2)


def u24(name: str, off: int) -> F:
    return F(name, off, 3)


def u32(name: str, off: int) -> F:
    return F(name, off, 4)


def u64(name: str, off: int) -> F:
    return F(name, off, 8)


def bit(name: str, off: int, pos: int) -> F:
    """A one-bit flag (bit ``pos`` of byte ``off``), decoded as bool."""
    return F(name, off, 1, pos, 1, "bool")


def bits(name: str, off: int, shift: int, width: int, size: int = 1) -> F:
    return F(name, off, size, shift, width)


def ascii_field(name: str, off: int, size: int) -> F:
    """Left-aligned, space-padded ASCII (SPC-4 4.4.1); decoded with trailing blanks removed."""
    return F(name, off, size, kind="ascii")


def raw(name: str, off: int, size: int) -> F:
    return F(name, off, size, kind="bytes")


def ascii_bytes(text: str, width: int) -> bytes:
    """Printable ASCII only, cut or space-padded to ``width``."""
    clean = "".join(c if " " <= c <= "~" else " " for c in text)
    return clean.encode("ascii")[:width].ljust(width)


class Struct:
    """Base of fixed-size layouts; subclasses are records with FIELDS and SIZE."""
    FIELDS: ClassVar[tuple[F, ...]] = ()
    SIZE: ClassVar[int] = 0

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        for f in cls.FIELDS:
            end = f.offset + f.size
            if end > cls.SIZE:
                raise TypeError(f"{cls.__name__}.{f.name} ends at {end}, past SIZE {cls.SIZE}")

    def pack(self) -> bytes:
        buf = bytearray(self.SIZE)
        self.pack_into(buf, 0)
        return bytes(buf)

    def pack_into(self, buf: bytearray, base: int) -> None:
        for f in self.FIELDS:
            value = getattr(self, f.name)
            start = base + f.offset
            if f.kind == "ascii":
                buf[start:start + f.size] = ascii_bytes(value, f.size)
                continue
            if f.kind == "bytes":
                b = bytes(value)
                if len(b) > f.size:
                    raise ValueError(f"{type(self).__name__}.{f.name}: {len(b)} bytes > {f.size}")
                buf[start:start + f.size] = b.ljust(f.size, b"\x00")
                continue
            v = int(value)
            if not 0 <= v <= f.mask:
                raise ValueError(f"{type(self).__name__}.{f.name}={v} does not fit {f.bits} bits")
            cur = int.from_bytes(buf[start:start + f.size], "big")
            cur = (cur & ~(f.mask << f.shift)) | (v << f.shift)
            buf[start:start + f.size] = cur.to_bytes(f.size, "big")

    @classmethod
    def unpack(cls: type[T], data: bytes | bytearray | memoryview, offset: int = 0) -> T:
        """Decode from ``data[offset:]``; bytes past the end (a short allocation length) read as 0."""
        chunk = bytes(data[offset:offset + cls.SIZE]).ljust(cls.SIZE, b"\x00")
        kw: dict[str, Any] = {}
        for f in cls.FIELDS:
            raw_b = chunk[f.offset:f.offset + f.size]
            if f.kind == "ascii":
                kw[f.name] = raw_b.decode("ascii", "replace").rstrip(" \x00")
            elif f.kind == "bytes":
                kw[f.name] = raw_b
            else:
                v = (int.from_bytes(raw_b, "big") >> f.shift) & f.mask
                kw[f.name] = bool(v) if f.kind == "bool" else v
        return cls(**kw)  # type: ignore[call-arg]

    def items(self) -> Iterator[tuple[str, Any]]:
        """(name, value) of every field, for tables and JSON."""
        for name in field_names(self):
            yield name, getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        return {k: to_jsonable(v) for k, v in self.items()}


def to_jsonable(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if hasattr(v, "to_dict"):
        return v.to_dict()
    if isinstance(v, (list, tuple)):
        return [to_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): to_jsonable(x) for k, x in v.items()}
    return v
