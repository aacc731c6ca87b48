"""analyse.py / dtjax.report on the write-up's checkpoint: every section present, summary.json's
numbers are the dtjax.analysis panels (and the write-up's), sections fail or are undefined in one
line without losing the others, one-line CLI errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dtjax
from dtjax import analysis as A
from dtjax import circuits as C
from dtjax import scenarios as S
from dtjax.report import REPORT_SCENARIOS, ReportError, ReportOptions, Section, all_sections, build_report
from tolerance import conditioning

ROOT = Path(__file__).resolve().parents[1]
OVERNIGHT = ROOT / "checkpoints" / "original" / "demo_model_overnight_training.pt"
V = C.action_vector("forward-right")


@pytest.fixture(scope="module")
def fast_report(tmp_path_factory):
    sys.path.insert(0, str(ROOT))
    import analyse

    out = tmp_path_factory.mktemp("report")
    assert analyse.main(["--ckpt", str(OVERNIGHT), "--out", str(out), "--fast", "--quiet"]) == 0
    return out, json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def model():
    """The overnight model and the report's scenarios, computed here without dtjax.report."""
    cfg, params, env = dtjax.load(OVERNIGHT, with_env=True)
    params = jax.tree.map(jnp.asarray, params)
    names, inp = S.scenario_inputs(list(REPORT_SCENARIOS), rtg=0.9, env=env)
    return cfg, params, env, names, inp


def test_report_is_self_contained_with_every_section(fast_report):
    out, s = fast_report
    page = (out / "report.html").read_text()
    keys = [sec.key for sec in all_sections()]
    assert keys == ["model", "calibration", "scenarios", "dla", "rtg_scan", "rtg_time", "context_attention",
                    "state_encoder",
                    "embeddings", "qk", "ov",
                    "svd", "ablation", "patching", "attribution", "path_patching", "circuit_discovery", "logit_lens",
                    "composition", "steering", "memory_features", "memory_adversaries", "memory_circuit", "memory_adversary_search", "sae", "probes"]
    keys.remove("sae")  # opt-in: analyse.py --sae DIR (tests/test_report_sae.py)
    keys.remove("probes")  # opt-in: analyse.py --probes (tests/test_probes_report.py)
    for anchor in keys:
        assert f'id="{anchor}"' in page and f'href="#{anchor}"' in page
    assert list(s["sections"]) == keys, s["sections"]
    undefined = ("composition", "context_attention", "memory_features", "memory_adversaries",
                 "memory_circuit", "memory_adversary_search")  # 1 layer; 1 timestep; not Memory
    assert all(v["status"] == "ok" for k, v in s["sections"].items() if k not in undefined), s["sections"]
    assert all(s["sections"][k]["status"] == "undefined" for k in undefined[1:]), s["sections"]
    assert s["sections"]["composition"]["status"] == "undefined" and "n_layers >= 2" in s["sections"]["composition"]["note"]
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) >= 19
    assert "<img src=\"http" not in page and sorted(p.name for p in out.iterdir()) == ["report.html", "summary.json"]


def test_report_summary_matches_the_write_up(fast_report):
    s = fast_report[1]
    dla = s["dla"]["start_seed0"]
    assert abs(dla["L0H0"] - 0.963) < 1e-3 and abs(dla["L0H1"] + 3.370) < 1e-3
    assert abs(sum(dla.values()) - 0.266) < 1e-3  # with b_U: the logit difference
    assert [round(x, 2) for x in s["qk_front_cell_object"]] == [0.21, -0.24]
    assert [round(x, 2) for x in s["ov_front_cell_object_forward"]] == [-0.26, -0.86]
    assert set(s["ablation"]["zero_logit_diff"]) == {"none", "L0H0", "L0H1", "L0_mlp"}
    ball = s["patching"]["ball_ahead_vs_clear"]  # 1e-3 covers the 4-decimal rounding and RTOL x conditioning < 100
    assert conditioning(ball["clean"], ball["corrupted"]) < 100
    assert ball["effects"]["blocks.0.hook_resid_post"][1] == pytest.approx(1.0, abs=1e-3)
    assert [r["target_rtg"] for r in s["calibration"]] == [-1.0, 0.0, 1.0]


