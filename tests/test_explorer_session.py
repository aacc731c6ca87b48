"""dtjax.explorer.session: the explorer's state and its jitted steps, against the env and the model.

An episode played in a session is compared with ``envs`` stepped directly (same keys), its
model inputs with the evaluation padding built by hand (``Inputs.left_pad``), and its panels
with ``dtjax.model.forward`` / ``dtjax.analysis`` on those hand-built inputs, or with a hand edit
of the weights.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from dtjax import analysis as A
from dtjax import circuits as C
from dtjax import scenarios as S
from dtjax.explorer.session import PARK, Session, patch_hooks
from dtjax.model import forward
from explorer_models import ENV, tiny_model
from tolerance import assert_close, assert_normalised_close

ACTIONS = [2, 0, 2, 2, 1, 2, 2, 0, 2, 2, 2, 1, 2, 2, 2, 2, 0, 2, 2, 2, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2]


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


def _play_direct(env_cfg, seed, actions):
    """The episode stepped with ``envs`` directly, keys as the session documents."""
    env, params = env_cfg.make()
    k_reset, k_env, _ = jax.random.split(jax.random.PRNGKey(seed), 3)
    obs, state = env.reset(k_reset, params)
    steps = [(np.asarray(obs), jax.device_get(state), 0.0, False, False)]
    for j, a in enumerate(actions):
        _, _, r, term, trunc, info = env.step(jax.random.fold_in(k_env, j), state, a, params)
        state = info["final_state"]
        steps.append((np.asarray(info["final_observation"]), jax.device_get(state), float(r), bool(term), bool(trunc)))
        if term or trunc:
            break
    return steps


def _hand_inputs(cfg, steps, actions, j, rtg, t_adjust=0):
    """Evaluation's model inputs at step j, built from the direct episode and ``Inputs.left_pad``."""
    lo = max(0, j - cfg.n_timesteps + 1)
    cum = np.cumsum([s[2] for s in steps])
    real = C.Inputs(obs=jnp.asarray(np.stack([s[0] for s in steps[lo:j + 1]]))[None],
                    rtg=jnp.asarray([[rtg - cum[i] for i in range(lo, j + 1)]], jnp.float32),
                    timesteps=jnp.asarray([[int(s[1].time) + t_adjust for s in steps[lo:j + 1]]], jnp.int32),
                    actions=jnp.asarray([actions[lo:j]], jnp.int32) if cfg.n_timesteps > 1 else None)
    return real.left_pad(cfg.n_timesteps, pad_action=cfg.n_actions) if cfg.n_timesteps > 1 else real


def test_episode_from_seed_equals_env_stepped_directly(tiny):
    """K = 3: the context window and its padding are exercised."""
    model = tiny
    cfg = model.cfg
    s = Session(model, seed=7)
    direct = _play_direct(ENV, 7, ACTIONS)
    for j, a in enumerate(ACTIONS[: len(direct) - 1]):
        step, _ = s.handle({"type": "act", "action": a})
        obs, state, r, term, trunc = direct[j + 1]
        assert step["timestep"] == int(state.time) == j + 1
        np.testing.assert_array_equal(s.history[-1].obs, obs)
        np.testing.assert_array_equal(s.history[-1].state.obstacles, state.obstacles)
        np.testing.assert_array_equal(s.history[-1].state.agent_pos, state.agent_pos)
        assert step["reward"] == r
        assert step["status"] == (("goal" if r > 0 else "hit") if term else "timeout" if trunc else "running")
        hand = _hand_inputs(cfg, direct, ACTIONS, j + 1, 0.9)
        got = s.inputs()
        for f in ("obs", "rtg", "timesteps", "actions"):
            if getattr(hand, f) is not None:
                np.testing.assert_array_equal(np.asarray(getattr(got, f)), np.asarray(getattr(hand, f)), err_msg=f"{f} at {j}")
        logits = forward(model.params, cfg, hand.obs, hand.rtg, hand.timesteps, hand.actions)[0, -1]
        assert_close(step["probs"], jax.nn.softmax(logits))
    assert direct[-1][3] or direct[-1][4], "the fixed actions end the episode within max_steps"
    err = s.handle({"type": "act", "action": 2})
    assert err[0]["type"] == "error" and "ended" in err[0]["message"]


