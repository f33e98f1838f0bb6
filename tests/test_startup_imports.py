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


def _fresh(code: str, *flags: str):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True,
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


def test_pdu_codecs_are_compiled_after_some_uses_and_only_for_that_type():
    out = _fresh(
        "import json\n"
        "from scsi_target.protocol import pdu as P\n"
        "def made(): return sorted(c.__name__ for c in P._REGISTRY.values() if c._source)\n"
        "before = made()\n"
        "bhs = P.NopOut(itt=7, cmdsn=3).encode_bhs()\n"
        "after_one = made()\n"
        "back = P.decode_bhs(bytes(bhs))\n"
        "din = P.DataIn.from_bhs(P.DataIn(itt=9, offset=4096).encode_bhs())\n"
        "for i in range(P.COMPILE_AFTER):\n"
        "    P.NopOut(itt=i).encode_bhs()\n"
        "print(json.dumps([before, after_one, back.itt, back.cmdsn, din.itt, din.offset,\n"
        "                  made(), P.NopOut(itt=5).encode_bhs() == P.NopOut(itt=5).encode_bhs(),\n"
        "                  P.decode_bhs(bytes(bhs)) == back]))")
    before, after_one, itt, cmdsn, din_itt, din_off, after, same, same_back = out
    assert before == [] and after_one == []        # a few uses: the generic codec
    assert (itt, cmdsn, din_itt, din_off) == (7, 3, 9, 4096)
    assert after == ["NopOut"] and same and same_back


def test_a_compiled_codec_replaces_its_stand_ins():
    from scsi_target.protocol import pdu as P
    cls = P.LogoutResponse
    first = cls(itt=5, time2wait=2).encode_bhs()
    for _ in range(P.COMPILE_AFTER):
        cls(itt=5, time2wait=2).encode_bhs()
    assert cls._source and "<pdu codec" in cls.encode_bhs.__code__.co_filename
    assert "<pdu codec" in cls.from_bhs.__func__.__code__.co_filename
    assert cls.__init__.__code__.co_filename == "<pdu codec LogoutResponse>"
    assert cls.from_bhs(first) == cls(itt=5, time2wait=2)
    assert cls(itt=5, time2wait=2).encode_bhs() == first
    assert not getattr(cls, "__abstractmethods__", None)


# Heavy modules the client's start-up no longer pays for: dataclasses (with inspect,
# most of a run's imports once), typing, shutil (argparse's help width; with zlib,
# bz2 and lzma), copy.  The layouts, PDUs and records are scsi_target.record classes.
_NOT_AT_START = ("dataclasses", "inspect", "typing", "shutil", "copy", "stringprep")


def test_a_diff_run_s_modules_import_no_dataclasses_typing_or_shutil():
    mods = _fresh(
        "import json, sys, tools.diffbackup as d\n"
        "args = d.build_parser().parse_args(['-q', 'diff', 'iscsi://h/iqn.x:t/0', '--scope', '1',\n"
        "                                    '-o', 'out.bk'])\n"
        "assert args.command == 'diff' and args.scope == 1\n"
        "from scsi_target.initiator.blocking import BlockingIscsiClient\n"
        "from scsi_target.initiator.url import parse_url\n"
        "from scsi_target.initiator.login import LoginOptions\n"
        "from scsi_target.initiator.cdb import inquiry, report_luns, read_capacity16\n"
        "from scsi_target.initiator.errors import ScsiCheckCondition\n"
        "from scsi_target.scsi.layouts import backup as L\n"
        "from scsi_target.scsi.sense import SenseKey\n"
        "from scsi_target.protocol import pdu as P\n"
        "from scsi_target.protocol.names import name_problem\n"
        "from volume.streamstore import FileStreams, StreamRef, StreamStoreError\n"
        "assert name_problem(LoginOptions().initiator_name) is None\n"
        "L.GenerationsReport.unpack(L.GenerationsReport(L.GenerationsHeader(), {1: 2}).pack())\n"
        "P.decode_bhs(P.ScsiCommand(itt=1, cdb=L.cdb(L.OP_SELECT_BACKUP)).encode_bhs())\n"
        "print(json.dumps(sorted(sys.modules)))",
        "-S")          # as the console script runs, and no .pth file's imports counted
    assert not [m for m in _NOT_AT_START if m in mods]


