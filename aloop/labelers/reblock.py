"""The error bar of a QMC average by reblocking (Flyvbjerg & Petersen, J. Chem. Phys. 91, 461 (1989)).

Successive QMC blocks are correlated, so the naive standard error of their mean is too small.
Averaging pairs of neighbours again and again (blocks of 1, 2, 4, ... samples) makes the blocks
ever less correlated, and the standard error of the block means grows towards the true error of
the mean and then levels off. The block size chosen is the smallest that satisfies
B³ ≥ 2 N (s_B / s_1)⁴ (Lee, Needs & Towler, Phys. Rev. E 83, 066706 (2011)), where s_B is the
standard error with blocks of B samples and N the number of samples; (s_B / s_1)² estimates the
autocorrelation time, so the rule asks for blocks much longer than it while keeping enough of them.

For positively correlated samples s_B only grows with B; an s_B that falls is the noise of a level
with few blocks. Such a fall once let a short DMC run (150 blocks, 9 at the level chosen) pass the
criterion with 15.6 meV where the level below gave 24.7: the label then weighed 2.5 times its worth
in the fit and pulled a barrier 40 meV up (docs/h3-exchange-dmc.md). So s_B is replaced by its
running maximum over the levels up to B, in the criterion and in the error returned.

Why two estimators: this one (weighted samples) serves the pyqmc labeler, whose DMC blocks carry
weights; QMCPACK's scalar.dat uses scalar_dat.block_statistics, qmca's own estimator, so a QMCPACK
label's error bar is the one its users get from qmca on the same file.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Reblocked:
    mean: float
    error: float
    block_size: int     # samples per block at the level chosen
    n_blocks: int       # blocks at that level
    converged: bool     # False: no level with at least `min_blocks` blocks met the criterion, and
                        # the error is that of the largest such level, likely an underestimate


def _level(x: np.ndarray, w: np.ndarray, size: int) -> tuple[float, int]:
    """Standard error of the weighted mean from blocks of `size` samples (remainder dropped)."""
    n = len(x) // size * size
    bw = w[:n].reshape(-1, size).sum(axis=1)
    bx = (x[:n] * w[:n]).reshape(-1, size).sum(axis=1) / bw
    mean = np.sum(bw * bx) / np.sum(bw)
    var = np.sum(bw * (bx - mean) ** 2) / np.sum(bw)
    return float(np.sqrt(var / (len(bx) - 1))), len(bx)


def reblock(values, weights=None, min_blocks: int = 8) -> Reblocked:
    """Weighted mean of `values` (one per sample, in order) and its reblocked standard error.

    `weights` (default all 1) are the samples' statistical weights, e.g. DMC block weights.
    ValueError for fewer than `min_blocks` samples, non-finite values or non-positive weights.
    """
    x = np.asarray(values, dtype=float)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float)
    if x.ndim != 1 or w.shape != x.shape:
        raise ValueError(f"expected one value and one weight per sample, got shapes {x.shape} and {w.shape}")
    if len(x) < min_blocks:
        raise ValueError(f"reblocking needs at least {min_blocks} samples, got {len(x)}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(w)) and np.all(w > 0)):
        raise ValueError("samples must be finite and weights finite and > 0")
    mean = float(np.sum(w * x) / np.sum(w))
    s1, _ = _level(x, w, 1)
    size, error = 1, 0.0
    while True:
        level, count = _level(x, w, size)
        error = max(error, level)
        if s1 == 0.0 or size**3 >= 2 * len(x) * (error / s1) ** 4:
            return Reblocked(mean, error, size, count, True)
        if len(x) // (2 * size) < min_blocks:
            return Reblocked(mean, error, size, count, False)
        size *= 2
