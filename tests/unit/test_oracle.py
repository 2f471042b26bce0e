"""The synthetic high-fidelity oracle of the MoS2 testbed: E_HF = E_CHGNet + ΔE + noise."""
import numpy as np
import pytest
from ase import Atoms
from ase.build import mx2

from aloop.labelers.ase_calculator import ASECalculatorLabeler
from testbeds.mos2.oracle import SyntheticHF, contact_correction

SETTINGS = dict(amplitude=4.0, r_c=2.5, width=0.25)


def sulfur_cluster(seed=0):
    rng = np.random.default_rng(seed)
    positions = rng.uniform(0, 4.0, size=(6, 3))
    return Atoms("S4Mo2", positions=positions, cell=[9, 9, 9], pbc=True)


def test_correction_forces_are_minus_its_gradient():
    atoms = sulfur_cluster()
    energy, forces = contact_correction(atoms, **SETTINGS)
    assert energy > 0.01  # the random cluster has short S–S contacts, or the test says nothing
    h, numeric = 1e-5, np.zeros_like(forces)
    for i in range(len(atoms)):
        for k in range(3):
            shifted = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[i, k] += sign * h
                shifted.append(contact_correction(moved, **SETTINGS)[0])
            numeric[i, k] = -(shifted[0] - shifted[1]) / (2 * h)
    np.testing.assert_allclose(forces, numeric, atol=1e-6)


def test_correction_is_rotation_and_permutation_invariant_and_only_sees_s_s_contacts():
    atoms = Atoms("S4Mo2", positions=sulfur_cluster().positions)  # no cell: rotate freely
    energy, _ = contact_correction(atoms, **SETTINGS)
    rotated = atoms.copy()
    rotated.rotate(37, "x")
    rotated.rotate(-81, "z")
    assert contact_correction(rotated, **SETTINGS)[0] == pytest.approx(energy, abs=1e-12)
    order = [3, 0, 5, 1, 4, 2]
    assert contact_correction(atoms[order], **SETTINGS)[0] == pytest.approx(energy, abs=1e-12)
    # Mo–S and Mo–Mo contacts, however short, are not penalised
    mo_s = Atoms("MoS", positions=[[0, 0, 0], [0, 0, 2.0]])
    assert contact_correction(mo_s, **SETTINGS)[0] == 0.0
    s_s = Atoms("S2", positions=[[0, 0, 0], [0, 0, SETTINGS["r_c"]]])  # the step is half-way at r_c
    assert contact_correction(s_s, **SETTINGS)[0] == pytest.approx(SETTINGS["amplitude"] / 2)


@pytest.fixture(scope="module")
def monolayer():
    pytest.importorskip("chgnet", reason="the MoS2 testbed's extra: pip install -e \".[mos2]\"")
    atoms = mx2("MoS2", kind="2H", a=3.18, thickness=3.13, size=(2, 2, 1), vacuum=6.0)
    del atoms[1]  # a S vacancy
    return atoms


def test_oracle_noise_is_reproducible_per_configuration_and_reported_as_the_error_bar(monolayer):
    noisy, exact = SyntheticHF(noise=0.02, seed=3), SyntheticHF(noise=0.0)
    atoms = monolayer.copy()
    atoms.calc = exact
    e_exact, f_exact = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = noisy
    e1 = atoms.get_potential_energy()
    assert atoms.calc.results["energy_sigma"] == 0.02
    np.testing.assert_allclose(atoms.get_forces(), f_exact, atol=1e-10)  # no noise on forces
    again = monolayer.copy()
    again.calc = SyntheticHF(noise=0.02, seed=3)
    assert again.get_potential_energy() == e1
    # across configurations the noise is a N(0, σ) draw
    draws = []
    for k in range(40):
        moved = monolayer.copy()
        moved.positions[0, 0] += 1e-3 * k
        moved.calc = noisy
        e_noisy = moved.get_potential_energy()
        moved.calc = exact
        draws.append(e_noisy - moved.get_potential_energy())
    assert 0.01 < np.std(draws) < 0.03
    assert e1 != e_exact


def test_oracle_through_the_ase_labeler(tmp_path, monolayer):
    labeler = ASECalculatorLabeler(tmp_path, "testbeds.mos2.oracle:SyntheticHF", {"noise": 0.02, "seed": 1})
    labeler.submit("a", monolayer)
    label = labeler.collect("a")
    assert label.sigma == 0.02
    assert label.provenance["parameters"] == {"noise": 0.02, "seed": 1}
    with pytest.raises(ValueError, match="no parameter amplitud"):
        ASECalculatorLabeler(tmp_path, "testbeds.mos2.oracle:SyntheticHF", {"amplitud": 1.0})
