import numpy as np
import pytest
from ase import Atoms
from ase.units import Hartree
from pyscf import gto, scf

from aloop.campaign_labelers import PySCFSettings
from aloop.labelers.base import DONE, FAILED, LabelError
from aloop.labelers.pyscf import PySCFLabeler, energy_and_forces, single_point

H2 = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
H3_BENT = Atoms("H3", positions=[[0, 0, 0], [0.95, 0, 0], [1.6, 0.7, 0.1]])


def pyscf(folder, **settings) -> PySCFLabeler:
    """The labeler a campaign's section with these settings builds (the schema's defaults for the rest)."""
    return PySCFLabeler.from_settings(folder, PySCFSettings(kind="pyscf", **settings))


def test_h2_hf_energy_matches_direct_pyscf(tmp_path):
    label = pyscf(tmp_path, method="hf", basis="sto-3g").compute(H2)
    direct = scf.RHF(gto.M(atom="H 0 0 0; H 0 0 0.74", basis="sto-3g", verbose=0)).kernel()
    assert label.energy == pytest.approx(direct * Hartree, abs=1e-7)
    assert label.sigma == 0.0
    prov = label.provenance
    assert (prov["method"], prov["basis"], prov["charge"], prov["spin"]) == ("hf", "sto-3g", 0, 0)
    assert prov["reference"] == "RHF"
    assert "ase.units.Hartree" in prov["units"]


def test_a_candidates_own_charge_state_comes_before_the_campaigns(tmp_path):
    """One campaign, two charge states: H3+ (a closed-shell singlet) labelled by a labeler set up
    for neutral H3, because the candidate says so in atoms.info."""
    labeler = pyscf(tmp_path, method="hf", basis="sto-3g", charge=0, spin=1)
    cation = H3_BENT.copy()
    cation.info.update(charge=1, spin=0)
    label = labeler.compute(cation)
    positions = "; ".join(f"H {x} {y} {z}" for x, y, z in H3_BENT.positions)
    direct = scf.RHF(gto.M(atom=positions, basis="sto-3g", charge=1, spin=0, verbose=0)).kernel()
    assert label.energy == pytest.approx(direct * Hartree, abs=1e-7)
    assert (label.provenance["charge"], label.provenance["spin"]) == (1, 0)
    assert labeler.compute(H3_BENT).provenance["charge"] == 0


def test_h_atom_is_a_doublet(tmp_path):
    label = pyscf(tmp_path, method="hf", basis="sto-3g").compute(Atoms("H"))
    assert label.provenance["spin"] == 1
    assert label.provenance["reference"] == "UHF"
    assert label.energy == pytest.approx(-0.466581849 * Hartree, abs=1e-6)


def test_open_shell_ccsd_t_has_correlation_parts(tmp_path):
    label = pyscf(tmp_path, method="ccsd(t)", basis="sto-3g").compute(H3_BENT)
    prov = label.provenance
    assert prov["reference"] == "UHF"
    assert prov["e_corr_hartree"] < 0
    parts = prov["e_scf_hartree"] + prov["e_corr_hartree"] + prov["e_triples_hartree"]
    assert label.energy == pytest.approx(parts * Hartree, abs=1e-9)


def test_open_shell_reference_follows_internal_instabilities(tmp_path):
    # From the default guess, UHF for linear H3 at 2 A stops on an unstable solution ~7.7 eV high.
    stretched = Atoms("H3", positions=[[0, 0, 0], [2.0, 0, 0], [4.0, 0, 0]])
    mol = gto.M(atom="H 0 0 0; H 2 0 0; H 4 0 0", basis="sto-3g", spin=1, verbose=0)
    default_guess = scf.UHF(mol).kernel() * Hartree
    label = pyscf(tmp_path, method="hf", basis="sto-3g").compute(stretched)
    assert label.energy < default_guess - 1.0
    assert label.provenance["stability"] == "internal instabilities followed"


