"""The whole job of a dictionary: train one on a model's activations, and analyse it.

``open_context(model, dataset)`` opens a DT (a dtjax run or an original ``.pt``: ``dtjax.run.Run``),
its dataset and the env it was trained in; ``train(ctx, cfg, tcfg)`` harvests, trains and saves;
``analyse(ctx, dictionary)`` returns everything ``python -m dtjax.sae eval`` reports, as plain data (dicts of numpy arrays,
lists of labels and floats), so a report section or an explorer can render it:

- ``reconstruction``: {token type: SAELens's metrics} (``dtjax.sae.metrics.reconstruction``),
  for each token type present at the hook, the dictionary's own included.
- ``downstream``: action CE / KL with the dictionary spliced in, and the scores against zero-
  and mean-ablation; ``closed_loop``: returns and the rates of the task's outcomes at the given
  target RTGs (the command line's default: the task's lowest, middle and highest return, -1 / 0 /
  +1; Memory 0 / 0.5 / 1) with it spliced into every step.
- ``latents``: per latent (n_latents, ...) -- ``density``, ``mean_act`` (when active), ``dla``
  (n_actions) the direct logit effect of one unit of the latent (its decoder row through
  ``W_U``; the direct path only: later layers are not included), ``encoder_maps`` (C, 7, 7) the
  encoder direction read through ``W_state`` (the observation's direct path into the
  latent's pre-activation, per unit of code; None where the site does not contain the state
  embedding) and ``object_maps`` (O, 7, 7) from them: the effect of each of the task's objects in a view
  cell instead of empty floor, ``rtg_direct`` (pre-activation per unit RTG, at RTG tokens), the ``n_top``
  top-activating evaluation tokens (index, activation, view, RTG, timestep), and the best probe.
- ``probes``: ``dtjax.sae.probes.match`` of the trained dictionary, and of two baselines on the
  same tokens: the dictionary at its initialisation (random TopK, same k), and the site's basis
  directions relu(+-(x - mean)).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dtjax import hooks as hooks_lib
from dtjax.circuits.core import obs_maps
from dtjax.config import ModelConfig
from dtjax.data.dataset import SampleConfig, device_arrays
from dtjax.model import run_with_cache
from dtjax.run import Run
from dtjax.sae import activations as acts
from dtjax.sae import metrics, probes, store
from dtjax.sae.model import TOKENS, SAEConfig, SAEError, apply, init_sae
from dtjax.sae.train import KEY_EVAL, KEY_HARVEST, KEY_INIT, KEY_ROLLOUT, SAETrainConfig, train_dictionary
from dtjax.scenarios import has_balls
from envs.minigrid import BALL, CELL_CODES, COLOR_TO_IDX, EMPTY, GOAL, N_ONE_HOT, OBJECT_TO_IDX, WALL


@dataclasses.dataclass
class SAEInputs:
    """What a dictionary is trained and analysed on: a model with its dataset and env."""

    model_path: Path
    model_cfg: ModelConfig
    params: dict
    dataset_path: Path
    env: Any
    env_params: Any
    env_id: str
    max_steps: int
    size: int
    data: dict  # dtjax.data.dataset.device_arrays
    states: dict  # host arrays agent_pos (N, 2), agent_dir (N,) for the probes
    sample_cfg: SampleConfig
    run: Run  # what the model was opened from (its env, its sae/ folder)


def open_context(model: str | Path, dataset: str | Path | None = None) -> SAEInputs:
    """Open a model (dtjax run directory or original ``.pt``: ``dtjax.run.Run``), its dataset (or
    ``dataset``), and the env the model was trained in (the run's ``EnvConfig``)."""
    model_path = store.resolve_model(model)
    run = Run.open(model_path).require_model()
    dataset_path = store.resolve_dataset(run, dataset)
    arrays, meta = run.open_dataset(dataset_path)
    env_cfg = run.env_cfg
    if meta["env_id"] != env_cfg.env_id:
        raise SAEError(f"dataset {dataset_path} is for {meta['env_id']}, the model {model_path} for {env_cfg.env_id}")
    env, env_params = env_cfg.make()
    model_cfg = run.model_cfg
    sample_cfg = SampleConfig(model_cfg.n_timesteps, model_cfg.max_timestep, model_cfg.n_actions, run.prob_go_from_end)
    states = {"agent_pos": np.asarray(arrays["agent_pos"], np.int32), "agent_dir": np.asarray(arrays["agent_dir"], np.int32)}
    return SAEInputs(model_path, model_cfg, jax.tree.map(jnp.asarray, run.params), dataset_path, env, env_params,
                   env_cfg.env_id, env_cfg.max_steps, int(env.size), device_arrays(arrays), states, sample_cfg, run)


def make_config(ctx: SAEInputs, hook: str, token: str, arch: str = "topk", n_latents: int = 1024, k: int = 16,
                transcoder: bool = False, **kw) -> SAEConfig:
    """An SAEConfig for a site of this model (widths from the model; SAEError on a bad site)."""
    full, d_in, d_out = acts.check_site(ctx.model_cfg, hook, token, transcoder)
    return SAEConfig(hook=full, token=token, arch=arch, transcoder=transcoder, n_latents=n_latents, k=k, d_in=d_in,
                     d_out=d_out, **kw)


def train(ctx: SAEInputs, cfg: SAEConfig, tcfg: SAETrainConfig, out: str | Path | None = None, *, progress: bool = True,
          log=print) -> tuple[Path, store.Dictionary]:
    """Harvest ``tcfg.n_tokens`` training activations, train, and save the dictionary to ``out``
    (default beside the model: ``store.default_out``). Returns (directory, dictionary)."""
    acts.check_site(ctx.model_cfg, cfg.hook, cfg.token, cfg.transcoder)
    out = Path(out) if out else store.default_out(ctx.run, store.default_name(cfg, tcfg))
    if out.exists():
        raise SAEError(f"{out} already exists; choose another --name / --out or delete it")
    root = jax.random.PRNGKey(tcfg.seed)
    t0 = time.perf_counter()
    n_windows = -(-tcfg.n_tokens // ctx.model_cfg.n_timesteps)
    h = acts.harvest(ctx.params, ctx.model_cfg, cfg, ctx.data, ctx.env, ctx.sample_cfg,
                     jax.random.fold_in(root, KEY_HARVEST), n_windows)
    x, y, _ = acts.flat_tokens(h, cfg.token)
    jax.block_until_ready(x)
    t_harvest = time.perf_counter() - t0
    log(f"harvested {x.shape[0]} {cfg.token} tokens at {cfg.hook} in {t_harvest:.1f} s")
    variables, history, seconds = train_dictionary(cfg, tcfg, x, y, progress=progress, log=log)
    meta = {"train": tcfg.to_dict(), "model": {"kind": "model", **store.recorded_paths(ctx.model_path, out)},
            "dataset": {"kind": "dataset", **store.recorded_paths(ctx.dataset_path, out)}, "env_id": ctx.env_id,
            "max_steps": ctx.max_steps, "n_train_tokens": int(x.shape[0]),
            "seconds": {"harvest": t_harvest, **seconds}, "final": history[-1] if history else {}}
    d = store.Dictionary(cfg, variables, meta)
    store.save(out, d, history)
    return out, d


def open_dictionary(path: str | Path, model: str | Path | None = None, dataset: str | Path | None = None
                    ) -> tuple[SAEInputs, store.Dictionary]:
    """A saved dictionary with the model and dataset it was trained on (or those given)."""
    d = store.load(path)
    model = model or store.resolve_recorded(d.meta.get("model", {}), Path(path))
    dataset = dataset or store.resolve_recorded(d.meta.get("dataset", {}), Path(path))
    ctx = open_context(model, dataset)
    w = acts.check_site(ctx.model_cfg, d.cfg.hook, d.cfg.token, d.cfg.transcoder)
    if (w[1], w[2]) != (d.cfg.d_in, d.cfg.d_out):
        raise SAEError(f"the dictionary reads width {d.cfg.d_in}, this model's {d.cfg.hook} has {w[1]}")
    return ctx, d


def active_latents(d: store.Dictionary, params: dict, model_cfg: ModelConfig, obs, rtg, timesteps, actions=None,
                   top: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The dictionary's most active latents at the last timestep's token of its type (what an
    explorer shows at the current step): (indices (batch, top), activations (batch, top)); inputs as
    ``dtjax.model.forward``'s."""
    _, cache = run_with_cache(params, model_cfg, obs, rtg, timesteps, actions, names=acts.cache_names(d.cfg))
    x, _ = acts.site_values(params, model_cfg, d.cfg, cache)
    z = np.asarray(apply(jax.tree.map(jnp.asarray, d.variables), d.cfg, x[:, -1], "encode"))
    idx = np.argsort(-z, axis=1)[:, :top]
    return idx, np.take_along_axis(z, idx, 1)


# ---------------------------------------------------------------------------------------------
# ANALYSIS
# ---------------------------------------------------------------------------------------------


def site_tokens(model_cfg: ModelConfig, cfg: SAEConfig) -> tuple[str, ...]:
    """Token types present at the dictionary's hook (with its own first)."""
    if cfg.hook in acts.EMBED_TOKEN:
        return (cfg.token,)
    present = TOKENS if model_cfg.n_timesteps > 1 and acts.full_actions(model_cfg) else ("rtg", "state")
    return (cfg.token,) + tuple(t for t in present if t != cfg.token)


def encode_all(variables: dict, cfg: SAEConfig, x: jax.Array, chunk: int = 8192) -> np.ndarray:
    """Latents (M, n_latents) of inputs x (M, d_in), as a host float32 array."""
    f = jax.jit(lambda v, xc: apply(v, cfg, xc, "encode"))
    return np.concatenate([np.asarray(f(variables, x[i: i + chunk])) for i in range(0, x.shape[0], chunk)], 0)


def residual_directions(params: dict, model_cfg: ModelConfig, cfg: SAEConfig, dec: np.ndarray) -> np.ndarray | None:
    """Decoder rows (L, d_out) in model units as residual-stream directions (L, d_model), or None."""
    suffix = cfg.hook.split(".", 2)[2] if cfg.hook.startswith("blocks.") else cfg.hook
    if suffix in ("mlp.hook_pre", "mlp.hook_pre_linear"):
        return None  # through a ReLU (or a gated MLP's product): no direct linear path
    if suffix == "mlp.hook_post":
        return dec @ np.asarray(params[f"blocks_{acts.layer_of(cfg.hook)}"]["mlp"]["W_out"])
    return dec


def direct_logit_effects(params: dict, model_cfg: ModelConfig, directions: np.ndarray) -> np.ndarray:
    """(L, n_actions): each residual direction through the unembedding (with LN: through ln_final's
    weights, centred, scale not applied)."""
    W_U = np.asarray(params["W_U"])
    if model_cfg.layer_norm:
        directions = directions - directions.mean(-1, keepdims=True)
        W_U = np.asarray(params["ln_final"]["w"])[:, None] * W_U
    return directions @ W_U


DEFAULT_COLOURS = {"wall": 5, "ball": 2, "goal": 1, "key": 4}  # MiniGrid colour codes (Dynamic Obstacles' ball blue)


def object_codes(obs: np.ndarray, objects) -> dict[str, tuple[int, int, int]]:
    """The raw (object, colour, state) code of each of ``objects`` (names) as it appears in the views
    ``obs`` (M, 7, 7, C) (its most frequent code: Memory's key and ball are green, Dynamic
    Obstacles' ball blue), or its MiniGrid default where the views never show it."""
    obs = np.asarray(obs)
    if obs.shape[-1] == N_ONE_HOT:
        n_o, n_c = len(OBJECT_TO_IDX), len(COLOR_TO_IDX)
        raw = np.stack([obs[..., :n_o].argmax(-1), obs[..., n_o:n_o + n_c].argmax(-1),
                        obs[..., n_o + n_c:].argmax(-1)], -1)
    else:
        raw = obs[..., :3]
    raw = raw.reshape(-1, 3).astype(np.int64)
    out = {}
    for o in objects:
        seen = raw[raw[:, 0] == OBJECT_TO_IDX[o]]
        if len(seen):
            vals, counts = np.unique(seen, axis=0, return_counts=True)
            out[o] = tuple(int(v) for v in vals[np.argmax(counts)])
        else:
            out[o] = (OBJECT_TO_IDX[o], DEFAULT_COLOURS.get(o, 0), 0)
    return out


def object_maps(encoder_maps: np.ndarray, obs_mode: str, codes: dict | None = None) -> tuple[np.ndarray, list[str]]:
    """(L, O, 7, 7): the change of each latent's pre-activation when a view cell holds each object
    of ``codes`` (name -> raw (object, colour, state), ``object_codes``; default Dynamic Obstacles'
    wall, ball, goal) instead of empty floor (the codes' difference through the encoder maps (L, C, 7, 7))."""
    codes = {o: tuple(CELL_CODES[t]) for o, t in (("wall", WALL), ("ball", BALL), ("goal", GOAL))} if codes is None else codes
    codes = {o: c for o, c in codes.items() if o != "empty"}

    def enc(c):
        if obs_mode != "one_hot":
            return np.asarray(c, np.float32)
        v = np.zeros(N_ONE_HOT, np.float32)
        v[[c[0], len(OBJECT_TO_IDX) + c[1], len(OBJECT_TO_IDX) + len(COLOR_TO_IDX) + c[2]]] = 1
        return v

    diffs = np.stack([enc(c) - enc(CELL_CODES[EMPTY]) for c in codes.values()])  # (O, C)
    return np.einsum("oc,lcxy->loxy", diffs, encoder_maps).astype(np.float32), list(codes)


def _reads_residual(cfg: SAEConfig) -> bool:
    """Whether the dictionary's input contains the token embeddings directly (a residual-stream site)."""
    if cfg.transcoder:
        return True
    return hooks_lib.suffix(cfg.hook) in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_embed", "hook_state_embed",
                      "hook_rtg_embed")


def top_activating(Z: np.ndarray, n_top: int) -> tuple[np.ndarray, np.ndarray]:
    """(index (L, n_top), activation (L, n_top)) of each latent's largest activations; -1 / 0 past
    its active tokens."""
    n_top = min(n_top, Z.shape[0])
    part = np.argpartition(-Z, n_top - 1, axis=0)[:n_top].T  # (L, n_top), unordered
    vals = np.take_along_axis(Z.T, part, 1)
    order = np.argsort(-vals, axis=1)
    idx, vals = np.take_along_axis(part, order, 1), np.take_along_axis(vals, order, 1)
    return np.where(vals > 0, idx, -1), np.where(vals > 0, vals, 0.0).astype(np.float32)


def analyse(ctx: SAEInputs, d: store.Dictionary, *, n_tokens: int = 262_144, n_analysis: int = 32_768, episodes: int = 500,
            rtgs=(-1.0, 0.0, 1.0), closed_loop: bool = True, n_top: int = 9, seed: int | None = None,
            log=None) -> dict:
    """Everything about one dictionary, as plain data (see the module docstring).

    Reconstruction metrics (dead and dense fractions included) use ``n_tokens`` held-out tokens of
    each type; the downstream CE / KL, the latents and the probes the first ``n_analysis`` of them.
    """
    log = log or (lambda *_: None)
    cfg, mcfg = d.cfg, ctx.model_cfg
    variables = jax.tree.map(jnp.asarray, d.variables)
    seed = int(d.meta.get("train", {}).get("seed", 0)) if seed is None else seed
    root = jax.random.PRNGKey(seed)
    tokens = site_tokens(mcfg, cfg)
    t0 = time.perf_counter()
    # Held-out windows: another key than the training harvest (the same dataset, other draws).
    h = acts.harvest(ctx.params, mcfg, cfg, ctx.data, ctx.env, ctx.sample_cfg, jax.random.fold_in(root, KEY_EVAL),
                     -(-n_tokens // mcfg.n_timesteps), tokens=tokens, keep_windows=True)
    out: dict = {"sae": cfg.to_dict(), "model": str(ctx.model_path), "dataset": str(ctx.dataset_path),
                 "train": {k: d.meta.get(k) for k in ("n_train_tokens", "seconds", "final")}}

    # RECONSTRUCTION, per token type
    out["reconstruction"] = {}
    for t in tokens:
        x, y, _ = acts.flat_tokens(h, t)
        out["reconstruction"][t] = metrics.reconstruction(variables, cfg, x, y)
    log(f"reconstruction: {time.perf_counter() - t0:.1f} s")

    # DOWNSTREAM: the dictionary spliced in, against ablations (on the first n_analysis windows)
    n_win = min(-(-n_analysis // mcfg.n_timesteps), h["mask"].shape[0])
    h = jax.tree.map(lambda a: a[:n_win], h)
    x, y, idx = acts.flat_tokens(h, cfg.token)
    target = y if cfg.transcoder else x
    out["downstream"] = metrics.downstream(ctx.params, mcfg, cfg, variables, h["windows"], target.mean(0))
    log(f"downstream: {time.perf_counter() - t0:.1f} s")
    if closed_loop:
        out["closed_loop"] = metrics.closed_loop(ctx.params, mcfg, cfg, variables, ctx.env, ctx.env_params,
                                                 jax.random.fold_in(root, KEY_ROLLOUT), rtgs, episodes)
        log(f"closed loop: {time.perf_counter() - t0:.1f} s")

    # LATENTS
    Z = encode_all(variables, cfg, x)
    flat = lambda a: np.asarray(a).reshape((-1,) + np.asarray(a).shape[2:])[idx]  # noqa: E731
    obs, rtg, ts = flat(h["windows"]["obs"]), flat(h["windows"]["rtg"]), flat(h["windows"]["timesteps"])
    rows = flat(h["rows"])
    top_idx, top_act = top_activating(Z, n_top)
    safe = np.maximum(top_idx, 0)
    dec = np.asarray(variables["params"]["W_dec"]) / float(variables["norm"]["scale_out"])
    enc = np.asarray(variables["params"]["W_enc"]) * float(variables["norm"]["scale_in"])  # (d_in, L), model units
    resid = residual_directions(ctx.params, mcfg, cfg, dec)
    count = (Z > 0).sum(0)
    lat = {"density": out["reconstruction"][cfg.token]["density"],
           "mean_act": np.where(count > 0, Z.sum(0) / np.maximum(count, 1), 0.0).astype(np.float32),
           "dla": None if resid is None else direct_logit_effects(ctx.params, mcfg, resid).astype(np.float32),
           "action_labels": list(ctx.env.task.action_names),
           "encoder_maps": None, "object_maps": None, "object_labels": None, "rtg_direct": None,
           "top_index": top_idx, "top_act": top_act, "top_obs": obs[safe], "top_rtg": rtg[safe], "top_timestep": ts[safe]}
    if _reads_residual(cfg) and cfg.token == "state" and cfg.d_in == mcfg.d_model:
        lat["encoder_maps"] = np.asarray(obs_maps(jnp.asarray((np.asarray(ctx.params["W_state"]) @ enc).T), mcfg))
        lat["object_maps"], lat["object_labels"] = object_maps(lat["encoder_maps"], mcfg.obs_mode,
                                                               object_codes(obs, ctx.env.task.objects))
    if _reads_residual(cfg) and cfg.token == "rtg" and cfg.d_in == mcfg.d_model:
        lat["rtg_direct"] = (np.asarray(ctx.params["W_rtg"])[0] @ enc).astype(np.float32)

    # PROBES: the trained dictionary and two baselines on the same tokens
    names, fams, labels = probes.probe_labels(obs, rtg, ts, ctx.states["agent_pos"][rows], ctx.states["agent_dir"][rows],
                                              ctx.size, ctx.env.task.objects, has_balls(ctx.env.task))
    auc = probes.auroc(Z, labels)
    out["probes"] = probes.match(auc, labels, names, fams)
    lat["best_probe"] = [names[i] for i in out["probes"]["latent_best_probe"]]
    lat["best_probe_auc"] = out["probes"]["latent_best_auc"]
    k0 = max(1, int(round(out["reconstruction"][cfg.token]["l0"])))
    rand_cfg = dataclasses.replace(cfg, arch="topk", k=min(k0, cfg.n_latents))
    rand = init_sae(jax.random.fold_in(jax.random.PRNGKey(int(d.meta.get("train", {}).get("seed", 0))), KEY_INIT),
                    rand_cfg, {k: variables["norm"][k] for k in ("mu_in", "scale_in", "mu_out", "scale_out")})
    base_rand = probes.match(probes.auroc(encode_all(rand, rand_cfg, x), labels), labels, names, fams)
    xc = np.asarray(x) - np.asarray(variables["norm"]["mu_in"])
    base_basis = probes.match(probes.auroc(np.concatenate([np.maximum(xc, 0), np.maximum(-xc, 0)], 1), labels), labels,
                              names, fams)
    out["baselines"] = {"random_init": base_rand, "basis": base_basis,
                        "labels": {"random_init": f"the dictionary's initialisation (TopK, k={k0})",
                                   "basis": f"relu(+-(x - mean)) of the {2 * cfg.d_in} basis directions"}}
    out["latents"] = lat
    log(f"latents and probes: {time.perf_counter() - t0:.1f} s")
    return out


def summary(a: dict, n_latents_listed: int = 20) -> dict:
    """The JSON-able part of ``analyse``'s result (scalars, per-probe and per-latent tables)."""
    def clean(m):
        return {k: v for k, v in m.items() if not isinstance(v, np.ndarray)}

    p, b = a["probes"], a["baselines"]
    valid = np.flatnonzero(p["valid"])
    probe_rows = [{"probe": p["names"][i], "family": p["families"][i], "n_pos": int(p["n_pos"][i]),
                   "best_latent": int(p["best_latent"][i]), "auroc": round(float(p["best_auc"][i]), 4),
                   "auroc_random_init": round(float(b["random_init"]["best_auc"][i]), 4),
                   "auroc_basis": round(float(b["basis"]["best_auc"][i]), 4)} for i in valid]
    lat = a["latents"]
    order = np.argsort(-np.nan_to_num(lat["best_probe_auc"], nan=-1))[:n_latents_listed]
    latent_rows = [{"latent": int(j), "density": round(float(lat["density"][j]), 5),
                    "best_probe": lat["best_probe"][j], "auroc": round(float(lat["best_probe_auc"][j]), 4),
                    **({"dla": [round(float(v), 3) for v in lat["dla"][j]]} if lat["dla"] is not None else {})}
                   for j in order]
    return {"sae": a["sae"], "model": a["model"], "dataset": a["dataset"], "train": a["train"],
            "reconstruction": {t: clean(m) for t, m in a["reconstruction"].items()},
            "downstream": a["downstream"], "closed_loop": a.get("closed_loop"),
            "probes": {"threshold": p["threshold"], "min_count": p["min_count"], "n_valid": p["n_valid"],
                       "recovered_frac": p["recovered_frac"], "recovered_by_family": p["recovered_by_family"],
                       "baseline_recovered_frac": {k: b[k]["recovered_frac"] for k in ("random_init", "basis")},
                       "baseline_labels": b["labels"], "table": probe_rows},
            "top_latents_by_probe_auroc": latent_rows}


def eval_arrays(a: dict) -> dict[str, np.ndarray]:
    """``analyse``'s arrays flat, for ``eval/analysis.npz`` (what an explorer reads):
    ``latents/<key>``, ``probes/<key>`` and ``reconstruction/<token>/density``."""
    flat = {f"latents/{k}": v for k, v in a["latents"].items() if isinstance(v, np.ndarray)}
    for k in ("n_pos", "valid", "best_latent", "best_auc", "recovered", "latent_best_probe", "latent_best_auc"):
        flat[f"probes/{k}"] = np.asarray(a["probes"][k])
    flat["probes/names"] = np.asarray(a["probes"]["names"])
    flat["latents/best_probe"] = np.asarray(a["latents"]["best_probe"])
    for t, m in a["reconstruction"].items():
        flat[f"reconstruction/{t}/density"] = np.asarray(m["density"])
    return flat
