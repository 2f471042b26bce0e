"""The metrics are pure functions on arrays: records and stop rules from numbers alone."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from aloop import metrics


def stop_settings(max_labels=100, max_iterations=None, uncertainty_ratio=None, observable=None):
    return SimpleNamespace(max_labels=max_labels, max_iterations=max_iterations,
                           uncertainty_ratio=uncertainty_ratio, observable=observable)


def record(n_labels, p95=0.02, noise=0.01, barrier=0.4, spread=0.001, scale=None):
    return {"n_labels": n_labels, "pool_sigma": None if p95 is None else {"median": p95 / 2, "p95": p95},
            "label_noise_median": noise, "sigma_scale": scale, "relevant_errors": {"barrier": 20.0},
            "observables": {"barrier": {"mean": barrier, "std": spread, "members": []}}}


def test_metrics_report_and_store_load_without_the_model_stack():
    """`aloop status` and `aloop report` need none of torch, e3nn or MACE (a fresh interpreter:
    this one has them from conftest)."""
    code = ("import sys, aloop.metrics, aloop.report, aloop.store, aloop.feature_cache; "
            "print(sorted(m for m in ('torch', 'e3nn', 'mace') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


def test_prospective_is_none_for_a_batch_chosen_without_a_committee():
    assert metrics.prospective(np.array([]), np.array([]), np.array([])) is None
    assert metrics.prospective(np.array([np.nan, np.nan]), np.full(2, np.nan), np.ones(2)) is None


def test_prospective_counts_errors_within_committee_and_label_sigma_together():
    err = np.array([0.3, -0.4, 1.5])
    out = metrics.prospective(err, np.array([0.3, 0.0, 0.6]), np.array([0.4, 0.5, 0.8]))   # σ: 0.5, 0.5, 1.0
    assert out["n"] == 3 and out["max"] == pytest.approx(1.5)
    assert out["rmse"] == pytest.approx(np.sqrt(np.mean(err**2)))
    assert out["within_1sigma"] == pytest.approx(2 / 3) and out["within_2sigma"] == pytest.approx(1.0)
    assert out["mean_sigma"] == pytest.approx(2 / 3)


def test_test_errors_and_pool_spread():
    out = metrics.held_out_errors(np.array([1.0, 2.0]), np.array([0.1, 0.1]), np.array([1.1, 1.8]), np.array([2, 4]))
    assert out["rmse"] == pytest.approx(np.sqrt((0.01 + 0.04) / 2))
    assert out["rmse_per_atom"] == pytest.approx(np.sqrt((0.05**2 + 0.05**2) / 2))
    assert metrics.spread(np.array([])) is None
    assert metrics.spread(np.arange(101.0)) == {"median": 50.0, "p95": 95.0}


def test_a_relaxed_observable_reports_the_mean_models_value_with_the_members_spread():
    o = metrics.observable(np.array([0.3, 0.5]), centre=0.41)
    assert o["mean"] == 0.41 and o["std"] == pytest.approx(np.std([0.3, 0.5], ddof=1)) and o["members"] == [0.3, 0.5]


def test_observable_of_one_member_has_no_spread():
    assert metrics.observable(np.array([0.4])) == {"mean": 0.4, "std": 0.0, "members": [0.4]}
    two = metrics.observable(np.array([0.3, 0.5]))
    assert two["mean"] == pytest.approx(0.4) and two["std"] == pytest.approx(np.sqrt(0.02))


def test_sigma_scale_widens_an_overconfident_committee():
    rng = np.random.default_rng(0)
    s_c, s_l = np.full(4000, 0.01), np.full(4000, 0.001)
    err = rng.normal(scale=np.hypot(3 * s_c, s_l))
    assert metrics.sigma_scale(err, s_c, s_l) == pytest.approx(3.0, rel=0.05)
    assert metrics.sigma_scale(np.zeros(5), np.ones(5), np.zeros(5)) == 0.1   # clipped


def test_iteration_record_from_arrays():
    batch = (np.array([0.01, -0.02]), np.array([0.01, 0.01]), np.array([0.005, 0.005]))
    history = (*(np.tile(x, 4) for x in batch), np.repeat([1, 1, 2, 2], 2))    # 8 errors: enough to calibrate
    r = metrics.iteration_record(
        2, n_labels=10, n_failed=1, label_sigma=np.full(10, 0.003), noise_floor=0.004, batch=batch,
        history=history, test=None, pool_std=np.array([0.01, 0.03]), observables={"barrier": metrics.observable(np.array([0.4, 0.5]))},
        objective=np.array([1.0, 2.0]), newton_steps=np.array([0, 3]), seeds={"selection": [0, 2, 1]}, seconds={"train": 1.234})
    assert r["n_new"] == 2 and r["prospective"]["n"] == 2 and r["sigma_scale"] is not None
    assert r["misfit"] is None   # two iterations with errors: too few for a verdict
    assert r["label_noise_median"] == pytest.approx(0.005)
    assert r["pool_sigma"]["median"] == pytest.approx(0.02)
    assert r["observables"]["barrier"]["mean"] == pytest.approx(0.45)
    assert r["objective"] == [1.0, 2.0] and r["newton_steps"] == [0, 3] and r["seconds"] == {"train": 1.23}
    no_pool = metrics.iteration_record(
        0, n_labels=2, n_failed=0, label_sigma=np.zeros(2), noise_floor=0.0, batch=(np.full(2, np.nan),) * 3,
        history=(np.array([]),) * 4, test=None, pool_std=None, observables={}, objective=[], newton_steps=[], seeds={},
        seconds={})
    assert no_pool["prospective"] is None and no_pool["pool_sigma"] is None and no_pool["sigma_scale"] is None


def test_sigma_scale_is_fitted_on_the_leave_one_out_errors_once_prospective_ones_exist():
    """The record's σ scale comes from the current committee's leave-one-out errors when the class has
    them, from the prospective errors otherwise, and from neither before prospective errors can test
    it; the prospective fit is kept beside it."""
    batch = (np.array([0.01, -0.02]), np.array([0.01, 0.01]), np.zeros(2))
    history = (*(np.tile(x, 4) for x in batch), np.repeat([1, 1, 2, 2], 2))
    loo = (np.full(30, 0.03), np.full(30, 0.01), np.zeros(30))   # three σ: a scale of 3

    def record(history, loo):
        return metrics.iteration_record(
            2, n_labels=30, n_failed=0, label_sigma=np.zeros(30), noise_floor=0.0, batch=batch, history=history,
            test=None, pool_std=None, observables={}, objective=[], newton_steps=[], seeds={}, seconds={}, loo=loo)

    both = record(history, loo)
    assert both["sigma_scale"] == pytest.approx(3.0, rel=1e-6) and both["sigma_scale_from"] == "leave-one-out"
    assert both["sigma_scale_prospective"] == pytest.approx(metrics.sigma_scale(*history[:3]))
    alone = record(history, None)
    assert alone["sigma_scale"] == alone["sigma_scale_prospective"] and alone["sigma_scale_from"] == "prospective"
    early = record(tuple(x[:4] for x in history), loo)   # 4 prospective errors: too few to test a scale
    assert early["sigma_scale"] is None and early["sigma_scale_from"] is None


def test_stop_rules_in_order_with_their_names():
    rules = stop_settings(max_labels=10, uncertainty_ratio=1.0)
    assert metrics.first_stop(rules, [record(10)])[0] == "max_labels"
    assert metrics.first_stop(rules, [record(5, p95=0.005)])[0] == "uncertainty_ratio"
    # an overconfident committee (calibration scale 3) does not stop on its raw σ
    assert metrics.first_stop(rules, [record(5, p95=0.005, scale=3.0)]) is None
    assert metrics.first_stop(rules, [record(5, p95=None)])[0] == "pool_exhausted"
    assert metrics.stop_reason(SimpleNamespace(stop=rules), [record(10)]).startswith("label budget reached")
    assert metrics.first_stop(stop_settings(max_iterations=2), [record(1), record(2)])[0] == "max_iterations"


def test_when_each_rule_alone_would_have_fired():
    observable = SimpleNamespace(name="barrier", tolerance=0.01, window=2)
    rules = stop_settings(max_labels=4, uncertainty_ratio=1.0, observable=observable)
    records = [record(2, barrier=0.3), record(4, barrier=0.4), record(6, barrier=0.405, p95=0.02),
               record(8, barrier=0.41, p95=0.005)]
    assert metrics.when_rules_fire(rules, records) == {"uncertainty_ratio": 8, "observable": 6}
    assert metrics.when_rules_fire(rules, records[:2]) == {"uncertainty_ratio": None, "observable": None}


def test_relevance_counts_labels_that_move_with_the_observable_and_removes_chance():
    rng = np.random.default_rng(0)
    k = 8
    observable = rng.normal(size=k)
    moving = np.stack([2 * observable + 1, -observable], axis=1)   # [K, 2]: up, or down, with it
    assert metrics.relevance(moving, observable) == pytest.approx([1.0, 1.0])
    unrelated = rng.normal(size=(k, 20000))
    weights = metrics.relevance(unrelated, observable)
    raw = np.corrcoef(np.vstack([observable, unrelated.T]))[0, 1:] ** 2
    assert raw.mean() == pytest.approx(1 / (k - 1), abs=0.01)      # what K members show by chance
    assert weights.mean() == pytest.approx(0.0, abs=0.01)          # removed: 20000 of them count as none
    assert metrics.relevant_errors([1.0, np.nan, 0.5]) == 1.5      # NaN: not recorded, counts 0
    assert metrics.relevance(moving, np.full(k, 0.4)) == pytest.approx([0.0, 0.0])   # members agree: no test
    with pytest.raises(ValueError, match="K ≥ 3"):
        metrics.relevance(moving[:2], observable[:2])


def test_label_noise_measures_error_bars_against_the_scatter_of_repeats():
    """Repeated DMC labels of H3 scattered beyond their reblocked error bars (docs/h3-exchange-dmc.md):
    the Birge ratio of the repeats recovers by how much, and widens the error bars only on enough
    repeats and never narrows them."""
    rng = np.random.default_rng(1)
    group = np.repeat(np.arange(40), 5)                   # 40 configurations labelled 5 times: 160 dof
    truth = rng.normal(size=40)[group]
    sigma = rng.uniform(0.02, 0.04, len(group))
    under = metrics.label_noise(truth + 1.5 * sigma * rng.normal(size=len(group)), sigma, group)
    assert under["dof"] == 160 and under["ratio"] == pytest.approx(1.5, rel=0.1) and under["scale"] == under["ratio"]
    honest = metrics.label_noise(truth + 0.8 * sigma * rng.normal(size=len(group)), sigma, group)
    assert honest["ratio"] < 1 and honest["scale"] == 1.0   # a stated error bar is not narrowed
    few = metrics.label_noise([0.0, 0.3, 1.0, 1.3], [0.01] * 4, [0, 0, 1, 1])   # 2 dof: far apart, but too few
    assert few["dof"] == 2 and few["ratio"] > 10 and few["scale"] == 1.0
    single = metrics.label_noise([0.0, 1.0], [0.01, 0.01], [0, 1])
    assert single == {"scale": 1.0, "ratio": None, "dof": 0}
