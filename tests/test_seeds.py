"""Many DTs at once (``num_seeds``) and the pooled evaluation.

- N = 1 is the one-model run of dtjax 0.1, bit for bit: against its own loop rebuilt from the
  public pieces, and against per-leaf sums stored from the code before ``num_seeds`` existed.
- Seed k of an N-seed run is the one-seed run of ``seed + k`` (its ``seed_k/config.json``), up
  to the float rounding of the vmapped loop; seeds differ; resume is exact; the layout loads.
- The pooled evaluation plays the same episodes as the one-batch loop it replaced (kept below as
  the reference), whatever the pool and capacity; the standard-error rule plays a prefix of them.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dtjax
from dtjax.config import ConfigError, EnvConfig, ModelConfig, TrainConfig
from dtjax.data import store
from dtjax.evaluate import Capacity, calibrate, evaluate, evaluate_seeds
from dtjax.train import RunError, train_and_evaluate
from fixtures import random_dataset
from tolerance import assert_close

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=32, max_timestep=49)
ENV = EnvConfig("MiniGrid-Dynamic-Obstacles-5x5-v0", max_steps=50)


def _dataset(path: Path, seed: int = 0, n_episodes: int = 300) -> str:
    if not path.exists():
        arrays, meta = random_dataset(np.random.default_rng(seed), n_episodes, size=5, n_obstacles=2, max_steps=50)
        store.save(path, arrays, meta)
    return str(path)


def seeds_cfg(tmp, **kw) -> TrainConfig:
    base = dict(run_name="multi", checkpoint_dir=str(tmp), env=ENV, model=TINY_MODEL, dataset=_dataset(Path(tmp) / "ds"),
                batch_size=16, num_steps=40, log_every=10, eval_every=20, ckpt_every=20, warmup_steps=5, eval_episodes=4,
                final_eval_episodes=4, calib_points=3, calib_episodes=32, calib_min_episodes=4, eval_pool=8, seed=3,
                num_seeds=2)
    base.update(kw)
    return TrainConfig(**base)


CAPACITY = Capacity(3, 32, 8)  # the runs' rollout capacity (3 targets, 32 calibration episodes, pool 8)


def _leaves(run_dir):
    return jax.tree.leaves(dtjax.load(run_dir)[1])


# The many tiny runs below build the same jitted chunk and rollout again and again (a new closure
# each run): the session's persistent compilation cache (tests/conftest.py) compiles each once.


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    """A 2-seed run through the command line (in-process): the layout every test below reads."""
    tmp = tmp_path_factory.mktemp("seeds")
    cfg = seeds_cfg(tmp)
    sys.path.insert(0, str(ROOT))
    import train as train_script

    (tmp / "multi.json").write_text(cfg.replace(num_seeds=1).to_json())
    assert train_script.main(["--config", str(tmp / "multi.json"), "--num_seeds", "2", "--quiet"]) == 0
    return cfg, tmp


# ---------------------------------------------------------------------------------------------
# N = 1: today's run
# ---------------------------------------------------------------------------------------------


def test_one_seed_is_the_v0_1_run_bit_for_bit(multi, tmp_path):
    """``num_seeds=1`` keeps the one-model loop: the run's params equal (exactly) those of the
    loop rebuilt from ``make_train_chunk`` with dtjax 0.1's keys, and match the per-leaf sums
    stored from the code before ``num_seeds`` (tests/data/train_n1_v0_1.json: seed 3, the
    random dataset of ``_dataset``) to float32 rounding."""
    from dtjax import sharding
    from dtjax.data.dataset import SampleConfig, device_arrays, sample_batch
    from dtjax.model import init_params
    from dtjax.train import make_optimizer, make_train_chunk

    _, tmp = multi
    cfg = seeds_cfg(tmp, run_name="one", num_seeds=1)
    train_and_evaluate(cfg, progress=False)
    got = dtjax.load(tmp / "one")[1]
    assert not (tmp / "one" / "seed_0").exists()  # one seed: today's layout

    root = jax.random.PRNGKey(cfg.seed)
    env, _ = cfg.env.make()
    data = device_arrays(store.load(cfg.dataset)[0])
    sb = functools.partial(sample_batch, env=env, cfg=SampleConfig(1, 49))
    tx = make_optimizer(cfg)
    params = init_params(jax.random.fold_in(root, 1), cfg.model)
    opt = tx.init(params)
    chunk = make_train_chunk(cfg, tx, sb, sharding.data_mesh())
    for step in range(0, cfg.num_steps, cfg.log_every):
        params, opt, _ = chunk(params, opt, data, jax.random.fold_in(root, 2), jnp.int32(step))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)

    ref = json.loads((ROOT / "tests" / "data" / "train_n1_v0_1.json").read_text())
    flat = jax.tree_util.tree_flatten_with_path(got)[0]
    assert sorted(ref) == sorted(jax.tree_util.keystr(p) for p, _ in flat)
    for p, x in flat:
        total, abs_total = ref[jax.tree_util.keystr(p)]
        x = np.asarray(x, np.float64)
        assert abs(x.sum() - total) <= 1e-4 * abs_total + 1e-7, jax.tree_util.keystr(p)
        assert abs(np.abs(x).sum() - abs_total) <= 1e-4 * abs_total + 1e-7, jax.tree_util.keystr(p)


# ---------------------------------------------------------------------------------------------
# N > 1
# ---------------------------------------------------------------------------------------------


def test_seed_layout_loads(multi):
    cfg, tmp = multi
    run = tmp / "multi"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_seeds"] == 2 and [s["seed"] for s in summary["seeds"]] == [3, 4]
    assert TrainConfig.from_json((run / "config.json").read_text()).num_seeds == 2
    for k in range(2):
        d = run / f"seed_{k}"
        for f in ("config.json", "env.json", "metrics.jsonl", "calibration.json", "calibration.png", "summary.json"):
            assert (d / f).exists(), f
        model, params, env = dtjax.load(d, with_env=True)
        assert model == cfg.model and env == cfg.env
        seed_cfg = TrainConfig.from_json((d / "config.json").read_text())
        assert (seed_cfg.seed, seed_cfg.num_seeds, seed_cfg.dataset) == (3 + k, 1, cfg.dataset)
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if "train/loss" in r] == [10, 20, 30, 40]
        assert "eval/return@+1" in rows[1] and rows[-1]["final"]
        calib = json.loads((d / "calibration.json").read_text())
        assert len(calib["rows"]) == 3 and all(4 <= r["episodes"] <= 32 for r in calib["rows"])
        assert all(np.isfinite(r["se_return"]) for r in calib["rows"]) and calib["se_target"] == cfg.calib_se
    a, b = _leaves(run / "seed_0"), _leaves(run / "seed_1")
    assert max(float(np.abs(x - y).max()) for x, y in zip(a, b)) > 1e-3  # different init and batches
    with pytest.raises(RunError, match="already exists"):
        train_and_evaluate(cfg, progress=False)


def test_seed_k_is_the_one_seed_run_of_seed_plus_k(multi):
    """Seed 1's saved config, run on its own (no vmap), gives seed 1's params up to float rounding."""
    _, tmp = multi
    one = TrainConfig.from_json((tmp / "multi" / "seed_1" / "config.json").read_text()).replace(run_name="alone")
    train_and_evaluate(one, progress=False)
    for x, y in zip(_leaves(tmp / "multi" / "seed_1"), _leaves(tmp / "alone")):
        assert_close(x, y, rtol=1e-4, floor=1e-2)


def test_seeds_resume_exactly(multi, tmp_path, monkeypatch):
    """Kill a 2-seed run after its step-20 checkpoints; the resumed run ends with the same params."""
    import dtjax.train as tr

    cfg, tmp = multi
    run_cfg = seeds_cfg(tmp_path, dataset=cfg.dataset)
    real_save = tr.ckpt_lib.save

    class Killed(Exception):
        pass

    saved = []

    def save_then_die(mgr, step, *a, **k):
        real_save(mgr, step, *a, **k)
        mgr.wait_until_finished()
        saved.append(step)
        if saved.count(20) == 2:
            raise Killed

    monkeypatch.setattr(tr.ckpt_lib, "save", save_then_die)
    with pytest.raises(Killed):
        train_and_evaluate(run_cfg, progress=False)
    monkeypatch.setattr(tr.ckpt_lib, "save", real_save)
    assert not (tmp_path / "multi" / "summary.json").exists()
    train_and_evaluate(run_cfg.replace(num_seeds=1), resume=True, progress=False)  # the saved config wins
    for k in range(2):
        for x, y in zip(_leaves(tmp_path / "multi" / f"seed_{k}"), _leaves(tmp / "multi" / f"seed_{k}")):
            np.testing.assert_array_equal(x, y)
        rows = [json.loads(line) for line in (tmp_path / "multi" / f"seed_{k}" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if "train/loss" in r] == [10, 20, 30, 40]


def test_one_dataset_per_seed(multi, tmp_path):
    """``seed_datasets``: each seed trains on its own dataset (here placed in seed_k/dataset, as
    a resumed run finds them). Seed 1's is the shared dataset of the 2-seed run, padded to seed
    0's longer one when stacked: seed 1 still ends where the shared run's seed 1 does."""
    import shutil

    cfg, tmp = multi
    run = tmp_path / "multi"
    _dataset(run / "seed_0" / "dataset", seed=10, n_episodes=400)
    shutil.copytree(cfg.dataset, run / "seed_1" / "dataset")
    summary = train_and_evaluate(seeds_cfg(tmp_path, dataset="", seed_datasets=True), progress=False)
    assert summary["seed_datasets"] and not (run / "dataset").exists()
    assert TrainConfig.from_json((run / "seed_0" / "config.json").read_text()).dataset == str(run / "seed_0" / "dataset")
    for x, y in zip(_leaves(run / "seed_1"), _leaves(tmp / "multi" / "seed_1")):
        assert_close(x, y, rtol=1e-4, floor=1e-2)
    assert max(float(np.abs(x - y).max()) for x, y in zip(_leaves(run / "seed_0"), _leaves(tmp / "multi" / "seed_0"))) > 1e-3


@pytest.mark.slow  # a 4-device subprocess run; tests/test_train.py keeps sharded = single device in the fast suite
def test_seeds_sharded_over_devices(multi, tmp_path):
    """2 seeds on 4 simulated CPU devices (a 2 x 2 seed x data mesh) give the 1-device params."""
    cfg, tmp = multi
    c = seeds_cfg(tmp_path, dataset=cfg.dataset)
    (tmp_path / "cfg.json").write_text(c.to_json())
    script = ("import sys, jax; from dtjax.config import TrainConfig; from dtjax.train import train_and_evaluate\n"
              "assert jax.device_count() == 4, jax.devices()\n"
              "train_and_evaluate(TrainConfig.from_json(open(sys.argv[1]).read()), progress=False)\n")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "cfg.json")], capture_output=True, text=True,
                       env=env, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    for k in range(2):
        for x, y in zip(_leaves(tmp_path / "multi" / f"seed_{k}"), _leaves(tmp / "multi" / f"seed_{k}")):
            assert_close(x, y, rtol=1e-4, floor=1e-2)


def test_seed_config_errors(tmp_path, capsys):
    for bad in (dict(num_seeds=0), dict(num_seeds=True), dict(calib_se=-0.1), dict(eval_pool=0), dict(calib_min_episodes=0)):
        with pytest.raises(ConfigError):
            seeds_cfg(tmp_path, **bad)
    import train as train_script

    with pytest.raises(SystemExit) as e:
        train_script.main(["--num_seeds", "0"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "num_seeds must be >= 1" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# THE POOLED EVALUATION
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("cfg", "env", "n_episodes"))
def _lockstep_reference(params, cfg, env, env_params, key, target_rtgs, n_episodes):
    """dtjax 0.1's greedy evaluation, verbatim in substance: every (target, episode) in one batch,
    stepped (with ``env.step``'s auto-reset) until the last one ends."""
    from dtjax.model import forward
    from envs.dynamic_obstacles import cell_type
    from envs.minigrid import DIR_TO_VEC, WALL

    n_rtg = target_rtgs.shape[0]
    batch = n_rtg * n_episodes
    k_reset, k_loop = jax.random.split(key)
    reset_keys = jnp.tile(jax.random.split(k_reset, n_episodes), (n_rtg, 1))
    obs0, state0 = jax.vmap(env.reset, in_axes=(0, None))(reset_keys, env_params)
    rtg0 = jnp.repeat(target_rtgs.astype(jnp.float32), n_episodes)
    K, pad, max_t = cfg.n_timesteps, cfg.n_actions, cfg.max_timestep

    def push(buf, x):
        return jnp.concatenate([buf[:, 1:], x[:, None]], axis=1)

    hist0 = (push(jnp.zeros((batch, K) + obs0.shape[1:], obs0.dtype), obs0), push(jnp.zeros((batch, K)), rtg0),
             push(jnp.zeros((batch, K), jnp.int32), jnp.zeros((batch,), jnp.int32)), jnp.full((batch, K), pad, jnp.int32))

    def cond(c):
        return (c[0] < env_params.max_steps_in_episode) & ~jnp.all(c[3])

    def body(c):
        step, state, hist, done, ret, length, outcome = c
        obs_h, rtg_h, ts_h, act_h = hist
        logits = forward(params, cfg, obs_h, rtg_h, ts_h, act_h if K > 1 else None)[:, -1]
        _, k_env = jax.random.split(jax.random.fold_in(k_loop, step))
        front = state.agent_pos + jnp.asarray(DIR_TO_VEC)[state.agent_dir]
        front_wall = jax.vmap(lambda xy, o: cell_type(xy, o, env.size))(front, state.obstacles) == WALL
        action = jnp.argmax(logits, -1).astype(jnp.int32)
        obs, state, reward, term, trunc, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(k_env, batch), state, action, env_params)
        ended = (term | trunc) & ~done
        ret = jnp.where(done, ret, ret + reward)
        length = jnp.where(done, length, length + 1)
        new_out = jnp.where(reward > 0, 1, jnp.where(reward <= -1, jnp.where(front_wall, 4, 2), 3))
        outcome = jnp.where(ended, new_out, outcome)
        hist = (push(obs_h, obs), push(rtg_h, rtg_h[:, -1] - reward), push(ts_h, jnp.minimum(state.time, max_t)),
                push(act_h.at[:, -1].set(action), jnp.full((batch,), pad, jnp.int32)))
        return step + 1, state, hist, done | term | trunc, ret, length, outcome

    z = jnp.zeros((batch,), jnp.int32)
    out = jax.lax.while_loop(cond, body, (jnp.int32(0), state0, hist0, jnp.zeros((batch,), bool), jnp.zeros((batch,)), z, z))
    return tuple(x.reshape(n_rtg, n_episodes) for x in out[4:])


