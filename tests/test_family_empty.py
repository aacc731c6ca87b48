"""The second task family, MiniGrid Empty, through the front ends with no change to them.

Evaluation and calibration name the outcomes by the task (goal, timeout: no hit) and calibrate
over its return range [0, 1]; the task's hand-made scenarios and pairs are what ``dtjax.scenarios``
and the report use; the ball-only analyses (the ball pair, the census's veto probes, the explorer's
ball edits and corruption) are refused in one line; an explorer session plays the env's own
episode; and (slow) a tiny training run goes through calibration and the ``--fast`` report.
Episodes are checked against ``tests/test_evaluate.py``'s Python re-simulation.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from dtjax import scenarios as S
from dtjax.circuits import census
from dtjax.config import DataConfig, DataMixConfig, EnvConfig, ModelConfig, PPOConfig, TrainConfig
from dtjax.evaluate import calibrate, evaluate
from dtjax.explorer.session import Session
from dtjax.sae import probes
from explorer_models import random_params, tiny_model
from test_evaluate import assert_same_episodes, replay
from tolerance import assert_close

ROOT = Path(__file__).resolve().parents[1]
ENV_ID = "MiniGrid-Empty-5x5-v0"
ENV = EnvConfig(ENV_ID, max_steps=30)
TINY = ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=32, max_timestep=40, n_timesteps=2)


@pytest.fixture(scope="module")
def env():
    return ENV.make()


def test_the_task_has_no_hit_and_no_balls(env):
    task = env[0].task
    assert "hit" not in task.outcomes and "ball" not in task.objects and task.return_range == (0.0, 1.0)
    assert env[0].num_actions == task.num_actions == TINY.n_actions


def test_evaluation_and_calibration_name_the_tasks_outcomes(env):
    """Greedy episodes equal the Python re-simulation; every episode ends as goal or timeout, with
    the goal's reward 1 - 0.9 t/T; sampled play reaches the goal; calibration sweeps [0, 1]."""
    jenv, env_params = env
    task, params, key = jenv.task, random_params(TINY), jax.random.PRNGKey(4)
    res = evaluate(params, TINY, jenv, env_params, key, [0.0, 1.0], 6)
    assert res.outcomes == task.outcomes and not res.hit.any() and not res.hit_wall.any()
    rows = [0, 1, 6, 7]
    assert_same_episodes(res, replay(params, TINY, jenv, env_params, key, [0.0, 1.0], 6, rows), rows)
    sampled = evaluate(params, TINY, jenv, env_params, key, [0.0, 1.0], 16, greedy=False, temperature=10.0)
    for r in (res, sampled):
        assert (r.goal ^ r.timeout).all()  # every episode ended, as exactly one of the task's outcomes
        assert_close(r.returns[r.goal], 1 - 0.9 * r.lengths[r.goal] / ENV.max_steps)
        assert (r.returns[r.timeout] == 0).all() and (r.lengths[r.timeout] == ENV.max_steps).all()
    assert sampled.goal.sum() >= 2 and sampled.timeout.sum() >= 2  # both outcomes occur (the checks above bite)
    row = sampled.summary()[0]
    assert "hit_rate" not in row and row["goal_rate"] + row["timeout_rate"] == pytest.approx(1.0)
    cal = calibrate(params, TINY, jenv, env_params, key, None, 4, greedy=False, temperature=10.0)
    assert_close([r["target_rtg"] for r in cal["rows"]], np.linspace(0.0, 1.0, 21))
    assert all(0.0 <= r["mean_return"] <= 1.0 and "hit_rate" not in r for r in cal["rows"])


def test_scenarios_come_from_the_task_and_ball_analyses_are_refused(env):
    jenv, env_params = env
    task = jenv.task
    scen = S.task_scenarios(ENV)
    assert list(scen) == [s.name for s in task.scenarios(jenv)] and len(scen) >= 2
    assert all(a in scen and b in scen for a, b in task.pairs.values())
    names, inp = S.scenario_inputs(None, rtg=0.5, env=ENV, n_timesteps=2)
    for i, n in enumerate(names):  # each scenario is the env's own observation, left-padded
        np.testing.assert_array_equal(np.asarray(inp.obs[i, -1]), np.asarray(jenv.observe(scen[n].state, env_params)))
        assert not np.asarray(inp.obs[i, 0]).any()
    for fn in (lambda: S.require_balls(task, "the ball pair"), lambda: census.probe_states(ENV)):
        with pytest.raises(ValueError, match=r"not defined for this task \(.*no balls\)"):
            fn()
    obs = np.asarray(inp.obs[:, -1])
    pnames, _, _ = probes.probe_labels(obs, np.zeros(len(names)), np.zeros(len(names)),
                                       np.stack([np.asarray(scen[n].state.agent_pos) for n in names]),
                                       np.array([int(scen[n].state.agent_dir) for n in names]), jenv.size, task.objects)
    assert "front=goal" in pnames and not any("ball" in p for p in pnames)


