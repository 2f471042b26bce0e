"""A barrier observable's own path: the CI-NEB of the committee mean, re-relaxed every iteration.

The base model's path (the pool source) is the wrong place to read a corrected barrier: the
high-fidelity saddle moves, and the energies of the corrected model along the old images are not
its barrier. So for an observable with `relax: true` each iteration relaxes the committee mean's
CI-NEB, end points included, starting from the path of the iteration before (the base model's own
relaxed path first). The mean's barrier on its path is the observable's value: it is what the
exported committee-mean model gives. Its spread is that of the members' barriers on the same
images; a member-by-member relaxation would cost K NEBs an iteration for a second-order change.

Paths are kept in RUN/paths/NAME/ (base.extxyz, iter_NNN.extxyz): a resumed run reads them back,
and a later iteration starts from them. The path's end points and saddle are offered to the pool
(`key_points`), so a selection strategy can label the configurations that decide the barrier.
"""
from __future__ import annotations

import numpy as np
from ase.io import read, write

from . import metrics
from .files import atomic_open
from .neb import RelaxedPath, relax_path


def _source(campaign, obs):
    return next(s for s in campaign.pool.sources if s.name == obs.path)


def band_settings(campaign, obs) -> dict:
    """The CI-NEB settings of the observable's path source (climb, fmax, steps): every model's band of
    this observable is relaxed alike, so their barriers compare."""
    spec = _source(campaign, obs)
    return {"climb": spec.climb, "fmax": spec.fmax, "steps": spec.steps}


def save(path, relaxed: RelaxedPath) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [im.copy() for im in relaxed.images]
    for image, energy in zip(images, relaxed.energies):
        image.info["path_energy"] = float(energy)
    images[0].info.update(converged=relaxed.converged, steps=relaxed.steps, seconds=round(relaxed.seconds, 2))
    with atomic_open(path, "w") as handle:
        write(handle, images, format="extxyz")


def load(path) -> RelaxedPath | None:
    if not path.exists():
        return None
    images = read(path, index=":", format="extxyz")
    first = images[0].info
    return RelaxedPath(images, np.array([im.info["path_energy"] for im in images]), bool(first["converged"]),
                       int(first["steps"]), float(first["seconds"]))


def images(run, obs, iteration: int | None) -> list:
    """The relaxed path of `iteration` (None: the base model's) where the run made one, else the pool
    source's images: where another model's CI-NEB of this observable starts."""
    made = load(run.layout.path(obs.name, iteration))
    return made.images if made is not None else run.store.atoms(run.store.source_ids(obs.path))


def _start(run, obs, iteration: int | None):
    """The images to start from: the latest relaxed path before `iteration` that stayed inside the
    base model's domain (a collapsed band would only relax back into its collapse), else the pool
    source's."""
    earlier = [] if iteration is None else [*range(iteration - 1, -1, -1), None]
    for it in earlier:
        path = run.layout.path(obs.name, it)
        if path.exists():
            frames = read(path, index=":", format="extxyz")
            if outside_domain(run, frames) is None:
                return frames
    return run.store.atoms(run.store.source_ids(obs.path))


def outside_domain(run, images) -> str | None:
    """Where a path first leaves the base model's domain (the pool's guard), or None if it stays in."""
    guard = run.guard()
    for i, atoms in enumerate(images):
        if (bad := guard.violation(atoms)) is not None:
            return f"image {i}: {bad}"
    return None


def relaxed(run, obs, iteration: int | None, surface: tuple) -> RelaxedPath:
    """The relaxed path of the committee mean of `iteration` (None: the base model), whose energy surface
    is `surface`, (backbone, θ) (CampaignRun.mean_surface), from the run folder when it was made before."""
    path = run.layout.path(obs.name, iteration)
    done = load(path)
    if done is not None:
        return done
    settings = band_settings(run.campaign, obs)
    who = "base model" if iteration is None else f"iteration {iteration}"
    backbone, theta = surface
    result = relax_path(_start(run, obs, iteration), backbone, theta=theta, progress=run.progress,
                        desc=f"CI-NEB {obs.name} ({who})", **settings)
    if not result.converged:
        print(f"warning: the relaxed path of '{obs.name}' ({who}) did not reach fmax {settings['fmax']} eV/Å in "
              f"{settings['steps']} steps; its barrier is read from the images as they are")
    save(path, result)
    return result


def observable(run, relaxed_path: RelaxedPath, committee) -> dict:
    """The observable's record: the mean model's barrier on its path, and the committee members' on
    the same images. `outside_domain` says where the path left the base model's domain (the pool's
    guard), when it did: a barrier over geometries the backbone never saw is no answer, and the stop
    rule does not count it."""
    members = metrics.barrier(committee.member_energies(run.frame_inputs(relaxed_path.images)))
    record = {**metrics.observable(members, centre=relaxed_path.barrier), "path": "relaxed",
              "saddle_image": relaxed_path.saddle, "neb_steps": relaxed_path.steps,
              "neb_converged": relaxed_path.converged, "neb_seconds": round(relaxed_path.seconds, 2)}
    if (left := outside_domain(run, relaxed_path.images)) is not None:
        record["outside_domain"] = left
    return record


KEY_POINT_ROLES = ("initial", "saddle", "final")   # what each of `key_points` is, in its order


def key_points(relaxed_path: RelaxedPath) -> list:
    """The configurations that decide the barrier: both end points and the saddle (KEY_POINT_ROLES)."""
    return [relaxed_path.images[i] for i in (0, relaxed_path.saddle, -1)]
