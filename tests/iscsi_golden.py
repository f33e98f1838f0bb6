"""iSCSI PDUs on the wire, checked against a reference decoder (Wireshark's tshark).

Our PDU codec is otherwise only tested against its own field table; here the
same bytes go through tshark's iSCSI dissector and through our codec, and
every field tshark reports must agree (tests/test_iscsi_pdu_golden.py).

* :func:`capture` — dumpcap on ``lo`` (root), port-filtered, while
  :func:`traffic` has libiscsi's tools and our initiator talk to our target.
* :func:`wire_pdus` — the pcap's TCP streams reassembled and cut into PDUs
  with our framing (split_header, digests) and decoded by our codec.
* :func:`tshark_pdus` — tshark's JSON, one flattened field dict per PDU.
* :func:`compare` — PDU by PDU, field by field; a field tshark reports that
  :data:`FIELDS` does not map is itself a mismatch, so nothing is skipped
  silently.

Regenerate the golden files (root, tshark installed)::

    python -m tests.iscsi_golden [--out tests/golden/iscsi]
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# The suite's helper modules are imported as the tests import them (tests/ on sys.path), also
# when this runs as a program.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from scsi_target.protocol import params as K  # noqa: E402
from scsi_target.protocol import pdu as P  # noqa: E402
from scsi_target.protocol.framing import data_digest_ok, digest_bytes, split_header  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "golden" / "iscsi"
IQN = "iqn.2026-11.org.pyscsi:golden"
LOGIN_OPS = (P.Op.LOGIN_REQUEST, P.Op.LOGIN_RESPONSE)


# ------------------------------------------------------------------ capture
def capture(dumpcap: str, port: int, out: Path, run: Callable[[], None]) -> None:
    """Record loopback TCP traffic on ``port`` into ``out`` (pcap) while ``run()`` runs."""
    out.unlink(missing_ok=True)
    proc = subprocess.Popen([dumpcap, "-i", "lo", "-f", f"tcp port {port}", "-P", "-w", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        # dumpcap names the file on stderr once the capture is open.
        deadline = time.monotonic() + 20
        seen = ""
        while "File:" not in seen:
            line = proc.stderr.readline()
            if not line or time.monotonic() > deadline:
                raise RuntimeError(f"dumpcap did not start: {seen}{line}")
            seen += line
        run()
        time.sleep(0.5)       # let the last segments reach the ring buffer
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if not out.exists():
        raise RuntimeError("dumpcap wrote no capture file")


def tshark_json(tshark: str, pcap: Path, port: int) -> str:
    """tshark's JSON text of every frame with iSCSI in it (frame and iscsi layers only).

    Kept as text: tshark repeats keys (one "iscsi" per PDU of a frame, one
    "iscsi.keyvalue" per key), which a dict would collapse; see :func:`load_json`.
    """
    # iscsi.flags is named too: for SCSI Commands tshark hangs the flags tree
    # outside the iscsi layer, which "-J frame iscsi" alone would leave out.
    r = subprocess.run([tshark, "-n", "-r", str(pcap), "-T", "json",
                        "-J", "frame iscsi iscsi.flags",
                        "-Y", "iscsi", "-d", f"tcp.port=={port},iscsi",
                        "-o", f"iscsi.target_ports:{port}",
                        "-o", "tcp.desegment_tcp_streams:TRUE",
                        "-o", "iscsi.desegment_iscsi_messages:TRUE"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"tshark failed ({r.returncode}): {r.stderr[-2000:]}")
    return r.stdout


def load_json(text: str):
    """tshark's JSON with every object as a list of (key, value) pairs, repeats kept."""
    return json.loads(text, object_pairs_hook=list)


