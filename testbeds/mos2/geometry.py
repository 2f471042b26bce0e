"""Geometry and references of the MoS2 sulfur-vacancy testbed (campaigns/mos2-svac).

A 4x4 monolayer of 2H-MoS2 relaxed with CHGNet 0.3.0, one top-layer S vacancy (47 atoms) and a
nearest-neighbour di-vacancy (46 atoms). A hop moves one top-layer S atom into a neighbouring
vacant site (3.2 Å in plane). The di-vacancy hop moves the S atom next to both vacancies, so the
pair rotates about the vacancy that stays and the two end states are equivalent.

Used by scripts/make_mos2_*.py (training data, references) and benchmarks/data_efficiency.py.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import mx2
from ase.calculators.calculator import Calculator
from ase.filters import FrechetCellFilter
from ase.io import read
from ase.mep import NEB
from ase.optimize import FIRE

from aloop.neb import TANGENT

from .oracle import SyntheticHF

CAMPAIGN = Path(__file__).resolve().parents[2] / "campaigns" / "mos2-svac"
SIZE = (4, 4, 1)
VACUUM = 7.5  # Å each side: 18 Å between layers, beyond both models' cutoffs
NEB_IMAGES = 7  # moving images
# An oracle's reference bands: 11 moving images started from CHGNet's relaxed band, which resolve the
# prism oracle's narrow peak; a band whose neighbouring images end farther apart than MAX_GAP (Å, all
# coordinates) has torn apart, and its highest image is no saddle (docs/mos2-svac.md)
REFERENCE_IMAGES = 11
MAX_GAP = 1.0
warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")


def low_fidelity() -> SyntheticHF:
    """CHGNet 0.3.0 alone: the contact oracle with ΔE and noise switched off."""
    return SyntheticHF(variant="contact", amplitude=0.0, noise=0.0)


def campaign_oracle() -> tuple[str, dict]:
    """The import path and parameters of campaigns/mos2-svac's labeler: the oracle its data belongs to."""
    import yaml

    labeler = yaml.safe_load((CAMPAIGN / "campaign.yaml").read_text())["labeler"]
    return labeler["calculator"], dict(labeler.get("parameters") or {})


def high_fidelity(oracle: str, parameters: dict | None = None) -> Calculator:
    """The noise-free oracle: the ASE calculator `oracle` ('module:Class', any calculator) built with
    `parameters`, a `noise` parameter set to 0."""
    from aloop.labelers.ase_calculator import import_calculator

    factory = import_calculator(oracle)
    parameters = dict(parameters or {})
    if "noise" in (getattr(factory, "default_parameters", None) or {}):
        parameters["noise"] = 0.0
    return factory(**parameters)


def describe_oracle(calc: Calculator, oracle: str) -> dict:
    """What reference.json records of the oracle: its import path and the parameters it ran with."""
    settings = calc.settings() if hasattr(calc, "settings") else dict(calc.parameters)
    return {"calculator": oracle, **settings}


def relaxed_monolayer(fmax: float = 0.01) -> Atoms:
    """Pristine 4x4 monolayer, cell relaxed in plane and positions relaxed with CHGNet."""
    atoms = mx2("MoS2", kind="2H", a=3.18, thickness=3.13, size=SIZE, vacuum=VACUUM)
    from chgnet.model.dynamics import CHGNetCalculator

    from .oracle import chgnet_model

    atoms.calc = CHGNetCalculator(chgnet_model("0.3.0"), use_device="cpu")  # has the stress
    # in-plane lattice only: the vacuum along z is not a degree of freedom
    FIRE(FrechetCellFilter(atoms, mask=[1, 1, 0, 0, 0, 1]), logfile=None).run(fmax=fmax, steps=1000)
    atoms.calc = None
    return atoms


def top_sulfur(atoms: Atoms) -> np.ndarray:
    z = atoms.positions[:, 2]
    return np.flatnonzero((atoms.numbers == 16) & (z > np.median(z)))


def neighbours(atoms: Atoms, index: int, candidates: np.ndarray) -> list[int]:
    """Top-layer S sites one lattice constant from `index` (periodic images included)."""
    distances = atoms.get_distances(index, candidates, mic=True)
    nearest = np.min(distances[distances > 0.1])
    return [int(c) for c, d in zip(candidates, distances) if abs(d - nearest) < 0.1]


def hop(pristine: Atoms, vacancies: list[int], mover: int, target: int) -> tuple[Atoms, Atoms]:
    """(initial, final): vacancies at `vacancies` + `target`; then `mover` moved onto `target`."""
    removed = sorted(set(vacancies) | {target})
    keep = [i for i in range(len(pristine)) if i not in removed]
    initial = pristine[keep]
    final = initial.copy()
    j = keep.index(mover)
    final.positions[j] = pristine.positions[target]
    return initial, final


