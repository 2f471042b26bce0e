"""The frozen-backbone decomposition E = a·θ + e must reproduce the model exactly."""
import numpy as np
import pytest
import torch
from conftest import CHARGE_SPIN, h3, h3_set, tiny_mace
from mace.calculators import MACECalculator

from aloop.backbone import Backbone


def direct_energies(model, atoms_list):
    """Energies from the model itself, through mace's own calculator (no aloop code involved)."""
    calc = MACECalculator(models=[model], device="cpu", default_dtype="float64")
    out = []
    for atoms in atoms_list:
        atoms = atoms.copy()
        atoms.calc = calc
        out.append(atoms.get_potential_energy())
    return np.array(out)


@pytest.mark.parametrize("scale_shift", [True, False])
def test_cached_features_reproduce_the_model_float64(scale_shift):
    model = tiny_mace(scale_shift=scale_shift)
    bb = Backbone(model, device="cpu")
    atoms = h3_set(12)
    feats = bb.features(atoms, batch_size=5)
    np.testing.assert_allclose(feats.energies(bb.theta0), direct_energies(bb.model_with(bb.theta0), atoms), rtol=0, atol=1e-10)
    # a different θ: the cached features predict what a model carrying θ computes from scratch
    theta = bb.theta0 + 0.2 * np.random.default_rng(0).normal(size=bb.n_params)
    np.testing.assert_allclose(feats.energies(theta), direct_energies(bb.model_with(theta), atoms), rtol=0, atol=1e-10)


def test_force_jacobian_gives_forces_of_any_theta():
    bb = Backbone(tiny_mace(), device="cpu")
    atoms = h3_set(6)
    theta = bb.theta0 + 0.2 * np.random.default_rng(1).normal(size=bb.n_params)
    jacobians = bb.force_jacobians(atoms, batch_size=4)
    calc = MACECalculator(models=[bb.model_with(theta)], device="cpu", default_dtype="float64")
    for a, jac in zip(atoms, jacobians):
        a.calc = calc
        predicted = jac.f0 + jac.B @ (theta - bb.theta0)
        np.testing.assert_allclose(predicted, a.get_forces(), rtol=0, atol=1e-10)


def test_float32_model_and_multihead():
    bb32 = Backbone(tiny_mace(dtype=torch.float32), device="cpu")
    assert bb32.model_with(bb32.theta0).readouts[0].linear.weight.dtype == torch.float32
    atoms = h3_set(4)
    feats = bb32.features(atoms)
    np.testing.assert_allclose(feats.energies(bb32.theta0), direct_energies(bb32.model_with(bb32.theta0).double(), atoms), atol=1e-5)

    model = tiny_mace(heads=["pbe", "ccsd"])
    bb = Backbone(model, device="cpu", head="ccsd")
    theta = bb.theta0 + 0.1
    exported = bb.model_with(theta)
    assert Backbone(exported, device="cpu", head="ccsd").theta0 == pytest.approx(theta)
    with pytest.raises(ValueError, match="model.head"):
        Backbone(model, device="cpu", head="r2scan")


def test_bad_model_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_text("not a model")
    with pytest.raises(ValueError, match="bad.model"):
        Backbone.from_file(bad, device="cpu")
    # mace_run_train writes NAME_compiled.model (TorchScript) beside NAME.model; only the latter can be tuned
    compiled = tmp_path / "x_compiled.model"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), compiled)
    with pytest.raises(ValueError, match="x_compiled.model: a TorchScript"):
        Backbone.from_file(compiled, device="cpu")


def test_charge_embedding_gives_each_charge_state_its_features():
    """A model with MACE's charge and spin embeddings: the features follow atoms.info's charge and 2S
    (as multiplicity 2S+1, MACE's convention), and equal MACE's own calculator given the same state."""
    model = tiny_mace(embedding_specs=CHARGE_SPIN)
    bb = Backbone(model, device="cpu")
    states = [(0, None), (1, 0), (-1, 0), (1, 2)]
    frames = []
    for charge, spin in states:
        atoms = h3(0.9, 1.3)
        atoms.info["charge"] = charge
        if spin is not None:
            atoms.info["spin"] = spin
        frames.append(atoms)
    feats = bb.features(frames)
    a = feats.a
    for i in range(len(states)):
        for j in range(i):
            assert not np.allclose(a[i], a[j]), (states[i], states[j])
    calc = MACECalculator(models=[model], device="cpu", default_dtype="float64")
    for (charge, spin), atoms, energy in zip(states, frames, feats.energies(bb.theta0[None])[0]):
        mace_atoms = atoms.copy()
        mace_atoms.info = {"charge": charge, "spin": (3 - charge) % 2 + 1 if spin is None else spin + 1}
        mace_atoms.calc = calc
        assert mace_atoms.get_potential_energy() == pytest.approx(energy, abs=1e-9)


def test_charge_outside_the_embedding_is_refused_with_the_range():
    bb = Backbone(tiny_mace(embedding_specs=CHARGE_SPIN), device="cpu")
    atoms = h3(0.9, 1.3)
    atoms.info.update(charge=3, spin=0)
    assert bb.refuses(atoms) == "charge 3 is outside the model's total_charge embedding, which takes -2 to 2"
    atoms.info.update(charge=1, spin=4)
    assert bb.refuses(atoms) == ("spin multiplicity 2S+1 5 is outside the model's total_spin embedding, which "
                                 "takes 1 to 4")
    atoms.info.update(charge=-2, spin=1)
    assert bb.refuses(atoms) is None
    assert Backbone(tiny_mace(), device="cpu").refuses(atoms) is None


def test_choosing_cuda_switches_off_torchscript_fusion(monkeypatch):
    """On CUDA the fuser compiles e3nn's scripted functions into kernels whose backward cannot take
    the batched cotangents of `full`'s and `delta`'s Jacobians (it failed so on an H200); choosing
    the device must switch it off before the model first runs there, and choosing the CPU must not."""
    from aloop.backbone import resolve_device
    # the tensor-expression fuser is the one that fuses on CUDA (the CPU build ignores the GPU override)
    before = torch._C._jit_texpr_fuser_enabled()
    try:
        torch._C._jit_set_texpr_fuser_enabled(True)
        assert resolve_device("cpu").type == "cpu"
        assert torch._C._jit_texpr_fuser_enabled()
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert resolve_device("auto").type == "cuda"
        assert not torch._C._jit_texpr_fuser_enabled()
    finally:
        torch._C._jit_set_texpr_fuser_enabled(before)
