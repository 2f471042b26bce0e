"""Does the σ scale lag because it is fitted on every prospective error so far? Replayed on run folders.

The loop fits one factor s on the committee's σ to every prospective error a run has seen
(metrics.sigma_scale on the whole history); T4 of the MoS2 benchmark asks that the next batches'
errors then fall within 2σ 85-99 % of the time. When the committee's over-confidence changes as labels
come in, the whole history carries stale errors into s. This replays, from the stored batches only
(nothing is refitted), the coverage each batch would have had with s fitted on its predecessors:
all of them (what the runs did), or only the last k iterations' batches.

    python benchmarks/sigma_scale_window.py RUN_DIR [RUN_DIR ...] [--windows 1 2 3 5] [--at 75 100 150 300 500]

Per run: the cumulative calibrated 2σ (and 1σ) coverage at each label count in --at (the fraction
T4 reads: every calibrated error up to there), and the scale s each variant ends with. Then the
mean over the runs given, per variant and label count.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from aloop import metrics
from aloop.store import RunStore


def stored_batches(store: RunStore, upto: int | None = None) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """(labels after the batch, error, committee σ, label σ) of every batch chosen by a committee,
    up to `upto` labels (None: all)."""
    out = []
    for record in store.iterations()[1:]:
        if upto is not None and record["n_labels"] > upto:
            break
        err, s_c, s_l = store.batch_errors(record["iteration"])
        keep = np.isfinite(err) & np.isfinite(s_c)
        out.append((record["n_labels"], err[keep], s_c[keep], s_l[keep]))
    return out


def replay(batches: list, window: int | None) -> list[tuple[int, np.ndarray, float]]:
    """(labels, |z| of the batch, s) for every batch after the first, s fitted on the `window`
    batches before it (None: all of them)."""
    out = []
    for j in range(1, len(batches)):
        before = batches[:j] if window is None else batches[max(0, j - window):j]
        err, s_c, s_l = (np.concatenate([b[i] for b in before]) for i in (1, 2, 3))
        scale = metrics.sigma_scale(err, s_c, s_l)
        n, e, c, l_ = batches[j]
        out.append((n, np.abs(e) / np.hypot(scale * c, l_), scale))
    return out


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
    args = parser.parse_args()
    if any(k < 1 for k in args.windows):
        parser.error("--windows: each K is a number of iterations, 1 or more")
    variants = {"all": None} | {f"last {k}": k for k in args.windows}
    table: dict = {}
    for run in args.runs:
        try:
            batches = stored_batches(RunStore.existing(run))
        except ValueError as err:
            sys.exit(f"{run}: {err}")
        print(f"{run}: {len(batches)} batches with a committee, {batches[-1][0] if batches else 0} labels")
        for name, window in variants.items():
            replayed = replay(batches, window)
            cells = []
            for n in args.at:
                c = coverage_at(replayed, n)
                if c is not None and n <= batches[-1][0]:
                    table.setdefault((name, n), []).append(c)
                    cells.append(f"{n}: {c[1]:.2f} ({c[0]:.2f}) s {c[2]:.2f}")
            print(f"  {name:7s} 2σ (1σ), s at " + "; ".join(cells))
    print("\nmean over runs: calibrated 2σ coverage (1σ), runs counted")
    for name in variants:
        cells = [f"{n}: {np.mean([c[1] for c in table[(name, n)]]):.3f} ({np.mean([c[0] for c in table[(name, n)]]):.2f}) "
                 f"n={len(table[(name, n)])}" for n in args.at if (name, n) in table]
        print(f"  {name:7s} " + "; ".join(cells))


if __name__ == "__main__":
    main()
