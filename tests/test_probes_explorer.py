"""The explorer's probes panel: fit on first use (deferred), readouts at the step, a probe direction added live."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from explorer_models import tiny_model

from dtjax.explorer import probes as explorer_probes
from dtjax.explorer.session import Deferred, Session


def test_bad_probe_messages_are_one_line_errors():
    s = Session(tiny_model())
    for msg, match in (({"alpha": 9.0}, "alpha must be"), ({"site": "x"}, "site must be"), ({"alpha": True}, "alpha")):
        (reply,) = s.handle({"type": "probes", **msg})
        assert reply["type"] == "error" and match in reply["message"]


@pytest.mark.slow  # fits the probes (closed-loop episodes, ~20 probes x 2 sites): ~1 min on a loaded machine
def test_probes_fit_then_read_out_and_steer_live():
    model = tiny_model()
    s = Session(model)
    busy, job = s.handle({"type": "probes"})
    assert busy["type"] == "busy" and isinstance(job, Deferred)
    first = job.compute()
    info = first["info"]
    assert info["sites"] == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"] and "blocked_ahead" in info["binary"]
    rows = {r["concept"]: r for r in first["readouts"]}
    # the view on screen is ground truth: the probes' input is the model's context at this step
    assert set(rows) == set(info["concepts"]) and all(len(r["pred"]) == 2 for r in rows.values())
    np.testing.assert_allclose(first["steered_probs"], first["plain_probs"])  # no push
    (plain,) = s.handle({"type": "probes", "site": 0, "concept": "blocked_ahead", "alpha": 0.0})
    np.testing.assert_allclose(plain["steered_probs"], plain["plain_probs"], rtol=1e-5)
    (pushed,) = s.handle({"type": "probes", "site": 0, "concept": "blocked_ahead", "alpha": explorer_probes.ALPHA_RANGE})
    assert not np.allclose(pushed["steered_probs"], pushed["plain_probs"], rtol=1e-3)  # the push is live
    # the pushed site's own readout of the concept moves towards "yes"
    p_plain = {r["concept"]: r for r in plain["readouts"]}["blocked_ahead"]["probs"][0][1]
    p_push = {r["concept"]: r for r in pushed["readouts"]}["blocked_ahead"]["probs"][0][1]
    assert p_push > p_plain
    replies = s.handle({"type": "probes", "site": 0, "concept": "blocked_ahead", "alpha": 2.0, "act": True})
    assert replies[0]["type"] == "probes" and any(r.get("type") == "step" for r in replies[1:] if isinstance(r, dict))
    assert s.history[0].action == replies[0]["steered_action"]


@pytest.mark.slow  # starts the explorer and a headless Chromium, fits the probes: ~2 min on a loaded machine
def test_probes_panel_in_chromium():
    """The page's probes panel: fit, readouts per concept and site, the alpha slider moves the
    pushed action probabilities, "act steered" plays a step; no page error."""
    chromium = Path("/usr/bin/chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not chromium.exists():
        if os.environ.get("CI"):
            pytest.fail("the probes panel test needs playwright and /usr/bin/chromium (.ci/run installs them)")
        pytest.skip("needs playwright and /usr/bin/chromium")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "analyse.py", "--ckpt", "checkpoints/original/demo_model_overnight_training.pt",
                             "--serve", "--port", "0", "--quiet"], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 600)
        url = proc.stdout.readline().strip() if ready else ""
        assert url.startswith("http://127.0.0.1:"), url
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(chromium), args=["--no-sandbox", "--headless", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1500, "height": 2400})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_function("window.__dtjax && window.__dtjax.loadedMs !== null", timeout=120_000)
            page.click('[data-testid="probes-fit"]')
            page.wait_for_selector('[data-testid="probe-row"]', timeout=600_000)
            assert page.locator('[data-testid="probe-row"][data-concept="blocked_ahead"]').count() == 1
            plain = page.inner_text('[data-testid="probes-info"]')
            page.select_option('[data-testid="probes-concept"]', "blocked_ahead")
            page.eval_on_selector('[data-testid="probes-alpha"]', "el => { el.value = '2'; el.dispatchEvent(new Event('input')); }")
            page.wait_for_function("document.querySelector('[data-testid=\"probes-info\"]').textContent.includes('x 2 at')",
                                   timeout=60_000)
            assert page.inner_text('[data-testid="probes-info"]') != plain
            page.click('[data-testid="probes-act"]')
            page.wait_for_function("document.querySelector('[data-testid=\"timestep\"]').textContent === '1'", timeout=60_000)
            assert not errors, errors
            browser.close()
    finally:
        proc.kill()
        proc.wait(timeout=30)
