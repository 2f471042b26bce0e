"""Acceptance of the quickstart: barriers and forces of the base and the fine-tuned models.

Run after the quickstart (`aloop run campaigns/h3-exchange/campaign.yaml`):

    python benchmarks/h3_acceptance.py [--run runs/h3-exchange]

1. base-model climbing-image NEB barrier vs the explicit PBE/aug-cc-pVTZ barrier;
2. the exported fine-tuned model's (committee mean) NEB barrier vs the explicit CCSD(T)/aug-cc-pVTZ
   barrier, with the number of CCSD(T) labels it used;
3. along the fine-tuned path: ‖F_fine-tuned − F_PBE‖ per image (PySCF PBE forces) vs the campaign's
   force threshold t.
Every NEB runs on the model file itself; the barrier is re-evaluated with mace's own
MACECalculator as an independent check. Writes RUN/report/acceptance.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mace  # noqa: F401
import numpy as np
import torch
from mace.calculators import MACECalculator

from aloop.backbone import Backbone
from aloop.campaign import load_campaign
from aloop.labelers.pyscf import energy_and_forces
from aloop.pool import nudged_elastic_band
from aloop.store import LABELLED, RunStore

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN = ROOT / "campaigns" / "h3-exchange"


def path_and_barrier(model_file: Path, spec) -> tuple[list, float, float]:
    """Relaxed CI-NEB path of a model file; its barrier from the NEB and from MACECalculator."""
    images = nudged_elastic_band(spec, Backbone.from_file(model_file, device="cpu"), progress=False)
    calc = MACECalculator(model_paths=str(model_file), device="cpu", default_dtype="float64")
    energies = []
    for image in images:
        image.calc = calc
        energies.append(image.get_potential_energy())
    energies = np.array(energies)
    backbone_energies, _ = Backbone.from_file(model_file, device="cpu").energy_forces(images)
    return images, float(energies.max() - energies[0]), float(backbone_energies.max() - backbone_energies[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "h3-exchange")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    campaign = load_campaign(CAMPAIGN / "campaign.yaml")
    spec = next(s for s in campaign.pool.sources if s.kind == "neb")
    spec = spec.model_copy(update={"fmax": 0.005, "steps": 2000})
    reference = json.loads((CAMPAIGN / "reference.json").read_text())
    store = RunStore.existing(args.run)
    n_labels = store.count(state=LABELLED)

    _, base_barrier, base_check = path_and_barrier(campaign.model.path, spec)
    tuned_file = store.layout.export / "committee_mean.model"
    images, tuned_barrier, tuned_check = path_and_barrier(tuned_file, spec)

    calc = MACECalculator(model_paths=str(tuned_file), device="cpu", default_dtype="float64")
    force_gaps = []
    for image in images:
        image.calc = calc
        _, pbe_forces = energy_and_forces(image, "pbe", "aug-cc-pvtz", spin=1)
        force_gaps.append(float(np.linalg.norm(image.get_forces() - pbe_forces)))

    t = campaign.finetune.force_threshold
    result = {
        "labels": n_labels,
        "base_barrier": base_barrier, "base_barrier_backbone": base_check, "pbe_barrier": reference["pbe_barrier"],
        "base_error": base_barrier - reference["pbe_barrier"],
        "tuned_barrier": tuned_barrier, "tuned_barrier_backbone": tuned_check, "ccsdt_barrier": reference["ccsdt_barrier"],
        "tuned_error": tuned_barrier - reference["ccsdt_barrier"],
        "force_gap_per_image": force_gaps, "force_threshold": t,
        "criteria": {
            "1_base_within_0.02_of_pbe": abs(base_barrier - reference["pbe_barrier"]) <= 0.02,
            "2_tuned_within_0.02_of_ccsdt": abs(tuned_barrier - reference["ccsdt_barrier"]) <= 0.02 and n_labels <= 40,
            "2_forces_within_threshold": max(force_gaps) <= t,
        },
        "wall_s": round(time.time() - t0, 1),
    }
    out = store.layout.report / "acceptance.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"labels used: {n_labels}")
    print(f"base model barrier   {base_barrier:.4f} eV   PBE explicit     {reference['pbe_barrier']:.4f} eV   "
          f"error {result['base_error']:+.4f}")
    print(f"fine-tuned barrier   {tuned_barrier:.4f} eV   CCSD(T) explicit {reference['ccsdt_barrier']:.4f} eV   "
          f"error {result['tuned_error']:+.4f}")
    print(f"|F_tuned - F_PBE| along the path (eV/Å): {', '.join(f'{g:.3f}' for g in force_gaps)}  (t = {t})")
    print(json.dumps(result["criteria"]))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
