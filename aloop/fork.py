"""Forking a run: a new run folder that starts as another run stood before one of its iterations.

Benchmarks start many runs (strategies × seeds) from one pool, and a what-if continues a run from
an earlier iteration with other settings. The fork gets its own store (`RunStore.fork`) and copies
of the committees of the iterations it keeps. The folders that depend only on the candidate, not on
the run (cache/: backbone features and force Jacobians; labels/: finished label records of a
labeler that computes), are shared by symbolic link, so every fork computes a candidate's features
once and labels a candidate once: forks of one run see the same label for the same candidate.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .store import RunStore

SHARED = ("cache", "labels")


def fork_run(source: str | Path, dest: str | Path, iteration: int, share: tuple[str, ...] = SHARED) -> RunStore:
    """Start the run folder `dest` as the run in `source` stood before `iteration` (0: its pool
    only). The shared folders of `share` are linked to the source's, the others are left out."""
    source, dest = Path(source), Path(dest)
    if not (source / "aloop.db").exists():
        raise ValueError(f"{source}: not a run directory (no aloop.db); give the run_dir of a campaign")
    store = RunStore(source).fork(dest, iteration)
    committees = dest / "committee"
    committees.mkdir(exist_ok=True)
    for it in range(iteration):
        saved = source / "committee" / f"iter_{it:03d}.npz"
        if saved.exists():
            shutil.copy2(saved, committees / saved.name)
    for name in share:
        (source / name).mkdir(exist_ok=True)
        # relative, so the folder holding both runs can move
        (dest / name).symlink_to(os.path.relpath(source / name, dest), target_is_directory=True)
    return store
