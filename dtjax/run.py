"""`Run.open(path)`: the one reader of dtjax run directories and of the original project's `.pt` files.

Every other module (``dtjax.load``, the report, the explorer, the SAE tools, the census) asks a
``Run`` what a run holds instead of reading its files. What it reads, and from where (one place
per fact; see ``dtjax.checkpoint`` for the layout):

- the config (model, env, data, training): the ``config`` item of the checkpoint step opened --
  the config those params were trained with. ``config.json`` holds the same dict (for people and
  ``--resume``); it is read only for the root of a ``num_seeds`` run, which has no checkpoint.
- the env: the config's ``env`` (runs of 0.1 without one: the default env in the model's
  obs_mode). ``env.json`` is never read (``dtjax.train`` still writes it for older readers).
  For a ``.pt``: ``dtjax.loader.env_of_original``.
- the step: the step directory's name. The params: that step's ``params`` item, read on first use.
- the dataset: the run's own ``dataset/``, else its parent's (the dataset a ``num_seeds`` run's
  seeds share), else the config's ``dataset`` path if it still exists.
- the kept checkpoint steps (``steps``; ``at_step(step)`` opens one: the training dynamics of
  ``dtjax.dynamics``).
- the seeds (``seed_k/`` of a ``--num_seeds`` run), the sparse dictionaries under ``sae/`` (paths;
  ``dtjax.sae.store.load`` reads one), ``calibration.json`` and ``summary.json``.

``path`` may be a run directory, its ``ckpt`` directory, one step directory, the root of a
multi-seed run (no model of its own: open one of ``seeds``) or a ``.pt`` file. Anything else is a
``dtjax.loader.LoadError`` with one line.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Any

from dtjax import checkpoint as ckpt_lib
from dtjax.config import ConfigError, EnvConfig, ModelConfig, TrainConfig
from dtjax.data import store as data_store
from dtjax.loader import LoadError, env_of_original, load_original

SEED_PREFIX = "seed_"  # <run>/seed_k/: seed k of a num_seeds run
SAE_DIR = "sae"  # <run>/sae/<name>/: sparse dictionaries of the run's model
PT_HOME = Path("checkpoints")  # an original .pt's dictionaries go under checkpoints/<stem>/sae/


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a one-model run directory (it has a ``ckpt/`` folder)."""
    return (Path(path) / ckpt_lib.CKPT_DIR).is_dir()


def seed_dirs(path: str | os.PathLike) -> list[Path]:
    """The ``seed_k`` run directories of a multi-seed run, in k order ([] for any other path)."""
    p = Path(path)
    if not p.is_dir():
        return []
    seeds = [c for c in p.iterdir() if c.name.startswith(SEED_PREFIX) and c.name[len(SEED_PREFIX):].isdigit()
             and is_run_dir(c)]
    return sorted(seeds, key=lambda c: int(c.name[len(SEED_PREFIX):]))


