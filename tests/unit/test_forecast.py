"""The learning-curve forecast: a power law recovered from noisy points, and no number when the
points cannot carry one."""
from __future__ import annotations

import numpy as np
import pytest

from aloop import forecast as fc

N = np.array([12, 16, 20, 24, 32, 40, 56, 75, 100, 150])


def noisy_curve(seed: int, c=0.4, b=0.6, floor=0.0, rel=0.15):
    """y = √((c n^−b)² + floor²) with relative Gaussian noise `rel` and that as each point's error bar."""
    rng = np.random.default_rng(seed)
    y = np.hypot(c * N**-b, floor) * (1 + rel * rng.normal(size=len(N)))
    return y, rel * y


@pytest.mark.parametrize("floor", [0.0, 0.004])
def test_hindcast_recovers_the_exponent_within_its_stated_uncertainty(floor):
    y, err = noisy_curve(1, floor=floor)
    rows = fc.hindcast(N, y, err, 7, floor=floor)
    b, sd = rows[0]["exponent"], rows[0]["exponent_sd"]
    assert 0 < sd < 0.3
    assert abs(b - 0.6) < 2 * sd
    assert [r["n"] for r in rows] == [75, 100, 150] and all(r["n_fit"] == 56 for r in rows)
    truth = np.hypot(0.4 * N[7:] ** -0.6, floor)
    assert all(r["lo"] < t < r["hi"] * 1.2 and r["lo"] < r["forecast"] < r["hi"] for r, t in zip(rows, truth))
    assert [r["actual"] for r in rows] == list(y[7:])


def test_the_stated_uncertainty_is_honest_over_many_noisy_curves():
    """About 68% of the fitted exponents lie within one stated σ of the true one (not 20%, not 100%)."""
    hits = [abs((f := fc.fit_power_law(N, *noisy_curve(seed))).b - 0.6) < np.sqrt(f.cov[1, 1]) for seed in range(200)]
    assert 0.55 < np.mean(hits) < 0.85


def test_labels_to_reach_a_target_on_an_exact_curve():
    n = np.array([10.0, 20, 40, 80])
    fit = fc.fit_power_law(n, 0.1 * n**-0.5)   # exact points: no scatter, no uncertainty
    total, lo, hi = fit.labels_to_reach(0.1 / 20)
    assert fit.b == pytest.approx(0.5) and total == pytest.approx(400) and lo == pytest.approx(hi, rel=1e-6)
    out = fc.forecast("rmse", n, 0.1 * n**-0.5 * (1 + 0.01 * np.array([1, -1, 1, -1])), None, 0.1 / 20, "5 meV")
    assert out.refusal is None and 300 < out.n_total < 530
    more = round(out.n_total - 80)
    assert out.text().startswith(f"rmse: ≈ {more} more labels (range ") and out.text().endswith("to reach 5 meV")


def test_no_number_from_fewer_than_four_points():
    out = fc.forecast("barrier spread", N[:3], 0.05 * N[:3] ** -0.5, None, 0.001, "±0.001 eV")
    assert out.n_total is None and out.refusal == "3 points (at least 4 label counts needed)"
    assert out.text() == "barrier spread: no forecast: 3 points (at least 4 label counts needed)"
    repeated = fc.forecast("rmse", [10, 20, 20, 20, 40], [0.05, 0.03, 0.031, 0.029, 0.02], None, 0.001, "1 meV")
    assert repeated.refusal == "3 points (at least 4 label counts needed)"   # a batch that all failed adds no point
    with pytest.raises(ValueError, match="at 2 label counts or more, got 4 at 1"):
        fc.fit_power_law([20, 20, 20, 20], [0.03, 0.031, 0.029, 0.03])


@pytest.mark.parametrize("y", [np.full(6, 0.02), 0.01 * N[:6] ** 0.3])
def test_no_number_from_a_flat_or_rising_curve(y):
    out = fc.forecast("rmse", N[:6], y * (1 + 0.01 * np.arange(6) % 2), None, 0.001, "1 meV")
    assert out.n_total is None and out.refusal.startswith("the curve does not fall")


