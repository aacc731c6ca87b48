"""dtjax.load: the original PyTorch checkpoints without torch, and every way a file can be wrong."""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest

import dtjax
from dtjax.loader import LoadError, read_pt

ROOT = Path(__file__).resolve().parents[1]
ORIG = ROOT / "checkpoints" / "original"


def test_loaded_configs_and_param_tree():
    cfg, p = dtjax.load(ORIG / "demo_model_overnight_training.pt")
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp) == (1, 128, 2, 64, 256)
    assert (cfg.n_timesteps, cfg.max_timestep, cfg.pos_rows, cfg.obs_mode) == (1, 300, 3, "image")
    assert not cfg.layer_norm and not cfg.attn_only and cfg.time_embedding == "learned"
    # the original counts 209,815 parameters, including its never-trained reward and state heads
    assert sum(x.size for x in jax.tree.leaves(p)) == 209_815 - (128 + 1) - (147 * 128 + 147)
    assert p["W_state"].shape == (147, 128) and p["W_rtg"].shape == (1, 128) and p["W_action"].shape == (4, 128)
    assert p["blocks_0"]["attn"]["W_O"].shape == (2, 64, 128) and p["W_U"].shape == (128, 3)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(p))
    cfg, _ = dtjax.load(str(ORIG / "ReproduceOriginalPostShort.pt"))  # renamed keys, JSON configs
    assert (cfg.pos_rows, cfg.max_timestep, cfg.n_timesteps) == (2, 1000, 1)
    cfg, p = dtjax.load(ORIG / "demo_model_one_hot_overnight.pt")
    assert (cfg.obs_mode, cfg.max_timestep, p["W_state"].shape) == ("one_hot", 50, (980, 128))
    assert cfg.replace(d_model=8).d_model == 8 and dtjax.config.ModelConfig.from_json(cfg.to_json()) == cfg


def test_original_models_come_with_their_env():
    """Plain state dicts get the 8x8 env with max_steps = their time table's max_timestep (300 for
    the raw models; 50 for the one-hot model, trained on max_steps 50 data: original-project.md §7);
    the one with an embedded environment_config gets its max_steps 1000; obs_mode is the model's."""
    from dtjax.config import EnvConfig

    assert dtjax.load(ORIG / "demo_model_overnight_training.pt", with_env=True)[2] == EnvConfig()
    assert dtjax.load(ORIG / "demo_model_one_hot_overnight.pt", with_env=True)[2] == EnvConfig(obs_mode="one_hot", max_steps=50)
    env = dtjax.load(ORIG / "ReproduceOriginalPostShort.pt", with_env=True)[2]
    assert (env.env_id, env.max_steps, env.obs_mode) == ("MiniGrid-Dynamic-Obstacles-8x8-v0", 1000, "image")


def test_state_encoder_mapping():
    """W_state is state_encoder.weight transposed: flatten order (c, x, y) as the original."""
    raw = read_pt(ORIG / "demo_model.pt")
    _, p = dtjax.load(ORIG / "demo_model.pt")
    np.testing.assert_array_equal(p["W_state"], raw["state_encoder.weight"].T)
    np.testing.assert_array_equal(p["W_U"], raw["predict_actions.weight"].T)
    np.testing.assert_array_equal(p["W_rtg"], raw["reward_embedding.0.weight"].T)


# ---------------------------------------------------------------------------------------------
# Bad files
# ---------------------------------------------------------------------------------------------


