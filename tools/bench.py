"""Benchmark our iSCSI target against tgt on the same tmpfs-backed image.

Each side is started, measured and stopped in turn (never both at once, so
they don't compete for the CPUs), in alternating rounds (ours, tgt, ours,
tgt, ...; ``--rounds``, default 3): every figure is the median of its rounds,
printed with its spread, and the ratio is median(ours) / median(tgt).  Beside
each rate the target process's own CPU time per command (from
/proc/PID/stat, all threads) is reported: far less noisy than a rate on a
busy machine.  The JSON records the core count and the load average.  The
clients:

* ``qemu-img bench``: 4 KiB at queue depth 32 and 1 MiB at queue depth 8,
  read and write;
* ``iscsi-perf``: 4 KiB random reads at queue depth 1 and 32 for a fixed time;
* ``qemu-img convert`` of 128 MiB from a tmpfs file to the LUN and back
  (the copy back is compared with the source, so a fast but wrong target
  doesn't score).

tgt needs root (tgtd); it runs in the foreground on its own control port and
is killed on exit, Ctrl-C or error.  Server logs go to var/bench/.  Usage: ``tools/bench [--quick]
[--rounds N] [--only PATTERN] [--side ours|tgt|both] [--json FILE]``.
"""
from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parent.parent
IMAGE_SIZE = 256 << 20
CONVERT_SIZE = 128 << 20
BLOCK_SIZE = 512
BENCH_IQN = "iqn.2026-11.org.pyscsi:bench"
MiB = 1 << 20


class BenchError(Exception):
    pass


# ------------------------------------------------------------------ targets
@dataclass
class Side:
    """One running target: how clients reach its LUN."""
    name: str
    host: str
    port: int
    iqn: str
    lun: int
    proc: subprocess.Popen | None = None
    log: Path | None = None

    def health(self) -> str:
        """Why the target may have failed a test: '' while its process runs."""
        if self.proc is None or self.proc.poll() is None:
            return ""
        return f"target process exited with {self.proc.returncode}: {tail(self.log)}"

    @property
    def url(self) -> str:
        return f"iscsi://{self.host}:{self.port}/{self.iqn}/{self.lun}"

    def qemu_json(self, size: int) -> str:
        """A qemu image spec of the LUN's first ``size`` bytes."""
        spec = {"driver": "raw", "size": size,
                "file": {"driver": "iscsi", "transport": "tcp", "portal": f"{self.host}:{self.port}",
                         "target": self.iqn, "lun": self.lun}}
        return "json:" + json.dumps(spec)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, proc: subprocess.Popen, log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"server exited with {proc.returncode}: {tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise BenchError(f"nothing listens on {host}:{port} after {timeout:.0f} s: {tail(log)}")


def tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


