"""Comments, docstrings and docs name only files, modules and classes that exist.

A reference that outlives a rename (``scsi_target/iscsi/server.py`` after the
split, ``docs/tracking.md`` that was never written, ``ScsiTarget.execute``)
sends the next reader looking for something that is not there.  Scanned:
comments and docstrings of every tracked .py file, README.md and docs/*.md.
Checked forms:

* ``docs/X.md`` and ``dir/module.py`` paths -- relative to the repository
  root or to the referring file's directory (``layouts/xcopy.py`` in
  scsi_target/scsi/);
* a bare ``module.py`` -- some tracked file has that name;
* dotted names under a top-level package (``scsi_target.scsi.lun.LunMap``)
  and Sphinx roles (``:mod:`.rx```) -- the module exists and defines the
  first name after it;
* ``Class.method`` in backquotes -- a class of that name defines the method.
"""
from __future__ import annotations

import ast
import fnmatch
import io
import re
import subprocess
import tokenize
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("scsi_target", "volume", "tape", "tools", "tests")

_PATH_RE = re.compile(r"(?<![\w/.-])((?:[A-Za-z0-9_.-]+/)+[A-Za-z0-9_-]+\.(?:py|md))\b")
_GLOB_RE = re.compile(r"(?<![\w/.-])((?:[A-Za-z0-9_.-]+/)+[A-Za-z0-9_*-]*\*[A-Za-z0-9_*-]*\.py)")
_BARE_RE = re.compile(r"(?<![\w/.-])([a-z_][a-z0-9_]*\.py)\b")
_DOTTED_RE = re.compile(r"(?<![\w.])((?:%s)(?:\.[A-Za-z_]\w*)+)" % "|".join(PACKAGES))
_ROLE_RE = re.compile(r":(?:mod|class|meth|func|attr|data|exc):`~?(\.*[A-Za-z_][\w.]*)`")
# CamelCase with a lowercase letter: ``PATH.volume`` is a file name pattern.
_METHOD_RE = re.compile(r"``?([A-Z][a-z0-9]+[A-Za-z0-9]*)\.([a-z_][a-z0-9_]*)(?:\(\))?``?")
# Paths that name something outside this repository on purpose.
EXTERNAL = {"usr/spc.c"}


@lru_cache(maxsize=None)
def tracked() -> tuple[str, ...]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    return tuple(p for p in out if (ROOT / p).exists())


def texts(rel: str) -> list[tuple[int, str]]:
    """(line, text) of every comment and docstring in a .py file; the whole of a .md file."""
    path = ROOT / rel
    src = path.read_text(encoding="utf-8")
    if rel.endswith(".md"):
        return [(1, src)]
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            out.append((tok.start[0], tok.string))
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                out.append((body[0].lineno, body[0].value.value))
    return out


def sources() -> list[str]:
    files = [p for p in tracked() if p.endswith(".py") and p != "tests/test_doc_references.py"]
    return files + ["README.md"] + [p for p in tracked() if re.fullmatch(r"docs/[^/]+\.md", p)]


