"""A generation map held in RADOS objects beside an RBD image, so it outlives its host.

Objects (docs/genmap-format.md, "In RADOS"), for a base name ``B`` (for an RBD
image ``rbd_map.<image>``, volume/rbdstore.py ``object_name``):

* ``B.genmap.journal`` -- the write-intent journal: exactly the bytes of the
  ``.dirty`` file.  Its omap holds the fencing epoch (``epoch``), the holder
  (``owner``), the pointer to the current map object (``map``) and the volume
  sidecar (``sidecar``), so one guarded write op changes any of them
  atomically with journal bytes.  The RADOS lock ``pyscsi-genmap`` on it says
  who may write.
* ``B.genmap.map.<epoch>.<n>`` -- one version of the map: exactly the bytes of
  the map file.  A new version is written under a new name and becomes the map
  when the pointer moves to it; the old one is then removed.

Barrier: the journal lives in this process; ``flush`` and ``flush_extents``
write the changed byte ranges with one write op (several extents, atomic on
the object) and return once the OSDs have it.  A mark is acknowledged only
after that (volume/durability.py).

Fencing: the opener takes the lock ``pyscsi-genmap`` (exclusive, with a cookie
and a duration, renewed at a quarter of it), raises ``epoch`` by one and from
then on guards every write op with ``omap_cmp(epoch == its epoch)``.  A holder
that stopped (kill -9, SIGSTOP, a lost network) loses the lock when it is not
renewed; the next opener takes it, blocklists the old holder's client address
(the whole client: its RBD writes too when the map shares the RBD store's
client) and raises the epoch, so every later op of the old holder fails
(ECANCELED, or ESHUTDOWN when blocklisted): :class:`MapFenced`.  A holder whose
lease may have lapsed (no successful renewal for 3/4 of the duration) refuses
marks before they reach the data.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import struct
import threading
import time
import uuid

import crc32c

from .genmap import MapBusy, MapCorrupt, MapError
from .mapstorage import MapStorage
from .store import StoreFenced, StoreNoSpace, StoreTimeout

log = logging.getLogger(__name__)

__all__ = ["RadosMapStorage", "MapFenced", "MapTimeout", "MapNoSpace", "LOCK_NAME", "DEFAULT_LOCK_DURATION",
           "journal_object", "POINTER_FORMAT", "OWNER_FORMAT", "pointer_record", "parse_pointer"]

LOCK_NAME = "pyscsi-genmap"
DEFAULT_LOCK_DURATION = 20.0
POINTER_FORMAT = "pyscsi-genmap-pointer"
OWNER_FORMAT = "pyscsi-genmap-owner"
_EPOCH_DIGITS = 20          # omap_cmp compares strings: fixed width keeps them ordered
_IO_CHUNK = 8 << 20         # below osd_max_write_size (90 MiB) and message limits
# A growth replaces the journal in one write op: below osd_max_write_size (90 MiB);
# the journal of a 1 TiB volume at 4 KiB blocks is 64 MiB.
MAX_JOURNAL_OP = 80 << 20
# Whole-object records beside the map, each a versioned object named by a pointer
# in the journal's omap (so a fenced holder cannot move it): the audit's block CRC
# table (volume/blockcrc.py).
_BLOBS = ("blockcrc",)
_LOCK_RENEW = 1             # LIBRADOS_LOCK_FLAG_MAY_RENEW
ESHUTDOWN = getattr(errno, "ESHUTDOWN", 108)


class MapFenced(MapError, StoreFenced):
    """Another target took the map over (or this one's lease lapsed): nothing more
    may be written by this process."""


class MapTimeout(MapError, StoreTimeout):
    """The cluster did not take a map write in time (the write is not acknowledged)."""


class MapNoSpace(MapError, StoreNoSpace):
    """The pool has no space (or quota) left for a map write."""


def journal_object(base: str) -> str:
    return f"{base}.genmap.journal"


def _epoch_text(n: int) -> str:
    return f"{n:0{_EPOCH_DIGITS}d}"


class RadosMapStorage(MapStorage):
    """The map and journal of base name ``base`` in the pool of ``ioctx``.

    ``cluster`` is the ``rados.Rados`` client of ``ioctx`` (for blocklisting
    and for this client's address); both stay the caller's.  ``lock_duration``
    (seconds) bounds how long a dead holder keeps others out;
    ``takeover_timeout`` how long opening waits for a held lock (default: two
    durations and 5 s, since the OSD frees an expired lock late).  ``blocklist``:
    fence the previous holder's client at the OSDs when taking over from a holder
    that did not close.
    ``take_over``: do not wait for a held lock to lapse -- fence its holder
    (blocklist) and break the lock at once; for an operator or failover manager
    that knows the holder is dead or must be stopped.
    """
    volatile_fine = True

    def __init__(self, cluster, ioctx, base: str, *, lock_duration: float = DEFAULT_LOCK_DURATION,
                 takeover_timeout: float | None = None, blocklist: bool = True,
                 take_over: bool = False) -> None:
        from . import ceph_bindings
        self.rados = ceph_bindings.load("rados")
        if lock_duration < 2:
            raise ValueError(f"lock duration {lock_duration} s is too short (at least 2 s)")
        self.cluster = cluster
        self.ioctx = ioctx
        self.base = base
        pool = ioctx.get_pool_name()
        self.pool = pool
        self.name = f"rados:{pool}/{base}.genmap"
        self.jobj = journal_object(base)
        self.journal_name = f"rados:{pool}/{self.jobj}"
        self.lock_duration = float(lock_duration)
        # Measured on the test cluster: a lock of 3 s was free only 4.9 s after its last
        # renewal, and up to 7.3 s after its holder was stopped (the OSD's expiry lags):
        # wait two durations and a margin before calling a holder alive.
        self.takeover_timeout = (lock_duration * 2 + 5 if takeover_timeout is None
                                 else float(takeover_timeout))
        self.blocklist = blocklist
        self.take_over = take_over
        self.cookie = uuid.uuid4().hex
        self.epoch = 0
        self.took_over_from: dict | None = None   # the owner record found at takeover
        self._buf: bytearray | None = None
        self._held = False
        self._fenced: str | None = None
        self._renewed = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._version = 0

    # -- ownership ------------------------------------------------------------
    def _acquire(self) -> None:
        if self._held:
            return
        r = self.rados
        deadline = time.monotonic() + self.takeover_timeout
        broken = False
        while True:
            try:
                self.ioctx.lock_exclusive(self.jobj, LOCK_NAME, self.cookie,
                                          desc=f"pyscsi target {socket.gethostname()} "
                                               f"pid {os.getpid()}",
                                          duration=int(self.lock_duration + 0.999))
                break
            except (r.ObjectBusy, r.ObjectExists):
                if self.take_over and not broken:
                    broken = self._break_holder()
                    if broken:
                        continue
                if time.monotonic() >= deadline:
                    owner = self._omap().get("owner")
                    who = _owner_text(owner)
                    raise MapBusy(f"{self.name} is held by {who} (another target serves this "
                                  f"volume; its lock lapses {self.lock_duration:g} s after "
                                  f"it stops)") from None
                time.sleep(min(0.5, self.lock_duration / 8))
            except r.Error as exc:
                raise MapError(f"{self.name}: cannot take the lock: {exc}") from None
        self._renewed = time.monotonic()
        self._held = True
        try:
            vals = self._omap()
            epoch = int(vals.get("epoch", b"0") or b"0")
            owner = vals.get("owner")
            mine = self._addrs()
            if owner is not None:
                self.took_over_from = _parse_owner(owner)
                addr = (self.took_over_from or {}).get("addr")
                if self.blocklist and addr and addr not in mine:
                    try:
                        self.cluster.blocklist_add(addr, int(self.lock_duration * 30))
                    except r.Error:
                        pass        # the epoch guard fences it anyway
            self.epoch = epoch + 1
            record = json.dumps({"format": OWNER_FORMAT, "version": 1, "cookie": self.cookie,
                                 "addr": mine.split(",")[0] if mine else "",
                                 "client": self._client_name(),
                                 "host": socket.gethostname(), "pid": os.getpid(),
                                 "epoch": self.epoch, "since": int(time.time())},
                                sort_keys=True).encode()
            with r.WriteOpCtx() as op:
                if "epoch" in vals:
                    op.omap_cmp("epoch", _epoch_text(epoch), r.LIBRADOS_CMPXATTR_OP_EQ)
                self.ioctx.set_omap(op, ("epoch", "owner"), (_epoch_text(self.epoch).encode(),
                                                             record))
                self.ioctx.operate_write_op(op, self.jobj)
        except BaseException:
            self._unlock()
            raise
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name=f"renew {self.jobj}",
                                         daemon=True)
        self._renewer.start()

    def _client_name(self) -> str:
        try:
            return f"client.{int(self.cluster.get_instance_id())}"
        except Exception:
            return ""

    def _break_holder(self) -> bool:
        """Fence the lock's holder (its address blocklisted) and break its lock, from
        the owner record it left; False when the record does not say enough to."""
        r = self.rados
        owner = _parse_owner(self._omap().get("owner") or b"")
        client, cookie = (owner or {}).get("client"), (owner or {}).get("cookie")
        if not client or not cookie or not client.startswith("client."):
            log.warning("%s: cannot take over at once: the holder's record names no client "
                        "(waiting for its lock to lapse)", self.name)
            return False
        addr = owner.get("addr")
        try:
            if addr and addr not in self._addrs():
                self.cluster.blocklist_add(addr, int(self.lock_duration * 30))
            self.ioctx.execute(self.jobj, "lock", "break_lock",
                               _break_lock_op(LOCK_NAME, int(client[7:]), cookie))
        except r.ObjectNotFound:
            pass                      # released meanwhile
        except (r.Error, ValueError) as exc:
            log.warning("%s: breaking the lock of %s failed (%s); waiting for it to lapse",
                        self.name, _owner_text(self._omap().get("owner")), exc)
            return False
        log.warning("%s: took the lock over from %s (fenced: %s)", self.name,
                    _owner_text(json.dumps(owner).encode()), addr or "?")
        return True

    def _addrs(self) -> str:
        try:
            a = self.cluster.get_addrs()
        except Exception:
            return ""
        return a if isinstance(a, str) else ",".join(map(str, a))

    def _renew_loop(self) -> None:
        r = self.rados
        period = self.lock_duration / 4
        while not self._stop.wait(period):
            started = time.monotonic()
            try:
                self.ioctx.lock_exclusive(self.jobj, LOCK_NAME, self.cookie,
                                          duration=int(self.lock_duration + 0.999),
                                          flags=_LOCK_RENEW)
                with r.ReadOpCtx() as op:
                    it, _ = self.ioctx.get_omap_vals_by_keys(op, ("epoch",))
                    self.ioctx.operate_read_op(op, self.jobj)
                    epoch = dict(it).get("epoch")
                if epoch != _epoch_text(self.epoch).encode():
                    self._fence(f"another target took the map over (epoch {epoch!r})")
                    return
                self._renewed = started
            except (r.ObjectBusy, r.ObjectExists):
                self._fence("the lock was taken by another target")
                return
            except r.Error as exc:
                if getattr(exc, "errno", None) in (ESHUTDOWN, -ESHUTDOWN):
                    self._fence("this client was blocklisted by another target")
                    return
                # transient (a monitor or OSD away): the lease check refuses
                # marks once the last good renewal is too old

    def _fence(self, why: str) -> None:
        self._fenced = why

    def check_writable(self) -> None:
        if self._fenced is not None:
            raise MapFenced(f"{self.name}: {self._fenced}; this target may no longer change it")
        if self._held and time.monotonic() - self._renewed > self.lock_duration * 0.75:
            raise MapFenced(f"{self.name}: the lock was not renewed for "
                            f"{time.monotonic() - self._renewed:.1f} s (lease of "
                            f"{self.lock_duration:g} s); refusing writes until it is")

    def _unlock(self) -> None:
        self._stop.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join(timeout=5)
        self._renewer = None
        if self._held:
            try:
                self.ioctx.unlock(self.jobj, LOCK_NAME, self.cookie)
            except self.rados.Error:
                pass
        self._held = False

    # -- RADOS helpers ----------------------------------------------------------
    def _omap(self) -> dict:
        r = self.rados
        try:
            with r.ReadOpCtx() as op:
                it, _ = self.ioctx.get_omap_vals_by_keys(op, ("epoch", "owner", "map", "sidecar",
                                                              *_BLOBS))
                self.ioctx.operate_read_op(op, self.jobj)
                return dict(it)
        except r.ObjectNotFound:
            return {}
        except r.Error as exc:
            raise MapError(f"{self.journal_name}: cannot read its records: {exc}") from None

    def _guarded(self, build, what: str) -> None:
        """One write op on the journal object, valid only while our epoch stands."""
        r = self.rados
        self.check_writable()
        try:
            with r.WriteOpCtx() as op:
                op.omap_cmp("epoch", _epoch_text(self.epoch), r.LIBRADOS_CMPXATTR_OP_EQ)
                build(op)
                self.ioctx.operate_write_op(op, self.jobj)
        except r.Error as exc:
            code = abs(getattr(exc, "errno", 0) or 0)
            if code not in (errno.ECANCELED, ESHUTDOWN) and \
                    isinstance(exc, getattr(r, "ConnectionShutdown", ())):
                code = ESHUTDOWN
            if not code and isinstance(exc, getattr(r, "TimedOut", ())):
                code = errno.ETIMEDOUT
            err = self._op_error(code, what)
            if type(err) is MapError:
                err = MapError(f"{self.name}: {what} failed: {exc}")
            raise err from None

    def _read_object(self, obj: str, length: int) -> bytes:
        parts = []
        off = 0
        while off < length:
            chunk = self.ioctx.read(obj, min(_IO_CHUNK, length - off), off)
            if not chunk:
                break
            parts.append(chunk)
            off += len(chunk)
        return b"".join(parts)

    # -- MapStorage -------------------------------------------------------------
    def existing(self) -> str | None:
        self._acquire()
        vals = self._omap()
        if "map" in vals:
            return self.name
        try:
            size, _ = self.ioctx.stat(self.jobj)
        except self.rados.ObjectNotFound:
            return None
        return self.journal_name if size else None

    def _pointer(self) -> dict | None:
        raw = self._omap().get("map")
        if raw is None:
            return None
        return parse_pointer(raw, self.journal_name)

    def read_map(self) -> bytes:
        self._acquire()
        ptr = self._pointer()
        if ptr is None:
            raise MapError(f"no generation map at {self.name}")
        try:
            raw = self._read_object(ptr["object"], ptr["length"])
        except self.rados.ObjectNotFound:
            raise MapCorrupt(f"{self.name}: the map object {ptr['object']} the pointer names "
                             f"is missing") from None
        except self.rados.Error as exc:
            raise MapError(f"cannot read generation map {self.name}: {exc}") from None
        if len(raw) != ptr["length"] or crc32c.crc32c(raw) != ptr["crc32c"]:
            raise MapCorrupt(f"{self.name}: map object {ptr['object']} does not match its "
                             f"pointer ({len(raw)} bytes)")
        m = ptr["object"].rsplit(".", 2)
        if len(m) == 3 and m[1].isdigit() and m[2].isdigit() and int(m[1]) == self.epoch:
            self._version = max(self._version, int(m[2]))
        return raw

    def write_map(self, chunks: list, sync: bool) -> None:
        self._acquire()
        self.check_writable()
        data = b"".join(bytes(c) if not isinstance(c, bytes) else c for c in chunks)
        self._move_to_version(data, lambda op, ptr: self.ioctx.set_omap(op, ("map",), (ptr,)),
                              "map update")

    def _move_to_version(self, data: bytes, build, what: str, *, hold_journal: bool = False
                         ) -> None:
        """Write ``data`` as a new map version, then run one guarded write op built by
        ``build(op, pointer)`` that names it (with ``hold_journal``: no journal flush
        meanwhile); the new version goes if the op fails, the old one once it
        succeeded (a leftover is harmless: nothing names it)."""
        old = self._pointer()
        obj = self._write_version(data)
        ptr = pointer_record(obj, data)
        try:
            if hold_journal:
                with self._lock:
                    self._guarded(lambda op: build(op, ptr), what)
            else:
                self._guarded(lambda op: build(op, ptr), what)
        except MapError:
            try:
                self.ioctx.remove_object(obj)
            except self.rados.Error:
                pass
            raise
        if old is not None and old["object"] != obj:
            try:
                self.ioctx.remove_object(old["object"])
            except self.rados.Error:
                pass

    def create_journal(self, size: int, header: bytes, sync: bool) -> None:
        self._acquire()
        first = bytearray(min(size, _IO_CHUNK))
        first[:len(header)] = header
        self._guarded(lambda op: op.write_full(bytes(first)), "journal creation")
        off = len(first)
        while off < size:
            n = min(_IO_CHUNK, size - off)
            self._guarded(lambda op, n=n, off=off: op.write(bytes(n), off), "journal creation")
            off += n

    def open_journal(self, size: int):
        self._acquire()
        try:
            have, _ = self.ioctx.stat(self.jobj)
        except self.rados.ObjectNotFound:
            have = 0
        if have == 0:
            raise MapCorrupt(f"write-intent journal {self.journal_name} is missing")
        if have != size:
            raise MapCorrupt(f"{self.journal_name}: {have} bytes, expected {size}")
        buf = bytearray(self._read_object(self.jobj, size))
        if len(buf) != size:
            raise MapCorrupt(f"{self.journal_name}: read {len(buf)} of {size} bytes")
        self._buf = buf
        return buf

    def flush(self, offset: int, length: int) -> None:
        self.flush_extents([(offset, length)])

    def flush_extents(self, extents: list[tuple[int, int]]) -> None:
        buf = self._buf
        if buf is None or not extents:
            return
        size = len(buf)
        pieces = [(off, bytes(buf[off:min(off + n, size)])) for off, n in extents if off < size]

        def build(op) -> None:
            for off, data in pieces:
                op.write(data, off)
        with self._lock:
            self._guarded(build, "journal write")

    def flush_extents_async(self, extents: list[tuple[int, int]], done) -> None:
        r = self.rados
        buf = self._buf
        if buf is None:
            raise MapError(f"{self.name} is closed")
        self.check_writable()
        size = len(buf)
        op = self.ioctx.create_write_op()
        try:
            op.omap_cmp("epoch", _epoch_text(self.epoch), r.LIBRADOS_CMPXATTR_OP_EQ)
            for off, n in extents:
                if off < size:
                    op.write(bytes(buf[off:min(off + n, size)]), off)
        except BaseException:
            self.ioctx.release_write_op(op)
            raise

        def complete(comp) -> None:
            rc = comp.get_return_value()
            self.ioctx.release_write_op(op)
            done(None if rc >= 0 else self._op_error(-rc, "journal write"))
        try:
            self.ioctx.operate_aio_write_op(op, self.jobj, oncomplete=complete)
        except r.Error as exc:
            self.ioctx.release_write_op(op)
            raise self._op_error(abs(getattr(exc, "errno", 0) or 0), "journal write") from None

    def peek_journal(self, length: int) -> bytes:
        self._acquire()
        try:
            return self.ioctx.read(self.jobj, length, 0)
        except self.rados.Error:
            return b""

    def replace(self, journal: bytes, map_chunks: list, sync: bool):
        """A growth: the new map version is written under a new name, then one guarded
        write op replaces the journal's bytes and moves the map pointer together."""
        self._acquire()
        self.check_writable()
        if len(journal) > MAX_JOURNAL_OP:
            raise MapError(f"{self.name}: a journal of {len(journal)} bytes does not fit one "
                           f"write op ({MAX_JOURNAL_OP} bytes): track this volume at a coarser "
                           f"granularity")
        data = b"".join(bytes(c) if not isinstance(c, bytes) else c for c in map_chunks)

        def build(op, ptr) -> None:
            op.write_full(journal)
            self.ioctx.set_omap(op, ("map",), (ptr,))
        self._move_to_version(data, build, "growth", hold_journal=True)
        self._buf = bytearray(journal)
        return self._buf

    def _write_version(self, data: bytes) -> str:
        """A new, not yet named, map version object holding ``data``."""
        self._version += 1
        obj = f"{self.base}.genmap.map.{self.epoch}.{self._version}"
        try:
            for off in range(0, max(len(data), 1), _IO_CHUNK):
                piece = data[off:off + _IO_CHUNK]
                if off == 0:
                    self.ioctx.write_full(obj, piece)
                else:
                    self.ioctx.write(obj, piece, off)
        except self.rados.Error as exc:
            raise MapError(f"{self.name}: cannot write map object {obj} ({len(data)} bytes): "
                           f"{exc}") from None
        return obj

    def _op_error(self, code: int, what: str) -> MapError:
        if code == errno.ECANCELED:
            self._fence("another target took the map over (its epoch is newer)")
            return MapFenced(f"{self.name}: {what} refused: another target took the map over")
        if code == ESHUTDOWN:
            self._fence("this client was blocklisted by another target")
            return MapFenced(f"{self.name}: {what} refused: this client was blocklisted by "
                             f"another target")
        detail = f"{self.name}: {what} failed: {os.strerror(code) if code else '?'}"
        if code == errno.ETIMEDOUT:
            return MapTimeout(detail)
        if code in (errno.ENOSPC, errno.EDQUOT):
            return MapNoSpace(detail)
        return MapError(detail)

    # -- the sidecar ------------------------------------------------------------
    def read_sidecar(self) -> bytes | None:
        self._acquire()
        return self._omap().get("sidecar")

    def write_sidecar(self, data: bytes) -> None:
        self._acquire()
        self._guarded(lambda op: self.ioctx.set_omap(op, ("sidecar",), (bytes(data),)),
                      "sidecar update")

    # -- records beside the map (the block CRC table) ----------------------------
    def read_blob(self, kind: str) -> bytes | None:
        """The record ``kind`` (None: there is none); MapCorrupt if its object does
        not match its pointer."""
        self._check_blob(kind)
        self._acquire()
        raw = self._omap().get(kind)
        if raw is None:
            return None
        ptr = parse_pointer(raw, f"{self.journal_name} (omap key {kind})")
        try:
            data = self._read_object(ptr["object"], ptr["length"])
        except self.rados.ObjectNotFound:
            raise MapCorrupt(f"{self.name}: the {kind} object {ptr['object']} is missing") \
                from None
        except self.rados.Error as exc:
            raise MapError(f"{self.name}: cannot read {ptr['object']}: {exc}") from None
        if len(data) != ptr["length"] or crc32c.crc32c(data) != ptr["crc32c"]:
            raise MapCorrupt(f"{self.name}: {kind} object {ptr['object']} does not match its "
                             f"pointer ({len(data)} bytes)")
        return data

    def write_blob(self, kind: str, data: bytes) -> None:
        """Replace record ``kind``: a new object, then the guarded pointer move (a
        fenced holder's move fails and its object is removed)."""
        self._check_blob(kind)
        self._acquire()
        self.check_writable()
        raw = self._omap().get(kind)
        old = parse_pointer(raw, kind)["object"] if raw is not None else None
        self._version += 1
        obj = f"{self.base}.genmap.{kind}.{self.epoch}.{self._version}"
        try:
            for off in range(0, max(len(data), 1), _IO_CHUNK):
                if off == 0:
                    self.ioctx.write_full(obj, bytes(data[:_IO_CHUNK]))
                else:
                    self.ioctx.write(obj, bytes(data[off:off + _IO_CHUNK]), off)
        except self.rados.Error as exc:
            raise MapError(f"{self.name}: cannot write {obj} ({len(data)} bytes): {exc}") \
                from None
        ptr = pointer_record(obj, data)
        try:
            self._guarded(lambda op: self.ioctx.set_omap(op, (kind,), (ptr,)), f"{kind} update")
        except MapError:
            self._remove_quietly(obj)
            raise
        if old is not None and old != obj:
            self._remove_quietly(old)

    def remove_blob(self, kind: str) -> None:
        self._check_blob(kind)
        self._acquire()
        raw = self._omap().get(kind)
        if raw is None:
            return
        self._guarded(lambda op: self.ioctx.remove_omap_keys(op, (kind,)), f"{kind} removal")
        try:
            self._remove_quietly(parse_pointer(raw, kind)["object"])
        except MapCorrupt:
            pass

    @staticmethod
    def _check_blob(kind: str) -> None:
        if kind not in _BLOBS:
            raise ValueError(f"no record {kind!r} beside a map (known: {', '.join(_BLOBS)})")

    def _remove_quietly(self, obj: str) -> None:
        try:
            self.ioctx.remove_object(obj)
        except self.rados.Error:
            pass

    def remove(self) -> None:
        """Delete the map, its journal and records (tracking starts afresh next time)."""
        self._acquire()
        ptr = None
        try:
            ptr = self._pointer()
        except MapCorrupt:
            pass

        blobs = []
        for kind, raw in self._omap().items():
            if kind in _BLOBS:
                try:
                    blobs.append(parse_pointer(raw, kind)["object"])
                except MapCorrupt:
                    pass

        def build(op) -> None:
            self.ioctx.remove_omap_keys(op, ("map", "sidecar", *_BLOBS))
            op.truncate(0)
        self._guarded(build, "removal")
        if ptr is not None:
            blobs.append(ptr["object"])
        for obj in blobs:
            self._remove_quietly(obj)

    def close(self) -> None:
        """Give the map up cleanly: the owner record goes (no blocklisting next time)."""
        self._buf = None
        if self._held and self._fenced is None:
            try:
                self._guarded(lambda op: self.ioctx.remove_omap_keys(op, ("owner",)), "close")
            except MapError:
                pass
        self._unlock()


def pointer_record(obj: str, data) -> bytes:
    """The ``map`` omap value naming the map object that holds ``data``."""
    return json.dumps({"format": POINTER_FORMAT, "version": 1, "object": obj,
                       "length": len(data), "crc32c": crc32c.crc32c(data)},
                      sort_keys=True).encode()


def parse_pointer(raw: bytes, where: str) -> dict:
    """The fields of a ``map`` omap value; MapCorrupt/MapMismatch saying what is wrong."""
    from .genmap import MapMismatch
    try:
        ptr = json.loads(raw.decode())
        if not isinstance(ptr, dict) or ptr.get("format") != POINTER_FORMAT:
            raise ValueError("not a map pointer")
        if ptr.get("version") != 1:
            raise MapMismatch(f"{where}: map pointer version {ptr.get('version')!r}, this "
                              f"release reads version 1")
        out = {"format": POINTER_FORMAT, "version": 1, "object": str(ptr["object"]),
               "length": int(ptr["length"]), "crc32c": int(ptr["crc32c"])}
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise MapCorrupt(f"{where}: malformed map pointer ({exc})") from None
    if out["length"] < 0 or not out["object"]:
        raise MapCorrupt(f"{where}: malformed map pointer (length {out['length']})")
    return out


_ENTITY_CLIENT = 0x08     # CEPH_ENTITY_TYPE_CLIENT


def _break_lock_op(name: str, client_num: int, cookie: str) -> bytes:
    """The input of cls_lock's ``break_lock``: a versioned struct (v1, compat 1) of the
    lock name, the locker (entity type and number) and its cookie."""
    def text(v: str) -> bytes:
        b = v.encode()
        return struct.pack("<I", len(b)) + b
    body = text(name) + struct.pack("<Bq", _ENTITY_CLIENT, client_num) + text(cookie)
    return struct.pack("<BBI", 1, 1, len(body)) + body


def _parse_owner(raw: bytes) -> dict | None:
    try:
        doc = json.loads(raw.decode())
        return doc if isinstance(doc, dict) else None
    except (ValueError, UnicodeDecodeError):
        return None


def _owner_text(raw) -> str:
    doc = _parse_owner(raw) if raw is not None else None
    if not doc:
        return "another target"
    return f"{doc.get('host', '?')} pid {doc.get('pid', '?')} (client {doc.get('addr', '?')})"