def _close(summary_values, array, err=""):
    """summary.json holds values rounded to 4 decimals."""
    np.testing.assert_allclose(np.asarray(summary_values, np.float64), np.asarray(array, np.float64), rtol=0,
                               atol=5e-5 + 1e-5 * float(np.abs(array).max()), err_msg=err)


def test_summary_numbers_are_the_analysis_panels(fast_report, model):
    """Each section's numbers in summary.json equal dtjax.analysis (and dtjax.evaluate) called here."""
    s = fast_report[1]
    cfg, params, env, names, inp = model
    p = A.state_panels(params, cfg, inp, V)
    labels = A.dla_labels(cfg, inp)
    for i, n in enumerate(names):
        _close([s["dla"][n][lab] for lab in labels], p["dla"][i], n)
        _close(s["scenario_probs"][n]["rtg"], p["probs"][i], n)
        _close(s["attn_state_to_rtg"][n], p["attn_to_rtg"][0, i], n)
    _, neg = S.scenario_inputs(list(REPORT_SCENARIOS), rtg=-1.0, env=env)
    _close([s["scenario_probs"][n]["rtg_neg1"] for n in names], A.state_panels(params, cfg, neg, V)["probs"])

    w = A.weight_panels(params, cfg, V)
    _close(s["qk_front_cell_object"], w["qk"][0, :, 0, 3, 5])
    _close(s["ov_front_cell_object_forward"], w["ov"][0, :, 0, 3, 5, 2])
    _close(s["ov_rtg"], w["ov_rtg"][0])
    _close(list(s["state_encoder_front_cell"].values()), w["state_encoder"][:2, 3, 5])
    _close(s["ov_singular_values_top3"], A.svd_panels(params, cfg, 2)["ov_S"][0, :, :3])
    _close(s["rtg_direct_per_unit"], params["W_rtg"][0] @ params["W_U"] @ V)

    b = names.index("ball_ahead")
    scan = A.rtg_scan_panel(params, cfg, inp.take(slice(b, b + 1)), jnp.linspace(-2, 2, 21), V)
    _close(s["rtg_scan"]["ball_ahead"]["logits"], scan["logits"][0, [5, 10, 15]])  # RTG -1, 0, 1
    stats = A.rtg_scan_stats(scan["rtg"], scan["dla"][0], labels)
    _close([s["rtg_scan"]["ball_ahead"]["dla_slope_per_unit_rtg_in_[-1,1]"][lab] for lab in labels], list(stats["slope"].values()))

    # zero ablation by the plain circuits path (the report shares the mean ablation's compile)
    world_labels, worlds = C.ablate_logits(params, cfg, inp, "zero")
    zero = s["ablation"]["zero_logit_diff"]
    _close([[zero[lab][n] for n in names] for lab in world_labels], worlds[:, :, -1] @ V)
    ref = S.sample_inputs(jax.random.split(jax.random.PRNGKey(0), 3)[1], 32, rtg=0.9, env=env)
    mean = A.ablation_panel(params, cfg, inp, "mean", C.ablation_means(params, cfg, ref))["logits"] @ V
    _close([[s["ablation"]["mean_logit_diff"][lab][n] for n in names] for lab in world_labels], mean)

    clean, corrupted = (inp.take(slice(names.index(n), names.index(n) + 1)) for n in ("ball_ahead", "clear_ahead"))
    fast_names = ["hook_embed", "blocks.0.attn.hook_z", "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post"]
    patch = A.patching_panel(params, cfg, clean, corrupted, V, fast_names)
    got = s["patching"]["ball_ahead_vs_clear"]
    assert list(got["effects"]) == fast_names
    for name in fast_names:
        _close(got["effects"][name], patch["effects"][name], name)

    from dtjax.evaluate import calibrate

    jenv, jparams = env.make()
    calib = calibrate(params, cfg, jenv, jparams, jax.random.split(jax.random.PRNGKey(0), 3)[0], np.linspace(-1, 1, 3), 4)
    assert s["calibration"] == [{k: r[k] for k in ("target_rtg", "mean_return", "goal_rate", "hit_rate")} for r in calib["rows"]]


