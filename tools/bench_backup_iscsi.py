"""`diffbackup` over iSCSI against `qemu-img convert` of the same disk LUN (issue 14, item 1).

    python -m tools.bench_backup_iscsi [--size-mib 512] [--rounds 3] [--writes 4096]
                                       [--large-writes 32768] [--start installed|checkout]

One scsi-target (tmpfs volumes of random data, backup devices on), in the same
run and alternating, medians of ROUNDS:

* backup:  ``qemu-img convert`` of the disk LUN to a file  vs  ``diffbackup full``;
* restore: ``qemu-img convert`` of a file onto a LUN      vs  ``diffbackup restore``;
* differential after WRITES scattered 4 KiB writes: ``diffbackup diff --scope 1``
  rate per byte of changed data vs the backup convert rate.

For scale, every round also times ``qemu-img convert`` of a LUN as large as
the changed data (WRITES x 4 KiB of random data): the peer's own rate at
that size, fixed cost included, against its rate on the whole volume -- the
bar the differential's headline ratio sets, applied to qemu-img itself.

Ratios are diffbackup's rate over qemu-img's (goal >= 0.9).  A measurement, not a test.

Every round also times a differential with nothing changed since the last one: the
fixed cost of a ``diffbackup`` run (interpreter start, imports, login, the vendor
commands, the map cut), printed with the differential's rate beyond it -- what the
headline ratio of a 16 MiB change against a 512 MiB convert is made of.  The
source tree is byte-compiled first, as an installed package is: where
PYTHONDONTWRITEBYTECODE is set (this sandbox sets it) every ``diffbackup`` start
would otherwise recompile every module it imports.

``diffbackup`` is started as an installed package starts (``--start installed``,
the default): the ``diffbackup`` script the package installs (bin/diffbackup) beside
the interpreter (``python -m tools.diffbackup`` where there is none, which
adds runpy's imports), run by ``python -S`` with the interpreter's
site-packages and the source tree on PYTHONPATH, so the editable-install
finder of a development checkout (a .pth file that site runs at every start,
10-15 ms of imports) is not part of the program's cost; ``--start checkout``
runs ``python -m tools.diffbackup`` through site as before.

In addition (never instead), every round times a differential after
LARGE_WRITES scattered 4 KiB writes (default 32768: 128 MiB, a quarter of a
512 MiB volume, still mostly one-block records): with 16 MiB of changes the
fixed cost of a run is most of the time, with 128 MiB the per-record work is.
"""
from __future__ import annotations

import argparse
import compileall
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

IQN = "iqn.2026-11.org.pyscsi:default"
MiB = 1 << 20


def _interpreter() -> str:
    """Which Python the figures are of: its version, where it lives, and whether
    its executable links libpython (a shared build, as pyenv's default; Debian's
    /usr/bin/python3 is static, and ran this bench's both ends 15-25% faster)."""
    exe = os.path.realpath(sys.executable)
    try:
        libs = subprocess.run(["ldd", exe], capture_output=True, text=True).stdout
    except OSError:
        libs = ""
    linked = "shared libpython" if "libpython" in libs else "static executable"
    return f"Python {sys.version.split()[0]} at {exe} ({linked})"


def _run(cmd: list[str]) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()[-400:]}")
    return dt