def test_panels_equal_analysis_on_the_same_inputs(tiny):
    model = tiny
    cfg = model.cfg
    s = Session(model, seed=1)
    for a in (0, 1, 1):
        s.handle({"type": "act", "action": a})
    out = s.handle({"type": "set", "rtg": 0.4, "t_adjust": 3, "direction": {"pos": "forward", "neg": "left"},
                    "ablate": ["L0H1"]})
    step, panels = out[-2:]
    direct = _play_direct(ENV, 1, [0, 1, 1])
    assert len(direct) == 4 and not (direct[-1][3] or direct[-1][4])
    inp = _hand_inputs(cfg, direct, [0, 1, 1], 3, 0.4, t_adjust=3)
    v = C.action_vector(("forward", "left"))
    ref = A.state_panels(model.params, cfg, inp, v)
    assert_close(step["probs"], ref["probs"][0])
    assert_close(panels["dla"], ref["dla"][0])
    assert_close(np.sum(panels["dla"]), ref["logit_diff"][0])  # the bars sum to the logit difference
    assert_close(panels["pattern"], ref["pattern"][:, 0])
    assert_close(panels["state_encoder"], np.swapaxes(np.asarray(ref["state_encoder"][0])[s.ctl["channels"]], -1, -2))
    scan = A.rtg_scan_panel(model.params, cfg, inp, np.linspace(-1, 1, 101, dtype=np.float32), v)
    assert_close(panels["scan"]["logits"], scan["logits"][0])
    assert_close(panels["scan"]["attn"], scan["attn_to_rtg"][0])
    assert panels["scan"]["marker"] == pytest.approx(0.4)
    each = A.ablation_panel(model.params, cfg, inp, "zero")
    assert_close(panels["each_probs"], each["probs"][:, 0])
    # zero-ablating head L0H1 = zeroing its rows of W_O (TL zero ablation keeps b_O), by hand
    p2 = jax.tree.map(lambda x: x, model.params)
    p2["blocks_0"]["attn"]["W_O"] = model.params["blocks_0"]["attn"]["W_O"].at[1].set(0.0)
    assert_close(step["ablated_probs"], jax.nn.softmax(forward(p2, cfg, inp.obs, inp.rtg, inp.timesteps, inp.actions)[0, -1]))
    w = s.weights()
    ref_w = A.weight_panels(model.params, cfg, v)
    assert_close(w["qk"], np.swapaxes(np.asarray(ref_w["qk"][0, 0])[s.ctl["channels"]], -1, -2))


def test_model_acts_greedy_and_sampled(tiny):
    model = tiny
    s = Session(model, seed=5)
    inp = s.inputs()
    step, _ = s.handle({"type": "act", "action": "model"})
    logits = forward(model.params, model.cfg, inp.obs, inp.rtg, inp.timesteps, inp.actions)[0, -1]
    assert s.history[0].action == int(jnp.argmax(logits))
    s.handle({"type": "reset", "seed": 5})
    s.handle({"type": "set", "greedy": False, "temperature": 2.0})
    k_act = jax.random.split(jax.random.PRNGKey(5), 3)[2]
    chosen = []
    for j in range(6):
        inp = s.inputs()
        logits = forward(model.params, model.cfg, inp.obs, inp.rtg, inp.timesteps, inp.actions)[0, -1]
        want = int(jax.random.categorical(jax.random.fold_in(k_act, j), logits / 2.0))
        step, _ = s.handle({"type": "act", "action": "model"})
        if step["status"] != "running":
            break
        chosen.append(s.history[-2].action)
        assert chosen[-1] == want
    assert len(set(chosen)) > 1  # sampling, not argmax


