"""The main job: collect behaviour data, train Decision Transformers, evaluate, calibrate, save.

``train_and_evaluate(cfg)`` is what ``python train.py`` calls. It runs five phases, each a
named function of plain arguments, on one code path for one seed and for many:

1. ``open_run``: the run directory (a resumed run's saved config wins; an existing run is an
   error), ``config.json`` and ``env.json``.
2. ``load_data``: ``dtjax.data`` collects PPO (+ mix) rollouts on device, or reuses a stored
   dataset; the dataset used is stored in the run directory so a resumed run trains on the same
   data. One dataset shared by every seed, or (``seed_datasets``) one per seed, stacked.
3. ``init_or_restore``: each seed's parameters and optimizer state, from its init key or its
   latest checkpoint, stacked on a leading seed axis.
4. ``train_loop``: cross-entropy on the action logits at state tokens (padding masked). One
   jitted chunk runs ``log_every`` optimizer steps in a ``lax.scan``; the batch of step ``s`` is
   drawn with ``fold_in(data_key, s)``, so a run resumed from a checkpoint draws exactly the
   batches the uninterrupted run would have drawn, and ends with the same parameters.
5. ``final_evaluation`` (evaluation at the configured target RTGs, greedy and sampled, and the
   calibration sweep), then ``write_results`` (metrics line, ``calibration.json``/``.png``,
   ``summary.json``).

Seeds (``num_seeds`` N): every tree carries a leading seed axis. Seed k is the run of
``seed + k``: its own init and batch keys (and, with ``seed_datasets``, its own dataset), the same
dataset by default. Each seed gets a complete run directory ``<run>/seed_k/`` (config, env,
metrics, checkpoints, evaluation, calibration), so ``dtjax.load("<run>/seed_k")`` loads it; one
seed writes straight into ``<run>/``. The chunk ``vmap``s the step over N > 1 seeds (PureJaxRL
style) and squeezes the axis of N = 1 (no vmap: its parameters are bit for bit those of the
one-model loop of earlier releases, ``make_train_chunk``).

The jitted chunk is built once per static setting (``chunk_spec``: model, optimizer, batch,
env, sampling; the seed count and mesh) and reused by every later run of that setting in the
process (``compiled_chunk``), so a second run of the same shapes does not compile it again.

Sharding: one model splits its batch over every device; N models split the seed axis over
``gcd(N, devices)`` device rows and each batch over the rest (``dtjax.sharding``).
Evaluation: ``dtjax.evaluate`` at the target RTGs every ``eval_every`` steps; calibration over
``calib_points`` target RTGs at the end, each played until its mean return has standard error
``calib_se``. All evaluations of a run share one compiled rollout (``evaluate.Capacity``);
N seeds are one vmapped rollout. Checkpoints: orbax, every ``ckpt_every`` steps and at the end;
with ``keep_every`` also at step 0 and every multiple of it, kept for good (``dtjax.dynamics``).
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from dtjax import checkpoint as ckpt_lib
from dtjax import plots, sharding
from dtjax.config import ConfigError, DataConfig, TrainConfig
from dtjax.data.collect import prepare_dataset
from dtjax.data.dataset import SampleConfig, device_arrays
from dtjax.data.dataset import sample_batch as sample_batch_fn
from dtjax.evaluate import Capacity, EvalResult, calibration_stats, evaluate, evaluate_seeds
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


# ---------------------------------------------------------------------------------------------
# THE JITTED CHUNK
# ---------------------------------------------------------------------------------------------

# How many times a chunk body has been traced in this process. A Python side effect in the traced
# function runs once per trace (each compilation), never per call: tests read it to check that a
# second run of the same shapes reuses the compiled chunk.
CHUNK_TRACES = {"count": 0}


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
        CHUNK_TRACES["count"] += 1  # trace time only (see CHUNK_TRACES)
        # The dataset is closed over, not carried: a scan carry of the whole dataset is copied per step.
        steps = start_step + jnp.arange(cfg.log_every, dtype=jnp.int32)
        body = functools.partial(one_step, data=data, data_key=data_key)
        (params, opt_state), metrics = jax.lax.scan(body, (params, opt_state), steps)
        return params, opt_state, jax.tree.map(jnp.mean, metrics)

    return chunk


def _batch_constraint(mesh: Mesh):
    """Constrain a batch to be split over the mesh's ``data`` axis (identity on one device)."""
    split = sharding.data_size(mesh) > 1

    def constrain(batch):
        return jax.lax.with_sharding_constraint(batch, sharding.batch_sharding(mesh)) if split else batch

    return constrain


