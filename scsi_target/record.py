"""Records: small classes declared by their annotated attributes, as dataclasses are.

``@record`` gives a class ``__init__`` (positional and keyword arguments, the
class attributes as defaults, ``field(default_factory=...)`` for mutable ones,
``__post_init__`` called when defined), ``__repr__``, ``__eq__``,
``__match_args__`` and, for ``frozen=True``, ``__hash__`` and assignment that
raises :class:`FrozenInstanceError` -- what ``@dataclass`` gives, with the same
rules for which methods a class body's own definitions keep.

Why not dataclasses: it writes each class's methods out as source and compiles
them (three ``exec`` calls per class) and imports ``inspect``; for the few
dozen layouts and PDU types a client imports that was most of its start-up.
Here every method is one shared function reading the class's field table, so
declaring a record costs about as much as declaring a class.

Annotations are read for their names only, and to leave out ``ClassVar``
attributes: strings (``from __future__ import annotations``, as this project
writes them) or objects.  Not supported: ``InitVar``, keyword-only fields,
ordering.
"""
from __future__ import annotations

import sys
# operator.attrgetter is this C type: the operator module (Python twins of every
# function, replaced by the C ones at its end) is half a millisecond of a
# client's start-up for this one name.
from _operator import attrgetter

__all__ = ["FrozenInstanceError", "field", "field_names", "is_record", "record", "replace"]


class FrozenInstanceError(AttributeError):
    """Assignment to (or deletion of) a field of a frozen record."""


_MISSING = object()


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make) -> None:
        self.make = make


def field(*, default_factory):
    """A field whose default is made per instance: ``x: list = field(default_factory=list)``."""
    return _Factory(default_factory)


class _Spec:
    """A record class's field table: names in order, defaults, factories, and how
    ``__init__`` stores values (``assign``) and ``==`` reads them (``values``)."""
    __slots__ = ("names", "defaults", "factories", "frozen", "assign", "values", "tails")

    def __init__(self, names: tuple, defaults: dict, factories: dict, frozen: bool,
                 assign) -> None:
        self.names = names
        self.defaults = defaults
        self.factories = factories
        self.frozen = frozen
        self.assign = assign
        self.tails = None           # made by the first call that can use them (_tails)
        # The field values as a tuple (what == compares and hash hashes).
        if len(names) > 1:
            self.values = attrgetter(*names)
        elif names:
            name = names[0]
            self.values = lambda obj: (getattr(obj, name),)
        else:
            self.values = lambda obj: ()


def _assign_dict(self, names, values) -> None:
    """Fields in the instance dict (no slots, no __setattr__ of the class's own)."""
    self.__dict__.update(zip(names, values))


def _assign_frozen(self, names, values) -> None:
    put = object.__setattr__
    for name, value in zip(names, values):
        put(self, name, value)


def _assign_setattr(self, names, values) -> None:
    for name, value in zip(names, values):
        setattr(self, name, value)


_CLASSVAR = ("ClassVar", "typing.ClassVar")


def _is_classvar(annotation) -> bool:
    if type(annotation) is str:
        return annotation.startswith(_CLASSVAR) and \
            annotation.partition("[")[0].strip() in _CLASSVAR
    typing = sys.modules.get("typing")       # an object annotation: typing is loaded
    return typing is not None and (annotation is typing.ClassVar or
                                   getattr(annotation, "__origin__", None) is typing.ClassVar)


