"""Candidate configurations: read from files, or generated with the base model (Langevin MD, NEB).

Each source returns (frames, low-fidelity forces or None). Generated frames get their forces from the
base model later, through the backbone, so they need none here. The generators drive the backbone's
own float64 copy of the base model with batched calls.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.io import read
from tqdm.auto import tqdm

from .domain import OUT_OF_DOMAIN, TOO_CLOSE, DomainGuard, Violation
from .charge import charge_state
from .neb import interpolate, relax_band


class PoolError(ValueError):
    """A source cannot produce candidates; the message names the source and file."""


def read_frames(path: Path, index: str, where: str) -> list[Atoms]:
    """The frames of a file; PoolError starting with `where` (e.g. "pool source 'md'") if unreadable."""
    try:
        frames = read(path, index=index)
    except Exception as err:  # ASE raises many types for unreadable files
        raise PoolError(f"{where}: cannot read {path}: {err}") from err
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise PoolError(f"{where}: {path} holds no configurations (index '{index}')")
    return frames


def from_file(spec) -> tuple[list[Atoms], list[np.ndarray] | None]:
    frames = read_frames(spec.path, spec.index, f"pool source '{spec.name}'")
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
    starts = read_frames(spec.start, ":", f"pool source '{spec.name}'")
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
                frame.info.update(charge_state(start), temperature_K=temperature, step=step, start_frame=s)
                frames.append(frame)
        bar.update(1)
    bar.close()
    return frames


def nudged_elastic_band(spec, backbone, progress: bool = True) -> list[Atoms]:
    """Climbing-image NEB of the base model between fixed end points; every image, end points included."""
    where = f"pool source '{spec.name}'"
    initial = read_frames(spec.initial, "-1", where)[0]
    final = read_frames(spec.final, "-1", where)[0]
    if len(initial) != len(final) or list(initial.numbers) != list(final.numbers):
        raise PoolError(f"{where}: initial and final hold different atoms")
    guess = None
    if spec.guess is not None:
        guess = read_frames(spec.guess, "-1", where)[0]
        if list(guess.numbers) != list(initial.numbers):
            raise PoolError(f"{where}: the guess holds different atoms than initial")
    path = relax_band(interpolate(initial, final, spec.images, guess), backbone, climb=spec.climb,
                      fmax=spec.fmax, steps=spec.steps, progress=progress, desc=f"NEB {spec.name}")
    if not path.converged:
        print(f"warning: NEB '{spec.name}' did not reach fmax {spec.fmax} eV/Å in {spec.steps} steps; "
              "its images are used as they are")
    return path.images


DUPLICATE_TOLERANCE = 1e-4   # Å per coordinate, as the replay labeler matches frames
# why `screen` drops a frame, besides the guard's reasons (domain.TOO_CLOSE, domain.OUT_OF_DOMAIN)
NON_FINITE, DUPLICATE = "non-finite positions", "repeats a configuration already in the pool"
AFTER_EXIT = "later in an MD trajectory that left the domain"


class Geometries:
    """Configurations seen so far, to tell whether a new one repeats one of them: same atoms in the
    same order, same cell, same charge state (info charge and spin: one geometry in two charge
    states is two candidates), every coordinate within `tolerance` (Å). Within a bucket of equal atoms
    and cell the frames are kept sorted by the sum of their coordinates; two frames that agree within
    the tolerance differ there by at most 3N times it, so only that window is compared."""

    def __init__(self, tolerance: float = DUPLICATE_TOLERANCE):
        self.tolerance = tolerance
        self._buckets: dict[bytes, tuple[list[float], list[np.ndarray]]] = {}

    @staticmethod
    def _key(atoms: Atoms) -> bytes:
        state = repr(sorted(charge_state(atoms).items())).encode()
        return atoms.numbers.tobytes() + np.round(atoms.cell.array, 6).tobytes() + atoms.pbc.tobytes() + state

    def seen(self, atoms: Atoms) -> bool:
        sums, positions = self._buckets.get(self._key(atoms), ([], []))
        total, window = float(atoms.positions.sum()), 3 * len(atoms) * self.tolerance
        lo, hi = bisect.bisect_left(sums, total - window), bisect.bisect_right(sums, total + window)
        return any(np.abs(positions[i] - atoms.positions).max() <= self.tolerance for i in range(lo, hi))

    def add(self, atoms: Atoms) -> None:
        sums, positions = self._buckets.setdefault(self._key(atoms), ([], []))
        at = bisect.bisect(sums, float(atoms.positions.sum()))
        sums.insert(at, float(atoms.positions.sum()))
        positions.insert(at, atoms.positions.copy())


def same_geometry(a: Atoms, b: Atoms, tolerance: float) -> bool:
    """Whether `Geometries` would count b as a repeat of a (atoms, cell, charge state, coordinates)."""
    return Geometries._key(a) == Geometries._key(b) and np.abs(a.positions - b.positions).max() <= tolerance


@dataclass
class Screening:
    keep: list[int]                       # indices of the frames worth a label
    dropped: dict[str, list[int]]         # reason → indices of the frames dropped for it
    violations: dict[int, Violation]      # index → the pair that put the frame out of the domain


def trajectories(frames: list[Atoms]) -> list[tuple]:
    """Which MD trajectory each frame of `molecular_dynamics` belongs to: (start frame, temperature)."""
    return [(atoms.info["start_frame"], atoms.info["temperature_K"]) for atoms in frames]


def screen(frames: list[Atoms], guard: DomainGuard, seen: Geometries, drop_repeats: bool = True,
           trajectory: list | None = None) -> Screening:
    """The frames worth a label, and those dropped, by reason. A frame with non-finite positions (a
    corrupt file, a generator that blew up) or a pair of atoms below the guard's floor would buy a
    high-fidelity label for a geometry the base model knows nothing of; a repeat would buy one twice.
    `trajectory` (one key per frame, frames in time order) marks MD trajectories: once one has left
    the domain its later frames are dropped too, as whatever it does after is the model's
    extrapolation, not physics, even where it comes back. Kept frames are added to `seen`.
    `drop_repeats=False` keeps repeats (an NEB path needs every image for its observable)."""
    out = Screening([], {NON_FINITE: [], TOO_CLOSE: [], OUT_OF_DOMAIN: [], AFTER_EXIT: [], DUPLICATE: []}, {})
    left = set()
    for i, atoms in enumerate(frames):
        key = None if trajectory is None else trajectory[i]
        if key is not None and key in left:
            out.dropped[AFTER_EXIT].append(i)
            continue
        bad = None if np.isfinite(atoms.positions).all() else NON_FINITE
        if bad is None and (violation := guard.violation(atoms)) is not None:
            bad, out.violations[i] = violation.reason, violation
        if bad is not None:
            out.dropped[bad].append(i)
            if key is not None:
                left.add(key)
        elif drop_repeats and seen.seen(atoms):
            out.dropped[DUPLICATE].append(i)
        else:
            seen.add(atoms)
            out.keep.append(i)
    return out


def generate(spec, backbone, seed: int, progress: bool = True) -> tuple[list[Atoms], list[np.ndarray] | None]:
    """The frames of one pool source and their low-fidelity forces (None: use the base model's)."""
    if spec.kind == "file":
        return from_file(spec)
    if spec.kind == "md":
        return molecular_dynamics(spec, backbone, seed, progress), None
    if spec.kind == "neb":
        return nudged_elastic_band(spec, backbone, progress), None
    raise PoolError(f"pool source '{spec.name}': unknown kind '{spec.kind}'")
