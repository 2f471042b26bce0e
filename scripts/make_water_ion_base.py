"""The water-ion testbed: H2O and H2O+ in one campaign, a base MACE with MACE's charge and spin
embeddings trained on PBE, labels CCSD(T) (campaigns/water-ion).

Both at aug-cc-pVDZ, computed here with PySCF. PBE's error is not the same in the two charge states:
at H2O's PBE minimum it puts the cation 0.27 eV too high against the neutral (vertical ionisation
energy 12.81 eV against CCSD(T)'s 12.54), so a fine-tune must move the two states apart, which a
per-element energy shift cannot do.

1. Relaxes H2O (singlet) and H2O+ (doublet) with PBE forces (BFGS, fmax 0.01 eV/Å).
2. Training data, PBE energies and analytic forces: for each state, configurations displaced from
   both minima (Gaussian, 0.02-0.12 Å per coordinate) and broader bends and stretches.
3. Trains a small float64 ScaleShiftMACE with categorical total_charge (−1..1) and total_spin
   (multiplicity 1..3) embeddings and a linear readout of the embedding.
4. Test set: displaced configurations of both states with CCSD(T) energies (test.extxyz).
5. reference.json: the vertical ionisation energy E(H2O+) − E(H2O) at each minimum, PBE and
   CCSD(T) (the campaign's `difference` observables), and the base model's values.
6. The pool's starts (neutral.xyz, cation.xyz, with info charge and 2S) and the observables' frame
   pairs (ie_at_neutral.extxyz, ie_at_cation.extxyz: one geometry, neutral then cation).

    python scripts/make_water_ion_base.py [--seed 0] [--outdir campaigns/water-ion] [--workers 2]

Reuses train.extxyz and test.extxyz when present (--regenerate recomputes them); --reuse-model
keeps base_pbe.model and remakes the references and the record around it.
"""
from __future__ import annotations

import mace  # noqa: F401  (mace must be imported before e3nn)

import argparse
import json
import multiprocessing
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyscf
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from ase.optimize import BFGS
from mace import modules
from mace import tools as mace_tools
from mace.calculators import MACECalculator

from aloop.labelers.pyscf import energy_and_forces, single_point
from aloop.labelers.replay import stored_energy
from mace_fit import Schedule, build_model, least_squares_e0, loader, rmse, train, train_valid_split

CAMPAIGN = Path(__file__).resolve().parents[1] / "campaigns" / "water-ion"
BASIS = "aug-cc-pvdz"
STATES = {"neutral": (0, 0), "cation": (1, 1)}   # (charge, 2S)
EMBEDDINGS = {"total_charge": {"type": "categorical", "per": "graph", "num_classes": 3, "offset": 1, "emb_dim": 8},
              "total_spin": {"type": "categorical", "per": "graph", "num_classes": 3, "offset": -1, "emb_dim": 8}}
MODEL = {"r_max": 5.0, "num_bessel": 8, "num_polynomial_cutoff": 5, "max_ell": 2, "num_interactions": 2,
         "hidden_irreps": "32x0e+32x1o", "MLP_irreps": "16x0e", "correlation": 3,
         "interaction": "RealAgnosticResidualInteractionBlock"}
START = Atoms("OH2", positions=[[0, 0, 0.1173], [0, 0.7572, -0.4692], [0, -0.7572, -0.4692]])
PER_STATE = {"near_own": 70, "near_other": 40, "broad": 40}
TEST_PER_STATE = 20