def test_circuit_summary_numbers_are_the_circuits_functions(fast_report, model):
    """The circuit sections' pairs are the reference windows' (scenarios.rtg_pair / ball_pair), and
    their numbers agree with other paths through dtjax.circuits: a head's frozen path to the logits
    is its DLA difference (state_panels), steering's coefficients 0 and 1 give the clean and
    corrupted metrics, ACDC's edges recomputed by circuit_faithfulness."""
    s = fast_report[1]
    cfg, params, env, _, _ = model
    o = ReportOptions.quick()
    ref = S.sample_inputs(jax.random.split(jax.random.PRNGKey(0), 3)[1], o.mean_samples, rtg=o.rtg, env=env)
    ball_clean, ball_corr = S.ball_pair(ref, None, o.rtg)
    assert ball_clean.batch >= 1 and S.front_is_ball(ball_clean.obs[:, -1]).all()
    assert not S.front_is_ball(ball_corr.obs[:, -1]).any()
    n = min(o.circuit_batch, ball_clean.batch)
    pairs = {"rtg": S.rtg_pair(ref.take(jnp.arange(n)), o.rtg, -1.0), "ball": (ball_clean.take(jnp.arange(n)),
                                                                               ball_corr.take(jnp.arange(n)))}
    for pair, (clean, corr) in pairs.items():
        pc, pk = A.state_panels(params, cfg, clean, V), A.state_panels(params, cfg, corr, V)
        denom = float(pc["logit_diff"].mean() - pk["logit_diff"].mean())
        # the 1e-3 tolerances of normalised values below cover the summary's rounding and RTOL x conditioning < 100
        assert conditioning(pc["logit_diff"], pk["logit_diff"]) < 100, pair
        labels = A.dla_labels(cfg, clean)
        frozen = s["path_patching_to_logits"][pair]["frozen"]
        for head in ("L0H0", "L0H1", "L0_mlp"):
            i = labels.index(head)
            want = float((pc["dla"][:, i] - pk["dla"][:, i]).mean()) / denom
            assert abs(frozen[head] - want) <= 1e-3 * max(1.0, abs(want)), (pair, head, frozen[head], want)
        if pair == "rtg":
            st = s["steering"]
            assert abs(st["metric"][st["coeff"].index(0.0)] - float(pc["logit_diff"].mean())) < 1e-3
            assert abs(st["metric"][st["coeff"].index(1.0)] - float(pk["logit_diff"].mean())) < 1e-3
            res = C.circuit_faithfulness(params, cfg, clean, corr, [tuple(e) for e in s["circuit_edge_list"]], V)
            assert res["n_edges"] == s["circuit_edges"] < s["circuit_edges_total"] == 37
            assert abs(float(res["faithfulness"]) - s["circuit_faithfulness"]) < 1e-3
            assert s["circuit_tau"] == o.acdc_tau
    assert set(s["atp_vs_actp_r"]) == {"rtg", "ball"} and all(-1 <= r <= 1 for r in s["atp_ig_vs_actp_r"].values())
    lens = s["logit_lens"]  # before attention the state token has not read its RTG: the lens agrees there
    assert abs(lens["rtg clean"]["0_pre"] - lens["rtg corrupted"]["0_pre"]) < 1e-3
    assert abs(lens["rtg clean"]["final_post"] - lens["rtg corrupted"]["final_post"]) > 0.1


def _raises(ctx):
    raise RuntimeError("boom\nsecond line")


SECTIONS_UNDER_TEST = [
    Section("fine", "Fine", lambda ctx: {"summary": {"fine_value": 1.5}, "notes": ["a one-line caveat"]},
            lambda d, page: page.text("fine section")),
    Section("broken", "Broken", _raises, lambda d, page: None),
    Section("not_here", "Not here", _raises, lambda d, page: None, undefined=lambda ctx: "needs two heads per layer"),
    Section("opt_in", "Opt-in", _raises, lambda d, page: None, enabled=lambda opt: False),
]