def test_history_scrub_and_branch_replays_deterministically(tiny):
    model = tiny
    s = Session(model, seed=2)
    for a in (1, 0, 1, 1):  # turns only: the episode runs on, the balls move
        s.handle({"type": "act", "action": a})
    end = s.history[-1]
    step, _ = s.handle({"type": "goto", "step": 1})
    assert step["step"] == 1 and step["n_steps"] == 5 and step["timestep"] == 1
    s.handle({"type": "act", "action": 0})  # branch: the old future is dropped
    assert len(s.history) == 3
    for a in (1, 1):
        s.handle({"type": "act", "action": a})
    np.testing.assert_array_equal(s.history[-1].obs, end.obs)  # same seed, same actions: same episode
    np.testing.assert_array_equal(s.history[-1].state.obstacles, end.state.obstacles)
    assert s.handle({"type": "goto", "step": 9})[0]["type"] == "error"


def test_grid_edits_and_parked_balls(tiny):
    model = tiny
    s = Session(model, seed=0)
    n = s.env.n_obstacles
    balls = [tuple(int(v) for v in b) for b in np.asarray(s.history[0].state.obstacles)]
    step, _ = s.handle({"type": "edit", "op": "ball", "cell": list(balls[0])})  # remove
    assert len(step["grid"]["balls"]) == n - 1 and tuple(s.history[0].state.obstacles[0]) == PARK
    # a parked ball is invisible: the view equals that of an env holding only the other balls
    fewer = envs.DynamicObstacles(s.env.size, n - 1)
    st = s.history[0].state
    np.testing.assert_array_equal(s.history[0].obs, fewer.observe(st.replace(obstacles=st.obstacles[1:])))
    for _ in range(12):  # ... and never moves
        s.handle({"type": "act", "action": 0})
    assert tuple(s.history[-1].state.obstacles[0]) == PARK
    s.handle({"type": "reset", "seed": 0})
    step, _ = s.handle({"type": "edit", "op": "agent", "cell": [3, 3], "dir": 2})
    assert step["grid"]["agent"] == [3, 3] and step["grid"]["dir"] == 2
    np.testing.assert_array_equal(s.history[0].obs, s.env.observe(s.history[0].state))
    taken = {tuple(int(v) for v in b) for b in np.asarray(s.history[0].state.obstacles)} | {(3, 3), (6, 6)}
    free = next([x, y] for x in range(1, 7) for y in range(1, 7) if (x, y) not in taken)
    for bad, text in [({"op": "ball", "cell": [0, 3]}, "wall"), ({"op": "ball", "cell": [6, 6]}, "goal"),
                      ({"op": "ball", "cell": [3, 3]}, "agent"), ({"op": "ball", "cell": [9, 1]}, "off the"),
                      ({"op": "ball", "cell": free}, "remove one first"), ({"op": "agent", "dir": 4}, "dir"),
                      ({"op": "ball", "cell": "x"}, "cell"), ({"op": "fly"}, "unknown edit")]:
        out = s.handle({"type": "edit", **bad})
        assert out[0]["type"] == "error" and text in out[0]["message"], (bad, out)


def test_scenarios_and_patching_corruptions(tiny):
    model = tiny
    s = Session(model, seed=0)
    s.handle({"type": "scenario", "name": "ball_ahead"})
    _, clear = S.scenario_inputs(["clear_ahead"], rtg=0.9, env=ENV, n_timesteps=model.cfg.n_timesteps)
    for kind in ("front", "ball"):  # emptying the front cell or removing its ball gives clear_ahead
        clean, corrupted, _ = s.corrupt(kind)
        np.testing.assert_array_equal(np.asarray(corrupted.obs), np.asarray(clear.obs))
        assert not np.array_equal(np.asarray(clean.obs), np.asarray(clear.obs))
    clean, corrupted, _ = s.corrupt("rtg")
    assert_close(corrupted.rtg, -np.asarray(clean.rtg))
    out = s.handle({"type": "patch", "corruption": "front"})
    res = out[1].compute()
    names = patch_hooks(model.cfg, clean)
    assert [r.split(" [")[0] for r in res["rows"]] == [n for n in names for _ in range(2 if ".attn.hook_" in n else 1)]
    last = res["rows"].index("blocks.0.hook_resid_post")
    # the whole final residual at the last state token restores clean (one example: its metrics set the conditioning)
    assert_normalised_close(res["matrix"][last, -1], 1.0, res["clean"], res["corrupted"])
    v = C.action_vector(("forward", "right"))
    assert_close(res["corrupted"], (forward(model.params, model.cfg, clear.obs, clean.rtg, clean.timesteps,
                                            clean.actions)[0, -1] @ v))
    step, _ = s.handle({"type": "act", "action": 2})
    assert step["status"] == "hit" and step["return"] == -1.0 and not step["wall"]
    s.handle({"type": "scenario", "name": "wall_ahead"})
    step, _ = s.handle({"type": "act", "action": 2})
    assert step["status"] == "hit" and step["wall"]
    s.handle({"type": "scenario", "name": "goal_ahead"})
    step, _ = s.handle({"type": "act", "action": 2})
    assert step["status"] == "goal" and step["return"] == pytest.approx(1 - 0.9 / ENV.max_steps)


