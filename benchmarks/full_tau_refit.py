"""A `full` run's labels refitted with its prior narrowed: does a smaller τ keep the relaxed path inside
the base model's domain, and what barrier does it give?

Takes the run's newest iteration: its labels, its evidence's model error m and its τ, divided by
each --divide factor (the τ back-off's √2 is one). Each refit's committee-mean path is relaxed from
the path of iteration --start (the last one that stayed inside, as the loop would), then checked by
the domain guard. With --probe, the members' energies are also read on the images of another path
(e.g. the collapsed one): the committee mean there, and how many members put its image --image
below its first.

    python benchmarks/full_tau_refit.py F/full-auto-targeted-s2-b9x7-25 --divide 1.4142 2 --start 7 \\
        --probe F/full-auto-targeted-s2-b9x7-25/paths/barrier/iter_008.extxyz

The run is read, not changed. One thread per fit unless --threads.
"""
from __future__ import annotations

import mace  # noqa: F401  (mace must be imported before e3nn)

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from ase.io import read

from aloop.loop import CampaignRun
from aloop.neb import relax_path
from aloop.reaction_path import band_settings, observable


def refit(run: CampaignRun, tau: float, model_error: float):
    """A `full` committee on every label of `run`, at prior width `tau` and model error `model_error`
    (the evidence is not asked)."""
    ids, data = run.training_set()
    committee = run.new_committee()

    def fixed(*_args, **_kwargs) -> int:
        committee.linear.tau_, committee.linear.model_error_ = tau, model_error
        return 0

    committee.evidence_prior = fixed
    committee.fit(data, run.graph(ids), len(run.backbone.z_table), moment=run.prior_moment())
    return committee


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder with readout: full and prior_sigma: auto")
    parser.add_argument("--divide", type=float, nargs="+", default=[np.sqrt(2), 2.0], help="τ ÷ each factor (> 1)")
    parser.add_argument("--start", type=int, required=True, help="the iteration whose relaxed path to start from")
    parser.add_argument("--probe", type=Path, help="another path's images (extxyz) to read the members on")
    parser.add_argument("--image", type=int, default=2, help="the probed image to count members below image 0 at")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not (args.run / "aloop.db").is_file():
        parser.error(f"{args.run}: no aloop.db; give a run folder")
    if min(args.divide) <= 1:
        parser.error("--divide: factors above 1 (a narrower prior)")
    torch.set_num_threads(args.threads)
    run = CampaignRun.reopen(args.run)
    if run.campaign.finetune.readout != "full":
        parser.error(f"{args.run}: readout is {run.campaign.finetune.readout}, not full")
    start_file = run.layout.path(run.campaign.evaluation.observables[0].name, args.start)
    if not start_file.is_file():
        parser.error(f"--start: {start_file} does not exist")
    record = run.store.iterations()[-1]
    obs = run.campaign.evaluation.observables[0]
    start = read(start_file, index=":")
    probe = read(args.probe, index=":") if args.probe else None
    print(f"{args.run.name}, {record['n_labels']} labels: the evidence's τ {record['prior_sigma']:.3f} eV/atom, "
          f"m {record['model_error']:.3f} eV", flush=True)
    for factor in args.divide:
        tau = record["prior_sigma"] / factor
        t0 = time.perf_counter()
        committee = refit(run, tau, record["model_error"])
        fit_s = time.perf_counter() - t0
        backbone, theta = run.mean_surface(committee)
        path = relax_path(start, backbone, theta=theta, **band_settings(run.campaign, obs))
        record = observable(run, path, committee)   # as the loop records it: spread, domain
        result = {"tau": tau, "fit_s": round(fit_s), "barrier": path.barrier,
                  "error": None if obs.reference is None else path.barrier - obs.reference,
                  "spread": record["std"], "neb_converged": path.converged,
                  "outside_domain": record.get("outside_domain")}
        if probe is not None:
            at = np.asarray(committee.member_energies(run.frame_inputs(probe)))
            at = at[:, args.image] - at[:, 0]
            result |= {"probe_mean": float(at.mean()), "probe_members_below": int((at < 0).sum())}
        print(json.dumps(result, default=float), flush=True)


if __name__ == "__main__":
    main()
