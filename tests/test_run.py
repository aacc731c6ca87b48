"""dtjax.run.Run: the one reader of run directories and `.pt` files (old and new runs, seeds, SAE
listing, lazy params, one-line errors)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

import dtjax
from dtjax import checkpoint as ckpt_lib
from dtjax.census import checkpoints_of
from dtjax.config import EnvConfig, ModelConfig
from dtjax.loader import LoadError
from dtjax.model import forward, init_params
from dtjax.run import Run, sae_root_of
from fixtures import tiny_run

ROOT = Path(__file__).resolve().parents[1]
OLD = ROOT / "tests" / "data" / "run_v0_1"  # a 2-seed run written by dtjax 0.1 (see its README.md)
PT = ROOT / "checkpoints" / "original" / "demo_model_one_hot_overnight.pt"


def _same(a, b) -> bool:
    """Two param trees with the same structure and bit-identical leaves."""
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _shapes(tree) -> dict:
    return {jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_stored_old_run_opens():
    root = Run.open(OLD)
    assert root.kind == "seeds" and [p.name for p in root.seeds] == ["seed_0", "seed_1"]
    assert root.model_cfg is None and root.config["num_seeds"] == 2
    with pytest.raises(LoadError, match="2-seed run: open one of its seeds"):
        dtjax.load(OLD)
    assert checkpoints_of(OLD) == [OLD / "seed_0", OLD / "seed_1"]
    for k in (0, 1):
        run = root.seed(k)
        assert (run.kind, run.root, run.step, run.step_dir) == ("run", OLD / f"seed_{k}", 10, OLD / f"seed_{k}" / "ckpt" / "10")
        assert run.model_cfg == ModelConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, max_timestep=19)
        assert run.env_cfg == EnvConfig("MiniGrid-Dynamic-Obstacles-5x5-v0", max_steps=20)
        # the env file old readers use says the same as the config the run is read from
        assert EnvConfig.from_dict(json.loads((OLD / "env.json").read_text())) == run.env_cfg
        tc = run.train_config
        assert (tc.seed, tc.num_seeds, tc.model, tc.env) == (k, 1, run.model_cfg, run.env_cfg)
        # the seeds share the parent's dataset (the recorded absolute path is where it was written)
        assert run.dataset_path == OLD / "dataset" and run.prob_go_from_end == 0.1
        arrays, meta = run.open_dataset()
        assert meta["env_id"] == run.env_cfg.env_id and arrays["action"].shape[0] > 0
        calib = run.calibration()
        assert len(calib["rows"]) == 3 and run.summary()["seed"] == k
        assert run.sae_root == OLD / f"seed_{k}" / "sae" and run.sae_dirs() == []
        want = jax.eval_shape(init_params, jax.random.PRNGKey(0), run.model_cfg)
        assert _shapes(run.params) == _shapes(want)
        cfg, params, env_cfg = dtjax.load(OLD / f"seed_{k}", with_env=True)
        assert (cfg, env_cfg) == (run.model_cfg, run.env_cfg)
        assert _same(params, run.params)
    # the two seeds are different models, and each runs
    p0, p1 = root.seed(0).params, root.seed(1).params
    assert not np.array_equal(p0["W_U"], p1["W_U"])
    obs = np.zeros((1, 1, 7, 7, 3), np.uint8)
    logits = forward(p0, root.seed(0).model_cfg, obs, np.ones((1, 1), np.float32), np.zeros((1, 1), np.int32))
    assert logits.shape[-1] == 3 and np.isfinite(np.asarray(logits)).all()
    # its ckpt directory and its step directory open the same model
    for sub in ("seed_0/ckpt", "seed_0/ckpt/10"):
        r = Run.open(OLD / sub)
        assert (r.root, r.step, r.model_cfg) == (OLD / "seed_0", 10, root.seed(0).model_cfg)


def test_fresh_run_params_are_lazy(tmp_path, monkeypatch):
    cfg = ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=32, max_timestep=49)
    path, params = tiny_run(tmp_path / "fresh", cfg)
    calls = []
    restore = ckpt_lib.restore_params
    monkeypatch.setattr(ckpt_lib, "restore_params", lambda d: calls.append(d) or restore(d))
    run = Run.open(path)
    assert calls == [] and (run.kind, run.step, run.model_cfg) == ("run", 0, cfg)
    assert run.env_cfg == EnvConfig()  # no "env" in its config: the default env in the model's obs_mode
    with pytest.raises(LoadError, match="bad training config"):  # its config is no TrainConfig (max_timestep 49 < 299)
        _ = run.train_config
    got = run.params
    assert run.params is got and len(calls) == 1  # read once, on first use
    assert _same(got, params)
    assert run.dataset_path == path / "dataset" and run.calibration() is None and run.summary() is None


def test_original_pt():
    run = Run.open(PT)
    assert (run.kind, run.root, run.step, run.dataset_path) == ("pt", None, None, None)
    assert run.env_cfg == EnvConfig(obs_mode="one_hot", max_steps=50) and run.train_config is None
    assert run.sae_root == Path("checkpoints") / PT.stem / "sae" == sae_root_of(PT)
    cfg, params = dtjax.load(PT)
    assert cfg == run.model_cfg and _same(params, run.params)
    with pytest.raises(LoadError, match="no dataset to open"):
        run.open_dataset()
    assert run.calibration() is None and run.seeds == []


def test_sae_listing(tmp_path):
    run_dir = tmp_path / "seed_0"
    shutil.copytree(OLD / "seed_0", run_dir)
    for name in ("b", "a", ".a.tmp-1"):  # a hidden one is an unfinished write
        (run_dir / "sae" / name / "ckpt").mkdir(parents=True)
        (run_dir / "sae" / name / "config.json").write_text("{}")
    (run_dir / "sae" / "notes").mkdir()  # no config.json / ckpt: not a dictionary
    run = Run.open(run_dir)
    assert run.sae_dirs() == [run_dir / "sae" / "a", run_dir / "sae" / "b"]
    for p in (run_dir, run_dir / "ckpt", run_dir / "ckpt" / "10"):
        assert sae_root_of(p) == run_dir / "sae"
    assert run.seeds == [] and run.models() == [run_dir]


def test_errors(tmp_path):
    with pytest.raises(LoadError, match="not found"):
        Run.open(tmp_path / "nothing")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(LoadError, match="is empty"):
        Run.open(tmp_path / "empty.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(LoadError, match="not a PyTorch checkpoint"):
        Run.open(tmp_path / "text.pt")
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.json").write_text("{}")  # a run that never saved a step
    with pytest.raises(LoadError, match="no dtjax checkpoint steps"):
        Run.open(tmp_path / "bare")
    broken = tmp_path / "broken"
    shutil.copytree(OLD / "seed_0", broken)
    root = Run.open(OLD)
    with pytest.raises(LoadError, match="no seed 2"):
        root.seed(2)
    (broken / "calibration.json").write_text("{not json")
    run = Run.open(broken)
    with pytest.raises(LoadError, match="unreadable JSON"):
        run.calibration()
    for f in (broken / "ckpt" / "10" / "params").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(b"")  # the arrays' data gone: the (lazy) params fail, with one line
    with pytest.raises(LoadError, match="cannot read dtjax checkpoint") as e:
        _ = Run.open(broken).params
    assert "\n" not in str(e.value)
    bad_model = tmp_path / "badmodel"
    shutil.copytree(OLD / "seed_0", bad_model)
    shutil.rmtree(bad_model / "ckpt" / "10" / "config")
    with pytest.raises(LoadError, match="no dtjax checkpoint steps"):
        Run.open(bad_model)
