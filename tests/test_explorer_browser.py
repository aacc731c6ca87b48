"""The explorer end to end: ``python analyse.py --serve`` driven in a real headless Chromium.

Debian's ``/usr/bin/chromium`` (installed by ``.ci/run``) through Playwright's Python package, no
browser download. One test plays the whole session in order (the server and browser start once):
keys change ``timestep`` and ``action-probs``; the RTG slider moves the RTG scan's marker and the
probabilities; an ablation toggle shows ablated probabilities; a goal and a hit end episodes;
bad messages show in the page while the server keeps serving; two tabs are two sessions; Ctrl-C
stops the server cleanly. The server runs with a tiny SAE of the model (``--sae``, trained here on
a random dataset's states), whose active latents must follow every step.

It measures (and prints; it does not assert them: timings are not tests) the latency of a key
press -> updated probabilities over 60 key presses, the page load and the server's compile time,
written to ``explorer_latency.json`` in ``$DTJAX_EXPLORER_OUT`` (default: pytest's tmp dir),
with a screenshot ``explorer.png`` (``docs/explorer.png`` is one of these).
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dtjax.data import store
from fixtures import random_dataset, tiny_sae

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CKPT = "checkpoints/original/demo_model_overnight_training.pt"  # the default dtjax model's shape
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
TESTIDS = ("frame", "view", "action-probs", "attention", "dla", "rtg-scan", "state-encoder", "qk", "ov", "ablation",
           "patching", "history", "timestep", "rtg-slider", "status")
N_KEYS = 60


def _need_browser():
    """Skip where no browser can run, except in CI (CI=true), where .ci/run installs one: fail there."""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package")
    if not CHROMIUM.exists():
        missing.append(str(CHROMIUM))
    if missing:
        msg = f"explorer browser test needs {' and '.join(missing)} (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``python analyse.py --ckpt CKPT --serve --port 0`` in a subprocess; yields (url, process, stderr path)."""
    _need_browser()
    tmp = tmp_path_factory.mktemp("explorer")
    log = tmp / "server.err"
    # a tiny SAE of the model (32 latents, 20 steps on a random dataset's states) for the SAE latents panel
    arrays, meta = random_dataset(np.random.default_rng(0), 300, max_len=20)
    store.save(tmp / "dataset", arrays, meta)
    sae_dir = tiny_sae(ROOT / CKPT, dataset=tmp / "dataset", out=tmp / "sae" / "tiny")
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "analyse.py", "--ckpt", CKPT, "--serve", "--port", "0",
                                 "--models", "checkpoints/original", "--sae", str(sae_dir)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=err, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 600)  # the URL is printed once the explore step is compiled
    url = proc.stdout.readline().strip() if ready else ""
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        pytest.fail(f"no URL from the server: {url!r} {log.read_text()[-2000:]}")
    proc.start_s = time.perf_counter() - t0
    yield url, proc, log
    if proc.poll() is None:
        proc.kill()


def _wait_text(page, tid, pred, timeout=30_000):
    page.wait_for_function(f"(() => {{ const e = document.querySelector('[data-testid=\"{tid}\"]'); "
                           f"return e && ({pred})(e.textContent); }})()", timeout=timeout)


def _settled(page, timeout=60_000):
    """Every message answered and the panels redrawn."""
    page.wait_for_function("window.__dtjax.idle()", timeout=timeout)


def _text(page, tid):
    return page.locator(f'[data-testid="{tid}"]').inner_text()


def _probs(page):
    return [float(x) for x in re.findall(r"\d\.\d{3}", _text(page, "action-probs"))]


def _marker(page):
    return page.evaluate("document.querySelector('[data-testid=\"rtg-scan\"]').data.find(t => t.name === 'current RTG').x[0]")


def _panel_state(page):
    """What each panel shows now (its drawn data or text), to see that it was updated."""
    return page.evaluate("""(() => {
      const q = (t) => document.querySelector(`[data-testid="${t}"]`);
      return {attention: q("attention").innerHTML, "state-encoder": q("state-encoder").innerHTML, ov: q("ov").innerHTML,
              dla: JSON.stringify(q("dla").data.map(t => t.y)), ablation: q("ablation").innerText,
              history: q("history").innerText, scan: JSON.stringify(q("rtg-scan").data.map(t => t.y)),
              sae: q("sae-latents").innerText};
    })()""")


def _press(page, key):
    n = page.evaluate("window.__dtjax.latencies.length")
    page.keyboard.press(key)
    page.wait_for_function(f"window.__dtjax.latencies.length > {n}")
    _settled(page)


def _scenario(page, name):
    page.select_option('[data-testid="scenario"]', name)
    page.wait_for_function("window.__dtjax.step && window.__dtjax.step.timestep === 0")
    _settled(page)


