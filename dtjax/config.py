"""Frozen configuration dataclasses for dtjax: model, data and training.

Every field carries a docstring (the string under it) with its unit and the reason for its
default; ``tyro`` shows it as the flag's help (``python train.py --help``). Derived sizes are
properties, never written back. Validation raises `ConfigError` with a one-line message, and
every config round-trips through JSON (`to_dict` / `from_dict`).

Sections (each owned by the module that consumes it):
- EnvConfig: envs (the env a run collects, trains and is evaluated in; stored with the run)
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
        for k, v in d.items():
            sub = _SUBCONFIGS.get((cls.__name__, k))
            if sub is not None and isinstance(v, dict):
                v = sub.from_dict(v)
            elif isinstance(v, list):
                v = tuple(v)
            kwargs[k] = v
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
# ENV (envs)
# ---------------------------------------------------------------------------------------------

ENV_OBS_MODES = ("image", "one_hot", "full")  # envs.make's obs_mode: 7x7 raw codes, 7x7 one-hot, full grid


@dataclasses.dataclass(frozen=True)
class EnvConfig(ConfigBase):
    """The env a run collects its data in, trains against and is evaluated and analysed in.

    Stored with every run (inside the checkpoint's config; ``env.json`` too, for older readers)
    and returned by ``dtjax.run.Run.open(path).env_cfg`` / ``dtjax.load(path, with_env=True)``. The original project's ``.pt`` files get the defaults
    below (its data setting; ``ReproduceOriginalPostShort.pt`` carries its own: max_steps 1000).
    """

    env_id: str = "MiniGrid-Dynamic-Obstacles-8x8-v0"
    """any registered env id, of any task family (envs.registered_envs); default: the original's"""
    max_steps: int = 300
    """episode length cap, as the original's data (MiniGrid's default is 4 * size**2)"""
    obs_mode: str = "image"
    """what the agent sees; a DT's must equal its model.obs_mode"""

    def validate(self) -> None:
        from envs.registration import REGISTRY  # noqa: PLC0415  # lazy: CLI start-up (envs pulls in jax; --help reads config)

        _check(self.env_id in REGISTRY, f"env.env_id: unknown env id {self.env_id!r}; valid ids: {', '.join(REGISTRY)}")
        _check(isinstance(self.max_steps, int) and not isinstance(self.max_steps, bool) and self.max_steps >= 1,
               f"env.max_steps must be an integer >= 1, got {self.max_steps!r}")
        _check(self.obs_mode in ENV_OBS_MODES, f"env.obs_mode must be one of {', '.join(ENV_OBS_MODES)}, got {self.obs_mode!r}")

    @property
    def size(self) -> int:
        """Grid side length (walls included)."""
        from envs.registration import grid_size  # noqa: PLC0415  # lazy: CLI start-up (envs pulls in jax)

        return grid_size(self.env_id)

    def make(self):
        """``(env, env_params)`` from ``envs.make``."""
        import envs  # noqa: PLC0415  # lazy: CLI start-up (envs pulls in jax)

        return envs.make(self.env_id, max_steps=self.max_steps, obs_mode=self.obs_mode)


def _lift_env(d: dict, legacy: tuple[str, ...], obs_mode: str | None) -> dict:
    """Configs of dtjax 0.1 had env_id / max_steps (/ obs_mode) at the top level: move them into
    ``env``; an ``env`` without obs_mode takes the model's (``obs_mode``), so old runs still load."""
    d = dict(d)
    env = dict(d.get("env") or {})
    for k in legacy:
        if k in d:
            env.setdefault(k, d.pop(k))
    if obs_mode is not None:
        env.setdefault("obs_mode", obs_mode)
    d["env"] = env
    return d


# ---------------------------------------------------------------------------------------------
# MODEL (dtjax.model)
# ---------------------------------------------------------------------------------------------

OBS_CHANNELS = {"image": 3, "one_hot": 20}  # raw MiniGrid codes, or OneHotPartialObsWrapper bits
MLP_KINDS = ("standard", "gated")  # ModelConfig.mlp
PAD_RTGS = ("zero", "initial")  # ModelConfig.pad_rtg


@dataclasses.dataclass(frozen=True)
class ModelConfig(ConfigBase):
    """A Decision Transformer over (R, s, a) tokens; defaults are the original's 1-layer model."""

    n_layers: int = 1
    """transformer blocks; the original studied a 1-layer model"""
    d_model: int = 128
    """residual stream width (original: 128)"""
    n_heads: int = 2
    """attention heads per block (original: 2)"""
    d_head: int = 64
    """width of each head (original: d_model / n_heads = 64)"""
    d_mlp: int = 256
    """MLP hidden width (original: 256)"""
    n_timesteps: int = 1
    """context K in timesteps; 1 = Markov policy pi(a | R, s, t) as the original"""
    max_timestep: int = 300
    """largest timestep with its own embedding row (the data's max_steps)"""
    layer_norm: bool = False
    """TransformerLens-style LN before attention/MLP/unembed (original: off)"""
    attn_only: bool = False
    """drop the MLPs"""
    mlp: str = "standard"
    """"standard": relu(x W_in + b_in) W_out + b_out; "gated": TransformerLens's gated_mlp,
    (relu(x W_gate) * (x W_in) + b_in) W_out + b_out, b_in after the product (the original's MemoryDT)"""
    obs_mode: str = "image"
    """"image": raw (7,7,3) codes as floats (original); "one_hot": (7,7,20)"""
    time_embedding: str = "learned"
    """"learned" table of max_timestep+1 rows, or "linear" in t"""
    n_actions: int = 3
    """left, right, forward; index n_actions is the padding action"""
    n_ctx: int = 0
    """W_pos rows (see pos_rows); 0 = 3 * n_timesteps. The originals: 3 (R,s,a), 2 (R,s), 26 (MemoryDT: R1 s1 a1 ... R9 s9)"""
    pad_rtg: str = "zero"
    """RTG of the padded timesteps before an episode's first step (K > 1; padded timesteps are
    otherwise zero observation, timestep 0, padding action n_actions): "zero" (dtjax: training
    windows and evaluation alike) or "initial" (the episode's first RTG, as the original's
    evaluation and app pad, `initialize_padding_inputs`; set by dtjax.load for its K > 1 models)"""
    init: str = "normal"
    """"normal": N(0, init_std) GPT-2 style; "transformer_lens": the original's init"""
    init_std: float = 0.02
    """std of the "normal" init of weights (GPT-2 style); biases start at 0"""
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
        _check(self.mlp in MLP_KINDS, f"model.mlp must be one of {', '.join(MLP_KINDS)}, got {self.mlp!r}")
        _check(self.pad_rtg in PAD_RTGS, f"model.pad_rtg must be one of {', '.join(PAD_RTGS)}, got {self.pad_rtg!r}")
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


PPO_ARCHS = ("mlp", "gru")  # PPOConfig.arch: dtjax.data.ppo, dtjax.data.ppo_rnn


@dataclasses.dataclass(frozen=True)
class PPOConfig(ConfigBase):
    """The behaviour policy: PPO with an MLP actor-critic (64-64 tanh), PureJaxRL style.

    The original used 200k steps, 30 envs x 64 steps, lr 2.5e-4, clip 0.4, ent 0.25, 4 epochs,
    30 minibatches on Python MiniGrid. On device we afford more envs and steps. The entropy
    bonus is what decides success: with a constant 0.1, one seed in four (and every seed at lr
    5e-4) settles on turning in place (return 0, safer than crashing) and never finds the goal;
    a constant 0.25 always learns but stays noisy (0.87-0.92). Annealing 0.25 -> 0.02 reached a
    sampled mean return of 0.938-0.944 on each of 8 seeds (8x8, max_steps 300), in ~30 s on a
    2-core CPU (15 s run + 13 s compile). See docs/data.md.
    """

    total_timesteps: int = 1_000_000
    """env steps of PPO training; all are recorded"""
    num_envs: int = 64
    """parallel envs (vmapped)"""
    num_steps: int = 128
    """rollout length per update"""
    lr: float = 1e-3
    """Adam learning rate (linearly annealed to 0 when anneal_lr)"""
    anneal_lr: bool = True
    """linear decay of the learning rate over training"""
    gamma: float = 0.99
    """discount"""
    gae_lambda: float = 0.95
    """GAE lambda"""
    clip_eps: float = 0.2
    """PPO ratio clip"""
    ent_coef: float = 0.25
    """entropy bonus at the start (the original's, constant there): explore to find the goal"""
    ent_coef_end: float = 0.02
    """entropy bonus at the last update, linear from ent_coef (= ent_coef: constant)"""
    vf_coef: float = 0.5
    """value loss weight"""
    max_grad_norm: float = 0.5
    """global gradient clip"""
    update_epochs: int = 4
    """epochs per update"""
    num_minibatches: int = 8
    """minibatches per epoch"""
    hidden: int = 64
    """MLP width (original: 64); with arch "gru", the width of the embedding, the GRU and the heads"""
    n_snapshots: int = 4
    """policy snapshots saved during training (for epsilon rollouts)"""
    arch: str = "mlp"
    """"mlp": separate actor and critic MLPs (Markov tasks); "gru": a recurrent actor-critic
    (dtjax.data.ppo_rnn, PureJaxRL's ppo_rnn) for tasks that need memory (Memory: the object seen
    at the start decides the turn at the junction); minibatches are then whole env sequences"""
    population: int = 1
    """with arch "gru": PPO runs trained one after another (one compilation), each from its own
    key; the one with the best greedy return on held-out episodes is kept (best-of-N selection, as
    in population-based training's exploit step; dtjax.data.ppo_rnn.train_best_of). A recurrent
    PPO on Memory sometimes never finds the memory (a coin flip at the junction): with a failure
    rate p per run, all N fail with probability p^N"""

    def validate(self) -> None:
        for n in ("total_timesteps", "num_envs", "num_steps", "update_epochs", "num_minibatches", "hidden"):
            _check(getattr(self, n) >= 1, f"ppo.{n} must be >= 1, got {getattr(self, n)}")
        _check(self.arch in PPO_ARCHS, f"ppo.arch must be one of {', '.join(PPO_ARCHS)}, got {self.arch!r}")
        _check(self.population >= 1 and (self.arch == "gru" or self.population == 1),
               f"ppo.population must be >= 1, and 1 unless ppo.arch is gru, got {self.population} with arch {self.arch!r}")
        _check(self.arch != "gru" or self.num_envs % self.num_minibatches == 0,
               f"ppo.num_envs ({self.num_envs}) must be divisible by ppo.num_minibatches ({self.num_minibatches}) with arch gru "
               "(minibatches are whole env sequences)")
        _check((self.num_envs * self.num_steps) % self.num_minibatches == 0,
               f"ppo.num_envs * ppo.num_steps ({self.num_envs * self.num_steps}) must be divisible by ppo.num_minibatches ({self.num_minibatches})")
        _check(self.total_timesteps >= self.num_envs * self.num_steps,
               f"ppo.total_timesteps ({self.total_timesteps}) must cover one update ({self.num_envs * self.num_steps} steps)")
        _check(self.lr > 0 and 0 < self.gamma <= 1 and 0 <= self.gae_lambda <= 1, "ppo.lr must be > 0 and gamma, gae_lambda in (0, 1]")
        _check(self.ent_coef >= 0 and self.ent_coef_end >= 0, f"ppo.ent_coef and ppo.ent_coef_end must be >= 0, got {self.ent_coef}, {self.ent_coef_end}")
        _check(self.n_snapshots >= 1, f"ppo.n_snapshots must be >= 1, got {self.n_snapshots}")

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // (self.num_envs * self.num_steps)


RTG_LABELS = ("realised", "group_mean", "hazard_mean", "blind_mean", "value_critic", "value_fitted", "q_fitted")  # DataConfig.rtg_label: what a step's RTG says (dtjax.data.relabel)


@dataclasses.dataclass(frozen=True)
class DataMixConfig(ConfigBase):
    """Which rollouts make up the dataset. Extra sources are sized as fractions of the PPO run's
    env steps (``ppo.total_timesteps``), so the mix keeps its shape when the PPO budget changes.

    Why this default. A Markov DT pi(a | RTG, s, t) copies, in each state, the actions that
    were followed by the conditioned return. At RTG +1 it needs many fast successes in every
    state a good agent visits: the final PPO policy (``final_*``, no epsilon: a good agent's
    crash would label good actions -1). At RTG -1 it needs crashes on purpose from the states it
    will be in; with the fixed start it crashes within ~5 steps, so uniform-random episodes from
    reset (``random_*``) plus the early PPO rollouts suffice. Measured with dtjax.train's
    defaults (docs/data.md): PPO rollouts alone give RTG -1 -> -0.91 (fails); adding random
    episodes gives -1.00. ``branch_*`` episodes (the final policy for a random number of steps,
    then uniform random, recorded from the branch point: crash-bound actions from good agents'
    states) also give -1.00 with shorter crashes, but RTG +1 drops late in a 30k-step DT run
    (0.95 up to 25k steps on every mix; at 30k 0.24-0.67 with branch data, 0.83-0.93 without),
    so they are off by default; use them for random-start variants or longer contexts. Earlier
    PPO snapshots (``snapshot_*``) add middling returns; off by default. ``wait_*`` episodes (the
    final policy after turning in place for a random number of steps) reach the goal at every
    speed, so every return in [0, 0.95] has data: the DT learns to wait until the return still
    reachable falls to its target (issue 20; docs/data.md). ``blind_*`` episodes (wait until near
    the time limit, then the final policy greedy and blind to the balls) fill (-0.9, 0) in
    expectation, with ``DataConfig.rtg_label`` "blind_mean". Both are off in these field defaults
    and on (0.3 each, with random_frac 0.2: more crashes from the start states keep RTG -1 at
    -1.00) in ``DataConfig``'s default mix, so ``python train.py`` uses them while a family's preset
    mix (Memory's) starts without them (docs/findings.md §12).
    """

    ppo_rollouts: bool = True
    """keep every transition of PPO training (all qualities, as the original)"""
    final_frac: float = 0.5
    """final policy, sampled, with final_eps random actions: fast successes"""
    final_eps: float = 0.0
    """epsilon of those rollouts (a crash of a good agent labels good actions -1)"""
    random_frac: float = 0.1
    """uniform random policy from reset: quick crashes from the start states"""
    branch_frac: float = 0.0
    """final policy, then uniform random from a random step on (recorded from there)"""
    branch_steps: int = 0
    """branch step drawn uniformly in [0, branch_steps); 0 = 4 * grid size"""
    snapshot_frac: float = 0.0
    """earlier PPO snapshots with snapshot_eps, split evenly between them"""
    snapshot_eps: float = 0.1
    """epsilon of the snapshot rollouts"""
    wait_frac: float = 0.0
    """final policy after turning in place for w ~ U{0..wait_steps-1} steps: successes at every speed,
    returns that fill [0, 0.95] (the goal reward falls with time). Alone, 0.3 cuts the calibration error
    from 0.26 to 0.10 (4 seeds) but leaves targets -0.3 ... +0.1 tied at a return of 0 (the DT waits
    to the time limit); with blind_frac 0.3 (DataConfig's default mix) the curve is strictly ordered
    (docs/findings.md §12)"""
    wait_steps: int = 0
    """longest wait of the wait rollouts; 0 = the env's max_steps"""
    hazard_frac: float = 0.0
    """uniform random play after turning in place for w ~ U{max_steps - hazard_window .. max_steps - 1}
    steps: a crash with a probability that grows with the time left, else a timeout (return 0); with
    rtg_label "hazard_mean" each wait's episodes are labelled their mean return, so targets in (-1, 0)
    have a behaviour that meets them in expectation (ESPER)"""
    hazard_window: int = 60
    """the hazard rollouts' waits span the last hazard_window steps of an episode"""
    blind_frac: float = 0.0
    """the final policy, greedy and blind to the obstacles (it sees the grid without balls), after
    turning in place for w ~ U{max_steps - blind_window .. max_steps - 1} steps: it heads for the goal
    and crashes when a ball is in its way, with a probability that grows with the time left; else a
    timeout (or a late goal). With rtg_label "blind_mean" each wait's episodes are labelled their mean
    return, so every target in (-0.7, 0) has a behaviour that meets it in expectation and that greedy
    play can copy: its randomness is the env's (the balls' moves), not the policy's (ESPER)"""
    blind_window: int = 20
    """the blind rollouts' waits span the last blind_window steps of an episode (the goal is ~17
    steps away: longer windows add late goals at 0.1 - 0.15)"""
    final_temp: float = 1.0
    """softmax temperature of the final-policy rollouts (logits / temp; 1 = the policy itself)"""
    tempered_frac: float = 0.0
    """final policy sampled at tempered_temp: the original's Memory data (--temp 20000 5) held
    right and wrong choices at the junction this way"""
    tempered_temp: float = 5.0
    """temperature of the tempered rollouts (original: 5)"""
    envs: int = 256
    """parallel envs of the extra rollouts (the rollout length follows from the steps)"""

    def validate(self) -> None:
        for n in ("final_frac", "random_frac", "branch_frac", "snapshot_frac", "wait_frac", "hazard_frac", "blind_frac", "tempered_frac"):
            _check(getattr(self, n) >= 0, f"data.mix.{n} must be >= 0, got {getattr(self, n)}")
        for n in ("final_temp", "tempered_temp"):
            _check(getattr(self, n) > 0, f"data.mix.{n} must be > 0, got {getattr(self, n)}")
        for n in ("final_eps", "snapshot_eps"):
            _check(0 <= getattr(self, n) <= 1, f"data.mix.{n} must be in [0, 1], got {getattr(self, n)}")
        _check(self.branch_steps >= 0, f"data.mix.branch_steps must be >= 0, got {self.branch_steps}")
        _check(0 <= self.wait_steps < 2**16, f"data.mix.wait_steps must be in [0, 65535], got {self.wait_steps}")
        _check(1 <= self.hazard_window < 2**16, f"data.mix.hazard_window must be in [1, 65535], got {self.hazard_window}")
        _check(1 <= self.blind_window < 2**16, f"data.mix.blind_window must be in [1, 65535], got {self.blind_window}")
        _check(self.envs >= 1, f"data.mix.envs must be >= 1, got {self.envs}")
        _check(self.ppo_rollouts or self.final_frac + self.random_frac + self.branch_frac + self.snapshot_frac + self.wait_frac + self.hazard_frac
               + self.blind_frac + self.tempered_frac > 0,
               "data.mix selects no rollouts at all (ppo_rollouts false and every fraction 0)")


@dataclasses.dataclass(frozen=True)
class DataConfig(ConfigBase):
    """What the DT learns from: the PPO behaviour policy, the mix of rollouts, and how windows
    are sampled from them (dtjax.data.collect, dtjax.data.dataset)."""

    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)
    """the behaviour policy's PPO training (every transition is recorded)"""
    mix: DataMixConfig = dataclasses.field(default_factory=lambda: DataMixConfig(random_frac=0.2, wait_frac=0.3, blind_frac=0.3))
    """which rollouts make up the dataset, as fractions of the PPO run's env steps. Default: DataMixConfig's
    fields with random_frac 0.2, wait_frac 0.3 and blind_frac 0.3 (with rtg_label "blind_mean": calibration
    error 0.258 -> 0.064, Spearman 0.991 -> 0.998, ends kept; 4 seeds, docs/findings.md §12). A partial mix
    (a family's presets, a --config file's data.mix) starts from DataMixConfig's own fields, without
    those three: Memory's data stays the original's"""
    pct_traj: float = 1.0
    """train on the best episodes (by return) holding this fraction of the steps"""
    prob_go_from_end: float = 0.1
    """probability a window ends at its episode's last step (original: 0.1)"""
    window_end: bool = False
    """windows end at a uniform transition, as the evaluation's window ends at the current step
    (False: they start there, as the original's); Memory's junction decision then sees the start room"""
    rtg_label: str = "blind_mean"
    """each step's RTG: "realised" (the episode's return-to-go, as the original) or "group_mean"
    (ESPER-style: the mean return of the behaviour that acted, free of the env's luck; dtjax.data.relabel)
    or "hazard_mean" / "blind_mean" (group means for the hazard / blind rollouts only, realised labels elsewhere);
    learned values (dtjax.data.value): "value_critic" / "value_fitted" (QDT's relabelling, max(V(s_t), r_t + R_t+1)
    backwards, with the final PPO critic / an offline-fitted V = max_a Q) or "q_fitted" (each step labelled
    Q(s_t, t, a_t), fitted offline). Default "blind_mean": the blind rollouts' labels must be their group means (a
    realised -1 or 0 promises no return in between); a dataset without blind rollouts gets realised labels"""

    def validate(self) -> None:
        _check(self.rtg_label in RTG_LABELS, f"data.rtg_label must be one of {', '.join(RTG_LABELS)}, got {self.rtg_label!r}")
        _check(0 < self.pct_traj <= 1, f"data.pct_traj must be in (0, 1], got {self.pct_traj}")
        _check(0 <= self.prob_go_from_end <= 1, f"data.prob_go_from_end must be in [0, 1], got {self.prob_go_from_end}")