def _bind(cls, spec: _Spec, args: tuple, kw: dict) -> list:
    """The field values of ``cls(*args, **kw)`` in field order, or the TypeError
    a function with that signature would raise."""
    names = spec.names
    defaults = spec.defaults
    # Keywords only, every one a field, every field with a plain default (a PDU
    # or a layout made by name): the values without a loop in Python.
    if not args and len(defaults) == len(names) and kw.keys() <= defaults.keys():
        return [kw[n] if n in kw else defaults[n] for n in names]
    what = f"{cls.__qualname__}()"
    if len(args) > len(names):
        raise TypeError(f"{what} takes {len(names)} positional arguments but {len(args)} "
                        f"were given")
    for name in names[:len(args)]:
        if name in kw:
            raise TypeError(f"{what} got multiple values for argument {name!r}")
    values = list(args)
    used = 0
    missing = []
    for name in names[len(args):]:
        if name in kw:
            values.append(kw[name])
            used += 1
        elif name in spec.defaults:
            values.append(spec.defaults[name])
        elif name in spec.factories:
            values.append(spec.factories[name]())
        else:
            missing.append(name)
    if used != len(kw):
        unknown = next(k for k in kw if k not in names)
        raise TypeError(f"{what} got an unexpected keyword argument {unknown!r}")
    if missing:
        raise TypeError(f"{what} missing {len(missing)} required argument"
                        f"{'s' if len(missing) > 1 else ''}: "
                        + ", ".join(repr(n) for n in missing))
    return values


def _tails(spec: _Spec) -> list:
    """tails[i]: the defaults of names[i:] when every one of them is a plain default
    (no factory), else None -- what a positional call with i arguments fills in
    without binding (most calls of a record made by code are positional)."""
    tails: list = [()]
    tail: tuple | None = ()
    for name in reversed(spec.names):
        if tail is not None and name in spec.defaults:
            tail = (spec.defaults[name],) + tail
        else:
            tail = None
        tails.append(tail)
    tails.reverse()
    spec.tails = tails
    return tails


def _init(self, *args, **kw) -> None:
    spec = type(self).__record__
    if kw or len(args) != len(spec.names):
        tail = None if kw or len(args) > len(spec.names) else \
            (spec.tails or _tails(spec))[len(args)]
        args = args + tail if tail is not None else _bind(type(self), spec, args, kw)
    spec.assign(self, spec.names, args)


def _init_post(self, *args, **kw) -> None:
    _init(self, *args, **kw)
    self.__post_init__()


def _repr(self) -> str:
    return f"{type(self).__qualname__}(" + ", ".join(
        f"{n}={getattr(self, n)!r}" for n in type(self).__record__.names) + ")"


def _eq(self, other):
    if other.__class__ is not self.__class__:
        return NotImplemented
    values = type(self).__record__.values
    return values(self) == values(other)


def _hash(self) -> int:
    return hash(type(self).__record__.values(self))


# A frozen record refuses any assignment; a plain subclass of one (no @record of
# its own) only to the fields, as dataclasses have it.
def _frozen_setattr(self, name, value):
    cls = type(self)
    if "__record__" in cls.__dict__ or name in cls.__record__.names:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")
    object.__setattr__(self, name, value)


def _frozen_delattr(self, name):
    cls = type(self)
    if "__record__" in cls.__dict__ or name in cls.__record__.names:
        raise FrozenInstanceError(f"cannot delete field {name!r}")
    object.__delattr__(self, name)


def _values_state(self):
    return type(self).__record__.values(self)


def _set_values_state(self, state) -> None:
    _assign_frozen(self, type(self).__record__.names, state)


def record(cls=None, /, *, frozen: bool = False, eq: bool = True, repr: bool = True,
           init: bool = True, slots: bool = False):
    """Make ``cls`` a record (see the module docstring); ``@record`` or ``@record(...)``."""
    def wrap(c):
        return _process(c, frozen=frozen, eq=eq, want_repr=repr, init=init, slots=slots)
    return wrap if cls is None else wrap(cls)


