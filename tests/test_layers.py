"""The import rule, read from the paths: every import (module-level or inside a function) points
to the same layer or one below, and no modules import each other in a circle.

  0 core         scoresde/*.py (the top level of the package: SDEs, oracles, conversions, likelihood)
  1 solvers      solvers/
  2 training     scoresde/training/
  3 evaluation   scoresde/evaluation/
  4 application  scoresde/cli/, experiments/
A new module is placed by the folder it is written in; there is no table to keep.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYER_NAMES = ("core", "solvers", "training", "evaluation", "application")
FOLDERS = {"scoresde": 0, "solvers": 1, "scoresde/training": 2, "scoresde/evaluation": 3, "scoresde/cli": 4,
           "experiments": 4}


def modules(root: str) -> dict:
    """{module name: file path} for every .py file of the checked folders."""
    out = {}
    for top in ("scoresde", "solvers", "experiments"):
        for dirpath, dirs, files in os.walk(os.path.join(root, top)):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
            pkg = os.path.relpath(dirpath, root).replace(os.sep, ".")
            for name in sorted(files):
                if name.endswith(".py"):
                    out[pkg if name == "__init__.py" else f"{pkg}.{name[:-3]}"] = os.path.join(dirpath, name)
    return out


def layer_of(mod: str, path: str, root: str) -> int | None:
    """The layer of the deepest listed folder holding the file; None for a folder in no layer."""
    folder = os.path.relpath(os.path.dirname(path), root).replace(os.sep, "/")
    return FOLDERS.get(folder)


def imports(mod: str, path: str, known: dict) -> list[tuple[int, str]]:
    """(line, target module) for every import in the file that names one of `known`."""
    is_pkg = path.endswith("__init__.py")
    package = mod if is_pkg else mod.rpartition(".")[0]
    top = mod.split(".")[0]

    def resolve(name: str) -> str | None:
        if top == "experiments" and name.split(".")[0] not in ("scoresde", "solvers", "experiments") and f"experiments.{name}" in known:
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
    layer = {m: layer_of(m, p, root) for m, p in known.items()}
    problems, graph = [], {}
    for mod, path in known.items():
        here = layer[mod]
        if here is None:
            problems.append(f"{rel[mod]} is in a folder of no layer; put it in one of {', '.join(sorted(FOLDERS))}")
            continue
        graph[mod] = {}
        for line, target in imports(mod, path, known):
            graph[mod].setdefault(target, line)
            there = layer[target]
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
    ({"scoresde/sde.py": "from .cli.main import main\n"},
     "scoresde/sde.py:1 imports scoresde.cli.main (application) from the core"),
    ({"scoresde/training/checkpoint.py": "def f():\n    from .trainer import build_model\n",
      "scoresde/training/trainer.py": "from .checkpoint import save\n"},
     "import circle: scoresde/training/checkpoint.py:2 imports scoresde.training.trainer"),
    ({"solvers/heun.py": "def f():\n    import scoresde.training.nn\n"},
     "solvers/heun.py:2 imports scoresde.training.nn (training)"),
    ({"solvers/heun.py": "from scoresde.evaluation import resolve\n"},
     "solvers/heun.py:1 imports scoresde.evaluation.resolve (evaluation)"),
    ({"scoresde/training/data.py": "from ..evaluation.metrics import quality\n"},
     "scoresde/training/data.py:1 imports scoresde.evaluation.metrics (evaluation) from the training layer"),
    ({"scoresde/extras/newthing.py": "import torch\n"}, "scoresde/extras/newthing.py is in a folder of no layer"),
])
def test_the_checker_names_the_file_and_the_import(tmp_path, files, expected):
    tree = {"scoresde": ["sde"], "solvers": ["heun"], "scoresde/training": ["nn", "checkpoint", "trainer", "data"],
            "scoresde/evaluation": ["resolve", "metrics"], "scoresde/cli": ["main"], "scoresde/extras": []}
    for pkg, names in tree.items():
        (tmp_path / pkg).mkdir(parents=True)
        (tmp_path / pkg / "__init__.py").write_text("")
        for name in names:
            (tmp_path / pkg / f"{name}.py").write_text("")
    (tmp_path / "solvers" / "heun.py").write_text("from scoresde.sde import VPSDE\n")
    (tmp_path / "scoresde" / "extras" / "__init__.py").unlink()
    (tmp_path / "scoresde" / "extras").rmdir()
    assert check(str(tmp_path)) == []  # the tree before the bad import is clean
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    problems = check(str(tmp_path))
    assert len(problems) == 1 and expected in problems[0], problems
