"""QMCPACK `*.scalar.dat` files: columns by header name, and block statistics as qmca computes them.

One row per block, columns named in the leading `#` line. The legacy and batched drivers order the
columns differently, so a column is always looked up by its name. Energies are Hartree per
simulation cell.

The error bar accounts for the autocorrelation of successive blocks the way qmca does: with ρ_k the
normalised autocovariance at lag k, κ = 1 + 2 Σ ρ_k summed up to (not including) the first ρ_k ≤ 0,
N_eff = N / κ and error = sqrt(var / N_eff), var the population variance of the N blocks kept
after an explicit equilibration. (pyqmc's weighted DMC blocks use reblock.py instead; see there why
both exist.)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


class ScalarFileError(ValueError):
    """The file is missing, truncated or malformed; the message names it."""


def read_scalar(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a scalar.dat file by header name. Raises ScalarFileError naming the file."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise ScalarFileError(f"{path}: cannot read ({err.strerror})") from err
    if not lines or not lines[0].startswith("#"):
        raise ScalarFileError(f"{path}: expected a '#' header line naming the columns, got {lines[:1] or 'an empty file'}")
    names = lines[0].lstrip("#").split()
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != len(names):
            raise ScalarFileError(f"{path}: line {number}: expected {len(names)} columns, got {len(fields)} (truncated?)")
        try:
            rows.append([float(v) for v in fields])
        except ValueError as err:
            raise ScalarFileError(f"{path}: line {number}: not a number ({err})") from err
    data = np.array(rows, dtype=float).reshape(-1, len(names))
    return {name: data[:, i] for i, name in enumerate(names)}


@dataclass(frozen=True)
class BlockStats:
    mean: float
    error: float
    kappa: float  # autocorrelation time in blocks
    n_blocks: int
    variance: float


def autocorrelation_time(x: np.ndarray) -> float:
    n = len(x)
    var = x.var()
    if var < 1e-300:
        return 1.0
    d = x - x.mean()
    kappa = 1.0
    for lag in range(1, n):
        rho = float(np.dot(d[: n - lag], d[lag:])) / ((n - lag) * var)
        if rho <= 0:
            break
        kappa += 2.0 * rho
    return kappa


def block_statistics(values: np.ndarray, equilibration: int, min_blocks: int = 2) -> BlockStats:
    """Mean and autocorrelation-corrected error of the blocks after `equilibration` blocks."""
    if equilibration < 0:
        raise ValueError(f"equilibration must be ≥ 0 blocks, got {equilibration}")
    x = np.asarray(values, dtype=float)[equilibration:]
    if len(x) < min_blocks:
        raise ValueError(f"{len(x)} blocks after equilibration ({equilibration}); at least {min_blocks} needed")
    if not np.all(np.isfinite(x)):
        raise ValueError("non-finite values among the blocks")
    kappa = autocorrelation_time(x)
    var = float(x.var())
    return BlockStats(float(x.mean()), float(np.sqrt(var * kappa / len(x))), float(kappa), len(x), var)
