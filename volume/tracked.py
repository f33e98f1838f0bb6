"""The tracked volume: a BlockStore wrapper that marks every changed range in
the volume's GenerationMap *before* the data write (write intent), and the
bookkeeping of its backups and restores kept beside it (the sidecar).

DESIGN invariant 1: ``GenerationMap.mark`` is durable when it returns (the
journal page is msync'ed), and the data write only starts after it, so a
crash between the two leaves a marked block whose data did not change (a
false positive), never a changed block that is not marked.  Everything in
the SCSI layer that changes data goes through ``lu.store``
(``write``/``write_zeroes``/``discard``), so wrapping the store covers WRITE*,
WRITE SAME, UNMAP, COMPARE AND WRITE, ORWRITE, WRITE ATOMIC and EXTENDED COPY.

Files beside a backing file ``PATH`` (docs/vendor-commands.md; the map's
format: docs/genmap-format.md):

* ``PATH.genmap`` and ``PATH.genmap.dirty`` -- the generation map and its
  write-intent journal (volume/genmap.py).
* ``PATH.volume`` -- the identity sidecar (JSON): the volume identity (16
  random bytes made when tracking starts), the volume size and granularity
  the map was made for, and the backup bookkeeping (whether a full backup
  stream was read to its end; whether a restore left the volume incomplete,
  and which blocks it did not recover).  docs/genmap-format.md, "Sidecar".  The map carries the same identity; a map that does
  not match its sidecar (copied from another volume), or a volume whose size
  changed, is refused with a message saying what to do.

Memory volumes are tracked in memory: the map lives in a private temporary
directory (on /dev/shm when there is one), without msync, removed on close.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
import threading
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from bitarray import bitarray

from . import blockcrc
from .genmap import GenerationMap, MapBusy, MapCorrupt, MapError, journal_path
from .pitcut import CowSettings, PitCut
from .store import BlockStore, StoreError, StoreOutOfRange

if TYPE_CHECKING:  # pragma: no cover
    from .session import VolumeSessions

__all__ = ["TrackingStore", "TrackingError", "TrackingBusy", "BackupState", "RestoreMark",
           "map_paths",
           "read_sidecar", "MAP_SUFFIX", "SIDECAR_SUFFIX", "DEFAULT_GRANULARITY"]

MAP_SUFFIX = ".genmap"
SIDECAR_SUFFIX = ".volume"
SIDECAR_FORMAT = "pyscsi-volume"
SIDECAR_VERSION = 1
DEFAULT_GRANULARITY = 4096


class TrackingError(Exception):
    """Tracking cannot start (or continue) for this volume; ``str()`` says why and what to do."""


class TrackingBusy(TrackingError):
    """Not now (a backup or restore stream is open); the same request may succeed later."""


def map_paths(path: str | os.PathLike) -> tuple[str, str, str]:
    """(map, journal, sidecar) paths beside the backing file ``path``."""
    p = os.fspath(path)
    m = p + MAP_SUFFIX
    return m, journal_path(m), p + SIDECAR_SUFFIX


@dataclass
class RestoreMark:
    """A restore left (or is leaving) the volume incomplete; kept durably in the
    sidecar *before* the restore writes anything.

    ``stream``: the stream being applied ({"id", "full", "lo", "hi",
    "start_generation"}); found set when no restore is running, that restore
    was interrupted and only the same stream (or a full one) may follow.
    ``unrecovered``: blocks known not to hold their restored contents (their
    newest copy was damaged or missing); None when there are none.
    """
    stream: dict | None = None
    unrecovered: bitarray | None = None

    @property
    def unrecovered_blocks(self) -> int:
        return self.unrecovered.count() if self.unrecovered is not None else 0

    @property
    def incomplete(self) -> bool:
        return self.stream is not None or self.unrecovered_blocks > 0

    def grow(self, entries: int) -> None:
        """The volume grew to ``entries`` blocks: the added ones are not unrecovered."""
        u = self.unrecovered
        if u is not None and len(u) < entries:
            add = bitarray(entries - len(u), endian="little")
            add.setall(0)
            u.extend(add)

    def to_doc(self) -> dict:
        u = self.unrecovered
        bm = None
        if u is not None and u.any():
            bm = {"blocks": len(u), "count": u.count(),
                  "zlib_base64": base64.b64encode(zlib.compress(u.tobytes(), 6)).decode()}
        return {"stream": self.stream, "unrecovered": bm}

    @classmethod
    def from_doc(cls, doc, entries: int, where: str) -> "RestoreMark | None":
        if doc is None:
            return None
        try:
            stream = doc.get("stream")
            if stream is not None:
                stream = {"id": str(stream["id"]), "full": bool(stream["full"]),
                          "lo": int(stream["lo"]), "hi": int(stream["hi"]),
                          "start_generation": int(stream["start_generation"])}
            bm = doc.get("unrecovered")
            u = None
            if bm is not None:
                if int(bm["blocks"]) != entries:
                    raise ValueError(f"unrecovered bitmap of {bm['blocks']} blocks")
                u = bitarray(endian="little")
                u.frombytes(zlib.decompress(base64.b64decode(bm["zlib_base64"])))
                if len(u) < entries:
                    raise ValueError("unrecovered bitmap too short")
                del u[entries:]
                if u.count() != int(bm["count"]):
                    raise ValueError("unrecovered bitmap count mismatch")
        except (KeyError, TypeError, ValueError, AttributeError, zlib.error) as exc:
            raise TrackingError(f"{where}: malformed restore record ({exc})") from None
        mark = cls(stream, u)
        return mark if mark.incomplete else None


@dataclass
class BackupState:
    """What the backup device must remember across restarts (kept in the sidecar).

    ``full_done``: a full backup stream was read to its end since the map's
    last reset; differential backups are refused until then (generation 0
    would otherwise mean "in a full backup nobody has").
    ``pending_lo``: the oldest generation of a differential stream that was
    started but not read to its end; the next differential widens its scope
    down to it, so an abandoned stream never loses blocks.
    ``active``: the stream being read right now ({"full", "lo", "hi"}); found
    set at open, it was abandoned by a crash and is folded into the above.
    Releases since the two-phase cut (volume.genmap.Cut) write neither
    ``pending_lo`` nor ``active`` (an unfinished stream changes nothing); both
    are still honoured when an older release left them.
    ``restore``: see :class:`RestoreMark` (None: the volume is complete).
    ``restore_growth``: a restore is growing the volume to this size (recorded
    before the medium grows, cleared once the map covers it).  Found set at open
    with the medium at that size and the map smaller, the growth was cut short
    between the two: the map grows with the new blocks at generation 0 (for the
    stream's records), not marked as written.
    """
    full_done: bool = False
    pending_lo: int | None = None
    active: dict | None = None
    restore: RestoreMark | None = None
    restore_growth: int | None = None

    def settle_abandoned(self) -> None:
        a, self.active = self.active, None
        if not a:
            return
        if a.get("full"):
            self.full_done = False
        else:
            lo = int(a.get("lo", 1))
            self.pending_lo = lo if self.pending_lo is None else min(self.pending_lo, lo)


def read_sidecar(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise TrackingError(f"{path}: unreadable volume identity sidecar ({exc})") from None
    return parse_sidecar(raw, path)


def sidecar_bytes(doc: dict) -> bytes:
    """The sidecar's bytes, the same in a file and in RADOS."""
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def parse_sidecar(raw: bytes, path: str) -> dict:
    """A sidecar document from its bytes (``path`` names it in messages)."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise TrackingError(f"{path}: unreadable volume identity sidecar ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != SIDECAR_FORMAT:
        raise TrackingError(f"{path} is not a volume identity sidecar")
    if doc.get("version") != SIDECAR_VERSION:
        raise TrackingError(f"{path}: sidecar version {doc.get('version')!r}, this release "
                            f"reads version {SIDECAR_VERSION}")
    try:
        vid = bytes.fromhex(doc["volume_id"])
        int(doc["volume_size"]), int(doc["granularity"])
    except (KeyError, TypeError, ValueError):
        raise TrackingError(f"{path}: volume_id/volume_size/granularity missing or malformed") \
            from None
    if not 1 <= len(vid) <= 32:
        raise TrackingError(f"{path}: volume identity of {len(vid)} bytes")
    return doc


def _write_json_atomic(path: str, doc: dict, sync: bool) -> None:
    tmp = path + ".tmp"
    data = sidecar_bytes(doc)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync:
        dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class _FilePlace:
    """Map files and sidecar beside the backing file ``path``."""
    local = True

    def __init__(self, path) -> None:
        self.volume_label = os.fspath(path)
        self.where, _, self.sidecar_label = map_paths(path)
        self.map_label = self.where
        self.map_glob = f"{self.where}*"
        self.everything = f"{self.map_glob} and {self.sidecar_label}"
        self.stem = self.sidecar_label

    def have_map(self) -> bool:
        return os.path.exists(self.where)

    def read_doc(self) -> dict | None:
        try:
            return read_sidecar(self.sidecar_label)
        except FileNotFoundError:
            return None

    def write_doc(self, doc: dict, sync: bool) -> None:
        _write_json_atomic(self.sidecar_label, doc, sync)

    # the audit's block CRC table: VOLUME.blockcrc beside the sidecar
    @property
    def crc_label(self) -> str:
        return blockcrc.crc_path(self.sidecar_label)

    def read_crcs(self) -> "blockcrc.BlockCrcs | None":
        return blockcrc.load(self.crc_label)

    def write_crcs(self, crcs: "blockcrc.BlockCrcs") -> None:
        blockcrc.save(self.crc_label, crcs)

    def forget_crcs(self) -> None:
        blockcrc.forget(self.crc_label)

    def abandon(self) -> None:
        pass


class _RadosPlace:
    """Map, journal and sidecar in RADOS objects (volume/radosmap.py)."""
    local = False

    def __init__(self, storage, volume: str, stem: str | None) -> None:
        self.where = storage
        self.volume_label = volume
        self.map_label = storage.name
        self.sidecar_label = f"{storage.journal_name} (omap key sidecar)"
        self.map_glob = (f"the RADOS objects {storage.base}.genmap.* in pool {storage.pool} "
                         f"(rados -p {storage.pool} ls; rados -p {storage.pool} rm OBJECT)")
        self.everything = self.map_glob          # the sidecar is in the journal's omap
        self.stem = stem

    def have_map(self) -> bool:
        return self.where.existing() == self.where.name

    def read_doc(self) -> dict | None:
        raw = self.where.read_sidecar()
        return None if raw is None else parse_sidecar(raw, self.sidecar_label)

    def write_doc(self, doc: dict, sync: bool) -> None:
        self.where.write_sidecar(sidecar_bytes(doc))

    # the audit's block CRC table: a versioned object beside the map, its pointer in
    # the journal's omap (fenced with the map: volume/radosmap.py write_blob)
    @property
    def crc_label(self) -> str:
        return f"rados:{self.where.pool}/{self.where.base}.genmap.blockcrc"

    def read_crcs(self) -> "blockcrc.BlockCrcs | None":
        try:
            raw = self.where.read_blob("blockcrc")
        except MapCorrupt as exc:
            raise blockcrc.BlockCrcError(str(exc)) from None
        return None if raw is None else blockcrc.BlockCrcs.unpack(raw, self.crc_label)

    def write_crcs(self, crcs: "blockcrc.BlockCrcs") -> None:
        self.where.write_blob("blockcrc", crcs.pack())

    def forget_crcs(self) -> None:
        self.where.remove_blob("blockcrc")

    def abandon(self) -> None:
        self.where.close()


class TrackingStore(BlockStore):
    """``inner`` with every data change marked in ``self.map`` first.

    Build with :meth:`open` (file volumes) or :meth:`in_memory`.
    """
    growable = True          # the map grows (and, for a restore, ``inner``: its growable)
    tracked = True

    def __init__(self, inner: BlockStore, gmap: GenerationMap, *, sidecar: str | None,
                 state: BackupState, tmpdir: str | None = None, sync: bool = True,
                 cow: CowSettings | None = None, place=None) -> None:
        self.inner = inner
        self.size = inner.size
        self.asynchronous = inner.asynchronous
        self.watches_size = inner.watches_size
        self._pending = 0                      # async writes submitted, not yet done
        self._pending_cond = threading.Condition()
        self._submitter = None
        if self.asynchronous:
            import queue
            self._submitter = queue.SimpleQueue()
            threading.Thread(target=self._submit_loop, daemon=True,
                             name="tracked-submit").start()
        self._map = gmap
        self._mark = gmap.mark
        # A local path whose stem names per-volume files (the audit's CRC table);
        # for a file volume, its sidecar.  None: nowhere local (memory volumes).
        self.sidecar = sidecar
        # Where the map and sidecar live (_FilePlace, _RadosPlace; None: memory).
        self._place = place
        self.state = state
        self._tmpdir = tmpdir
        self._sync = sync
        self._closed = False
        # The open backup stream's point-in-time cut (volume/pitcut.py): writes
        # preserve what it has not sent yet.  Its old blocks go beside the volume.
        self.cow: PitCut | None = None
        # Beside the volume unless the caller says where (memory volumes: in memory).
        cow = cow or CowSettings()
        if cow.dir is None and sidecar and place is not None and place.local:
            cow = CowSettings(dir=os.path.dirname(os.path.abspath(sidecar)), size=cow.size)
        self.cow_settings = cow
        # Serialises map replacement (reidentify) and sidecar writes.
        self.lock = threading.RLock()
        # Called with the new size after a growth (the backup device follows it).
        self.grow_listeners: list = []
        # The inner store's real end after a refused shrink (None: its size).
        self._limit: int | None = None
        self._sessions: "VolumeSessions | None" = None

    # -- construction -------------------------------------------------------
    @classmethod
    def open(cls, inner: BlockStore, path: str | os.PathLike, *,
             granularity: int | None = None, sync: bool = True,
             volume_id: bytes | None = None,
             cow: CowSettings | None = None) -> "TrackingStore":
        """Track the file volume ``path`` (served by ``inner``): open its map, or start one.

        ``granularity`` (bytes per tracked block; default 4096) applies when
        tracking starts; an existing map with another granularity is refused.
        ``volume_id`` is only used when tracking starts (no map, no sidecar).
        """
        return cls._open_at(inner, _FilePlace(path), granularity=granularity, sync=sync,
                            volume_id=volume_id, cow=cow)

    @classmethod
    def open_rados(cls, inner: BlockStore, storage, *, volume: str,
                   granularity: int | None = None, volume_id: bytes | None = None,
                   cow: CowSettings | None = None) -> "TrackingStore":
        """Track ``inner`` with its map, journal, sidecar and the audit's block CRC
        table in RADOS (``storage``: a volume.radosmap.RadosMapStorage beside the
        image).

        ``volume`` names the volume in messages (e.g. ``rbd:POOL/IMAGE``).
        Copy-on-write preservation files go to ``cow.dir`` (None: memory).
        """
        return cls._open_at(inner, _RadosPlace(storage, volume, None), granularity=granularity,
                            sync=True, volume_id=volume_id, cow=cow or CowSettings())

    @classmethod
    def _open_at(cls, inner: BlockStore, place: "_FilePlace | _RadosPlace", *,
                 granularity: int | None, sync: bool, volume_id: bytes | None,
                 cow: CowSettings | None) -> "TrackingStore":
        try:
            return cls._open_place(inner, place, granularity=granularity, sync=sync,
                                   volume_id=volume_id, cow=cow)
        except BaseException:
            place.abandon()       # a RADOS map's lock goes with the failed open
            raise

    @classmethod
    def _open_place(cls, inner: BlockStore, place: "_FilePlace | _RadosPlace", *,
                    granularity: int | None, sync: bool, volume_id: bytes | None,
                    cow: CowSettings | None) -> "TrackingStore":
        mpath, spath, vname = place.map_label, place.sidecar_label, place.volume_label
        try:
            have_map = place.have_map()
            doc = place.read_doc()
        except MapError as exc:
            raise TrackingError(f"generation map of {vname}: {exc}") from None
        if doc is None and have_map:
            raise TrackingError(
                f"{mpath} exists but its identity sidecar {spath} is missing: cannot tell "
                f"whether the map belongs to {vname}; delete {place.map_glob} to start tracking "
                f"afresh (then take a full backup)")
        if doc is None:
            granularity = granularity or DEFAULT_GRANULARITY
            vid = volume_id or os.urandom(16)
            state = BackupState()
            doc = cls._sidecar_doc(vid, inner.size, granularity, state)
            try:
                gmap = GenerationMap.create(place.where, volume_size=inner.size,
                                            granularity=granularity, volume_id=vid,
                                            overwrite=True, sync=sync)
                place.write_doc(doc, sync)
            except (MapError, OSError) as exc:
                raise TrackingError(f"cannot create generation map {mpath}: {exc}") from None
            return cls(inner, gmap, sidecar=place.stem, state=state, sync=sync, cow=cow,
                       place=place)
        vid = bytes.fromhex(doc["volume_id"])
        recorded = int(doc["volume_size"])
        if recorded > inner.size:
            raise TrackingError(
                f"{vname} is {inner.size} bytes but its generation map was made for "
                f"{recorded} bytes: shrinking a tracked volume is refused (the map cannot "
                f"drop blocks that backups hold); restore its size, or delete "
                f"{place.everything} to start tracking afresh (then take a full backup)")
        gran = int(doc["granularity"])
        if granularity is not None and granularity != gran:
            raise TrackingError(
                f"{vname} is tracked at {gran}-byte granularity, not {granularity}: "
                f"changing it needs a new map — delete {place.everything}, then take "
                f"a full backup")
        b = doc.get("backup") or {}
        entries = -(-recorded // gran)
        state = BackupState(bool(b.get("full_done")), b.get("pending_lo"), b.get("active"),
                            RestoreMark.from_doc(b.get("restore"), entries, spath))
        growth = b.get("restore_growth")
        if growth is not None and (type(growth) is not int or growth <= 0):
            raise TrackingError(f"{spath}: malformed restore_growth {growth!r}")
        # A restore's growth cut short after the medium grew: its new blocks are the
        # stream's to fill, not written (they would hide the stream's records).
        mark_new = not (growth is not None and recorded < inner.size == growth)
        if state.restore is not None:
            state.restore.grow(-(-inner.size // gran))
        if not have_map:
            # The map was lost: start a new one for the same volume, but no
            # differential backup is possible until a full one is taken.  An
            # incomplete restore stays on record: the data is still wrong.
            state = BackupState(restore=state.restore)
            try:
                gmap = GenerationMap.create(place.where, volume_size=inner.size, granularity=gran,
                                            volume_id=vid, overwrite=True, sync=sync)
            except (MapError, OSError) as exc:
                raise TrackingError(f"cannot create generation map {mpath}: {exc}") from None
        else:
            try:
                # A volume that grew while no target served it (or while a growth
                # was under way): the map grows, its new blocks changed.
                gmap = GenerationMap.open(place.where, volume_size=inner.size, volume_id=vid,
                                          granularity=gran, sync=sync, grow=True,
                                          mark_new=mark_new)
            except MapError as exc:
                raise TrackingError(f"generation map of {vname}: {exc}") from None
        state.settle_abandoned()
        self = cls(inner, gmap, sidecar=place.stem, state=state, sync=sync, cow=cow, place=place)
        try:
            self.save_state()
        except MapError as exc:
            gmap.close()
            raise TrackingError(f"generation map of {vname}: {exc}") from None
        return self

    @classmethod
    def in_memory(cls, inner: BlockStore, *, granularity: int = DEFAULT_GRANULARITY,
                  volume_id: bytes | None = None) -> "TrackingStore":
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        tmpdir = tempfile.mkdtemp(prefix="pyscsi-track-", dir=base)
        try:
            gmap = GenerationMap.create(os.path.join(tmpdir, "map"), volume_size=inner.size,
                                        granularity=granularity,
                                        volume_id=volume_id or os.urandom(16), sync=False)
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        return cls(inner, gmap, sidecar=None, state=BackupState(), tmpdir=tmpdir, sync=False)

    @staticmethod
    def _sidecar_doc(vid: bytes, size: int, gran: int, state: BackupState) -> dict:
        return {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "volume_id": vid.hex(),
                "volume_size": size, "granularity": gran,
                "backup": {"full_done": state.full_done, "pending_lo": state.pending_lo,
                           "active": state.active,
                           "restore": state.restore.to_doc() if state.restore else None,
                           **({"restore_growth": state.restore_growth}
                              if state.restore_growth is not None else {})}}

    # -- identity and bookkeeping ---------------------------------------------
    @property
    def map(self) -> GenerationMap:
        return self._map

    @property
    def volume_id(self) -> bytes:
        return self._map.volume_id

    @property
    def sessions(self) -> "VolumeSessions":
        """The volume's one backup/restore session state machine (volume/session.py)."""
        with self.lock:
            if self._sessions is None:
                from .session import VolumeSessions
                self._sessions = VolumeSessions(self)
            return self._sessions

    def save_state(self) -> None:
        """Persist ``state`` (atomically) in the sidecar; memory volumes keep it in memory."""
        with self.lock:
            if self._place is None:
                return
            doc = self._sidecar_doc(self._map.volume_id, self.size, self._map.granularity,
                                    self.state)
            self._place.write_doc(doc, self._sync)

    def reidentify(self, volume_id: bytes, granularity: int | None = None) -> None:
        """Become volume ``volume_id`` (a full restore of its backup): a new, empty map."""
        with self.lock:
            gran = granularity or self._map.granularity
            path = self._place.where if self._place is not None else self._map.path
            self._map.close()
            gmap = GenerationMap.create(path, volume_size=self.size, granularity=gran,
                                        volume_id=bytes(volume_id), overwrite=True,
                                        sync=self._sync)
            self._map = gmap
            self._mark = gmap.mark
            self.state = BackupState(restore=self.state.restore)
            self.save_state()

    # -- the audit's block CRC table (volume/blockcrc.py) -----------------------
    @property
    def keeps_crcs(self) -> bool:
        """The volume keeps a block CRC table (beside its map: files or RADOS)."""
        return self._place is not None

    @property
    def crc_label(self) -> str:
        return self._place.crc_label if self._place is not None else "(none: a memory volume)"

    def load_crcs(self) -> "blockcrc.BlockCrcs | None":
        """The stored table (None: none yet); BlockCrcError when it is damaged."""
        if self._place is None:
            return None
        try:
            return self._place.read_crcs()
        except MapError as exc:
            raise blockcrc.BlockCrcError(str(exc)) from None

    def save_crcs(self, crcs: "blockcrc.BlockCrcs") -> None:
        if self._place is not None:
            self._place.write_crcs(crcs)

    def forget_crcs(self) -> None:
        if self._place is not None:
            self._place.forget_crcs()

    # -- growth ------------------------------------------------------------------
    def grow(self, size: int, *, restoring: bool = False) -> None:
        """The volume is now ``size`` bytes (larger): the map grows first, durably,
        its new blocks (and the old partial last one) changed in the current
        generation, so the next differential carries them; then the sidecar.  A crash
        in between: the next open grows what is left (GenerationMap.open ``grow``).

        ``restoring``: a restore target growing for a differential of the grown
        volume: ``inner`` grows too (``inner.grow``: a file extended, an RBD image
        resized) and the new blocks start at generation 0, for the stream's records
        to fill.  The growth is recorded in the sidecar first (``restore_growth``),
        so a crash after ``inner`` grew and before the map did is finished at the
        next open the same way.  Raises TrackingBusy while a backup or restore
        stream is open (the caller retries), TrackingError for a shrink (refused:
        the map cannot drop blocks that backups hold) or an ``inner`` that cannot
        grow, StoreError when ``inner`` refused to grow (nothing changed then)."""
        # The sessions' lock is taken before the volume's elsewhere: ask it first.
        busy = self._sessions.busy_with() if self._sessions is not None and not restoring \
            else None
        with self.lock:
            if size == self.size:
                return
            if size < self.size:
                raise TrackingError(
                    f"{self.volume_label()} shrank from {self.size} to {size} bytes: shrinking a "
                    f"tracked volume is refused (the generation map cannot drop blocks that "
                    f"backups hold)")
            if not restoring and busy is None and self._map.pending_cut is not None:
                busy = "a backup stream"
            if busy is not None:
                raise TrackingBusy(f"{self.volume_label()} grew to {size} bytes while "
                                   f"{busy} is open: the growth waits until it ends")
            if restoring:
                self._grow_inner_for_restore(size)
            elif self.inner.growable:
                self.inner.grow(size)           # a file: extended (sparse) if it is not yet;
            else:                               # an image the watcher saw grow: as it is
                self.inner.size = size
            try:
                self._map.grow(size, mark_new=not restoring)
            except MapBusy:                     # a backup began since the question above
                raise TrackingBusy(f"{self.volume_label()} grew to {size} bytes while a backup "
                                   f"stream is open: the growth waits until it ends") from None
            except MapError as exc:
                raise TrackingError(f"generation map of {self.volume_label()}: {exc}") from None
            if self.state.restore is not None:
                self.state.restore.grow(self._map.entries)
            self.state.restore_growth = None
            self.size = size
            unsaved = None
            try:
                self.save_state()
            except (MapError, OSError) as exc:  # the next open settles it (map grown)
                unsaved = exc
            if self._sessions is not None:
                self._sessions.volume_grew(size)
        for fn in list(self.grow_listeners):
            fn(size)
        if unsaved is not None:
            raise TrackingError(f"{self.volume_label()} grew to {size} bytes, but its sidecar "
                                f"could not be updated: {unsaved}")

    def _grow_inner_for_restore(self, size: int) -> None:
        """``inner`` grows to ``size`` for a restore, its intent on record first."""
        label = self.volume_label()
        if not self.inner.growable:
            raise TrackingError(f"{label} holds {self.size} bytes and cannot grow to the "
                                f"stream's {size} bytes: resize it first")
        self.state.restore_growth = size
        try:
            self.save_state()
        except (MapError, OSError) as exc:
            self.state.restore_growth = None
            raise TrackingError(f"{label}: cannot record the growth to {size} bytes: "
                                f"{exc}") from None
        try:
            self.inner.grow(size)
        except StoreError:
            self.state.restore_growth = None
            try:
                self.save_state()
            except (MapError, OSError):
                pass        # fenced as well: the next open finds the medium ungrown
            raise

    def limit_to(self, end: int | None) -> None:
        """I/O past byte ``end`` fails with StoreOutOfRange (the image shrank under a
        tracked LU, which keeps serving its old size); None: no limit.  The range past
        ``end`` is marked first: its data is gone (an image grown back reads zeroes
        there), so the next differential must carry it."""
        if end is None or end >= self.size:
            self._limit = None
            return
        self._mark(end, self.size - end, sync=True)
        self._limit = end

    def _check_limit(self, offset: int, n: int) -> None:
        if offset + n > self._limit:
            raise StoreOutOfRange(f"{self.volume_label()}: bytes {offset}+{n} lie past the "
                                  f"image's end at {self._limit} (it shrank while tracked)")

    def volume_label(self) -> str:
        return self._place.volume_label if self._place is not None else "the memory volume"

    def watch_size(self, changed, interval: float = 2.0) -> None:
        """The inner store's size watcher (an RBD image's ``rbd resize``), if it has one."""
        if not self.inner.watches_size:
            raise StoreError(f"{self.volume_label()}: its size is not watched")
        self.inner.watch_size(changed, interval)

    # -- BlockStore -----------------------------------------------------------
    @property
    def read_only(self) -> bool:  # type: ignore[override]
        return self.inner.read_only

    @property
    def thin(self) -> bool:  # type: ignore[override]
        return self.inner.thin

    def readinto(self, offset: int, buf: memoryview) -> None:
        if self._limit is not None:
            self._check_limit(offset, memoryview(buf).nbytes)
        self.inner.readinto(offset, buf)

    def read(self, offset: int, length: int) -> bytearray:
        return self.inner.read(offset, length)

    # Marks are made durable by the group commit (volume.durability.barrier),
    # which every acknowledgement path runs before a response leaves.
    def write(self, offset: int, data) -> None:
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        if self._limit is not None:
            self._check_limit(offset, n)
        self._mark(offset, n, sync=False)
        if self.cow is not None:
            self.cow.before_write(offset, n)
        self.inner.write(offset, data)

    # An asynchronous inner store (RBD): a write's mark and its data go out
    # together; the command is answered when both are durable (invariant 1).
    def submit_read(self, offset: int, length: int, done) -> None:
        if self._limit is not None:
            self._check_limit(offset, length)
        self.inner.submit_read(offset, length, done)

    # Write intent first: the data write is submitted only once its mark is
    # durable (a block already marked in this generation goes at once), so a
    # crash can never leave a changed block that the map does not hold -- not
    # even one whose write was never answered.
    def submit_write(self, offset: int, data, done, fua: bool = False) -> None:
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        if self._limit is not None:
            self._check_limit(offset, n)
        if self.cow is not None:
            self.cow.before_write(offset, n)
        with self._pending_cond:
            self._pending += 1

        def finished(exc) -> None:
            with self._pending_cond:
                self._pending -= 1
                self._pending_cond.notify_all()
            done(exc)

        caller = threading.get_ident()

        def marked(exc) -> None:
            if exc is not None:
                finished(exc if isinstance(exc, StoreError)
                         else StoreError(f"write intent not recorded: {exc}"))
            elif threading.get_ident() == caller:
                # Durable already (a block marked earlier in this generation): the
                # data write goes out from the submitting thread, no hop.
                self._submit_data(offset, data, finished, fua)
            else:
                self._submitter.put((offset, data, finished, fua))

        try:
            self._map.mark_async(offset, n, marked)
        except BaseException:
            with self._pending_cond:
                self._pending -= 1
                self._pending_cond.notify_all()
            raise

    def _submit_loop(self) -> None:
        """Submits data writes whose marks became durable (off librados' callback
        threads, which must not block in librbd)."""
        while True:
            item = self._submitter.get()
            if item is None:
                return
            self._submit_data(*item)

    def _submit_data(self, offset: int, data, finished, fua: bool) -> None:
        try:
            self.inner.submit_write(offset, data, finished, fua)
        except StoreError as exc:
            finished(exc)
        except Exception as exc:  # never lose a completion
            finished(StoreError(f"write at {offset}: {exc}"))

    def submit_flush(self, done) -> None:
        self.inner.submit_flush(done)

    def drain(self, timeout: float | None = None) -> bool:
        import time
        end = None if timeout is None else time.monotonic() + timeout
        with self._pending_cond:
            while self._pending:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._pending_cond.wait(left)
        return self.inner.drain(None if end is None else max(0.0, end - time.monotonic()))

    @property
    def inflight(self) -> int:
        return self._pending + self.inner.inflight

    def readinto_many(self, offsets: list[int], bufs: list[memoryview]) -> None:
        self.inner.readinto_many(offsets, bufs)

    def write_many(self, offsets: list[int], datas: list) -> None:
        mark = self._mark
        lengths = [len(d) if not isinstance(d, memoryview) else d.nbytes for d in datas]
        for off, n in zip(offsets, lengths):
            mark(off, n, sync=False)
        if self.cow is not None:
            self.cow.before_write_many(offsets, lengths)
        self.inner.write_many(offsets, datas)

    def write_zeroes(self, offset: int, length: int) -> None:
        if self._limit is not None:
            self._check_limit(offset, length)
        self._mark(offset, length, sync=False)
        if self.cow is not None:
            self.cow.before_write(offset, length)
        self.inner.write_zeroes(offset, length)

    def discard(self, offset: int, length: int) -> None:
        if self._limit is not None:
            self._check_limit(offset, length)
        self._mark(offset, length, sync=False)
        if self.cow is not None:
            self.cow.before_write(offset, length)
        self.inner.discard(offset, length)

    def flush(self) -> None:
        self.inner.flush()

    def allocation(self, offset: int, length: int) -> Iterator[tuple[int, int, bool]]:
        return self.inner.allocation(offset, length)

    def close(self) -> None:
        if self._closed:
            return
        if self._sessions is not None:
            self._sessions.close()
        self._closed = True
        if self._submitter is not None:
            self.drain(60)
            self._submitter.put(None)
        if self.cow is not None:
            self.cow.release()
        try:
            if self._place is not None and not self._place.local:
                # The map shares the store's RADOS client: it goes first.
                try:
                    self._map.close()
                finally:
                    self.inner.close()
                return
            try:
                self.inner.close()
            finally:
                self._map.close()
        finally:
            if self._tmpdir:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
