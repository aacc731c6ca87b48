"""Training dynamics (``dtjax.dynamics``): checkpoints kept along a run, metrics over stacked
(seed, checkpoint) params, and the commit step.

- ``keep_every`` keeps step 0 and its multiples (and prunes the rest); ``Run.steps`` lists them,
  ``Run.at_step`` opens one, and a run resumed from a kept checkpoint ends bit for bit where the
  uninterrupted run did (the kept step holds the exact training state).
- The vmapped metrics over a (seed, checkpoint) axis equal the census's and ACDC's own per-model
  calls (``mechanism``, ``acdc``).
- ``commit_index`` on hand-made sequences.
"""

from __future__ import annotations

import shutil

import jax
import numpy as np
import pytest

from dtjax.circuits.census import attention_to_rtg, census_probes, mechanism, rtg_attention, share_labels
from dtjax.circuits.graph import acdc
from dtjax.config import ConfigError
from dtjax.dynamics import DynamicsOptions, commit_index, kept_checkpoints, load_stacked, stacked_metrics, write_dynamics
from dtjax.loader import LoadError
from dtjax.run import Run
from dtjax.train import train_and_evaluate
from fixtures import random_params
from test_seeds import ENV, TINY_MODEL, seeds_cfg
from tolerance import assert_close, assert_normalised_close


# ---------------------------------------------------------------------------------------------
# The commit step
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seq, index", [
    (["a"], 0), (["a", "a", "a"], 0), (["a", "b", "b"], 1), (["b", "a", "b", "b"], 2),
    (["a", "a", "b"], 2), (["x", "y", "x", "y"], 3), (["m", "h", "h", "m", "m", "m"], 3),
])
def test_commit_index_is_where_the_class_settles_for_good(seq, index):
    assert commit_index(seq) == index
    assert all(c == seq[-1] for c in seq[index:]) and (index == 0 or seq[index - 1] != seq[-1])


def test_commit_index_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        commit_index([])


# ---------------------------------------------------------------------------------------------
# Kept checkpoints
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    """A 2-seed run (test_seeds' tiny config and compiled chunk) saving every 10 steps, keeping
    the latest one and every multiple of 20: steps 0, 20, 40 remain."""
    tmp = tmp_path_factory.mktemp("dyn")
    cfg = seeds_cfg(tmp, run_name="kept", ckpt_every=10, keep_every=20, keep_checkpoints=1)
    train_and_evaluate(cfg, progress=False)
    return cfg, tmp


def test_keep_every_keeps_step_zero_and_its_multiples(kept):
    cfg, tmp = kept
    run = Run.open(tmp / "kept")
    assert run.kind == "seeds" and run.steps == [0, 20, 40]
    for k in range(2):
        seed = run.seed(k)
        assert seed.steps == [0, 20, 40] and seed.step == 40
        assert [seed.at_step(s).step for s in seed.steps] == [0, 20, 40]
    with pytest.raises(LoadError, match="no checkpoint at step 10"):
        run.seed(0).at_step(10)
    models, steps = kept_checkpoints(tmp / "kept")
    assert steps == [0, 20, 40] and [m.root.name for m in models] == ["seed_0", "seed_1"]
    stacked = load_stacked(models, steps)
    assert stacked["W_U"].shape == (2, 3) + run.seed(0).params["W_U"].shape
    np.testing.assert_array_equal(stacked["W_U"][1, 2], run.seed(1).params["W_U"])
    assert not np.array_equal(stacked["W_U"][0, 0], stacked["W_U"][0, 1])


def test_a_run_resumed_from_a_kept_checkpoint_ends_bit_for_bit_the_same(kept):
    """Step 40 removed: the run resumed from kept step 20 reaches the uninterrupted run's step 40
    exactly, so step 20 holds the exact training state (the run is then as before)."""
    cfg, tmp = kept
    shutil.copytree(tmp / "kept", tmp / "uninterrupted")
    for k in range(2):
        shutil.rmtree(tmp / "kept" / f"seed_{k}" / "ckpt" / "40")
    assert Run.open(tmp / "kept").steps == [0, 20]
    (tmp / "kept" / "summary.json").unlink()
    train_and_evaluate(cfg, resume=True, progress=False)
    for k in range(2):
        a, b = Run.open(tmp / "uninterrupted" / f"seed_{k}"), Run.open(tmp / "kept" / f"seed_{k}")
        assert b.steps == [0, 20, 40]
        for s in (20, 40):
            for x, y in zip(jax.tree.leaves(a.at_step(s).params), jax.tree.leaves(b.at_step(s).params)):
                np.testing.assert_array_equal(x, y)


