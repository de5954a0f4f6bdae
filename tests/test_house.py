"""The house stands: every import of the package follows docs/house.md's table, no two modules
import each other (directly or round a loop), and no function is longer than 90 lines. The
imports inside functions count like the others: they may keep start-up cheap, not hide a loop."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "stas_sweep"
MAX_LINES = 90


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def house_table() -> tuple[dict[str, str], dict[str, set[str]]]:
    """(file or folder prefix -> part, part -> parts it may import) from docs/house.md."""
    where, allowed = {}, {}
    for line in (ROOT / "docs" / "house.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[1].startswith("`"):
            continue
        part, files, may = cells
        for f in re.findall(r"`([^`]+)`", files):
            where[f] = part
        allowed[part] = {p.strip() for p in may.split(",") if p.strip()}
    return where, allowed


def part_of(module: str, where: dict[str, str]) -> str:
    path = str(MODULES[module].relative_to(ROOT))
    hits = [(len(prefix), part) for prefix, part in where.items() if path == prefix or
            (prefix.endswith("/") and path.startswith(prefix))]
    assert hits, f"{path} belongs to no part of docs/house.md; add it to the table"
    return max(hits)[1]


def imports_of(module: str) -> list[tuple[str, int, bool]]:
    """(imported package module, line, inside a function) for each import of ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from . import checkpoints` imports a module; `from .front import X` the module front
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # stas_sweep.x.y where y is a name in x
                target = target.rpartition(".")[0]
            if target.startswith("stas_sweep") and target != module:
                found.append((target, node.lineno, id(node) in in_function))
    return found


def test_every_import_follows_the_house_table():
    where, allowed = house_table()
    assert set(allowed) >= {"Face", "Sweep", "Train", "Models", "Data", "Meter", "Tracking", "Base"}
    wrong = []
    for module in MODULES:
        mine = part_of(module, where)
        for target, line, inside in imports_of(module):
            theirs = part_of(target, where)
            if theirs != mine and theirs not in allowed[mine]:
                wrong.append(f"{MODULES[module].relative_to(ROOT)}:{line}: {mine} imports {theirs} ({target})"
                             + (" inside a function" if inside else ""))
    assert not wrong, "imports against docs/house.md:\n" + "\n".join(wrong)


def loops_in(graph: dict[str, set[str]]) -> list[str]:
    """Each loop of a directed graph found by one depth-first walk, as ``a -> b -> a``."""
    loops, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(graph.get(m, ())):
            if state.get(t) == "open":
                loops.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return loops


def test_no_module_imports_itself_round_a_loop():
    graph = {m: {t for t, _, _ in imports_of(m)} for m in MODULES}
    # a package's __init__ that re-exports its modules is not a loop with them
    graph = {m: {t for t in ts if not (t == m.rpartition(".")[0] and MODULES[t].name == "__init__.py")}
             for m, ts in graph.items()}
    loops = loops_in(graph)
    assert not loops, "modules that import each other:\n" + "\n".join(loops)


def test_the_loop_finder_finds_loops():
    assert loops_in({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a -> b -> c -> a"]
    assert loops_in({"callbacks": {"runner"}, "runner": {"callbacks"}}) == ["callbacks -> runner -> callbacks"]
    assert loops_in({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_function_is_longer_than_90_lines():
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "functions over 90 lines:\n" + "\n".join(long)


@pytest.mark.parametrize("source, expected", [
    ("from ..tracking import Tracker\n", [("stas_sweep.tracking", False)]),
    ("def f():\n    from ..sweep.front import front_of\n", [("stas_sweep.sweep.front", True)]),
    ("from . import checkpoints\n", [("stas_sweep.sweep.checkpoints", False)]),
    ("import stas_sweep.models.halting\n", [("stas_sweep.models.halting", False)]),
    ("import json\nfrom ray import tune\n", []),
])
def test_the_import_reader_sees_what_python_imports(tmp_path, monkeypatch, source, expected):
    """The reader above, on a module as if it were placed in sweep/: relative, absolute and
    in-function imports of the package; other packages' imports are not its business."""
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    monkeypatch.setitem(MODULES, "stas_sweep.sweep.probe", probe)
    assert [(t, inside) for t, _, inside in imports_of("stas_sweep.sweep.probe")] == expected
