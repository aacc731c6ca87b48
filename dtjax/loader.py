"""The original project's PyTorch `.pt` files, read without PyTorch; and ``LoadError``.

``dtjax.run.Run.open`` is the one reader of runs and `.pt` files (``dtjax.load`` is the one-liner
over it); this module decodes the `.pt` format for it.

A `.pt` file is a zip archive: `<name>/data.pkl` (a pickle of the state dict, whose tensors refer
to storages by key) and `<name>/data/<key>` (raw little-endian storage bytes). We read it
without PyTorch, with an unpickler that can build only what a state dict needs (ordered dicts,
tensors, storages): any other global in the pickle is refused, so no pickled code runs.

Supported originals (DecisionTransformerInterpretability): plain state dicts
(`demo_model*.pt`), and dicts with `model_state_dict` plus JSON configs
(`ReproduceOriginalPostShort.pt`, whose keys are renamed; `MemoryGatedMLP.pt`, the MemoryDT
variant: 2 layers, LayerNorm, gated MLP, 7 actions, 9 timesteps). The architecture is inferred
from shapes as the original's `load_decision_transformer` did: n_timesteps K from the W_pos rows
(n_ctx = 3K - 1 or 3K: R1 s1 a1 ... RK sK [aK]), a gated MLP from `mlp.W_gate`, LayerNorm from
`ln1.w`. A model with K > 1 gets ``pad_rtg="initial"``: the original evaluated (and its app ran)
such models on windows whose padded timesteps hold the episode's initial RTG (with zero
observations, timestep 0 and the padding action, as dtjax pads), so ``dtjax.evaluate`` then
reproduces the original's behaviour (docs/architecture.md, "Padding").

The env a `.pt` model belongs to (`dtjax.load(path, with_env=True)`): its embedded
`environment_config` (env_id, max_steps) if it has one, else MiniGrid-Dynamic-Obstacles-8x8-v0 with max_steps = the model's max_timestep (its learned time
table has a row per timestep of the data it was trained on, as the original's calibration script
assumed: 300 for the raw models, 50 for the one-hot model), or 300 for a linear time embedding;
obs_mode is always the model's.
"""

from __future__ import annotations

import collections
import json
import pickle
import zipfile
from pathlib import Path

import jax
import numpy as np

from dtjax.config import ConfigError, EnvConfig, ModelConfig
from dtjax.model import init_params


class LoadError(ValueError):
    """A checkpoint that is missing, truncated, foreign or unsafe; the message is one line."""


_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16, "LongStorage": np.int64,
    "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "BFloat16Storage": None,
}


class _StorageType:
    def __init__(self, name: str):
        if _DTYPES.get(name) is None:
            raise LoadError(f"unsupported tensor storage type torch.{name}")
        self.dtype = np.dtype(_DTYPES[name])


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    if not isinstance(storage, np.ndarray):
        raise LoadError(f"tensor without a storage ({type(storage).__name__})")
    size, stride, offset = tuple(int(n) for n in size), tuple(int(n) for n in stride), int(offset)
    if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0:
        raise LoadError(f"malformed tensor (size {size}, stride {stride}, offset {offset})")
    # as_strided trusts its arguments: check the view stays inside the storage.
    extent = offset + (sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0)
    if extent > storage.size:
        raise LoadError(f"tensor of size {size} reaches past its storage ({extent} > {storage.size} elements)")
    itemsize = storage.dtype.itemsize
    if not size:
        return np.array(storage[offset], dtype=storage.dtype)
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    ).copy()


def _rebuild_parameter(data, requires_grad=False, hooks=None):
    return data


class _SafeUnpickler(pickle.Unpickler):
    """Builds ordered dicts, tensors and storages; refuses every other global."""

    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, f, zf: zipfile.ZipFile, prefix: str, byteorder: str = "<"):
        super().__init__(f)
        self.zf, self.prefix, self.byteorder = zf, prefix, byteorder

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        raise LoadError(f"refusing to unpickle {module}.{name}: not part of a plain state dict")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel)
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise LoadError(f"unexpected persistent id in pickle: {str(pid)[:60]}")
        stype, key, numel = pid[1], pid[2], pid[4]
        try:
            raw = self.zf.read(f"{self.prefix}/data/{key}")
        except KeyError as e:
            raise LoadError(f"storage {key} missing from the archive") from e
        arr = np.frombuffer(raw, dtype=stype.dtype.newbyteorder(self.byteorder))
        if arr.size < numel:
            raise LoadError(f"storage {key} is truncated ({arr.size} of {numel} elements)")
        return arr.astype(stype.dtype)