def test_a_failed_or_undefined_section_is_one_line_and_the_rest_is_written(tmp_path):
    with pytest.raises(ReportError, match=r"1 report section\(s\) failed: broken \(RuntimeError: boom\)") as e:
        build_report(OVERNIGHT, tmp_path, ReportOptions(), log=lambda m: None, sections=SECTIONS_UNDER_TEST)
    assert "\n" not in str(e.value)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["fine_value"] == 1.5 and list(s["sections"]) == ["fine", "broken", "not_here"]  # opt_in left out
    assert s["sections"]["not_here"] == {"status": "undefined", "note": "needs two heads per layer", "seconds": 0.0}
    page = (tmp_path / "report.html").read_text()
    assert "fine section" in page and "a one-line caveat" in page and "needs two heads per layer" in page
    assert "This section failed: RuntimeError: boom" in page and "second line" not in page
    with pytest.raises(RuntimeError, match="boom"):  # strict: the traceback, for tests
        build_report(OVERNIGHT, tmp_path / "strict", ReportOptions(strict=True), log=lambda m: None,
                     sections=SECTIONS_UNDER_TEST)


def test_prefetched_sections_compute_last_from_the_memo_and_render_in_order(tmp_path, monkeypatch):
    """A section's ``prefetch`` runs once on the background thread, its compute reads the memo
    (not recomputed), it computes after the sections without one, the page and summary keep the
    sections' order, and a failing prefetch is the section's one-line error."""
    import threading

    import dtjax.report

    monkeypatch.setattr(dtjax.report, "cpu_cores", lambda: 2)  # the background thread, whatever this machine has
    calls, computed = [], []

    def slow_value(ctx):
        def run():
            calls.append(threading.current_thread().name)
            return 2.5
        return ctx.memo("slow_value", run)

    def broken_prefetch(ctx):
        return ctx.memo("broken", lambda: (_ for _ in ()).throw(RuntimeError("prefetch boom")))

    def compute(key, fn):
        def run(ctx):
            computed.append(key)
            return {"summary": {f"{key}_value": fn(ctx)}}
        return run

    def render(key):
        return lambda d, page: page.text(f"{key} section body")

    secs = [Section("first", "First", compute("first", lambda ctx: 1.0), render("first"), order=0),
            Section("pre", "Pre", compute("pre", slow_value), render("pre"), order=1, prefetch=slow_value),
            Section("bad", "Bad", compute("bad", broken_prefetch), render("bad"), order=2, prefetch=broken_prefetch),
            Section("last", "Last", compute("last", lambda ctx: 3.0), render("last"), order=3)]
    with pytest.raises(ReportError, match=r"1 report section\(s\) failed: bad \(RuntimeError: prefetch boom\)"):
        build_report(OVERNIGHT, tmp_path, ReportOptions(), log=lambda m: None, sections=secs)
    assert calls == ["report-prefetch_0"]  # computed once, on the prefetch thread
    assert computed == ["first", "last", "pre", "bad"]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert list(s["sections"]) == ["first", "pre", "bad", "last"] and s["pre_value"] == 2.5
    page = (tmp_path / "report.html").read_text()
    where = [page.index(f"{k} section body") for k in ("first", "pre", "last")]
    assert where == sorted(where) and "This section failed: RuntimeError: prefetch boom" in page


def test_sections_option_selects_and_unknown_keys_are_errors(tmp_path):
    build_report(OVERNIGHT, tmp_path, ReportOptions(sections=("model",)), log=lambda m: None)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert list(s["sections"]) == ["model"] and "dla" not in s
    with pytest.raises(ReportError, match="unknown report section 'dlaa'; sections are model, calibration"):
        build_report(OVERNIGHT, tmp_path / "x", ReportOptions(sections=("dlaa",)), log=lambda m: None)
    assert not (tmp_path / "x").exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "not_a_model.pt"
    bad.write_bytes(b"garbage")
    # one real process (its exit code; no traceback escapes main), the other cases in this one
    r = subprocess.run([sys.executable, str(ROOT / "analyse.py"), "--ckpt", str(tmp_path / "missing.pt"), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error:"), r.stderr
    sys.path.insert(0, str(ROOT))
    import analyse

    capsys.readouterr()
    assert analyse.main(["--ckpt", str(bad), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and err.startswith("error:"), err
    for args in (["--sections", "nope"], ["--direction", "sideways"]):
        assert analyse.main(["--ckpt", str(OVERNIGHT), "--out", str(tmp_path / "o"), *args]) == 1
        err = capsys.readouterr().err
        assert err.strip().count("\n") == 0 and err.startswith("error:"), err
    assert not (tmp_path / "o").exists()
