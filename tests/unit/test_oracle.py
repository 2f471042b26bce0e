"""The synthetic high-fidelity oracle of the MoS2 testbed: E_HF = E_CHGNet + ΔE + noise."""
import numpy as np
import pytest
from ase import Atoms
from ase.build import mx2

from aloop.labelers.ase_calculator import ASECalculatorLabeler
from testbeds.mos2.coordination import coordination_correction
from testbeds.mos2.hollow import hollow_correction
from testbeds.mos2.oracle import SyntheticHF, contact_correction

SETTINGS = dict(amplitude=4.0, r_c=2.5, width=0.25)


def sulfur_cluster(seed=0):
    rng = np.random.default_rng(seed)
    positions = rng.uniform(0, 4.0, size=(6, 3))
    return Atoms("S4Mo2", positions=positions, cell=[9, 9, 9], pbc=True)


def numeric_forces(term, atoms, indices, h: float = 1e-5, **parameters) -> np.ndarray:
    """−∂E/∂x of `term(atoms, **parameters)[0]` by central differences, for the atoms in `indices`
    (the other rows zero)."""
    numeric = np.zeros((len(atoms), 3))
    for i in indices:
        for k in range(3):
            shifted = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[i, k] += sign * h
                shifted.append(term(moved, **parameters)[0])
            numeric[i, k] = -(shifted[0] - shifted[1]) / (2 * h)
    return numeric


def test_correction_forces_are_minus_its_gradient():
    atoms = sulfur_cluster()
    energy, forces = contact_correction(atoms, **SETTINGS)
    assert energy > 0.01  # the random cluster has short S–S contacts, or the test says nothing
    np.testing.assert_allclose(forces, numeric_forces(contact_correction, atoms, range(len(atoms)), **SETTINGS),
                               atol=1e-6)


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


# --- oracle v2: CHGNet r2SCAN + the hollow-site term ----------------------------------------------

@pytest.fixture(scope="module")
def chgnet():
    pytest.importorskip("chgnet", reason="the MoS2 testbed's extra: pip install -e \".[mos2]\"")


HOLLOW = dict(amplitude=0.4, rho_in=0.4, rho_out=0.8, mo_mo=(3.7, 4.3), reach=(2.6, 3.0))


def off_hollow(seed=0):
    """A 3x3 MoS2 cell with a S vacancy, one S pushed 0.6 Å off its hollow (on the term's slope), rattled."""
    atoms = mx2("MoS2", kind="2H", a=3.19, thickness=3.13, size=(3, 3, 1), vacuum=6.0)
    del atoms[2]
    sulfur = [i for i, z in enumerate(atoms.numbers) if z == 16]
    atoms.positions[sulfur[0]] += [0.5, 0.33, 0.05]
    atoms.positions += np.random.default_rng(seed).normal(scale=0.03, size=atoms.positions.shape)
    return atoms


def test_hollow_term_is_zero_on_the_lattice_and_its_amplitude_off_every_hollow():
    lattice = mx2("MoS2", kind="2H", a=3.19, thickness=3.13, size=(3, 3, 1), vacuum=6.0)
    energy, forces = hollow_correction(lattice, **HOLLOW)
    assert energy == 0.0 and np.abs(forces).max() == 0.0
    midway = lattice.copy()
    midway.positions[1] += 0.5 * (lattice.positions[4] - lattice.positions[1]) * [1, 1, 0]   # halfway to the next S site
    assert hollow_correction(midway, **HOLLOW)[0] == pytest.approx(HOLLOW["amplitude"])


def test_hollow_term_forces_are_minus_its_gradient():
    atoms = off_hollow()
    energy, forces = hollow_correction(atoms, **HOLLOW)
    assert 0.01 < energy < HOLLOW["amplitude"] and np.abs(forces).max() > 0.1   # on the slope, or it says nothing
    # every atom the term pushes, and a few it leaves alone (each call rebuilds the triangles: seconds)
    pushed = np.flatnonzero(np.abs(forces).max(1) > 0)
    checked = np.concatenate([pushed, np.setdiff1d(np.arange(len(atoms)), pushed)[:3]])
    assert 4 <= len(pushed) < len(atoms)
    numeric = numeric_forces(hollow_correction, atoms, checked, **HOLLOW)
    np.testing.assert_allclose(forces[checked], numeric[checked], atol=1e-7)


def assert_rotation_and_permutation_invariant(term, atoms, **parameters):
    """`term(atoms, **parameters)` → (energy, forces): the energy unchanged and the forces carried
    along by a rotation of the whole cell and by a renumbering of the atoms."""
    energy, forces = term(atoms, **parameters)
    rotated = atoms.copy()
    rotated.rotate(33, "z", rotate_cell=True)
    rotated.rotate(-71, "x", rotate_cell=True)
    e_rot, f_rot = term(rotated, **parameters)
    assert e_rot == pytest.approx(energy, abs=1e-12)
    rotation = np.linalg.solve(atoms.cell.array, rotated.cell.array)   # rows: r_rot = r @ rotation
    np.testing.assert_allclose(f_rot, forces @ rotation, atol=1e-10)
    order = np.random.default_rng(1).permutation(len(atoms))
    e_perm, f_perm = term(atoms[order], **parameters)
    assert e_perm == pytest.approx(energy, abs=1e-12)
    np.testing.assert_allclose(f_perm, forces[order], atol=1e-12)


def test_hollow_term_is_rotation_and_permutation_invariant():
    assert_rotation_and_permutation_invariant(hollow_correction, off_hollow(), **HOLLOW)


