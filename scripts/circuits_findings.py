"""Run dtjax.circuits' analyses past the original on one trained DT and write numbers and figures.

    python scripts/circuits_findings.py --checkpoint PATH --name NAME [--out docs/findings] [--batch 128]

Pairs (clean, corrupted) of real states:
- K = 1 models: states from random-policy rollouts (``scenarios.sample_inputs``); K > 1 models:
  fully real K-step windows of the checkpoint's own dataset (``<run>/dataset``), the current
  action slot left out (3K - 1 tokens), as in evaluation.
- "rtg": the same states at RTG 0.9 (clean) and -1 (corrupted);
- "ball": states with a ball in the cell ahead (clean) and the same with that cell emptied
  (corrupted), at RTG 0.9: the obstacle-avoidance circuit;
- "history" (K > 1 only): the same current step, the earlier steps' observations and actions
  taken from other windows (timesteps and RTG kept); "history_time": their timesteps too.

For each: activation vs attribution patching (and integrated gradients) on every hook, why AtP
misses what it misses (attention saturation, ReLU gating), EAP, ACDC at several thresholds (the
figure shows the largest tau whose circuit keeps faithfulness within 0.1 of 1), pruning by EAP,
path patching from every sender, the logit lens;
for the RTG pair also steering with the RTG difference (logits and closed-loop returns); for
n_layers >= 2 composition scores. Writes ``<out>/circuits_<name>.json`` and PNG figures
``<out>/circuits_<name>_*.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import dtjax
import envs
from dtjax import analysis, plots, scenarios
from dtjax import circuits as C
from dtjax.circuits import graph as G
from dtjax.data import dataset, store
from dtjax.model import init_params

ROOT = Path(__file__).resolve().parents[1]

TAUS = (0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0)


def real_states(cfg, run_dir: Path, n: int, key) -> C.Inputs:
    """``n`` clean inputs at RTG 0.9: single states (K = 1) or real K-step windows (K > 1)."""
    if cfg.n_timesteps == 1:
        return scenarios.sample_inputs(key, n, rtg=0.9, obs_mode=cfg.obs_mode)
    arrays, _ = store.load(run_dir / "dataset")
    data = dataset.device_arrays(arrays)
    env, _ = envs.make(scenarios.ENV_ID, obs_mode=cfg.obs_mode)
    sc = dataset.SampleConfig(cfg.n_timesteps, cfg.max_timestep, prob_go_from_end=0.0)
    w = dataset.sample_batch(key, data, 8 * n, env=env, cfg=sc)
    keep = np.flatnonzero(np.asarray(w["mask"]).all(1))[:n]
    take = lambda x: jnp.asarray(np.asarray(x)[keep])  # noqa: E731
    inp = C.Inputs(obs=take(w["obs"]), rtg=take(w["rtg"]), timesteps=take(w["timesteps"]),
                   actions=take(w["actions"])[:, :-1])
    return inp.with_rtg(jnp.full((inp.batch,), 0.9))


def pairs(cfg, run_dir, n) -> dict:
    """The pairs, all of the same batch size (so that every analysis compiles once per model)."""
    base = real_states(cfg, run_dir, 24 * n, jax.random.PRNGKey(0))
    n_ball = int(np.asarray(scenarios.front_is_ball(base.obs[:, -1])).sum())
    n = min(n, n_ball, base.batch // 2)
    out = {"rtg": scenarios.rtg_pair(base.take(np.arange(n)), 0.9, -1.0), "ball": scenarios.ball_pair(base, n, 0.9)}
    if cfg.n_timesteps > 1:
        a, b = base.take(np.arange(n)), base.take(np.arange(n, 2 * n))
        hist = a.replace(obs=b.obs.at[:, -1].set(a.obs[:, -1]), actions=b.actions)  # same timesteps and RTG
        out["history"] = (a, hist)
        out["history_time"] = (a, hist.replace(timesteps=b.timesteps.at[:, -1].set(a.timesteps[:, -1])))
    return out


def flat(effects) -> np.ndarray:
    return np.concatenate([np.asarray(v).ravel() for v in effects.values()])


def patching_study(params, cfg, clean, corr) -> dict:
    t = time.perf_counter()
    act = C.activation_patching(params, cfg, clean, corr)
    t_act = time.perf_counter() - t
    t = time.perf_counter()
    atp = C.attribution_patching(params, cfg, clean, corr)
    t_atp = time.perf_counter() - t
    ig = C.attribution_patching(params, cfg, clean, corr, ig_steps=16)
    rows = []
    for name, a in act["effects"].items():
        a, b, c = np.asarray(a), np.asarray(atp["effects"][name]), np.asarray(ig["effects"][name])
        i = np.unravel_index(np.nanargmax(np.abs(a - b)), a.shape) if a.size else ()
        rows.append({"hook": name, "max_abs_actp": float(np.nanmax(np.abs(a))), "max_err_atp": float(np.nanmax(np.abs(a - b))),
                     "max_err_ig": float(np.nanmax(np.abs(a - c))), "worst_index": [int(x) for x in i],
                     "actp_at_worst": float(a[i]), "atp_at_worst": float(b[i]), "ig_at_worst": float(c[i])})
    x, y, z = flat(act["effects"]), flat(atp["effects"]), flat(ig["effects"])
    ok = np.isfinite(x)
    return {"clean": float(act["clean"]), "corrupted": float(act["corrupted"]), "hooks": rows,
            "pearson_atp": float(np.corrcoef(x[ok], y[ok])[0, 1]), "pearson_ig": float(np.corrcoef(x[ok], z[ok])[0, 1]),
            "seconds_first_call": {"activation": t_act, "attribution": t_atp},
            "_arrays": (x, y, z, [n for n, v in act["effects"].items() for _ in range(np.size(v))])}


def nonlinearity_study(params, cfg, clean, corr, v="forward-right") -> dict:
    """Why attribution patching misses what it misses: how saturated the attention of the read-out
    query is, how much of the last MLP's effect comes from neurons that are off (zero gradient) in
    the corrupted run, and AtP in the other direction (gradient on the clean run)."""
    _, cc = C.run_with_cache(params, cfg, clean)
    _, kc = C.run_with_cache(params, cfg, corr)
    q = C.state_pos(clean.n_timesteps)
    att = {}
    for l in range(cfg.n_layers):
        for h in range(cfg.n_heads):
            pc, pk = (np.asarray(c[f"blocks.{l}.attn.hook_pattern"][:, h, q, : q + 1]) for c in (cc, kc))
            att[f"L{l}H{h}"] = {"max_weight_clean": float(pc.max(-1).mean()), "max_weight_corrupted": float(pk.max(-1).mean()),
                                "saturated_share_clean": float((pc.max(-1) > 0.99).mean()),
                                "saturated_share_corrupted": float((pk.max(-1) > 0.99).mean()),
                                "sum_p_1mp_clean": float((pc * (1 - pc)).sum(-1).mean()),
                                "sum_p_1mp_corrupted": float((pk * (1 - pk)).sum(-1).mean())}
    out = {"attention_at_readout": att}
    if not cfg.attn_only:
        l = cfg.n_layers - 1
        d = np.asarray(params[f"blocks_{l}"]["mlp"]["W_out"] @ params["W_U"] @ C.action_vector(v))  # per neuron
        post_c, post_k = (np.asarray(c[f"blocks.{l}.mlp.hook_post"][:, q]) for c in (cc, kc))
        pre_k = np.asarray(kc[f"blocks.{l}.mlp.hook_pre"][:, q])
        diff = (post_c - post_k) * d  # each neuron's change of the direct logit difference
        dead = pre_k <= 0
        out["last_mlp"] = {"neurons_on_clean": float((post_c > 0).mean()), "neurons_on_corrupted": float((post_k > 0).mean()),
                           "direct_change": float(diff.sum(1).mean()),
                           "share_from_neurons_off_when_corrupted": float((diff * dead).sum(1).mean() / diff.sum(1).mean())}
    act = C.activation_patching(params, cfg, corr, clean)
    atp = C.attribution_patching(params, cfg, corr, clean)
    x, y = flat(act["effects"]), flat(atp["effects"])
    ok = np.isfinite(x)
    out["atp_noising_pearson"] = float(np.corrcoef(x[ok], y[ok])[0, 1])
    worst = []
    for name, a in act["effects"].items():
        a, b = np.asarray(a), np.asarray(atp["effects"][name])
        i = np.unravel_index(np.nanargmax(np.abs(a - b)), a.shape)
        worst.append({"hook": name, "index": [int(j) for j in i], "actp": float(a[i]), "atp": float(b[i])})
    out["atp_noising_worst"] = sorted(worst, key=lambda w: -abs(w["actp"] - w["atp"]))[:6]
    out["atp_noising_state_embed"] = {"actp": float(np.asarray(act["effects"]["hook_state_embed"])[-1]),
                                      "atp": float(np.asarray(atp["effects"]["hook_state_embed"])[-1])}
    return out


def graph_study(params, cfg, clean, corr) -> dict:
    g = G.inputs_graph(cfg, clean)
    eap = C.edge_attribution_patching(params, cfg, clean, corr, mode="noising")
    eap_ig = C.edge_attribution_patching(params, cfg, clean, corr, mode="noising", ig_steps=16)
    acdc = {}
    for tau in TAUS:
        r = C.acdc(params, cfg, clean, corr, tau)
        acdc[str(tau)] = {"n_edges": r["n_edges"], "faithfulness": float(r["faithfulness"]), "kl": float(r["kl"]),
                          "edges": [list(e) for e in r["edges"]]}
    ns = sorted({1, 2, 3, 5, 8, 12, 16, 24, 32, 48, 64, len(g.edges)} & set(range(len(g.edges) + 1)))
    prune = C.prune_by_attribution(params, cfg, clean, corr, ns)
    prune_ig = C.prune_by_attribution(params, cfg, clean, corr, ns, ig_steps=16)
    pp = {}
    receivers = ["logits"] + [f"L{l}H{h}.{c}" for l in range(cfg.n_layers) for h in range(cfg.n_heads) for c in "qkv"]
    if not cfg.attn_only:
        receivers += [f"L{l}_mlp" for l in range(cfg.n_layers)]
    for r in receivers:
        for freeze in (True, False) if r == "logits" else (True,):
            res = C.path_patching_senders(params, cfg, clean, corr, r, freeze_mlps=freeze)
            pp[f"{r}{'' if freeze else ' (MLPs recomputed)'}"] = dict(zip(res["senders"], map(float, res["effects"])))
    corr_kl = float(G.last_token_kl(C.forward(params, cfg, clean), C.forward(params, cfg, corr)))
    return {"n_edges_total": len(g.edges), "kl_clean_vs_corrupted": corr_kl,
            "eap_top": [(s, r, float(v)) for (s, r), v in sorted(zip(eap["edges"], np.asarray(eap["scores"])),
                                                                   key=lambda e: -abs(e[1]))[:15]],
            "eap_scores": [[s, r, float(v)] for (s, r), v in zip(eap["edges"], np.asarray(eap["scores"]))],
            "eap_sum": float(np.nansum(eap["scores"])), "eap_ig_sum": float(np.nansum(eap_ig["scores"])),
            "acdc": acdc, "prune": {"n_edges": [int(n) for n in ns], "faithfulness": [float(x) for x in prune["faithfulness"]],
                                    "faithfulness_ig": [float(x) for x in prune_ig["faithfulness"]],
                                    "kl": [float(x) for x in prune["kl"]]},
            "path_patching": pp, "_eap": eap}


def lens_study(params, cfg, clean, corr) -> dict:
    out = {}
    for tag, inp in (("clean", clean), ("corrupted", corr)):
        lens = C.logit_lens(params, cfg, inp, "forward-right")
        out[tag] = {"accumulated": dict(zip(lens["accumulated_labels"], np.asarray(lens["accumulated"]).mean(0).tolist())),
                    "layers": dict(zip(lens["layer_labels"], np.asarray(lens["layers"]).mean(0).tolist())),
                    "components": dict(zip(lens["component_labels"], np.asarray(lens["components"]).mean(0).tolist())),
                    "probs_per_layer": dict(zip(lens["accumulated_labels"],
                                                np.asarray(jax.nn.softmax(lens["accumulated_logits"], -1)).mean(0).round(3).tolist()))}
    return out


def steering_study(params, cfg, clean, corr, hooks_) -> dict:
    env, env_params = envs.make(scenarios.ENV_ID, obs_mode=cfg.obs_mode, max_steps=300)
    coeffs = [-1.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0]
    out = {}
    for hook in hooks_:
        lg = C.steer_logits(params, cfg, clean, corr, hook, coeffs)
        vec = C.steering_vector(params, cfg, clean, corr, hook)
        if cfg.n_timesteps > 1:  # closed loop: the vector of the current (last) timestep's tokens only
            vec = jnp.zeros_like(vec).at[-2:].set(vec[-2:]) if vec.ndim == 2 else vec
        ret = C.steer_returns(params, cfg, env, env_params, jax.random.PRNGKey(1), [0.9], 200, vec, hook, coeffs)
        out[hook] = {"coeff": coeffs, "metric": [float(x) for x in lg["metric"]],
                     "p_forward": [float(x) for x in np.asarray(lg["probs"])[:, :, 2].mean(1)],
                     "mean_return": [float(x) for x in ret["mean_return"][:, 0]],
                     "goal_rate": [float(x) for x in ret["goal_rate"][:, 0]],
                     "hit_rate": [float(x) for x in ret["hit_rate"][:, 0]]}
    return out


# ---------------------------------------------------------------------------------------------
# FIGURES
# ---------------------------------------------------------------------------------------------


def plot_atp(path, pair_results):
    panels = {}
    for pair, res in pair_results.items():
        x, y, z, names = res["_arrays"]
        panels[pair] = {"actp": x, "atp": y, "ig": z, "kinds": [analysis.hook_kind(n) for n in names],
                        "pearson_atp": res["pearson_atp"], "pearson_ig": res["pearson_ig"]}
    plots.save(plots.atp_scatter(panels, ig_steps=16), path)


def plot_circuit(path, cfg, graph, edges, scores, title):
    """Kept edges on a layered layout (``dtjax.plots.circuit_graph``)."""
    plots.save(plots.circuit_graph(graph.senders, graph.send_stage, cfg.n_layers, edges, scores, title), path)


def plot_faithfulness(path, graph_results):
    """Faithfulness of the top-n edges by |EAP| and |EAP-IG|, and ACDC's circuits, one colour per pair."""
    curves, points, styles = {}, {}, {}
    for (pair, res), colour in zip(graph_results.items(), ("tab:blue", "tab:orange", "tab:green")):
        pr = res["prune"]
        for label, f, ls in ((f"{pair}: top-n by |EAP|", pr["faithfulness"], "-"),
                             (f"{pair}: top-n by |EAP-IG|", pr["faithfulness_ig"], ":")):
            curves[label], styles[label] = (pr["n_edges"], f), {"color": colour, "ls": ls, "marker": None}
        label = f"{pair}: ACDC (tau {TAUS[0]}..{TAUS[-1]})"
        pts = [(v["n_edges"], v["faithfulness"]) for v in res["acdc"].values()]
        points[label], styles[label] = tuple(zip(*pts)), {"color": colour, "s": 40}
    plots.save(plots.faithfulness_curve(curves, points, styles), path)