def _process(cls, *, frozen: bool, eq: bool, want_repr: bool, init: bool, slots: bool):
    names: dict[str, None] = {}
    defaults: dict = {}
    factories: dict = {}
    # (A class's __dict__ is a mappingproxy: `in` and [] are direct, its .get()
    # is a method call on the dict behind it, a microsecond a field.)
    for base in reversed(cls.__mro__[1:]):
        d = base.__dict__
        spec = d["__record__"] if "__record__" in d else None
        if spec is not None:
            names.update(dict.fromkeys(spec.names))
            defaults.update(spec.defaults)
            factories.update(spec.factories)
            if spec.frozen != frozen:
                raise TypeError(f"{cls.__qualname__}: a frozen record cannot inherit from a "
                                f"non-frozen one, nor the other way round")
    body = cls.__dict__
    annotations = body["__annotations__"] if "__annotations__" in body else {}
    own = [n for n, a in annotations.items()
           if (type(a) is str and not a.startswith(_CLASSVAR)) or not _is_classvar(a)]
    for name in own:
        names[name] = None
        value = body[name] if name in body else _MISSING
        defaults.pop(name, None)
        factories.pop(name, None)
        if isinstance(value, _Factory):
            factories[name] = value.make
            delattr(cls, name)
        elif value is not _MISSING:
            if type(value).__hash__ is None:       # list, dict, set: shared by every instance
                raise ValueError(f"{cls.__qualname__}.{name}: mutable default "
                                 f"{type(value).__name__} is not allowed: use "
                                 f"field(default_factory=...)")
            defaults[name] = value
    order = tuple(names)
    seen_default = None
    for name in order:
        if name in defaults or name in factories:
            seen_default = name
        elif seen_default is not None:
            raise TypeError(f"{cls.__qualname__}: field {name!r} without a default follows "
                            f"{seen_default!r}, which has one")
    if slots:
        cls = _with_slots(cls, own)
        body = cls.__dict__
    in_slots = {s for b in cls.__mro__ if "__slots__" in b.__dict__ for s in b.__slots__}
    if in_slots.intersection(order):
        assign = _assign_frozen if frozen else _assign_setattr
    elif frozen or cls.__setattr__ is object.__setattr__:
        assign = _assign_dict
    else:
        assign = _assign_setattr
    cls.__record__ = _Spec(order, defaults, factories, frozen, assign)

    def put(name, value):           # a method of the class body stays
        if name not in body:
            setattr(cls, name, value)

    if init:
        put("__init__", _init_post if hasattr(cls, "__post_init__") else _init)
    if want_repr:
        put("__repr__", _repr)
    if eq:
        put("__eq__", _eq)
    # __hash__ as dataclasses decide it: a class body's own stays; eq without
    # frozen makes instances unhashable (mutable values must not be dict keys).
    own_hash = body["__hash__"] if "__hash__" in body else _MISSING
    explicit_hash = not (own_hash is _MISSING or (own_hash is None and "__eq__" in body))
    if eq and not explicit_hash:
        cls.__hash__ = _hash if frozen else None
    if frozen:
        for name, fn in (("__setattr__", _frozen_setattr), ("__delattr__", _frozen_delattr)):
            if name in body:
                raise TypeError(f"{cls.__qualname__}: a frozen record cannot define {name}")
            setattr(cls, name, fn)
        if slots:        # copy and pickle restore slots by assignment: not to a frozen one
            cls.__getstate__ = _values_state
            cls.__setstate__ = _set_values_state
    if "__match_args__" not in body:
        cls.__match_args__ = order
    return cls


def _with_slots(cls, own: list[str]):
    """``cls`` made again with ``__slots__`` for its own fields (slots cannot be
    added to a class once made); defaults live in the field table, not the class."""
    ns = dict(cls.__dict__)
    inherited = {s for b in cls.__mro__[1:] for s in b.__dict__.get("__slots__", ())}
    ns["__slots__"] = tuple(n for n in own if n not in inherited)
    for name in (*own, "__dict__", "__weakref__"):
        ns.pop(name, None)
    return type(cls)(cls.__name__, cls.__bases__, ns)


def is_record(obj) -> bool:
    """Whether ``obj`` is a record class or an instance of one."""
    return hasattr(obj, "__record__")


def field_names(obj) -> tuple[str, ...]:
    """The field names of a record (class or instance), in order."""
    try:
        return obj.__record__.names
    except AttributeError:
        raise TypeError(f"{obj!r} is not a record") from None


def replace(obj, /, **changes):
    """A copy of record ``obj`` with ``changes`` (``__init__`` and ``__post_init__`` run)."""
    spec = type(obj).__record__
    for name in changes:
        if name not in spec.names:
            raise TypeError(f"{type(obj).__qualname__} has no field {name!r}")
    return type(obj)(**{n: changes[n] if n in changes else getattr(obj, n)
                        for n in spec.names})
