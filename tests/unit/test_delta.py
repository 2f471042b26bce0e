"""`finetune.kind: delta`: a correction network beside the frozen base model; its export, its fit."""
import numpy as np
import pytest
from conftest import h3_set, make_committee, tiny_mace
from mace.calculators import MACECalculator

from aloop.backbone import Backbone
from aloop.campaign import FinetuneSettings
from aloop.committee import TrainingSet
from aloop.delta import DeltaCommittee, DeltaReadout

WIDTH = 5


@pytest.fixture(scope="module")
def setup():
    bb = Backbone(tiny_mace(), device="cpu")
    delta = DeltaReadout(bb, WIDTH)
    atoms = h3_set(12, seed=4)
    inputs = delta.inputs(atoms)
    jac = bb.force_jacobians(atoms)
    energy, forces = bb.energy_forces(atoms)
    layers = committee(delta).layers()
    hidden = delta.hidden_terms(atoms, layers)
    return bb, delta, atoms, inputs, hidden, jac, energy, forces


def committee(delta, **settings):
    base = dict(size=3, noise_floor=0.002, force_weight=1.0, force_threshold=0.05, prior_sigma=0.05)
    return DeltaCommittee(delta, make_committee(delta.backbone.theta0, **{**base, **settings}))


def training_set(inputs, jac, y):
    return TrainingSet.build(inputs.features, y, np.zeros(len(y)), jac, [j.f0 for j in jac], ids=np.arange(len(y)))


def test_no_correction_is_the_base_model_and_its_export_too(setup, tmp_path):
    bb, delta, atoms, inputs, hidden, jac, energy, forces = setup
    assert delta.n_params == 1 + WIDTH + 8 * WIDTH   # tiny_mace: one element, MLP input 8x0e
    np.testing.assert_allclose(delta.energies(delta.phi0, inputs), energy, rtol=0, atol=1e-10)
    psi = delta.phi0.copy()
    psi[delta.inner_slice] = np.random.default_rng(0).normal(size=8 * WIDTH)   # hidden units, v = 0: no correction
    calc = MACECalculator(model_paths=str(delta.export(psi, tmp_path / "d.model")), device="cpu", default_dtype="float64")
    for frame, e, f in zip(atoms, energy, forces):
        frame = frame.copy()
        frame.calc = calc
        assert frame.get_potential_energy() == pytest.approx(e, abs=1e-10)
        np.testing.assert_allclose(frame.get_forces(), f, atol=1e-10)


def test_the_exported_file_is_base_plus_correction(setup, tmp_path):
    """One ordinary MACE file, read by MACE's own calculator, gives the base model's energy plus the
    correction's, and forces the base model's plus the correction's, which the hidden layers' terms
    (vector-Jacobian products through the backbone) give for that layer."""
    bb, delta, atoms, inputs, hidden, jac, energy, forces = setup
    rng = np.random.default_rng(1)
    psi = rng.normal(size=delta.n_params)
    predicted = delta.energies(psi, inputs)
    assert np.abs(predicted - energy).max() > 1e-2   # a real correction
    terms = delta.hidden_terms(atoms, psi[None, delta.inner_slice])
    v = psi[1:1 + WIDTH]
    calc = MACECalculator(model_paths=str(delta.export(psi, tmp_path / "d.model")), device="cpu", default_dtype="float64")
    for frame, e, f, t, p in zip(atoms, energy, forces, terms, predicted):
        frame = frame.copy()
        frame.calc = calc
        assert frame.get_potential_energy() == pytest.approx(e + t.g[0] @ v + psi[0] * len(frame), abs=1e-9)
        assert frame.get_potential_energy() == pytest.approx(p, abs=1e-9)
        np.testing.assert_allclose(frame.get_forces().ravel(), f.ravel() + t.dg[0] @ v, atol=1e-9)


def test_the_fit_learns_a_correction_the_base_readout_does_not_have(setup):
    """Labels = base + a nonlinear function of the readout inputs + an offset: every member fits them to
    well below the correction's own size, and each starts from its own draw (they differ)."""
    bb, delta, atoms, inputs, hidden, jac, energy, forces = setup
    truth = np.random.default_rng(3).normal(size=delta.n_params) * 0.5
    truth[0] = 0.2
    y = delta.energies(truth, inputs)
    c = committee(delta, force_weight=0.0).fit(training_set(inputs, jac, y), hidden, 1)
    members = c.member_energies(inputs)
    before = np.sqrt(np.mean((energy - y) ** 2))
    after = np.sqrt(np.mean((members - y) ** 2, axis=1))
    assert before > 0.05 and after.max() < 0.1 * before
    assert np.ptp(c.phis_[:, delta.inner_slice], axis=0).max() > 0.1


