"""What labels cost, in core-hours: measured from a finished label's provenance, predicted for a
candidate from its size.

Measured (`label_core_hours`), from what each labeler records:
- pyscf: wall time × the threads PySCF ran with (the cores the job held, busy or not);
- pyqmc: the process's CPU time (it runs single-threaded; CPU time is what it used);
- ase: wall time (one core);
- qmcpack: Σ BlockCPU over every block of every scalar.dat of the job (QMCPACK's seconds per block,
  timed on the first rank of each group), × the MPI ranks of a group × the OpenMP threads per rank,
  both read from QMCPACK's own log of the run (opt.out, dmc.out); the pw.x orbitals are not counted;
- replay, and labels made before aloop recorded times: unknown (None).

Predicted (`CostModel`): cost = c × size^p, the size being the configuration's atoms, electrons or 1
(`per`). c is fitted to the run's finished labels that have a cost; before there are any, it is the
campaign's `acquisition.cost_model.core_hours`, else unknown (every candidate costs the same).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .charge import state_of
from .labelers.scalar_dat import ScalarFileError, read_scalar

SECONDS_PER_HOUR = 3600.0
SIZES = ("configuration", "atom", "electron")

# How a labeler's cost grows with the configuration, when the campaign does not say: DMC as N³ in
# electrons, coupled cluster with its formal scaling (CCSD(T) N⁷), anything else per atom.
_PYSCF_EXPONENTS = {"ccsd(t)": 7.0, "ccsd": 6.0, "mp2": 5.0}


def default_scaling(labeler) -> tuple[str, float]:
    """(`per`, exponent) of the campaign's `labeler` section (read by attribute) by default."""
    if labeler.kind in ("qmcpack", "pyqmc"):
        return "electron", 3.0
    if labeler.kind == "pyscf":
        return "electron", _PYSCF_EXPONENTS.get(labeler.method, 4.0)
    if labeler.kind == "ase":
        return "atom", 1.0
    return "configuration", 0.0


def sizes(atoms_list, per: str, charge: int = 0) -> np.ndarray:
    """The size of each configuration that its cost grows with: 1, its atoms, or its electrons (all
    of them, Σ Z − charge; a configuration's `info['charge']` overrides the labeler's `charge`)."""
    if per == "configuration":
        return np.ones(len(atoms_list))
    if per == "atom":
        return np.array([len(a) for a in atoms_list], dtype=float)
    if per == "electron":
        return np.array([a.numbers.sum() - state_of(a, charge)[0] for a in atoms_list], dtype=float)
    raise ValueError(f"cost: size per {per!r}; expected one of: {', '.join(SIZES)}")


def label_core_hours(provenance: dict) -> float | None:
    """Core-hours one finished label took, from its provenance; None when it was not recorded."""
    labeler = provenance.get("labeler")
    seconds = None
    if labeler == "pyscf" and "wall_s" in provenance and "threads" in provenance:
        seconds = provenance["wall_s"] * provenance["threads"]
    elif labeler == "pyqmc":
        seconds = provenance.get("cpu_s")
    elif labeler == "ase":
        seconds = provenance.get("wall_s")
    elif labeler == "qmcpack":
        seconds = (provenance.get("cpu") or {}).get("core_s")
    return None if seconds is None else float(seconds) / SECONDS_PER_HOUR


def spent(provenances: list[dict]) -> tuple[float, int]:
    """(core-hours of the labels whose cost is known, number of labels whose cost is not)."""
    costs = [label_core_hours(p) for p in provenances]
    return float(sum(c for c in costs if c is not None)), sum(c is None for c in costs)


