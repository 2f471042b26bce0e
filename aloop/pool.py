"""Candidate configurations: read from files, or generated with the base model (Langevin MD, NEB).

Each source returns (frames, low-fidelity forces or None). Generated frames get their forces from the
base model later, through the backbone, so they need none here. The generators drive the backbone's
own float64 copy of the base model with batched calls.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from ase.io import read
from tqdm.auto import tqdm


class PoolError(ValueError):
    """A source cannot produce candidates; the message names the source and file."""


def _read(path: Path, index: str, source: str) -> list[Atoms]:
    try:
        frames = read(path, index=index)
    except Exception as err:  # ASE raises many types for unreadable files
        raise PoolError(f"pool source '{source}': cannot read {path}: {err}") from err
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise PoolError(f"pool source '{source}': {path} holds no configurations (index '{index}')")
    return frames


class BatchedCalculator(Calculator):
    """Serves a fixed set of configurations (NEB images) from one batched model call: the first
    image asked at new positions evaluates them all, the others are answered from that call."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, backbone, images: list[Atoms]):
        super().__init__()
        self.backbone, self.images, self._cache = backbone, images, {}

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        key = self.atoms.positions.tobytes()
        if key not in self._cache:
            energies, forces = self.backbone.energy_forces(self.images)
            self._cache = {im.positions.tobytes(): (e, f) for im, e, f in zip(self.images, energies, forces)}
        energy, forces = self._cache[key]
        self.results = {"energy": float(energy), "forces": forces}


def from_file(spec) -> tuple[list[Atoms], list[np.ndarray] | None]:
    frames = _read(spec.path, spec.index, spec.name)
    if spec.forces_key is None:
        return frames, None
    forces = []
    for i, atoms in enumerate(frames):
        if spec.forces_key in atoms.arrays:
            f = atoms.arrays[spec.forces_key]
        elif spec.forces_key == "forces" and atoms.calc is not None and "forces" in atoms.calc.results:
            f = atoms.calc.results["forces"]
        else:
            raise PoolError(
                f"pool source '{spec.name}': {spec.path} frame {i} has no per-atom array '{spec.forces_key}' "
                f"(forces_key); arrays present: {', '.join(atoms.arrays) or 'none'}"
            )
        forces.append(np.asarray(f, dtype=float).reshape(len(atoms), 3))
    return frames, forces


def molecular_dynamics(spec, backbone, seed: int, progress: bool = True) -> list[Atoms]:
    """Langevin MD (BAOAB) from every start frame at every temperature; every `interval`-th step kept.

    All trajectories advance together so that each step is one batched model call, not one per
    trajectory: for small molecules the per-call overhead, not the arithmetic, is the cost.
    """
    starts = _read(spec.start, ":", spec.name)
    runs = [(s, t, start, temperature) for s, start in enumerate(starts) for t, temperature in enumerate(spec.temperatures)]
    dt, gamma = spec.timestep * units.fs, spec.friction / units.fs
    c1 = np.exp(-gamma * dt)
    c2 = np.sqrt(1.0 - c1**2)
    systems, velocities, rngs, kT_over_m = [], [], [], []
    for s, t, start, temperature in runs:
        rng = np.random.default_rng([seed, s, t])
        masses = start.get_masses()[:, None]
        v = rng.normal(size=(len(start), 3)) * np.sqrt(units.kB * temperature / masses)
        v -= (masses * v).sum(0) / masses.sum()  # no drift of the whole molecule
        systems.append(start.copy())
        velocities.append(v)
        rngs.append(rng)
        kT_over_m.append(units.kB * temperature / masses)
    _, forces = backbone.energy_forces(systems)
    frames = []
    bar = tqdm(total=spec.steps, desc=f"MD {spec.name} ({len(runs)} trajectories)", unit="step", disable=not progress)
    for step in range(1, spec.steps + 1):
        for atoms, v, f, rng, kTm in zip(systems, velocities, forces, rngs, kT_over_m):
            masses = atoms.get_masses()[:, None]
            v += 0.5 * dt * f / masses
            atoms.positions += 0.5 * dt * v
            v *= c1
            v += c2 * np.sqrt(kTm) * rng.normal(size=v.shape)
            atoms.positions += 0.5 * dt * v
        _, forces = backbone.energy_forces(systems)
        for atoms, v, f in zip(systems, velocities, forces):
            v += 0.5 * dt * f / atoms.get_masses()[:, None]
        if step % spec.interval == 0:
            for (s, t, start, temperature), atoms in zip(runs, systems):
                frame = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
                frame.info.update(temperature_K=temperature, step=step, start_frame=s)
                frames.append(frame)
        bar.update(1)
    bar.close()
    return frames


