"""The dependency rules of docs/architecture.md, checked on the source.

A rule broken by a new import fails here, naming the file and the import.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# (package whose files are checked, packages they must not import, why)
RULES = [
    ("volume", ("scsi_target", "tools"), "device models know nothing of SCSI or the tools"),
    ("tape", ("scsi_target", "tools"), "device models know nothing of SCSI or the tools"),
    ("scsi_target", ("tools",), "tools sit on top of the library"),
    ("scsi_target.protocol", ("scsi_target.target", "scsi_target.initiator"),
     "what both ends share depends on neither end"),
    ("scsi_target.target", ("scsi_target.initiator",), "the target never imports the initiator"),
    ("scsi_target.target", ("scsi_target.interceptors",),
     "the transport asks fault questions (target/hooks.py), it does not know the rules"),
    ("scsi_target.initiator", ("scsi_target.target",), "the initiator never imports the target"),
    ("scsi_target.scsi", ("scsi_target.protocol", "scsi_target.target", "scsi_target.initiator"),
     "the SCSI layer does not know the transport"),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Absolute names of every module imported by ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            # "from pkg import module" imports pkg.module too
            found += [(node.lineno, f"{name}.{a.name}") for a in node.names]
    return found


def _inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _files(package: str) -> list[Path]:
    folder = ROOT.joinpath(*package.split("."))
    return sorted(folder.rglob("*.py"))


@pytest.mark.parametrize("package,forbidden,why", RULES, ids=[r[0] for r in RULES])
def test_dependency_rule(package, forbidden, why):
    broken = []
    for path in _files(package):
        for line, name in _imports(path):
            for bad in forbidden:
                if _inside(name, bad):
                    broken.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not broken, f"{why}:\n" + "\n".join(sorted(set(broken)))


def test_the_checker_sees_a_broken_rule(tmp_path, monkeypatch):
    """The rule test must be able to fail: a planted import is found."""
    fake = tmp_path / "volume"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "bad.py").write_text("from scsi_target.scsi import sense\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    with pytest.raises(AssertionError, match="volume/bad.py:1 imports scsi_target.scsi"):
        test_dependency_rule("volume", ("scsi_target",), "planted")