class Target:
    def __init__(self, d: str, size_mib: int, small_mib: int = 0) -> None:
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scsi_target", "serve", "--listen", "127.0.0.1:0",
             "--log-level", "warning", "--disk", f"{d}/vol.img:{size_mib}M",
             "--disk", f"{d}/spare.img:{size_mib}M"]
            + (["--disk", f"{d}/small.img:{small_mib}M"] if small_mib else [])
            + ["--backup-device"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=d)
        first = self.proc.stdout.readline()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", first)
        if not m:
            self.stop()
            raise SystemExit(f"server did not start: {first!r}")
        self.port = int(m.group(1))
        n, luns = 0, 2 * (3 if small_mib else 2)      # the disks and their backup devices
        while n < luns:
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit("server exited")
            n += line.strip().startswith("iscsi://")

    def url(self, lun: int) -> str:
        return f"iscsi://127.0.0.1:{self.port}/{IQN}/{lun}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _scatter(url: str, blocks: list[int], rnd: random.Random) -> None:
    """4 KiB writes of random data at ``blocks``, 16 in flight (untimed set-up)."""
    from scsi_target.initiator.blocking import BlockingIscsiClient
    from scsi_target.initiator.url import parse_url
    lun = parse_url(url).lun

    def cmds():
        for b in blocks:
            lba = b * 8
            yield {"cdb": bytes([0x8A, 0]) + lba.to_bytes(8, "big") + (8).to_bytes(4, "big")
                   + bytes(2), "data_out": rnd.randbytes(4096), "lun": lun}

    with BlockingIscsiClient(url) as c:
        c.execute(cdb=bytes(6), lun=lun, check=False)      # takes the new session's UNIT ATTENTION
        for r in c.pipeline(cmds(), 16):
            r.raise_for_status()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--writes", type=int, default=4096, help="4 KiB writes before each diff")
    ap.add_argument("--large-writes", type=int, default=32768,
                    help="4 KiB writes before the additional larger differential (0: none)")
    ap.add_argument("--start", choices=("installed", "checkout"), default="installed",
                    help="start diffbackup as an installed package (python -S, no "
                         "editable-install finder) or through site as in this checkout")
    ap.add_argument("--dir", default="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    a = ap.parse_args()
    for tool in ("qemu-img",):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian package qemu-utils)")
    size = a.size_mib * MiB
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for pkg in ("scsi_target", "volume", "tape", "tools"):
        compileall.compile_dir(os.path.join(root, pkg), quiet=1)
    load0 = os.getloadavg()
    d = tempfile.mkdtemp(prefix="bench-bkiscsi-", dir=a.dir)
    srv = None
    try:
        rnd = random.Random(1)
        src = os.path.join(d, "src.img")
        with open(os.path.join(d, "vol.img"), "wb") as f, open(src, "wb") as g:
            for _ in range(0, size, 8 * MiB):
                f.write(rnd.randbytes(8 * MiB))
                g.write(rnd.randbytes(8 * MiB))
        small_mib = max(1, -(-a.writes * 4096 // MiB))
        with open(os.path.join(d, "small.img"), "wb") as f:
            f.write(random.Random(2).randbytes(small_mib * MiB))
        srv = Target(d, a.size_mib, small_mib)
        if a.start == "installed":
            import site
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join([root] + site.getsitepackages())
            os.environ.update(env)
            script = os.path.join(os.path.dirname(sys.executable), "diffbackup")
            db = ([sys.executable, "-S", script, "-q"] if os.path.isfile(script) else
                  [sys.executable, "-S", "-m", "tools.diffbackup", "-q"])
        else:
            db = [sys.executable, "-m", "tools.diffbackup", "-q"]
        from scsi_target.initiator.sync import SyncIscsiClient
        keys = ["convert out", "full", "convert in", "restore", "diff", "diff, nothing",
                "convert small"]
        if a.large_writes:
            keys.append("diff, large")
        t: dict[str, list[float]] = {k: [] for k in keys}
        changed = 0
        out_img, full_bk = os.path.join(d, "out.img"), os.path.join(d, "full.bk")
        for _ in range(a.rounds):
            if os.path.exists(out_img):
                os.unlink(out_img)
            t["convert out"].append(_run(["qemu-img", "convert", "-f", "raw", "-O", "raw",
                                          srv.url(0), out_img]))
            # Both outputs start absent (untimed): replacing last round's 512 MiB
            # file frees its pages inside the timed run (about 0.1 s on tmpfs),
            # which convert's output, removed above, never pays.
            if os.path.exists(full_bk):
                os.unlink(full_bk)
            t["full"].append(_run(db + ["full", srv.url(0), "-o", full_bk]))
            t["convert in"].append(_run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw",
                                         src, srv.url(1)]))
            t["restore"].append(_run(db + ["restore", srv.url(1), full_bk]))
            with SyncIscsiClient(srv.url(0)) as c:
                blocks = rnd.sample(range(size // 4096), a.writes)
                for b in blocks:
                    c.write(b * 8, rnd.randbytes(4096))
            changed = a.writes * 4096
            t["diff"].append(_run(db + ["diff", srv.url(0), "--scope", "1", "-o",
                                        os.path.join(d, "d.bk")]))
            t["diff, nothing"].append(_run(db + ["diff", srv.url(0), "--scope", "1", "-o",
                                                 os.path.join(d, "d0.bk")]))
            small_out = os.path.join(d, "small-out.img")
            if os.path.exists(small_out):
                os.unlink(small_out)
            t["convert small"].append(_run(["qemu-img", "convert", "-f", "raw", "-O", "raw",
                                            srv.url(2), small_out]))
            if a.large_writes:
                _scatter(srv.url(0), rnd.sample(range(size // 4096), a.large_writes), rnd)
                for name in ("d.bk", "d0.bk", "dl.bk"):
                    if os.path.exists(os.path.join(d, name)):
                        os.unlink(os.path.join(d, name))
                t["diff, large"].append(_run(db + ["diff", srv.url(0), "--scope", "1", "-o",
                                                   os.path.join(d, "dl.bk")]))
        med = {k: statistics.median(v) for k, v in t.items()}
        load1 = os.getloadavg()
        print(f"diffbackup started as: {' '.join(db[:-1])}")
        print(f"interpreter (target and diffbackup): {_interpreter()}")
        print(f"{a.size_mib} MiB random volume on tmpfs, {a.rounds} alternating rounds, medians; "
              f"load average {load0[0]:.2f} before, {load1[0]:.2f} after "
              f"({os.cpu_count()} CPUs)")
        for k, v in t.items():
            print(f"  {k:12} {med[k]:7.3f} s  ({', '.join(f'{x:.3f}' for x in v)})")
        conv_out, conv_in = size / med["convert out"], size / med["convert in"]
        print(f"backup:  diffbackup full    {size / med['full'] / MiB:7.1f} MiB/s vs qemu-img "
              f"convert out {conv_out / MiB:7.1f} MiB/s: ratio {med['convert out'] / med['full']:.2f}")
        print(f"restore: diffbackup restore {size / med['restore'] / MiB:7.1f} MiB/s vs qemu-img "
              f"convert in  {conv_in / MiB:7.1f} MiB/s: ratio {med['convert in'] / med['restore']:.2f}")
        print(f"differential of {a.writes} scattered 4 KiB writes ({changed / MiB:.0f} MiB): "
              f"{changed / med['diff'] / MiB:7.1f} MiB/s of changed data vs convert out "
              f"{conv_out / MiB:7.1f} MiB/s: ratio {changed / med['diff'] / conv_out:.2f}")
        fixed = med["diff, nothing"]
        beyond = med["diff"] - fixed
        print(f"  of which the fixed cost of a run (a differential of nothing) {fixed:.3f} s; "
              + (f"beyond it {changed / beyond / MiB:.1f} MiB/s of changed data, ratio "
                 f"{changed / beyond / conv_out:.2f}" if beyond > 0 else
                 "the differential's own work is within the noise of it"))
        small = small_mib * MiB
        print(f"  for scale: qemu-img convert of a {small_mib} MiB LUN takes "
              f"{med['convert small']:.3f} s, {small / med['convert small'] / MiB:.1f} MiB/s: "
              f"by the same bar qemu-img's own ratio is {small / med['convert small'] / conv_out:.2f}")
        if a.large_writes:
            big = a.large_writes * 4096
            rate = big / med["diff, large"]
            print(f"differential of {a.large_writes} scattered 4 KiB writes ({big / MiB:.0f} MiB, "
                  f"in addition to the goal's): {rate / MiB:7.1f} MiB/s of changed data vs "
                  f"convert out {conv_out / MiB:7.1f} MiB/s: ratio {rate / conv_out:.2f}")
    finally:
        if srv is not None:
            srv.stop()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
