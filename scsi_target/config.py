"""Server configuration: quick flags or a TOML file → validated specs → TargetRegistry.

Two steps, kept apart so every mistake is reported before anything is opened:

1. *Parse* (:func:`load_file`, :func:`parse_config`, :func:`from_flags`) turns
   input into immutable specs and checks everything that can be checked
   without opening a backing store: keys, types, IQN syntax, sizes, CHAP
   secrets, duplicates, and whether a missing backing file can be created.
2. *Build* (:func:`build_registry`) opens the stores and creates the LUs.

Every problem is a :class:`ConfigError` whose message names the source
(file or "command line"), the key and the problem; the CLI prints it as one
line.  The file format is documented in docs/config.md.
"""
from __future__ import annotations

import ipaddress
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from .target.registry import Chap, Portal, TargetDef, TargetRegistry

DEFAULT_IQN = "iqn.2026-11.org.pyscsi:default"
DEFAULT_DISK = Path("var/disk0.img")
DEFAULT_DISK_SIZE = 64 << 20
DEFAULT_PORT = 3260
DEFAULT_HOST = "127.0.0.1"
BLOCK_SIZES = (512, 4096)
LU_KINDS = ("disk", "backup", "tape")
MAX_LUN = 16383                  # LunMap's flat addressing limit
MAX_NAME_BYTES = 223             # RFC 3720 3.2.6.1
# RFC 7143 12.1.3: below 96 random bits CHAP needs IPsec, which we don't
# offer, so shorter secrets are refused.  128 bits is the size every
# implementation must accept; some initiators (Windows) refuse longer ones,
# so longer secrets only warn.
CHAP_SECRET_MIN = 12
CHAP_SECRET_MAX = 16
# The largest off_t: a backing file cannot be larger, and a bigger number would
# only fail later, deep in ftruncate, as an OverflowError.
MAX_SIZE = (1 << 63) - 1
# A config is a few KiB; the cap keeps a mistaken path (a disk image, a log)
# from being read whole.
MAX_CONFIG_BYTES = 1 << 20
# VPD 80h holds ASCII; spaces would be taken for padding by hosts that strip
# it, and 32 characters leave the T10 vendor ID designator within its 255 bytes.
MAX_SERIAL = 32
_SERIAL_RE = re.compile(r"^[\x21-\x7e]{1,%d}$" % MAX_SERIAL)


class ConfigError(Exception):
    """A configuration problem; ``str()`` is the one-line message for the operator."""


# --------------------------------------------------------------------- specs
@dataclass(frozen=True)
class LunSpec:
    lun: int
    path: Path
    size: int | None = None          # None: use the existing file's size
    block_size: int = 512
    read_only: bool = False
    create: bool = False             # create the backing file (sparse) if missing
    removable: bool = False          # INQUIRY RMB: START STOP UNIT eject, PREVENT ALLOW
    physical_block_size: int | None = None   # READ CAPACITY(16) LBPPBE; None = block_size
    write_same_zero: bool = False    # WRITE SAME with 0 blocks writes to the end (WSNZ=0)
    # Whether writes to this LU are recorded in its generation map
    # (PATH.genmap, PATH.genmap.dirty, PATH.volume beside the backing file).
    track: bool = True
    # Bytes per tracked block of the generation map (power of two, 512..16 MiB);
    # None = 4096, or what an existing map uses.
    track_granularity: int | None = None
    # Copy-before-write space of a backup's point-in-time cut (volume/pitcut.py):
    # the directory of the (unlinked) preservation file, None = beside the
    # backing file; its bound in bytes, None = min(1 GiB, volume size).
    cow_dir: Path | None = None
    cow_size: int | None = None
    kind: str = "disk"
    # kind = "backup": the LUN (same target) of the tracked disk it serves.
    source: int | None = None
    # Further backing files appended after ``path`` (a linear concatenation:
    # the patent's logical volume spanning several files), as (path, size).
    parts: tuple[tuple[Path, int | None], ...] = ()
    # Unit serial number (VPD 80h) set by the operator; None = derived from
    # the volume id (scsi_target/identity.py).
    serial: str | None = None
    where: str = ""                  # "file: target[0].lun[1]" for error messages
    # A disk on a Ceph RBD image (volume.rbdstore.RbdSpec) instead of a file;
    # ``path`` is then unused, ``size`` with ``create`` the size of a new image.
    rbd: Any = None
    # Where an RBD volume's generation map lives (docs/rados-maps.md): "rados"
    # (objects beside the image; the default) or "file" (track_map_path.genmap,
    # .genmap.dirty and .volume on this host).  track_map_lock: seconds a
    # stopped target keeps others from taking the RADOS map over (None = 20).
    track_map: str = "rados"
    track_map_path: Path | None = None
    track_map_lock: float | None = None

    def backing_paths(self) -> list[Path]:
        if self.rbd is not None:
            return []
        return [self.path] + [p for p, _ in self.parts]

    @property
    def backing(self) -> str:
        """What backs the LU, for messages: the file or ``rbd:POOL/IMAGE``."""
        return str(self.rbd) if self.rbd is not None else str(self.path)


@dataclass(frozen=True)
class TargetSpec:
    iqn: str
    luns: tuple[LunSpec, ...]
    alias: str = ""
    chap: Chap | None = None
    mutual_chap: Chap | None = None
    initiators: frozenset[str] | None = None
    # Fault injection (scsi_target/interceptors/faults.py): rules in force from
    # the start, and whether FAULT CONTROL (D5h) may change them at run time.
    faults: tuple = ()
    fault_control: bool = False


@dataclass(frozen=True)
class ServerConfig:
    targets: tuple[TargetSpec, ...]
    portals: tuple[Portal, ...] = (Portal(),)
    discovery_chap: Chap | None = None
    discovery_mutual_chap: Chap | None = None
    source: str = "command line"
    warnings: tuple[str, ...] = field(default=(), compare=False)
    # Liveness (seconds): NOP-In ping after this much initiator silence (0 = never),
    # how long an answer may take, and how long a login may take.
    nop_interval: float = 30.0
    nop_timeout: float = 15.0
    login_timeout: float = 30.0
    limits: "Limits" = field(default_factory=lambda: Limits())

    def server_options(self) -> dict[str, Any]:
        return {"nop_interval": self.nop_interval, "nop_timeout": self.nop_timeout,
                "login_timeout": self.login_timeout, **self.limits.server_options()}


@dataclass(frozen=True)
class Limits:
    """Memory bounds (``[limits]``, docs/config.md); None = the server's default.

    The defaults live in scsi_target/target/budget.py, the one place the
    server reads them; :func:`effective` says what is in force.
    """
    connection_write_budget: int | None = None
    target_write_budget: int | None = None
    send_queue_bound: int | None = None

    def server_options(self) -> dict[str, int]:
        # Only what was set: an unset bound stays the server's own default.
        out = {}
        for key, option in _LIMIT_OPTIONS.items():
            v = getattr(self, key)
            if v is not None:
                out[option] = v
        return out

    def effective(self, key: str) -> int:
        from .target import budget as B
        v = getattr(self, key)
        return v if v is not None else getattr(B, _LIMIT_DEFAULTS[key])


# [limits] key -> IscsiServer keyword, and the budget.py default it replaces.
_LIMIT_OPTIONS = {"connection_write_budget": "write_budget",
                  "target_write_budget": "target_write_budget",
                  "send_queue_bound": "send_queue_bound"}
_LIMIT_DEFAULTS = {"connection_write_budget": "CONNECTION_WRITE_BUDGET",
                   "target_write_budget": "TARGET_WRITE_BUDGET",
                   "send_queue_bound": "SEND_QUEUE_BOUND"}
# Below this a bound makes no sense: one Data-Out / Data-In PDU of the
# default 8 KiB segment length, and no real initiator works with less.
MIN_LIMIT = 64 << 10


