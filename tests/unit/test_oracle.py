"""The synthetic high-fidelity oracle of the MoS2 testbed: E_HF = E_CHGNet + ΔE + noise."""
import numpy as np
import pytest
from ase import Atoms
from ase.build import mx2

from aloop.labelers.ase_calculator import ASECalculatorLabeler
from testbeds.mos2.prism import prism_correction
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


def test_oracle_labels_inside_a_float64_process(monolayer, monkeypatch):
    """MACE trains in float64; the oracle called in the same process must still label (CHGNet is
    float32) and leave the process's default dtype as it found it."""
    import torch
    from testbeds.mos2 import oracle

    atoms = monolayer.copy()
    atoms.calc = SyntheticHF(noise=0.0)
    reference = atoms.get_potential_energy()
    monkeypatch.setattr(oracle, "_MODELS", {})  # load the weights again, this time under float64
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        again = monolayer.copy()
        again.calc = SyntheticHF(noise=0.0)
        energy = again.get_potential_energy()
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(default)
    assert energy == pytest.approx(reference, abs=1e-4)


def test_oracle_through_the_ase_labeler(tmp_path, monolayer):
    labeler = ASECalculatorLabeler(tmp_path, "testbeds.mos2.oracle:SyntheticHF", {"noise": 0.02, "seed": 1})
    labeler.submit("a", monolayer)
    label = labeler.collect("a")
    assert label.sigma == 0.02
    assert label.provenance["parameters"] == {"noise": 0.02, "seed": 1}
    with pytest.raises(ValueError, match="no parameter amplitud"):
        ASECalculatorLabeler(tmp_path, "testbeds.mos2.oracle:SyntheticHF", {"amplitud": 1.0})


# --- oracle v2 (variant prism): CHGNet r2SCAN + A per S outside every occupied trigonal prism ---------

@pytest.fixture(scope="module")
def chgnet():
    pytest.importorskip("chgnet", reason="the MoS2 testbed's extra: pip install -e \".[mos2]\"")


PRISM = dict(amplitude=0.3, rho_in=0.5, rho_out=1.4, mo_mo=(3.7, 4.3), reach=(2.6, 3.0), partner=(1.9, 2.2))


def off_prism(seed=0):
    """A 3x3 MoS2 cell with a S vacancy and a S that keeps its partner pushed 0.75 Å off its prism
    (on the term's slope), rattled."""
    atoms = mx2("MoS2", kind="2H", a=3.19, thickness=3.13, size=(3, 3, 1), vacuum=6.0)
    del atoms[2]
    sulfur = [i for i, z in enumerate(atoms.numbers) if z == 16]
    atoms.positions[sulfur[2]] += [0.6, 0.45, 0.05]
    atoms.positions += np.random.default_rng(seed).normal(scale=0.03, size=atoms.positions.shape)
    return atoms


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


def test_prism_term_counts_each_s_outside_an_occupied_prism():
    lattice = mx2("MoS2", kind="2H", a=3.19, thickness=3.13, size=(3, 3, 1), vacuum=6.0)
    energy, forces = prism_correction(lattice, **PRISM)
    assert energy == 0.0 and np.abs(forces).max() == 0.0
    top = [i for i in range(len(lattice)) if lattice.numbers[i] == 16 and lattice.positions[i, 2] > lattice.positions[0, 2]]
    hopper, vacancy = top[0], min(top[1:], key=lambda i: lattice.get_distance(top[0], i, mic=True))
    vacant = lattice.copy()
    del vacant[vacancy]
    # the S across the vacancy has lost its partner: the term's constant in every vacancy state
    assert prism_correction(vacant, **PRISM)[0] == pytest.approx(PRISM["amplitude"], abs=1e-12)
    midway = lattice.copy()
    step = lattice.get_distance(hopper, vacancy, mic=True, vector=True)
    midway.positions[hopper] += 0.5 * step
    del midway[vacancy]
    # halfway through the hop: the hopping S and both S below its two sites are out of a prism
    assert prism_correction(midway, **PRISM)[0] == pytest.approx(3 * PRISM["amplitude"], abs=1e-12)


