"""The observable stop rule fires only on a stable observable with a narrow committee throughout."""
from types import SimpleNamespace

from aloop.metrics import stop_reason


def campaign(tolerance=0.01, window=3):
    observable = SimpleNamespace(name="barrier", tolerance=tolerance, window=window)
    return SimpleNamespace(stop=SimpleNamespace(max_labels=100, max_iterations=None, uncertainty_ratio=None,
                                                observable=observable))


def records(means, stds):
    return [{"n_labels": 8 + 4 * i, "pool_sigma": {"p95": 1.0, "median": 1.0}, "label_noise_median": 0.003,
             "relevant_errors": {"barrier": 20.0}, "observables": {"barrier": {"mean": m, "std": s}}} for i, (m, s) in enumerate(zip(means, stds))]


def test_fires_when_stable_and_narrow_over_the_whole_window():
    reason = stop_reason(campaign(), records([0.30, 0.421, 0.423, 0.422], [0.2, 0.004, 0.005, 0.003]))
    assert reason is not None and "converged" in reason and "at most 5.0 meV" in reason


def test_a_single_narrow_committee_after_wide_ones_does_not_stop_the_run():
    # the means agree by coincidence, but the committee was wide two iterations ago
    assert stop_reason(campaign(), records([0.421, 0.423, 0.422], [0.05, 0.004, 0.003])) is None


def test_a_moving_observable_does_not_stop_the_run():
    assert stop_reason(campaign(), records([0.40, 0.42, 0.43], [0.003, 0.003, 0.003])) is None


def test_an_overconfident_committee_is_judged_by_its_calibrated_spread():
    """A committee whose prospective errors say its σ is ×4 too small agrees on the observable ×4
    too closely: the rule multiplies the spread by that calibration before comparing (as the MoS2
    benchmark's targeted run showed: a raw spread of 15 meV under 20 meV, with the barrier 0.49 eV off)."""
    recs = records([0.421, 0.423, 0.422], [0.004, 0.005, 0.003])
    assert stop_reason(campaign(), recs) is not None
    recs[-1]["sigma_scale"] = 4.0
    assert stop_reason(campaign(), recs) is None
    recs[-1]["sigma_scale"] = 1.5                  # 7.5 meV: still under the tolerance
    assert "calibration ×1.50" in stop_reason(campaign(), recs)
    recs[-1]["sigma_scale"] = 0.5                  # underconfident: never narrowed below the raw spread
    assert "at most 5.0 meV" in stop_reason(campaign(), recs)


def test_the_rule_waits_for_labels_that_move_with_the_observable():
    """Random DMC labels of H3 tested the committee's σ where they were, near equilibrium (scale
    ×1.00), while its barrier was 69 meV off with a 7 meV spread (docs/h3-exchange-dmc.md): the
    calibration counts for the rule only once enough labels bore on the observable."""
    recs = records([0.421, 0.423, 0.422], [0.004, 0.005, 0.003])
    recs[-1]["relevant_errors"] = {"barrier": 0.8}
    assert stop_reason(campaign(), recs) is None
    recs[-1]["relevant_errors"] = {"barrier": 8.0}
    assert "converged" in stop_reason(campaign(), recs)
    del recs[-1]["relevant_errors"]   # a record of an aloop that did not count them
    assert stop_reason(campaign(), recs) is None


def test_a_barrier_read_over_a_path_outside_the_domain_does_not_stop_the_run():
    # the MoS2 contact oracle, targeted seed 1 at 210 labels: the committee mean's band collapsed an
    # S–S pair to 1.16 Å and read a barrier of 3.1 eV off it
    recs = records([0.421, 0.423, 0.422], [0.004, 0.005, 0.003])
    assert stop_reason(campaign(), recs) is not None
    recs[1]["observables"]["barrier"]["outside_domain"] = "image 4: S-S at 1.160 Å, floor 2.199 Å"
    assert stop_reason(campaign(), recs) is None
    recs.append({**recs[-1]})   # once the window has moved past it, the rule may fire again
    recs.append({**recs[-1]})
    assert stop_reason(campaign(), recs) is not None
