"""The loop's side of the metrics: gather one iteration's arrays from the run, hand them to the pure
functions of `metrics`, and keep what is worth keeping (the test set's features in cache/, the base
model's observables in the store). `CampaignRun` calls `iteration_record`; the loop writes the record.
"""
from __future__ import annotations

import numpy as np
from ase.io import read

from . import metrics
from .arrays import Features
from .feature_cache import stream_predict
from .files import file_digest
from .labelers.replay import stored_energy
from .store import FAILED, POOL


def test_set_features(run, spec) -> tuple[Features, np.ndarray]:
    """Backbone features and labels of the campaign's test set, computed once and kept in
    cache/test_features.npz (recomputed when the file's content changes)."""
    path = run.cache / "test_features.npz"
    digest = file_digest(spec.path)  # an edited test set must not be scored against its old labels
    if path.exists():
        with np.load(path) as f:
            if "digest" in f.files and str(f["digest"]) == digest:
                return Features(f["a"], f["e"], f["n"]), f["y"]
    frames = read(spec.path, index=":")
    energies = [stored_energy(atoms, spec.energy_key) for atoms in frames]
    missing = [i for i, e in enumerate(energies) if e is None]
    if missing:
        raise ValueError(f"{spec.path}: frames {missing[:5]} have no '{spec.energy_key}' (evaluation.test_set.energy_key)")
    y = np.array(energies, dtype=float)
    feats = run.backbone.features(frames, progress=run.progress)
    np.savez(path, a=feats.a, e=feats.e, n=feats.n_atoms, y=y, digest=digest)
    return feats, y


def observable_values(run, thetas: np.ndarray) -> dict[str, np.ndarray]:
    """Each observable (a barrier along a pool source's images) for every θ of `thetas` [K, P]."""
    return {obs.name: metrics.barrier(run.features(run.store.source_ids(obs.path)).energies(thetas))
            for obs in run.campaign.evaluation.observables}


def prospective_history(store, upto: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(error, committee σ, label σ, iteration) of every label predicted before it was made,
    iterations 1..upto."""
    batches = []
    for it in range(1, upto + 1):
        err, s_c, s_l = store.batch_errors(it)
        batches.append((err, s_c, s_l, np.full(len(err), it)))
    if not batches:
        return np.array([]), np.array([]), np.array([]), np.array([])
    return tuple(np.concatenate(part) for part in zip(*batches))


def iteration_record(run, iteration: int, committee, seconds: dict) -> dict:
    c = run.campaign
    _, _, label_sigma = run.store.labels()
    test = None
    if c.evaluation.test_set is not None:
        feats, y = test_set_features(run, c.evaluation.test_set)
        test = metrics.held_out_errors(*committee.predict(feats), y, feats.n_atoms)
    pool_ids = run.store.ids(state=POOL)
    pool_std = stream_predict(committee, run.pool_rows(pool_ids))[1] if pool_ids else None
    if iteration == 0:
        base = observable_values(run, run.backbone.theta0[None])
        run.store.set_meta("base_observables", {name: metrics.observable(v) for name, v in base.items()})
    return metrics.iteration_record(
        iteration, n_labels=len(label_sigma), n_failed=run.store.count(state=FAILED), label_sigma=label_sigma,
        noise_floor=c.finetune.noise_floor, batch=run.store.batch_errors(iteration),
        history=prospective_history(run.store, iteration), test=test, pool_std=pool_std,
        observables=observable_values(run, committee.thetas_), objective=committee.objective_.tolist(),
        newton_steps=committee.newton_steps_.tolist(),
        seeds={"selection": [c.seed, iteration, 1], "committee": c.committee.seed}, seconds=seconds)
