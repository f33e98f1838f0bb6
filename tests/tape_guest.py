"""A Linux guest as a tape client: busybox initramfs + Debian cloud kernel under qemu (TCG).

The guest's st driver talks to our tape LUN through qemu's iSCSI driver
(``-device scsi-generic``), runs a shell script and powers off; the console
shows ``@@ <step> rc=<n>`` lines the test parses.  Needs qemu-system-x86,
linux-image-cloud-amd64, busybox-static and mt-st (apt).
"""
from __future__ import annotations

import glob
import os
import shutil
import stat
import subprocess
from pathlib import Path

MODULES = ["kernel/drivers/scsi/scsi_common.ko", "kernel/drivers/scsi/scsi_mod.ko",
           "kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko",
           "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
           "kernel/drivers/virtio/virtio_pci_modern_dev.ko", "kernel/drivers/virtio/virtio_pci.ko",
           "kernel/drivers/scsi/virtio_scsi.ko", "kernel/drivers/scsi/st.ko",
           "kernel/drivers/scsi/sg.ko"]

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
for m in {modules}; do insmod /lib/modules/$m || echo "@@ insmod-$m rc=1"; done
i=0
while [ ! -e /dev/nst0 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
[ -e /dev/nst0 ] && echo "@@ st0 rc=0" || echo "@@ st0 rc=1"
sh /guest.sh 2>&1
echo "@@DONE"
poweroff -f
"""


def kernel() -> tuple[Path, str] | None:
    found = sorted(glob.glob("/boot/vmlinuz-*cloud-amd64"))
    if not found:
        return None
    k = Path(found[-1])
    return k, k.name[len("vmlinuz-"):]


def _cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (name, mode, data) entries (directories have no data)."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], 1):
        nb = name.encode() + b"\x00"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0]
        out += b"070701" + b"".join(f"{v:08X}".encode() for v in fields) + nb
        out += b"\x00" * (-len(out) % 4) + data
        out += b"\x00" * (-len(out) % 4)
    return bytes(out)


def build_initramfs(dest: Path, guest_script: str) -> Path:
    k = kernel()
    assert k is not None
    release = k[1]
    mods = Path("/lib/modules") / release
    entries: list[tuple[str, int, bytes]] = []
    for d in ("bin", "sbin", "proc", "sys", "dev", "tmp", "lib", "lib/modules", "lib64",
              "lib/x86_64-linux-gnu", "usr", "usr/bin"):
        entries.append((d, stat.S_IFDIR | 0o755, b""))
    entries.append(("bin/busybox", stat.S_IFREG | 0o755, Path(shutil.which("busybox")).read_bytes()))
    mt = Path(os.path.realpath(shutil.which("mt-st") or shutil.which("mt")))
    entries.append(("usr/bin/mt-st", stat.S_IFREG | 0o755, mt.read_bytes()))
    for lib in ("/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"):
        entries.append((lib.lstrip("/"), stat.S_IFREG | 0o755,
                        Path(os.path.realpath(lib)).read_bytes()))
    names = []
    for m in MODULES:
        entries.append((f"lib/modules/{Path(m).name}", stat.S_IFREG | 0o644,
                        (mods / m).read_bytes()))
        names.append(Path(m).name)
    entries.append(("init", stat.S_IFREG | 0o755, INIT.format(modules=" ".join(names)).encode()))
    entries.append(("guest.sh", stat.S_IFREG | 0o755, guest_script.encode()))
    dest.write_bytes(_cpio_newc(entries))
    return dest


def boot(initramfs: Path, iscsi_url: str, *, extra_luns: list[str] = (), timeout: float = 600,
         log: Path | None = None) -> str:
    """Boot the guest with the tape LUN(s) attached as SCSI generic devices; the console text."""
    k = kernel()
    assert k is not None
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-nographic", "-no-reboot",
           "-nic", "none", "-kernel", str(k[0]), "-initrd", str(initramfs),
           "-append", "console=ttyS0 panic=-1 quiet loglevel=4",
           "-device", "virtio-scsi-pci,id=scsi0",
           ]
    for k, url in enumerate([iscsi_url, *extra_luns]):
        cmd += ["-drive", f"file={url},if=none,id=t{k},format=raw",
                "-device", f"scsi-generic,drive=t{k},bus=scsi0.0"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    out = p.stdout + p.stderr
    if log is not None:
        log.write_text(out)
    return out


def steps(console: str) -> dict[str, int]:
    """``@@ name rc=N`` lines of the console, as {name: N} (the last one of a name wins)."""
    out: dict[str, int] = {}
    for line in console.splitlines():
        at = line.find("@@ ")  # the console may put escape sequences first
        line = line[at:].strip() if at >= 0 else ""
        if line.startswith("@@ ") and " rc=" in line:
            name, _, rc = line[3:].rpartition(" rc=")
            try:
                out[name] = int(rc.strip())
            except ValueError:
                pass
    return out