def test_oracle_v2_forces_are_minus_the_gradient_of_its_energy(chgnet):
    atoms = off_hollow()
    atoms.calc = SyntheticHF(variant="hollow", noise=0.0)
    forces = atoms.get_forces()
    direction = np.random.default_rng(2).normal(size=forces.shape)
    direction /= np.linalg.norm(direction)
    h, energies = 0.01, []
    for sign in (1, -1):
        moved = atoms.copy()
        moved.positions += sign * h * direction
        moved.calc = SyntheticHF(variant="hollow", noise=0.0)
        energies.append(moved.get_potential_energy())
    # CHGNet computes in float32: its energies are good to about 1e-4 eV, so the check is directional
    assert -(energies[0] - energies[1]) / (2 * h) == pytest.approx(np.sum(forces * direction), rel=0.02, abs=0.02)
    settings = SyntheticHF(variant="hollow").settings()
    term = hollow_correction(atoms, **{k: settings[k] for k in HOLLOW})[1]
    base = SyntheticHF.low_fidelity(atoms, "r2scan")[1]
    np.testing.assert_allclose(forces, base + term, atol=1e-10)


def test_oracle_v2_is_invariant_and_its_noise_repeats_per_configuration(chgnet):
    atoms = off_hollow()
    atoms.calc = SyntheticHF(variant="hollow", noise=0.02, seed=3)
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    again = atoms.copy()
    again.calc = SyntheticHF(variant="hollow", noise=0.02, seed=3)
    assert again.get_potential_energy() == energy
    exact = atoms.copy()
    exact.calc = SyntheticHF(variant="hollow", noise=0.0)
    moved = atoms.copy()
    moved.positions[0, 0] += 1e-3
    moved.calc = SyntheticHF(variant="hollow", noise=0.02, seed=3)
    noise = energy - exact.get_potential_energy()
    assert 0 < abs(noise) < 0.1 and moved.get_potential_energy() - energy != pytest.approx(noise, abs=1e-3)
    rotated = atoms.copy()
    rotated.rotate(40, "z", rotate_cell=True)
    rotated.calc = SyntheticHF(variant="hollow", noise=0.0)
    assert rotated.get_potential_energy() == pytest.approx(exact.get_potential_energy(), abs=2e-3)
    rotation = np.linalg.solve(atoms.cell.array, rotated.cell.array)
    np.testing.assert_allclose(rotated.get_forces(), forces @ rotation, atol=2e-3)
    order = np.random.default_rng(0).permutation(len(atoms))
    permuted = atoms[order]
    permuted.calc = SyntheticHF(variant="hollow", noise=0.0)
    assert permuted.get_potential_energy() == pytest.approx(exact.get_potential_energy(), abs=2e-3)
    np.testing.assert_allclose(permuted.get_forces(), forces[order], atol=2e-3)


def test_oracle_variants_refuse_each_others_parameters():
    with pytest.raises(ValueError, match="variant 'hollow' has no parameter r_c"):
        SyntheticHF(variant="hollow", r_c=2.5)
    with pytest.raises(ValueError, match="variant must be one of contact, hollow, coordination, got 'holow'"):
        SyntheticHF(variant="holow")
    assert SyntheticHF(variant="hollow", amplitude=0.3).settings()["amplitude"] == 0.3
    assert SyntheticHF().settings()["chgnet"] == "0.3.0" and SyntheticHF(variant="hollow").settings()["chgnet"] == "r2scan"


# --- oracle v2, variant coordination: CHGNet r2SCAN + A Σ_S (CN0 − CN_S)² ---------------------------

COORDINATION = dict(amplitude=0.5, r_in=2.7, r_out=3.3, cn0=3.0)


def test_coordination_term_is_zero_on_a_vibrating_lattice_and_rises_where_a_s_leaves_a_mo():
    lattice = mx2("MoS2", kind="2H", a=3.19, thickness=3.13, size=(3, 3, 1), vacuum=6.0)
    lattice.positions += np.random.default_rng(0).normal(scale=0.05, size=lattice.positions.shape)
    energy, forces = coordination_correction(lattice, **COORDINATION)
    assert energy == 0.0 and np.abs(forces).max() == 0.0
    energy, forces = coordination_correction(off_hollow(), **COORDINATION)
    assert energy > 0.01 and np.abs(forces).max() > 0.1


def test_coordination_term_forces_are_minus_its_gradient_and_it_is_invariant():
    atoms = off_hollow()
    energy, forces = coordination_correction(atoms, **COORDINATION)
    pushed = np.flatnonzero(np.abs(forces).max(1) > 0)
    assert 2 <= len(pushed) < len(atoms)
    checked = np.concatenate([pushed, np.setdiff1d(np.arange(len(atoms)), pushed)[:3]])
    np.testing.assert_allclose(forces, numeric_forces(coordination_correction, atoms, checked, **COORDINATION),
                               atol=1e-7)
    assert_rotation_and_permutation_invariant(coordination_correction, atoms, **COORDINATION)


def test_oracle_coordination_variant_is_r2scan_plus_the_term(chgnet):
    atoms = off_hollow()
    atoms.calc = SyntheticHF(variant="coordination", noise=0.0)
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    base, base_forces = SyntheticHF.low_fidelity(atoms, "r2scan")
    term, term_forces = coordination_correction(atoms, **{k: SyntheticHF(variant="coordination").settings()[k]
                                                          for k in COORDINATION})
    assert energy == pytest.approx(base + term, abs=1e-9)
    np.testing.assert_allclose(forces, base_forces + term_forces, atol=1e-9)
    with pytest.raises(ValueError, match="variant 'coordination' has no parameter rho_in"):
        SyntheticHF(variant="coordination", rho_in=0.3)
