"""Our PDU codec against Wireshark's iSCSI dissector, PDU by PDU, field by field.

The golden capture (tests/golden/iscsi/session.pcap) holds libiscsi's tools
and our initiator talking to our target: login with digests off and on,
SendTargets in discovery and normal sessions, SCSI commands and responses
with sense, Data-In, R2T and Data-Out, NOP, task management, logout and a
Reject.  session.json is tshark's decode of it.  The comparison runs on those
files without tshark; the live test makes a fresh capture (root, dumpcap,
tshark, libiscsi: missing tools skip, or fail under CI=true).  Regenerate
with ``python -m tests.iscsi_golden``.
"""
from __future__ import annotations

import copy
import json
import os

import pytest

from scsi_target.testing.external import require_root, require_tool
import iscsi_golden as G
from scsi_target.initiator.login import DEFAULT_INITIATOR
from scsi_target.protocol import pdu as P

META = json.loads((G.GOLDEN / "session.meta.json").read_text())


@pytest.fixture(scope="module")
def golden():
    ours = G.wire_pdus(G.GOLDEN / "session.pcap", META["port"])
    theirs = G.tshark_pdus(G.load_json((G.GOLDEN / "session.json").read_text()))
    return ours, theirs


def test_golden_capture_agrees_with_tshark(golden):
    ours, theirs = golden
    problems = G.compare(ours, theirs)
    assert not problems, f"{len(problems)} disagreements:\n" + "\n".join(problems[:40])


def test_golden_capture_covers_every_pdu_kind(golden):
    ours, theirs = golden
    kinds = {type(w.pdu) for w in ours}
    want = {P.LoginRequest, P.LoginResponse, P.TextRequest, P.TextResponse, P.ScsiCommand,
            P.ScsiResponse, P.DataIn, P.DataOut, P.R2T, P.NopOut, P.NopIn, P.TaskMgmtRequest,
            P.TaskMgmtResponse, P.LogoutRequest, P.LogoutResponse, P.SnackRequest, P.Reject}
    assert want <= kinds, want - kinds
    assert any(w.header_digest for w in ours) and any(w.data_digest for w in ours)
    assert any(w.header_digest is None and not isinstance(w.pdu, (P.LoginRequest,
                                                                    P.LoginResponse))
               for w in ours)                                   # digests off too
    assert any(isinstance(w.pdu, P.ScsiResponse) and w.pdu.status == 2 and len(w.pdu.data) > 2
               for w in ours)                                   # sense data
    assert any(isinstance(w.pdu, P.DataIn) and w.pdu.has_status for w in ours)
    assert any(w.padding for w in ours)
    # Several PDUs in one TCP segment (Data-In bursts): framing is more than one per frame.
    frames = [w.frame for w in ours]
    assert len(set(frames)) < len(frames)
    # How many values were compared: every PDU contributes its header fields.
    compared = sum(len(v) for _, f in theirs for k, v in f.items() if k not in G.NOT_PDU_FIELDS)
    assert compared > 15 * len(theirs), compared
    # Who spoke: libiscsi and our initiator both (their InitiatorNames).
    names = {v for w in ours if isinstance(w.pdu, P.LoginRequest)
             for k, v in G.K.decode_text(w.pdu.data) if k == "InitiatorName"}
    assert any("libiscsi" in n for n in names) and DEFAULT_INITIATOR in names


def test_every_mapped_field_is_one_tshark_knows():
    """FIELDS names only real tshark fields (a typo would never be compared)."""
    known = set(json.loads((G.GOLDEN / "fields.json").read_text()))
    assert set(G.FIELDS) - known == set()


@pytest.mark.parametrize("change", ["value", "unmapped", "decode"])
def test_compare_finds_disagreements(golden, monkeypatch, change):
    ours, theirs = golden
    theirs = copy.deepcopy(theirs)
    i = next(n for n, w in enumerate(ours) if isinstance(w.pdu, P.ScsiCommand))
    if change == "value":
        theirs[i][1]["iscsi.cmdsn"] = [str(ours[i].pdu.cmdsn + 1)]
        expect = "iscsi.cmdsn: tshark"
    elif change == "unmapped":
        theirs[i][1]["iscsi.newfield"] = ["1"]
        expect = "tshark field iscsi.newfield = ['1'] has no mapping"
    else:
        # A codec that swapped two header fields would be caught.
        monkeypatch.setitem(G.FIELDS, "iscsi.cmdsn", G._attr("expstatsn"))
        expect = "iscsi.cmdsn: tshark"
    problems = G.compare(ours, theirs)
    assert any(f"PDU {i} " in p and expect in p for p in problems), problems


def test_live_capture_agrees_with_tshark(tmp_path):
    tools = {n: require_tool(n) for n in ("dumpcap", "tshark", "iscsi-inq", "iscsi-ls")}
    require_root("capturing on lo")
    out = tmp_path / "capture"
    out.mkdir()
    pcap, js, port = G.record(out, dumpcap=tools["dumpcap"], tshark=tools["tshark"],
                              libiscsi={k: tools[k] for k in ("iscsi-inq", "iscsi-ls")},
                              workdir=tmp_path / "srv")
    ours = G.wire_pdus(pcap, port)
    theirs = G.tshark_pdus(G.load_json(js.read_text()))
    assert len(ours) > 60
    problems = G.compare(ours, theirs)
    assert not problems, f"{len(problems)} disagreements:\n" + "\n".join(problems[:40])
