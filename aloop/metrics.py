"""What is measured after each iteration, and the stop rules that read it.

- prospective error: the batch labelled in this iteration against the committee that chose it,
  predicted before it was trained on (the honest test of the committee's σ, taken together with
  each label's own error bar);
- held-out error on the campaign's labelled test set, if any;
- committee σ over the unlabelled pool (median, 95th percentile) against the labels' noise, and the
  scale on σ that the prospective errors so far call for (`sigma_scale`, see sigma_scale());
- observables (NEB barriers), committee mean ± spread.
"""
from __future__ import annotations

import numpy as np
from ase.io import read

from .backbone import Features, file_digest
from .feature_cache import stream_predict
from .labelers.replay import stored_energy
from .store import LABELLED, POOL


def _errors(err: np.ndarray, sigma: np.ndarray | None = None) -> dict | None:
    if len(err) == 0:
        return None
    out = {"n": int(len(err)), "rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err))),
           "max": float(np.max(np.abs(err)))}
    if sigma is not None and np.all(np.isfinite(sigma)):
        out["mean_sigma"] = float(np.mean(sigma))
        out["within_1sigma"] = float(np.mean(np.abs(err) <= sigma))
        out["within_2sigma"] = float(np.mean(np.abs(err) <= 2 * sigma))
    return out


def sigma_scale(err, sigma_committee, sigma_label) -> float:
    """The factor s on the committee's σ that makes prospective errors unit-variance:
    mean(err² / (s² σ_c² + σ_l²)) = 1, by bisection on log s, clipped to [0.1, 100]. A committee
    of fine-tunes of one backbone tends to agree too well; this is how much to widen it."""
    err, s_c, s_l = (np.asarray(x, dtype=float) for x in (err, sigma_committee, sigma_label))

    def excess(log_s):
        return np.mean(err**2 / (np.exp(2 * log_s) * s_c**2 + s_l**2 + 1e-300)) - 1.0

    lo, hi = np.log(0.1), np.log(100.0)
    if excess(lo) <= 0:
        return 0.1
    if excess(hi) >= 0:
        return 100.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) > 0 else (lo, mid)
    return float(np.exp(0.5 * (lo + hi)))


