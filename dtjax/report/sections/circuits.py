"""Circuit sections past the original (``dtjax.circuits``, issue 11), on pairs of real states:
"attribution" (attribution patching vs activation patching over every hook), "path_patching"
(each sender -> logits), "circuit_discovery" (ACDC and pruning by edge attribution),
"logit_lens" (accumulated and decomposed residual), "composition" (Q/K/V composition scores,
n_layers >= 2) and "steering" (algebraic value editing at ``blocks.0.hook_resid_pre``).

The pairs (clean, corrupted) come from the report's reference windows (``Context.reference()``:
random-policy rollouts in the model's env, K timesteps, the current action slot left out), as
``scripts/circuits_findings.py`` builds them (``scenarios.rtg_pair`` / ``scenarios.ball_pair``):

- "rtg": the same states at target RTG ``options.rtg`` (clean) and -1 (corrupted);
- "ball": the states with a ball in the cell ahead (clean) and the same with that cell emptied
  (corrupted), at RTG ``options.rtg`` (absent, with a note, if no sampled state has one).

Both have the same batch, ``options.circuit_batch`` or the number of ball-ahead states if fewer,
so each analysis compiles once per model. Conventions as ``circuits.activation_patching``: the
metric is the batch-mean logit difference along the report's direction at the last state token,
patching is denoising (run corrupted, restore clean), normalised (m - m_corr) / (m_clean - m_corr).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dtjax import analysis as A
from dtjax import circuits as C
from dtjax import plots
from dtjax import scenarios as S
from dtjax.circuits import graph as G
from dtjax.report.base import Context, Page, Section, rounded
from dtjax.report.sections.causal import patch_names

STEER_HOOK = "blocks.0.hook_resid_pre"
FAST_STEER_COEFFS = (0.0, 0.5, 1.0)  # closed-loop coefficients of a fast report


def _pair_text(d: dict) -> str:
    ball = (f"; <b>ball</b> = states with a ball in the cell ahead vs the same with that cell emptied, at RTG "
            f"{d['rtg']:g}") if d.get("balls", True) else ""
    return (f"Pairs of {d['batch']} real states (random-policy rollout windows of {d['n_timesteps']} timestep(s)): "
            f"<b>rtg</b> = the same states at RTG {d['rtg']:g} (clean) vs -1 (corrupted){ball}. Metric: the batch-mean "
            f"{d['direction']} logit difference at the last state token; effects are normalised "
            "(patched - corrupted) / (clean - corrupted): 1 = the clean behaviour restored.")


def history_pairs(ctx: Context) -> tuple[str, tuple, int] | None:
    """(name, (clean, corrupted), number of pairs) of the task's pairs whose two scenarios show the
    same current frame, so that only the history differs (Memory's "same junction state, other
    instruction"), clean rows then corrupted rows at the report's RTG; the name is the common first
    word of their names ("instruction"), else "history". None: the model sees no history (K = 1)
    or the task has no such pair."""
    if ctx.cfg.n_timesteps < 2 or not ctx.task.pairs:
        return None
    names, inp = ctx.scenarios()
    chosen = [(k, names.index(a), names.index(b)) for k, (a, b) in ctx.task.pairs.items()]
    obs = np.asarray(inp.obs)
    chosen = [c for c in chosen if np.array_equal(obs[c[1], -1], obs[c[2], -1])]
    if not chosen:
        return None
    first = {k.split("_")[0] for k, _, _ in chosen}
    name = first.pop() if len(first) == 1 else "history"
    return name, (inp.take(jnp.asarray([c[1] for c in chosen])), inp.take(jnp.asarray([c[2] for c in chosen]))), len(chosen)


def circuit_pairs(ctx: Context) -> tuple[dict, list[str]]:
    """({"rtg": (clean, corrupted), "ball": ..., "instruction": ...}, notes), shared by every
    circuit section. "instruction" (`history_pairs`, where the task defines pairs that differ only
    in the history) is those pairs repeated to the common batch, which is rounded down to a
    multiple of their number, so that its batch mean weighs each pair equally."""

    def build():
        o, base = ctx.options, ctx.reference()
        notes = []
        n = min(o.circuit_batch, base.batch)
        hist = history_pairs(ctx)
        if S.has_balls(ctx.task):  # the ball pair is a fact of a task with balls (Dynamic Obstacles)
            ball_clean, ball_corr = S.ball_pair(base, None, o.rtg, ctx.cfg.n_actions, ctx.cfg.pad_rtg)
        else:
            ball_clean = ball_corr = base.take(jnp.arange(0))
            why = "its balls are not obstacles" if "ball" in ctx.task.objects else "no balls"
            notes.append(f"No ball pair: not defined for this task ({ctx.task.family}: {why}).")
        if ball_clean.batch:
            n = min(n, ball_clean.batch)
        elif S.has_balls(ctx.task):
            notes.append(f"No ball pair: none of the {base.batch} sampled states has a ball in the cell ahead.")
        if hist is not None and n >= hist[2]:
            n -= n % hist[2]
        pairs = {"rtg": S.rtg_pair(base.take(jnp.arange(n)), o.rtg, -1.0, ctx.cfg.n_actions, ctx.cfg.pad_rtg)}
        if ball_clean.batch:
            pairs["ball"] = (ball_clean.take(jnp.arange(n)), ball_corr.take(jnp.arange(n)))
        if hist is not None:
            notes.append(f"Pair {hist[0]}: the task's {hist[2]} pair(s) of scenarios with the same current frame and "
                         f"another history ({', '.join(ctx.task.pairs)}), at RTG {o.rtg:g}, repeated to the batch.")
            rows = jnp.arange(n) % hist[2]
            pairs[hist[0]] = (hist[1][0].take(rows), hist[1][1].take(rows))
        return pairs, notes

    return ctx.memo("circuit_pairs", build)


def _common(ctx: Context, pairs: dict) -> dict:
    return {"batch": next(iter(pairs.values()))[0].batch, "n_timesteps": ctx.cfg.n_timesteps, "rtg": ctx.options.rtg,
            "direction": ctx.direction, "balls": S.has_balls(ctx.task)}


# ---------------------------------------------------------------------------------------------
# ATTRIBUTION VS ACTIVATION PATCHING
# ---------------------------------------------------------------------------------------------


def attribution_compute(ctx: Context) -> dict:
    pairs, notes = circuit_pairs(ctx)
    names = patch_names(ctx.cfg, ctx.options.fast)
    if names:
        notes = notes + [f"Fast report: {len(names)} hooks compared ({', '.join(names)}), not every hook."]
    panels = {pair: A.attribution_panel(ctx.params, ctx.cfg, clean, corr, ctx.v, ctx.options.ig_steps, names=names)
              for pair, (clean, corr) in pairs.items()}
    summary = {"atp_vs_actp_r": {p: round(x["pearson_atp"], 4) for p, x in panels.items()},
               "atp_ig_vs_actp_r": {p: round(x["pearson_ig"], 4) for p, x in panels.items()},
               "atp_worst": {p: x["worst"][:3] for p, x in panels.items()}}
    return {"panels": panels, "ig_steps": ctx.options.ig_steps, **_common(ctx, pairs), "notes": notes,
            "summary": summary}


def attribution_render(d: dict, page: Page) -> None:
    page.text(_pair_text(d) + " Attribution patching (AtP, Nanda 2023; Kramar et al. 2024) estimates every "
              "activation-patching effect from one forward pass per input and one backward pass on the corrupted run: "
              "(a_clean - a_corr) . dm/da. It is exact where the path to the metric is affine and misses what a "
              "saturated softmax or a ReLU that is off in the corrupted run hides; AtP-IG averages the gradient along "
              "the straight path (one hook at a time).")
    page.figure(plots.atp_scatter(d["panels"], d["ig_steps"]),
                "Each point is one node (hook x position x head); x = activation patching, y = the estimate; the grey "
                "line is y = x. Colours: how the hook reaches the metric.")
    ig = d["ig_steps"] > 0
    for pair, p in d["panels"].items():
        page.table(["node", "activation patching", "AtP"] + ([f"AtP-IG ({d['ig_steps']})"] if ig else []),
                   [[w["node"], w["actp"], w["atp"]] + ([w["ig"]] if ig else []) for w in p["worst"]],
                   f"<b>{pair}</b> (clean {p['clean']:+.3f}, corrupted {p['corrupted']:+.3f}): the nodes where AtP is "
                   f"furthest from activation patching. Pearson r over all {len(p['nodes'])} nodes: AtP "
                   f"{p['pearson_atp']:.3f}" + (f", AtP-IG {p['pearson_ig']:.3f}." if ig else "."))


# ---------------------------------------------------------------------------------------------
# PATH PATCHING
# ---------------------------------------------------------------------------------------------


def path_patching_compute(ctx: Context) -> dict:
    pairs, notes = circuit_pairs(ctx)
    effects, senders, summary = {}, None, {}
    for pair, (clean, corr) in pairs.items():
        summary[pair] = {}
        for freeze, tag in ((True, "MLPs frozen"), (False, "MLPs recomputed")):
            res = C.path_patching_senders(ctx.params, ctx.cfg, clean, corr, "logits", ctx.v, freeze_mlps=freeze)
            senders = res["senders"]
            effects[f"{pair}, {tag}"] = np.asarray(res["effects"])
            summary[pair]["frozen" if freeze else "recomputed"] = dict(zip(senders, rounded(res["effects"])))
    if ctx.cfg.attn_only:
        notes = notes + ["Attention-only model: no MLP, so frozen and recomputed coincide."]
    return {"senders": senders, "effects": effects, **_common(ctx, pairs), "notes": notes,
            "summary": {"path_patching_to_logits": summary}}


def path_patching_render(d: dict, page: Page) -> None:
    page.text(_pair_text(d) + " Path patching (Wang et al. 2022; Goldowsky-Dill et al. 2023) of each sender -> logits: "
              "the sender's clean output reaches the logits through the direct path only, every other head frozen at "
              "its corrupted output; the MLPs frozen too (the sender's direct effect: its DLA difference) or "
              "recomputed (the direct path plus what the MLPs make of it).")
    series = list(d["effects"])
    page.figure(plots.grouped_bars(np.stack([d["effects"][s] for s in series]), d["senders"], series,
                                   "path-patching effect (normalised)"),
                "Each sender -> logits, one bar per pair and setting; 1 = restores the whole clean-corrupted difference.")
    page.table(["sender"] + series, [[s, *(float(d["effects"][k][i]) for k in series)] for i, s in enumerate(d["senders"])])


# ---------------------------------------------------------------------------------------------
# CIRCUIT DISCOVERY: ACDC AND PRUNING BY EDGE ATTRIBUTION
# ---------------------------------------------------------------------------------------------


def _prune_sizes(n_total: int) -> list[int]:
    return sorted({0, 1, 2, 3, 5, 8, 12, 16, 24, 32, 48, 64, 96, n_total} & set(range(n_total + 1)))


def circuit_compute(ctx: Context) -> dict:
    """The whole section, memoised: ``circuit_prefetch`` runs it on the report's background thread
    (it is the longest of the sections that do not roll out, which balances the two threads)."""
    return ctx.memo("section:circuit_discovery", lambda: _circuit_compute(ctx))


def circuit_prefetch(ctx: Context) -> None:
    circuit_compute(ctx)


def _circuit_compute(ctx: Context) -> dict:
    o, cfg, params = ctx.options, ctx.cfg, ctx.params
    pairs, notes = circuit_pairs(ctx)
    clean, corr = pairs["rtg"]
    g = G.inputs_graph(cfg, clean)
    eap = C.edge_attribution_patching(params, cfg, clean, corr, ctx.v, mode="noising")
    scores = dict(zip(eap["edges"], map(float, np.asarray(eap["scores"]))))
    acdc = C.acdc(params, cfg, clean, corr, o.acdc_tau, ctx.v)
    sizes = _prune_sizes(len(g.edges))
    prune = {}
    for pair, (cl, co) in pairs.items():
        for ig, tag in ((0, "EAP"), (o.ig_steps, f"EAP-IG ({o.ig_steps})")):
            if tag != "EAP" and (o.fast or not ig):  # a fast report: EAP only (EAP-IG is one more compile)
                continue
            res = C.prune_by_attribution(params, cfg, cl, co, sizes, ctx.v, ig_steps=ig)
            prune[f"{pair}: top-n by |{tag}|"] = (np.asarray(res["n_edges"]), np.asarray(res["faithfulness"]))
    corr_kl = float(G.last_token_kl(C.forward(params, cfg, clean), C.forward(params, cfg, corr)))
    if np.isfinite(acdc["faithfulness"]) and abs(float(acdc["faithfulness"]) - 1.0) > 0.2:
        notes = notes + [f"ACDC removes edges by the KL of the whole action distribution, not by the {ctx.direction} "
                         f"difference: its circuit keeps {float(acdc['faithfulness']):.2f} of that difference (a smaller "
                         "acdc_tau keeps more edges)."]
    edges = [tuple(e) for e in acdc["edges"]]
    summary = {"circuit_tau": o.acdc_tau, "circuit_edges": acdc["n_edges"], "circuit_edges_total": acdc["n_total"],
               "circuit_faithfulness": round(float(acdc["faithfulness"]), 4), "circuit_kl": round(float(acdc["kl"]), 6),
               "circuit_edge_list": [list(e) for e in edges],
               "prune_faithfulness": {k: dict(zip(map(int, n), rounded(f))) for k, (n, f) in prune.items()}}
    return {"senders": list(g.senders), "send_stage": list(g.send_stage), "n_layers": cfg.n_layers, "edges": edges,
            "scores": scores, "tau": o.acdc_tau, "n_edges": acdc["n_edges"], "n_total": acdc["n_total"],
            "faithfulness": float(acdc["faithfulness"]), "kl": float(acdc["kl"]), "corrupted_kl": corr_kl,
            "edge_scores": [scores.get(e, float("nan")) for e in edges], "prune": prune, **_common(ctx, pairs),
            "notes": notes, "summary": summary}


def circuit_render(d: dict, page: Page) -> None:
    page.text(_pair_text(d) + f" ACDC (Conmy et al. 2023) on the <b>rtg</b> pair over the edge graph of embeddings, heads "
              "(their q, k and v inputs apart), MLPs and logits: edges visited from the logits backwards and removed "
              f"(patched to the corrupted run) when the KL divergence from the clean model's action distribution rises "
              f"by at most tau = {d['tau']:g}. A circuit's faithfulness is the metric with every other edge corrupted "
              "(1 = the clean behaviour, 0 = the corrupted one).")
    title = (f"ACDC tau={d['tau']:g}: {d['n_edges']}/{d['n_total']} edges, faithfulness {d['faithfulness']:.2f}, "
             f"KL {d['kl']:.4f} (width: |EAP|)")
    page.figure(plots.circuit_graph(d["senders"], d["send_stage"], d["n_layers"], d["edges"], d["scores"], title),
                f"The kept edges (rtg pair). KL of the whole corrupted run from the clean one: {d['corrupted_kl']:.4f}.")
    page.table(["sender", "receiver", "EAP score (noising)"], [[s, r, float(x)] for (s, r), x in zip(d["edges"], d["edge_scores"])],
               "ACDC's kept edges with their edge-attribution scores (Syed et al. 2023).")
    page.figure(plots.faithfulness_curve(d["prune"], {f"ACDC tau={d['tau']:g} (rtg)": (d["n_edges"], d["faithfulness"])}),
                "Faithfulness of the circuits made of the top-n edges by |edge attribution score| (EAP, and EAP-IG: the "
                "gradient integrated along the path), per pair; the cross is ACDC's circuit.")


# ---------------------------------------------------------------------------------------------
# LOGIT LENS
# ---------------------------------------------------------------------------------------------


def lens_compute(ctx: Context) -> dict:
    pairs, notes = circuit_pairs(ctx)
    acc, layers, comps, probs = {}, {}, {}, {}
    labels = {}
    for pair, (clean, corr) in pairs.items():
        for tag, inp in (("clean", clean), ("corrupted", corr)):
            lens = C.logit_lens(ctx.params, ctx.cfg, inp, ctx.v)
            key = f"{pair} {tag}"
            acc[key] = np.asarray(lens["accumulated"]).mean(0)
            layers[key] = np.asarray(lens["layers"]).mean(0)
            comps[key] = np.asarray(lens["components"]).mean(0)
            probs[key] = np.asarray(jax.nn.softmax(lens["accumulated_logits"], -1)).mean(0)
            labels = {k: lens[k] for k in ("accumulated_labels", "layer_labels", "component_labels")}
    summary = {"logit_lens": {k: dict(zip(labels["accumulated_labels"], rounded(v))) for k, v in acc.items()},
               "logit_lens_layers": {k: dict(zip(labels["layer_labels"], rounded(v))) for k, v in layers.items()}}
    if ctx.cfg.layer_norm:
        notes = notes + ["LayerNorm: accumulated residuals go through the final LN with recomputed statistics; layer "
                         "outputs use the cached final scale (they add up; the two views differ)."]
    return {"accumulated": acc, "layers": layers, "components": comps, "probs": probs, **labels, **_common(ctx, pairs),
            "forward": ctx.task.action_index("forward"),
            "notes": notes, "summary": summary}


def lens_render(d: dict, page: Page) -> None:
    page.text(_pair_text(d) + f" Logit lens (TransformerLens <code>accumulated_resid</code> / <code>decompose_resid</code>): "
              f"the residual stream at the last state token read along the {d['direction']} logit direction before "
              "each layer (and after its attention), and each layer's output on its own; batch means.")
    page.figure(plots.lines(d["accumulated_labels"], d["accumulated"], f"{d['direction']} (logit units)",
                            "accumulated residual"),
                "What the model would say if it stopped there (final_post is its output, less the unembedding bias).")
    keys = list(d["layers"])
    page.figure(plots.grouped_bars(np.stack([d["layers"][k] for k in keys]), d["layer_labels"], keys,
                                   f"{d['direction']} (logit units)"),
                "What each layer adds (embeddings, positional embedding, each attention and MLP output).")
    page.table(["component"] + keys, [[lab, *(float(d["components"][k][i]) for k in keys)]
                                      for i, lab in enumerate(d["component_labels"])],
               "Per component (heads, MLPs, embeddings by token type): direct logit attribution, batch mean.")
    fwd = [[k, *map(float, d["probs"][k][:, d["forward"]])] for k in keys]
    page.table(["P(forward) at"] + d["accumulated_labels"], fwd,
               "The action probability of 'forward' from each accumulated residual (the last column is the model's).")


# ---------------------------------------------------------------------------------------------
# COMPOSITION SCORES
# ---------------------------------------------------------------------------------------------


def composition_undefined(ctx: Context) -> str | None:
    if ctx.cfg.n_layers < 2:
        return "one layer: no head of a later layer to compose with (composition needs n_layers >= 2)."
    return None


def composition_compute(ctx: Context) -> dict:
    cfg = ctx.cfg
    comp = C.all_composition_scores(ctx.params, cfg)
    n = cfg.n_layers * cfg.n_heads
    later = np.arange(cfg.n_layers).repeat(cfg.n_heads)
    valid = later[:, None] < later[None, :]
    scores = {m: np.where(valid, np.asarray(comp[m]).reshape(n, n), np.nan) for m in "QKV"}
    labels = comp["labels"]
    top = {}
    for m, s in scores.items():
        i, j = np.unravel_index(np.nanargmax(s), s.shape)
        top[m] = {"sender": labels[i], "receiver": labels[j], "score": round(float(s[i, j]), 4)}
    chance = 1.0 / np.sqrt(cfg.d_model)
    return {"scores": scores, "labels": labels, "chance": chance,
            "summary": {"composition": {"chance": round(chance, 4), "max": top,
                                        "scores": {m: [[None if not np.isfinite(x) else round(float(x), 4) for x in row]
                                                       for row in s] for m, s in scores.items()}}}}


def composition_render(d: dict, page: Page) -> None:
    page.text("Composition scores (Elhage et al. 2021; TransformerLens <code>all_composition_scores</code>): how much a "
              "later head's queries (Q), keys (K) or values (V) read what an earlier head writes, "
              "||W_OV^1 M^2||_F / (||W_OV^1||_F ||M^2||_F) on the raw weights. Independent random matrices score about "
              f"1/sqrt(d_model) = {d['chance']:.3f}.")
    page.figure(plots.composition(d["scores"], d["labels"], d["chance"]),
                "Sender head rows, receiver head columns; blank where the receiver is not in a later layer.")


# ---------------------------------------------------------------------------------------------
# STEERING
# ---------------------------------------------------------------------------------------------


def _steer_returns(ctx: Context) -> dict:
    """``circuits.steer_returns`` of the rtg pair's steering vector at the report's RTG (memoised)."""

    def run():
        o, cfg = ctx.options, ctx.cfg
        clean, corr = circuit_pairs(ctx)[0]["rtg"]
        vec = C.steering_vector(ctx.params, cfg, clean, corr, STEER_HOOK)
        if cfg.n_timesteps > 1:  # the current timestep's tokens only (R_t, s_t: the last two of 3K - 1)
            vec = jnp.zeros_like(vec).at[-2:].set(vec[-2:])
        coeffs = FAST_STEER_COEFFS if o.fast else o.steer_coeffs
        return C.steer_returns(ctx.params, cfg, ctx.env, ctx.env_params, ctx.key("steering"), [o.rtg],
                               o.ablation_episodes, vec, STEER_HOOK, coeffs)

    return ctx.memo("steer_returns", run)


def steering_prefetch(ctx: Context) -> None:
    if ctx.options.closed_loop:
        _steer_returns(ctx)


def steering_compute(ctx: Context) -> dict:
    o, cfg, params = ctx.options, ctx.cfg, ctx.params
    pairs, notes = circuit_pairs(ctx)
    clean, corr = pairs["rtg"]
    lg = C.steer_logits(params, cfg, clean, corr, STEER_HOOK, o.steer_coeffs, ctx.v)
    fwd = ctx.task.action_index("forward")
    out = {"coeff": np.asarray(lg["coeff"]), "metric": np.asarray(lg["metric"]), "clean": float(lg["clean"]),
           "corrupted": float(lg["corrupted"]), "p_forward": np.asarray(lg["probs"])[:, :, fwd].mean(1),
           "hook": STEER_HOOK, "returns": None}
    summary = {"coeff": rounded(out["coeff"]), "metric": rounded(out["metric"]), "p_forward": rounded(out["p_forward"])}
    if o.closed_loop:
        ret = _steer_returns(ctx)
        out["returns"] = {k: (np.asarray(ret["coeff"]), np.asarray(ret[k])[:, 0])
                          for k in ("mean_return", *(f"{x}_rate" for x in (ctx.task.success, *ctx.task.failures)))}
        out["episodes"] = o.ablation_episodes
        summary["closed_loop"] = {"coeff": rounded(ret["coeff"]), **{k: rounded(v[1]) for k, v in out["returns"].items()}}
    else:
        notes = notes + ["Closed-loop steering not run: rollouts are off (closed_loop=False)."]
    return {**out, **_common(ctx, pairs), "max_steps": ctx.env_cfg.max_steps, "notes": notes,
            "summary": {"steering": summary}}


def steering_render(d: dict, page: Page) -> None:
    loop = ""
    if d["returns"] is not None:
        loop = (f" Right: the batch-mean vector (current timestep's tokens) added at every step of {d['episodes']} "
                f"closed-loop episodes at target RTG {d['rtg']:g} (the same episodes for every coefficient, max_steps "
                f"{d['max_steps']}).")
    page.text(f"Steering / algebraic value editing (Turner et al. 2023): the rtg pair's clean states ({d['batch']}) with "
              f"coeff x (a(RTG -1) - a(RTG {d['rtg']:g})) added at <code>{d['hook']}</code>; coefficient 0 is the clean "
              "run, 1 the corrupted one." + loop)
    page.figure(plots.steering(d["coeff"], d["metric"], d["clean"], d["corrupted"], d["p_forward"],
                               f"{d['direction']} logit difference", d["returns"]),
                "Left: the logit difference (batch mean) and P(forward) against the coefficient.")


SECTIONS = (
    Section("attribution", "Attribution patching vs activation patching", attribution_compute, attribution_render,
            order=120),
    Section("path_patching", "Path patching to the logits", path_patching_compute, path_patching_render, order=122),
    Section("circuit_discovery", "Circuit discovery: ACDC and edge attribution", circuit_compute, circuit_render,
            order=124, prefetch=circuit_prefetch),
    Section("logit_lens", "Logit lens", lens_compute, lens_render, order=126),
    Section("composition", "Composition scores", composition_compute, composition_render, order=128,
            undefined=composition_undefined),
    Section("steering", "Steering (algebraic value editing)", steering_compute, steering_render, order=130,
            prefetch=steering_prefetch),
)
