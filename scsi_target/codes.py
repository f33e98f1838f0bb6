"""Named codes: the project's one kind of enumeration (opcodes, sense keys, statuses, states).

    class SenseKey(Code):
        NO_SENSE = 0x0
        UNIT_ATTENTION = 0x6

A :class:`Code` subclass turns every public ``NAME = int`` of its body into a
member: an instance of the class (an ``int``, equal to and hashing as its
value) with a ``name``.  What the project used of ``enum.IntEnum`` works the
same way: ``SenseKey.UNIT_ATTENTION``, ``SenseKey(6)`` (the member, or
ValueError), ``SenseKey["UNIT_ATTENTION"]`` (or KeyError), ``__members__``, iteration in
definition order, ``len``, ``repr`` as ``<SenseKey.UNIT_ATTENTION: 6>``,
``str``/``format`` as the number, pickling; ``x in SenseKey`` is true for a
member and for a plain int that is a member's value (what callers ask before
naming a number that may not have a name).  Methods and properties of the
body stay methods.

Why not enum: creating an enum class does most of a small class's work per
member, and importing enum (with functools, collections, types) is a few
milliseconds of every short-lived program's start-up (``diffbackup``): here a
class is made in microseconds.
"""
from __future__ import annotations

__all__ = ["Code"]


class _CodeType(type):
    """The metaclass: collects the members and answers lookup, iteration and membership."""

    def __new__(mcls, name, bases, ns):
        cls = super().__new__(mcls, name, bases, ns)
        members: dict[str, Code] = {}
        by_value: dict[int, Code] = {}
        for key, value in ns.items():
            if key[:1] != "_" and type(value) is int:
                member = by_value.get(value)
                if member is None:          # a second name of a value is an alias
                    member = int.__new__(cls, value)
                    member._name_ = key
                    by_value[value] = member
                members[key] = member
                type.__setattr__(cls, key, member)
        cls._members_ = members
        cls._by_value_ = by_value
        return cls

    def __iter__(cls):
        return iter(cls._by_value_.values())

    def __len__(cls) -> int:
        return len(cls._by_value_)

    def __contains__(cls, value) -> bool:
        try:
            return value in cls._by_value_
        except TypeError:                   # unhashable
            return False

    def __getitem__(cls, name: str):
        return cls._members_[name]

    @property
    def __members__(cls) -> dict:
        """Every name (aliases too) and its member, in definition order."""
        return dict(cls._members_)

    def __setattr__(cls, name, value):
        if name in cls.__dict__.get("_members_", ()):
            raise AttributeError(f"cannot reassign member {name!r} of {cls.__qualname__}")
        super().__setattr__(name, value)


class Code(int, metaclass=_CodeType):
    """A named integer code; subclass it with ``NAME = value`` lines (see the module)."""

    def __new__(cls, value):
        try:
            return cls._by_value_[value]
        except (KeyError, TypeError):
            raise ValueError(f"{value!r} is not a valid {cls.__qualname__}") from None

    @property
    def name(self) -> str:
        return self._name_

    @property
    def value(self) -> int:
        return int(self)

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__}.{self._name_}: {int(self)}>"

    __str__ = int.__repr__
    __format__ = int.__format__

    def __reduce__(self):
        return type(self), (int(self),)

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self
