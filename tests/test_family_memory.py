"""MiniGrid Memory through the front ends: scenarios with a history, the report, the explorer, the refusals.

Memory is the family whose model needs its context: the start-room object (the instruction) is
seen in the first frames only, and the decision (left or right at the junction) is made four
steps later. So a scenario is a *window*, replayed in the env from its reset state
(``dtjax.scenarios``), the report has the decision token's attention over the 26 tokens (R1 s1
a1 ... R9 s9), the explorer plays the 7 actions (pickup puts the instruction in the agent's
hands, which its view shows) and shows the context window, and the ball-obstacle analyses (the
ball pair, the census, the explorer's ball corruption) say in one line that they are not defined.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from dtjax import scenarios as S
from dtjax.config import EnvConfig, ModelConfig
from dtjax.explorer.session import Session
from dtjax.report import Context, ReportOptions, all_sections, run_sections
from explorer_models import random_params, tiny_model
from test_report_shapes import CheapPage

ENV_ID = "MiniGrid-MemoryS7FixedStart-v0"
ENV = EnvConfig(ENV_ID, max_steps=50, obs_mode="one_hot")  # the original's data: max_steps 50, one-hot
# The original's shape at a tiny width: 7 actions, 9 timesteps (26 tokens), LayerNorm, one-hot.
TINY = ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=16, max_timestep=50, n_timesteps=9, n_actions=7,
                   obs_mode="one_hot", layer_norm=True)
PAD = TINY.n_actions  # the padding action


@pytest.fixture(scope="module")
def env():
    return ENV.make()


@pytest.fixture(scope="module")
def windows():
    return S.scenario_inputs(None, rtg=0.9, env=ENV, n_timesteps=TINY.n_timesteps)


def test_scenarios_are_windows_replayed_in_the_env(env, windows):
    """Each scenario's window holds the frames of its episode, as the original's app builds them
    (the junction after 4 forwards: actions [7,7,7,7,2,2,2,2], timesteps [0,0,0,0,0,1,2,3,4]): every
    real frame is the env's observation of the state on the optimal path, the last one the
    scenario's own state; the padding is zero observations, RTG 0 and the padding action."""
    jenv, params = env
    known = S.task_scenarios(ENV)
    names, inp = windows
    assert list(known) == names and len(names) >= 4 * 5
    for name in ("key_key-ball_junction", "ball_ball-key_junction"):
        i = names.index(name)
        np.testing.assert_array_equal(np.asarray(inp.actions[i]), [PAD] * 4 + [2] * 4)
        np.testing.assert_array_equal(np.asarray(inp.timesteps[i]), [0, 0, 0, 0, 0, 1, 2, 3, 4])
        np.testing.assert_array_equal(np.asarray(inp.rtg[i]), [0] * 4 + [np.float32(0.9)] * 5)
        assert not np.asarray(inp.obs[i, :4]).any()
        lay = name.rsplit("_", 1)[0]
        for k in range(5):  # frame 4 + k is the observation after k forwards: scenario {lay}_t{k} (or the junction)
            state = known[f"{lay}_t{k}" if k < 4 else name].state
            np.testing.assert_array_equal(np.asarray(inp.obs[i, 4 + k]), np.asarray(jenv.observe(state, params)))
    # the two junction windows of a patching pair differ only in the frames that show the instruction
    clean, corrupted = jenv.task.pairs["instruction_key_top"]
    a, b = np.asarray(inp.obs[names.index(clean)]), np.asarray(inp.obs[names.index(corrupted)])
    np.testing.assert_array_equal(a[-1], b[-1])
    assert (a[4:-1] != b[4:-1]).any()
    # the look-back scenario ends with its two turns, in the doorway
    i = names.index("key_key-ball_look_back")
    np.testing.assert_array_equal(np.asarray(inp.actions[i]), [PAD] * 3 + [2] * 3 + [0, 0])
    start, acts = S.scenario_start("key_key-ball_look_back", ENV)
    assert acts == (2, 2, 2, 0, 0) and int(start.time) == 0 and tuple(np.asarray(start.agent_pos)) == (1, 3)