def test_mean_ablation(tiny):
    model = tiny
    s = Session(model, seed=0)
    step, panels = s.handle({"type": "set", "kind": "mean", "ablate": ["L0_mlp"]})
    means = model.get_means()
    _, worlds = C.ablate_logits(model.params, model.cfg, s.inputs(), "mean", means, comps=[("mlp", 0)])
    assert_close(step["ablated_probs"], jax.nn.softmax(worlds[1, 0, -1]))
    assert panels["kind"] == "mean" and panels["ablate"] == ["L0_mlp"]


def test_bad_messages_are_one_line_errors(tiny):
    s = Session(tiny, seed=0)
    cases = ["{bad json", "[1, 2]", {"type": "fly"}, {"type": "act", "action": 7}, {"type": "act", "action": "up"},
             {"type": "set", "rtg": "high"}, {"type": "set", "rtg": 3.0}, {"type": "set", "rtg": float("nan")},
             {"type": "set", "t_adjust": 1.5}, {"type": "set", "direction": {"pos": "left", "neg": "left"}},
             {"type": "set", "ablate": ["L9H9"]}, {"type": "set", "kind": "half"}, {"type": "set", "head": [0, 5]},
             {"type": "set", "temperature": 0}, {"type": "set", "colour": 1}, {"type": "reset", "seed": -1},
             {"type": "reset", "env_id": "CartPole-v1"}, {"type": "scenario", "name": "lava"},
             {"type": "patch", "corruption": "noise"}, {"type": "closed_loop", "episodes": 0},
             {"type": "model", "name": "other"}]
    for msg in cases:
        out = s.handle(msg)
        assert len(out) == 1 and out[0]["type"] == "error", msg
        assert out[0]["message"] and "\n" not in out[0]["message"]
    assert s.handle({"type": "set", "extrapolate": True, "rtg": 3.0})[-1]["scan"]["marker"] == pytest.approx(3.0)
    assert s.handle({"type": "act", "action": "left", "seq": 4})[0]["seq"] == 4  # still serving


def test_shape_notes_say_what_does_not_apply():
    from dtjax.config import ModelConfig
    from dtjax.explorer.session import shape_notes

    assert shape_notes(ModelConfig()) == {}  # the default shape: every panel applies as is
    notes = shape_notes(ModelConfig(attn_only=True, d_mlp=0, layer_norm=True, n_layers=2, n_timesteps=2))
    assert "no MLP" in notes["ablation"] and "LayerNorm" in notes["state-encoder"] and "direct path" in notes["qk"]
    assert "padded" in notes["attention"]


# ---------------------------------------------------------------------------------------------
# Sparse dictionaries: the active-latents panel
# ---------------------------------------------------------------------------------------------