# ------------------------------------------------------------ value parsers
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: Any) -> int:
    """Bytes from an int or a string like "64M", "1G", "512K", "4096" (binary units).

    Raises ValueError with the reason.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size like \"64M\" or a byte count, got {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = _SIZE_RE.match(value)
        if not m:
            raise ValueError(f"cannot read {value!r} as a size "
                             "(use bytes or a number with K, M, G or T)")
        n = int(m.group(1)) * _UNITS[m.group(2).upper()]
    else:
        raise ValueError(f"expected a size like \"64M\" or a byte count, got {type(value).__name__}")
    if n <= 0:
        raise ValueError(f"size must be positive, got {value!r}")
    return n


def parse_file_size(value: Any) -> int:
    """:func:`parse_size` for a backing file: at most the largest file size."""
    n = parse_size(value)
    if n > MAX_SIZE:
        raise ValueError(f"size {value!r} is larger than the largest possible file "
                         f"({MAX_SIZE} bytes, 8 EiB)")
    return n


def format_size(n: int) -> str:
    for unit, mult in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= mult and n % mult == 0:
            return f"{n // mult} {unit}"
    return f"{n} bytes"


_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_IQN_RE = re.compile(
    r"^iqn\.(\d{4})-(\d{2})\." + _LABEL + r"(?:\." + _LABEL + r")*(?::[a-z0-9.:\-]*)?$")
_EUI_RE = re.compile(r"^eui\.[0-9a-fA-F]{16}$")
_NAA_RE = re.compile(r"^naa\.(?:[0-9a-fA-F]{16}|[0-9a-fA-F]{32})$")


def check_iscsi_name(name: Any) -> str | None:
    """None if ``name`` is a valid iSCSI name (RFC 3720 3.2.6.3, RFC 3980), else why not."""
    if not isinstance(name, str):
        return f"expected a string, got {type(name).__name__}"
    if not name:
        return "empty name"
    if len(name.encode()) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    low = name[:4].lower()
    if low == "iqn.":
        if name != name.lower():
            return f"{name!r}: iSCSI names are lowercase (RFC 3722 normalises them)"
        m = _IQN_RE.match(name)
        if not m:
            return (f"{name!r} is not an iqn. name: expected "
                    "iqn.YYYY-MM.reversed.domain[:identifier] with letters, digits, '-', '.', ':'")
        if not 1 <= int(m.group(2)) <= 12:
            return f"{name!r}: month {m.group(2)} in the date is not 01..12"
        return None
    if low == "eui.":
        return None if _EUI_RE.match(name) else f"{name!r}: eui. must be followed by 16 hex digits"
    if low == "naa.":
        return None if _NAA_RE.match(name) else f"{name!r}: naa. must be followed by 16 or 32 hex digits"
    return f"{name!r} does not start with iqn., eui. or naa."


_HOST_RE = re.compile(r"^" + _LABEL + r"(?:\." + _LABEL + r")*$", re.IGNORECASE)


def parse_portal(text: Any) -> Portal:
    """"host:port", "[v6addr]:port", a bare host (port 3260) or a bare port
    (on 127.0.0.1). Raises ValueError."""
    if not isinstance(text, str):
        raise ValueError(f"expected \"host:port\", got {type(text).__name__}")
    s = text.strip()
    port_s: str | None = None
    if s.isdigit():
        # "3550" is a port: no host name is all digits (RFC 1123 2.1 keeps
        # the top label alphabetic), and a number was surely meant as a port.
        host, port_s = DEFAULT_HOST, s
        if not 0 <= int(port_s) <= 65535:
            raise ValueError(f"{text!r}: port must be a number 0..65535 (0 = any free port)")
        return Portal(host, int(port_s))
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: missing ']' after the IPv6 address")
        host, rest = s[1:end], s[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected ':port' after ']'")
            port_s = rest[1:]
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} in brackets is not an IPv6 address") from None
    else:
        if s.count(":") > 1:
            raise ValueError(f"{text!r}: put IPv6 addresses in brackets, e.g. \"[::1]:3260\"")
        host, _, port_s = s.partition(":")
        if not _:
            port_s = None
        if not host:
            raise ValueError(f"{text!r}: missing host")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            if not _HOST_RE.match(host):
                raise ValueError(f"{text!r}: {host!r} is not an IP address or host name") from None
    if port_s is None:
        return Portal(host, DEFAULT_PORT)
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"{text!r}: port must be a number 0..65535 (0 = any free port)")
    return Portal(host, int(port_s))


def check_chap_secret(secret: str) -> str | None:
    """Returns a warning for a legal but unusual secret; raises ValueError if unusable."""
    n = len(secret.encode())
    if n < CHAP_SECRET_MIN:
        raise ValueError(f"secret is {n} bytes; at least {CHAP_SECRET_MIN} are required "
                         "(RFC 7143 12.1.3: shorter CHAP secrets need IPsec)")
    if n > CHAP_SECRET_MAX:
        return (f"secret is {n} bytes; some initiators accept at most {CHAP_SECRET_MAX} "
                "(RFC 7143 only requires support up to 128 bits)")
    return None


# ----------------------------------------------------------- the TOML reader
class _Reader:
    """Walks the parsed TOML with the key path in hand, so errors can name it."""

    def __init__(self, source: str, base: Path) -> None:
        self.source = source
        self.base = base
        self.warnings: list[str] = []

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {problem}" if key else f"{self.source}: {problem}")

    def warn(self, key: str, problem: str) -> None:
        self.warnings.append(f"{self.source}: {key}: {problem}")

    def table(self, value: Any, key: str, allowed: Iterable[str]) -> dict:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {_tname(value)}")
        allowed = tuple(allowed)
        for k in value:
            if k not in allowed:
                raise self.fail(_join(key, k), "unknown key (allowed: " + ", ".join(allowed) + ")")
        return value

    def typed(self, d: dict, key: str, k: str, typ: type, default: Any = None) -> Any:
        if k not in d:
            return default
        v = d[k]
        ok = isinstance(v, typ) and not (typ is int and isinstance(v, bool))
        if not ok:
            raise self.fail(_join(key, k), f"expected {_tname_of(typ)}, got {_tname(v)} {v!r}")
        return v

    def required(self, d: dict, key: str, k: str, typ: type) -> Any:
        if k not in d:
            raise self.fail(_join(key, k), "missing (required)")
        return self.typed(d, key, k, typ)


def _join(key: str, k: str) -> str:
    return f"{key}.{k}" if key else k


def _tname_of(typ: type) -> str:
    return {str: "a string", int: "an integer", bool: "true or false", list: "an array",
            dict: "a table"}.get(typ, typ.__name__)


def _tname(v: Any) -> str:
    return {str: "string", int: "integer", bool: "boolean", float: "float", list: "array",
            dict: "table"}.get(type(v), type(v).__name__)


_TOP_KEYS = ("portals", "discovery", "target", "timeouts", "limits")
_LIMIT_KEYS = tuple(_LIMIT_OPTIONS)
_TIMEOUT_KEYS = ("nop_interval", "nop_timeout", "login_timeout")
_TARGET_KEYS = ("iqn", "alias", "lun", "chap", "initiators", "fault", "fault_control")
_LUN_KEYS = ("lun", "path", "size", "block_size", "read_only", "create", "track", "kind",
             "source", "removable", "physical_block_size", "write_same_zero", "parts",
             "track_granularity", "serial", "cow_dir", "cow_size", "rbd", "track_map",
             "track_map_path", "track_map_lock")
_PART_KEYS = ("path", "size")
_RBD_KEYS = ("pool", "image", "conf", "client_id", "keyring", "op_timeout", "mount_timeout",
             "take_over")
# What an RBD-backed [[target.lun]] takes besides its [target.lun.rbd] table.
_RBD_LUN_KEYS = ("lun", "kind", "rbd", "size", "create", "block_size", "read_only", "track",
                 "removable", "physical_block_size", "write_same_zero", "serial",
                 "track_granularity", "cow_dir", "cow_size", "track_map", "track_map_path",
                 "track_map_lock")
_CHAP_KEYS = ("username", "secret", "mutual_username", "mutual_secret")
_DISCOVERY_KEYS = ("chap",)


def load_file(path: str | os.PathLike) -> ServerConfig:
    """Read and validate a TOML config; relative LUN paths are relative to the file."""
    p = Path(path)
    source = str(path)
    raw = _read_config(source)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{source}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: TOML syntax error: {e}") from None
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively.
        raise ConfigError(f"{source}: TOML syntax error: arrays or tables nested too "
                          "deeply") from None
    except ValueError:
        # Python's limit on int digits (CVE-2020-10735) inside tomllib; TOML
        # itself allows only 64-bit integers.
        raise ConfigError(f"{source}: TOML syntax error: an integer with more digits than "
                          "any setting can use") from None
    return parse_config(data, source=source, base=p.parent)


def _read_config(source: str) -> bytes:
    """The file's bytes; only a regular file of sane size is read.

    O_NONBLOCK makes opening a FIFO return at once (instead of waiting for a
    writer), so fstat can refuse it, like a device, before any read.
    """
    if "\0" in source:
        raise ConfigError(f"{source!r}: cannot read: the path contains a NUL character")
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigError(f"{source}: cannot read: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{source}: cannot read: not a regular file "
                              f"({_file_kind(st.st_mode)})")
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{source}: {st.st_size} bytes is too large for a config file "
                              f"(at most {MAX_CONFIG_BYTES})")
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{source}: cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_CONFIG_BYTES:  # grew between fstat and read
        raise ConfigError(f"{source}: too large for a config file "
                          f"(at most {MAX_CONFIG_BYTES} bytes)")
    return raw


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


def parse_config(data: dict, source: str = "<config>", base: Path | None = None) -> ServerConfig:
    """Validate an already-parsed TOML document (a dict)."""
    r = _Reader(source, base if base is not None else Path.cwd())
    r.table(data, "", _TOP_KEYS)

    portals = _parse_portals(r, data)

    disc_chap = disc_mutual = None
    if "discovery" in data:
        disc = r.table(data["discovery"], "discovery", _DISCOVERY_KEYS)
        if "chap" in disc:
            disc_chap, disc_mutual = _parse_chap(r, disc["chap"], "discovery.chap")

    targets_raw = data.get("target")
    if targets_raw is None:
        raise r.fail("target", "no targets defined (add a [[target]] table)")
    if not isinstance(targets_raw, list):
        raise r.fail("target", "expected an array of tables ([[target]]), got " + _tname(targets_raw))
    if not targets_raw:
        raise r.fail("target", "no targets defined (add a [[target]] table)")
    targets: list[TargetSpec] = []
    seen_iqn: dict[str, str] = {}
    seen_path: dict[str, str] = {}
    for i, t in enumerate(targets_raw):
        spec = _parse_target(r, t, f"target[{i}]", seen_path)
        key = spec.iqn.lower()
        if key in seen_iqn:
            raise r.fail(f"target[{i}].iqn", f"{spec.iqn} is already used by {seen_iqn[key]}")
        seen_iqn[key] = f"target[{i}]"
        targets.append(spec)
    _check_tracking_files([lun for t in targets for lun in t.luns], ".path")
    timeouts = _parse_timeouts(r, data.get("timeouts", {}))
    limits = _parse_limits(r, data.get("limits", {}))
    return ServerConfig(tuple(targets), portals, disc_chap, disc_mutual, source, tuple(r.warnings),
                        limits=limits, **timeouts)


def parse_limit(value: Any) -> int:
    """One memory bound: a size of at least MIN_LIMIT bytes. Raises ValueError."""
    n = parse_size(value)
    if n > MAX_SIZE:
        raise ValueError(f"{value!r} is too large (at most {MAX_SIZE} bytes)")
    if n < MIN_LIMIT:
        raise ValueError(f"{value!r} is too small (at least {format_size(MIN_LIMIT)})")
    return n


def check_limits(limits: Limits) -> list[str]:
    """Warnings for legal bounds with consequences an operator should know."""
    from .target.dataout import MAX_WRITE_BUFFER
    out = []
    conn = limits.effective("connection_write_budget")
    tgt = limits.effective("target_write_budget")
    smaller = min(conn, tgt)
    if smaller < MAX_WRITE_BUFFER:
        which = "connection_write_budget" if conn <= tgt else "target_write_budget"
        out.append(f"{which}: writes of more than {format_size(smaller)} in one command are "
                   "refused (CHECK CONDITION, INVALID FIELD IN CDB); the LUs accept up to "
                   f"{format_size(MAX_WRITE_BUFFER)}")
    if conn > tgt:
        out.append(f"connection_write_budget ({format_size(conn)}) is larger than "
                   f"target_write_budget ({format_size(tgt)}): the target's budget is the bound")
    return out


def _parse_limits(r: _Reader, raw: Any) -> Limits:
    d = r.table(raw, "limits", _LIMIT_KEYS)
    values = {}
    for k in _LIMIT_KEYS:
        if k in d:
            try:
                values[k] = parse_limit(d[k])
            except ValueError as e:
                raise r.fail(_join("limits", k), str(e)) from None
    limits = Limits(**values)
    for w in check_limits(limits):
        r.warn("limits", w)
    return limits


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False          # a host name: it may resolve to anything
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def exposure_warnings(targets: Iterable[TargetSpec], portals: Iterable[Portal]) -> list[str]:
    """One line per target a non-loopback portal exposes with neither CHAP nor an ACL.

    Such a target lets anyone who can reach the address read and overwrite
    its disks; on 127.0.0.0/8 and ::1 only local users can.
    """
    open_portals = [p for p in portals if not _is_loopback(p.host)]
    return [f"target {t.iqn} on portal {p} has neither CHAP nor an initiator ACL: anyone who "
            "can reach it can log in (set [target.chap] or initiators, or listen on 127.0.0.1)"
            for t in targets if t.chap is None and t.initiators is None
            for p in open_portals]


_TRACKING_FILES = ("generation map", "write-intent journal", "identity sidecar")


def _check_tracking_files(luns: list[LunSpec], key_suffix: str) -> None:
    """Refuse a LUN backed by a file the tracker of another LUN here owns.

    Serving such a file lets an initiator overwrite the map that must never
    miss a changed block (DESIGN invariant 1).  Files that exist already are
    also recognised by their magic (check_backing), whoever owns them.
    """
    from volume.tracked import map_paths
    owned: dict[str, str] = {}
    for spec in luns:
        if spec.kind == "disk" and spec.track and not spec.read_only:
            if spec.rbd is not None and spec.track_map_path is None:
                continue                        # the map is in RADOS
            stem = spec.track_map_path if spec.rbd is not None else spec.path
            for what, side in zip(_TRACKING_FILES, map_paths(os.path.realpath(stem))):
                owned[side] = f"the {what} of {spec.where.split(': ', 1)[-1]} ({spec.path})"
    for spec in luns:
        if spec.kind != "disk":
            continue
        for path in spec.backing_paths():
            real = os.path.realpath(path)
            why = owned.get(real)
            if why:
                raise ConfigError(f"{spec.where}{key_suffix}: {path} is {why}; serving it "
                                  "would let writes corrupt change tracking")


def _tracking_magic(path: str) -> str | None:
    from volume.genmap import JOURNAL_MAGIC, MAP_MAGIC
    from volume.tracked import SIDECAR_FORMAT
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:  # missing or unreadable: check_backing / the build report it
        return None
    if head.startswith(MAP_MAGIC):
        return "a generation map"
    if head.startswith(JOURNAL_MAGIC):
        return "a generation map's write-intent journal"
    if head.startswith(b"{") and f'"{SIDECAR_FORMAT}"'.encode() in head:
        return "a volume identity sidecar"
    return None


def _parse_timeouts(r: _Reader, raw: Any) -> dict[str, float]:
    d = r.table(raw, "timeouts", _TIMEOUT_KEYS)
    out = {}
    for k in _TIMEOUT_KEYS:
        if k not in d:
            continue
        v = d[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise r.fail(_join("timeouts", k), f"expected seconds (a number), got {_tname(v)}")
        if not 0 <= v <= 86400 or (v == 0 and k != "nop_interval"):
            raise r.fail(_join("timeouts", k), f"{v} is out of range "
                         f"({'0' if k == 'nop_interval' else 'more than 0'}..86400 seconds)")
        out[k] = float(v)
    return out


def _parse_portals(r: _Reader, data: dict) -> tuple[Portal, ...]:
    if "portals" not in data:
        return (Portal("127.0.0.1", DEFAULT_PORT),)
    raw = data["portals"]
    if not isinstance(raw, list) or not raw:
        raise r.fail("portals", "expected a non-empty array of \"host:port\" strings")
    out: list[Portal] = []
    for i, p in enumerate(raw):
        try:
            portal = parse_portal(p)
        except ValueError as e:
            raise r.fail(f"portals[{i}]", str(e)) from None
        if portal in out and portal.port != 0:
            raise r.fail(f"portals[{i}]", f"{portal} is listed twice")
        out.append(portal)
    return tuple(out)


def _parse_chap(r: _Reader, raw: Any, key: str) -> tuple[Chap | None, Chap | None]:
    d = r.table(raw, key, _CHAP_KEYS)
    user = r.typed(d, key, "username", str)
    secret = r.typed(d, key, "secret", str)
    muser = r.typed(d, key, "mutual_username", str)
    msecret = r.typed(d, key, "mutual_secret", str)
    if user is None or secret is None:
        missing = "username" if user is None else "secret"
        raise r.fail(_join(key, missing), "missing (CHAP needs both username and secret)")
    chap = _make_chap(r, key, "username", "secret", user, secret)
    mutual = None
    if muser is not None or msecret is not None:
        if muser is None or msecret is None:
            missing = "mutual_username" if muser is None else "mutual_secret"
            raise r.fail(_join(key, missing),
                         "missing (mutual CHAP needs both mutual_username and mutual_secret)")
        mutual = _make_chap(r, key, "mutual_username", "mutual_secret", muser, msecret)
        if msecret == secret:
            raise r.fail(_join(key, "mutual_secret"),
                         "must differ from secret (RFC 7143 12.1.3 forbids one secret "
                         "for both directions)")
    return chap, mutual


def _make_chap(r: _Reader, key: str, ukey: str, skey: str, user: str, secret: str) -> Chap:
    if not user or any(ord(c) < 0x20 for c in user):
        raise r.fail(_join(key, ukey), "must be a non-empty printable string")
    try:
        warning = check_chap_secret(secret)
    except ValueError as e:
        raise r.fail(_join(key, skey), str(e)) from None
    if warning:
        r.warn(_join(key, skey), warning)
    return Chap(user, secret)


def _parse_target(r: _Reader, raw: Any, key: str, seen_path: dict[str, str]) -> TargetSpec:
    d = r.table(raw, key, _TARGET_KEYS)
    iqn = r.required(d, key, "iqn", str)
    why = check_iscsi_name(iqn)
    if why:
        raise r.fail(_join(key, "iqn"), why)
    alias = r.typed(d, key, "alias", str, "")
    if len(alias.encode()) > 255:
        raise r.fail(_join(key, "alias"), "longer than 255 bytes")
    chap = mutual = None
    if "chap" in d:
        chap, mutual = _parse_chap(r, d["chap"], _join(key, "chap"))
    initiators = None
    if "initiators" in d:
        lst = r.typed(d, key, "initiators", list)
        names = []
        for j, name in enumerate(lst):
            why = check_iscsi_name(name)
            if why:
                raise r.fail(f"{key}.initiators[{j}]", why)
            names.append(name.lower())
        initiators = frozenset(names)
    luns_raw = d.get("lun")
    if luns_raw is None or luns_raw == []:
        raise r.fail(_join(key, "lun"), "target has no LUNs (add a [[target.lun]] table)")
    if not isinstance(luns_raw, list):
        raise r.fail(_join(key, "lun"), "expected an array of tables ([[target.lun]]), got "
                     + _tname(luns_raw))
    luns: list[LunSpec] = []
    seen_lun: dict[int, str] = {}
    for j, lraw in enumerate(luns_raw):
        lkey = f"{key}.lun[{j}]"
        spec = _parse_lun(r, lraw, lkey)
        if spec.lun in seen_lun:
            raise r.fail(_join(lkey, "lun"), f"LUN {spec.lun} is already used by {seen_lun[spec.lun]}")
        seen_lun[spec.lun] = lkey
        if spec.kind == "backup":
            luns.append(spec)
            continue
        if spec.rbd is not None:
            if spec.backing in seen_path:
                raise r.fail(_join(lkey, "rbd"), f"{spec.backing} is already used by "
                             f"{seen_path[spec.backing]}")
            seen_path[spec.backing] = lkey
        for path in spec.backing_paths():
            real = os.path.realpath(path)
            if real in seen_path:
                raise r.fail(_join(lkey, "path"), f"{path} is already used by {seen_path[real]}")
            seen_path[real] = lkey
        luns.append(spec)
    _check_backup_sources(r, key, luns)
    faults = _parse_faults(r, d, key)
    fault_control = r.typed(d, key, "fault_control", bool, False)
    return TargetSpec(iqn, tuple(luns), alias, chap, mutual, initiators, faults, fault_control)


def _parse_faults(r: _Reader, d: dict, key: str) -> tuple:
    """[[target.fault]] tables, checked by the one rule parser (docs/config.md)."""
    if "fault" not in d:
        return ()
    from .interceptors.faults import FaultRuleError, parse_rule
    raw = d["fault"]
    fkey = _join(key, "fault")
    if not isinstance(raw, list):
        raise r.fail(fkey, "expected an array of tables ([[target.fault]]), got " + _tname(raw))
    for j, item in enumerate(raw):
        try:
            parse_rule(item, f"{fkey}[{j}]")
        except FaultRuleError as e:
            raise ConfigError(f"{r.source}: {e}") from None
    return tuple(raw)


def _check_backup_sources(r: _Reader, key: str, luns: list[LunSpec]) -> None:
    by_lun = {s.lun: s for s in luns}
    used: dict[int, int] = {}
    for j, s in enumerate(luns):
        if s.kind != "backup":
            continue
        src = by_lun.get(s.source)
        where = f"{key}.lun[{j}].source"
        if src is None:
            raise r.fail(where, f"LUN {s.source} is not defined in this target")
        if src.kind != "disk":
            raise r.fail(where, f"LUN {s.source} is a {src.kind} LUN, not a disk")
        if not src.track:
            raise r.fail(where, f"LUN {s.source} has track = false; a backup device needs "
                         "tracking")
        if src.read_only:
            raise r.fail(where, f"LUN {s.source} is read-only, so it is not tracked")
        if s.source in used:
            raise r.fail(where, f"LUN {s.source} already has backup device LUN {used[s.source]}")
        used[s.source] = s.lun


def _parse_lun(r: _Reader, raw: Any, key: str) -> LunSpec:
    d = r.table(raw, key, _LUN_KEYS)
    lun = r.required(d, key, "lun", int)
    if not 0 <= lun <= MAX_LUN:
        raise r.fail(_join(key, "lun"), f"LUN {lun} out of range 0..{MAX_LUN}")
    kind = r.typed(d, key, "kind", str, "disk")
    if kind not in LU_KINDS:
        raise r.fail(_join(key, "kind"), f"{kind!r} is not supported (supported: {', '.join(LU_KINDS)})")
    if kind == "backup":
        extra = [k for k in d if k not in ("lun", "kind", "source")]
        if extra:
            raise r.fail(_join(key, extra[0]), "not allowed for kind = \"backup\" (only lun "
                         "and source: the device has no backing file)")
        source = r.required(d, key, "source", int)
        if source == lun:
            raise r.fail(_join(key, "source"), "a backup device cannot be its own source")
        return LunSpec(lun=lun, path=Path(), kind="backup", source=source, track=False,
                       where=f"{r.source}: {key}")
    if "source" in d:
        raise r.fail(_join(key, "source"), "only for kind = \"backup\"")
    if kind == "tape":
        return _parse_tape(r, d, key, lun)
    if "rbd" in d:
        return _parse_rbd_lun(r, d, key, lun)
    rbd_only = next((k for k in ("track_map", "track_map_path", "track_map_lock") if k in d), None)
    if rbd_only:
        raise r.fail(_join(key, rbd_only), "only for RBD-backed LUNs ([target.lun.rbd]); a file "
                     "LUN's map is always beside its backing file")
    path, size = _parse_backing(r, d, key)
    block_size = r.typed(d, key, "block_size", int, 512)
    if block_size not in BLOCK_SIZES:
        raise r.fail(_join(key, "block_size"), f"{block_size} is not supported (use 512 or 4096)")
    phys = r.typed(d, key, "physical_block_size", int, block_size)
    ratio = phys // block_size
    if phys % block_size or ratio < 1 or ratio & (ratio - 1) or ratio > 1 << 15:
        raise r.fail(_join(key, "physical_block_size"), f"{phys} is not a power-of-two "
                     f"multiple of the block size {block_size}")
    spec = LunSpec(
        lun=lun, path=path, size=size, block_size=block_size,
        removable=r.typed(d, key, "removable", bool, False),
        physical_block_size=phys if phys != block_size else None,
        write_same_zero=r.typed(d, key, "write_same_zero", bool, False),
        read_only=r.typed(d, key, "read_only", bool, False),
        create=r.typed(d, key, "create", bool, False),
        track=r.typed(d, key, "track", bool, True),
        track_granularity=_parse_granularity(r, d, key),
        serial=_parse_serial(r, d, key),
        cow_dir=_parse_cow_dir(r, d, key), cow_size=_parse_cow_size(r, d, key),
        kind=kind, where=f"{r.source}: {key}")
    problem = check_backing(spec)
    if problem:
        raise r.fail(_join(key, problem[0]), problem[1])
    cow = next((k for k in ("cow_dir", "cow_size") if k in d), None)
    if cow and (not spec.track or spec.read_only):
        raise r.fail(_join(key, cow), "only for tracked disks (backups of untracked or "
                     "read-only LUNs have no copy-before-write)")
    if "parts" in d:
        spec = replace(spec, parts=_parse_parts(r, d["parts"], _join(key, "parts"), spec))
    return spec


def _parse_rbd_lun(r: _Reader, d: dict, key: str, lun: int) -> LunSpec:
    """A disk on an RBD image: ``rbd = { pool, image, conf, client_id, keyring, ... }``."""
    from volume.rbdstore import RbdSpec, parse_rbd_name
    extra = [k for k in d if k not in _RBD_LUN_KEYS]
    if extra:
        why = ("an RBD-backed LUN has no backing file" if extra[0] in ("path", "parts") else
               "not allowed with rbd")
        raise r.fail(_join(key, extra[0]), f"{why} (allowed: {', '.join(_RBD_LUN_KEYS)})")
    rkey = _join(key, "rbd")
    t = r.table(d["rbd"], rkey, _RBD_KEYS)
    pool = r.required(t, rkey, "pool", str)
    image = r.required(t, rkey, "image", str)
    try:
        parse_rbd_name(f"{pool}/{image}")
    except ValueError as e:
        raise r.fail(rkey, str(e)) from None
    opts: dict[str, Any] = {}
    for k in ("conf", "keyring"):
        v = r.typed(t, rkey, k, str)
        if v is not None:
            path = Path(v).expanduser()
            if not path.is_absolute():
                path = r.base / path
            if not path.is_file():
                raise r.fail(_join(rkey, k), f"{path} does not exist or is not a file")
            opts[k] = str(path)
    client = r.typed(t, rkey, "client_id", str)
    if client is not None:
        if not client or client.startswith("client.") or any(c.isspace() for c in client):
            raise r.fail(_join(rkey, "client_id"), f"{client!r}: expected the id alone, "
                         "e.g. \"admin\" for client.admin")
        opts["client_id"] = client
    for k in ("op_timeout", "mount_timeout"):
        if k in t:
            v = t[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 3600:
                raise r.fail(_join(rkey, k), f"{v!r}: expected seconds, more than 0 and at "
                             "most 3600")
            opts[k] = float(v)
    if r.typed(t, rkey, "take_over", bool, False):
        opts["take_over"] = True
    spec_rbd = RbdSpec(pool, image, **opts)
    size = _parse_size_key(r, d, key)
    create = r.typed(d, key, "create", bool, False)
    read_only = r.typed(d, key, "read_only", bool, False)
    if size is not None and not create:
        raise r.fail(_join(key, "size"), "the capacity comes from the image (rbd resize); "
                     "size only sets the size of an image created with create = true")
    if create and size is None:
        raise r.fail(_join(key, "create"), "needs a size for the new image")
    if create and read_only:
        raise r.fail(_join(key, "create"), "a read-only LUN cannot create its image")
    track = r.typed(d, key, "track", bool, True)
    track_map = r.typed(d, key, "track_map", str, "rados")
    if track_map not in ("rados", "file"):
        raise r.fail(_join(key, "track_map"), f"{track_map!r}: expected \"rados\" (the map "
                     "in objects beside the image) or \"file\" (in files at track_map_path)")
    map_path = r.typed(d, key, "track_map_path", str)
    if map_path is not None:
        if track_map != "file":
            raise r.fail(_join(key, "track_map_path"), "only with track_map = \"file\"")
        map_path = Path(map_path).expanduser()
        if not map_path.is_absolute():
            map_path = r.base / map_path
    elif track_map == "file":
        raise r.fail(_join(key, "track_map"), "\"file\" needs track_map_path (the stem of "
                     "the map files: PATH.genmap, PATH.genmap.dirty, PATH.volume)")
    lock = None
    if "track_map_lock" in d:
        lock = d["track_map_lock"]
        if isinstance(lock, bool) or not isinstance(lock, (int, float)) or not 2 <= lock <= 3600:
            raise r.fail(_join(key, "track_map_lock"), f"{lock!r}: expected seconds, 2 to 3600")
        if track_map != "rados":
            raise r.fail(_join(key, "track_map_lock"), "only with track_map = \"rados\"")
        lock = float(lock)
    granularity = _parse_granularity(r, d, key)
    cow_dir, cow_size = _parse_cow_dir(r, d, key), _parse_cow_size(r, d, key)
    if not track or read_only:
        for k in ("track_granularity", "cow_dir", "cow_size", "track_map", "track_map_path",
                  "track_map_lock"):
            if k in d:
                raise r.fail(_join(key, k), "only for tracked disks (track = true, not "
                             "read-only)")
    block_size = r.typed(d, key, "block_size", int, 512)
    if block_size not in BLOCK_SIZES:
        raise r.fail(_join(key, "block_size"), f"{block_size} is not supported (use 512 or 4096)")
    if size is not None and size % block_size:
        raise r.fail(_join(key, "size"), f"{size} bytes is not a multiple of the block size "
                     f"{block_size}")
    phys = r.typed(d, key, "physical_block_size", int, block_size)
    ratio = phys // block_size
    if phys % block_size or ratio < 1 or ratio & (ratio - 1) or ratio > 1 << 15:
        raise r.fail(_join(key, "physical_block_size"), f"{phys} is not a power-of-two "
                     f"multiple of the block size {block_size}")
    return LunSpec(lun=lun, path=Path(), size=size, block_size=block_size, read_only=read_only,
                   create=create, removable=r.typed(d, key, "removable", bool, False),
                   physical_block_size=phys if phys != block_size else None,
                   write_same_zero=r.typed(d, key, "write_same_zero", bool, False),
                   track=track, serial=_parse_serial(r, d, key), kind="disk",
                   where=f"{r.source}: {key}", rbd=spec_rbd, track_granularity=granularity,
                   cow_dir=cow_dir, cow_size=cow_size, track_map=track_map,
                   track_map_path=map_path, track_map_lock=lock)


def _parse_serial(r: _Reader, d: dict, key: str) -> str | None:
    serial = r.typed(d, key, "serial", str)
    if serial is not None and not _SERIAL_RE.match(serial):
        raise r.fail(_join(key, "serial"), f"{serial!r}: expected 1..{MAX_SERIAL} printable "
                     "ASCII characters without spaces")
    return serial


_TAPE_KEYS = ("lun", "kind", "path", "size", "create", "read_only")


def _parse_tape(r: _Reader, d: dict, key: str, lun: int) -> LunSpec:
    """A tape LUN: ``path`` is a tape image (docs/tape-image-format.md); ``size`` is the
    native capacity of an image created with ``create = true``."""
    extra = [k for k in d if k not in _TAPE_KEYS]
    if extra:
        raise r.fail(_join(key, extra[0]), "not allowed for kind = \"tape\" (allowed: "
                     + ", ".join(_TAPE_KEYS) + ")")
    path, size = _parse_backing(r, d, key)
    spec = LunSpec(lun=lun, path=path, size=size,
                   read_only=r.typed(d, key, "read_only", bool, False),
                   create=r.typed(d, key, "create", bool, False), track=False, kind="tape",
                   where=f"{r.source}: {key}")
    problem = check_tape(spec)
    if problem:
        raise r.fail(_join(key, problem[0]), problem[1])
    return spec


def check_tape(spec: LunSpec) -> tuple[str, str] | None:
    """(key, problem) if the tape image and the flags can't go together."""
    path = spec.path
    if path.exists():
        if not path.is_file():
            return "path", f"{path} is not a regular file"
        if spec.size is not None:
            return "size", f"{path} exists; size only sets the capacity of a new image"
        return None
    if not spec.create:
        return "path", (f"{path} does not exist (create it with `scsi-target tape new`, "
                        "or set create = true and a size)")
    if spec.read_only:
        return "path", f"{path} does not exist (a read-only tape needs an existing image)"
    if spec.size is None:
        return "size", f"{path} does not exist and no size (capacity) is given to create it"
    if not path.parent.is_dir():
        return "path", f"{path}: directory {path.parent} does not exist"
    return None


