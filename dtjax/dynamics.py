"""Training dynamics: when a run's circuits appear (``python analyse.py --dynamics RUN``).

A run trained with ``TrainConfig.keep_every`` keeps its checkpoints at step 0 and at every
multiple of ``keep_every`` (``Run.steps``; with ``--num_seeds N`` in every ``seed_k/``). This
module reads them all as one params pytree with a leading (seed, checkpoint) axis and computes,
per seed and checkpoint:

- the census (``dtjax.circuits.census``, the same numbers as ``mechanism``): the effect of the
  ball-ahead veto and of the RTG gate, the carry share of each head, MLP and the direct path,
  attention of the state token to the RTG token (its minimum over heads: *saturation* when
  >= 0.95), and the classification (veto carrier / gate carrier, head circuit);
- ACDC on the veto pair (the census's ball-ahead vs clear states at RTG +1): circuit size (edges
  kept at KL threshold ``tau``) and faithfulness (``dtjax.circuits.graph.acdc_arrays``);
- calibration in closed loop: the mean return at ``calib_points`` target RTGs over the task's
  return range, ``calib_episodes`` each, and the calibration error (mean |return - target|);
- probe F1 of key concepts (``dtjax.probes``; ``ball_ahead``, ``goal_direction``,
  ``collision_within_3`` by default): one fixed probe set (episodes played by the first seed's
  last checkpoint, split by episode into training and held-out steps), the features of every
  model at the last layer's ``hook_resid_post`` on the state token, and a softmax probe fitted
  per (model, concept), all in one ``probes.fit_many``; held-out macro-F1.

The structural metrics are one jitted ``vmap`` over every (seed, checkpoint) model at once; the
closed loop is one vmapped rollout of the seeds per checkpoint (``evaluate_seeds``: a rollout
loop runs until its slowest episode ends, and early checkpoints time out, so checkpoints are not
mixed in one loop). Every model plays the same episodes (one key): differences along a curve are
the model's, not the env's.

**Commitment.** A seed's *class* at a checkpoint is its census classification, "veto carrier /
gate carrier" (e.g. ``L0_mlp / L0H1``). The seed *commits* at the first kept checkpoint from
which its class never changes again up to the last one (``commit_index``): the step its final
circuit appeared for good. A seed whose class changes at the last checkpoint commits there (a
late or unsettled commitment, not a stable one); more checkpoints can only move the commit step
later within the same span, never earlier.

``dynamics(run)`` returns the numbers (JSON-able), ``write_dynamics(run, out)`` writes
``dynamics.json`` and ``dynamics.html`` (a report ``Page`` with figures from ``dtjax.plots``).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dtjax import io, plots
from dtjax import probes as probes_lib
from dtjax.circuits.census import census_arrays, census_class, census_probes, share_labels
from dtjax.circuits.core import action_vector
from dtjax.circuits.graph import acdc_arrays
from dtjax.config import EnvConfig, ModelConfig
from dtjax.evaluate import calibration_stats, evaluate_seeds
from dtjax.loader import LoadError
from dtjax.model import run_with_cache
from dtjax.report import Page
from dtjax.run import Run


@dataclasses.dataclass(frozen=True)
class DynamicsOptions:
    calib_points: int = 5
    """target RTGs of the closed-loop calibration, evenly over the task's return range"""
    calib_episodes: int = 32
    """episodes per target and model (standard error of a mean return <= ~0.18)"""
    acdc_tau: float = 0.003
    """ACDC's KL threshold (the report's default)"""
    seed: int = 0
    """the key of the calibration episodes (the same episodes for every model) and of the probe set"""
    probe_concepts: tuple[str, ...] = ("ball_ahead", "goal_direction", "collision_within_3")
    """concepts (``dtjax.probes.concepts``) whose probe F1 is tracked; () = none"""
    probe_episodes: int = 256
    """episodes of the probe set (played once, by the first seed's last checkpoint)"""
    probe_train: int = 2048
    """training steps of each probe (held out: half as many, from other episodes)"""

    def replace(self, **kw) -> DynamicsOptions:
        return dataclasses.replace(self, **kw)


