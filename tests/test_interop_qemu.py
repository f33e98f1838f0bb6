"""qemu's iSCSI block driver (libiscsi inside qemu-img/qemu-io) against the server."""
from __future__ import annotations

import hashlib
import os
import re

import pytest

from conftest import IQN_BASE, IQN_QEMU
from scsi_target.testing.process import Lun, Target
from scsi_target.testing.external import require_tool, run_tool
pytestmark = pytest.mark.interop

MiB = 1 << 20
CONVERT_SIZE = 128 * MiB


def qemu_io(url: str, *commands: str, timeout: float = 60.0) -> str:
    args = [require_tool("qemu-io"), "-f", "raw"]
    for c in commands:
        args += ["-c", c]
    r = run_tool(args + [url], timeout=timeout)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"qemu-io {commands} -> {r.returncode}\n{out}"
    # qemu-io exits 0 even when a command fails; failures are printed.
    bad = [line for line in out.splitlines()
           if re.search(r"fail|error|mismatch|Pattern verification", line, re.I)]
    assert not bad, out
    return out


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def test_qemu_img_convert_roundtrip_128mib(interop_server, tmp_path):
    qemu_img = require_tool("qemu-img")
    src, back = tmp_path / "random.raw", tmp_path / "back.raw"
    with open(src, "wb") as f:
        for _ in range(CONVERT_SIZE // (8 * MiB)):
            f.write(os.urandom(8 * MiB))
    url = interop_server.url(0, IQN_QEMU)

    r = run_tool([qemu_img, "convert", "-n", "-f", "raw", "-O", "raw", str(src), url], timeout=120)
    assert r.returncode == 0, r.stderr
    r = run_tool([qemu_img, "info", url], timeout=30)
    assert r.returncode == 0 and "160 MiB" in r.stdout, r.stdout + r.stderr

    # Read back exactly the 128 MiB written (the LUN is larger).
    r = run_tool([qemu_img, "convert", "-O", "raw", "--image-opts", f"driver=raw,size={CONVERT_SIZE},file.driver=iscsi,"
                  f"file.transport=tcp,file.portal={interop_server.host}:{interop_server.port},"
                  f"file.target={IQN_QEMU},file.lun=0", str(back)], timeout=120)
    assert r.returncode == 0, r.stderr
    assert back.stat().st_size == CONVERT_SIZE
    assert sha256(back) == sha256(src)


# offset, length, pattern: 512 B .. 4 MiB, several not aligned to 4 KiB; no overlaps.
PATTERNS = [
    (0, 512, 0x11),
    (512, 4096, 0x22),               # 4 KiB write at a 512-byte offset
    (11 * 512, 1536, 0x33),          # odd sectors
    (64 * 1024 + 512, 64 * 1024, 0x44),
    (1 * MiB - 512, 8192, 0x55),     # crosses a MiB boundary
    (3 * MiB + 1536, 4 * MiB, 0x66),  # 4 MiB, unaligned
    (9 * MiB, 1 * MiB, 0x77),
    (16 * MiB - 512, 512, 0x88),     # last sector of the LUN
]


def _write_patterns(url: str) -> None:
    qemu_io(url, *(f"write -P 0x{p:02x} {off} {ln}" for off, ln, p in PATTERNS))


def _verify_patterns(url: str) -> None:
    qemu_io(url, *(f"read -P 0x{p:02x} {off} {ln}" for off, ln, p in PATTERNS))
    # Untouched neighbours stay zero (the file was created sparse).
    qemu_io(url, "read -P 0 8192 4096", f"read -P 0 {64 * 1024} 512",
            f"read -P 0 {8 * MiB} {MiB}")


def test_qemu_io_patterns_survive_restart(iscsi_server_process):
    require_tool("qemu-io")
    iqn = f"{IQN_BASE}:qemu-io"
    srv = iscsi_server_process([Target(iqn, [Lun(0, "16M")])])
    url = srv.url(0)
    _write_patterns(url)
    _verify_patterns(url)
    srv.restart()                      # data must come from the backing file
    _verify_patterns(srv.url(0))


def test_qemu_io_detects_wrong_pattern(iscsi_server_process):
    """The pattern check itself can fail (so the tests above can)."""
    require_tool("qemu-io")
    srv = iscsi_server_process([Target(f"{IQN_BASE}:qemu-io-neg", [Lun(0, "16M")])])
    qemu_io(srv.url(0), "write -P 0x5a 4096 4096")
    r = run_tool([require_tool("qemu-io"), "-f", "raw", "-c", "read -P 0xa5 4096 4096",
                  srv.url(0)], timeout=60)
    assert "Pattern verification failed" in r.stdout + r.stderr
