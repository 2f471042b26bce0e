"""A `finetune.kind: delta` or `finetune.readout: full` campaign on the MoS2 testbed, choosing its
own labels, and its scores at the end.

The data-efficiency benchmark's campaign (oracle v2, the committee mean's own relaxed CI-NEB) with
`--class delta` (`finetune.kind: delta`) or `--class full` (`finetune.readout: full`), each with the
campaign's `prior_sigma: auto` (its own evidence) unless --prior-sigma fixes τ in eV/atom, forked from
that benchmark's shared pool (its features and cached oracle labels), and run to a label budget.
`targeted` takes `full` (its posterior linearised at the members' mean), not `delta`. Prints each iteration's tracked
barrier (mean, spread), τ, the test RMSE and the iteration's wall time; then, on the last
iteration's committee-mean model (one MACE file for either class): the tracked barrier's error
(none, and where, when its relaxed path left the base model's domain),
the di-vacancy hop relaxed by CI-NEB (end points relaxed), the force MAE against the oracle on
hf_test, and the prospective 2σ coverage (raw, and with the σ scale the run recorded before each
batch). Those go to OUT/RUN_scores.json, RUN the run folder's name.

    python benchmarks/data_efficiency.py --out OUT ...         # makes OUT/pool once
    python benchmarks/mos2_class_run.py --out OUT --class full --prior-sigma 0.1 --seed 0 \
        [--strategy diverse|targeted|...] [--max-labels 100] [--batch-schedule 9 9 9 9 9 9 9 25]

The run folder is OUT/CLASS-STRATEGY-sSEED (a `full` run with the evidence's τ: OUT/full-auto-STRATEGY-sSEED);
a rerun continues it (or only scores it, once stopped).
"""
from __future__ import annotations

import mace  # noqa: F401  (mace must be imported before e3nn)

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
from ase.io import read

from aloop.fork import fork_run
from aloop.loop import CampaignRun
from data_efficiency import (CAMPAIGN, STRATEGIES, calibration, campaign_for, di_barrier, positive_tau,
                             run_to_the_end)


def scores(run: CampaignRun) -> dict:
    """The last iteration's committee-mean model scored against the oracle (module docstring)."""
    record = run.store.iterations()[-1]
    committee = run.load_committee(record["iteration"])
    model = run.mean_surface(committee)[0]
    reference = json.loads((CAMPAIGN / "reference.json").read_text())
    di = di_barrier(model, None, reference)
    test = read(run.campaign.evaluation.test_set.path, index=":")
    forces = np.concatenate(model.energy_forces(test)[1])
    barrier = record["observables"]["barrier"]
    # a path outside the base model's domain has no barrier to score (the run's record says where it left)
    left = barrier.get("outside_domain")
    tracked = None if left else barrier["mean"]
    return {"n_labels": record["n_labels"], "tracked_barrier": tracked, "outside_domain": left,
            "tracked_error": None if left else tracked - reference["mono_barrier_hf"],
            "test_rmse_meV": 1000 * record["test"]["rmse"],
            "di_barrier": di["barrier"], "di_error": di["error"], "di_converged": di["converged"],
            "force_mae_meV_per_A": 1000 * float(np.mean(np.abs(forces - np.concatenate([a.get_forces() for a in test])))),
            "calibration": calibration(run, record["n_labels"]), "misfit": record.get("misfit")}


def schedule_name(sizes: list[int]) -> str:
    """Every batch size, a run of one size as NxK: [9, 9, 9, 25] → 9x3-25, so that two schedules never
    share a run folder."""
    parts = []
    for size, run in itertools.groupby(sizes):
        count = len(list(run))
        parts.append(f"{size}x{count}" if count > 1 else str(size))
    return "-".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="a data_efficiency.py --out folder (its pool/)")
    parser.add_argument("--class", dest="kind", choices=["delta", "full"], default="delta")
    parser.add_argument("--prior-sigma", type=positive_tau, metavar="TAU",
                        help="committee.prior_sigma in eV/atom (default: the campaign's auto, each class's evidence)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategy", default="diverse", choices=list(STRATEGIES))
    parser.add_argument("--max-labels", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-schedule", type=int, nargs="+", metavar="N",
                        help="the batch sizes after the first 37 labels, the last one repeated (default: the "
                             "benchmark's); the run folder's name ends in -b and the schedule, e.g. -b9x7-25")
    args = parser.parse_args()
    if not (args.out / "pool").is_dir():
        parser.error(f"--out: {args.out} has no pool/; run benchmarks/data_efficiency.py --out {args.out} first")
    if args.kind == "delta" and args.strategy == "targeted":
        parser.error("--strategy targeted takes --class full, not delta (each delta member has its own hidden layer)")
    torch.set_num_threads(args.threads)
    c = campaign_for(args.out, args.strategy, args.seed, "prism", prior_sigma=args.prior_sigma,
                     max_labels=args.max_labels)
    # a full run with the campaign's prior_sigma: auto is named apart from the fixed-τ runs measured before it
    evidence = "-auto" if args.kind == "full" and args.prior_sigma is None else ""
    name = f"{args.kind}{evidence}-{args.strategy}-s{args.seed}"
    if args.batch_schedule:
        if min(args.batch_schedule) < 1:
            parser.error("--batch-schedule: batch sizes of at least 1")
        c.acquisition.batch_schedule = args.batch_schedule
        name += "-b" + schedule_name(args.batch_schedule)
    c.run_dir = args.out / name
    if args.kind == "delta":
        c.finetune.kind, c.finetune.readout = "delta", "linear"
    else:
        c.finetune.readout = "full"
    try:
        fork_run(args.out / "pool", c.run_dir, 0)
    except FileExistsError:
        pass   # a rerun continues it
    run = CampaignRun(c, progress=False)
    start = time.perf_counter()
    for r in run_to_the_end(run):
        b = r["observables"]["barrier"]
        m = f"m {r['model_error']:.3g} eV, " if "model_error" in r else ""   # delta's members have one each
        print(f"{r['n_labels']:4d} labels: barrier {b['mean']:.4f} ± {b['std']:.4f} eV, τ {r['prior_sigma']:.3g} eV/atom, {m}"
              f"test RMSE {1000 * r['test']['rmse']:.1f} meV; iteration {sum(r['seconds'].values()):.0f} s "
              f"(training {r['seconds'].get('train', 0):.0f} s)", flush=True)
    print(f"campaign: {time.perf_counter() - start:.0f} s", flush=True)
    result = scores(run)
    (args.out / f"{name}_scores.json").write_text(json.dumps(result, indent=1, default=float))
    cal = result["calibration"]
    tracked = (f"path outside the base model's domain ({result['outside_domain']})" if result["outside_domain"]
               else f"{result['tracked_error']:+.3f} eV")
    print(f"{name} at {result['n_labels']} labels: tracked barrier error {tracked}, di-vacancy "
          f"{result['di_error']:+.3f} eV, test RMSE {result['test_rmse_meV']:.1f} meV/cell, force MAE "
          f"{result['force_mae_meV_per_A']:.1f} meV/Å, prospective 2σ {cal.get('within_2sigma')} (calibrated "
          f"{cal.get('calibrated_within_2sigma')})", flush=True)


if __name__ == "__main__":
    main()
