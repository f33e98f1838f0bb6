"""Store capabilities are data (volume/store.py): a class that defines ``grow``
declares ``growable``, and one that declares it defines ``grow``; ``tracked`` is
the change tracker's alone."""
from __future__ import annotations

import importlib
import pkgutil

import volume
import scsi_target.scsi.backup_lu  # noqa: F401  (StreamMedium)
import scsi_target.testing.cow  # noqa: F401  (CowStore)
from volume.store import BlockStore


def _store_classes() -> list[type]:
    for mod in pkgutil.iter_modules(volume.__path__):
        importlib.import_module(f"volume.{mod.name}")
    seen, todo = [], [BlockStore]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen and not sub.__module__.startswith("test"):
                seen.append(sub)
                todo.append(sub)
    return seen


def _defines_grow(cls: type) -> bool:
    return any("grow" in vars(k) for k in cls.__mro__ if k is not BlockStore and
               issubclass(k, BlockStore))


def test_every_store_that_grows_declares_it_and_vice_versa():
    classes = _store_classes()
    names = {c.__name__ for c in classes}
    assert {"FileStore", "RbdStore", "TrackingStore", "MemoryStore"} <= names
    wrong = [(c.__qualname__, c.growable) for c in classes if _defines_grow(c) != c.growable]
    assert not wrong, f"grow defined but growable not declared (or the reverse): {wrong}"
    assert {c.__name__ for c in classes if c.growable} >= {"FileStore", "RbdStore",
                                                          "TrackingStore"}
    assert not BlockStore.growable and not hasattr(BlockStore, "grow")


def test_only_the_tracker_is_tracked():
    tracked = {c.__name__ for c in _store_classes() if c.tracked}
    assert tracked == {"TrackingStore"}
