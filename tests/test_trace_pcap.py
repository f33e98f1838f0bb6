"""Captures in: pcap/pcapng reading, TCP reassembly (retransmission, reordering,
loss, sequence wrap), PDU framing, and one clear error for every bad file."""
from __future__ import annotations

import random

import pytest

from trace_capture import GOLDEN, synthetic_pdus, write_synthetic

from scsi_target.protocol.tcpstream import TcpReassembler
from scsi_target.trace.pcapfile import CaptureError, PcapngWriter, read_frames
from scsi_target.trace.pdus import capture_pdus


def _raws(path, **kw):
    return [cp.raw for cp in capture_pdus(path, **kw)]


def test_pcap_and_pcapng_give_the_same_pdus(tmp_path):
    pdus = synthetic_pdus()
    write_synthetic(tmp_path / "a.pcap", pdus)
    write_synthetic(tmp_path / "a.pcapng", pdus, pcapng=True)
    assert _raws(tmp_path / "a.pcap") == _raws(tmp_path / "a.pcapng") == [r for _, r in pdus]


def test_retransmitted_overlapping_and_reordered_segments():
    clean = _raws(GOLDEN / "synthetic.pcapng")
    stats = []
    mangled = list(capture_pdus(GOLDEN / "synthetic_mangled.pcap", stats_out=stats))
    assert [cp.raw for cp in mangled] == clean
    assert stats[0].retransmitted_bytes > 0 and stats[0].reordered_segments > 0


def test_pdus_split_and_packed_across_segments():
    frames = {}
    for cp in capture_pdus(GOLDEN / "synthetic.pcapng"):
        frames.setdefault(cp.frame, []).append(cp)
    assert any(len(v) > 1 for v in frames.values())          # several PDUs in one segment
    assert any(len(cp.raw) > 1400 for cp in sum(frames.values(), []))  # one PDU, many segments


def test_digests_follow_the_negotiation():
    cps = list(capture_pdus(GOLDEN / "synthetic.pcapng"))
    assert not cps[0].header_digest and not cps[1].header_digest     # login
    assert all(cp.header_digest for cp in cps[2:])
    assert all(cp.data_digest == bool(cp.data_len) for cp in cps[2:])
    plain = synthetic_pdus(digests=False)
    assert [len(r) for _, r in plain] != [len(cp.raw) for cp in cps]


def test_capture_starting_mid_session_resynchronises(tmp_path):
    """Without the handshake and login the framer finds headers and digests itself."""
    src = tmp_path / "full.pcapng"
    write_synthetic(src, synthetic_pdus(), pcapng=True)
    frames = list(read_frames(src))
    cut = tmp_path / "cut.pcapng"
    with open(cut, "wb") as f:
        w = PcapngWriter(f)
        for fr in frames[6:]:
            w.write(fr.time, fr.data)
    got = list(capture_pdus(cut))
    want = [cp.raw for cp in capture_pdus(src)]
    assert [cp.raw for cp in got] == want[len(want) - len(got):]
    assert len(got) >= len(want) - 8 and all(cp.header_digest for cp in got)


def test_lost_segment_skips_to_the_next_header(tmp_path):
    src = tmp_path / "full.pcapng"
    pdus = synthetic_pdus(digests=False)
    write_synthetic(src, pdus, pcapng=True)
    frames = list(read_frames(src))
    # Drop the segment in the middle of the 2 KiB Data-In.
    big = [i for i, fr in enumerate(frames) if len(fr.data) > 1000]
    lossy = tmp_path / "lossy.pcapng"
    with open(lossy, "wb") as f:
        w = PcapngWriter(f)
        for i, fr in enumerate(frames):
            if i != big[0]:
                w.write(fr.time, fr.data)
    stats = []
    got = [cp.raw for cp in capture_pdus(lossy, stats_out=stats)]
    want = [r for _, r in pdus]
    assert stats[0].lost_bytes > 0
    assert len(got) < len(want) and set(got) <= set(want)     # nothing misread
    assert got[-1] == want[-1]                                 # and it caught up


def test_sequence_numbers_wrap():
    r = TcpReassembler()
    r.syn(0xFFFFFFF0)
    data = random.Random(1).randbytes(64)
    out = r.segment(0xFFFFFFF1 + 32 & 0xFFFFFFFF, data[32:], 2, 0.2)   # after the wrap, early
    out += r.segment(0xFFFFFFF1, data[:32], 1, 0.1)
    assert b"".join(c.data for c in out) == data and out[-1].frame == 2


@pytest.mark.parametrize("content,message", [
    (b"", "empty or truncated"),
    (b"hello world, not a capture", "not a pcap or pcapng file"),
    (bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000") + b"\x01\x00",
     "truncated pcap record header"),
])
def test_bad_files_give_one_line(tmp_path, content, message):
    p = tmp_path / "bad.pcap"
    p.write_bytes(content)
    with pytest.raises(CaptureError, match=message) as e:
        list(capture_pdus(p))
    assert "\n" not in str(e.value)


def test_truncated_capture_says_where(tmp_path):
    data = (GOLDEN / "synthetic.pcapng").read_bytes()
    p = tmp_path / "cut.pcapng"
    p.write_bytes(data[:len(data) - 100])
    with pytest.raises(CaptureError, match=r"truncated pcapng block .*at byte \d+"):
        list(capture_pdus(p))
    # The first packet block's length field (after a 28-byte SHB and a 32-byte IDB).
    p.write_bytes(data[:64] + b"\xff" * 4 + data[68:])
    with pytest.raises(CaptureError, match="pcapng block at byte 60 has bad length"):
        list(capture_pdus(p))


def test_capture_without_iscsi_names_the_ports(tmp_path):
    p = tmp_path / "other.pcapng"
    write_synthetic(p, synthetic_pdus(), port=8080, pcapng=True)
    with pytest.raises(CaptureError, match=r"no iSCSI PDUs in \d+ frames \(port 3260; use --port"):
        list(capture_pdus(p))
    assert len(_raws(p, ports={8080})) == len(synthetic_pdus())
    assert len(_raws(p, ports=None)) == len(synthetic_pdus())     # any port: detected


def test_random_garbage_in_a_tcp_stream_never_crashes(tmp_path):
    rnd = random.Random(5)
    pdus = [(d, raw if rnd.random() < 0.6 else rnd.randbytes(len(raw)))
            for d, raw in synthetic_pdus()]
    p = tmp_path / "garbage.pcapng"
    write_synthetic(p, pdus, pcapng=True)
    try:
        got = _raws(p)
    except CaptureError:
        got = []
    assert set(got) <= {raw for _, raw in pdus}
