# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A tour of dtjax
#
# Decision Transformers on MiniGrid Dynamic Obstacles, analysed with TransformerLens vocabulary:
# hook names, `run_with_cache`, attention patterns, direct logit attribution (DLA), QK/OV circuits,
# activation and attribution patching, steering, and a sparse autoencoder (SAE). Every cell is
# small and runs on a CPU in seconds; CI runs the whole notebook (`pytest --nbmake notebooks/tour.ipynb`).

# %%
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from IPython.display import Image, display

import dtjax
from dtjax import circuits, hooks, plots, sae, scenarios
from dtjax.config import DataConfig, DataMixConfig, EnvConfig, ModelConfig, PPOConfig, TrainConfig
from dtjax.model import run_with_cache, run_with_hooks
from dtjax.train import train_and_evaluate

ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "checkpoints" / "original").is_dir())


def show(fig):
    """Display a dtjax.plots figure as a PNG (and close it)."""
    display(Image(plots.png_bytes(fig)))


# %% [markdown]
# ## Two models
# The original overnight model (a PyTorch `.pt` file, converted on load): 1 layer, 2 heads, d_model 128,
# tokens (R, s) per timestep. `dtjax.load` returns `(ModelConfig, params)`.

# %%
cfg, params = dtjax.load(ROOT / "checkpoints" / "original" / "demo_model_overnight_training.pt")
display(cfg)

# %% [markdown]
# A dtjax run of our own: `train_and_evaluate` collects PPO data, trains a tiny DT, evaluates it and
# writes a run directory, which `dtjax.load` reads back (here a tiny config on a 5x5 grid, in a temp dir).

# %%
run_root = tempfile.TemporaryDirectory()  # removed when the kernel exits
tiny_cfg = TrainConfig(
    run_name="tiny", checkpoint_dir=run_root.name, env=EnvConfig("MiniGrid-Dynamic-Obstacles-5x5-v0", max_steps=50),
    model=ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=32, max_timestep=49),
    data=DataConfig(ppo=PPOConfig(total_timesteps=2048, num_envs=16, num_steps=32, num_minibatches=4, hidden=16,
                                  update_epochs=1), mix=DataMixConfig(envs=16, final_frac=0.0, random_frac=0.0)),
    batch_size=16, num_steps=40, log_every=20, eval_every=0, ckpt_every=40, warmup_steps=5,
    eval_episodes=4, final_eval_episodes=4, calib_points=3, calib_episodes=4, calib_min_episodes=4)
summary = train_and_evaluate(tiny_cfg, progress=False)
tiny_model_cfg, tiny_params = dtjax.load(summary["run_dir"])
summary["final_eval"]  # closed-loop returns per target RTG (a 40-step model: not a good one)

# %% [markdown]
# ## Inputs: hand-made scenarios
# `scenarios.scenario_inputs` builds `circuits.Inputs` (obs, rtg, timesteps) for named states; here at target RTG 0.9.

# %%
names = ["clear_ahead", "ball_ahead", "wall_ahead", "goal_ahead"]
names, inp = scenarios.scenario_inputs(names, rtg=0.9)
show(plots.views([scenarios.render_view(o) for o in np.asarray(inp.obs[:, -1])], names))

# %% [markdown]
# ## Run with cache
# `run_with_cache` returns the logits and a `{hook name: activation}` dict, TransformerLens names and shapes.

# %%
logits, cache = run_with_cache(params, cfg, inp.obs, inp.rtg, inp.timesteps)
print({name: cache[name].shape for name in ["hook_embed", "blocks.0.attn.hook_pattern", "blocks.0.hook_resid_post"]})
{n: p.round(2) for n, p in zip(names, np.asarray(jax.nn.softmax(logits[:, -1])))}  # P(left, right, forward)

# %% [markdown]
# The same API on the tiny run's model (any shape: here K = 1, d_model 16).

# %%
_, tiny_inp = scenarios.scenario_inputs(names, env=tiny_cfg.env)
_, tiny_cache = run_with_cache(tiny_params, tiny_model_cfg, tiny_inp.obs, tiny_inp.rtg, tiny_inp.timesteps)
print(tiny_cache["blocks.0.hook_resid_post"].shape)  # (batch, token, d_model)

# %% [markdown]
# ## Attention patterns
# `blocks.0.attn.hook_pattern` (layer, batch, head, query, key): how much the state token attends to the RTG token.

# %%
show(plots.attention(circuits.attention_patterns(params, cfg, inp), names, ["R_t", "s_t"]))

# %% [markdown]
# ## Direct logit attribution
# Each component's direct contribution to the logit difference forward - right at the state token (sums to it).

# %%
labels, dla = circuits.direct_logit_attribution(params, cfg, cache, "forward-right")
show(plots.grouped_bars(np.asarray(dla), labels, names, "DLA: forward - right"))

# %% [markdown]
# ## QK and OV circuits
# QK: how each observation cell of the state (query) raises the score to the RTG key, per head (`W_state W_QK w_R`).

# %%
show(plots.maps_grid(circuits.qk_state_rtg(params, cfg, 0), ["L0H0", "L0H1"], ["object", "colour", "state"],
                     "QK: state query -> RTG key"))

# %% [markdown]
# OV: what each head writes to forward - right when it attends to an observation feature (`W_state W_OV W_U`).

# %%
ov = circuits.ov_state(params, cfg, 0) @ circuits.action_vector("forward-right")
show(plots.maps_grid(ov, ["L0H0", "L0H1"], ["object", "colour", "state"], "OV: state -> forward - right"))