def is_dictionary(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a sparse dictionary directory (``config.json`` and ``ckpt/``)."""
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file() and (p / "ckpt").is_dir()


def find_dictionaries(path: str | os.PathLike) -> list[Path]:
    """The dictionary directories at ``path``: itself if it is one, else its sub-directories that
    are (sorted; hidden ones, e.g. an unfinished write, skipped). A run's ``sae/`` folder lists all."""
    p = Path(path)
    if is_dictionary(p):
        return [p]
    if not p.is_dir():
        return []
    return sorted(c for c in p.iterdir() if not c.name.startswith(".") and is_dictionary(c))


def sae_root_of(path: str | os.PathLike) -> Path:
    """Where the sparse dictionaries of the model at ``path`` live, from the path alone (nothing is
    read): ``<run>/sae`` for a run, its ``ckpt`` or a step directory; ``checkpoints/<stem>/sae``
    (relative to the working directory) for a ``.pt``."""
    p = Path(path)
    if p.is_file() or p.suffix == ".pt":
        return PT_HOME / p.stem / SAE_DIR
    if ckpt_lib.is_step_dir(p):
        p = p.parent
    if p.name == ckpt_lib.CKPT_DIR and not is_run_dir(p):
        p = p.parent
    return p / SAE_DIR


def _read_json(path: Path) -> dict | None:
    """A JSON object file, or None if absent; a damaged one is a LoadError."""
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LoadError(f"{path}: unreadable JSON ({type(e).__name__}: {str(e)[:100]})") from e
    if not isinstance(obj, dict):
        raise LoadError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj


def _model_and_env(config: dict, path: Path) -> tuple[ModelConfig, EnvConfig]:
    """The ModelConfig and EnvConfig of a stored config (0.1 runs: a bare model config, or a
    top-level env_id / max_steps)."""
    try:
        model_cfg = ModelConfig.from_dict(config.get("model", config))
    except (ConfigError, TypeError, AttributeError) as e:
        raise LoadError(f"{path}: bad model config in checkpoint ({e})") from e
    run_cfg = config if "model" in config else {}
    env = dict(run_cfg.get("env") or {k: run_cfg[k] for k in ("env_id", "max_steps") if k in run_cfg})
    env.setdefault("obs_mode", model_cfg.obs_mode)
    try:
        return model_cfg, EnvConfig.from_dict(env)
    except (ConfigError, TypeError) as e:
        raise LoadError(f"{path}: bad env config in checkpoint ({e})") from e


@dataclasses.dataclass(frozen=True)
class Run:
    """What one run directory (or ``.pt`` file) holds. Open with ``Run.open(path)``; ``params``
    are read on first use."""

    path: Path  # what was opened, as given
    kind: str  # "run" (a model's run, ckpt or step directory), "seeds" (a multi-seed root), "pt"
    root: Path | None  # the run directory (config.json, dataset/, calibration.json, sae/); None for a .pt
    config: dict  # the stored config (TrainConfig.to_dict()); a .pt's embedded JSON configs
    model_cfg: ModelConfig | None  # None for a multi-seed root
    env_cfg: EnvConfig | None  # the env the model was trained in; None for a multi-seed root
    step: int | None  # training step of the checkpoint opened; None for a .pt or a multi-seed root
    step_dir: Path | None  # the orbax step directory read
    _pt_params: dict | None = dataclasses.field(default=None, repr=False, compare=False)

    @classmethod
    def open(cls, path: str | os.PathLike) -> Run:
        """Open a run directory, its ``ckpt``, one step, a multi-seed root or a ``.pt`` (LoadError)."""
        given = Path(path)
        p = given.absolute()
        if not p.exists():
            raise LoadError(f"checkpoint not found: {given}")
        if p.is_file():
            if p.stat().st_size == 0:
                raise LoadError(f"{given} is empty")
            model_cfg, params, extra = load_original(p)
            return cls(given, "pt", None, extra, model_cfg, env_of_original(model_cfg, extra), None, None, params)
        seeds = seed_dirs(p)
        if seeds and not is_run_dir(p) and not ckpt_lib.is_step_dir(p):
            config = _read_json(p / "config.json") or {}
            return cls(given, "seeds", p, config, None, None, None, None)
        try:
            step_dir = ckpt_lib.find_step_dir(p)
            config = ckpt_lib.restore_config(step_dir)
        except ckpt_lib.CheckpointError as e:
            raise LoadError(str(e)) from e
        if not isinstance(config, dict):
            raise LoadError(f"{step_dir}: the stored config is not a JSON object")
        model_cfg, env_cfg = _model_and_env(config, given)
        ckpt = step_dir.parent
        root = ckpt.parent if ckpt.name == ckpt_lib.CKPT_DIR else ckpt
        step = int(step_dir.name) if step_dir.name.isdigit() else None
        return cls(given, "run", root, config, model_cfg, env_cfg, step, step_dir)

    # The model ------------------------------------------------------------------------------

    def require_model(self) -> Run:
        """This run, if it holds one model (a multi-seed root does not: LoadError naming its seeds)."""
        if self.model_cfg is None:
            raise LoadError(f"{self.path} is a {len(self.seeds)}-seed run: open one of its seeds, "
                            f"e.g. {Path(self.path) / self.seeds[0].name}")
        return self

    @functools.cached_property
    def params(self) -> dict:
        """The model's parameters as numpy arrays (read from the checkpoint on first use)."""
        self.require_model()
        if self._pt_params is not None:
            return self._pt_params
        try:
            return ckpt_lib.restore_params(self.step_dir)
        except ckpt_lib.CheckpointError as e:
            raise LoadError(str(e)) from e

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def train_config(self) -> TrainConfig | None:
        """The run's TrainConfig (None for a ``.pt`` and for 0.1 checkpoints that stored only the model)."""
        if self.kind == "pt" or "model" not in self.config:
            return None
        try:
            return TrainConfig.from_dict(self.config)
        except (ConfigError, TypeError) as e:
            raise LoadError(f"{self.path}: bad training config ({e})") from e

    @property
    def prob_go_from_end(self) -> float:
        """How the run's training windows were drawn (``data.prob_go_from_end``; default 0.1)."""
        data = self.config.get("data") if self.kind != "pt" else None
        return float(data.get("prob_go_from_end", 0.1)) if isinstance(data, dict) else 0.1

    # Seeds ---------------------------------------------------------------------------------

    @property
    def seeds(self) -> list[Path]:
        """The ``seed_k`` directories of a multi-seed run, in k order ([] otherwise)."""
        return seed_dirs(self.root) if self.kind == "seeds" else []

    def seed(self, k: int) -> Run:
        """Seed ``k`` of a multi-seed run, opened."""
        seeds = self.seeds
        if not 0 <= k < len(seeds):
            raise LoadError(f"{self.path} has no seed {k} ({len(seeds)} seeds)")
        return Run.open(Path(self.path) / seeds[k].name)

    def models(self) -> list[Path]:
        """The model paths of this run: its seeds' directories, or the run itself."""
        return [Path(self.path) / s.name for s in self.seeds] or [Path(self.path)]

    # Kept checkpoints ----------------------------------------------------------------------

    @property
    def steps(self) -> list[int]:
        """The checkpoint steps kept in the run, ascending (``TrainConfig.keep_every``: step 0 and
        every multiple of it, besides the latest ``keep_checkpoints``); for a multi-seed root, the
        steps every seed has; [] for a ``.pt``."""
        if self.kind == "seeds":
            per_seed = [{int(d.name) for d in ckpt_lib.step_dirs(s)} for s in self.seeds]
            return sorted(set.intersection(*per_seed)) if per_seed else []
        return [int(d.name) for d in ckpt_lib.step_dirs(self.root)] if self.kind == "run" else []

    def at_step(self, step: int) -> Run:
        """This run's model at checkpoint ``step`` (one of ``steps``), opened."""
        self.require_model()
        if step not in self.steps:
            raise LoadError(f"{self.path} has no checkpoint at step {step} (kept: {self.steps})")
        return Run.open(self.root / ckpt_lib.CKPT_DIR / str(step))

    # Data ----------------------------------------------------------------------------------

    @property
    def dataset_path(self) -> Path | None:
        """The dataset the model was trained on: the run's ``dataset/``, else its parent's (shared
        by the seeds of a multi-seed run), else the config's ``dataset`` if it exists; None if none."""
        if self.root is None:
            return None
        own = [self.root / "dataset"]
        if self.root.name.startswith(SEED_PREFIX):
            own.append(self.root.parent / "dataset")
        for d in own:
            if (d / "metadata.json").is_file():
                return d
        stored = self.config.get("dataset")
        if isinstance(stored, str) and stored and Path(stored).is_dir():
            return Path(stored)
        return None

    def open_dataset(self, dataset: str | os.PathLike | None = None) -> tuple[dict, dict]:
        """(arrays, metadata) of ``dataset`` or the run's own (``dtjax.data.store.load``)."""
        path = Path(dataset) if dataset else self.dataset_path
        if path is None:
            hint = "an original .pt has none" if self.kind == "pt" else f"none in {self.root}"
            raise LoadError(f"{self.path}: no dataset to open ({hint}): pass one")
        try:
            return data_store.load(path)
        except data_store.DatasetError as e:
            raise LoadError(str(e)) from e

    # Files beside the model ----------------------------------------------------------------

    def calibration(self) -> dict | None:
        """The run's ``calibration.json`` (the target-RTG sweep at the end of training), or None."""
        return _read_json(self.root / "calibration.json") if self.root is not None else None

    def summary(self) -> dict | None:
        """The run's ``summary.json`` (final evaluation and calibration), or None."""
        return _read_json(self.root / "summary.json") if self.root is not None else None

    @property
    def sae_root(self) -> Path:
        """Where this model's sparse dictionaries live (``sae_root_of``): ``<run>/sae``, or
        ``checkpoints/<stem>/sae`` for a ``.pt``."""
        return sae_root_of(self.path) if self.root is None else self.root / SAE_DIR

    def sae_dirs(self) -> list[Path]:
        """The dictionary directories under ``sae_root`` (sorted; paths only: ``dtjax.sae.store.load``
        reads one)."""
        return find_dictionaries(self.sae_root)


def load(path: str | os.PathLike, with_env: bool = False) -> Any:
    """``(cfg, params)`` of the model at ``path``; ``(cfg, params, env_cfg)`` with ``with_env``."""
    run = Run.open(path).require_model()
    return (run.model_cfg, run.params, run.env_cfg) if with_env else (run.model_cfg, run.params)
