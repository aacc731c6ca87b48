"""analyse.py --sae: the opt-in "SAE features" section on a tiny run with a tiny trained SAE.

Its numbers come from ``dtjax.sae``; here the plumbing is checked against the saved dictionary
and the model's weights read by hand (a shown latent's DLA is its decoder row through W_U), and a
dictionary that does not fit the model (another width, a hook it lacks, not a dictionary) is one
line, exit 1, nothing written.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from dtjax.config import ModelConfig
from dtjax.report import ReportOptions
from dtjax.report.sections.sae import _paths
from dtjax.sae import SAEConfig, init_sae
from dtjax.sae import store as sae_store
from fixtures import tiny_run, tiny_sae
from tolerance import assert_close

ROOT = Path(__file__).resolve().parents[1]
TINY = ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=32, n_timesteps=1, max_timestep=20)


@pytest.fixture(scope="module")
def run_with_sae(tmp_path_factory):
    run, params = tiny_run(tmp_path_factory.mktemp("runs") / "tiny", TINY)
    return run, params, tiny_sae(run, eval_arrays=False)


def _analyse(*args) -> int:
    sys.path.insert(0, str(ROOT))
    import analyse

    return analyse.main(list(map(str, args)))


def test_sae_section(run_with_sae, tmp_path):
    run, params, path = run_with_sae
    out = tmp_path / "rep"
    assert _analyse("--ckpt", run, "--sae", path, "--sections", "model,sae", "--fast", "--no-closed-loop", "--quiet",
                    "--out", out) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["sections"]["sae"]["status"] == "ok", s["sections"]
    page = (out / "report.html").read_text()
    body = page[page.index('id="sae"'):]
    assert 'href="#sae"' in page and len(re.findall(r'<img src="data:image/png;base64,', body)) == 3  # cards, maps, probes
    (e,) = s["sae"]
    assert e["sae"]["n_latents"] == 32 and e["closed_loop"] is None and "no closed-loop returns" in body
    own = e["reconstruction"]["state"]
    assert own["l0"] <= 4 and 0 <= own["dead_frac"] <= 1 and own["n_tokens"] == 8192
    assert set(e["reconstruction"]) == {"state", "rtg"} and e["downstream"]["n_tokens"] == 4096
    assert 0 <= e["probes"]["recovered_frac"] <= 1 and e["probes"]["n_valid"] > 0
    shown = e["latents_shown"]
    assert 0 < len(shown) <= 12 and shown[0]["ranked"].startswith("frequency")
    dens = [x["density"] for x in shown if x["ranked"].startswith("frequency")]
    assert dens == sorted(dens, reverse=True) and all(x["density"] > 0 for x in shown)
    d = sae_store.load(path)
    dec = d.variables["params"]["W_dec"] / d.variables["norm"]["scale_out"]
    for x in shown:  # the decoder row through the unembedding, by hand
        assert_close(x["dla"], dec[x["latent"]] @ np.asarray(params["W_U"]), rtol=5e-3, floor=0.1)  # summary: 3 decimals
    # --sae given twice (and as the run's sae/ folder, which expands to its dictionaries) is one dictionary
    assert _paths(ReportOptions(sae_dirs=(str(path), str(run / "sae")))) == [path]


def test_a_mismatched_sae_is_one_line(run_with_sae, tmp_path, capsys):
    run, _, _ = run_with_sae
    wide = SAEConfig(hook="blocks.0.hook_resid_post", token="state", n_latents=8, k=2, d_in=24, d_out=24)
    deep = SAEConfig(hook="blocks.1.hook_resid_post", token="state", n_latents=8, k=2, d_in=16, d_out=16)
    for name, cfg in (("wide", wide), ("deep", deep)):
        sae_store.save(tmp_path / name, sae_store.Dictionary(cfg, jax.device_get(init_sae(jax.random.PRNGKey(0), cfg)), {}))
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    for name, msg in (("wide", "reads width 24"), ("deep", "no hook blocks.1.hook_resid_post"),
                      ("empty", "no dtjax SAE directory")):
        assert _analyse("--ckpt", run, "--sae", tmp_path / name, "--fast", "--out", tmp_path / "o") == 1
        err = capsys.readouterr().err
        assert err.strip().count("\n") == 0 and err.startswith("error: --sae ") and msg in err, err
    assert not (tmp_path / "o").exists()