def replot(cfg, params, ps, out, name) -> None:
    summary = json.loads((out / f"circuits_{name}.json").read_text())
    for pair, (clean, corr) in ps.items():
        g = G.inputs_graph(cfg, clean)
        if "eap_scores" in summary[pair]["graph"]:
            scores = {(s, r): v for s, r, v in summary[pair]["graph"]["eap_scores"]}
        else:
            eap = C.edge_attribution_patching(params, cfg, clean, corr, mode="noising")
            scores = dict(zip(eap["edges"], map(float, np.asarray(eap["scores"]))))
        tau = summary[pair]["tau_figure"]
        r = summary[pair]["graph"]["acdc"][str(tau)]
        plot_circuit(out / f"circuits_{name}_acdc_{pair}.png", cfg, g, [tuple(e) for e in r["edges"]], scores,
                     f"{name}, {pair} pair: ACDC tau={tau}: {r['n_edges']}/{len(g.edges)} edges, "
                     f"faithfulness {r['faithfulness']:.2f} (width: |EAP|)")
    plot_faithfulness(out / f"circuits_{name}_faithfulness.png", {p: summary[p]["graph"] for p in ps})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", default="docs/findings")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--replot", action="store_true", help="redraw the circuit and faithfulness figures from the JSON")
    ap.add_argument("--pairs", nargs="*", help="only these pairs, merged into an existing JSON (no steering, composition)")
    args = ap.parse_args()
    cfg, params = dtjax.load(args.checkpoint)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_dir = Path(args.checkpoint)
    ps = pairs(cfg, run_dir, args.batch)
    if args.replot:
        replot(cfg, params, ps, out, args.name)
        return
    if args.pairs:
        ps = {k: v for k, v in ps.items() if k in args.pairs}
    ckpt = Path(args.checkpoint).resolve()  # the JSON is committed: no machine-specific path in it
    shown = ckpt.relative_to(ROOT) if ckpt.is_relative_to(ROOT) else Path(args.checkpoint)
    summary: dict = {"checkpoint": str(shown), "model": cfg.to_dict() if hasattr(cfg, "to_dict") else str(cfg),
                     "pairs": {k: int(v[0].batch) for k, v in ps.items()}}
    patch_res, graph_res = {}, {}
    for pair, (clean, corr) in ps.items():
        t = time.perf_counter()
        patch_res[pair] = patching_study(params, cfg, clean, corr)
        graph_res[pair] = graph_study(params, cfg, clean, corr)
        lens = lens_study(params, cfg, clean, corr)
        nonlin = nonlinearity_study(params, cfg, clean, corr)
        pr = {k: v for k, v in patch_res[pair].items() if not k.startswith("_")}
        gr = {k: v for k, v in graph_res[pair].items() if not k.startswith("_")}
        summary[pair] = {"patching": pr, "graph": gr, "lens": lens, "nonlinearity": nonlin}
        g = G.inputs_graph(cfg, clean)
        eap = graph_res[pair]["_eap"]
        scores = dict(zip(eap["edges"], map(float, np.asarray(eap["scores"]))))
        tau = next(t for t in TAUS if abs(graph_res[pair]["acdc"][str(t)]["faithfulness"] - 1.0) <= 0.1)
        summary[pair]["tau_figure"] = tau
        r = graph_res[pair]["acdc"][str(tau)]
        plot_circuit(out / f"circuits_{args.name}_acdc_{pair}.png", cfg, g, [tuple(e) for e in r["edges"]], scores,
                     f"{args.name}, {pair} pair: ACDC tau={tau}: {r['n_edges']}/{len(g.edges)} edges, "
                     f"faithfulness {r['faithfulness']:.2f} (width: |EAP|)")
        print(f"{pair}: {time.perf_counter() - t:.0f}s; clean {pr['clean']:+.3f} corrupted {pr['corrupted']:+.3f}; "
              f"AtP r={pr['pearson_atp']:.3f}, IG r={pr['pearson_ig']:.3f}; ACDC tau={tau}: {r['n_edges']} edges, "
              f"faithfulness {r['faithfulness']:.3f}", flush=True)
    if args.pairs:  # merge into the existing summary
        old = json.loads((out / f"circuits_{args.name}.json").read_text())
        old["pairs"].update(summary.pop("pairs"))
        old.update({k: v for k, v in summary.items() if k in ps})
        (out / f"circuits_{args.name}.json").write_text(json.dumps(old, indent=1))
        print(f"updated {out}/circuits_{args.name}.json with {', '.join(ps)}")
        return
    clean, corr = ps["rtg"]
    summary["steering"] = steering_study(params, cfg, clean, corr, ["blocks.0.hook_resid_pre", "blocks.0.hook_attn_out"])
    if cfg.n_layers >= 2:
        comp = C.all_composition_scores(params, cfg)
        init = C.all_composition_scores(init_params(jax.random.PRNGKey(0), cfg), cfg)
        L, H = cfg.n_layers, cfg.n_heads
        summary["composition"] = {m: np.asarray(comp[m]).reshape(L * H, L * H).round(4).tolist() for m in "QKV"}
        summary["composition_init"] = {m: np.asarray(init[m]).reshape(L * H, L * H).round(4).tolist() for m in "QKV"}
        summary["composition_labels"] = comp["labels"]
    plot_atp(out / f"circuits_{args.name}_atp_vs_actp.png", patch_res)
    plot_faithfulness(out / f"circuits_{args.name}_faithfulness.png", graph_res)
    (out / f"circuits_{args.name}.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {out}/circuits_{args.name}.json and figures")


if __name__ == "__main__":
    main()
