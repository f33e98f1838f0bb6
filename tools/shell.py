"""scsi-shell: talk to a SCSI logical unit command by command, everything decoded.

    scsi-shell iscsi://127.0.0.1:3260/iqn.2026-11.org.pyscsi:default/0
    scsi-shell --config site.toml [--target IQN] [--lun N]
    scsi-shell URL -c "inq; readcap"        scsi-shell URL --batch cmds.txt --json

Exit status of -c/--batch: 0 all commands GOOD, 1 a command failed (CHECK
CONDITION or another SCSI status), 2 a wrong command or argument, 3 the
connection or login failed.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .shell_backend import (Backend, ConnectFailed, IscsiBackend, LocalBackend, ShellError,
                            UsageError)
from .shell_commands import COMMANDS, Session, parse_line
from .shell_render import Renderer, eprint

BUILTINS = {"help": "help [CMD]: list the commands, or show one command's options",
            "reconnect": "reconnect: log in again after a dropped connection",
            "quit": "quit: leave (also exit, Ctrl-D)", "exit": "exit: leave"}
HISTORY_LENGTH = 2000


def history_path() -> Path:
    return Path(os.environ.get("SCSI_SHELL_HISTORY") or Path.home() / ".scsi_shell_history")


class Shell:
    def __init__(self, backend: Backend, renderer: Renderer) -> None:
        self.session = Session(backend)
        self.r = renderer
        self.worst = 0              # highest exit code seen (scripting)
        self.quit = False

    # ---------------------------------------------------------------- one line
    def run_line(self, line: str) -> None:
        try:
            commands = parse_line(line)
        except ShellError as e:
            self._fail(line, e)
            return
        for words in commands:
            if self.quit:
                return
            self.run_words(words)

    def run_words(self, words: list[str]) -> None:
        text = " ".join(words)
        name, args = words[0], words[1:]
        try:
            if name in ("quit", "exit"):
                self.quit = True
                return
            if name == "help":
                self._help(args)
                return
            if name == "reconnect":
                self.session.backend.reconnect()
                self.session.block_size = None
                self.r.info(f"connected to {self.session.backend.name}")
                return
            cmd = COMMANDS.get(name)
            if cmd is None:
                raise UsageError(f"unknown command '{name}' (type 'help' for the list)")
            ns = cmd.parser.parse_args(args)
            out = cmd.run(self.session, ns)
            self.r.result(text, out)
        except ShellError as e:
            self._fail(text, e)
        except KeyboardInterrupt:
            self._fail(text, ShellError("interrupted"))
        except Exception as e:  # never a traceback at the console
            if os.environ.get("SCSI_SHELL_DEBUG"):
                raise
            self._fail(text, ShellError(f"internal error: {type(e).__name__}: {e}"))

    def _fail(self, text: str, e: ShellError) -> None:
        kind = {2: "usage", 3: "connection"}.get(e.code, "error")
        self.r.error(text, e, kind)
        self.worst = max(self.worst, e.code)

    def _help(self, args: list[str]) -> None:
        if args:
            name = args[0]
            if name in COMMANDS:
                self.r.info(COMMANDS[name].parser.format_help().rstrip())
            elif name in BUILTINS:
                self.r.info(BUILTINS[name])
            else:
                raise UsageError(f"help: no command '{name}'")
            return
        lines = []
        groups: dict[str, list[str]] = {}
        for c in COMMANDS.values():
            groups.setdefault(c.group, []).append(f"  {c.name:<12} {c.summary}")
        for g, items in groups.items():
            lines.append(f"{g} commands:")
            lines += items
        lines.append("console:")
        lines += [f"  {k:<12} {v.split(': ', 1)[1]}" for k, v in BUILTINS.items() if k != "exit"]
        lines.append("Separate several commands with ';'. 'help CMD' shows a command's options.")
        self.r.info("\n".join(lines))

    # ------------------------------------------------------------- interactive
    def interactive(self) -> None:
        rl = _setup_readline()
        self.r.info(f"connected to {self.session.backend.name}; 'help' lists the commands")
        try:
            while not self.quit:
                try:
                    line = input("scsi> ")
                except EOFError:
                    self.r.info("")
                    break
                except KeyboardInterrupt:
                    self.r.info("^C")
                    continue
                if line.strip():
                    self.run_line(line)
        finally:
            if rl is not None:
                try:
                    rl.write_history_file(str(history_path()))
                except OSError as e:
                    eprint(f"warning: history not saved: {e.strerror}")


# ------------------------------------------------------------------ completion
def complete_words(buffer: str, text: str) -> list[str]:
    """Candidates for ``text`` at the end of ``buffer`` (the line up to the cursor)."""
    segment = buffer.rsplit(";", 1)[-1]
    words = segment.split()
    if segment and not segment[-1].isspace() and words:
        words = words[:-1]          # the word being completed
    if not words:
        names = sorted(list(COMMANDS) + list(BUILTINS))
        return [n for n in names if n.startswith(text)]
    cmd = words[0]
    if cmd == "help":
        return sorted(n for n in list(COMMANDS) + list(BUILTINS) if n.startswith(text))
    c = COMMANDS.get(cmd)
    if c is None:
        return []
    cands = list(c.options)
    if words[-1] == "--pc":
        cands = ["current", "changeable", "default", "saved"]
    elif cmd == "modesense" and not text.startswith("-"):
        from .shell_commands import _PAGE_ALIASES
        cands += sorted(_PAGE_ALIASES)
    return sorted(x for x in cands if x.startswith(text))


def _setup_readline():
    try:
        import readline
    except ImportError:  # pragma: no cover - every Linux Python has it
        return None
    path = history_path()
    try:
        readline.read_history_file(str(path))
    except (FileNotFoundError, OSError):
        pass
    readline.set_history_length(HISTORY_LENGTH)
    readline.set_completer_delims(" \t;")
    matches: list[str] = []

    def completer(text: str, state: int):
        nonlocal matches
        if state == 0:
            buf = readline.get_line_buffer()[:readline.get_endidx()]
            # Python's readline appends nothing after a completed word; every
            # candidate here is a whole word, so the space comes with it.
            matches = [m + " " for m in complete_words(buf, text)]
        return matches[state] if state < len(matches) else None

    readline.set_completer(completer)
    if "libedit" in (readline.__doc__ or ""):
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")
    return readline


# ------------------------------------------------------------------------ main
def _arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scsi-shell", description="Interactive SCSI console over iSCSI or in-process.",
        epilog="Exit status with -c/--batch: 0 GOOD, 1 a command failed (e.g. CHECK CONDITION), "
               "2 wrong command or arguments, 3 connection or login failure.")
    p.add_argument("url", nargs="?", help="iscsi://[user%%secret@]host[:port]/IQN/LUN")
    p.add_argument("--config", metavar="FILE", help="open a scsi-target TOML config in-process")
    p.add_argument("--target", metavar="IQN", help="with --config: which target (default: first)")
    p.add_argument("--lun", type=int, default=0, help="with --config: which LUN (default 0)")
    p.add_argument("-c", dest="commands", metavar="CMDS", help="run these ';'-separated commands")
    p.add_argument("--batch", metavar="FILE", help="run the commands in FILE ('-' = stdin)")
    p.add_argument("--json", action="store_true", help="one JSON object per command")
    p.add_argument("--timeout", type=float, default=30.0, help="iSCSI command timeout, seconds")
    p.add_argument("--initiator-name", metavar="IQN",
                   help="iSCSI initiator name to log in with (e.g. one the target's ACL lists)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = _arg_parser()
    a = p.parse_args(argv)
    if bool(a.url) == bool(a.config):
        p.error("give either an iscsi:// URL or --config FILE")
    if a.commands is not None and a.batch is not None:
        p.error("-c and --batch exclude each other")
    renderer = Renderer(a.json)
    try:
        backend: Backend = LocalBackend(a.config, a.target, a.lun,
                                        initiator_name=a.initiator_name) if a.config else \
            IscsiBackend(a.url, a.timeout, initiator_name=a.initiator_name)
    except ShellError as e:
        renderer.error("connect", e, "connection" if isinstance(e, ConnectFailed) else "usage")
        return e.code
    except KeyboardInterrupt:
        return 130
    shell = Shell(backend, renderer)
    try:
        if a.commands is not None:
            shell.run_line(a.commands)
        elif a.batch is not None:
            try:
                lines = sys.stdin.read().splitlines() if a.batch == "-" else \
                    Path(a.batch).read_text().splitlines()
            except OSError as e:
                renderer.error("batch", UsageError(f"cannot read {a.batch}: {e.strerror}"), "usage")
                return 2
            for line in lines:
                if shell.quit:
                    break
                if line.strip() and not line.lstrip().startswith("#"):
                    shell.run_line(line)
        else:
            shell.interactive()
            return 0
        return shell.worst
    finally:
        backend.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
