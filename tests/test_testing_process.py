"""scsi_target.testing.process: the real server as a subprocess, by specs or by flags."""
from __future__ import annotations

import os
import signal

from scsi_target.config import DEFAULT_IQN
from scsi_target.initiator.sync import SyncIscsiClient
from scsi_target.testing.process import Lun, ServerProcess, Target, config_toml

BS = 512


def test_flags_mode_serves_the_default_iqn_and_kill_is_sigkill(tmp_path):
    vol = tmp_path / "v.img"
    srv = ServerProcess.from_flags(tmp_path / "srv", "--disk", f"{vol}:4M", "--backup-device")
    with srv:
        assert srv.iqn == DEFAULT_IQN and srv.url(1).endswith(f"/{DEFAULT_IQN}/1")
        urls = [ln.strip() for ln in srv.banner if ln.strip().startswith("iscsi://")]
        assert urls == [srv.url(0), srv.url(1)], srv.banner     # the whole start-up banner
        assert srv.banner[0] == f"listening on 127.0.0.1:{srv.port}"
        data = os.urandom(BS)
        with SyncIscsiClient(srv.url(0)) as c:
            c.test_unit_ready()
            c.write(3, data)
        with SyncIscsiClient(srv.url(1)) as c:       # the backup device of LUN 0
            c.test_unit_ready()
            inq = c.inquiry()
            assert inq[0] == 0 and b"BACKUP" in inq[16:32].upper(), inq[:36]
        assert srv.kill() == -signal.SIGKILL and not srv.alive()
    assert srv.stop() == -signal.SIGKILL              # stopping a dead server keeps its status
    with open(vol, "rb") as f:
        f.seek(3 * BS)
        assert f.read(BS) == data


def test_flags_mode_takes_the_iqn_flag(tmp_path):
    srv = ServerProcess.from_flags(tmp_path, "--iqn", "iqn.2026-12.org.pyscsi.test:flags",
                                   "--disk", f"{tmp_path / 'd.img'}:1M")
    assert srv.iqn == "iqn.2026-12.org.pyscsi.test:flags"


def test_spec_lun_serves_an_existing_file_and_args_add_flags(tmp_path):
    img = tmp_path / "existing.img"
    img.write_bytes(b"\x5a" * (1 << 20))
    iqn = "iqn.2026-12.org.pyscsi.test:existing"
    toml = config_toml([Target(iqn, [Lun(0, None, path=img)])], tmp_path, 0)
    assert f'path = "{img}"' in toml and "size" not in toml and "create" not in toml
    trace = tmp_path / "t.jsonl"
    with ServerProcess(tmp_path / "srv", [Target(iqn, [Lun(0, None, path=img)])],
                       args=("--record", str(trace))) as srv:
        with SyncIscsiClient(srv.url(0)) as c:
            c.test_unit_ready()
            assert c.read_capacity16().blocks == (1 << 20) // BS
            assert c.read(0, 1) == b"\x5a" * BS
    assert srv.proc.returncode == 0
    assert trace.stat().st_size > 0                   # --record reached the server


def test_flags_that_name_the_portal_get_no_second_one(tmp_path):
    with ServerProcess.from_flags(tmp_path, "--listen", "127.0.0.1:0", "--disk",
                                  f"{tmp_path / 'd.img'}:1M", "--no-track") as srv:
        assert srv.banner[0] == f"listening on 127.0.0.1:{srv.port}"     # one portal
        with SyncIscsiClient(srv.url(0)) as c:
            c.test_unit_ready()
