"""The models an explorer can switch between: dtjax run directories and original ``.pt`` files
under one directory, each loaded (and compiled) once and shared by every session."""

from __future__ import annotations

import threading
from pathlib import Path

from dtjax.explorer.session import Model
from dtjax.run import is_run_dir

MAX_DEPTH = 3  # how deep under the directory runs and .pt files are looked for


def find_models(root: Path, max_depth: int = MAX_DEPTH) -> dict[str, Path]:
    """name (path relative to ``root``) -> path of every run directory (``dtjax.run.is_run_dir``)
    and ``.pt`` file under ``root``, sorted by name; a run's own subfolders are skipped."""
    root = Path(root)
    found: dict[str, Path] = {}

    def walk(d: Path, depth: int) -> None:
        try:
            entries = sorted(d.iterdir())
        except OSError:
            return
        for p in entries:
            if p.name.startswith("."):
                continue
            if p.is_dir():
                if is_run_dir(p):
                    found[str(p.relative_to(root))] = p
                elif depth < max_depth:
                    walk(p, depth + 1)
            elif p.suffix == ".pt" and p.is_file():
                found[str(p.relative_to(root))] = p

    if root.is_dir():
        walk(root, 1)
    return dict(sorted(found.items()))


class Catalog:
    """The models under ``root`` plus the explorer's starting model; ``get(name)`` loads once."""

    def __init__(self, default: Model, root: Path | None = None):
        self.root = None if root is None else Path(root)
        self.default = default
        self._paths = find_models(self.root) if self.root is not None else {}
        self._loaded: dict[str, Model] = {}
        self._lock = threading.Lock()
        match = [n for n, p in self._paths.items() if default.path and p.resolve() == Path(default.path).resolve()]
        if match:
            default.name = match[0]
        else:
            self._paths = {default.name: Path(default.path), **self._paths}
        self._loaded[default.name] = default

    def names(self) -> list[str]:
        return list(self._paths)

    def get(self, name) -> Model:
        """The loaded model ``name`` (KeyError if not listed; dtjax.loader.LoadError if it does not load)."""
        if not isinstance(name, str) or name not in self._paths:
            raise KeyError(name)
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = Model.load(self._paths[name], name=name)
            return self._loaded[name]
