"""The report's figures: learning curve, observables, pool uncertainty and parity, as PNG files.

Functions of the iteration records and of arrays read by aloop.report; the parity plot also reads
the labelled rows and the cached features. docs/reading-the-plots.md explains how to read each plot.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
# Figure objects are drawn with matplotlib's Agg renderer when saved as PNG; avoiding pyplot keeps
# the process-wide backend (and any interactive session that imports aloop) untouched.
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, LogFormatter, NullFormatter, ScalarFormatter

from .feature_cache import FeatureCache
from .forecast import Forecast
from .store import LABELLED, RunStore

DPI = 120
MAX_LABELLED_TICKS = 15   # more numbers than this along one axis are no longer read
PLOTS = ("learning_curve", "observables", "uncertainty", "parity")


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


def _extend(x, xp, fp):
    """Piecewise-linear through (xp, fp), continued along the last piece beyond the end."""
    x = np.asarray(x, dtype=float)
    slope = (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
    return np.where(x > xp[-1], fp[-1] + slope * (x - xp[-1]), np.interp(x, xp, fp))


def core_hours_axis(ax, records) -> bool:
    """Cumulative core-hours as a second x axis along the top of a plot of label counts, interpolated
    between the iterations (and from nothing spent at zero labels); drawn only when every iteration
    knows its cost and more labels always cost more (the map must be invertible). Whether it was."""
    pairs = sorted({(r["n_labels"], r["core_hours"]) for r in records if r.get("core_hours") is not None})
    if len(pairs) != len({r["n_labels"] for r in records}):   # an iteration without a cost
        return False
    n, hours = np.array([(0, 0.0)] + pairs).T
    if not (np.all(np.diff(n) > 0) and np.all(np.diff(hours) > 0)):
        return False
    top = ax.secondary_xaxis("top", functions=(lambda x: _extend(x, n, hours), lambda h: _extend(h, hours, n)))
    top.set_xlabel("high-fidelity core-hours (cumulative)")
    return True


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


def _forecast(ax, f: Forecast, color: str, points: bool) -> None:
    """A forecast that gives a number: its points (unless drawn already), the fitted curve extended
    to the upper end of its range with the curve's 68% band, and a line at its target (meV)."""
    n, y = f.points
    if points:
        _plot(ax, n, y * 1000, "D-", color=color, label=f.quantity)
    grid = np.geomspace(n[0], max(f.n_range[1], n[-1]), 100)
    lo, hi = f.fit.band(grid)
    ax.plot(grid, f.fit.predict(grid) * 1000, ":", color=color, label=f"{f.quantity}: fit, forecast")
    ax.fill_between(grid, lo * 1000, hi * 1000, color=color, alpha=0.15, lw=0)
    ax.axhline(f.target * 1000, color=color, ls="-.", lw=1, label=f"target: {f.what}")


def learning_curve(records, out: Path, forecasts: list[Forecast] = ()) -> Path:
    """The errors against the labels, and each forecast that gives a number (aloop.forecast)."""
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
    drawn = [f for f in forecasts if f.n_total is not None]
    for f in drawn:
        # the RMSE's points are the dots above; the observable's spread brings its own
        rmse = f.quantity == "prospective RMSE"
        _forecast(ax, f, "C0" if rmse else "C2", not rmse)
    if not ax.lines:   # iteration 0 alone, no test set: say so rather than draw empty axes
        ax.text(0.5, 0.5, "no prospective batch yet (the first batch has no prediction)\nand no test set",
                transform=ax.transAxes, ha="center", va="center", color="gray")
    _log_y(ax)
    ax.set_ylabel("energy error (meV per configuration)")
    _labels_axis(ax, n + [round(v) for f in drawn for v in (f.n_total, f.n_range[1])])
    core_hours_axis(ax, records)
    ax.set_title("Learning curve" + (" and forecast" if drawn else ""))
    if drawn:   # below the axes: a forecast's entries would cover its own curve
        fig.set_size_inches(6.4, 7.4)
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.16))
    elif ax.lines:
        ax.legend(fontsize="small")
    return _save(fig, out / "learning_curve.png")


def observable_series(records, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, std, left) of observable `name` per record: NaN where the record has none, or where its
    path left the base model's domain (`left` True), since a value over geometries the backbone never
    saw is no barrier (a collapsed MoS2 band read 0.000 eV, docs/mos2-svac.md)."""
    vals = [r["observables"].get(name) or {} for r in records]
    left = np.array([bool(v.get("outside_domain")) for v in vals], dtype=bool)
    mean = np.array([v["mean"] if v and not out else np.nan for v, out in zip(vals, left)], dtype=float)
    std = np.array([v["std"] if v and not out else np.nan for v, out in zip(vals, left)], dtype=float)
    return mean, std, left


def observables(records, specs: dict, base: dict, stop: str | None, out: Path) -> Path:
    names = list(records[-1]["observables"])
    fig = Figure(figsize=(8.4, 3.4 * len(names)))
    x = np.array([r["n_labels"] for r in records])
    for i, name in enumerate(names):
        ax = fig.add_subplot(len(names), 1, i + 1)
        mean, std, left = observable_series(records, name)
        spec = specs.get(name, {})
        relaxed = (records[-1]["observables"][name] or {}).get("path") == "relaxed"   # older records: frozen
        ax.plot(x, mean, "o-", color="C0", label="committee mean model, own relaxed CI-NEB" if relaxed
                else "committee mean, base model's frozen path (relax: false)")
        ax.fill_between(x, mean - std, mean + std, color="C0", alpha=0.25, label="±1 std of members on that path")
        for k, n in enumerate(x[left]):
            ax.axvline(n, color="C1", ls="--", lw=1.5, zorder=3, label="path left the base model's domain: no value" if k == 0 else None)
        if name in base:
            ax.axhline(base[name]["mean"], color="gray", ls=":", label="base model" + (", own relaxed CI-NEB" if relaxed else ""))
        if spec.get("reference") is not None:
            ax.axhline(spec["reference"], color="k", ls="-", lw=1.2, label="high-fidelity reference")
        if spec.get("low_fidelity") is not None:
            ax.axhline(spec["low_fidelity"], color="C3", ls="-.", label="low-fidelity value")
        if stop:
            ax.axvline(x[-1], color="C2", lw=1, label="campaign stopped")
        _labels_axis(ax, x)
        core_hours_axis(ax, records)
        ax.set_ylabel(f"{name} (eV)")
        # Beside the panel: the reference lines run across the whole width, any inside spot hides one.
        ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, out / "observables.png")


def uncertainty(records, ratio, stop: str | None, out: Path) -> Path:
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
    core_hours_axis(ax, records)
    ax.set_title("Uncertainty over the unlabelled pool")
    # Below the axes: inside, it would hide either the threshold line or the stop note.
    if ax.lines:
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    return _save(fig, out / "uncertainty.png")


def parity(store: RunStore, thetas, trained_in: int, out: Path) -> tuple[Path | None, dict]:
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
