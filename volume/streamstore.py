"""Where backup streams are kept: one small interface, a file and an S3 implementation.

A *stream store* holds finished backup streams under names (a path, an S3
key).  It knows nothing of SCSI or of the stream format beyond what a catalog
needs; the backup engine writes into a :class:`StreamWriter` and the readers
(restore, verify, merge, catalog) open a :class:`StreamRef`.

The one promise every writer keeps: the name shows a stream only once the
writer was closed without an error (:meth:`CommitOnExit.commit`); any failure
(:meth:`CommitOnExit.abort`, an exception in the ``with`` block, a killed
process) leaves nothing under the name.  Files get it from ``NAME.partial``
plus a rename, S3 from a multipart upload completed only at the end
(``volume/s3streams.py``).  A backup commits its map cut only after
``commit()`` returned, so no generation is ever recorded as backed up without
its stream in place.

Tapes are not a stream store: a tape backup set has labels, spanning and
file numbers (``tape/backupset.py``).
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import BinaryIO

__all__ = ["StreamStoreError", "StreamExists", "NoSuchStream", "StreamWriter", "StreamRef",
           "CommitOnExit",
           "StoredStream", "FileStreams", "is_s3_url", "same_stream", "open_ref", "open_writer"]


class StreamStoreError(Exception):
    """A stream store refused or failed; the message is one line for the user."""


class StreamExists(StreamStoreError):
    """The name already holds a stream and overwriting was not asked for."""


class NoSuchStream(StreamStoreError):
    """No stream under that name."""


class CommitOnExit(ABC):
    """Something that ends in ``commit`` or ``abort``; ``with`` it commits on a clean
    exit and aborts on an exception.  Both are idempotent: once one of them has
    finished, later calls do nothing (callers may ``abort()`` in a ``finally``)."""

    @abstractmethod
    def commit(self) -> None:
        """Make the result visible under its name (only now)."""

    @abstractmethod
    def abort(self) -> None:
        """Drop everything written; nothing appears under the name."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class StreamWriter(CommitOnExit):
    """A stream being stored: ``write`` its bytes, then ``commit`` or ``abort``.

    ``name`` is what the user gave (a path, an ``s3://`` URL); ``written`` counts
    the bytes taken so far."""
    name: str
    written: int

    @abstractmethod
    def write(self, data) -> int:
        """Take the next bytes of the stream (bytes-like); returns their length."""


class StoredStream:
    """One stream as a catalog sees it (without reading it).

    A plain class, not a dataclass: this module is on the start-up path of every
    backup, and dataclasses (with inspect) would be a tenth of that start-up."""
    __match_args__ = ("name", "size", "modified")

    def __init__(self, name: str, size: int, modified: float) -> None:
        self.name = name
        self.size = size
        self.modified = modified          # Unix seconds

    def __repr__(self) -> str:
        return f"StoredStream(name={self.name!r}, size={self.size!r}, modified={self.modified!r})"

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return (self.name, self.size, self.modified) == (other.name, other.size, other.modified)

    __hash__ = None      # mutable, as the dataclass was


class StreamRef(ABC):
    """A stored stream to read: ``open()`` may be called more than once (verify reads
    the header first, then the whole stream; merge reads it twice).

    ``cheap_seek``: a seek of the opened stream costs no more than a read of a
    few bytes (a file).  Where it does not (S3: a new ranged GET), readers that
    skip short gaps read through them instead."""
    name: str
    cheap_seek: bool = True

    @abstractmethod
    def size(self) -> int:
        """The stream's length in bytes."""

    @abstractmethod
    def open(self) -> BinaryIO:
        """A new binary file object over the stream, positioned at byte 0 (seekable)."""

    def read_range(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (fewer at the end); for headers and trailers."""
        with self.open() as f:
            f.seek(offset)
            return f.read(length)

    def __str__(self) -> str:
        return self.name


# ------------------------------------------------------------------------ files
class _PartialFile(StreamWriter):
    """A stream file written as NAME.partial and renamed to NAME only on commit."""

    def __init__(self, path: str, force: bool) -> None:
        self.name = path
        if not force and os.path.exists(path):
            raise StreamExists(f"{path} exists (give --force to replace it)")
        self.tmp = path + ".partial"
        try:
            self.f = open(self.tmp, "wb")
        except OSError as e:
            raise StreamStoreError(f"{self.tmp}: {e.strerror}") from None
        self.written = 0
        self.done = False

    def write(self, data) -> int:
        n = self.f.write(data)
        self.written += n
        return n

    def fileno(self) -> int:
        return self.f.fileno()

    def flush(self) -> None:
        self.f.flush()

    def commit(self) -> None:
        if self.done:
            return
        try:
            self.f.flush()
            os.fsync(self.f.fileno())
        except BaseException:
            self.abort()
            raise
        self.f.close()
        os.replace(self.tmp, self.name)
        # The name durable too, before the caller goes on to COMMIT BACKUP: a map
        # that records the generation must never outlive its stream's name.
        d = os.open(os.path.dirname(os.path.abspath(self.name)), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(d)
        finally:
            os.close(d)
        self.done = True

    def abort(self) -> None:
        if self.done:
            return
        self.done = True
        self.f.close()
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


class FileRef(StreamRef):
    def __init__(self, path: str) -> None:
        self.name = path

    def size(self) -> int:
        return os.path.getsize(self.name)

    def open(self) -> BinaryIO:
        return open(self.name, "rb")


class FileStreams:
    """Stream files in a directory tree (the names are paths)."""

    def create(self, path: str, *, force: bool = False) -> _PartialFile:
        return _PartialFile(path, force)

    def ref(self, path: str) -> FileRef:
        if not os.path.isfile(path):
            raise NoSuchStream(f"{path}: no such stream file")
        return FileRef(path)


# ---------------------------------------------------------------------- dispatch
def is_s3_url(text: str) -> bool:
    return text.startswith("s3://")


def same_stream(a: str, b: str) -> bool:
    """Do two names denote the same stream (one path spelt two ways, or one S3 URL)?"""
    if is_s3_url(a) or is_s3_url(b):
        return a == b
    return os.path.realpath(a) == os.path.realpath(b)


def open_writer(name: str, *, force: bool = False, s3_options: dict | None = None) -> StreamWriter:
    """A writer for a path or an ``s3://BUCKET/KEY``."""
    if is_s3_url(name):
        from .s3streams import S3Streams, parse_s3_url
        bucket, key = parse_s3_url(name, want_key=True)
        return S3Streams(bucket, **(s3_options or {})).create(key, force=force)
    return FileStreams().create(name, force=force)


def open_ref(name: str, *, s3_options: dict | None = None) -> StreamRef:
    """A stored stream to read, by path or ``s3://BUCKET/KEY``; :class:`NoSuchStream` if absent."""
    if is_s3_url(name):
        from .s3streams import S3Streams, parse_s3_url
        bucket, key = parse_s3_url(name, want_key=True)
        return S3Streams(bucket, **(s3_options or {})).ref(key)
    return FileStreams().ref(name)
