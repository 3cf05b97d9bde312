"""The package's shape: layers without circles, modules a newcomer can read.

The import graph counts every import statement of a module: at the top, inside functions and
under ``if TYPE_CHECKING:`` alike (an import hidden in a function is still a dependency).
docs/architecture.md draws the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import toolkit

PACKAGE = Path(toolkit.__file__).parent
MAX_LINES = 500

# bottom to top; a module may import its own layer or a lower one
LAYERS = ["formats, I/O and runtime", "data", "inference core", "training", "front doors"]
LAYER_OF = {  # module (or package prefix) -> layer; the longest prefix wins
    "toolkit": "formats, I/O and runtime", "toolkit._args": "formats, I/O and runtime", "toolkit._fs": "formats, I/O and runtime",
    "toolkit._lazy": "formats, I/O and runtime", "toolkit._fastai": "formats, I/O and runtime", "toolkit.config": "formats, I/O and runtime", "toolkit.runs": "formats, I/O and runtime",
    "toolkit.raster": "formats, I/O and runtime", "toolkit.esri": "formats, I/O and runtime", "toolkit.stats": "formats, I/O and runtime",
    "toolkit.viz": "formats, I/O and runtime", "toolkit.models.rules": "formats, I/O and runtime",
    "toolkit.ddp": "formats, I/O and runtime",  # devices and torchrun's process group
    "toolkit.arcgis_pro": "formats, I/O and runtime",  # the package's constants; the raster function is below
    "toolkit.data": "data", "toolkit.export": "data", "toolkit.export_labels": "data",
    "toolkit.export_metadata": "data", "toolkit.export_tiling": "data", "toolkit.export_vectors": "data",
    "toolkit.vector": "data", "toolkit.datasets": "data", "toolkit.banepa": "data", "toolkit.metrics": "data",
    "toolkit.models.networks": "inference core", "toolkit.models.specs": "inference core",
    "toolkit.models.emd_schema": "inference core", "toolkit.models.translation": "inference core",
    "toolkit.models.model_folder": "inference core", "toolkit.models.arcgis_learn": "inference core",
    "toolkit.models.backends": "inference core", "toolkit.windows": "inference core",
    "toolkit.models.gan": "training", "toolkit.models.checkpoint": "training",
    "toolkit.models.tensorboard": "training", "toolkit.models.training": "training",
    "toolkit.models.base": "training",
    "toolkit.models": "front doors", "toolkit.models.pix2pix": "front doors", "toolkit.models.cyclegan": "front doors",
    "toolkit.models.pix2pixhd": "front doors", "toolkit.models.networks_hd": "inference core",
    "toolkit.models.zoo": "front doors", "toolkit.inference": "front doors", "toolkit.distributed": "front doors",
    "toolkit.scenes": "front doors", "toolkit.cli": "front doors", "toolkit.__main__": "front doors",
    "toolkit.arcgis_pro.ArcGISImageTranslation": "front doors",
}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the toolkit modules it imports anywhere in its file."""
    mods = modules()
    graph = {}
    for name, path in mods.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")[: len(name.split(".")) - node.level + is_package]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module
                names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in mods else prefix for a in node.names]
            else:
                continue
            for target in names:
                while target not in mods and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in mods and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> int:
    prefix = module
    while prefix not in LAYER_OF:
        assert "." in prefix, f"{module} has no layer in LAYER_OF: add it (and to docs/architecture.md)"
        prefix = prefix.rsplit(".", 1)[0]
    return LAYERS.index(LAYER_OF[prefix])


def test_the_checker_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_imports_go_down_the_layers():
    upward = [(m, t) for m, targets in sorted(import_graph().items()) for t in sorted(targets) if layer(t) > layer(m)]
    assert upward == []


def test_modules_a_newcomer_can_read():
    """None over MAX_LINES lines; each opens with a docstring that says what it holds and, in a
    ``Layer:`` line, where it sits."""
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}
    missing = [name for name, path in modules().items()
               if "Layer:" not in (ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or "")]
    assert missing == []
