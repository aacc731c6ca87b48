"""Collect a behaviour dataset on device: PPO training rollouts plus the configured mix.

Entry points:
- ``collect_dataset(cfg, key) -> (arrays, metadata)``: the whole job for a CollectConfig or a
  TrainConfig (anything with an ``env`` EnvConfig, ``seed`` and ``data``); the result is
  ready for ``store.save`` and ``dataset.device_arrays``.
- ``collect(data_cfg, env, env_params, key) -> Collection``: the same on a built env, also
  returning the final PPO params and network.
- ``prepare_dataset(cfg, env, env_params, key, run_dir)``: what ``dtjax.train`` calls: a given
  dataset, else the run directory's, else a freshly collected one saved there.

Arrays are complete episodes, env-major (each env's timeline in order, as the original's loader
flattened them). Each env's trailing, unfinished episode is dropped: its return (hence its RTG)
is unknown. (The original instead marked it truncated, which labels it with a wrong RTG.)
Branch episodes (DataMixConfig) are recorded from their branch point, so they start at t > 0.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dtjax.config import DataConfig
from dtjax.data import ppo, ppo_rnn, relabel, store, value

GREEDY = 1e-6  # sampling temperature of the blind rollouts: logits / 1e-6 samples the argmax
TRAINERS = {"mlp": ppo, "gru": ppo_rnn}  # PPOConfig.arch -> the module with make_train / make_rollout


class Collection(NamedTuple):
    arrays: dict[str, np.ndarray]  # store-ready (see dtjax.data.store)
    info: dict[str, Any]  # JSON-able: timings, PPO returns per update, final policy return
    params: Any  # final PPO params
    network: Any  # the ActorCritic (or ActorCriticRNN) module
    snapshots: Any = None  # PPOConfig.n_snapshots param sets on a leading axis, the last the final params


def _episodes_env_major(rec: dict, source, behaviour) -> dict[str, np.ndarray]:
    """(T, E, ...) time-major records -> complete (kept) episodes, env-major, flattened to (N, ...).

    ``source``: an int, or (E,) ints (the policy of each env). ``behaviour``: (T, E) ints, the
    behaviour that acted (see ``dtjax.data.relabel``).
    Every field of the family's env
    state is kept (``agent_pos``, ``agent_dir``, ``time``, and ``obstacles`` (N, 0, 2) for a family
    without balls, plus its own fields, e.g. Memory's objects: see ``store.STATE_FIELDS``).
    """
    rec = jax.tree.map(np.asarray, rec)
    done = rec["terminated"] | rec["truncated"]  # (T, E)
    T, E = done.shape
    last_done = np.where(done.any(0), T - 1 - np.argmax(done[::-1], axis=0), -1)  # (E,)
    complete = np.arange(T)[:, None] <= last_done[None, :]
    keep = complete & rec["keep"] if "keep" in rec else complete  # `keep` is a suffix of each episode
    keep = keep.T.reshape(-1)  # env-major order

    def em(x):  # (T, E, ...) -> (E*T, ...) env-major, then the kept steps
        return np.swapaxes(x, 0, 1).reshape((E * T,) + x.shape[2:])[keep]

    st = {f.name: em(getattr(rec["state"], f.name)) for f in dataclasses.fields(rec["state"])}
    # a family without balls (Empty) stores (N, 0, 2) obstacles: the store's format is the same for every family
    st.setdefault("obstacles", np.zeros((len(st["time"]), 0, 2), np.int32))
    return {
        **st,
        "action": em(rec["action"]), "reward": em(rec["reward"]), "terminated": em(rec["terminated"]),
        "truncated": em(rec["truncated"]),
        "source": em(np.broadcast_to(np.asarray(source, np.int8), (T, E))),
        "behaviour": em(np.asarray(behaviour, np.int32)),
    }


def allocate_envs(weights: list[float], n_envs: int) -> list[int]:
    """Split ``n_envs`` in proportion to ``weights`` (largest remainder; >= 1 env per nonzero weight)."""
    w = np.asarray(weights, np.float64)
    nz = w > 0
    if nz.sum() > n_envs:
        raise store.DatasetError(f"data.mix.envs ({n_envs}) is smaller than the number of mix sources ({int(nz.sum())})")
    raw = w / w.sum() * n_envs
    n = np.where(nz, np.maximum(np.floor(raw), 1), 0).astype(int)
    while n.sum() > n_envs:  # the >= 1 floor overshot: take from the largest
        n[np.argmax(n)] -= 1
    for i in np.argsort(-(raw - np.floor(raw)), kind="stable"):
        if n.sum() >= n_envs:
            break
        if nz[i]:
            n[i] += 1
    return n.tolist()


def collect(cfg: DataConfig, env, env_params, key: jax.Array, log=print) -> Collection:
    """Run the jitted PPO (every transition recorded), then the extra rollouts of ``cfg.mix``.

    The extra sources run together in one jitted rollout (one compilation): ``mix.envs`` envs
    split between the sources in proportion to their fractions, all for the same number of
    steps, so each source's step count matches its fraction up to that rounding.
    """
    mix = cfg.mix
    k_ppo, k_mix = jax.random.split(key)
    src = {name: i for i, name in enumerate(store.SOURCES)}
    trainer = TRAINERS[cfg.ppo.arch]
    t0 = time.time()
    if cfg.ppo.population > 1:  # best of N recurrent PPO runs (config validation: arch gru)
        out, network = ppo_rnn.train_best_of(cfg.ppo, env, env_params, k_ppo)
    else:
        train, network = trainer.make_train(cfg.ppo, env, env_params)
        out = jax.block_until_ready(jax.jit(train)(k_ppo))
    t_ppo = time.time() - t0
    ppo_returns = np.asarray(out["metrics"]["mean_return"])
    final_return = float(np.nanmean(ppo_returns[-max(1, len(ppo_returns) // 20):]))
    n_ppo = cfg.ppo.num_updates * cfg.ppo.num_envs * cfg.ppo.num_steps * cfg.ppo.population
    log(f"PPO: {n_ppo} env steps in {t_ppo:.1f}s ({n_ppo / t_ppo:,.0f} steps/s incl. compile); "
        f"mean return over the last 5% of updates {final_return:.3f}")
    population = {k: np.asarray(out.pop(k)).round(4).tolist() for k in ("population_score", "population_success") if k in out}
    if population:  # ppo_rnn's best-of-N: the greedy success of each run, the best kept
        log(f"PPO population of {cfg.ppo.population}: greedy success {population['population_success']}, "
            f"kept run {int(np.argmax(population['population_score']))}")
    parts = []
    if mix.ppo_rollouts:
        # (U, T, E, ...) -> (U*T, E, ...): each env's timeline continues across updates
        rec = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), out["transitions"])
        update = np.repeat(np.arange(cfg.ppo.num_updates, dtype=np.int32), cfg.ppo.num_steps)  # behaviour: the PPO update
        parts.append(_episodes_env_major(rec, src["ppo"], np.broadcast_to(update[:, None], rec["action"].shape)))
    del out["transitions"]

    # MIX: (source, fraction of the PPO steps, param set (-1 = uniform random), eps, branch steps, wait steps, shortest wait,
    # temperature, blind to the obstacles)
    branch_steps = mix.branch_steps or 4 * env.size
    wait_steps = mix.wait_steps or int(env_params.max_steps_in_episode)
    n_params = jax.tree.leaves(out["snapshots"])[0].shape[0]
    final = n_params - 1  # the last snapshot is the final policy
    max_steps = int(env_params.max_steps_in_episode)
    sources = [("final", mix.final_frac, final, mix.final_eps, 0, 0, 0, mix.final_temp, False),
               ("random", mix.random_frac, -1, 1.0, 0, 0, 0, 1.0, False),
               ("branch", mix.branch_frac, final, mix.final_eps, branch_steps, 0, 0, mix.final_temp, False),
               ("wait", mix.wait_frac, final, 0.0, 0, wait_steps, 0, mix.final_temp, False),
               ("hazard", mix.hazard_frac, -1, 1.0, 0, max_steps, max(0, max_steps - mix.hazard_window), 1.0, False),
               ("tempered", mix.tempered_frac, final, mix.final_eps, 0, 0, 0, mix.tempered_temp, False),
               # greedy (temperature -> 0): the group's outcome randomness is the env's alone
               ("blind", mix.blind_frac, final, 0.0, 0, max_steps, max(0, max_steps - mix.blind_window), GREEDY, True)]
    sources += [("snapshot", mix.snapshot_frac / max(final, 1), i, mix.snapshot_eps, 0, 0, 0, 1.0, False) for i in range(final)]
    sources = [s for s in sources if s[1] > 0]
    t1 = time.time()
    mix_steps = 0
    if sources:
        total = sum(s[1] for s in sources) * cfg.ppo.total_timesteps
        n_envs = allocate_envs([s[1] for s in sources], max(mix.envs, len(sources)))
        E, T = sum(n_envs), max(1, math.ceil(total / sum(n_envs)))
        per_env = lambda j: np.repeat([s[j] for s in sources], n_envs)  # noqa: E731
        rollout = jax.jit(trainer.make_rollout(env, env_params, network, E, T))
        rec = rollout(k_mix, out["snapshots"], jnp.asarray(per_env(2), jnp.int32), jnp.asarray(per_env(3), jnp.float32),
                      jnp.asarray(per_env(4), jnp.int32), jnp.asarray(per_env(5), jnp.int32), jnp.asarray(per_env(6), jnp.int32),
                      jnp.asarray(per_env(7), jnp.float32), jnp.asarray(per_env(8), bool) if mix.blind_frac > 0 else None)
        # behaviour: the param set (+1; 0 = uniform random) and the episode's branch step or wait
        behaviour = (per_env(2)[None, :] + 1) * relabel.DRAW_RANGE + np.asarray(rec["draw"])
        parts.append(_episodes_env_major(rec, np.array([src[s[0]] for s in sources]).repeat(n_envs), behaviour))
        mix_steps = E * T
    t_mix = time.time() - t1
    parts = [p for p in parts if len(p["action"])]
    if not parts:
        raise store.DatasetError("the collection produced no complete episode; raise the step counts")
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if cfg.rtg_label == "value_critic":  # QDT-style labels from the final critic (dtjax.data.value), kept in the store
        if cfg.ppo.arch != "mlp":
            raise store.DatasetError(f"rtg_label 'value_critic' needs the MLP PPO's critic, not ppo.arch {cfg.ppo.arch!r}")
        arrays["value"] = value.critic_values(network, out["params"], env, arrays)
    log(f"mix rollouts: {mix_steps} env steps in {t_mix:.1f}s (incl. compile)")
    info = {
        "ppo_env_steps": n_ppo,
        "ppo_seconds": round(t_ppo, 2),
        "mix_env_steps": mix_steps,
        "mix_seconds": round(t_mix, 2),
        "ppo_final_mean_return": final_return,
        "ppo_mean_return_per_update": [None if np.isnan(x) else round(float(x), 4) for x in ppo_returns],
        "branch_steps": branch_steps,
        "wait_steps": wait_steps,
        **population,
    }
    return Collection(arrays, info, out["params"], network, out["snapshots"])


def dataset_metadata(cfg: DataConfig, env, env_params, env_id: str, seed: int) -> dict:
    """The metadata.json fields describing how a dataset was made (store adds counts/version)."""
    return {
        "env_id": env_id,
        "max_steps": int(env_params.max_steps_in_episode),
        "size": int(env.size),
        "n_obstacles": int(getattr(env, "n_obstacles", 0)),
        "n_actions": int(env.num_actions),
        "obs_mode": env.obs_mode,
        "seed": int(seed),
        "data_config": cfg.to_dict(),
        "sources": list(store.SOURCES),
        "outcome_words": list(store.outcome_words(env.task)),  # what `summary` calls success and failure
    }


def collect_dataset(cfg, key: jax.Array, log=print) -> tuple[dict[str, np.ndarray], dict]:
    """Collect the dataset ``cfg`` describes: (arrays, metadata), ready for ``store.save``.

    ``cfg``: a CollectConfig or a TrainConfig (reads ``env``, ``seed`` and ``data``; ``env.obs_mode``
    is what the PPO sees, and the stored compact states serve every obs mode). ``key``: the PRNG
    key of the whole collection.
    """
    env, env_params = cfg.env.make()
    col = collect(cfg.data, env, env_params, key, log=log)
    meta = {**dataset_metadata(cfg.data, env, env_params, cfg.env.env_id, cfg.seed), "collection": col.info}
    return col.arrays, meta


def prepare_dataset(cfg, env, env_params, key, run_dir, log=print) -> tuple[dict[str, np.ndarray], dict]:
    """The dataset a run trains on: ``cfg.dataset`` if given, else the one stored in the run
    directory (a resumed run), else a freshly collected one saved to ``run_dir/dataset``."""
    expect = {"env_id": cfg.env.env_id, "max_steps": cfg.env.max_steps}
    if cfg.dataset:
        arrays, meta = store.load(cfg.dataset, expect=expect)
        log(f"dataset {cfg.dataset}: {meta['counts']['episodes']} episodes, {meta['counts']['steps']} steps")
        return arrays, meta
    path = Path(run_dir) / "dataset"
    if path.exists():
        arrays, meta = store.load(path, expect=expect)
        log(f"reusing {path}: {meta['counts']['episodes']} episodes")
        return arrays, meta
    col = collect(cfg.data, env, env_params, key, log=log)
    meta = {**dataset_metadata(cfg.data, env, env_params, cfg.env.env_id, cfg.seed), "collection": col.info}
    store.save(path, col.arrays, meta)
    log(store.format_summary(store.summary(col.arrays, words=store.outcome_words(env.task))))
    return col.arrays, meta
