"""Two checks of finished DMC campaign runs behind docs/h3-exchange-dmc.md ("The calibration tested
where the barrier is, and the labels' error bars tested by their repeats").

    python scripts/dmc_stop_checks.py RUN [RUN ...] [--blocks 9] [--draws 4000]

- The repeats: metrics.label_noise of each run's labels (repeated labels of one configuration
  against their error bars) and pooled over all runs given, with the χ²/dof that right error bars
  estimated from `--blocks` reblocked blocks give by their own scatter alone (simulated, same group
  sizes as the runs'), so the surplus can be told from the noise of the error bars.
- The wait: for each run, the label counts at which `stop.observable` would have fired had every
  record held enough prospective errors that bear on the observable (the wait lifted), beside
  where the run stopped.
"""
from __future__ import annotations

import argparse
from collections import Counter
from types import SimpleNamespace

import numpy as np
from scipy.stats import chi2

from aloop import metrics
from aloop.store import LABELLED, RunStore


def repeat_groups(store: RunStore) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(energy, error bar, group) of every label; the group names the configuration and labeler."""
    rows = store.rows(state=LABELLED)
    group = [f"{r.data.get('provenance', {}).get('labeler')}:{r.get('repeat_of', r.id)}" for r in rows]
    return np.array([r.energy_hf for r in rows]), np.array([r.sigma_hf for r in rows]), np.array(group)


def chance_ratio2(sizes: list[int], blocks: int, draws: int, rng: np.random.Generator) -> float:
    """χ²/dof of repeats whose error bars are right but each estimated from `blocks` blocks."""
    chi, dof = 0.0, 0
    for _ in range(draws):
        for n in sizes:
            e = rng.normal(size=n)
            w = (blocks - 1) / rng.chisquare(blocks - 1, size=n)   # 1/σ̂² for σ = 1
            chi += float(np.sum(w * (e - np.sum(w * e) / np.sum(w)) ** 2))
            dof += n - 1
    return chi / dof


def stops_without_wait(store: RunStore) -> list[int]:
    """Label counts of the records on which the observable rule fires with the wait lifted."""
    stop = store.get_meta("campaign")["stop"]
    if not stop.get("observable"):
        return []
    rules = SimpleNamespace(**{**stop, "observable": SimpleNamespace(**stop["observable"])})
    lifted = [dict(r, relevant_errors={stop["observable"]["name"]: float("inf")}) for r in store.iterations()]
    return [lifted[i - 1]["n_labels"] for i in range(1, len(lifted) + 1)
            if (metrics.first_stop(rules, lifted[:i]) or ("",))[0] == "observable"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--blocks", type=int, default=9, help="reblocked blocks behind a typical error bar")
    ap.add_argument("--draws", type=int, default=4000)
    args = ap.parse_args()
    pooled = [[], [], []]
    sizes: list[int] = []
    print(f"{'run':40s} {'labels':>6s} {'ratio':>6s} {'dof':>4s}  stop / stops without the wait")
    for path in args.runs:
        store = RunStore.existing(path)
        energy, sigma, group = repeat_groups(store)
        noise = metrics.label_noise(energy, sigma, group)
        for part, x in zip(pooled, (energy, sigma, np.char.add(f"{path}:", group.astype(str)))):
            part.extend(x)
        sizes += [n for n in Counter(group.tolist()).values() if n > 1]
        ratio = "—" if noise["ratio"] is None else f"{noise['ratio']:.2f}"
        last = store.iterations()[-1]
        print(f"{path:40s} {last['n_labels']:6d} {ratio:>6s} {noise['dof']:4d}  {last.get('stop')} / "
              f"{stops_without_wait(store) or 'none'}")
    total = metrics.label_noise(*pooled)
    if total["dof"]:
        r2 = total["ratio"] ** 2
        print(f"pooled: χ²/dof = {r2:.2f} on {total['dof']} dof (p = {chi2.sf(r2 * total['dof'], total['dof']):.1g}); "
              f"right error bars from {args.blocks} blocks give "
              f"{chance_ratio2(sizes, args.blocks, args.draws, np.random.default_rng(0)):.2f}")


if __name__ == "__main__":
    main()