class PBE(Calculator):
    """PySCF PBE energies and forces of one charge state, for relaxing the minima."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, charge: int, spin: int):
        super().__init__()
        self.state = (charge, spin)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        energy, forces = energy_and_forces(self.atoms, "pbe", BASIS, *self.state)
        self.results = {"energy": energy, "forces": forces}


def with_state(atoms: Atoms, state: str) -> Atoms:
    out = Atoms(atoms.numbers, atoms.positions)
    out.info["charge"], out.info["spin"] = STATES[state]
    return out


def minimum(state: str) -> Atoms:
    atoms = with_state(START, state)
    atoms.calc = PBE(*STATES[state])
    BFGS(atoms, logfile=None).run(fmax=0.01, steps=200)
    return with_state(atoms, state)


def bent(r1: float, r2: float, angle_deg: float) -> Atoms:
    """O at the origin, O-H lengths r1 and r2, H-O-H angle."""
    half = np.radians(angle_deg) / 2
    return Atoms("OH2", positions=[[0, 0, 0], [0, r1 * np.sin(half), r1 * np.cos(half)],
                                   [0, -r2 * np.sin(half), r2 * np.cos(half)]])


def configurations(minima: dict, n: dict, rng: np.random.Generator) -> list[Atoms]:
    out = []
    for state in STATES:
        other = next(s for s in STATES if s != state)
        for kind, centre in (("near_own", minima[state]), ("near_other", minima[other])):
            for _ in range(n[kind]):
                atoms = with_state(centre, state)
                atoms.positions += rng.normal(scale=rng.uniform(0.02, 0.12), size=atoms.positions.shape)
                atoms.info["config_type"] = kind
                out.append(atoms)
        for _ in range(n["broad"]):
            atoms = with_state(bent(*rng.uniform(0.85, 1.35, size=2), rng.uniform(85, 150)), state)
            atoms.info["config_type"] = "broad"
            out.append(atoms)
    return out


def _single_threaded() -> None:
    pyscf.lib.num_threads(1)


def _pbe(atoms: Atoms):
    return energy_and_forces(atoms, "pbe", BASIS, atoms.info["charge"], atoms.info["spin"])


def _ccsdt(atoms: Atoms) -> float:
    return single_point(atoms, "ccsd(t)", BASIS, atoms.info["charge"], atoms.info["spin"]).energy


def compute(function, frames: list[Atoms], workers: int) -> list:
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_single_threaded) as pool:
        return pool.map(function, frames, chunksize=4)


def training_data(path: Path, minima: dict, seed: int, workers: int, regenerate: bool) -> list[Atoms]:
    if path.exists() and not regenerate:
        print(f"reusing {path} (pass --regenerate to recompute)")
        return read(path, ":")
    frames = configurations(minima, PER_STATE, np.random.default_rng(seed))
    print(f"PBE/{BASIS} energies and forces of {len(frames)} configurations on {workers} workers", flush=True)
    for atoms, (energy, forces) in zip(frames, compute(_pbe, frames, workers)):
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    write(path, frames, format="extxyz")
    return frames


def test_set(path: Path, minima: dict, seed: int, workers: int, regenerate: bool) -> list[Atoms]:
    if path.exists() and not regenerate:
        print(f"reusing {path} (pass --regenerate to recompute)")
        return read(path, ":")
    n = {"near_own": TEST_PER_STATE // 2, "near_other": TEST_PER_STATE // 4, "broad": TEST_PER_STATE // 4}
    frames = configurations(minima, n, np.random.default_rng(seed + 1000))
    print(f"CCSD(T)/{BASIS} energies of {len(frames)} test configurations", flush=True)
    for atoms, energy in zip(frames, compute(_ccsdt, frames, workers)):
        atoms.info["energy"] = energy
    write(path, frames, format="extxyz")
    return frames


def vertical_ie(geometry: Atoms, energy) -> float:
    return energy(with_state(geometry, "cation")) - energy(with_state(geometry, "neutral"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--outdir", type=Path, default=CAMPAIGN)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--regenerate", action="store_true", help="recompute the training data and test set")
    parser.add_argument("--reuse-model", action="store_true",
                        help="keep base_pbe.model and its training record; remake the references only")
    args = parser.parse_args()
    start = time.time()
    args.outdir.mkdir(parents=True, exist_ok=True)
    pyscf.lib.num_threads(1)
    minima = {state: minimum(state) for state in STATES}
    for state, atoms in minima.items():
        write(args.outdir / f"{state}.xyz", atoms, format="extxyz")
        write(args.outdir / f"ie_at_{state}.extxyz", [with_state(atoms, s) for s in STATES], format="extxyz")
    frames = training_data(args.outdir / "train.extxyz", minima, args.seed, args.workers, args.regenerate)
    test = test_set(args.outdir / "test.extxyz", minima, args.seed, args.workers, args.regenerate)
    data_done = time.time()

    torch.set_default_dtype(torch.float64)
    torch.manual_seed(args.seed)
    train_frames, valid = train_valid_split(frames, args.seed)
    zs = [1, 8]
    z_table = mace_tools.AtomicNumberTable(zs)
    train_loader = loader(train_frames, z_table, MODEL["r_max"], 8, seed=args.seed)
    valid_loader = loader(valid, z_table, MODEL["r_max"], 64)
    model_path = args.outdir / "base_pbe.model"
    schedule = Schedule(epochs=args.epochs, lr=1e-2)
    if args.reuse_model:
        model = torch.load(model_path, weights_only=False)
        print(f"reusing {model_path} (its training is recorded in base_pbe.json)")
    else:
        neutral = [a for a in train_frames if a.info["charge"] == 0]   # E0 from the neutral states alone
        model = build_model(MODEL, zs, least_squares_e0(neutral, zs), train_frames,
                            modules.compute_avg_num_neighbors(train_loader), embedding_specs=EMBEDDINGS)
        model = train(model, train_loader, valid_loader, schedule)
        model.eval()
        torch.save(model, model_path)
    train_done = time.time()

    calc = MACECalculator(model_paths=str(model_path), device="cpu", default_dtype="float64")

    def model_energy(atoms: Atoms) -> float:
        atoms = atoms.copy()
        atoms.info["spin"] = atoms.info["spin"] + 1   # MACE's calculator reads the multiplicity
        atoms.calc = calc
        return atoms.get_potential_energy()

    reference = {"basis": BASIS, "states": {k: {"charge": q, "spin_2S": s} for k, (q, s) in STATES.items()}}
    for state, geometry in minima.items():
        reference[f"ie_at_{state}"] = {
            "ccsdt": vertical_ie(geometry, _ccsdt),
            "pbe": vertical_ie(geometry, lambda a: _pbe(a)[0]),
            "base_model": vertical_ie(geometry, model_energy),
        }
        r = reference[f"ie_at_{state}"]
        print(f"vertical IE at the {state} minimum: CCSD(T) {r['ccsdt']:.4f} eV, PBE {r['pbe']:.4f} eV, "
              f"base model {r['base_model']:.4f} eV")
    test_error = np.array([model_energy(a) - stored_energy(a, "energy") for a in test])
    errors = {"train": rmse(model, train_loader), "validation": rmse(model, valid_loader)}
    (args.outdir / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    metadata = {
        "seed": args.seed, "basis": BASIS, "embeddings": EMBEDDINGS, "model": MODEL,
        "parameters": sum(p.numel() for p in model.parameters()),
        "sizes": {"train": len(train_frames), "validation": len(valid), "test": len(test)},
        "rmse": errors, "training": asdict(schedule),
        "test_vs_ccsdt": {"mean_eV": float(test_error.mean()), "std_eV": float(test_error.std())},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "mace": mace.__version__,
                     "pyscf": pyscf.__version__},
        "wall_s": {"data": round(data_done - start, 1), "training": round(train_done - data_done, 1),
                   "total": round(time.time() - start, 1)},
    }
    if args.reuse_model:   # the model's own training is not in this run's times
        metadata["wall_s"]["training"] = None
        metadata["model_reused"] = str(model_path)
    (args.outdir / "base_pbe.json").write_text(json.dumps(metadata, indent=1) + "\n")
    for split, e in errors.items():
        print(f"{split}: E {e['energy_meV']:.1f} meV, F {e['forces_meV_per_A']:.0f} meV/Å")
    print(f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
