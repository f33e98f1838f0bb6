"""Captures for the trace tests: dumpcap on loopback while real initiators work,
tshark's decode of a capture, and the workloads.

    python tests/trace_capture.py     # regenerates tests/golden/trace/ (root, tgt, tshark)

The golden captures let the tshark comparison run where tshark is missing;
the live tests make fresh ones.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from scsi_target.testing.external import require_tool, run_tool  # noqa: E402

GOLDEN = HERE / "golden" / "trace"


class Dumpcap:
    """``with Dumpcap(path, port): ...`` captures loopback TCP on ``port``."""

    def __init__(self, path: Path, port: int, pcap: bool = False) -> None:
        self.path, self.port, self.pcap = Path(path), port, pcap
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Dumpcap":
        exe = require_tool("dumpcap")
        args = [exe, "-q", "-i", "lo", "-f", f"tcp port {self.port}", "-w", str(self.path)]
        if self.pcap:
            args.insert(1, "-P")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        # dumpcap says "Capturing on" once the filter is installed.
        deadline = time.monotonic() + 15
        line = b""
        while time.monotonic() < deadline and self.proc.poll() is None:
            line = self.proc.stderr.readline()
            if b"Capturing on" in line:
                break
        if self.proc.poll() is not None:
            raise RuntimeError(f"dumpcap failed: {line!r} {self.proc.stderr.read()!r}")
        time.sleep(0.3)
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.5)         # let the last segments reach the ring buffer
        p = self.proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if p is not None and p.stderr:
            p.stderr.close()


def _flatten(d, out: dict) -> None:
    for k, v in d.items():
        if isinstance(v, dict):
            _flatten(v, out)
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                _flatten(item, out)
        elif k.startswith(("iscsi.", "scsi.", "scsi_sbc.", "scsi_spc.")):
            out.setdefault(k, v)


def tshark_pdus(path: Path, ports) -> list[dict]:
    """tshark's iSCSI PDUs of a capture: one flat dict per PDU, ``frame`` added."""
    exe = require_tool("tshark")
    args = [exe, "-r", str(path), "-T", "json", "--no-duplicate-keys"]
    for port in ports:
        args += ["-d", f"tcp.port=={port},iscsi"]
    r = subprocess.run(args, capture_output=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"tshark failed: {r.stderr.decode(errors='replace')[-2000:]}")
    out = []
    for pkt in json.loads(r.stdout):
        layers = pkt["_source"]["layers"]
        frame = int(layers["frame"]["frame.number"])
        iscsi = layers.get("iscsi")
        if iscsi is None:
            continue
        scsi = layers.get("scsi")
        items = iscsi if isinstance(iscsi, list) else [iscsi]
        scsis = scsi if isinstance(scsi, list) else ([scsi] if scsi else [])
        for item in items:
            flat = {"frame": frame}
            _flatten(item, flat)
            out.append(flat)
        # SCSI layers sit beside the iSCSI ones; attach each to the PDU whose
        # opcode carries a CDB (commands) -- tshark emits them in PDU order.
        cmds = [f for f in out[len(out) - len(items):] if f.get("iscsi.opcode") == "0x01"]
        for f, s in zip(cmds, scsis):
            sf: dict = {}
            _flatten(s, sf)
            f["scsi"] = sf
    return out


# ------------------------------------------------------------------ workloads
def libiscsi_workload(host: str, port: int, iqn: str, lun: int) -> None:
    url = f"iscsi://{host}:{port}/{iqn}/{lun}"
    for args in (["iscsi-inq", url], ["iscsi-readcapacity16", url],
                 ["iscsi-ls", "-s", f"iscsi://{host}:{port}"]):
        r = run_tool([require_tool(args[0]), *args[1:]], timeout=60)
        assert r.returncode == 0, f"{args}: {r.stdout}{r.stderr}"
    # 96 KiB: more than the 64 KiB first burst, so the rest goes after an R2T.
    r = run_tool([require_tool("qemu-io"), "-f", "raw", "-c", "write -P 0x5a 4096 96k",
                  "-c", "read -P 0x5a 4096 96k", url], timeout=60)
    assert r.returncode == 0 and "verification failed" not in r.stdout, r.stdout + r.stderr


