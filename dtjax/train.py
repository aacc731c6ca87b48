"""The main job: collect behaviour data, train Decision Transformers, evaluate, calibrate, save.

``train_and_evaluate(cfg)`` is what ``python train.py`` calls. The pieces:

- data: ``dtjax.data`` collects PPO (+ mix) rollouts on device, or reuses a stored dataset; the
  dataset used is stored in the run directory so a resumed run trains on the same data.
- training: cross-entropy on the action logits at state tokens (padding masked). One jitted
  function runs ``log_every`` optimizer steps in a ``lax.scan``; the batch of step ``s`` is drawn
  with ``fold_in(data_key, s)``, so a run resumed from a checkpoint draws exactly the batches the
  uninterrupted run would have drawn, and ends with the same parameters.
- many seeds (``num_seeds`` N > 1): the same step ``vmap``-ed over N stacked models (PureJaxRL
  style), one jitted scan for all of them. Seed k is the run of ``seed + k``: its own init and
  batch keys (and, with ``seed_datasets``, its own dataset), the same dataset by default. Each
  seed gets a complete run directory ``<run>/seed_k/`` (config, env, metrics, checkpoints,
  evaluation, calibration), so ``dtjax.load("<run>/seed_k")`` loads it. N = 1 is the one-model
  loop, unchanged (no vmap: its parameters are bit for bit those of earlier releases).
- sharding: one model splits its batch over every device; N models split the seed axis over
  ``gcd(N, devices)`` device rows and each batch over the rest (``dtjax.sharding``).
- evaluation: ``dtjax.evaluate`` at the configured target RTGs every ``eval_every`` steps;
  calibration over ``calib_points`` target RTGs at the end, each played until its mean return
  has standard error ``calib_se`` (``calibration.json``/``calibration.png``). All evaluations
  of a run share one compiled rollout (``evaluate.Capacity``); N seeds are one vmapped rollout.
- checkpoints: orbax, every ``ckpt_every`` steps and at the end (``dtjax.checkpoint``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dtjax import checkpoint as ckpt_lib
from dtjax import plots
from dtjax import sharding
from dtjax.config import ConfigError, TrainConfig
from dtjax.evaluate import Capacity, calibration_stats, evaluate, evaluate_seeds
from dtjax.model import forward, init_params


class RunError(ValueError):
    """A run directory or dataset problem reported to the user in one line."""


# ---------------------------------------------------------------------------------------------
# OPTIMIZER AND LOSS
# ---------------------------------------------------------------------------------------------


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW (decoupled decay), or the original's torch Adam with coupled L2 (``adam_l2``).

    torch ``Adam(weight_decay=wd)`` adds ``wd * param`` to the gradient before the Adam moments,
    which is ``add_decayed_weights`` *before* ``scale_by_adam`` (original-project.md §6, §12).
    """
    if cfg.lr_schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup_steps, cfg.num_steps)
    else:
        lr = cfg.lr
    if cfg.optimizer == "adamw":
        tx = optax.adamw(lr, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adam_l2":
        tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay), optax.adam(lr))
    else:  # validated in TrainConfig
        raise ConfigError(f"unknown optimizer {cfg.optimizer!r}")
    if cfg.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
    return tx


def loss_fn(params, model_cfg, batch) -> tuple[jax.Array, dict]:
    """Masked cross-entropy of the action logits at state tokens, and accuracy.

    ``batch``: obs (B,K,7,7,C), rtg (B,K), timesteps (B,K), actions (B,K), mask (B,K).
    """
    actions_in = batch["actions"] if model_cfg.n_timesteps > 1 else None
    logits = forward(params, model_cfg, batch["obs"], batch["rtg"], batch["timesteps"], actions_in)
    mask = batch["mask"].astype(jnp.float32)
    targets = jnp.clip(batch["actions"], 0, model_cfg.n_actions - 1)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    denom = jnp.maximum(mask.sum(), 1.0)
    loss = (ce * mask).sum() / denom
    acc = ((jnp.argmax(logits, -1) == targets) * mask).sum() / denom
    return loss, {"loss": loss, "accuracy": acc}


def _make_step(cfg: TrainConfig, tx, sample_batch, constrain):
    """``one_step((params, opt_state), step, data, data_key)``: sample, loss, gradient, update."""
    model_cfg = cfg.model

    def one_step(carry, step, data, data_key):
        params, opt_state = carry
        batch = sample_batch(jax.random.fold_in(data_key, step), data, cfg.batch_size)
        batch = constrain(batch)
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, model_cfg, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state), metrics

    return one_step


