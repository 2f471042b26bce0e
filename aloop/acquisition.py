"""Batch selection as plain functions.

Every strategy has the signature `(std, descriptors, n, *, rng, cost=None, ...) -> (indices, scores)`:
`std` is the committee spread of each available candidate (eV), `descriptors` a [n_candidates, d]
matrix used for diversity (an array, or anything indexed by rows like `feature_cache.PoolRows`, which
reads only the rows asked for: the strategies touch a large pool's descriptors one block at a time),
`indices` point into those arrays, `scores` are the strategy's value of each pick (σ, or a variance
reduction), never divided by cost. `cost`, the predicted core-hours of each candidate (aloop.cost),
makes the choice cost-aware: the value ranked is the strategy's value per core-hour. Extra inputs
(`targeted`'s posterior) are keyword-only. The caller passes only candidates that are not yet
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


def per_cost(value: np.ndarray, cost: np.ndarray | None) -> np.ndarray:
    """The value each candidate buys per predicted core-hour; the value itself without costs."""
    return np.asarray(value, dtype=float) if cost is None else np.asarray(value, dtype=float) / np.asarray(cost)


def max_std(std, descriptors, n, *, rng: np.random.Generator, cost: np.ndarray | None = None):
    """The n largest σ (per core-hour when `cost` is given)."""
    n = _check(std, n)
    idx = top_n(per_cost(std, cost), n)
    return idx, np.asarray(std)[idx]


def _standardise(descriptors, rows: np.ndarray) -> np.ndarray:
    """The descriptors of `rows`, standardised with the mean and spread of all of them (two passes,
    one block at a time; a pool that fits one block gets numpy's own mean and std)."""
    n = len(descriptors)
    total = sum(np.asarray(descriptors[s], dtype=float).sum(0) for s in blocks(n))
    mean = total / n
    scale = np.sqrt(sum(((np.asarray(descriptors[s], dtype=float) - mean) ** 2).sum(0) for s in blocks(n)) / n)
    return (np.asarray(descriptors[rows], dtype=float) - mean) / np.where(scale > 0, scale, 1.0)


def diverse(std, descriptors, n, *, rng: np.random.Generator, oversample: int = 5,
            cost: np.ndarray | None = None):
    """The most uncertain candidate of each of n k-means clusters drawn among the top oversample·n.

    Max-std alone fills a batch with near-copies of one uncertain region; clustering the uncertain
    shortlist in descriptor space spreads the batch over distinct regions. With `cost`, σ per
    core-hour both makes the shortlist and picks each cluster's candidate.
    """
    n = _check(std, n)
    std = np.asarray(std)
    value = per_cost(std, cost)
    shortlist = top_n(value, min(len(std), oversample * n))
    if len(shortlist) <= n:
        return shortlist, std[shortlist]
    x = _standardise(descriptors, shortlist)
    labels = KMeans(n_clusters=n, n_init=4, random_state=int(rng.integers(2**31))).fit_predict(x)
    picks = [shortlist[labels == c][np.argmax(value[shortlist[labels == c]])] for c in range(n) if np.any(labels == c)]
    idx = np.array(picks)[np.argsort(-value[picks], kind="stable")]
    return idx, std[idx]


def targeted(std, descriptors, n, *, rng: np.random.Generator, sigma: np.ndarray, directions: np.ndarray,
             noise, rows, cost: np.ndarray | None = None, products: tuple | None = None):
    """Greedily, the candidates whose labels most reduce the posterior variance of the target
    observables (docs/method.md, "Targeted acquisition").

    With θ ~ N(θ̄, Σ) and energies linear in θ (E_x = a_x·θ + e_x), an observable's change is
    a_o·δθ, and labelling x with noise variance σ_x² lowers its variance by
    (a_oᵀΣa_x)² / (σ_x² + a_xᵀΣa_x) (a rank-1 update of Σ). `sigma` [P, P] is Σ, `directions`
    [T, P] the a_o of the targets (their reductions are summed), `noise` σ_x² in eV² (one number or
    one per candidate), `rows` the candidates' energy rows a_x [n_candidates, P] (an array, or
    `feature_cache.PoolRows(..., per_atom=False)`). After each pick Σ is conditioned on it, so the
    next pick is scored given the ones before: a second copy of a picked configuration is worth
    little, which keeps the batch diverse. The pool is read a block of rows at a time, once to
    score it and once more for each pick after the first; only [n_candidates] vectors stay in
    memory. `products`, when given, are `posterior_products(sigma, directions, rows)` already
    computed (left unmodified). `scores` are the reductions (eV², summed over the targets) when each
    was picked; `std`, `descriptors` and `rng` are unused (one signature for all).
    """
    n = _check(std, n)
    count = len(rows)
    S = np.array(sigma, dtype=float)
    noise = np.broadcast_to(np.asarray(noise, dtype=float), (count,))
    if products is None:
        products = posterior_products(S, directions, rows)
    c, v = (np.array(p, dtype=float) for p in products)   # copies: the greedy updates change them
    picked, scores = [], []
    for _ in range(n):
        gain = (c**2).sum(0) / (noise + v)
        value = per_cost(gain, cost)
        value[picked] = -np.inf
        x = int(np.argmax(value))
        picked.append(x)
        scores.append(float(gain[x]))
        if len(picked) == n:
            break
        g = S @ np.asarray(rows[[x]], dtype=float)[0]   # Σa_x
        d = noise[x] + v[x]
        k = np.empty(count)
        for s in blocks(count):
            k[s] = np.asarray(rows[s], dtype=float) @ g
        # Σ ← Σ − g gᵀ/d, applied to the tracked products; gᵀa_o is c[:, x]
        c -= np.outer(c[:, x], k) / d
        v -= k**2 / d
        S -= np.outer(g, g) / d
    return np.array(picked), np.array(scores)


def posterior_products(S: np.ndarray, directions, rows) -> tuple[np.ndarray, np.ndarray]:
    """a_oᵀΣa_x [T, n_candidates] and a_xᵀΣa_x [n_candidates], one block of rows at a time."""
    count = len(rows)
    D = np.atleast_2d(np.asarray(directions, dtype=float))
    c, v = np.empty((len(D), count)), np.empty(count)
    U = D @ S
    for s in blocks(count):
        A = np.asarray(rows[s], dtype=float)
        c[:, s] = U @ A.T
        v[s] = np.einsum("ip,ip->i", A @ S, A)
    return c, v


class ReadColumns:
    """Energy rows [n, P] widened by one column per configuration an observable reads (`columns`:
    candidate index → column): 1 in a candidate's own column, 0 elsewhere. Indexed as the rows are,
    one block at a time."""

    def __init__(self, rows, columns: dict[int, int]):
        self.rows, self.columns = rows, columns

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key) -> np.ndarray:
        base = np.asarray(self.rows[key], dtype=float)
        # a block's own indices, not the whole pool's arange cut down: this runs once per block and pick
        index = np.arange(*key.indices(len(self.rows))) if isinstance(key, slice) else np.asarray(key)
        extra = np.zeros((len(base), len(self.columns)))
        for candidate, column in self.columns.items():
            extra[index == candidate, column] = 1.0
        return np.hstack([base, extra])


