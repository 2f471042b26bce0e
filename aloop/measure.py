"""The loop's side of the metrics: gather one iteration's arrays from the run, hand them to the pure
functions of `metrics`, and keep what is worth keeping (the test set's features in cache/, the base
model's observables in the store). `CampaignRun` calls `iteration_record`; the loop writes the record.
"""
from __future__ import annotations

import numpy as np
from ase.io import read

from . import cost, metrics, reaction_path
from .arrays import Features, ReadoutInputs
from .committee import Committee
from .feature_cache import stream_predict
from .files import file_digest
from .labelers.replay import stored_energy
from .store import FAILED, LABELLED, POOL


def test_set_features(run, spec) -> tuple[Features | ReadoutInputs, np.ndarray]:
    """Backbone features (with `readout: full`, and the MLP readout's inputs) and labels of the
    campaign's test set, computed once and kept in cache/test_features.npz (recomputed when the
    file's content changes)."""
    path = run.cache / "test_features.npz"
    digest = file_digest(spec.path)  # an edited test set must not be scored against its old labels
    if path.exists():
        with np.load(path) as f:
            if "digest" in f.files and str(f["digest"]) == digest and (run.full is None or "h" in f.files):
                feats = Features(f["a"], f["e"], f["n"])
                if run.full is None:
                    return feats, f["y"]
                return ReadoutInputs(feats, np.split(f["h"], np.cumsum(run.full.widths)[:-1], axis=1)), f["y"]
    frames = read(spec.path, index=":")
    energies = [stored_energy(atoms, spec.energy_key) for atoms in frames]
    missing = [i for i, e in enumerate(energies) if e is None]
    if missing:
        raise ValueError(f"{spec.path}: frames {missing[:5]} have no '{spec.energy_key}' (evaluation.test_set.energy_key)")
    y = np.array(energies, dtype=float)
    if run.full is None:
        feats = run.backbone.features(frames, progress=run.progress)
        np.savez(path, a=feats.a, e=feats.e, n=feats.n_atoms, y=y, digest=digest)
        return feats, y
    inputs = run.full.inputs(frames)
    feats = inputs.features
    np.savez(path, a=feats.a, e=feats.e, n=feats.n_atoms, y=y, digest=digest, h=np.hstack(inputs.h))
    return inputs, y


def observables(run, committee, iteration: int) -> dict[str, dict]:
    """Each observable's record for the committee of `iteration`: a barrier on the committee mean's
    own relaxed path (`relax: true`, see reaction_path) or along the pool source's frozen images."""
    base_observables(run)   # first: the committee's first path starts from the base model's
    out = {}
    # one surface for every relaxed observable: for kind: delta it is a model built from the committee
    surface = run.mean_surface(committee) if any(o.relax for o in run.campaign.evaluation.observables) else None
    for obs in run.campaign.evaluation.observables:
        if obs.relax:
            path = reaction_path.relaxed(run, obs, iteration, surface)
            out[obs.name] = reaction_path.observable(run, path, committee)
        else:
            frozen = metrics.frozen(obs.kind, committee.member_energies(run.inputs(run.store.source_ids(obs.path))))
            out[obs.name] = {**metrics.observable(frozen), "path": "frozen"}
    return out


def base_observables(run) -> dict[str, dict]:
    """The base model's value of each observable (its own relaxed path, or the frozen images), kept in
    the store's meta `base_observables`."""
    kept = run.store.get_meta("base_observables") or {}
    kind = {obs.name: "relaxed" if obs.relax else "frozen" for obs in run.campaign.evaluation.observables}
    if all(kept.get(name, {}).get("path") == k for name, k in kind.items()):
        return kept
    out = {}
    for obs in run.campaign.evaluation.observables:
        if obs.relax:
            value = reaction_path.relaxed(run, obs, None, (run.backbone, run.backbone.theta0)).barrier
        else:
            value = float(metrics.frozen(obs.kind, run.features(run.store.source_ids(obs.path)).energies(run.backbone.theta0)))
        out[obs.name] = {**metrics.observable(np.array([value])), "path": kind[obs.name]}
    run.store.set_meta("base_observables", out)
    return out


def observable_directions(run, committee, iteration: int) -> dict[str, tuple[np.ndarray, list[tuple]]]:
    """Each observable's (∂o/∂θ [P], the configurations it reads) at the mean of the committee of
    `iteration` (∂o/∂φ, linearised at the members' mean, for `readout: full`; `energy_rows`). For a
    barrier o = E(saddle) − E(first image), for a difference E(last) − E(first); the configurations
    are (+1, store id or None, atoms) and (−1, ...) for those two (the id where they are the pool's
    own images). On a relaxed path (the mean's own, kept by `observables`) the images are
    stationary, so moving them changes the barrier only at second order and this is its gradient; on
    the frozen pool images the saddle is the image of highest committee-mean energy (the maximum is
    piecewise linear in θ; this is its gradient where the committee stands)."""
    directions = {}
    for obs in run.campaign.evaluation.observables:
        relaxed = reaction_path.load(run.layout.path(obs.name, iteration)) if obs.relax else None
        if relaxed is not None:
            images, ids = relaxed.images, [None] * len(relaxed.images)
            inputs, saddle = run.frame_inputs(images), relaxed.saddle
        else:
            ids = run.store.source_ids(obs.path)
            images, inputs = None, run.inputs(ids)
            saddle = -1 if obs.kind == "difference" else int(np.argmax(committee.predict(inputs)[0]))
        rows = committee.energy_rows(inputs)
        reads = [(sign, ids[i], None if images is None else images[i]) for sign, i in ((1.0, saddle), (-1.0, 0))]
        directions[obs.name] = (rows[saddle] - rows[0], reads)
    return directions