def _dictionary(tmp, name, d_in=16, hook="blocks.0.hook_resid_post", labels=True):
    """A TopK SAE of the tiny model's width (random, encoder biased up so that latents fire) saved
    at ``tmp/name``, with an ``eval/analysis.npz`` of probe labels as ``python -m dtjax.sae eval`` writes."""
    from dtjax.sae import SAEConfig, init_sae, store

    cfg = SAEConfig(hook=hook, token="state", n_latents=24, k=5, d_in=d_in, d_out=d_in)
    v = jax.device_get(init_sae(jax.random.PRNGKey(3), cfg))
    v["params"]["b_enc"] = np.linspace(-1, 2, 24).astype(np.float32)
    v["norm"]["scale_out"] = np.float32(1.7)
    path = store.save(tmp / name, store.Dictionary(cfg, v, {}))
    if labels:
        (path / "eval").mkdir()
        np.savez(path / "eval" / "analysis.npz", **{"latents/best_probe": np.asarray([f"probe{j}" for j in range(24)]),
                                                    "probes/latent_best_auc": np.linspace(0.5, 1, 24).astype(np.float32)})
    return path


def test_sae_latents_panel_equals_active_latents(tmp_path):
    from dtjax.explorer import sae as es
    from dtjax.explorer.session import explore_step
    from dtjax.sae import active_latents, store

    model = tiny_model()
    path = _dictionary(tmp_path, "s")
    model.saes = es.load_all(None, model.cfg, model.params, [str(tmp_path)])  # a folder of dictionaries: all of them
    assert [s.name for s in model.saes] == ["s"]
    d = store.load(path)
    s = Session(model, seed=3)
    init = s.start()[0]
    assert init["saes"][0]["hook"] == "blocks.0.hook_resid_post" and init["saes"][0]["has_probes"]
    W_dla = d.variables["params"]["W_dec"] / 1.7 @ np.asarray(model.params["W_U"])  # (24, n_actions), by hand
    n_compiled = None
    for j, (a, direction) in enumerate([(1, None), (0, None), (1, {"pos": "left", "neg": None}), (1, None)]):
        if direction:
            s.handle({"type": "set", "direction": direction})
        pan = s.handle({"type": "act", "action": a})[-1]  # turns: the episode never ends
        assert pan["type"] == "panels", pan
        (got,) = pan["sae"]
        inp = s.inputs()
        idx, z = active_latents(d, model.params, model.cfg, inp.obs, inp.rtg, inp.timesteps, inp.actions, top=es.TOP)
        keep = z[0] > 0
        np.testing.assert_array_equal(got["index"], idx[0][keep])
        assert_close(got["act"], z[0][keep], rtol=1e-5)
        assert got["l0"] == 5 and len(got["index"]) == 5  # TopK, k = 5, every top latent active (biased encoder)
        assert_close(got["dla"], W_dla[got["index"]] @ np.asarray(s.controls().v), rtol=1e-4)
        assert got["probe"] == [f"probe{i}" for i in got["index"]]
        assert_close(got["auc"], np.linspace(0.5, 1, 24)[got["index"]], rtol=1e-6)
        n_compiled = n_compiled or explore_step._cache_size()
    assert explore_step._cache_size() == n_compiled  # a new direction is data: no recompilation
    plain = Session(tiny_model())  # no dictionary: the panel is absent
    r = plain.start()
    assert r[0]["saes"] == [] and r[-1]["sae"] == []


def test_sae_loading_checks_the_model(tmp_path, capsys):
    from dtjax.explorer import sae as es
    from dtjax.sae import SAEError

    model = tiny_model()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")  # a run directory: its dictionaries are under run/sae
    _dictionary(run / "sae", "fits")
    _dictionary(run / "sae", "wide", d_in=24, labels=False)
    _dictionary(run / "sae", "deep", hook="blocks.1.hook_resid_post", labels=False)
    logs = []
    found = es.load_all(run, model.cfg, model.params, (), logs.append)
    assert [s.name for s in found] == ["fits"] and len(logs) == 2  # found ones that do not fit are skipped, said
    assert any("reads width 24" in m for m in logs) and any("no hook blocks.1" in m for m in logs)
    for name, msg in (("wide", "reads width 24"), ("deep", "no hook blocks.1"), ("nothing", "no dtjax SAE directory")):
        with pytest.raises(SAEError, match=msg):  # a given one that does not fit is an error
            es.load_all(None, model.cfg, model.params, [str(run / "sae" / name)])


