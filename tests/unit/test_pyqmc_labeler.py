"""The pyqmc labeler: a real (short) DMC on H2, Jastrow reuse, reblocking, and its settings."""
from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.units import Hartree

from aloop.campaign_labelers import PyQMCSettings
from aloop.labelers import FAILED, LabelError, make_labeler
from aloop.labelers.pyqmc import PyQMCLabeler, WavefunctionStore, fingerprint, initial_walkers
from aloop.labelers.pyscf import build_molecule, run_scf
from aloop.labelers.reblock import reblock

H2_EXACT_HARTREE = -1.1744757   # Born-Oppenheimer, R = 0.7414 Å (Kolos & Wolniewicz)
H2 = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7414]])


def pyqmc(folder, **settings) -> PyQMCLabeler:
    """The labeler a campaign's section with these settings builds (the schema's defaults for the rest)."""
    return PyQMCLabeler.from_settings(folder, PyQMCSettings(kind="pyqmc", **settings))


SHORT = dict(basis="cc-pvdz", timestep=0.05, walkers=100, blocks=100, equilibration=20, optimize_steps=3, seed=1)


def test_short_dmc_on_h2_reaches_the_exact_energy(tmp_path):
    label = pyqmc(tmp_path, **SHORT).compute(H2)
    p = label.provenance
    e, sigma = label.energy / Hartree, label.sigma / Hartree
    # H2 has no nodes (one electron of each spin), so DMC is exact up to the timestep and the
    # population-control biases; 2 mHa allows for both at this timestep and walker count. Five
    # seeds gave -1.1680 to -1.1820 with error bars of 3-7 mHa, the worst 2.5σ from exact. The run
    # is seeded; 4σ of its own error bar leaves room for another platform's rounding to change the
    # walk, and the error bar itself must be honest: neither vanishing nor hiding a miss.
    assert abs(e - H2_EXACT_HARTREE) < 4 * sigma + 0.002
    assert 3e-4 < sigma < 0.008
    assert e < p["jastrow"]["e_vmc_hartree"]   # DMC projects below its trial function (by 16-31 mHa)
    assert e < p["e_scf_hartree"] - 0.03       # 46 mHa of correlation energy: most of it recovered
    assert p["e_dmc_hartree"] == pytest.approx(e)
    assert (p["method"], p["reference"], p["spin"], p["timestep"], p["walkers"]) == (
        "dmc (fixed-node, Slater-Jastrow)", "RHF", 0, 0.05, 100)
    assert p["jastrow"]["start"].startswith("pyqmc default") and p["jastrow"]["optimize_steps"] == 3
    assert p["reblock"]["n_blocks"] >= 8 and p["pyqmc_version"]

    # the next, nearby configuration starts from this Jastrow with the warm-start step count
    stretched = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.80]])
    quick = {**SHORT, "blocks": 20, "equilibration": 0, "walkers": 20, "warm_optimize_steps": 0}
    again = pyqmc(tmp_path, **quick).compute(stretched).provenance["jastrow"]
    assert again["start"] == p["jastrow"]["saved_as"] == fingerprint(H2, 0, 0)
    assert again["optimize_steps"] == 0
    assert again["distance_rms_angstrom"] == pytest.approx(0.80 - 0.7414, abs=1e-6)


def test_walkers_start_on_the_atoms_of_their_orbitals():
    # H2 + H 10 Å away, as in a hot MD frame: the β electron belongs to H2, one α electron to
    # each fragment. Started on the far H, a β electron sits in a Gaussian tail and DMC runs away.
    far = Atoms("H3", positions=[[0, 0, 0], [0.74, 0, 0], [10.74, 0, 0]])
    mol = build_molecule(far, "sto-3g", 0, 1)
    walkers = initial_walkers(mol, run_scf(mol, "hf"), 200, np.random.default_rng(0)).configs
    near_far_h = np.linalg.norm(walkers - mol.atom_coords()[2], axis=-1) < 9.0   # Bohr; 19 apart
    assert walkers.shape == (200, 3, 3)
    assert not near_far_h[:, 2].any()
    assert np.all(near_far_h[:, :2].sum(axis=1) == 1)


def test_nearest_jastrow_needs_same_atoms_charge_spin_and_shapes(tmp_path):
    store = WavefunctionStore(tmp_path)
    jastrow = {"wf2acoeff": np.zeros((3, 5, 2)), "wf2bcoeff": np.ones((4, 3))}
    shapes = {k: v.shape for k, v in jastrow.items()}
    line = Atoms("H3", positions=[[0, 0, 0], [0.9, 0, 0], [1.8, 0, 0]])
    for name, shift in (("near", 0.05), ("far", 0.5)):
        moved = line.copy()
        moved.positions[2, 0] += shift
        store.save(name, moved, 0, 1, jastrow, {"energy_hartree": np.zeros(3)})
    store.save("cation", line, 1, 0, jastrow, {})
    name, distance, found = store.nearest(line, 0, 1, shapes)
    assert name == "near" and distance == pytest.approx(np.sqrt(2 * 0.05**2 / 3))
    assert np.array_equal(found["wf2bcoeff"], jastrow["wf2bcoeff"])
    assert store.nearest(line, 1, 0, shapes)[0] == "cation"
    assert store.nearest(line, 0, 3, shapes) is None
    assert store.nearest(line, 0, 1, {"wf2acoeff": (3, 6, 2), "wf2bcoeff": (4, 3)}) is None
    assert store.nearest(Atoms("HLi", positions=line.positions[:2]), 0, 0, shapes) is None