def test_the_report_renders_the_memory_sections(windows):
    """A tiny Memory model's report: the scenarios (all 7 action probabilities), the default
    direction left - right, and every head's attention from the decision token (s9) over the 26
    tokens, rows summing to 1; the ball analyses are not defined for this task."""
    opt = ReportOptions(fast=True, strict=True, closed_loop=False, dpi=20, sections=("scenarios", "context_attention"))
    ctx = Context("tiny-memory", TINY, random_params(TINY), ENV, opt, log=lambda m: None)
    assert ctx.direction_spec == "left-right"
    np.testing.assert_array_equal(np.asarray(ctx.v), [1, -1, 0, 0, 0, 0, 0])
    sections = [s for s in all_sections() if s.key in opt.sections]
    page = CheapPage("memory")
    res, status = run_sections(ctx, sections, page)
    assert all(v["status"] == "ok" for v in status.values()), status
    names = windows[0]
    sc = res["scenarios"]
    assert sc["names"] == names and sc["probs"].shape == (len(names), 7)
    np.testing.assert_allclose(sc["probs"].sum(-1), 1.0, rtol=1e-5)
    att = res["context_attention"]
    assert att["tokens"][:3] == ["R1", "s1", "a1"] and att["tokens"][-2:] == ["R9", "s9"] and len(att["tokens"]) == 26
    assert att["attn"].shape == (TINY.n_layers * TINY.n_heads, len(names), 26)
    np.testing.assert_allclose(att["attn"].sum(-1), 1.0, rtol=1e-5)
    assert att["first_frame"][names.index("key_key-ball_junction")] == "s5"
    assert att["first_frame"][names.index("key_key-ball_t0")] == "s9"
    html = page.render()
    assert "Attention over the context" in html and "L0H1" in html
    with pytest.raises(ValueError, match=r"not defined for this task \(memory: its balls are not obstacles\)"):
        S.require_balls(ctx.task, "the ball pair")


def test_the_explorer_plays_memory_with_seven_actions():
    """The session takes the task's 7 actions; the fork's pickup puts the instruction object in the
    agent's hands (off the grid, on the agent's view cell: ``carrying``); the context window shows
    each frame with its token (s1 ... s9) and the action taken; a scenario is played with its
    history; key / ball edits change the layout; the ball corruption is refused in one line."""
    s = Session(tiny_model(TINY, ENV), seed=3)
    init = s.init_message()
    assert init["actions"] == ["left", "right", "forward", "pickup", "drop", "toggle", "done"]
    assert len(init["task"]["action_keys"]) == 7 and init["task"]["edit_ops"] == ["key", "ball", "empty", "agent"]
    assert init["context_tokens"][-2:] == ["R9", "s9"] and "ball" not in init["corruptions"]
    step, _ = s.update()
    assert [c["token"] for c in step["context"]] == [f"s{k}" for k in range(1, 10)]
    assert [c["valid"] for c in step["context"]] == [False] * 8 + [True] and step["carrying"] is None
    h = s.env.size // 2
    instr = (1, h - 1)  # the start-room object, north of the FixedStart agent at (1, h)
    kind = int(step["grid"]["cells"][instr][0])
    assert kind in (5, 6) and int(step["grid"]["cells"][instr][1]) == 1  # a green key or ball
    s.handle({"type": "act", "action": "left"})  # face north, toward it
    step, _ = s.handle({"type": "act", "action": "pickup"})
    assert step["status"] == "running" and step["carrying"] == {"object": {5: "key", 6: "ball"}[kind], "colour": "green"}
    assert int(step["grid"]["cells"][instr][0]) == 1  # taken off the grid
    assert [(c["token"], c["t"], c["action"]) for c in step["context"] if c["valid"]] == \
        [("s7", 0, "left"), ("s8", 1, "pickup"), ("s9", 2, None)]
    assert step["context"][-1]["view"][6][3] == kind  # the carried object on the agent's view cell
    step, _ = s.handle({"type": "act", "action": "drop"})  # back in front of the agent
    assert step["carrying"] is None and int(step["grid"]["cells"][instr][0]) == kind

    step, _ = s.handle({"type": "scenario", "name": "ball_key-ball_junction"})
    assert (step["step"], step["n_steps"], step["timestep"]) == (4, 5, 4)
    assert [c["action"] for c in step["context"] if c["valid"]] == ["forward"] * 4 + [None]
    e = s.env.size - 3
    cells = step["grid"]["cells"]
    assert (cells[e + 1, h - 2][0], cells[e + 1, h + 2][0]) == (5, 6)  # key on top, ball at the bottom
    step, _ = s.handle({"type": "edit", "op": "ball", "cell": [e + 1, h - 2]})
    cells = step["grid"]["cells"]
    assert (cells[e + 1, h - 2][0], cells[e + 1, h + 2][0]) == (6, 5)  # the ends are one of each: both swapped
    assert step["n_steps"] == 5  # an edit keeps the history before the step on screen
    out = s.handle({"type": "edit", "op": "key", "cell": [0, h]})
    assert out[0]["type"] == "error" and "is a wall" in out[0]["message"]
    out = s.handle({"type": "patch", "corruption": "ball"})
    assert out[0]["type"] == "error" and "not defined for this task (memory: its balls are not obstacles)" in out[0]["message"]
    clean, corrupted, _ = s.corrupt("rtg")
    assert clean.actions.shape == (1, TINY.n_timesteps - 1)


