"""Does the force penalty's threshold hold the MoS2 fit back? The oracle's own forces against it.

The force penalty (docs/method.md) leaves ‖F(θ) − F_LF‖ over a configuration free up to
`finetune.force_threshold` and penalises it beyond. If the high-fidelity surface itself differs from
the low-fidelity forces by more than the threshold, the penalty forbids the right answer. This
script measures, on the oracle's noise-free test set (hf_test.extxyz: energies and forces of
E_HF, never in a pool):

1. ‖F_HF − F_base‖ per configuration, against the campaign's threshold;
2. the same committee (the campaign's size, bootstrap, noise floor and seed) fitted to those test
   energies as labels, with the campaign's threshold, with --threshold, and with no force term, under
   a fixed prior τ (the campaign's) and under `prior_sigma: auto`: each fit's label RMSE, the norm of
   the force change it makes, its force MAE against F_HF, and the mono-vacancy barrier along the
   oracle's own CI-NEB images against the oracle's; with --relax, also the committee mean's own
   relaxed CI-NEB barrier (a few minutes per fit).

    python benchmarks/mos2_force_threshold.py [--threshold 4.5] [--relax]

The labels here are the test set, not a campaign's picks: this isolates what the threshold does to
one fit; benchmarks/data_efficiency.py --force-threshold measures what it does to a campaign.
"""
from __future__ import annotations

import mace  # noqa: F401  (mace must be imported before e3nn)

import argparse
import json
import os

import numpy as np
import torch
from ase.io import read

from aloop import metrics
from aloop.arrays import feature_moment
from aloop.backbone import Backbone
from aloop.campaign import load_campaign
from aloop.committee import PRIOR_AUTO, Committee, TrainingSet
from aloop.neb import interpolate, relax_path
from data_efficiency import CAMPAIGN, non_negative
from testbeds.mos2.geometry import NEB_IMAGES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threshold", type=non_negative, default=4.5, help="the other threshold to fit with (eV/Å)")
    parser.add_argument("--relax", action="store_true", help="also each fit's own relaxed CI-NEB barrier")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("ALOOP_TORCH_THREADS", "1")))
    campaign = load_campaign(CAMPAIGN / "campaign.yaml")
    backbone = Backbone.from_file(campaign.model.path, device="cpu")
    test = read(CAMPAIGN / "hf_test.extxyz", index=":")
    path = read(CAMPAIGN / "mono_path_hf.extxyz", index=":")
    reference = json.loads((CAMPAIGN / "reference.json").read_text())["mono_barrier_hf"]
    hf_images = float(metrics.barrier(np.array([a.get_potential_energy() for a in path])))

    features, jacobians = backbone.features(test, progress=True), backbone.force_jacobians(test, progress=True)
    path_features = backbone.features(path)
    f_hf = [a.get_forces() for a in test]
    gap = np.array([np.linalg.norm(f - j.f0) for f, j in zip(f_hf, jacobians)])
    t0 = campaign.finetune.force_threshold
    print(f"‖F_HF − F_base‖ over the {len(test)} test configurations: median {np.median(gap):.2f}, "
          f"range {gap.min():.2f}–{gap.max():.2f} eV/Å; above the campaign's threshold {t0:g} eV/Å: "
          f"{100 * np.mean(gap > t0):.0f}%; component MAE {1000 * np.mean([np.abs(f - j.f0).mean() for f, j in zip(f_hf, jacobians)]):.0f} meV/Å")

    energy = np.array([a.get_potential_energy() for a in test])
    # the base model's forces are the low-fidelity ones, as in a campaign whose pool has no forces_key
    # each label with the error bar the campaign's oracle states (its noise), as in a campaign
    sigma = np.full(len(energy), float(campaign.labeler.parameters["noise"]))
    data = TrainingSet.build(features, energy, sigma, jacobians, [j.f0 for j in jacobians])
    base_images = float(metrics.barrier(path_features.energies(backbone.theta0))) - hf_images
    print(f"base model: barrier on the oracle's images − oracle's {base_images:+.3f} eV")
    settings = [(f"t = {t0:g} (campaign)", t0, campaign.finetune.force_weight),
                (f"t = {args.threshold:g}", args.threshold, campaign.finetune.force_weight),
                ("no force term", t0, 0.0)]
    for tau in (campaign.committee.prior_sigma, PRIOR_AUTO):
        for name, threshold, weight in settings:
            committee = Committee(backbone.theta0, size=campaign.committee.size, bootstrap=campaign.committee.bootstrap,
                                  prior_sigma=tau, force_threshold=threshold, force_weight=weight,
                                  noise_floor=campaign.finetune.noise_floor, seed=campaign.committee.seed)
            moment = {"moment": feature_moment(features)} if tau == PRIOR_AUTO else {}
            theta = committee.fit(data, len(backbone.z_table), **moment).thetas_.mean(0)
            forces = [j.f0 + np.einsum("akp,p->ak", j.B, theta - backbone.theta0) for j in jacobians]
            change = np.array([np.linalg.norm(f - j.f0) for f, j in zip(forces, jacobians)])
            line = (f"τ {tau!s:5} {name:22} label RMSE {1000 * np.sqrt(np.mean((features.energies(theta) - energy) ** 2)):4.0f} meV"
                    f" | ‖F − F_base‖ median {np.median(change):.2f}, max {change.max():.2f} eV/Å"
                    f" | force MAE vs HF {1000 * np.mean([np.abs(f - h).mean() for f, h in zip(forces, f_hf)]):3.0f} meV/Å"
                    f" | barrier on the oracle's images − oracle's "
                    f"{float(metrics.barrier(path_features.energies(theta))) - hf_images:+.3f} eV")
            if args.relax:
                start = interpolate(read(CAMPAIGN / "mono_initial.xyz"), read(CAMPAIGN / "mono_final.xyz"), NEB_IMAGES)
                relaxed = relax_path(start, backbone, theta=theta, fmax=0.03, steps=1500)
                line += (f" | relaxed CI-NEB − oracle's {relaxed.barrier - reference:+.3f} eV"
                         + ("" if relaxed.converged else " (not converged)"))
            print(line, flush=True)


if __name__ == "__main__":
    main()