# ------------------------------------------------------------------ traffic
def traffic(url_of: Callable[[int], str], portal: str, *, libiscsi: dict[str, str]) -> None:
    """Every PDU type the comparison should see, from libiscsi and from our initiator.

    ``libiscsi`` maps tool name to path (iscsi-inq, iscsi-ls).
    """
    from scsi_target.initiator.login import LoginOptions
    from scsi_target.initiator.sync import SyncIscsiClient
    from scsi_target.scsi.layouts import cdbs as C

    url = url_of(0)
    # libiscsi: discovery (SendTargets), login, REPORT LUNS, INQUIRY (std and VPD).
    for args in ([libiscsi["iscsi-ls"], "-s", portal], [libiscsi["iscsi-inq"], url],
                 [libiscsi["iscsi-inq"], "-e", "1", "-c", "0x80", url]):
        subprocess.run(args, capture_output=True, timeout=60, check=True)

    rnd = os.urandom(16 << 10)
    # Digests off: immediate data, R2T'd Data-Out, several Data-In, sense, NOP, TMF.
    # Small segments keep the capture small and still split every transfer.
    small = LoginOptions(header_digest="None", data_digest="None", immediate_data=True,
                         initial_r2t=False, first_burst_length=2048,
                         max_recv_data_segment_length=2048)
    with SyncIscsiClient(url, options=small, timeout=10) as c:
        c.read_capacity16()
        c.write(8, rnd[:6 << 10])
        assert bytes(c.read(8, 12)) == rnd[:6 << 10]
        r = c.execute(C.read16(1 << 40, 1), read_length=512)          # LBA out of range
        assert r.status == 2 and r.sense
        c.ping(b"pings")                                               # 5 bytes: padding
        c.lun_reset()
        c.logout()
    # Digests on (CRC32C both ways), solicited data only, discovery in a normal
    # session, and a SNACK that ErrorRecoveryLevel=0 rejects.
    crc = LoginOptions(header_digest="CRC32C", data_digest="CRC32C", immediate_data=False,
                       initial_r2t=True, max_recv_data_segment_length=4096)
    with SyncIscsiClient(url, options=crc, timeout=10) as c:
        c.write(100, rnd[6 << 10:14 << 10])
        assert bytes(c.read(100, 16)) == rnd[6 << 10:14 << 10]
        c.ping(os.urandom(13))
        c._call(c.client.text_request([("SendTargets", "")]))
        c._call(_send_snack(c.client))
        c.logout()
    with SyncIscsiClient(portal, options=crc, timeout=10) as d:
        d.send_targets()
        d.logout()


async def _send_snack(client) -> None:
    """A SNACK (RFC 7143 11.16) through the client's connection; the target answers Reject."""
    client._send(client._proto, P.SnackRequest(type=0, itt=P.RESERVED_TAG,
                                                expstatsn=client._exp_statsn))
    await asyncio.sleep(0.3)


# --------------------------------------------------------------- pcap → PDUs
@dataclass
class WirePdu:
    frame: int                 # pcap frame (1-based) that holds the PDU's last byte
    offset: int                # PDU's start within its TCP stream (for ordering)
    to_target: bool
    raw: bytes                 # the PDU exactly as on the wire
    pdu: P.Pdu                 # our codec's decode
    header_digest: bytes | None = None
    data_digest: bytes | None = None
    padding: bytes = b""


