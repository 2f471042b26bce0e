"""Which σ scale keeps the calibrated coverage in T4's 85-99 %? Replayed on run folders.

T4 of the MoS2 benchmark asks that each batch's prospective errors fall within 2σ, σ = the committee's
times one scale s fitted before the batch, 85-99 % of the time. This replays the coverage each batch
would have had with s fitted on:

- `recorded`: what the run itself recorded (iteration records' `sigma_scale`);
- `all`: every prospective error so far, as the loop did until 2026-12-04 (metrics.sigma_scale on the
  whole history): errors of earlier committees, whose σ meant something else while the evidence
  moved τ, so s lags;
- `last k`: the last k iterations' prospective errors only;
- `leave-one-out` (with --loo): the leave-one-out errors of the committee that chose the batch
  (Committee.leave_one_out), what the loop records now. Rebuilt from the run's saved committees and
  cached features (the backbone is loaded; about a second an iteration on MoS2), the prior scaled on
  the pool as it stood at that fit.

Every variant takes the labels' error bars widened by the run's newest label-noise scale (its
repeats' Birge ratio, metrics.label_noise), in the fit and in the test alike; the loop used the
scale of each iteration, so the replay of a run with repeats is close to, not a copy of, the run.

A scale is given, as in the loop, once metrics.MIN_CALIBRATION_ERRORS prospective errors exist.

    python benchmarks/sigma_scale_window.py RUN_DIR [RUN_DIR ...] [--loo [--stops CAMPAIGN]] [--windows 1 2 3 5]
        [--at 75 100 150 300 500]

Per run: the cumulative calibrated 2σ (and 1σ) coverage at each label count in --at (the fraction
T4 reads: every calibrated error up to there), and the scale s each variant ends with. Then the
mean over the runs given, per variant and label count.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from aloop import metrics
from aloop.campaign import CampaignError, load_campaign
from aloop.store import LABELLED, RunStore


def stored_batches(store: RunStore, upto: int | None = None) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """(labels after the batch, error, committee σ, label σ) of every batch chosen by a committee,
    up to `upto` labels (None: all). The label σ is widened by the run's newest label-noise scale
    (metrics.label_noise, from its repeats), as the leave-one-out fit widens them: a fit and a test
    that took the error bars differently would disagree by that factor (1 without repeats, as on
    MoS2; 1.22-1.31 on the H3 DMC runs)."""
    records = store.iterations()
    widen = (records[-1].get("label_noise") or {}).get("scale", 1.0) if records else 1.0
    out = []
    for record in records[1:]:
        if upto is not None and record["n_labels"] > upto:
            break
        err, s_c, s_l = store.batch_errors(record["iteration"])
        keep = np.isfinite(err) & np.isfinite(s_c)
        out.append((record["n_labels"], err[keep], s_c[keep], s_l[keep] * widen))
    return out


def replay(batches: list, window: int | None) -> list[tuple[int, np.ndarray, float]]:
    """(labels, |z| of the batch, s) for every batch after the first whose predecessors hold
    metrics.MIN_CALIBRATION_ERRORS errors, s fitted on the `window` batches before it (None: all)."""
    out = []
    for j in range(1, len(batches)):
        if sum(len(b[1]) for b in batches[:j]) < metrics.MIN_CALIBRATION_ERRORS:
            continue
        before = batches[:j] if window is None else batches[max(0, j - window):j]
        err, s_c, s_l = (np.concatenate([b[i] for b in before]) for i in (1, 2, 3))
        out.append(_scored(batches[j], metrics.sigma_scale(err, s_c, s_l)))
    return out


def _scored(batch, scale: float) -> tuple[int, np.ndarray, float]:
    n, e, c, l_ = batch
    return n, np.abs(e) / np.hypot(scale * c, l_), scale


def recorded(store: RunStore, upto: int | None = None) -> list[tuple[int, np.ndarray, float]]:
    """(labels, |z| of the batch, s) for every batch chosen by a committee whose predecessor's record
    holds a σ scale: the coverage the run itself reported."""
    records = store.iterations()
    scales = {r["n_labels"]: r.get("sigma_scale") for r in records}
    out, previous = [], records[0]["n_labels"] if records else 0
    for batch in stored_batches(store, upto):
        if scales.get(previous) is not None:
            out.append(_scored(batch, scales[previous]))
        previous = batch[0]
    return out


def leave_one_out_scales(folder: str, upto: int | None = None) -> tuple[dict[int, float], dict[int, float]]:
    """{iteration: s} fitted on the leave-one-out errors of that iteration's committee, for every
    iteration whose record could hold a scale (see the module's docstring), up to `upto` labels; and
    {iteration: median over the batch it chose of the committee's σ / the Laplace posterior's
    √(a·Σa)}, which tells a σ inflated by the choice itself (the largest of noisy estimates) from one
    the posterior shares."""
    import mace  # noqa: F401  (mace must be imported before e3nn)
    from aloop import measure
    from aloop.arrays import feature_moment
    from aloop.loop import CampaignRun

    run = CampaignRun.reopen(folder)
    candidates = run.store.rows()
    labelled = run.store.rows(state=LABELLED)
    batches = stored_batches(run.store)
    scales, ratios = {}, {}
    for record in run.store.iterations():
        j = record["iteration"]
        if upto is not None and record["n_labels"] > upto:
            break
        committee = run.load_committee(j)
        if sum(len(b[1]) for b in batches[:j]) < metrics.MIN_CALIBRATION_ERRORS or not hasattr(committee, "leave_one_out"):
            continue
        ids = [r.id for r in labelled if r.get("iteration", 0) <= j]
        pool = [r.id for r in candidates if r.get("added") is None or r.get("added") < j]
        moment = feature_moment(run.pool_rows(pool))
        scales[j] = metrics.sigma_scale(*measure.leave_one_out(run, committee, ids, moment))
        _, data = run.training_set(ids)
        chosen = [r.id for r in labelled if r.get("iteration") == j + 1]
        if chosen:
            a = run.features(chosen).a
            laplace = np.sqrt(np.einsum("ip,pq,iq->i", a, committee.posterior_covariance(data, moment), a))
            ratios[j] = float(np.median(committee.predict(run.features(chosen))[1] / laplace))
    return scales, ratios


def leave_one_out(store: RunStore, scales: dict[int, float]) -> list[tuple[int, np.ndarray, float]]:
    """(labels, |z| of the batch, s) with s from `scales` (leave_one_out_scales) of the committee
    that chose the batch: the committee of iteration j chooses the batch of j + 1."""
    return [_scored(batch, scales[j]) for j, batch in enumerate(stored_batches(store)) if j in scales]


def stops_with(records: list[dict], scales: dict[int, float], rules) -> dict:
    """Where the stop rules of `names` in metrics.when_rules_fire would have fired had the records held
    `scales`. The records' saddle checks stay as recorded (with the run's own scale)."""
    replaced = [r | {"sigma_scale": scales.get(r["iteration"], r.get("sigma_scale"))} for r in records]
    return metrics.when_rules_fire(rules, replaced)


def coverage_at(replayed: list, labels: int) -> tuple[float, float, float] | None:
    """(within 1σ, within 2σ, s) over every replayed error up to `labels`; None before the first."""
    upto = [r for r in replayed if r[0] <= labels]
    if not upto:
        return None
    z = np.concatenate([r[1] for r in upto])
    return float(np.mean(z <= 1)), float(np.mean(z <= 2)), upto[-1][2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 2, 3, 5], metavar="K",
                        help="fit s on the last K iterations' batches (besides all of them)")
    parser.add_argument("--at", type=int, nargs="+", default=[75, 100, 150, 300, 500], metavar="N")
    parser.add_argument("--loo", action="store_true",
                        help="also s fitted on the leave-one-out errors of each batch's committee (loads the backbone)")
    parser.add_argument("--stops", metavar="CAMPAIGN", help="with --loo: where this campaign's uncertainty and observable "
                        "stop rules fire with the recorded scales and with the leave-one-out ones")
    args = parser.parse_args()
    if any(k < 1 for k in args.windows):
        parser.error("--windows: each K is a number of iterations, 1 or more")
    if args.stops and not args.loo:
        parser.error("--stops: give --loo as well (it compares the recorded scales with the leave-one-out ones)")
    try:
        rules = load_campaign(args.stops).stop if args.stops else None
    except CampaignError as err:
        parser.error(f"--stops: {err}")
    variants = ["recorded", "all"] + [f"last {k}" for k in args.windows] + (["leave-one-out"] if args.loo else [])
    table: dict = {}
    for run in args.runs:
        try:
            store = RunStore.existing(run)
        except ValueError as err:
            sys.exit(f"{run}: {err}")
        batches = stored_batches(store)
        print(f"{run}: {len(batches)} batches with a committee, {batches[-1][0] if batches else 0} labels")
        for name in variants:
            if name == "recorded":
                replayed = recorded(store)
            elif name == "leave-one-out":
                scales, ratios = leave_one_out_scales(run)
                replayed = leave_one_out(store, scales)
                print("  committee σ / Laplace σ, median over the batch each committee chose: "
                      + "; ".join(f"{store.iterations()[j + 1]['n_labels']}: {r:.2f}" for j, r in ratios.items()
                                  if j + 1 < len(store.iterations())))
                if rules is not None:
                    print(f"  stop rules fire at: recorded {metrics.when_rules_fire(rules, store.iterations())}, "
                          f"with the leave-one-out scales {stops_with(store.iterations(), scales, rules)}")
            else:
                replayed = replay(batches, None if name == "all" else int(name.split()[1]))
            cells = []
            for n in args.at:
                c = coverage_at(replayed, n)
                if c is not None and n <= batches[-1][0]:
                    table.setdefault((name, n), []).append(c)
                    cells.append(f"{n}: {c[1]:.2f} ({c[0]:.2f}) s {c[2]:.2f}")
            print(f"  {name:13s} 2σ (1σ), s at " + "; ".join(cells))
    print("\nmean over runs: calibrated 2σ coverage (1σ), runs counted")
    for name in variants:
        cells = [f"{n}: {np.mean([c[1] for c in table[(name, n)]]):.3f} ({np.mean([c[0] for c in table[(name, n)]]):.2f}) "
                 f"n={len(table[(name, n)])}" for n in args.at if (name, n) in table]
        print(f"  {name:13s} " + "; ".join(cells))


if __name__ == "__main__":
    main()