def _chunk_body(cfg: TrainConfig, one_step):
    def chunk(params, opt_state, data, data_key, start_step):
        # The dataset is closed over, not carried: a scan carry of the whole dataset is copied per step.
        steps = start_step + jnp.arange(cfg.log_every, dtype=jnp.int32)
        body = functools.partial(one_step, data=data, data_key=data_key)
        (params, opt_state), metrics = jax.lax.scan(body, (params, opt_state), steps)
        return params, opt_state, jax.tree.map(jnp.mean, metrics)

    return chunk


def make_train_chunk(cfg: TrainConfig, tx, sample_batch, mesh):
    """Build ``chunk(params, opt_state, data, data_key, start_step) -> (params, opt_state, metrics)``.

    Runs ``cfg.log_every`` steps in a ``lax.scan``. Step ``s`` samples with
    ``fold_in(data_key, s)``; the batch is constrained to be split over the mesh's ``data`` axis.
    """
    batch_sharding = sharding.batch_sharding(mesh)

    def constrain(batch):
        if mesh.devices.size > 1:
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        return batch

    return jax.jit(_chunk_body(cfg, _make_step(cfg, tx, sample_batch, constrain)))


def make_seeds_chunk(cfg: TrainConfig, tx, sample_batch, mesh, shared_data: bool = True):
    """``make_train_chunk`` for N models at once: the same chunk ``vmap``-ed over a leading seed
    axis of ``params``, ``opt_state`` and ``data_key`` (and of ``data`` unless ``shared_data``).

    ``mesh``: ``sharding.seed_mesh(N)``; the vmapped axis is the mesh's ``seed`` axis
    (``spmd_axis_name``), and each seed's batch is split over its ``data`` axis. Metrics come
    back per seed, (N,) arrays.
    """
    split_batch = sharding.data_size(mesh) > 1

    def constrain(batch):
        if split_batch:
            batch = jax.lax.with_sharding_constraint(batch, sharding.batch_sharding(mesh))
        return batch

    body = _chunk_body(cfg, _make_step(cfg, tx, sample_batch, constrain))
    in_axes = (0, 0, None if shared_data else 0, 0, None)
    return jax.jit(jax.vmap(body, in_axes=in_axes, spmd_axis_name="seed"))


def stack_datasets(datas: list[dict]) -> dict:
    """Device datasets of several seeds (``dataset.device_arrays``) as one pytree with a leading
    seed axis: each array padded to the longest (padding rows repeat row 0 and are never drawn:
    ``n_valid`` holds each seed's real number of start rows)."""
    out = {"n_valid": jnp.asarray([d["valid_idx"].shape[0] for d in datas], jnp.int32)}
    for k in datas[0]:
        n = max(d[k].shape[0] for d in datas)
        out[k] = jnp.stack([jnp.concatenate([d[k], jnp.broadcast_to(d[k][:1], (n - d[k].shape[0],) + d[k].shape[1:])])
                            for d in datas])
    return out


# ---------------------------------------------------------------------------------------------
# THE MAIN JOB
# ---------------------------------------------------------------------------------------------

# Purpose tags for fold_in, so each consumer of randomness has its own stream.
_KEY_DATA, _KEY_INIT, _KEY_SAMPLE, _KEY_EVAL, _KEY_CALIB = range(5)


def run_dir_of(cfg: TrainConfig) -> Path:
    return Path(cfg.checkpoint_dir) / cfg.run_name


def _read_metrics(path: Path, up_to_step: int | None) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if up_to_step is None or r.get("step", 0) <= up_to_step]


