"""The common command lines of ``diffbackup full|diff|restore``, read without argparse.

argparse (with gettext, and re through both) is a tenth of the start-up of a
short backup run.  :func:`recognize` reads the forms people and scripts write --
the subcommand, its positionals, and the plain options of a backup or restore
to or from a file (``-q``, ``-o FILE``, ``--scope K``, ``--initiator-name IQN``,
...) -- into the same attributes argparse's parser (tools/diffbackup_parser.py)
gives, and returns None for anything it is not sure of: help, abbreviations,
``--opt=value`` of a flag, combined short options, values or positionals that
start with ``-``, ``--``, a tape or S3 tuning option, or a line argparse would
refuse.  The caller hands those to argparse, which answers them as it always
did (tests/test_diffbackup_argv.py checks the two agree).
"""
from __future__ import annotations

import sys

# types.SimpleNamespace, taken as the types module takes it (importing types is a
# few hundred microseconds of a run's start-up for this one name).
SimpleNamespace = type(sys.implementation)

_FLAG, _VALUE, _INT, _APPEND = range(4)

# What the top-level parser and every subcommand accept (the subcommand's
# copies default to "not given", so a value before the command stays unless
# the subcommand's line repeats the option).
_MAIN = {"-q": ("quiet", _FLAG), "--quiet": ("quiet", _FLAG),
         "--initiator-name": ("initiator_name", _VALUE),
         "--s3-endpoint": ("s3_endpoint", _VALUE)}
_BACKUP = {**_MAIN, "-o": ("output", _VALUE), "--output": ("output", _VALUE),
           "--force": ("force", _FLAG), "--target-side": ("target_side", _FLAG),
           "--no-s3-md5": ("no_s3_md5", _FLAG)}
_OPTIONS = {"full": _BACKUP, "diff": {**_BACKUP, "--scope": ("scope", _INT)},
            "restore": {**_MAIN, "--skip-generation": ("skip_generation", _APPEND)}}


def _defaults(command: str) -> dict:
    d = {"quiet": False, "command": command, "s3_endpoint": None, "initiator_name": None}
    if command == "restore":
        d.update(files=[], tape=[], file=[], skip_generation=None)
    else:
        d.update(output=None, tape=[], record_size=None, target_side=False, force=False,
                 part_size=None, s3_uploads=None, no_s3_md5=False)
    return d


def recognize(argv: list[str]) -> SimpleNamespace | None:
    """The namespace ``build_parser().parse_args(argv)`` returns, or None when
    ``argv`` is not one of the forms read here (argparse is asked then)."""
    ns: dict = {}
    i, n = 0, len(argv)
    while i < n and argv[i][:1] == "-":             # the main options
        i = _option(argv, i, _MAIN, ns)
        if i < 0:
            return None
    if i == n or argv[i] not in _OPTIONS:
        return None
    command = argv[i]
    table = _OPTIONS[command]
    values = _defaults(command)
    values.update(ns)
    positionals: list[str] = []
    run_end = -1                                    # where the run of positionals ended
    i += 1
    while i < n:
        arg = argv[i]
        if arg[:1] != "-":
            if positionals and run_end != i:
                return None                         # positionals split by options
            positionals.append(arg)
            i += 1
            run_end = i
            continue
        i = _option(argv, i, table, values)
        if i < 0:
            return None
    if command == "restore":
        if not positionals:
            return None
        values["dest"], values["files"] = positionals[0], positionals[1:]
    else:
        if len(positionals) != 1 or (command == "diff" and "scope" not in values):
            return None
        values["source"] = positionals[0]
    return SimpleNamespace(**values)


def _option(argv: list[str], i: int, table: dict, values: dict) -> int:
    """Apply the option at ``argv[i]`` to ``values``; the index after it, or -1
    when it is not one read here."""
    arg = argv[i]
    name, eq, inline = arg.partition("=")
    if eq and not arg.startswith("--"):
        return -1                                   # -o=FILE: argparse's own reading
    entry = table.get(name)
    if entry is None:
        return -1
    dest, kind = entry
    if kind == _FLAG:
        if eq:
            return -1                               # --quiet=x: an error
        values[dest] = True
        return i + 1
    if eq:
        value, i = inline, i + 1
    else:
        if i + 1 >= len(argv) or argv[i + 1][:1] == "-":
            return -1                               # missing, or one argparse may refuse
        value, i = argv[i + 1], i + 2
    if kind == _INT:
        try:
            value = int(value)
        except ValueError:
            return -1
    if kind == _APPEND:
        values[dest] = (values.get(dest) or []) + [value]
    else:
        values[dest] = value
    return i
