"""The main job: tiny end-to-end run, exact resume, sharded == unsharded, loss decreases, CLI."""

from __future__ import annotations

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
from dtjax.config import ConfigError, DataConfig, DataMixConfig, EnvConfig, ModelConfig, PPOConfig, TrainConfig
from dtjax.model import forward, init_params
from dtjax.train import RunError, loss_fn, make_optimizer, train_and_evaluate
from tolerance import assert_close

ROOT = Path(__file__).resolve().parents[1]

TINY_DATA = DataConfig(
    ppo=PPOConfig(total_timesteps=4 * 16 * 32, num_envs=16, num_steps=32, num_minibatches=4, hidden=16),
    mix=DataMixConfig(envs=16),
)
TINY_MODEL = ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=32, max_timestep=49)


def tiny_cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(
        run_name="tiny", checkpoint_dir=str(tmp_path), env=EnvConfig("MiniGrid-Dynamic-Obstacles-5x5-v0", max_steps=50),
        model=TINY_MODEL, data=TINY_DATA, batch_size=16, num_steps=40, log_every=10, eval_every=20, ckpt_every=20,
        warmup_steps=5, eval_episodes=4, final_eval_episodes=4, calib_points=3, calib_episodes=4,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    cfg = tiny_cfg(tmp)
    summary = train_and_evaluate(cfg, progress=False)
    return cfg, summary, tmp


def test_tiny_end_to_end(tiny_run):
    cfg, summary, tmp = tiny_run
    run = Path(summary["run_dir"])
    for f in ("config.json", "metrics.jsonl", "calibration.json", "calibration.png", "summary.json", "dataset/metadata.json"):
        assert (run / f).exists(), f
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [10, 20, 30, 40]
    assert "eval/return@+1" in rows[1]
    loaded_cfg, params = dtjax.load(run)
    assert loaded_cfg == cfg.model
    # the env travels with the checkpoint: env.json, and dtjax.load(with_env=True)
    assert json.loads((run / "env.json").read_text()) == cfg.env.to_dict()
    assert dtjax.load(run, with_env=True)[2] == EnvConfig("MiniGrid-Dynamic-Obstacles-5x5-v0", max_steps=50)
    assert jax.tree.structure(params) == jax.tree.structure(init_params(jax.random.PRNGKey(0), cfg.model))
    calib = json.loads((run / "calibration.json").read_text())
    assert len(calib["rows"]) == 3 and calib["n_episodes"] == 4
    with pytest.raises(RunError, match="already exists"):
        train_and_evaluate(cfg, progress=False)


def _final_params(run_dir):
    return dtjax.load(run_dir)[1]


def test_resume_gives_identical_params(tiny_run, tmp_path, monkeypatch):
    """Kill the run right after its step-20 checkpoint, resume it: the same params as a run that
    was never interrupted."""
    cfg, summary, _ = tiny_run
    run_cfg = tiny_cfg(tmp_path, run_name="resumed", dataset=str(Path(summary["run_dir"]) / "dataset"))
    import dtjax.train as tr

    real_save = tr.ckpt_lib.save

    class Killed(Exception):
        pass

    def save_then_die(mgr, step, *a, **k):
        real_save(mgr, step, *a, **k)
        mgr.wait_until_finished()
        if step == 20:
            raise Killed

    monkeypatch.setattr(tr.ckpt_lib, "save", save_then_die)
    with pytest.raises(Killed):
        train_and_evaluate(run_cfg, progress=False)
    monkeypatch.setattr(tr.ckpt_lib, "save", real_save)
    assert not (tmp_path / "resumed" / "summary.json").exists()
    train_and_evaluate(run_cfg, resume=True, progress=False)
    ref = train_and_evaluate(run_cfg.replace(run_name="straight"), progress=False)
    a, b = _final_params(tmp_path / "resumed"), _final_params(ref["run_dir"])
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    rows = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [10, 20, 30, 40]  # no duplicated lines


def test_second_run_of_the_same_shapes_reuses_the_compiled_chunk(tiny_run, tmp_path):
    """Runs that differ only in what the chunk does not read (run name, seed, evaluation sizes)
    trace (and so compile) the jitted chunk once in a process; a new static setting traces anew."""
    import dtjax.train as tr

    _, summary, _ = tiny_run
    ds = str(Path(summary["run_dir"]) / "dataset")
    cfg = tiny_cfg(tmp_path, run_name="first", dataset=ds, batch_size=8, calib_points=2)  # batch 8: a setting no other test uses
    before = tr.CHUNK_TRACES["count"]
    train_and_evaluate(cfg, progress=False)
    assert tr.CHUNK_TRACES["count"] == before + 1
    train_and_evaluate(cfg.replace(run_name="second", seed=7, eval_episodes=2, final_eval_episodes=3), progress=False)
    assert tr.CHUNK_TRACES["count"] == before + 1
    assert tr.chunk_spec(cfg) == tr.chunk_spec(cfg.replace(seed=7, run_name="x", eval_rtgs=(1.0,)))
    assert tr.chunk_spec(cfg) != tr.chunk_spec(cfg.replace(lr=2e-3))
    assert tr.chunk_spec(cfg) != tr.chunk_spec(cfg.replace(data=cfg.data.replace(window_end=True)))  # the sampler reads it


def test_resume_errors(tmp_path):
    with pytest.raises(RunError, match="cannot resume"):
        train_and_evaluate(tiny_cfg(tmp_path, run_name="nothing"), resume=True, progress=False)


def test_loss_decreases_on_a_fixed_batch():
    cfg = TrainConfig(model=TINY_MODEL, env=EnvConfig(max_steps=50), lr=3e-3, lr_schedule="constant", num_steps=100, log_every=10,
                      eval_every=10, ckpt_every=10, warmup_steps=0)
    rng = np.random.default_rng(0)
    batch = {
        "obs": jnp.asarray(rng.integers(0, 9, (32, 1, 7, 7, 3)), jnp.uint8), "rtg": jnp.asarray(rng.uniform(-1, 1, (32, 1)), jnp.float32),
        "timesteps": jnp.asarray(rng.integers(0, 49, (32, 1)), jnp.int32), "actions": jnp.asarray(rng.integers(0, 3, (32, 1)), jnp.int32),
        "mask": jnp.ones((32, 1), bool),
    }
    tx = make_optimizer(cfg)
    params = init_params(jax.random.PRNGKey(0), TINY_MODEL)
    opt = tx.init(params)

    @jax.jit
    def step(p, o):
        (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(p, TINY_MODEL, batch)
        u, o = tx.update(g, o, p)
        return jax.tree.map(lambda a, b: a + b, p, u), o, loss

    losses = []
    for _ in range(25):  # not to convergence: at a memorised batch (loss ~1e-6) every loss is float32 rounding
        before = params  # the params losses[-1] is computed at (step returns the loss before its update)
        params, opt, loss = step(params, opt)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    # padding positions do not count: with rows 0-3 real, the loss is their mean cross-entropy, from the
    # logits with NumPy, at the params of losses[-1]; float32 errors scale with the logits, not the loss
    logits = forward(before, TINY_MODEL, batch["obs"], batch["rtg"], batch["timesteps"])
    ce = -np.take_along_axis(_log_softmax(logits), np.asarray(batch["actions"])[..., None], -1)[..., 0]
    tol = dict(floor=float(np.abs(logits).max()))
    assert_close(loss_fn(before, TINY_MODEL, batch)[0], losses[-1], **tol)
    assert_close(ce.mean(), losses[-1], **tol)
    masked = dict(batch, mask=jnp.zeros((32, 1), bool).at[:4].set(True))
    assert_close(loss_fn(before, TINY_MODEL, masked)[0], ce[:4].mean(), **tol)
    assert abs(ce[:4].mean() - losses[-1]) > 1e-2 * losses[-1]  # the masked and full losses differ


def _log_softmax(logits):
    x = np.asarray(logits, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_masked_loss_with_context_matches_numpy():
    """K = 2 with left padding (mask False): the loss is the mean cross-entropy over real positions
    only, whatever the padded positions hold."""
    cfg = TINY_MODEL.replace(n_timesteps=2)
    rng = np.random.default_rng(1)
    B = 8
    batch = {
        "obs": jnp.asarray(rng.integers(0, 9, (B, 2, 7, 7, 3)), jnp.uint8), "rtg": jnp.asarray(rng.uniform(-1, 1, (B, 2)), jnp.float32),
        "timesteps": jnp.asarray(rng.integers(0, 49, (B, 2)), jnp.int32), "actions": jnp.asarray(rng.integers(0, 3, (B, 2)), jnp.int32),
        "mask": jnp.asarray(np.stack([rng.random(B) < 0.5, np.ones(B, bool)], 1)),
    }
    params = init_params(jax.random.PRNGKey(3), cfg.replace(init_std=0.5))
    logits = forward(params, cfg, batch["obs"], batch["rtg"], batch["timesteps"], batch["actions"])
    ce = -np.take_along_axis(_log_softmax(logits), np.asarray(batch["actions"])[..., None], -1)[..., 0]
    mask = np.asarray(batch["mask"])
    assert 0 < (~mask).sum() < B
    assert_close(loss_fn(params, cfg, batch)[0], ce[mask].mean(), floor=float(np.abs(logits).max()))
    assert abs(ce[mask].mean() - ce.mean()) > 1e-4  # the check can tell masked from unmasked


def test_config_roundtrip_and_validation(tmp_path):
    cfg = tiny_cfg(tmp_path)
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    for bad in (dict(num_steps=45), dict(optimizer="sgd"), dict(run_name="a/b"), dict(env=EnvConfig(max_steps=500)),
                dict(env=EnvConfig(obs_mode="one_hot"))):
        with pytest.raises(ConfigError):
            tiny_cfg(tmp_path, **bad)


def _run_cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=600)


def _main_in_process(capsys, *args):
    """train.main(args) in this process (no interpreter start-up per case): (exit code, stderr).
    An exception escaping main fails the test."""
    sys.path.insert(0, str(ROOT))
    import train as train_script

    capsys.readouterr()
    try:
        rc = train_script.main(list(args))
    except SystemExit as e:  # command-line errors
        rc = e.code
    return rc, capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    r = _run_cli("--no_such_flag", "1")  # one real process: the exit code and no traceback
    assert r.returncode == 2 and r.stderr == "train.py: error: Unrecognized options: --no_such_flag, 1\n"
    rc, err = _main_in_process(capsys, "--model.d_model", "0")
    assert rc == 2 and "model.d_model must be >= 1" in err and "Traceback" not in err
    rc, err = _main_in_process(capsys, "--config", str(tmp_path / "missing.json"))
    assert rc == 2 and "config file not found" in err
    rc, err = _main_in_process(capsys, "--dataset", str(tmp_path / "nope"), "--checkpoint_dir", str(tmp_path), "--quiet")
    assert rc == 1 and "dataset not found" in err and "Traceback" not in err
    rc, err = _main_in_process(capsys, "--resume", "ghost", "--checkpoint_dir", str(tmp_path), "--quiet")
    assert rc == 1 and "cannot resume" in err


def test_sharded_matches_single_device(tiny_run, tmp_path):
    """The same run on 4 simulated CPU devices (batch split 4 ways) gives the same params."""
    cfg, summary, _ = tiny_run
    ds = str(Path(summary["run_dir"]) / "dataset")
    script = (
        "import json, sys; from dtjax.config import TrainConfig; from dtjax.train import train_and_evaluate\n"
        "import jax; assert jax.device_count() == int(sys.argv[2]), jax.devices()\n"
        "cfg = TrainConfig.from_json(open(sys.argv[1]).read())\n"
        "train_and_evaluate(cfg, progress=False)\n"
    )
    outs = []
    for n in (1, 4):
        c = tiny_cfg(tmp_path, run_name=f"dev{n}", dataset=ds)
        (tmp_path / f"cfg{n}.json").write_text(c.to_json())
        env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "JAX_PLATFORMS": "cpu"}
        r = subprocess.run([sys.executable, "-c", script, str(tmp_path / f"cfg{n}.json"), str(n)], capture_output=True,
                           text=True, env={**os.environ, **env}, timeout=600, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-2000:]
        outs.append(_final_params(tmp_path / f"dev{n}"))
    for x, y in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
        np.testing.assert_allclose(x, y, atol=2e-5, rtol=1e-4)


def test_v0_1_configs_load_with_their_env(tmp_path):
    """dtjax 0.1 wrote env_id / max_steps at the top level of config.json: they become ``env``."""
    old = tiny_cfg(tmp_path).to_dict()
    env = old.pop("env")
    old.update(env_id=env["env_id"], max_steps=env["max_steps"])
    assert TrainConfig.from_dict(old).env == EnvConfig("MiniGrid-Dynamic-Obstacles-5x5-v0", max_steps=50)
    one_hot = dict(old, model={**old["model"], "obs_mode": "one_hot"})
    assert TrainConfig.from_dict(one_hot).env.obs_mode == "one_hot"
    with pytest.raises(ConfigError, match="unknown env id"):
        EnvConfig("MiniGrid-LavaGap-S5-v0")  # Empty is registered now (envs.empty); LavaGap is not


def test_cli_model_obs_mode_sets_the_env_obs_mode(monkeypatch):
    """``--model.obs_mode one_hot`` alone gives a one-hot env (the DT reads what the env shows);
    an explicit, contradicting ``--env.obs_mode`` is a one-line error."""
    sys.path.insert(0, str(ROOT))
    import train as train_script

    seen = {}
    monkeypatch.setattr("dtjax.train.train_and_evaluate", lambda cfg, **kw: seen.setdefault("cfg", cfg) and 1 / 0)
    with pytest.raises(ZeroDivisionError):
        train_script.main(["--model.obs_mode", "one_hot", "--env.max_steps", "100", "--quiet"])
    assert seen["cfg"].env == EnvConfig(max_steps=100, obs_mode="one_hot") and seen["cfg"].model.obs_mode == "one_hot"
    r = _run_cli("--model.obs_mode", "one_hot", "--env.obs_mode", "image")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert [line for line in r.stderr.splitlines() if "error:" in line][0].endswith("--model.obs_mode sets both)")
