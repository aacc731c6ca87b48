"""Frozen configuration dataclasses for dtjax: model, data and training.

Every field carries a comment with its unit and the reason for its default. Derived sizes are
properties, never written back. Validation raises `ConfigError` with a one-line message, and
every config round-trips through JSON (`to_dict` / `from_dict`).

Sections (each owned by the module that consumes it):
- ModelConfig: dtjax.model
- PPOConfig, DataMixConfig, DatasetConfig: dtjax.data
- TrainConfig: dtjax.train
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, TypeVar

T = TypeVar("T", bound="ConfigBase")


class ConfigError(ValueError):
    """An impossible or malformed configuration; the message is one line for the user."""


@dataclasses.dataclass(frozen=True)
class ConfigBase:
    """Shared JSON round-trip and validation hooks for config dataclasses."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # overridden by subclasses
        pass

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, ConfigBase):
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
        kwargs = {}
        hints = {f.name: f.type for f in dataclasses.fields(cls)}
        for k, v in d.items():
            sub = _SUBCONFIGS.get((cls.__name__, k))
            if sub is not None and isinstance(v, dict):
                v = sub.from_dict(v)
            elif isinstance(v, list):
                v = tuple(v)
            kwargs[k] = v
        del hints
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        return cls.from_dict(json.loads(text))

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)


# (owner class name, field name) -> nested config class, for from_dict of nested configs.
# Each section registers its nested fields here.
_SUBCONFIGS: dict[tuple[str, str], type[ConfigBase]] = {}


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


# ---------------------------------------------------------------------------------------------
# MODEL (dtjax.model)
# ---------------------------------------------------------------------------------------------

OBS_CHANNELS = {"image": 3, "one_hot": 20}  # raw MiniGrid codes, or OneHotPartialObsWrapper bits


