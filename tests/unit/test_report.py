"""Report and status from a synthetic run directory: no MACE, no labeler, only the files a run leaves."""
from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from aloop.arrays import Features
from aloop.feature_cache import FeatureCache
from aloop.report import status_text, write_report
from aloop.store import RunStore

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
P = 6          # readout parameters
K = 4          # committee members
BARRIER_REF = 0.418
BASE_BARRIER = 0.512
STOP = "observable 'barrier' converged: changed 1.2 meV over the last 3 iterations, committee spread at most 3.0 meV (calibration ×1.00; < 5.0 meV)"


def _h3(i: int) -> Atoms:
    r1, r2 = 0.7 + 0.05 * i, 1.6 - 0.04 * i
    return Atoms("H3", positions=[[-r1, 0, 0], [0, 0, 0], [r2, 0, 0]])


def _record(iteration, n_labels, n_new, rmse, sigma, test_rmse, p95, barrier, spread, stop=None):
    prospective = None if iteration == 0 else {
        "n": n_new, "rmse": rmse, "mae": 0.8 * rmse, "max": 2 * rmse, "mean_sigma": sigma,
        "within_1sigma": 0.5, "within_2sigma": 0.75}
    return {
        "iteration": iteration, "n_labels": n_labels, "n_new": n_new, "n_failed": 1,
        "prospective": prospective,
        "test": {"n": 5, "rmse": test_rmse, "mae": test_rmse, "max": 2 * test_rmse, "rmse_per_atom": test_rmse / 3},
        "pool_sigma": {"median": p95 / 3, "p95": p95},
        "label_noise_median": 0.005,
        "observables": {"barrier": {"mean": barrier, "std": spread,
                                    "members": [barrier - spread, barrier, barrier + spread, barrier]}},
        "val_rmse": [0.01] * K, "seeds": {}, "seconds": {"train": 1.0}, "stop": stop,
    }


def _fake_run(run_dir, stopped: bool = True) -> RunStore:
    store = RunStore(run_dir)
    ids = store.add_candidates([_h3(i) for i in range(20)], source="dft")
    neb = store.add_candidates([_h3(i) for i in range(5)], source="exchange")
    rng = np.random.default_rng(0)
    truth = rng.normal(size=P) * 0.1
    # Features and energies consistent with each other: E_true = truth·a + e, so the committee fits.
    a = rng.normal(size=(len(ids) + len(neb), P))
    e = -40.0 + 0.1 * rng.normal(size=len(a))
    all_ids = np.array(ids + neb)
    (run_dir / "cache").mkdir()
    FeatureCache(run_dir / "cache" / "features", P).write(list(all_ids), Features(a, e, np.full(len(a), 3)))
    ta = rng.normal(size=(5, P))
    te = -40.0 + 0.1 * rng.normal(size=5)
    np.savez(run_dir / "cache" / "test_features.npz", a=ta, e=te, n=np.full(5, 3), y=ta @ truth + te + 0.003)

    true_e = {cid: float(a[r] @ truth + e[r]) for r, cid in enumerate(all_ids)}
    batches = [ids[0:4], ids[4:8], ids[8:12], ids[12:16]]
    for it, batch in enumerate(batches):
        if it == 0:   # the first batch is picked without a committee: no prediction
            pred, sig = [np.nan] * 4, [np.nan] * 4
        else:
            pred, sig = [true_e[c] + 0.01 * (-1) ** c for c in batch], [0.012] * 4
        store.mark_selected(batch, it, pred, sig, [1.0] * 4)
        for c in batch[:3] if it == 3 else batch:
            store.add_label(c, true_e[c], 0.001, {"labeler": "fake"})
    store.mark_failed(batches[3][3], "SCF did not converge\nafter 100 cycles")

    (run_dir / "committee").mkdir()
    thetas = truth + 0.002 * rng.normal(size=(K, P))
    for it in range(4):
        np.savez(run_dir / "committee" / f"iter_{it:03d}.npz", thetas=thetas, theta0=np.zeros(P), val_rmse=np.zeros(K))

    rows = [(0, 4, 4, None, None, 0.080, 0.060, 0.470, 0.030),
            (1, 8, 4, 0.040, 0.030, 0.035, 0.025, 0.430, 0.012),
            (2, 12, 4, 0.020, 0.018, 0.015, 0.012, 0.421, 0.004),
            (3, 15, 3, 0.009, 0.010, 0.008, 0.004, 0.4195, 0.003)]
    for k, row in enumerate(rows):
        store.write_iteration(row[0], _record(*row, stop=STOP if stopped and k == 3 else None))
    store.set_meta("campaign", {
        "name": "h3-exchange", "stop": {"max_labels": 40, "uncertainty_ratio": 0.5},
        "finetune": {"noise_floor": 0.005},
        "evaluation": {"observables": [{"kind": "barrier", "name": "barrier", "path": "exchange",
                                        "reference": BARRIER_REF, "low_fidelity": 0.55}]}})
    store.set_meta("base_observables", {"barrier": {"mean": BASE_BARRIER, "std": 0.0, "members": [BASE_BARRIER]}})
    store.set_meta("stop_reason", STOP if stopped else None)
    return store


