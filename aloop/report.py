"""Plots and a Markdown summary of a run, and the short status text of `aloop status`.

Everything here only reads the run directory (aloop.db, committee/, cache/), so a report can be
written while a campaign is still running, or long after, without MACE or the labeler.
docs/reading-the-plots.md explains how to read each plot and when to stop buying labels.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
# Figure objects are drawn with matplotlib's Agg renderer when saved as PNG; avoiding pyplot keeps
# the process-wide backend (and any interactive session that imports aloop) untouched.
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, LogFormatter, NullFormatter, ScalarFormatter

from . import binding
from .feature_cache import FeatureCache
from .provenance import describe
from .pool import DUPLICATE, NON_FINITE, TOO_CLOSE
from .rundir import RunDir
from .report_text import one_line
from .store import FAILED, LABELLED, POOL, SELECTED, RunStore

DPI = 120
MAX_LABELLED_TICKS = 15   # more numbers than this along one axis are no longer read
PLOTS = ("learning_curve", "observables", "uncertainty", "parity")


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


def label_ticks(xs, most: int = MAX_LABELLED_TICKS) -> tuple[list, list]:
    """(labelled, unlabelled) ticks of a log axis of label counts: a tick at every iteration's count;
    with more than `most` counts, only counts at least 1/`most` of the axis apart (and always the
    first and last) carry a number, the others a bare tick mark."""
    counts = sorted(set(xs))
    if len(counts) <= most:
        return counts, []
    gap = np.log(counts[-1] / counts[0]) / most
    labelled = [counts[0]]
    for t in counts[1:-1]:
        if np.log(t / labelled[-1]) >= gap and np.log(counts[-1] / t) >= gap:
            labelled.append(t)
    labelled.append(counts[-1])
    return labelled, [t for t in counts if t not in labelled]


def _labels_axis(ax, xs) -> None:
    """Log x axis of label counts, ticked as plain numbers at the run's own counts (label_ticks)."""
    lo, hi = min(xs), max(xs)
    labelled, bare = label_ticks(xs)
    ax.set_xscale("log")
    ax.set_xlim(lo / 1.2, hi * 1.2)
    ax.xaxis.set_major_locator(FixedLocator(labelled))
    ax.xaxis.set_minor_locator(FixedLocator(bare))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())   # log axes label minor ticks 2×10¹-style otherwise
    if len(labelled) > 8:   # close counts on a log axis: upright numbers would overprint
        ax.tick_params(axis="x", which="major", labelrotation=90, labelsize="small")
    ax.set_xlabel("high-fidelity labels")
    ax.grid(True, which="major", alpha=0.3)


def _log_y(ax) -> None:
    # LogFormatter writes 20, 30, 50 rather than 2×10¹, and thins minor labels on wide ranges itself.
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(LogFormatter())
    ax.yaxis.set_minor_formatter(LogFormatter(minor_thresholds=(2, 0.5)))


def _plot(ax, xs, ys, style, **kw) -> None:
    """Plot the points a log axis can show (not a missing value, not a zero error); nothing at all,
    so no empty legend entry, when none are left."""
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None and np.isfinite(y) and y > 0]
    if pts:
        ax.plot(*zip(*pts), style, **kw)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def _learning_curve(records, out: Path) -> Path:
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    n = [r["n_labels"] for r in records]
    prosp = [r["prospective"] or {} for r in records]
    test = [r["test"] or {} for r in records]
    series = [(prosp, "rmse", "o-", "C0", "prospective batch RMSE (before training on it)"),
              (prosp, "mean_sigma", "--", "C0", "batch mean committee σ"),
              (test, "rmse", "s-", "C1", "held-out test RMSE")]
    for values, key, style, color, label in series:
        _plot(ax, n, [v.get(key, np.nan) * 1000 for v in values], style, color=color, label=label)
    if not ax.lines:   # iteration 0 alone, no test set: say so rather than draw empty axes
        ax.text(0.5, 0.5, "no prospective batch yet (the first batch has no prediction)\nand no test set",
                transform=ax.transAxes, ha="center", va="center", color="gray")
    _log_y(ax)
    ax.set_ylabel("energy error (meV per configuration)")
    _labels_axis(ax, n)
    ax.set_title("Learning curve")
    if ax.lines:
        ax.legend(fontsize="small")
    return _save(fig, out / "learning_curve.png")