def _parse_granularity(r: _Reader, d: dict, key: str) -> int | None:
    if "track_granularity" not in d:
        return None
    k = _join(key, "track_granularity")
    try:
        g = parse_size(d["track_granularity"])
    except ValueError as e:
        raise r.fail(k, str(e)) from None
    if g < 512 or g > 16 << 20 or g & (g - 1):
        raise r.fail(k, f"{g} bytes is not a power of two between 512 and 16M")
    return g


def parse_cow_size(value: Any) -> int:
    """A preservation bound: a size, or 0 (no copy-before-write space at all)."""
    if value == 0 and not isinstance(value, bool) or value == "0":
        return 0
    return parse_size(value)


def check_cow_dir(path: Path) -> str | None:
    if not path.is_dir():
        return f"{path} is not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable"
    return None


def _parse_cow_dir(r: _Reader, d: dict, key: str) -> Path | None:
    if "cow_dir" not in d:
        return None
    k = _join(key, "cow_dir")
    s = r.typed(d, key, "cow_dir", str)
    path = Path(s).expanduser()
    if not path.is_absolute():
        path = r.base / path
    problem = check_cow_dir(path)
    if problem:
        raise r.fail(k, problem)
    return path


def _parse_cow_size(r: _Reader, d: dict, key: str) -> int | None:
    if "cow_size" not in d:
        return None
    try:
        return parse_cow_size(d["cow_size"])
    except ValueError as e:
        raise r.fail(_join(key, "cow_size"), str(e)) from None