def test_no_number_from_a_misfit_or_a_range_too_wide():
    n = N[:6].astype(float)
    zigzag = 0.05 * n**-0.5 * np.array([1, 2, 0.5, 2, 0.5, 1])
    out = fc.forecast("rmse", n, zigzag, 0.01 * zigzag, 0.001, "1 meV")
    assert out.n_total is None and out.refusal.startswith("a power law does not fit (reduced χ²")
    wide = fc.forecast("rmse", n, zigzag, 2 * zigzag, 0.001, "1 meV")   # the same points with huge error bars
    assert wide.n_total is None and wide.refusal.startswith("too uncertain")
    # a barely falling spread (a DMC campaign's barrier after random labels): the range underflows
    # to 0 labels at one end, which is a refusal, not a division by zero in `aloop status`
    flat = np.array([0.0880, 0.0878, 0.0879, 0.0877])
    hopeless = fc.forecast("barrier", np.array([8, 12, 16, 20.]), flat, flat / np.sqrt(14), 0.03, "±0.03 eV")
    assert hopeless.n_total is None and hopeless.refusal.startswith("too uncertain: 0–over 100000 labels")


def test_forecasts_from_records_with_and_without_core_hours():
    y, err = noisy_curve(3, c=0.3, b=0.7, floor=0.003, rel=0.05)
    spread = 0.2 * N**-0.6
    records = [{"n_labels": int(n), "prospective": {"n": 200, "rmse": float(v)}, "label_noise_median": 0.003,
                "relevant_errors": {"barrier": 20.0}, "observables": {"barrier": {"mean": 0.4, "std": float(s), "members": [0.0] * 50}}}
               for n, v, s in zip(N[:8], y[:8], spread[:8])]
    rmse, barrier = fc.from_records(records, {"observable": {"name": "barrier", "tolerance": 0.004, "window": 3}})
    assert rmse.quantity == "prospective RMSE" and rmse.target == pytest.approx(np.sqrt(2) * 0.003)
    assert "model error = label noise 3.0 meV" in rmse.text() and "core-hours" not in rmse.text()
    assert barrier.n_total == pytest.approx((0.2 / 0.004) ** (1 / 0.6), rel=0.1)
    assert barrier.text().startswith("barrier committee spread: ≈ ") and "±0.004 eV" in barrier.text()
    records[-1]["core_hours"] = 2.0 * records[-1]["n_labels"]   # 2 core-hours per label so far
    (_, barrier) = fc.from_records(records, {"observable": {"name": "barrier", "tolerance": 0.004, "window": 3}})
    more = round(barrier.n_total - N[7]) + round(barrier.wait)   # to the stop, window included
    assert f"≈ {2 * more:.3g} core-hours" in barrier.text()
    assert fc.from_records(records, {"observable": {"name": "barrier", "tolerance": 0.5, "window": 3}})[1].reached


def test_the_spread_forecast_is_of_the_calibrated_spread_the_stop_rule_compares():
    # a committee ×2 overconfident (σ scale 2) needs its spread to fall to half the tolerance
    spread = 0.2 * N**-0.6
    records = [{"n_labels": int(n), "relevant_errors": {"barrier": 20.0}, "observables": {"barrier": {"mean": 0.4, "std": float(s), "members": [0.0] * 50}}}
               for n, s in zip(N[:8], spread[:8])]
    rule = {"observable": {"name": "barrier", "tolerance": 0.004, "window": 3}}
    raw = fc.from_records(records, rule)[-1]
    records[-1]["sigma_scale"] = 2.0
    calibrated = fc.from_records(records, rule)[-1]
    assert calibrated.n_total == pytest.approx(raw.n_total * 2 ** (1 / 0.6), rel=0.05)
    assert "calibration ×2.00" in calibrated.text()
    records[-1]["sigma_scale"] = 0.5   # underconfident: taken at its word, as the stop rule does
    assert fc.from_records(records, rule)[-1].n_total == pytest.approx(raw.n_total)


def test_a_forecast_is_judged_against_the_spread_the_rule_saw_at_each_iteration():
    # the σ scale moves from ×3 to ×1.5: the newest calibration applies to every point of the
    # forecast's fit, but each iteration's rule compared its own spread with its own calibration
    scales = [None, 3.0, 3.0, 2.0, 1.5, 0.5]
    records = [{"n_labels": int(n), "prospective": {"n": 8, "rmse": 0.05 / (i + 1)}, "label_noise_median": 0.01,
                "sigma_scale": c, "relevant_errors": {"barrier": 20.0}, "observables": {"barrier": {"mean": 0.4, "std": 0.1 / (i + 1), "members": [0.0] * 5}}}
               for i, (n, c) in enumerate(zip(N, scales))]
    rule = {"observable": {"name": "barrier", "tolerance": 0.01, "window": 3}}
    newest = {t.key: t for t in fc.tracked(records[:5], rule)}
    assert newest["barrier"].y == pytest.approx(1.5 * 0.1 / np.arange(1, 6))
    seen = fc.as_seen(records, rule)
    n, y, err = seen["barrier"]
    assert list(n) == list(N[:6]) and y == pytest.approx(np.array([1, 3, 3, 2, 1.5, 1]) * 0.1 / np.arange(1, 7))
    assert err == pytest.approx(y / np.sqrt(8))
    assert all(a == pytest.approx(b) for a, b in zip(seen["rmse"], fc.rmse_series(records)))


