"""How much the committee's answer moves under rounding-level changes of its inputs.

For every iteration of a finished run, the committee is refitted on that iteration's labels as
they are, and again `--repeats` times with every feature, force and Jacobian entry multiplied by
(1 + ε·N(0, 1)), the kind of difference another machine, BLAS or thread count makes (with
--permute, also the training rows in another order). It prints, per iteration, the largest change
of the committee-mean barrier (the campaign's first observable, on its frozen path) and of the
held-out RMSE.

    python benchmarks/fit_sensitivity.py --run runs/h3-exchange [--repeats 6] [--eps 1e-13] [--permute]

The run folder is only read (its campaign is the one stored in it).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from aloop.arrays import Features, feature_moment
from aloop.campaign import Campaign
from aloop.committee import TrainingSet
from aloop.loop import CampaignRun
from aloop.metrics import barrier, test_set_features
from aloop.store import RunStore


def perturbed(data: TrainingSet, eps: float, permute: bool, rng: np.random.Generator) -> TrainingSet:
    def jiggle(x):
        return x * (1 + eps * rng.standard_normal(x.shape))

    order = rng.permutation(len(data)) if permute else np.arange(len(data))
    f = data.features
    features = Features(jiggle(f.a)[order], jiggle(f.e)[order], f.n_atoms[order])
    return dataclasses.replace(data, features=features, energy=data.energy[order], sigma=data.sigma[order],
                               f0=jiggle(data.f0)[order], B=jiggle(data.B)[order], f_lf=data.f_lf[order],
                               ids=data.ids[order])


def fit(run: CampaignRun, data: TrainingSet, moment):
    return run.new_committee().fit(data, len(run.backbone.z_table), moment=moment)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--eps", type=float, default=1e-13)
    parser.add_argument("--permute", action="store_true", help="also put the training rows in another order")
    args = parser.parse_args()
    stored = RunStore.existing(args.run).get_meta("campaign")
    campaign = Campaign.model_validate(stored, context={"base_dir": str(args.run)})
    run = CampaignRun(campaign, progress=False)
    obs = campaign.evaluation.observables[0]
    path = run.features(run.store.source_ids(obs.path))
    test = test_set_features(run, campaign.evaluation.test_set) if campaign.evaluation.test_set else None
    moment = feature_moment(run.pool_rows(run.store.ids()))
    rng = np.random.default_rng(0)
    print(f"{'iteration':>9} {'labels':>6} {'barrier (eV)':>12} {'max |Δbarrier| (meV)':>21} {'test RMSE (meV)':>15} "
          f"{'max |ΔRMSE| (meV)':>17}")
    worst = 0.0
    for record in run.store.iterations():
        i = record["iteration"]
        ids = [r.id for it in range(i + 1) for r in run.store.rows(iteration=it) if r.state == "labelled"]
        _, data = run.training_set(ids)

        def answer(committee):
            b = barrier(path.energies(committee.thetas_)).mean()
            rmse = np.sqrt(np.mean((committee.predict(test[0])[0] - test[1]) ** 2)) if test else np.nan
            return b, rmse

        b0, r0 = answer(fit(run, data, moment))
        changes = np.array([np.subtract(answer(fit(run, perturbed(data, args.eps, args.permute, rng), moment)), (b0, r0))
                            for _ in range(args.repeats)])
        db, dr = np.abs(changes).max(0) * 1000
        worst = max(worst, db)
        print(f"{i:>9} {len(ids):>6} {b0:12.4f} {db:21.3g} {r0 * 1000:15.1f} {dr:17.3g}", flush=True)
    print(f"largest change of the barrier over all iterations: {worst:.3g} meV (ε = {args.eps:g}, "
          f"{args.repeats} repeats)")


if __name__ == "__main__":
    main()