def _observables(records, specs: dict, base: dict, stop: str | None, out: Path) -> Path:
    names = list(records[-1]["observables"])
    fig = Figure(figsize=(8.4, 3.4 * len(names)))
    x = np.array([r["n_labels"] for r in records])
    for i, name in enumerate(names):
        ax = fig.add_subplot(len(names), 1, i + 1)
        vals = [r["observables"].get(name) for r in records]
        mean = np.array([v["mean"] if v else np.nan for v in vals])
        std = np.array([v["std"] if v else np.nan for v in vals])
        ax.plot(x, mean, "o-", color="C0", label="committee mean")
        ax.fill_between(x, mean - std, mean + std, color="C0", alpha=0.25, label="±1 std of members")
        spec = specs.get(name, {})
        if name in base:
            ax.axhline(base[name]["mean"], color="gray", ls=":", label="base model")
        if spec.get("reference") is not None:
            ax.axhline(spec["reference"], color="k", ls="-", lw=1.2, label="high-fidelity reference")
        if spec.get("low_fidelity") is not None:
            ax.axhline(spec["low_fidelity"], color="C3", ls="-.", label="low-fidelity value")
        if stop:
            ax.axvline(x[-1], color="C2", lw=1, label="campaign stopped")
        _labels_axis(ax, x)
        ax.set_ylabel(f"{name} (eV)")
        # Beside the panel: the reference lines run across the whole width, any inside spot hides one.
        ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, out / "observables.png")


def _uncertainty(records, ratio, stop: str | None, out: Path) -> Path:
    fig = Figure(figsize=(6.4, 5.0))
    ax = fig.add_subplot()
    n = [r["n_labels"] for r in records]
    pool = [r["pool_sigma"] or {} for r in records]
    _plot(ax, n, [p.get("median", np.nan) * 1000 for p in pool], "o-", label="pool σ, median")
    _plot(ax, n, [p.get("p95", np.nan) * 1000 for p in pool], "^-", label="pool σ, 95th percentile")
    noise = [r["label_noise_median"] * (ratio or 1.0) * 1000 if r["label_noise_median"] else None for r in records]
    _plot(ax, n, noise, "k--", label=f"stop threshold: {ratio or 1:g} × label noise (median)")
    if stop:
        ax.axvline(n[-1], color="C2", lw=1)
        short = stop.split(":")[0][:40]   # the rule's name; the full sentence is in summary.md
        ax.annotate(f"stopped: {short}", xy=(n[-1], 1), xycoords=("data", "axes fraction"), xytext=(-4, -4),
                    textcoords="offset points", ha="right", va="top", fontsize="small", color="C2")
    _log_y(ax)
    ax.set_ylabel("committee σ (meV per configuration)")
    _labels_axis(ax, n)
    ax.set_title("Uncertainty over the unlabelled pool")
    # Below the axes: inside, it would hide either the threshold line or the stop note.
    if ax.lines:
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    return _save(fig, out / "uncertainty.png")


def _committee(run_dir: Path, iteration: int) -> tuple[np.ndarray | None, int]:
    """The last committee's member weights [K, P] and the iteration it was trained in."""
    layout = RunDir(run_dir)
    path = layout.committee(iteration)
    if not path.exists():   # a report written mid-iteration: the newest checkpoint there is
        saved = sorted(layout.committees.glob("iter_[0-9][0-9][0-9].npz"))
        if not saved:
            return None, -1
        path = saved[-1]
    with np.load(path) as f:
        return f["thetas"], int(path.stem[5:])


