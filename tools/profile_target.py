"""Where our target spends its time per command: a sampling profile under a real client.

Serves a tmpfs-backed LUN (tracking on, as ``tools/bench`` does), attaches
``py-spy record`` to the server process, runs one client workload, and prints
the top frames by self time and by inclusive time (percent of samples), plus
the target CPU µs/command of the run.  Usage::

    python tools/profile_target.py [--workload qemu-read|qemu-write|perf-qd1|perf-qd32]
                                   [--count N] [--seconds S] [--rate HZ] [--top N]
                                   [--native] [--idle] [--raw FILE]

py-spy must be installed (``pip install -e ".[profile]"``) and allowed to ptrace the
server (root, or ``kernel.yama.ptrace_scope=0``).  A profile is a guide, not a
figure to quote: sampling slows the target, so compare CPU µs/command with
``tools/bench_conn.py`` runs, which do not sample.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools import bench as B  # noqa: E402

WORKLOADS = ("qemu-read", "qemu-write", "perf-qd1", "perf-qd32")


def client(workload: str, side: B.Side, count: int, seconds: int) -> tuple[list[str], int | None]:
    """The client command line and the number of commands it issues (None: read its output)."""
    if workload.startswith("qemu"):
        cmd = ["qemu-img", "bench", "-f", "raw", "-t", "none", "-c", str(count), "-d", "32",
               "-s", "4096"] + (["-w"] if workload == "qemu-write" else []) + [side.url]
        return cmd, count
    depth = "1" if workload == "perf-qd1" else "32"
    return ["iscsi-perf", "-t", str(seconds), "-m", depth, "-b", str(4096 // B.BLOCK_SIZE),
            "-r", side.url], None


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


def frame_key(frame: str) -> str:
    """``func (file)`` without the line number, so a function's lines add up."""
    m = _FRAME.match(frame.strip())
    return f"{m.group('func')} ({m.group('file')})" if m else frame.strip()


def summarise(raw: str) -> tuple[int, collections.Counter, collections.Counter]:
    """(samples, self counts, inclusive counts) from py-spy's collapsed-stack output."""
    total = 0
    own: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [frame_key(f) for f in stack.split(";")]
        # The first frame is the thread name in py-spy's raw format.
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    return total, own, incl


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=WORKLOADS, default="qemu-read")
    ap.add_argument("--count", type=int, default=100000, help="qemu-img bench commands")
    ap.add_argument("--seconds", type=int, default=6, help="iscsi-perf run time")
    ap.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    ap.add_argument("--idle", action="store_true", help="py-spy --idle (count epoll waits)")
    ap.add_argument("--no-track", dest="track", action="store_false")
    ap.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks in FILE")
    args = ap.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.access(spy, os.X_OK):
        print("py-spy not found (pip install py-spy)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="profile-target-", dir="/dev/shm") as tmp:
        work = Path(tmp)
        image = work / "lun.img"
        B.fill(image, B.IMAGE_SIZE, random=True)
        raw_file = args.raw or work / "stacks.txt"
        with B.run_ours(image, work, track=args.track) as side:
            pid = side.proc.pid
            cmd = [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", str(args.rate),
                   "--output", str(raw_file), "--nonblocking"]
            cmd += ["--native"] if args.native else []
            cmd += ["--idle"] if args.idle else []
            spy_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                ccmd, commands = client(args.workload, side, args.count, args.seconds)
                cpu0 = B.process_cpu(pid)
                out, _ = B.run_tool(ccmd, timeout=600)
                cpu = B.process_cpu(pid) - cpu0
                if commands is None:
                    found = B._AVERAGE.findall(out.replace("\r", "\n"))
                    commands = int(found[-1]) * args.seconds if found else 0
            finally:
                # py-spy writes its file when interrupted.
                spy_proc.send_signal(signal.SIGINT)
                try:
                    _, err = spy_proc.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    spy_proc.kill()
                    _, err = spy_proc.communicate()
        if not raw_file.exists():
            print(f"py-spy wrote no profile: {err.decode(errors='replace').strip()[-300:]}",
                  file=sys.stderr)
            return 1
        total, own, incl = summarise(raw_file.read_text())
    print(f"{args.workload}: {commands:,} commands, target CPU "
          f"{cpu * 1e6 / commands if commands else 0:.1f} µs/command (while sampled), "
          f"{total:,} samples")
    if not total:
        return 1
    for title, counter in (("self", own), ("inclusive", incl)):
        print(f"\ntop {args.top} by {title} time:")
        for name, n in counter.most_common(args.top):
            print(f"  {100 * n / total:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