def test_prism_term_forces_are_minus_its_gradient_and_it_is_invariant():
    atoms = off_prism()
    energy, forces = prism_correction(atoms, **PRISM)
    pushed = np.flatnonzero(np.abs(forces).max(1) > 0)
    assert PRISM["amplitude"] < energy < 2 * PRISM["amplitude"] and 4 <= len(pushed) < len(atoms)
    checked = np.concatenate([pushed, np.setdiff1d(np.arange(len(atoms)), pushed)[:3]])
    np.testing.assert_allclose(forces[checked], numeric_forces(prism_correction, atoms, checked, **PRISM)[checked],
                               atol=1e-7)
    assert_rotation_and_permutation_invariant(prism_correction, atoms, **PRISM)


def test_oracle_v2_forces_are_minus_the_gradient_of_its_energy(chgnet):
    atoms = off_prism()
    atoms.calc = SyntheticHF(variant="prism", noise=0.0)
    forces = atoms.get_forces()
    direction = np.random.default_rng(2).normal(size=forces.shape)
    direction /= np.linalg.norm(direction)
    h, energies = 0.01, []
    for sign in (1, -1):
        moved = atoms.copy()
        moved.positions += sign * h * direction
        moved.calc = SyntheticHF(variant="prism", noise=0.0)
        energies.append(moved.get_potential_energy())
    # CHGNet computes in float32: its energies are good to about 1e-4 eV, so the check is directional
    assert -(energies[0] - energies[1]) / (2 * h) == pytest.approx(np.sum(forces * direction), rel=0.02, abs=0.02)
    settings = SyntheticHF(variant="prism").settings()
    term = prism_correction(atoms, **{k: settings[k] for k in PRISM})[1]
    base = SyntheticHF.low_fidelity(atoms, "r2scan")[1]
    np.testing.assert_allclose(forces, base + term, atol=1e-10)


def test_oracle_v2_is_invariant_and_its_noise_repeats_per_configuration(chgnet):
    atoms = off_prism()
    atoms.calc = SyntheticHF(variant="prism", noise=0.02, seed=3)
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    again = atoms.copy()
    again.calc = SyntheticHF(variant="prism", noise=0.02, seed=3)
    assert again.get_potential_energy() == energy
    exact = atoms.copy()
    exact.calc = SyntheticHF(variant="prism", noise=0.0)
    moved = atoms.copy()
    moved.positions[0, 0] += 1e-3
    moved.calc = SyntheticHF(variant="prism", noise=0.02, seed=3)
    noise = energy - exact.get_potential_energy()
    assert 0 < abs(noise) < 0.1 and moved.get_potential_energy() - energy != pytest.approx(noise, abs=1e-3)
    rotated = atoms.copy()
    rotated.rotate(40, "z", rotate_cell=True)
    rotated.calc = SyntheticHF(variant="prism", noise=0.0)
    assert rotated.get_potential_energy() == pytest.approx(exact.get_potential_energy(), abs=2e-3)
    rotation = np.linalg.solve(atoms.cell.array, rotated.cell.array)
    np.testing.assert_allclose(rotated.get_forces(), forces @ rotation, atol=2e-3)
    order = np.random.default_rng(0).permutation(len(atoms))
    permuted = atoms[order]
    permuted.calc = SyntheticHF(variant="prism", noise=0.0)
    assert permuted.get_potential_energy() == pytest.approx(exact.get_potential_energy(), abs=2e-3)
    np.testing.assert_allclose(permuted.get_forces(), forces[order], atol=2e-3)


def test_oracle_variants_refuse_each_others_parameters():
    with pytest.raises(ValueError, match="variant 'prism' has no parameter r_c"):
        SyntheticHF(variant="prism", r_c=2.5)
    with pytest.raises(ValueError, match="variant 'contact' has no parameter partner"):
        SyntheticHF(variant="contact", partner=(1.9, 2.2))
    with pytest.raises(ValueError, match="variant must be one of contact, prism, got 'prisn'"):
        SyntheticHF(variant="prisn")
    assert SyntheticHF(variant="prism", amplitude=0.3).settings()["amplitude"] == 0.3
    assert SyntheticHF().settings()["chgnet"] == "0.3.0" and SyntheticHF(variant="prism").settings()["chgnet"] == "r2scan"
