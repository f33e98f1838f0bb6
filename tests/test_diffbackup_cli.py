"""diffbackup on local files: bad input gets one line, queries never start tracking a file."""
from __future__ import annotations

import pytest



@pytest.mark.parametrize("args", [["status", "{f}"], ["estimate", "{f}", "--scope", "1"],
                                  ["diff", "{f}", "--scope", "1", "-o", "{d}/out.diff"]])
def test_queries_refuse_an_untracked_file_and_leave_it_alone(diffbackup, tmp_path, args):
    f = tmp_path / "plain.img"
    f.write_bytes(b"\x07" * 8192)
    r = diffbackup(*[a.format(f=f, d=tmp_path) for a in args])
    assert r.returncode == 1
    assert r.stderr.strip().endswith("take a full backup first") and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.img"]
    assert f.read_bytes() == b"\x07" * 8192


def test_full_backup_of_a_local_file_starts_tracking_it(diffbackup, tmp_path):
    f = tmp_path / "vol.img"
    f.write_bytes(bytes(64 << 10))
    r = diffbackup("full", str(f), "-o", str(tmp_path / "full.bin"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "vol.img.genmap").exists()
    r = diffbackup("status", str(f))
    assert r.returncode == 0 and "full backup completed: yes" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["verify", "{d}/nothing.bin"], "nothing.bin: no such stream file"),
    (["restore", "{d}/nowhere.img", "{d}/nothing.bin"], "nothing.bin: no such stream file"),
    (["diff", "iscsi://127.0.0.1:1/iqn.2026-11.org.pyscsi.test:x/0", "--scope", "0", "-o", "x"],
     "--scope must be at least 1"),
])
def test_bad_input_is_one_clear_line(diffbackup, tmp_path, args, message):
    r = diffbackup(*[a.format(d=tmp_path) for a in args])
    assert r.returncode != 0 and message in (r.stderr + r.stdout)
    assert "Traceback" not in r.stderr
