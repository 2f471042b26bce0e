"""The labeler protocol: submit → poll → collect.

A labeler turns configurations into high-fidelity energies. QMC labels may take days and come back
through a batch queue, so the loop never assumes a label is ready when it asks for it: it submits
each selected configuration under a stable key, polls, and collects what is done. A local backend
computes in `submit` and keeps the result in its work folder, so a killed run loses nothing that
finished.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from ase import Atoms

from ..files import write_text_atomic

PENDING, DONE, FAILED = "pending", "done", "failed"


class LabelError(RuntimeError):
    """A job ran but gave no usable label; the message says why."""


class WaitingForLabels(RuntimeError):
    """External jobs must finish before the loop can go on."""


@dataclass
class Label:
    """One high-fidelity energy of one configuration.

    energy and sigma are eV for the whole configuration (simulation cell); sigma is one standard
    error (0 for a deterministic method). provenance says how the number was made.
    """

    energy: float
    sigma: float
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        # every label passes here (computed, read back from a record, ingested), so no backend can
        # hand the fit a NaN: the job fails with this reason instead
        if not (math.isfinite(self.energy) and math.isfinite(self.sigma) and self.sigma >= 0):
            raise LabelError(f"not a usable label: energy {self.energy} eV, error bar {self.sigma} eV "
                             "(a finite energy and a finite error bar >= 0 are needed)")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Label":
        return cls(float(d["energy"]), float(d["sigma"]), dict(d.get("provenance", {})))


def set_aside(path: Path) -> Path:
    """Move a job's old record or folder to the first free <key>.attempt<N> beside it, so a retry
    starts clean while the old attempt stays for inspection; returns where it went."""
    attempt = 1
    while (old := path.with_name(f"{path.stem}.attempt{attempt}{path.suffix}")).exists():
        attempt += 1
    shutil.move(path, old)
    return old


@runtime_checkable
class Labeler(Protocol):
    name: str

    def submit(self, key: str, atoms: Atoms) -> None:
        """Start (or queue) the job for `atoms` under `key`; submitting a known key again is a no-op."""

    def poll(self, key: str) -> str:
        """PENDING, DONE or FAILED."""

    def collect(self, key: str) -> Label:
        """The label of a DONE job; raises LabelError for a FAILED one."""


class LocalLabeler:
    """Base for labelers that compute here, now: subclasses implement `compute(atoms) -> Label`.

    Each finished job is written atomically to `workdir/<key>.json` before it is reported, so a
    crash after it never computes the same configuration again.
    """

    name = "local"

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, workdir: str | os.PathLike, settings):
        """The labeler a campaign's `labeler` section describes (read by attribute): each of its fields
        but `kind` is a keyword of the constructor, so the settings' defaults live in the schema alone."""
        return cls(workdir, **{key: value for key, value in vars(settings).items() if key != "kind"})

    def compute(self, atoms: Atoms) -> Label:  # pragma: no cover - abstract
        raise NotImplementedError

    def _path(self, key: str) -> Path:
        return self.workdir / f"{key}.json"

    def submit(self, key: str, atoms: Atoms) -> None:
        if not self._path(key).exists():
            self.write_record(key, self.job_record(atoms))

    def job_record(self, atoms: Atoms) -> dict:
        """What a finished job leaves: its label (DONE), or the LabelError's reason (FAILED).
        Computed wherever the work runs (aloop.dispatch sends it to other machines)."""
        start, cpu = time.time(), time.process_time()
        try:
            label = self.compute(atoms)
            record = {"state": DONE, "label": label.to_json()}
            # what the job cost (aloop.cost): CPU time is that of every thread of this process
            record["label"]["provenance"].setdefault("wall_s", round(time.time() - start, 3))
            record["label"]["provenance"].setdefault("cpu_s", round(time.process_time() - cpu, 3))
        except LabelError as err:
            record = {"state": FAILED, "reason": str(err)}
        return record

    def write_record(self, key: str, record: dict) -> None:
        write_text_atomic(self._path(key), json.dumps(record, indent=1))

    def _record(self, key: str) -> dict | None:
        path = self._path(key)
        return json.loads(path.read_text()) if path.exists() else None

    def poll(self, key: str) -> str:
        record = self._record(key)
        return PENDING if record is None else record["state"]

    def retry(self, key: str) -> None:
        """Forget the job's result (kept as <key>.attempt<N>.json): the next submit computes it again."""
        if self._path(key).exists():
            set_aside(self._path(key))

    def collect(self, key: str) -> Label:
        record = self._record(key)
        if record is None:
            raise LabelError(f"job {key}: not finished")
        if record["state"] == FAILED:
            raise LabelError(f"job {key}: {record['reason']}")
        return Label.from_json(record["label"])
