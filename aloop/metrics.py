"""What is measured after each iteration, and the stop rules that read it: pure functions on arrays.

- prospective error: the batch labelled in this iteration against the committee that chose it,
  predicted before it was trained on (the honest test of the committee's σ, taken together with
  each label's own error bar);
- held-out error on the campaign's labelled test set, if any;
- committee σ over the unlabelled pool (median, 95th percentile) against the labels' noise, and the
  scale on σ that the current committee's leave-one-out errors call for (`sigma_scale`, see
  sigma_scale(); the prospective errors so far for a class without leave-one-out);
- observables (NEB barriers), committee mean ± spread;
- the misfit warning (`misfit`): recent prospective errors larger than the σ calibrated before them,
  which holds the convergence stop rules back;
- the labels' error bars against the scatter of repeated labels (`label_noise`);
- how many of the prospective errors bear on each observable (`relevance`, `relevant_errors`): the
  σ calibration is measured where the labels were, and the observable's rule trusts it only once
  enough of them moved with the observable across the committee.

Nothing here reads or writes the run folder: `aloop.measure` gathers the arrays, the loop writes
the record.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import erfc

MIN_CALIBRATION_ERRORS = 8
MISFIT_WINDOW = 3        # iterations that must hold MIN_CALIBRATION_ERRORS prospective errors for a verdict
MISFIT_ALPHA = 1e-3      # false-alarm rate of the misfit test, per iteration, for a committee whose σ is right
MISFIT_CLEAR = 0.05      # once raised, the warning stands until the test's p-value is back above this
SADDLE_MIN_LABELS = 3    # saddle labels of an observable's own paths before their bias is tested


def _errors(err: np.ndarray, sigma: np.ndarray | None = None) -> dict | None:
    if len(err) == 0:
        return None
    out = {"n": int(len(err)), "rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err))),
           "max": float(np.max(np.abs(err)))}
    if sigma is not None and np.all(np.isfinite(sigma)):
        out["mean_sigma"] = float(np.mean(sigma))
        out["within_1sigma"] = float(np.mean(np.abs(err) <= sigma))
        out["within_2sigma"] = float(np.mean(np.abs(err) <= 2 * sigma))
    return out


def sigma_scale(err, sigma_committee, sigma_label) -> float:
    """The factor s on the committee's σ that makes prospective errors unit-variance:
    mean(err² / (s² σ_c² + σ_l²)) = 1, by bisection on log s, clipped to [0.1, 100]. A committee
    of fine-tunes of one backbone tends to agree too well; this is how much to widen it."""
    err, s_c, s_l = (np.asarray(x, dtype=float) for x in (err, sigma_committee, sigma_label))

    def excess(log_s):
        return np.mean(err**2 / (np.exp(2 * log_s) * s_c**2 + s_l**2 + 1e-300)) - 1.0

    lo, hi = np.log(0.1), np.log(100.0)
    if excess(lo) <= 0:
        return 0.1
    if excess(hi) >= 0:
        return 100.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) > 0 else (lo, mid)
    return float(np.exp(0.5 * (lo + hi)))


def _profile_nll(err, s_c, s_l, m: float) -> tuple[float, float]:
    """(−log L, s) of err ~ N(0, s²σ_c² + σ_l² + m²), maximised over the scale s for a given misfit m."""
    def nll(log_s):
        v = np.exp(2 * log_s) * s_c**2 + s_l**2 + m**2 + 1e-300
        return 0.5 * float(np.sum(np.log(v) + err**2 / v))
    best = minimize_scalar(nll, bounds=(np.log(1e-3), np.log(1e3)), method="bounded")
    return best.fun, float(np.exp(best.x))


def misfit(err, sigma_committee, sigma_label, iteration, window: int = MISFIT_WINDOW,
           alpha: float = MISFIT_ALPHA, raised_before: bool = False) -> dict | None:
    """Do the prospective errors need a part that the committee's σ, however scaled, does not explain?
    None until the last `window` iterations hold MIN_CALIBRATION_ERRORS errors.

    A committee describes the spread of parameters that fit the labels. If its σ, times one scale s,
    described the errors, err ~ N(0, s²σ_c² + σ_l²). A readout that cannot express the labels leaves
    a misfit m that no label removes, while σ_c shrinks as labels come in (so the scale that
    sigma_scale fits keeps growing): err ~ N(0, s²σ_c² + σ_l² + m²). A likelihood-ratio test of
    m = 0 on every prospective error so far (2 Δlog L follows ½χ²₀ + ½χ²₁ at the boundary) raises
    the warning when its p-value is below `alpha`. Also reported: the fraction of the last
    `window` iterations' errors within 2 √((sσ_c)² + σ_l²), s from sigma_scale (≈95 % if calibrated).

    `raised_before`: the warning stood at the previous iteration. It then stands until p ≥ MISFIT_CLEAR:
    a real misfit's p-value wanders about `alpha` from iteration to iteration as the σ scale
    absorbs part of it (measured on the MoS2 `contact` oracle: 3e-4, 6e-4, then 1e-3 to 2e-2, then
    below 1e-4 again), and a warning that comes and goes would tell the user, and the stop rules it
    holds back, that the misfit had gone. Raising still needs p < alpha, so its false-alarm rate
    is unchanged."""
    err, s_c, s_l, it = (np.asarray(x, dtype=float) for x in (err, sigma_committee, sigma_label, iteration))
    last = np.unique(it)[-window:]
    recent = np.isin(it, last)
    if len(last) < window or recent.sum() < MIN_CALIBRATION_ERRORS:
        return None
    nll0, scale0 = _profile_nll(err, s_c, s_l, 0.0)
    rms = float(np.sqrt(np.mean(err**2)))
    nll1, scale1, m = min((*_profile_nll(err, s_c, s_l, m), m) for m in np.geomspace(1e-4 * rms, 3 * rms, 80))
    stat = max(2.0 * (nll0 - nll1), 0.0)
    p_value = 0.5 * float(erfc(np.sqrt(stat / 2)))   # ½ P(χ²₁ > stat)
    scale = sigma_scale(err, s_c, s_l)
    covered = np.abs(err[recent]) <= 2 * np.sqrt((scale * s_c[recent]) ** 2 + s_l[recent] ** 2)
    return {"raised": misfit_stands(p_value, alpha, raised_before), "held": raised_before and alpha <= p_value < MISFIT_CLEAR,
            "p_value": p_value, "alpha": alpha,
            "misfit_rms": float(m) if stat > 0 else 0.0,
            "scale_with_misfit": scale1, "scale_without": scale0, "n": int(len(err)),
            "iterations": [int(i) for i in last], "n_recent": int(recent.sum()),
            "within_2sigma_recent": float(np.mean(covered))}


def misfit_stands(p_value: float, alpha: float, raised_before: bool) -> bool:
    """Whether the misfit warning stands at a test of `p_value`: raised below `alpha`, and kept until
    MISFIT_CLEAR when it stood at the previous iteration (see `misfit`)."""
    return p_value < alpha or (raised_before and p_value < MISFIT_CLEAR)


def saddle_bias(err, sigma_committee, sigma_label, scale: float | None, alpha: float = MISFIT_ALPHA) -> dict | None:
    """Do the labels at the saddles of an observable's own relaxed paths sit systematically above
    (or below) what the committee predicted for them? None below SADDLE_MIN_LABELS labels.

    The relaxed CI-NEB of the committee mean goes where the mean's surface is lowest, so where the
    fit cannot express the correction, the saddle it finds is one the fit left too low, and the next
    fit's path finds another (measured on MoS2: every saddle label 0.3–0.8 eV above its prediction,
    iteration after iteration, while the barrier's ± said 0.03–0.05 eV). Each error is divided by its
    calibrated σ, √((sσ_c)² + σ_l²) with `scale` s the run's σ scale (sigma_scale; 1 when there is
    none yet), and Z = Σz/√n is tested against N(0, 1), two-sided: raised when p < `alpha`. The mean
    error bounds how far the barrier is off, in the direction of its sign; it is not an estimate of it:
    a saddle slightly beside the true one, where the true surface rises across the path, is labelled
    above the model with the barrier right (MoS2, full readout at 100 labels: saddles 0.08 Å RMS from
    the oracle's, labelled +0.2–0.26 eV above the model, the barrier within 0.04 eV)."""
    err, s_c, s_l = (np.asarray(x, dtype=float) for x in (err, sigma_committee, sigma_label))
    if len(err) < SADDLE_MIN_LABELS:
        return None
    z = err / np.sqrt(((scale or 1.0) * s_c) ** 2 + s_l**2)
    total = float(z.sum() / np.sqrt(len(z)))
    p_value = float(erfc(abs(total) / np.sqrt(2)))
    return {"n": int(len(err)), "mean_error": float(err.mean()), "z": total, "p_value": p_value, "alpha": alpha,
            "raised": p_value < alpha}


def relevance(label_members: np.ndarray, observable_members: np.ndarray) -> np.ndarray:
    """How much each label's prediction bears on an observable, from the committee that made it:
    the squared correlation over the K members of the label's energy with the observable's value,
    less what K members show by chance: r² of unrelated quantities averages 1/(K − 1), so
    1 − (1 − r²)(K − 1)/(K − 2), which averages 0 for them and may be negative. Not clipped: the
    sum over labels (`relevant_errors`) is then an unbiased count; clipped at 0, every unrelated label
    would add about 0.07 at K = 8. `label_members` [K, n], `observable_members` [K].

    A committee's σ can be right where the labels were and wrong where the observable lives: random
    labels near equilibrium test the members' spread there, not at a saddle. A label whose energy
    moves with the observable from member to member tests the spread the observable's rule reads."""
    e = np.atleast_2d(np.asarray(label_members, dtype=float))
    o = np.asarray(observable_members, dtype=float)
    k = len(o)
    if k < 3 or e.shape[0] != k:
        raise ValueError(f"relevance needs the same K ≥ 3 members for the labels and the observable, "
                         f"got {e.shape[0]} and {k}")
    de, do = e - e.mean(0), o - o.mean()
    ss = (de**2).sum(0) * (do**2).sum()
    r2 = np.divide((do @ de) ** 2, ss, out=np.zeros(len(ss)), where=ss > 0)
    # members that agree exactly (on the label or the observable) show no correlation at all: 0, not
    # the chance correction's negative value
    return np.where(ss > 0, 1.0 - (1.0 - r2) * (k - 1) / (k - 2), 0.0)


def relevant_errors(weights) -> float:
    """The prospective errors that bear on an observable, counted by their `relevance` (a label
    without one, chosen before any committee or by an aloop that did not record it, counts 0)."""
    w = np.asarray(weights, dtype=float)
    return float(np.nansum(w)) if w.size else 0.0


def label_noise(energy, sigma, group) -> dict:
    """How far repeated labels of one configuration scatter beyond their own error bars: the Birge
    ratio R = √(χ²/dof) of each configuration's labels about their weighted mean, pooled over the
    configurations labelled more than once (dof = Σ (n_g − 1)). `scale`, the factor every label
    error bar of the labeler is widened by, is R once there are MIN_CALIBRATION_ERRORS degrees of
    freedom, never below 1 (a stated error bar is not narrowed on the scatter of a few repeats),
    and 1 before that.

    Error bars from reblocking a short DMC walk are themselves estimates: from 9 reblocked blocks
    they alone give χ²/dof ≈ 1.3 for right error bars, and a walk that decorrelates slower than the
    longest block understates them. Repeats measure both directly."""
    energy, sigma, group = (np.asarray(x) for x in (energy, sigma, group))
    chi2, dof = 0.0, 0
    for g in np.unique(group):
        e, s = energy[group == g].astype(float), sigma[group == g].astype(float)
        if len(e) < 2:
            continue
        w = 1.0 / s**2
        chi2 += float(np.sum(w * (e - np.sum(w * e) / np.sum(w)) ** 2))
        dof += len(e) - 1
    ratio = float(np.sqrt(chi2 / dof)) if dof else None
    scale = max(ratio, 1.0) if dof >= MIN_CALIBRATION_ERRORS else 1.0
    return {"scale": scale, "ratio": ratio, "dof": dof}


def misfit_raised(records: list[dict]) -> bool:
    return bool((records[-1].get("misfit") or {}).get("raised")) if records else False


def barrier(energies: np.ndarray) -> np.ndarray:
    """Highest image minus the first image, along the last axis (eV)."""
    return energies.max(-1) - energies[..., 0]


def frozen(kind: str, energies: np.ndarray) -> np.ndarray:
    """An observable on a source's own frames, along the last axis (eV): a barrier, or (`difference`)
    the last frame minus the first."""
    return energies[..., -1] - energies[..., 0] if kind == "difference" else barrier(energies)


def prospective(err: np.ndarray, sigma_committee: np.ndarray, sigma_label: np.ndarray) -> dict | None:
    """Errors of a batch predicted before it was labelled. A label is the truth plus its own noise, so
    the error it can show is the committee's σ and the label's error bar together."""
    if len(err) == 0 or not np.isfinite(err[0]):   # the first batch is chosen without a committee
        return None
    return _errors(np.asarray(err), np.hypot(sigma_committee, sigma_label))


def held_out_errors(mean: np.ndarray, std: np.ndarray, y: np.ndarray, n_atoms: np.ndarray) -> dict:
    """Committee mean ± std against the test set's labels y (eV per configuration)."""
    out = _errors(mean - y, std)
    out["rmse_per_atom"] = float(np.sqrt(np.mean(((mean - y) / n_atoms) ** 2)))
    return out


def spread(std: np.ndarray) -> dict | None:
    """Median and 95th percentile of the committee σ over the pool; None for an empty pool."""
    if len(std) == 0:
        return None
    return {"median": float(np.median(std)), "p95": float(np.percentile(std, 95))}


def observable(values: np.ndarray, centre: float | None = None) -> dict:
    """One observable's value, spread and per-member values. The value is the members' mean, or
    `centre` when given (a relaxed barrier: the committee mean model's own, which export gives)."""
    values = np.asarray(values, dtype=float)
    return {"mean": float(values.mean() if centre is None else centre),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0, "members": values.tolist()}


def iteration_record(iteration: int, *, n_labels: int, n_failed: int, label_sigma: np.ndarray, noise_floor: float,
                     batch: tuple, history: tuple, test: dict | None, pool_std: np.ndarray | None,
                     observables: dict, objective, newton_steps, seeds: dict, seconds: dict,
                     core_hours: float | None = None, lbfgs_steps=None, prior_sigma: float | None = None,
                     model_error: float | None = None, relevant: dict | None = None, label_noise: dict | None = None,
                     misfit_before: bool = False, saddles: dict | None = None, loo: tuple | None = None,
                     tau_backoffs: int = 0) -> dict:
    """The record of one iteration. `batch` is (error, committee σ, label σ) of this iteration's
    labels, `history` (error, committee σ, label σ, iteration) of every prospective label so far;
    `observables` maps a name to its record (see `observable`); `core_hours` what every label so far
    cost (None when one's cost is unknown). A committee of `finetune.readout: full` has `lbfgs_steps`
    and None for `newton_steps`. `prior_sigma`: the τ the fit used (eV/atom; chosen by the labels'
    evidence with `committee.prior_sigma: auto`, smaller by √2 per `tau_backoffs` where a member
    did not converge at the evidence's), and `model_error` the model error m it found (eV per
    configuration; 0 with a given τ). `relevant`: each observable's `relevant_errors`;
    `label_noise`: the repeats' verdict on the labels' error bars (`label_noise`), which every label
    σ given here already includes. `misfit_before`: the misfit warning stood at the previous
    iteration (see `misfit`). `saddles`: per observable, (error, committee σ, label σ) of the
    prospective labels at the saddles of its own relaxed paths; their test (`saddle_bias`) joins the
    observable's record as `saddle_labels`. `loo`: (error, committee σ, label σ) of every label under
    this iteration's committee fitted without it (Committee.leave_one_out; None for a class without
    one), on which the σ scale is fitted."""
    noise = np.sqrt(np.asarray(label_sigma) ** 2 + noise_floor**2)
    # The scale is given once prospective errors exist to test it. It is fitted on the committee
    # as it is now (leave-one-out) where the class allows: the prospective errors so far were made
    # by earlier committees, whose σ meant something else while the evidence moved τ (measured on
    # MoS2: a σ twice too wide at 75-100 labels; docs/mos2-svac.md).
    tested = len(history[0]) >= MIN_CALIBRATION_ERRORS
    prospective_scale = sigma_scale(*history[:3]) if tested else None
    scale = sigma_scale(*loo) if tested and loo is not None else prospective_scale
    saddle_tests = {name: saddle_bias(*errors, scale) for name, errors in (saddles or {}).items()}
    observables = {name: o | ({"saddle_labels": saddle_tests[name]} if saddle_tests.get(name) else {})
                   for name, o in observables.items()}
    return {
        "iteration": iteration,
        "n_labels": n_labels,
        "n_new": len(batch[0]),
        "n_failed": n_failed,
        "core_hours": None if core_hours is None else round(float(core_hours), 6),
        "prospective": prospective(*batch),
        "test": test,
        "pool_sigma": spread(pool_std) if pool_std is not None else None,
        "sigma_scale": scale,
        "sigma_scale_from": None if scale is None else "leave-one-out" if loo is not None else "prospective",
        "sigma_scale_prospective": prospective_scale,
        "misfit": misfit(*history, raised_before=misfit_before),
        "relevant_errors": {name: round(float(v), 3) for name, v in (relevant or {}).items()},
        **({"label_noise": label_noise} if label_noise is not None else {}),
        "label_noise_median": float(np.median(noise)) if len(noise) else None,
        "observables": observables,
        "objective": list(objective),
        **({"newton_steps": list(newton_steps)} if newton_steps is not None else {}),
        **({"lbfgs_steps": list(lbfgs_steps)} if lbfgs_steps is not None else {}),
        **({"prior_sigma": float(prior_sigma)} if prior_sigma is not None else {}),
        **({"model_error": float(model_error)} if model_error is not None else {}),
        **({"tau_backoffs": int(tau_backoffs)} if tau_backoffs else {}),
        "seeds": seeds,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }


def _label_budget(rules, records: list[dict]) -> str | None:
    n = records[-1]["n_labels"]
    if n >= rules.max_labels:
        return f"label budget reached: {n} labels (stop.max_labels = {rules.max_labels})"
    return None


def _iteration_limit(rules, records: list[dict]) -> str | None:
    if rules.max_iterations is not None and len(records) >= rules.max_iterations:
        return f"iteration limit reached: {len(records)} (stop.max_iterations)"
    return None


def calibration(records: list[dict]) -> float:
    """The factor the stop rules (and the forecast of them) put on the committee's σ: the newest
    σ scale fitted on the prospective errors, never below 1, so an overconfident committee cannot
    stop early and an underconfident one is taken at its word."""
    return max(records[-1].get("sigma_scale") or 1.0, 1.0) if records else 1.0


def _pool_uncertainty(rules, records: list[dict]) -> str | None:
    last = records[-1]
    if misfit_raised(records):   # σ describes the spread of the fits, not their common misfit
        return None
    if rules.uncertainty_ratio is None or not last["pool_sigma"] or not last["label_noise_median"]:
        return None
    scale = calibration(records)
    p95, noise = scale * last["pool_sigma"]["p95"], last["label_noise_median"]
    if p95 < rules.uncertainty_ratio * noise:
        return (f"pool uncertainty converged: 95th-percentile σ {p95 * 1000:.1f} meV "
                f"(calibration ×{scale:.2f}) < {rules.uncertainty_ratio} × label noise {noise * 1000:.1f} meV")
    return None


def untested(records: list[dict], name: str) -> str:
    """Why the rule on observable `name` cannot trust the σ calibration yet ("" when it can): fewer
    than MIN_CALIBRATION_ERRORS prospective errors bear on it (`relevant_errors`)."""
    if not records:
        return ""
    n = (records[-1].get("relevant_errors") or {}).get(name, 0.0)
    if n >= MIN_CALIBRATION_ERRORS:
        return ""
    return (f"the σ calibration is tested on {n:.1f} prospective errors that bear on '{name}' "
            f"(it needs {MIN_CALIBRATION_ERRORS})")


def saddles_off(records: list[dict], name: str) -> bool:
    """Whether the newest record's saddle check on observable `name` stands (see `saddle_bias`)."""
    return bool(records) and bool((records[-1]["observables"].get(name, {}).get("saddle_labels") or {}).get("raised"))


def _observable_settled(rules, records: list[dict]) -> str | None:
    if rules.observable is None or len(records) < rules.observable.window or misfit_raised(records):
        return None   # under misfit the committee agrees on a value that more labels would still move
    if untested(records, rules.observable.name):
        return None   # the calibration was measured on labels that do not move with the observable
    if any(r["observables"].get(rules.observable.name, {}).get("outside_domain")
           for r in records[-rules.observable.window:]):
        return None   # a path through geometries the backbone never saw: its barrier is no answer
    if saddles_off(records, rules.observable.name):
        return None   # its own saddles are labelled off their predictions: the value itself is off
    name, tol = rules.observable.name, rules.observable.tolerance
    window = [r["observables"][name] for r in records[-rules.observable.window:]]
    means = [w["mean"] for w in window]
    # a committee whose energies are ×4 overconfident agrees on a barrier ×4 too closely
    scale = calibration(records)
    # every iteration of the window, not only the last, must be within tolerance: one lucky
    # narrow committee after wide ones is no evidence of convergence
    change, spread = max(means) - min(means), scale * max(w["std"] for w in window)
    if change < tol and spread < tol:
        return (f"observable '{name}' converged: changed {change * 1000:.1f} meV over the last "
                f"{rules.observable.window} iterations, committee spread at most {spread * 1000:.1f} meV "
                f"(calibration ×{scale:.2f}; < {tol * 1000:.1f} meV)")
    return None


def _pool_exhausted(rules, records: list[dict]) -> str | None:
    return None if records[-1]["pool_sigma"] else "pool exhausted: every candidate is labelled or failed"


# the stop rules in the order they are checked, by the name of their setting in `stop`
STOP_RULES: dict[str, Callable[..., str | None]] = {
    "max_labels": _label_budget, "max_iterations": _iteration_limit, "uncertainty_ratio": _pool_uncertainty,
    "observable": _observable_settled, "pool_exhausted": _pool_exhausted,
}


def first_stop(rules, records: list[dict]) -> tuple[str, str] | None:
    """(name, sentence) of the first stop rule (`rules`: the campaign's `stop` settings) that fires on
    the records so far; None to go on."""
    for name, rule in STOP_RULES.items():
        reason = rule(rules, records)
        if reason is not None:
            return name, reason
    return None


def stop_reason(c, records: list[dict]) -> str | None:
    """The first stop rule that fires on the records so far, as a sentence; None to go on."""
    stop = first_stop(c.stop, records)
    return None if stop is None else stop[1]


def when_rules_fire(rules, records: list[dict], names=("uncertainty_ratio", "observable")) -> dict:
    """For each rule of `names`, the label count of the first record on which it alone would have
    fired (None: never), ignoring every other rule: where a run would have stopped."""
    return {name: next((records[k - 1]["n_labels"] for k in range(1, len(records) + 1)
                        if STOP_RULES[name](rules, records[:k]) is not None), None) for name in names}