def read_pt(path: str | Path) -> dict:
    """Unpickle a PyTorch zip checkpoint into nested dicts of numpy arrays, safely."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise LoadError(f"{path} is not a PyTorch checkpoint (not a zip archive, or truncated)") from e
    except OSError as e:
        raise LoadError(f"cannot read {path}: {e.strerror or e}") from e
    with zf:
        pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkls:
            raise LoadError(f"{path} is a zip archive but not a PyTorch checkpoint (no data.pkl)")
        prefix = pkls[0].rsplit("/", 1)[0] if "/" in pkls[0] else ""
        try:
            order = zf.read(f"{prefix}/byteorder").strip() if f"{prefix}/byteorder" in zf.namelist() else b"little"
            with zf.open(pkls[0]) as f:
                obj = _SafeUnpickler(f, zf, prefix, ">" if order == b"big" else "<").load()
        except LoadError:
            raise
        except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError, OSError, IndexError,
                KeyError, AttributeError, RecursionError, MemoryError) as e:
            raise LoadError(f"{path}: corrupt checkpoint ({type(e).__name__}: {str(e)[:100]})") from e
    if not isinstance(obj, dict):
        raise LoadError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj


# Key renames of the later original code (ReproduceOriginalPostShort.pt) -> the 2023-02 names.
_RENAMES = {"state_embedding.": "state_encoder.", "action_predictor.": "predict_actions.",
            "reward_predictor.": "predict_rewards.", "state_predictor.": "predict_states."}


def _original_to_dtjax(sd: dict, path: Path) -> tuple[ModelConfig, dict]:
    sd = {next((k.replace(a, b, 1) for a, b in _RENAMES.items() if k.startswith(a)), k): v for k, v in sd.items()}
    need = ["state_encoder.weight", "reward_embedding.0.weight", "time_embedding.weight", "transformer.pos_embed.W_pos",
            "predict_actions.weight", "predict_actions.bias"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise LoadError(f"{path}: not a Decision Transformer state dict (missing {', '.join(missing)})")
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("transformer.blocks.")})
    if not layers:
        raise LoadError(f"{path}: no transformer blocks in the state dict")
    b0 = "transformer.blocks.0."
    W_state = sd["state_encoder.weight"].T
    obs_mode = {147: "image", 980: "one_hot"}.get(W_state.shape[0])
    if obs_mode is None:
        raise LoadError(f"{path}: unsupported state encoder input size {W_state.shape[0]} (expected 147 or 980)")
    time_w = sd["time_embedding.weight"]
    linear_time = time_w.shape[1] == 1
    n_heads, d_model, d_head = sd[b0 + "attn.W_Q"].shape
    layer_norm = (b0 + "ln1.w") in sd
    attn_only = (b0 + "mlp.W_in") not in sd
    gated = (b0 + "mlp.W_gate") in sd
    n_ctx = sd["transformer.pos_embed.W_pos"].shape[0]
    n_timesteps = max(1, (n_ctx + 1) // 3)  # 2 (R, s) or 3 (R, s, a) -> 1; 3K - 1 (last action dropped) -> K
    try:
        cfg = ModelConfig(
            n_layers=len(layers), d_model=d_model, n_heads=n_heads, d_head=d_head,
            d_mlp=0 if attn_only else sd[b0 + "mlp.W_in"].shape[1], n_timesteps=n_timesteps,
            max_timestep=(time_w.shape[0] - 1) if not linear_time else 1000, layer_norm=layer_norm, attn_only=attn_only,
            mlp="gated" if gated else "standard", obs_mode=obs_mode, time_embedding="linear" if linear_time else "learned",
            n_actions=sd["predict_actions.weight"].shape[0], n_ctx=n_ctx,
            pad_rtg="initial" if n_timesteps > 1 else "zero",  # the original's evaluation windows (module docstring)
            init="transformer_lens",  # how the original initialised them, if the config is reused
        )
    except ConfigError as e:
        raise LoadError(f"{path}: {e}") from e
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    params = {
        "W_state": f32(W_state),
        "W_rtg": f32(sd["reward_embedding.0.weight"].T),
        "W_action": f32(sd["action_embedding.0.weight"]) if "action_embedding.0.weight" in sd
        else np.zeros((cfg.n_actions + 1, d_model), np.float32),
        "W_time": f32(time_w.T if linear_time else time_w),
        "W_pos": f32(sd["transformer.pos_embed.W_pos"]),
        "W_U": f32(sd["predict_actions.weight"].T),
        "b_U": f32(sd["predict_actions.bias"]),
    }
    for layer in layers:
        pre = f"transformer.blocks.{layer}."
        block = {"attn": {n: f32(sd[pre + "attn." + n]) for n in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")}}
        if not attn_only:
            block["mlp"] = {n: f32(sd[pre + "mlp." + n]) for n in ("W_in", "b_in", "W_out", "b_out")
                            + (("W_gate",) if gated else ())}
        if layer_norm:
            block["ln1"] = {"w": f32(sd[pre + "ln1.w"]), "b": f32(sd[pre + "ln1.b"])}
            if not attn_only:
                block["ln2"] = {"w": f32(sd[pre + "ln2.w"]), "b": f32(sd[pre + "ln2.b"])}
        params[f"blocks_{layer}"] = block
    if layer_norm and "transformer.ln_final.w" in sd:
        params["ln_final"] = {"w": f32(sd["transformer.ln_final.w"]), "b": f32(sd["transformer.ln_final.b"])}
    _check_shapes(cfg, params, path)
    return cfg, params


def _check_shapes(cfg: ModelConfig, params: dict, path) -> None:
    """Every array has the shape `dtjax.model.init_params` gives this config (docs/architecture.md)."""
    want = jax.eval_shape(lambda: init_params(jax.random.PRNGKey(0), cfg))
    got = jax.tree_util.tree_flatten_with_path(params)[0]
    want_flat = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_flatten_with_path(want)[0]}
    got_flat = {jax.tree_util.keystr(k): np.shape(v) for k, v in got}
    if want_flat.keys() != got_flat.keys():
        diff = sorted(want_flat.keys() ^ got_flat.keys())
        raise LoadError(f"{path}: inconsistent state dict (parameter {diff[0]} missing or unexpected)")
    for k, shape in want_flat.items():
        if got_flat[k] != shape:
            raise LoadError(f"{path}: parameter {k} has shape {got_flat[k]}, expected {shape} for the inferred config")


def load_original(path: str | Path) -> tuple[ModelConfig, dict, dict]:
    """(cfg, params, extra) from an original `.pt`; ``extra`` holds any embedded JSON configs."""
    path = Path(path)
    obj = read_pt(path)
    extra = {}
    if "model_state_dict" in obj:
        for k in ("offline_config", "environment_config", "model_config"):
            if isinstance(obj.get(k), str):
                try:
                    extra[k] = json.loads(obj[k])
                except json.JSONDecodeError:
                    extra[k] = obj[k]
        obj = obj["model_state_dict"]
    if not all(isinstance(k, str) for k in obj):
        raise LoadError(f"{path}: not a Decision Transformer state dict (non-string keys)")
    try:
        cfg, params = _original_to_dtjax(obj, path)
    except (AttributeError, TypeError, IndexError, ValueError, KeyError) as e:
        if isinstance(e, LoadError):
            raise
        raise LoadError(f"{path}: malformed Decision Transformer state dict ({type(e).__name__}: {str(e)[:100]})") from e
    if "model_config" in extra and isinstance(extra["model_config"], dict):
        n_ctx = extra["model_config"].get("n_ctx")
        if n_ctx and n_ctx != cfg.pos_rows:
            raise LoadError(f"{path}: embedded model_config n_ctx {n_ctx} disagrees with W_pos rows {cfg.pos_rows}")
    return cfg, params, extra


def env_of_original(cfg: ModelConfig, extra: dict) -> EnvConfig:
    """The env of an original `.pt` model: its embedded environment_config, else the 8x8 env with
    max_steps = ``cfg.max_timestep`` (learned time table) or 300 (linear time)."""
    default = EnvConfig(obs_mode=cfg.obs_mode, max_steps=cfg.max_timestep if cfg.time_embedding == "learned" else 300)
    embedded = extra.get("environment_config") if isinstance(extra.get("environment_config"), dict) else {}
    fields = {k: embedded[k] for k in ("env_id", "max_steps") if k in embedded}
    if not fields:
        return default
    try:
        return EnvConfig(**fields, obs_mode=cfg.obs_mode)
    except ConfigError:
        return default