def test_a_model_chooses_among_seven_actions(env):
    """A sampled closed-loop step of the explorer may take any of the 7 actions (the model's
    logits cover them all); the env steps each."""
    s = Session(tiny_model(TINY, ENV, seed=1), seed=0)
    s.handle({"type": "set", "greedy": False, "temperature": 50.0})
    taken = set()
    for _ in range(12):
        step, _ = s.handle({"type": "act", "action": "model"})
        if step["type"] != "step" or step["status"] != "running":
            break
        taken.add(step["action"])
    assert taken and all(0 <= a < 7 for a in taken) and max(taken) > 2
    assert jax.tree.leaves(s.history[-1].state)  # the env's own state


def test_train_py_says_the_tasks_outcomes():
    """train.py's last lines speak Memory's outcomes (the issue's criterion: at RTG 0 the wrong
    object), per seed with N seeds; Dynamic Obstacles' JSON keeps its goal / hit keys."""
    import sys
    from pathlib import Path

    import envs

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import train as train_script

    def row(rtg, ret, success, wrong):
        return {"target_rtg": rtg, "mean_return": ret, "success_rate": success, "wrong_rate": wrong,
                "timeout_rate": 1.0 - success - wrong, "mean_length": 6.0, "episodes": 100}

    one = {"run_dir": "runs/m", "final_eval": [row(0.0, 0.0, 0.0, 1.0), row(1.0, 0.9946, 1.0, 0.0)],
           "calibration_monotonic": True, "seconds": {"total": 1.0}}
    task = envs.task_of(ENV_ID)
    assert train_script.outcome_lines(one, task) == [
        "RTG +0: return 0.000, success 0.000 wrong 1.000 timeout 0.000, length 6.0",
        "RTG +1: return 0.995, success 1.000 wrong 0.000 timeout 0.000, length 6.0"]
    shown = train_script.brief(one, task)["final_eval"]
    assert [(r["success_rate"], r["wrong_rate"]) for r in shown] == [(0.0, 1.0), (1.0, 0.0)]
    seeds = {"run_dir": "runs/m", "seeds": [{**one, "run_dir": f"runs/m/seed_{k}"} for k in range(2)],
             "seconds": {"total": 1.0}}
    lines = train_script.outcome_lines(seeds, task)
    assert len(lines) == 4 and lines[2] == "seed_1 RTG +0: return 0.000, success 0.000 wrong 1.000 timeout 0.000, length 6.0"
    dyn = {**one, "final_eval": [{"target_rtg": 1.0, "mean_return": 0.9, "goal_rate": 0.95, "hit_rate": 0.01,
                                  "hit_wall_rate": 0.0, "timeout_rate": 0.04, "mean_length": 20.0, "episodes": 10}]}
    do = envs.task_of("MiniGrid-Dynamic-Obstacles-8x8-v0")
    assert train_script.brief(dyn, do) == train_script.brief(dyn)
    assert list(train_script.brief(dyn, do)["final_eval"][0]) == ["target_rtg", "mean_return", "goal_rate", "hit_rate",
                                                                  "mean_length"]


def test_the_census_of_memorydt_is_not_defined_in_one_line(tmp_path):
    """The census asks about the ball-ahead veto: on the original MemoryDT (and any Memory run) it
    says in one line that it is not defined for this task, and writes nothing."""
    from pathlib import Path

    from dtjax.census import write_census

    pt = Path(__file__).resolve().parents[1] / "checkpoints" / "original" / "MemoryGatedMLP.pt"
    with pytest.raises(ValueError, match=r"^the census \(the ball-ahead veto and its RTG gate\) is not defined for this "
                                         r"task \(memory: its balls are not obstacles\)$"):
        write_census(pt, tmp_path / "census")
    assert not (tmp_path / "census").exists()


