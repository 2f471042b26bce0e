"""Is the force criterion compatible with the barrier? CCSD(T) forces along the fine-tuned path.

The quickstart's acceptance asks for the exported model's forces to stay within t of PBE along its
own relaxed CI-NEB path, and for its barrier to match CCSD(T). Both cannot hold where CCSD(T)'s own
forces differ from PBE's by more than t. For the images of a run's exported path (by default the
one farthest from PBE), this prints ‖F − F_PBE‖ for the fine-tuned model and for CCSD(T)/aug-cc-pVTZ
(central finite differences of PySCF energies, step --step Å), and ‖F_tuned − F_CCSD(T)‖.

    python benchmarks/h3_path_forces.py --run runs/h3-exchange [--all] [--step 0.005]

About 20 CCSD(T) energies (3 minutes on 2 cores) per image.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import mace  # noqa: F401  (before e3nn)
import numpy as np
from mace.calculators import MACECalculator

from aloop.backbone import Backbone
from aloop.campaign import load_campaign
from aloop.labelers.pyscf import energy_and_forces, single_point
from aloop.pool import nudged_elastic_band
from aloop.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]


def ccsdt_forces(atoms, step: float) -> np.ndarray:
    forces = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for x in range(3):
            energies = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[i, x] += sign * step
                energies.append(single_point(moved, "ccsd(t)", "aug-cc-pvtz", spin=1).energy)
            forces[i, x] = -(energies[0] - energies[1]) / (2 * step)
    return forces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "h3-exchange")
    parser.add_argument("--all", action="store_true", help="every image, not only the one farthest from PBE")
    parser.add_argument("--step", type=float, default=0.005, help="finite-difference step, Å")
    args = parser.parse_args()
    campaign = load_campaign(ROOT / "campaigns" / "h3-exchange" / "campaign.yaml")
    spec = next(s for s in campaign.pool.sources if s.kind == "neb").model_copy(update={"fmax": 0.005, "steps": 2000})
    model = RunDir.existing(args.run).export / "committee_mean.model"
    images = nudged_elastic_band(spec, Backbone.from_file(model, device="cpu"), progress=False)
    calc = MACECalculator(model_paths=str(model), device="cpu", default_dtype="float64")
    tuned, pbe = [], []
    for image in images:
        image.calc = calc
        tuned.append(image.get_forces())
        pbe.append(energy_and_forces(image, "pbe", "aug-cc-pvtz", spin=1)[1])
    gaps = [np.linalg.norm(t - p) for t, p in zip(tuned, pbe)]
    chosen = range(len(images)) if args.all else [int(np.argmax(gaps))]
    t = campaign.finetune.force_threshold
    print(f"{args.run}: t = {t} eV/Å; ‖·‖ over all atoms of an image, eV/Å")
    print(f"{'image':>5} {'tuned − PBE':>12} {'CCSD(T) − PBE':>14} {'tuned − CCSD(T)':>16}")
    for k in chosen:
        reference = ccsdt_forces(images[k], args.step)
        print(f"{k:>5} {gaps[k]:12.3f} {np.linalg.norm(reference - pbe[k]):14.3f} "
              f"{np.linalg.norm(tuned[k] - reference):16.3f}", flush=True)


if __name__ == "__main__":
    main()