def batch_errors(store, iteration: int, label_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """store.batch_errors with the label error bars widened by `label_scale` (metrics.label_noise)."""
    err, s_c, s_l = store.batch_errors(iteration)
    return err, s_c, s_l * label_scale


def prospective_history(store, upto: int, label_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                                  np.ndarray]:
    """(error, committee σ, label σ, iteration) of every label predicted before it was made,
    iterations 1..upto; label σ widened by `label_scale`."""
    batches = []
    for it in range(1, upto + 1):
        err, s_c, s_l = batch_errors(store, it, label_scale)
        batches.append((err, s_c, s_l, np.full(len(err), it)))
    if not batches:
        return np.array([]), np.array([]), np.array([]), np.array([])
    return tuple(np.concatenate(part) for part in zip(*batches))


def relevant_errors(store, upto: int, names) -> dict[str, float]:
    """Each observable's prospective errors of iterations 1..upto counted by their relevance to it
    (metrics.relevant_errors; a label's relevance is kept in its data when it is chosen)."""
    rows = [r for r in store.rows(state=LABELLED) if 1 <= r.get("iteration", 0) <= upto]
    return {name: metrics.relevant_errors([r.data.get("relevance", {}).get(name, np.nan) for r in rows])
            for name in names}


def saddle_errors(store, upto: int, name: str, label_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label − prediction, committee σ, label σ) of the labels of iterations 1..upto at the saddles
    of observable `name`'s own relaxed paths (path points of role "saddle"); label σ widened by
    `label_scale`."""
    rows = [r for r in store.rows(source=f"path:{name}", role="saddle", state=LABELLED)
            if 1 <= r.get("iteration", 0) <= upto and r.get("pred_energy") is not None]
    return (np.array([r.energy_hf - r.pred_energy for r in rows], dtype=float),
            np.array([r.pred_sigma for r in rows], dtype=float),
            np.array([r.sigma_hf for r in rows], dtype=float) * label_scale)


def leave_one_out(run, committee, subset: list[int] | None = None,
                  moment: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(error, committee σ, label σ) of every label under `committee` fitted without its
    configuration, repeats included (Committee.leave_one_out); None for the classes whose members
    are not quadratic in their parameters (`readout: full`, `kind: delta`), whose σ scale is fitted
    on the prospective errors.
    `subset`: those labels only (a replay of an earlier iteration's committee), with `moment` the
    prior's moment of that fit (default: the pool's now)."""
    if not isinstance(committee, Committee):
        return None
    ids, data = run.training_set(subset)
    first = {row.id: run.store.configuration(row) for row in run.store.rows(state=LABELLED)}
    # a configuration's repeats leave together: their features agree only to round-off
    moment = run.prior_moment() if moment is None else moment
    return (*committee.leave_one_out(data, moment, groups=[first[i] for i in ids]), data.sigma)


def iteration_record(run, iteration: int, committee, seconds: dict, observed: dict) -> dict:
    """`observed`: the observables' records (`observables`), measured before the path points joined the pool."""
    c = run.campaign
    noise = run.label_noise()
    _, _, label_sigma = run.labels()
    test = None
    if c.evaluation.test_set is not None:
        feats, y = test_set_features(run, c.evaluation.test_set)
        test = metrics.held_out_errors(*committee.predict(feats), y, feats.n_atoms)
    pool_ids = run.store.ids(state=POOL)
    pool_std = stream_predict(committee, run.pool_rows(pool_ids))[1] if pool_ids else None
    spent, unknown = cost.spent([row.data.get("provenance", {}) for row in run.store.rows(state=LABELLED)])
    return metrics.iteration_record(
        iteration, n_labels=len(label_sigma), n_failed=run.store.count(state=FAILED), label_sigma=label_sigma,
        core_hours=None if unknown else spent,
        noise_floor=c.finetune.noise_floor, batch=batch_errors(run.store, iteration, noise["scale"]),
        history=prospective_history(run.store, iteration, noise["scale"]), loo=leave_one_out(run, committee),
        test=test, pool_std=pool_std,
        observables=observed, objective=committee.objective_.tolist(),
        newton_steps=committee.newton_steps_.tolist() if hasattr(committee, "newton_steps_") else None,
        lbfgs_steps=committee.lbfgs_steps_.tolist() if hasattr(committee, "lbfgs_steps_") else None,
        prior_sigma=getattr(committee, "tau_", None), model_error=getattr(committee, "model_error_", None),
        tau_backoffs=getattr(committee, "tau_backoffs_", 0), relevant=relevant_errors(run.store, iteration, observed),
        label_noise=noise, misfit_before=metrics.misfit_raised([r for r in run.store.iterations() if r["iteration"] < iteration]),
        saddles={name: saddle_errors(run.store, iteration, name, noise["scale"]) for name in observed},
        seeds={"selection": [c.seed, iteration, 1], "committee": c.committee.seed}, seconds=seconds)
