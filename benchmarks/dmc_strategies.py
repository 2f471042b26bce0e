"""Targeted acquisition against diverse and random on real DMC labels, at equal core-hours.

The campaign is campaigns/h3-exchange-dmc.yaml (the H + H2 barrier, pyqmc labels, at most 60 of
them, a stop when the barrier has settled to its tolerance). Each (strategy, seed) is an ordinary
run, `aloop run` on a copy of the campaign with the seeds of the campaign, the committee and the
labeler set to the seed and, for `diverse` and `random`, the strategy changed (targeted's own
settings dropped), so a killed benchmark continues where it stopped and every strategy runs under
the campaign's own stop rules and budget.

    python benchmarks/dmc_strategies.py [--seeds 0-2] [--strategies targeted diverse random]
        [--out runs/dmc-strategies] [--report-only]

Reported from each run's iteration records, against the explicit DMC barrier
(campaigns/h3-exchange/dmc_reference.json, 0.429 ± 0.017 eV):
- where it stopped (labels, core-hours, rule) and its barrier there;
- the core-hours at which its barrier came within 0.05 eV of the reference and stayed there (the
  issue's target: targeted within 0.05 eV for at most half the core-hours random needs);
- each run's barrier error at the core-hours targeted spent to its stop, same seed (equal cost);
- the forecast of the stop (aloop.forecast, as `aloop status` prints it: the labels at which the
  barrier's calibrated spread reaches the tolerance, plus the rule's window) at each iteration
  before the stop, as a ratio to the labels at which the run's own rule stopped it.
Writes OUT/results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from aloop import forecast
from aloop.campaign import load_campaign
from aloop.store import RunStore
from h3_acceptance import seed_list  # (this folder: the script's own)

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN = ROOT / "campaigns" / "h3-exchange-dmc.yaml"
REFERENCE = ROOT / "campaigns" / "h3-exchange" / "dmc_reference.json"
WITHIN = 0.05   # eV, the target for the strategy comparison


def run(strategy: str, seed: int, out: Path) -> Path:
    """One (strategy, seed) run to its stop, as `aloop run` on a copy of the campaign."""
    settings = load_campaign(CAMPAIGN).to_dict()
    settings.update(seed=seed, run_dir=str(out / f"{strategy}-{seed}"), name=f"h3-dmc-{strategy}-s{seed}")
    settings["committee"]["seed"] = settings["labeler"]["seed"] = seed
    if strategy != "targeted":
        acquisition = settings["acquisition"]
        settings["acquisition"] = {"strategy": strategy, "batch_size": acquisition["batch_size"],
                                   "initial_size": acquisition["initial_size"]}
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{strategy}-{seed}.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False, allow_unicode=True))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALOOP_TORCH_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "aloop.cli", "run", "--quiet", str(path)], check=True, env=env)
    return out / f"{strategy}-{seed}"


def series(records: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(labels, cumulative core-hours, barrier, committee spread) per iteration."""
    rows = [(r["n_labels"], r["core_hours"], r["observables"]["barrier"]["mean"], r["observables"]["barrier"]["std"])
            for r in records]
    return tuple(np.array(col, dtype=float) for col in zip(*rows))


def settled_at(hours: np.ndarray, error: np.ndarray, within: float) -> float | None:
    """The core-hours from which |error| stayed within `within` to the run's end (None: never)."""
    inside = np.abs(error) <= within
    if not inside[-1]:
        return None
    first = len(inside) - np.argmin(inside[::-1]) if not inside.all() else 0
    return float(hours[first])


def at_hours(hours: np.ndarray, values: np.ndarray, when: float) -> float | None:
    """The value of the last iteration that had spent at most `when` core-hours."""
    spent = np.flatnonzero(hours <= when * (1 + 1e-9))
    return float(values[spent[-1]]) if len(spent) else None


