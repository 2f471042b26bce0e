"""Check of `finetune.readout: full`: does a committee fitted on CUDA give the CPU's energies?

    python benchmarks/full_readout_cuda.py [--n 12] [--k 4] [--tolerance 1e-6] [--model M --frames F]
        [--fit-tolerance 1e-5]

Run it on a machine with a GPU (exit status 2 without one). By default it builds the quickstart's
problem (campaigns/h3-exchange/base_pbe.model, the first N frames of ccsdt_test.extxyz as labels,
the base model's forces as the low-fidelity forces); --model and --frames give another (MoS2:
campaigns/mos2-svac/base_chgnet.model and hf_test.extxyz). It fits the same full committee on the
CPU and on CUDA (float64 both), and compares the members' energies on every frame of the file. Exit
status 0 when they agree within --tolerance eV (1e-6 by default), 1 otherwise, with the largest
difference, the objectives and the L-BFGS steps of both, and the time of each device's set-up (the
labels' per-atom Jacobians) and fit.

The optimiser is deterministic on either device, but CUDA's reductions add in another order, so the
two runs differ at round-off from the first step, and L-BFGS on a non-convex loss may amplify that;
this script measures by how much. L-BFGS stops at the gradient tolerance (--fit-tolerance, the
campaign's 1e-5 by default, in whitened units), and Newton's polish then takes each member to its
minimiser's round-off (docs/method.md, "Newton's polish"): on an H200 the two devices agreed to
1.4e-13 eV (H3) and 6.8e-13 eV (MoS2, --n 4 --k 4), where L-BFGS alone left 5.9e-9 and 2.7e-6.
"""
from __future__ import annotations

import argparse
import sys
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

H3 = Path(__file__).resolve().parents[1] / "campaigns" / "h3-exchange"


def fit_on(device: str, n: int, k: int, model: Path, frames: list, fit_tolerance: float = 1e-5):
    """(members' energies on every frame, objectives, L-BFGS steps, set-up seconds, fit seconds) of a
    fit on `device` to the first `n` frames."""
    bb = Backbone.from_file(model, device=device)
    labelled = frames[:n]
    energies = np.array([atoms.get_potential_energy() for atoms in labelled])
    for _ in range(3):   # as in a campaign, the model has run before its first fit: the set-up time excludes start-up
        bb.features(labelled)
    t = time.perf_counter()
    feats = bb.features(labelled)
    jac = bb.force_jacobians(labelled)
    data = TrainingSet.build(feats, energies, np.zeros(n), jac, [j.f0 for j in jac], ids=np.arange(n))
    full = FullReadout(bb)
    graph = LabelledGraph(full, labelled)
    setup = time.perf_counter() - t
    settings = dict(size=k, bootstrap=True, prior_sigma=0.1, force_threshold=0.5, force_weight=1.0,
                    noise_floor=0.003, seed=0)
    t = time.perf_counter()
    committee = FullCommittee(full, Committee(bb.theta0, **settings), tolerance=fit_tolerance).fit(
        data, graph, len(bb.z_table), moment=feature_moment(feats))
    seconds = time.perf_counter() - t
    return (committee.member_energies(full.inputs(frames)), committee.objective_, committee.lbfgs_steps_,
            setup, seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--tolerance", type=float, default=1e-6, help="eV")
    parser.add_argument("--fit-tolerance", type=float, default=1e-5,
                        help="the fits' gradient tolerance (whitened units)")
    parser.add_argument("--model", type=Path, default=H3 / "base_pbe.model", help="the base MACE file")
    parser.add_argument("--frames", type=Path, default=H3 / "ccsdt_test.extxyz",
                        help="extxyz with energies: the first N are the labels, all are compared")
    args = parser.parse_args()
    for option, path in (("--model", args.model), ("--frames", args.frames)):
        if not path.is_file():
            parser.error(f"{option}: no file {path}")
    frames = read(args.frames, index=":")
    if not 1 <= args.n <= len(frames):
        parser.error(f"--n: {args.frames} holds {len(frames)} frames; N must be 1 to {len(frames)}, got {args.n}")
    if not torch.cuda.is_available():
        print("no CUDA device here: run this on a machine with a GPU", file=sys.stderr)
        return 2
    print(f"{args.model.name} on {args.n} frames of {args.frames.name}, K = {args.k}; "
          f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    cpu = fit_on("cpu", args.n, args.k, args.model, frames, args.fit_tolerance)
    gpu = fit_on("cuda", args.n, args.k, args.model, frames, args.fit_tolerance)
    gap = float(np.abs(cpu[0] - gpu[0]).max())
    for name, result in (("cpu", cpu), ("cuda", gpu)):
        print(f"{name:5s} set-up {result[3]:.2f} s, fit {result[4]:.2f} s, L-BFGS steps {result[2].tolist()}, "
              f"objective {np.round(result[1], 6).tolist()}")
    print(f"largest difference of a member's energy, CPU vs CUDA: {gap:.2e} eV (tolerance {args.tolerance:.0e})")
    return 0 if gap <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
