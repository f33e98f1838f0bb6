"""Interceptors: wrappers around a LUN's backing I/O or its commands.

The difference tracker itself is ``volume.tracked.TrackingStore`` (the backup
engine lives in volume/); config wraps a tracked disk's store with it.
"""
