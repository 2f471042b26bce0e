"""From a finished QMCPACK job folder to one label: DMC energy ± error in eV per simulation cell.

For each DMC series (with its timestep and an explicit equilibration in blocks) and each twist, the
block statistics of LocalEnergy (scalar_dat.py); twists are averaged with equal weights; with two
or more series the energy is extrapolated linearly to zero timestep (weighted least squares, error
from the fit's covariance). A folder that cannot give a trustworthy number raises a JobProblem with
the state the user sees (failed / needs-more-blocks) and the reason, never a partial label.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase.units import Hartree

from .base import LabelError
from .scalar_dat import ScalarFileError, block_statistics, read_scalar

FAILED_STATE, NEEDS_MORE_BLOCKS = "failed", "needs-more-blocks"


class JobProblem(LabelError):
    def __init__(self, state: str, reason: str):
        super().__init__(f"{state}: {reason}")
        self.state, self.reason = state, reason


@dataclass(frozen=True)
class Series:
    index: int  # the NNN of sNNN
    timestep: float  # Hartree⁻¹
    equilibration: int  # blocks dropped at the start


def _scalar_files(folder: Path, prefix: str, series: int) -> list[Path]:
    """One file per twist: prefix.sNNN.scalar.dat, or prefix.gMMM.sNNN.scalar.dat for twists."""
    plain = folder / f"{prefix}.s{series:03d}.scalar.dat"
    twists = sorted(folder.glob(f"{prefix}.g[0-9][0-9][0-9].s{series:03d}.scalar.dat"))
    if twists:
        return twists
    return [plain] if plain.exists() else []


def series_energy(folder: Path, prefix: str, series: Series, min_blocks: int) -> tuple[float, float, int]:
    """Twist-averaged mean and error (Hartree) of one series, and the number of twists."""
    files = _scalar_files(folder, prefix, series.index)
    if not files:
        raise JobProblem(FAILED_STATE, f"{folder}: no {prefix}.s{series.index:03d}.scalar.dat (job not run, or wrong prefix)")
    means, errors = [], []
    for path in files:
        try:
            energy = read_scalar(path).get("LocalEnergy")
        except ScalarFileError as err:
            raise JobProblem(FAILED_STATE, str(err)) from err
        if energy is None:
            raise JobProblem(FAILED_STATE, f"{path}: no LocalEnergy column")
        kept = len(energy) - series.equilibration
        if kept < min_blocks:
            raise JobProblem(NEEDS_MORE_BLOCKS, f"{path}: {kept} blocks after equilibration ({series.equilibration}); "
                                                f"at least {min_blocks} needed")
        if not np.all(np.isfinite(energy[series.equilibration:])):
            raise JobProblem(FAILED_STATE, f"{path}: non-finite LocalEnergy after equilibration")
        stats = block_statistics(energy, series.equilibration, min_blocks)
        means.append(stats.mean)
        errors.append(stats.error)
    errors = np.array(errors)
    return float(np.mean(means)), float(np.sqrt(np.sum(errors**2)) / len(errors)), len(files)


def blocks_digest(folder: str | Path, prefix: str, series: list[Series]) -> str:
    """SHA-256 of every LocalEnergy block of the job's DMC series: two jobs of different
    configurations never give the same blocks, so equal digests mean outputs copied between jobs."""
    digest = hashlib.sha256()
    for s in series:
        for path in _scalar_files(Path(folder), prefix, s.index):
            digest.update(np.ascontiguousarray(read_scalar(path)["LocalEnergy"], dtype=float).tobytes())
    return digest.hexdigest()


def extrapolate(timesteps, energies, errors) -> tuple[float, float]:
    """Weighted linear fit E(τ) = E0 + bτ; E0 and its standard error."""
    tau, e, w = np.asarray(timesteps, float), np.asarray(energies, float), 1.0 / np.asarray(errors, float) ** 2
    X = np.stack([np.ones_like(tau), tau], axis=1)
    cov = np.linalg.inv(X.T @ (X * w[:, None]))
    coef = cov @ X.T @ (w * e)
    return float(coef[0]), float(np.sqrt(cov[0, 0]))


def dmc_label(folder: str | Path, prefix: str, series: list[Series], min_blocks: int = 20) -> tuple[float, float, dict]:
    """Energy and error in eV per simulation cell, and what went into them."""
    folder = Path(folder)
    if not series:
        raise ValueError("dmc_label: at least one DMC series is needed")
    results = [series_energy(folder, prefix, s, min_blocks) for s in series]
    twists = {n for _, _, n in results}
    if len(twists) != 1:
        raise JobProblem(FAILED_STATE, f"{folder}: series have different numbers of twists {sorted(twists)}")
    detail = {"series": [{"index": s.index, "timestep": s.timestep, "equilibration": s.equilibration,
                          "energy_hartree": m, "error_hartree": err} for s, (m, err, _) in zip(series, results)],
              "twists": twists.pop(), "units": "eV per simulation cell (Hartree × ase.units.Hartree)"}
    if len(series) == 1:
        energy, error = results[0][0], results[0][1]
        detail["extrapolated"] = False
    else:
        energy, error = extrapolate([s.timestep for s in series], [r[0] for r in results], [r[1] for r in results])
        detail["extrapolated"] = True
    return energy * Hartree, error * Hartree, detail