def make_train_chunk(cfg: TrainConfig, tx, sample_batch, mesh):
    """Build ``chunk(params, opt_state, data, data_key, start_step) -> (params, opt_state, metrics)``
    for one model (no seed axis): the one-model loop of dtjax 0.1.

    Runs ``cfg.log_every`` steps in a ``lax.scan``. Step ``s`` samples with
    ``fold_in(data_key, s)``; the batch is constrained to be split over the mesh's ``data`` axis.
    """
    return jax.jit(_chunk_body(cfg, _make_step(cfg, tx, sample_batch, _batch_constraint(mesh))))


def make_seeds_chunk(cfg: TrainConfig, tx, sample_batch, mesh, shared_data: bool = True):
    """The chunk for N models at once: ``params``, ``opt_state`` and ``data_key`` (and ``data``
    unless ``shared_data``) carry a leading seed axis. Metrics come back per seed, (N,) arrays.

    N > 1: the one-model chunk ``vmap``-ed over that axis, which is the mesh's ``seed`` axis
    (``spmd_axis_name``); each seed's batch is split over its ``data`` axis. N = 1 (known from
    the shapes at trace time): the axis is squeezed and the one-model chunk runs unbatched, so
    a one-seed run is exactly ``make_train_chunk``'s.
    """
    body = _chunk_body(cfg, _make_step(cfg, tx, sample_batch, _batch_constraint(mesh)))
    vmapped = jax.vmap(body, in_axes=(0, 0, None if shared_data else 0, 0, None), spmd_axis_name="seed")

    def chunk(params, opt_state, data, data_key, start_step):
        if data_key.shape[0] > 1:
            return vmapped(params, opt_state, data, data_key, start_step)
        def one(tree):
            return jax.tree.map(lambda x: x[0], tree)

        out = body(one(params), one(opt_state), data if shared_data else one(data), data_key[0], start_step)
        return jax.tree.map(lambda x: x[None], out)

    return jax.jit(chunk)


def chunk_spec(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with every field the chunk does not read set to its default: the cache key of
    ``compiled_chunk``. Kept: model, env, optimizer and schedule (``num_steps`` included),
    ``batch_size``, ``log_every``, ``data.prob_go_from_end`` and ``data.window_end``. Blanking only fields known to be
    unread errs on the safe side: a new field is part of the key until it is listed here."""
    d = TrainConfig()
    return cfg.replace(
        run_name=d.run_name, checkpoint_dir=d.checkpoint_dir, seed=d.seed, dataset=d.dataset,
        data=DataConfig(prob_go_from_end=cfg.data.prob_go_from_end, window_end=cfg.data.window_end), eval_every=0, eval_episodes=d.eval_episodes,
        final_eval_episodes=d.final_eval_episodes, eval_rtgs=d.eval_rtgs, calib_points=d.calib_points,
        calib_se=d.calib_se, calib_min_episodes=d.calib_min_episodes, calib_episodes=d.calib_episodes,
        eval_pool=d.eval_pool, num_seeds=1, seed_datasets=False, ckpt_every=cfg.log_every,
        keep_checkpoints=d.keep_checkpoints, keep_every=d.keep_every, wandb_project=d.wandb_project)


@functools.lru_cache(maxsize=16)
def compiled_chunk(spec: TrainConfig, shared_data: bool, mesh: Mesh):
    """The jitted ``make_seeds_chunk`` of ``spec`` (a ``chunk_spec``), built once per process and
    setting: later runs with equal arguments (and data shapes) reuse its compilation."""
    env, _ = spec.env.make()
    sample_cfg = SampleConfig(spec.model.n_timesteps, spec.model.max_timestep, spec.model.n_actions,
                              spec.data.prob_go_from_end, spec.data.window_end)
    sample_batch = functools.partial(sample_batch_fn, env=env, cfg=sample_cfg)
    return make_seeds_chunk(spec, make_optimizer(spec), sample_batch, mesh, shared_data=shared_data)


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
# RUN LAYOUT AND SMALL PIECES
# ---------------------------------------------------------------------------------------------

# Purpose tags for fold_in, so each consumer of randomness has its own stream.
_KEY_DATA, _KEY_INIT, _KEY_SAMPLE, _KEY_EVAL, _KEY_CALIB = range(5)


def run_dir_of(cfg: TrainConfig) -> Path:
    return Path(cfg.checkpoint_dir) / cfg.run_name


def seed_dirs(cfg: TrainConfig) -> list[Path]:
    """Run directory of each seed: the run directory itself for one seed, else ``<run>/seed_k``."""
    run_dir = run_dir_of(cfg)
    return [run_dir] if cfg.num_seeds == 1 else [run_dir / f"seed_{k}" for k in range(cfg.num_seeds)]


def seed_names(cfg: TrainConfig) -> list[str]:
    """Each seed's display name (wandb run, plot title): the run name, or ``<run>/seed_k``."""
    return [cfg.run_name] if cfg.num_seeds == 1 else [f"{cfg.run_name}/seed_{k}" for k in range(cfg.num_seeds)]


def seed_config(cfg: TrainConfig, k: int, dataset: str) -> TrainConfig:
    """The one-seed config that seed ``k`` of ``cfg`` is: seed ``cfg.seed + k`` trained on ``dataset``
    (stored as ``<run>/seed_k/config.json`` and in its checkpoints)."""
    return cfg.replace(seed=cfg.seed + k, num_seeds=1, seed_datasets=False, dataset=dataset)


def seed_roots(cfg: TrainConfig) -> list[jax.Array]:
    """Each seed's root PRNG key: that of a one-seed run of ``seed + k``."""
    return [jax.random.PRNGKey(cfg.seed + k) for k in range(cfg.num_seeds)]


def _stack(trees: list):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _unstack(tree, n: int) -> list:
    tree = jax.device_get(tree)
    return [jax.tree.map(lambda x, k=k: x[k], tree) for k in range(n)]


def _read_metrics(path: Path, up_to_step: int) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("step", 0) <= up_to_step]


