"""dtjax.data.store: round trip, atomic writes, one-line errors for every corrupt input, summary."""

import json
import os

import numpy as np
import pytest

from dtjax.data import store
from dtjax.data.store import DatasetError
from fixtures import random_dataset


@pytest.fixture
def ds():
    return random_dataset(np.random.default_rng(0), 50)


def _one_line(e):
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def test_round_trip(tmp_path, ds):
    arrays, meta = ds
    store.save(tmp_path / "d", arrays, {**meta, "extra": {"a": 1}})
    got, m = store.load(tmp_path / "d", expect={"env_id": meta["env_id"], "max_steps": 300})
    for k in store.FIELDS:
        np.testing.assert_array_equal(got[k], arrays[k])
        assert got[k].dtype == store.FIELDS[k][0]
    assert m["schema_version"] == store.SCHEMA_VERSION and m["extra"] == {"a": 1}
    assert m["counts"]["steps"] == len(arrays["action"]) and m["counts"]["episodes"] == 50
    assert sorted(os.listdir(tmp_path)) == ["d"]  # no temp dirs left behind
    mm, _ = store.load(tmp_path / "d", mmap=True)
    np.testing.assert_array_equal(mm["time"], arrays["time"])


def test_optional_obs_round_trip(tmp_path, ds):
    arrays, meta = ds
    obs = np.random.default_rng(1).integers(0, 11, (len(arrays["action"]), 7, 7, 3)).astype(np.uint8)
    store.save(tmp_path / "d", {**arrays, "obs": obs}, meta)
    got, _ = store.load(tmp_path / "d")
    np.testing.assert_array_equal(got["obs"], obs)


def test_never_clobbers(tmp_path, ds):
    store.save(tmp_path / "d", *ds)
    before = (tmp_path / "d" / "metadata.json").read_text()
    with pytest.raises(DatasetError, match="already exists"):
        store.save(tmp_path / "d", *ds)
    assert (tmp_path / "d" / "metadata.json").read_text() == before


def test_failed_write_leaves_nothing(tmp_path, ds, monkeypatch):
    calls = []

    def boom(f, a):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        np.lib.format.write_array(f, np.asanyarray(a))

    monkeypatch.setattr(store.np, "save", boom)
    with pytest.raises(OSError):
        store.save(tmp_path / "d", *ds)
    assert os.listdir(tmp_path) == []


def test_invalid_arrays_refused_on_save(tmp_path, ds):
    arrays, meta = ds
    bad = {**arrays, "action": np.full_like(arrays["action"], 3)}
    with pytest.raises(DatasetError, match="action values"):
        store.save(tmp_path / "d", bad, meta)
    assert not (tmp_path / "d").exists()


