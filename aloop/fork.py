"""Forking a run: a new run folder that starts as another run stood before one of its iterations.

Benchmarks start many runs (strategies × seeds) from one pool, and a what-if continues a run from
an earlier iteration with other settings. The fork gets its own store (`RunStore.fork`) and copies
of the committees of the iterations it keeps. The folders that depend only on the candidate, not on
the run (cache/: backbone features and force Jacobians; labels/: finished label records of a
labeler that computes), are shared by symbolic link, so every fork computes a candidate's features
once and labels a candidate once: forks of one run see the same label for the same candidate.
Those folders are keyed by candidate id, and a fork adds candidates of its own (the points of its
relaxed paths, repeats): each fork numbers them in a range no other fork of the source uses
(FORK_ID_STRIDE ids, the fork's number taken atomically in SOURCE/forks/), or a fork would read
another's features, force Jacobians and labels for a different configuration.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .rundir import RunDir
from .store import RunStore

SHARED = ("cache", "labels")
FORK_ID_STRIDE = 10_000   # candidates a fork may add (path points, repeats) before its range ends


def fork_number(source: Path) -> int:
    """1, 2, ...: the first number no fork of `source` has taken, taken (O_EXCL: two processes
    forking at once get two numbers)."""
    folder = source / "forks"
    folder.mkdir(exist_ok=True)
    k = 1
    while True:
        try:
            os.close(os.open(folder / str(k), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return k
        except FileExistsError:
            k += 1


def fork_run(source: str | Path, dest: str | Path, iteration: int, share: tuple[str, ...] = SHARED) -> RunStore:
    """Start the run folder `dest` as the run in `source` stood before `iteration` (0: its pool
    only). The shared folders of `share` are linked to the source's, the others are left out."""
    source, dest = RunDir.existing(source), RunDir(dest)
    if dest.db.exists():
        raise FileExistsError(f"{dest.db} exists; fork into a folder that holds no run")
    dest.committees.mkdir(parents=True, exist_ok=True)
    for it in range(iteration):
        saved = source.committee(it)
        if saved.exists():
            shutil.copy2(saved, dest.committee(it))
    # the observables' relaxed paths of the iterations kept: the next one starts from the last
    for saved in source.paths.glob("*/*.extxyz") if source.paths.is_dir() else []:
        if saved.stem == "base" or int(saved.stem.removeprefix("iter_")) < iteration:
            (dest.paths / saved.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(saved, dest.paths / saved.parent.name / saved.name)
    for name in share:
        shared, link = getattr(source, name), getattr(dest, name)
        shared.mkdir(exist_ok=True)
        if not link.is_symlink():   # a fork cut short before its store was written left it
            # relative, so the folder holding both runs can move
            link.symlink_to(os.path.relpath(shared, dest.root), target_is_directory=True)
    # the store last: a folder holds a fork once its store is there, whole
    origin = RunStore(source.root)
    return origin.fork(dest.root, iteration, origin.max_id() + 1 + fork_number(source.root) * FORK_ID_STRIDE)