def test_a_subcommand_s_arguments_are_added_when_it_parses():
    # Only the chosen subcommand's parser gets its arguments; --help still lists all.
    import argparse

    from tools.diffbackup import build_parser
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    assert len(sub.choices) == 10
    assert all(len(sp._actions) == 1 for sp in sub.choices.values())      # -h alone
    p.parse_args(["status", "x", "--cells", "3"])
    filled = {n for n, sp in sub.choices.items() if len(sp._actions) > 1}
    assert filled == {"status"}
    assert "--scope K" in sub.choices["diff"].format_help()
    text = p.format_help()
    assert all(name in text for name in sub.choices)


def test_a_pdu_type_s_init_is_compiled_with_its_codec():
    out = _fresh(
        "import json\n"
        "from scsi_target.protocol import pdu as P\n"
        "r = P.R2T(itt=3, length=512)\n"
        "generic = [P.R2T.__init__.__code__.co_filename, bool(P.R2T._source), repr(r),\n"
        "           P.R2T.from_bhs(r.encode_bhs()) == r]\n"
        "P._codec(P.R2T)\n"
        "print(json.dumps(generic + [P.R2T.__init__.__code__.co_filename, repr(P.R2T(itt=3, length=512)),\n"
        "                            P.R2T.from_bhs(r.encode_bhs()) == r]))")
    before, made, text, same, after, text2, same2 = out
    assert before != "<pdu codec R2T>" and not made and same
    assert after == "<pdu codec R2T>" and same2 and text2 == text
    assert text.startswith("R2T(immediate=False, data=b'', ahs=b'', final=True, lun=0, itt=3,")