# ---------------------------------------------------------------------------------------------
# MEMORY: the write-up's adversaries, the instruction feature, its coefficient, attention
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def memory_tiny():
    """The tiny Memory model of test_family_memory (9 timesteps, one-hot; compiles shared with it)."""
    from test_family_memory import ENV as MEMORY_ENV
    from test_family_memory import TINY as MEMORY_TINY

    return tiny_model(MEMORY_TINY, MEMORY_ENV)


def test_memory_adversary_loads_the_reports_context(memory_tiny):
    """Each adversary loads exactly the report's context (``circuits.memory.adversary_inputs``), and the
    Memory card's LD, feature projections and attention are the report's functions on it."""
    from dtjax.circuits import memory as M

    params, cfg = memory_tiny.params, memory_tiny.cfg
    s = Session(memory_tiny, seed=0)
    info = s.init_message()["memory"]
    assert info["undefined"] is None and info["edits"] == list(M.EDITS) and info["layouts"] == M.layout_names()
    adv = M.adversary_inputs()
    ld, _ = M.adversary_logit_diffs(params, cfg, adv)
    t = memory_tiny.memory_tables()
    np.testing.assert_array_equal(t.ld, np.asarray(ld))
    assert_close(info["ld"], ld, floor=1e-3, rtol=1e-3)  # rounded to 4 decimals for the page
    assert_close(t.restored, M.restored_fractions(ld))
    assert info["note"]  # this model pads with RTG 0, the report's contexts with the target
    for layout, edit in (("ball_key-ball", "original"), ("ball_key-ball", "complement_0_5_4_2"), ("key_ball-key", "instruction_flipped")):
        step, pan = s.handle({"type": "adversary", "layout": layout, "edit": edit, "rtg": 0.0})
        i, j, k = t.index(layout, edit, 0.0)
        want = adv.inputs.take(np.asarray([np.ravel_multi_index((i, j, k), adv.shape)]))
        got = s.inputs()
        for f in ("obs", "rtg", "timesteps", "actions"):
            np.testing.assert_array_equal(np.asarray(getattr(got, f)), np.asarray(getattr(want, f)), err_msg=f)
        mem = pan["memory"]
        assert_close(mem["ld"], ld[i, j, k])
        assert float(mem["ld"]) == pytest.approx(pan["logit_diff"], rel=1e-5)  # the default direction is left - right
        assert [c["edited"] for c in step["context"]] == [False] * 4 + [edit != "original"] + [False] * 4
        assert mem["frame"] == M.INSTRUCTION_FRAME and step["timestep"] == 4
        _, cache = C.run_with_cache(params, cfg, want, names=["hook_embed"])
        proj = [M.feature_projection(cache["hook_embed"], t.direction, C.state_pos(9, f))[0] for f in range(9)]
        assert_close(mem["projection"], proj)
        att = np.asarray(M.decision_attention(params, cfg, want))[:, 0]
        assert_close(mem["attention"], att)
        assert_close(att.sum(-1), np.ones(att.shape[:2]))
    s.handle({"type": "adversary", "layout": "key_key-ball", "edit": "original", "rtg": 0.892})
    assert s.ctl["rtg"] == pytest.approx(0.892) and np.asarray(s.inputs().rtg)[0, -1] == pytest.approx(0.892)