# %% [markdown]
# ## Activation patching
# Clean: 32 rollout states at RTG 0.9; corrupted: the same states at RTG -1. Restore one hook (position, head)
# from the clean run into the corrupted run: the normalised effect on forward - right (1 = all of it).

# %%
states = scenarios.sample_inputs(jax.random.PRNGKey(0), 2048, n_envs=64)  # random-policy rollouts (the SAE's too)
clean, corrupted = scenarios.rtg_pair(states.take(jnp.arange(32)), rtg=0.9, corrupted_rtg=-1.0)
hooks_patched = ["blocks.0.attn.hook_z", "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post"]
actp = circuits.activation_patching(params, cfg, clean, corrupted, "forward-right", names=hooks_patched)


def rows(effects):
    """(row labels, (row, position) matrix): one row per hook, or per head of a hook with heads."""
    out = {}
    for name, e in effects.items():
        e = np.asarray(e)
        out.update({f"{name} H{h}": e[:, h] for h in range(e.shape[1])} if e.ndim == 2 else {name: e})
    return list(out), np.stack(list(out.values()))


patch_rows, patch_matrix = rows(actp["effects"])
show(plots.heatmap(patch_matrix, patch_rows, ["R_t", "s_t"]))

# %% [markdown]
# ## Attribution patching
# The same effects estimated from one forward and one backward pass (a linear approximation), against the real ones.

# %%
atp = circuits.attribution_patching(params, cfg, clean, corrupted, "forward-right", names=hooks_patched)
x, y = patch_matrix.ravel(), rows(atp["effects"])[1].ravel()
kinds = np.repeat(["residual" if "resid" in r else "component" for r in patch_rows], patch_matrix.shape[1])
show(plots.atp_scatter({"rtg": {"actp": x, "atp": y, "ig": None, "kinds": kinds,
                                "pearson_atp": float(np.corrcoef(x, y)[0, 1])}}))

# %% [markdown]
# ## Steering
# Add `coeff * (a_corrupted - a_clean)` at `blocks.0.hook_resid_post`: open loop on the clean states, then in
# closed-loop episodes (every step of every episode steered; same episodes for every coefficient).

# %%
hook = "blocks.0.hook_resid_post"
coeffs = jnp.linspace(0.0, 1.5, 7)
steer = circuits.steer_logits(params, cfg, clean, corrupted, hook, coeffs)
vector = circuits.steering_vector(params, cfg, clean, corrupted, hook)
env, env_params = EnvConfig(max_steps=100).make()  # 8x8, shorter episodes for the tour
closed = circuits.steer_returns(params, cfg, env, env_params, jax.random.PRNGKey(1), [0.9], 8, vector, hook,
                                jnp.array([0.0, 1.0]))
show(plots.steering(np.asarray(coeffs), np.asarray(steer["metric"]), float(steer["clean"]), float(steer["corrupted"]),
                    np.asarray(steer["probs"][:, :, 2].mean(1)), "forward - right",
                    {"mean return (RTG 0.9)": (np.asarray(closed["coeff"]), np.asarray(closed["mean_return"][:, 0]))}))

# %% [markdown]
# Interventions are data: a `hooks.Replace` in a dict, passed into the jitted forward. Zero-ablating head 1:

# %%
ablate = hooks.zero_ablation("blocks.0.attn.hook_z", head=1)
print(ablate)
np.round(jax.nn.softmax(run_with_hooks(params, cfg, inp.obs, inp.rtg, inp.timesteps, interventions=ablate)[:, -1]), 2)

# %% [markdown]
# ## A sparse autoencoder and its top latents
# Harvest `blocks.0.hook_resid_post` at the state token over the 2048 rollout states, train a TopK SAE
# (256 latents, k = 8) for 200 steps, and show the most frequent latents' top-activating observations.

# %%
acts = states
_, acts_cache = run_with_cache(params, cfg, acts.obs, acts.rtg, acts.timesteps, names=[hook])
X = acts_cache[hook][:, -1]  # (tokens, d_model): the state token
sae_cfg = sae.SAEConfig(hook=hook, token="state", n_latents=256, k=8, d_in=cfg.d_model, d_out=cfg.d_model)
variables, history, _ = sae.train_dictionary(sae_cfg, sae.SAETrainConfig(batch_size=256, num_steps=200, log_every=100,
                                                                         lr=3e-3), X, progress=False)
history[-1]  # mse: fraction of variance unexplained; l0: active latents per token

# %%
d = sae.Dictionary(sae_cfg, variables, {})
idx, val = sae.active_latents(d, params, cfg, acts.obs, acts.rtg, acts.timesteps, top=sae_cfg.k)
Z = np.zeros((len(idx), sae_cfg.n_latents), np.float32)
np.put_along_axis(Z, idx, val, 1)  # (tokens, latents), k nonzero per token
top = np.argsort(-(Z > 0).mean(0))[:4]  # the most frequent latents
best = np.argsort(-Z[:, top], axis=0)[:5].T  # (latent, 5) top-activating tokens
views = np.stack([[scenarios.render_view(np.asarray(acts.obs[i, -1])) for i in row] for row in best])
show(plots.latent_cards(views, [[f"{Z[i, l]:.2f}" for i in row] for l, row in zip(top, best)],
                        [f"latent {l}" for l in top], None, ["left", "right", "forward"]))