class _MetricsWriter:
    """JSON lines in the run directory, plus wandb/TensorBoard when asked for and installed."""

    def __init__(self, path: Path, rows: list[dict], cfg: TrainConfig, name: str | None = None):
        self.path = path
        with open(path, "w") as f:  # rewritten from the rows kept at the restored step
            for r in rows:
                f.write(json.dumps(r) + "\n")
        self.wandb = None
        if cfg.wandb_project:
            try:
                import wandb  # optional

                self.wandb = wandb.init(project=cfg.wandb_project, name=name or cfg.run_name, config=cfg.to_dict(),
                                        resume="allow", reinit=True)
            except ImportError:
                print("wandb is not installed; logging to metrics.jsonl only")

    def write(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            self.wandb.log(row, step=row["step"])


def _eval_row(res) -> dict:
    out = {}
    for r in res.summary():
        t = f"{r['target_rtg']:+g}"
        out[f"eval/return@{t}"] = r["mean_return"]
        for o in res.outcomes[1:-1]:  # the task's outcomes besides running and timeout: goal, hit
            out[f"eval/{o}@{t}"] = r[f"{o}_rate"]
        out[f"eval/length@{t}"] = r["mean_length"]
    return out


def seed_dirs(cfg: TrainConfig) -> list[Path]:
    """Run directory of each seed: the run directory itself for one seed, else ``<run>/seed_k``."""
    run_dir = run_dir_of(cfg)
    return [run_dir] if cfg.num_seeds == 1 else [run_dir / f"seed_{k}" for k in range(cfg.num_seeds)]


def seed_config(cfg: TrainConfig, k: int, dataset: str) -> TrainConfig:
    """The one-seed config that seed ``k`` of ``cfg`` is: seed ``cfg.seed + k`` trained on ``dataset``
    (stored as ``<run>/seed_k/config.json`` and in its checkpoints)."""
    return cfg.replace(seed=cfg.seed + k, num_seeds=1, seed_datasets=False, dataset=dataset)


def _stack(trees: list):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _unstack(tree, n: int) -> list:
    tree = jax.device_get(tree)
    return [jax.tree.map(lambda x: x[k], tree) for k in range(n)]


def _restore_step(mgrs) -> int | None:
    """The latest checkpoint step every seed has (a crash mid-save can leave seeds one step apart)."""
    steps = [set(m.all_steps()) for m in mgrs]
    common = set.intersection(*steps) if steps else set()
    return max(common) if common else None


def train_and_evaluate(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> dict:
    """Run the whole job for ``cfg``; returns the final summary (also written to ``summary.json``).

    With ``resume=True`` the run directory must exist: its saved config wins, the dataset stored
    in it is reused, and training continues from the latest checkpoint (with N seeds, the
    latest step all seeds have saved).
    """
    import envs  # noqa: F401
    from tqdm.auto import tqdm

    from dtjax.data.collect import prepare_dataset
    from dtjax.data.dataset import SampleConfig, device_arrays
    from dtjax.data.dataset import sample_batch as sample_batch_fn

    run_dir = run_dir_of(cfg)
    if resume:
        cfg_path = run_dir / "config.json"
        if not cfg_path.exists():
            raise RunError(f"cannot resume: no run at {run_dir} (missing config.json)")
        saved = TrainConfig.from_json(cfg_path.read_text())
        cfg = saved.replace(checkpoint_dir=cfg.checkpoint_dir)
    elif (run_dir / "summary.json").exists() or any((d / ckpt_lib.CKPT_DIR).exists() for d in seed_dirs(cfg)):
        raise RunError(f"run {run_dir} already exists: pass --resume {cfg.run_name} or choose another --run_name")
    n_seeds = cfg.num_seeds
    many = n_seeds > 1
    dirs = seed_dirs(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_lib.write_json_atomic(run_dir / "config.json", cfg.to_dict())
    ckpt_lib.write_json_atomic(run_dir / ckpt_lib.ENV_FILE, cfg.env.to_dict())

    mesh = sharding.seed_mesh(n_seeds) if many else sharding.data_mesh()
    try:
        sharding.check_divisible(cfg.batch_size, mesh, "batch_size")
    except ValueError as e:
        raise RunError(str(e)) from e
    roots = [jax.random.PRNGKey(cfg.seed + k) for k in range(n_seeds)]
    root = roots[0]
    t0 = time.time()

    # DATA: one dataset (collected with the first seed's key, or cfg.dataset), or one per seed
    env, env_params = cfg.env.make()
    if cfg.model.n_actions != env.num_actions:
        raise ValueError(f"model.n_actions is {cfg.model.n_actions} but {cfg.env.env_id} has {env.num_actions} actions")
    log = (lambda msg: tqdm.write(msg)) if progress else (lambda msg: None)
    sample_cfg = SampleConfig(cfg.model.n_timesteps, cfg.model.max_timestep, cfg.model.n_actions, cfg.data.prob_go_from_end)
    sample_batch = functools.partial(sample_batch_fn, env=env, cfg=sample_cfg)
    per_seed_data = many and cfg.seed_datasets and not cfg.dataset
    if per_seed_data:
        datas, datasets = [], []
        for k, d in enumerate(dirs):
            d.mkdir(parents=True, exist_ok=True)
            log(f"seed {k}: dataset")
            arrays, _ = prepare_dataset(cfg.replace(seed=cfg.seed + k), env, env_params,
                                        jax.random.fold_in(roots[k], _KEY_DATA), d, log=log)
            datas.append(device_arrays(arrays, cfg.data.pct_traj))
            datasets.append(str(d / "dataset"))
        data = jax.device_put(stack_datasets(datas), sharding.seed_sharding(mesh))
        del datas
    else:
        arrays, _ = prepare_dataset(cfg, env, env_params, jax.random.fold_in(root, _KEY_DATA), run_dir, log=log)
        data = jax.device_put(device_arrays(arrays, cfg.data.pct_traj), sharding.replicated(mesh))
        datasets = [cfg.dataset or str(run_dir / "dataset")] * n_seeds
    del arrays
    t_data = time.time() - t0
    cfgs = [cfg] if not many else [seed_config(cfg, k, datasets[k]) for k in range(n_seeds)]
    for c, d in zip(cfgs, dirs):
        d.mkdir(parents=True, exist_ok=True)
        if many:
            ckpt_lib.write_json_atomic(d / "config.json", c.to_dict())
            ckpt_lib.write_json_atomic(d / ckpt_lib.ENV_FILE, c.env.to_dict())

    # MODEL AND OPTIMIZER: each seed's init and batch keys are those of a one-seed run of its seed
    tx = make_optimizer(cfg)
    params = [init_params(jax.random.fold_in(r, _KEY_INIT), cfg.model) for r in roots]
    opt_state = [tx.init(p) for p in params]
    mgrs = [ckpt_lib.manager(d, max_to_keep=cfg.keep_checkpoints) for d in dirs]
    step = 0
    restore_at = _restore_step(mgrs) if resume else None
    if restore_at is not None:
        for k, m in enumerate(mgrs):
            _, params[k], st = ckpt_lib.restore_train(m, params[k], {"opt_state": opt_state[k]}, step=restore_at)
            opt_state[k] = st["opt_state"]
        step = restore_at
    sample_keys = [jax.random.fold_in(r, _KEY_SAMPLE) for r in roots]
    eval_roots = [jax.random.fold_in(r, _KEY_EVAL) for r in roots]
    if many:
        put = functools.partial(jax.device_put, device=sharding.seed_sharding(mesh))
        params, opt_state, sample_key = put(_stack(params)), put(_stack(opt_state)), put(jnp.stack(sample_keys))
        chunk = make_seeds_chunk(cfg, tx, sample_batch, mesh, shared_data=not per_seed_data)
    else:
        params, opt_state = jax.device_put((params[0], opt_state[0]), sharding.replicated(mesh))
        sample_key = sample_keys[0]
        chunk = make_train_chunk(cfg, tx, sample_batch, mesh)
    writers = [_MetricsWriter(d / "metrics.jsonl", _read_metrics(d / "metrics.jsonl", step if resume else 0), c,
                              name=cfg.run_name if not many else f"{cfg.run_name}/seed_{k}")
               for k, (c, d) in enumerate(zip(cfgs, dirs))]
    # one compiled rollout serves every evaluation of the run: the largest targets x episodes
    capacity = Capacity(max(len(cfg.eval_rtgs), cfg.calib_points),
                        max(cfg.eval_episodes, cfg.final_eval_episodes, cfg.calib_episodes), cfg.eval_pool)

    def save(step):
        trees = [(params, opt_state)] if not many else list(zip(_unstack(params, n_seeds), _unstack(opt_state, n_seeds)))
        for m, (p, o), c in zip(mgrs, trees, cfgs):
            ckpt_lib.save(m, step, p, {"opt_state": o}, c.to_dict())

    def run_eval(step, rtgs, n_episodes, greedy=True, key_root=None, **kw):
        """One EvalResult per seed, with the key ``fold_in(key_root_k, step)`` of each seed."""
        keys = [jax.random.fold_in(r, step) for r in (key_root or eval_roots)]
        args = (cfg.model, env, env_params)
        if many:
            return evaluate_seeds(params, *args, jnp.stack(keys), rtgs, n_episodes, greedy=greedy, capacity=capacity, **kw)
        return [evaluate(params, *args, keys[0], rtgs, n_episodes, greedy=greedy, capacity=capacity, **kw)]

    # TRAIN
    bar = tqdm(total=cfg.num_steps, initial=step, disable=not progress, desc="train" if not many else f"train x{n_seeds}",
               dynamic_ncols=True)
    last_eval: list[dict] = []
    t_train = t_eval_loop = 0.0
    while step < cfg.num_steps:
        t = time.time()
        params, opt_state, m = chunk(params, opt_state, data, sample_key, jnp.int32(step))
        m = jax.device_get(m)
        t_train += time.time() - t
        step += cfg.log_every
        rows = [{"step": step, "train/loss": float(np.ravel(m["loss"])[k]), "train/accuracy": float(np.ravel(m["accuracy"])[k])}
                for k in range(n_seeds)]
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.num_steps:
            t = time.time()
            last_eval = [_eval_row(r) for r in run_eval(step, cfg.eval_rtgs, cfg.eval_episodes)]
            t_eval_loop += time.time() - t
            for row, ev in zip(rows, last_eval):
                row.update(ev)
        for w, row in zip(writers, rows):
            w.write(row)
        post = {"loss": f"{np.mean([r['train/loss'] for r in rows]):.4f}"}
        if last_eval:
            post["R@+1"] = f"{np.mean([e.get('eval/return@+1', float('nan')) for e in last_eval]):.3f}"
        bar.set_postfix(post)
        bar.update(cfg.log_every)
        if step % cfg.ckpt_every == 0 or step >= cfg.num_steps:
            save(step)
    bar.close()
    for m_ in mgrs:
        m_.wait_until_finished()

    # FINAL EVALUATION AND CALIBRATION
    t1 = time.time()
    final = run_eval(cfg.num_steps, cfg.eval_rtgs, cfg.final_eval_episodes)
    sampled = run_eval(cfg.num_steps, cfg.eval_rtgs, cfg.final_eval_episodes, greedy=False)
    calib_roots = [jax.random.fold_in(r, _KEY_CALIB) for r in roots]
    calib_res = _calibrate(cfg, params, many, env, env_params, calib_roots, capacity)
    t_eval = time.time() - t1
    seconds = {"data": t_data, "train": t_train, "eval_during_training": t_eval_loop, "eval": t_eval,
               "total": time.time() - t0}
    summaries = []
    for k, (c, d, w) in enumerate(zip(cfgs, dirs, writers)):
        w.write({"step": cfg.num_steps, **_eval_row(final[k]), "final": True})
        calib = calib_res[k]
        ckpt_lib.write_json_atomic(d / "calibration.json", calib)
        plots.plot_calibration(calib, d / "calibration.png", title=cfg.run_name if not many else f"{cfg.run_name} seed {k}")
        summaries.append({
            "run_dir": str(d),
            "seed": c.seed,
            "steps": cfg.num_steps,
            "final_eval": final[k].summary(),
            "final_eval_sampled": sampled[k].summary(),
            "calibration_monotonic": calib["monotonic"],
            "calibration_strictly_monotonic": calib["strictly_monotonic"],
            "calibration_largest_decrease": calib["largest_decrease"],
            "calibration_error": calib["calibration_error"],
            "calibration_episodes": calib["episodes_total"],
            "seconds": seconds,
            "devices": [str(x) for x in jax.devices()],
        })
        ckpt_lib.write_json_atomic(d / "summary.json", summaries[-1])
    if not many:
        return summaries[0]
    summary = {"run_dir": str(run_dir), "steps": cfg.num_steps, "num_seeds": n_seeds,
               "seed_datasets": per_seed_data, "seeds": summaries, "seconds": seconds,
               "devices": [str(x) for x in jax.devices()]}
    ckpt_lib.write_json_atomic(run_dir / "summary.json", summary)
    return summary


def _calibrate(cfg: TrainConfig, params, many: bool, env, env_params, keys, capacity) -> list[dict]:
    """Each seed's calibration dict (``dtjax.evaluate.calibrate``), all seeds in one rollout."""
    rtgs = np.linspace(*env.task.return_range, cfg.calib_points)
    kw = dict(se=cfg.calib_se or None, min_episodes=cfg.calib_min_episodes, capacity=capacity)
    if many:
        res = evaluate_seeds(params, cfg.model, env, env_params, jnp.stack(keys), rtgs, cfg.calib_episodes, **kw)
    else:
        res = [evaluate(params, cfg.model, env, env_params, keys[0], rtgs, cfg.calib_episodes, **kw)]
    return [calibration_stats(r, True, cfg.calib_se or None) for r in res]