def _imported(stderr: str) -> set[str]:
    """Module names from ``python -X importtime`` output."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def test_a_real_full_and_diff_run_imports_none_of_them(tmp_path):
    # The whole run, as a user starts it, against a target: what -X importtime
    # reports is every module the process loaded (lazy imports included).
    from scsi_target.testing.process import ServerProcess
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    with ServerProcess.from_flags(tmp_path, "--disk", f"{tmp_path}/vol.img:4M",
                                  "--backup-device") as srv:
        runs = {}
        for kind, extra in (("full", []), ("diff", ["--scope", "1"])):
            r = subprocess.run([sys.executable, "-S", "-X", "importtime", "-m", "tools.diffbackup",
                                "-q", kind, srv.url(0), *extra, "-o", str(tmp_path / kind)],
                               capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
            assert r.returncode == 0, r.stderr[-2000:]
            runs[kind] = _imported(r.stderr)
    for kind, mods in runs.items():
        assert "scsi_target.initiator.blocking" in mods and "_socket" in mods   # it did look
        assert not [m for m in _NOT_AT_START if m in mods], kind
        # Streams of one chunk (an empty volume's) are stored without a writer thread.
        assert "threading" not in mods and "queue" not in mods, kind
        # A command line tools.diffbackup_argv reads needs no argparse (nor its
        # gettext and locale); the initiator's socket is the C module's (no
        # socket module, no selectors); nothing on the path compiles a regular expression.
        assert not [m for m in _NOT_ON_A_RUN if m in mods], kind


_NOT_ON_A_RUN = ("argparse", "gettext", "locale", "socket", "selectors", "re")
_NOT_ON_A_SMALL_RUN = ("enum", "functools", "collections", "types", "weakref", "operator",
                       "scsi_target.scsi.sense", "scsi_target.initiator.cdb",
                       "scsi_target.initiator.discovery", "tools.diffbackup_commands",
                       "volume.lending")


def test_the_installed_script_s_full_and_diff_import_no_enum_or_collections(tmp_path):
    # As bin/diffbackup starts (no runpy, whose importlib imports bring functools
    # and collections): the named codes are scsi_target.codes, not enum (with
    # functools and collections); deques are the C type; only a store registers
    # loans (weakly); records take attrgetter from _operator; the ASC table is
    # parsed when a name is asked for; the backup reads READ CAPACITY and REPORT
    # LUNS with the layouts, not the namedtuples of initiator.cdb; the commands
    # of tools.diffbackup_commands (and the local volume) stay unread.
    from scsi_target.testing.process import ServerProcess
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    with ServerProcess.from_flags(tmp_path, "--disk", f"{tmp_path}/vol.img:4M",
                                  "--backup-device") as srv:
        for kind, extra in (("full", []), ("diff", ["--scope", "1"])):
            r = subprocess.run([sys.executable, "-S", "-X", "importtime",
                                os.path.join(ROOT, "bin", "diffbackup"), "-q", kind, srv.url(0),
                                *extra, "-o", str(tmp_path / kind)],
                               capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
            assert r.returncode == 0, r.stderr[-2000:]
            mods = _imported(r.stderr)
            assert "scsi_target.initiator.blocking" in mods and "_socket" in mods
            assert not [m for m in _NOT_ON_A_SMALL_RUN + _NOT_ON_A_RUN + _NOT_AT_START
                        if m in mods], kind
            if kind == "diff":        # nothing changed: one small read, into a bytearray
                assert "mmap" not in mods
            assert os.path.getsize(tmp_path / kind) > 0


def test_the_client_path_names_codes_without_enum_or_the_asc_table():
    out = _fresh(
        "import sys, tools.diffbackup\n"
        "from scsi_target.initiator.blocking import BlockingIscsiClient\n"
        "from scsi_target.initiator.results import response_result\n"
        "from scsi_target.scsi.layouts import backup, capacity, cdbs, luns\n"
        "from scsi_target.scsi.layouts.sense import SenseKey, parse_sense\n"
        "from scsi_target.scsi import asc_table\n"
        "from scsi_target.protocol import pdu as P\n"
        "mods = sorted(sys.modules)\n"
        "import json\n"              # json imports re, and re enum: the list is taken before
        "parsed = asc_table._names is not None\n"
        "key = parse_sense(bytes([0x70, 0, 6, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x29, 0]))\n"
        "print(json.dumps([mods, parsed, asc_table._names is not None, repr(key[0]),\n"
        "                  P.Op(0x21).name, asc_table.asc_name(0x29, 0),\n"
        "                  asc_table._names is not None]))", "-S")
    mods, parsed_at_import, parsed_by_decoding, key, op, name, parsed = out
    assert not [m for m in _NOT_ON_A_SMALL_RUN if m in mods]
    assert not parsed_at_import and not parsed_by_decoding and parsed
    assert key == "<SenseKey.UNIT_ATTENTION: 6>" and op == "SCSI_RESPONSE"
    assert name == "POWER ON, RESET, OR BUS DEVICE RESET OCCURRED"


def test_a_recognized_command_line_imports_no_argparse():
    mods = _fresh(
        "import sys, tools.diffbackup\n"
        "from tools.diffbackup_argv import recognize\n"
        "for argv in (['-q', 'full', 'iscsi://h/iqn.x:t/0', '-o', 'f'],\n"
        "             ['diff', 'iscsi://h/iqn.x:t/0', '--scope', '1', '-o', 'f'],\n"
        "             ['restore', 'iscsi://h/iqn.x:t/0', 'f', 'g']):\n"
        "    assert recognize(argv) is not None\n"
        "from scsi_target.initiator.blocking import BlockingIscsiClient\n"
        "mods = sorted(sys.modules)\n"
        "import json\n"              # json imports re: the list is taken before
        "print(json.dumps(mods))", "-S")
    assert not [m for m in _NOT_ON_A_RUN if m in mods]


def test_the_resolver_host_is_what_the_idna_codec_makes_of_it():
    from scsi_target.initiator.blocking import _resolver_host
    for host in ["127.0.0.1", "::1", "fe80::1%eth0", "target.example.", "TARGET.Example",
                 "", "a." + "b" * 63, "a." + "b" * 64, "a..b", ".a", "x" * 64, "b\u00fccher.de"]:
        got = _resolver_host(host)
        if isinstance(got, bytes):       # sent as is: exactly the codec's bytes
            assert got == host.encode("idna"), host
        else:                            # left to the codec (non-ASCII, or an error)
            assert got == host
