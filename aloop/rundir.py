"""The run folder's layout: where each part of a run lives, and the keys that name its jobs.

    RUN/aloop.db      candidates, labels, iteration records, metadata (store.py)
    RUN/cache/        backbone features and force Jacobians, recomputable
    RUN/committee/    the committee fitted in each iteration (iter_NNN.npz)
    RUN/paths/        each barrier observable's relaxed path, per iteration (NAME/iter_NNN.extxyz)
    RUN/labels/       one record per job of a labeler that computes here
    RUN/queue/        job folders of the QMCPACK batch queue
    RUN/report/       plots and summary (`aloop report`)
    RUN/export/       MACE model files (`aloop export`)
    RUN/parsl/        Parsl's logs, when the campaign dispatches through Parsl

Every module asks this one for a path, so the layout is written down once.
"""
from __future__ import annotations

from pathlib import Path

DB = "aloop.db"
KEY_PREFIX = "cand"


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    @classmethod
    def existing(cls, root: str | Path) -> "RunDir":
        """An existing run; ValueError when `root` holds no run (a typo must never create an empty one)."""
        run = cls(root)
        if not run.db.is_file():
            raise ValueError(f"{run.root}: not an aloop run directory (no {DB} in it); "
                             "give the run_dir of a campaign that has been run")
        return run

    @classmethod
    def create(cls, root: str | Path) -> "RunDir":
        """The folder of a run that may start now, made if missing."""
        run = cls(root)
        if run.root.exists() and not run.root.is_dir():
            raise ValueError(f"run_dir: {run.root} is a file, not a folder; give a folder for the run")
        run.root.mkdir(parents=True, exist_ok=True)
        return run

    @property
    def db(self) -> Path:
        return self.root / DB

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def committees(self) -> Path:
        return self.root / "committee"

    def committee(self, iteration: int) -> Path:
        return self.committees / f"iter_{iteration:03d}.npz"

    @property
    def paths(self) -> Path:
        return self.root / "paths"

    def path(self, observable: str, iteration: int | None) -> Path:
        """The relaxed path of `observable` for the committee of `iteration` (None: the base model)."""
        return self.paths / observable / ("base.extxyz" if iteration is None else f"iter_{iteration:03d}.extxyz")

    @property
    def labels(self) -> Path:
        return self.root / "labels"

    @property
    def queue(self) -> Path:
        return self.root / "queue"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def parsl(self) -> Path:
        return self.root / "parsl"


def label_key(cid: int) -> str:
    """The job key of a candidate: cand0000012."""
    return f"{KEY_PREFIX}{cid:07d}"


def candidate_id(key: str) -> int:
    digits = key.removeprefix(KEY_PREFIX)
    if not digits.isdigit():
        raise ValueError(f"{key!r} is not a job key (expected {KEY_PREFIX} and the candidate number)")
    return int(digits)
