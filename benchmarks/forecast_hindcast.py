"""How well the learning-curve forecast (aloop/forecast.py) predicts what a run measured later.

For each run folder and each quantity the forecast tracks (the prospective RMSE, with the label
noise as its floor, and the `stop.observable` committee spread times the σ calibration, as the stop
rule compares it), the power law is fitted to the first k points (k = 4 … all but one) as `aloop
status` fitted them then, and its value at every later label count is compared with the value the
run saw there (a spread with the calibration of its own iteration):

    python benchmarks/forecast_hindcast.py RUN_DIR [RUN_DIR ...] [--fit-at 75 100 150] [--at 300 500]

One line per (run, quantity, k, later point): the value forecast with its 68% band, the value
measured, their ratio, whether the measurement agrees with it (inside the curve's 68% band widened
in quadrature by the measurement's own error bar: one batch scatters about the curve), and whether `aloop status`
would have printed a label count from those k points (`forecast.forecast`: trusted or why not).
Then, over all lines: the median |log ratio| as a factor, and the fraction inside the 68% band.

With --needed, the forecast is judged the way a user reads it instead: every label count that
`aloop status` printed ("≈ N more labels to reach …"), against the label count at which the run
first saw the quantity at its target (`forecast.needed_hindcast`), and for the observable, the
forecast stop against the count at which the run's own rule fired. A run that ended before the
target counts as a lower bound. Reads only the run folders.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from aloop import forecast as fc
from aloop.store import RunStore


def hindcast_run(run_dir: str) -> list[dict]:
    """Every forecast the run's records allow, each made as `aloop status` made it then (from the
    records up to that iteration, a spread calibrated as it was then) and judged against the values
    as the run saw them later (`forecast.as_seen`)."""
    store = RunStore.existing(run_dir)
    records, stop = store.iterations(), (store.get_meta("campaign") or {}).get("stop", {})
    seen, made, rows = fc.as_seen(records, stop), set(), []
    for i in range(1, len(records)):
        for t in fc.tracked(records[:i], stop):
            k = len(t.n)
            if k < fc.MIN_POINTS or (t.key, k) in made or k >= len(seen[t.key][0]) or np.sum(t.y > t.floor) < 3:
                continue
            n, y, err = seen[t.key]
            made.add((t.key, k))
            verdict = fc.forecast(t.quantity, t.n, t.y, t.err, t.target, t.what, t.floor)
            trusted = "number" if verdict.n_total is not None else ("reached" if verdict.reached else verdict.refusal)
            quantity = "prospective RMSE" if t.key == "rmse" else f"{t.key} spread (cal.)"
            for row in fc.hindcast(n, np.r_[t.y, y[k:]], np.r_[t.err, err[k:]], k, t.floor):
                rows.append({"run": run_dir, "quantity": quantity, "k": k, "trusted": trusted, **row})
    return rows


def needed(runs: list[str]) -> int:
    """The label counts `aloop status` printed against those the runs took (see the docstring)."""
    print(f"{'run':40} {'quantity':10} {'at':>4} {'forecast (68%)':>18} {'took':>6} {'ratio':>6}"
          f" {'stop forecast':>13} {'stopped':>7}")
    ratios, bounds = [], []
    for run in runs:
        store = RunStore.existing(run)
        stop = (store.get_meta("campaign") or {}).get("stop", {})
        for r in fc.needed_hindcast(store.iterations(), stop):
            lo, hi = r["range"]
            took = r["actual"] if r["actual"] is not None else f">{r['last']}"
            ratio = r["forecast"] / r["actual"] if r["actual"] is not None else None
            (ratios if ratio is not None else bounds).append(ratio if ratio is not None else r["forecast"] / r["last"])
            stop_text = "" if r.get("forecast_stop") is None else f"{r['forecast_stop']:.0f}"
            stopped = "" if "stopped" not in r else (r["stopped"] or "no")
            print(f"{run[-40:]:40} {r['quantity']:10} {r['n_now']:4d} {r['forecast']:6.0f} ({lo:4.0f}–{hi:4.0f})"
                  f" {took:>6} {'' if ratio is None else f'{ratio:.2f}':>6} {stop_text:>13} {stopped:>7}")
    if not ratios and not bounds:
        print("no run printed a label count")
        return 1
    if ratios:
        log_ratio = np.abs(np.log(ratios))
        print(f"{len(ratios)} printed counts with a measured one: median error ×{np.exp(np.median(log_ratio)):.2f}, "
              f"worst ×{np.exp(log_ratio.max()):.2f}, within ×2: {int(np.sum(log_ratio <= np.log(2)))}")
    if bounds:
        print(f"{len(bounds)} printed counts the run never reached: forecast/last count {min(bounds):.2f}–{max(bounds):.2f}"
              " (below 1: optimistic by at least that factor)")
    return 0


def agrees(r: dict) -> bool:
    """The measurement within the curve's 68% band (its side of it) ⊕ its own error bar."""
    half = r["hi"] - r["forecast"] if r["actual"] > r["forecast"] else r["forecast"] - r["lo"]
    return abs(r["actual"] - r["forecast"]) <= np.hypot(half, r["actual_err"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders")
    parser.add_argument("--fit-at", type=int, nargs="+", metavar="N",
                        help="only forecasts fitted to the points up to these label counts (e.g. 75 100 150)")
    parser.add_argument("--at", type=int, nargs="+", metavar="N",
                        help="only forecasts of the values measured at these label counts (e.g. 300 500)")
    parser.add_argument("--needed", action="store_true",
                        help="judge the label counts status printed against those the runs took")
    args = parser.parse_args(argv)
    if args.needed:
        return needed(args.runs)
    rows = []
    for run in args.runs:
        try:
            rows += hindcast_run(run)
        except ValueError as err:
            print(f"{run}: skipped: {err}", file=sys.stderr)
    rows = [r for r in rows if (args.fit_at is None or r["n_fit"] in args.fit_at) and (args.at is None or r["n"] in args.at)]
    print(f"{'run':40} {'quantity':18} {'k':>2} {'fit≤n':>5} {'at n':>5} {'forecast (meV)':>22} "
          f"{'measured':>9} {'ratio':>6} {'agrees':>7}  status from k points")
    for r in rows:
        band = f"{r['forecast'] * 1e3:6.1f} [{r['lo'] * 1e3:5.1f}–{r['hi'] * 1e3:5.1f}]"
        inside = agrees(r)
        print(f"{r['run'][-40:]:40} {r['quantity']:18} {r['k']:2d} {r['n_fit']:5d} {r['n']:5d} {band:>22} "
              f"{r['actual'] * 1e3:9.1f} {r['forecast'] / r['actual']:6.2f} {'yes' if inside else 'no':>7}  "
              f"{r['trusted'][:60]}")
    if not rows:
        print("no run has enough points for a hindcast")
        return 1
    trusted = [r for r in rows if r["trusted"] == "number"]
    for label, subset in (("all", rows), ("where status would print a number", trusted)):
        if subset:
            log_ratio = np.abs(np.log([r["forecast"] / r["actual"] for r in subset]))
            inside = np.mean([agrees(r) for r in subset])
            print(f"{label}: {len(subset)} forecasts, median error ×{np.exp(np.median(log_ratio)):.2f}, "
                  f"worst ×{np.exp(log_ratio.max()):.2f}, agreeing within 68% band ⊕ error bar {100 * inside:.0f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
