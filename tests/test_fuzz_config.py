"""Fuzz: the TOML config loader, through `scsi-target check` (parse, validate, describe).

Whatever the file holds, the answer is exit 0 (with what it would serve) or
exit 2 with one line on stderr -- never exit 1 (an internal error), a hang or
a traceback.  Seeds: a config using every key; corpus: tests/fuzz_corpus/config/.
Nothing is opened or created: `check` only validates.
"""
from __future__ import annotations

import random

import pytest

import fuzz_util as F
from scsi_target import cli

SEED = b'''# every key the format has
portals = ["127.0.0.1:3260", "[::1]:3261", "0.0.0.0:0", "3262"]

[timeouts]
nop_interval = 30
nop_timeout = 15.5
login_timeout = 30

[limits]
connection_write_budget = "512M"
target_write_budget = 1073741824
send_queue_bound = "8MiB"

[discovery.chap]
username = "discovery"
secret = "d1sc0v3ry-s3cr"

[[target]]
iqn = "iqn.2026-11.org.pyscsi:db"
alias = "database volumes"
initiators = ["iqn.1994-05.com.redhat:db-host", "eui.0123456789abcdef", "naa.0123456789abcdef"]

  [target.chap]
  username = "db-host"
  secret = "0123456789abcdef"
  mutual_username = "db-target"
  mutual_secret = "fedcba9876543210"

  [[target.lun]]
  lun = 0
  path = "db0.img"
  size = "1M"
  create = true
  block_size = 4096
  physical_block_size = 4096
  removable = true
  write_same_zero = true
  track_granularity = "2K"
  cow_size = "64K"
  serial = "DB0-SERIAL"
  parts = [{ path = "db0.part1", size = "1M" }, { path = "db0.part2", size = 1048576 }]

  [[target.lun]]
  lun = 1
  kind = "backup"
  source = 0

  [[target.lun]]
  lun = 2
  kind = "tape"
  path = "t.img"
  create = true
  size = "16M"

[[target]]
iqn = "iqn.2026-11.org.pyscsi:golden"

  [[target.lun]]
  lun = 16383
  path = "logs.img"
  size = 4096
  create = true
  track = false
  read_only = false
'''


def _check(tmp_path, capsys, data: bytes) -> None:
    p = tmp_path / "site.toml"
    p.write_bytes(data)
    rc = cli.main(["check", str(p)])
    out, err = capsys.readouterr()
    assert rc in (cli.EXIT_OK, cli.EXIT_USAGE), err
    if rc == cli.EXIT_USAGE:
        assert err.startswith("scsi-target: error: ") and err.count("\n") == 1, err
    else:
        assert out.startswith(f"{p}: OK\n")
        assert all(line.startswith("warning: ") for line in err.splitlines()), err


def test_the_seed_is_valid(tmp_path, capsys):
    (tmp_path / "site.toml").write_bytes(SEED)
    assert cli.main(["check", str(tmp_path / "site.toml")]) == cli.EXIT_OK
    assert "LUN 16383" in capsys.readouterr().out


@pytest.mark.parametrize("name, data", F.cases("config"))
def test_config_corpus(tmp_path, capsys, name, data):
    _check(tmp_path, capsys, data)


def test_config_mutants(tmp_path, capsys):
    rng = random.Random(0xC0F16)
    seeds = [SEED] + [d for _n, d in F.corpus("config")]
    for data in F.mutants(rng, seeds, F.count(400)):
        _check(tmp_path, capsys, data)


def test_config_line_mutants(tmp_path, capsys):
    """Whole lines dropped, doubled and swapped: keys out of place, tables repeated."""
    rng = random.Random(0x11E5)
    lines = SEED.split(b"\n")
    for _ in range(F.count(200)):
        ls = list(lines)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(ls))
            op = rng.randrange(3)
            if op == 0:
                del ls[i]
            elif op == 1:
                ls.insert(rng.randrange(len(ls)), ls[i])
            else:
                j = rng.randrange(len(ls))
                ls[i], ls[j] = ls[j], ls[i]
        _check(tmp_path, capsys, b"\n".join(ls))