def _assert_png(path):
    assert path.exists(), path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000, f"{path} is suspiciously small ({len(data)} bytes)"


def test_report_writes_plots_and_summary(tmp_path):
    run = tmp_path / "run"
    _fake_run(run)
    summary = write_report(run)
    assert summary == run / "report" / "summary.md"
    for name in ("learning_curve", "observables", "uncertainty", "parity"):
        _assert_png(run / "report" / f"{name}.png")
    text = summary.read_text()
    assert "h3-exchange" in text
    assert STOP in text
    assert "0.4195 ± 0.0030" in text                       # final committee barrier
    assert f"{BASE_BARRIER:.4f}" in text and f"{BARRIER_REF:.4f}" in text
    assert "| 1.5 |" in text                                # committee − reference, meV
    assert "75% of 11" in text                              # 2σ coverage pooled over iterations 1–3
    for name in ("learning_curve", "observables", "uncertainty", "parity"):
        assert f"]({name}.png)" in text
    assert text.count("\n| ") >= 4 + 1 + 1                 # iteration rows, header, observable row
    import csv
    rows = list(csv.DictReader(open(run / "report" / "metrics.csv")))
    assert len(rows) == 4 and int(rows[-1]["iteration"]) == 3
    assert float(rows[-1]["barrier_mean"]) == pytest.approx(0.4195) and rows[-1]["stop"] == STOP
    assert rows[0]["batch_rmse"] == ""                      # no committee chose the first batch


def test_summary_says_which_errors_the_sigma_scale_was_fitted_on(tmp_path):
    store = _fake_run(tmp_path)
    last = store.iterations()[-1]
    store.write_iteration(3, last | {"sigma_scale": 1.8, "sigma_scale_from": "leave-one-out",
                                     "sigma_scale_prospective": 4.4})
    text = write_report(tmp_path).read_text()
    assert ("overconfident: widen ×1.80 makes the leave-one-out errors of the current committee unit-variance "
            "(used by the stop rules when > 1); on every prospective error so far, made by earlier committees, ×4.40") in text
    store.write_iteration(3, last | {"sigma_scale": 4.4, "sigma_scale_from": "prospective", "sigma_scale_prospective": 4.4})
    assert "×4.40 makes the prospective errors unit-variance (used by the stop rules when > 1)\n" in write_report(tmp_path).read_text()


def test_report_with_one_iteration_and_no_test_or_observables(tmp_path):
    store = RunStore(tmp_path)
    store.add_candidates([_h3(i) for i in range(4)], source="dft")
    rec = _record(0, 4, 4, None, None, 0.0, 0.02, 0.0, 0.0)
    rec.update(test=None, observables={})
    store.write_iteration(0, rec)
    summary = write_report(tmp_path)
    text = summary.read_text()
    assert "still running" in text
    _assert_png(tmp_path / "report" / "learning_curve.png")
    _assert_png(tmp_path / "report" / "uncertainty.png")
    assert not (tmp_path / "report" / "observables.png").exists()
    assert not (tmp_path / "report" / "parity.png").exists()   # no labels, no checkpoint
    assert "observables.png" not in text


