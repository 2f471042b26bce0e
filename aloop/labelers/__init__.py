"""High-fidelity backends behind one protocol (see base.py)."""
from __future__ import annotations

from pathlib import Path

from ..rundir import RunDir
from .base import DONE, FAILED, PENDING, Label, Labeler, LabelError, LocalLabeler


def make_labeler(spec, run_dir: str | Path, campaign: str) -> Labeler:
    """The labeler a campaign's `labeler:` section describes, keeping its jobs in the run folder:
    RUN/labels for those that compute here, RUN/queue for the QMCPACK batch queue (whose scripts
    carry the campaign's name). The one place a labeler is built: `run`, the Parsl workers and
    `ingest` all come here, so they agree on folders and names."""
    run = RunDir(run_dir)
    if spec.kind == "qmcpack":
        from .qmcpack import QMCPACKLabeler

        return QMCPACKLabeler(run.queue, spec, campaign=campaign)
    if spec.kind == "pyscf":
        from .pyscf import PySCFLabeler

        return PySCFLabeler.from_settings(run.labels, spec)
    if spec.kind == "replay":
        from .replay import ReplayLabeler

        return ReplayLabeler.from_settings(run.labels, spec)
    if spec.kind == "ase":
        from .ase_calculator import ASECalculatorLabeler

        return ASECalculatorLabeler.from_settings(run.labels, spec)
    if spec.kind == "pyqmc":
        from .pyqmc import PyQMCLabeler

        return PyQMCLabeler.from_settings(run.labels, spec)
    raise ValueError(f"labeler.kind: unknown backend '{spec.kind}'")


__all__ = ["DONE", "FAILED", "PENDING", "Label", "Labeler", "LabelError", "LocalLabeler", "make_labeler"]