# ---------------------------------------------------------------------------------------------
# PURE PIECES
# ---------------------------------------------------------------------------------------------


def commit_index(classes: Sequence) -> int:
    """The first index from which every element equals the last: where a sequence of classes
    settles for good (``len - 1`` if the last differs from the one before; 0 if constant)."""
    if len(classes) == 0:
        raise ValueError("commit_index of an empty sequence")
    i = len(classes) - 1
    while i > 0 and classes[i - 1] == classes[-1]:
        i -= 1
    return i


def model_metrics(params: dict, cfg: ModelConfig, probes: dict, v: jax.Array, tau: float) -> dict[str, jax.Array]:
    """The structural metrics of one model (traceable): ``census_arrays`` and ACDC's circuit
    (``acdc_edges``, ``acdc_faithfulness``, ``acdc_kl``) on the veto pair (ball ahead vs clear, RTG high)."""
    c = acdc_arrays(params, cfg, probes["ball_hi"], probes["clear_hi"], tau, v)
    return {**census_arrays(params, cfg, probes, v), "acdc_edges": c["n_edges"], "acdc_faithfulness": c["faithfulness"],
            "acdc_kl": c["kl"]}


def stacked_metrics(params: dict, cfg: ModelConfig, env_cfg: EnvConfig, tau: float = 0.003,
                    direction: Any = None) -> dict[str, np.ndarray]:
    """``model_metrics`` of every model of ``params`` (any leading axes, e.g. (seeds, checkpoints)):
    one jitted ``vmap`` over them flattened. Returns numpy arrays with those leading axes."""
    env, _ = env_cfg.make()
    v = action_vector("-".join(env.task.direction) if direction is None else direction, cfg.n_actions)
    probes = census_probes(cfg, env_cfg)
    lead = jax.tree.leaves(params)[0].shape[: _lead_ndim(params, cfg)]
    flat = jax.tree.map(lambda x: jnp.asarray(x).reshape((-1,) + x.shape[len(lead):]), params)
    out = _vmapped_metrics(flat, cfg, probes, v, jnp.float32(tau))
    return {k: np.asarray(x).reshape(lead + x.shape[1:]) for k, x in out.items()}


def _lead_ndim(params: dict, cfg: ModelConfig) -> int:
    """How many leading axes ``params`` has on top of one model's (from ``W_U`` (d_model, n_actions))."""
    return np.ndim(params["W_U"]) - 2


_vmapped_metrics = jax.jit(jax.vmap(model_metrics, in_axes=(0, None, None, None, None)), static_argnums=(1,))


# ---------------------------------------------------------------------------------------------
# READING A RUN
# ---------------------------------------------------------------------------------------------


def kept_checkpoints(run: str | Path) -> tuple[list[Run], list[int]]:
    """The models of ``run`` (its seeds, or itself) and the checkpoint steps all of them kept.
    A run without at least two kept steps is a LoadError (train it with ``--keep_every``)."""
    r = Run.open(run)
    if r.kind == "pt":
        raise LoadError(f"{run}: an original .pt has no training checkpoints")
    models = [Run.open(p) for p in r.seeds] if r.kind == "seeds" else [r]
    steps = r.steps
    if len(steps) < 2:
        raise LoadError(f"{run}: {len(steps)} kept checkpoint step(s); train with --keep_every STEPS "
                        "(e.g. num_steps / 20) to keep checkpoints along the run")
    return models, steps


def load_stacked(models: list[Run], steps: list[int]) -> dict:
    """The params of every model at every step as one pytree (seeds, checkpoints, ...)."""
    per = [[m.at_step(s).params for s in steps] for m in models]
    return jax.tree.map(lambda *xs: np.stack(xs).reshape((len(models), len(steps)) + xs[0].shape),
                        *[p for row in per for p in row])