def test_report_on_empty_run(tmp_path):
    store = RunStore(tmp_path)
    store.add_candidates([_h3(i) for i in range(3)], source="dft")
    summary = write_report(tmp_path)
    assert "No iteration has finished yet" in summary.read_text()
    assert not list((tmp_path / "report").glob("*.png"))


def test_status_text(tmp_path):
    _fake_run(tmp_path, stopped=False)
    text = status_text(tmp_path)
    assert "h3-exchange" in text
    assert "9 pool, 0 selected, 15 labelled, 1 failed" in text
    assert "SCF did not converge after 100 cycles" in text   # reason, folded onto one line
    assert "iterations done: 4" in text
    assert "iteration 3: 15 labels" in text
    assert "not stopped" in text


def test_status_lists_at_most_ten_failures(tmp_path):
    store = RunStore(tmp_path)
    ids = store.add_candidates([_h3(i) for i in range(12)], source="dft")
    for c in ids:
        store.mark_failed(c, f"boom {c}")
    text = status_text(tmp_path)
    assert text.count("failed #") == 10 and "and 2 more failed" in text
    assert "iterations done: 0" in text


@pytest.mark.parametrize("func", [status_text, write_report])
def test_not_a_run_dir(tmp_path, func):
    with pytest.raises(ValueError, match="not an aloop run directory"):
        func(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()   # the check must not create a run by accident


def test_label_axis_ticks_every_iteration_and_numbers_at_most_15():
    from aloop.plots import label_ticks

    assert label_ticks([4, 8, 8, 12, 15]) == ([4, 8, 12, 15], [])   # a count repeats when a batch all failed
    counts = list(range(5, 151, 5))
    labelled, bare = label_ticks(counts)
    assert sorted(labelled + bare) == counts and labelled[0] == 5 and labelled[-1] == 150
    assert len(labelled) <= 15
    assert min(np.diff(np.log(labelled))) >= np.log(150 / 5) / 15   # numbers spaced evenly along the log axis


def test_status_and_summary_show_the_forecast_of_each_tracked_quantity(tmp_path):
    store = RunStore(tmp_path)
    store.add_candidates([_h3(i) for i in range(4)], source="dft")
    labels = [10, 20, 40, 80, 160, 320]
    for it, n in enumerate(labels):   # spread exactly 0.2 n^−0.6 eV: 5 meV at (0.2/0.005)^(1/0.6) ≈ 467 labels
        rec = _record(it, n, 10, 0.08 * n**-0.5, 0.01, 0.01, 0.01, 0.42, 0.2 * n**-0.6)
        rec["prospective"] = None if it < 3 else rec["prospective"]   # 3 prospective points: too few
        rec["label_noise_median"] = 0.001
        rec["relevant_errors"] = {"barrier": 0.9 * it}
        rec["label_noise"] = {"scale": 1.44, "ratio": 1.44, "dof": 35}
        store.write_iteration(it, rec)
    store.set_meta("campaign", {"name": "h3", "stop": {"max_labels": 1000, "observable": {
        "name": "barrier", "tolerance": 0.005, "window": 3}}})
    text = status_text(tmp_path)
    assert "forecast: prospective RMSE: no forecast: 3 points above the floor (at least 4 label counts needed)" in text
    line = next(x for x in text.splitlines() if x.startswith("forecast: barrier committee spread: ≈ "))
    more = int(line.split("≈ ")[1].split(" ")[0])
    assert more == round((0.2 / 0.005) ** (1 / 0.6)) - 320
    assert "to reach ±0.005 eV (stop.observable.tolerance)" in line
    summary = write_report(tmp_path).read_text()
    assert "## Forecast" in summary and line.removeprefix("forecast: ") in summary
    # 4.5 errors that bear on the barrier tested its calibration: the rule, and its forecast, wait
    assert line.endswith("no stop from it while the σ calibration is tested on 4.5 prospective errors that bear "
                         "on 'barrier' (it needs 8)")
    assert "- tested on barrier: 4.5 of the prospective errors bear on it" in summary
    assert ("- labels' error bars: repeated labels of one configuration scatter ×1.44 their stated σ (Birge ratio "
            "on 35 degrees of freedom); every label's σ is taken ×1.44\n") in summary
    _assert_png(tmp_path / "report" / "learning_curve.png")


MISFIT = {"raised": True, "p_value": 2e-9, "alpha": 1e-3, "misfit_rms": 0.041, "scale_with_misfit": 1.1,
          "scale_without": 6.3, "n": 60, "iterations": [5, 6, 7], "n_recent": 24, "within_2sigma_recent": 0.9}


def test_status_and_summary_show_the_misfit_warning_and_the_pool_sources(tmp_path):
    store = _fake_run(tmp_path, stopped=False)
    campaign = store.get_meta("campaign")
    store.set_meta("campaign", campaign | {"pool": {"sources": [{"name": "dft"}, {"name": "md"}]}})
    store.set_meta("source:dft", {"n": 20, "kind": "file", "frames": 20})
    store.set_meta("source:md", {"n": 90, "kind": "md", "frames": 120, "outside the base model's domain": 2,
                                 "later in an MD trajectory that left the domain": 28, "pairs": {"S-S": 2}})
    assert "misfit" not in status_text(tmp_path)
    last = store.iterations()[-1]
    store.write_iteration(last["iteration"], last | {"misfit": MISFIT})
    for text in (status_text(tmp_path), write_report(tmp_path).read_text()):
        assert "a misfit of about 41 meV" in text and "full-readout fine-tune" in text and "check the labels" in text
        assert "finetune.kind: delta" in text
        assert "md (md): 90 of 120 frames kept; dropped: 2 outside the base model's domain (S-S: 2); " \
               "28 later in an MD trajectory that left the domain" in text
        assert "dft (file): 20 of 20 frames kept" in text


def test_a_barrier_over_a_path_outside_the_domain_is_marked_where_the_user_reads_it():
    from aloop.report_text import one_line, status_warnings
    record = {"iteration": 7, "n_labels": 210, "prospective": None, "test": None, "pool_sigma": None,
              "observables": {"barrier": {"mean": 3.087, "std": 0.161,
                                          "outside_domain": "image 4: S-S at 1.160 Å, floor 2.199 Å"}}}
    line = one_line(record)
    assert "barrier: none, path outside the base model's domain (image 4: S-S at 1.160 Å" in line and "3.087" not in line
    (warning,) = status_warnings(record)
    assert "left the base model's domain ('barrier' at image 4" in warning and "stop rule does not count it" in warning
    del record["observables"]["barrier"]["outside_domain"]
    assert status_warnings(record) == []


def test_a_final_path_outside_the_domain_gives_no_value_in_the_summary_plot_or_forecast(tmp_path):
    from aloop.forecast import spread_series
    from aloop.plots import observable_series
    run = tmp_path / "run"
    store = _fake_run(run, stopped=False)
    records = store.iterations()
    # the MoS2 failure: a collapsed band whose highest image is an end point reads a barrier of 0
    last = records[-1]
    last["observables"]["barrier"] = {**last["observables"]["barrier"], "mean": 0.0, "std": 0.486,
                                      "outside_domain": "image 1: S-S at 1.749 Å, floor 2.199 Å"}
    store.write_iteration(last["iteration"], last)
    records = store.iterations()
    mean, std, left = observable_series(records, "barrier")
    assert left.tolist() == [False, False, False, True]
    assert np.isnan(mean[-1]) and np.isnan(std[-1]) and mean[2] == pytest.approx(0.421)
    n, spread, _ = spread_series(records, "barrier")
    assert n.tolist() == [4, 8, 12]                         # the collapsed path's 0.486 is no spread of a barrier
    text = write_report(run).read_text()
    _assert_png(run / "report" / "observables.png")
    assert "none: path outside the base model's domain (image 1: S-S at 1.749 Å" in text
    assert "0.0000 ± 0.4861" not in text and "-418" not in text and "−418" not in text
