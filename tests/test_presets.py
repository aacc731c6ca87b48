"""Task presets on train.py's command line (dtjax.cli.preset_config): the env's family sets the
base config, a --config file is laid over it, flags override both; families without presets get
dtjax's defaults."""

import json

import envs
from dtjax.cli import parse_train_args, preset_collect_config, preset_config
from dtjax.config import CollectConfig, TrainConfig
from dtjax.data import __main__ as data_cli

MEMORY = "MiniGrid-MemoryS7FixedStart-v0"


def test_memory_presets_are_the_base():
    cfg = parse_train_args(["--env.env_id", MEMORY]).cfg
    presets = envs.task_of(MEMORY).presets
    assert cfg == preset_config(MEMORY)
    assert cfg.model.n_timesteps == 9 and cfg.model.n_actions == 7 and cfg.model.layer_norm
    assert cfg.env.obs_mode == cfg.model.obs_mode == "one_hot" and cfg.env.max_steps == 50
    assert cfg.data.ppo.arch == "gru" and cfg.data.mix.tempered_frac == presets["data"]["mix"]["tempered_frac"]
    assert cfg.data.ppo.population > 1 and cfg.data.window_end  # best-of-N PPO; end-aligned windows
    assert not TrainConfig().data.window_end and TrainConfig().data.ppo.population == 1  # the defaults stay as they were
    assert cfg.num_steps == presets["num_steps"] and cfg.eval_rtgs == tuple(presets["eval_rtgs"])
    assert cfg.lr == TrainConfig().lr  # what the presets leave alone keeps its default


def test_flags_and_config_file_override_presets(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"env": {"env_id": MEMORY}, "model": {"n_timesteps": 5}, "lr": 3e-4}))
    cfg = parse_train_args(["--config", str(path), "--data.ppo.total_timesteps", "100000"]).cfg
    assert cfg.env.env_id == MEMORY and cfg.model.n_timesteps == 5 and cfg.lr == 3e-4  # the file over the presets
    assert cfg.data.ppo.total_timesteps == 100_000 and cfg.data.ppo.arch == "gru"  # a flag over both
    assert cfg.model.layer_norm  # the presets still fill what the file does not set


def test_families_without_presets_get_the_defaults():
    assert parse_train_args([]).cfg == TrainConfig()
    cfg = parse_train_args(["--env.env_id", "MiniGrid-Empty-8x8-v0"]).cfg
    assert cfg == TrainConfig().replace(env=TrainConfig().env.replace(env_id="MiniGrid-Empty-8x8-v0"))


def test_collect_starts_from_the_presets_as_train_does():
    """``python -m dtjax.data collect --env ENV`` collects what ``train.py --env.env_id ENV`` would
    (Memory: the recurrent PPO's data at max_steps 50); flags override; other families keep the
    defaults."""
    train = parse_train_args(["--env.env_id", MEMORY]).cfg
    for flag in ("--env", "--env.env_id"):
        cfg = data_cli.collect_config(data_cli.parse_args(["collect", "--out", "d", flag, MEMORY]))
        assert cfg == preset_collect_config(MEMORY) and (cfg.env, cfg.seed, cfg.data) == (train.env, train.seed, train.data)
    assert cfg.data.ppo.arch == "gru" and cfg.env.max_steps == 50 and cfg.data.mix.tempered_frac > 0
    cfg = data_cli.collect_config(data_cli.parse_args(["collect", "--out", "d", "--env", MEMORY, "--env.max_steps", "60",
                                                       "--mix", "tempered_frac=0.5"]))
    assert cfg.env.max_steps == 60 and cfg.data.mix.tempered_frac == 0.5 and cfg.data.ppo.arch == "gru"
    assert data_cli.collect_config(data_cli.parse_args(["collect", "--out", "d"])) == CollectConfig()