def _parse_backing(r: _Reader, d: dict, key: str) -> tuple[Path, int | None]:
    path_s = r.required(d, key, "path", str)
    if not path_s:
        raise r.fail(_join(key, "path"), "empty path")
    if "\0" in path_s:
        raise r.fail(_join(key, "path"), f"{path_s!r} contains a NUL character")
    path = Path(path_s).expanduser()
    if not path.is_absolute():
        path = r.base / path
    return path, _parse_size_key(r, d, key)


def _parse_size_key(r: _Reader, d: dict, key: str) -> int | None:
    if "size" not in d:
        return None
    try:
        return parse_file_size(d["size"])
    except ValueError as e:
        raise r.fail(_join(key, "size"), str(e)) from None


def _parse_parts(r: _Reader, raw: Any, key: str, first: LunSpec) -> tuple:
    """The further files of a concatenated volume; each checked like the first."""
    if not isinstance(raw, list) or not raw:
        raise r.fail(key, "expected a non-empty array of tables ({ path = ..., size = ... })")
    parts = []
    seen = {os.path.realpath(first.path)}
    for i, praw in enumerate(raw):
        pkey = f"{key}[{i}]"
        path, size = _parse_backing(r, r.table(praw, pkey, _PART_KEYS), pkey)
        real = os.path.realpath(path)
        if real in seen:
            raise r.fail(_join(pkey, "path"), f"{path} is already part of this volume")
        seen.add(real)
        problem = check_backing(replace(first, path=path, size=size, parts=()))
        if problem:
            raise r.fail(_join(pkey, problem[0]), problem[1])
        parts.append((path, size))
    return tuple(parts)