@pytest.fixture(scope="module")
def trained(multi):
    """Seed 0 of the 2-seed run, K = 1, and a 2-timestep model (random init) for the context path."""
    from dtjax import sharding
    from dtjax.model import init_params

    cfg, tmp = multi
    env, env_params = cfg.env.make()
    model, params = dtjax.load(tmp / "multi" / "seed_0")
    k2 = ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=32, max_timestep=49, n_timesteps=2)
    # placed as a one-seed run places them, so its compiled rollout is reused
    put = functools.partial(jax.device_put, device=sharding.replicated(sharding.data_mesh()))
    return env, env_params, [(model, put(params)), (k2, put(init_params(jax.random.PRNGKey(5), k2)))]


def test_pooled_evaluation_plays_the_lockstep_episodes(trained):
    """Greedy outcomes, returns and lengths equal the one-batch loop's, episode for episode, with
    a pool (8) far smaller than the episodes (slots refilled many times) in a padded capacity
    (3 x 32 entries for 3 x 6 episodes), for one and two timesteps of context."""
    env, env_params, models = trained
    key, rtgs = jax.random.PRNGKey(11), [-1.0, 0.0, 1.0]
    lengths = set()
    for cfg, params in models:
        ref_ret, ref_len, ref_out = (np.asarray(x) for x in _lockstep_reference(
            params, cfg, env, env_params, key, jnp.asarray(rtgs), 6))
        res = evaluate(params, cfg, env, env_params, key, rtgs, 6, capacity=CAPACITY)
        np.testing.assert_array_equal(res.returns, ref_ret)
        np.testing.assert_array_equal(res.lengths, ref_len)
        np.testing.assert_array_equal(res.goal, ref_out == 1)
        np.testing.assert_array_equal(res.hit_wall, ref_out == 4)
        np.testing.assert_array_equal(res.timeout, ref_out == 3)
        lengths.update(ref_len.ravel().tolist())
    assert len(lengths) > 2  # episodes end at different steps


