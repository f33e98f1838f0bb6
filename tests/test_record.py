"""scsi_target.record: the class builder of the layouts, PDUs and client records.

Each behaviour is checked against a dataclass twin where dataclasses define it
(signature, repr, ==, hash, frozen assignment), so a record stays a drop-in for
the dataclass it replaced.  Then every layout class of scsi_target.scsi.layouts:
defaults, repr, == and pack/unpack round trips.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import pickle
import pkgutil
from typing import ClassVar

import pytest

import scsi_target.scsi.layouts as layouts_pkg
from scsi_target.record import (FrozenInstanceError, field, field_names, is_record, record,
                                replace)
from scsi_target.scsi.layouts.fields import F, Struct


@record
class Point:
    """A point."""
    x: int
    y: int = 0
    tags: list = field(default_factory=list)
    KIND: ClassVar[str] = "point"


@dataclasses.dataclass
class DPoint:
    x: int
    y: int = 0
    tags: list = dataclasses.field(default_factory=list)
    KIND: ClassVar[str] = "point"


@record(frozen=True)
class Key:
    a: int = 1
    b: bytes = b""


@dataclasses.dataclass(frozen=True)
class DKey:
    a: int = 1
    b: bytes = b""


@record(frozen=True, slots=True)
class FrozenSlots:
    a: int = 0


def _same_call(rec_cls, dc_cls, *args, **kw):
    """Both classes called alike: the same values, or the same kind of error."""
    try:
        want = dc_cls(*args, **kw)
    except TypeError:
        with pytest.raises(TypeError):
            rec_cls(*args, **kw)
        return None
    got = rec_cls(*args, **kw)
    assert [getattr(got, n) for n in field_names(got)] == \
        [getattr(want, f.name) for f in dataclasses.fields(want)]
    return got


@pytest.mark.parametrize("args,kw", [
    ((1,), {}), ((1, 2), {}), ((1, 2, [3]), {}), ((), {"x": 1}), ((1,), {"y": 5}),
    ((), {"y": 5, "x": 1, "tags": [1]}), ((), {}), ((1, 2, [], 4), {}), ((1,), {"x": 2}),
    ((), {"x": 1, "z": 2}), ((), {"y": 2}),
])
def test_signature_is_the_dataclass_one(args, kw):
    _same_call(Point, DPoint, *args, **kw)


@pytest.mark.parametrize("args,kw", [
    ((), {}), ((), {"b": b"x"}), ((), {"b": b"x", "a": 3}), ((5,), {}), ((5, b"y"), {}),
    ((5,), {"b": b"z"}), ((), {"c": 1}), ((), {"a": 1, "c": 1}), ((5,), {"a": 1}),
    ((1, b"", 3), {}),
])
def test_an_all_defaults_record_binds_as_the_dataclass(args, kw):
    # Key's fields all have plain defaults: keyword and short positional calls take
    # the shortcuts of _bind and _init, and must still agree with the dataclass.
    _same_call(Key, DKey, *args, **kw)
    with pytest.raises(TypeError, match="unexpected keyword argument 'c'"):
        Key(c=1)


def test_error_messages_name_the_problem():
    with pytest.raises(TypeError, match="missing 1 required argument: 'x'"):
        Point()
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        Point(1, z=2)
    with pytest.raises(TypeError, match="multiple values for argument 'x'"):
        Point(1, x=2)
    with pytest.raises(TypeError, match="takes 3 positional arguments but 4"):
        Point(1, 2, [], 4)


def test_repr_eq_and_hash_are_the_dataclass_ones():
    assert repr(Point(1, 2, [3])) == repr(DPoint(1, 2, [3])).replace("DPoint", "Point")
    assert repr(Key(2, b"x")) == "Key(a=2, b=b'x')"
    assert Point(1) == Point(1) and Point(1) != Point(2) and Point(1) != DPoint(1)
    assert Point(1).__eq__(DPoint(1)) is NotImplemented
    assert Point.__hash__ is None and DPoint.__hash__ is None      # mutable: unhashable
    with pytest.raises(TypeError):
        hash(Point(1))
    assert hash(Key(2, b"x")) == hash(Key(2, b"x")) == hash(DKey(2, b"x"))
    assert len({Key(), Key(), Key(3)}) == 2


def test_defaults_and_factories():
    p, q = Point(1), Point(1)
    assert p.y == 0 and p.tags == [] and p.tags is not q.tags
    assert Point.y == 0 and not hasattr(Point, "tags")     # as dataclasses leave them
    assert Point.KIND == "point" and field_names(Point) == ("x", "y", "tags")
    assert Point.__match_args__ == ("x", "y", "tags")
    match Point(4, 5):
        case Point(a, b):
            assert (a, b) == (4, 5)


def test_frozen_refuses_assignment_and_deletion():
    k = Key()
    with pytest.raises(FrozenInstanceError):
        k.a = 2
    with pytest.raises(AttributeError):          # what callers catch, as with dataclasses
        k.other = 2
    with pytest.raises(FrozenInstanceError):
        del k.a
    assert k.a == 1


def test_mutable_default_and_field_order_are_refused():
    with pytest.raises(ValueError, match="mutable default"):
        @record
        class Bad:
            x: list = []
    with pytest.raises(TypeError, match="without a default"):
        @record
        class Order:
            x: int = 0
            y: int


def test_inheritance_post_init_and_own_methods():
    @record
    class Base:
        a: int
        b: int = 2

    @record
    class Child(Base):
        c: int = 3
        b: int = 20            # redefined: keeps its place

        def __post_init__(self):
            self.total = self.a + self.b + self.c

        def __repr__(self):
            return "child"

    c = Child(1)
    assert field_names(Child) == ("a", "b", "c") and (c.b, c.total) == (20, 24)
    assert repr(c) == "child" and c == Child(1) and c != Base(1, 20)
    with pytest.raises(TypeError):
        @record(frozen=True)
        class Frozen(Base):
            pass


def test_slots():
    @record(slots=True)
    class S:
        a: int = 0
        b: str = "x"

    s = S(b="y")
    assert not hasattr(s, "__dict__") and S.__slots__ == ("a", "b")
    with pytest.raises(AttributeError):
        s.c = 1                          # a typo'd name is an error
    s.a = 5
    assert s == S(5, "y") and repr(s) == "S(a=5, b='y')"

    fs = FrozenSlots(3)
    assert copy.copy(fs) == fs and copy.deepcopy(fs) == fs
    assert pickle.loads(pickle.dumps(fs)) == fs
    with pytest.raises(FrozenInstanceError):
        fs.a = 1
    f = F("x", 3, 2, 1, 4, "int")          # the layouts' field records are frozen with slots
    assert pickle.loads(pickle.dumps(f)) == f and copy.copy(f) == f


def test_replace_and_helpers():
    p = Point(1, 2, [3])
    q = replace(p, y=5)
    assert q == Point(1, 5, [3]) and p.y == 2
    with pytest.raises(TypeError, match="no field 'z'"):
        replace(p, z=1)
    assert replace(Key(), a=7) == Key(7)
    assert is_record(Point) and is_record(p) and not is_record(DPoint)
    with pytest.raises(TypeError):
        field_names(DPoint(1))


# ------------------------------------------------------------- every layout
def _layout_classes() -> list[type]:
    out = []
    for info in pkgutil.iter_modules(layouts_pkg.__path__):
        mod = importlib.import_module(f"{layouts_pkg.__name__}.{info.name}")
        out += [v for v in vars(mod).values()
                if isinstance(v, type) and v.__module__ == mod.__name__ and is_record(v)]
    return out


LAYOUTS = _layout_classes()
STRUCTS = [c for c in LAYOUTS if issubclass(c, Struct)]


def test_every_layout_is_found():
    assert len(STRUCTS) >= 51 and len(LAYOUTS) >= 77       # as many as there were dataclasses


def _sample(f):
    """A value of field ``f`` other than the usual default (all bits set)."""
    if f.kind == "bool":
        return True
    if f.kind == "bytes":
        return bytes(range(1, f.size + 1))
    if f.kind == "ascii":
        return "AB"[:f.size]
    return f.mask


@pytest.mark.parametrize("cls", STRUCTS, ids=lambda c: f"{c.__module__.rsplit('.', 1)[1]}."
                         f"{c.__name__}")
def test_layout_round_trips_and_compares(cls):
    zero = {"bool": False, "bytes": b"", "ascii": "", "int": 0}
    default = cls(**{f.name: zero[f.kind] for f in cls.FIELDS if not hasattr(cls, f.name)})
    assert cls.unpack(default.pack()).pack() == default.pack()
    kw = {f.name: _sample(f) for f in cls.FIELDS}
    obj = cls(**kw)
    raw = obj.pack()
    back = cls.unpack(raw)
    assert all(getattr(back, n) == v for n, v in kw.items())
    assert back.pack() == raw
    assert obj == cls(**kw) and (obj != default or raw == default.pack())
    assert repr(obj).startswith(f"{cls.__qualname__}(") and dict(obj.items()).keys() == \
        set(field_names(cls))
    if cls.__record__.frozen:
        assert hash(obj) == hash(cls(**kw))
        with pytest.raises(FrozenInstanceError):
            setattr(obj, cls.FIELDS[0].name, _sample(cls.FIELDS[0]))


def test_classvar_annotations_are_not_fields():
    import typing

    @record
    class C:
        a: int = 0
        b: ClassVar[int] = 1
        c: typing.ClassVar[int] = 2
        d: ClassVar = 3
        e: "ClassVariety" = 4          # noqa: F821 - a name that merely starts like it

    assert field_names(C) == ("a", "e")
    assert field_names(record(type("D", (), {"__annotations__": {"x": int, "y": typing.ClassVar[int]},
                                            "x": 1, "y": 2}))) == ("x",)
