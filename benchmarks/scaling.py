"""How the cost of one iteration grows with the labels and with the pool, on the MoS2 testbed's backbone.

    pip install -e ".[mos2]"   # the MoS2 testbed (CHGNet)
    python benchmarks/scaling.py [--sizes 1000 10000 100000] [--labels 37 75 150 300 500]

Everything runs through the real campaign code (campaigns/mos2-svac/campaign.yaml, its base model
base_chgnet.model, 47-atom cells) in a temporary run directory:

1. per candidate: backbone features (once per candidate in the pool) and force Jacobians (once per
   label), measured on thermally perturbed vacancy cells (those of speed.py);
2. against the labels: the committee fit with the campaign's settings (K = 8, force penalty, early
   stopping), on training sets of real feature rows;
3. against the pool size: a run store and feature cache of N candidates, then the pool-wide steps of
   an iteration as `aloop run` does them: choosing the first batch (k-means) and a `diverse` batch,
   the prior's feature moment, and the pool σ of the iteration record. The cache's rows are the
   real features of a few hundred cells, repeated with a small perturbation (what is timed does not
   depend on the values; computing 100k cells' features here would take about an hour, and step 1
   gives that cost per candidate).
Prints times, fitted exponents and memory: the peak of Python and numpy allocations during the first
batch and during the other pool steps (tracemalloc; the cache itself is memory-mapped and streamed,
and the first batch clusters a sample of at most 20k candidates), and the process's peak RSS.
"""
from __future__ import annotations

import mace  # noqa: F401  (mace must be imported before e3nn)

import argparse
import os
import platform
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from aloop.arrays import Features, feature_moment
from aloop.campaign import load_campaign
from aloop.committee import TrainingSet
from aloop.feature_cache import stream_predict
from aloop.loop import CampaignRun
from speed import mos2_cells, timed

CAMPAIGN = Path(__file__).resolve().parents[1] / "campaigns" / "mos2-svac" / "campaign.yaml"


def exponent(x, y) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def new_run(run_dir: Path) -> CampaignRun:
    c = load_campaign(CAMPAIGN)
    c.run_dir = run_dir
    c.stop.max_labels = 10**9
    c.acquisition.batch_size = 20
    c.finetune.readout = "linear"   # the cost of the pipeline around the fit, measured on linear
    return CampaignRun(c, progress=False)


def per_candidate(run: CampaignRun, frames) -> dict:
    run.backbone.features(frames[:4])   # warm-up
    feats, t_feat = timed(lambda: run.backbone.features(frames, batch_size=32))
    _, t_jac = timed(lambda: run.backbone.force_jacobians(frames[:8]))
    return {"features": feats, "feature_s": t_feat / len(frames), "jacobian_s": t_jac / 8}


def fit_times(run: CampaignRun, feats: Features, labels: list[int], rng) -> list[float]:
    P, n_atoms = feats.a.shape[1], int(feats.n_atoms[0])
    truth = run.backbone.theta0 + rng.normal(scale=0.02, size=P)
    moment = feature_moment(feats)
    out = []
    for n in labels:
        rows = rng.integers(len(feats.a), size=n)
        f = Features(feats.a[rows] * (1 + rng.normal(scale=1e-3, size=(n, P))), feats.e[rows], feats.n_atoms[rows])
        m = 3 * n_atoms
        data = TrainingSet(f, f.energies(truth) + rng.normal(scale=0.02, size=n), np.full(n, 0.02),
                           rng.normal(size=(n, m)), rng.normal(scale=0.05, size=(n, m, P)), rng.normal(size=(n, m)))
        committee = run.new_committee()
        _, seconds = timed(lambda: committee.fit(data, len(run.backbone.z_table), moment=moment))
        out.append(seconds)
    return out