def test_the_force_penalty_holds_the_correction_near_the_base_forces(setup):
    """Labels made by a correction with large forces: without the penalty the fit follows them; with it,
    the correction's forces are held closer to the base model's, the tighter the larger its weight."""
    bb, delta, atoms, inputs, hidden, jac, energy, forces = setup
    truth = np.random.default_rng(3).normal(size=delta.n_params) * 0.5
    data = training_set(inputs, jac, delta.energies(truth, inputs))

    def largest_force_change(force_weight):
        c = committee(delta, force_weight=force_weight, force_threshold=0.05, noise_floor=0.02)
        c.fit(data, hidden, 1)
        v = c.phis_[:, 1:1 + WIDTH]
        return max(float(np.linalg.norm(t.dg[k] @ v[k])) for k in range(c.size) for t in hidden)

    free, held, tight = (largest_force_change(w) for w in (0.0, 1e3, 1e4))
    assert free > 0.5 and tight < held < 0.5 * free


def test_the_campaign_field_and_what_it_refuses():
    assert FinetuneSettings(kind="delta").delta_width == 32
    with pytest.raises(ValueError, match="readout: full fine-tunes the base model's readouts, and kind: delta"):
        FinetuneSettings(kind="delta", readout="full")



def test_a_saved_committee_loads_back_and_another_class_is_refused(setup, tmp_path):
    bb, delta, atoms, inputs, hidden, jac, energy, forces = setup
    data = training_set(inputs, jac, energy + 0.1)
    c = committee(delta).fit(data, hidden, 1)
    c.save(tmp_path / "delta.npz")
    back = committee(delta).load(tmp_path / "delta.npz")
    np.testing.assert_array_equal(back.member_energies(inputs), c.member_energies(inputs))
    make_committee(bb.theta0, size=3).fit(data, 1).save(tmp_path / "linear.npz")
    with pytest.raises(ValueError, match="a committee of finetune.kind: readout; the campaign says kind: delta"):
        committee(delta).load(tmp_path / "linear.npz")
    with pytest.raises(ValueError, match="another width"):
        committee(DeltaReadout(bb, WIDTH + 1)).load(tmp_path / "delta.npz")


def test_the_committee_mean_is_one_model_with_every_members_units(setup, tmp_path):
    """The export of a committee ψ [K, P] is one ordinary MACE file whose energy is the members'
    average and whose forces are the average of theirs (the energy is linear in each member's v)."""
    bb, delta, atoms, inputs, hidden, jac, energy, forces = setup
    psis = np.random.default_rng(5).normal(size=(3, delta.n_params))
    members = delta.energies(psis, inputs)
    assert members.std(0).max() > 1e-2   # members that differ
    calc = MACECalculator(model_paths=str(delta.export(psis, tmp_path / "mean.model")), device="cpu",
                          default_dtype="float64")
    one = [MACECalculator(model_paths=str(delta.export(p, tmp_path / f"m{k}.model")), device="cpu",
                          default_dtype="float64") for k, p in enumerate(psis)]
    for frame, e in zip(atoms, members.mean(0)):
        frame = frame.copy()
        frame.calc = calc
        assert frame.get_potential_energy() == pytest.approx(e, abs=1e-9)
        mean_force = np.mean([c.get_forces(frame) for c in one], axis=0)
        np.testing.assert_allclose(frame.get_forces(), mean_force, atol=1e-9)
    with pytest.raises(ValueError, match="expected"):
        delta.model_with(psis[:, :-1])


def test_prior_sigma_auto_follows_the_correction_the_labels_hold(setup, tmp_path):
    """`prior_sigma: auto`: each member's evidence picks a τ; labels that only shift E0 get a far
    smaller one than labels holding a correction of the network's own kind, and it round-trips."""
    bb, delta, atoms, inputs, hidden, jac, energy, forces = setup
    sigma = np.full(len(energy), 1e-3)
    truth = np.random.default_rng(3).normal(size=delta.n_params) * 0.5
    truth[delta.inner_slice] = committee(delta).layers()[0]   # member 0's own hidden units
    labels = {"shift": energy + 0.1 + np.random.default_rng(4).normal(scale=1e-3, size=len(energy)),
              "correction": delta.energies(truth, inputs)}
    fitted = {}
    for name, y in labels.items():
        data = TrainingSet.build(inputs.features, y, sigma, jac, [j.f0 for j in jac], ids=np.arange(len(y)))
        fitted[name] = committee(delta, prior_sigma="auto", force_weight=0.0).fit(data, hidden, 1)
        assert len(fitted[name].taus_) == 3 and np.all(np.isfinite(fitted[name].taus_))
    assert fitted["shift"].taus_[0] < 0.1 * fitted["correction"].taus_[0]
    c = fitted["correction"]
    c.save(tmp_path / "auto.npz")
    back = committee(delta, prior_sigma="auto").load(tmp_path / "auto.npz")
    assert back.tau_ == c.tau_ and np.array_equal(back.model_errors_, c.model_errors_)