@dataclasses.dataclass(frozen=True)
class CollectConfig(ConfigBase):
    """A standalone collection job (``python -m dtjax.data collect``); TrainConfig has the same
    env / seed / data fields, so ``collect_dataset`` accepts either."""

    env: EnvConfig = dataclasses.field(default_factory=EnvConfig)
    """the env (obs_mode: what the PPO sees; the stored compact states serve every mode)"""
    seed: int = 0
    """recorded in the metadata; collect_dataset takes its key explicitly"""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    """the behaviour data: PPO, the mix of rollouts, window sampling"""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CollectConfig":
        return super().from_dict(_lift_env(d, ("env_id", "max_steps", "obs_mode"), None))


_SUBCONFIGS[("DataConfig", "ppo")] = PPOConfig
_SUBCONFIGS[("DataConfig", "mix")] = DataMixConfig
_SUBCONFIGS[("CollectConfig", "data")] = DataConfig
_SUBCONFIGS[("CollectConfig", "env")] = EnvConfig

# ---------------------------------------------------------------------------------------------
# TRAINING (dtjax.train)
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainConfig(ConfigBase):
    """The whole job of `python train.py`: data, DT training, evaluation, calibration, checkpoints."""

    run_name: str = "default"
    """run directory is <checkpoint_dir>/<run_name>"""
    checkpoint_dir: str = "checkpoints"
    """where run directories go"""
    seed: int = 0
    """one seed for everything (data, init, batches, evaluation)"""
    env: EnvConfig = dataclasses.field(default_factory=EnvConfig)
    """collected in, trained for, evaluated in (obs_mode = model.obs_mode)"""
    dataset: str = ""
    """an existing dataset directory to train on; empty = collect one"""
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    """the Decision Transformer trained (on resume, the saved run's wins)"""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    """the behaviour data collected when no dataset is given, and how windows are sampled"""
    optimizer: str = "adamw"
    """"adamw" (decoupled decay) or "adam_l2" (the original's torch Adam + L2)"""
    lr: float = 1e-3
    """peak learning rate; the original used 1e-4 constant for 6k-126k steps, too slow for a 10-minute CPU budget"""
    lr_schedule: str = "cosine"
    """"cosine" (warmup, then decay to 0: a stable final model) or "constant" (the original)"""
    warmup_steps: int = 1_000
    """linear warmup steps of the cosine schedule"""
    weight_decay: float = 1e-3
    """the original's weight decay"""
    grad_clip: float = 0.0
    """global-norm gradient clip; 0 = off (the original had none)"""
    batch_size: int = 128
    """the original's batch size; split over all devices"""
    num_steps: int = 15_000
    """optimizer steps (the RTG +1 return peaks from ~5k steps; longer runs drifted, docs/data.md)"""
    log_every: int = 500
    """steps per jitted chunk and per metrics line"""
    eval_every: int = 2_500
    """steps between in-loop evaluations (0 = only at the end)"""
    eval_episodes: int = 100
    """episodes per target RTG during training"""
    final_eval_episodes: int = 500
    """episodes per target RTG in the final evaluation"""
    eval_rtgs: tuple[float, ...] = (-1.0, 0.0, 1.0)
    """target RTGs evaluated"""
    calib_points: int = 21
    """target RTGs in the calibration sweep, evenly over the task's return range ([-1, 1] in Dynamic Obstacles)"""
    calib_se: float = 0.03
    """play each calibration point until its mean return has this standard error (0 = calib_episodes each)"""
    calib_min_episodes: int = 100
    """episodes per calibration point at least (a point with no spread stops here)"""
    calib_episodes: int = 1000
    """episodes per calibration point at most (std 1 needs (1/0.03)^2 ~ 1100 for SE 0.03)"""
    eval_pool: int = 256
    """episodes played at once by every evaluation (speed and memory only; measured 256 ~ 512 > 1024 on 2 CPU cores)"""
    num_seeds: int = 1
    """DTs trained together in one vmapped loop: seed k uses seed + k, writes <run>/seed_k/ (1 = one run in <run>/)"""
    seed_datasets: bool = False
    """with num_seeds > 1: one dataset per seed (collected with its seed) instead of one shared"""
    ckpt_every: int = 2_500
    """steps between checkpoints"""
    keep_checkpoints: int = 3
    """orbax max_to_keep: the latest steps kept (besides the keep_every ones)"""
    keep_every: int = 0
    """also save and keep forever every checkpoint whose step is a multiple of this, and step 0 (the init):
    the checkpoints of a training-dynamics analysis (analyse.py --dynamics); a multiple of log_every; 0 = off"""
    wandb_project: str = ""
    """log to Weights & Biases too when set and wandb is installed"""

    def validate(self) -> None:
        _check(isinstance(self.num_seeds, int) and not isinstance(self.num_seeds, bool), f"num_seeds must be an integer, got {self.num_seeds!r}")
        _check(bool(self.run_name) and "/" not in self.run_name and self.run_name not in (".", ".."),
               f"run_name must be a plain directory name, got {self.run_name!r}")
        _check(self.optimizer in ("adamw", "adam_l2"), f"optimizer must be 'adamw' or 'adam_l2', got {self.optimizer!r}")
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(self.lr_schedule in ("cosine", "constant"), f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        _check(0 <= self.warmup_steps < self.num_steps, f"warmup_steps must be in [0, num_steps), got {self.warmup_steps}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.env.obs_mode == self.model.obs_mode,
               f"env.obs_mode ({self.env.obs_mode}) must equal model.obs_mode ({self.model.obs_mode}): the DT reads the "
               "env's observations (train.py's --model.obs_mode sets both)")
        for n in ("batch_size", "num_steps", "log_every", "eval_episodes", "final_eval_episodes", "calib_points",
                  "calib_episodes", "calib_min_episodes", "eval_pool", "num_seeds", "ckpt_every", "keep_checkpoints"):
            _check(getattr(self, n) >= 1, f"{n} must be >= 1, got {getattr(self, n)}")
        _check(self.num_steps % self.log_every == 0, f"num_steps ({self.num_steps}) must be a multiple of log_every ({self.log_every})")
        _check(self.ckpt_every % self.log_every == 0, f"ckpt_every ({self.ckpt_every}) must be a multiple of log_every ({self.log_every})")
        _check(self.keep_every >= 0 and self.keep_every % self.log_every == 0,
               f"keep_every ({self.keep_every}) must be 0 or a multiple of log_every ({self.log_every})")
        _check(self.eval_every % self.log_every == 0, f"eval_every ({self.eval_every}) must be a multiple of log_every ({self.log_every})")
        _check(len(self.eval_rtgs) >= 1, "eval_rtgs must not be empty")
        _check(self.calib_se >= 0, f"calib_se must be >= 0 (0 = a fixed calib_episodes per point), got {self.calib_se}")
        _check(isinstance(self.seed_datasets, bool), f"seed_datasets must be true or false, got {self.seed_datasets!r}")
        _check(self.model.max_timestep >= self.env.max_steps - 1,
               f"model.max_timestep ({self.model.max_timestep}) must cover the env's timesteps (env.max_steps - 1 = {self.env.max_steps - 1})")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        model = d.get("model") if isinstance(d.get("model"), dict) else {}
        return super().from_dict(_lift_env(d, ("env_id", "max_steps"), model.get("obs_mode", "image")))


_SUBCONFIGS[("TrainConfig", "model")] = ModelConfig
_SUBCONFIGS[("TrainConfig", "data")] = DataConfig
_SUBCONFIGS[("TrainConfig", "env")] = EnvConfig