def with_read_errors(sigma, directions, noise, rows, points, variance: float) -> dict:
    """`targeted`'s inputs with the model error of the configurations the targets read made a
    parameter of its own (docs/method.md, "Targeted acquisition"). The evidence's model error m is a
    misfit of the model at a configuration: a label of that very configuration measures it, and no
    change of θ predicts it. Each configuration that a target reads and the pool holds (`points`:
    per target, (sign, candidate index) pairs) gets a column δ with prior variance m² (`variance`),
    taken out of that candidate's noise; each such target gains a second direction, Σ sign·δ, its
    part the parameters do not carry. The first direction stays aθ, so the rest of a batch still
    goes where θ is uncertain once the read points are picked."""
    read = sorted({index for pairs in points for _, index in pairs})
    columns = {index: k for k, index in enumerate(read)}
    P, k = len(sigma), len(read)
    S = np.zeros((P + k, P + k))
    S[:P, :P], S[P:, P:] = sigma, variance * np.eye(k)
    D = [np.concatenate([d, np.zeros(k)]) for d in np.atleast_2d(directions)]
    for pairs in points:
        if pairs:
            d = np.zeros(P + k)
            for sign, index in pairs:
                d[P + columns[index]] += sign
            D.append(d)
    noise = np.array(np.broadcast_to(np.asarray(noise, dtype=float), (len(rows),)))
    noise[read] -= variance
    return {"sigma": S, "directions": np.array(D), "noise": noise, "rows": ReadColumns(rows, columns)}


def own_scores(strategy: str, std, *, sigma=None, directions=None, noise=None, rows=None,
               products: tuple | None = None) -> np.ndarray:
    """Each candidate's score on its own, in the units of the strategy's `scores`: σ, or for
    `targeted` the variance reduction its label alone would bring (no other pick conditioned on;
    `products` as for `targeted`). Re-ranking a queue compares waiting jobs with a fresh batch by it."""
    if strategy != "targeted":
        return np.asarray(std, dtype=float)
    c, v = products if products is not None else posterior_products(np.asarray(sigma, dtype=float), directions, rows)
    return (c**2).sum(0) / (np.asarray(noise, dtype=float) + v)


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


STRATEGIES = {"random": random, "max_std": max_std, "diverse": diverse, "targeted": targeted}