def test_the_label_count_a_forecast_printed_is_compared_with_the_count_it_took():
    # an exact power law 0.1·n^−0.5 reaches 0.02 at n = 25: every forecast it makes says 25, and the
    # run sees the spread at the target first at 28 labels (its batches come 4 at a time)
    n = np.arange(8, 41, 4)
    records = [{"n_labels": int(m), "relevant_errors": {"barrier": 20.0},
                "observables": {"barrier": {"mean": 0.4, "std": float(0.1 * m**-0.5), "members": [0.0] * 9}}}
               for m in n]
    records[-1]["stop"] = "observable 'barrier' converged: ..."
    rule = {"observable": {"name": "barrier", "tolerance": 0.02, "window": 3}}
    rows = fc.needed_hindcast(records, rule)
    assert [r["n_now"] for r in rows] == [20, 24]   # 4 points needed; from 28 on the target is reached
    for r in rows:
        assert r["forecast"] == pytest.approx(25.0) and r["actual"] == 28 and r["last"] == 40
        assert r["forecast_stop"] == pytest.approx(25.0 + 8) and r["stopped"] == 40
    # a run that ends before it gets there: no count to compare with, only its last one as a bound
    (early,) = fc.needed_hindcast(records[:5], rule)
    assert early["forecast"] == pytest.approx(25.0) and early["actual"] is None and early["last"] == 24
    assert early["stopped"] is None


def test_the_stop_forecast_adds_the_rule_window_after_the_spread_reaches_its_tolerance():
    # batches of 4; the rule fires when 3 iterations in a row are within the tolerance
    rule = {"observable": {"name": "barrier", "tolerance": 0.01, "window": 3}}
    spread = 0.1 * (N[:6] / N[0]) ** -1.0
    records = [{"n_labels": int(n), "relevant_errors": {"barrier": 20.0}, "observables": {"barrier": {"mean": 0.4, "std": float(s), "members": [0.0] * 9}}}
               for n, s in zip(range(8, 32, 4), spread)]
    ahead = fc.from_records(records, rule)[-1]
    assert ahead.wait == 8 and ahead.n_stop == pytest.approx(ahead.n_total + 8)
    assert "to the stop (the rule wants 3 iterations in a row within it: 2 more batches of 4)" in ahead.text()
    for s, waits in ((0.009, 8), (0.008, 4), (0.007, 0)):   # one, two, three iterations within it
        records.append({"n_labels": records[-1]["n_labels"] + 4,
                        "relevant_errors": {"barrier": 20.0}, "observables": {"barrier": {"mean": 0.4, "std": s, "members": [0.0] * 9}}})
        now = fc.from_records(records, rule)[-1]
        assert now.reached and now.wait == waits and now.n_stop == records[-1]["n_labels"] + waits
    assert now.text() == "barrier committee spread: reached ±0.01 eV (stop.observable.tolerance) (last value 7.0 meV)"
    records[-1]["misfit"] = {"raised": True}   # the rule is off under misfit: no stop to forecast
    held = fc.from_records(records, rule)[-1]
    assert held.n_stop is None and held.text().endswith("(last value 7.0 meV); no stop from it while the misfit warning stands")
    records[-1]["misfit"] = None   # nor while the barrier's own saddles are labelled off the model
    records[-1]["observables"]["barrier"]["saddle_labels"] = {"raised": True}
    held = fc.from_records(records, rule)[-1]
    assert held.n_stop is None and held.text().endswith("no stop from it while its saddle labels sit off the model")
    del records[-1]["observables"]["barrier"]["saddle_labels"]
    # nor while too few labels that bear on the barrier tested the calibration
    records[-1]["relevant_errors"] = {"barrier": 3.04}
    held = fc.from_records(records, rule)[-1]
    assert held.n_stop is None and held.text().endswith(
        "no stop from it while the σ calibration is tested on 3.0 prospective errors that bear on 'barrier' (it needs 8)")
