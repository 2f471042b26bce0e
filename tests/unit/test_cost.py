"""Label costs in core-hours: measured from provenance (QMCPACK from its real outputs in
../shared/fixtures), predicted from a configuration's size, shown by `aloop status` and the plots."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from ase import Atoms
from matplotlib.figure import Figure

from aloop import cost
from aloop.campaign import CostModelSettings
from aloop.labelers.scalar_dat import ScalarFileError
from aloop.plots import core_hours_axis
from aloop.report import status_text
from aloop.store import RunStore

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "qmcpack"
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason="../shared/fixtures/qmcpack not present")

# the summary QMCPACK prints at the top of its log (QMCMain), as a run with 4 twists on 32 ranks would
QMCPACK_LOG = """
  Total number of MPI ranks = 32
  Number of MPI groups      = 4
  MPI group ID              = 0
  Number of ranks in group  = 8
  MPI ranks per node        = 32
  OMP 1st level threads     = 2
  OMP nested threading disabled or only 1 thread on the 2nd level
"""


def block_cpu_column(path: Path) -> np.ndarray:
    """The BlockCPU column read independently of aloop: by its position in the header."""
    header = path.read_text().splitlines()[0].lstrip("#").split()
    return np.loadtxt(path, comments="#")[:, header.index("BlockCPU")]


@needs_fixtures
@pytest.mark.parametrize("name", ["dmc_batched.s002.scalar.dat", "dmc_legacy.s002.scalar.dat",
                                  "dmc_batched.s000.scalar.dat"])
def test_block_cpu_of_real_qmcpack_output(name):
    column = block_cpu_column(FIXTURES / name)
    seconds, blocks = cost.block_cpu(FIXTURES / name)
    assert blocks == len(column) and blocks in (100, 200)
    assert seconds == pytest.approx(column.mean() * blocks, rel=1e-12)
    assert 0.1 < column.mean() < 10   # seconds per block of a 1024-walker diamond run


@needs_fixtures
def test_qmcpack_job_cost_from_its_outputs_and_log(tmp_path):
    for series in (0, 1, 2):   # the job's DMC project: VMC, equilibration, main DMC
        (tmp_path / f"dmc.s00{series}.scalar.dat").symlink_to(FIXTURES / f"dmc_batched.s00{series}.scalar.dat")
    assert cost.qmcpack_core_seconds(tmp_path, {"dmc.out": "dmc"}) is None   # no log: ranks unknown
    (tmp_path / "dmc.out").write_text("QMCPACK output\n" + QMCPACK_LOG)
    out = cost.qmcpack_core_seconds(tmp_path, {"opt.out": "opt", "dmc.out": "dmc"})
    block_s = sum(block_cpu_column(FIXTURES / f"dmc_batched.s00{s}.scalar.dat").sum() for s in (0, 1, 2))
    assert out["runs"]["dmc"]["blocks"] == 100 + 20 + 200
    assert out["runs"]["dmc"]["ranks_per_group"] == 8 and out["runs"]["dmc"]["threads_per_rank"] == 2
    assert out["core_s"] == pytest.approx(block_s * 8 * 2, abs=1e-3) and "opt" not in out["runs"]
    provenance = {"labeler": "qmcpack", "cpu": out}
    assert cost.label_core_hours(provenance) == pytest.approx(block_s * 16 / 3600, rel=1e-6)


def test_a_scalar_file_without_block_cpu_is_named(tmp_path):
    path = tmp_path / "dmc.s002.scalar.dat"
    path.write_text("# index LocalEnergy\n0 -10.5\n1 -10.4\n")
    with pytest.raises(ScalarFileError, match=r"dmc.s002.scalar.dat: expected a BlockCPU column, got index, LocalEnergy"):
        cost.block_cpu(path)
    (tmp_path / "dmc.out").write_text(QMCPACK_LOG)
    assert cost.qmcpack_core_seconds(tmp_path, {"dmc.out": "dmc"}) is None


@pytest.mark.parametrize("provenance, hours", [
    ({"labeler": "pyscf", "wall_s": 1800.0, "threads": 4, "cpu_s": 100.0}, 2.0),
    ({"labeler": "pyscf", "wall_s": 1800.0}, None),          # threads not recorded: unknown
    ({"labeler": "pyqmc", "wall_s": 9000.0, "cpu_s": 7200.0}, 2.0),
    ({"labeler": "ase", "wall_s": 360.0, "cpu_s": 700.0}, 0.1),
    ({"labeler": "qmcpack", "cpu": None}, None),
    ({"labeler": "replay", "wall_s": 1.0}, None),
])
def test_label_core_hours_per_labeler(provenance, hours):
    assert cost.label_core_hours(provenance) == (None if hours is None else pytest.approx(hours))


def h_chain(n: int, charge: int = 0) -> Atoms:
    atoms = Atoms(f"H{n}", positions=[[0, 0, 0.8 * i] for i in range(n)])
    if charge:
        atoms.info["charge"] = charge
    return atoms


def test_cost_model_fits_the_prefactor_and_falls_back_to_the_campaign():
    dmc = SimpleNamespace(kind="pyqmc", charge=0)
    assert cost.default_scaling(dmc) == ("electron", 3.0)
    assert cost.default_scaling(SimpleNamespace(kind="pyscf", method="ccsd(t)")) == ("electron", 7.0)
    none_yet = cost.CostModel.fit(CostModelSettings(), dmc, [], [])
    assert none_yet.core_hours is None and none_yet.predict([3.0]) is None
    prior = cost.CostModel.fit(CostModelSettings(core_hours=0.5, per="atom", exponent=1), dmc, [], [])
    np.testing.assert_allclose(prior.predict([3, 6]), [1.5, 3.0])
    # labels cost 0.01 × N_e³ up to a factor: the fit recovers 0.01 (geometric mean), unknown costs left out
    atoms = [h_chain(3), h_chain(4), h_chain(6), h_chain(5, charge=1)]
    costs = [0.01 * 27 * 1.2, 0.01 * 64 / 1.2, None, 0.01 * 64]
    fitted = cost.CostModel.fit(CostModelSettings(core_hours=99.0), dmc, atoms, costs)
    assert fitted.core_hours == pytest.approx(0.01, rel=1e-12)
    np.testing.assert_allclose(fitted.sizes(atoms), [3, 4, 6, 4])   # H5⁺ has 4 electrons
    np.testing.assert_allclose(fitted.predict(fitted.sizes([h_chain(6)])), [0.01 * 216])


def test_status_shows_core_hours_spent_and_queued(tmp_path):
    store = RunStore(tmp_path)
    ids = store.add_candidates([h_chain(3) for _ in range(6)], source="dft")
    store.mark_selected(ids[:4], 0, [np.nan] * 4, [np.nan] * 4, [0.0] * 4)
    for cid, seconds in zip(ids[:3], (3600.0, 1800.0, 1800.0)):
        store.add_label(cid, -1.0, 0.0, {"labeler": "pyqmc", "cpu_s": seconds})
    store.add_label(ids[3], -1.0, 0.0, {"labeler": "replay"})
    store.mark_selected(ids[4:], 1, [0.0, 0.0], [0.1, 0.1], [1.0, 1.0], core_hours=[0.75, 1.5])
    assert "core-hours: 2 spent on 3 labels (and 1 labels whose cost was not recorded); 2.25 queued " \
           "(predicted, 2 selected)" in status_text(tmp_path)


def test_plots_get_a_core_hours_axis_only_when_every_iteration_has_its_cost():
    records = [{"n_labels": 4, "core_hours": 2.0}, {"n_labels": 8, "core_hours": 6.0},
               {"n_labels": 12, "core_hours": 12.0}]
    ax = Figure().add_subplot()
    ax.set_xscale("log")
    ax.set_xlim(3, 15)
    assert core_hours_axis(ax, records)
    top = ax.child_axes[0]
    forward, inverse = top._functions
    np.testing.assert_allclose(forward(np.array([2.0, 4.0, 10.0, 14.0])), [1.0, 2.0, 9.0, 15.0])
    np.testing.assert_allclose(inverse(forward(np.array([3.0, 5.0, 13.0]))), [3.0, 5.0, 13.0])
    assert not core_hours_axis(Figure().add_subplot(), records[:2] + [{"n_labels": 12, "core_hours": None}])
