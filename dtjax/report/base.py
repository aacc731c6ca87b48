"""The report's building blocks: options, the context a section computes from, sections, the page.

See ``dtjax.report`` for the convention a section follows.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import threading
import zlib
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from dtjax import analysis as A
from dtjax import circuits as C
from dtjax import plots
from dtjax import scenarios as S
from dtjax.config import EnvConfig, ModelConfig
from dtjax.run import Run

# Observation channels worth showing: raw codes (the state channel is always 0 in this env), and
# the one-hot bits of the objects a task's cells can hold (empty/wall/key/ball/goal; ``Task.objects`` picks).
CHANNELS = {"image": {0: "object", 1: "colour"}, "one_hot": {1: "empty", 2: "wall", 5: "key", 6: "ball", 8: "goal"}}
# Dynamic Obstacles' hand-made states, in its task's order; a report shows its env's task's (Context.scenarios).
REPORT_SCENARIOS = ("start_seed0", "clear_ahead", "ball_ahead", "ball_two_ahead", "ball_diag_left",
                    "ball_diag_right", "ball_left", "ball_right", "goal_ahead", "wall_ahead")


class ReportError(ValueError):
    """The report could not be made, or was written with failed sections; one line for the user."""


@dataclasses.dataclass(frozen=True)
class ReportOptions:
    """What to compute; ``quick()`` gives a smoke-test report in well under a minute."""

    direction: str = ""  # logit difference analysed; "" = the task's (Dynamic Obstacles: forward-right, the original app's)
    rtg: float = 0.9  # target RTG of the scenarios (the app's default)
    calib_rtgs: int = 21  # target RTGs in [-1, 1] if calibration must be run
    calib_episodes: int = 100  # episodes per calibration point (original: 100 seeds)
    ablation_rtgs: tuple[float, ...] = (-1.0, 0.0, 1.0)  # targets of the closed-loop ablations
    ablation_episodes: int = 100  # episodes per target and ablation
    mean_samples: int = 512  # rollout windows for mean ablation
    scan_points: int = 201  # RTGs in the scan over [-scan_range, scan_range]
    scan_range: float = 2.0  # beyond [-1, 1]: extrapolation
    circuit_batch: int = 64  # states per pair of the circuit sections (attribution, path patching, ACDC, ...)
    ig_steps: int = 16  # integrated-gradient steps of AtP-IG and EAP-IG
    acdc_tau: float = 0.003  # ACDC's KL threshold (the overnight model's faithful circuit: docs/findings.md §8)
    steer_coeffs: tuple[float, ...] = (-1.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)  # steering coefficients scanned
    seed: int = 0
    fast: bool = False  # fewer hooks patched, no closed-loop mean ablation
    closed_loop: bool = True  # run episodes (calibration if none is saved, closed-loop ablations); off: the model's computation only
    sections: tuple[str, ...] = ()  # only these section keys, in report order (empty: every enabled section)
    dpi: int = 90  # resolution of the inlined figures
    strict: bool = False  # re-raise a section's exception instead of noting it and carrying on
    sae_dirs: tuple[str, ...] = ()  # sparse dictionaries of this model (analyse.py --sae): the "sae" section
    sae_tokens: int = 65_536  # held-out tokens per token type for a dictionary's reconstruction metrics
    sae_analysis_tokens: int = 16_384  # of them: CE / KL spliced in, latent statistics and probes
    sae_latents: int = 6  # latents shown per ranking (by activation frequency, by |DLA|)
    probes: bool = False  # the "probes" section (analyse.py --probes): linear probes and probe-directed steering
    probe_episodes: int = 1024  # closed-loop episodes whose steps the probes are fitted and scored on
    probe_train: int = 4096  # training steps per probe (from 70% of the episodes; the rest held out)
    probe_test: int = 2048  # held-out steps per probe
    steer_episodes: int = 1000  # closed-loop episodes per steering world (probe or random direction, alpha)
    steer_alphas: tuple[float, ...] = (-2.0, -1.0, 0.5, 1.0, 2.0)  # in units of the class separation along the probe
    steer_random: int = 2  # random directions of the same norm per alpha (the control)

    def replace(self, **changes: Any) -> "ReportOptions":
        return dataclasses.replace(self, **changes)

    @staticmethod
    def quick() -> "ReportOptions":
        return ReportOptions(calib_rtgs=3, calib_episodes=4, ablation_rtgs=(-1.0, 1.0), ablation_episodes=4,
                             mean_samples=32, scan_points=21, circuit_batch=16, ig_steps=4, fast=True, sae_tokens=8192,
                             sae_analysis_tokens=4096, probe_episodes=64, probe_train=512, probe_test=256,
                             steer_episodes=16, steer_alphas=(-1.0, 1.0), steer_random=1)


def _defined(ctx: "Context") -> str | None:
    return None


def _enabled(opt: ReportOptions) -> bool:
    return True


def _no_check(ctx: "Context") -> None:
    return None


@dataclasses.dataclass(frozen=True)
class Section:
    """One section of the report: a compute step that returns plain data, a render step that
    draws it. ``key`` is the HTML anchor and the name in summary.json's ``sections``; ``order``
    places it (see the table in ``dtjax.report``); ``undefined(ctx)`` gives a one-line reason when
    the analysis does not apply to this model; ``enabled(options)`` leaves the section out of this
    report entirely (opt-in sections that need an input such as an SAE directory); ``check(ctx)``
    raises ``ReportError`` (one line) when such an input does not fit the model, before any
    section runs and before anything is written."""

    key: str
    title: str
    compute: Callable[["Context"], dict]
    render: Callable[[dict, "Page"], None]
    order: float = 1000.0
    undefined: Callable[["Context"], str | None] = _defined
    enabled: Callable[[ReportOptions], bool] = _enabled
    check: Callable[["Context"], None] = _no_check
    # slow, self-contained work (rollouts) the section's compute reads from ``ctx.memo``: started on a
    # background thread when the report starts, so that its compiles and episodes overlap the
    # other sections (the results are the same: the memoised functions are pure and keyed)
    prefetch: Callable[[Context], None] | None = None


class Context:
    """What a section's compute step reads: the model, its env, the options, PRNG keys by purpose,
    and a memo so sections share inputs and panels without recomputing them (``memo``, safe to
    call from the prefetch thread: each name is computed once, the other callers wait for it)."""

    def __init__(self, ckpt: str | Path, cfg: ModelConfig, params: dict, env_cfg: EnvConfig,
                 options: ReportOptions | None = None, log: Callable[[str], Any] = print, run: Run | None = None):
        self.ckpt, self.cfg, self.env_cfg = Path(ckpt), cfg, env_cfg
        self.run = run  # the run it was opened from (Context.load), for the files beside the model
        self.params = jax.tree.map(jnp.asarray, params)
        self.options = options or ReportOptions()
        self.log = log
        self.env, self.env_params = env_cfg.make()  # the env the model was trained in (stored with the run)
        self.task = self.env.task  # what is task-specific: actions, outcomes, scenarios, pairs, the default direction
        spec = self.options.direction or "-".join(self.task.direction)
        self.direction_spec = spec  # "a-b" (action names), or a custom vector's spec
        self.v = A.direction(spec, cfg)  # (n_actions,) the direction analysed
        self.direction = C.direction_label(spec)
        chans = {c: n for c, n in CHANNELS[cfg.obs_mode].items() if cfg.obs_mode != "one_hot" or n in self.task.objects}
        self.channels, self.channel_names = list(chans), list(chans.values())
        self._memo: dict[str, Any] = {}
        self._memo_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    @classmethod
    def load(cls, ckpt: str | Path, options: ReportOptions | None = None, log: Callable[[str], Any] = print) -> "Context":
        """The context of a checkpoint (``dtjax.run.Run.open``; LoadError if it does not open)."""
        run = Run.open(ckpt).require_model()
        return cls(ckpt, run.model_cfg, run.params, run.env_cfg, options, log, run=run)

    def calibration(self) -> dict | None:
        """The run's saved ``calibration.json`` (``Run.calibration``), or None (no run, or none saved)."""
        return self.run.calibration() if self.run is not None else None

    def key(self, purpose: str) -> jax.Array:
        """A PRNG key for one purpose. "calibration", "sample" and "ablation" are the three keys of
        ``split(PRNGKey(seed), 3)`` (the report's keys since 0.1); any other name folds its CRC in."""
        root = jax.random.PRNGKey(self.options.seed)
        legacy = ("calibration", "sample", "ablation")
        if purpose in legacy:
            return jax.random.split(root, 3)[legacy.index(purpose)]
        return jax.random.fold_in(root, zlib.crc32(purpose.encode()) & 0x7FFFFFFF)

    def memo(self, name: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` computed once per report under ``name`` (a caller on another thread waits for
        it; a memoised ``fn`` only asks for its own inputs, so the waits cannot form a cycle)."""
        with self._locks_lock:
            lock = self._memo_locks.setdefault(name, threading.Lock())
        with lock:
            if name not in self._memo:
                self._memo[name] = fn()
        return self._memo[name]

    # Shared inputs and panels ------------------------------------------------------------------

    def scenarios(self, rtg: float | None = None) -> tuple[list[str], C.Inputs]:
        """The task's hand-made scenarios in the model's env at target ``rtg`` (default the
        options'), with the model's context (left-padded for K > 1)."""
        rtg = self.options.rtg if rtg is None else rtg
        return self.memo(f"scenarios@{rtg}", lambda: S.scenario_inputs(
            list(S.task_scenarios(self.env_cfg)), rtg=rtg, env=self.env_cfg, n_timesteps=self.cfg.n_timesteps,
            pad_action=self.cfg.n_actions, pad_rtg=self.cfg.pad_rtg))

    def scenario_panels(self, rtg: float | None = None) -> dict:
        """``analysis.state_panels`` of the scenarios (numpy arrays)."""
        rtg = self.options.rtg if rtg is None else rtg
        return self.memo(f"state_panels@{rtg}", lambda: _np(A.state_panels(self.params, self.cfg, self.scenarios(rtg)[1], self.v)))

    def weight_panels(self) -> dict:
        return self.memo("weight_panels", lambda: _np(A.weight_panels(self.params, self.cfg, self.v)))

    def embedding_panels(self) -> dict:
        o = self.options
        return self.memo("embedding_panels", lambda: _np(A.embedding_panels(
            self.params, self.cfg, self.v, jnp.linspace(-o.scan_range, o.scan_range, 50))))

    def reference(self) -> C.Inputs:
        """``mean_samples`` windows of K timesteps from random-policy rollouts in the model's env."""
        o = self.options
        return self.memo("reference", lambda: A.reference_inputs(self.key("sample"), o.mean_samples, self.cfg, self.env_cfg, o.rtg))

    def ablation_means(self) -> dict:
        """``circuits.ablation_means`` over ``reference()``."""
        return self.memo("ablation_means", lambda: C.ablation_means(self.params, self.cfg, self.reference()))


def _np(tree):
    return jax.tree.map(np.asarray, tree)


class Page:
    """The HTML report: sections with their figures, tables and notes; ``render`` adds the table
    of contents. Figures are inlined as base64 PNG, so the page is one self-contained file."""

    def __init__(self, title: str, dpi: int = 90):
        self.title, self.dpi, self.sections, self.body = title, dpi, [], []

    def section(self, anchor: str, title: str):
        self.sections.append((anchor, title))
        self.body.append(f'<h2 id="{anchor}">{html.escape(title)}</h2>')

    def text(self, s: str):
        """A paragraph of (trusted) HTML."""
        self.body.append(f"<p>{s}</p>")

    def note(self, s: str):
        """A one-line caveat in plain text (escaped)."""
        self.body.append(f'<p class="note">{html.escape(s)}</p>')

    def figure(self, fig, caption: str):
        self.png(plots.png_bytes(fig, self.dpi), caption)

    def png(self, data: bytes, caption: str):
        b64 = base64.b64encode(data).decode()
        self.body.append(f'<figure><img src="data:image/png;base64,{b64}"><figcaption>{caption}</figcaption></figure>')

    def table(self, header: list[str], rows: list[list[Any]], caption: str = ""):
        def fmt(x):
            return f"{x:+.3f}" if isinstance(x, (float, np.floating)) else html.escape(str(x))

        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{fmt(x)}</td>" for x in r) + "</tr>" for r in rows)
        cap = f"<caption>{caption}</caption>" if caption else ""
        self.body.append(f"<table>{cap}<tr>{head}</tr>{body}</table>")

    def render(self) -> str:
        toc = "".join(f'<li><a href="#{a}">{html.escape(t)}</a></li>' for a, t in self.sections)
        style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
                 "img{max-width:100%}figure{margin:1em 0}figcaption{font-size:90%;color:#444}"
                 "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;"
                 "text-align:right;font-size:90%}caption{text-align:left;font-size:90%;color:#444}"
                 ".note{color:#8a4b00;font-style:italic}")
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{style}</style></head><body><h1>{html.escape(self.title)}</h1>"
                f"<h3>Contents</h3><ol>{toc}</ol>{''.join(self.body)}</body></html>")




def rounded(x, digits: int = 4) -> list:
    """``np.round(x, digits).tolist()`` (summary.json's precision)."""
    return np.round(np.asarray(x), digits).tolist()