@pytest.mark.parametrize("method", ["mp2", "ccsd"])
def test_closed_shell_correlated_methods_lower_the_hf_energy(tmp_path, method):
    label = pyscf(tmp_path, method=method, basis="sto-3g").compute(H2)
    assert label.provenance["reference"] == "RHF"
    assert label.provenance["e_corr_hartree"] < 0
    assert label.energy < label.provenance["e_scf_hartree"] * Hartree


def test_unknown_method_and_basis_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"labeler\.method.*ccsd\(t\)"):
        pyscf(tmp_path, method="ccsdtq-magic")
    with pytest.raises(ValueError, match=r"labeler\.basis"):
        pyscf(tmp_path, basis="aug-cc-pvtz-nonsense")
    pyscf(tmp_path, method="PBE", basis="aug-cc-pVTZ")


def test_inconsistent_spin_is_a_label_error(tmp_path):
    labeler = pyscf(tmp_path, method="hf", basis="sto-3g", spin=1)
    with pytest.raises(LabelError, match="H2"):
        labeler.compute(H2)
    labeler.submit("h2", H2)
    assert labeler.poll("h2") == FAILED
    with pytest.raises(LabelError, match="inconsistent"):
        labeler.collect("h2")


def test_unconverged_scf_is_a_label_error(tmp_path, monkeypatch):
    monkeypatch.setattr(scf.hf.SCF, "max_cycle", 1)
    with pytest.raises(LabelError, match="did not converge"):
        pyscf(tmp_path, method="hf", basis="sto-3g").compute(H3_BENT)


def _central_difference(atoms, method, direction, step=1e-3):
    """dE/d(step along `direction`) in eV per Angstrom of displacement."""
    plus, minus = atoms.copy(), atoms.copy()
    plus.positions += step * direction
    minus.positions -= step * direction
    e_plus = energy_and_forces(plus, method, "sto-3g")[0]
    e_minus = energy_and_forces(minus, method, "sto-3g")[0]
    return (e_plus - e_minus) / (2 * step)


def test_hf_forces_match_finite_differences():
    energy, forces = energy_and_forces(H3_BENT, "hf", "sto-3g")
    assert forces.shape == (3, 3)
    numeric = np.zeros_like(forces)
    for i in range(3):
        for k in range(3):
            unit = np.zeros((3, 3))
            unit[i, k] = 1.0
            numeric[i, k] = -_central_difference(H3_BENT, "hf", unit)
    assert np.abs(forces - numeric).max() < 1e-4
    assert energy == pytest.approx(single_point(H3_BENT, "hf", "sto-3g").energy, abs=1e-6)


def test_dft_forces_match_a_directional_finite_difference():
    # DFT grids make each call ~100x dearer than HF here, so one random direction stands in for
    # all nine components (it is sensitive to any of them).
    _, forces = energy_and_forces(H3_BENT, "pbe", "sto-3g")
    direction = np.random.default_rng(0).normal(size=(3, 3))
    direction /= np.linalg.norm(direction)
    numeric = -_central_difference(H3_BENT, "pbe", direction)
    assert np.sum(forces * direction) == pytest.approx(numeric, abs=1e-4)


def test_forces_refused_for_correlated_methods():
    with pytest.raises(ValueError, match="gradients are not available"):
        energy_and_forces(H2, "ccsd(t)", "sto-3g")


def test_local_round_trip_computes_once(tmp_path):
    labeler = pyscf(tmp_path, method="hf", basis="sto-3g")
    calls = []
    compute = labeler.compute
    labeler.compute = lambda atoms: calls.append(1) or compute(atoms)
    labeler.submit("h2", H2)
    assert labeler.poll("h2") == DONE
    first = labeler.collect("h2")
    labeler.submit("h2", H2)
    assert len(calls) == 1
    assert labeler.collect("h2") == first
    assert first.provenance["wall_s"] >= 0
