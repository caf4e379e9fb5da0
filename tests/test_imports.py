"""The package layers of `src/w2vkit`: no import from a lower layer up, no circle between packages.

Every import statement of every module is read with `ast` (also those inside functions and under
`if TYPE_CHECKING`), so a lazy or annotation-only import counts like any other: it is still a
dependency a reader has to follow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "w2vkit"

LAYERS: list[set[str]] = [
    {"__init__"},  # the root: a version and lazy names, loaded by name on first use
    {"config"},  # typed config machinery, errors
    {"checks", "configs"},  # argument checks, the bundled YAML recipes
    {"embed"},  # embedding layers (the study notes' lookup tables), used by model and data
    {"model"},  # the networks: wav2vec 2.0, its CTC head, their parts
    {"data"},  # audio, manifests, labels, vocabulary, batching
    {"interop"},  # the one reader: any file -> ModelRecord -> a model
    {"train"},  # the loop, checkpoints, metrics shared by every objective
    {"features"},  # hidden states out of a trained model
    {"probe"},  # linear probes over extracted features
    {"pretrain", "finetune"},  # objectives, each a sibling
    {"report"},
    # The command line's conventions (parsing, one-line errors, exit codes); it loads the recipe a
    # command names with importlib at run time, and `recipes.demo` runs commands through it.
    {"cli"},
    {"recipes"},
    {"__main__"},
]
"""Lowest first: a package may import its own layer's other packages only where they do not form
a circle, and any lower layer."""


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path) -> set[str]:
    """The w2vkit modules `name` imports, resolved to modules (not the names taken from them)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets.add(base)
            # `from w2vkit.interop import hf` imports the module w2vkit.interop.hf
            targets |= {f"{base}.{alias.name}" for alias in node.names}
    return {t for t in targets if t == "w2vkit" or t.startswith("w2vkit.")}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {t for t in _imports(name, path) if t in modules and t != name}
        for name, path in modules.items()
    }


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _layer(unit: str) -> int:
    for i, members in enumerate(LAYERS):
        if unit in members:
            return i
    raise AssertionError(f"w2vkit.{unit} is in no layer of tests/test_imports.py: add it")


def test_every_package_has_a_layer():
    for name in _modules():
        _layer(_unit(name))


def test_no_import_reaches_up_a_layer():
    upward = [
        f"{source} -> {target}"
        for source, targets in _graph().items()
        for target in sorted(targets)
        if _layer(_unit(target)) > _layer(_unit(source))
    ]
    assert upward == []


def test_no_circle_between_packages():
    packages: dict[str, set[str]] = {}
    for source, targets in _graph().items():
        packages.setdefault(_unit(source), set()).update(
            _unit(t) for t in targets if _unit(t) != _unit(source)
        )
    assert _cycles(packages) == []


def test_no_circle_between_modules():
    assert _cycles(_graph()) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from w2vkit.interop import hf\n", {"w2vkit.interop", "w2vkit.interop.hf"}),
        ("def f():\n    import w2vkit.model.ctc\n", {"w2vkit.model.ctc"}),
        ("if TYPE_CHECKING:\n    from .record import X\n", {"w2vkit.interop.record"}),
        ("import numpy\nfrom torch import nn\n", set()),
    ],
)
def test_imports_are_read_everywhere_in_a_module(tmp_path, source, expected):
    path = tmp_path / "reader.py"
    path.write_text(source)
    assert _imports("w2vkit.interop.reader", path) - {"w2vkit.interop.record.X"} == expected


def test_cycles_finds_a_circle_and_only_it():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]
