"""The package's layers, read from the source (an AST scan; nothing is imported).

Every ``import`` counts, also those inside functions: a lazy import is still a dependency.
A package may import from a lower layer only; packages on one layer do not import each other;
no two modules import each other, even through others; and only ``plugin.widgets`` (and the
``demo`` command in ``cli``) may import napari or Qt.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = "napari_histoseg"
ROOT = Path(__file__).resolve().parent.parent / PKG

# Highest first. A module may import from its own package and from any package on a lower line;
# packages on one line must not import each other. ``""`` is the facade (napari_histoseg/__init__).
LAYERS = [
    [""],
    ["cli", "testing"],
    ["plugin", "server"],
    ["api"],
    ["backends"],
    ["review"],
    ["tasks", "wsi"],
    ["tumour", "nuclei", "classifier"],
    ["explanations", "refinement"],
    ["training"],
    ["models"],
    ["colour", "core"],
    ["io"],
]
GUI = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "vispy")
GUI_ALLOWED = (f"{PKG}.plugin.widgets",)
# (importer, imported): the CLI's ``demo`` opens a viewer, through the widgets, lazily.
ALLOWED_EDGES = {(f"{PKG}.cli", f"{PKG}.plugin.widgets.demo")}


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


MODULES = _modules()


def _imports(mod: str, path: Path, is_pkg: bool):
    """(imported module or name, line) for every import in ``mod``, resolved to absolute names."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
            yield from ((s, node.lineno) for s in subs)
            if len(subs) < len(node.names):
                yield target, node.lineno


def _owner(name: str) -> str:
    """The module of the package that ``name`` (a module or a name in one) belongs to."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _edges() -> dict[str, dict[str, int]]:
    edges: dict[str, dict[str, int]] = {}
    for mod, (path, is_pkg) in MODULES.items():
        for name, line in _imports(mod, path, is_pkg):
            if name == PKG or name.startswith(PKG + "."):
                target = _owner(name)
                if target != mod:
                    edges.setdefault(mod, {}).setdefault(target, line)
    return edges


EDGES = _edges()


def _top(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def _rank(top: str) -> int:
    for i, line in enumerate(LAYERS):
        if top in line:
            return i
    raise AssertionError(f"{PKG}.{top} is in no layer: add it to LAYERS in {Path(__file__).name}")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_package_has_a_layer():
    for mod in MODULES:
        _rank(_top(mod))


def test_no_import_cycle_between_modules():
    graph = {m: set(t) for m, t in EDGES.items()}
    assert _cycles(graph) == []


def test_no_import_cycle_between_packages():
    graph: dict[str, set[str]] = {}
    for m, targets in EDGES.items():
        for t in targets:
            if _top(m) != _top(t) and (m, t) not in ALLOWED_EDGES:
                graph.setdefault(_top(m), set()).add(_top(t))
    assert _cycles(graph) == []


def test_no_upward_or_sideways_import():
    bad = []
    for m, targets in EDGES.items():
        for t, line in targets.items():
            a, b = _top(m), _top(t)
            if a != b and (m, t) not in ALLOWED_EDGES and _rank(b) <= _rank(a):
                bad.append(f"{m}:{line} imports {t} ({b or 'the facade'} is not below {a})")
    assert bad == []


def test_napari_and_qt_only_in_the_widgets():
    bad = []
    for mod, (path, is_pkg) in MODULES.items():
        if mod.startswith(GUI_ALLOWED):
            continue
        for name, line in _imports(mod, path, is_pkg):
            if name.split(".")[0] in GUI:
                bad.append(f"{mod}:{line} imports {name}")
    assert bad == []


@pytest.mark.parametrize("a,b,expected", [
    ({"x": {"y"}, "y": {"x"}}, None, [["x", "y"]]),
    ({"x": {"y"}, "y": {"z"}, "z": set()}, None, []),
])
def test_the_cycle_finder_finds_cycles(a, b, expected):
    assert _cycles(a) == expected