@dataclass
class CostModel:
    """Predicted core-hours of a label: `core_hours` × size^`exponent`; `core_hours` None: unknown."""

    per: str
    exponent: float
    core_hours: float | None
    charge: int = 0      # the labeler's net charge, for counting electrons

    @classmethod
    def fit(cls, settings, labeler, label_atoms: list, label_costs: list[float | None]) -> "CostModel":
        """The model of a campaign's `acquisition.cost_model` and `labeler` sections (read by
        attribute), c fitted to the labelled configurations whose cost is known (`label_costs` None
        where not): the geometric mean of cost / size^p, as the costs of one method spread by
        factors, not by core-hours."""
        per, exponent = default_scaling(labeler)
        model = cls(settings.per or per, settings.exponent if settings.exponent is not None else exponent,
                    settings.core_hours, int(getattr(labeler, "charge", 0)))
        known = [(a, c) for a, c in zip(label_atoms, label_costs) if c is not None and c > 0]
        size = model.sizes([a for a, _ in known])
        cost = np.array([c for _, c in known])
        if np.any(size > 0):   # a configuration without electrons has no cost to scale
            ok = size > 0
            model.core_hours = float(np.exp(np.mean(np.log(cost[ok]) - model.exponent * np.log(size[ok]))))
        return model

    def sizes(self, atoms_list) -> np.ndarray:
        return sizes(atoms_list, self.per, self.charge)

    def predict(self, size: np.ndarray) -> np.ndarray | None:
        """Core-hours of candidates of these sizes; None when no cost is known yet."""
        if self.core_hours is None:
            return None
        return self.core_hours * np.asarray(size, dtype=float) ** self.exponent


# --- QMCPACK: its own timings ---------------------------------------------------------------------
_RANKS_IN_GROUP = re.compile(r"Number of ranks in group\s*=\s*(\d+)")
_THREADS = re.compile(r"OMP 1st level threads\s*=\s*(\d+)")


def block_cpu(path: str | Path) -> tuple[float, int]:
    """(Σ BlockCPU in seconds, number of blocks) of one scalar.dat; ScalarFileError naming the file
    when it has no BlockCPU column."""
    columns = read_scalar(path)
    if "BlockCPU" not in columns:
        raise ScalarFileError(f"{path}: expected a BlockCPU column, got {', '.join(columns)}")
    return float(columns["BlockCPU"].sum()), len(columns["BlockCPU"])


def qmcpack_parallelism(log: str) -> tuple[int, int] | None:
    """(MPI ranks per group, OpenMP threads per rank) from QMCPACK's summary at the top of its log;
    None when the log does not say. A group runs one input (one twist); one input is one group."""
    ranks, threads = _RANKS_IN_GROUP.search(log), _THREADS.search(log)
    if ranks is None or threads is None:
        return None
    return int(ranks.group(1)), int(threads.group(1))


def _head(path: Path, size: int = 1 << 16) -> str:
    """The start of a log: QMCPACK's summary comes first, and a DMC log can be long."""
    with open(path, "rb") as f:
        return f.read(size).decode(errors="replace")


def qmcpack_core_seconds(folder: str | Path, runs: dict[str, str]) -> dict | None:
    """The core-seconds of a job's QMCPACK runs, each given as {log file: project}: the blocks of
    every `<project>.*scalar.dat` × ranks per group × threads. None when a run's log is missing or
    does not state its ranks and threads, or a file has no readable BlockCPU: a cost half counted is
    not that job's cost (the label itself stands: its energies were checked by dmc_label)."""
    folder, parts = Path(folder), {}
    for log, project in runs.items():
        files = sorted(folder.glob(f"{project}.*scalar.dat"))
        if not files:
            continue
        path = folder / log
        parallel = qmcpack_parallelism(_head(path)) if path.exists() else None
        if parallel is None:
            return None
        try:
            seconds, blocks = map(sum, zip(*(block_cpu(f) for f in files)))
        except ScalarFileError:   # an old QMCPACK without BlockCPU, a truncated optimisation file
            return None
        parts[project] = {"block_cpu_s": round(seconds, 3), "blocks": blocks, "ranks_per_group": parallel[0],
                          "threads_per_rank": parallel[1], "core_s": round(seconds * parallel[0] * parallel[1], 3)}
    if not parts:
        return None
    return {"runs": parts, "core_s": round(sum(p["core_s"] for p in parts.values()), 3)}
