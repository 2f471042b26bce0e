"""The quickstart's held-out test set: CCSD(T)/aug-cc-pVTZ energies of H3 configurations.

Half the configurations lie near the exchange path (collinear, perturbed), half are bent H3 of the
kind the MD pool visits. None of them is in the pool, so the error on them is a held-out error.

    python scripts/make_h3_testset.py            # about a minute on 2 cores
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import write

from aloop.campaign_labelers import PySCFSettings
from aloop.labelers.pyscf import PySCFLabeler

CAMPAIGN = Path(__file__).resolve().parents[1] / "campaigns" / "h3-exchange"


def h3(r1: float, r2: float, angle_deg: float) -> Atoms:
    t = np.radians(angle_deg)
    return Atoms("H3", positions=[[-r1, 0, 0], [0, 0, 0], [-r2 * np.cos(t), r2 * np.sin(t), 0]])


def configurations(rng: np.random.Generator, n: int) -> list[Atoms]:
    frames = []
    for s in np.linspace(0.0, 1.0, n // 2):  # reactant (0.75, 3.0) → saddle (0.94, 0.94) → product
        r1 = 0.75 + (0.94 - 0.75) * min(2 * s, 1) + (3.0 - 0.94) * max(2 * s - 1, 0)
        r2 = 3.0 - (3.0 - 0.94) * min(2 * s, 1) - (0.94 - 0.75) * max(2 * s - 1, 0)
        frames.append(h3(r1 + rng.normal(0, 0.03), r2 + rng.normal(0, 0.03), 180 - abs(rng.normal(0, 8))))
    while len(frames) < n:
        frames.append(h3(rng.uniform(0.65, 1.3), rng.uniform(0.8, 3.2), rng.uniform(90, 180)))
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("-n", type=int, default=30)
    parser.add_argument("--out", type=Path, default=CAMPAIGN / "ccsdt_test.extxyz")
    args = parser.parse_args()
    frames = configurations(np.random.default_rng(args.seed), args.n)
    with tempfile.TemporaryDirectory() as jobs:
        settings = PySCFSettings(kind="pyscf", method="ccsd(t)", basis="aug-cc-pvtz", spin=1)
        labeler = PySCFLabeler.from_settings(jobs, settings)
        for atoms in frames:
            label = labeler.compute(atoms)
            atoms.info.update(energy=label.energy, method="CCSD(T)", basis="aug-cc-pVTZ", seed=args.seed)
    write(args.out, frames)
    print(f"wrote {len(frames)} CCSD(T)/aug-cc-pVTZ energies to {args.out}")


if __name__ == "__main__":
    main()
