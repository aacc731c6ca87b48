"""The explorer plays MiniGrid Memory in a real headless Chromium (as tests/test_explorer_browser.py).

A tiny random Memory model (``test_family_memory.TINY``: 7 actions, 9 timesteps, one-hot) is
served in-process (``explorer.server.make_app`` under uvicorn on a thread: no checkpoint to write,
and the session's compiles are shared with the session tests of the same run). The page shows the
task's 7 action buttons; a new episode, then the keys: the context display gains a frame per step
(s9 is the current frame, its predecessors move to s8, s7, ... with the action taken), pickup puts
the start-room object in the agent's hands (the readout and the frame show it), and a scenario
with a history fills the context with its episode. The Memory card: a click on an adversary loads
the report's context (its LD is the report's, ``circuits.memory.adversary_logit_diffs``), the context
strip shows each frame's feature projection, the coefficient slider gives the report's intervention
(``intervention_curve``) and acts with it, and every head's attention from the decision token is drawn.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from explorer_models import tiny_model
from test_explorer_browser import ARGS, CHROMIUM, _need_browser, _press, _settled, _text
from test_family_memory import ENV, TINY


@pytest.fixture(scope="module")
def model():
    return tiny_model(TINY, ENV)


@pytest.fixture(scope="module")
def url(model):
    _need_browser()
    import uvicorn

    from dtjax.explorer.catalog import Catalog
    from dtjax.explorer.server import bind, make_app

    model.compile_s = model.warm_up()
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(make_app(Catalog(model, None)), log_level="warning", ws="websockets-sansio"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    while not server.started and time.perf_counter() - t0 < 60:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def _context(page):
    """The context display: (token, t, action) of each real frame, oldest first."""
    return page.evaluate("""[...document.querySelectorAll('[data-testid="context"] figure.ctx:not(.pad)')]
        .map(f => [f.dataset.token, f.dataset.t, f.dataset.action])""")


def test_the_explorer_plays_memory_in_chromium(url, model):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_function("window.__dtjax && window.__dtjax.loadedMs !== null", timeout=60_000)
        _settled(page)
        task = page.evaluate("window.__dtjax.init.task")
        assert task["family"] == "memory"
        for a in task["actions"]:  # a button for each of the 7 actions
            assert page.locator(f'[data-testid="act-{a}"]').count() == 1, a
        assert len(task["actions"]) == 7 and len(_probs_rows(page)) == 7

        # a new episode: one real frame (s9), the rest padding; the start-room object is drawn
        page.fill('[data-testid="seed"]', "3")
        page.click('[data-testid="reset"]')
        page.wait_for_function("window.__dtjax.step.timestep === 0 && window.__dtjax.step.n_steps === 1")
        _settled(page)
        assert _context(page) == [["s9", "0", ""]]
        assert page.locator('[data-testid="context"] figure.ctx').count() == 9
        objects = page.get_attribute('[data-testid="frame"]', "data-objects").split(";")
        assert len(objects) == 3 and any(o.startswith("1,2,") for o in objects)  # the instruction at (1, 2), the two ends

        # the keys: turn north, pick the object up (its key from the task), step back down
        keys = dict(zip(task["actions"], task["action_keys"]))
        _press(page, keys["left"])
        _press(page, keys["pickup"])
        assert _text(page, "last-action") == "pickup" and _text(page, "timestep") == "2"
        assert _context(page) == [["s7", "0", "left"], ["s8", "1", "pickup"], ["s9", "2", ""]]
        assert _text(page, "carrying").endswith(("key", "ball"))
        assert page.get_attribute('[data-testid="frame"]', "data-carrying") in ("key", "ball")
        assert not any(o.startswith("1,2,") for o in page.get_attribute('[data-testid="frame"]', "data-objects").split(";"))
        _press(page, keys["drop"])
        assert _text(page, "carrying") == "nothing" and _context(page)[-2] == ["s8", "2", "drop"]

        # a scenario with a history: its episode fills the context
        page.select_option('[data-testid="scenario"]', "key_key-ball_junction")
        page.wait_for_function("window.__dtjax.step && window.__dtjax.step.timestep === 4")
        _settled(page)
        assert _context(page) == [["s5", "0", "forward"], ["s6", "1", "forward"], ["s7", "2", "forward"],
                                  ["s8", "3", "forward"], ["s9", "4", ""]]
        _memory_card(page, model)
        if os.environ.get("DTJAX_EXPLORER_OUT"):  # a screenshot for docs, where asked for
            page.screenshot(path=str(Path(os.environ["DTJAX_EXPLORER_OUT"]) / "explorer_memory.png"), full_page=True)
        assert not errors, errors
        browser.close()


def _probs_rows(page):
    return page.evaluate("[...document.querySelectorAll('[data-testid=\"action-probs\"] .prow')].map(r => r.innerText)")


def _drawn(page):
    """The panels of the last message sent drawn (idle() alone may hold between its step and panels replies)."""
    page.wait_for_function("window.__dtjax.panelsSeq === window.__dtjax.seq && window.__dtjax.idle()")


def _attr(page, tid, name="data-value"):
    return float(page.get_attribute(f'[data-testid="{tid}"]', name))


def _memory_card(page, model):
    """The Memory card against ``circuits.memory`` computed here on the same model (full precision)."""
    from dtjax.circuits import memory as M

    assert page.locator('[data-testid="memory-card"]').is_visible()
    t = model.memory_tables()
    assert page.locator('[data-testid="memory-adversaries"] td.adv').count() == 4 * 2 * 5
    lds = {}
    for edit in ("original", "instruction_flipped", "complement_0_5_4_2"):  # at RTG 0 (index 1)
        page.click(f'[data-testid="adv-ball_key-ball-{edit}-1"]')
        _drawn(page)
        i, j, k = t.index("ball_key-ball", edit, 0.0)
        lds[edit] = _attr(page, "memory-ld")
        assert abs(lds[edit] - t.ld[i, j, k]) <= 1e-5 * abs(t.ld).max(), edit  # the report's LD of that context
        assert page.locator("[data-testid=memory-adversaries] tr.loaded").get_attribute("data-edit") == edit
        s5 = page.locator('[data-testid="context"] figure.ctx').nth(M.INSTRUCTION_FRAME)
        assert "instr" in s5.get_attribute("class") and ("edited" in s5.get_attribute("class")) == (edit != "original")
    # the edits move the LD the way the report's numbers say (a random tiny model: by little, but far above float noise)
    i = t.layouts.index("ball_key-ball")
    for edit in ("instruction_flipped", "complement_0_5_4_2"):
        k = t.edits.index(edit)
        assert (lds[edit] - lds["original"] > 0) == (t.ld[i, 1, k] - t.ld[i, 1, 0] > 0), edit
    projs = page.evaluate("""[...document.querySelectorAll('[data-testid="context"] figure.ctx')].map(f => +f.dataset.proj)""")
    assert len(projs) == 9 and projs[0] == projs[3] and projs[4] != projs[0]  # padding frames alike, s5 the instruction

    # the coefficient slider: the report's direct intervention on this context
    page.fill('[data-testid="memory-coef"]', "-2")
    page.dispatch_event('[data-testid="memory-coef"]', "input")
    _settled(page)
    adv = M.adversary_inputs()
    ctx = adv.inputs.take(np.asarray([np.ravel_multi_index(t.index("ball_key-ball", "complement_0_5_4_2", 0.0), adv.shape)]))
    want = float(M.intervention_curve(model.params, model.cfg, ctx, t.direction, (-2.0,))[0, 0])
    assert abs(_attr(page, "memory-steered-ld") - want) <= 1e-5 * abs(want)
    assert page.locator('[data-testid="memory-steered"] .prow').count() == 7
    choice = page.locator('[data-testid="memory-steered"] .prow.chosen span').first.inner_text()
    page.click('[data-testid="memory-act"]')
    _drawn(page)
    assert _text(page, "timestep") == "5" and _text(page, "last-action") == choice
    # every head's attention from the decision token: one map per layer, heads x 26 tokens
    n = model.cfg.n_layers * model.cfg.n_heads * 26
    assert page.locator('[data-testid="memory-attention"] figure.map').count() == model.cfg.n_layers
    assert page.locator('[data-testid="memory-attention"] figure.map rect').count() == n
