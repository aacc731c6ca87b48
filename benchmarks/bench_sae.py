"""SAE quality targets and training speed on a trained DT, with a PyTorch TopK SAE as the speed peer.

    python benchmarks/bench_sae.py [--ckpt checkpoints/default] [--dataset DIR] [--hook blocks.0.hook_resid_post]
        [--token state] [--latents 1024] [--k 16] [--episodes 500] [--peer_python /path/to/python-with-torch]
        [--peer_steps 200] [--json out.json]

1. Harvests the training activations and trains a TopK SAE with SAETrainConfig's defaults (the
   ``python -m dtjax.sae train`` job); harvest, compile and training times apart.
2. Measures the issue's targets on held-out tokens and prints each with PASS / FAIL: explained
   variance >= 0.9 at L0 <= 16, dead latents < 10% (over 262,144 held-out tokens), CE recovered
   >= 0.9 (against zero- and mean-ablation), closed-loop mean return at RTG -1 / +1 within 0.05
   of the model's own (same episodes), and training under 2 minutes.
3. With ``--peer_python`` (a Python with torch; default ``$DTJAX_PEER_PYTHON`` when set),
   trains the same dictionary the way the PyTorch libraries do (dense encoder, ``torch.topk``,
   scatter, dense decoder, Adam, unit-norm decoder; no AuxK) on the same activations, and prints
   its steps/s beside ours (warm-up steps excluded) and the ratio. Our step includes AuxK.

Timings on a shared machine are noisy: the script prints the load average next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from dtjax import sae
from dtjax.sae import activations as acts
from dtjax.sae import metrics
from dtjax.sae.train import KEY_EVAL, KEY_HARVEST, KEY_ROLLOUT, SAETrainConfig, train_dictionary

PEER = r'''
import sys, time, numpy as np, torch
torch.manual_seed(0)
x = torch.from_numpy(np.load(sys.argv[1]))
L, k, B, steps, warm, lr = (int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]),
                            float(sys.argv[7]))
torch.set_num_threads(int(sys.argv[8]))
mu = x.mean(0); x = (x - mu) * (x.shape[1] / ((x - mu) ** 2).sum(1).mean()).sqrt()
W_dec = torch.randn(L, x.shape[1]); W_dec /= W_dec.norm(dim=1, keepdim=True); W_dec.requires_grad_()
W_enc = W_dec.detach().T.clone().requires_grad_(); b_enc = torch.zeros(L, requires_grad=True)
b_dec = torch.zeros(x.shape[1], requires_grad=True)
opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=lr)
def step():
    idx = torch.randint(0, x.shape[0], (B,)); xb = x[idx]
    pre = xb @ W_enc + b_enc
    v, i = pre.topk(k, dim=-1)
    z = torch.zeros_like(pre).scatter_(-1, i, torch.relu(v))
    loss = ((z @ W_dec + b_dec - xb) ** 2).sum(-1).mean() / x.shape[1]
    opt.zero_grad(); loss.backward()
    with torch.no_grad():
        W_dec.grad -= (W_dec.grad * W_dec).sum(-1, keepdim=True) * W_dec
    opt.step()
    with torch.no_grad():
        W_dec.div_(W_dec.norm(dim=1, keepdim=True))
    return loss
for _ in range(warm): step()
t = time.perf_counter()
for _ in range(steps): loss = step()
dt = time.perf_counter() - t
print(steps / dt, float(loss.detach()))
'''


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default="checkpoints/default")
    p.add_argument("--dataset", default=None)
    p.add_argument("--hook", default="blocks.0.hook_resid_post")
    p.add_argument("--token", default="state")
    p.add_argument("--latents", type=int, default=1024)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--episodes", type=int, default=500)
    p.add_argument("--peer_python", default=os.environ.get("DTJAX_PEER_PYTHON", ""))
    p.add_argument("--peer_steps", type=int, default=200)
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args()

    print(f"devices: {jax.devices()}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    ctx = sae.open_context(args.ckpt, args.dataset)
    cfg = sae.make_config(ctx, args.hook, args.token, "topk", args.latents, args.k)
    tcfg = SAETrainConfig()
    root = jax.random.PRNGKey(tcfg.seed)

    # TRAIN (the CLI's job without saving)
    t0 = time.perf_counter()
    h = acts.harvest(ctx.params, ctx.model_cfg, cfg, ctx.data, ctx.env, ctx.sample_cfg, jax.random.fold_in(root, KEY_HARVEST),
                     tcfg.n_tokens)
    x, _, _ = acts.flat_tokens(h, cfg.token)
    jax.block_until_ready(x)
    t_harvest = time.perf_counter() - t0
    variables, history, sec = train_dictionary(cfg, tcfg, x, progress=False)
    print(f"trained {cfg.n_latents} latents, k={cfg.k}, {tcfg.num_steps} steps x {tcfg.batch_size} tokens: harvest "
          f"{t_harvest:.1f} s, compile {sec['compile']:.1f} s, train {sec['train']:.1f} s wall / {sec['train_cpu']:.1f} s CPU "
          f"({sec['steps_per_s']:.1f} steps/s, "
          f"{sec['steps_per_s'] * tcfg.batch_size:,.0f} tokens/s); load average {os.getloadavg()[0]:.1f}", flush=True)

    # TARGETS on held-out tokens
    held = acts.harvest(ctx.params, ctx.model_cfg, cfg, ctx.data, ctx.env, ctx.sample_cfg, jax.random.fold_in(root, KEY_EVAL),
                        262_144, keep_windows=True)
    xh, _, _ = acts.flat_tokens(held, cfg.token)
    rec = metrics.reconstruction(variables, cfg, xh)
    win = jax.tree.map(lambda a: a[:32_768], held["windows"])
    down = metrics.downstream(ctx.params, ctx.model_cfg, cfg, variables, win, xh.mean(0))
    cl = metrics.closed_loop(ctx.params, ctx.model_cfg, cfg, variables, ctx.env, ctx.env_params,
                             jax.random.fold_in(root, KEY_ROLLOUT), (-1.0, 1.0), args.episodes)
    train_s = t_harvest + sec["compile"] + sec["train"]
    checks = [
        ("explained variance >= 0.9", rec["explained_variance"], rec["explained_variance"] >= 0.9),
        ("L0 <= 16", rec["l0"], rec["l0"] <= 16),
        ("dead latents < 10% (262k held-out tokens)", rec["dead_frac"], rec["dead_frac"] < 0.1),
        ("CE recovered >= 0.9 vs zero-ablation", down["ce_loss_score_zero"], down["ce_loss_score_zero"] >= 0.9),
        ("CE recovered >= 0.9 vs mean-ablation", down["ce_loss_score_mean"], down["ce_loss_score_mean"] >= 0.9),
        ("KL recovered vs zero-ablation (info)", down["kl_div_score_zero"], True),
    ]
    for r, m, s in zip(cl["target_rtg"], cl["model_return"], cl["sae_return"]):
        checks.append((f"closed loop RTG {r:+g}: |{s:.3f} - {m:.3f}| <= 0.05", abs(s - m), abs(s - m) <= 0.05))
    checks.append(("harvest + compile + train < 120 s (this machine, now)", train_s, train_s < 120))
    print(f"\n{'target':58s} {'value':>9s}  result")
    for name, value, ok in checks:
        print(f"{name:58s} {value:9.4f}  {'PASS' if ok else 'FAIL'}")

    # PEER: the same dictionary in PyTorch on the same activations
    out = {"train_seconds": {"harvest": t_harvest, **sec}, "reconstruction": {k: v for k, v in rec.items() if k != "density"},
           "downstream": down, "closed_loop": cl, "checks": {n: [float(v), bool(ok)] for n, v, ok in checks}}
    if args.peer_python:
        with tempfile.TemporaryDirectory() as tmp:
            np.save(Path(tmp) / "x.npy", np.asarray(x))
            (Path(tmp) / "peer.py").write_text(PEER)
            warm = 20
            r = subprocess.run([args.peer_python, str(Path(tmp) / "peer.py"), str(Path(tmp) / "x.npy"), str(cfg.n_latents),
                                str(cfg.k), str(tcfg.batch_size), str(args.peer_steps), str(warm), str(tcfg.lr),
                                str(os.cpu_count())], capture_output=True, text=True)
        if r.returncode == 0:
            peer_sps = float(r.stdout.split()[0])
            print(f"\n{'training steps/s (batch ' + str(tcfg.batch_size) + ')':40s} {'dtjax':>9s} {'torch':>9s} {'ratio':>7s}")
            print(f"{cfg.n_latents} latents, k={cfg.k}, d={cfg.d_in}{'':22s} {sec['steps_per_s']:9.1f} {peer_sps:9.1f} "
                  f"{sec['steps_per_s'] / peer_sps:6.2f}x   (load average {os.getloadavg()[0]:.1f})")
            out["peer_steps_per_s"] = peer_sps
        else:
            print(f"peer failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float))
    return 0 if all(ok for _, _, ok in checks[:-1]) else 1


if __name__ == "__main__":
    sys.exit(main())
