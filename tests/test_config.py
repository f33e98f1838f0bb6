"""Config parsing and validation: good files build registries, bad ones give exact messages."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from scsi_target import config as C
from scsi_target.target.registry import Chap, Portal

GOOD = """
portals = ["127.0.0.1:3261", "[::1]:3262"]

[discovery.chap]
username = "disc"
secret = "discoverysecret1"

[[target]]
iqn = "iqn.2026-11.org.pyscsi:db"
alias = "database"
initiators = ["iqn.1994-05.com.redhat:client1", "iqn.2008-11.org.linux-kvm"]
chap = { username = "alice", secret = "alicesecret12", mutual_username = "db", mutual_secret = "targetsecret12" }

  [[target.lun]]
  lun = 0
  path = "db0.img"
  size = "1M"
  create = true

  [[target.lun]]
  lun = 3
  path = "db3.img"
  size = 1048576
  block_size = 4096
  create = true
  track = false

[[target]]
iqn = "eui.02004567A425678D"

  [[target.lun]]
  lun = 0
  path = "existing.img"
  read_only = true
"""


def write(tmp_path: Path, text: str, name: str = "t.toml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


@pytest.fixture
def existing(tmp_path: Path) -> Path:
    p = tmp_path / "existing.img"
    p.write_bytes(bytes(64 * 1024))
    return p


def test_good_config_parses(tmp_path, existing):
    cfg = C.load_file(write(tmp_path, GOOD))
    assert cfg.portals == (Portal("127.0.0.1", 3261), Portal("::1", 3262))
    assert cfg.discovery_chap == Chap("disc", "discoverysecret1")
    assert cfg.discovery_mutual_chap is None
    db, eui = cfg.targets
    assert db.iqn == "iqn.2026-11.org.pyscsi:db" and db.alias == "database"
    assert db.chap == Chap("alice", "alicesecret12")
    assert db.mutual_chap == Chap("db", "targetsecret12")
    assert db.initiators == {"iqn.1994-05.com.redhat:client1", "iqn.2008-11.org.linux-kvm"}
    l0, l3 = db.luns
    assert (l0.lun, l0.path, l0.size, l0.block_size, l0.create, l0.track, l0.kind) == (
        0, tmp_path / "db0.img", 1 << 20, 512, True, True, "disk")
    assert (l3.lun, l3.block_size, l3.track) == (3, 4096, False)
    (e0,) = eui.luns
    assert e0.read_only and e0.size is None and e0.path == existing
    assert eui.initiators is None and eui.chap is None
    assert cfg.warnings == ()


def test_good_config_builds_registry(tmp_path, existing):
    reg = C.build_registry(C.load_file(write(tmp_path, GOOD)))
    try:
        assert set(reg.targets) == {"iqn.2026-11.org.pyscsi:db", "eui.02004567A425678D"}
        db = reg.get("iqn.2026-11.org.pyscsi:db")
        assert db.mutual_chap == Chap("db", "targetsecret12")
        assert db.allows("iqn.2008-11.org.linux-kvm") and not db.allows("iqn.2008-11.org.other")
        assert sorted(db.luns.luns) == [0, 3]
        lu3 = db.luns.get(3)
        assert lu3.block_size == 4096 and lu3.num_blocks == 256
        assert (tmp_path / "db0.img").stat().st_size == 1 << 20
        ro = reg.get("eui.02004567A425678D").luns.get(0)
        assert ro.read_only and ro.num_blocks == 128
        # Identity is derived from the volume (untracked: an id kept with the
        # file), not from target name and LUN (tests/test_lu_identity.py).
        from scsi_target.identity import file_volume_id
        from scsi_target.scsi.lun import Identity
        assert lu3.identity == Identity.derive(
            "iqn.2026-11.org.pyscsi:db", 3,
            volume_id=file_volume_id(tmp_path / "db3.img", writable=False))
        assert lu3.identity != Identity.derive("iqn.2026-11.org.pyscsi:db", 3)
        assert reg.discovery_chap == Chap("disc", "discoverysecret1")
    finally:
        reg.close()


def test_build_fails_cleanly_on_locked_file(tmp_path, existing):
    cfg = C.load_file(write(tmp_path, GOOD))
    reg = C.build_registry(cfg)
    try:
        with pytest.raises(C.ConfigError) as ei:
            C.build_registry(cfg)
        path = tmp_path / "db0.img"
        assert str(ei.value) == (f"{tmp_path / 't.toml'}: target[0].lun[0]: "
                                 f"{path} is already in use by another process (locked)")
    finally:
        reg.close()
    C.build_registry(cfg).close()  # the failed attempt released what it had opened


# (toml text, key, problem) — message is "<file>: <key>: <problem>"
BAD = [
    ("bogus = 1\n[[target]]\niqn='iqn.2026-11.org.x'\n", "bogus",
     "unknown key (allowed: portals, discovery, target, timeouts, limits)"),
    ("", "target", "no targets defined (add a [[target]] table)"),
    ("target = 3", "target", "expected an array of tables ([[target]]), got integer"),
    ("[[target]]\niqn = 'iqn.2026-11.org.x'\ncolour = 'red'", "target[0].colour",
     "unknown key (allowed: iqn, alias, lun, chap, initiators, fault, fault_control)"),
    ("[[target]]\nalias = 'x'", "target[0].iqn", "missing (required)"),
    ("[[target]]\niqn = 42", "target[0].iqn", "expected a string, got integer 42"),
    ("[[target]]\niqn = 'iqn.2026-11.org.x'", "target[0].lun",
     "target has no LUNs (add a [[target.lun]] table)"),
    ("[[target]]\niqn = 'iqn.26-11.org.x'", "target[0].iqn",
     "'iqn.26-11.org.x' is not an iqn. name: expected iqn.YYYY-MM.reversed.domain[:identifier] "
     "with letters, digits, '-', '.', ':'"),
    ("[[target]]\niqn = 'iqn.2026-00.org.x'", "target[0].iqn",
     "'iqn.2026-00.org.x': month 00 in the date is not 01..12"),
    ("[[target]]\niqn = 'iqn.2026-11.Org.x'", "target[0].iqn",
     "'iqn.2026-11.Org.x': iSCSI names are lowercase (RFC 3722 normalises them)"),
    ("[[target]]\niqn = 'eui.1234'", "target[0].iqn",
     "'eui.1234': eui. must be followed by 16 hex digits"),
    ("[[target]]\niqn = 'naa.123456789012345'", "target[0].iqn",
     "'naa.123456789012345': naa. must be followed by 16 or 32 hex digits"),
    ("[[target]]\niqn = 'disk1'", "target[0].iqn", "'disk1' does not start with iqn., eui. or naa."),
    ("[[target]]\niqn = 'iqn.2026-11.org.x'\ninitiators = ['iqn.2026-11.org.y', 'bob']",
     "target[0].initiators[1]", "'bob' does not start with iqn., eui. or naa."),
    ("portals = ['::1:3260']\n[[target]]\niqn = 'iqn.2026-11.org.x'", "portals[0]",
     "'::1:3260': put IPv6 addresses in brackets, e.g. \"[::1]:3260\""),
    ("portals = ['127.0.0.1:70000']\n[[target]]\niqn = 'iqn.2026-11.org.x'", "portals[0]",
     "'127.0.0.1:70000': port must be a number 0..65535 (0 = any free port)"),
    ("portals = ['[10.0.0.1]:3260']\n[[target]]\niqn = 'iqn.2026-11.org.x'", "portals[0]",
     "'[10.0.0.1]:3260': '10.0.0.1' in brackets is not an IPv6 address"),
    ("portals = ['a:1', 'a:1']\n[[target]]\niqn = 'iqn.2026-11.org.x'", "portals[1]",
     "a:1 is listed twice"),
    ("portals = []\n[[target]]\niqn = 'iqn.2026-11.org.x'", "portals",
     "expected a non-empty array of \"host:port\" strings"),
]

LUN_HEAD = "[[target]]\niqn = 'iqn.2026-11.org.x'\n[[target.lun]]\n"

BAD_LUN = [
    ("lun = 0\npath = 'a.img'\nsize = '1M'\ncreate = true\nspeed = 3", "target[0].lun[0].speed",
     "unknown key (allowed: {lun_keys})"),
    ("path = 'a.img'", "target[0].lun[0].lun", "missing (required)"),
    ("lun = 0", "target[0].lun[0].path", "missing (required)"),
    ("lun = true\npath = 'a.img'", "target[0].lun[0].lun", "expected an integer, got boolean True"),
    ("lun = 16384\npath = 'a.img'", "target[0].lun[0].lun", "LUN 16384 out of range 0..16383"),
    ("lun = 0\npath = 'a.img'\nkind = 'changer'", "target[0].lun[0].kind",
     "'changer' is not supported (supported: {kinds})"),
    ("lun = 0\npath = 'a.img'\nsize = '64Q'\ncreate = true", "target[0].lun[0].size",
     "cannot read '64Q' as a size (use bytes or a number with K, M, G or T)"),
    ("lun = 0\npath = 'a.img'\nsize = 0\ncreate = true", "target[0].lun[0].size",
     "size must be positive, got 0"),
    ("lun = 0\npath = 'a.img'\nsize = 1.5\ncreate = true", "target[0].lun[0].size",
     "expected a size like \"64M\" or a byte count, got float"),
    ("lun = 0\npath = 'a.img'\nsize = 1000\ncreate = true", "target[0].lun[0].size",
     "1000 bytes is not a multiple of the block size 512"),
    ("lun = 0\npath = 'a.img'\nsize = '6K'\nblock_size = 4096\ncreate = true",
     "target[0].lun[0].size", "6144 bytes is not a multiple of the block size 4096"),
    ("lun = 0\npath = 'a.img'\nsize = '1M'\nblock_size = 1000\ncreate = true",
     "target[0].lun[0].block_size", "1000 is not supported (use 512 or 4096)"),
    ("lun = 0\npath = 'a.img'\ncreate = true", "target[0].lun[0].size",
     "{dir}/a.img does not exist and no size is given to create it"),
    ("lun = 0\npath = 'a.img'\nsize = '1M'", "target[0].lun[0].path",
     "{dir}/a.img does not exist (set create = true and a size to create it)"),
    ("lun = 0\npath = 'nodir/a.img'\nsize = '1M'", "target[0].lun[0].path",
     "{dir}/nodir/a.img: directory {dir}/nodir does not exist"),
    ("lun = 0\npath = 'a.img'\nsize = '1M'\ncreate = true\nread_only = true",
     "target[0].lun[0].path", "{dir}/a.img does not exist (a read-only LUN needs an existing file)"),
    ("lun = 0\npath = 'e.img'\nsize = '1M'", "target[0].lun[0].size",
     "{dir}/e.img is 65536 bytes but size is 1048576; resize the file or drop the size key"),
    ("lun = 0\npath = 'odd.img'", "target[0].lun[0].size",
     "1000 bytes is not a multiple of the block size 512"),
    ("lun = 0\npath = 'e.img'\nread_only = 'yes'", "target[0].lun[0].read_only",
     "expected true or false, got string 'yes'"),
    ("lun = 0\npath = 'e.img'\n[[target.lun]]\nlun = 0\npath = 'a.img'\nsize = '1M'\ncreate = true",
     "target[0].lun[1].lun", "LUN 0 is already used by target[0].lun[0]"),
    ("lun = 0\npath = 'e.img'\n[[target.lun]]\nlun = 1\npath = './e.img'",
     "target[0].lun[1].path", "{dir}/e.img is already used by target[0].lun[0]"),
]

CHAP_HEAD = "[[target]]\niqn = 'iqn.2026-11.org.x'\n[[target.lun]]\nlun = 0\npath = 'e.img'\n[target.chap]\n"

BAD_CHAP = [
    ("username = 'u'", "target[0].chap.secret", "missing (CHAP needs both username and secret)"),
    ("username = 'u'\nsecret = 'short'", "target[0].chap.secret",
     "secret is 5 bytes; at least 12 are required (RFC 7143 12.1.3: shorter CHAP secrets need IPsec)"),
    ("username = 'u'\nsecret = '123456789012'\nmutual_username = 't'", "target[0].chap.mutual_secret",
     "missing (mutual CHAP needs both mutual_username and mutual_secret)"),
    ("username = 'u'\nsecret = '123456789012'\nmutual_username = 't'\nmutual_secret = '123456789012'",
     "target[0].chap.mutual_secret",
     "must differ from secret (RFC 7143 12.1.3 forbids one secret for both directions)"),
    ("username = 'u'\nsecret = '123456789012'\npassword = 'x'", "target[0].chap.password",
     "unknown key (allowed: username, secret, mutual_username, mutual_secret)"),
]


def _check_bad(tmp_path: Path, text: str, key: str, problem: str) -> None:
    (tmp_path / "e.img").write_bytes(bytes(65536))
    (tmp_path / "odd.img").write_bytes(bytes(1000))
    path = write(tmp_path, text)
    with pytest.raises(C.ConfigError) as ei:
        C.load_file(path)
    # Key lists grow with features; the message names whatever the code allows.
    problem = problem.format(dir=tmp_path, lun_keys=", ".join(C._LUN_KEYS),
                             kinds=", ".join(C.LU_KINDS))
    assert str(ei.value) == f"{path}: {key}: {problem}"


@pytest.mark.parametrize("text,key,problem", BAD)
def test_bad_config(tmp_path, text, key, problem):
    _check_bad(tmp_path, text, key, problem)


@pytest.mark.parametrize("text,key,problem", BAD_LUN)
def test_bad_lun(tmp_path, text, key, problem):
    _check_bad(tmp_path, LUN_HEAD + text, key, problem)


@pytest.mark.parametrize("text,key,problem", BAD_CHAP)
def test_bad_chap(tmp_path, text, key, problem):
    _check_bad(tmp_path, CHAP_HEAD + text, key, problem)


def test_discovery_chap_errors_name_the_section(tmp_path):
    text = "[discovery.chap]\nusername = 'd'\nsecret = 'x'\n" + CHAP_HEAD.split("[target.chap]")[0]
    _check_bad(tmp_path, text, "discovery.chap.secret",
               "secret is 1 bytes; at least 12 are required (RFC 7143 12.1.3: shorter CHAP "
               "secrets need IPsec)")


def test_duplicate_target(tmp_path):
    one = "[[target]]\niqn = 'iqn.2026-11.org.x'\n[[target.lun]]\nlun = 0\npath = 'e.img'\n"
    two = "[[target]]\niqn = 'iqn.2026-11.org.x'\n[[target.lun]]\nlun = 0\npath = 'f.img'\n"
    (tmp_path / "f.img").write_bytes(bytes(512))
    _check_bad(tmp_path, one + two, "target[1].iqn", "iqn.2026-11.org.x is already used by target[0]")


def test_long_chap_secret_warns(tmp_path):
    (tmp_path / "e.img").write_bytes(bytes(512))
    cfg = C.load_file(write(tmp_path, CHAP_HEAD + "username = 'u'\nsecret = '12345678901234567'\n"))
    assert cfg.targets[0].chap == Chap("u", "12345678901234567")
    assert cfg.warnings == (
        f"{tmp_path / 't.toml'}: target[0].chap.secret: secret is 17 bytes; some initiators "
        "accept at most 16 (RFC 7143 only requires support up to 128 bits)",)


def test_toml_syntax_error(tmp_path):
    path = write(tmp_path, "[[target]\n")
    with pytest.raises(C.ConfigError) as ei:
        C.load_file(path)
    assert str(ei.value).startswith(f"{path}: TOML syntax error: ")
    assert "line 1" in str(ei.value) and "\n" not in str(ei.value)


def test_missing_file(tmp_path):
    with pytest.raises(C.ConfigError) as ei:
        C.load_file(tmp_path / "nope.toml")
    assert str(ei.value) == f"{tmp_path / 'nope.toml'}: cannot read: No such file or directory"


def test_absolute_and_relative_paths(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    abs_img = tmp_path / "abs.img"
    abs_img.write_bytes(bytes(512))
    cfg_path = write(tmp_path / "sub", LUN_HEAD + f"lun = 0\npath = '{abs_img}'\n"
                     "[[target.lun]]\nlun = 1\npath = 'rel.img'\nsize = '4K'\ncreate = true\n")
    monkeypatch.chdir("/")
    a, b = C.load_file(cfg_path).targets[0].luns
    assert a.path == abs_img and b.path == tmp_path / "sub" / "rel.img"


# ------------------------------------------------------------- quick flags
def test_default_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = C.from_flags()
    (t,) = cfg.targets
    assert t.iqn == "iqn.2026-11.org.pyscsi:default" and t.chap is None
    (lun,) = t.luns
    assert (lun.lun, lun.path, lun.size, lun.create, lun.track) == (
        0, Path("var/disk0.img"), 64 << 20, True, True)
    assert cfg.portals == (Portal("127.0.0.1", 3260),)


def test_default_disk_keeps_existing_size(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "var").mkdir()
    (tmp_path / "var/disk0.img").write_bytes(bytes(8192))
    (lun,) = C.from_flags().targets[0].luns
    assert lun.size is None
    assert C.lun_summary(lun) == ("LUN 0: disk var/disk0.img, 8 KiB (16 x 512-byte blocks), "
                                  "read-write, tracking on")


def test_flags(tmp_path):
    old = tmp_path / "old.img"
    old.write_bytes(bytes(4096))
    cfg = C.from_flags(listen=["[::1]:0", "127.0.0.1:3999"], iqn="iqn.2026-11.org.x:y",
                       disks=[f"{old}", f"{tmp_path}/new.img:1G"], track=False,
                       chap="user:123456789012")
    (t,) = cfg.targets
    assert cfg.portals == (Portal("::1", 0), Portal("127.0.0.1", 3999))
    assert t.chap == Chap("user", "123456789012")
    a, b = t.luns
    assert (a.lun, a.path, a.size, a.create, a.track) == (0, old, None, False, False)
    assert (b.lun, b.path, b.size, b.create) == (1, tmp_path / "new.img", 1 << 30, True)


@pytest.mark.parametrize("kwargs,message", [
    (dict(listen=["1.2.3.4:x"]),
     "command line: --listen: '1.2.3.4:x': port must be a number 0..65535 (0 = any free port)"),
    (dict(iqn="iqn.bad"), "command line: --iqn: 'iqn.bad' is not an iqn. name: expected "
     "iqn.YYYY-MM.reversed.domain[:identifier] with letters, digits, '-', '.', ':'"),
    (dict(chap="nocolon"), "command line: --chap: expected USER:SECRET"),
    (dict(chap="u:short"), "command line: --chap: secret is 5 bytes; at least 12 are required "
     "(RFC 7143 12.1.3: shorter CHAP secrets need IPsec)"),
    (dict(disks=["{dir}/missing.img"]), "command line: --disk {dir}/missing.img: {dir}/missing.img "
     "does not exist (give a size, PATH:SIZE, to create it)"),
    (dict(disks=["{dir}/x.img:64Q"]), "command line: --disk {dir}/x.img:64Q: cannot read '64Q' "
     "as a size (use bytes or a number with K, M, G or T)"),
    (dict(disks=["{dir}/x.img:1000"]), "command line: --disk {dir}/x.img: 1000 bytes is not a "
     "multiple of the block size 512"),
    (dict(disks=["{dir}/x.img:1M", "{dir}/x.img:1M"]),
     "command line: --disk {dir}/x.img: already used by LUN 0"),
])
def test_bad_flags(tmp_path, kwargs, message):
    kwargs = {k: [s.format(dir=tmp_path) for s in v] if isinstance(v, list) else v
              for k, v in kwargs.items()}
    with pytest.raises(C.ConfigError) as ei:
        C.from_flags(**kwargs)
    assert str(ei.value) == message.format(dir=tmp_path)


# ------------------------------------------------------------- value parsers
@pytest.mark.parametrize("text,size", [
    ("512", 512), (4096, 4096), ("64M", 64 << 20), ("1G", 1 << 30), ("1g", 1 << 30),
    ("2T", 2 << 40), ("512K", 512 << 10), ("64MiB", 64 << 20), ("1GB", 1 << 30),
])
def test_parse_size(text, size):
    assert C.parse_size(text) == size


@given(st.integers(min_value=1, max_value=1 << 50), st.sampled_from(["", "K", "M", "G", "T"]))
def test_size_round_trip(n, unit):
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]
    assert C.parse_size(f"{n}{unit}") == n * mult
    assert C.parse_size(C.format_size(n * mult).replace(" bytes", "").replace(" ", "")) == n * mult


@pytest.mark.parametrize("text,portal", [
    ("127.0.0.1:3260", Portal("127.0.0.1", 3260)), ("localhost", Portal("localhost", 3260)),
    ("[::1]:0", Portal("::1", 0)), ("[fe80::1]", Portal("fe80::1", 3260)),
    ("0.0.0.0:860", Portal("0.0.0.0", 860)),
])
def test_parse_portal(text, portal):
    assert C.parse_portal(text) == portal
    assert C.parse_portal(str(portal)) == portal


@given(st.text(max_size=40))
def test_parsers_only_raise_value_error(text):
    for fn in (C.parse_size, C.parse_portal):
        try:
            fn(text)
        except ValueError as e:
            assert str(e) and "\n" not in str(e)
    assert C.check_iscsi_name(text) is None or isinstance(C.check_iscsi_name(text), str)


@pytest.mark.parametrize("name", [
    "iqn.2026-11.org.pyscsi:default", "iqn.1994-05.com.redhat:5f1a2b", "iqn.2001-04.com.example",
    "iqn.2001-04.com.example:storage:diskarrays-sn-a8675309", "eui.02004567A425678D",
    "naa.52004567BA64678D", "naa.62004567BA64678D0123456789ABCDEF",
])
def test_valid_names(name):
    assert C.check_iscsi_name(name) is None


def test_name_length_limit():
    name = "iqn.2026-11.org.x:" + "a" * 205
    assert len(name) == 223 and C.check_iscsi_name(name) is None
    assert C.check_iscsi_name(name + "a") == "longer than 223 bytes"


def test_docs_example_is_valid(tmp_path):
    """The full example in docs/config.md parses (so the docs can't drift from the code)."""
    doc = (Path(__file__).resolve().parent.parent / "docs/config.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    example = example.replace("/srv/iscsi/", f"{tmp_path}/srv/")
    (tmp_path / "images").mkdir()
    (tmp_path / "images/golden.img").write_bytes(bytes(1 << 20))
    cfg = C.load_file(write(tmp_path, example))
    assert [t.iqn for t in cfg.targets] == ["iqn.2026-11.org.pyscsi:db", "iqn.2026-11.org.pyscsi:golden"]
    assert cfg.discovery_chap is not None and cfg.warnings == ()
    assert [len(t.luns) for t in cfg.targets] == [2, 1]


def test_timeouts_table_reaches_the_server_options(tmp_path):
    cfg = C.parse_config({"timeouts": {"nop_interval": 5, "nop_timeout": 2.5, "login_timeout": 9},
                          "target": [{"iqn": "iqn.2026-11.org.pyscsi.test:t",
                                      "lun": [{"lun": 0, "path": str(tmp_path / "x.img"),
                                               "size": "1M", "create": True}]}]})
    assert cfg.server_options() == {"nop_interval": 5.0, "nop_timeout": 2.5, "login_timeout": 9.0}


@pytest.mark.parametrize("key,value,message", [
    ("nop_interval", -1, "out of range"),
    ("nop_timeout", 0, "out of range"),
    ("login_timeout", "soon", "expected seconds"),
    ("ping", 3, "unknown key"),
])
def test_bad_timeouts_are_refused(tmp_path, key, value, message):
    with pytest.raises(C.ConfigError) as exc:
        C.parse_config({"timeouts": {key: value},
                        "target": [{"iqn": "iqn.2026-11.org.pyscsi.test:t",
                                    "lun": [{"lun": 0, "path": str(tmp_path / "x.img"),
                                             "size": "1M", "create": True}]}]})
    assert message in str(exc.value) and f"timeouts.{key}" in str(exc.value)


def _gran_cfg(tmp_path, value):
    return {"target": [{"iqn": "iqn.2026-11.org.pyscsi.test:g",
                        "lun": [{"lun": 0, "path": str(tmp_path / "g.img"), "size": "1M",
                                 "create": True, "track_granularity": value}]}]}


def test_track_granularity_reaches_the_generation_map(tmp_path):
    reg = C.build_registry(C.parse_config(_gran_cfg(tmp_path, "2K")))
    try:
        store = reg.targets["iqn.2026-11.org.pyscsi.test:g"].luns.get(0).store
        assert store._map.granularity == 2048
    finally:
        reg.close()
    # An existing map keeps its granularity; asking for another one is refused.
    with pytest.raises(C.ConfigError) as exc:
        C.build_registry(C.parse_config(_gran_cfg(tmp_path, 4096)))
    assert "2048-byte granularity, not 4096" in str(exc.value)


@pytest.mark.parametrize("value", ["3K", 256, "32M", "lots"])
def test_bad_track_granularity_is_refused(tmp_path, value):
    with pytest.raises(C.ConfigError) as exc:
        C.parse_config(_gran_cfg(tmp_path, value))
    assert "track_granularity" in str(exc.value)


@pytest.mark.parametrize("arg,message", [
    (":5M", "no file name before the size"),
    ("", "no file name before the size"),
])
def test_disk_flag_without_a_path_is_refused(arg, message):
    with pytest.raises(C.ConfigError) as exc:
        C.from_flags(disks=[arg])
    assert message in str(exc.value)


def test_disk_flag_for_a_missing_file_says_how_to_create_it(tmp_path):
    with pytest.raises(C.ConfigError) as exc:
        C.from_flags(disks=[str(tmp_path / "missing.img")])
    assert "give a size, PATH:SIZE, to create it" in str(exc.value)
