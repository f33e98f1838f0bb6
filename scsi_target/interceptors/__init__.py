"""Interceptors: BlockStore wrappers around a LUN's backing I/O.

The difference tracker is the tracked volume of ``volume.tracked`` (the engine
lives in volume/; the target wraps a disk's store with it)."""
from volume.tracked import TrackingError, TrackingStore, map_paths

__all__ = ["TrackingError", "TrackingStore", "map_paths"]
