"""Explicit fixed-node DMC barrier of H_a-H_b + H_c -> H_a + H_b-H_c with the pyqmc labeler.

barrier = E_DMC(saddle_ccsdt.xyz) - E_DMC(reactant.xyz), the quantity reference.json gives for PBE
and CCSD(T) (the saddle is the explicit CCSD(T)/aug-cc-pVTZ one, R = 0.9313 Å; the reactant is
H2 at the PBE bond length with the third H 3 Å away). Each geometry gets its own work folder, so
both Jastrows are optimised from scratch, and a second run with the same settings reuses the
finished labels.

    nice -n 19 python scripts/h3_dmc_reference.py [--walkers 800 --blocks 800 ...]

`--geometry saddle` (or reactant) computes one label only, so the two can run side by side; a
run without it then collects both finished labels and writes the barrier.

Writes campaigns/h3-exchange/dmc_reference.json (energies and barrier in eV, with one standard
error, the settings and the wall time of each label, as first computed).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from ase.io import read

from aloop.campaign_labelers import PyQMCSettings
from aloop.labelers.pyqmc import PyQMCLabeler

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN = ROOT / "campaigns" / "h3-exchange"
GEOMETRIES = {"saddle": "saddle_ccsdt.xyz", "reactant": "reactant.xyz"}
LITERATURE_BARRIER_EV = 0.417   # 9.61 kcal/mol, asymptotic, accurate surface


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--basis", default="cc-pvtz")
    parser.add_argument("--timestep", type=float, default=0.02, help="Hartree⁻¹")
    parser.add_argument("--walkers", type=int, default=800)
    parser.add_argument("--blocks", type=int, default=800, help="DMC blocks (0.1 Hartree⁻¹ each) kept")
    parser.add_argument("--equilibration", type=int, default=50, help="DMC blocks discarded first")
    parser.add_argument("--optimize-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="default: runs/h3-dmc-reference/<settings>")
    parser.add_argument("--out", type=Path, default=CAMPAIGN / "dmc_reference.json")
    parser.add_argument("--geometry", choices=sorted(GEOMETRIES), help="compute this label only")
    args = parser.parse_args()

    settings = dict(basis=args.basis, timestep=args.timestep, walkers=args.walkers, blocks=args.blocks,
                    equilibration=args.equilibration, optimize_steps=args.optimize_steps, seed=args.seed)
    # one folder per set of settings: a finished label is reused only for the settings it was made with
    workdir = args.workdir or ROOT / "runs" / "h3-dmc-reference" / "_".join(f"{k}{v}" for k, v in settings.items())
    result = {"settings": settings, "units": "eV; one standard error (reblocked)", "labels": {}}
    for name, file in GEOMETRIES.items():
        if args.geometry not in (None, name):
            continue
        labeler = PyQMCLabeler.from_settings(workdir / name, PyQMCSettings(kind="pyqmc", **settings))
        labeler.submit(name, read(CAMPAIGN / file))
        label = labeler.collect(name)
        p = label.provenance
        result["labels"][name] = {
            "file": file, "energy": label.energy, "sigma": label.sigma, "wall_s": p["wall_s"],
            "e_dmc_hartree": p["e_dmc_hartree"], "sigma_hartree": p["sigma_hartree"],
            "e_vmc_hartree": p["jastrow"].get("e_vmc_hartree"), "reblock": p["reblock"],
            "pyqmc_version": p["pyqmc_version"],
        }
        print(f"{name}: {label.energy:.4f} ± {label.sigma:.4f} eV ({p['wall_s']:.0f} s)", flush=True)
    if args.geometry is not None:
        return
    saddle, reactant = result["labels"]["saddle"], result["labels"]["reactant"]
    barrier = saddle["energy"] - reactant["energy"]
    sigma = float(np.hypot(saddle["sigma"], reactant["sigma"]))
    result.update(barrier=barrier, barrier_sigma=sigma, literature_barrier=LITERATURE_BARRIER_EV,
                  ccsdt_barrier=json.loads((CAMPAIGN / "reference.json").read_text())["ccsdt_barrier"],
                  label_wall_s=round(saddle["wall_s"] + reactant["wall_s"], 1))
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"DMC barrier {barrier:.4f} ± {sigma:.4f} eV (literature {LITERATURE_BARRIER_EV} eV); wrote {args.out}")


if __name__ == "__main__":
    main()
