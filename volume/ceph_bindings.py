"""Ceph's Python bindings (``rados``, ``rbd``), wherever Debian put them.

Debian's python3-rados / python3-rbd install compiled modules for the system
Python under /usr/lib/python3/dist-packages, which a virtual environment does
not see.  :func:`load` imports them from the environment when they are there,
otherwise from that directory when they were built for this interpreter's
version, and otherwise raises :class:`CephUnavailable` with a one-line reason.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

DEBIAN_DIST_PACKAGES = Path("/usr/lib/python3/dist-packages")
PACKAGES = {"rados": "python3-rados", "rbd": "python3-rbd"}


class CephUnavailable(RuntimeError):
    """The Ceph bindings cannot be imported here."""


def _abi_tag() -> str:
    return f"cpython-{sys.version_info.major}{sys.version_info.minor}"


def load(name: str) -> ModuleType:
    """The ``rados`` or ``rbd`` module."""
    if name not in PACKAGES:
        raise ValueError(f"not a Ceph binding: {name!r}")
    try:
        return importlib.import_module(name)
    except ImportError:
        pass
    built = sorted(DEBIAN_DIST_PACKAGES.glob(f"{name}.*.so"))
    if not built:
        raise CephUnavailable(f"the Python module {name!r} is not installed "
                              f"(Debian package {PACKAGES[name]})")
    if not any(_abi_tag() in p.name for p in built):
        raise CephUnavailable(f"{built[0]} is built for another Python than "
                              f"{sys.version_info.major}.{sys.version_info.minor}")
    # Only the binding itself is taken from the system directory: appended, so the
    # environment's own packages keep precedence.
    if str(DEBIAN_DIST_PACKAGES) not in sys.path:
        sys.path.append(str(DEBIAN_DIST_PACKAGES))
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise CephUnavailable(f"cannot import {name!r} from {DEBIAN_DIST_PACKAGES}: {exc}") from None
