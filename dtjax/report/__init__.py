"""One self-contained HTML report of a Decision Transformer's interpretability analyses, as sections.

``build_report(ckpt, out_dir)`` loads a dtjax checkpoint or an original ``.pt`` with the env it
was trained in, runs every section on hand-made scenarios (``dtjax.scenarios``) and on windows
from real rollouts, and writes ``report.html`` (PNG figures inlined as base64, a table of
contents, short captions) and ``summary.json`` (the headline numbers) into ``out_dir``.
Matplotlib only (Agg); everything runs on CPU in a few minutes (``ReportOptions.quick()``: well
under one). Every model shape ``train.py`` accepts is analysable (layers, timesteps of context,
LayerNorm, attention-only, one-hot observations, linear time embedding).

Sections
--------
A report is a list of ``Section(key, title, compute, render, order, undefined, enabled)``:

- ``compute(ctx: Context) -> dict`` computes a section's arrays, tables and numbers as plain
  data (numpy arrays, lists, numbers, label strings) and draws nothing. It is built on
  ``dtjax.analysis`` (the panels the interactive explorer draws too; add a panel there rather
  than an analysis here) and on ``dtjax.circuits`` / ``dtjax.evaluate`` for what has no panel
  (closed-loop returns, calibration). Two entries are special: ``"summary"``, a dict of JSON-able
  entries merged at the top level of ``summary.json`` (keys must not collide with another
  section's), and ``"notes"``, one-line caveats (e.g. "layers > 0: direct path only") shown
  under the section.
- ``render(data: dict, page: Page)`` draws that data with ``dtjax.plots`` onto the page
  (``page.figure``, ``page.table``, ``page.text``, ``page.note``) and computes nothing.
  Another front end calls ``compute`` and draws the dict its own way.
- ``undefined(ctx) -> str | None``: a one-line reason when the analysis does not apply to this
  model; the report then says so under the section's heading and carries on.
- ``enabled(options) -> bool``: False leaves the section out of this report altogether (an
  opt-in section that needs an input, e.g. an SAE directory from ``analyse.py --sae``).
- ``check(ctx)``: raises ``ReportError`` (one line) when the section's input does not fit the
  model (an SAE of another model's width or hook); run for every chosen section before any
  computes, so nothing is written.
- ``prefetch(ctx)``: optional slow, self-contained work (rollouts; a whole long section) that
  ``compute`` reads through ``ctx.memo``. Every defined section's prefetch starts on one
  background thread when the report starts, and those sections compute after the others (the
  page keeps the sections' order), so their compiles and episodes overlap the rest on a second
  core; the numbers are the same.

``Context`` holds the model (``cfg``, ``params``), its env (``env_cfg``, ``env``,
``env_params``), the options, the analysed direction (``v``, ``direction``), the channels shown
(``channels``, ``channel_names``), PRNG keys by purpose (``key("name")``) and a per-report memo
(``memo(name, fn)``) with the shared inputs: ``scenarios(rtg)``, ``scenario_panels(rtg)``,
``weight_panels()``, ``embedding_panels()``, ``reference()`` (K-timestep windows from rollouts)
and ``ablation_means()``.

Adding a section: write a module in ``dtjax/report/sections/`` with a module-level
``SECTIONS = (Section(...), ...)``. It is found automatically (no list to edit) and placed by
``order``; the built-in ones use 0-110 in steps of 10, and these are reserved:

====== ==================== ===================================================================
order  key                  module
====== ==================== ===================================================================
0      model                overview
10     calibration          overview
20-45  scenarios, dla,      states (context_attention: the decision token's attention to every
       rtg_scan,            token of the context, R1 s1 a1 ... as the original app numbers them;
       context_attention    undefined for one timestep)
42     rtg_time             rtg (the RTG gate against the timestep: switch or graded; DLA against time)
50-90  state_encoder,       weights
       embeddings, qk, ov,
       svd
100    ablation             causal
110    patching             causal
120    attribution          circuits (AtP and AtP-IG vs activation patching, every hook)
122    path_patching        circuits (each sender -> logits, MLPs frozen / recomputed)
124    circuit_discovery    circuits (ACDC at ``ReportOptions.acdc_tau``, pruning by EAP / EAP-IG)
126    logit_lens           circuits (accumulated residual, per-layer and per-component decomposition)
128    composition          circuits (Q/K/V composition scores; undefined for one layer)
130    steering             circuits (coefficient scan at blocks.0.hook_resid_pre; closed loop)
132-139                     reserved for more ``dtjax.circuits`` sections
140+   SAE features (``analyse.py --sae SAE_DIR``)
150    probes               probes (``analyse.py --probes``: linear probes, probe-directed steering)
160+   multi-seed census (``analyse.py --census RUN``)
====== ==================== ===================================================================

A section that raises is reported in one line (on the page, in ``summary.json``'s ``sections``
and as a ``ReportError`` after everything else has been written); ``ReportOptions(strict=True)``
re-raises instead (tests).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from dtjax.io import jsonable, write_json_atomic, write_text_atomic
from dtjax.report.base import (
    CHANNELS, REPORT_SCENARIOS, Context, Page, ReportError, ReportOptions, Section,
)
from dtjax.report.sections import all_sections

__all__ = ["CHANNELS", "REPORT_SCENARIOS", "Context", "Page", "ReportError", "ReportOptions", "Section",
           "all_sections", "build_report", "run_sections", "select_sections"]


def select_sections(options: ReportOptions, sections: list[Section] | None = None) -> list[Section]:
    """The sections of this report: ``sections`` (default ``all_sections()``) that are enabled,
    restricted to ``options.sections`` if given (unknown keys are a ``ReportError``)."""
    sections = all_sections() if sections is None else list(sections)
    known = [s.key for s in sections]
    unknown = [k for k in options.sections if k not in known]
    if unknown:
        raise ReportError(f"unknown report section {unknown[0]!r}; sections are {', '.join(known)}")
    return [s for s in sections if s.enabled(options) and (not options.sections or s.key in options.sections)]


def run_sections(ctx: Context, sections: list[Section], page: Page | None = None) -> tuple[dict, dict]:
    """Compute each section, then (with a ``page``) render them in order.

    The sections' ``prefetch`` steps (closed-loop rollouts, and one long section) start on one
    background thread first, and the sections that have one are computed last, so that their
    compiles and episodes overlap the other sections' (an idle second core does them); the
    results are the same as computing in order. Returns ``(results, status)``: ``results[key]`` is the section's data (absent when
    it was undefined or failed); ``status[key]`` is ``{"status": "ok" | "undefined" | "error",
    "note": one line, "seconds": float}`` (compute and render), in section order. With
    ``ctx.options.strict`` an exception propagates.
    """
    results, status = {}, {sec.key: {} for sec in sections}

    def fail(sec, e, t):
        if ctx.options.strict:
            raise e
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
        status[sec.key] = {"status": "error", "note": msg, "seconds": round(time.time() - t, 2)}
        results.pop(sec.key, None)
        ctx.log(f"section {sec.key} failed: {msg}")

    defined = []
    for sec in sections:
        reason = sec.undefined(ctx)
        if reason:
            status[sec.key] = {"status": "undefined", "note": reason, "seconds": 0.0}
        else:
            defined.append(sec)
    early = [sec for sec in defined if sec.prefetch is None]
    t_start = time.time()

    def prefetch(sec):
        sec.prefetch(ctx)
        ctx.log(f"  prefetched {sec.key} ({time.time() - t_start:.1f} s after the start)")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="report-prefetch") as pool:
        # a prefetch that fails is recomputed (and fails) in its section's compute, which reports it
        for sec in defined:
            if sec.prefetch is not None and cpu_cores() > 1:  # one core: nothing to overlap with
                pool.submit(prefetch, sec)
        for sec in early + [sec for sec in defined if sec.prefetch is not None]:
            t = time.time()
            ctx.log(sec.key)
            try:
                results[sec.key] = sec.compute(ctx)
            except Exception as e:  # noqa: BLE001 (one section's failure must not lose the others)
                fail(sec, e, t)
                continue
            status[sec.key] = {"status": "ok", "note": "", "seconds": round(time.time() - t, 2)}
            ctx.log(f"  {sec.key}: {status[sec.key]['seconds']:.1f} s")
    for sec in sections:
        if page is None:
            break
        page.section(sec.key, sec.title)
        st = status[sec.key]
        if st["status"] == "undefined":
            page.note(f"Not computed for this model: {st['note']}")
        elif st["status"] == "error":
            page.note(f"This section failed: {st['note']}")
        else:
            t = time.time()
            try:
                sec.render(results[sec.key], page)
                for note in results[sec.key].get("notes", ()):
                    page.note(note)
            except Exception as e:  # noqa: BLE001
                fail(sec, e, t - st["seconds"])
                page.note(f"This section failed: {status[sec.key]['note']}")
                continue
            st["seconds"] = round(st["seconds"] + time.time() - t, 2)
    return results, status


def cpu_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def build_report(ckpt: str | Path, out_dir: str | Path, options: ReportOptions | None = None,
                 log: Callable[[str], Any] = print, sections: list[Section] | None = None) -> Path:
    """Analyse checkpoint ``ckpt`` and write ``out_dir/report.html`` and ``summary.json``.

    ``sections`` defaults to ``all_sections()``. Returns the HTML path. Raises ``ReportError``
    (after writing both files) when a section failed, naming it; a bad checkpoint raises
    ``dtjax.loader.LoadError``, and a section's ``check`` a ``ReportError``, before anything is written.
    """
    opt = options or ReportOptions()
    ckpt, out_dir = Path(ckpt), Path(out_dir)
    chosen = select_sections(opt, sections)
    t0 = time.time()
    ctx = Context.load(ckpt, opt, log)
    for sec in chosen:
        sec.check(ctx)
    page = Page(f"dtjax report: {ckpt.name}", opt.dpi)
    summary: dict[str, Any] = {"checkpoint": str(ckpt), "config": ctx.cfg.to_dict(), "env": ctx.env_cfg.to_dict(),
                               "direction": ctx.direction, "fast": opt.fast}
    results, status = run_sections(ctx, chosen, page)
    for key, data in results.items():
        clash = sorted(set(data.get("summary", {})) & set(summary))
        if clash and opt.strict:
            raise ReportError(f"report section {key!r} writes summary key {clash[0]!r} that is already written")
        if clash:  # a programming error in a new section: keep the others' numbers
            status[key] = {**status[key], "status": "error", "note": f"summary key {clash[0]!r} is already written"}
            continue
        summary.update(data.get("summary", {}))
    summary["sections"] = status
    summary["seconds"] = round(time.time() - t0, 1)
    page.text(f"Generated in {summary['seconds']} s by dtjax.report.")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    write_text_atomic(path, page.render())
    write_json_atomic(out_dir / "summary.json", jsonable(summary), indent=1, sort_keys=False)
    log(f"wrote {path}")
    failed = [f"{k} ({s['note']})" for k, s in status.items() if s["status"] == "error"]
    if failed:
        raise ReportError(f"{len(failed)} report section(s) failed: {'; '.join(failed)}; the rest is in {path}")
    return path
