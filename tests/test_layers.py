"""The import rule: every import (module-level or inside a function) points to the same layer or
one below, and no modules import each other in a circle.

Layers, each depending only on those before it (README, "Layout"):
  0 core         scoresde/__init__, sde, oracle, convert, likelihood and every private scoresde/_*.py
  1 solvers      solvers/*
  2 learning     nn, losses, data, config, build, fastpath, checkpoint, train
  3 application  models, compare, metrics, plots, cli, experiments/*
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYER_NAMES = ("core", "solvers", "learning", "application")
SCORESDE = {
    "scoresde": 0, "scoresde.sde": 0, "scoresde.oracle": 0, "scoresde.convert": 0, "scoresde.likelihood": 0,
    "scoresde.nn": 2, "scoresde.losses": 2, "scoresde.data": 2, "scoresde.config": 2, "scoresde.build": 2,
    "scoresde.checkpoint": 2, "scoresde.train": 2, "scoresde.fastpath": 2,
    "scoresde.models": 3, "scoresde.compare": 3, "scoresde.metrics": 3, "scoresde.plots": 3, "scoresde.cli": 3,
}
PACKAGES = {"scoresde": None, "solvers": 1, "experiments": 3}  # None: per module, from SCORESDE


def modules(root: str) -> dict:
    """{module name: file path} for every .py file of the checked folders."""
    out = {}
    for pkg in PACKAGES:
        folder = os.path.join(root, pkg)
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if name.endswith(".py"):
                mod = pkg if name == "__init__.py" else f"{pkg}.{name[:-3]}"
                out[mod] = os.path.join(folder, name)
    return out


def layer_of(mod: str) -> int | None:
    pkg = mod.split(".")[0]
    if PACKAGES[pkg] is not None:
        return PACKAGES[pkg]
    if mod in SCORESDE:
        return SCORESDE[mod]
    return 0 if mod.split(".")[-1].startswith("_") else None  # private helpers belong to the core


def imports(mod: str, path: str, known: dict) -> list[tuple[int, str]]:
    """(line, target module) for every import in the file that names one of `known`."""
    is_pkg = path.endswith("__init__.py")
    package = mod if is_pkg else mod.rpartition(".")[0]
    top = mod.split(".")[0]

    def resolve(name: str) -> str | None:
        if top == "experiments" and name.split(".")[0] not in PACKAGES and f"experiments.{name}" in known:
            name = f"experiments.{name}"  # the scripts put their own folder on sys.path
        parts = name.split(".")
        for k in range(len(parts), 0, -1):  # the longest prefix that is one of ours
            if ".".join(parts[:k]) in known:
                return ".".join(parts[:k])
        return None

    found = []
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, resolve(a.name)) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            for a in node.names:  # `from pkg import sub` imports the submodule pkg.sub
                sub = f"{base}.{a.name}"
                found.append((node.lineno, sub if sub in known else resolve(base)))
    return [(line, t) for line, t in found if t is not None and t != mod]


def check(root: str) -> list[str]:
    """One message per broken rule: a file in no layer, an upward import, a circle."""
    known = modules(root)
    rel = {m: os.path.relpath(p, root) for m, p in known.items()}
    problems, graph = [], {}
    for mod, path in known.items():
        here = layer_of(mod)
        if here is None:
            problems.append(f"{rel[mod]} is in no layer; add it to the README's layout and tests/test_layers.py")
            continue
        graph[mod] = {}
        for line, target in imports(mod, path, known):
            graph[mod].setdefault(target, line)
            there = layer_of(target)
            if there is not None and there > here:
                problems.append(f"{rel[mod]}:{line} imports {target} ({LAYER_NAMES[there]}) from the "
                                f"{LAYER_NAMES[here]} layer: an upward import")
    # circles: strongly connected components of the import graph (Tarjan)
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
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
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    for comp in comps:
        edges = [f"{rel[a]}:{graph[a][b]} imports {b}" for a in comp for b in sorted(graph[a]) if b in comp]
        problems.append("import circle: " + "; ".join(edges))
    return problems


def test_imports_follow_the_layers_and_form_no_circle():
    problems = check(ROOT)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("files, expected", [
    ({"scoresde/sde.py": "from .cli import main\n"}, "scoresde/sde.py:1 imports scoresde.cli (application) from the core"),
    ({"scoresde/checkpoint.py": "def f():\n    from .train import build_model\n",
      "scoresde/train.py": "from .checkpoint import save\n"}, "import circle: scoresde/checkpoint.py:2 imports scoresde.train"),
    ({"solvers/heun.py": "def f():\n    import scoresde.nn\n"}, "solvers/heun.py:2 imports scoresde.nn (learning)"),
    ({"solvers/heun.py": "from scoresde import models\n"}, "solvers/heun.py:1 imports scoresde.models (application)"),
    ({"scoresde/newthing.py": "import torch\n"}, "scoresde/newthing.py is in no layer"),
])
def test_the_checker_names_the_file_and_the_import(tmp_path, files, expected):
    for pkg in ("scoresde", "solvers"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    for name in ("sde", "cli", "nn", "models", "checkpoint", "train"):
        (tmp_path / "scoresde" / f"{name}.py").write_text("")
    (tmp_path / "solvers" / "heun.py").write_text("from scoresde.sde import VPSDE\n")
    assert check(str(tmp_path)) == []  # the tree before the bad import is clean
    for rel, text in files.items():
        (tmp_path / rel).write_text(text)
    problems = check(str(tmp_path))
    assert len(problems) == 1 and expected in problems[0], problems
