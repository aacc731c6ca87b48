"""python -m dtjax.sae {train,eval}: sparse dictionaries (SAEs, transcoders) on a Decision Transformer.

    python -m dtjax.sae train --ckpt RUN [--dataset DIR] [--hook blocks.0.hook_resid_post] [--token state]
        [--arch topk|batchtopk|jumprelu] [--latents 1024] [--k 16] [--transcoder] [--name NAME | --out DIR]
        [--num_steps 1000 --batch_size 2048 --lr 1e-3 --n_tokens 262144 --seed 0 --l0_coef 2e-3 ...]
    python -m dtjax.sae eval --sae SAE_DIR [--tokens 262144] [--analysis_tokens 32768] [--episodes 500]
        [--no_closed_loop] [--no_figures]

train: RUN is a dtjax run directory, a run name under checkpoints/, or an original .pt file. The
activations are harvested from RUN's stored dataset (RUN/dataset); a .pt model has none, so pass
--dataset (e.g. checkpoints/default/dataset). --hook is a TransformerLens hook name; --token the
token type (rtg, state, action). --transcoder predicts blocks.L.hook_mlp_out (the default hook
then) from that block's MLP input. The dictionary is saved to RUN/sae/NAME/ (for a .pt:
checkpoints/<stem>/sae/NAME/); NAME defaults to hook-token-kind-arch-latents-k. Every
SAETrainConfig field is a flag (--num_steps, --batch_size, --lr, --n_tokens, --aux_coef, ...).

eval: reconstruction metrics per token type, CE / KL recovered with the dictionary spliced in
(against zero- and mean-ablation), closed-loop returns and the rates of the task's outcomes
(Memory: success / wrong / timeout) at its lowest, middle and highest return (RTG -1, 0, +1;
Memory 0, 0.5, 1), and what each latent means (top-activating views, DLA, encoder maps,
ground-truth probes). A model of 3K - 1 positions (the original MemoryDT) has no action token at
its last timestep: its dictionaries read rtg or state tokens. Writes SAE_DIR/eval.json,
and SAE_DIR/eval/ (report.html: the report's "SAE features" section for this dictionary alone, and
analysis.npz).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dtjax import io
from dtjax.checkpoint import CheckpointError
from dtjax.cli import add_config_args, apply_args
from dtjax.config import ConfigError
from dtjax.data.store import DatasetError
from dtjax.loader import LoadError
from dtjax.sae import features, store
from dtjax.sae.model import ARCHS, TOKENS, SAEError
from dtjax.sae.train import SAETrainConfig


def _positive(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dtjax.sae", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="harvest activations and train a dictionary")
    t.add_argument("--ckpt", required=True, help="the model: run directory, run name in checkpoints/, or original .pt")
    t.add_argument("--dataset", help="dataset to harvest from (default: the run's own; required for a .pt)")
    t.add_argument("--hook", default=None, help="TL hook read (default blocks.0.hook_resid_post; transcoder: blocks.0.hook_mlp_out)")
    t.add_argument("--token", default="state", choices=TOKENS, help="token type read and spliced (default state)")
    t.add_argument("--arch", default="topk", choices=ARCHS, help="activation (default topk)")
    t.add_argument("--latents", type=_positive, default=1024, help="dictionary size (default 1024)")
    t.add_argument("--k", type=_positive, default=16, help="active latents per token, topk / batchtopk (default 16)")
    t.add_argument("--transcoder", action="store_true", help="predict blocks.L.hook_mlp_out from the MLP input")
    t.add_argument("--bandwidth", type=float, default=None, help="jumprelu: STE kernel width (normalised units)")
    t.add_argument("--init_threshold", type=float, default=None, help="jumprelu: initial threshold")
    t.add_argument("--name", help="directory name under RUN/sae/ (default from the settings)")
    t.add_argument("--out", type=Path, help="the dictionary's directory (overrides RUN/sae/NAME)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_args(t, SAETrainConfig)
    e = sub.add_parser("eval", help="metrics and latent analysis of a trained dictionary")
    e.add_argument("--sae", required=True, type=Path, help="the dictionary's directory")
    e.add_argument("--ckpt", help="the model (default: the one it was trained on)")
    e.add_argument("--dataset", help="the dataset (default: the one it was trained on)")
    e.add_argument("--tokens", type=_positive, default=262_144,
                   help="held-out tokens per type for the reconstruction metrics and dead / dense fractions (default 262144)")
    e.add_argument("--analysis_tokens", type=_positive, default=32_768,
                   help="of those, tokens for CE / KL, the latents and the probes (default 32768)")
    e.add_argument("--episodes", type=_positive, default=500, help="closed-loop episodes per target RTG (default 500)")
    e.add_argument("--rtgs", type=float, nargs="+", default=None,
                   help="closed-loop target RTGs (default: the task's lowest, middle and highest return: -1 0 1; Memory 0 0.5 1)")
    e.add_argument("--no_closed_loop", action="store_true", help="skip the closed-loop rollouts")
    e.add_argument("--top", type=_positive, default=9, help="top-activating tokens kept per latent (default 9)")
    e.add_argument("--seed", type=int, default=None, help="evaluation seed (default: the training seed)")
    e.add_argument("--out", type=Path, help="figure directory (default SAE_DIR/eval)")
    e.add_argument("--no_figures", action="store_true", help="only eval.json and analysis.npz (no report.html)")
    e.add_argument("--quiet", action="store_true")
    return parser


def _train(args, parser) -> int:
    try:
        tcfg = apply_args(SAETrainConfig(), args)
    except ConfigError as e:
        parser.error(str(e))
    hook = args.hook or ("blocks.0.hook_mlp_out" if args.transcoder else "blocks.0.hook_resid_post")
    extra = {k: getattr(args, k) for k in ("bandwidth", "init_threshold") if getattr(args, k) is not None}
    log = (lambda *_: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    ctx = features.open_context(args.ckpt, args.dataset)
    try:
        cfg = features.make_config(ctx, hook, args.token, args.arch, args.latents, args.k, args.transcoder, **extra)
    except ConfigError as e:
        parser.error(str(e))
    out = args.out or (store.default_out(ctx.run, args.name) if args.name else None)
    path, d = features.train(ctx, cfg, tcfg, out, progress=not args.quiet, log=log)
    print(json.dumps({"sae": str(path), "final": {k: round(v, 5) for k, v in d.meta["final"].items()},
                      "seconds": {k: round(v, 2) for k, v in d.meta["seconds"].items()}}, indent=1))
    return 0


def _eval(args) -> int:
    from dtjax.report.sections.sae import eval_page  # lazy: CLI start-up (the report stack, matplotlib: only eval needs it)

    log = (lambda *_: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    ctx, d = features.open_dictionary(args.sae, args.ckpt, args.dataset)
    lo, hi = ctx.env.task.return_range
    rtgs = tuple(args.rtgs) if args.rtgs else (lo, (lo + hi) / 2, hi)
    a = features.analyse(ctx, d, n_tokens=args.tokens, n_analysis=args.analysis_tokens, episodes=args.episodes, rtgs=rtgs,
                         closed_loop=not args.no_closed_loop, n_top=args.top, seed=args.seed, log=log)
    s = features.summary(a)
    io.write_json_atomic(args.sae / "eval.json", io.jsonable(s))
    out = args.out or args.sae / "eval"
    out.mkdir(parents=True, exist_ok=True)
    io.save_arrays_atomic(out / "analysis.npz", features.eval_arrays(a))
    if not args.no_figures:
        io.write_text_atomic(out / "report.html", eval_page(a, s, args.sae, ctx.dataset_path, ctx.model_cfg))
    r = s["reconstruction"][d.cfg.token]
    dn = s["downstream"]
    line = {"explained_variance": r["explained_variance"], "l0": r["l0"], "dead_frac": r["dead_frac"],
            "dense_frac": r["dense_frac"], "ce_loss_score_zero": dn["ce_loss_score_zero"],
            "ce_loss_score_mean": dn["ce_loss_score_mean"], "kl_div_score_zero": dn["kl_div_score_zero"],
            "probes_recovered": s["probes"]["recovered_frac"], "probes_recovered_baselines": s["probes"]["baseline_recovered_frac"]}
    if s.get("closed_loop"):
        cl = s["closed_loop"]
        line["closed_loop"] = {f"{r:+g}": [round(m, 3), round(x, 3)] for r, m, x in
                               zip(cl["target_rtg"], cl["model_return"], cl["sae_return"])}
        # the task's outcomes, model and spliced (Dynamic Obstacles goal / hit, Memory success / wrong / timeout)
        line["closed_loop_outcomes"] = {
            f"{r:+g}": "; ".join(f"{name} " + " ".join(f"{o} {cl[f'{who}_{o}'][i]:.3f}" for o in cl["outcomes"])
                                 for name, who in (("model", "model"), ("spliced", "sae")))
            for i, r in enumerate(cl["target_rtg"])}
    print(json.dumps(io.jsonable(line), indent=1))
    print(args.sae / "eval.json")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _train(args, parser) if args.cmd == "train" else _eval(args)
    except (SAEError, ConfigError, LoadError, DatasetError, CheckpointError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"python -m dtjax.sae: error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("python -m dtjax.sae: interrupted (nothing was saved)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
