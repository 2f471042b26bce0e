"""How the cost of one iteration's linear algebra grows with labels and with pool size.

    python benchmarks/scaling.py

Everything after the backbone passes is timed on arrays of the sizes a 47-atom MoS2 campaign has
(P = 82 trained parameters as in benchmarks/speed.py, 3N = 141 force components, K = 8): fitting the
committee with the force penalty active, against the number of labels, and predicting + selecting
(`diverse`) over the pool, against its size. Values are random (cost does not depend on them);
the backbone passes themselves cost one forward per new candidate and are timed in speed.py.
Prints times, fitted exponents and the peak resident memory.
"""
from __future__ import annotations

import resource
import time

import numpy as np
import torch

from aloop import acquisition
from aloop.backbone import Features
from aloop.committee import Committee, TrainingSet

P, N_ATOMS, K = 82, 47, 8


def training_set(n: int, rng: np.random.Generator) -> TrainingSet:
    a = rng.normal(size=(n, P))
    feats = Features(a, rng.normal(size=n), np.full(n, N_ATOMS))
    m = 3 * N_ATOMS
    return TrainingSet(feats, rng.normal(size=n), np.full(n, 0.02), rng.normal(size=(n, m)),
                       rng.normal(scale=0.05, size=(n, m, P)), rng.normal(size=(n, m)))  # f_lf far: penalty active


def exponent(x, y) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    theta0 = rng.normal(size=P)
    pool = Features(rng.normal(size=(20000, P)), np.zeros(20000), np.full(20000, N_ATOMS))
    labels, fit_s = [37, 75, 150, 300, 500], []
    for n in labels:
        committee = Committee(theta0, size=K, epochs=50, patience=1000, batch_size=32, force_weight=1.0, force_threshold=0.1)
        start = time.perf_counter()
        committee.fit(training_set(n, rng), 1, np.random.default_rng(1), pool=pool)
        fit_s.append(time.perf_counter() - start)
    print(f"fit (K = {K}, 50 epochs of Adam with the force penalty active, after the exact start):")
    for n, s in zip(labels, fit_s):
        print(f"  {n:5d} labels  {s:7.2f} s")
    print(f"  exponent {exponent(labels, fit_s):.2f}")

    sizes, select_s = [1000, 10000, 100000], []
    thetas = theta0 + rng.normal(scale=0.01, size=(K, P))
    acquisition.diverse(rng.random(100), rng.random((100, P)), 8, rng=np.random.default_rng(0))  # warm-up
    for n in sizes:
        feats = Features(rng.normal(size=(n, P)), np.zeros(n), np.full(n, N_ATOMS))
        start = time.perf_counter()
        energies = feats.energies(thetas)
        std = energies.std(0, ddof=1)
        acquisition.diverse(std, feats.a / N_ATOMS, 8, rng=np.random.default_rng(0))
        select_s.append(time.perf_counter() - start)
    print("predict K energies per candidate + diverse selection of 8:")
    for n, s in zip(sizes, select_s):
        print(f"  {n:7d} candidates  {s:7.3f} s")
    print(f"  exponent {exponent(sizes, select_s):.2f}")
    print(f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB "
          f"(a 100k-candidate feature matrix is {100000 * P * 8 / 2**20:.0f} MiB in float64)")


if __name__ == "__main__":
    main()