def sites(pristine: Atoms) -> dict:
    """Site indices in the pristine cell: the mono hop and the di-vacancy rotation."""
    top = top_sulfur(pristine)
    a = int(top[0])
    b = neighbours(pristine, a, top)[0]
    common = sorted(set(neighbours(pristine, a, top)) & set(neighbours(pristine, b, top)))
    return {"mono": {"vacancies": [], "mover": b, "target": a},
            "di": {"vacancies": [b], "mover": common[0], "target": a}}


def relax(atoms: Atoms, calc, fmax: float = 0.01) -> Atoms:
    atoms = atoms.copy()
    atoms.calc = calc
    FIRE(atoms, logfile=None).run(fmax=fmax, steps=2000)
    atoms.calc = None
    return atoms


def largest_gap(images: list[Atoms]) -> float:
    """The largest distance (Å, all coordinates, minimum image) between neighbouring images."""
    gaps = []
    for a, b in zip(images[:-1], images[1:]):
        step = b.positions - a.positions
        fractional = np.linalg.solve(a.cell.array.T, step.T).T
        fractional -= np.round(fractional) * a.pbc
        gaps.append(float(np.linalg.norm(fractional @ a.cell.array)))
    return max(gaps)


def hop_band(kind: str, calc, fmax: float, moving: int = REFERENCE_IMAGES, from_chgnet_path: bool = True) -> dict:
    """CI-NEB of hop `kind` ('mono' or 'di') on `calc`: its end points relaxed on `calc` first, the
    band started from CHGNet's relaxed band (resampled to `moving` images) or from the straight line.
    Besides `neb`'s results, `largest_gap_A` and `continuous`: converged with no two neighbouring
    images more than MAX_GAP apart (FIRE can also settle a band that has torn apart, whose highest
    image is no saddle)."""
    initial = relax(read(CAMPAIGN / f"{kind}_initial.xyz"), calc)
    final = relax(read(CAMPAIGN / f"{kind}_final.xyz"), calc)
    start = read(CAMPAIGN / f"{kind}_path_chgnet.extxyz", ":") if from_chgnet_path else None
    band = neb(initial, final, calc, fmax=fmax, start=start, moving=moving)
    gap = largest_gap(band["images"])
    return band | {"largest_gap_A": gap, "continuous": bool(band["converged"] and gap <= MAX_GAP)}


def resample(path: list[Atoms], moving: int) -> list[Atoms]:
    """`path` (end points included) as `moving` + 2 images evenly spaced along its length, each
    linearly interpolated between its two neighbours on `path`: a band of one size started from
    another's relaxed path."""
    positions = np.array([image.positions for image in path])
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(positions, axis=0), axis=(1, 2)))])
    out = []
    for s in np.linspace(0.0, arc[-1], moving + 2):
        k = min(int(np.searchsorted(arc, s, side="right")) - 1, len(path) - 2)
        t = (s - arc[k]) / (arc[k + 1] - arc[k])
        image = path[k].copy()
        image.calc = None
        image.positions = (1 - t) * positions[k] + t * positions[k + 1]
        out.append(image)
    return out


def neb(initial: Atoms, final: Atoms, calc, fmax: float = 0.03, steps: int = 1500,
        record=None, start: list[Atoms] | None = None, moving: int = NEB_IMAGES) -> dict:
    """Climbing-image NEB with `calc`: a calculator shared by the images, or a function of the images
    returning one (aloop.pool.BatchedCalculator evaluates a MACE on all images in one call).
    `record(images)` is called every 25 steps with copies of the moving images (training data from
    the band as it converges). `start`: a path whose moving images the band starts from (another
    surface's relaxed band, resampled to `moving` images), instead of the straight line between the
    end points."""
    images = [initial.copy() for _ in range(moving + 1)] + [final.copy()]
    if start is not None:
        guesses = start if len(start) == len(images) else resample(start, moving)
        for image, guess in zip(images[1:-1], guesses[1:-1]):
            image.positions = guess.positions
    if not isinstance(calc, Calculator):
        calc = calc(images)
    for image in images:
        image.calc = calc
    band = NEB(images, climb=True, method=TANGENT, allow_shared_calculator=True)
    if start is None:
        band.interpolate(mic=True)
    optimizer = FIRE(band, logfile=None)
    if record is not None:
        optimizer.attach(lambda: record([image.copy() for image in images[1:-1]]), interval=25)
    converged = optimizer.run(fmax=fmax, steps=steps)
    energies = np.array([image.get_potential_energy() for image in images])
    path = []
    for image, energy in zip(images, energies):
        plain = image.copy()
        plain.calc = None
        plain.info["energy"] = float(energy)
        path.append(plain)
    return {"barrier": float(energies.max() - energies[0]), "energies": (energies - energies[0]).tolist(),
            "converged": bool(converged), "images": path}
