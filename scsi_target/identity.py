"""Where a disk LU's identity (unit serial number, NAA designator) comes from.

Identity must be unique per volume and stable across restarts: udev by-id
and multipath take two LUs with one NAA for one device.  It is derived from a
*volume id*, found in this order (docs/config.md, "Device identity"):

1. a tracked volume: the random volume id in its sidecar (``PATH.volume``);
2. an untracked file that was tracked before: the same sidecar, if present;
3. the extended attribute ``user.pyscsi.volume_id`` on the backing file,
   written with 16 random bytes the first time a writable file is served;
4. where extended attributes are unavailable (filesystem, read-only file):
   a hash of /etc/machine-id, the file's device and inode numbers.

The target name and LUN number play no part, so two servers with the default
IQN serving different images no longer report one serial.
"""
from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

__all__ = ["XATTR", "file_volume_id", "derived_volume_id"]

XATTR = "user.pyscsi.volume_id"
VOLUME_ID_BYTES = 16
_MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")
# errnos meaning "no xattrs here", as opposed to a real I/O problem.
_NO_XATTR = {errno.ENOTSUP, errno.EOPNOTSUPP, errno.EROFS, errno.EACCES, errno.EPERM,
             errno.ENOSPC, errno.EDQUOT, errno.E2BIG}


def file_volume_id(path: str | os.PathLike, *, writable: bool) -> bytes:
    """The volume id of an untracked backing file (steps 2-4 above)."""
    from volume.tracked import TrackingError, map_paths, read_sidecar
    try:
        return bytes.fromhex(read_sidecar(map_paths(path)[2])["volume_id"])
    except (FileNotFoundError, TrackingError):
        pass   # never tracked, or a sidecar the tracker would refuse: not an identity
    try:
        vid = os.getxattr(path, XATTR)
        if 1 <= len(vid) <= 32:
            return vid
    except OSError as e:
        if e.errno not in _NO_XATTR and e.errno != errno.ENODATA:
            raise
    if writable:
        vid = os.urandom(VOLUME_ID_BYTES)
        try:
            os.setxattr(path, XATTR, vid, os.XATTR_CREATE)
            return vid
        except FileExistsError:   # another process named it first: take its id
            return os.getxattr(path, XATTR)
        except OSError as e:
            if e.errno not in _NO_XATTR:
                raise
    return derived_volume_id(path)


def derived_volume_id(path: str | os.PathLike) -> bytes:
    """Step 4: stable while the file exists on this machine (same inode)."""
    st = os.stat(path)
    h = hashlib.sha256(b"pyscsi-file-volume\0")
    h.update(_machine_id())
    h.update(f"\0{st.st_dev}\0{st.st_ino}".encode())
    return h.digest()[:VOLUME_ID_BYTES]


def _machine_id() -> bytes:
    for name in _MACHINE_ID_FILES:
        try:
            mid = Path(name).read_bytes().strip()
        except OSError:
            continue
        if mid:
            return mid
    return os.uname().nodename.encode()