def stop_process(proc: subprocess.Popen, grace: float = 5,
                 signum: int = signal.SIGTERM) -> None:
    """Wait ``grace`` seconds after ``signum``, then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signum)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


@contextlib.contextmanager
def run_ours(image: Path, logdir: Path, track: bool) -> Iterator[Side]:
    port = free_port()
    log = logdir / "ours.log"
    cmd = [sys.executable, "-m", "scsi_target", "serve", "--listen", f"127.0.0.1:{port}",
           "--iqn", BENCH_IQN, "--disk", str(image), "--log-level", "warning"]
    if not track:
        cmd.append("--no-track")
    with open(log, "wb") as out:
        # Own session: a Ctrl-C reaches only us, and we stop it in order.
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_port("127.0.0.1", port, proc, log)
        yield Side("ours", "127.0.0.1", port, BENCH_IQN, 0, proc, log)
    finally:
        stop_process(proc)


def tgtadm(ctl: int, *args: str) -> None:
    cmd = ["tgtadm", "-C", str(ctl), "--lld", "iscsi", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if r.returncode:
        raise BenchError(f"{' '.join(cmd)} failed: {r.stderr.strip() or r.stdout.strip()}")


@contextlib.contextmanager
def run_tgt(image: Path, logdir: Path) -> Iterator[Side]:
    if os.geteuid() != 0:
        raise BenchError("tgtd needs root")
    if not shutil.which("tgtd"):
        raise BenchError("tgtd not installed (apt-get install tgt)")
    port = free_port()
    # A control port of our own, so a system tgtd (socket.0) is left alone;
    # tgtd accepts -C values up to 32767.
    ctl = 20000 + os.getpid() % 12000
    log = logdir / "tgtd.log"
    cmd = ["tgtd", "-f", "-C", str(ctl), "--iscsi", f"portal=127.0.0.1:{port}"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port("127.0.0.1", port, proc, log)
        tgtadm(ctl, "--mode", "target", "--op", "new", "--tid", "1", "--targetname", BENCH_IQN)
        # LUN 0 is tgt's controller LU; the disk goes on LUN 1.
        tgtadm(ctl, "--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1",
               "--backing-store", str(image))
        tgtadm(ctl, "--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL")
        yield Side("tgt", "127.0.0.1", port, BENCH_IQN, 1, proc, log)
    finally:
        # tgtd ignores SIGTERM and won't "delete system" while it has targets; it
        # keeps no state worth a graceful stop, so kill it.
        stop_process(proc, grace=3, signum=signal.SIGKILL)
        for leftover in (f"socket.{ctl}", f"socket.{ctl}.lock"):
            with contextlib.suppress(OSError):
                os.unlink(Path("/var/run/tgtd") / leftover)


# -------------------------------------------------------------------- tests
@dataclass
class Result:
    value: float          # in the test's unit; higher is better
    seconds: float
    detail: str = ""
    commands: int = 0     # SCSI commands the client issued (0: not known)
    cpu: float = 0.0      # target process CPU seconds (user + system) during the test

    @property
    def cpu_us_per_command(self) -> float | None:
        return self.cpu * 1e6 / self.commands if self.commands and self.cpu else None


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads included."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


@dataclass
class Settings:
    quick: bool
    workdir: Path
    source: Path          # CONVERT_SIZE bytes of random data
    copy_back: Path


def run_tool(cmd: list[str], timeout: float) -> tuple[str, float]:
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           start_new_session=True)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{cmd[0]} did not finish in {timeout:.0f} s") from None
    elapsed = time.monotonic() - t0
    if r.returncode:
        msg = (r.stderr.strip() or r.stdout.strip()).splitlines()
        raise BenchError(f"{' '.join(cmd[:2])} exited {r.returncode}: {msg[-1] if msg else ''}")
    return r.stdout, elapsed


_COMPLETED = re.compile(r"Run completed in ([0-9.]+) seconds")


def qemu_bench(size: int, depth: int, write: bool, count: int, quick_count: int) -> Callable:
    def run(side: Side, st: Settings) -> Result:
        n = quick_count if st.quick else count
        cmd = ["qemu-img", "bench", "-f", "raw", "-t", "none", "-c", str(n), "-d", str(depth),
               "-s", str(size)]
        if write:
            cmd.append("-w")
        out, _ = run_tool(cmd + [side.url], timeout=600)
        m = _COMPLETED.search(out)
        if not m:
            raise BenchError(f"qemu-img bench printed no run time: {out.strip()[-200:]}")
        secs = float(m.group(1))
        iops = n / secs
        mibs = n * size / MiB / secs
        if size >= MiB:
            return Result(mibs, secs, f"{iops:,.0f} IOPS", commands=n)
        return Result(iops, secs, f"{mibs:,.1f} MiB/s", commands=n)
    return run


def qemu_bench_sessions(sessions: int, write: bool, count: int, quick_count: int) -> Callable:
    """Aggregate 4 KiB QD32 rate of ``sessions`` qemu-img processes at once (one session each)."""
    def run(side: Side, st: Settings) -> Result:
        n = (quick_count if st.quick else count) // sessions
        cmd = ["qemu-img", "bench", "-f", "raw", "-t", "none", "-c", str(n), "-d", "32",
               "-s", "4096", *(["-w"] if write else [])]
        t0 = time.monotonic()
        procs = [subprocess.Popen(cmd + ["-o", f"{i * 4096 * 1024}", side.url],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True)
                 for i in range(sessions)]
        outs = []
        try:
            for proc in procs:
                out, _ = proc.communicate(timeout=600)
                if proc.returncode:
                    lines = out.strip().splitlines()
                    raise BenchError(f"qemu-img bench exited {proc.returncode}: "
                                     f"{lines[-1] if lines else ''}")
                outs.append(out)
        except subprocess.TimeoutExpired:
            raise BenchError("qemu-img bench did not finish in 600 s") from None
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        elapsed = time.monotonic() - t0
        # The aggregate is every command over the wall clock of the whole run
        # (client start-up included, the same for both sides): a sum of the
        # processes' own rates would overstate it when their runs do not overlap.
        for out in outs:
            if not _COMPLETED.search(out):
                raise BenchError(f"qemu-img bench printed no run time: {out.strip()[-200:]}")
        iops = n * sessions / elapsed
        return Result(iops, elapsed, f"{sessions} sessions", commands=n * sessions)
    return run


_AVERAGE = re.compile(r"iops average (\d+)")


def iscsi_perf(depth: int, seconds: int = 6) -> Callable:
    def run(side: Side, st: Settings) -> Result:
        secs = 2 if st.quick else seconds
        cmd = ["iscsi-perf", "-t", str(secs), "-m", str(depth), "-b", str(4096 // BLOCK_SIZE),
               "-r", side.url]
        out, elapsed = run_tool(cmd, timeout=secs + 60)
        found = _AVERAGE.findall(out.replace("\r", "\n"))
        if not found:
            raise BenchError(f"iscsi-perf printed no average: {out.strip()[-200:]}")
        iops = int(found[-1])
        return Result(iops, elapsed, f"{iops * 4096 / MiB:,.1f} MiB/s", commands=iops * secs)
    return run


def convert_in(side: Side, st: Settings) -> Result:
    cmd = ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(st.source), side.url]
    _, secs = run_tool(cmd, timeout=600)
    return Result(CONVERT_SIZE / MiB / secs, secs, commands=CONVERT_SIZE // CONVERT_REQUEST)


def convert_out(side: Side, st: Settings) -> Result:
    with contextlib.suppress(FileNotFoundError):
        st.copy_back.unlink()
    cmd = ["qemu-img", "convert", "-f", "raw", "-O", "raw", side.qemu_json(CONVERT_SIZE),
           str(st.copy_back)]
    _, secs = run_tool(cmd, timeout=600)
    return Result(CONVERT_SIZE / MiB / secs, secs, commands=CONVERT_SIZE // CONVERT_REQUEST)


# qemu-img convert moves data in requests of this size (its default buffer), so
# CPU per command for the convert rows is per 2 MiB request (approximate).
CONVERT_REQUEST = 2 * MiB


@dataclass
class Test:
    name: str
    unit: str
    run: Callable[[Side, Settings], Result]


TESTS = [
    Test("qemu-img bench 4K QD32 read", "IOPS", qemu_bench(4096, 32, False, 100000, 10000)),
    Test("qemu-img bench 4K QD32 write", "IOPS", qemu_bench(4096, 32, True, 100000, 10000)),
    Test("qemu-img bench 1M QD8 read", "MiB/s", qemu_bench(MiB, 8, False, 2048, 256)),
    Test("qemu-img bench 1M QD8 write", "MiB/s", qemu_bench(MiB, 8, True, 2048, 256)),
    Test("iscsi-perf 4K random read QD1", "IOPS", iscsi_perf(1)),
    Test("iscsi-perf 4K random read QD32", "IOPS", iscsi_perf(32)),
    Test("qemu-img bench 4K QD32 read, 4 sessions", "IOPS",
         qemu_bench_sessions(4, False, 100000, 10000)),
    Test("qemu-img bench 4K QD32 read, 16 sessions", "IOPS",
         qemu_bench_sessions(16, False, 160000, 16000)),
    Test("qemu-img bench 4K QD32 write, 4 sessions", "IOPS",
         qemu_bench_sessions(4, True, 100000, 10000)),
    Test("qemu-img bench 4K QD32 write, 16 sessions", "IOPS",
         qemu_bench_sessions(16, True, 160000, 16000)),
    # Order matters: convert out reads back what convert in wrote.
    Test("qemu-img convert 128M file->LUN", "MiB/s", convert_in),
    Test("qemu-img convert 128M LUN->file", "MiB/s", convert_out),
]


def select(pattern: str | None) -> list[Test]:
    if not pattern:
        return list(TESTS)
    pat = pattern.lower()
    glob = any(c in pat for c in "*?[")
    return [t for t in TESTS
            if (fnmatch.fnmatch(t.name.lower(), pat) if glob else pat in t.name.lower())]


# ------------------------------------------------------------------ running
@dataclass
class Row:
    test: Test
    # side -> one entry per round: a Result, or why that round failed
    rounds: dict[str, list[Result | str]] = field(default_factory=dict)

    def ok(self, side: str) -> list[Result]:
        return [r for r in self.rounds.get(side, []) if isinstance(r, Result)]

    def errors(self, side: str) -> list[str]:
        return [r for r in self.rounds.get(side, []) if not isinstance(r, Result)]

    def median(self, side: str) -> float | None:
        vals = [r.value for r in self.ok(side)]
        return statistics.median(vals) if vals else None

    def spread(self, side: str) -> tuple[float, float] | None:
        vals = [r.value for r in self.ok(side)]
        return (min(vals), max(vals)) if vals else None

    def cpu_us(self, side: str) -> float | None:
        vals = [v for r in self.ok(side) if (v := r.cpu_us_per_command) is not None]
        return statistics.median(vals) if vals else None


def measure(side_name: str, starter, tests: list[Test], rows: dict[str, Row],
            st: Settings, say) -> None:
    """One round of every test on one side (one target lifetime)."""
    try:
        with starter() as side:
            say(f"[bold]{side_name}[/bold]: {side.url}")
            for t in tests:
                runs = rows[t.name].rounds.setdefault(side_name, [])
                pid = side.proc.pid if side.proc else 0
                cpu0 = process_cpu(pid)
                try:
                    res = t.run(side, st)
                except BenchError as e:
                    why = f"{e} ({side.health()})" if side.health() else str(e)
                    runs.append(why)
                    say(f"  {t.name}: [red]failed[/red]: {why}")
                    continue
                res.cpu = process_cpu(pid) - cpu0
                if t.run is convert_out and not copy_ok(st):
                    runs.append("data read back differs from data written")
                    say(f"  {t.name}: [red]data read back differs from data written[/red]")
                    continue
                runs.append(res)
                cpu = res.cpu_us_per_command
                say(f"  {t.name}: {res.value:,.1f} {t.unit} in {res.seconds:.2f} s"
                    + (f" ({res.detail})" if res.detail else "")
                    + (f", target CPU {cpu:,.1f} µs/command" if cpu is not None else ""))
    except BenchError as e:
        say(f"[red]{side_name}: {e}[/red]")
        for t in tests:
            runs = rows[t.name].rounds.setdefault(side_name, [])
            runs.append(str(e))


def copy_ok(st: Settings) -> bool:
    """The bytes read back must be the bytes written; otherwise the speed means nothing."""
    return digest(st.copy_back) == digest(st.source)


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def fill(path: Path, size: int, random: bool) -> None:
    """Write ``size`` bytes (not sparse: the targets should really read memory)."""
    chunk = os.urandom(MiB) if random else bytes(MiB)
    with open(path, "wb") as f:
        for i in range(size // MiB):
            # Vary each MiB so no layer can dedupe or compress it away.
            f.write(i.to_bytes(8, "little") + chunk[8:] if random else chunk)


def _num(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"


def render(rows: dict[str, Row], sides: list[str], rounds: int,
           ratio: tuple[str, str] = ("ours", "tgt")):
    """The results table; with two sides, a column of ratio[0]'s median over ratio[1]'s."""
    from rich.table import Table
    table = Table(title=f"iSCSI target benchmark: medians of {rounds} alternating round(s), "
                        "same tmpfs image, one target at a time")
    table.add_column("test")
    table.add_column("unit")
    for s in sides:
        table.add_column(f"{s} (min–max)", justify="right")
        table.add_column(f"{s} CPU µs/cmd", justify="right")
    if len(sides) == 2:
        table.add_column(f"{ratio[0]}/{ratio[1]}", justify="right")
    for row in rows.values():
        cells = []
        for s in sides:
            med, spread, errs = row.median(s), row.spread(s), row.errors(s)
            if med is None:
                cells.append("[red]failed[/red]" if errs else "-")
            else:
                cell = f"{_num(med)} ({_num(spread[0])}–{_num(spread[1])})"
                cells.append(cell + (f" [red]{len(errs)} failed[/red]" if errs else ""))
            cpu = row.cpu_us(s)
            cells.append("-" if cpu is None else f"{cpu:,.1f}")
        if len(sides) == 2:
            r = row_ratio(row, *ratio)
            cells.append("-" if r is None else
                         f"[{'green' if r >= 1 else 'yellow' if r >= 0.5 else 'red'}]"
                         f"{r:.2f}[/]")
        table.add_row(row.test.name, row.test.unit, *cells)
    return table


def row_ratio(row: Row, top: str = "ours", bottom: str = "tgt") -> float | None:
    a, b = row.median(top), row.median(bottom)
    if a is not None and b:
        return a / b
    return None


def to_json(rows: dict[str, Row], args: argparse.Namespace, load: dict) -> dict:
    out = []
    for row in rows.values():
        item: dict = {"test": row.test.name, "unit": row.test.unit}
        for side, runs in row.rounds.items():
            spread = row.spread(side)
            item[side] = {
                "median": row.median(side),
                "min": spread[0] if spread else None,
                "max": spread[1] if spread else None,
                "cpu_us_per_command": row.cpu_us(side),
                "rounds": [{"value": r.value, "seconds": r.seconds, "detail": r.detail,
                            "commands": r.commands, "cpu_seconds": r.cpu,
                            "cpu_us_per_command": r.cpu_us_per_command}
                           if isinstance(r, Result) else {"error": r} for r in runs],
            }
        item["ratio_ours_tgt"] = row_ratio(row)
        out.append(item)
    return {"quick": args.quick, "rounds": args.rounds, "image_size": IMAGE_SIZE,
            "block_size": BLOCK_SIZE, "track": args.track, "cores": os.cpu_count(),
            **load, "results": out}


def check_clients(tests: list[Test]) -> None:
    need = {"qemu-img": "qemu-utils", "iscsi-perf": "libiscsi-bin"}
    for tool, pkg in need.items():
        if any(t.name.startswith(tool.split("-")[0]) for t in tests) and not shutil.which(tool):
            raise BenchError(f"{tool} not found (apt-get install {pkg})")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs (a smoke test of the numbers)")
    ap.add_argument("--only", metavar="PATTERN",
                    help="run tests whose name contains PATTERN (or matches it as a glob)")
    ap.add_argument("--side", choices=("both", "ours", "tgt"), default="both",
                    help="which targets to measure (default both)")
    ap.add_argument("--no-track", dest="track", action="store_false",
                    help="serve our LUN without the difference tracker")
    ap.add_argument("--rounds", type=int, default=3, metavar="N",
                    help="alternating rounds per side; figures are medians (default 3)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--list", action="store_true", help="list the tests and exit")
    args = ap.parse_args(argv)

    from rich.console import Console
    # Wide enough for the table when the output is a file or a pipe.
    console = Console(width=None if sys.stdout.isatty() else 150)
    say = console.print
    tests = select(args.only)
    if args.list:
        for t in tests:
            print(t.name)
        return 0
    if not tests:
        say(f"[red]no test matches {args.only!r}[/red] (see --list)")
        return 2
    if not 1 <= args.rounds <= 50:
        say("[red]--rounds takes a number from 1 to 50[/red]")
        return 2
    sides = ["ours", "tgt"] if args.side == "both" else [args.side]
    if not Path("/dev/shm").is_dir():
        say("[red]/dev/shm is missing: the benchmark needs a tmpfs[/red]")
        return 2

    # SIGTERM (e.g. from a timeout) unwinds like Ctrl-C, so the targets are stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # even if started with SIGINT ignored
    rows = {t.name: Row(t) for t in tests}
    load = {"load_before": list(os.getloadavg())}
    try:
        check_clients(tests)
        with tempfile.TemporaryDirectory(prefix="scsi-target-bench-", dir="/dev/shm") as tmp:
            work = Path(tmp)
            image = work / "lun.img"
            st = Settings(args.quick, work, work / "source.img", work / "copy-back.img")
            fill(st.source, CONVERT_SIZE, random=True)
            logs = REPO / "var" / "bench"
            logs.mkdir(parents=True, exist_ok=True)
            starters = {"ours": lambda: run_ours(image, logs, args.track),
                        "tgt": lambda: run_tgt(image, logs)}
            for rnd in range(args.rounds):
                for name in sides:
                    say(f"[dim]round {rnd + 1}/{args.rounds}[/dim]")
                    fill(image, IMAGE_SIZE, random=False)  # the same starting image every time
                    measure(name, starters[name], tests, rows, st, say)
    except KeyboardInterrupt:
        say("[yellow]interrupted; targets stopped[/yellow]")
        return 130
    except BenchError as e:
        say(f"[red]{e}[/red]")
        return 2
    load["load_after"] = list(os.getloadavg())
    say(render(rows, sides, args.rounds))
    say(f"cores: {os.cpu_count()}, load average before {load['load_before'][0]:.2f}, "
        f"after {load['load_after'][0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(rows, args, load), indent=2) + "\n")
        say(f"results written to {args.json}")
    failed = any(row.errors(s) for row in rows.values() for s in sides)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