def our_initiator_workload(url: str, seed: int = 10) -> None:
    from scsi_target.initiator.sync import SyncIscsiClient
    rnd = random.Random(seed)
    with SyncIscsiClient(url) as c:     # digests offered: CRC32C preferred
        c.ping(b"replay-ping")
        c.test_unit_ready()
        c.test_unit_ready()
        data = rnd.randbytes(8 * 512)
        c.write(64, data)
        assert bytes(c.read(64, 8)) == data
        c.inquiry(evpd=True, page=0x80)
        cap = c.read_capacity16()
        # READ(10) past the end: CHECK CONDITION, LBA OUT OF RANGE.
        cdb = bytes([0x28, 0]) + (cap.last_lba + 1).to_bytes(4, "big") + bytes([0, 0, 1, 0])
        c.execute(cdb, read_length=cap.block_size)
        # A 32-byte variable-length CDB: bytes 16.. travel in an Extended CDB AHS.
        c.execute(bytes([0x7F, 0, 0, 0, 0, 0, 0, 0x18]) + bytes(24), read_length=0)
        c.lun_reset()


def make_goldens() -> None:
    import tempfile
    from scsi_target.testing.process import Lun, ServerProcess, Target
    from client_targets import TgtFactory
    GOLDEN.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        srv = ServerProcess(tmp / "ours", [Target("iqn.2026-12.org.pyscsi:trace",
                                                 [Lun(0, "16M")])]).start()
        try:
            with Dumpcap(GOLDEN / "ours_session.pcapng", srv.port):
                libiscsi_workload(srv.host, srv.port, srv.iqn, 0)
                our_initiator_workload(srv.url(0))
        finally:
            srv.stop()
        import pytest  # TgtFactory reports problems through pytest
        try:
            fac = TgtFactory(tmp)
        except pytest.skip.Exception as e:
            raise SystemExit(f"tgt: {e}")
        try:
            t = fac.new_target(size=16 << 20)
            with Dumpcap(GOLDEN / "tgt_session.pcap", t.port, pcap=True):
                libiscsi_workload(t.host, t.port, t.iqn, t.lun)
                our_initiator_workload(t.url())
            port_tgt = t.port
        finally:
            fac.close()
    pdus = synthetic_pdus()
    write_synthetic(GOLDEN / "synthetic.pcapng", pdus, pcapng=True)
    write_synthetic(GOLDEN / "synthetic_mangled.pcap", pdus, mangle=True)
    meta = {"ours_session.pcapng": srv.port, "tgt_session.pcap": port_tgt,
            "synthetic.pcapng": 3260}
    for name, port in meta.items():
        pdus = tshark_pdus(GOLDEN / name, [port])
        (GOLDEN / (name.rsplit(".", 1)[0] + ".tshark.json")).write_text(
            json.dumps({"port": port, "pdus": pdus}, indent=0, sort_keys=True) + "\n")
    print("written", sorted(os.listdir(GOLDEN)))


