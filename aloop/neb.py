"""Minimum-energy paths on the backbone's surface: the base model's (a pool source) or that of any θ
(an observable's path, re-relaxed for each committee).

The images of a band are evaluated together, one batched model call per optimiser step: for small
molecules the per-call overhead, not the arithmetic, is the cost.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from tqdm.auto import tqdm

from .charge import charge_state

# ASE 3.29 changed NEB's default tangent from its own "aseneb" to "improvedtangent" (Henkelman and
# Jónsson's); named here so that a band relaxes the same way on every ASE the package accepts
TANGENT = "improvedtangent"


class BatchedCalculator(Calculator):
    """Serves a fixed set of configurations (NEB images) from one batched model call: the first
    image asked at new positions evaluates them all, the others are answered from that call.
    `theta`: the readout parameters to evaluate with (None: the base model)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, backbone, images: list[Atoms], theta: np.ndarray | None = None):
        super().__init__()
        self.backbone, self.images, self.theta, self._cache = backbone, images, theta, {}

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        key = self.atoms.positions.tobytes()
        if key not in self._cache:
            extra = {} if self.theta is None else {"theta": self.theta}
            energies, forces = self.backbone.energy_forces(self.images, **extra)
            self._cache = {im.positions.tobytes(): (e, f) for im, e, f in zip(self.images, energies, forces)}
        energy, forces = self._cache[key]
        self.results = {"energy": float(energy), "forces": forces}


def interpolate(initial: Atoms, final: Atoms, n_images: int, guess: Atoms | None = None) -> list[Atoms]:
    """`n_images` interior images between the end points (IDPP), shared out over the segments
    initial→guess→final when a guess is given (it is then one of the interior images)."""
    from ase.mep import NEB

    stops = [initial, final] if guess is None else [initial, guess, final]
    per_segment = np.array_split(np.arange(n_images + 2 - len(stops)), len(stops) - 1)
    images = [initial.copy()]
    for segment, end in zip(per_segment, stops[1:]):
        piece = [images[-1]] + [images[-1].copy() for _ in segment] + [end.copy()]
        NEB(piece, method=TANGENT, allow_shared_calculator=True).interpolate(method="idpp")
        images += piece[1:]
    return images


def _plain(atoms: Atoms) -> Atoms:
    plain = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    plain.info.update(charge_state(atoms))   # the model's energy depends on it (charge embeddings)
    return plain


@dataclass
class RelaxedPath:
    """A CI-NEB path with relaxed end points, and the energies of its images on the surface it was
    relaxed on (eV)."""
    images: list[Atoms]
    energies: np.ndarray
    converged: bool
    steps: int
    seconds: float

    @property
    def barrier(self) -> float:
        """Highest image minus the first (the same definition as metrics.barrier)."""
        return float(self.energies.max() - self.energies[0])

    @property
    def saddle(self) -> int:
        return int(np.argmax(self.energies))


def relax_band(images: list[Atoms], backbone, *, theta: np.ndarray | None = None, climb: bool = True,
               fmax: float = 0.05, steps: int = 500, progress: bool = False,
               desc: str = "NEB") -> RelaxedPath:
    """The (climbing-image) NEB between the fixed end points of `images`, started from `images`
    themselves."""
    from ase.mep import NEB
    from ase.optimize import FIRE

    t0 = time.time()

    band = [_plain(im) for im in images]
    calc = BatchedCalculator(backbone, band, theta)
    for image in band:
        image.calc = calc
    optimizer = FIRE(NEB(band, climb=climb, method=TANGENT, allow_shared_calculator=True), logfile=None)
    bar = tqdm(total=steps, desc=desc, unit="step", disable=not progress)
    optimizer.attach(lambda: bar.update(1))
    converged = bool(optimizer.run(fmax=fmax, steps=steps))
    bar.close()
    energies = np.array([im.get_potential_energy() for im in band])   # from the calculator's last call
    return RelaxedPath([_plain(im) for im in band], energies, converged, int(optimizer.nsteps), time.time() - t0)


MAX_END_POINT_MOVE = 1.0   # Å: an end point whose atom moves further has left the basin it stood for


def relax_minimum(atoms: Atoms, backbone, *, theta: np.ndarray | None = None, fmax: float = 0.05,
                  steps: int = 500) -> tuple[Atoms, bool, int]:
    """(atoms, converged, steps): a local minimum (positions only; the cell is kept) near `atoms`.
    When an atom moves more than MAX_END_POINT_MOVE from `atoms` (a fragment drifting off on a
    surface with no minimum near the given end point) the relaxation stops and `atoms` is returned
    as given, not converged: a reaction's end point must stay the configuration the user named."""
    from ase.optimize import FIRE

    relaxed = _plain(atoms)
    relaxed.calc = BatchedCalculator(backbone, [relaxed], theta)
    optimizer = FIRE(relaxed, logfile=None)
    for converged in optimizer.irun(fmax=fmax, steps=steps):
        if np.abs(relaxed.positions - atoms.positions).max() > MAX_END_POINT_MOVE:
            return _plain(atoms), False, int(optimizer.nsteps)
    return _plain(relaxed), bool(converged), int(optimizer.nsteps)


def relax_path(start: list[Atoms], backbone, *, theta: np.ndarray | None = None, climb: bool = True,
               fmax: float = 0.05, steps: int = 500, progress: bool = False, desc: str = "NEB") -> RelaxedPath:
    """The CI-NEB of θ's surface started from the images `start` (a previous θ's path, or a guess):
    both end points are relaxed to their minima first, then the band between them."""
    t0 = time.time()
    ends = [relax_minimum(start[i], backbone, theta=theta, fmax=fmax, steps=steps) for i in (0, -1)]
    band = [ends[0][0]] + [_plain(im) for im in start[1:-1]] + [ends[1][0]]
    path = relax_band(band, backbone, theta=theta, climb=climb, fmax=fmax, steps=steps, progress=progress, desc=desc)
    return replace(path, converged=path.converged and ends[0][1] and ends[1][1],
                   steps=path.steps + ends[0][2] + ends[1][2], seconds=time.time() - t0)
