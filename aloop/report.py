"""A run's Markdown summary and metrics table (report/), and the short status text of `aloop status`.

Everything here only reads the run directory (aloop.db, committee/, cache/), so a report can be
written while a campaign is still running, or long after, without MACE or the labeler. Both show
the forecast of each tracked quantity (aloop.forecast) and the status lists the queued jobs a newer
committee would no longer choose (queue/cancel.txt, aloop.rerank). The figures
are drawn by aloop.plots; docs/reading-the-plots.md explains how to read each plot and when to stop
buying labels.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from . import binding, cost, forecast, metrics, plots as figures
from .provenance import describe
from .domain import OUT_OF_DOMAIN
from .rerank import read_cancel
from .rundir import RunDir, candidate_id
from .report_text import one_line, status_warnings
from .store import FAILED, LABELLED, POOL, SELECTED, RunStore


def _meV(x, fmt=".1f") -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x * 1000:{fmt}}"


def _stop_reason(store: RunStore, records: list[dict]) -> str | None:
    # The meta key, written when `aloop run` returns, is the truth (also for "pool exhausted" found at
    # selection, which no record holds; null after a resumed run went on). The last record stands in
    # only when the key was never written, e.g. a run killed right after its last iteration.
    reason = store.get_meta("stop_reason", default=False)
    return (records[-1].get("stop") if records else None) if reason is False else reason


def _stuck(store: RunStore, records: list[dict]) -> str | None:
    """Why a run that finished no iteration cannot go on by itself, if it cannot."""
    if records or store.count(state=SELECTED) or store.count(state=LABELLED) or not store.count(state=FAILED):
        return None
    return (f"stuck at iteration 0: all {store.count(state=FAILED)} labels of the first batch failed (reasons: "
            f"`aloop status {store.run_dir}`); fix the campaign's labeler section and `aloop run` again (a changed "
            f"labeler retries them), or retry them as they are with `aloop requeue {store.run_dir}`")


def _pool_lines(store: RunStore, campaign: dict) -> list[str]:
    """One line per pool source: frames kept and dropped, by reason (and by pair for the domain)."""
    lines = []
    for source in campaign.get("pool", {}).get("sources", []):
        meta = store.get_meta(f"source:{source['name']}")
        if not meta:
            continue
        # reasons are the integer entries besides the kept count (older runs lack "frames" and "pairs")
        dropped = {k: v for k, v in meta.items() if isinstance(v, int) and k not in ("n", "frames") and v}
        pairs = meta.get("pairs") or {}
        text = "; ".join(f"{n} {why}" + (f" ({', '.join(f'{p}: {c}' for p, c in sorted(pairs.items()))})"
                                          if why == OUT_OF_DOMAIN and pairs else "") for why, n in dropped.items())
        total = f" of {meta['frames']}" if "frames" in meta else ""
        lines.append(f"{source['name']} ({meta.get('kind', '?')}): {meta['n']}{total} frames kept"
                     + (f"; dropped: {text}" if text else ""))
    for obs in campaign.get("evaluation", {}).get("observables", []):
        source = f"path:{obs['name']}"
        points = len(store.source_ids(source))   # repeats of a point are labels, not points
        if points:
            lines.append(f"{source} (end points and saddle of the relaxed paths): {points}, "
                         f"{store.count(source=source, state=LABELLED)} labelled")
    return lines


def _committee(run_dir: Path, iteration: int) -> tuple[np.ndarray | None, int]:
    """The last committee's member weights [K, P] and the iteration it was trained in; no weights for
    a committee of `finetune.readout: full`, whose energies need the model's readout (torch), which
    the report does not load: its parity plot shows the prospective predictions only."""
    layout = RunDir(run_dir)
    path = layout.committee(iteration)
    if not path.exists():   # a report written mid-iteration: the newest checkpoint there is
        saved = sorted(layout.committees.glob("iter_[0-9][0-9][0-9].npz"))
        if not saved:
            return None, -1
        path = saved[-1]
    with np.load(path) as f:
        return (f["thetas"] if "thetas" in f.files else None), int(path.stem[5:])


def _metrics_csv(records: list[dict], path: Path) -> None:
    """The iteration records as one flat table (eV), for spreadsheets and scripts."""
    names = sorted({n for r in records for n in r["observables"]})
    header = ["iteration", "n_labels", "core_hours", "batch_rmse", "batch_mean_sigma", "batch_within_2sigma", "test_rmse",
              "pool_sigma_median", "pool_sigma_p95", "label_noise_median"]
    header += [f"{n}_{k}" for n in names for k in ("mean", "std")] + ["stop"]
    rows = [header]
    for r in records:
        p, t, ps = r["prospective"] or {}, r["test"] or {}, r["pool_sigma"] or {}
        row = [r["iteration"], r["n_labels"], r.get("core_hours"), p.get("rmse"), p.get("mean_sigma"), p.get("within_2sigma"),
               t.get("rmse"), ps.get("median"), ps.get("p95"), r["label_noise_median"]]
        row += [r["observables"].get(n, {}).get(k) for n in names for k in ("mean", "std")]
        rows.append(row + [r.get("stop") or ""])
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["" if v is None else v for v in row] for row in rows])


def _multifidelity_lines(records: list[dict], specs: dict) -> list[str]:
    """`kind: multifidelity`: the models trained on both fidelities, beside the committee."""
    made = [r for r in records if r.get("multifidelity")]
    if not made:
        return []
    lines = ["", "## Multi-fidelity model", "",
             "The backbone trained on the base model's data and the labels together, one head per fidelity "
             "(docs/model-classes.md); the committee drove selection. Latest: "
             f"`{made[-1]['multifidelity']['model']}` (exported as multifidelity.model).", "",
             "| iteration | labels | test RMSE (meV) | committee test RMSE (meV) | "
             + " | ".join(f"{n} (eV) | committee {n} (eV)" for n in made[-1]["multifidelity"]["observables"])
             + " | minutes |", "|---" * (5 + 2 * len(made[-1]["multifidelity"]["observables"])) + "|"]
    for r in made:
        m = r["multifidelity"]
        cells = [str(r["iteration"]), str(m["n_labels"]), _meV((m.get("test") or {}).get("rmse")),
                 _meV((r["test"] or {}).get("rmse"))]
        for name, value in m["observables"].items():
            committee = r["observables"].get(name, {}).get("mean")
            cells += [f"{value:.4f}", "—" if committee is None else f"{committee:.4f}"]
        lines.append("| " + " | ".join(cells + [f"{m['seconds'] / 60:.1f}"]) + " |")
    refs = {n: specs[n]["reference"] for n in made[-1]["multifidelity"]["observables"] if specs.get(n, {}).get("reference") is not None}
    if refs:
        lines += ["", "References: " + ", ".join(f"{n} {v:.4f} eV" for n, v in refs.items())]
    return lines


def write_report(run_dir) -> Path:
    """Write RUN/report/{summary.md, metrics.csv, *.png}; returns the summary's path."""
    store = RunStore.existing(run_dir)
    out = store.layout.report
    out.mkdir(exist_ok=True)
    for name in figures.PLOTS:   # a plot that cannot be drawn this time must not linger from an older report
        (out / f"{name}.png").unlink(missing_ok=True)
    records = store.iterations()
    campaign = store.get_meta("campaign") or {}
    stop = _stop_reason(store, records)
    lines = [f"# Active-learning report: {campaign.get('name', store.run_dir.name)}", "",
             f"- run directory: `{store.run_dir.resolve()}`",
             f"- labels used: {store.count(state=LABELLED)} (failed: {store.count(state=FAILED)}, "
             f"in the pool: {store.count(state=POOL)})",
             *[f"- {line}" for line in _core_hours(store)],
             f"- iterations: {len(records)}",
             f"- stop reason: {stop or _stuck(store, records) or 'still running'}", ""]
    for warning in status_warnings(records[-1]) if records else []:
        lines += [f"**{warning[0].upper()}{warning[1:]}**", ""]
    if not records:
        lines.append("No iteration has finished yet: nothing to plot."
                     + ("" if _stuck(store, records) else " Run `aloop run` first."))
        (out / "summary.md").write_text("\n".join(lines) + "\n")
        return out / "summary.md"

    _metrics_csv(records, out / "metrics.csv")
    specs = {o["name"]: o for o in campaign.get("evaluation", {}).get("observables", [])}
    base = store.get_meta("base_observables") or {}
    last = records[-1]
    thetas, trained_in = _committee(store.run_dir, last["iteration"])
    forecasts = forecast.from_records(records, campaign.get("stop", {}))
    plots = [figures.learning_curve(records, out, forecasts)]
    if last["observables"]:
        plots.append(figures.observables(records, specs, base, stop, out))
    plots.append(figures.uncertainty(records, campaign.get("stop", {}).get("uncertainty_ratio"), stop, out))
    parity, rmse = figures.parity(store, thetas, trained_in, out)
    plots += [parity] if parity else []

    if last["observables"]:
        lines += ["## Final observables", "", "A relaxed barrier is the committee mean model's own CI-NEB (end points relaxed), "
                  "re-relaxed each iteration: the exported model's barrier; ± is the members' spread on that path. "
                  "A frozen one (relax: false) is read along the base model's pool images.", "",
                  "| observable | path | committee (eV) | base model (eV) | reference (eV) "
                  "| committee − reference (meV) |", "|---|---|---|---|---|---|"]
        for name, o in last["observables"].items():
            ref = specs.get(name, {}).get("reference")
            b = base.get(name, {}).get("mean")
            left = o.get("outside_domain")   # a path through geometries the backbone never saw: no value
            value = f"none: path outside the base model's domain ({left})" if left else f"{o['mean']:.4f} ± {o['std']:.4f}"
            lines.append(f"| {name} | {o.get('path', 'frozen')} | {value} | {'—' if b is None else f'{b:.4f}'} | "
                         f"{'—' if ref is None else f'{ref:.4f}'} | {'—' if ref is None or left else _meV(o['mean'] - ref)} |")
        lines.append("")
    lines += ["## Errors", ""]
    p = next((r for r in reversed(records) if r["prospective"]), None)
    if p:
        e = p["prospective"]
        lines.append(f"- last prospective batch (iteration {p['iteration']}, n = {e['n']}): RMSE {_meV(e['rmse'])} meV, "
                     f"MAE {_meV(e['mae'])} meV, max {_meV(e['max'])} meV, mean σ {_meV(e.get('mean_sigma'))} meV")
    if last["test"]:
        t = last["test"]
        lines.append(f"- held-out test set (n = {t['n']}): RMSE {_meV(t['rmse'])} meV "
                     f"({_meV(t.get('rmse_per_atom'), '.2f')} meV/atom), max {_meV(t['max'])} meV")
    # Pool every batch, weighted by its size: one batch is too few points to judge calibration.
    cov = [(r["prospective"]["n"], r["prospective"]["within_2sigma"]) for r in records
           if r["prospective"] and "within_2sigma" in r["prospective"]]
    if cov:
        n = sum(c[0] for c in cov)
        lines.append(f"- prospective errors within 2σ, all iterations pooled: "
                     f"{100 * sum(c[0] * c[1] for c in cov) / n:.0f}% of {n} (≈95% if σ is calibrated; σ includes "
                     f"each label's error bar)")
    if last.get("sigma_scale") is not None:
        s = last["sigma_scale"]
        verdict = "overconfident: widen" if s > 1.2 else "underconfident: narrow" if s < 0.8 else "about right:"
        loo = last.get("sigma_scale_from") == "leave-one-out"
        errors = "leave-one-out errors of the current committee" if loo else "prospective errors"
        lines.append(f"- calibration: the committee σ is {verdict} ×{s:.2f} makes the {errors} "
                     f"unit-variance (used by the stop rules when > 1)"
                     + (f"; on every prospective error so far, made by earlier committees, ×{last['sigma_scale_prospective']:.2f}"
                        if loo else ""))
    noise = last.get("label_noise") or {}
    if noise.get("dof"):
        lines.append(f"- labels' error bars: repeated labels of one configuration scatter ×{noise['ratio']:.2f} their "
                     f"stated σ (Birge ratio on {noise['dof']} degrees of freedom); every label's σ is taken "
                     f"×{noise['scale']:.2f}" + ("" if noise["scale"] > 1 else
                                                 f" (widened from {metrics.MIN_CALIBRATION_ERRORS} degrees of freedom on, "
                                                 "never narrowed)"))
    for name, n_rel in (last.get("relevant_errors") or {}).items():
        lines.append(f"- tested on {name}: {n_rel:.1f} of the prospective errors bear on it (their energies move "
                     f"with it across the members, chance correlation removed); the observable stop rule trusts "
                     f"the calibration from {metrics.MIN_CALIBRATION_ERRORS}")
    if "prospective" in rmse or "final" in rmse:
        lines.append(f"- parity RMSE: prospective {_meV(rmse.get('prospective'))} meV, final committee on its "
                     f"labels {_meV(rmse.get('final'))} meV (fitted, so optimistic)")
    if not (p or last["test"]):
        lines.append("- no prospective batch or test set yet")
    lines += _multifidelity_lines(records, specs)
    if forecasts:
        lines += ["", "## Forecast", "",
                  "A power law fitted to the points so far, extrapolated to each target (68% range; "
                  "docs/reading-the-plots.md says how it is made and when it gives no number):", ""]
        lines += [f"- {f.text()}" for f in forecasts]
    pool = _pool_lines(store, campaign)
    if pool:
        lines += ["", "## Pool", ""] + [f"- {line}" for line in pool]
    lines += ["", "## Plots", ""] + [f"![{q.stem.replace('_', ' ')}]({q.name})\n" for q in plots]

    names = list(last["observables"])
    head = ["iteration", "labels", "batch RMSE (meV)", "mean σ (meV)", "test RMSE (meV)", "pool σ95 (meV)",
            "label noise (meV)"]
    head += [f"{n} (eV)" for n in names]
    lines += ["## Iterations", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in records:
        pr, ps = r["prospective"] or {}, r["pool_sigma"] or {}
        obs = [r["observables"].get(n) for n in names]
        cells = [str(r["iteration"]), str(r["n_labels"]), _meV(pr.get("rmse")), _meV(pr.get("mean_sigma")),
                 _meV((r["test"] or {}).get("rmse")), _meV(ps.get("p95")), _meV(r.get("label_noise_median"))]
        cells += [f"{o['mean']:.4f} ± {o['std']:.4f}" if o else "—" for o in obs]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return out / "summary.md"


def _core_hours(store: RunStore) -> list[str]:
    """What the labels cost so far and what the selected ones are predicted to cost (aloop.cost), as
    one line; none before anything is selected."""
    labelled, selected = store.rows(state=LABELLED), store.rows(state=SELECTED)
    if not labelled and not selected:
        return []
    spent, unknown = cost.spent([row.data.get("provenance", {}) for row in labelled])
    parts = [f"core-hours: {spent:.4g} spent on {len(labelled) - unknown} labels"
             + (f" (and {unknown} labels whose cost was not recorded)" if unknown else "")]
    predicted = [row.get("pred_core_hours") for row in selected if row.get("pred_core_hours") is not None]
    if predicted:
        parts.append(f"{sum(predicted):.4g} queued (predicted, {len(predicted)} selected)")
    if len(predicted) < len(selected):
        parts.append(f"{len(selected) - len(predicted)} selected with no cost prediction")
    return ["; ".join(parts)]


def _cancellable(store: RunStore) -> list[str]:
    """The queued jobs of queue/cancel.txt that still wait for their label (aloop.rerank)."""
    jobs = [c for c in read_cancel(store.layout.queue) if store.count(id=candidate_id(c.key), state=SELECTED)]
    if not jobs:
        return []
    lines = [f"cancellable: {len(jobs)} queued jobs a fresh batch would no longer choose "
             f"({store.layout.queue / 'cancel.txt'})"]
    # σ in eV for max_std and diverse, a variance reduction in eV² for targeted: cancel.txt says which
    lines += [f"  {c.key}: score {c.old_score:.3g} → {c.new_score:.3g}, slurm job {c.job_id}, "
              f"array index {c.array_index}" for c in jobs[:10]]
    return lines + ([f"  … and {len(jobs) - 10} more"] if len(jobs) > 10 else [])


def status_text(run_dir) -> str:
    """Where a run stands, in a few lines, for `aloop status RUN`."""
    store = RunStore.existing(run_dir)
    campaign = store.get_meta("campaign") or {}
    records = store.iterations()
    repeats = store.count("repeat_of>0", state=LABELLED)   # acquisition.repeats: labels of a configuration again
    counts = ", ".join(f"{store.count(state=s)} {s}" + (f" ({repeats} of them repeats)" if s == LABELLED and repeats else "")
                       for s in (POOL, SELECTED, LABELLED, FAILED))
    lines = [f"campaign {campaign.get('name', '?')} ({store.run_dir})", f"candidates: {counts}"]
    failed = store.rows(state=FAILED)
    for row in failed[:10]:
        reason = " ".join(str(row.get("reason", "no reason recorded")).split())   # one line each
        lines.append(f"  failed #{row.id} ({row.get('source', '?')}): {reason[:150]}")
    if len(failed) > 10:
        lines.append(f"  … and {len(failed) - 10} more failed")
    lines += _core_hours(store)
    lines.append(f"iterations done: {len(records)}")
    if records:
        lines.append(f"last: {one_line(records[-1])}")
        lines += [f"forecast: {f.text()}" for f in forecast.from_records(records, campaign.get("stop", {}))]
        lines += status_warnings(records[-1])
    lines += _cancellable(store)
    stop = _stop_reason(store, records)
    lines.append(f"stop: {stop}" if stop else f"stop: {_stuck(store, records) or 'not stopped'}")
    pool = _pool_lines(store, campaign)
    if pool:
        lines += ["pool sources:"] + [f"  {line}" for line in pool]
    lines += binding.summary(store.get_meta("binding") or {})
    lines += describe(store.get_meta("sessions") or [])
    return "\n".join(lines)
