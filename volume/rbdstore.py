"""A block store on a Ceph RBD image, through librbd's Python binding.

* Opening connects one RADOS client (``RbdSpec``: pool, image, ceph.conf,
  client id, keyring, timeouts), opens the image and takes its exclusive lock
  with ``lock_acquire(RBD_LOCK_MODE_EXCLUSIVE)``.  An explicitly acquired lock
  disables librbd's automatic lock transitions: another client asking for the
  lock is refused instead of being handed it, so two targets never serve one
  image at once.  The second gets :class:`StoreLockedError` naming the holder.
* Blocking calls (``readinto``, ``write``, ...) are librbd's synchronous ones;
  they release the GIL but block the calling thread, so the target calls them
  only off its event loop (the LU's worker lane, scsi_target/scsi/disk.py).
* ``submit_read``/``submit_write``/``submit_flush`` are librbd's aio calls:
  they return at once and call ``done`` from a librbd thread when the OSDs
  answered.  Every submitted operation is counted so :meth:`drain` can wait
  until none is in flight.
* librados errors become the typed store errors (volume/store.py): ETIMEDOUT
  -> StoreTimeout, ENOSPC/EDQUOT -> StoreNoSpace, EROFS (lock lost),
  ESHUTDOWN (blocklisted) -> StoreFenced, anything else -> StoreError.
  ``rados_osd_op_timeout`` and ``client_mount_timeout`` are always set (the
  spec's ``op_timeout``/``mount_timeout``), so a dead OSD turns into
  StoreTimeout rather than a command that never ends.

Others build beside the image: :attr:`RbdStore.ioctx`, :attr:`RbdStore.cluster`
and :meth:`RbdStore.object_name` place RADOS objects (``rbd_map.<image>.<kind>``)
in the image's pool.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from . import ceph_bindings
from .store import (BlockStore, StoreError, StoreFenced, StoreLockedError, StoreNoSpace,
                    StoreTimeout, byte_view)

log = logging.getLogger(__name__)

__all__ = ["RbdSpec", "RbdStore", "parse_rbd_name", "rbd_error"]

ESHUTDOWN = getattr(errno, "ESHUTDOWN", 108)   # librados' EBLOCKLISTED
DEFAULT_CLIENT = "admin"
DEFAULT_OP_TIMEOUT = 30.0
DEFAULT_MOUNT_TIMEOUT = 30.0
# GET LBA STATUS: bytes of the image examined per call when the image has no
# object map (each object is one RADOS request); the rest is reported mapped.
ALLOCATION_SCAN = 1 << 30


def create_features(rbd) -> int:
    """Features of images this store creates: the lock, and the object map that makes
    allocation queries (GET LBA STATUS) cheap."""
    return (rbd.RBD_FEATURE_LAYERING | rbd.RBD_FEATURE_EXCLUSIVE_LOCK
            | rbd.RBD_FEATURE_OBJECT_MAP | rbd.RBD_FEATURE_FAST_DIFF
            | rbd.RBD_FEATURE_DEEP_FLATTEN)


def parse_rbd_name(text: str) -> tuple[str, str]:
    """``POOL/IMAGE`` as (pool, image), or ValueError saying what is wrong."""
    pool, sep, image = text.partition("/")
    if not sep or not pool or not image:
        raise ValueError(f"{text!r} is not POOL/IMAGE")
    if "/" in image or "@" in image:
        raise ValueError(f"{text!r}: the image name may contain neither '/' nor '@' "
                         f"(namespaces and snapshots are not served)")
    for part, what in ((pool, "pool"), (image, "image")):
        if any(c.isspace() or ord(c) < 32 for c in part):
            raise ValueError(f"{text!r}: the {what} name contains white space or control "
                             f"characters")
    return pool, image


@dataclass(frozen=True)
class RbdSpec:
    """Where an RBD-backed volume lives and how to reach it."""
    pool: str
    image: str
    conf: str | None = None          # ceph.conf; None: librados' defaults (CEPH_CONF, /etc/ceph)
    client_id: str = DEFAULT_CLIENT  # the "admin" of client.admin
    keyring: str | None = None       # None: what ceph.conf says
    op_timeout: float = DEFAULT_OP_TIMEOUT      # rados_osd_op_timeout / rados_mon_op_timeout
    mount_timeout: float = DEFAULT_MOUNT_TIMEOUT  # client_mount_timeout (connecting)
    take_over: bool = False          # break a holder's locks (fencing it) instead of refusing

    @classmethod
    def parse(cls, text: str, **options) -> "RbdSpec":
        """``POOL/IMAGE`` (an ``rbd:`` prefix allowed) plus keyword options."""
        if text.startswith("rbd:"):
            text = text[4:]
        pool, image = parse_rbd_name(text)
        return cls(pool, image, **options)

    @property
    def name(self) -> str:
        return f"rbd:{self.pool}/{self.image}"

    def __str__(self) -> str:
        return self.name


def rbd_error(exc: BaseException, what: str) -> StoreError:
    """A librados/librbd exception (or a negative return code) as a typed store error."""
    if isinstance(exc, StoreError):
        return exc
    code = getattr(exc, "errno", None)
    if code is not None and code < 0:
        code = -code
    detail = f"{what}: {os.strerror(code) if code else exc}"
    if code == errno.ETIMEDOUT:
        return StoreTimeout(detail)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return StoreNoSpace(detail)
    if code in (errno.EROFS, ESHUTDOWN, errno.EBLACKLIST if hasattr(errno, "EBLACKLIST") else -1):
        return StoreFenced(detail)
    return StoreError(detail)


def _code_error(rc: int, what: str) -> StoreError:
    return rbd_error(OSError(-rc, os.strerror(-rc)), what)


class _Counter:
    """Operations in flight, with a wait for none."""
    __slots__ = ("n", "cond")

    def __init__(self) -> None:
        self.n = 0
        self.cond = threading.Condition(threading.Lock())

    def up(self) -> None:
        with self.cond:
            self.n += 1

    def down(self) -> None:
        with self.cond:
            self.n -= 1
            if self.n == 0:
                self.cond.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.n == 0, timeout)


class RbdStore(BlockStore):
    """See the module docstring.  ``lock=False`` skips the exclusive lock (read-only
    inspection tools); writable stores always lock."""

    thin = True
    asynchronous = True
    growable = True
    watches_size = True

    def __init__(self, spec: RbdSpec, read_only: bool = False, *, lock: bool = True,
                 create_size: int | None = None) -> None:
        self.spec = spec
        self.read_only = read_only
        self.rados = ceph_bindings.load("rados")
        self.rbd = ceph_bindings.load("rbd")
        self._closed = True
        self._inflight = _Counter()
        self._size_stop = threading.Event()
        # The watcher's last seen image size and the lock that keeps it in step
        # with our own resizes (grow), which it must not report.
        self._size_lock = threading.Lock()
        self._seen_size = 0
        self._size_thread: threading.Thread | None = None
        self.cluster = self._connect()
        try:
            try:
                self.ioctx = self.cluster.open_ioctx(spec.pool)
            except self.rados.Error as exc:
                raise self._open_error(exc, f"cannot open pool {spec.pool!r}") from None
            try:
                self.image = self._open_image(read_only, create_size)
            except BaseException:
                self.ioctx.close()
                raise
            try:
                self._settle(lock and not read_only)
            except BaseException:
                self.image.close()
                raise
        except BaseException:
            self.cluster.shutdown()
            raise
        self._closed = False

    # -- opening -------------------------------------------------------------
    def _connect(self):
        spec = self.spec
        conf = {"rados_osd_op_timeout": f"{spec.op_timeout:g}",
                "rados_mon_op_timeout": f"{spec.op_timeout:g}",
                "client_mount_timeout": f"{spec.mount_timeout:g}",
                # Partial discards are zeroed, not skipped: LBPRZ=1 must hold.
                "rbd_skip_partial_discard": "false"}
        if spec.keyring:
            conf["keyring"] = spec.keyring
        if spec.conf is not None and not os.path.isfile(spec.conf):
            raise StoreError(f"{spec.name}: ceph.conf {spec.conf} does not exist")
        try:
            cluster = self.rados.Rados(conffile=spec.conf or "", rados_id=spec.client_id,
                                       conf=conf)
        except self.rados.Error as exc:
            raise StoreError(f"{spec.name}: cannot read the Ceph configuration: {exc}") from None
        try:
            cluster.connect(timeout=max(1, int(spec.mount_timeout)))
        except self.rados.Error as exc:
            cluster.shutdown()
            raise self._open_error(exc, f"cannot connect to the Ceph cluster as "
                                        f"client.{spec.client_id}") from None
        return cluster

    def _open_image(self, read_only: bool, create_size: int | None):
        rbd, spec = self.rbd, self.spec
        try:
            return rbd.Image(self.ioctx, spec.image, read_only=read_only)
        except rbd.ImageNotFound:
            if not create_size or read_only:
                raise StoreError(f"{spec.name}: the image does not exist"
                                 + ("" if read_only else " (give a size to create it)")) from None
        except rbd.Error as exc:
            raise self._open_error(exc, f"cannot open image {spec.name}") from None
        try:
            rbd.RBD().create(self.ioctx, spec.image, create_size, old_format=False,
                             features=create_features(rbd))
        except rbd.ImageExists:
            pass            # created meanwhile by someone else: open theirs
        except rbd.Error as exc:
            raise self._open_error(exc, f"cannot create image {spec.name}") from None
        try:
            return rbd.Image(self.ioctx, spec.image, read_only=read_only)
        except rbd.Error as exc:
            raise self._open_error(exc, f"cannot open image {spec.name}") from None

    def _open_error(self, exc, what: str) -> StoreError:
        code = getattr(exc, "errno", None)
        msg = f"{self.spec.name}: {what}"
        if code == errno.ENOENT:
            return StoreError(f"{msg}: it does not exist")
        if code in (errno.EACCES, errno.EPERM):
            return StoreError(f"{msg}: permission denied (check client id and keyring)")
        err = rbd_error(exc, msg)
        return err

    def _settle(self, lock: bool) -> None:
        rbd, image = self.rbd, self.image
        try:
            self.size = image.size()
            self.features = image.features()
            self.image_id = image.id()
            self.fsid = self.cluster.get_fsid()
            self.object_size = image.stat()["obj_size"]
        except rbd.Error as exc:
            raise rbd_error(exc, f"{self.spec.name}: cannot read the image header") from None
        if self.size == 0:
            raise StoreError(f"{self.spec.name}: the image is empty (size 0)")
        if not lock:
            return
        if not self.features & rbd.RBD_FEATURE_EXCLUSIVE_LOCK:
            raise StoreError(f"{self.spec.name}: the image lacks the exclusive-lock feature, "
                             f"so another target could serve it too (enable it: rbd feature "
                             f"enable {self.spec.pool}/{self.spec.image} exclusive-lock)")
        if self.spec.take_over:
            # Before asking: lock_acquire would wait (about 30 s) for a dead holder's
            # watch to time out.
            self._take_over()
            return
        try:
            image.lock_acquire(rbd.RBD_LOCK_MODE_EXCLUSIVE)
        except (rbd.ReadOnlyImage, rbd.ImageBusy):
            raise StoreLockedError(f"{self.spec.name} is already served by another client "
                                   f"(exclusive lock held by {self._holder()})") from None
        except rbd.Error as exc:
            raise rbd_error(exc, f"{self.spec.name}: cannot take the exclusive lock") from None

    def _take_over(self, attempts: int = 20) -> None:
        """Break the exclusive lock of whoever holds it -- librbd blocklists that client
        (rbd_blocklist_on_break_lock), so a stalled holder that wakes up is fenced --
        and take it.  Retried briefly: the holder's release may still be settling."""
        rbd, image, name = self.rbd, self.image, self.spec.name
        broken: list[str] = []
        for attempt in range(attempts):
            try:
                for owner in image.lock_get_owners():
                    who = owner.get("owner", "?")
                    image.lock_break(rbd.RBD_LOCK_MODE_EXCLUSIVE, who)
                    broken.append(who)
                image.lock_acquire(rbd.RBD_LOCK_MODE_EXCLUSIVE)
                break
            except (rbd.ReadOnlyImage, rbd.ImageBusy, rbd.ImageNotFound):
                time.sleep(0.25)
            except rbd.Error as exc:
                raise rbd_error(exc, f"{name}: cannot take the exclusive lock over") from None
        else:
            raise StoreLockedError(f"{name}: could not take the exclusive lock over from "
                                   f"{self._holder()} in {attempts} attempts")
        if broken:
            log.warning("%s: took the exclusive lock over from %s (blocklisted)", name,
                        ", ".join(broken))

    def _holder(self) -> str:
        try:
            owners = [o.get("owner", "?") for o in self.image.lock_get_owners()]
        except Exception:   # the refusal matters, not who
            owners = []
        return ", ".join(owners) or "another client"

    # -- what others build on -----------------------------------------------
    @property
    def volume_id(self) -> bytes:
        """16 bytes unique to this image in this cluster, the same from every host."""
        return hashlib.sha256(f"rbd\0{self.fsid}\0{self.spec.pool}\0{self.image_id}".encode()
                              ).digest()[:16]

    def object_name(self, kind: str) -> str:
        """Name of a RADOS object beside the image in its pool: ``rbd_map.<image>.<kind>``."""
        return f"rbd_map.{self.spec.image}.{kind}"

    @property
    def lock_owner(self) -> bool:
        try:
            return bool(self.image.is_exclusive_lock_owner())
        except self.rbd.Error:
            return False

    # -- synchronous I/O (off the event loop only) ---------------------------
    def _check(self, offset: int, length: int, write: bool = False) -> None:
        if self._closed:
            raise StoreError(f"{self.spec.name} is closed")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise StoreError(f"range {offset}+{length} outside {self.spec.name} "
                             f"({self.size} bytes)")
        if write and self.read_only:
            raise StoreError(f"{self.spec.name} is open read-only")

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        if not length:
            return b""
        try:
            data = self.image.read(offset, length)
        except self.rbd.Error as exc:
            raise rbd_error(exc, f"read of {length} bytes at {offset} from {self.spec.name}"
                            ) from None
        if len(data) < length:          # never past the image's end, but be exact
            data += bytes(length - len(data))
        return data

    def readinto(self, offset: int, buf: memoryview) -> None:
        buf = byte_view(buf)
        buf[:] = self.read(offset, len(buf))

    def write(self, offset: int, data) -> None:
        payload = data if type(data) is bytes else bytes(byte_view(data))  # the binding's rule
        n = len(payload)
        self._check(offset, n, write=True)
        if not n:
            return
        try:
            done = self.image.write(payload, offset)
        except self.rbd.Error as exc:
            raise rbd_error(exc, f"write of {n} bytes at {offset} to {self.spec.name}") from None
        if done != n:
            raise StoreError(f"write of {n} bytes at {offset} to {self.spec.name}: only {done} "
                             f"written")

    def write_zeroes(self, offset: int, length: int) -> None:
        self._check(offset, length, write=True)
        if length:
            self._call(self.image.write_zeroes, f"zeroing {length} bytes at {offset}",
                       offset, length)

    def discard(self, offset: int, length: int) -> None:
        self._check(offset, length, write=True)
        if length:
            self._call(self.image.discard, f"discard of {length} bytes at {offset}",
                       offset, length)

    def flush(self) -> None:
        if self._closed or self.read_only:
            return
        self._call(self.image.flush, "flush")

    def _call(self, fn, what: str, *args):
        try:
            return fn(*args)
        except self.rbd.Error as exc:
            raise rbd_error(exc, f"{what} of {self.spec.name}") from None

    def allocation(self, offset: int, length: int) -> Iterator[tuple[int, int, bool]]:
        """Allocated extents from librbd's diff against nothing (object-map
        assisted when the image has fast-diff); at most ALLOCATION_SCAN bytes are
        examined without one, the rest is reported mapped (false "mapped" is safe)."""
        self._check(offset, length)
        whole_object = bool(self.features & self.rbd.RBD_FEATURE_FAST_DIFF)
        span = length if whole_object else min(length, ALLOCATION_SCAN)
        extents: list[tuple[int, int]] = []

        def seen(off: int, ln: int, exists: bool) -> int:
            if exists:
                extents.append((off, ln))
            return 0
        if span:
            try:
                self.image.diff_iterate(offset, span, None, seen, include_parent=True,
                                        whole_object=whole_object)
            except self.rbd.Error as exc:
                raise rbd_error(exc, f"allocation of {self.spec.name}") from None
        pos, end = offset, offset + span
        for off, ln in sorted(extents):
            off, stop = max(off, pos), min(off + ln, end)
            if stop <= off:
                continue
            if off > pos:
                yield pos, off - pos, False
            yield off, stop - off, True
            pos = stop
        if pos < end:
            yield pos, end - pos, False
        if span < length:
            yield offset + span, length - span, True

    # -- asynchronous I/O (callbacks on a librbd thread) -----------------------
    def submit_read(self, offset: int, length: int,
                    done: Callable[[bytes | None, StoreError | None], None]) -> None:
        """Read ``length`` bytes at ``offset``; ``done(data, None)`` or ``done(None, error)``."""
        self._check(offset, length)
        name = self.spec.name
        counter = self._inflight

        def complete(comp, data) -> None:
            rc = comp.get_return_value()
            counter.down()
            if rc < 0:
                done(None, _code_error(rc, f"read of {length} bytes at {offset} from {name}"))
            elif len(data) < length:
                done(bytes(data) + bytes(length - len(data)), None)
            else:
                done(data, None)
        self._submit(self.image.aio_read, complete, f"read at {offset}", offset, length)

    def submit_write(self, offset: int, data, done: Callable[[StoreError | None], None],
                     fua: bool = False) -> None:
        """Write ``data`` at ``offset`` (then flush when ``fua``); ``done(error or None)``.
        The store keeps ``data`` until done: callers must not reuse its memory."""
        payload = _payload(data)
        n = len(payload)
        self._check(offset, n, write=True)
        name = self.spec.name
        counter = self._inflight

        def flushed(comp) -> None:
            rc = comp.get_return_value()
            counter.down()
            done(_code_error(rc, f"flush of {name}") if rc < 0 else None)

        def complete(comp) -> None:
            rc = comp.get_return_value()
            if rc < 0:
                counter.down()
                done(_code_error(rc, f"write of {n} bytes at {offset} to {name}"))
                return
            if fua:
                try:
                    self.image.aio_flush(flushed)   # the counter stays up for the flush
                    return
                except self.rbd.Error as exc:
                    counter.down()
                    done(rbd_error(exc, f"flush of {name}"))
                    return
            counter.down()
            done(None)
        self._submit(self.image.aio_write, complete, f"write at {offset}", payload, offset)

    def submit_flush(self, done: Callable[[StoreError | None], None]) -> None:
        counter = self._inflight
        name = self.spec.name

        def complete(comp) -> None:
            rc = comp.get_return_value()
            counter.down()
            done(_code_error(rc, f"flush of {name}") if rc < 0 else None)
        if self._closed:
            raise StoreError(f"{name} is closed")
        self._submit(self.image.aio_flush, complete, "flush")

    def _submit(self, fn, complete, what: str, *args) -> None:
        self._inflight.up()
        try:
            fn(*args, complete)
        except self.rbd.Error as exc:
            self._inflight.down()
            raise rbd_error(exc, f"{what} of {self.spec.name}") from None
        except BaseException:
            self._inflight.down()
            raise

    @property
    def inflight(self) -> int:
        return self._inflight.n

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until no submitted operation is in flight; False on timeout."""
        return self._inflight.wait_idle(timeout)

    # -- resizes ----------------------------------------------------------------
    def grow(self, size: int) -> None:
        """Serve ``size`` bytes (more than now): the image is resized through librbd
        (``image.resize``, never shrinking) unless it is that large already (an
        ``rbd resize`` the watcher saw).  The image's new bytes read as zeroes.
        A refusal (lock lost or blocklisted: StoreFenced; a full pool or quota:
        StoreNoSpace; anything else: StoreError) leaves ``size`` as it was."""
        name = self.spec.name
        if self._closed:
            raise StoreError(f"{name} is closed")
        if self.read_only:
            raise StoreError(f"{name} is open read-only: it cannot grow")
        if size <= self.size:
            return
        with self._size_lock:
            current = self._call(self.image.size, "size query")
            if current < size:
                try:
                    self.image.resize(size, allow_shrink=False)
                except self.rbd.Error as exc:
                    raise rbd_error(exc, f"resize of {name} from {current} to {size} bytes"
                                    ) from None
                log.info("%s resized from %d to %d bytes", name, current, size)
            # Our own resize is not news to the watcher.
            self._seen_size = max(self._seen_size, size)
            self.size = size

    def watch_size(self, changed: Callable[[int], None], interval: float = 2.0) -> None:
        """Call ``changed(new_size)`` from a watcher thread when the image's size changes
        (``rbd resize``; not the store's own :meth:`grow`).  ``size`` itself is left
        alone: the caller adopts the new size when it is ready to (the disk LU does,
        between commands)."""
        if self._size_thread is not None:
            raise StoreError(f"{self.spec.name}: its size is watched already")
        self._seen_size = self.size

        def run() -> None:
            while not self._size_stop.wait(interval):
                with self._size_lock:
                    try:
                        # librbd refreshes the header when its watch saw a resize notice.
                        now = self.image.size()
                    except self.rbd.Error:
                        continue
                    if now == self._seen_size:
                        continue
                    self._seen_size = now
                changed(now)
        self._size_thread = threading.Thread(target=run, daemon=True,
                                             name=f"rbd-size-{self.spec.image}")
        self._size_thread.start()

    # -- closing ----------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._size_stop.set()
        if self._size_thread is not None and self._size_thread is not threading.current_thread():
            self._size_thread.join()
        # librbd completes what was submitted; wait for it (bounded by the op timeout).
        self.drain(self.spec.op_timeout + 5)
        try:
            if not self.read_only:
                try:
                    self.image.flush()
                except self.rbd.Error:
                    pass          # the image is closed anyway; its lock goes with it
            self.image.close()
        finally:
            try:
                self.ioctx.close()
            finally:
                self.cluster.shutdown()


def _payload(data):
    """``data`` as what librbd's binding takes (bytes or bytearray), copying only views
    that are not a whole bytearray/bytes object."""
    if isinstance(data, (bytes, bytearray)):
        return data
    mv = byte_view(data)
    obj = mv.obj
    if isinstance(obj, (bytes, bytearray)) and len(obj) == mv.nbytes and mv.contiguous:
        return obj
    return bytes(mv)