def _corrupt_cases():
    def rm(name):
        return lambda d: os.remove(d / name)

    def write(name, text):
        return lambda d: (d / name).write_text(text)

    def truncate(name):
        def f(d):
            b = (d / name).read_bytes()
            (d / name).write_bytes(b[: len(b) // 2])
        return f

    def edit_meta(**kv):
        def f(d):
            m = json.loads((d / "metadata.json").read_text())
            m.update(kv)
            (d / "metadata.json").write_text(json.dumps(m))
        return f

    def replace(name, fn):
        def f(d):
            a = np.load(d / f"{name}.npy")
            os.remove(d / f"{name}.npy")
            np.save(d / f"{name}.npy", fn(a))
        return f

    return {
        "no metadata": (rm("metadata.json"), "no metadata.json"),
        "bad json": (write("metadata.json", "{not json"), "corrupt metadata.json"),
        "json not object": (write("metadata.json", "[1, 2]"), "corrupt metadata.json"),
        "schema": (edit_meta(schema_version=99), "schema version 99"),
        "missing array": (rm("action.npy"), "missing action.npy"),
        "truncated array": (truncate("reward.npy"), "corrupt or truncated reward.npy"),
        "garbage array": (write("time.npy", "hello"), "corrupt or truncated time.npy"),
        "wrong dtype": (replace("action", lambda a: a.astype(np.int64)), "dtype int64"),
        "short array": (replace("agent_dir", lambda a: a[:-1]), "agent_dir has shape"),
        "counts": (edit_meta(counts={"steps": 1}), "do not match the counts"),
        "wrong n_obstacles": (edit_meta(n_obstacles=3), "4 balls, metadata says 3"),
        "incomplete last episode": (replace("terminated", lambda a: np.zeros_like(a)), "incomplete"),
        "time jump": (replace("time", lambda a: np.where(np.arange(len(a)) == 1, a + 5, a).astype(a.dtype)), "time does not rise"),
        "time beyond max_steps": (edit_meta(max_steps=5), "time values outside"),
        "position outside grid": (edit_meta(size=3), "agent_pos values outside"),
        "nan reward": (replace("reward", lambda a: np.where(np.arange(len(a)) == 0, np.nan, a).astype(a.dtype)), "non-finite"),
    }


@pytest.mark.parametrize("case", list(_corrupt_cases()))
def test_corrupt_inputs_give_one_line_errors(tmp_path, ds, case):
    mutate, phrase = _corrupt_cases()[case]
    store.save(tmp_path / "d", *ds)
    mutate(tmp_path / "d")
    with pytest.raises(DatasetError) as e:
        store.load(tmp_path / "d")
    assert phrase in _one_line(e)


def test_not_found_and_expect_mismatch(tmp_path, ds):
    with pytest.raises(DatasetError) as e:
        store.load(tmp_path / "nope")
    assert "not found" in _one_line(e)
    store.save(tmp_path / "d", *ds)
    with pytest.raises(DatasetError) as e:
        store.load(tmp_path / "d", expect={"max_steps": 256})
    assert "max_steps=300, expected 256" in _one_line(e)


def test_summary_counts_outcomes_against_a_loop(ds, tmp_path):
    arrays, _ = ds
    s = store.summary(arrays)
    done = arrays["terminated"] | arrays["truncated"]
    goal = hit = timeout = 0
    ret, returns, lengths, n = 0.0, [], [], 0
    for r, d in zip(arrays["reward"], done):
        ret += float(r)
        n += 1
        if d:
            goal += r > 0
            hit += r <= -1
            timeout += -1 < r <= 0
            returns.append(ret)
            lengths.append(n)
            ret, n = 0.0, 0
    assert s["outcomes"] == {"goal": goal, "hit": hit, "timeout": timeout}
    assert s["episodes"] == len(returns) and s["steps"] == len(arrays["action"])
    assert sum(s["return_histogram"]["counts"]) == len(returns)
    assert s["length"]["max"] == max(lengths) and s["mean_return"] == pytest.approx(np.mean(returns), abs=1e-5)
    text = store.format_summary(s)
    assert f"{len(returns)} episodes" in text and "return histogram" in text
    from dtjax import plots

    plots.plot_dataset(*store.episode_index(arrays)[2:], tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_summary_speaks_the_tasks_outcomes(ds, tmp_path, capsys):
    """The summary names the task's outcomes (Memory: a non-success termination is the wrong
    object), with the same counts as goal / hit; the data CLI reads the words from the metadata."""
    import envs
    from dtjax.data.__main__ import main

    arrays, meta = ds
    plain = store.summary(arrays)
    words = store.outcome_words(envs.task_of("MiniGrid-MemoryS7FixedStart-v0"))
    assert words == ("success", "wrong") and store.outcome_words(envs.task_of("MiniGrid-Empty-8x8-v0"))[1] == "failure"
    assert store.outcome_words(envs.task_of("MiniGrid-Dynamic-Obstacles-8x8-v0")) == ("goal", "hit")
    mem = store.summary(arrays, words=words)
    o = plain["outcomes"]
    assert mem["outcomes"] == {"success": o["goal"], "wrong": o["hit"], "timeout": o["timeout"]}
    n = plain["episodes"]
    line = store.format_summary(mem).splitlines()[0]
    assert f"success {o['goal']} ({o['goal'] / n:.1%}), wrong {o['hit']} ({o['hit'] / n:.1%})" in line
    assert "goal" not in store.format_summary(mem) and "hit" not in store.format_summary(mem)
    assert store.format_summary(plain) == store.format_summary(store.summary(arrays, words=("goal", "hit")))
    store.save(tmp_path / "d", arrays, {**meta, "outcome_words": list(words)})
    assert main(["summary", str(tmp_path / "d")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == line


def test_cli_summary_and_errors(tmp_path, ds, capsys):
    from dtjax.data.__main__ import main

    store.save(tmp_path / "d", *ds)
    assert main(["summary", str(tmp_path / "d"), "--plot", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert "50 episodes" in out and (tmp_path / "p.png").exists()
    assert main(["summary", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("dtjax.data: error: dataset not found") and "\n" not in err
    assert main(["collect", "--out", str(tmp_path / "d")]) == 1  # never clobbers, before any work
    with pytest.raises(SystemExit) as e:
        main(["collect", "--out", str(tmp_path / "x"), "--mix", "bogus=1"])
    assert e.value.code == 2 and "unknown field 'bogus'" in capsys.readouterr().err


def test_parse_mix():
    from dtjax.config import ConfigError, DataMixConfig
    from dtjax.data.__main__ import parse_mix

    m = parse_mix("random_frac=0.25,branch_frac=0,ppo_rollouts=false", DataMixConfig())
    assert (m.random_frac, m.branch_frac, m.ppo_rollouts) == (0.25, 0.0, False)
    off = parse_mix("ppo_rollouts=false,final_frac=0.5", DataMixConfig())
    assert parse_mix("ppo_rollouts=True", off).ppo_rollouts and not parse_mix("ppo_rollouts=0", DataMixConfig()).ppo_rollouts
    o = parse_mix("original", DataMixConfig())
    assert o.ppo_rollouts and o.final_frac == o.random_frac == o.branch_frac == o.snapshot_frac == 0
    for bad, msg in (("nope", "unknown --mix preset"), ("envs=many", "envs needs an integer"), ("final_eps=2", "final_eps"),
                     ("ppo_rollouts=flase", "ppo_rollouts needs true or false"), ("ppo_rollouts=", "needs true or false")):
        with pytest.raises(ConfigError, match=msg) as e:
            parse_mix(bad, DataMixConfig())
        assert "\n" not in str(e.value)
    # a typo reaches the user as a one-line argparse error from the command line too
    from dtjax.data.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["collect", "--out", "/nonexistent/never-written", "--mix", "ppo_rollouts=ture"])
    assert e.value.code == 2