def _stats(xs):
    xs = np.asarray(xs, float)
    return {"n": int(xs.size), "median": round(float(np.median(xs)), 2), "p90": round(float(np.percentile(xs, 90)), 2),
            "max": round(float(xs.max()), 2)}


def test_explorer_in_chromium(server, tmp_path, capsys):
    from playwright.sync_api import sync_playwright

    url, proc, log = server
    out_dir = Path(os.environ.get("DTJAX_EXPLORER_OUT") or tmp_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        t0 = time.perf_counter()
        page.goto(url)
        page.wait_for_function("window.__dtjax && window.__dtjax.loadedMs !== null", timeout=60_000)
        load_wall_s = time.perf_counter() - t0
        _settled(page)

        # every stable element is there
        for tid in TESTIDS:
            assert page.locator(f'[data-testid="{tid}"]').count() == 1, tid
        assert page.get_attribute('[data-testid="rtg-slider"]', "type") == "range"
        assert _text(page, "status") == "running" and _text(page, "timestep") == "0"
        init = page.evaluate("window.__dtjax.init")
        assert init["model"]["config"]["d_model"] == 128 and init["size"] == 8
        assert [d["name"] for d in init["saes"]] == ["tiny"] and page.locator('[data-testid="sae-card"]').is_visible()

        # arrow keys: the timestep and the probabilities change
        probs0, view0 = _probs(page), page.get_attribute('[data-testid="view"]', "data-view")
        _press(page, "ArrowRight")
        assert _text(page, "timestep") == "1" and _text(page, "last-action") == "right"
        assert _probs(page) != probs0 and page.get_attribute('[data-testid="view"]', "data-view") != view0
        assert page.get_attribute('[data-testid="frame"]', "data-agent") == "1,1,1"  # facing south now
        before = _panel_state(page)
        _press(page, "ArrowLeft")
        assert _text(page, "timestep") == "2" and _text(page, "last-action") == "left"
        after = _panel_state(page)
        for k in ("attention", "state-encoder", "dla", "ablation", "history", "scan", "sae"):  # every per-step panel redrawn
            assert after[k] != before[k], k
        sae = page.evaluate("window.__dtjax.panels.sae[0]")  # the SAE rows are the panels reply's latents
        rows = page.locator('[data-testid="sae-row"]')
        assert rows.count() == len(sae["index"]) > 0 and sae["l0"] <= 4
        assert [int(rows.nth(i).get_attribute("data-latent")) for i in range(rows.count())] == sae["index"]
        assert sae["probe"][0] in rows.nth(0).inner_text() and f"{sae['act'][0]:.2f}" in rows.nth(0).inner_text()
        page.select_option('[data-testid="head-select"]', "0,1")  # QK / OV follow the chosen head
        page.wait_for_function("document.querySelector('[data-testid=\"qk\"]').getAttribute('data-head') === '0,1'")
        _settled(page)
        assert _panel_state(page)["ov"] != after["ov"]

        # latency: key press -> probabilities in the page, one key at a time (turns never end an episode)
        page.evaluate("window.__dtjax.latencies = []; window.__dtjax.paintLatencies = []; window.__dtjax.renderMs = []")
        for i in range(N_KEYS):
            _press(page, "ArrowLeft" if i % 2 else "ArrowRight")
        assert _text(page, "timestep") == str(2 + N_KEYS) and _text(page, "status") == "running"
        lat = page.evaluate("({dom: window.__dtjax.latencies, paint: window.__dtjax.paintLatencies, "
                            "render: window.__dtjax.renderMs, load: window.__dtjax.loadedMs, marks: window.__dtjax.marks})")
        assert len(lat["dom"]) == N_KEYS and max(lat["dom"]) < 5000  # a sanity bound, not the target

        # RTG slider: the scan's marker and the probabilities move
        probs1, marker1 = _probs(page), _marker(page)
        page.locator('[data-testid="rtg-slider"]').fill("-0.5")
        page.wait_for_function("Math.abs(window.__dtjax.panels.scan.marker + 0.5) < 1e-6")
        _settled(page)
        assert marker1 == pytest.approx(0.9) and _marker(page) == pytest.approx(-0.5)
        assert _probs(page) != probs1 and _text(page, "rtg-token") == "-0.500"

        # an ablation toggle: ablated probabilities beside the clean ones
        clean = _probs(page)
        page.locator('[data-testid="ablate-L0H1"]').check()
        page.wait_for_function("window.__dtjax.step.ablated === true")
        _settled(page)
        both = _probs(page)
        assert len(both) == 6 and both[0::2] == clean and both[1::2] != clean
        assert "L0H1" in _text(page, "probs-note")

        # activation patching on request: a heatmap for this state
        page.click('[data-testid="patch-run"]')
        page.wait_for_function("document.querySelector('[data-testid=\"patching\"]').getAttribute('data-step') !== null",
                               timeout=120_000)
        rows = page.evaluate("document.querySelector('[data-testid=\"patching\"]').data[0].y")
        assert "blocks.0.attn.hook_z [H1]" in rows

        # history: step back, then forward again
        page.click('[data-testid="history-back"]')
        page.wait_for_function(f"window.__dtjax.step.step === {1 + N_KEYS}")
        assert _text(page, "timestep") == str(1 + N_KEYS)
        page.click('[data-testid="history-forward"]')
        page.wait_for_function(f"window.__dtjax.step.step === {2 + N_KEYS}")
        _settled(page)
        page.screenshot(path=str(out_dir / "explorer.png"), full_page=True)

        # a malformed message: shown in the page, and the server keeps serving
        page.evaluate("window.__dtjax.ws.send('{not json')")
        page.wait_for_selector('[data-testid="message"]:not([hidden])')
        assert "bad JSON" in _text(page, "message")
        page.evaluate("window.__dtjax.ws.send(JSON.stringify({type: 'set', rtg: 'high'}))")
        _wait_text(page, "message", "t => t.includes('RTG must be a finite number')")

        # play to a goal and to a hit (the hand-made scenarios), then autoplay to the episode's end
        page.locator('[data-testid="ablate-L0H1"]').uncheck()
        page.wait_for_function("window.__dtjax.step.ablated === false")
        _scenario(page, "goal_ahead")
        _press(page, "ArrowUp")
        assert _text(page, "status") == "goal" and float(_text(page, "return")) > 0.99
        page.keyboard.press("ArrowUp")  # the episode has ended: refused, visibly
        _wait_text(page, "message", "t => t.includes('the episode has ended')")
        _scenario(page, "ball_ahead")
        _press(page, "ArrowUp")
        assert _text(page, "status") == "hit" and _text(page, "return") == "-1.000"
        assert "ball" in _text(page, "outcome-detail")

        # grid editing: a click adds a ball in front of the agent
        _scenario(page, "clear_ahead")
        page.click('[data-testid="frame"] rect[data-x="3"][data-y="3"]')
        page.wait_for_function("document.querySelector('[data-testid=\"frame\"]').getAttribute('data-balls') === '3,3'")
        assert page.get_attribute('[data-testid="view"]', "data-view").split("/")[5][3] == "6"  # a ball in front

        page.locator('[data-testid="rtg-slider"]').fill("0.9")
        page.wait_for_function("Math.abs(window.__dtjax.panels.scan.marker - 0.9) < 1e-6")
        page.fill('[data-testid="seed"]', "0")
        page.click('[data-testid="reset"]')
        page.wait_for_function("window.__dtjax.step.timestep === 0 && window.__dtjax.step.n_steps === 1")
        page.locator('[data-testid="autoplay"]').check()
        _wait_text(page, "status", "t => t !== 'running'", timeout=120_000)
        assert _text(page, "status") == "goal"  # the demo model reaches the goal from seed 0 at RTG 0.9
        assert int(_text(page, "timestep")) > 5

        # a second tab is a second session
        page2 = browser.new_page()
        page2.goto(url)
        page2.wait_for_function("window.__dtjax && window.__dtjax.loadedMs !== null", timeout=60_000)
        assert _text(page2, "timestep") == "0" and _text(page2, "status") == "running"
        _press(page2, "ArrowLeft")
        assert _text(page2, "timestep") == "1" and _text(page, "status") == "goal"
        assert not errors, errors
        browser.close()

    proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
    code = proc.wait(timeout=30)
    err = log.read_text()
    assert code == 0 and "Traceback" not in err, err[-2000:]

    compile_s = init["model"]["compile_s"]
    res = {"model": CKPT, "key_presses": N_KEYS, "dom_ms": _stats(lat["dom"]), "paint_ms": _stats(lat["paint"]),
           "panels_render_ms": _stats(lat["render"]), "page_load_ms": round(lat["load"], 1),
           "page_first_step_ms": round(lat["marks"]["step"], 1), "page_marks_ms": lat["marks"],
           "page_load_wall_s": round(load_wall_s, 2), "compile_s": round(compile_s, 2),
           "server_start_s": round(proc.start_s, 2), "cpus": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 2)}
    (out_dir / "explorer_latency.json").write_text(json.dumps(res, indent=1))
    with capsys.disabled():
        print(f"\nexplorer latency over {N_KEYS} key presses (ms, median / p90): probabilities in the DOM "
              f"{res['dom_ms']['median']} / {res['dom_ms']['p90']}, painted {res['paint_ms']['median']} / "
              f"{res['paint_ms']['p90']}; panels redrawn {res['panels_render_ms']['median']} / "
              f"{res['panels_render_ms']['p90']}; page load {res['page_first_step_ms']} ms to the first step, "
              f"{res['page_load_ms']} ms to every panel; compile {res['compile_s']} s "
              f"-> {out_dir / 'explorer_latency.json'}")
