"""The layering stays true: imports point down only, no circle between files (modules go by concept, not size).

    bench/  →  train.py  →  model/  →  pipeline/, kernels/ (leaves, independent of each other)

Every import statement counts, including those inside functions (a lazy import is still a
dependency), and so does a module named in a string: a lazy-export map such as pipeline's
``_LAZY``, ``importlib.import_module("...")``. For circles, importing ``a.b.c`` also runs
``a/__init__`` and ``a/b/__init__``. Every top-level module or package must have a layer. The
checker runs on the repository and, to show it can fail, on small trees with a known violation.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Top-level name → layer; an import must go to a lower layer or stay inside its own package.
LAYERS = {"pipeline": 0, "kernels": 0, "model": 1, "train": 2, "bench": 3}
#: Top-level names with Python files that are not part of the layered program.
NOT_LAYERED = {"tests"}
_IMPORT_CALLS = {"import_module", "__import__"}


def unclassified(root: Path) -> list[str]:
    """Top-level modules and packages (a ``.py`` file, a folder with ``.py`` files) without a layer.
    Hidden folders (.venv, .git) and ``__pycache__`` are not the project's."""
    found = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith((".", "__")):
            continue
        if entry.is_file() and entry.suffix == ".py":
            found.append(entry.stem)
        elif entry.is_dir() and any(entry.glob("*.py")):
            found.append(entry.name)
    return [name for name in found if name not in LAYERS and name not in NOT_LAYERED]


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
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value:
            if node.value in known:  # a dotted module name as data: a lazy-export map, a deferred import
                found.add(node.value)
        elif isinstance(node, ast.Call) and _called_name(node.func) in _IMPORT_CALLS and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                add(arg.value)
            elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                prefix = str(arg.values[0].value)  # f"bench.{part}": any module the prefix can start
                found.update(m for m in known if m.startswith(prefix) and m != prefix)
        elif isinstance(node, ast.Import):
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


def _called_name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def import_graph(root: Path) -> dict[str, set[str]]:
    files = source_files(root)
    known = set(files)
    return {name: imported_modules(name, path, known) for name, path in files.items()}


def with_parent_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """``graph`` plus, for each import of ``a.b.c``, the packages ``a`` and ``a.b`` it initialises first,
    except the importer's own packages: those were initialised before the importer ran."""
    out = {}
    for src, targets in graph.items():
        own = {".".join(src.split(".")[:i]) for i in range(1, src.count(".") + 2)}
        parents = {".".join(t.split(".")[:i]) for t in targets for i in range(1, t.count(".") + 1)}
        out[src] = targets | {p for p in parents if p in graph and p not in own}
    return out


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
    assert cycles(with_parent_packages(import_graph(ROOT))) == []


#: Inside model/: the network and its FLOPs at the bottom, then metrics, losses, the trainer's helpers, the
#: evaluation, the summary and the commands that use a trained model.
MODEL_LAYERS = {"model.vae": 0, "model.flops": 0, "model.metrics": 1, "model.losses": 2, "model.training": 3,
                "model.evaluation": 4, "model.summary": 5, "model.use": 6, "model.__main__": 7}


def model_layer(name: str) -> int | None:
    return next((layer for prefix, layer in MODEL_LAYERS.items() if name == prefix or name.startswith(prefix + ".")),
                None)


def model_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in sorted(graph.items()):
        mine = model_layer(src)
        for dst in sorted(targets):
            theirs = model_layer(dst)
            same = src.split(".")[:2] == dst.split(".")[:2]
            if mine is not None and theirs is not None and not same and theirs > mine:
                bad.append(f"{src} imports {dst}")
    return bad


def test_imports_inside_model_point_down_only():
    assert model_violations(import_graph(ROOT)) == []
    assert model_violations({"model.losses.objective": {"model.training.step"}}) == \
        ["model.losses.objective imports model.training.step"]


def test_every_top_level_module_has_a_layer():
    assert unclassified(ROOT) == [], "give these a layer in LAYERS (or list them in NOT_LAYERED)"


def test_graph_sees_the_real_dependencies():
    graph = import_graph(ROOT)
    assert "pipeline.loader" in graph["model.training.data"]  # a lazy import inside a function
    assert "kernels" in graph["model.vae"]
    assert {"model.training.step", "pipeline.errors"} <= graph["train"]
    assert "pipeline.shards" in graph["pipeline.loader"]  # relative import resolved
    assert {"pipeline.loader", "pipeline.preshard", "pipeline.synthetic"} <= graph["pipeline"]  # _LAZY
    assert "bench.loss" in graph["bench.__main__"]  # importlib.import_module(f"bench.{module}")
    assert "pipeline" in with_parent_packages(graph)["model.training.data"]  # pipeline/__init__ runs first


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


def test_checker_counts_modules_named_in_strings(tmp_path):
    root = _tree(tmp_path, {
        "pipeline/__init__.py": '_LAZY = {"make": ("pipeline.loader", "make")}\n',
        "pipeline/loader.py": "def f():\n    import importlib\n    return importlib.import_module('pipeline.b')\n",
        "pipeline/b.py": "x = 'pipeline'  # a plain word, not an import\n",
        "bench/__init__.py": "", "bench/x.py": "", "bench/y.py": "",
        "bench/__main__.py": "import importlib\ndef run(p):\n    return importlib.import_module(f'bench.{p}')\n",
        "kernels/__init__.py": "", "kernels/k.py": "__import__('model')\n", "model/__init__.py": "",
    })
    graph = import_graph(root)
    assert graph["pipeline"] == {"pipeline.loader"}
    assert graph["pipeline.loader"] == {"pipeline.b"} and graph["pipeline.b"] == set()
    assert graph["bench.__main__"] == {"bench.x", "bench.y"}
    assert layer_violations(graph) == ["kernels.k imports model"]
    (root / "pipeline/b.py").write_text("import pipeline\n")  # closes pipeline → loader → b → pipeline
    assert cycles(import_graph(root)) == [["pipeline", "pipeline.b", "pipeline.loader"]]


def test_circle_check_follows_imports_through_parent_packages(tmp_path):
    """``import model.m`` runs model/__init__ first: if that imports back, it is a circle."""
    root = _tree(tmp_path, {
        "model/__init__.py": "from .use import helper\n", "model/use.py": "from model.sub.m import f\n",
        "model/sub/__init__.py": "from model.use import helper\n", "model/sub/m.py": "",
        "train.py": "import model.sub.m\n",
    })
    graph = import_graph(root)
    assert cycles(graph) == []  # direct imports alone: model.use → model.sub.m, no way back
    assert cycles(with_parent_packages(graph)) == [["model.sub", "model.use"]]
    # A module's own packages do not count: model/__init__ importing model.use is no circle by itself.
    assert with_parent_packages(graph)["model.use"] == {"model.sub.m", "model.sub"}
    assert with_parent_packages(graph)["train"] == {"model.sub.m", "model", "model.sub"}


def test_checker_finds_unclassified_top_level_code(tmp_path):
    root = _tree(tmp_path, {
        "pipeline/__init__.py": "", "train.py": "", "tests/test_x.py": "", "docs/use.md": "",
        ".venv/lib/site.py": "", "__pycache__/train.cpython-311.pyc": "", "data/faces.txt": "",
        "scratch.py": "", "tools/fix.py": "", "notes/sub/deep.py": "",
    })
    assert unclassified(root) == ["scratch", "tools"]
