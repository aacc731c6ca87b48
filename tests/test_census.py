"""The mechanism census on the original checkpoints: the classification (dtjax.circuits.census)
finds the write-up's circuit in the overnight model, and loses it when the head is cut out; the
front end (dtjax.census) writes it for several models."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

import dtjax
from dtjax.census import calibration_summary, census, write_census
from dtjax.circuits.census import mechanism, probe_states

ORIG = Path(__file__).resolve().parents[1] / "checkpoints" / "original"


@pytest.fixture(scope="module")
def overnight():
    return dtjax.load(ORIG / "demo_model_overnight_training.pt", with_env=True)


def test_probes_are_ball_ahead_and_clear_ahead_pairs(overnight):
    import envs
    from envs.dynamic_obstacles import cell_type
    from envs.minigrid import BALL, DIR_TO_VEC, EMPTY

    _, _, env_cfg = overnight
    ball, clear = probe_states(env_cfg)
    front = ball.agent_pos + np.asarray(DIR_TO_VEC)[np.asarray(ball.agent_dir)]
    kinds = jax.vmap(lambda xy, o: cell_type(xy, o, 8))
    assert (np.asarray(kinds(front, ball.obstacles)) == BALL).all()
    assert (np.asarray(kinds(front, clear.obstacles)) == EMPTY).all()
    assert ball.agent_pos.shape[0] == clear.agent_pos.shape[0] > 80
    np.testing.assert_array_equal(ball.agent_pos, clear.agent_pos)
    assert isinstance(ball, envs.EnvState)


def test_overnight_model_has_the_head_circuit(overnight):
    """docs/findings.md §3-4: H1 vetoes forward with a ball ahead and carries the RTG gate; its
    attention is not saturated on the RTG token. Cutting H1's output (W_O = 0) removes its route
    entirely, and the census no longer finds the circuit."""
    cfg, params, env_cfg = overnight
    m = mechanism(params, cfg, env_cfg)
    veto, gate = m["contrasts"]["veto"], m["contrasts"]["gate"]
    assert m["carriers"]["veto"] == "L0H1" and m["carriers"]["gate"] == "L0H1" and m["head_circuit"]
    assert veto["effect"] < -10 and veto["carry"]["L0H1"] > 2 * veto["carry"]["L0_mlp"]
    assert gate["patch"]["L0H1"] > 0.7 and abs(gate["patch"]["L0H0"]) < 0.1
    assert not m["saturated"] and max(max(row) for row in m["attn_to_rtg"]) < 0.9
    # in a one-layer model the RTG reaches the state token only through attention
    assert gate["carry"]["direct"] == 0 and gate["carry"]["L0_mlp"] == pytest.approx(0, abs=1e-6)

    W_O = np.array(params["blocks_0"]["attn"]["W_O"])
    W_O[1] = 0
    cut = {**params, "blocks_0": {**params["blocks_0"], "attn": {**params["blocks_0"]["attn"], "W_O": W_O}}}
    m_cut = mechanism(cut, cfg, env_cfg)
    assert m_cut["contrasts"]["veto"]["carry"]["L0H1"] == 0 and m_cut["contrasts"]["gate"]["patch"]["L0H1"] == 0
    assert not m_cut["head_circuit"] and m_cut["carriers"]["veto"] != "L0H1"


def test_write_census_of_two_models(overnight, tmp_path):
    """``dtjax.census.write_census`` (``analyse.py --census``) over two original models: one JSON per
    model with ``mechanism``'s classification, the summary and per-model tables, the figure."""
    cfg, params, env_cfg = overnight
    runs = [ORIG / "demo_model_overnight_training.pt", ORIG / "demo_model.pt"]
    md = write_census(runs, tmp_path, log=lambda *_: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["census.md", "census.png", "census_demo_model.pt.json",
                                                          "census_demo_model_overnight_training.pt.json"]
    res = json.loads((tmp_path / "census_demo_model_overnight_training.pt.json").read_text())
    (row,) = res["models"]
    assert row["carriers"] == mechanism(params, cfg, env_cfg)["carriers"] and row["head_circuit"]
    assert row["calibration"] is None and res["counts"]["head_circuit"] == 1 and res["counts"]["veto"] == {"L0H1": 1}
    text = md.read_text()
    assert text.startswith("| run | models |") and "### demo_model.pt" in text and "L0H1 " in text
    assert (tmp_path / "census.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a run directory with a saved calibration: its error and the sweep's ends
    calib = {"rows": [{"target_rtg": -1.0, "mean_return": -0.5, "episodes": 4},
                      {"target_rtg": 1.0, "mean_return": 0.75, "episodes": 4}], "calibration_error": 0.375, "monotonic": True}
    assert calibration_summary(calib) == {"calibration_error": 0.375, "return_at_low": -0.5, "return_at_high": 0.75,
                                          "monotonic": True, "episodes": 8}
    assert calibration_summary(None) is None
    assert census([runs[0]])["counts"] == res["counts"]