def prospective_errors(run, upto: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(error, committee σ, label σ) of every candidate labelled after being predicted, in
    iterations 1..upto."""
    rows = [r for it in range(1, upto + 1) for r in run.store.rows(iteration=it) if r.state == LABELLED]
    return (np.array([r.energy_hf - r.pred_energy for r in rows]), np.array([r.pred_sigma for r in rows]),
            np.array([r.sigma_hf for r in rows]))


MIN_CALIBRATION_ERRORS = 8


def barrier(energies: np.ndarray) -> np.ndarray:
    """Highest image minus the first image, along the last axis (eV)."""
    return energies.max(-1) - energies[..., 0]


def test_set_features(run, spec) -> tuple[Features, np.ndarray]:
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


def observables(run, thetas: np.ndarray) -> dict:
    out = {}
    for obs in run.c.evaluation.observables:
        images = run.features(run.store.source_ids(obs.path))
        values = barrier(images.energies(thetas))
        out[obs.name] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                         "members": values.tolist()}
    return out


def iteration_record(run, iteration: int, committee, seconds: dict) -> dict:
    c = run.c
    ids, energy, sigma = run.store.labels()
    noise = np.sqrt(sigma**2 + c.finetune.noise_floor**2)
    batch = [r for r in run.store.rows(iteration=iteration) if r.state == LABELLED]
    prospective = None
    if batch and np.isfinite(batch[0].pred_energy):
        err = np.array([r.energy_hf - r.pred_energy for r in batch])
        # a label is the truth plus its own noise, so the error it can show is the committee's σ and
        # the label's error bar together
        predictive = np.hypot([r.pred_sigma for r in batch], [r.sigma_hf for r in batch])
        prospective = _errors(err, predictive)
    test = None
    if c.evaluation.test_set is not None:
        feats, y = test_set_features(run, c.evaluation.test_set)
        mean, std = committee.predict(feats)
        test = _errors(mean - y, std)
        test["rmse_per_atom"] = float(np.sqrt(np.mean(((mean - y) / feats.n_atoms) ** 2)))
    pool_ids = run.store.ids(state=POOL)
    pool_sigma = None
    if pool_ids:
        _, std = stream_predict(committee, run.pool_rows(pool_ids))
        pool_sigma = {"median": float(np.median(std)), "p95": float(np.percentile(std, 95))}
    if iteration == 0:
        run.store.set_meta("base_observables", observables(run, run.backbone.theta0[None]))
    history = prospective_errors(run, iteration)
    scale = sigma_scale(*history) if len(history[0]) >= MIN_CALIBRATION_ERRORS else None
    return {
        "iteration": iteration,
        "n_labels": len(ids),
        "n_new": len(batch),
        "n_failed": run.store.count(state="failed"),
        "prospective": prospective,
        "test": test,
        "pool_sigma": pool_sigma,
        "sigma_scale": scale,
        "label_noise_median": float(np.median(noise)) if len(noise) else None,
        "observables": observables(run, committee.thetas_),
        "objective": committee.objective_.tolist(),
        "newton_steps": committee.newton_steps_.tolist(),
        "seeds": {"selection": [c.seed, iteration, 1], "committee": c.committee.seed},
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }


def stop_reason(c, records: list[dict]) -> str | None:
    """The first stop rule that fires on the records so far, as a sentence; None to go on."""
    last = records[-1]
    rules = c.stop
    if last["n_labels"] >= rules.max_labels:
        return f"label budget reached: {last['n_labels']} labels (stop.max_labels = {rules.max_labels})"
    if rules.max_iterations is not None and len(records) >= rules.max_iterations:
        return f"iteration limit reached: {len(records)} (stop.max_iterations)"
    if rules.uncertainty_ratio is not None and last["pool_sigma"] and last["label_noise_median"]:
        # σ as calibrated on the prospective errors so far, so an overconfident committee cannot stop early
        scale = max(last.get("sigma_scale") or 1.0, 1.0)
        p95, noise = scale * last["pool_sigma"]["p95"], last["label_noise_median"]
        if p95 < rules.uncertainty_ratio * noise:
            return (f"pool uncertainty converged: 95th-percentile σ {p95 * 1000:.1f} meV "
                    f"(calibration ×{scale:.2f}) < {rules.uncertainty_ratio} × label noise {noise * 1000:.1f} meV")
    if rules.observable is not None and len(records) >= rules.observable.window:
        name, tol = rules.observable.name, rules.observable.tolerance
        window = [r["observables"][name] for r in records[-rules.observable.window:]]
        means = [w["mean"] for w in window]
        # every iteration of the window, not only the last, must be within tolerance: one lucky
        # narrow committee after wide ones is no evidence of convergence
        change, spread = max(means) - min(means), max(w["std"] for w in window)
        if change < tol and spread < tol:
            return (f"observable '{name}' converged: changed {change * 1000:.1f} meV over the last "
                    f"{rules.observable.window} iterations, committee spread at most {spread * 1000:.1f} meV "
                    f"(< {tol * 1000:.1f} meV)")
    if not last["pool_sigma"]:
        return "pool exhausted: every candidate is labelled or failed"
    return None


def one_line(record: dict) -> str:
    parts = [f"iteration {record['iteration']}: {record['n_labels']} labels"]
    if record["prospective"]:
        p = record["prospective"]
        parts.append(f"batch error {p['rmse'] * 1000:.1f} meV (σ {p.get('mean_sigma', float('nan')) * 1000:.1f})")
    if record["test"]:
        parts.append(f"test RMSE {record['test']['rmse'] * 1000:.1f} meV")
    if record["pool_sigma"]:
        parts.append(f"pool σ95 {record['pool_sigma']['p95'] * 1000:.1f} meV")
    for name, o in record["observables"].items():
        parts.append(f"{name} {o['mean']:.3f} ± {o['std']:.3f} eV")
    if record.get("stop"):
        parts.append(f"STOP: {record['stop']}")
    return "; ".join(parts)