def test_memory_coefficient_intervention_and_acting(memory_tiny):
    """The slider's coefficient is the report's direct intervention (``intervention_curve``); "act with
    the intervention" plays its greedy action; bad values are one-line errors and change nothing."""
    from dtjax.circuits import memory as M

    params, cfg, t = memory_tiny.params, memory_tiny.cfg, memory_tiny.memory_tables()
    s = Session(memory_tiny, seed=0)
    s.handle({"type": "adversary", "layout": "key_key-ball", "edit": "original", "rtg": 0.0})
    steered = {}
    for c in (-2.0, 2.0):
        (r,) = s.handle({"type": "memory", "coef": c})
        curve = np.asarray(M.intervention_curve(params, cfg, s.inputs(), t.direction, (c,)))
        assert_close(r["steered_ld"], curve[0, 0])
        assert sum(r["steered_probs"]) == pytest.approx(1.0, abs=1e-3) and r["steered_action"] in range(cfg.n_actions)
        steered[c] = r["steered_ld"]
    # the coefficient moves the decision (a random tiny model barely reads its old frames: by far more
    # than float32 noise, though)
    assert abs(steered[2.0] - steered[-2.0]) > 10 * 1e-5 * max(abs(v) for v in steered.values())
    for bad in ({"coef": 2.5}, {"coef": "high"}, {"coef": True}, {"coef": 1.0, "act": "yes"}):
        out = s.handle({"type": "memory", **bad})
        assert len(out) == 1 and out[0]["type"] == "error" and "\n" not in out[0]["message"], bad
    assert s.ctl["coef"] == -2.0 or s.ctl["coef"] == 2.0
    (r,) = s.handle({"type": "memory", "coef": None})
    assert r["coef"] is None and r["steered_probs"] is None and r["steered_ld"] is None
    out = s.handle({"type": "memory", "coef": -2.0, "act": True})
    assert [o["type"] for o in out] == ["memory", "step", "panels"]
    assert s.history[-2].action == out[0]["steered_action"] and out[1]["timestep"] == 5
    assert out[2]["memory"]["frame"] == M.INSTRUCTION_FRAME - 1 and out[2]["memory"]["coef"] == -2.0


def test_memory_card_is_not_defined_elsewhere(tiny):
    s = Session(tiny, seed=0)
    info = s.init_message()["memory"]
    assert set(info) == {"undefined"} and info["undefined"] and "\n" not in info["undefined"]
    assert s.update()[1]["memory"] is None
    for msg in ({"type": "adversary", "layout": "key_key-ball", "edit": "original"}, {"type": "memory", "coef": 1.0}):
        out = s.handle(msg)
        assert len(out) == 1 and out[0]["type"] == "error" and "not defined" in out[0]["message"]


MEMORY_PT = Path(__file__).resolve().parents[1] / "checkpoints" / "original" / "MemoryGatedMLP.pt"


@pytest.mark.slow
def test_memory_card_on_the_original_memorydt():
    """On ``MemoryGatedMLP.pt``: each layout's original and instruction-flipped contexts, loaded by a
    click's message, give the reference doc's LDs (§7: +3.77, -6.43, +7.26, -7.74 at RTG 0.892) and the
    flip's sign change; L0H1 puts >= 0.93 of the decision token's attention on s5; the slider at c = -2 /
    +2 is the report's intervention on the loaded context."""
    from dtjax.circuits import memory as M
    from dtjax.explorer.session import Model

    if not MEMORY_PT.exists():
        pytest.skip(f"{MEMORY_PT} is not here")
    model = Model.load(MEMORY_PT, warm=False)
    s = Session(model, seed=0)
    t = model.memory_tables()
    reference = {"key_key-ball": 3.77, "key_ball-key": -6.43, "ball_ball-key": 7.26, "ball_key-ball": -7.74}
    for layout, want in reference.items():
        _, pan = s.handle({"type": "adversary", "layout": layout, "edit": "original", "rtg": 0.892})
        assert float(pan["memory"]["ld"]) == pytest.approx(want, abs=0.02), layout
        assert pan["memory"]["attention"][0][1][M.INSTRUCTION_POS] >= 0.93
        _, flipped = s.handle({"type": "adversary", "layout": layout, "edit": "instruction_flipped", "rtg": 0.892})
        assert np.sign(flipped["memory"]["ld"]) == -np.sign(want), layout
    i, j, k = t.index("key_key-ball", "complement_0_5_4_2", 0.892)
    assert t.restored[i, j, k] == pytest.approx(1.03, abs=0.02)  # §7's measured table
    s.handle({"type": "adversary", "layout": "key_key-ball", "edit": "original", "rtg": 0.892})
    curve = np.asarray(M.intervention_curve(model.params, model.cfg, s.inputs(), t.direction, (-2.0, 2.0)))[0]
    for c, want in zip((-2.0, 2.0), curve):
        (r,) = s.handle({"type": "memory", "coef": c})
        assert_close(r["steered_ld"], want)
    assert curve[0] < 0 < curve[1]  # keys positive: a ball-like instruction feature turns the key layout right