TINY_RUN = ["--env.env_id", ENV_ID, "--num_steps", "50", "--log_every", "25", "--eval_every", "25", "--ckpt_every", "50",
            "--warmup_steps", "5", "--batch_size", "32", "--eval_episodes", "8", "--final_eval_episodes", "16",
            "--calib_points", "3", "--calib_episodes", "16", "--calib_min_episodes", "8",
            "--data.ppo.total_timesteps", "16384", "--data.ppo.num_envs", "16", "--data.ppo.num_steps", "64",
            "--data.mix.envs", "32", "--quiet"]


@pytest.mark.slow  # compiles the GRU PPO, the K = 9 training chunk and Memory's closed loop (~2 min of CPU)
def test_num_seeds_on_memory_end_to_end(tmp_path, capsys):
    """``train.py --num_seeds 2`` on Memory's presets (tiny budgets): collects the recurrent PPO's
    data, trains both seeds, evaluates and calibrates each with the task's outcome rates, prints
    one outcome line per seed and target; each seed opens with ``Run.open`` and gets a report; an
    SAE trains and evaluates on a seed; the census says in one line it is not defined."""
    import json
    import sys
    from pathlib import Path

    from dtjax.run import Run
    from dtjax.sae.__main__ import main as sae_main

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    import analyse
    import train as train_script

    assert train_script.main([*TINY_RUN, "--num_seeds", "2", "--run_name", "mem", "--checkpoint_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = [x for x in out.splitlines() if x.startswith("seed_")]
    assert [x.split(":")[0] for x in lines] == ["seed_0 RTG +0", "seed_0 RTG +1", "seed_1 RTG +0", "seed_1 RTG +1"]
    assert all(" success " in x and " wrong " in x and " timeout " in x for x in lines)
    run = tmp_path / "mem"
    meta = json.loads((run / "dataset" / "metadata.json").read_text())
    assert meta["outcome_words"] == ["success", "wrong"] and meta["data_config"]["ppo"]["arch"] == "gru"
    for k in range(2):
        seed = Run.open(run / f"seed_{k}").require_model()
        assert seed.env_cfg.env_id == ENV_ID and seed.model_cfg.n_timesteps == 9 and seed.model_cfg.n_actions == 7
        s = json.loads((run / f"seed_{k}" / "summary.json").read_text())
        for r in s["final_eval"]:
            assert r["success_rate"] + r["wrong_rate"] + r["timeout_rate"] == pytest.approx(1.0)
        calib = json.loads((run / f"seed_{k}" / "calibration.json").read_text())
        assert [r["target_rtg"] for r in calib["rows"]] == [0.0, 0.5, 1.0] and "wrong_rate" in calib["rows"][0]
    assert analyse.main(["--ckpt", str(run / "seed_1"), "--out", str(tmp_path / "rep"), "--fast", "--quiet"]) == 0
    rep = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert all(v["status"] in ("ok", "undefined") for v in rep["sections"].values()), rep["sections"]
    assert sae_main(["train", "--ckpt", str(run / "seed_0"), "--latents", "32", "--k", "4", "--num_steps", "20",
                     "--log_every", "10", "--n_tokens", "2048", "--batch_size", "256", "--quiet", "--name", "t"]) == 0
    assert sae_main(["eval", "--sae", str(run / "seed_0" / "sae" / "t"), "--tokens", "2048", "--analysis_tokens", "1024",
                     "--episodes", "4", "--quiet", "--no_figures"]) == 0
    ev = json.loads((run / "seed_0" / "sae" / "t" / "eval.json").read_text())
    assert ev["closed_loop"]["target_rtg"] == [0.0, 0.5, 1.0] and ev["closed_loop"]["outcomes"] == ["success", "wrong", "timeout"]
    assert not any(r["family"] == "goal_dist" or r["probe"] == "ball_adjacent" for r in ev["probes"]["table"])
    capsys.readouterr()
    assert analyse.main(["--census", str(run), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("error: the census (the ball-ahead veto and its RTG gate) is not defined for this task "
                   "(memory: its balls are not obstacles)")