def test_keep_every_must_be_a_multiple_of_log_every(tmp_path):
    with pytest.raises(ConfigError, match="keep_every"):
        seeds_cfg(tmp_path, keep_every=15)


def test_a_run_without_kept_checkpoints_is_a_one_line_error(tmp_path):
    from fixtures import tiny_run

    tiny_run(tmp_path / "one", TINY_MODEL)
    with pytest.raises(LoadError, match="--keep_every"):
        kept_checkpoints(tmp_path / "one")


# ---------------------------------------------------------------------------------------------
# Metrics over stacked checkpoints
# ---------------------------------------------------------------------------------------------


def test_attention_over_stacked_checkpoints_equals_the_per_checkpoint_call():
    """The cheap one of the default run: attention to the RTG token of six random models stacked
    as (2 seeds, 3 checkpoints), one vmap, equals the census's ``attention_to_rtg`` per model."""
    models = [random_params(TINY_MODEL, seed=i) for i in range(6)]
    flat = jax.tree.map(lambda *xs: np.stack(xs), *models)
    probes = census_probes(TINY_MODEL, ENV)
    attn = np.asarray(jax.jit(jax.vmap(lambda p: rtg_attention(p, TINY_MODEL, probes["ball_hi"])))(flat)).reshape(2, 3, 1, 2)
    for i, p in enumerate(models):
        assert_close(attn[divmod(i, 3)], attention_to_rtg(p, TINY_MODEL, probes["ball_hi"]), err_msg=f"model {i}")
    assert np.ptp(attn) > 0.01  # the models differ


@pytest.mark.slow
def test_stacked_metrics_equal_the_census_and_acdc_per_model():
    """Six random models as (2 seeds, 3 checkpoints): the one vmapped call gives, for each, the
    census's ``mechanism`` effects, carry shares and attention, and ``acdc``'s circuit."""
    models = [random_params(TINY_MODEL, seed=i) for i in range(6)]
    stacked = jax.tree.map(lambda *xs: np.stack(xs).reshape((2, 3) + xs[0].shape), *models)
    m = stacked_metrics(stacked, TINY_MODEL, ENV, tau=0.003)
    assert m["veto_carry"].shape == (2, 3, len(share_labels(TINY_MODEL))) and m["acdc_edges"].shape == (2, 3)
    labels = share_labels(TINY_MODEL)
    for i in (0, 5):
        s, c = divmod(i, 3)
        ref = mechanism(models[i], TINY_MODEL, ENV)
        for contrast in ("veto", "gate"):
            r = ref["contrasts"][contrast]
            assert_close(m[f"{contrast}_effect"][s, c], r["effect"], err_msg=contrast)
            # mechanism rounds its shares to 4 decimals
            assert_close(m[f"{contrast}_carry"][s, c], [r["carry"][lab] for lab in labels], rtol=1e-4, floor=1.0)
        assert_close(m["attn_to_rtg"][s, c], ref["attn_to_rtg"], rtol=1e-4, floor=1.0)
    probes = census_probes(TINY_MODEL, ENV)
    ref = acdc(models[5], TINY_MODEL, probes["ball_hi"], probes["clear_hi"], 0.003)
    assert m["acdc_edges"][1, 2] == ref["n_edges"] and 0 < ref["n_edges"] < ref["n_total"]
    assert_normalised_close(m["acdc_faithfulness"][1, 2], ref["faithfulness"], ref["clean"], ref["corrupted"])


@pytest.mark.slow
def test_write_dynamics_writes_the_page_and_the_numbers(kept):
    cfg, tmp = kept
    import json

    page = write_dynamics(tmp / "kept", tmp / "out", DynamicsOptions(calib_points=3, calib_episodes=4), log=lambda m: None)
    d = json.loads((tmp / "out" / "dynamics.json").read_text())
    assert page.read_text().count("<img") >= 3 and d["steps"] == [0, 20, 40] and d["seeds"] == ["seed_0", "seed_1"]
    assert np.shape(d["metrics"]["calibration_error"]) == (2, 3) and len(d["commit"]) == 2
    for c, row in zip(d["commit"], d["classes"]):
        assert c["step"] == d["steps"][commit_index(row)] and c["class"] == row[-1]


def test_analyse_dynamics_of_a_run_without_checkpoints_is_a_one_line_error(tmp_path, capsys):
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    import analyse

    pt = root / "checkpoints" / "original" / "demo_model_overnight_training.pt"
    assert analyse.main(["--dynamics", str(pt), "--out", str(tmp_path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no training checkpoints" in err
    with pytest.raises(SystemExit):
        analyse.main(["--dynamics", str(pt), "--census", str(pt)])