def read_pcap(path: Path) -> list[tuple[int, tuple, int, int, bytes]]:
    """(frame, flow (src, sport, dst, dport), seq, tcp flags, payload) of each TCP frame."""
    raw = path.read_bytes()
    magic = raw[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack_from(endian + "I", raw, 20)[0]
    if linktype != 1:
        raise ValueError(f"{path}: link type {linktype}, expected Ethernet (1)")
    out, pos, frame = [], 24, 0
    while pos + 16 <= len(raw):
        incl = struct.unpack_from(endian + "I", raw, pos + 8)[0]
        pkt = raw[pos + 16:pos + 16 + incl]
        pos += 16 + incl
        frame += 1
        if len(pkt) < 14 + 20 or pkt[12:14] != b"\x08\x00":
            continue
        ip = pkt[14:]
        ihl = (ip[0] & 0x0F) * 4
        total = int.from_bytes(ip[2:4], "big")
        if ip[9] != 6:
            continue
        tcp = ip[ihl:total]
        sport, dport, seq = struct.unpack_from(">HHI", tcp, 0)
        doff = (tcp[12] >> 4) * 4
        flow = (ip[12:16], sport, ip[16:20], dport)
        out.append((frame, flow, seq, tcp[13], bytes(tcp[doff:])))
    return out


def _streams(pcap: Path) -> dict[tuple, tuple[bytes, list[tuple[int, int]]]]:
    """Per flow: its byte stream and (stream end offset, frame) of each segment."""
    by_flow: dict[tuple, list] = {}
    for frame, flow, seq, flags, payload in read_pcap(pcap):
        by_flow.setdefault(flow, []).append((frame, seq, flags, payload))
    out = {}
    for flow, segs in by_flow.items():
        syn = next((s for s in segs if s[2] & 0x02), None)
        if syn is None:
            continue              # a connection already open when the capture began
        nxt = (syn[1] + 1) & 0xFFFFFFFF
        data, ends = bytearray(), []
        for frame, seq, _flags, payload in segs:
            if not payload:
                continue
            skip = (nxt - seq) & 0xFFFFFFFF
            if skip >= len(payload) and skip < 1 << 31:
                continue          # a retransmission of bytes we have
            if skip >= 1 << 31:
                raise ValueError(f"gap in TCP stream {flow} at frame {frame}")
            data += payload[skip:]
            nxt = (nxt + len(payload) - skip) & 0xFFFFFFFF
            ends.append((len(data), frame))
        out[flow] = (bytes(data), ends)
    return out


def _split(stream: bytes, ends, to_target: bool, hd: bool, dd: bool) -> list[WirePdu]:
    """Cut one direction's stream into PDUs: login PDUs never carry digests."""
    pdus, pos = [], 0
    while pos < len(stream):
        op = stream[pos] & 0x3F
        login = op in LOGIN_OPS
        got = split_header(stream, pos, len(stream) - pos, hd and not login, 1 << 24)
        if isinstance(got, int):
            raise ValueError(f"truncated PDU header at stream offset {pos}")
        hlen, bhs, ahs, dlen = got
        pad = -dlen % 4
        ddig = 4 if (dd and not login and dlen) else 0
        end = pos + hlen + dlen + pad + ddig
        if end > len(stream):
            raise ValueError(f"truncated PDU at stream offset {pos}")
        data = stream[pos + hlen:pos + hlen + dlen]
        padded = stream[pos + hlen:pos + hlen + dlen + pad]
        dig = stream[end - 4:end] if ddig else None
        if dig is not None and not data_digest_ok(padded, dig):
            raise ValueError(f"data digest mismatch at stream offset {pos}")
        frame = next(f for e, f in ends if e >= end)
        pdus.append(WirePdu(frame, pos, to_target, stream[pos:end], P.decode_bhs(bhs, ahs, data),
                            stream[pos + hlen - 4:pos + hlen] if hd and not login else None,
                            dig, stream[pos + hlen + dlen:pos + hlen + dlen + pad]))
        pos = end
    return pdus


def _negotiated_digests(stream: bytes) -> tuple[bool, bool]:
    """HeaderDigest/DataDigest as the target answered them in its Login Responses."""
    pos, keys = 0, {}
    while pos + P.BHS_LEN <= len(stream) and stream[pos] & 0x3F == P.Op.LOGIN_RESPONSE:
        ahs_len, dlen = P.header_lengths(stream[pos:pos + P.BHS_LEN])
        start = pos + P.BHS_LEN + ahs_len
        keys.update(K.decode_text(stream[start:start + dlen]))
        pos = start + dlen + (-dlen % 4)
    return keys.get("HeaderDigest") == "CRC32C", keys.get("DataDigest") == "CRC32C"


def wire_pdus(pcap: Path, port: int) -> list[WirePdu]:
    """Every PDU of every connection, in the order tshark reports them."""
    streams = _streams(pcap)
    out: list[WirePdu] = []
    for flow, (stream, ends) in streams.items():
        if flow[3] != port:
            continue
        back = streams.get((flow[2], flow[3], flow[0], flow[1]), (b"", []))
        hd, dd = _negotiated_digests(back[0])
        out += _split(stream, ends, True, hd, dd)
        out += _split(back[0], back[1], False, hd, dd)
    out.sort(key=lambda w: (w.frame, w.offset))
    return out


# ------------------------------------------------------------- tshark → PDUs
def _flatten(pairs, into: dict[str, list]) -> None:
    for k, v in pairs:
        if k == "filtered":
            continue
        for item in v if _is_array(v) else [v]:
            if _is_object(item):
                _flatten(item, into)     # *_tree, "Key/Value Pairs", text labels
            else:
                into.setdefault(k, []).append(item)


def _is_object(v) -> bool:
    return isinstance(v, list) and all(isinstance(p, tuple) and len(p) == 2 for p in v) \
        and bool(v)


def _is_array(v) -> bool:
    return isinstance(v, list) and not _is_object(v)


def _get(pairs, key: str):
    return next(v for k, v in pairs if k == key)


def tshark_pdus(doc: list) -> list[tuple[int, dict[str, list]]]:
    """(frame, {field: [values]}) per iSCSI PDU, in frame order (``doc`` from load_json)."""
    out = []
    for pkt in doc:
        layers = _get(_get(pkt, "_source"), "layers")
        frame = int(_get(_get(layers, "frame"), "frame.number"))
        for k, one in layers:
            if k == "iscsi":
                for pdu in one if _is_array(one) else [one]:
                    fields: dict[str, list] = {}
                    _flatten(pdu, fields)
                    out.append((frame, fields))
            elif k.startswith("iscsi.") and out and out[-1][0] == frame:
                # A PDU's field tshark put beside its layer (SCSI Command flags).
                _flatten([(k, one)], out[-1][1])
    return out


# ----------------------------------------------------------------- mapping
def _attr(name: str):
    return lambda w: getattr(w.pdu, name)


def _keyvalues(w: WirePdu) -> list[str]:
    return [f"{k}={v}" for k, v in K.decode_text(w.pdu.data)]


def _isid(part: str):
    def get(w: WirePdu) -> int:
        isid = int.from_bytes(w.pdu.isid, "big")       # 48 bits: T(2) A(6) B(16) C(8) D(16)
        return {"type": isid >> 46, "t": isid >> 46, "a": (isid >> 40) & 0x3F,
                "namingauthority": (isid >> 16) & 0xFFFFFF, "qualifier": isid & 0xFFFF,
                "b": (isid >> 24) & 0xFFFF, "c": (isid >> 16) & 0xFF, "d": isid & 0xFFFF}[part]
    return get


def _sense_length(w: WirePdu) -> int:
    return int.from_bytes(bytes(w.pdu.data[:2]), "big")


def _flags(w: WirePdu) -> int:
    return w.pdu.encode_bhs()[1]      # the flags byte our codec re-encodes from its fields


# tshark field -> what our decode says.  A field missing here fails compare().
FIELDS: dict[str, Callable[[WirePdu], object]] = {
    "iscsi.opcode": lambda w: w.pdu.OPCODE,
    "iscsi.I": _attr("immediate"),
    "iscsi.flags": _flags,
    "iscsi.totalahslength": lambda w: len(w.pdu.ahs) // 4,
    "iscsi.datasegmentlength": lambda w: len(w.pdu.data),
    "iscsi.initiatortasktag": _attr("itt"),
    "iscsi.targettransfertag": _attr("ttt"),
    "iscsi.cmdsn": _attr("cmdsn"),
    "iscsi.expstatsn": _attr("expstatsn"),
    "iscsi.statsn": _attr("statsn"),
    "iscsi.expcmdsn": _attr("expcmdsn"),
    "iscsi.maxcmdsn": _attr("maxcmdsn"),
    "iscsi.datasn": _attr("datasn"),
    "iscsi.expdatasn": _attr("expdatasn"),
    "iscsi.bufferOffset": _attr("offset"),
    "iscsi.r2tsn": _attr("r2tsn"),
    "iscsi.desireddatalength": _attr("length"),
    # SCSI Command (11.3)
    "iscsi.scsicommand.F": _attr("final"),
    "iscsi.scsicommand.R": _attr("read"),
    "iscsi.scsicommand.W": _attr("write"),
    "iscsi.scsicommand.attr": _attr("attr"),
    # Byte 3 is reserved in RFC 7143 (tshark names it CRN): it must be 0.
    "iscsi.scsicommand.crn": lambda w: w.raw[3],
    "iscsi.scsicommand.expecteddatatransferlength": _attr("edtl"),
    # SCSI Response (11.4)
    "iscsi.scsiresponse.o": _attr("bidi_overflow"),
    "iscsi.scsiresponse.u": _attr("bidi_underflow"),
    "iscsi.scsiresponse.O": _attr("overflow"),
    "iscsi.scsiresponse.U": _attr("underflow"),
    "iscsi.scsiresponse.response": _attr("response"),
    "iscsi.scsiresponse.status": _attr("status"),
    "iscsi.scsiresponse.residualcount": _attr("residual"),
    "iscsi.scsiresponse.bidireadresidualcount": _attr("bidi_residual"),
    "iscsi.scsiresponse.senselength": _sense_length,
    # Data-In / Data-Out (11.7, 11.8)
    "iscsi.scsidata.F": _attr("final"),
    "iscsi.scsidata.A": _attr("ack"),
    "iscsi.scsidata.S": _attr("has_status"),
    "iscsi.scsidata.O": _attr("overflow"),
    "iscsi.scsidata.U": _attr("underflow"),
    "iscsi.scsidata.readresidualcount": _attr("residual"),
    # Login (11.12, 11.13)
    "iscsi.login.T": _attr("transit"),
    "iscsi.login.C": _attr("cont"),
    "iscsi.login.csg": _attr("csg"),
    "iscsi.login.nsg": _attr("nsg"),
    "iscsi.login.status": lambda w: (w.pdu.status_class << 8) | w.pdu.status_detail,
    "iscsi.versionmax": _attr("version_max"),
    "iscsi.versionmin": _attr("version_min"),
    "iscsi.versionactive": _attr("version_active"),
    "iscsi.isid": lambda w: bytes(w.pdu.isid),
    "iscsi.isid.type": _isid("type"),
    "iscsi.isid.t": _isid("t"),
    "iscsi.isid.a": _isid("a"),
    "iscsi.isid.b": _isid("b"),
    "iscsi.isid.c": _isid("c"),
    "iscsi.isid.d": _isid("d"),
    "iscsi.isid.namingauthority": _isid("namingauthority"),
    "iscsi.isid.qualifier": _isid("qualifier"),
    "iscsi.tsih": _attr("tsih"),
    "iscsi.cid": _attr("cid"),
    "iscsi.keyvalue": _keyvalues,
    # Text (11.10, 11.11)
    "iscsi.text.F": _attr("final"),
    "iscsi.text.C": _attr("cont"),
    # Task management (11.5, 11.6)
    "iscsi.taskmanfun.function": _attr("function"),
    "iscsi.taskmanfun.response": _attr("response"),
    "iscsi.taskmanfun.referencedtasktag": _attr("rtt"),
    "iscsi.refcmdsn": _attr("refcmdsn"),
    # Logout (11.14, 11.15)
    "iscsi.logout.reason": _attr("reason"),
    "iscsi.logout.response": _attr("response"),
    "iscsi.time2wait": _attr("time2wait"),
    "iscsi.time2retain": _attr("time2retain"),
    # Reject (11.17), SNACK (11.16)
    "iscsi.reject.reason": _attr("reason"),
    "iscsi.snack.type": _attr("type"),
    "iscsi.snack.begrun": _attr("begrun"),
    "iscsi.snack.runlength": _attr("runlength"),
    # The LUN field (bytes 8..15), as tshark's SCSI helper shows its first level.
    "scsi.lun": lambda w: (w.pdu.lun >> 48) & 0x3FFF,
    "scsi.lun.address_mode": lambda w: w.pdu.lun >> 62,
    # Data segments, padding and digests
    "iscsi.pingdata": lambda w: bytes(w.pdu.data),
    "iscsi.immediatedata": lambda w: bytes(w.pdu.data),
    "iscsi.padding": lambda w: w.padding,
    "iscsi.headerdigest32": lambda w: int.from_bytes(
        digest_bytes(w.raw[:P.BHS_LEN], w.pdu.ahs), "big"),
    "iscsi.datadigest32": lambda w: int.from_bytes(
        digest_bytes(w.raw[len(w.raw) - 4 - len(w.padding) - len(w.pdu.data):len(w.raw) - 4]),
        "big"),
}

# Fields tshark does not show for a PDU type although our record has them:
# the Reject's own ITT (reserved, 0xffffffff) -- only the rejected header's.
SILENT = {(P.Reject, "iscsi.initiatortasktag")}

# tshark's conversation analysis (frame links, timings) and labels: not fields of a PDU.
NOT_PDU_FIELDS = frozenset({"iscsi.request_frame", "iscsi.response_frame", "iscsi.time",
                            "iscsi.data_in_frame", "iscsi.data_out_frame"})


def _norm(v, like) -> object:
    """A tshark JSON string in the type of our value ``like`` (int or bytes)."""
    if isinstance(like, (bytes, bytearray, memoryview)):
        s = str(v)
        try:
            return bytes.fromhex(s.replace(":", ""))
        except ValueError:
            return s
    if isinstance(like, (bool, int)):
        try:
            return int(str(v), 0)
        except ValueError:
            return str(v)
    return str(v)


def _ours(v) -> object:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    return int(v) if isinstance(v, bool) else v


def _values(name: str, get, w: WirePdu) -> list:
    """Our values for one tshark field: a Reject's own, then its rejected header's.

    tshark dissects the header a Reject carries (RFC 7143 11.17.3) as a PDU of
    its own, so its fields repeat in the Reject's field list.
    """
    parts = [w]
    if isinstance(w.pdu, P.Reject) and len(w.pdu.data) >= P.BHS_LEN:
        inner = bytes(w.pdu.data[:P.BHS_LEN])
        parts.append(WirePdu(w.frame, w.offset, not w.to_target, inner,
                             P.decode_bhs(inner, b"", b""), padding=b""))
    out = []
    for part in parts:
        if part is w and (type(w.pdu), name) in SILENT:
            continue
        try:
            v = get(part)
        except AttributeError:        # not a field of this PDU type
            continue
        out += [_ours(x) for x in (v if isinstance(v, list) else [v])]
    return out


def compare(ours: list[WirePdu], theirs: list[tuple[int, dict[str, list]]]) -> list[str]:
    """Every disagreement, one line each (empty = tshark and our codec agree)."""
    problems = []
    if len(ours) != len(theirs):
        problems.append(f"{len(ours)} PDUs cut by our framing, {len(theirs)} by tshark")
    for i, (w, (frame, fields)) in enumerate(zip(ours, theirs)):
        where = f"PDU {i} (frame {frame}, {type(w.pdu).__name__})"
        if w.frame != frame:
            problems.append(f"{where}: our framing ends it in frame {w.frame}")
            continue
        if w.pdu.encode_bhs() != bytearray(w.raw[:P.BHS_LEN]):
            problems.append(f"{where}: BHS does not round-trip: wire {w.raw[:48].hex()} "
                            f"re-encoded {w.pdu.encode_bhs().hex()}")
        for name, values in fields.items():
            if name in NOT_PDU_FIELDS:
                continue
            get = FIELDS.get(name)
            if get is None:
                problems.append(f"{where}: tshark field {name} = {values} has no mapping")
                continue
            want_list = _values(name, get, w)
            like = want_list[0] if want_list else ""
            got = [_norm(v, like) for v in values]
            if got != want_list:
                problems.append(f"{where}: {name}: tshark {got!r}, ours {want_list!r}")
    return problems


# --------------------------------------------------------------- regenerate
def record(out_dir: Path, *, dumpcap: str, tshark: str, libiscsi: dict[str, str],
           workdir: Path) -> tuple[Path, Path, int]:
    """Serve a target, capture :func:`traffic`, write NAME.pcap and NAME.json."""
    from scsi_target.testing.process import Lun, ServerProcess, Target
    srv = ServerProcess(workdir, [Target(IQN, [Lun(0, "1M", options={"track": False})])])
    srv.start()
    pcap = out_dir / "session.pcap"
    try:
        capture(dumpcap, srv.port, pcap, lambda: traffic(srv.url, srv.portal_url,
                                                         libiscsi=libiscsi))
    finally:
        srv.stop()
    js = out_dir / "session.json"
    js.write_text(tshark_json(tshark, pcap, srv.port))
    (out_dir / "fields.json").write_text(json.dumps(known_fields(tshark), indent=0) + "\n")
    (out_dir / "session.meta.json").write_text(json.dumps(
        {"port": srv.port, "tshark": _tshark_version(tshark),
         "command": "python -m tests.iscsi_golden"}, indent=1) + "\n")
    return pcap, js, srv.port


def known_fields(tshark: str) -> list[str]:
    """Every iSCSI (and SCSI LUN) field name tshark's dissectors register."""
    r = subprocess.run([tshark, "-G", "fields"], capture_output=True, text=True, timeout=60)
    names = {line.split("\t")[2] for line in r.stdout.splitlines()
             if line.startswith("F\t") and line.count("\t") >= 2}
    return sorted(n for n in names if n.startswith(("iscsi.", "scsi.lun")))


def _tshark_version(tshark: str) -> str:
    return subprocess.run([tshark, "--version"], capture_output=True, text=True,
                          timeout=30).stdout.splitlines()[0]


def main(argv: list[str] | None = None) -> int:
    import argparse
    import shutil
    import tempfile
    p = argparse.ArgumentParser(description="capture the golden iSCSI session for the tests")
    p.add_argument("--out", type=Path, default=GOLDEN)
    a = p.parse_args(argv)
    tools = {n: shutil.which(n) for n in ("dumpcap", "tshark", "iscsi-inq", "iscsi-ls")}
    missing = [n for n, t in tools.items() if t is None]
    if missing:
        sys.exit(f"missing: {', '.join(missing)} (Debian packages tshark, libiscsi-bin)")
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pcap, js, port = record(a.out, dumpcap=tools["dumpcap"], tshark=tools["tshark"],
                                libiscsi={k: tools[k] for k in ("iscsi-inq", "iscsi-ls")},
                                workdir=Path(tmp))
    problems = compare(wire_pdus(pcap, port), tshark_pdus(load_json(js.read_text())))
    print(f"{pcap} ({pcap.stat().st_size} bytes), {js} ({js.stat().st_size} bytes); "
          f"{len(problems)} disagreements")
    for line in problems[:50]:
        print("  " + line)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