# ------------------------------------------------------------ synthetic captures
def synthetic_pdus(digests: bool = True) -> list[tuple[bool, bytes]]:
    """(from initiator, wire bytes) of one PDU of every opcode, built with the scapy layer.

    The login negotiates digests, so every full-feature PDU carries them
    (as tshark expects after such a login).
    """
    from scsi_target.protocol import scapy_iscsi as S
    rnd = random.Random(7)
    hd = dd = "CRC32C" if digests else "None"
    isid = bytes.fromhex("80123456789a")
    out = [
        (True, S.ISCSI_LoginRequest(I=1, T=1, csg=1, nsg=3, isid=isid, itt=1, cmdsn=1,
                                    data=b"InitiatorName=iqn.2026-12.test:i\x00"
                                         b"SessionType=Normal\x00TargetName=iqn.2026-12.test:t\x00"
                                         + f"HeaderDigest={hd}\x00DataDigest={dd}\x00".encode())),
        (False, S.ISCSI_LoginResponse(T=1, csg=1, nsg=3, isid=isid, tsih=7, itt=1, statsn=100,
                                      expcmdsn=1, maxcmdsn=32,
                                      data=f"HeaderDigest={hd}\x00DataDigest={dd}\x00".encode())),
    ]
    ff = [
        (True, S.ISCSI_TextRequest(I=1, itt=2, cmdsn=1, expstatsn=101,
                                   data=b"SendTargets=All\x00")),
        (False, S.ISCSI_TextResponse(itt=2, statsn=101, expcmdsn=1, maxcmdsn=32,
                                     data=b"TargetName=iqn.2026-12.test:t\x00"
                                          b"TargetAddress=127.0.0.1:3260,1\x00")),
        (True, S.ISCSI_NOPOut(I=1, itt=3, cmdsn=1, expstatsn=102, ping_data=b"ping!")),
        (False, S.ISCSI_NOPIn(itt=3, statsn=102, expcmdsn=1, maxcmdsn=32, ping_data=b"ping!")),
        (True, S.ISCSI_SCSICommand(W=1, lun=0x0001000000000000, itt=4, edtl=1024, cmdsn=1,
                                   expstatsn=103, cdb_opcode=0x2A,
                                   cdb_rest=bytes([0, 0, 0, 0, 16, 0, 0, 2, 0]) + bytes(6),
                                   immediate_data=rnd.randbytes(512))),
        (False, S.ISCSI_R2T(lun=0x0001000000000000, itt=4, ttt=0x1234, statsn=103,
                            expcmdsn=2, maxcmdsn=33, r2tsn=0, offset=512,
                            desired_length=512)),
        (True, S.ISCSI_DataOut(F=1, lun=0x0001000000000000, itt=4, ttt=0x1234, expstatsn=103,
                               datasn=0, offset=512, data=rnd.randbytes(512))),
        (False, S.ISCSI_SCSIResponse(itt=4, statsn=103, expcmdsn=2, maxcmdsn=33)),
        (True, S.ISCSI_SCSICommand(R=1, lun=0x0001000000000000, itt=5, edtl=4096, cmdsn=2,
                                   expstatsn=104, cdb_opcode=0x28,
                                   cdb_rest=bytes([0, 0, 0, 0, 16, 0, 0, 8, 0]) + bytes(6))),
        (False, S.ISCSI_DataIn(lun=0x0001000000000000, itt=5, statsn=0, expcmdsn=3,
                               maxcmdsn=34, datasn=0, offset=0, data=rnd.randbytes(2048))),
        (False, S.ISCSI_DataIn(F=1, S=1, U=1, status=0, lun=0x0001000000000000, itt=5,
                               statsn=104, expcmdsn=3, maxcmdsn=34, datasn=1, offset=2048,
                               residual=1024, data=rnd.randbytes(1021))),
        # A 32-byte CDB: 16 bytes in the BHS, the rest in an Extended CDB AHS.
        (True, S.ISCSI_SCSICommand(lun=0x0001000000000000, itt=6, edtl=0, cmdsn=3,
                                   expstatsn=105, cdb_opcode=0x7F,
                                   cdb_rest=bytes([0, 0, 0, 0, 0, 0, 0x18]) + bytes(8),
                                   ahs=[S.ISCSI_AHS(ahstype=1,
                                                    ahsdata=b"\x00" + rnd.randbytes(16))])),
        (False, S.ISCSI_SCSIResponse(itt=6, status=2, statsn=105, expcmdsn=4, maxcmdsn=35,
                                     sense=bytes.fromhex("7000050000000010000000002000")
                                     + bytes(4))),
        (True, S.ISCSI_TMFRequest(I=1, function=5, lun=0x0001000000000000, itt=7, cmdsn=4,
                                  expstatsn=106, refcmdsn=3)),
        (False, S.ISCSI_TMFResponse(response=0, itt=7, statsn=106, expcmdsn=4, maxcmdsn=35)),
        # A Status SNACK carries the reserved ITT (RFC 7143 11.16.1).
        (True, S.ISCSI_SNACKRequest(type=1, expstatsn=107, begrun=104, runlength=1)),
        (False, S.ISCSI_Reject(reason=4, statsn=107, expcmdsn=4, maxcmdsn=35,
                               rejected_header=bytes(S.ISCSI_SNACKRequest(
                                   type=1, expstatsn=107, begrun=104, runlength=1)))),
        (False, S.ISCSI_AsyncMessage(lun=0x0001000000000000, statsn=107, expcmdsn=4,
                                     maxcmdsn=35, event=1, param3=10)),
        (False, S.ISCSI_AsyncMessage(lun=0x0001000000000000, statsn=108, expcmdsn=4,
                                     maxcmdsn=35, event=0,
                                     sense=bytes.fromhex("70000600000000100000000029000000")
                                     + bytes(2))),
        (True, S.ISCSI_LogoutRequest(I=1, reason=0, itt=8, cmdsn=4, expstatsn=109)),
        (False, S.ISCSI_LogoutResponse(itt=8, statsn=109, expcmdsn=5, maxcmdsn=36,
                                       time2wait=2, time2retain=20)),
    ]
    out += [(d, p.with_digests() if digests else p) for d, p in ff]
    return [(d, bytes(p)) for d, p in out]