@lru_cache(maxsize=None)
def _module_names(rel: str) -> frozenset[str]:
    """Top-level names a module (or package __init__) defines or imports."""
    tree = ast.parse((ROOT / rel).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return frozenset(names)


@lru_cache(maxsize=None)
def _class_methods() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for rel in tracked():
        if not rel.endswith(".py"):
            continue
        for node in ast.walk(ast.parse((ROOT / rel).read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                members = out.setdefault(node.name, set())
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                        members.add(item.name)
                    elif isinstance(item, (ast.Assign, ast.AnnAssign)):
                        for t in item.targets if isinstance(item, ast.Assign) else [item.target]:
                            members.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
                # Instance attributes: self.x = ... anywhere in the class.
                members.update(n.attr for n in ast.walk(node)
                               if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
                               and isinstance(n.value, ast.Name) and n.value.id == "self")
    return out


def _module_file(dotted: str) -> str | None:
    base = dotted.replace(".", "/")
    for cand in (base + ".py", base + "/__init__.py"):
        if cand in tracked():
            return cand
    if (ROOT / base).is_dir() and any(p.startswith(base + "/") for p in tracked()):
        return base   # a namespace directory (tests/, tools/)
    return None


def _resolve_dotted(dotted: str) -> bool:
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        mod = _module_file(".".join(parts[:n]))
        if mod is None:
            continue
        if n == len(parts):
            return True
        if not mod.endswith(".py"):
            return False
        return parts[n] in _module_names(mod)
    return False


def _package_of(rel: str) -> str:
    p = Path(rel)
    return ".".join(p.parent.parts) if p.name != "__init__.py" else ".".join(p.parent.parts)


def problems_in(rel: str) -> list[str]:
    found = []
    here = Path(rel).parent
    names = {Path(p).name for p in tracked()}
    for line, text in texts(rel):
        def at(m: re.Match) -> str:
            return f"{rel}:{line + text.count(chr(10), 0, m.start())}"
        for m in _PATH_RE.finditer(text):
            ref = m.group(1).rstrip(".")
            if ref in EXTERNAL or ref.startswith(("http", "www.")):
                continue
            if ref not in tracked() and (here / ref).as_posix() not in tracked():
                found.append(f"{at(m)}: {ref} does not exist")
        for m in _GLOB_RE.finditer(text):
            pats = [m.group(1), (here / m.group(1)).as_posix()]
            if not any(fnmatch.fnmatchcase(p, pat) for p in tracked() for pat in pats):
                found.append(f"{at(m)}: {m.group(1)} matches no file")
        for m in _BARE_RE.finditer(text):
            if m.group(1) not in names:
                found.append(f"{at(m)}: no file named {m.group(1)}")
        for m in _DOTTED_RE.finditer(text):
            ref = m.group(1).rstrip(".")
            if re.fullmatch(r"(?:%s)\.(?:py|md|toml)" % "|".join(PACKAGES), ref):
                continue
            if not _resolve_dotted(ref):
                found.append(f"{at(m)}: {ref} does not resolve")
        for m in _ROLE_RE.finditer(text):
            ref = m.group(1)
            if ref.startswith("."):
                pkg = _package_of(rel).split(".")
                dots = len(ref) - len(ref.lstrip("."))
                ref = ".".join(pkg[:len(pkg) - dots + 1] + [ref.lstrip(".")])
            if ref.split(".")[0] in PACKAGES and not _resolve_dotted(ref):
                found.append(f"{at(m)}: {m.group(0)} does not resolve")
        for m in _METHOD_RE.finditer(text):
            cls, meth = m.groups()
            methods = _class_methods().get(cls)
            if methods is None:
                found.append(f"{at(m)}: no class {cls} (in {m.group(0)})")
            elif meth not in methods:
                found.append(f"{at(m)}: class {cls} has no {meth} (in {m.group(0)})")
    return found


def test_every_reference_exists():
    found = [p for rel in sources() for p in problems_in(rel)]
    assert not found, "stale references:\n" + "\n".join(found)


@pytest.mark.parametrize("text,bad", [
    ("see docs/tracking.md", "docs/tracking.md does not exist"),
    ("# scsi_target/iscsi/server.py drives the socket", "scsi_target/iscsi/server.py does not"),
    ("``ScsiTarget.execute`` runs it", "no class ScsiTarget"),
    ("``LunMap.run`` runs it", "class LunMap has no run"),
    (":mod:`scsi_target.iscsi.pdu`", "scsi_target.iscsi.pdu does not resolve"),
    ("the old target.py", "no file named target.py"),
    ("`scsi_target/iscsi/client*.py`", "scsi_target/iscsi/client*.py matches no file"),
])
def test_the_scanner_catches_stale_references(tmp_path, monkeypatch, text, bad):
    rel = "docs/_probe.md"
    probe = ROOT / rel
    probe.write_text(text + "\n")
    try:
        monkeypatch.setattr("tests.test_doc_references.tracked",
                            lambda: tracked.__wrapped__() + (rel,))
        found = problems_in(rel)
    finally:
        probe.unlink()
    assert any(bad in f for f in found), found


def test_the_scanner_accepts_live_references():
    rel = "docs/_probe_ok.md"
    probe = ROOT / rel
    probe.write_text("docs/config.md, volume/genmap.py, `LunMap.execute`, genmap.py, "
                     "scsi_target/initiator/*.py, "
                     ":mod:`scsi_target.scsi.lun`, scsi_target.scsi.lun.LunMap\n")
    try:
        assert problems_in(rel) == []
    finally:
        probe.unlink()
