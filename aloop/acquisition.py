"""Batch selection as plain functions.

Every strategy has the signature `(std, descriptors, n, *, rng) -> (indices, scores)`: `std` is the
committee spread of each available candidate (eV), `descriptors` a [n_candidates, d] matrix used for
diversity (an array, or anything indexed by rows like `feature_cache.PoolRows`, which reads only the
rows asked for: the strategies touch a large pool's descriptors one block at a time), `indices`
point into those arrays. The caller passes only candidates that are not yet
selected or labelled, so nothing is ever chosen twice.
"""
from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans

from .arrays import blocks

KMEANS_SAMPLE = 20000   # the first batch's k-means sees at most this many candidates of a larger pool


def _check(std: np.ndarray, n: int) -> int:
    if n <= 0:
        raise ValueError(f"acquisition: batch size must be positive, got {n}")
    return min(n, len(std))


def top_n(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n largest scores, largest first (ties by lower index, so runs repeat)."""
    return np.argsort(-scores, kind="stable")[:n]


def random(std, descriptors, n, *, rng: np.random.Generator):
    n = _check(std, n)
    idx = rng.choice(len(std), size=n, replace=False)
    return idx, np.asarray(std)[idx]


def max_std(std, descriptors, n, *, rng: np.random.Generator):
    n = _check(std, n)
    idx = top_n(np.asarray(std), n)
    return idx, np.asarray(std)[idx]


def _standardise(descriptors, rows: np.ndarray) -> np.ndarray:
    """The descriptors of `rows`, standardised with the mean and spread of all of them (two passes,
    one block at a time; a pool that fits one block gets numpy's own mean and std)."""
    n = len(descriptors)
    total = sum(np.asarray(descriptors[s], dtype=float).sum(0) for s in blocks(n))
    mean = total / n
    scale = np.sqrt(sum(((np.asarray(descriptors[s], dtype=float) - mean) ** 2).sum(0) for s in blocks(n)) / n)
    return (np.asarray(descriptors[rows], dtype=float) - mean) / np.where(scale > 0, scale, 1.0)


def diverse(std, descriptors, n, *, rng: np.random.Generator, oversample: int = 5):
    """The most uncertain candidate of each of n k-means clusters drawn among the top oversample·n.

    Max-std alone fills a batch with near-copies of one uncertain region; clustering the uncertain
    shortlist in descriptor space spreads the batch over distinct regions.
    """
    n = _check(std, n)
    std = np.asarray(std)
    shortlist = top_n(std, min(len(std), oversample * n))
    if len(shortlist) <= n:
        return shortlist, std[shortlist]
    x = _standardise(descriptors, shortlist)
    labels = KMeans(n_clusters=n, n_init=4, random_state=int(rng.integers(2**31))).fit_predict(x)
    picks = [shortlist[labels == c][np.argmax(std[shortlist[labels == c]])] for c in range(n) if np.any(labels == c)]
    idx = np.array(picks)[np.argsort(-std[picks], kind="stable")]
    return idx, std[idx]


def representative(descriptors, n, *, rng: np.random.Generator):
    """Before any committee exists: the candidate nearest each of n k-means centroids (scores = 0).

    In a pool larger than KMEANS_SAMPLE the clusters and their nearest candidates are found among
    a uniform sample of that many.
    """
    n_pool = len(descriptors)
    sample = np.arange(n_pool) if n_pool <= KMEANS_SAMPLE else np.sort(rng.choice(n_pool, KMEANS_SAMPLE, replace=False))
    x = _standardise(descriptors, sample)
    n = _check(x[:, 0], n)
    km = KMeans(n_clusters=n, n_init=4, random_state=int(rng.integers(2**31))).fit(x)
    dist = km.transform(x)
    idx = []
    for c in range(n):
        for i in np.argsort(dist[:, c]):
            if i not in idx:
                idx.append(int(i))
                break
    return sample[idx], np.zeros(len(idx))


STRATEGIES = {"random": random, "max_std": max_std, "diverse": diverse}