def synthetic_segments(pdus, mss: int = 1400, mangle: bool = False):
    """TCP segments (from initiator, seq offset, bytes) carrying ``pdus``.

    PDUs are packed back to back and cut at ``mss``: some segments hold
    several PDUs, big PDUs span segments.  ``mangle`` adds what real
    captures have: retransmitted and overlapping segments, and reordering.
    """
    streams = {True: b"", False: b""}
    order = []
    for d, raw in pdus:
        # Each direction flushes when the other side speaks (request/response).
        streams[d] += raw
        order.append(d)
    segs = []
    pos = {True: 0, False: 0}
    buf = {True: b"", False: b""}
    for d, raw in pdus:
        buf[d] += raw
        # Keep a few small PDUs together so that one segment carries several.
        if len(buf[d]) < 200 and d is False:
            continue
        other = not d
        if buf[other]:
            for i in range(0, len(buf[other]), mss):
                segs.append((other, pos[other] + i, buf[other][i:i + mss]))
            pos[other] += len(buf[other])
            buf[other] = b""
        for i in range(0, len(buf[d]), mss):
            segs.append((d, pos[d] + i, buf[d][i:i + mss]))
        pos[d] += len(buf[d])
        buf[d] = b""
    for d in (True, False):
        for i in range(0, len(buf[d]), mss):
            segs.append((d, pos[d] + i, buf[d][i:i + mss]))
    if mangle:
        rnd = random.Random(3)
        out = []
        for s in segs:
            out.append(s)
            r = rnd.random()
            if r < 0.2:
                out.append(s)                       # plain retransmission
            elif r < 0.3 and len(s[2]) > 10:
                out.append((s[0], s[1] + 5, s[2][5:]))   # overlapping retransmission
        for i in range(1, len(out) - 1, 4):
            if out[i][0] == out[i + 1][0]:
                out[i], out[i + 1] = out[i + 1], out[i]  # reordered within a direction
        segs = out
    return segs


def write_synthetic(path: Path, pdus, port: int = 3260, pcapng: bool = False,
                    mangle: bool = False) -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scsi_target.trace.pcapfile import PcapngWriter
    cli, srv = ("10.0.0.1", 40000), ("10.0.0.2", port)
    isn = {True: 1000, False: 5000}

    def frame(d, seq, flags, data=b""):
        a, b = (cli, srv) if d else (srv, cli)
        return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                     / IP(src=a[0], dst=b[0]) / TCP(sport=a[1], dport=b[1], seq=seq,
                                                    ack=0, flags=flags) / data)

    frames = [frame(True, isn[True], "S"), frame(False, isn[False], "SA"),
              frame(True, isn[True] + 1, "A")]
    for d, off, data in synthetic_segments(pdus, mangle=mangle):
        frames.append(frame(d, isn[d] + 1 + off, "PA", data))
    t0 = 1_700_000_000.0
    if pcapng:
        with open(path, "wb") as f:
            w = PcapngWriter(f)
            for i, fr in enumerate(frames):
                w.write(t0 + i * 0.001, fr)
    else:
        from scapy.utils import PcapWriter
        with PcapWriter(str(path), linktype=1, sync=True) as w:
            for i, fr in enumerate(frames):
                p = Ether(fr)
                p.time = t0 + i * 0.001
                w.write(p)


if __name__ == "__main__":
    make_goldens()