def nudged_elastic_band(spec, backbone, progress: bool = True) -> list[Atoms]:
    """Climbing-image NEB between fixed end points; returns every image, end points included."""
    from ase.mep import NEB
    from ase.optimize import FIRE

    initial = _read(spec.initial, "-1", spec.name)[0]
    final = _read(spec.final, "-1", spec.name)[0]
    if len(initial) != len(final) or list(initial.numbers) != list(final.numbers):
        raise PoolError(f"pool source '{spec.name}': initial and final hold different atoms")
    stops = [initial, final]
    if spec.guess is not None:
        stops.insert(1, _read(spec.guess, "-1", spec.name)[0])
        if list(stops[1].numbers) != list(initial.numbers):
            raise PoolError(f"pool source '{spec.name}': the guess holds different atoms than initial")
    # interior images (the guess is one of them) shared out over the segments initial→guess→final,
    # each interpolated on its own
    per_segment = np.array_split(np.arange(spec.images + 2 - len(stops)), len(stops) - 1)
    images = [initial.copy()]
    for segment, end in zip(per_segment, stops[1:]):
        piece = [images[-1]] + [images[-1].copy() for _ in segment] + [end.copy()]
        NEB(piece, allow_shared_calculator=True).interpolate(method="idpp")
        images += piece[1:]
    calc = BatchedCalculator(backbone, images)
    for image in images:
        image.calc = calc
    neb = NEB(images, climb=spec.climb, allow_shared_calculator=True)
    optimizer = FIRE(neb, logfile=None)
    bar = tqdm(total=spec.steps, desc=f"NEB {spec.name}", unit="step", disable=not progress)
    optimizer.attach(lambda: bar.update(1))
    converged = optimizer.run(fmax=spec.fmax, steps=spec.steps)
    bar.close()
    if not converged:
        print(f"warning: NEB '{spec.name}' did not reach fmax {spec.fmax} eV/Å in {spec.steps} steps; "
              "its images are used as they are")
    return [Atoms(im.numbers, im.positions, cell=im.cell, pbc=im.pbc) for im in images]


def drop_close_contacts(frames: list[Atoms], forces, min_distance: float):
    """Drop frames with two atoms closer than min_distance (Å): a generator that ran away (or a
    corrupt file) would otherwise buy a high-fidelity label for a meaningless geometry."""
    keep = [i for i, atoms in enumerate(frames)
            if len(atoms) < 2 or atoms.get_all_distances(mic=bool(atoms.pbc.any()))[np.triu_indices(len(atoms), 1)].min() >= min_distance]
    return [frames[i] for i in keep], None if forces is None else [forces[i] for i in keep]


def generate(spec, backbone, seed: int, progress: bool = True) -> tuple[list[Atoms], list[np.ndarray] | None]:
    """The frames of one pool source and their low-fidelity forces (None: use the base model's)."""
    if spec.kind == "file":
        return from_file(spec)
    if spec.kind == "md":
        return molecular_dynamics(spec, backbone, seed, progress), None
    if spec.kind == "neb":
        return nudged_elastic_band(spec, backbone, progress), None
    raise PoolError(f"pool source '{spec.name}': unknown kind '{spec.kind}'")
