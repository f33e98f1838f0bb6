"""What a short-lived program pays for at start-up: `diffbackup` imports only what a
backup or restore needs, and the PDU codecs are generated on first use.

Each check runs in a fresh interpreter (sys.modules of this one is shared by every
test).  These are correctness checks of laziness, not timings.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fresh(code: str):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# Never on the path of `diffbackup full/diff/restore` over iSCSI.
_NOT_FOR_A_BACKUP = ("rich", "scapy", "tape", "tools.diffbackup_tape", "tools.map_render",
                     "volume.merge", "volume.audit", "scsi_target.initiator.tape",
                     "scsi_target.scsi.layouts.xcopy")


def test_importing_diffbackup_imports_no_rich_scapy_tape_merge_or_audit():
    mods = _fresh("import json, sys, tools.diffbackup; print(json.dumps(sorted(sys.modules)))")
    loaded = [m for m in _NOT_FOR_A_BACKUP if any(x == m or x.startswith(m + ".") for x in mods)]
    assert not loaded
    assert "asyncio" not in mods      # the initiator comes with the first remote volume


def test_a_remote_volume_session_needs_none_of_them_either():
    # The modules a RemoteVolume's backup and restore code imports, as it does.
    mods = _fresh(
        "import json, sys, tools.diffbackup\n"
        "from scsi_target.initiator.sync import SyncIscsiClient\n"
        "from scsi_target.initiator.url import parse_url\n"
        "from scsi_target.initiator.login import LoginOptions\n"
        "from scsi_target.initiator.cdb import inquiry, report_luns, read_capacity16\n"
        "from scsi_target.initiator.errors import ScsiCheckCondition\n"
        "from scsi_target.scsi.layouts import backup\n"
        "from scsi_target.scsi.sense import SenseKey\n"
        "print(json.dumps(sorted(sys.modules)))")
    loaded = [m for m in _NOT_FOR_A_BACKUP if any(x == m or x.startswith(m + ".") for x in mods)]
    assert not loaded


def test_the_backup_path_client_needs_no_event_loop():
    # RemoteVolume's client is the blocking one: no asyncio, no thread to start.
    mods = _fresh(
        "import json, sys, tools.diffbackup\n"
        "from scsi_target.initiator.blocking import BlockingIscsiClient\n"
        "from scsi_target.initiator.url import parse_url\n"
        "from scsi_target.initiator.cdb import inquiry, report_luns, read_capacity16\n"
        "from scsi_target.scsi.layouts import backup\n"
        "print(json.dumps(sorted(sys.modules)))")
    assert not [m for m in ("asyncio", "concurrent.futures", "threading", "ssl")
                if m in mods]
    loaded = [m for m in _NOT_FOR_A_BACKUP if any(x == m or x.startswith(m + ".") for x in mods)]
    assert not loaded


def test_pdu_codecs_are_generated_on_first_use_and_only_for_that_type():
    out = _fresh(
        "import json\n"
        "from scsi_target.protocol import pdu as P\n"
        "before = sorted(c.__name__ for c in P._REGISTRY.values() if c._source)\n"
        "bhs = P.NopOut(itt=7, cmdsn=3).encode_bhs()\n"
        "after_encode = sorted(c.__name__ for c in P._REGISTRY.values() if c._source)\n"
        "back = P.decode_bhs(bytes(bhs))\n"
        "din = P.DataIn.from_bhs(P.DataIn(itt=9, offset=4096).encode_bhs())\n"
        "print(json.dumps([before, after_encode, back.itt, back.cmdsn, din.itt, din.offset,\n"
        "                  sorted(c.__name__ for c in P._REGISTRY.values() if c._source)]))")
    before, after_encode, itt, cmdsn, din_itt, din_off, after = out
    assert before == []
    assert after_encode == ["NopOut"]
    assert (itt, cmdsn, din_itt, din_off) == (7, 3, 9, 4096)
    assert after == ["DataIn", "NopOut"]


def test_a_generated_codec_replaces_its_stand_ins():
    from scsi_target.protocol import pdu as P
    cls = P.LogoutResponse
    first = cls(itt=5, time2wait=2).encode_bhs()          # generates (or already did)
    assert cls._source and "<pdu codec" in cls.encode_bhs.__code__.co_filename
    assert "<pdu codec" in cls.from_bhs.__func__.__code__.co_filename
    assert cls.from_bhs(first) == cls(itt=5, time2wait=2)
    assert not getattr(cls, "__abstractmethods__", None)
