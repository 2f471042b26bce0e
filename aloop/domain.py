"""The base model's domain, as its training data marks it out, and the guard that keeps the pool in it.

A MACE fitted to some configurations says nothing reliable about two atoms closer than any pair of
the same elements it was trained on: its energy there is an extrapolation, often an unphysical
dip (a collapsed pair, an MD trajectory that runs away into it). A high-fidelity label of such a
frame teaches the readout a correction the backbone cannot represent, so the pool must not offer it.

From the training configurations (`model.training_data`) the guard takes, per element pair, the
shortest distance seen, and refuses a candidate with a pair closer than that minimum less
`pool.domain.margin`. `pool.domain.min_distances` sets a pair's floor outright (`{"S-S": 1.9}`).
`pool.min_distance` stays the floor of every pair, the only one where the training data never
brings a pair within `REACH` or where there is no training data: the domain can only raise it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols
from ase.neighborlist import neighbor_list

REACH = 6.0   # Å; a training minimum farther than this is no constraint worth a floor
# why the guard refuses a frame (the keys under which a pool source counts its dropped frames)
TOO_CLOSE = "atoms closer than pool.min_distance"
OUT_OF_DOMAIN = "outside the base model's domain"


def pair_name(z1: int, z2: int) -> str:
    """'Mo-S': the two element symbols in alphabetical order, so a pair has one name."""
    return "-".join(sorted((chemical_symbols[z1], chemical_symbols[z2])))


def parse_pair(text: str) -> str:
    """The canonical name of a pair written 'A-B'; ValueError saying what is expected otherwise."""
    parts = text.split("-")
    if len(parts) != 2 or not all(atomic_numbers.get(p, 0) > 0 for p in parts):
        raise ValueError(f"expected a pair of element symbols 'A-B' (e.g. 'S-S', 'Mo-S'), got {text!r}")
    return pair_name(atomic_numbers[parts[0]], atomic_numbers[parts[1]])


def _pairs(atoms: Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Z_i, Z_j, distance) of every pair closer than `cutoff`, periodic images included, each once."""
    if len(atoms) < 2 and not atoms.pbc.any():
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    i, j, d = neighbor_list("ijd", atoms, cutoff, self_interaction=False)
    once = i <= j
    return atoms.numbers[i[once]], atoms.numbers[j[once]], d[once]


def training_minima(frames: list[Atoms]) -> dict[str, float]:
    """The shortest distance of each element pair over the training configurations (Å)."""
    minima: dict[str, float] = {}
    for atoms in frames:
        zi, zj, d = _pairs(atoms, REACH)
        for a, b, r in zip(zi, zj, d):
            name = pair_name(int(a), int(b))
            minima[name] = min(minima.get(name, np.inf), float(r))
    return minima


@dataclass(frozen=True)
class Violation:
    reason: str      # TOO_CLOSE or OUT_OF_DOMAIN: the key a dropped frame is counted under
    pair: str
    distance: float
    floor: float

    def __str__(self) -> str:
        return f"{self.pair} at {self.distance:.3f} Å, floor {self.floor:.3f} Å"


class DomainGuard:
    """Per-pair distance floors (Å) and the floor of every other pair (`fallback`)."""

    def __init__(self, floors: dict[str, float], fallback: float, origin: dict[str, str] | None = None):
        self.floors, self.fallback = dict(floors), float(fallback)
        self.origin = origin or {}   # pair → where its floor comes from, for messages

    @classmethod
    def from_settings(cls, min_distance: float, domain, training: list[Atoms] | None) -> "DomainGuard":
        """The guard of a campaign: `domain` is its pool.domain section, `training` the frames of
        model.training_data (None without)."""
        floors, origin = {}, {}
        for name, minimum in (training_minima(training) if training else {}).items():
            floors[name], origin[name] = minimum - domain.margin, \
                f"training minimum {minimum:.3f} Å − margin {domain.margin} Å"
        for name, floor in domain.min_distances.items():
            floors[parse_pair(name)], origin[parse_pair(name)] = floor, "pool.domain.min_distances"
        # pool.min_distance stays the floor under every pair: the domain only raises it, so naming
        # the training data never lets in a frame that the campaign kept out before
        floors = {name: floor for name, floor in floors.items() if floor > min_distance}
        return cls(floors, min_distance, origin)

    def floor(self, name: str) -> float:
        return self.floors.get(name, self.fallback)

    def violation(self, atoms: Atoms) -> Violation | None:
        """The pair furthest below its floor, or None when every pair keeps its distance."""
        reach = max([self.fallback, *self.floors.values()])
        if reach <= 0:
            return None
        worst = None
        for a, b, r in zip(*_pairs(atoms, reach)):
            name = pair_name(int(a), int(b))
            floor = self.floor(name)
            if r < floor and (worst is None or floor - r > worst.floor - worst.distance):
                worst = Violation(OUT_OF_DOMAIN if name in self.floors else TOO_CLOSE, name, float(r), floor)
        return worst

    def describe(self) -> str:
        """The floors, one pair a clause, for messages and the run's meta."""
        parts = [f"{name} {floor:.3f} Å ({self.origin.get(name, 'given')})" for name, floor in sorted(self.floors.items())]
        return "; ".join(parts + [f"any other pair {self.fallback} Å (pool.min_distance)"])