def _zip_with_pickle(path: Path, payload: bytes, extra: dict | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        for name, data in (extra or {}).items():
            z.writestr(f"archive/{name}", data)
    return path


def _global_pickle(module: str, name: str, arg) -> bytes:
    """A protocol-2 pickle calling module.name(arg), written by hand (nothing is imported)."""
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + pickle.dumps(arg, protocol=2)[2:-1] + b"\x85R."


def test_missing_empty_text_truncated_foreign(tmp_path):
    with pytest.raises(LoadError, match="not found"):
        dtjax.load(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(LoadError, match="empty"):
        dtjax.load(tmp_path / "empty.pt")
    (tmp_path / "text.pt").write_text("hello, I am not a checkpoint\n")
    with pytest.raises(LoadError, match="not a PyTorch checkpoint"):
        dtjax.load(tmp_path / "text.pt")
    raw = (ORIG / "demo_model.pt").read_bytes()
    for cut in (len(raw) // 2, len(raw) - 10, 100):
        (tmp_path / "trunc.pt").write_bytes(raw[:cut])
        with pytest.raises(LoadError, match="truncated"):
            dtjax.load(tmp_path / "trunc.pt")
    with zipfile.ZipFile(tmp_path / "foreign.pt", "w") as z:
        z.writestr("a/readme.txt", "x")
    with pytest.raises(LoadError, match="no data.pkl"):
        dtjax.load(tmp_path / "foreign.pt")
    _zip_with_pickle(tmp_path / "notdt.pt", pickle.dumps({"x": 1}, protocol=2))
    with pytest.raises(LoadError, match="not a Decision Transformer"):
        dtjax.load(tmp_path / "notdt.pt")
    _zip_with_pickle(tmp_path / "list.pt", pickle.dumps([1, 2], protocol=2))
    with pytest.raises(LoadError, match="expected a state dict"):
        dtjax.load(tmp_path / "list.pt")
    _zip_with_pickle(tmp_path / "garbage.pt", b"\x80\x02garbage")
    with pytest.raises(LoadError, match="corrupt"):
        dtjax.load(tmp_path / "garbage.pt")
    # every message is one line
    try:
        dtjax.load(tmp_path / "garbage.pt")
    except LoadError as e:
        assert "\n" not in str(e) and isinstance(e, ValueError)


def test_storage_damage(tmp_path):
    """A well-formed archive whose storages are missing or short is refused, not mis-read."""
    with zipfile.ZipFile(ORIG / "demo_model.pt") as src:
        names = src.namelist()
        storage = next(n for n in names if "/data/" in n and len(src.read(n)) > 1000)
        for mode in ("drop", "short"):
            out = tmp_path / f"{mode}.pt"
            with zipfile.ZipFile(out, "w") as dst:
                for n in names:
                    if n == storage and mode == "drop":
                        continue
                    data = src.read(n)
                    dst.writestr(n, data[: len(data) // 2] if n == storage else data)
            with pytest.raises(LoadError, match="storage"):
                dtjax.load(out)


def test_malicious_pickles_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    for module, name in (("os", "system"), ("posix", "system"), ("builtins", "eval"), ("builtins", "exec"),
                         ("subprocess", "call"), ("torch", "load")):
        path = _zip_with_pickle(tmp_path / "evil.pt", _global_pickle(module, name, f"touch {marker}"))
        with pytest.raises(LoadError, match=f"refusing to unpickle {module}.{name}"):
            dtjax.load(path)
    assert not marker.exists()

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with pytest.raises(LoadError, match="refusing"):
        dtjax.load(_zip_with_pickle(tmp_path / "evil2.pt", pickle.dumps(Evil(), protocol=2)))
    assert not marker.exists()


def _tensor(key: str, numel: int, shape: tuple, stride: tuple) -> bytes:
    """Pickle opcodes for torch._utils._rebuild_tensor_v2(FloatStorage key, 0, shape, stride, False)."""
    p2 = lambda x: pickle.dumps(x, protocol=2)[2:-1]  # noqa: E731  (body of a protocol-2 pickle)
    pid = b"(" + p2("storage") + b"ctorch\nFloatStorage\n" + p2(key) + p2("cpu") + p2(numel) + b"tQ"
    return b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + p2(0) + p2(shape) + p2(stride) + b"\x89tR"


def _state_dict_pickle(sd: dict) -> tuple[bytes, dict]:
    """A torch-format data.pkl and its storages for a dict of float32 arrays, written without torch."""
    out, storages = [b"\x80\x02ccollections\nOrderedDict\n)R("], {}
    for i, (k, v) in enumerate(sd.items()):
        v = np.ascontiguousarray(v, np.float32)
        storages[f"data/{i}"] = v.astype("<f4").tobytes()
        out.append(pickle.dumps(k, protocol=2)[2:-1] + _tensor(str(i), v.size, v.shape, tuple(s // 4 for s in v.strides)))
    return b"".join(out) + b"u.", storages


def test_hand_written_state_dict_round_trips(tmp_path):
    sd = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}
    out = read_pt(_zip_with_pickle(tmp_path / "ok.pt", *_state_dict_pickle(sd)))
    assert isinstance(out, collections.OrderedDict) and list(out) == ["a", "b"]
    np.testing.assert_array_equal(out["a"], sd["a"])


def test_out_of_bounds_tensor_view_is_refused(tmp_path):
    """A size/stride reaching past the storage would make as_strided read foreign memory."""
    stream = b"\x80\x02ccollections\nOrderedDict\n)R" + pickle.dumps("w", 2)[2:-1] + _tensor("0", 4, (1000,), (1,)) + b"s."
    path = _zip_with_pickle(tmp_path / "oob.pt", stream, {"data/0": np.zeros(4, "<f4").tobytes()})
    with pytest.raises(LoadError, match="reaches past its storage"):
        read_pt(path)
    stream = stream.replace(pickle.dumps((1000,), 2)[2:-1], pickle.dumps((2, 2), 2)[2:-1])  # (2,2), stride (1,)
    with pytest.raises(LoadError, match="malformed tensor"):
        read_pt(_zip_with_pickle(tmp_path / "bad.pt", stream, {"data/0": np.zeros(4, "<f4").tobytes()}))


def test_inconsistent_state_dict(tmp_path):
    """A state dict with a wrong-shaped block weight is refused with the parameter named."""
    sd = read_pt(ORIG / "demo_model.pt")
    stream, storages = _state_dict_pickle({**sd, "transformer.blocks.0.mlp.b_in": np.zeros(7, np.float32)})
    with pytest.raises(LoadError, match="b_in"):
        dtjax.load(_zip_with_pickle(tmp_path / "bad.pt", stream, storages))
    stream, storages = _state_dict_pickle(sd)  # the untouched state dict loads through the same writer
    cfg, _ = dtjax.load(_zip_with_pickle(tmp_path / "good.pt", stream, storages))
    assert cfg.d_model == 128


def test_directory_dispatch(tmp_path):
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(LoadError):
        dtjax.load(tmp_path / "emptydir")
