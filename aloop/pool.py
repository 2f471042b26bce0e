"""Candidate configurations: read from files, or generated with the base model (Langevin MD, NEB).

Each source returns (frames, low-fidelity forces or None). Generated frames get their forces from the
base model later, through the backbone, so they need none here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms, units
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


def base_calculator(model_path: Path, device: str):
    from mace.calculators import MACECalculator

    return MACECalculator(model_paths=str(model_path), device=device, default_dtype="float64")


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


def molecular_dynamics(spec, calc, seed: int, progress: bool = True) -> list[Atoms]:
    """Langevin MD from every start frame at every temperature; every `interval`-th step is kept."""
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    starts = _read(spec.start, ":", spec.name)
    frames = []
    bar = tqdm(total=len(starts) * len(spec.temperatures) * spec.steps, desc=f"MD {spec.name}", unit="step",
               disable=not progress)
    for s, start in enumerate(starts):
        for t, temperature in enumerate(spec.temperatures):
            rng = np.random.default_rng([seed, s, t])
            atoms = start.copy()
            atoms.calc = calc
            MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
            dyn = Langevin(atoms, timestep=spec.timestep * units.fs, temperature_K=temperature,
                           friction=spec.friction / units.fs, rng=rng)
            for step in range(spec.steps // spec.interval):
                dyn.run(spec.interval)
                frame = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
                frame.info.update(temperature_K=temperature, step=(step + 1) * spec.interval)
                frames.append(frame)
                bar.update(spec.interval)
    bar.close()
    return frames


def nudged_elastic_band(spec, calc, progress: bool = True) -> list[Atoms]:
    """Climbing-image NEB between fixed end points; returns every image, end points included."""
    from ase.mep import NEB
    from ase.optimize import FIRE

    initial = _read(spec.initial, "-1", spec.name)[0]
    final = _read(spec.final, "-1", spec.name)[0]
    if len(initial) != len(final) or list(initial.numbers) != list(final.numbers):
        raise PoolError(f"pool source '{spec.name}': initial and final hold different atoms")
    images = [initial.copy() for _ in range(spec.images + 1)] + [final.copy()]
    for image in images:
        image.calc = calc
    neb = NEB(images, climb=spec.climb, allow_shared_calculator=True)
    neb.interpolate(method="idpp")
    optimizer = FIRE(neb, logfile=None)
    bar = tqdm(total=spec.steps, desc=f"NEB {spec.name}", unit="step", disable=not progress)
    optimizer.attach(lambda: bar.update(1))
    converged = optimizer.run(fmax=spec.fmax, steps=spec.steps)
    bar.close()
    if not converged:
        print(f"warning: NEB '{spec.name}' did not reach fmax {spec.fmax} eV/Å in {spec.steps} steps; "
              "its images are used as they are")
    return [Atoms(im.numbers, im.positions, cell=im.cell, pbc=im.pbc) for im in images]


def generate(spec, model_path: Path, device: str, seed: int, progress: bool = True) -> tuple[list[Atoms], list[np.ndarray] | None]:
    if spec.kind == "file":
        return from_file(spec)
    calc = base_calculator(model_path, device)
    if spec.kind == "md":
        return molecular_dynamics(spec, calc, seed, progress), None
    if spec.kind == "neb":
        return nudged_elastic_band(spec, calc, progress), None
    raise PoolError(f"pool source '{spec.name}': unknown kind '{spec.kind}'")
