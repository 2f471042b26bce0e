"""Scoring speed of a committee on one frozen backbone, measured side by side in one run.

    python benchmarks/speed.py [--n 200] [--k 8] [--device auto]

On N MoS2-like cells (4×4 monolayer, one S vacancy: 47 atoms, thermally perturbed) with a MACE of
realistic width (Mo, S; 64x0e+64x1o, 2 layers, r_max 5 Å), float64, it times:
  (a) one base-model energy evaluation of every cell (batched, no forces);
  (b) aloop's committee of K members: backbone features once, then K energies per cell;
  (c) mace's own MACECalculator given the K exported member files, cell by cell (as a user would).
and checks that (b) and (c) predict the same energies to 1e-8 eV. Prints the ratios
(b)/(a) (target ≤ 1.3) and (c)/(b) (target ≥ 5), with device, dtype and sizes.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import mace  # noqa: F401
import numpy as np
import torch
from ase.build import mx2
from e3nn import o3
from mace import modules
from mace.calculators import MACECalculator

from aloop.backbone import Backbone


def mos2_cells(n: int, rng: np.random.Generator):
    base = mx2("MoS2", size=(4, 4, 1), vacuum=8.0)
    del base[[a.index for a in base if a.symbol == "S"][0]]
    cells = []
    for _ in range(n):
        atoms = base.copy()
        atoms.positions += rng.normal(0, 0.08, atoms.positions.shape)
        cells.append(atoms)
    return cells


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    return modules.ScaleShiftMACE(
        r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=2, interaction_cls=block,
        interaction_cls_first=block, num_interactions=2, num_elements=2,
        hidden_irreps=o3.Irreps("64x0e+64x1o"), MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.array([-10.0, -4.0]), avg_num_neighbors=8.0, atomic_numbers=[16, 42],
        correlation=3, gate=torch.nn.functional.silu, atomic_inter_scale=1.0, atomic_inter_shift=0.0,
    )


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    cells = mos2_cells(args.n, np.random.default_rng(0))
    backbone = Backbone(model(), device=args.device)
    thetas = backbone.theta0 + 0.05 * np.random.default_rng(1).normal(size=(args.k, backbone.n_params))

    def base_energies():
        with torch.no_grad():
            return np.concatenate([backbone.model(b, compute_force=False)["energy"].cpu().numpy()
                                   for b in backbone.batches(cells, 32)])

    def committee():
        return backbone.features(cells, batch_size=32).energies(thetas)

    base_energies()  # warm-up: allocations and first-call overheads are not what is compared
    _, t_base = timed(base_energies)
    ours, t_ours = timed(committee)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [str(backbone.export(theta, Path(tmp) / f"m{k}.model")) for k, theta in enumerate(thetas)]
        calc = MACECalculator(model_paths=paths, device=str(backbone.device), default_dtype="float64")
        n_ref = min(args.n, 40)  # cell by cell is slow; time a subset and scale

        def reference():
            out = []
            for atoms in cells[:n_ref]:
                atoms = atoms.copy()
                atoms.calc = calc
                atoms.get_potential_energy()
                out.append(calc.results["energy_comm"])
            return np.array(out).T

        theirs, t_ref = timed(reference)
    t_theirs = t_ref * args.n / n_ref
    diff = np.abs(theirs - ours[:, :n_ref]).max()
    print(f"device {backbone.device}, float64, {args.n} cells of {len(cells[0])} atoms, K = {args.k}, "
          f"P = {backbone.n_params} trained parameters, torch threads {torch.get_num_threads()}")
    print(f"(a) base model, energies only      {t_base:8.2f} s")
    print(f"(b) aloop committee of {args.k}          {t_ours:8.2f} s   (b)/(a) = {t_ours / t_base:5.2f}  (target ≤ 1.3)")
    print(f"(c) MACECalculator, {args.k} model files {t_theirs:8.2f} s   (c)/(b) = {t_theirs / t_ours:5.1f}  (target ≥ 5)"
          f"   [timed on {n_ref} cells, scaled]")
    print(f"max |E_aloop − E_MACECalculator| = {diff:.2e} eV (target ≤ 1e-8)")


if __name__ == "__main__":
    main()