def pool_steps(run_dir: Path, n: int, frames, feats: Features, rng) -> dict:
    run = new_run(run_dir)
    t0 = time.perf_counter()
    for lo in range(0, n, 10000):   # the store as `prepare_pool` fills it, one source per block
        chunk = [frames[i % len(frames)] for i in range(lo, min(lo + 10000, n))]
        run.store.add_candidates(chunk, f"md{lo // 10000}")
    insert = time.perf_counter() - t0
    ids = run.store.ids()
    for lo in range(0, n, 10000):
        rows = np.arange(lo, min(lo + 10000, n)) % len(feats.a)
        part = Features(feats.a[rows] * (1 + rng.normal(scale=1e-3, size=(len(rows), feats.a.shape[1]))),
                        feats.e[rows], feats.n_atoms[rows])
        run.feature_cache.write(ids[lo:lo + len(rows)], part)
    committee = run.new_committee()
    committee.use_members(run.backbone.theta0 + rng.normal(scale=0.01, size=(committee.size, len(run.backbone.theta0))))
    tracemalloc.start()
    _, first = timed(lambda: run.select(0, None))
    first_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    _, select = timed(lambda: run.select(1, committee))
    _, moment = timed(lambda: feature_moment(run.pool_rows(run.store.ids())))
    _, sigma = timed(lambda: stream_predict(committee, run.pool_rows(run.store.ids(state="pool"))))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"n": n, "insert_s": insert, "first_batch_s": first, "select_s": select, "moment_s": moment,
            "pool_sigma_s": sigma, "iteration_s": select + moment + sigma, "first_peak_MiB": first_peak / 2**20,
            "traced_peak_MiB": peak / 2**20, "feature_MiB": n * feats.a.shape[1] * 8 / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--labels", type=int, nargs="+", default=[37, 75, 150, 300, 500])
    parser.add_argument("--cells", type=int, default=256, help="distinct cells whose features fill the pool")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("ALOOP_TORCH_THREADS", "2")))
    rng = np.random.default_rng(0)
    frames = mos2_cells(args.cells, rng)
    with tempfile.TemporaryDirectory() as tmp:
        run = new_run(Path(tmp) / "costs")
        P = len(run.backbone.theta0)
        print(f"MoS2 base model, P = {P} readout parameters, {len(frames[0])} atoms, {run.backbone.device}, "
              f"float64, {torch.get_num_threads()} threads; {platform.platform()}, {os.cpu_count()} CPUs")
        cost = per_candidate(run, frames)
        print(f"per candidate: features {cost['feature_s'] * 1e3:.1f} ms (once, when it enters the pool); "
              f"force Jacobian {cost['jacobian_s']:.2f} s (once, when it is labelled)")

        fits = fit_times(run, cost["features"], args.labels, rng)
        print(f"\ncommittee fit, K = {run.campaign.committee.size}, each member solved exactly (Newton), campaign settings:")
        for n, s in zip(args.labels, fits):
            print(f"  {n:5d} labels  {s:7.2f} s")
        print(f"  exponent {exponent(args.labels, fits):.2f}")

        print("\npool-wide steps of an iteration (store query, streamed features, committee, batch of 20):")
        print("(peak: Python and numpy allocations of the first batch, and of the other steps together)")
        print(f"{'candidates':>10} {'insert':>8} {'1st batch':>9} {'select':>8} {'moment':>8} {'pool σ':>8} "
              f"{'per iter':>8} {'peak 1st':>9} {'peak iter':>9} {'all features':>12}")
        rows = []
        for n in args.sizes:
            r = pool_steps(Path(tmp) / f"pool{n}", n, frames, cost["features"], rng)
            rows.append(r)
            print(f"{n:10d} {r['insert_s']:7.1f}s {r['first_batch_s']:8.2f}s {r['select_s']:7.2f}s "
                  f"{r['moment_s']:7.2f}s {r['pool_sigma_s']:7.2f}s {r['iteration_s']:7.2f}s "
                  f"{r['first_peak_MiB']:6.1f}MiB {r['traced_peak_MiB']:6.1f}MiB {r['feature_MiB']:9.1f}MiB", flush=True)
        if len(rows) > 1:
            sizes = [r["n"] for r in rows]
            print(f"exponents: per-iteration pool steps {exponent(sizes, [r['iteration_s'] for r in rows]):.2f}, "
                  f"first batch {exponent(sizes, [r['first_batch_s'] for r in rows]):.2f}")
        biggest = rows[-1]
        print(f"\nan iteration with a pool of {biggest['n']} and 500 labels, batch of 20: "
              f"{biggest['iteration_s'] + fits[-1] + 20 * cost['jacobian_s']:.0f} s "
              f"(pool steps {biggest['iteration_s']:.1f} + fit {fits[-1]:.1f} + 20 Jacobians "
              f"{20 * cost['jacobian_s']:.1f}), plus the labels; filling that pool's features once: "
              f"{biggest['n'] * cost['feature_s'] / 60:.0f} min")
    print(f"peak resident memory of the process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