def check_backing(spec: LunSpec) -> tuple[str, str] | None:
    """(key, problem) if the backing file and the size/flags can't go together."""
    path = spec.path
    exists = path.exists()
    if exists and not path.is_file():
        return "path", f"{path} is not a regular file"
    why = _tracking_magic(path) if exists else None
    if why:
        return "path", f"{path} is {why}; serving it would let writes corrupt change tracking"
    if not exists:
        if not path.parent.is_dir() and not spec.create:
            return "path", f"{path}: directory {path.parent} does not exist"
        if spec.read_only:
            return "path", f"{path} does not exist (a read-only LUN needs an existing file)"
        if not spec.create:
            return "path", f"{path} does not exist (set create = true and a size to create it)"
        if spec.size is None:
            return "size", f"{path} does not exist and no size is given to create it"
        size = spec.size
    else:
        actual = path.stat().st_size
        if spec.size is not None and spec.size != actual:
            return "size", (f"{path} is {actual} bytes but size is {spec.size}; "
                            "resize the file or drop the size key")
        size = actual
        if size == 0:
            return "path", f"{path} is empty (0 bytes)"
    if size % spec.block_size:
        return "size", (f"{size} bytes is not a multiple of the block size {spec.block_size}")
    return None


# ----------------------------------------------------------- quick flags
def parse_disk_arg(text: str) -> tuple[Path, int | None]:
    """"PATH[:SIZE]": the part after the last ':' is a size when it reads as one."""
    path_s, sep, size_s = text.rpartition(":")
    if not text or (sep and not path_s):
        raise ValueError("no file name before the size (expected PATH[:SIZE])")
    if "\0" in text:
        raise ValueError("the path contains a NUL character")
    if sep and path_s:
        try:
            return Path(path_s).expanduser(), parse_file_size(size_s)
        except ValueError:
            if re.match(r"^\s*\d", size_s):
                raise  # "disk.img:64Q": clearly meant as a size
    return Path(text).expanduser(), None


