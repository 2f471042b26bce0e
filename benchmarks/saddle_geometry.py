"""Where a MoS2 run's labelled saddles sit, against the oracle's own relaxed CI-NEB saddle.

For each labelled point of a run's relaxed mono-vacancy paths (roles initial, saddle, final): its
label and the committee's prediction of it, both above the oracle's relaxed initial state, and its
distance from the oracle's saddle image (RMSD over the cell's atoms and the largest single-atom
displacement and its atom, minimum image). It tells a saddle check that stands because the barrier is off from
one that stands because the fit's saddle sits beside the oracle's, where the oracle's surface rises
across the path (docs/mos2-svac.md, "Why the saddle check stands at 100 labels").

    python benchmarks/saddle_geometry.py F/full-auto-targeted-s{0,1,2}-b9x7-25

Needs no CHGNet: the labels are in the runs' stores, the oracle's path in
campaigns/mos2-svac/mono_path_hf.extxyz (scripts/mos2_hf_references.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ase.geometry import find_mic
from ase.io import read

from aloop.store import LABELLED, RunStore

PATH = Path(__file__).resolve().parents[1] / "campaigns" / "mos2-svac" / "mono_path_hf.extxyz"


def distance(a, b) -> tuple[float, float, str]:
    """(RMSD, largest displacement) in Å between two cells of the same atoms, minimum image, and the
    atom that moved most (symbol and index)."""
    _, lengths = find_mic(a.positions - b.positions, a.cell, pbc=a.pbc)
    i = int(lengths.argmax())
    return float(np.sqrt(np.mean(lengths**2))), float(lengths[i]), f"{a.get_chemical_symbols()[i]}{i}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="MoS2 run folders (benchmarks/mos2_class_run.py)")
    args = parser.parse_args()
    path = read(PATH, index=":")
    energies = np.array([image.get_potential_energy() for image in path])
    saddle, e0 = path[int(np.argmax(energies))], energies[0]
    print(f"oracle's relaxed path: barrier {energies.max() - e0:.4f} eV; energies below are above its initial state")
    print(f"{'run':34s} {'it':>3s} {'role':8s} {'label':>7s} {'model':>7s} {'label-model':>11s} "
          f"{'RMSD to saddle':>14s} {'max':>6s} atom")
    for run in args.runs:
        if not (run / "aloop.db").is_file():
            parser.error(f"{run}: no aloop.db; give a run folder")
        rows = RunStore(run).rows(source="path:barrier", state=LABELLED)
        for row in sorted(rows, key=lambda r: (r.get("iteration", 0), r.id)):
            if row.get("pred_energy") is None:
                continue
            rmsd, largest, atom = distance(row.toatoms(), saddle)
            print(f"{run.name:34s} {row.get('iteration'):3d} {row.get('role') or '?':8s} "
                  f"{row.energy_hf - e0:+7.3f} {row.pred_energy - e0:+7.3f} {row.energy_hf - row.pred_energy:+11.3f} "
                  f"{rmsd:14.3f} {largest:6.3f} {atom}")


if __name__ == "__main__":
    main()
