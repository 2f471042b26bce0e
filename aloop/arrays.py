"""The numpy-only data of the method: energy decompositions, force Jacobians, and block streaming.

No torch here (nor in anything this imports), so the report, the status text and the store's
readers load without the model stack; `backbone` computes these objects, everything else reads them.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

BLOCK = 16384   # rows per block: 16384 × P = 82 float64 is 11 MB


@dataclass
class Features:
    """Per-configuration energy decomposition E = a·θ + e (eV)."""

    a: np.ndarray  # [n, P]
    e: np.ndarray  # [n]
    n_atoms: np.ndarray  # [n]

    def energies(self, theta: np.ndarray) -> np.ndarray:
        """Energies for one θ [P] → [n], or a committee [K, P] → [K, n]."""
        return theta @ self.a.T + self.e


@dataclass
class ReadoutInputs:
    """What the energy of any φ needs, per configuration: the linear decomposition and the per-atom
    inputs h of each MLP readout (rows ptr[c]:ptr[c+1] belong to configuration c)."""

    features: Features
    h: list[np.ndarray]   # per MLP readout: [total atoms, d]

    @property
    def n_atoms(self) -> np.ndarray:
        return self.features.n_atoms

    def __len__(self) -> int:
        return len(self.features.e)


@dataclass
class ForceJacobian:
    """Forces of one configuration as an affine function of θ: F(θ) = f0 + B (θ − θ0)."""

    f0: np.ndarray  # [N, 3] forces of the model at θ0
    B: np.ndarray  # [N, 3, P]


def blocks(n: int) -> Iterator[slice]:
    """Consecutive slices of BLOCK rows covering range(n); one slice when n fits, so small pools are
    computed exactly as an in-memory array would be."""
    for lo in range(0, n, BLOCK):
        yield slice(lo, min(lo + BLOCK, n))


def feature_moment(rows) -> np.ndarray:
    """Second moment G = ⟨x xᵀ⟩ of the per-atom features x = a/n over `rows`: a Features, or a lazy
    [n, P] matrix of per-atom rows (feature_cache.PoolRows), streamed a block at a time."""
    if isinstance(rows, Features):
        x = rows.a / rows.n_atoms[:, None]
        return x.T @ x / len(x)
    G = np.zeros((rows.shape[1], rows.shape[1]))
    for s in blocks(len(rows)):
        x = rows[s]
        G += x.T @ x
    return G / len(rows)
