"""analyse.py / dtjax.report: a fast report for a reference checkpoint, and one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OVERNIGHT = ROOT / "checkpoints" / "original" / "demo_model_overnight_training.pt"


@pytest.fixture(scope="module")
def fast_report(tmp_path_factory):
    sys.path.insert(0, str(ROOT))
    import analyse

    out = tmp_path_factory.mktemp("report")
    assert analyse.main(["--ckpt", str(OVERNIGHT), "--out", str(out), "--fast", "--quiet"]) == 0
    return out


def test_report_is_self_contained_with_every_section(fast_report):
    page = (fast_report / "report.html").read_text()
    for anchor in ("calibration", "scenarios", "dla", "rtg_scan", "state_encoder", "embeddings", "qk", "ov", "svd",
                   "ablation", "patching"):
        assert f'id="{anchor}"' in page and f'href="#{anchor}"' in page
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) >= 12
    assert "<img src=\"http" not in page and not list(fast_report.glob("*.png"))  # figures inlined, nothing beside


def test_report_summary_matches_the_write_up(fast_report):
    s = json.loads((fast_report / "summary.json").read_text())
    dla = s["dla"]["start_seed0"]
    assert abs(dla["L0H0"] - 0.963) < 1e-3 and abs(dla["L0H1"] + 3.370) < 1e-3
    assert abs(sum(dla.values()) - 0.266) < 1e-3  # with b_U: the logit difference
    assert [round(x, 2) for x in s["qk_front_cell_object"]] == [0.21, -0.24]
    assert [round(x, 2) for x in s["ov_front_cell_object_forward"]] == [-0.26, -0.86]
    assert s["ablation"]["zero_returns"]["none"] and set(s["ablation"]["zero_logit_diff"]) == {"none", "L0H0", "L0H1", "L0_mlp"}
    assert s["patching"]["ball_ahead_vs_clear"]["effects"]["blocks.0.hook_resid_post"][1] == pytest.approx(1.0, abs=1e-3)
    assert [r["target_rtg"] for r in s["calibration"]] == [-1.0, 0.0, 1.0]


def test_cli_errors_are_one_line(tmp_path):
    bad = tmp_path / "not_a_model.pt"
    bad.write_bytes(b"garbage")
    for args in (["--ckpt", str(tmp_path / "missing.pt")], ["--ckpt", str(bad)]):
        r = subprocess.run([sys.executable, str(ROOT / "analyse.py"), *args, "--out", str(tmp_path / "o")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0
        assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error:"), r.stderr
