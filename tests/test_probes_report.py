"""analyse.py --probes: the opt-in "probes" section on the write-up's checkpoint, its summary.json keys."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
OVERNIGHT = ROOT / "checkpoints" / "original" / "demo_model_overnight_training.pt"
PROBE_KEYS = {"concept", "hook", "token", "f1", "auroc", "baseline_obs_f1", "baseline_random_f1", "baseline_shuffled_f1"}
STEER_KEYS = {"concept", "hook", "alpha", "success", "control_success", "episodes"}


def _report(tmp_path, *extra):
    sys.path.insert(0, str(ROOT))
    import analyse

    assert analyse.main(["--ckpt", str(OVERNIGHT), "--out", str(tmp_path), "--fast", "--quiet", "--probes",
                         "--sections", "probes", *extra]) == 0
    return json.loads((tmp_path / "summary.json").read_text()), (tmp_path / "report.html").read_text()


def _check_probes(summary):
    rows = summary["probes"]
    assert rows and all(set(r) == PROBE_KEYS for r in rows)
    sites = {(r["hook"], r["token"]) for r in rows}
    concepts = {r["concept"] for r in rows}
    assert len(rows) == len(sites) * len(concepts)  # every site x concept
    assert {"blocked_ahead", "goal_direction", "action_next", "outcome"} <= concepts
    f1 = np.array([r["f1"] for r in rows if r["f1"] is not None])
    assert np.all((f1 >= 0) & (f1 <= 1))
    # the cell ahead is in the state token's input: decodable at the first residual stream
    ahead = [r for r in rows if r["concept"] == "blocked_ahead" and r["hook"] == "blocks.0.hook_resid_pre"
             and r["token"] == "state"]
    assert ahead[0]["f1"] > 0.8


@pytest.mark.slow  # ~4 min on a loaded 2-core machine: the section fits ~800 probes and their baselines
def test_probes_section_without_closed_loop(tmp_path):
    summary, page = _report(tmp_path, "--no-closed-loop")
    _check_probes(summary)
    assert summary["probe_interventions"] == []
    assert summary["sections"]["probes"]["status"] == "ok" and "Linear probes" in page


@pytest.mark.slow
def test_probes_section_steers_in_closed_loop(tmp_path):
    summary, _ = _report(tmp_path)
    _check_probes(summary)
    iv = summary["probe_interventions"]
    assert iv and all(STEER_KEYS <= set(r) for r in iv)
    assert {r["alpha"] for r in iv} == {-1.0, 1.0} and all(r["episodes"] <= 16 for r in iv)
    assert {r["hook"] for r in iv} == {"blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"}