def _parity(store: RunStore, thetas, trained_in: int, out: Path) -> tuple[Path | None, dict]:
    """Returns the plot (None without labels) and the RMSEs (eV) drawn on it."""
    rows = store.rows(state=LABELLED)
    if not rows:
        return None, {}
    ref = np.array([r.energy_hf for r in rows])
    offset = ref.mean()   # shown relative to the labels' mean: absolute energies are ~1e2–1e4 eV
    fig = Figure(figsize=(5.6, 5.6))
    ax = fig.add_subplot()
    rmse = {}
    pred = np.array([r.get("pred_energy", np.nan) for r in rows], dtype=float)
    ok = np.isfinite(pred)   # the first batch is chosen without a committee: no prediction
    if ok.any():
        rmse["prospective"] = float(np.sqrt(np.mean((pred[ok] - ref[ok]) ** 2)))
        sig = np.array([r.get("pred_sigma", np.nan) for r in rows], dtype=float)[ok]
        ax.errorbar(ref[ok] - offset, pred[ok] - offset, yerr=np.where(np.isfinite(sig), sig, 0), fmt="o",
                    ms=4, alpha=0.7, capsize=2,
                    label=f"prospective, ±σ (n={ok.sum()}, RMSE {rmse['prospective'] * 1000:.1f} meV)")
    series = []
    folder = store.layout.cache / "features"
    if thetas is not None and (folder / "done.npy").exists():
        cache = FeatureCache(folder, thetas.shape[1])
        absent = set(cache.missing([r.id for r in rows]))
        # Only what it was trained on: a label that came in after the checkpoint would be prospective.
        have = [j for j, r in enumerate(rows) if r.id not in absent and r.get("iteration", 0) <= trained_in]
        if have:
            f = cache.read([rows[j].id for j in have])
            series.append(("final", "final committee, labelled", ref[have], f.energies(thetas).mean(0), offset, "s"))
    test = store.layout.cache / "test_features.npz"
    if thetas is not None and test.exists():
        with np.load(test) as f:
            y = f["y"]
            series.append(("test", "final committee, test set", y, (thetas @ f["a"].T + f["e"]).mean(0),
                           y.mean(), "^"))  # its own offset: the test set may be another system
    for key, label, y, p, off, marker in series:
        if len(y):
            rmse[key] = float(np.sqrt(np.mean((p - y) ** 2)))
            ax.plot(y - off, p - off, marker, ms=4, alpha=0.7,
                    label=f"{label} (n={len(y)}, RMSE {rmse[key] * 1000:.1f} meV)")
    if not rmse:   # labels but nothing to compare them with (no prediction, no checkpoint yet)
        return None, {}
    lims = np.array(ax.get_xlim() + ax.get_ylim())
    lo, hi = lims.min(), lims.max()
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, zorder=0)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("high-fidelity label, E − ⟨E⟩ (eV)")
    ax.set_ylabel("predicted, E − ⟨E⟩ (eV)")
    ax.set_title("Parity (⟨E⟩: mean of each set's labels)")
    ax.legend(fontsize="small")
    return _save(fig, out / "parity.png"), rmse


def _metrics_csv(records: list[dict], path: Path) -> None:
    """The iteration records as one flat table (eV), for spreadsheets and scripts."""
    names = sorted({n for r in records for n in r["observables"]})
    header = ["iteration", "n_labels", "batch_rmse", "batch_mean_sigma", "batch_within_2sigma", "test_rmse",
              "pool_sigma_median", "pool_sigma_p95", "label_noise_median"]
    header += [f"{n}_{k}" for n in names for k in ("mean", "std")] + ["stop"]
    rows = [header]
    for r in records:
        p, t, ps = r["prospective"] or {}, r["test"] or {}, r["pool_sigma"] or {}
        row = [r["iteration"], r["n_labels"], p.get("rmse"), p.get("mean_sigma"), p.get("within_2sigma"),
               t.get("rmse"), ps.get("median"), ps.get("p95"), r["label_noise_median"]]
        row += [r["observables"].get(n, {}).get(k) for n in names for k in ("mean", "std")]
        rows.append(row + [r.get("stop") or ""])
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["" if v is None else v for v in row] for row in rows])


