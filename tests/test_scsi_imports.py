"""The SCSI layer's modules import each other without cycles and without lazy imports.

A cycle used to be hidden by imports inside functions (disk <-> sbc through a
lazily built global table, backup_lu <-> vendor_backup, lun <-> modepages /
reservations); devices.py now assembles the tables, so every import is at
module level and the graph is acyclic.  ``if TYPE_CHECKING:`` imports are
annotations only and not counted.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "scsi_target.scsi"


def _modules(root: Path, package: str) -> dict[str, Path]:
    folder = root.joinpath(*package.split("."))
    out = {}
    for path in folder.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _targets(node, module: str, is_pkg: bool, known: dict[str, Path]) -> list[str]:
    package = module if is_pkg else module.rpartition(".")[0]
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = package.split(".")[:len(package.split(".")) - node.level + 1]
            name = ".".join(base + ([node.module] if node.module else []))
        else:
            name = node.module or ""
        names = [name] + [f"{name}.{a.name}" for a in node.names]
    return [n for n in names if n in known]


def import_graph(root: Path, package: str) -> tuple[dict[str, set[str]], list[str]]:
    """(module-level edges between the package's modules, lazy imports found)."""
    known = _modules(root, package)
    edges: dict[str, set[str]] = {m: set() for m in known}
    lazy: list[str] = []
    for module, path in known.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))

        def visit(body, top: bool) -> None:
            for node in body:
                if isinstance(node, ast.If) and _is_type_checking(node):
                    continue
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    for t in _targets(node, module, is_pkg, known):
                        if t == module:
                            continue
                        if top:
                            edges[module].add(t)
                        else:
                            lazy.append(f"{path.relative_to(root)}:{node.lineno} imports {t}")
                    continue
                for field in ("body", "orelse", "finalbody", "handlers"):
                    inner = getattr(node, field, None)
                    if isinstance(inner, list):
                        nested = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                   ast.ClassDef, ast.Lambda))
                        visit(inner, top and not nested)

        visit(tree.body, True)
    return edges, lazy


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := dfs(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (found := dfs(n)):
            return found
    return None


def test_scsi_layer_has_no_import_cycle():
    edges, _ = import_graph(ROOT, PACKAGE)
    assert "scsi_target.scsi.devices" in edges["scsi_target.scsi.disk"]
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


def test_scsi_layer_has_no_lazy_imports_of_itself():
    _, lazy = import_graph(ROOT, PACKAGE)
    assert not lazy, "\n".join(lazy)


def test_the_checker_finds_a_planted_cycle_and_lazy_import(tmp_path):
    pkg = tmp_path / "p"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from . import c\nfrom .a import x\n")
    (pkg / "c.py").write_text("def f():\n    from . import a\n")
    edges, lazy = import_graph(tmp_path, "p")
    assert find_cycle(edges) in (["p.a", "p.b", "p.a"], ["p.b", "p.a", "p.b"])
    assert "p.c" not in edges["p.b"]
    assert any("c.py:2 imports p.a" in line for line in lazy)
    assert all(line.startswith("p/c.py:2") for line in lazy)
