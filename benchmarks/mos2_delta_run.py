"""A `finetune.kind: delta` campaign on the MoS2 testbed, choosing its own labels.

The data-efficiency benchmark's campaign (oracle v2, `prior_sigma: auto`, the committee mean's own
relaxed CI-NEB) with `finetune.kind: delta`, forked from that benchmark's shared pool (its features
and cached oracle labels), and run to a label budget. `targeted` needs the linear class, so the
strategy is another. Prints each iteration's tracked barrier (mean, spread), the members' median τ
and the test RMSE.

    python benchmarks/data_efficiency.py --out OUT ...         # makes OUT/pool once
    python benchmarks/mos2_delta_run.py --out OUT --seed 0 [--strategy diverse] [--max-labels 100]

The run folder is OUT/delta-STRATEGY-sSEED; a rerun continues it.
"""
from __future__ import annotations

import mace  # noqa: F401  (mace must be imported before e3nn)

import argparse
from pathlib import Path

import torch

from aloop.fork import fork_run
from aloop.loop import CampaignRun
from data_efficiency import STRATEGIES, campaign_for, run_to_the_end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="a data_efficiency.py --out folder (its pool/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategy", default="diverse", choices=[s for s in STRATEGIES if s != "targeted"])
    parser.add_argument("--max-labels", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not (args.out / "pool").is_dir():
        parser.error(f"--out: {args.out} has no pool/; run benchmarks/data_efficiency.py --out {args.out} first")
    torch.set_num_threads(args.threads)
    c = campaign_for(args.out, args.strategy, args.seed, "prism", max_labels=args.max_labels)
    c.run_dir = args.out / f"delta-{args.strategy}-s{args.seed}"
    c.finetune.kind = "delta"
    try:
        fork_run(args.out / "pool", c.run_dir, 0)
    except FileExistsError:
        pass   # a rerun continues it
    for r in run_to_the_end(CampaignRun(c, progress=False)):
        b = r["observables"]["barrier"]
        print(f"{r['n_labels']:4d} labels: barrier {b['mean']:.4f} ± {b['std']:.4f} eV, "
              f"median τ {r['prior_sigma']:.3g} eV/atom, test RMSE {1000 * r['test']['rmse']:.1f} meV", flush=True)


if __name__ == "__main__":
    main()
