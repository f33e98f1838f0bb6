"""Benchmark our RBD-backed LUN against tgt's rbd backing store on the same Ceph cluster.

tools/bench's conventions: each side is started, measured and stopped in turn
(never both at once), in alternating rounds (ours, tgt, ours, tgt, ...;
``--rounds``, default 3); every figure is the median of its rounds with its
spread, the ratio is median(ours) / median(tgt) from the same run, and beside
each rate the target process's own CPU time per command (all its threads,
librbd's included).  The clients are tools/bench's ``qemu-img bench`` runs:
4 KiB at queue depth 32 and 1 MiB at queue depth 8, read and write.

Both sides serve the same image: ours with ``--disk rbd:POOL/IMAGE``, tgt with
``tgtadm ... --bstype rbd --backing-store POOL/IMAGE --bsopts "conf=...;id=admin"``.
The image is filled with random data first (reads reach the OSD, not a hole).
Without ``--conf`` a single-node cluster is booted for the run
(scsi_target/testing/ceph.py: one monitor, one memstore OSD) and stopped at
the end; with ``--conf`` an existing cluster is used (``--pool`` must exist).

``--side tracking`` measures the cost of change tracking instead: the same LUN
untracked and tracked with its generation map in RADOS (docs/rados-maps.md),
alternating, each tracked round from an empty map; tgt is not run.

tgt needs root (tgtd) and Debian's tgt-rbd.  Usage: ``tools/bench_rbd.py
[--quick] [--rounds N] [--only PATTERN] [--side ours|tgt|both|tracking] [--conf FILE
--pool POOL] [--json FILE]``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools import bench as B  # noqa: E402

MiB = 1 << 20
IMAGE_SIZE = 256 * MiB
IMAGE = "bench-rbd"
DEFAULT_POOL = "pyscsi-bench"
BENCH_IQN = "iqn.2026-12.org.pyscsi:bench-rbd"

TESTS = [
    B.Test("qemu-img bench 4K QD32 read", "IOPS", B.qemu_bench(4096, 32, False, 20000, 3000)),
    B.Test("qemu-img bench 4K QD32 write", "IOPS", B.qemu_bench(4096, 32, True, 20000, 3000)),
    B.Test("qemu-img bench 1M QD8 read", "MiB/s", B.qemu_bench(MiB, 8, False, 512, 64)),
    B.Test("qemu-img bench 1M QD8 write", "MiB/s", B.qemu_bench(MiB, 8, True, 512, 64)),
]


def drop_map(conf: Path, pool: str) -> None:
    """Delete the image's generation map in RADOS (rbd_map.IMAGE.genmap.*), so a
    tracked round starts from an empty map and pays for every first mark."""
    rados = shutil.which("rados") or "rados"
    r = subprocess.run([rados, "-c", str(conf), "-p", pool, "ls"], capture_output=True,
                       text=True, timeout=120)
    for name in r.stdout.split():
        if name.startswith(f"rbd_map.{IMAGE}.genmap."):
            subprocess.run([rados, "-c", str(conf), "-p", pool, "rm", name],
                           capture_output=True, timeout=120)


@contextlib.contextmanager
def run_ours(conf: Path, pool: str, logdir: Path, *, track: bool = False,
             name: str = "ours") -> Iterator[B.Side]:
    """Our target on the image: untracked (--no-track), or tracked with the generation
    map in RADOS beside the image (a fresh map each time)."""
    port = B.free_port()
    log = logdir / f"{name}-rbd.log"
    if track:
        drop_map(conf, pool)
    cmd = [sys.executable, "-m", "scsi_target", "serve", "--listen", f"127.0.0.1:{port}",
           "--iqn", BENCH_IQN, "--disk", f"rbd:{pool}/{IMAGE}", "--ceph-conf", str(conf),
           "--log-level", "warning"] + ([] if track else ["--no-track"])
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=B.REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        B.wait_port("127.0.0.1", port, proc, log, timeout=60)
        yield B.Side(name, "127.0.0.1", port, BENCH_IQN, 0, proc, log)
    finally:
        # SIGTERM: the server closes the image, which releases its exclusive lock.
        B.stop_process(proc, grace=30)


@contextlib.contextmanager
def run_tgt(conf: Path, pool: str, logdir: Path) -> Iterator[B.Side]:
    if os.geteuid() != 0:
        raise B.BenchError("tgtd needs root")
    if not shutil.which("tgtd"):
        raise B.BenchError("tgtd not installed (apt-get install tgt tgt-rbd)")
    if not Path("/usr/lib/tgt/backing-store/bs_rbd.so").exists():
        raise B.BenchError("tgt's rbd backing store is missing (apt-get install tgt-rbd)")
    port = B.free_port()
    ctl = 20000 + (os.getpid() + 7) % 12000     # a control port of our own
    log = logdir / "tgtd-rbd.log"
    cmd = ["tgtd", "-f", "-C", str(ctl), "--iscsi", f"portal=127.0.0.1:{port}"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    lu_added = False
    try:
        B.wait_port("127.0.0.1", port, proc, log)
        B.tgtadm(ctl, "--mode", "target", "--op", "new", "--tid", "1", "--targetname", BENCH_IQN)
        B.tgtadm(ctl, "--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1",
                 "--bstype", "rbd", "--backing-store", f"{pool}/{IMAGE}",
                 "--bsopts", f"conf={conf};id=admin")
        lu_added = True
        B.tgtadm(ctl, "--mode", "target", "--op", "bind", "--tid", "1",
                 "--initiator-address", "ALL")
        yield B.Side("tgt", "127.0.0.1", port, BENCH_IQN, 1, proc, log)
    finally:
        if lu_added and proc.poll() is None:
            # Close the image in tgt before killing it, so its lock is released now
            # rather than when the OSD notices a dead watcher.
            with contextlib.suppress(B.BenchError):
                B.tgtadm(ctl, "--mode", "logicalunit", "--op", "delete", "--tid", "1",
                         "--lun", "1")
        B.stop_process(proc, grace=3, signum=signal.SIGKILL)
        for leftover in (f"socket.{ctl}", f"socket.{ctl}.lock"):
            with contextlib.suppress(OSError):
                os.unlink(Path("/var/run/tgtd") / leftover)


def _ceph(conf: Path, *args: str, timeout: float = 120) -> str:
    prog = shutil.which(args[0]) or args[0]
    r = subprocess.run([prog, "-c", str(conf), *args[1:]], capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode:
        raise B.BenchError(f"{' '.join(args[:3])} failed: {r.stderr.strip()[-300:]}")
    return r.stdout


def prepare_image(conf: Path, pool: str, work: Path) -> None:
    """A fresh image of random data (both sides read and write the same one)."""
    src = work / "image.raw"
    B.fill(src, IMAGE_SIZE, random=True)
    subprocess.run([shutil.which("rbd") or "rbd", "-c", str(conf), "rm", f"{pool}/{IMAGE}"],
                   capture_output=True, timeout=120)
    _ceph(conf, "rbd", "import", str(src), f"{pool}/{IMAGE}", timeout=600)
    src.unlink()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_rbd", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs (a smoke test)")
    ap.add_argument("--only", metavar="PATTERN", help="run tests whose name contains PATTERN")
    ap.add_argument("--side", choices=("both", "ours", "tgt", "tracking"), default="both",
                    help="both: ours (untracked) vs tgt; tracking: our LUN tracked with its "
                         "map in RADOS vs the same LUN untracked")
    ap.add_argument("--rounds", type=int, default=3, metavar="N",
                    help="alternating rounds per side; figures are medians (default 3)")
    ap.add_argument("--conf", metavar="FILE", help="ceph.conf of an existing cluster "
                    "(default: boot a single-node cluster for the run)")
    ap.add_argument("--pool", default=DEFAULT_POOL, help=f"pool of the image (default "
                    f"{DEFAULT_POOL}; created on a booted cluster)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)

    from rich.console import Console
    console = Console(width=None if sys.stdout.isatty() else 150)
    say = console.print
    pat = (args.only or "").lower()
    tests = [t for t in TESTS if pat in t.name.lower()]
    if not tests:
        say(f"[red]no test matches {args.only!r}[/red]")
        return 2
    if not 1 <= args.rounds <= 50:
        say("[red]--rounds takes a number from 1 to 50[/red]")
        return 2
    sides = {"both": ["ours", "tgt"], "tracking": ["untracked", "tracked"]}.get(args.side,
                                                                              [args.side])
    signal.signal(signal.SIGTERM, B._interrupt)
    signal.signal(signal.SIGINT, B._interrupt)
    rows = {t.name: B.Row(t) for t in tests}
    load = {"load_before": list(os.getloadavg())}
    try:
        B.check_clients(tests)
        with tempfile.TemporaryDirectory(prefix="scsi-target-bench-rbd-", dir="/dev/shm") as tmp, \
                contextlib.ExitStack() as cleanup:
            work = Path(tmp)
            if args.conf:
                conf = Path(args.conf).resolve()
            else:
                from scsi_target.testing.ceph import CephCluster, CephError
                say("[dim]booting a single-node Ceph cluster[/dim]")
                cluster = CephCluster(work / "ceph", osd_bytes=2 << 30)
                # Stopped before the directory goes: the daemons' pid files are in it.
                cleanup.callback(cluster.stop)
                try:
                    cluster.start()
                    cluster.create_pool(args.pool)
                except CephError as e:
                    raise B.BenchError(str(e)) from None
                conf = cluster.conf
            say(f"[dim]filling {args.pool}/{IMAGE} ({IMAGE_SIZE // MiB} MiB)[/dim]")
            prepare_image(conf, args.pool, work)
            logs = B.REPO / "var" / "bench"
            logs.mkdir(parents=True, exist_ok=True)
            st = B.Settings(args.quick, work, work / "unused", work / "unused-back")
            starters = {"ours": lambda: run_ours(conf, args.pool, logs),
                        "tgt": lambda: run_tgt(conf, args.pool, logs),
                        "untracked": lambda: run_ours(conf, args.pool, logs, name="untracked"),
                        "tracked": lambda: run_ours(conf, args.pool, logs, track=True,
                                                    name="tracked")}
            for rnd in range(args.rounds):
                for name in sides:
                    say(f"[dim]round {rnd + 1}/{args.rounds}[/dim]")
                    B.measure(name, starters[name], tests, rows, st, say)
    except KeyboardInterrupt:
        say("[yellow]interrupted; targets stopped[/yellow]")
        return 130
    except B.BenchError as e:
        say(f"[red]{e}[/red]")
        return 2
    load["load_after"] = list(os.getloadavg())
    table = B.render(rows, sides, args.rounds,
                     ("tracked", "untracked") if args.side == "tracking" else ("ours", "tgt"))
    table.title = (f"RBD LUN benchmark: medians of {args.rounds} alternating round(s), "
                   f"same image {args.pool}/{IMAGE}, one target at a time")
    say(table)
    if args.side == "tracking":
        for row in rows.values():
            a, b = row.median("tracked"), row.median("untracked")
            if a is not None and b:
                say(f"{row.test.name}: tracked/untracked = {a / b:.2f} "
                    f"({a:,.0f} vs {b:,.0f} {row.test.unit})")
    say(f"cores: {os.cpu_count()}, load average before {load['load_before'][0]:.2f}, "
        f"after {load['load_after'][0]:.2f}")
    if args.json:
        data = B.to_json(rows, argparse.Namespace(quick=args.quick, rounds=args.rounds,
                                                  track=False), load)
        data.update(image_size=IMAGE_SIZE, image=f"{args.pool}/{IMAGE}")
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
        say(f"results written to {args.json}")
    failed = any(row.errors(s) for row in rows.values() for s in sides)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
