"""The layering stays true: imports point down only, no circle between files, no oversized module.

    bench/  →  train.py  →  model/  →  pipeline/, kernels/ (leaves, independent of each other)

Every import statement counts, including those inside functions (a lazy import is still a
dependency). The checker runs on the repository and, to show it can fail, on small trees with a
known violation.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Top-level name → layer; an import must go to a lower layer or stay inside its own package.
LAYERS = {"pipeline": 0, "kernels": 0, "model": 1, "train": 2, "bench": 3}
MAX_LINES = 420


def source_files(root: Path) -> dict[str, Path]:
    """Dotted module name → file, for every project module under ``root`` (tests excluded)."""
    out = {}
    for top in LAYERS:
        single = root / f"{top}.py"
        if single.is_file():
            out[top] = single
        for path in sorted((root / top).rglob("*.py")) if (root / top).is_dir() else []:
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that module ``name`` (at ``path``) imports, resolved to the most specific
    known module (``from pkg import sub`` is an import of ``pkg.sub`` when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target:
            found.add(target)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                full = f"{module}.{alias.name}"
                add(full if full in known else module)
    found.discard(name)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    files = source_files(root)
    known = set(files)
    return {name: imported_modules(name, path, known) for name, path in files.items()}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in sorted(graph.items()):
        top = src.split(".")[0]
        for dst in sorted(targets):
            other = dst.split(".")[0]
            if other != top and LAYERS[other] >= LAYERS[top]:
                bad.append(f"{src} imports {dst}")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_imports_point_down_only():
    assert layer_violations(import_graph(ROOT)) == []


def test_no_circle_between_files():
    assert cycles(import_graph(ROOT)) == []


def test_graph_sees_the_real_dependencies():
    graph = import_graph(ROOT)
    assert "pipeline.loader" in graph["model.training.data"]  # a lazy import inside a function
    assert "kernels" in graph["model.vae"]
    assert {"model.training.build", "pipeline.errors"} <= graph["train"]
    assert "pipeline.shards" in graph["pipeline.loader"]  # relative import resolved


def test_no_oversized_module():
    big = {name: n for name, path in source_files(ROOT).items()
           if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert big == {}, f"split these modules (over {MAX_LINES} lines): {big}"


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize("files, expected", [
    ({"kernels/__init__.py": "", "kernels/a.py": "def f():\n    from pipeline.errors import E\n",
      "pipeline/__init__.py": "", "pipeline/errors.py": ""}, ["kernels.a imports pipeline.errors"]),
    ({"model/__init__.py": "", "model/m.py": "import bench.x\n", "bench/__init__.py": "", "bench/x.py": ""},
     ["model.m imports bench.x"]),
    ({"pipeline/__init__.py": "", "pipeline/a.py": "from model import vae\n", "model/__init__.py": "",
      "model/vae.py": ""}, ["pipeline.a imports model.vae"]),
    ({"model/__init__.py": "", "model/m.py": "from pipeline import loader\n", "pipeline/__init__.py": "",
      "pipeline/loader.py": "from . import errors\n", "pipeline/errors.py": "", "bench/__init__.py": "",
      "bench/b.py": "import train\n", "train.py": "from model.m import x\n"}, []),
])
def test_checker_finds_upward_imports(tmp_path, files, expected):
    assert layer_violations(import_graph(_tree(tmp_path, files))) == expected


def test_checker_finds_a_circle(tmp_path):
    root = _tree(tmp_path, {
        "pipeline/__init__.py": "from .loader import make_loader\n",
        "pipeline/loader.py": "from . import cores\n",
        "pipeline/cores.py": "",
        "pipeline/fallback.py": "from .reader import x\n",
        "pipeline/reader.py": "def f():\n    from pipeline.fallback import y\n",
    })
    assert cycles(import_graph(root)) == [["pipeline.fallback", "pipeline.reader"]]
    (root / "pipeline/cores.py").write_text("from pipeline import something\n")
    assert ["pipeline", "pipeline.cores", "pipeline.loader"] in cycles(import_graph(root))
