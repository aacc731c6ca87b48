"""The main job: collect behaviour data, train a Decision Transformer, evaluate, calibrate, save.

``train_and_evaluate(cfg)`` is what ``python train.py`` calls. The pieces:

- data: ``dtjax.data`` collects PPO (+ mix) rollouts on device, or reuses a stored dataset; the
  dataset used is stored in the run directory so a resumed run trains on the same data.
- training: cross-entropy on the action logits at state tokens (padding masked). One jitted
  function runs ``log_every`` optimizer steps in a ``lax.scan``; the batch of step ``s`` is drawn
  with ``fold_in(data_key, s)``, so a run resumed from a checkpoint draws exactly the batches the
  uninterrupted run would have drawn, and ends with the same parameters.
- sharding: the batch axis is split over every device (``dtjax.sharding``); params are replicated.
- evaluation: ``dtjax.evaluate`` at the configured target RTGs every ``eval_every`` steps;
  calibration over 21 target RTGs at the end (``calibration.json``/``calibration.png``).
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
from dtjax.evaluate import calibrate, evaluate
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


def make_train_chunk(cfg: TrainConfig, tx, sample_batch, mesh):
    """Build ``chunk(params, opt_state, data, data_key, start_step) -> (params, opt_state, metrics)``.

    Runs ``cfg.log_every`` steps in a ``lax.scan``. Step ``s`` samples with
    ``fold_in(data_key, s)``; the batch is constrained to be split over the mesh's ``data`` axis.
    """
    model_cfg = cfg.model
    batch_sharding = sharding.batch_sharding(mesh)

    def one_step(carry, step, data, data_key):
        params, opt_state = carry
        batch = sample_batch(jax.random.fold_in(data_key, step), data, cfg.batch_size)
        if mesh.devices.size > 1:
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, model_cfg, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state), metrics

    @jax.jit
    def chunk(params, opt_state, data, data_key, start_step):
        # The dataset is closed over, not carried: a scan carry of the whole dataset is copied per step.
        steps = start_step + jnp.arange(cfg.log_every, dtype=jnp.int32)
        body = functools.partial(one_step, data=data, data_key=data_key)
        (params, opt_state), metrics = jax.lax.scan(body, (params, opt_state), steps)
        return params, opt_state, jax.tree.map(jnp.mean, metrics)

    return chunk


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

    def __init__(self, path: Path, rows: list[dict], cfg: TrainConfig):
        self.path = path
        with open(path, "w") as f:  # rewritten from the rows kept at the restored step
            for r in rows:
                f.write(json.dumps(r) + "\n")
        self.wandb = None
        if cfg.wandb_project:
            try:
                import wandb  # optional

                self.wandb = wandb.init(project=cfg.wandb_project, name=cfg.run_name, config=cfg.to_dict(), resume="allow")
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
        out[f"eval/goal@{t}"] = r["goal_rate"]
        out[f"eval/hit@{t}"] = r["hit_rate"]
        out[f"eval/length@{t}"] = r["mean_length"]
    return out


def train_and_evaluate(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> dict:
    """Run the whole job for ``cfg``; returns the final summary (also written to ``summary.json``).

    With ``resume=True`` the run directory must exist: its saved config wins, the dataset stored
    in it is reused, and training continues from the latest checkpoint.
    """
    import envs
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
    elif (run_dir / ckpt_lib.CKPT_DIR).exists() or (run_dir / "summary.json").exists():
        raise RunError(f"run {run_dir} already exists: pass --resume {cfg.run_name} or choose another --run_name")
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_lib.write_json_atomic(run_dir / "config.json", cfg.to_dict())
    ckpt_lib.write_json_atomic(run_dir / ckpt_lib.ENV_FILE, cfg.env.to_dict())

    mesh = sharding.data_mesh()
    sharding.check_divisible(cfg.batch_size, mesh, "batch_size")
    root = jax.random.PRNGKey(cfg.seed)
    t0 = time.time()

    # DATA
    env, env_params = cfg.env.make()
    log = (lambda msg: tqdm.write(msg)) if progress else (lambda msg: None)
    arrays, _ = prepare_dataset(cfg, env, env_params, jax.random.fold_in(root, _KEY_DATA), run_dir, log=log)
    data = jax.device_put(device_arrays(arrays, cfg.data.pct_traj), sharding.replicated(mesh))
    sample_cfg = SampleConfig(cfg.model.n_timesteps, cfg.model.max_timestep, cfg.model.n_actions, cfg.data.prob_go_from_end)
    sample_batch = functools.partial(sample_batch_fn, env=env, cfg=sample_cfg)
    t_data = time.time() - t0

    # MODEL AND OPTIMIZER
    tx = make_optimizer(cfg)
    params = init_params(jax.random.fold_in(root, _KEY_INIT), cfg.model)
    opt_state = tx.init(params)
    mgr = ckpt_lib.manager(run_dir, max_to_keep=cfg.keep_checkpoints)
    step = 0
    if resume and mgr.latest_step() is not None:
        step, params, train_state = ckpt_lib.restore_train(mgr, params, {"opt_state": opt_state})
        opt_state = train_state["opt_state"]
    params, opt_state = jax.device_put((params, opt_state), sharding.replicated(mesh))
    chunk = make_train_chunk(cfg, tx, sample_batch, mesh)
    sample_key = jax.random.fold_in(root, _KEY_SAMPLE)
    metrics_path = run_dir / "metrics.jsonl"
    writer = _MetricsWriter(metrics_path, _read_metrics(metrics_path, step if resume else 0), cfg)

    def save(step):
        ckpt_lib.save(mgr, step, params, {"opt_state": opt_state}, cfg.to_dict())

    def run_eval(step, n_episodes, greedy=True):
        key = jax.random.fold_in(jax.random.fold_in(root, _KEY_EVAL), step)
        return evaluate(params, cfg.model, env, env_params, key, cfg.eval_rtgs, n_episodes, greedy=greedy)

    # TRAIN
    bar = tqdm(total=cfg.num_steps, initial=step, disable=not progress, desc="train", dynamic_ncols=True)
    last_eval = {}
    t_train0 = time.time()
    while step < cfg.num_steps:
        params, opt_state, m = chunk(params, opt_state, data, sample_key, jnp.int32(step))
        step += cfg.log_every
        row = {"step": step, "train/loss": float(m["loss"]), "train/accuracy": float(m["accuracy"])}
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.num_steps:
            last_eval = _eval_row(run_eval(step, cfg.eval_episodes))
            row.update(last_eval)
        writer.write(row)
        post = {"loss": f"{row['train/loss']:.4f}"}
        if last_eval:
            post["R@+1"] = f"{last_eval.get('eval/return@+1', float('nan')):.3f}"
        bar.set_postfix(post)
        bar.update(cfg.log_every)
        if step % cfg.ckpt_every == 0 or step >= cfg.num_steps:
            save(step)
    bar.close()
    mgr.wait_until_finished()
    t_train = time.time() - t_train0

    # FINAL EVALUATION AND CALIBRATION
    t1 = time.time()
    final = run_eval(cfg.num_steps, cfg.final_eval_episodes)
    sampled = run_eval(cfg.num_steps, cfg.final_eval_episodes, greedy=False)
    writer.write({"step": cfg.num_steps, **_eval_row(final), "final": True})
    calib = calibrate(params, cfg.model, env, env_params, jax.random.fold_in(root, _KEY_CALIB),
                      np.linspace(-1, 1, cfg.calib_points), cfg.calib_episodes)
    ckpt_lib.write_json_atomic(run_dir / "calibration.json", calib)
    plots.plot_calibration(calib, run_dir / "calibration.png", title=f"{cfg.run_name}")
    summary = {
        "run_dir": str(run_dir),
        "steps": cfg.num_steps,
        "final_eval": final.summary(),
        "final_eval_sampled": sampled.summary(),
        "calibration_monotonic": calib["monotonic"],
        "calibration_strictly_monotonic": calib["strictly_monotonic"],
        "calibration_largest_decrease": calib["largest_decrease"],
        "seconds": {"data": t_data, "train": t_train, "eval": time.time() - t1, "total": time.time() - t0},
        "devices": [str(d) for d in jax.devices()],
    }
    ckpt_lib.write_json_atomic(run_dir / "summary.json", summary)
    return summary
