"""Benchmark of the capture/trace/replay stack (a program, not a test).

    python -m tools.bench_replay [--commands 100000] [--workdir DIR]

1. serves a 64 MiB disk with `scsi-target` (a separate process) and captures
   loopback with dumpcap (root) while our initiator runs COMMANDS commands,
   one at a time: 50 % READ(10) and 30 % WRITE(10) of one block at random
   LBAs (random data), 10 % TEST UNIT READY, 10 % INQUIRY — the target's own
   rate on that mix;
2. decodes the capture: the scapy layer (``ISCSI(raw)`` per PDU) and the
   trace extraction (reassembly + own codec), in PDUs per second;
3. replays the trace against a fresh target process (``--seed``), in commands
   per second.
Prints one JSON object with the numbers and the commands that produced them.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IQN = "iqn.2026-12.org.pyscsi:bench-replay"


def _serve(workdir: Path, name: str) -> tuple[subprocess.Popen, int]:
    cfg = workdir / f"{name}.toml"
    cfg.write_text(f'portals = ["127.0.0.1:0"]\n[[target]]\niqn = "{IQN}"\n[[target.lun]]\n'
                   f'lun = 0\npath = "{workdir / (name + ".img")}"\nsize = "64M"\ncreate = true\n')
    p = subprocess.Popen([sys.executable, "-m", "scsi_target", "serve", "--config", str(cfg),
                          "--log-level", "warning"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    line = p.stdout.readline().decode()
    m = re.match(r"listening on [^\s,]*:(\d+)", line)
    if not m:
        p.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return p, int(m.group(1))


def _stop(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


def workload(url: str, n: int, seed: int = 1) -> float:
    from scsi_target.initiator.sync import SyncIscsiClient
    rnd = random.Random(seed)
    blocks = (64 << 20) // 512
    with SyncIscsiClient(url) as c:
        c.test_unit_ready()
        t0 = time.perf_counter()
        for _ in range(n):
            r = rnd.random()
            lba = rnd.randrange(blocks)
            if r < 0.5:
                c.execute(bytes([0x28, 0]) + lba.to_bytes(4, "big") + bytes([0, 0, 1, 0]),
                          read_length=512)
            elif r < 0.8:
                c.execute(bytes([0x2A, 0]) + lba.to_bytes(4, "big") + bytes([0, 0, 1, 0]),
                          data_out=rnd.randbytes(512))
            elif r < 0.9:
                c.execute(bytes(6))
            else:
                c.execute(bytes([0x12, 0, 0, 0, 96, 0]), read_length=96)
        return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_replay")
    ap.add_argument("--commands", type=int, default=100_000)
    ap.add_argument("--workdir")
    args = ap.parse_args(argv)
    dumpcap = shutil.which("dumpcap")
    if not dumpcap or os.geteuid() != 0:
        raise SystemExit("bench_replay needs dumpcap and root (loopback capture)")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-replay-"))
    work.mkdir(parents=True, exist_ok=True)
    cap = work / "bench.pcapng"
    out: dict = {"commands": args.commands, "cpus": os.cpu_count(),
                 "loadavg": os.getloadavg()}
    srv, port = _serve(work, "rec")
    try:
        dc = subprocess.Popen([dumpcap, "-q", "-B", "64", "-i", "lo", "-f", f"tcp port {port}",
                               "-w", str(cap)], stderr=subprocess.PIPE,
                              start_new_session=True)
        while b"Capturing on" not in dc.stderr.readline():
            if dc.poll() is not None:
                raise SystemExit("dumpcap failed")
        time.sleep(0.3)
        secs = workload(f"iscsi://127.0.0.1:{port}/{IQN}/0", args.commands)
        time.sleep(1.0)
        dc.send_signal(signal.SIGINT)
        err = dc.communicate(timeout=30)[1].decode(errors="replace")
        out["dumpcap"] = " ".join(err.split())[-200:]
    finally:
        _stop(srv)
    out["initiator_direct_cmds_per_s"] = round(args.commands / secs, 1)
    out["capture_bytes"] = cap.stat().st_size

    from scsi_target.protocol.scapy_iscsi import ISCSI
    from scsi_target.trace.extract import trace_from_pdus
    from scsi_target.trace.pdus import capture_pdus
    from scsi_target.trace.records import write_trace
    t0 = time.perf_counter()
    pdus = list(capture_pdus(cap, ports=[port]))
    t_frame = time.perf_counter() - t0
    t0 = time.perf_counter()
    for cp in pdus:
        ISCSI(cp.raw)
    t_scapy = time.perf_counter() - t0
    t0 = time.perf_counter()
    trace = trace_from_pdus(pdus, capture=cap.name)
    t_extract = time.perf_counter() - t0
    out["pdus"] = len(pdus)
    out["reassembly_and_framing_pdus_per_s"] = round(len(pdus) / t_frame)
    out["scapy_dissect_pdus_per_s"] = round(len(pdus) / t_scapy)
    out["trace_extract_pdus_per_s"] = round(len(pdus) / t_extract)
    out["trace_commands"] = len(trace.commands)
    trace_path = work / "bench.jsonl"
    with open(trace_path, "w") as f:
        write_trace(trace, f)
    out["trace_bytes"] = trace_path.stat().st_size

    srv, port = _serve(work, "replay")
    try:
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "tools.replay", str(trace_path), "--target",
                            f"iscsi://127.0.0.1:{port}/{IQN}/0", "--seed", "--json"],
                           capture_output=True, text=True)
        wall = time.perf_counter() - t0
    finally:
        _stop(srv)
    if r.returncode not in (0, 1):
        raise SystemExit(f"replay failed: {r.stderr}")
    rep = json.loads(r.stdout)
    out["replay"] = {k: rep[k] for k in ("replayed", "matched", "differed", "elapsed_s",
                                         "commands_per_s", "seeded_bytes", "same")}
    out["replay"]["differences_sample"] = rep["differences"][:5]
    out["replay_wall_s_including_load_and_seed"] = round(wall, 2)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