def test_reblocking_recovers_the_error_of_a_correlated_series():
    rng = np.random.default_rng(0)
    phi, n = 0.9, 4000   # AR(1): error of the mean = sqrt((1 + phi) / (1 - phi) / (1 - phi²) / n)
    noise = rng.normal(size=n)
    x = np.empty(n)
    x[0] = noise[0] / np.sqrt(1 - phi**2)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + noise[i]
    exact = np.sqrt((1 + phi) / (1 - phi) / (1 - phi**2) / n)
    result = reblock(x)
    assert result.converged and result.block_size > 1
    assert 0.7 * exact < result.error < 1.3 * exact
    assert x.std() / np.sqrt(n) < 0.3 * exact    # the naive error would be far too small
    uncorrelated = reblock(noise)
    assert uncorrelated.error == pytest.approx(1 / np.sqrt(n), rel=0.3)
    # a level of few blocks whose error falls by chance below the one before cannot lower the error
    # bar (a 150-block DMC label at the H3 saddle: 24.7 meV at 8 blocks of 18, 15.6 at 16 of 9)
    dip = np.tile(np.repeat([1.0, -1.0], 8), 8) + 0.01 * rng.normal(size=128)   # blocks of 8 alternate
    of_8 = dip.reshape(-1, 8).mean(1).std(ddof=1) / np.sqrt(16)                   # those of 16 cancel
    assert reblock(dip).error >= of_8 > 10 * dip.reshape(-1, 16).mean(1).std(ddof=1) / np.sqrt(8)
    weighted = reblock([1.0, 3.0] * 8, weights=[3.0, 1.0] * 8)
    assert weighted.mean == pytest.approx(1.5)
    with pytest.raises(ValueError, match="at least 8 samples"):
        reblock(np.ones(5))
    with pytest.raises(ValueError, match="weights finite and > 0"):
        reblock(np.ones(10), weights=np.zeros(10))


@pytest.mark.parametrize("settings, message", [
    ({"timestep": 0.0}, r"labeler\.timestep: must be a number > 0"),
    ({"timestep": float("nan")}, r"labeler\.timestep"),
    ({"walkers": 5}, r"labeler\.walkers: must be an integer >= 10 .*population-control"),
    ({"blocks": 10}, r"labeler\.blocks: must be an integer >= 20 .*reblocking"),
    ({"equilibration": -1}, r"labeler\.equilibration: must be an integer >= 0"),
    ({"optimize_steps": 2.5}, r"labeler\.optimize_steps: must be an integer"),
    ({"seed": True}, r"labeler\.seed"),
    ({"basis": "cc-pvqq"}, r"labeler\.basis: unknown basis 'cc-pvqq'"),
    ({"spin": -1}, r"labeler\.spin"),
])
def test_bad_settings_name_the_field(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):   # the labeler's own checks, the schema's left out
        PyQMCLabeler.from_settings(tmp_path, PyQMCSettings.model_construct(kind="pyqmc", **settings))


def test_campaign_section_builds_the_labeler(tmp_path):
    section = PyQMCSettings(kind="pyqmc", basis="cc-pVDZ", spin=1, walkers=200)
    labeler = make_labeler(section, tmp_path, "c")
    assert isinstance(labeler, PyQMCLabeler) and labeler.name == "pyqmc"
    assert (labeler.basis, labeler.spin, labeler.walkers, labeler.steps_per_block) == ("cc-pVDZ", 1, 200, 5)
    with pytest.raises(ValueError, match="unknown basis"):
        PyQMCSettings(kind="pyqmc", basis="no-such-basis")


def test_campaign_file_errors_name_the_pyqmc_field(tmp_path):
    from ase.io import write

    from aloop.campaign import CampaignError, load_campaign

    write(tmp_path / "pool.xyz", H2)
    (tmp_path / "model.pt").write_bytes(b"not read when the file is invalid")
    (tmp_path / "c.yaml").write_text(
        "name: dmc\nmodel: {path: model.pt}\npool: {sources: [{kind: file, name: p, path: pool.xyz}]}\n"
        "labeler: {kind: pyqmc, walkers: 5, timestep: -0.01, nconfig: 100}\nstop: {max_labels: 4}\n")
    with pytest.raises(CampaignError) as err:
        load_campaign(tmp_path / "c.yaml")
    text = str(err.value)
    assert "labeler.walkers: must be >= 10, got 5" in text
    assert "labeler.timestep: must be > 0, got -0.01" in text
    assert "labeler.nconfig: unknown key" in text and "walkers" in text


def test_periodic_cell_is_a_failed_job(tmp_path):
    labeler = pyqmc(tmp_path, basis="sto-3g")
    labeler.submit("cell", Atoms("H2", positions=H2.positions, cell=[5, 5, 5], pbc=True))
    assert labeler.poll("cell") == FAILED
    with pytest.raises(LabelError, match="periodic cells are not supported"):
        labeler.collect("cell")
