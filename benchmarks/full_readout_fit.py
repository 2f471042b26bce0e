"""Wall time of one committee fit, `finetune.readout: full` against `linear`, on the same labels.

    python benchmarks/full_readout_fit.py [--n 20] [--k 8] [--threads 2]
    python benchmarks/full_readout_fit.py --mos2 [--n 20]    # 47-atom cells, a MACE of realistic width

H3 (default): the quickstart's base model (campaigns/h3-exchange/base_pbe.model), the first N frames
of campaigns/h3-exchange/ccsdt_test.extxyz as labels (their CCSD(T) energies), the base model's
forces as the low-fidelity forces, and the quickstart's committee and finetune settings. --mos2: N
MoS2-like cells (benchmarks/speed.py) labelled by a random smooth perturbation of the model's own
energies (the timing does not depend on the labels' values).

Prints, for each readout, the one-off set-up (linear: features and force Jacobians; full: readout
inputs and the labelled graph) and the fit, and for `full` each member's L-BFGS steps; and how far
from the members' average energy are the model of the members' average φ (not the committee's
prediction, since the energy is not linear in φ) and the exported committee-mean model (every
member's MLP side by side: exact).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from ase.io import read

from aloop.arrays import feature_moment
from aloop.backbone import Backbone
from aloop.committee import Committee, TrainingSet
from aloop.full_committee import FullCommittee
from aloop.full_readout import FullReadout, LabelledGraph

ROOT = Path(__file__).resolve().parents[1]
H3 = ROOT / "campaigns" / "h3-exchange"


def h3_problem(n: int):
    frames = read(H3 / "ccsdt_test.extxyz", index=f":{n}")
    energies = np.array([atoms.get_potential_energy() for atoms in frames])
    return Backbone.from_file(H3 / "base_pbe.model", device="cpu"), frames, energies


def mos2_problem(n: int):
    from speed import model, mos2_cells   # benchmarks/speed.py: the same cells and model width
    bb = Backbone(model(), device="cpu")
    frames = mos2_cells(n, np.random.default_rng(0))
    base, _ = bb.energy_forces(frames)
    return bb, frames, base + 0.01 * np.random.default_rng(1).normal(size=n) * len(frames[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mos2", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bb, frames, energies = (mos2_problem if args.mos2 else h3_problem)(args.n)
    settings = dict(size=args.k, bootstrap=True, prior_sigma=0.1, force_threshold=0.5, force_weight=1.0,
                    noise_floor=0.003, seed=0)
    print(f"{len(frames)} labels of {len(frames[0])} atoms, K = {args.k}, {args.threads} threads, float64, CPU; "
          f"P(linear) = {bb.n_params}")

    t = time.perf_counter()
    feats = bb.features(frames)
    jac = bb.force_jacobians(frames)
    setup_linear = time.perf_counter() - t
    data = TrainingSet.build(feats, energies, np.zeros(len(frames)), jac, [j.f0 for j in jac], ids=np.arange(len(frames)))
    moment = feature_moment(feats)
    n_elements = len(bb.z_table)
    t = time.perf_counter()
    linear = Committee(bb.theta0, **settings).fit(data, n_elements, moment=moment)
    fit_linear = time.perf_counter() - t
    print(f"linear: set-up {setup_linear:.2f} s, fit {fit_linear:.3f} s, Newton steps {linear.newton_steps_.tolist()}")

    full = FullReadout(bb)
    t = time.perf_counter()
    inputs = full.inputs(frames)
    graph = LabelledGraph(full, frames)
    setup_full = time.perf_counter() - t
    t = time.perf_counter()
    committee = FullCommittee(full, Committee(bb.theta0, **settings)).fit(data, graph, n_elements, moment=moment)
    fit_full = time.perf_counter() - t
    print(f"full:   set-up {setup_full:.2f} s, fit {fit_full:.2f} s, P(full) = {full.n_params}, "
          f"L-BFGS steps {committee.lbfgs_steps_.tolist()}, largest gradient {committee.gradient_.max():.1e}")
    print(f"full / linear fit time: {fit_full / fit_linear:.0f}x; objective full/linear per member: "
          f"{np.round(committee.objective_ / linear.objective_, 3).tolist()}")

    members = committee.member_energies(inputs)
    mean_model = Backbone(full.model_with(committee.phis_), device="cpu").energy_forces(frames)[0]
    for name, energies in [("model of the average φ", full.energies(committee.phis_.mean(0), inputs)),
                           ("committee-mean model", mean_model)]:
        gap = np.abs(energies - members.mean(0))
        print(f"{name} vs the members' average energy: max {gap.max() * 1000:.2g} meV, "
              f"RMS {np.sqrt(np.mean(gap**2)) * 1000:.2g} meV (members' spread: median "
              f"{np.median(members.std(0, ddof=1)) * 1000:.2f} meV)")


if __name__ == "__main__":
    main()