def test_an_explorer_session_plays_the_envs_episode():
    """The session asks the task (actions, outcomes, scenarios, no ball corruption or edits), its
    steps are the env's own (keys as the session documents), and walking into the goal ends it."""
    model = tiny_model(TINY, ENV)
    s = Session(model, seed=5)
    task = s.env.task
    init = s.init_message()
    assert init["task"]["outcomes"] == list(task.outcomes) and init["actions"] == list(task.action_names)
    assert "ball" not in init["corruptions"] and init["n_obstacles"] == 0
    assert list(init["scenarios"]) == list(S.task_scenarios(ENV))
    jenv, env_params = ENV.make()
    k_reset, k_env, _ = jax.random.split(jax.random.PRNGKey(5), 3)
    _, state = jenv.reset(k_reset, env_params)
    for j, a in enumerate([1, 2, 0, 2, 2, 1]):
        step, _ = s.handle({"type": "act", "action": task.action_names[a]})
        obs, _, r, term, trunc, info = jenv.step(jax.random.fold_in(k_env, j), state, a, env_params)
        state = info["final_state"]
        np.testing.assert_array_equal(s.history[-1].obs, info["final_observation"])
        assert step["grid"]["agent"] == np.asarray(state.agent_pos).tolist() and step["reward"] == float(r)
        assert step["status"] == task.outcomes[int(info["outcome"])]
        if term or trunc:
            break
    for msg in ({"type": "edit", "op": "ball", "cell": [2, 2]}, {"type": "patch", "corruption": "ball"}):
        out = s.handle(msg)
        assert out[0]["type"] == "error" and "not defined for this task" in out[0]["message"], out
    s.handle({"type": "reset", "seed": 5})
    g = jenv.size - 2  # the goal's cell (g, g): stand west of it, facing east, and walk in
    step, _ = s.handle({"type": "edit", "op": "agent", "cell": [g - 1, g], "dir": 0})
    step, _ = s.handle({"type": "act", "action": "forward"})
    assert step["status"] == "goal" and step["return"] == pytest.approx(1 - 0.9 / ENV.max_steps)
    for name in init["scenarios"]:
        step, _ = s.handle({"type": "scenario", "name": name})
        assert step["type"] == "step" and step["status"] == "running"
    clean, corrupted, _ = s.corrupt("front")
    assert clean.obs.shape == corrupted.obs.shape
    out = s.handle({"type": "closed_loop", "episodes": 4})
    res = out[1].compute()
    assert res["episodes"] == 4 and all(0.0 <= x <= 1.0 for x in res["mean_return"])


@pytest.mark.slow
def test_a_tiny_run_trains_calibrates_and_reports(tmp_path):
    """train -> evaluation -> calibration -> the --fast report, in the Empty family."""
    from dtjax.train import train_and_evaluate

    cfg = TrainConfig(
        run_name="empty", checkpoint_dir=str(tmp_path), env=EnvConfig(ENV_ID, max_steps=50),
        model=ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=32, max_timestep=49),
        data=DataConfig(ppo=PPOConfig(total_timesteps=4 * 16 * 32, num_envs=16, num_steps=32, num_minibatches=4,
                                      hidden=16), mix=DataMixConfig(envs=16)),
        batch_size=16, num_steps=20, log_every=10, eval_every=10, ckpt_every=20, warmup_steps=5, eval_episodes=4,
        final_eval_episodes=4, calib_points=3, calib_episodes=4)
    summary = train_and_evaluate(cfg, progress=False)
    run = Path(summary["run_dir"])
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in metrics if "eval/return@+1" in r]
    assert evals and "eval/goal@+1" in evals[-1] and not any(k.startswith("eval/hit") for r in evals for k in r)
    calib = json.loads((run / "calibration.json").read_text())
    assert [r["target_rtg"] for r in calib["rows"]] == [0.0, 0.5, 1.0]
    assert all(0.0 <= r["mean_return"] <= 1.0 and "hit_rate" not in r for r in calib["rows"])
    sys.path.insert(0, str(ROOT))
    import analyse
    import train as train_script

    shown = train_script.brief(summary)["final_eval"]  # what the terminal prints: the task's own rates
    assert shown and all("goal_rate" in r and "hit_rate" not in r for r in shown)

    out = tmp_path / "report"
    assert analyse.main(["--ckpt", str(run), "--out", str(out), "--fast", "--quiet"]) == 0
    rep = json.loads((out / "summary.json").read_text())
    assert all(v["status"] in ("ok", "undefined") for v in rep["sections"].values()), rep["sections"]
    assert rep["direction"] == "-".join(EnvConfig(ENV_ID).make()[0].task.direction)
    assert all("hit_rate" not in r for r in rep["calibration"])
