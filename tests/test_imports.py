"""Import order, read from the source (ast: nothing is imported or executed).

Three rules over every first-party module (envs/, dtjax/, the scripts: train.py, analyse.py,
scripts/, benchmarks/, and the command lines ``dtjax.*.__main__``, which are scripts: they sit in
the last layer, right of everything they drive; tests may import anything):

1. layers: a module imports only from its own layer or from layers to its left in ``LAYERS``;
   a module in ``LEAVES`` imports nothing first-party, and anyone may import it;
2. lazy: a first-party import inside a function carries a ``# lazy:`` comment on one of its
   lines saying why (CLI start-up, an optional heavy dependency, a real import cycle);
3. private: no ``_name`` of another first-party module is imported or read as ``module._name``.

Known violations would be listed in ``ALLOWED`` (none today: keep it so); a violation that is
not listed fails ``test_import_rules``, a listed one that is gone fails ``test_allow_list_is_current``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = "<scripts>"  # train.py, analyse.py, scripts/, benchmarks/, dtjax.*.__main__ (nothing imports them)

# Left to right: a module may import from its own layer and from those to its left. A name covers
# the module and everything under it (``dtjax.circuits`` covers ``dtjax.circuits.graph``); ``dtjax``
# alone is the package's own __init__ (its ``dtjax.load`` facade) and covers nothing under it.
LAYERS: list[tuple[str, ...]] = [
    ("envs",),  # imports only jax, flax.struct, gymnax and numpy
    ("dtjax.config",),
    ("dtjax.cli",),  # argparse built from the config dataclasses (the command lines' parser)
    ("dtjax.io",),
    ("dtjax.data",),
    ("dtjax.hooks",),
    ("dtjax.model",),
    ("dtjax.checkpoint", "dtjax.loader", "dtjax.run", "dtjax"),
    ("dtjax.evaluate",),
    ("dtjax.train",),
    ("dtjax.circuits",),
    ("dtjax.scenarios",),
    ("dtjax.analysis",),
    ("dtjax.probes",),  # concepts, linear probes, probe-directed steering (dtjax.sae scores latents with its auroc)
    ("dtjax.sae",),
    ("dtjax.census", "dtjax.report", "dtjax.explorer", "dtjax.calibrate", "dtjax.dynamics"),
    (SCRIPTS,),
]
OPTIONAL = {"dtjax.io", "dtjax.run", "dtjax.census"}  # planned: may not exist yet
LEAVES = {
    "dtjax.plots": "numpy and matplotlib only",
    "dtjax.sharding": "jax only",
}
FIRST_PARTY = ("envs", "dtjax")

# Known violations ("module: rule target"), each to be fixed and then removed here: none today.
ALLOWED: set[str] = set()


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def first_party_files() -> dict[str, Path]:
    """``{module name: path}`` of envs/, dtjax/ and the scripts."""
    files = {}
    for pattern in ("envs/**/*.py", "dtjax/**/*.py", "scripts/**/*.py", "benchmarks/**/*.py", "*.py"):
        for p in sorted(ROOT.glob(pattern)):
            files[_module_name(p)] = p
    return files


def layer_of(module: str) -> int | str:
    """The index in ``LAYERS`` of a first-party module, ``"leaf"``, or raises KeyError."""
    if not module.startswith(FIRST_PARTY) or module.endswith(".__main__"):
        return len(LAYERS) - 1  # train.py, analyse.py, scripts/, benchmarks/, python -m dtjax.X
    if _leaf(module):
        return "leaf"
    best, index = "", None
    for i, layer in enumerate(LAYERS):
        for name in layer:
            if module == name or (name != "dtjax" and module.startswith(name + ".") and len(name) > len(best)):
                best, index = name, i
    if index is None:
        raise KeyError(module)
    return index


def _leaf(module: str) -> str | None:
    return next((leaf for leaf in LEAVES if module == leaf or module.startswith(leaf + ".")), None)


def _is_first_party(name: str) -> bool:
    return name.split(".")[0] in FIRST_PARTY


def _in_function(parents: list[ast.AST]) -> bool:
    return any(isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) for p in parents)


def violations(module: str, source: str, known: set[str], is_package: bool = False) -> list[str]:
    """The rule violations of one module's source: ``["module: rule target", ...]``.
    ``known``: every first-party module name (to tell ``from pkg import submodule`` from a name)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    package = module if is_package else module.rpartition(".")[0]
    out: list[str] = []
    aliases: dict[str, str] = {}  # local name -> first-party module it is bound to

    def resolve(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = package.split(".")
        base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
        return ".".join(base + ([node.module] if node.module else []))

    def check(target: str, node: ast.AST, parents: list[ast.AST]) -> None:
        if not _is_first_party(target) or target == module:
            return
        mine, theirs = layer_of(module), layer_of(target)
        if mine == "leaf" and _leaf(target) != _leaf(module):  # a leaf imports only within itself
            out.append(f"{module}: layer {target}")
        elif mine != "leaf" and theirs != "leaf" and theirs > mine:
            out.append(f"{module}: layer {target}")
        if _in_function(parents):
            text = "\n".join(lines[node.lineno - 1: node.end_lineno])
            if "# lazy:" not in text:
                out.append(f"{module}: lazy {target}")

    def visit(node: ast.AST, parents: list[ast.AST]) -> None:
        if isinstance(node, ast.Import):
            for a in node.names:
                check(a.name, node, parents)
                if _is_first_party(a.name):
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = resolve(node)
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in known:  # a submodule: the import is of that module
                    check(sub, node, parents)
                    aliases[a.asname or a.name] = sub
                else:
                    check(base, node, parents)
                    if _is_first_party(base) and a.name.startswith("_") and not a.name.startswith("__"):
                        out.append(f"{module}: private {base}.{a.name}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if node.attr.startswith("_") and not node.attr.startswith("__"):
                out.append(f"{module}: private {aliases[node.value.id]}.{node.attr}")
        for child in ast.iter_child_nodes(node):
            visit(child, parents + [node])

    visit(tree, [])
    return sorted(set(out))


def all_violations() -> set[str]:
    files = first_party_files()
    known = set(files)
    found: set[str] = set()
    for module, path in files.items():
        found |= set(violations(module, path.read_text(), known, path.name == "__init__.py"))
    return found


def test_every_module_has_a_layer_and_every_layer_a_module():
    files = first_party_files()
    unplaced = []
    for module in files:
        try:
            layer_of(module)
        except KeyError:
            unplaced.append(module)
    assert not unplaced, f"modules with no place in LAYERS or LEAVES (add them): {unplaced}"
    missing = [name for layer in LAYERS for name in layer if name != SCRIPTS and name not in OPTIONAL
               and not any(m == name or m.startswith(name + ".") for m in files)]
    missing += [name for name in LEAVES if name not in files]
    assert not missing, f"LAYERS/LEAVES name modules that do not exist (remove them or mark OPTIONAL): {missing}"


def test_import_rules():
    new = sorted(all_violations() - ALLOWED)
    assert not new, "import rules broken (see tests/test_imports.py):\n" + "\n".join(new)


def test_allow_list_is_current():
    stale = sorted(ALLOWED - all_violations())
    assert not stale, "fixed: remove from ALLOWED in tests/test_imports.py:\n" + "\n".join(stale)


KNOWN = {"envs", "envs.minigrid", "dtjax", "dtjax.config", "dtjax.model", "dtjax.train", "dtjax.circuits", "dtjax.report",
         "dtjax.circuits.graph", "dtjax.circuits.core", "dtjax.plots", "dtjax.evaluate", "dtjax.report.sections.sae"}


@pytest.mark.parametrize("module, source, want", [
    ("dtjax.model", "from dtjax.config import ModelConfig\nimport envs\n", []),
    ("dtjax.model", "from dtjax import train\n", ["dtjax.model: layer dtjax.train"]),
    ("dtjax.model", "import dtjax.circuits.graph as G\n", ["dtjax.model: layer dtjax.circuits.graph"]),
    ("envs.minigrid", "from dtjax.config import EnvConfig\n", ["envs.minigrid: layer dtjax.config"]),
    ("dtjax.plots", "import numpy as np\nfrom dtjax.config import ModelConfig\n", ["dtjax.plots: layer dtjax.config"]),
    ("dtjax.train", "from dtjax import plots\n", []),
    ("dtjax.circuits.graph", "from .core import forward\nfrom . import core\n", []),
    ("dtjax.circuits.core", "from ..report import x\n", ["dtjax.circuits.core: layer dtjax.report"]),
    ("dtjax.circuits.core", "from ..train import x\n", []),
    ("dtjax.train", "def f():\n    from dtjax import circuits\n", ["dtjax.train: lazy dtjax.circuits",
                                                                   "dtjax.train: layer dtjax.circuits"]),
    ("dtjax.train", "def f():\n    from dtjax.evaluate import (  # lazy: CLI start-up\n        evaluate)\n", []),
    ("dtjax.train", "def f():\n    import numpy as np\n", []),
    ("dtjax.circuits.graph", "from dtjax.evaluate import _policy\n", ["dtjax.circuits.graph: private dtjax.evaluate._policy"]),
    ("dtjax.circuits.graph", "from dtjax import evaluate as E\nE._policy(1)\nE.__name__\n",
     ["dtjax.circuits.graph: private dtjax.evaluate._policy"]),
    ("analyse", "from dtjax.circuits import graph\nfrom dtjax import load\n", []),
    ("dtjax.sae.__main__", "from dtjax.report.sections.sae import eval_page\n", []),  # a command line
    ("dtjax.sae.model", "from dtjax.report.sections.sae import eval_page\n", ["dtjax.sae.model: layer dtjax.report.sections.sae"]),
])
def test_the_rules_on_small_sources(module, source, want):
    """The checker itself: each rule fires on a minimal example, and not on allowed imports."""
    assert violations(module, source, KNOWN) == sorted(want)