def closed_loop(params: dict, cfg: ModelConfig, env_cfg: EnvConfig, opts: DynamicsOptions) -> dict[str, np.ndarray]:
    """Calibration of every (seed, checkpoint) model: ``returns`` (S, C, calib_points), the
    ``targets``, ``calibration_error`` (S, C) and the ``goal``/``hit`` rates at the highest target."""
    env, env_params = env_cfg.make()
    targets = np.linspace(*env.task.return_range, opts.calib_points).astype(np.float32)
    S, C = np.shape(params["W_U"])[:2]
    keys = jnp.broadcast_to(jax.random.PRNGKey(opts.seed), (S, 2))
    returns, err, goal = np.zeros((S, C, len(targets))), np.zeros((S, C)), np.zeros((S, C))
    pool = min(512, opts.calib_points * opts.calib_episodes)
    for c in range(C):
        res = evaluate_seeds(jax.tree.map(lambda x: jnp.asarray(x[:, c]), params), cfg, env, env_params, keys, targets,
                             opts.calib_episodes, pool=pool)
        for s, r in enumerate(res):
            stats = calibration_stats(r)
            returns[s, c] = [row["mean_return"] for row in stats["rows"]]
            err[s, c] = stats["calibration_error"]
            goal[s, c] = stats["rows"][-1].get("goal_rate", np.nan)
    return {"targets": targets, "returns": returns, "calibration_error": err, "goal_at_high": goal}