def test_standard_error_rule_plays_a_prefix(trained):
    """With ``se`` each target plays a prefix of the fixed-count episodes (the same episodes),
    at least ``min_episodes``, at most the cap; a target with no spread stops early."""
    env, env_params, models = trained
    cfg, params = models[0]
    key, rtgs = jax.random.PRNGKey(12), [-1.0, 0.0, 1.0]
    full = evaluate(params, cfg, env, env_params, key, rtgs, 32, capacity=CAPACITY)
    res = evaluate(params, cfg, env, env_params, key, rtgs, 32, se=0.05, min_episodes=4, capacity=CAPACITY)
    cal = calibrate(params, cfg, env, env_params, key, rtgs, 32, se=0.05, min_episodes=4, capacity=CAPACITY)
    assert [r["episodes"] for r in cal["rows"]] == res.played.sum(1).tolist()
    for r, row in enumerate(cal["rows"]):
        n = row["episodes"]
        assert 4 <= n <= 32 and res.played[r, :n].all() and not res.played[r, n:].any()
        np.testing.assert_array_equal(res.returns[r, :n], full.returns[r, :n])
        assert row["mean_return"] == pytest.approx(float(full.returns[r, :n].mean()), rel=1e-6, abs=1e-6)
        if full.returns[r].std() == 0:
            assert n <= 4 + 8  # nothing to estimate: min_episodes, plus at most a pool already running
        if n < 32:
            assert row["se_return"] <= 0.05 * 1.5
    assert cal["episodes_total"] == sum(r["episodes"] for r in cal["rows"]) < 3 * 32


