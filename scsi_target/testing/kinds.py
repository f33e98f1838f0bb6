"""LU kinds the test API can build, as data: name -> builder and its options.

``register_lu_kind(LuKind("tape", build_tape, ("size", ...)))`` adds a kind; the
in-process target, the pytest plugin and :func:`lu_kind_names` read this table,
so a new device type needs no change here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..scsi.lun import Identity, LogicalUnit, LunMap


class LuSpecError(ValueError):
    """A bad LU description; ``str()`` is one line."""


@dataclass(frozen=True)
class BuildContext:
    target_name: str
    lun: int
    luns: LunMap                # the map the LU joins (backup devices find their source)


@dataclass(frozen=True)
class LuKind:
    name: str
    build: Callable[[BuildContext, dict], LogicalUnit]
    options: tuple[str, ...]
    doc: str = ""


LU_KINDS: dict[str, LuKind] = {}


def register_lu_kind(kind: LuKind, *, replace: bool = False) -> None:
    if kind.name in LU_KINDS and not replace:
        raise ValueError(f"LU kind {kind.name!r} is already registered")
    LU_KINDS[kind.name] = kind


def lu_kind_names() -> list[str]:
    return sorted(LU_KINDS)


def build_lu(kind: str, ctx: BuildContext, options: dict) -> LogicalUnit:
    k = LU_KINDS.get(kind)
    if k is None:
        raise LuSpecError(f"LU kind {kind!r} is not known (known: {', '.join(lu_kind_names())})")
    bad = [o for o in options if o not in k.options]
    if bad:
        raise LuSpecError(f"LU kind {kind!r} takes no option {bad[0]!r} "
                          f"(options: {', '.join(k.options)})")
    return k.build(ctx, options)


# ---------------------------------------------------------------- disk
def _size(v) -> int:
    from ..config import parse_size
    try:
        return parse_size(v)
    except ValueError as e:
        raise LuSpecError(f"size: {e}") from None


class _ThickMemory:
    pass


def make_store(options: dict):
    """The backing store a disk option set describes (memory/file, thin/thick)."""
    from volume.filestore import FileStore
    from volume.memstore import MemoryStore

    store = options.get("store")
    if store is not None:
        return store
    backing = options.get("backing", "memory")
    size = _size(options.get("size", "64M"))
    bs = options.get("block_size", 512)
    if size <= 0 or size % bs:
        raise LuSpecError(f"size {size} is not a positive multiple of the block size {bs}")
    thin = options.get("thin", True)
    if backing == "memory":
        s = MemoryStore(size)
        if not thin:
            s.thin = False
        return s
    if not isinstance(backing, (str, Path)) or not str(backing):
        raise LuSpecError(f"backing: {backing!r}: expected \"memory\" or a file path")
    path = Path(backing)
    s = FileStore(path, size=size, create=True)
    if not thin:
        s.thin = False
    return s


def build_disk(ctx: BuildContext, options: dict) -> LogicalUnit:
    from volume.tracked import TrackingStore

    from ..scsi.disk import DiskLU

    bs = options.get("block_size", 512)
    if bs not in (512, 1024, 2048, 4096):
        raise LuSpecError(f"block_size {bs!r} is not supported (512, 1024, 2048, 4096)")
    store = make_store(options)
    try:
        if options.get("track", False):
            if options.get("backing", "memory") == "memory" or options.get("store") is not None:
                store = TrackingStore.in_memory(store)
            else:
                store = TrackingStore.open(store, Path(options["backing"]))
        identity = Identity.derive(ctx.target_name, ctx.lun, serial=options.get("serial"))
        return DiskLU(store, bs, bool(options.get("read_only", False)), identity=identity,
                      removable=bool(options.get("removable", False)),
                      physical_block_size=options.get("physical_block_size"))
    except ValueError as e:
        store.close()
        raise LuSpecError(str(e)) from None
    except BaseException:
        store.close()
        raise


def build_backup(ctx: BuildContext, options: dict) -> LogicalUnit:
    from ..scsi.backup_lu import BackupLU
    if "source" not in options:
        raise LuSpecError("a backup LU needs source = the LUN of a tracked disk")
    src = ctx.luns.luns.get(options["source"])
    if src is None:
        raise LuSpecError(f"source LUN {options['source']} is not defined (add it first)")
    ident = Identity.derive(ctx.target_name, ctx.lun, volume_id=b"backup-device\0"
                            + src.identity.naa.to_bytes(8, "big"))
    try:
        return BackupLU(src, options["source"], identity=ident)
    except ValueError as e:
        raise LuSpecError(str(e)) from None


register_lu_kind(LuKind("disk", build_disk, (
    "size", "block_size", "backing", "thin", "track", "read_only", "removable",
    "physical_block_size", "serial", "store"),
    "SBC disk over memory or a file; track=True records writes in a generation map"))
register_lu_kind(LuKind("backup", build_backup, ("source",),
                        "the backup pseudo device of a tracked disk (docs/vendor-commands.md)"))


# ---------------------------------------------------------------- tape
def build_tape(ctx: BuildContext, options: dict) -> LogicalUnit:
    """A tape LU over a tape image file, built the way the config builds one."""
    import tempfile
    import weakref
    from ..config import ConfigError, LunSpec, build_lu as build_config_lu

    backing = options.get("backing")
    tmpdir = None
    if backing is None:
        tmpdir = tempfile.mkdtemp(prefix="pyscsi-tape-")
        backing = Path(tmpdir) / "tape.img"
    path = Path(backing)
    size = _size(options.get("size", "64M"))
    spec = LunSpec(lun=ctx.lun, path=path, size=size, read_only=bool(options.get("read_only")),
                   create=not path.exists(), track=False, kind="tape",
                   where=f"tape LUN {ctx.lun}")
    try:
        lu = build_config_lu(spec, ctx.target_name, ctx.luns)
    except ConfigError as e:
        raise LuSpecError(str(e)) from None
    if tmpdir is not None:
        import shutil
        weakref.finalize(lu, shutil.rmtree, tmpdir, True)
    return lu


def _register_tape() -> None:
    from ..config import LU_KINDS as CONFIG_KINDS
    if "tape" in CONFIG_KINDS:      # trees with the SSC tape LU (scsi_target/config.py)
        register_lu_kind(LuKind("tape", build_tape, ("size", "backing", "read_only"),
                                "SSC tape drive over a tape image (a temporary file by default)"))


_register_tape()
