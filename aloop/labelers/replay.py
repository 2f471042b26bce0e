"""Labels looked up from a file (benchmarks, tests, labels computed elsewhere).

The file is anything ASE reads with an energy per frame (`info[energy_key]`, or the energy of an
attached calculator); a configuration matches a frame with the same atoms in the same order whose
positions differ by at most `tolerance` Å.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from ase.io import read

from .base import Label, LabelError, LocalLabeler


def stored_energy(atoms, key: str):
    """The energy a file holds for a frame under `key`, or None: a field of its own (atoms.info), or a
    calculator's result. ASE's extxyz reader moves the fields a calculator writes (`energy`,
    `free_energy`) into a calculator, so they are looked up there too."""
    if key in atoms.info:
        return float(atoms.info[key])
    results = atoms.calc.results if atoms.calc is not None else {}
    if key in results and np.ndim(results[key]) == 0:   # per-atom results (`energies`) are no energy
        return float(results[key])
    return None


class ReplayLabeler(LocalLabeler):
    name = "replay"

    def __init__(self, workdir, path, *, energy_key: str, sigma_key: str | None, tolerance: float):
        """Defaults: campaign_labelers.ReplaySettings; a run builds the labeler with `from_settings`."""
        super().__init__(workdir)
        self.path = Path(path)
        self.tolerance = tolerance
        self.frames = read(self.path, index=":")
        self.energies, self.sigmas = [], []
        for i, atoms in enumerate(self.frames):
            energy = stored_energy(atoms, energy_key)
            if energy is None:
                raise ValueError(f"{self.path}: frame {i} has no '{energy_key}' (labeler.energy_key)")
            if sigma_key is not None and sigma_key not in atoms.info:
                raise ValueError(f"{self.path}: frame {i} has no '{sigma_key}' (labeler.sigma_key)")
            self.energies.append(float(energy))
            self.sigmas.append(float(atoms.info[sigma_key]) if sigma_key else 0.0)

    def compute(self, atoms) -> Label:
        for i, frame in enumerate(self.frames):
            if len(frame) == len(atoms) and np.array_equal(frame.numbers, atoms.numbers):
                if np.abs(frame.positions - atoms.positions).max() <= self.tolerance:
                    return Label(self.energies[i], self.sigmas[i], {"method": "replay", "file": str(self.path), "frame": i})
        raise LabelError(f"no frame of {self.path} matches this configuration within {self.tolerance} Å")