def parse_rbd_disk_arg(text: str, conf: str | None = None, client_id: str | None = None,
                       keyring: str | None = None, take_over: bool = False):
    """"rbd:POOL/IMAGE[:SIZE]" as (RbdSpec, size or None); ValueError says what is wrong."""
    from volume.rbdstore import RbdSpec, parse_rbd_name
    body = text[len("rbd:"):]
    name, sep, size_s = body.rpartition(":")
    size = None
    if sep:
        size = parse_file_size(size_s)
    else:
        name = body
    pool, image = parse_rbd_name(name)
    opts: dict[str, Any] = {}
    for flag, k, v in (("--ceph-conf", "conf", conf), ("--ceph-keyring", "keyring", keyring)):
        if v is not None:
            path = Path(v).expanduser()
            if not path.is_file():
                raise ValueError(f"{flag} {v}: does not exist or is not a file")
            opts[k] = str(path)
    if client_id is not None:
        if not client_id or client_id.startswith("client.") or \
                any(c.isspace() for c in client_id):
            raise ValueError(f"--ceph-id {client_id!r}: expected the id alone, e.g. admin")
        opts["client_id"] = client_id
    if size is not None and size % 512:
        raise ValueError(f"{size} bytes is not a multiple of the block size 512")
    if take_over:
        opts["take_over"] = True
    return RbdSpec(pool, image, **opts), size