def probe_set(params: dict, cfg: ModelConfig, env_cfg: EnvConfig, opts: DynamicsOptions):
    """(train, test) ``probes.ProbeData`` of ``opts.probe_concepts``: episodes of the model
    ``params`` (sampled at target RTGs -1 and +1), split by episode."""
    env, env_params = env_cfg.make()
    key = jax.random.fold_in(jax.random.PRNGKey(opts.seed), 1)
    roll = probes_lib.collect(jax.tree.map(jnp.asarray, params), cfg, env, env_params, key,
                              n_episodes=opts.probe_episodes, rtgs=(-1.0, 1.0))
    cs = probes_lib.concepts(env, roll)
    missing = [c for c in opts.probe_concepts if c not in cs]
    if missing:
        raise ValueError(f"unknown probe concept(s) {', '.join(missing)}; concepts: {', '.join(cs)}")
    return probes_lib.split(roll, {c: cs[c] for c in opts.probe_concepts}, jax.random.fold_in(key, 1),
                            n_train=opts.probe_train, n_test=opts.probe_train // 2)


@functools.partial(jax.jit, static_argnums=(1,))
def _state_features(params, cfg: ModelConfig, obs, rtg, timesteps, actions):
    """(models, N, d_model): the last layer's resid_post at the state token of every stacked model."""
    name = f"blocks.{cfg.n_layers - 1}.hook_resid_post"
    pos = probes_lib.token_pos(cfg, "state")
    return jax.vmap(lambda p: run_with_cache(p, cfg, obs, rtg, timesteps, actions, names=(name,))[1][name][:, pos])(params)


def probe_f1(params: dict, cfg: ModelConfig, train, test) -> np.ndarray:
    """Held-out macro-F1 (leading axes of ``params``..., concepts) of a probe per model and
    concept on the probe set (``probe_set``): features of all models at once, one ``fit_many``."""
    lead = np.shape(params["W_U"])[: _lead_ndim(params, cfg)]
    flat = jax.tree.map(lambda x: jnp.asarray(x).reshape((-1,) + x.shape[len(lead):]), params)

    def feats(d):
        w = d.window
        return _state_features(flat, cfg, jnp.asarray(w.obs), jnp.asarray(w.rtg), jnp.asarray(w.timesteps),
                               jnp.asarray(w.actions) if cfg.n_timesteps > 1 else None)

    probe = probes_lib.fit_many(feats(train), train.labels, train.n_classes)
    proba = np.asarray(probes_lib.predict_proba_many(probe, feats(test)))  # (H, P, N, C)
    f1 = np.array([[probes_lib.metrics(proba[h, p][:, :train.n_classes[p]], test.labels[p])["f1"]
                    for p in range(len(train.names))] for h in range(proba.shape[0])])
    return f1.reshape(lead + (len(train.names),))


# ---------------------------------------------------------------------------------------------
# THE FRONT END
# ---------------------------------------------------------------------------------------------


def dynamics(run: str | Path, opts: DynamicsOptions = DynamicsOptions(),
             log: Callable[[str], object] = lambda msg: None) -> dict:
    """Every metric of every kept checkpoint of every seed of ``run``, the classes and the commit
    steps (JSON-able; arrays are (seeds, checkpoints, ...) lists)."""
    t0 = time.time()
    models, steps = kept_checkpoints(run)
    cfg, env_cfg = models[0].model_cfg, models[0].env_cfg
    log(f"dynamics: {len(models)} model(s) x {len(steps)} checkpoints")
    params = load_stacked(models, steps)
    t_load = time.time() - t0
    t = time.time()
    m = stacked_metrics(params, cfg, env_cfg, opts.acdc_tau)
    t_struct = time.time() - t
    log(f"dynamics: census and ACDC in {t_struct:.1f} s")
    t = time.time()
    cl = closed_loop(params, cfg, env_cfg, opts)
    t_loop = time.time() - t
    log(f"dynamics: calibration in {t_loop:.1f} s")
    t = time.time()
    f1 = np.zeros((len(models), len(steps), 0))
    if opts.probe_concepts:
        train, test = probe_set(jax.tree.map(lambda x: x[0, -1], params), cfg, env_cfg, opts)
        f1 = probe_f1(params, cfg, train, test)
    t_probe = time.time() - t
    log(f"dynamics: probes in {t_probe:.1f} s")
    labels = share_labels(cfg)
    S, C = len(models), len(steps)
    cls = [[census_class(labels, m["veto_carry"][s, c], m["gate_carry"][s, c], m["attn_to_rtg"][s, c]) for c in range(C)]
           for s in range(S)]
    names = [[f"{k['carriers']['veto']} / {k['carriers']['gate']}" for k in row] for row in cls]
    commits = []
    for s in range(S):
        i = commit_index(names[s])
        commits.append({"seed": models[s].root.name, "class": names[s][-1], "head_circuit": cls[s][-1]["head_circuit"],
                        "index": i, "step": steps[i], "changes": int(sum(a != b for a, b in zip(names[s], names[s][1:])))})
    metrics = {
        "veto_effect": m["veto_effect"], "gate_effect": m["gate_effect"], "drive_effect": m["drive_effect"],
        "veto_carry": m["veto_carry"], "gate_carry": m["gate_carry"], "drive_carry": m["drive_carry"],
        "attn_to_rtg": m["attn_to_rtg"], "attn_to_rtg_min": m["attn_to_rtg"].reshape(S, C, -1).min(-1),
        "acdc_edges": m["acdc_edges"], "acdc_faithfulness": m["acdc_faithfulness"], "acdc_kl": m["acdc_kl"],
        "calib_returns": cl["returns"], "calibration_error": cl["calibration_error"], "goal_at_high": cl["goal_at_high"],
        **{f"probe_f1_{c}": f1[:, :, i] for i, c in enumerate(opts.probe_concepts)},
    }
    return io.jsonable({
        "run": str(run), "seeds": [x.root.name for x in models], "steps": steps, "labels": labels,
        "calib_targets": cl["targets"], "options": dataclasses.asdict(opts), "metrics": metrics,
        "classes": names, "head_circuit": [[k["head_circuit"] for k in row] for row in cls],
        "saturated": [[k["saturated"] for k in row] for row in cls], "commit": commits,
        "seconds": {"load": t_load, "census_acdc": t_struct, "calibration": t_loop, "probes": t_probe, "total": time.time() - t0},
    })


CURVES = {  # metric -> panel title, in the page's order
    "calibration_error": "calibration error (mean |return - target|)",
    "veto_effect": "veto effect (forward - right, ball vs clear)",
    "gate_effect": "gate effect (RTG +1 vs -1, ball ahead)",
    "attn_to_rtg_min": "attention to RTG (min over heads; >= 0.95 saturated)",
    "acdc_edges": "ACDC circuit size (edges, veto pair)",
    "acdc_faithfulness": "ACDC circuit faithfulness",
}


def render(d: dict) -> str:
    """The dynamics page (HTML) of a ``dynamics`` result."""
    steps = np.asarray(d["steps"])
    commit = np.asarray([c["step"] for c in d["commit"]])
    page = Page(f"dtjax training dynamics: {Path(d['run']).name}")
    page.section("curves", "Metrics along training")
    page.text(f"{len(d['seeds'])} seed(s) x {len(steps)} kept checkpoints (steps {steps[0]}..{steps[-1]}); one line per "
              "seed, its commit step a dot (the first checkpoint from which its census class never changes).")
    series = {title: np.asarray(d["metrics"][k], np.float64) for k, title in CURVES.items()}
    series.update({f"probe F1: {k[len('probe_f1_'):]} (resid_post, state)": np.asarray(v, np.float64)
                   for k, v in d["metrics"].items() if k.startswith("probe_f1_")})
    page.figure(plots.dynamics_curves(steps, series, commit), "Per-seed curves over the kept checkpoints.")
    shares = {}
    for contrast in ("veto", "gate"):
        carry = np.asarray(d["metrics"][f"{contrast}_carry"], np.float64)
        for j, lab in enumerate(d["labels"]):
            shares[f"{contrast}: {lab} carry"] = carry[:, :, j]
    page.figure(plots.dynamics_curves(steps, shares, commit), "Carry shares of each component (census definitions).")
    page.section("classes", "Census class and commitment")
    names = sorted({n for row in d["classes"] for n in row})
    idx = np.asarray([[names.index(n) for n in row] for row in d["classes"]])
    page.figure(plots.class_timeline(steps, idx, names, commit, d["seeds"], "census class (veto carrier / gate carrier)"),
                "Each seed's class at each checkpoint; the commit step outlined.")
    rows = [[c["seed"], c["class"], "yes" if c["head_circuit"] else "no", c["step"], c["changes"],
             float(d["metrics"]["calibration_error"][s][-1])] for s, c in enumerate(d["commit"])]
    page.table(["seed", "final class", "head circuit", "commit step", "class changes", "final calib. error"], rows)
    sec = d["seconds"]
    page.note(f"computed in {sec['total']:.0f} s (load {sec['load']:.0f}, census + ACDC {sec['census_acdc']:.0f}, "
              f"calibration {sec['calibration']:.0f}, probes {sec['probes']:.0f}); {d['options']}")
    return page.render()


def write_dynamics(run: str | Path, out: str | Path | None = None, opts: DynamicsOptions = DynamicsOptions(),
                   log: Callable[[str], object] = print) -> Path:
    """``dynamics(run)`` written as ``dynamics.json`` and ``dynamics.html`` in ``out`` (default:
    ``reports/dynamics_<run name>``). Returns the page's path. What ``analyse.py --dynamics RUN`` calls."""
    run = Path(run)
    if not run.exists():
        raise FileNotFoundError(f"no run at {run}")
    out = Path(out) if out else Path("reports") / f"dynamics_{run.absolute().name}"
    out.mkdir(parents=True, exist_ok=True)
    d = dynamics(run, opts, log)
    io.write_json_atomic(out / "dynamics.json", d, indent=1, sort_keys=False)
    io.write_text_atomic(out / "dynamics.html", render(d))
    return out / "dynamics.html"
