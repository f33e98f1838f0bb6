"""The patent's Fig. 7 week end to end through `diffbackup` against a running target."""
from __future__ import annotations

import random

import pytest

from scsi_target.initiator.sync import SyncIscsiClient

from scsi_target.testing.process import ServerProcess

SIZE = 8 << 20
BS = 512


def _write_day(c: SyncIscsiClient, rnd: random.Random, n: int, hot: list[int]) -> None:
    for _ in range(n):
        lba = rnd.choice(hot) if hot and rnd.random() < 0.5 else rnd.randrange(SIZE // BS - 64)
        nblk = rnd.randint(1, 48)
        c.write(lba, rnd.randbytes(nblk * BS))
        hot.append(lba)


def _image(c: SyncIscsiClient) -> bytes:
    return b"".join(bytes(c.read(lba, 2048)) for lba in range(0, SIZE // BS, 2048))


@pytest.mark.timeout(300)
def test_fig7_week(diffbackup, tmp_path):
    rnd = random.Random(7)
    with ServerProcess.from_flags(tmp_path, "--disk", f"{tmp_path}/vol.img:8M", "--disk",
                                  f"{tmp_path}/spare.img:8M", "--backup-device") as srv:
        src = srv.url(0)
        with SyncIscsiClient(src) as c:
            hot: list[int] = []
            _write_day(c, rnd, 40, hot)
            r = diffbackup("full", src, "-o", str(tmp_path / "mon.full"))
            assert r.returncode == 0, r.stderr
            # Tuesday: the first differential can only have scope 1 (one generation exists).
            _write_day(c, rnd, 25, hot)
            r = diffbackup("diff", src, "--scope", "1", "-o", str(tmp_path / "tue.diff"))
            assert r.returncode == 0, r.stderr
            for day in ("wed", "thu", "fri"):
                _write_day(c, rnd, 25, hot)
                r = diffbackup("diff", src, "--scope", "2", "-o", str(tmp_path / f"{day}.diff"))
                assert r.returncode == 0, r.stderr
                assert "generations" in r.stdout
            friday = _image(c)
            st = diffbackup("status", src)
            assert st.returncode == 0 and "current generation 5" in st.stdout, st.stdout
            est = diffbackup("estimate", src, "--scope", "1", "--compressed")
            assert est.returncode == 0 and "blocks" in est.stdout, est.stderr

        # Tuesday's stream gets damaged (bytes in its first record's data).
        tue = bytearray((tmp_path / "tue.diff").read_bytes())
        for k in range(300, 340):
            tue[k] ^= 0x5A
        (tmp_path / "tue.diff").write_bytes(tue)
        v = diffbackup("verify", str(tmp_path / "tue.diff"))
        assert v.returncode == 1 and "DAMAGED" in v.stdout

        chain = [str(tmp_path / n) for n in ("mon.full", "tue.diff", "wed.diff", "thu.diff",
                                            "fri.diff")]
        # Over iSCSI onto the spare disk (LUN 1, its backup device LUN 3); Thursday's
        # copy of generation 2 is forbidden (Wednesday's holds it): §0040.
        r = diffbackup("restore", srv.url(1), *chain, "--skip-generation", "4:2")
        assert r.returncode == 1, r.stdout + r.stderr          # the bad Tuesday records
        assert "bad record in" in r.stdout and "every block" in r.stdout, r.stdout
        assert "not recovered" not in r.stdout
        with SyncIscsiClient(srv.url(1)) as c:
            assert _image(c) == friday
        # A chain without the bad stream restores cleanly (exit 0).
        r = diffbackup("restore", srv.url(1), chain[0], *chain[2:])
        assert r.returncode == 0, r.stdout + r.stderr

    # Locally, onto a fresh volume file.
    dest = tmp_path / "restored.img"
    r = diffbackup("restore", str(dest), *chain, "--skip-generation", "4:2")
    assert r.returncode == 1 and "every block" in r.stdout, r.stdout + r.stderr
    assert dest.read_bytes() == friday
    # Out of order: Friday before Wednesday is refused, nothing written.
    r = diffbackup("restore", str(tmp_path / "other.img"), chain[0], chain[4], chain[2])
    assert r.returncode == 1 and "missing" in r.stdout, r.stdout


def test_local_volume_in_use_is_refused(diffbackup, tmp_path):
    with ServerProcess.from_flags(tmp_path, "--disk", f"{tmp_path}/vol.img:1M", "--backup-device"):
        r = diffbackup("status", str(tmp_path / "vol.img"))
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "running server" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