class _MetricsWriter:
    """JSON lines in the run directory, plus wandb/TensorBoard when asked for and installed."""

    def __init__(self, path: Path, rows: list[dict], cfg: TrainConfig, name: str):
        self.path = path
        with open(path, "w") as f:  # rewritten from the rows kept at the restored step
            f.writelines(json.dumps(r) + "\n" for r in rows)
        self.wandb = None
        if cfg.wandb_project:
            try:
                import wandb  # optional; imported only when asked for

                self.wandb = wandb.init(project=cfg.wandb_project, name=name, config=cfg.to_dict(), resume="allow",
                                        reinit=True)
            except ImportError:
                print("wandb is not installed; logging to metrics.jsonl only")

    def write(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            self.wandb.log(row, step=row["step"])


def _eval_row(res: EvalResult) -> dict:
    out = {}
    for r in res.summary():
        t = f"{r['target_rtg']:+g}"
        out[f"eval/return@{t}"] = r["mean_return"]
        for o in res.outcomes[1:-1]:  # the task's outcomes besides running and timeout: goal, hit
            out[f"eval/{o}@{t}"] = r[f"{o}_rate"]
        out[f"eval/length@{t}"] = r["mean_length"]
    return out


def _restore_step(mgrs) -> int | None:
    """The latest checkpoint step every seed has (a crash mid-save can leave seeds one step apart)."""
    steps = [set(m.all_steps()) for m in mgrs]
    common = set.intersection(*steps) if steps else set()
    return max(common) if common else None


def evaluate_stacked(params, model_cfg, env, env_params, keys: list[jax.Array], target_rtgs, n_episodes: int,
                     **kw) -> list[EvalResult]:
    """One ``EvalResult`` per seed of ``params`` (leading seed axis), seed k with ``keys[k]``: one
    vmapped rollout for N > 1, the one-model rollout on the squeezed axis for N = 1."""
    if len(keys) > 1:
        return evaluate_seeds(params, model_cfg, env, env_params, jnp.stack(keys), target_rtgs, n_episodes, **kw)
    return [evaluate(jax.tree.map(lambda x: x[0], params), model_cfg, env, env_params, keys[0], target_rtgs,
                     n_episodes, **kw)]


# ---------------------------------------------------------------------------------------------
# THE PHASES
# ---------------------------------------------------------------------------------------------


def open_run(cfg: TrainConfig, resume: bool) -> TrainConfig:
    """The config the run uses, with its directory made and ``config.json``/``env.json`` written.

    ``resume``: the run must exist and its saved config wins (only ``checkpoint_dir`` is kept
    from ``cfg``). Otherwise a run that already has results or checkpoints is an error."""
    run_dir = run_dir_of(cfg)
    if resume:
        cfg_path = run_dir / "config.json"
        if not cfg_path.exists():
            raise RunError(f"cannot resume: no run at {run_dir} (missing config.json)")
        cfg = TrainConfig.from_json(cfg_path.read_text()).replace(checkpoint_dir=cfg.checkpoint_dir)
    elif (run_dir / "summary.json").exists() or any((d / ckpt_lib.CKPT_DIR).exists() for d in seed_dirs(cfg)):
        raise RunError(f"run {run_dir} already exists: pass --resume {cfg.run_name} or choose another --run_name")
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_lib.write_json_atomic(run_dir / "config.json", cfg.to_dict())
    ckpt_lib.write_json_atomic(run_dir / ckpt_lib.ENV_FILE, cfg.env.to_dict())
    return cfg


def run_mesh(cfg: TrainConfig) -> Mesh:
    """The ``(seed, data)`` mesh of the run, after checking that a batch splits evenly over it."""
    mesh = sharding.seed_mesh(cfg.num_seeds)
    try:
        sharding.check_divisible(cfg.batch_size, mesh, "batch_size")
    except ValueError as e:
        raise RunError(str(e)) from e
    return mesh


def per_seed_datasets(cfg: TrainConfig) -> bool:
    """Whether each seed collects its own dataset (``seed_datasets`` with N > 1 and no ``dataset``)."""
    return cfg.num_seeds > 1 and cfg.seed_datasets and not cfg.dataset


def load_data(cfg: TrainConfig, roots: list[jax.Array], dirs: list[Path], mesh: Mesh, log) -> tuple[dict, list[str]]:
    """The device dataset and the dataset path of each seed.

    One dataset (``cfg.dataset``, or collected with the first seed's key into the run directory)
    replicated over the mesh; or, with ``per_seed_datasets``, one per seed (collected with its
    key into ``seed_k/dataset``), stacked on a leading seed axis split over the mesh's ``seed``."""
    env, env_params = cfg.env.make()
    if cfg.model.n_actions != env.num_actions:
        raise RunError(f"model.n_actions is {cfg.model.n_actions} but {cfg.env.env_id} has {env.num_actions} actions")
    if not per_seed_datasets(cfg):
        arrays, _ = prepare_dataset(cfg, env, env_params, jax.random.fold_in(roots[0], _KEY_DATA), run_dir_of(cfg), log=log)
        data = jax.device_put(device_arrays(arrays, cfg.data.pct_traj, cfg.data.rtg_label), sharding.replicated(mesh))
        return data, [cfg.dataset or str(run_dir_of(cfg) / "dataset")] * cfg.num_seeds
    datas = []
    for k, d in enumerate(dirs):
        d.mkdir(parents=True, exist_ok=True)
        log(f"seed {k}: dataset")
        arrays, _ = prepare_dataset(cfg.replace(seed=cfg.seed + k), env, env_params,
                                    jax.random.fold_in(roots[k], _KEY_DATA), d, log=log)
        datas.append(device_arrays(arrays, cfg.data.pct_traj, cfg.data.rtg_label))
    return jax.device_put(stack_datasets(datas), sharding.seed_sharding(mesh)), [str(d / "dataset") for d in dirs]


def write_seed_configs(cfg: TrainConfig, dirs: list[Path], datasets: list[str]) -> list[TrainConfig]:
    """Each seed's one-seed config; with N > 1 written to ``seed_k/config.json`` and ``env.json``
    (one seed's config is the run's own, already written by ``open_run``)."""
    if cfg.num_seeds == 1:
        return [cfg]
    cfgs = [seed_config(cfg, k, datasets[k]) for k in range(cfg.num_seeds)]
    for c, d in zip(cfgs, dirs):
        d.mkdir(parents=True, exist_ok=True)
        ckpt_lib.write_json_atomic(d / "config.json", c.to_dict())
        ckpt_lib.write_json_atomic(d / ckpt_lib.ENV_FILE, c.env.to_dict())
    return cfgs


def init_or_restore(cfg: TrainConfig, roots: list[jax.Array], mgrs: list, mesh: Mesh, resume: bool):
    """``(params, opt_state, step)``: each seed's init (key ``fold_in(root_k, _KEY_INIT)``, as a
    one-seed run of its seed), or with ``resume`` its checkpoint at the latest step every seed
    has; stacked on a leading seed axis split over the mesh's ``seed`` axis."""
    tx = make_optimizer(cfg)
    params = [init_params(jax.random.fold_in(r, _KEY_INIT), cfg.model) for r in roots]
    opt_state = [tx.init(p) for p in params]
    step = (_restore_step(mgrs) if resume else None) or 0
    if step:
        for k, m in enumerate(mgrs):
            _, params[k], st = ckpt_lib.restore_train(m, params[k], {"opt_state": opt_state[k]}, step=step)
            opt_state[k] = st["opt_state"]
    params, opt_state = jax.device_put((_stack(params), _stack(opt_state)), sharding.seed_sharding(mesh))
    return params, opt_state, step


def save_checkpoints(mgrs: list, step: int, params, opt_state, cfgs: list[TrainConfig]) -> None:
    """One checkpoint per seed (``seed_k``'s own config beside its arrays)."""
    for m, p, o, c in zip(mgrs, _unstack(params, len(cfgs)), _unstack(opt_state, len(cfgs)), cfgs):
        ckpt_lib.save(m, step, p, {"opt_state": o}, c.to_dict())


def train_loop(cfg: TrainConfig, chunk, params, opt_state, step: int, data, sample_keys, evaluate_at, writers, save,
               progress: bool):
    """Run chunks from ``step`` to ``cfg.num_steps``; returns ``(params, opt_state, seconds)``.

    After each chunk every seed's metrics line is written (with ``evaluate_at(step, params)``'s
    rows every ``eval_every`` steps) and checkpoints are saved every ``ckpt_every`` (and
    ``keep_every``) steps and at the end. ``seconds``: training and in-loop evaluation time."""
    from tqdm.auto import tqdm  # saves CLI start-up (tqdm.auto probes for notebooks)

    n = cfg.num_seeds
    bar = tqdm(total=cfg.num_steps, initial=step, disable=not progress, desc="train" if n == 1 else f"train x{n}",
               dynamic_ncols=True)
    last_eval: list[dict] = []
    t_train = t_eval = 0.0
    while step < cfg.num_steps:
        t = time.time()
        params, opt_state, m = chunk(params, opt_state, data, sample_keys, jnp.int32(step))
        m = jax.device_get(m)
        t_train += time.time() - t
        step += cfg.log_every
        rows = [{"step": step, "train/loss": float(m["loss"][k]), "train/accuracy": float(m["accuracy"][k])}
                for k in range(n)]
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.num_steps:
            t = time.time()
            last_eval = [_eval_row(r) for r in evaluate_at(step, params)]
            t_eval += time.time() - t
            for row, ev in zip(rows, last_eval):
                row.update(ev)
        for w, row in zip(writers, rows):
            w.write(row)
        post = {"loss": f"{np.mean([r['train/loss'] for r in rows]):.4f}"}
        if last_eval:
            post["R@+1"] = f"{np.mean([e.get('eval/return@+1', float('nan')) for e in last_eval]):.3f}"
        bar.set_postfix(post)
        bar.update(cfg.log_every)
        if step % cfg.ckpt_every == 0 or step >= cfg.num_steps or (cfg.keep_every and step % cfg.keep_every == 0):
            save(step, params, opt_state)
    bar.close()
    return params, opt_state, {"train": t_train, "eval_during_training": t_eval}


def final_evaluation(cfg: TrainConfig, params, roots: list[jax.Array], capacity: Capacity):
    """``(final, sampled, calibrations)`` per seed: greedy and sampled evaluation at the target
    RTGs with ``final_eval_episodes`` (key ``fold_in(eval_root_k, num_steps)``), and the
    calibration sweep over ``calib_points`` targets in the task's return range (key ``fold_in(root_k, _KEY_CALIB)``)."""
    env, env_params = cfg.env.make()
    run = functools.partial(evaluate_stacked, params, cfg.model, env, env_params, capacity=capacity)
    keys = [jax.random.fold_in(jax.random.fold_in(r, _KEY_EVAL), cfg.num_steps) for r in roots]
    final = run(keys, cfg.eval_rtgs, cfg.final_eval_episodes)
    sampled = run(keys, cfg.eval_rtgs, cfg.final_eval_episodes, greedy=False)
    calib = run([jax.random.fold_in(r, _KEY_CALIB) for r in roots], np.linspace(*env.task.return_range, cfg.calib_points),
                cfg.calib_episodes, se=cfg.calib_se or None, min_episodes=cfg.calib_min_episodes)
    return final, sampled, [calibration_stats(r, True, cfg.calib_se or None) for r in calib]


def write_results(cfg: TrainConfig, cfgs: list[TrainConfig], dirs: list[Path], writers, final, sampled, calibs,
                  seconds: dict) -> dict:
    """Each seed's final metrics line, ``calibration.json``/``.png`` and ``summary.json``; with
    N > 1 also the run's ``summary.json`` over the seeds. Returns the run's summary."""
    devices = [str(x) for x in jax.devices()]
    summaries = []
    for k, (c, d, w, name) in enumerate(zip(cfgs, dirs, writers, seed_names(cfg))):
        w.write({"step": cfg.num_steps, **_eval_row(final[k]), "final": True})
        calib = calibs[k]
        ckpt_lib.write_json_atomic(d / "calibration.json", calib)
        plots.plot_calibration(calib, d / "calibration.png", title=name.replace("/seed_", " seed "))
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
            "devices": devices,
        })
        ckpt_lib.write_json_atomic(d / "summary.json", summaries[-1])
    if cfg.num_seeds == 1:
        return summaries[0]
    summary = {"run_dir": str(run_dir_of(cfg)), "steps": cfg.num_steps, "num_seeds": cfg.num_seeds,
               "seed_datasets": per_seed_datasets(cfg), "seeds": summaries, "seconds": seconds, "devices": devices}
    ckpt_lib.write_json_atomic(run_dir_of(cfg) / "summary.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------
# THE MAIN JOB
# ---------------------------------------------------------------------------------------------


def train_and_evaluate(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> dict:
    """Run the whole job for ``cfg``; returns the final summary (also written to ``summary.json``).

    With ``resume=True`` the run directory must exist: its saved config wins, the dataset stored
    in it is reused, and training continues from the latest checkpoint (with N seeds, the
    latest step all seeds have saved).
    """
    from tqdm.auto import tqdm  # saves CLI start-up (tqdm.auto probes for notebooks)

    log = (lambda msg: tqdm.write(msg)) if progress else (lambda msg: None)
    t0 = time.time()
    cfg = open_run(cfg, resume)
    mesh = run_mesh(cfg)
    roots, dirs = seed_roots(cfg), seed_dirs(cfg)

    # DATA
    data, datasets = load_data(cfg, roots, dirs, mesh, log)
    t_data = time.time() - t0
    cfgs = write_seed_configs(cfg, dirs, datasets)

    # MODEL AND OPTIMIZER
    mgrs = [ckpt_lib.manager(d, max_to_keep=cfg.keep_checkpoints, keep_every=cfg.keep_every) for d in dirs]
    params, opt_state, step = init_or_restore(cfg, roots, mgrs, mesh, resume)
    save = functools.partial(save_checkpoints, mgrs, cfgs=cfgs)
    if cfg.keep_every and not any(m.all_steps() for m in mgrs):
        save(0, params, opt_state)  # the initialisation: where a training-dynamics curve starts

    # TRAIN
    writers = [_MetricsWriter(d / "metrics.jsonl", _read_metrics(d / "metrics.jsonl", step), c, name)
               for c, d, name in zip(cfgs, dirs, seed_names(cfg))]
    # one compiled rollout serves every evaluation of the run: the largest targets x episodes
    capacity = Capacity(max(len(cfg.eval_rtgs), cfg.calib_points),
                        max(cfg.eval_episodes, cfg.final_eval_episodes, cfg.calib_episodes), cfg.eval_pool)
    env, env_params = cfg.env.make()
    eval_roots = [jax.random.fold_in(r, _KEY_EVAL) for r in roots]

    def evaluate_at(step, params):
        return evaluate_stacked(params, cfg.model, env, env_params, [jax.random.fold_in(r, step) for r in eval_roots],
                                cfg.eval_rtgs, cfg.eval_episodes, capacity=capacity)

    chunk = compiled_chunk(chunk_spec(cfg), not per_seed_datasets(cfg), mesh)
    sample_keys = jax.device_put(jnp.stack([jax.random.fold_in(r, _KEY_SAMPLE) for r in roots]),
                                 sharding.seed_sharding(mesh))
    params, opt_state, seconds = train_loop(cfg, chunk, params, opt_state, step, data, sample_keys, evaluate_at,
                                            writers, save, progress)
    for m in mgrs:
        m.wait_until_finished()

    # FINAL EVALUATION AND CALIBRATION, RESULTS
    t1 = time.time()
    final, sampled, calibs = final_evaluation(cfg, params, roots, capacity)
    seconds = {"data": t_data, **seconds, "eval": time.time() - t1, "total": time.time() - t0}
    return write_results(cfg, cfgs, dirs, writers, final, sampled, calibs, seconds)
