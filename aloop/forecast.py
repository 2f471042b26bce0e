"""How many more labels a run needs: a power-law learning curve fitted to the records so far.

A quantity that falls with the number of labels n (the prospective RMSE, an observable's committee
spread) is fitted as y² = (c·n^−b)² + floor², where the floor is what no number of labels removes
(the label noise, for an error measured against noisy labels). The fit is a weighted least-squares
line through log(√(y² − floor²)) against log n, each point weighted by its own error bar carried
into log space.

Parameter uncertainty is the fit's covariance, widened by the reduced χ² when that is above 1 (the
points scatter more than their error bars say). A bootstrap over points was not chosen: with the 4
to 10 points a run has, many resamples hold fewer than three distinct label counts, and the spread
of their slopes says more about the resampling than about the curve.

A forecast gives no number (and says why) when it cannot be trusted:
- fewer than MIN_POINTS points above the floor, at distinct label counts;
- an exponent b that is not positive (flat or rising curve);
- a misfit: a χ² that a power law with these error bars would exceed less than once in 1/MISFIT_P;
- a range too wide: the 68% range of the label count needed spans more than a factor MAX_RANGE.

Pure functions of numbers and records: nothing here reads the run folder.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2

from . import metrics

MIN_POINTS = 4
MISFIT_P = 1e-3
MAX_RANGE = 4.0


@dataclass(frozen=True)
class PowerLaw:
    """y = √((c·n^−b)² + floor²); `cov`: covariance of (log c, b); `chi2_red`: None without error bars."""

    log_c: float
    b: float
    cov: np.ndarray
    floor: float
    chi2_red: float | None
    dof: int

    def predict(self, n) -> np.ndarray:
        return np.hypot(np.exp(self.log_c) * np.asarray(n, dtype=float) ** -self.b, self.floor)

    def band(self, n) -> tuple[np.ndarray, np.ndarray]:
        """The 68% band of the prediction at n (from the parameters' covariance)."""
        log_n = np.log(np.asarray(n, dtype=float))
        excess = self.log_c - self.b * log_n
        grad = np.stack([np.ones_like(log_n), -log_n])
        sd = np.sqrt(np.einsum("i...,ij,j...->...", grad, self.cov, grad))
        return np.hypot(np.exp(excess - sd), self.floor), np.hypot(np.exp(excess + sd), self.floor)

    def labels_to_reach(self, target: float) -> tuple[float, float, float]:
        """(n, n_lo, n_hi): the label count at which the curve reaches `target` (> floor), and its
        68% range."""
        log_t = 0.5 * np.log(target**2 - self.floor**2)
        log_n = (self.log_c - log_t) / self.b
        grad = np.array([1 / self.b, -log_n / self.b])
        sd = float(np.sqrt(grad @ self.cov @ grad))
        with np.errstate(over="ignore", under="ignore"):   # a hopeless range is judged by `forecast`
            return float(np.exp(log_n)), float(np.exp(log_n - sd)), float(np.exp(log_n + sd))


def fit_power_law(n, y, err=None, floor: float = 0.0) -> PowerLaw:
    """Weighted least squares of log √(y² − floor²) = log c − b log n over the points above the
    floor; `err`: each y's standard error (None: equal weights, scatter estimated from the fit).
    ValueError with fewer than 3 such points (the fit would have no degree of freedom)."""
    n, y = np.asarray(n, dtype=float), np.asarray(y, dtype=float)
    keep = y > floor
    if keep.sum() < 3 or len(np.unique(n[keep])) < 2:
        raise ValueError(f"a power law needs at least 3 points above the floor {floor:g} at 2 label counts or more, "
                         f"got {int(keep.sum())} at {len(np.unique(n[keep]))}")
    n, y = n[keep], y[keep]
    excess2 = y**2 - floor**2
    z = 0.5 * np.log(excess2)
    # d log √(y² − f²) / dy = y / (y² − f²): close to the floor a point says little about the slope
    sd = None if err is None else np.asarray(err, dtype=float)[keep] * y / excess2
    w = np.ones_like(z) if sd is None else 1 / sd**2
    design = np.stack([np.ones_like(n), -np.log(n)], axis=1)
    cov = np.linalg.inv(design.T @ (design * w[:, None]))
    params = cov @ design.T @ (w * z)
    dof = len(z) - 2
    chi2_red = float(np.sum(w * (z - design @ params) ** 2) / dof)
    # without error bars the scatter itself sets the scale; with them, only more scatter than they
    # allow widens the parameters
    cov = cov * (chi2_red if sd is None else max(chi2_red, 1.0))
    return PowerLaw(float(params[0]), float(params[1]), cov, float(floor), None if sd is None else chi2_red, dof)


@dataclass(frozen=True)
class Forecast:
    """Labels needed for `quantity` to reach `target` (on y's scale): `n_total` and its 68% range;
    or `reached` (the last value is at the target already); or `refusal`, the reason there is no
    number. `fit` when a curve was fitted; `text()` is the line `aloop status` prints."""

    quantity: str
    target: float
    what: str              # what reaching the target means, for the sentence
    n_now: int
    n_total: float | None = None
    n_range: tuple[float, float] | None = None
    refusal: str | None = None
    fit: PowerLaw | None = None
    value_text: str = ""
    points: tuple = ()     # (n, y) of the points fitted, for the plot
    core_hours_per_label: float | None = None
    reached: bool = False
    wait: float = 0.0      # labels a stop rule still wants once the target is reached (its window)
    wait_text: str = ""    # why, for the sentence
    held: str = ""         # why the stop rule will not fire now whatever this quantity does

    @property
    def n_stop(self) -> float | None:
        """The label count at which the stop rule would fire: the target reached, then its wait."""
        if self.held:
            return None
        if self.reached:
            return self.n_now + self.wait
        return None if self.n_total is None else self.n_total + self.wait

    def _cost(self, more: list[int]) -> str:
        if not self.core_hours_per_label:
            return ""
        ch = [m * self.core_hours_per_label for m in more]
        return (f"; ≈ {ch[0]:.3g} core-hours" + (f" ({ch[1]:.3g}–{ch[2]:.3g})" if len(ch) == 3 else "")
                + " at the run's cost per label so far")

    def text(self) -> str:
        line = self._text()
        return line + (f"; no stop from it while {self.held}" if self.held else "")

    def _text(self) -> str:
        head = f"{self.quantity}: "
        if self.reached:
            line = head + f"reached {self.what} (last value {self.value_text})"
            if self.wait and not self.held:
                line += f"; ≈ {self.wait:.0f} more labels to the stop ({self.wait_text})" + self._cost([round(self.wait)])
            return line
        if self.refusal:
            return head + f"no forecast: {self.refusal}"
        more = [max(0, round(v - self.n_now)) for v in (self.n_total, *self.n_range)]
        if more[0] == 0:
            return (head + f"the fit puts {self.what} at {self.n_total:.0f} labels, already passed "
                    "(the last value is above it)")
        line = head + f"≈ {more[0]} more labels (range {more[1]}–{more[2]}) to reach {self.what}"
        if self.wait and not self.held:
            more = [round(m + self.wait) for m in more]
            line += f", ≈ {more[0]} ({more[1]}–{more[2]}) to the stop ({self.wait_text})"
        return line + self._cost(more)


def forecast(quantity: str, n, y, err, target: float, what: str, floor: float = 0.0,
             core_hours_per_label: float | None = None, wait: float = 0.0, wait_text: str = "",
             held: str = "") -> Forecast:
    """The labels at which the fitted curve of (n, y ± err) reaches `target`, or why there is no number;
    `wait`: the labels a stop rule wants after that (`wait_text` says why); `held`: why that rule will
    not fire now whatever y does."""
    n, y = np.asarray(n, dtype=float), np.asarray(y, dtype=float)
    base = dict(quantity=quantity, target=target, what=what, n_now=int(n[-1]) if len(n) else 0,
                core_hours_per_label=core_hours_per_label, value_text=_fmt(y[-1]) if len(y) else "", points=(n, y),
                wait=wait, wait_text=wait_text, held=held)
    if len(y) and y[-1] <= target:
        return Forecast(**base, reached=True)
    # a batch that failed entirely repeats a label count: it adds no point along the curve
    usable = len(np.unique(n[y > floor]))
    if usable < MIN_POINTS:
        where = " above the floor" if floor else ""
        return Forecast(**base, refusal=f"{usable} points{where} (at least {MIN_POINTS} label counts needed)")
    fit = fit_power_law(n, y, err, floor)
    base["fit"] = fit
    if fit.b <= 0:
        return Forecast(**base, refusal=f"the curve does not fall (fitted exponent {fit.b:.2f} ≤ 0)")
    if fit.chi2_red is not None and chi2.sf(fit.chi2_red * fit.dof, fit.dof) < MISFIT_P:
        return Forecast(**base, refusal=f"a power law does not fit (reduced χ² {fit.chi2_red:.1f} over {fit.dof} "
                                        f"degrees of freedom)")
    total, lo, hi = fit.labels_to_reach(target)
    if not lo > 0 or hi / lo > MAX_RANGE:   # a range so wide that exp() underflows is no number either
        return Forecast(**base, refusal=f"too uncertain: {_count(lo)}–{_count(hi)} labels in total (68% range, more than "
                                        f"a factor {MAX_RANGE:g} wide)")
    return Forecast(**base, n_total=total, n_range=(lo, hi))


def _fmt(value: float) -> str:
    return f"{value * 1000:.1f} meV"


def _count(labels: float) -> str:
    # a nearly flat curve puts the far end of the range at 10^30 labels and more: no one reads those digits
    return f"{labels:.0f}" if labels < 1e5 else "over 100000"


def rmse_series(records: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, prospective RMSE, its standard error) of every record with a prospective batch; the
    RMSE of m errors has a standard error of about RMSE/√(2m)."""
    rows = [(r["n_labels"], r["prospective"]["rmse"], r["prospective"]["rmse"] / np.sqrt(2 * r["prospective"]["n"]))
            for r in records if r.get("prospective")]
    return tuple(np.array(col, dtype=float) for col in zip(*rows)) if rows else (np.array([]),) * 3


def spread_series(records: list[dict], name: str, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, committee spread of observable `name` × `scale`, its standard error): the standard
    deviation of K members has a standard error of about std/√(2(K − 1)). An iteration whose path
    left the base model's domain has no barrier, so no spread of one: it is left out."""
    rows = [(r["n_labels"], scale * o["std"], scale * o["std"] / np.sqrt(2 * (len(o["members"]) - 1)))
            for r in records if (o := r["observables"].get(name)) and o["std"] > 0 and len(o["members"]) > 1
            and not o.get("outside_domain")]
    return tuple(np.array(col, dtype=float) for col in zip(*rows)) if rows else (np.array([]),) * 3


@dataclass(frozen=True)
class Tracked:
    """A quantity the forecast follows: its points so far and the value it should reach."""
    key: str          # "rmse", or the stop rule's observable
    quantity: str     # as printed
    n: np.ndarray
    y: np.ndarray
    err: np.ndarray
    target: float
    what: str
    floor: float = 0.0
    wait: float = 0.0
    wait_text: str = ""
    held: str = ""


def tracked(records: list[dict], stop: dict) -> list[Tracked]:
    """The quantities the forecast follows: the prospective RMSE (target: a model error equal to the
    label noise, i.e. an RMSE of √2 × label noise against noisy labels) and, with a
    `stop.observable` rule, that observable's committee spread times the newest σ calibration, as
    the rule compares it with its tolerance. `stop` is the campaign's stop section as stored in the
    run."""
    if not records:
        return []
    out = []
    noise = records[-1].get("label_noise_median")
    if noise:
        out.append(Tracked("rmse", "prospective RMSE", *rmse_series(records), np.sqrt(2) * noise,
                           f"{_fmt(np.sqrt(2) * noise)} (model error = label noise {_fmt(noise)})", floor=noise))
    rule = stop.get("observable")
    if rule:
        name, tol, scale = rule["name"], rule["tolerance"], metrics.calibration(records)
        quantity = f"{name} committee spread" + (f" (calibration ×{scale:.2f})" if scale > 1 else "")
        n, y, err = spread_series(records, name, scale)
        # under misfit the members agree on a value more labels would still move: the rule is off;
        # so it is while the observable's own saddles are labelled off the model, and while the
        # calibration rests on labels that do not move with the observable
        held = ("the misfit warning stands" if metrics.misfit_raised(records)
                else "its saddle labels sit off the model" if metrics.saddles_off(records, name)
                else metrics.untested(records, name))
        out.append(Tracked(name, quantity, n, y, err, tol, f"±{tol:.3g} eV (stop.observable.tolerance)",
                           **_window_wait(records, rule, y), held=held))
    return out


def _window_wait(records: list[dict], rule: dict, y: np.ndarray) -> dict:
    """The labels the observable's stop rule wants once its spread is at the tolerance: the rule
    fires only when every iteration of its window is (docs/campaign.md, `stop.observable`), so
    window − 1 batches after the first one that is, fewer for those already there. At the newest
    batch size; the rule's other condition (the mean settled) is not forecast."""
    window = int(rule.get("window", 1))
    batch = records[-1]["n_labels"] - records[-2]["n_labels"] if len(records) > 1 else 0
    inside = 0
    for value in y[::-1]:
        if value > rule["tolerance"]:
            break
        inside += 1
    iterations = max(window - inside, 0) if inside else window - 1
    if not (iterations and batch > 0):
        return {}
    return {"wait": float(iterations * batch),
            "wait_text": f"the rule wants {window} iterations in a row within it: {iterations} more batches of {batch}"}


def as_seen(records: list[dict], stop: dict) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each tracked quantity's (labels, value, error bar) as the run saw it at each iteration: a
    calibrated spread with the calibration of its own iteration, not the newest. What a forecast
    made earlier is to be judged against."""
    seen: dict[str, list] = {}
    counts: dict[str, int] = {}
    for i in range(1, len(records) + 1):
        for t in tracked(records[:i], stop):
            done = counts.get(t.key, 0)   # the points before this iteration's
            seen.setdefault(t.key, []).extend(zip(t.n[done:], t.y[done:], t.err[done:]))
            counts[t.key] = len(t.n)
    return {key: tuple(np.array(col, dtype=float) for col in zip(*rows)) for key, rows in seen.items() if rows}


def from_records(records: list[dict], stop: dict) -> list[Forecast]:
    """One forecast per tracked quantity (`tracked`). Core-hours come with the numbers when the
    records carry cumulative `core_hours`."""
    if not records:
        return []
    last = records[-1]
    hours = last.get("core_hours")
    per_label = hours / last["n_labels"] if isinstance(hours, (int, float)) and hours > 0 and last["n_labels"] else None
    return [forecast(t.quantity, t.n, t.y, t.err, t.target, t.what, t.floor, core_hours_per_label=per_label,
                     wait=t.wait, wait_text=t.wait_text, held=t.held)
            for t in tracked(records, stop)]


def hindcast(n, y, err, k: int, floor: float = 0.0) -> list[dict]:
    """Forecast each later point of a finished sequence from its first k points: one dict per later
    point with the label count, the value forecast and the 68% band of the curve, and the value
    measured with its own error bar (a single batch scatters about the curve by that much)."""
    n, y = np.asarray(n, dtype=float), np.asarray(y, dtype=float)
    fit = fit_power_law(n[:k], y[:k], None if err is None else np.asarray(err)[:k], floor)
    lo, hi = fit.band(n[k:])
    actual_err = np.full(len(n) - k, np.nan) if err is None else np.asarray(err, dtype=float)[k:]
    return [{"n_fit": int(n[k - 1]), "n": int(m), "forecast": float(p), "lo": float(a), "hi": float(b),
             "actual": float(v), "actual_err": float(e), "exponent": fit.b,
             "exponent_sd": float(np.sqrt(fit.cov[1, 1]))}
            for m, p, a, b, v, e in zip(n[k:], fit.predict(n[k:]), lo, hi, y[k:], actual_err)]


def needed_hindcast(records: list[dict], stop: dict) -> list[dict]:
    """Every label count a finished run's forecasts printed, against the count it took.

    For each iteration and each tracked quantity whose forecast (`from_records` on the records up
    to then) gave a number: `forecast`, the label count it put the target at; `actual`, the first
    later label count at which the quantity as the run saw it (`as_seen`) was at the target, or None
    if it never was (`last`: the run's last label count, a lower bound then). For the observable,
    also `forecast_stop` (the target plus the rule's window) and `stopped`, the label count at
    which the run's own `stop.observable` rule fired (None if another reason or none stopped it)."""
    seen = as_seen(records, stop)
    rule = (stop.get("observable") or {}).get("name")
    last = records[-1]
    stopped = last["n_labels"] if rule and str(last.get("stop") or "").startswith(f"observable '{rule}'") else None
    rows = []
    for i in range(1, len(records)):
        for t, f in zip(tracked(records[:i], stop), from_records(records[:i], stop)):
            if f.n_total is None:
                continue
            n, y, _ = seen[t.key]
            later = n[(n > f.n_now) & (y <= t.target)]
            row = {"quantity": t.key, "n_now": f.n_now, "forecast": f.n_total, "range": f.n_range,
                   "actual": int(later[0]) if len(later) else None, "last": int(last["n_labels"])}
            if t.key == rule:
                row.update(forecast_stop=f.n_stop, stopped=stopped)
            rows.append(row)
    return rows