def write_report(run_dir) -> Path:
    """Write RUN/report/{summary.md, metrics.csv, *.png}; returns the summary's path."""
    store = RunStore.existing(run_dir)
    out = store.layout.report
    out.mkdir(exist_ok=True)
    for name in PLOTS:   # a plot that cannot be drawn this time must not linger from an older report
        (out / f"{name}.png").unlink(missing_ok=True)
    records = store.iterations()
    campaign = store.get_meta("campaign") or {}
    stop = _stop_reason(store, records)
    lines = [f"# Active-learning report: {campaign.get('name', store.run_dir.name)}", "",
             f"- run directory: `{store.run_dir.resolve()}`",
             f"- labels used: {store.count(state=LABELLED)} (failed: {store.count(state=FAILED)}, "
             f"in the pool: {store.count(state=POOL)})",
             f"- iterations: {len(records)}",
             f"- stop reason: {stop or _stuck(store, records) or 'still running'}", ""]
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
    plots = [_learning_curve(records, out)]
    if last["observables"]:
        plots.append(_observables(records, specs, base, stop, out))
    plots.append(_uncertainty(records, campaign.get("stop", {}).get("uncertainty_ratio"), stop, out))
    parity, rmse = _parity(store, thetas, trained_in, out)
    plots += [parity] if parity else []

    if last["observables"]:
        lines += ["## Final observables", "", "| observable | committee (eV) | base model (eV) | reference (eV) "
                  "| committee − reference (meV) |", "|---|---|---|---|---|"]
        for name, o in last["observables"].items():
            ref = specs.get(name, {}).get("reference")
            b = base.get(name, {}).get("mean")
            lines.append(f"| {name} | {o['mean']:.4f} ± {o['std']:.4f} | {'—' if b is None else f'{b:.4f}'} | "
                         f"{'—' if ref is None else f'{ref:.4f}'} | {'—' if ref is None else _meV(o['mean'] - ref)} |")
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
        lines.append(f"- calibration: the committee σ is {verdict} ×{s:.2f} makes the prospective errors "
                     f"unit-variance (used by the uncertainty stop rule when > 1)")
    if "prospective" in rmse or "final" in rmse:
        lines.append(f"- parity RMSE: prospective {_meV(rmse.get('prospective'))} meV, final committee on its "
                     f"labels {_meV(rmse.get('final'))} meV (fitted, so optimistic)")
    if not (p or last["test"]):
        lines.append("- no prospective batch or test set yet")
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


def status_text(run_dir) -> str:
    """Where a run stands, in a few lines, for `aloop status RUN`."""
    store = RunStore.existing(run_dir)
    campaign = store.get_meta("campaign") or {}
    records = store.iterations()
    counts = ", ".join(f"{store.count(state=s)} {s}" for s in (POOL, SELECTED, LABELLED, FAILED))
    lines = [f"campaign {campaign.get('name', '?')} ({store.run_dir})", f"candidates: {counts}"]
    failed = store.rows(state=FAILED)
    for row in failed[:10]:
        reason = " ".join(str(row.get("reason", "no reason recorded")).split())   # one line each
        lines.append(f"  failed #{row.id} ({row.get('source', '?')}): {reason[:150]}")
    if len(failed) > 10:
        lines.append(f"  … and {len(failed) - 10} more failed")
    lines.append(f"iterations done: {len(records)}")
    if records:
        lines.append(f"last: {one_line(records[-1])}")
    stop = _stop_reason(store, records)
    lines.append(f"stop: {stop}" if stop else f"stop: {_stuck(store, records) or 'not stopped'}")
    screened = [store.get_meta(f"source:{source['name']}") or {}
                for source in campaign.get("pool", {}).get("sources", [])]
    dropped = {why: sum(s.get(why, 0) for s in screened) for why in (DUPLICATE, NON_FINITE, TOO_CLOSE)}
    if any(dropped.values()):
        lines.append("pool frames dropped: " + ", ".join(f"{n} ({why})" for why, n in dropped.items() if n))
    lines += binding.summary(store.get_meta("binding") or {})
    lines += describe(store.get_meta("sessions") or [])
    return "\n".join(lines)
