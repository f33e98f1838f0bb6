"""Store capabilities are data (volume/store.py): a class that defines ``grow``
declares ``growable``, and one that declares it defines ``grow``; the same for
``watch_size`` and ``watches_size`` (the tracker takes its inner store's);
``tracked`` is the change tracker's alone."""
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


def _defines(cls: type, method: str) -> bool:
    return any(method in vars(k) for k in cls.__mro__ if k is not BlockStore and
               issubclass(k, BlockStore))


def _defines_grow(cls: type) -> bool:
    return _defines(cls, "grow")


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


def test_size_watching_is_declared_by_the_stores_that_watch():
    classes = [c for c in _store_classes() if c.__name__ != "TrackingStore"]
    wrong = [(c.__qualname__, c.watches_size) for c in classes
             if _defines(c, "watch_size") != c.watches_size]
    assert not wrong, f"watch_size defined but watches_size not declared (or the reverse): {wrong}"
    assert {c.__name__ for c in classes if c.watches_size} == {"RbdStore"}


def test_the_tracker_watches_size_only_when_its_inner_store_does():
    import pytest
    from volume.store import StoreError
    from volume.tracked import TrackingStore
    from volume.memstore import MemoryStore
    vol = TrackingStore.in_memory(MemoryStore(1 << 20))
    try:
        assert vol.watches_size is False
        with pytest.raises(StoreError, match="not watched"):
            vol.watch_size(lambda size: None)
    finally:
        vol.close()