@dataclasses.dataclass(frozen=True)
class ModelConfig(ConfigBase):
    """A Decision Transformer over (R, s, a) tokens; defaults are the original's 1-layer model."""

    n_layers: int = 1  # transformer blocks; the original studied a 1-layer model
    d_model: int = 128  # residual stream width (original: 128)
    n_heads: int = 2  # attention heads per block (original: 2)
    d_head: int = 64  # width of each head (original: d_model / n_heads = 64)
    d_mlp: int = 256  # MLP hidden width (original: 256)
    n_timesteps: int = 1  # context K in timesteps; 1 = Markov policy pi(a | R, s, t) as the original
    max_timestep: int = 300  # largest timestep with its own embedding row (the data's max_steps)
    layer_norm: bool = False  # TransformerLens-style LN before attention/MLP/unembed (original: off)
    attn_only: bool = False  # drop the MLPs
    obs_mode: str = "image"  # "image": raw (7,7,3) codes as floats (original); "one_hot": (7,7,20)
    time_embedding: str = "learned"  # "learned" table of max_timestep+1 rows, or "linear" in t
    n_actions: int = 3  # left, right, forward; index n_actions is the padding action
    n_ctx: int = 0  # W_pos rows (see pos_rows); 0 = 3 * n_timesteps. The originals: 3 (R,s,a) or 2 (R,s)
    init: str = "normal"  # "normal": N(0, init_std) GPT-2 style; "transformer_lens": the original's init
    init_std: float = 0.02  # std of the "normal" init of weights (GPT-2 style); biases start at 0
    # d_head is explicit (as in TransformerLens), so n_heads * d_head need not equal d_model.

    def validate(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_timesteps", "max_timestep", "n_actions", "n_ctx"):
            v = getattr(self, name)
            _check(isinstance(v, int) and not isinstance(v, bool), f"model.{name} must be an integer, got {v!r}")
        for name in ("layer_norm", "attn_only"):
            _check(isinstance(getattr(self, name), bool), f"model.{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("n_layers", "d_model", "n_heads", "d_head", "n_timesteps", "max_timestep", "n_actions"):
            _check(getattr(self, name) >= 1, f"model.{name} must be >= 1, got {getattr(self, name)}")
        _check(self.init in ("normal", "transformer_lens"), f"model.init must be 'normal' or 'transformer_lens', got {self.init!r}")
        _check(self.attn_only or self.d_mlp >= 1, f"model.d_mlp must be >= 1 unless attn_only, got {self.d_mlp}")
        _check(self.obs_mode in OBS_CHANNELS, f"model.obs_mode must be one of {', '.join(OBS_CHANNELS)}, got {self.obs_mode!r}")
        _check(self.time_embedding in ("learned", "linear"), f"model.time_embedding must be 'learned' or 'linear', got {self.time_embedding!r}")
        _check(self.n_ctx == 0 or self.n_ctx >= 3 * self.n_timesteps - 1,
               f"model.n_ctx ({self.n_ctx}) is too small for {self.n_timesteps} timesteps (needs >= {3 * self.n_timesteps - 1})")
        _check(self.init_std > 0, f"model.init_std must be > 0, got {self.init_std}")

    @property
    def obs_shape(self) -> tuple[int, int, int]:
        return (7, 7, OBS_CHANNELS[self.obs_mode])

    @property
    def obs_dim(self) -> int:
        return 49 * OBS_CHANNELS[self.obs_mode]

    @property
    def pos_rows(self) -> int:
        """Rows of the positional embedding W_pos: the most tokens one forward pass takes."""
        return self.n_ctx or 3 * self.n_timesteps

# ---------------------------------------------------------------------------------------------
# DATA (dtjax.data)
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PPOConfig(ConfigBase):
    """The behaviour policy: PPO with an MLP actor-critic (64-64 tanh), PureJaxRL style.

    The original used 200k steps, 30 envs x 64 steps, lr 2.5e-4, clip 0.4, ent 0.25, 4 epochs,
    30 minibatches on Python MiniGrid. On device we afford more envs and steps; these defaults
    reach a mean return > 0.9 on 8x8 (max_steps 300) in about a minute on a 2-core CPU.
    """

    total_timesteps: int = 1_000_000  # env steps of PPO training; all are recorded
    num_envs: int = 64  # parallel envs (vmapped)
    num_steps: int = 128  # rollout length per update
    lr: float = 1e-3  # Adam learning rate (linearly annealed to 0 when anneal_lr)
    anneal_lr: bool = True  # linear decay of the learning rate over training
    gamma: float = 0.99  # discount
    gae_lambda: float = 0.95  # GAE lambda
    clip_eps: float = 0.2  # PPO ratio clip
    ent_coef: float = 0.1  # entropy bonus; high, as the original (0.25), else PPO settles on turning in place
    vf_coef: float = 0.5  # value loss weight
    max_grad_norm: float = 0.5  # global gradient clip
    update_epochs: int = 4  # epochs per update
    num_minibatches: int = 8  # minibatches per epoch
    hidden: int = 64  # MLP width (original: 64)
    n_snapshots: int = 4  # policy snapshots saved during training (for epsilon rollouts)

    def validate(self) -> None:
        for n in ("total_timesteps", "num_envs", "num_steps", "update_epochs", "num_minibatches", "hidden"):
            _check(getattr(self, n) >= 1, f"ppo.{n} must be >= 1, got {getattr(self, n)}")
        _check((self.num_envs * self.num_steps) % self.num_minibatches == 0,
               f"ppo.num_envs * ppo.num_steps ({self.num_envs * self.num_steps}) must be divisible by ppo.num_minibatches ({self.num_minibatches})")
        _check(self.total_timesteps >= self.num_envs * self.num_steps,
               f"ppo.total_timesteps ({self.total_timesteps}) must cover one update ({self.num_envs * self.num_steps} steps)")
        _check(self.lr > 0 and 0 < self.gamma <= 1 and 0 <= self.gae_lambda <= 1, "ppo.lr must be > 0 and gamma, gae_lambda in (0, 1]")

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // (self.num_envs * self.num_steps)


@dataclasses.dataclass(frozen=True)
class DataConfig(ConfigBase):
    """What the DT learns from: the PPO run's rollouts plus extra rollouts that shape returns.

    The default mix: every PPO rollout (all qualities, as the original), plus episodes of the
    final policy with a little randomness (eps 0.1: mostly fast successes, some crashes from
    good states), plus uniform-random episodes (quick crashes into walls and balls: the
    negative-return behaviour the DT needs at RTG -1). See docs/data.md for the measured returns.
    """

    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)
    random_steps: int = 200_000  # env steps of a uniform random policy added to the data
    eps_steps: int = 400_000  # env steps of the final PPO policy with epsilon-random actions
    eps: float = 0.1  # epsilon of those rollouts
    snapshot_steps: int = 0  # env steps of each earlier PPO snapshot (epsilon policy) added
    rollout_envs: int = 256  # parallel envs for the extra rollouts
    pct_traj: float = 1.0  # train on the top fraction of timesteps by episode return
    prob_go_from_end: float = 0.1  # probability a window ends at its episode's last step (original: 0.1)

    def validate(self) -> None:
        for n in ("random_steps", "eps_steps", "snapshot_steps"):
            _check(getattr(self, n) >= 0, f"data.{n} must be >= 0, got {getattr(self, n)}")
        _check(0 <= self.eps <= 1, f"data.eps must be in [0, 1], got {self.eps}")
        _check(0 < self.pct_traj <= 1, f"data.pct_traj must be in (0, 1], got {self.pct_traj}")
        _check(0 <= self.prob_go_from_end <= 1, f"data.prob_go_from_end must be in [0, 1], got {self.prob_go_from_end}")
        _check(self.rollout_envs >= 1, f"data.rollout_envs must be >= 1, got {self.rollout_envs}")


_SUBCONFIGS[("DataConfig", "ppo")] = PPOConfig

# ---------------------------------------------------------------------------------------------
# TRAINING (dtjax.train)
# ---------------------------------------------------------------------------------------------