def from_flags(*, listen: list[str] | None = None, iqn: str | None = None,
               disks: list[str] | None = None, track: bool = True,
               ceph_conf: str | None = None, ceph_id: str | None = None,
               ceph_keyring: str | None = None, rbd_take_over: bool = False,
               chap: str | None = None, backup_device: bool = False,
               tapes: list[str] | None = None, cow_dir: str | None = None,
               cow_size: str | None = None, write_budget: str | None = None,
               target_write_budget: str | None = None,
               send_queue_bound: str | None = None) -> ServerConfig:
    """The configuration the quick flags describe; no flags = the embedded default.

    Disks become LUNs 0, 1, ... of one target, tape images (``--tape``) the
    LUNs after them.  A disk with a size is created (sparse) if missing; one
    without a size must exist.  With tapes and no disks there is no default disk.
    """
    src = "command line"
    try:
        portals = tuple(parse_portal(p) for p in (listen or [f"127.0.0.1:{DEFAULT_PORT}"]))
    except ValueError as e:
        raise ConfigError(f"{src}: --listen: {e}") from None
    name = iqn or DEFAULT_IQN
    why = check_iscsi_name(name)
    if why:
        raise ConfigError(f"{src}: --iqn: {why}")
    warnings: list[str] = []
    chap_def = None
    if chap is not None:
        user, sep, secret = chap.partition(":")
        if not sep or not user or not secret:
            raise ConfigError(f"{src}: --chap: expected USER:SECRET")
        try:
            w = check_chap_secret(secret)
        except ValueError as e:
            raise ConfigError(f"{src}: --chap: {e}") from None
        if w:
            warnings.append(f"{src}: --chap: {w}")
        chap_def = Chap(user, secret)
    cow_path, cow_bytes = None, None
    if cow_dir is not None:
        cow_path = Path(cow_dir).expanduser()
        problem = check_cow_dir(cow_path)
        if problem:
            raise ConfigError(f"{src}: --cow-dir: {problem}")
    if cow_size is not None:
        try:
            cow_bytes = parse_cow_size(cow_size)
        except ValueError as e:
            raise ConfigError(f"{src}: --cow-size: {e}") from None
    values = {}
    for key, flag, v in (("connection_write_budget", "--write-budget", write_budget),
                         ("target_write_budget", "--target-write-budget", target_write_budget),
                         ("send_queue_bound", "--send-queue-bound", send_queue_bound)):
        if v is not None:
            try:
                values[key] = parse_limit(v)
            except ValueError as e:
                raise ConfigError(f"{src}: {flag}: {e}") from None
    limits = Limits(**values)
    warnings += [f"{src}: {w}" for w in check_limits(limits)]
    if (cow_dir is not None or cow_size is not None) and not track:
        raise ConfigError(f"{src}: --cow-dir/--cow-size need tracking (drop --no-track)")
    if not any(d.startswith("rbd:") for d in disks or []):
        for flag, v in (("--ceph-conf", ceph_conf), ("--ceph-id", ceph_id),
                        ("--ceph-keyring", ceph_keyring),
                        ("--rbd-take-over", True if rbd_take_over else None)):
            if v is not None:
                raise ConfigError(f"{src}: {flag} applies to RBD disks only "
                                  "(--disk rbd:POOL/IMAGE)")
    if disks:
        items = []
        for d in disks:
            try:
                items.append(parse_rbd_disk_arg(d, ceph_conf, ceph_id, ceph_keyring,
                                                take_over=rbd_take_over)
                             if d.startswith("rbd:") else parse_disk_arg(d))
            except ValueError as e:
                raise ConfigError(f"{src}: --disk {d}: {e}") from None
    elif tapes:
        items = []
    else:
        items = [(DEFAULT_DISK, DEFAULT_DISK_SIZE)]
    luns = []
    seen: dict[str, int] = {}
    for n, (path, size) in enumerate(items):
        if not isinstance(path, Path):        # an RbdSpec: its map in RADOS when tracked
            where = f"{src}: --disk {path}"
            if str(path) in seen:
                raise ConfigError(f"{where}: already used by LUN {seen[str(path)]}")
            seen[str(path)] = n
            luns.append(LunSpec(lun=n, path=Path(), size=size, create=size is not None,
                                track=track, where=where, rbd=path, cow_dir=cow_path,
                                cow_size=cow_bytes))
            continue
        where = f"{src}: --disk {path}" if disks else f"{src}: default disk"
        real = os.path.realpath(path)
        if real in seen:
            raise ConfigError(f"{where}: already used by LUN {seen[real]}")
        seen[real] = n
        if not disks and path.exists():
            size = None  # the default size only applies when creating the file
        spec = LunSpec(lun=n, path=path, size=size, create=size is not None, track=track,
                       cow_dir=cow_path, cow_size=cow_bytes, where=where)
        problem = check_backing(spec)
        if problem:
            # check_backing speaks TOML; on the command line a size creates the file.
            msg = problem[1].replace("(set create = true and a size to create it)",
                                     "(give a size, PATH:SIZE, to create it)")
            raise ConfigError(f"{where}: {msg}")
        luns.append(spec)
    _check_tracking_files(luns, "")
    if backup_device:
        if not track:
            raise ConfigError(f"{src}: --backup-device needs tracking (drop --no-track)")
        n = len(luns)
        luns += [LunSpec(lun=n + i, path=Path(), kind="backup", source=i, track=False,
                         where=f"{src}: --backup-device for LUN {i}") for i in range(n)]
    for t in tapes or []:
        path = Path(t).expanduser()
        where = f"{src}: --tape {t}"
        real = os.path.realpath(path)
        if real in seen:
            raise ConfigError(f"{where}: already used by LUN {seen[real]}")
        seen[real] = len(luns)
        spec = LunSpec(lun=len(luns), path=path, track=False, kind="tape", where=where)
        problem = check_tape(spec)
        if problem:
            msg = problem[1].replace(", or set create = true and a size", "")
            raise ConfigError(f"{where}: {msg}")
        luns.append(spec)
    return ServerConfig((TargetSpec(name, tuple(luns), chap=chap_def),), portals,
                        source=src, warnings=tuple(warnings), limits=limits)


# ----------------------------------------------------------------- build
def build_lu(spec: LunSpec, target_iqn: str, luns=None):
    """Open the backing store and create the LU for one spec.

    Tracked disks get a TrackingStore (map files beside the backing file);
    backup devices need ``luns`` (the target's LunMap) holding their source.
    """
    from volume.filestore import FileStore
    from .scsi.capabilities import BlockLimits
    from .scsi.disk import DiskLU
    from .scsi.lun import Identity

    if spec.kind == "backup":
        from .scsi.backup_lu import BackupLU
        src = luns.luns.get(spec.source) if luns is not None else None
        if src is None:
            raise ConfigError(f"{spec.where}: source LUN {spec.source} is not defined")
        try:
            # Bound to its disk: unique and stable exactly when the disk's identity is.
            ident = Identity.derive(target_iqn, spec.lun, volume_id=b"backup-device\0"
                                    + src.identity.naa.to_bytes(8, "big"))
            return BackupLU(src, spec.source, identity=ident)
        except ValueError as e:
            raise ConfigError(f"{spec.where}: {e}") from None
    if spec.kind == "tape":
        return _build_tape(spec, target_iqn)
    if spec.kind != "disk":  # parse rejects these; guards callers building specs by hand
        raise ConfigError(f"{spec.where}: kind {spec.kind!r} is not supported")
    if spec.rbd is not None:
        return _build_rbd(spec, target_iqn)
    members = []
    try:
        for path, size in [(spec.path, spec.size), *spec.parts]:
            if spec.create:
                path.parent.mkdir(parents=True, exist_ok=True)
            members.append(FileStore(path, size=size, create=spec.create,
                                     read_only=spec.read_only))
    except BaseException:
        for m in members:
            m.close()
        raise
    if spec.parts:
        from volume.concat import ConcatStore
        store = ConcatStore(members)
    else:
        store = members[0]
    try:
        if spec.track and not spec.read_only:
            from volume.pitcut import CowSettings
            from volume.tracked import TrackingError, TrackingStore
            cow = CowSettings(dir=str(spec.cow_dir) if spec.cow_dir is not None else None,
                              size=spec.cow_size)
            try:
                store = TrackingStore.open(store, spec.path, granularity=spec.track_granularity,
                                           cow=cow)
            except TrackingError as e:
                raise ConfigError(f"{spec.where}: {e}") from None
            vid = store.volume_id
        else:
            from .identity import file_volume_id
            vid = file_volume_id(spec.path, writable=not spec.read_only)
        identity = Identity.derive(target_iqn, spec.lun, serial=spec.serial, volume_id=vid)
        return DiskLU(store, spec.block_size, spec.read_only,
                      identity=identity, removable=spec.removable,
                      physical_block_size=spec.physical_block_size,
                      limits=BlockLimits(write_same_non_zero=not spec.write_same_zero))
    except BaseException:
        store.close()
        raise


