"""The saddle check: labels at the saddles of an observable's own relaxed paths that sit off their
predictions, iteration after iteration, say the barrier is off, whatever its ± says; errors that
the committee's calibrated σ explains do not raise it."""
from __future__ import annotations

import numpy as np

from aloop import metrics
from aloop.report_text import one_line, status_warnings


def test_errors_the_calibrated_sigma_explains_do_not_raise_it():
    rng = np.random.default_rng(0)
    s_c, s_l = np.full(10, 0.05), np.full(10, 0.02)
    raised = [metrics.saddle_bias(rng.normal(0, np.hypot(s_c, s_l)), s_c, s_l, 1.0)["raised"] for _ in range(400)]
    assert np.mean(raised) < 0.01
    # a committee ×4 overconfident everywhere, saddles included: its σ scale accounts for it
    wide = [metrics.saddle_bias(rng.normal(0, np.hypot(4 * s_c, s_l)), s_c, s_l, 4.0)["raised"] for _ in range(400)]
    assert np.mean(wide) < 0.01


def test_saddles_labelled_above_their_predictions_raise_it_with_how_far_and_which_way():
    # the MoS2 targeted runs: each new saddle labelled 0.3–0.8 eV above a prediction of σ 0.03–0.1
    rng = np.random.default_rng(1)
    err = rng.uniform(0.3, 0.8, 6)
    s_c, s_l = rng.uniform(0.03, 0.1, 6), np.full(6, 0.02)
    bias = metrics.saddle_bias(err, s_c, s_l, scale=3.8)
    assert bias["raised"] and bias["n"] == 6 and bias["z"] > 3.3
    assert abs(bias["mean_error"] - err.mean()) < 1e-12
    assert metrics.saddle_bias(-err, s_c, s_l, scale=3.8)["z"] < -3.3   # two-sided: a barrier too high too
    assert metrics.saddle_bias(err[:2], s_c[:2], s_l[:2], scale=3.8) is None   # too few labels to test


def _record(saddle):
    observable = {"mean": 1.26, "std": 0.039} | ({"saddle_labels": saddle} if saddle else {})
    return {"iteration": 5, "n_labels": 125, "prospective": None, "test": None, "pool_sigma": None,
            "observables": {"barrier": observable}}


def test_the_record_carries_it_and_the_user_reads_it_where_the_barrier_is_printed():
    s = np.full(4, 0.04)
    record = metrics.iteration_record(
        5, n_labels=125, n_failed=0, label_sigma=np.full(125, 0.02), noise_floor=0.0,
        batch=(np.zeros(0), np.zeros(0), np.zeros(0)), history=(np.zeros(0),) * 4, test=None, pool_std=None,
        observables={"barrier": {"mean": 1.26, "std": 0.039}}, objective=[], newton_steps=[], seeds={}, seconds={},
        saddles={"barrier": (np.array([0.57, 0.48, 0.29, 0.62]), s, np.full(4, 0.02))})
    saddle = record["observables"]["barrier"]["saddle_labels"]
    assert saddle["raised"] and abs(saddle["mean_error"] - 0.49) < 1e-9
    assert "barrier 1.260 ± 0.039 eV (its saddles labelled +0.49 eV off the model)" in one_line(record)
    (warning,) = status_warnings(record)
    assert "'barrier': 4 labels, on average +0.490 eV above the prediction" in warning
    assert "too low where the labels sit above" in warning and "stop rule does not fire" in warning
    assert status_warnings(_record(saddle | {"raised": False})) == []
    assert "saddles" not in one_line(_record(None))


def test_the_observable_rule_waits_while_it_stands():
    from test_stop_rules import campaign, records
    recs = records([0.421, 0.423, 0.422], [0.004, 0.005, 0.003])
    assert metrics.stop_reason(campaign(), recs) is not None
    recs[-1]["observables"]["barrier"]["saddle_labels"] = {"raised": True, "n": 4, "mean_error": 0.4, "z": 9.0,
                                                           "p_value": 1e-19, "alpha": 1e-3}
    assert metrics.stop_reason(campaign(), recs) is None
    recs[-1]["observables"]["barrier"]["saddle_labels"]["raised"] = False
    assert metrics.stop_reason(campaign(), recs) is not None
