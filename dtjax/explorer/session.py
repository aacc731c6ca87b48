"""One explorer session: the env being played, its history, the controls, and the jitted steps.

A browser tab is one ``Session``. Its state is plain data: the history of the episode (one
``Step`` per env step: state, observation, action, reward), the index of the step on screen, and
the controls (target RTG, timestep adjustment, logit direction, ablation set, sampling). Every
message is one call of ``Session.handle(msg) -> list of replies``; the numbers come from one jitted
function, compiled once per model shape (and env), with every control passed as *data*
(``Controls``: a new RTG, direction or ablation set never recompiles):

- ``explore_step``: the model's own choice (greedy or sampled, with the ablations on), one
  ``env.step``, the context window pushed as closed-loop evaluation pushes it, then ``_panels``
  -- or, for a control change or a step of the history, ``_panels`` alone (``NO_STEP``: the same
  compiled function, so a model compiles once);
- ``_panels``: ``dtjax.analysis`` on the current context: ``state_panels`` (probabilities,
  attention, DLA, state-encoder activation map), ``ablation_set_panel`` (the toggled ablations),
  ``ablation_panel`` (each component alone), ``rtg_scan_panel`` (one vmap over the RTG).

Weights-only maps (``analysis.weight_panels``) are recomputed only when the direction changes;
activation patching (``analysis.patching_panel``) and closed-loop episodes
(``analysis.closed_loop_panel``) run on request, off the key-press path (``Deferred``).

Context (K timesteps), as ``dtjax.evaluate`` builds it: the last K steps of the episode,
left-padded with a zero observation, RTG 0 (the target for a model with ``pad_rtg="initial"``,
the original MemoryDT), timestep 0 and the padding action; the RTG token of
step j is the target minus the rewards collected before it; the timestep token is the env's step
count plus the timestep adjustment.

Randomness: ``seed`` -> ``k_reset, k_env, k_act = split(PRNGKey(seed), 3)``; reset uses
``k_reset``; step j (0-based, from the episode's first state) uses ``fold_in(k_env, j)`` for the
env and ``fold_in(k_act, j)`` for a sampled action. The same seed and actions replay the same
episode, and stepping back then acting again branches deterministically.

The task (``env.task``) says what is task-specific: the actions and their keys, the objects to
draw and edit, the outcome names (each step's outcome is the env's own ``info["outcome"]``), the
scenarios and the default logit direction; the page receives them in the ``init`` message
(``task``). Balls (grid edits, the "ball" corruption) exist only in a task with balls.

Grid edits: a removed ball is parked at ``PARK`` = (-1, -1), outside the grid, where every cell
around it is off-grid (a wall): it is never seen, never blocks and never moves, so the env plays
exactly as one with fewer balls. (``dtjax.scenarios`` parks at (0, 0), fine for observing but a
ball there can step into (1, 1); scenario states are re-parked here.)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

import envs
from envs import minigrid as mg
from envs.dynamic_obstacles import PARKED as DO_PARKED  # where Dynamic Obstacles' scenarios park unused balls
from dtjax import analysis as A
from dtjax import circuits as C
from dtjax import scenarios as S
from dtjax.config import EnvConfig, ModelConfig
from dtjax.evaluate import env_step, push_step
from dtjax.explorer import memory as explorer_memory
from dtjax.explorer import probes as explorer_probes
from dtjax.explorer import sae as explorer_sae
from dtjax.run import Run

PARK = (-1, -1)  # off the grid: a parked ball is invisible, never blocks and never moves
N_SCAN = 101  # RTG scan points over the slider's range
RTG_RANGE, RTG_RANGE_EXTRAPOLATE = 1.0, 10.0
MEAN_SAMPLES = 256  # rollout states for mean ablation
CORRUPTIONS = {"rtg": "RTG -> -RTG", "front": "the front cell emptied", "ball": "one ball removed"}  # "ball": tasks with balls
MAX_EPISODES = 1000


class BadMessage(ValueError):
    """A message the session cannot apply; its text (one line) is shown in the page."""


# ---------------------------------------------------------------------------------------------
# PURE PIECES (jittable)
# ---------------------------------------------------------------------------------------------


@struct.dataclass
class Window:
    """The model's context at one step: the last K timesteps, oldest first, left-padded.

    obs (K, 7, 7, C) uint8; cumrew (K,) float32: reward collected before each timestep;
    time (K,) int32: the env's step count; actions (K,) int32: the action taken at each timestep
    (the padding action ``n_actions`` at padded and at the current slot); valid (K,) bool.
    """

    obs: Any
    cumrew: Any
    time: Any
    actions: Any
    valid: Any


@struct.dataclass
class Controls:
    """Every control as an array, so changing one never recompiles.

    rtg () the target RTG; t_adjust () int added to the timestep tokens; v (n_actions,) the logit
    direction; abl_z (layer, head), abl_mlp (layer,) bool: the ablation set; abl_mean () bool: mean
    (True) or zero ablation; scan_rtgs (N_SCAN,); greedy () bool; temperature () float.
    """

    rtg: Any
    t_adjust: Any
    v: Any
    abl_z: Any
    abl_mlp: Any
    abl_mean: Any
    scan_rtgs: Any
    greedy: Any
    temperature: Any

    @property
    def masks(self) -> dict:
        return {"z": self.abl_z, "mlp": self.abl_mlp}


def model_inputs(window: Window, ctrl: Controls, cfg: ModelConfig) -> C.Inputs:
    """``circuits.Inputs`` (batch 1) of a window: RTG = target - reward so far, timestep = step
    count + adjustment, padding (RTG 0, or the target for ``cfg.pad_rtg == "initial"``; timestep 0)
    where not valid; K-1 action tokens."""
    pad_rtg = ctrl.rtg if cfg.pad_rtg == "initial" else 0.0  # the episode's initial RTG is the target
    rtg = jnp.where(window.valid, ctrl.rtg - window.cumrew, pad_rtg).astype(jnp.float32)
    ts = jnp.where(window.valid, window.time + ctrl.t_adjust, 0).astype(jnp.int32)
    actions = jnp.asarray(window.actions)[None, :-1] if cfg.n_timesteps > 1 else None
    return C.Inputs(obs=jnp.asarray(window.obs)[None], rtg=rtg[None], timesteps=ts[None], actions=actions)


def push(window: Window, action, obs, cumrew, time_, pad_action: int) -> Window:
    """The window after acting ``action`` at its current step and arriving at ``obs``
    (``dtjax.evaluate.push_step``, as closed-loop evaluation moves its window)."""
    return push_step(window, action, pad_action, obs=obs, cumrew=cumrew, time=time_, valid=True)


def view_objects(obs: jax.Array) -> jax.Array:
    """MiniGrid object index (7, 7) [x, y] of each view cell (raw codes or one-hot)."""
    obs = jnp.asarray(obs)
    return obs[..., :11].argmax(-1).astype(jnp.int32) if obs.shape[-1] == mg.N_ONE_HOT else obs[..., 0].astype(jnp.int32)


IDX_TO_OBJECT = {i: name for name, i in mg.OBJECT_TO_IDX.items()}
IDX_TO_COLOR = {i: name for name, i in mg.COLOR_TO_IDX.items()}
AGENT_VIEW_CELL = (mg.VIEW_SIZE // 2, mg.VIEW_SIZE - 1)  # [x, y] of the agent in its own view


def grid_cells(env, state) -> np.ndarray | None:
    """(size, size, 2) int [x, y]: MiniGrid (object, colour) code of every cell of ``state``
    (``env.grid``'s cell types through ``envs.minigrid.CELL_CODES``; the agent is not a cell)."""
    if not hasattr(env, "grid"):
        return None
    types = np.asarray(_grid(env, jax.tree.map(jnp.asarray, state)))
    return mg.CELL_CODES[types][..., :2].astype(np.int32)


def view_colours(obs: np.ndarray) -> np.ndarray:
    """MiniGrid colour code (7, 7) [x, y] of each view cell (raw codes or one-hot), numpy."""
    obs = np.asarray(obs)
    if obs.shape[-1] == mg.N_ONE_HOT:
        n_obj = len(mg.OBJECT_TO_IDX)
        return obs[..., n_obj:n_obj + len(mg.COLOR_TO_IDX)].argmax(-1)
    return obs[..., 1]


def carried(obs: np.ndarray) -> dict | None:
    """The object the agent carries, as its observation shows it (MiniGrid draws a carried object
    on the agent's own view cell (3, 6): Memory's fork; empty in every other family): ``{"object",
    "colour"}`` names, or None."""
    obs = np.asarray(obs)
    cell = obs[AGENT_VIEW_CELL]
    if obs.shape[-1] == mg.N_ONE_HOT:
        n_obj, n_col = len(mg.OBJECT_TO_IDX), len(mg.COLOR_TO_IDX)
        obj, col = int(cell[:n_obj].argmax()), int(cell[n_obj:n_obj + n_col].argmax())
    else:
        obj, col = int(cell[0]), int(cell[1])
    if obj in (mg.OBJECT_TO_IDX["unseen"], mg.OBJECT_TO_IDX["empty"]):
        return None
    return {"object": IDX_TO_OBJECT.get(obj, str(obj)), "colour": IDX_TO_COLOR.get(col, str(col))}


def _panels(params, cfg: ModelConfig, means: dict, window: Window, ctrl: Controls, sae_cfgs: tuple = (),
            sae_arrays: tuple = ()) -> dict:
    inp = model_inputs(window, ctrl, cfg)
    sp = A.state_panels(params, cfg, inp, ctrl.v)
    ab = A.ablation_set_panel(params, cfg, inp, ctrl.v, ctrl.masks, means, ctrl.abl_mean)
    each = A.ablation_panel(params, cfg, inp, "mean", A.ablation_values(means, ctrl.abl_mean))
    scan = A.rtg_scan_panel(params, cfg, inp, ctrl.scan_rtgs, ctrl.v)
    return {
        "probs": sp["probs"][0], "logits": sp["logits"][0], "pattern": sp["pattern"][:, 0],
        "attn_to_rtg": sp["attn_to_rtg"][:, 0], "dla": sp["dla"][0], "logit_diff": sp["logit_diff"][0],
        "state_encoder": sp["state_encoder"][0],
        "ablated_probs": ab["probs"][0], "ablated_logits": ab["logits"][0], "ablated_dla": ab["dla"][0],
        "ablated_logit_diff": ab["logit_diff"][0], "each_probs": each["probs"][:, 0],
        "scan_rtg": scan["rtg"], "scan_logits": scan["logits"][0], "scan_probs": scan["probs"][0],
        "scan_dla": scan["dla"][0], "scan_attn": scan["attn_to_rtg"][0],
        "rtg_token": inp.rtg[0, -1], "timestep_token": inp.timesteps[0, -1], "view": view_objects(window.obs[-1]),
        "sae": explorer_sae.latents_panel(params, cfg, inp, sae_cfgs, sae_arrays, ctrl.v),
    }


NO_STEP, MODEL_ACTS = -2, -1  # explore_step's ``action`` besides an env action


@functools.partial(jax.jit, static_argnames=("cfg", "env", "sae_cfgs"))
def explore_step(params, cfg: ModelConfig, env, env_params, means: dict, state: envs.EnvState, window: Window,
                 ctrl: Controls, action, k_act, k_env, sae_cfgs: tuple = (), sae_arrays: tuple = ()) -> dict:
    """One message: act, step the env, analyse -- or, with ``action == NO_STEP``, analyse only.

    ``action``: an env action (>= 0), ``MODEL_ACTS`` (-1: the model's choice, using the model as
    shown, i.e. with the ablation set on: argmax when ``ctrl.greedy``, else a sample from
    softmax(logits / temperature) with ``k_act``) or ``NO_STEP`` (-2: a control change, or a step
    of the history on screen). The env steps as ``env.step(k_env, ...)`` does, without the
    auto-reset: the returned state and observation are the step's own (``info["final_state"]``).
    One function for both kinds of message, so each model shape (and env) compiles once.

    Returns ``action``, ``state``, ``obs``, ``reward``, ``terminated``, ``truncated``,
    ``outcome`` (the env's ``info["outcome"]``, an index into ``env.task.outcomes``; 0 with NO_STEP),
    ``details`` (the task's ``info`` flags, e.g. ``hit_wall``), the new ``window`` and its
    ``panels`` (see ``_panels``); with NO_STEP the state and window are the ones given.
    ``sae_cfgs`` (static) and ``sae_arrays``: the model's sparse dictionaries (``explorer.sae``),
    whose most active latents are ``panels["sae"]``.
    """
    now = A.ablation_set_panel(params, cfg, model_inputs(window, ctrl, cfg), ctrl.v, ctrl.masks, means, ctrl.abl_mean)
    logits = now["logits"][0]
    sampled = jax.random.categorical(k_act, logits / ctrl.temperature)
    a = jnp.where(action >= 0, action, jnp.where(ctrl.greedy, jnp.argmax(logits), sampled)).astype(jnp.int32)
    # env.step without its auto-reset (never shown: an ended episode stays on screen): its key split
    # (the step key first, the reset key second) and its step_env, so the same keys give the same step
    obs, new_state, reward, term, trunc, info = env_step(env, k_env, state, a, env_params)
    stepped = push(window, a, obs, window.cumrew[-1] + reward, new_state.time, cfg.n_actions)
    do = action != NO_STEP
    pick = lambda new, old: jax.tree.map(lambda x, y: jnp.where(do, x, y), new, old)  # noqa: E731
    w = pick(stepped, jax.tree.map(jnp.asarray, window))
    return {"action": a, "state": pick(new_state, state), "obs": obs,
            "reward": jnp.where(do, reward, 0.0), "terminated": do & term, "truncated": do & trunc,
            "outcome": jnp.where(do, info["outcome"], 0), "details": {d: do & info[d] for d in env.task.details},
            "window": w, "panels": _panels(params, cfg, means, w, ctrl, sae_cfgs, sae_arrays)}


@functools.partial(jax.jit, static_argnames=("env",))
def _observe(env, state):
    return env.observe(state)


@functools.partial(jax.jit, static_argnames=("env",))
def _grid(env, state):
    return env.grid(state)


def episode_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(k_reset, k_env, k_act) of an episode (see the module docstring)."""
    k_reset, k_env, k_act = jax.random.split(jax.random.PRNGKey(seed), 3)
    return k_reset, k_env, k_act


# ---------------------------------------------------------------------------------------------
# A LOADED MODEL (shared by sessions)
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Model:
    """A model ready to explore: config, params, its env, and mean-ablation references.

    The reference means (``circuits.ablation_means`` over ``mean_samples`` random-policy rollout
    windows of the env, ``analysis.reference_inputs``: the report's reference, 3K tokens; the
    explorer's 3K-1 tokens read the first 3K-1) are computed on first use (``get_means``): until
    then zero ablation runs on zeros of the same shapes, so computing them never recompiles the step.
    """

    name: str
    path: str
    cfg: ModelConfig
    params: Any
    env_cfg: EnvConfig
    mean_samples: int = MEAN_SAMPLES
    compile_s: float = 0.0
    saes: list = dataclasses.field(default_factory=list)  # explorer.sae.ExplorerSAE: the active-latents panel
    probes: Any = None  # explorer.probes.ExplorerProbes, fitted on the first "probes" message
    memory: Any = None  # explorer.memory.Tables of a Memory model, computed on first use (memory_tables)
    _means: dict | None = dataclasses.field(default=None, repr=False)
    _lock: Any = dataclasses.field(default_factory=threading.Lock, repr=False)

    def __post_init__(self):
        if self.env_cfg.obs_mode != self.cfg.obs_mode:
            self.env_cfg = self.env_cfg.replace(obs_mode=self.cfg.obs_mode)
        k = self.cfg.n_timesteps
        dummy = C.Inputs(obs=np.zeros((1, k) + self.cfg.obs_shape, np.uint8), rtg=np.zeros((1, k), np.float32),
                         timesteps=np.zeros((1, k), np.int32),
                         actions=None if k == 1 else np.full((1, k if self.cfg.pos_rows >= 3 * k else k - 1),
                                                             self.cfg.n_actions, np.int32))
        shapes = jax.eval_shape(lambda p, i: C.ablation_means(p, self.cfg, i), self.params, dummy)
        self.zero_means = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)

    @classmethod
    def load(cls, path, name: str | None = None, warm: bool = True, sae_dirs=(), log=None, **kw) -> "Model":
        """The model at ``path`` (``dtjax.run.Run.open``; LoadError if it does not open) with its
        dictionaries (``sae_dirs`` and those under the run's ``sae/``: ``explorer.sae.load_all``),
        compiled for its env unless ``warm=False``."""
        run = Run.open(path).require_model()
        saes = explorer_sae.load_all(run, run.model_cfg, run.params, sae_dirs, log)
        model = cls(name=name or run.name, path=str(path), cfg=run.model_cfg, params=run.params, env_cfg=run.env_cfg,
                    saes=saes, **kw)
        if warm:
            model.compile_s = model.warm_up()
        return model

    def get_means(self) -> dict:
        """The mean-ablation references (computed once, thread-safe)."""
        with self._lock:
            if self._means is None:
                ref = A.reference_inputs(jax.random.PRNGKey(0), self.mean_samples, self.cfg, self.env_cfg)
                self._means = jax.device_get(C.ablation_means(self.params, self.cfg, ref))
            return self._means

    def memory_tables(self) -> "explorer_memory.Tables":
        """The MemoryDT write-up's adversary table and instruction feature (computed once, thread-safe)."""
        with self._lock:
            if self.memory is None:
                self.memory = explorer_memory.tables(self.params, self.cfg)
            return self.memory

    def sae_args(self) -> tuple[tuple, tuple]:
        """(static configs, traced arrays) of the dictionaries for ``explore_step``."""
        return tuple(s.cfg for s in self.saes), tuple(s.arrays for s in self.saes)

    def warm_up(self, env_cfg: EnvConfig | None = None) -> float:
        """Compile ``explore_step`` and the weight maps for ``env_cfg``; seconds."""
        t0 = time.perf_counter()
        s = Session(self, env_cfg=env_cfg)
        s.start()
        s.handle({"type": "act", "action": 0})
        return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# THE SESSION (mutable shell around the pure pieces)
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Step:
    """One step of the episode: the state arrived at, and what happened on the way."""

    state: envs.EnvState  # numpy leaves
    obs: np.ndarray
    cumrew: float  # reward collected up to and including the transition into this step
    reward: float = 0.0  # reward of the transition into this step
    action: int | None = None  # action taken at this step (None: not yet)
    outcome: str = "running"  # "running", or how the episode ended at this step (a task outcome)
    details: dict = dataclasses.field(default_factory=dict)  # the task's flags of that ending (hit_wall)
    edited: bool = False  # obs is not the state's own observation (a loaded adversary's painted frame)

    @property
    def wall(self) -> bool:  # the hit was into a wall (Dynamic Obstacles)
        return bool(self.details.get("hit_wall", False))

    @property
    def time(self) -> int:
        return int(self.state.time)


@dataclasses.dataclass
class Deferred:
    """Work off the key-press path: ``compute()`` (pure; run in a worker thread) -> a reply dict."""

    compute: Callable[[], dict]
    kind: str


def _num(x, name: str, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise BadMessage(f"{name} must be a finite number, got {x!r}")
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        raise BadMessage(f"{name} must be in [{lo:g}, {hi:g}], got {x:g}")
    return float(x)


def _int(x, name: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise BadMessage(f"{name} must be an integer, got {x!r}")
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        raise BadMessage(f"{name} must be in [{lo}, {hi}], got {x}")
    return x


def _bool(x, name: str) -> bool:
    if not isinstance(x, bool):
        raise BadMessage(f"{name} must be true or false, got {x!r}")
    return x


def _action(x, names: tuple[str, ...], name: str = "action") -> int:
    """An env action from an index or one of the task's action ``names`` ("left", "right", "forward")."""
    if isinstance(x, str) and x in names:
        return names.index(x)
    if isinstance(x, int) and not isinstance(x, bool) and 0 <= x < len(names):
        return x
    raise BadMessage(f"unknown {name} {x!r}; actions are 0-{len(names) - 1} or {', '.join(names)}")


def channel_names(obs_mode: str) -> list[str]:
    """Names of the observation channels (image: object, colour, state; one-hot: each bit)."""
    if obs_mode == "one_hot":
        return ([f"obj:{k}" for k in mg.OBJECT_TO_IDX] + [f"colour:{k}" for k in mg.COLOR_TO_IDX]
                + [f"state:{k}" for k in mg.STATE_TO_IDX])
    return ["object", "colour", "state"]


def default_channels(obs_mode: str, objects: tuple[str, ...]) -> list[int]:
    """The channels that vary in a task with ``objects``: raw object and colour codes, or the
    one-hot bit of each object (empty, wall, ball, goal for Dynamic Obstacles)."""
    if obs_mode == "one_hot":
        return sorted(mg.OBJECT_TO_IDX[o] for o in objects)
    return [0, 1]


def patch_hooks(cfg: ModelConfig, inputs: C.Inputs) -> list[str]:
    """The patching heatmap's default rows: the embeddings, then per layer the residual stream
    before it, each head's ``hook_z`` and attention pattern, the attention and MLP outputs and the
    residual after it (``hooks="all"``: every hook, q/k/v, scores, MLP neurons and LN scales too)."""
    names = ["hook_rtg_embed", "hook_state_embed"] + (["hook_action_embed"] if inputs.actions is not None else [])
    names.append("hook_time_embed")
    for l in range(cfg.n_layers):
        names += [f"blocks.{l}.hook_resid_pre", f"blocks.{l}.attn.hook_z", f"blocks.{l}.attn.hook_pattern",
                  f"blocks.{l}.hook_attn_out"] + ([] if cfg.attn_only else [f"blocks.{l}.hook_mlp_out"])
        names.append(f"blocks.{l}.hook_resid_post")
    return names


def shape_notes(cfg: ModelConfig) -> dict[str, str]:
    """What a panel does not show for this model's shape (empty when everything applies)."""
    notes = {}
    if cfg.attn_only:
        notes["ablation"] = "attention-only model: no MLP to ablate."
    if cfg.layer_norm:
        notes["state-encoder"] = ("LayerNorm model: the activation map is the direct write before ln_final, so it "
                                  "does not sum to the DLA's embed_state entry.")
    if cfg.n_layers > 1:
        notes["qk"] = notes["ov"] = ("layers > 0: the direct path from the embeddings only (composition with "
                                     "earlier layers is not included).")
    if cfg.n_timesteps > 1:
        notes["attention"] = (f"context of {cfg.n_timesteps} timesteps: tokens R, s, a per timestep, padded at the "
                              f"start of an episode (zero obs, RTG 0, timestep 0, padding action).")
    if cfg.time_embedding == "linear":
        notes["timestep"] = "linear time embedding: timesteps outside training are extrapolated."
    return notes


class Session:
    """One browser tab. ``handle(msg)`` applies one message and returns the replies to send."""

    def __init__(self, model: Model, env_cfg: EnvConfig | None = None, seed: int = 0, catalog=None):
        self.catalog = catalog
        self.ctl = {"rtg": 0.9, "extrapolate": False, "t_adjust": 0, "direction": None,
                    "greedy": True, "temperature": 1.0, "ablate": [], "kind": "zero", "head": (0, 0),
                    "channels": None, "coef": None}
        self._install(model, env_cfg)
        self._reset(seed)

    # -- model and env ---------------------------------------------------------------------
    def _install(self, model: Model, env_cfg: EnvConfig | None = None) -> None:
        self.model = model
        self.cfg = model.cfg
        self.env_cfg = (env_cfg or model.env_cfg).replace(obs_mode=model.cfg.obs_mode)
        self.env, self.env_params = self.env_cfg.make()
        self.task = self.env.task
        if self.ctl["direction"] is None or not set(self.ctl["direction"]) - {None} <= set(self.task.action_names):
            self.ctl["direction"] = tuple(self.task.direction)
        self.balls = S.has_balls(self.task)
        self.ctl["ablate"] = [n for n in self.ctl["ablate"] if n in A.ablation_labels(self.cfg)]
        l, h = self.ctl["head"]
        self.ctl["head"] = (min(l, self.cfg.n_layers - 1), min(h, self.cfg.n_heads - 1))
        self.ctl["channels"] = default_channels(self.cfg.obs_mode, self.task.objects)
        self.memory_why = explorer_memory.undefined(self.cfg, self.task, self.env.size)  # None: the Memory card applies

    def _reset(self, seed: int) -> None:
        self.seed = seed
        self.keys = episode_keys(seed)
        obs, state = self.env.reset(self.keys[0], self.env_params)
        self._start(state, obs)

    def _start(self, state, obs) -> None:
        self.history = [Step(state=jax.device_get(state), obs=np.asarray(obs), cumrew=0.0)]
        self.cursor = 0

    # -- controls and windows --------------------------------------------------------------
    def means(self) -> dict:
        """The replacement references of the ablation kind chosen (zeros for zero ablation)."""
        return self.model.get_means() if self.ctl["kind"] == "mean" else self.model.zero_means

    def controls(self) -> Controls:
        cfg, ctl = self.cfg, self.ctl
        masks = A.ablation_set_masks(cfg, ctl["ablate"])
        span = RTG_RANGE_EXTRAPOLATE if ctl["extrapolate"] else RTG_RANGE
        names = self.task.action_names
        pos, neg = (None if a is None else names.index(a) for a in ctl["direction"])
        return Controls(rtg=np.float32(ctl["rtg"]), t_adjust=np.int32(ctl["t_adjust"]),
                        v=np.asarray(C.action_vector(pos if neg is None else (pos, neg), cfg.n_actions)),
                        abl_z=masks["z"], abl_mlp=masks["mlp"], abl_mean=np.bool_(ctl["kind"] == "mean"),
                        scan_rtgs=np.linspace(-span, span, N_SCAN, dtype=np.float32), greedy=np.bool_(ctl["greedy"]),
                        temperature=np.float32(ctl["temperature"]))

    def window(self, i: int | None = None) -> Window:
        """The context window at history step ``i`` (default: the step on screen), numpy."""
        i = self.cursor if i is None else i
        k = self.cfg.n_timesteps
        steps = self.history[max(0, i - k + 1): i + 1]
        pad = k - len(steps)
        obs = np.zeros((k,) + self.cfg.obs_shape, np.uint8)
        cumrew, t = np.zeros(k, np.float32), np.zeros(k, np.int32)
        acts, valid = np.full(k, self.cfg.n_actions, np.int32), np.zeros(k, bool)
        for j, s in enumerate(steps):
            obs[pad + j], cumrew[pad + j], t[pad + j], valid[pad + j] = s.obs, s.cumrew, s.time, True
            if j < len(steps) - 1:
                acts[pad + j] = s.action
        return Window(obs=obs, cumrew=cumrew, time=t, actions=acts, valid=valid)

    def _explore(self, j: int, action: int) -> dict:
        """``explore_step`` at history step ``j`` (numpy results)."""
        sae_cfgs, sae_arrays = self.model.sae_args()
        return jax.device_get(explore_step(self.model.params, self.cfg, self.env, self.env_params, self.means(),
                                           self.history[j].state, self.window(j), self.controls(), np.int32(action),
                                           jax.random.fold_in(self.keys[2], j), jax.random.fold_in(self.keys[1], j),
                                           sae_cfgs=sae_cfgs, sae_arrays=sae_arrays))

    def inputs(self, i: int | None = None, ctrl: Controls | None = None) -> C.Inputs:
        """The model inputs at step ``i`` (default: on screen) under the current controls."""
        return jax.device_get(model_inputs(self.window(i), ctrl or self.controls(), self.cfg))

    # -- messages --------------------------------------------------------------------------
    def start(self) -> list:
        """The replies of a new connection: ``init``, ``weights``, then the current step."""
        return [self.init_message(), self.weights(), *self.update()]

    def handle(self, msg) -> list:
        """Apply one message (a dict, or its JSON text); bad ones give an ``error`` reply."""
        seq = None
        try:
            if isinstance(msg, (str, bytes)):
                import json

                try:
                    msg = json.loads(msg)
                except (ValueError, UnicodeDecodeError) as e:
                    raise BadMessage(f"bad JSON: {str(e).splitlines()[0][:120]}") from None
            if not isinstance(msg, dict):
                raise BadMessage(f"a message is a JSON object, got {type(msg).__name__}")
            seq = msg.get("seq")
            kind = msg.get("type")
            fn = getattr(self, f"_on_{kind}", None) if isinstance(kind, str) else None
            if fn is None:
                raise BadMessage(f"unknown message type {kind!r}; types: {', '.join(self.message_types())}")
            replies = fn(msg)
        except BadMessage as e:
            return [{"type": "error", "message": str(e), "seq": seq}]
        for r in replies:
            if isinstance(r, dict):
                r.setdefault("seq", seq)
        return replies

    @classmethod
    def message_types(cls) -> list[str]:
        return sorted(n[4:] for n in dir(cls) if n.startswith("_on_"))

    def _on_hello(self, msg) -> list:
        return self.start()

    def _on_act(self, msg) -> list:
        a = msg.get("action")
        action = MODEL_ACTS if a == "model" else _action(a, self.task.action_names)
        return self.update(self._act(action))

    def _act(self, action: int) -> dict:
        """Act at the step on screen (an env action or ``MODEL_ACTS``): the new step appended to the
        history (an old future dropped) and shown; returns its panels."""
        cur = self.history[self.cursor]
        if cur.outcome != "running":
            raise BadMessage(f"the episode has ended ({cur.outcome}): reset, or step back through the history")
        del self.history[self.cursor + 1:]  # acting from an earlier step branches: the old future is dropped
        j = self.cursor
        out = self._explore(j, action)
        reward = float(out["reward"])
        outcome = self.task.outcomes[int(out["outcome"])]  # the env's own outcome of this step
        cur.action = int(out["action"])
        self.history.append(Step(state=out["state"], obs=np.asarray(out["obs"]), cumrew=cur.cumrew + reward,
                                 reward=reward, outcome=outcome,
                                 details={d: bool(v) for d, v in out["details"].items()}))
        self.cursor = len(self.history) - 1
        return out["panels"]

    def _on_reset(self, msg) -> list:
        seed = _int(msg.get("seed", self.seed), "seed", 0, 2**31 - 1)
        replies = []
        env_id = msg.get("env_id")
        if env_id is not None and env_id != self.env_cfg.env_id:
            if env_id not in envs.REGISTRY:
                raise BadMessage(f"unknown env id {env_id!r}; ids: {', '.join(envs.REGISTRY)}")
            self._install(self.model, self.env_cfg.replace(env_id=env_id))
            replies.append(self.init_message())
        self._reset(seed)
        return replies + self.update()

    def _on_scenario(self, msg) -> list:
        """A hand-made state; one with a history (Memory's) is played from its reset state with its
        actions (``scenarios.scenario_start``), so the history and the context window are the episode's."""
        name = msg.get("name")
        known = S.task_scenarios(self.env_cfg)
        if name not in known:
            raise BadMessage(f"unknown scenario {name!r}; scenarios: {', '.join(known)}")
        start, actions = S.scenario_start(name, self.env_cfg)
        state = jax.tree.map(np.asarray, start)
        if self.balls:  # Dynamic Obstacles' scenarios park unused balls on the wall (0, 0): re-park them
            parked = np.all(state.obstacles == np.asarray(DO_PARKED), -1)
            state = state.replace(obstacles=np.where(parked[:, None], np.asarray(PARK, np.int32), state.obstacles))
        self._start(state, _observe(self.env, state))
        for a in actions:
            self._act(int(a))
        return self.update()

    def _on_edit(self, msg) -> list:
        cur = self.history[self.cursor]
        if cur.outcome != "running":
            raise BadMessage(f"the episode has ended ({cur.outcome}) at this step: reset, or step back to edit")
        size = self.env.size
        state = cur.state
        op = msg.get("op")
        cell = msg.get("cell")
        if cell is not None:
            if not (isinstance(cell, (list, tuple)) and len(cell) == 2):
                raise BadMessage(f"cell must be [x, y], got {cell!r}")
            x, y = (_int(c, "cell coordinate") for c in cell)
            if not (0 <= x < size and 0 <= y < size):
                raise BadMessage(f"cell ({x}, {y}) is off the {size}x{size} grid")
            code = self.cell_object(state, x, y)
            if code == mg.OBJECT_TO_IDX["wall"]:
                raise BadMessage(f"cell ({x}, {y}) is a wall")
            if code == mg.OBJECT_TO_IDX["goal"]:
                raise BadMessage(f"cell ({x}, {y}) is the goal")
        if self.task.edit is not None and op in self.task.editable:
            try:
                state = self.task.edit(self.env, state, op, cell and (x, y))
            except ValueError as e:
                raise BadMessage(str(e)) from None
            del self.history[self.cursor + 1:]
            cur.state, cur.obs, cur.edited = state, np.asarray(_observe(self.env, state)), False
            return self.update()
        obst = np.asarray(state.obstacles).copy() if self.balls else np.zeros((0, 2), np.int32)
        agent = tuple(int(v) for v in state.agent_pos)
        if op == "ball":
            if "ball" not in self.task.editable:
                raise BadMessage(self._no_balls("edit ball"))
            if cell is None:
                raise BadMessage("edit ball needs a cell [x, y]")
            if (x, y) == agent:
                raise BadMessage(f"cell ({x}, {y}) holds the agent")
            here = np.all(obst == (x, y), -1)
            if here.any():
                obst[here] = PARK
            else:
                free = np.all(obst == PARK, -1)
                if not free.any():
                    raise BadMessage(f"all {len(obst)} balls of this env are on the grid: remove one first")
                obst[np.argmax(free)] = (x, y)
            state = state.replace(obstacles=obst.astype(np.int32))
        elif op == "agent":
            if cell is not None:
                if np.all(obst == (x, y), -1).any():
                    raise BadMessage(f"cell ({x}, {y}) holds a ball")
                if self.cell_object(state, x, y) != mg.OBJECT_TO_IDX["empty"]:
                    raise BadMessage(f"cell ({x}, {y}) holds a {IDX_TO_OBJECT[self.cell_object(state, x, y)]}")
                state = state.replace(agent_pos=np.asarray((x, y), np.int32))
            if "dir" in msg:
                state = state.replace(agent_dir=np.int32(_int(msg["dir"], "dir", 0, 3)))
            elif cell is None:
                raise BadMessage("edit agent needs a cell [x, y] or a dir (0=E 1=S 2=W 3=N)")
        else:
            raise BadMessage(f"unknown edit op {op!r}; ops: {', '.join(self.edit_ops())}")
        del self.history[self.cursor + 1:]
        cur.state, cur.obs, cur.edited = state, np.asarray(_observe(self.env, state)), False
        return self.update()

    def _no_balls(self, what: str) -> str:
        """The one line that refuses a ball edit or corruption in a task without balls to avoid."""
        try:
            S.require_balls(self.task, what)
        except ValueError as e:
            return str(e)
        return f"{what} is not defined for this task"

    def edit_ops(self) -> list[str]:
        """The grid edits of this task (the ``edit`` message's ops): each editable object but
        "empty" (a ball toggles: a click adds or removes it; a family with its own ``Task.edit``
        has "empty" too, e.g. Memory's: take the instruction object away), and "agent"."""
        own = self.task.edit is not None
        return [o for o in self.task.editable if o != "empty"] + (["empty"] if own else []) + ["agent"]

    def cell_object(self, state, x: int, y: int) -> int:
        """The MiniGrid object code of world cell (x, y) of ``state`` (``grid_cells``)."""
        cells = grid_cells(self.env, state)
        return int(cells[x, y, 0]) if cells is not None else mg.OBJECT_TO_IDX["empty"]

    def _on_set(self, msg) -> list:
        ctl = dict(self.ctl)
        known = {"rtg", "extrapolate", "t_adjust", "direction", "greedy", "temperature", "ablate", "kind", "head",
                 "channels", "type", "seq"}
        bad = sorted(set(msg) - known)
        if bad:
            raise BadMessage(f"unknown control {bad[0]!r}; controls: {', '.join(sorted(known - {'type', 'seq'}))}")
        if "extrapolate" in msg:
            ctl["extrapolate"] = _bool(msg["extrapolate"], "extrapolate")
            if not ctl["extrapolate"]:
                ctl["rtg"] = min(max(ctl["rtg"], -RTG_RANGE), RTG_RANGE)
        if "rtg" in msg:
            span = RTG_RANGE_EXTRAPOLATE if ctl["extrapolate"] else RTG_RANGE
            r = _num(msg["rtg"], "RTG")
            if abs(r) > span:
                hint = "" if ctl["extrapolate"] else " (allow extrapolation for [-10, 10])"
                raise BadMessage(f"RTG {r:g} is outside [-{span:g}, {span:g}]{hint}")
            ctl["rtg"] = r
        if "t_adjust" in msg:
            m = self.cfg.max_timestep
            ctl["t_adjust"] = _int(msg["t_adjust"], "timestep adjustment", -m, m)
        if "direction" in msg:
            d = msg["direction"]
            if not isinstance(d, dict) or "pos" not in d:
                raise BadMessage(f"direction must be {{pos: action, neg: action or null}}, got {d!r}")
            names = self.task.action_names
            pos = names[_action(d["pos"], names, "direction action")]
            neg = None if d.get("neg") is None else names[_action(d["neg"], names, "direction action")]
            if pos == neg:
                raise BadMessage(f"direction {pos}-{neg} is zero: choose two different actions, or one")
            ctl["direction"] = (pos, neg)
        if "greedy" in msg:
            ctl["greedy"] = _bool(msg["greedy"], "greedy")
        if "temperature" in msg:
            t = _num(msg["temperature"], "temperature", 0.0, 100.0)
            if t <= 0:
                raise BadMessage("temperature must be > 0")
            ctl["temperature"] = t
        if "ablate" in msg:
            names = msg["ablate"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise BadMessage(f"ablate must be a list of component names, got {names!r}")
            try:
                A.ablation_set_masks(self.cfg, names)
            except ValueError as e:
                raise BadMessage(str(e)) from None
            ctl["ablate"] = sorted(set(names), key=A.ablation_labels(self.cfg).index)
        if "kind" in msg:
            if msg["kind"] not in ("zero", "mean"):
                raise BadMessage(f"ablation kind must be zero or mean, got {msg['kind']!r}")
            ctl["kind"] = msg["kind"]
        if "head" in msg:
            h = msg["head"]
            if not (isinstance(h, (list, tuple)) and len(h) == 2):
                raise BadMessage(f"head must be [layer, head], got {h!r}")
            ctl["head"] = (_int(h[0], "layer", 0, self.cfg.n_layers - 1), _int(h[1], "head", 0, self.cfg.n_heads - 1))
        if "channels" in msg:
            ch = msg["channels"]
            n = self.cfg.obs_shape[-1]
            if not isinstance(ch, list) or not ch or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < n for c in ch):
                raise BadMessage(f"channels must be a non-empty list of channel indices 0..{n - 1}, got {ch!r}")
            ctl["channels"] = sorted(set(ch))
        weights = any(ctl[k] != self.ctl[k] for k in ("direction", "head", "channels"))
        self.ctl = ctl
        return ([self.weights()] if weights else []) + self.update()

    def _on_goto(self, msg) -> list:
        self.cursor = _int(msg.get("step"), "step", 0, len(self.history) - 1)
        return self.update()

    def _on_model(self, msg) -> list:
        if self.catalog is None:
            raise BadMessage("no model directory: start the explorer with a models directory to switch models")
        name = msg.get("name")
        try:
            model = self.catalog.get(name)
        except KeyError:
            raise BadMessage(f"unknown model {name!r}; models: {', '.join(self.catalog.names())}") from None
        except ValueError as e:  # a file that does not load
            raise BadMessage(f"cannot load {name}: {str(e).splitlines()[0]}") from None
        self._install(model)
        self._reset(self.seed)
        return self.start()

    def _on_patch(self, msg) -> list:
        kind = msg.get("corruption", "rtg")
        if kind not in self.corruptions():
            if kind == "ball":
                raise BadMessage(self._no_balls("corruption ball"))
            raise BadMessage(f"unknown corruption {kind!r}; corruptions: {', '.join(self.corruptions())}")
        hooks = msg.get("hooks", "main")
        if hooks not in ("main", "all"):
            raise BadMessage(f"hooks must be main or all, got {hooks!r}")
        clean, corrupted, what = self.corrupt(kind, msg.get("ball"))
        model, cfg, v, step = self.model, self.cfg, self.controls().v, self.cursor
        names = patch_hooks(cfg, clean) if hooks == "main" else None

        def compute():
            t0 = time.perf_counter()
            res = A.patching_panel(model.params, cfg, clean, corrupted, v, names, one_compile=True)
            return {"type": "patching", "step": step, "corruption": kind, "what": what, "matrix": res["matrix"],
                    "rows": res["rows"], "columns": res["columns"], "clean": res["clean"], "corrupted": res["corrupted"],
                    "hooks": hooks,
                    "seconds": time.perf_counter() - t0}

        return [{"type": "busy", "what": "patching"}, Deferred(compute, "patching")]

    def _on_closed_loop(self, msg) -> list:
        n = _int(msg.get("episodes", 50), "episodes", 1, MAX_EPISODES)
        model, cfg, env, env_params, ctl = self.model, self.cfg, self.env, self.env_params, dict(self.ctl)
        masks = A.ablation_set_masks(cfg, ctl["ablate"])
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), 1_000_003)
        means = self.means()

        def compute():
            t0 = time.perf_counter()
            res = A.closed_loop_panel(model.params, cfg, env, env_params, key, ctl["rtg"], n, masks, means,
                                      ctl["kind"] == "mean", greedy=ctl["greedy"], temperature=ctl["temperature"])
            return {"type": "closed_loop", "episodes": n, "rtg": ctl["rtg"], "ablate": ctl["ablate"], "kind": ctl["kind"],
                    "greedy": ctl["greedy"], **res, "seconds": time.perf_counter() - t0}

        return [{"type": "busy", "what": "closed_loop"}, Deferred(compute, "closed_loop")]

    def _on_probes(self, msg) -> list:
        """Linear probes (``explorer.probes``): fit them on the first message (deferred), then each
        probe's readout at the step on screen with ``alpha`` x the chosen binary concept's direction
        added at the chosen site; ``act: true`` also plays the steered model's greedy action."""
        model, cfg = self.model, self.cfg
        try:
            site, concept, alpha = explorer_probes.parse(msg, model.probes)
        except ValueError as e:
            raise BadMessage(str(e)) from None
        inputs = self.inputs()
        if model.probes is None:
            env, env_params, key = self.env, self.env_params, jax.random.fold_in(jax.random.PRNGKey(self.seed), 2_000_003)

            def compute():
                if model.probes is None:
                    model.probes = explorer_probes.fit(model.params, cfg, env, env_params, key)
                return {"type": "probes", "info": model.probes.describe(), "step": self.cursor,
                        **explorer_probes.readout(model.probes, model.params, cfg, inputs, 0, None, 0.0)}

            return [{"type": "busy", "what": "probes"}, Deferred(compute, "probes")]
        reply = {"type": "probes", "info": model.probes.describe(), "step": self.cursor,
                 **explorer_probes.readout(model.probes, model.params, cfg, inputs, site, concept, alpha)}
        if msg.get("act") is True:
            return [reply, *self._on_act({"action": reply["steered_action"]})]
        return [reply]

    def _on_adversary(self, msg) -> list:
        """One of the MemoryDT write-up's adversary contexts (``explorer.memory``): the layout's junction
        scenario played from its reset state (4 forwards), each frame's observation the report's context's
        (``circuits.memory.adversary_inputs``: the edit painted on the instruction frame), the target RTG
        the adversary's; the coefficient intervention off."""
        if self.memory_why is not None:
            raise BadMessage(f"adversaries are not defined here: {self.memory_why}")
        t = self.model.memory_tables()
        layout, edit = msg.get("layout"), msg.get("edit")
        rtg = _num(msg.get("rtg", t.rtgs[0]), "RTG")
        try:
            inputs = explorer_memory.context(t, layout, edit, rtg)
            start, actions = S.scenario_start(f"{layout}_junction", self.env_cfg)
        except ValueError as e:
            raise BadMessage(str(e)) from None
        self._start(jax.tree.map(np.asarray, start), _observe(self.env, start))
        for a in actions:
            self._act(int(a))
        frames = np.asarray(inputs.obs[0, -len(self.history):])
        real = np.stack([st.obs for st in self.history])
        if frames.shape != real.shape or not np.array_equal(frames[1:], real[1:]):
            raise BadMessage(f"the env {self.env_cfg.env_id} does not replay the write-up's contexts")
        for st, o in zip(self.history, frames):
            st.edited = not np.array_equal(o, st.obs)
            st.obs = o.astype(st.obs.dtype)
        self.ctl["rtg"], self.ctl["coef"] = float(rtg), None
        return self.update()

    def _on_memory(self, msg) -> list:
        """The instruction feature's coefficient in the instruction frame's token (``coef``: null for
        none, else in [-2, 2]): the Memory card at the step on screen with it set (``explorer.memory``);
        ``act: true`` also plays the intervened model's greedy action (an ordinary ``act``)."""
        if self.memory_why is not None:
            raise BadMessage(f"the instruction feature is not defined here: {self.memory_why}")
        try:
            coef = explorer_memory.parse_coef(msg)
        except ValueError as e:
            raise BadMessage(str(e)) from None
        act = _bool(msg.get("act", False), "act")
        old, self.ctl["coef"] = self.ctl["coef"], coef
        reply = {"type": "memory", "step": self.cursor, **self.memory_panel()}
        if not act:
            return [reply]
        if reply["steered_action"] is None:
            self.ctl["coef"] = old
            raise BadMessage("acting with the intervention needs a coefficient and the instruction frame (t = 0) in the context")
        return [reply, *self._on_act({"action": int(reply["steered_action"])})]

    def memory_panel(self, i: int | None = None, block: bool = True) -> dict | None:
        """The Memory card's numbers at step ``i`` (default on screen; ``explorer.memory.panel``), or
        None where it does not apply; ``block=False``: JAX arrays still computing (the ``panels`` reply)."""
        if self.memory_why is not None:
            return None
        w = self.window(i)
        return explorer_memory.panel(self.model.params, self.cfg, self.model.memory_tables(), self.inputs(i),
                                     explorer_memory.instruction_frame(w.valid, w.time), self.ctl["coef"], block)

    def memory_info(self) -> dict:
        """``init.memory``: why the Memory card does not apply (``undefined``), or its table."""
        if self.memory_why is not None:
            return {"undefined": self.memory_why}
        note = None
        if self.cfg.pad_rtg != "initial":
            note = ("this model pads its context with RTG 0 (as its closed-loop evaluation); the report's contexts pad "
                    "with the target RTG, so at RTG 0.892 the live numbers differ from the table's (at RTG 0 they agree)")
        return {"undefined": None, **self.model.memory_tables().describe(), "note": note}

    # -- corruptions for patching ----------------------------------------------------------
    def corruptions(self) -> dict[str, str]:
        """The corruptions defined for this task ("ball" only where it has balls)."""
        return {k: v for k, v in CORRUPTIONS.items() if k != "ball" or self.balls}

    def corrupt(self, kind: str, ball=None) -> tuple[C.Inputs, C.Inputs, str]:
        """(clean, corrupted, description) Inputs of the step on screen for a corruption.

        ``rtg``: every RTG token negated (padding stays 0); ``front``: the cell in front of
        the agent (view cell (3, 5)) made empty in the current observation; ``ball``: ball
        ``ball`` (default the nearest one in view) removed from the state and the view re-observed.
        """
        ctrl = self.controls()
        clean = self.inputs(ctrl=ctrl)
        if kind == "rtg":
            r = float(clean.rtg[0, -1])
            return clean, clean.replace(rtg=-clean.rtg), f"RTG {r:+.2f} -> {-r:+.2f}"
        cur = self.history[self.cursor]
        if kind == "ball" and not self.balls:
            raise BadMessage(self._no_balls("corruption ball"))
        if kind == "front":
            empty = mg.CELL_ONE_HOT[mg.EMPTY] if self.cfg.obs_mode == "one_hot" else mg.CELL_CODES[mg.EMPTY]
            obs = np.asarray(clean.obs).copy()
            obs[0, -1, 3, 5] = empty
            front = int(view_objects(clean.obs[0, -1])[3, 5])
            name = {v: k for k, v in mg.OBJECT_TO_IDX.items()}.get(front, str(front))
            return clean, clean.replace(obs=jnp.asarray(obs)), f"front cell ({name}) emptied"
        obst = np.asarray(cur.state.obstacles)
        seen = self.visible_balls(cur.state)
        if ball is None:
            if not seen:
                raise BadMessage("no ball in view to remove")
            pos = np.asarray(cur.state.agent_pos)
            ball = min(seen, key=lambda i: np.abs(obst[i] - pos).sum())
        ball = _int(ball, "ball", 0, len(obst) - 1)
        if np.all(obst[ball] == PARK):
            raise BadMessage(f"ball {ball} is not on the grid")
        state = cur.state.replace(obstacles=np.where(np.arange(len(obst))[:, None] == ball, np.asarray(PARK, np.int32), obst))
        obs = np.asarray(clean.obs).copy()
        obs[0, -1] = np.asarray(_observe(self.env, state))
        return clean, clean.replace(obs=jnp.asarray(obs)), f"ball {ball} at ({obst[ball][0]}, {obst[ball][1]}) removed"

    def visible_balls(self, state) -> list[int]:
        """Indices of the balls inside the agent's 7x7 view (none in a task without balls)."""
        if not self.balls:
            return []
        view = {tuple(c) for c in (np.asarray(state.agent_pos) + mg.VIEW_OFFSETS[int(state.agent_dir)]).reshape(-1, 2)}
        return [i for i, b in enumerate(np.asarray(state.obstacles)) if tuple(b) in view and not np.all(b == PARK)]

    # -- replies ---------------------------------------------------------------------------
    def init_message(self) -> dict:
        cfg, env_cfg = self.cfg, self.env_cfg
        return {
            "type": "init", "model": {"name": self.model.name, "path": self.model.path, "config": cfg.to_dict(),
                                      "env": self.model.env_cfg.to_dict(), "compile_s": self.model.compile_s},
            "env": env_cfg.to_dict(), "env_ids": list(envs.REGISTRY), "size": self.env.size,
            "n_obstacles": int(getattr(self.env, "n_obstacles", 0)) if self.balls else 0,
            "max_steps": int(self.env_params.max_steps_in_episode),
            "models": self.catalog.names() if self.catalog else [self.model.name],
            "scenarios": {n: sc.caption for n, sc in S.task_scenarios(env_cfg).items()},
            "corruptions": self.corruptions(), "task": self.task_message(), "actions": list(self.task.action_names),
            "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
            "tokens": A.token_labels(cfg.n_timesteps), "context_tokens": A.context_labels(cfg.n_timesteps),
            "dla_labels": A.dla_labels(cfg, self.inputs()),
            "ablation_labels": A.ablation_labels(cfg), "channels": channel_names(cfg.obs_mode),
            "notes": shape_notes(cfg), "controls": self.control_values(), "n_scan": N_SCAN,
            "saes": [s.describe() for s in self.model.saes], "sae_top": explorer_sae.TOP,
            "memory": self.memory_info(),
        }

    def task_message(self) -> dict:
        """What the page needs to know of the task: actions and their keys, objects to draw, what
        a cell may be edited to, outcome names and detail flags, the default direction."""
        t = self.task
        return {"family": t.family, "actions": list(t.action_names), "action_keys": list(t.action_keys),
                "objects": list(t.objects), "editable": list(t.editable), "outcomes": list(t.outcomes),
                "success": t.success, "failures": list(t.failures), "details": list(t.details),
                "direction": list(t.direction), "edit_ops": self.edit_ops(),
                "edit_labels": {o: ("click adds / removes a ball" if self.balls else f"click paints a {o}") if o != "empty" and o != "agent"
                                else "click takes an object away" if o == "empty" else "click moves the agent"
                                for o in self.edit_ops()}}

    def control_values(self) -> dict:
        c = dict(self.ctl)
        c["direction"] = {"pos": c["direction"][0], "neg": c["direction"][1]}
        c["head"] = list(c["head"])
        return c

    def weights(self) -> dict:
        """The ``weights`` reply: weights-only maps for the chosen head and channels, along the direction."""
        w = jax.device_get(A.weight_panels(self.model.params, self.cfg, self.controls().v))
        l, h = self.ctl["head"]
        ch = self.ctl["channels"]
        rows = lambda m: np.swapaxes(np.asarray(m)[ch], -1, -2)  # (C, x, y) -> shown channels (C', y, x)  # noqa: E731
        return {"type": "weights", "head": [l, h], "channels": ch, "direction": self.control_values()["direction"],
                "qk": rows(w["qk"][l, h]), "ov_dir": rows(w["ov_dir"][l, h]),
                "ov": np.stack([rows(w["ov"][l, h][..., a]) for a in range(self.cfg.n_actions)]),
                "ov_rtg": w["ov_rtg"][l, h], "state_encoder": rows(w["state_encoder"])}

    def update(self, p: dict | None = None) -> list[dict]:
        """The ``step`` reply (what a key press needs first) and the ``panels`` reply of the step on screen."""
        if p is None:
            p = self._explore(self.cursor, NO_STEP)["panels"]
        cur = self.history[self.cursor]
        st = cur.state
        balls = ([list(map(int, b)) for b in np.asarray(st.obstacles) if not np.all(b == PARK) and (b > 0).all()]
                 if self.balls else [])
        ablated = bool(self.ctl["ablate"])
        step = {
            "type": "step", "step": self.cursor, "n_steps": len(self.history), "timestep": cur.time,
            "model_timestep": int(p["timestep_token"]), "status": cur.outcome, "wall": cur.wall, "details": cur.details,
            "return": cur.cumrew, "reward": cur.reward, "rtg": float(p["rtg_token"]),
            "grid": {"size": self.env.size, "agent": list(map(int, st.agent_pos)), "dir": int(st.agent_dir), "balls": balls,
                     "cells": grid_cells(self.env, st)},
            "carrying": carried(cur.obs), "context": self.context(),
            "view": np.asarray(p["view"]).T, "view_colours": view_colours(cur.obs).T, "probs": p["probs"], "logits": p["logits"],
            "ablated": ablated, "ablated_probs": p["ablated_probs"] if ablated else None, "ablate": self.ctl["ablate"],
            "kind": self.ctl["kind"],
            "action": None if self.cursor == 0 else self.history[self.cursor - 1].action,
        }
        ch = self.ctl["channels"]
        hist = [{"t": s.time, "action": s.action, "reward": s.reward, "outcome": s.outcome} for s in self.history]
        pan = {
            "type": "panels", "step": self.cursor, "pattern": p["pattern"], "attn_to_rtg": p["attn_to_rtg"],
            "dla": p["dla"], "logit_diff": float(p["logit_diff"]),
            "ablated_dla": p["ablated_dla"] if ablated else None,
            "ablated_logit_diff": float(p["ablated_logit_diff"]) if ablated else None,
            "state_encoder": np.swapaxes(np.asarray(p["state_encoder"])[ch], -1, -2), "channels": ch,
            "each_probs": p["each_probs"], "ablate": self.ctl["ablate"], "kind": self.ctl["kind"],
            "scan": {"rtg": p["scan_rtg"], "logits": p["scan_logits"], "probs": p["scan_probs"], "dla": p["scan_dla"],
                     "attn": p["scan_attn"], "marker": float(p["rtg_token"])},
            "history": hist, "controls": self.control_values(), "sae": self.sae_latents(p["sae"]),
            "memory": self.memory_panel(block=False),  # computed while the step reply is sent
        }
        return [step, pan]

    def context(self, i: int | None = None) -> list[dict]:
        """The context window at step ``i`` (default on screen) as the page shows it: per timestep,
        oldest first, the state token's label (``analysis.context_labels``: s1 ... sK, the current
        frame sK), whether it is padding, the env's step count, the action taken there (None at
        padding and at the current step), its view's object codes [y][x] and the carried object."""
        w = self.window(i)
        i_cur = self.cursor if i is None else i
        labels = A.context_labels(self.cfg.n_timesteps, 3 * self.cfg.n_timesteps)[1::3]
        obs = np.asarray(w.obs)
        views = obs[..., :len(mg.OBJECT_TO_IDX)].argmax(-1) if obs.shape[-1] == mg.N_ONE_HOT else obs[..., 0]
        names = self.task.action_names
        k = self.cfg.n_timesteps
        return [{"token": labels[j], "valid": bool(w.valid[j]), "t": int(w.time[j]),
                 "action": names[int(w.actions[j])] if w.valid[j] and j < k - 1 else None,
                 "view": views[j].T, "carrying": carried(w.obs[j]) if w.valid[j] else None,
                 "edited": bool(w.valid[j]) and self.history[i_cur - (k - 1 - j)].edited} for j in range(k)]

    def sae_latents(self, found: list[dict]) -> list[dict]:
        """The ``panels`` reply's ``sae`` entry: per dictionary its active latents among the top ones
        (index, activation, best probe and AUROC if known, DLA onto the direction), and L0."""
        out = []
        for s, f in zip(self.model.saes, found):
            act = np.asarray(f["act"])
            keep = act > 0
            idx = np.asarray(f["index"])[keep]
            out.append({"name": s.name, "l0": int(f["l0"]), "index": idx, "act": act[keep],
                        "dla": np.asarray(f["dla"])[keep] if s.has_dla else None,
                        "probe": None if s.probe is None else [s.probe[i] for i in idx],
                        "auc": None if s.auc is None else s.auc[idx]})
        return out
