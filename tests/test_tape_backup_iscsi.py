"""`diffbackup ... --tape` end to end: a served tracked disk, cartridges as local images or
tape LUNs of the same target over iSCSI; catalog; restore by file number, across cartridges."""
from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest

from scsi_target.initiator.sync import SyncIscsiClient
from tape import TapeImage

from scsi_target.testing.process import ServerProcess

REPO = Path(__file__).resolve().parent.parent

SIZE = 8 << 20
BS = 512


def _write_day(c: SyncIscsiClient, rnd: random.Random, n: int) -> None:
    for _ in range(n):
        lba = rnd.randrange(SIZE // BS - 64)
        c.write(lba, rnd.randbytes(rnd.randint(1, 48) * BS))


def _image(c: SyncIscsiClient) -> bytes:
    return b"".join(bytes(c.read(lba, 2048)) for lba in range(0, SIZE // BS, 2048))


def _cart(path, capacity: int = 64 << 20, ew: int | None = None) -> str:
    TapeImage.create(path, capacity, early_warning=ew).close()
    return str(path)


def _sparse_volume(path, rnd: random.Random) -> None:
    """8 MiB, a third of it random 64 KiB extents, the rest holes."""
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for off in range(0, SIZE, 64 << 10):
            if rnd.random() < 0.33:
                f.seek(off)
                f.write(rnd.randbytes(64 << 10))


def _ok(r):
    assert r.returncode == 0, r.stdout + r.stderr
    return r


@pytest.mark.timeout(300)
def test_patent_week_on_tape_tuesday_cartridge_damaged(diffbackup, tmp_path):
    """Full on Sunday, differentials with scope 2 (Monday's scope 1: one generation
    exists), one cartridge a day; Tuesday's cartridge is damaged, and Sunday + Monday +
    Wednesday still restore Wednesday byte-exact (Wednesday's scope 2 holds Tuesday)."""
    rnd = random.Random(9)
    _sparse_volume(tmp_path / "vol.img", rnd)
    days = ("sun", "mon", "tue", "wed")
    carts = {d: _cart(tmp_path / f"{d}.img") for d in days}
    with ServerProcess.from_flags(tmp_path, "--disk", f"{tmp_path}/vol.img",
                                  "--backup-device") as srv, SyncIscsiClient(srv.url(0)) as c:
        _ok(diffbackup("full", srv.url(0), "--tape", carts["sun"], "--record-size", "64K"))
        for day, scope in (("mon", 1), ("tue", 2), ("wed", 2)):
            _write_day(c, rnd, 30)
            r = _ok(diffbackup("diff", srv.url(0), "--scope", str(scope), "--tape", carts[day],
                               "--record-size", "64K"))
            assert f"{carts[day]} file 0" in r.stdout
        wednesday = _image(c)
    cat = _ok(diffbackup("catalog", carts["wed"], "--verify"))
    assert re.search(r"0\s+│ differential │ 2\.\.3\s+│ 2 ", cat.stdout), cat.stdout
    # Tuesday's cartridge: bytes in the middle of its records flipped.
    raw = bytearray(open(carts["tue"], "rb").read())
    for k in range(len(raw) // 2, len(raw) // 2 + 64):
        raw[k] ^= 0x5A
    open(carts["tue"], "wb").write(raw)
    v = diffbackup("catalog", carts["tue"], "--verify")
    assert v.returncode == 1 and ("FAILED" in v.stdout or "DAMAGED" in v.stdout), v.stdout
    tapes = [a for d in days for a in ("--tape", carts[d])]
    dest = tmp_path / "restored.img"
    bad = diffbackup("restore", str(tmp_path / "bad.img"), *tapes, "--file", "1:0",
                     "--file", "2:0", "--file", "3:0", "--file", "4:0")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stdout + bad.stderr
    assert "tue.img file 0" in bad.stderr or "bad record" in bad.stdout, bad.stdout + bad.stderr
    r = _ok(diffbackup("restore", str(dest), *tapes, "--file", "1:0", "--file", "2:0",
                       "--file", "4:0"))
    assert "restore complete" in r.stdout
    assert dest.read_bytes() == wednesday


def _tape_luns(srv: ServerProcess, n: int) -> list[str]:
    """The tape LUNs follow the disks and their backup devices in the server's listing."""
    return [srv.url(srv.first_tape + k) for k in range(n)]


@pytest.fixture
def served(tmp_path):
    rnd = random.Random(5)
    _sparse_volume(tmp_path / "vol.img", rnd)
    a = _cart(tmp_path / "a.img")
    b = _cart(tmp_path / "b.img", 6 << 20, 1 << 20)
    c = _cart(tmp_path / "c.img", 6 << 20, 1 << 20)
    with ServerProcess.from_flags(tmp_path, "--disk", f"{tmp_path}/vol.img", "--backup-device",
                                  "--tape", a, "--tape", b, "--tape", c) as srv:
        srv.first_tape = 2
        with SyncIscsiClient(srv.url(2)) as t:
            assert t.inquiry(lun=2)[0] & 0x1F == 1     # LUN 2 is the first tape LUN
        yield srv, rnd


@pytest.mark.timeout(300)
def test_full_and_three_differentials_to_one_tape_lun(diffbackup, served, tmp_path):
    srv, rnd = served
    tape = _tape_luns(srv, 1)[0]
    with SyncIscsiClient(srv.url(0)) as c:
        _ok(diffbackup("full", srv.url(0), "--tape", tape))
        for k in range(3):
            _write_day(c, rnd, 25)
            r = _ok(diffbackup("diff", srv.url(0), "--scope", "1", "--tape", tape,
                               "--record-size", "256K"))
            assert f"{tape} file {k + 1}" in r.stdout
        final = _image(c)
    cat = _ok(diffbackup("catalog", tape, "--verify"))
    rows = [ln for ln in cat.stdout.splitlines() if re.match(r"│ \d", ln)]
    assert len(rows) == 4 and "full" in rows[0] and all("differential" in x for x in rows[1:])
    assert cat.stdout.count("│ ok ") == 4 and "4 backup files" in cat.stdout, cat.stdout
    dest = tmp_path / "fresh.img"
    r = _ok(diffbackup("restore", str(dest), "--tape", tape, *sum(
        (["--file", str(k)] for k in range(4)), [])))
    assert "restore complete" in r.stdout
    assert dest.read_bytes() == final


@pytest.mark.timeout(300)
def test_backup_spanning_two_tape_luns(diffbackup, served, tmp_path):
    srv, _rnd = served
    _a, b, c = _tape_luns(srv, 3)
    with SyncIscsiClient(srv.url(0)) as cl:
        vol = _image(cl)
    r = _ok(diffbackup("full", srv.url(0), "--tape", b, "--tape", c))
    assert f"{b} file 0, {c} file 0" in r.stdout, r.stdout
    cat = _ok(diffbackup("catalog", c))
    assert "part 2 from byte" in cat.stdout, cat.stdout
    dest = tmp_path / "span.img"
    _ok(diffbackup("restore", str(dest), "--tape", b, "--tape", c, "--file", "0"))
    assert dest.read_bytes() == vol
    # Without the second cartridge the restore says what is missing.
    r = diffbackup("restore", str(tmp_path / "half.img"), "--tape", b, "--file", "0")
    assert r.returncode == 1 and "no further --tape" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.timeout(300)
def test_tape_full_without_next_cartridge_keeps_the_stream(diffbackup, served, tmp_path):
    srv, rnd = served
    _a, b, _c = _tape_luns(srv, 3)
    r = diffbackup("full", srv.url(0), "--tape", b, cwd=tmp_path)
    assert r.returncode == 1 and "is kept in" in r.stderr, r.stderr
    kept = re.search(r"kept in (\S+)", r.stderr).group(1)
    assert os.path.getsize(kept) > 6 << 20
    v = _ok(diffbackup("verify", kept))
    assert "ok" in v.stdout


def test_cli_errors_are_one_line(diffbackup, tmp_path):
    img = _cart(tmp_path / "e.img")
    cases = [
        (("full", str(tmp_path / "nope.img"), "--tape", img, "-o", "x"), 2, "not both"),
        (("full", str(tmp_path / "v.img")), 2, "give -o FILE or --tape"),
        (("full", str(tmp_path / "v.img"), "--tape", str(tmp_path / "missing.img")), 1,
         "no such tape image"),
        (("full", str(tmp_path / "v.img"), "--tape", img, "--record-size", "9M"), 2,
         "--record-size"),
        (("full", str(tmp_path / "v.img"), "--tape", img, "--record-size", "big"), 2,
         "not a size"),
        (("restore", str(tmp_path / "d.img"), "--tape", img), 2, "go together"),
        (("restore", str(tmp_path / "d.img"), "--tape", img, "--file", "2:0"), 2,
         "no cartridge 2"),
        (("restore", str(tmp_path / "d.img"), "--tape", img, "--file", "x"), 2,
         "expected N or C:N"),
        (("restore", str(tmp_path / "d.img"), "--tape", img, "--file", "0"), 1,
         "no file 0"),
        (("restore", str(tmp_path / "d.img")), 2, "give stream FILEs"),
        (("catalog", str(tmp_path / "missing.img")), 1, "no such tape image"),
    ]
    for args, code, text in cases:
        r = diffbackup(*args)
        assert r.returncode == code and text in r.stderr, (args, r.returncode, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    # A file that is no tape image at all.
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(4096))
    r = diffbackup("catalog", str(junk))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    # A disk LUN given as a tape.
    with ServerProcess.from_flags(tmp_path, "--disk", f"{tmp_path}/disk.img:1M",
                                  "--backup-device") as srv:
        r = diffbackup("catalog", srv.url(0))
        assert r.returncode == 1 and "is not a tape LUN" in r.stderr, r.stderr


@pytest.mark.timeout(120)
def test_prompt_for_the_next_cartridge_on_a_tty(diffbackup, tmp_path):
    """With stdin a terminal and the --tape list used up, diffbackup asks for the next one."""
    import pty
    import subprocess
    import sys
    import time
    vol = tmp_path / "local.img"
    vol.write_bytes(random.Random(11).randbytes(3 << 20))
    first = _cart(tmp_path / "p1.img", 2 << 20, 256 << 10)
    second = _cart(tmp_path / "p2.img", 8 << 20)
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "tools.diffbackup", "-q", "full", str(vol),
                          "--tape", first], cwd=REPO, stdin=slave,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(slave)
    try:
        got = b""
        deadline = time.monotonic() + 60
        while b"insert the next one" not in got and time.monotonic() < deadline:
            got += os.read(p.stderr.fileno(), 4096)
        assert b"insert the next one" in got, got
        os.write(master, second.encode() + b"\n")
        out, err = p.communicate(timeout=60)
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert f"{first} file 0, {second} file 0".encode() in out, out
    dest = tmp_path / "back.img"
    _ok(diffbackup("restore", str(dest), "--tape", first, "--tape", second, "--file", "0"))
    assert dest.read_bytes() == vol.read_bytes()
