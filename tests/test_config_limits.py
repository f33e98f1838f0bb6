"""Memory bounds from the configuration (issue 12): `[limits]`, the serve flags, the server.

Parsing is checked on the library API and the CLI's one-line errors; that the
bounds reach the server is checked in behaviour: a real `scsi-target serve`
whose configured write budget is smaller than a write refuses that write with
the sequencer's sense (ILLEGAL REQUEST / INVALID FIELD IN CDB) and still takes
the writes that fit.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from scsi_target import cli
from scsi_target import config as C
from scsi_target.initiator.sync import SyncIscsiClient
from scsi_target.target import budget as B
from scsi_target.target.server import IscsiServer
from scsi_target.testing.process import ServerProcess

IQN = "iqn.2026-11.org.pyscsi:limits"
MiB = 1 << 20


def _toml(tmp_path, limits: str) -> Path:
    p = tmp_path / "t.toml"
    p.write_text(f'portals = ["127.0.0.1:0"]\n{limits}\n[[target]]\niqn = "{IQN}"\n'
                 f'[[target.lun]]\nlun = 0\npath = "d.img"\nsize = "8M"\ncreate = true\n'
                 'track = false\n')
    return p


# ------------------------------------------------------------------ parsing
def test_limits_table_is_parsed_and_reaches_the_server_options(tmp_path):
    cfg = C.load_file(_toml(tmp_path, '[limits]\nconnection_write_budget = "1M"\n'
                                      'target_write_budget = 3145728\nsend_queue_bound = "256K"'))
    assert cfg.limits == C.Limits(1 * MiB, 3 * MiB, 256 << 10)
    opts = cfg.server_options()
    assert (opts["write_budget"], opts["target_write_budget"], opts["send_queue_bound"]) \
        == (1 * MiB, 3 * MiB, 256 << 10)
    # Small write budgets are legal but refuse large writes: the operator is told.
    assert any("writes of more than 1 MiB in one command are refused" in w for w in cfg.warnings)


def test_unset_limits_leave_the_server_defaults(tmp_path):
    cfg = C.load_file(_toml(tmp_path, ""))
    assert "write_budget" not in cfg.server_options() and not cfg.warnings
    assert cfg.limits.effective("send_queue_bound") == B.SEND_QUEUE_BOUND
    assert cfg.limits.effective("connection_write_budget") == B.CONNECTION_WRITE_BUDGET
    assert cfg.limits.effective("target_write_budget") == B.TARGET_WRITE_BUDGET


@pytest.mark.parametrize("line, message", [
    ('connection_write_budget = "1K"', "limits.connection_write_budget: '1K' is too small "
                                       "(at least 64 KiB)"),
    ("send_queue_bound = 0", "limits.send_queue_bound: size must be positive, got 0"),
    ("send_queue_bound = -5", "limits.send_queue_bound: size must be positive, got -5"),
    ("target_write_budget = true", "limits.target_write_budget: expected a size"),
    ('target_write_budget = "lots"', "limits.target_write_budget: cannot read 'lots' as a size"),
    ("send_queue_bound = 1.5", "limits.send_queue_bound: expected a size like"),
    ("send_queue_bound = 99999999999999999999999999",
     "limits.send_queue_bound: 99999999999999999999999999 is too large (at most 9223372036854775807"),
    ('target_write_budget = "99999999T"', "limits.target_write_budget: '99999999T' is too large"),
    ('window = "1M"', "limits.window: unknown key (allowed: connection_write_budget, "
                      "target_write_budget, send_queue_bound)"),
])
def test_bad_limits_are_one_line_errors(tmp_path, capsys, line, message):
    path = _toml(tmp_path, f"[limits]\n{line}")
    assert cli.main(["check", str(path)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_limits_must_be_a_table(tmp_path, capsys):
    path = _toml(tmp_path, 'limits = "1M"')
    assert cli.main(["check", str(path)]) == cli.EXIT_USAGE
    assert "limits: expected a table, got string" in capsys.readouterr().err


def test_flags_are_validated_like_the_table(tmp_path, capsys):
    disk = f"{tmp_path / 'd.img'}:1M"
    assert cli.main(["serve", "--disk", disk, "--send-queue-bound", "12"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err == ("scsi-target: error: command line: --send-queue-bound: '12' is too small "
                   "(at least 64 KiB)\n")
    assert cli.main(["serve", "--config", str(_toml(tmp_path, "")), "--write-budget",
                     "1M"]) == cli.EXIT_USAGE
    assert "--config cannot be combined with --write-budget" in capsys.readouterr().err


def test_connection_budget_above_target_budget_warns(tmp_path):
    cfg = C.from_flags(disks=[f"{tmp_path / 'd.img'}:1M"], write_budget="1G",
                       target_write_budget="512M")
    assert cfg.limits == C.Limits(1 << 30, 512 * MiB, None)
    assert any("the target's budget is the bound" in w for w in cfg.warnings)
    assert not C.check_limits(C.Limits())          # the defaults warn about nothing


def test_serve_hands_every_bound_to_the_server(tmp_path):
    """The IscsiServer cli.py builds gets the configured bounds (and its connections use them)."""
    seen = {}

    class Probe(IscsiServer):
        def __init__(self, registry, **kw):
            super().__init__(registry, **kw)
            seen.update(kw, sessions_budget=self.sessions.target_write_budget,
                        conn=self.write_budget, send=self.send_queue_bound)

        async def start(self):
            raise OSError(98, "probe: not listening")

    rc = cli.main(["serve", "--disk", f"{tmp_path / 'd.img'}:1M", "--write-budget", "2M",
                   "--target-write-budget", "3M", "--send-queue-bound", "128K",
                   "--listen", "127.0.0.1:0"], server_factory=Probe)
    assert rc == cli.EXIT_USAGE                      # the probe refused to listen
    assert (seen["conn"], seen["sessions_budget"], seen["send"]) == (2 * MiB, 3 * MiB, 128 << 10)


# ---------------------------------------------------------------- behaviour
def _write_sizes_against_budget(port: int) -> None:
    with SyncIscsiClient(f"iscsi://127.0.0.1:{port}/{IQN}/0", timeout=20) as c:
        c.test_unit_ready()                          # takes the power-on unit attention
        small = os.urandom(1 * MiB)
        assert c.write(0, small).good
        big = os.urandom(2 * MiB)
        r = c.execute(bytes([0x2A, 0, 0, 0, 0x10, 0, 0, 0x10, 0, 0]), data_out=big)
        assert (r.status, r.sense_key, r.asc, r.ascq) == (2, 0x05, 0x24, 0x00)
        # Refused, not partly written: the first 1 MiB is still what the small write put there.
        assert bytes(c.read(0, 2048)) == small
        assert bytes(c.read(4096, 4096)) == bytes(2 * MiB)


def test_configured_connection_budget_refuses_a_larger_write(tmp_path):
    with ServerProcess.from_flags(tmp_path, "--listen", "127.0.0.1:0", "--iqn", IQN, "--disk",
                                  f"{tmp_path / 'd.img'}:8M", "--no-track",
                                  "--write-budget", "1M") as srv:
        _write_sizes_against_budget(srv.port)
        assert srv.alive()


def test_configured_target_budget_in_toml_refuses_a_larger_write(tmp_path):
    path = _toml(tmp_path, '[limits]\ntarget_write_budget = "1M"')
    with ServerProcess.from_flags(tmp_path, "--config", str(path)) as srv:
        _write_sizes_against_budget(srv.port)
        assert srv.alive()


def test_default_budget_takes_the_same_write(tmp_path):
    """The control: without [limits] the 2 MiB write is fine (so the refusals above are the bound)."""
    with ServerProcess.from_flags(tmp_path, "--config", str(_toml(tmp_path, ""))) as srv:
        with SyncIscsiClient(f"iscsi://127.0.0.1:{srv.port}/{IQN}/0", timeout=20) as c:
            c.test_unit_ready()
            big = os.urandom(2 * MiB)
            assert c.write(0, big).good and bytes(c.read(0, 4096)) == big