def test_evaluate_seeds_is_evaluate_per_seed(trained):
    from dtjax import sharding

    env, env_params, models = trained
    cfg, params = models[0]
    other = jax.tree.map(lambda x: x * 1.5, params)
    keys = jnp.stack([jax.random.PRNGKey(1), jax.random.PRNGKey(2)])
    stacked = jax.device_put(jax.tree.map(lambda *x: jnp.stack(x), params, other), sharding.seed_sharding(sharding.seed_mesh(2)))
    both = evaluate_seeds(stacked, cfg, env, env_params, keys, [-1.0, 1.0], 16, capacity=CAPACITY)
    for res, p, k in zip(both, (params, other), keys):
        one = evaluate(p, cfg, env, env_params, k, [-1.0, 1.0], 16, capacity=CAPACITY)
        np.testing.assert_array_equal(res.returns, one.returns)
        np.testing.assert_array_equal(res.lengths, one.lengths)


def test_analyse_census_of_a_seed_run(multi, tmp_path):
    """``analyse.py --census RUN``: one row per seed, with its carriers, attention and calibration."""
    import analyse

    _, tmp = multi
    assert analyse.main(["--census", str(tmp / "multi"), "--out", str(tmp_path), "--quiet"]) == 0
    res = json.loads((tmp_path / "census.json").read_text())
    assert [Path(r["model"]).name for r in res["models"]] == ["seed_0", "seed_1"]
    for r in res["models"]:
        assert set(r["carriers"]) == {"veto", "gate", "drive"} and r["n_probes"] > 10
        cal = json.loads((tmp / "multi" / Path(r["model"]).name / "calibration.json").read_text())
        assert r["calibration"]["return_at_high"] == pytest.approx(cal["rows"][-1]["mean_return"])
        assert r["calibration"]["calibration_error"] == pytest.approx(cal["calibration_error"])
    assert res["counts"]["models"] == 2 and sum(res["counts"]["veto"].values()) == 2
    assert (tmp_path / "census.png").stat().st_size > 0 and "seed_1" in (tmp_path / "census.md").read_text()
    assert analyse.main(["--census", str(tmp / "nope"), "--quiet"]) == 1
