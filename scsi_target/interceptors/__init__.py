"""Interceptors: BlockStore wrappers around a LUN's backing I/O (difference tracker, ...)."""
from .tracker import TrackingError, TrackingStore, map_paths

__all__ = ["TrackingError", "TrackingStore", "map_paths"]