def _build_rbd(spec: LunSpec, target_iqn: str):
    """A disk LU on an RBD image: the image's exclusive lock is taken here, so a second
    server for the same image stops with one line naming the holder."""
    from volume.ceph_bindings import CephUnavailable
    from volume.rbdstore import RbdStore
    from volume.store import StoreError
    from .scsi.capabilities import BlockLimits
    from .scsi.disk import DiskLU
    from .scsi.lun import Identity
    try:
        store = RbdStore(spec.rbd, read_only=spec.read_only,
                         create_size=spec.size if spec.create else None)
    except (StoreError, CephUnavailable) as e:
        raise ConfigError(f"{spec.where}: {e}") from None
    try:
        if store.size % spec.block_size:
            raise ConfigError(f"{spec.where}: {spec.rbd} holds {store.size} bytes, not a "
                              f"multiple of the block size {spec.block_size}")
        vid = store.volume_id
        if spec.track and not spec.read_only:
            store = _track_rbd(spec, store)
            vid = store.volume_id
        identity = Identity.derive(target_iqn, spec.lun, serial=spec.serial, volume_id=vid)
        return DiskLU(store, spec.block_size, spec.read_only, identity=identity,
                      removable=spec.removable, physical_block_size=spec.physical_block_size,
                      limits=BlockLimits(write_same_non_zero=not spec.write_same_zero))
    except BaseException:
        store.close()
        raise


def _track_rbd(spec: LunSpec, store):
    """The RBD store with its generation map: in RADOS beside the image (sharing the
    store's client, so fencing the old holder fences its image writes and its map
    writes together), or in files at ``track_map_path``."""
    from volume.genmap import MapError
    from volume.pitcut import CowSettings
    from volume.tracked import TrackingError, TrackingStore
    cow = CowSettings(dir=str(spec.cow_dir) if spec.cow_dir is not None else None,
                      size=spec.cow_size)
    try:
        if spec.track_map == "file":
            return TrackingStore.open(store, spec.track_map_path,
                                      granularity=spec.track_granularity, cow=cow,
                                      volume_id=store.volume_id)
        from volume.radosmap import DEFAULT_LOCK_DURATION, RadosMapStorage
        storage = RadosMapStorage(store.cluster, store.ioctx, store.object_name("genmap")
                                  .rsplit(".", 1)[0],
                                  lock_duration=spec.track_map_lock or DEFAULT_LOCK_DURATION,
                                  take_over=spec.rbd.take_over)
        return TrackingStore.open_rados(store, storage, volume=str(spec.rbd),
                                        granularity=spec.track_granularity, cow=cow,
                                        volume_id=store.volume_id)
    except (TrackingError, MapError, ValueError) as e:
        raise ConfigError(f"{spec.where}: {e}") from None


def _build_tape(spec: LunSpec, target_iqn: str):
    from tape import TapeImage
    from tape.errors import TapeError
    from .scsi.lun import Identity
    from .scsi.tape_lu import TapeLU
    try:
        if spec.path.exists():
            image = TapeImage.open(spec.path, read_only=spec.read_only)
        else:
            image = TapeImage.create(spec.path, spec.size or 0)
    except (TapeError, ValueError) as e:
        raise ConfigError(f"{spec.where}: {e}") from None
    if image.torn_bytes:
        import logging
        logging.getLogger("scsi_target").warning(
            "%s: %d bytes after the last complete object (an interrupted write) will be "
            "cut at the next write", spec.path, image.torn_bytes)
    # The cartridge's own uuid: two images behind one IQN/LUN never look like one device.
    from .scsi import devices
    return TapeLU(image, identity=Identity.derive(target_iqn, spec.lun, product="VIRTUAL-TAPE",
                                                 volume_id=image.sb.uuid), table=devices.TAPE)


def build_registry(cfg: ServerConfig) -> TargetRegistry:
    """Open every LUN's store; on any failure close what was opened and raise ConfigError."""
    from .scsi.lun import LunMap

    reg = TargetRegistry(portals=list(cfg.portals), discovery_chap=cfg.discovery_chap,
                         discovery_mutual_chap=cfg.discovery_mutual_chap)
    try:
        for t in cfg.targets:
            luns = LunMap(t.iqn)
            # Register the map first so a failure below still closes its LUs.
            reg.add(TargetDef(t.iqn, luns, alias=t.alias, chap=t.chap, mutual_chap=t.mutual_chap,
                              allowed_initiators=t.initiators))
            # Backup devices after the disks they are bound to.
            for spec in sorted(t.luns, key=lambda s: s.kind == "backup"):
                try:
                    lu = build_lu(spec, t.iqn, luns)
                except ConfigError:
                    raise
                except Exception as e:  # OSError, ValueError, StoreError from the backing
                    raise ConfigError(f"{spec.where}: {_reason(e, spec.path)}") from None
                luns.add(spec.lun, lu)
            if t.faults or t.fault_control:
                from .interceptors.chain import install
                from .interceptors.faults import FaultInjector, parse_rules
                injector = FaultInjector(parse_rules(list(t.faults)), control=t.fault_control)
                install(luns, faults=injector)
                reg.get(t.iqn).login_check = injector.login_check
                reg.get(t.iqn).transport_faults = injector.connection
    except BaseException:
        reg.close()
        raise
    return reg


def _reason(e: BaseException, path: Path) -> str:
    if isinstance(e, OSError):
        return f"cannot open {path}: {e.strerror or e}"
    text = " ".join(str(e).split())
    # Store errors already name the file; others get it added.
    if str(path) in text:
        return text
    return f"cannot open {path}: {text or type(e).__name__}"


def _rbd_tracking(spec: LunSpec) -> str:
    if not spec.track or spec.read_only:
        return "tracking off"
    if spec.track_map == "file":
        return f"tracking on (map in {spec.track_map_path}.genmap)"
    return f"tracking on (map in RADOS: {spec.rbd.pool}/rbd_map.{spec.rbd.image}.genmap.*)"


def lun_summary(spec: LunSpec) -> str:
    """One line for the operator, e.g. 'LUN 0: disk var/disk0.img, 64 MiB ...'."""
    if spec.kind == "backup":
        return f"LUN {spec.lun}: backup device of LUN {spec.source} (diffbackup, qemu-img convert)"
    if spec.kind == "tape":
        mode = "write-protected" if spec.read_only else "read-write"
        new = (f", new {format_size(spec.size)} image"
               if spec.size and not spec.path.exists() else "")
        return f"LUN {spec.lun}: tape {spec.path}{new}, {mode}"
    if spec.rbd is not None:
        r = spec.rbd
        mode = "read-only" if spec.read_only else "read-write"
        new = f", created at {format_size(spec.size)} if missing" if spec.create else ""
        return (f"LUN {spec.lun}: disk {r} (client.{r.client_id}, "
                f"{r.conf or 'default ceph.conf'}){new}, {spec.block_size}-byte blocks, "
                f"{mode}, exclusive lock, {_rbd_tracking(spec)}")
    sizes = [sz if sz is not None else _file_size(p)
             for p, sz in [(spec.path, spec.size), *spec.parts]]
    size = sum(sizes) if all(sizes) else 0
    blocks = f"{size // spec.block_size} x {spec.block_size}-byte blocks" if size else "size unknown"
    mode = "read-only" if spec.read_only else "read-write"
    track = "tracking on" if spec.track and not spec.read_only else "tracking off"
    where = str(spec.path) + "".join(f" + {p}" for p, _ in spec.parts)
    return (f"LUN {spec.lun}: {spec.kind} {where}, {format_size(size) if size else '?'} "
            f"({blocks}), {mode}, {track}")


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