def summarise(run_dir: Path, reference: float) -> dict | None:
    """The run's figures (None while it has no iteration recorded)."""
    store = RunStore.existing(run_dir)
    records = store.iterations()
    if not records:
        return None
    n, hours, barrier, spread = series(records)
    stop = store.get_meta("stop_reason")
    rules = store.get_meta("campaign")["stop"]   # as the run stored it: its window is part of the forecast
    forecasts = []
    for k in range(1, len(records)):
        f = forecast.from_records(records[:k], rules)[-1]   # the observable's forecast comes last
        if f.n_total is not None and f.n_stop is not None:   # a fitted curve, and no misfit holding the rule off
            forecasts.append({"at_labels": int(n[k - 1]), "forecast_labels": round(f.n_stop, 1),
                              "reach_labels": round(f.n_total, 1)})
    return {"labels": int(n[-1]), "core_hours": float(hours[-1]), "stop": stop, "barrier": float(barrier[-1]),
            "spread": float(spread[-1]), "error": float(barrier[-1] - reference),
            "settled_within_0.05_at_core_hours": settled_at(hours, barrier - reference, WITHIN),
            "series": {"labels": n.tolist(), "core_hours": hours.tolist(), "barrier": barrier.tolist(),
                       "spread": spread.tolist()},
            "forecasts": forecasts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=seed_list, default=[0, 1, 2], help="a range like 0-2 or a list like 0,2")
    parser.add_argument("--strategies", nargs="+", default=["targeted", "diverse", "random"],
                        choices=["targeted", "diverse", "random"])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "dmc-strategies")
    parser.add_argument("--report-only", action="store_true", help="summarise the runs in OUT without running any")
    args = parser.parse_args()
    reference = json.loads(REFERENCE.read_text())["barrier"]
    results: dict = {}
    for strategy in args.strategies:
        for seed in args.seeds:
            run_dir = args.out / f"{strategy}-{seed}"
            if not args.report_only:
                run(strategy, seed, args.out)
            if (run_dir / "aloop.db").exists() and (figures := summarise(run_dir, reference)) is not None:
                results.setdefault(strategy, {})[seed] = figures
    print(f"explicit DMC barrier {reference:.3f} eV; within {WITHIN} eV and stayed there")
    print(f"{'strategy':9} {'seed':>4} {'labels':>6} {'core-h':>7} {'barrier':>8} {'error':>7} {'spread':>7} "
          f"{'settled (core-h)':>17} {'error at targeted’s core-h':>26}  stop")
    for strategy, runs in results.items():
        for seed, r in runs.items():
            equal = None
            target = results.get("targeted", {}).get(seed)
            if target is not None:
                s = r["series"]
                value = at_hours(np.array(s["core_hours"]), np.array(s["barrier"]), target["core_hours"])
                equal = None if value is None else value - reference
            r["error_at_targeted_core_hours"] = equal
            settled = r["settled_within_0.05_at_core_hours"]
            print(f"{strategy:9} {seed:4d} {r['labels']:6d} {r['core_hours']:7.3f} {r['barrier']:8.3f} "
                  f"{r['error']:+7.3f} {r['spread']:7.3f} {('never' if settled is None else f'{settled:.3f}'):>17} "
                  f"{('—' if equal is None else f'{equal:+.3f}'):>26}  {r['stop']}")
    print("the forecast of the stop (labels in all) at each iteration, against the labels at the run's own stop")
    ratios = []
    for strategy, runs in results.items():
        for seed, r in runs.items():
            if not (r["stop"] or "").startswith("observable") or not r["forecasts"]:   # stopped by its own rule
                continue
            made = [(f["at_labels"], f["forecast_labels"] / r["labels"]) for f in r["forecasts"]]
            ratios += [x for _, x in made]
            print(f"{strategy:9} {seed:4d} stop at {r['labels']:3d}: "
                  + ", ".join(f"at {n} ×{x:.2f}" for n, x in made))
    if ratios:
        worst = max(ratios, key=lambda x: abs(np.log(x)))
        print(f"{len(ratios)} forecasts: median ×{np.median(ratios):.2f}, worst ×{worst:.2f}, "
              f"within a factor 2: {np.mean([0.5 <= x <= 2 for x in ratios]):.0%}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"reference": reference, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
