"""High-fidelity backends behind one protocol (see base.py)."""
from __future__ import annotations

from pathlib import Path

from .base import DONE, FAILED, PENDING, Label, Labeler, LabelError, LocalLabeler


def make_labeler(spec, workdir: str | Path) -> Labeler:
    """The labeler a campaign's `labeler:` section describes, keeping its jobs in `workdir`."""
    settings = spec.model_dump(exclude={"kind"})
    if spec.kind == "pyscf":
        from .pyscf import PySCFLabeler

        return PySCFLabeler(workdir, **settings)
    if spec.kind == "replay":
        from .replay import ReplayLabeler

        return ReplayLabeler(workdir, **settings)
    if spec.kind == "ase":
        from .ase_calculator import ASECalculatorLabeler

        return ASECalculatorLabeler(workdir, **settings)
    if spec.kind == "pyqmc":
        from .pyqmc import PyQMCLabeler

        return PyQMCLabeler(workdir, **settings)
    if spec.kind == "qmcpack":
        from .qmcpack import QMCPACKLabeler

        # job folders go to RUN/queue, beside RUN/labels, where a user looks for the batch queue
        run_dir = Path(workdir).parent
        return QMCPACKLabeler(run_dir / "queue", spec, campaign=run_dir.name)
    raise ValueError(f"labeler.kind: unknown backend '{spec.kind}'")


__all__ = ["DONE", "FAILED", "PENDING", "Label", "Labeler", "LabelError", "LocalLabeler", "make_labeler"]
