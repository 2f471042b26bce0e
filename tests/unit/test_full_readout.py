"""`finetune.readout: full`: the decomposition, the fit, export, and the campaign's field."""
import numpy as np
import pytest
import torch
from conftest import h3_set, make_committee, tiny_mace
from mace.calculators import MACECalculator

from aloop.arrays import feature_moment
from aloop.backbone import Backbone
from aloop.committee import NotConverged, TrainingSet
from aloop.full_committee import FullCommittee
from aloop.full_readout import FullReadout, LabelledGraph


@pytest.fixture(scope="module")
def setup():
    bb = Backbone(tiny_mace(), device="cpu")
    full = FullReadout(bb)
    atoms = h3_set(10, seed=5)
    inputs = full.inputs(atoms)
    graph = LabelledGraph(full, atoms)
    jac = bb.force_jacobians(atoms)
    energy, forces = bb.energy_forces(atoms)
    rng = np.random.default_rng(1)
    y = energy + 0.3 + 0.05 * rng.normal(size=len(energy))   # an offset and some scatter, as CCSD(T) vs PBE
    data = TrainingSet.build(inputs.features, y, np.zeros(len(y)), jac, [j.f0 for j in jac], ids=np.arange(len(y)))
    return bb, full, atoms, inputs, graph, data, energy, forces


def committee(full, **settings):
    """A full committee built from the settings a run reads (the schema's defaults for the rest)."""
    base = dict(size=2, noise_floor=0.002, force_weight=1.0, force_threshold=0.05)
    return FullCommittee(full, make_committee(full.backbone.theta0, **{**base, **settings}))


def forces_at(problem, data, phi):
    """Per-configuration forces [n, 3Nmax] of φ from the objective's ΔF (ΔF + F_LF)."""
    with torch.no_grad():
        return problem.forces_delta(torch.as_tensor(phi)).numpy() + data.f_lf


def test_the_base_parameters_give_the_base_model_exactly(setup):
    bb, full, atoms, inputs, graph, data, energy, forces = setup
    assert full.mlp == [1] and full.n_params == bb.n_params + 64   # tiny_mace: W1 is 8x0e → 8x0e
    np.testing.assert_allclose(full.energies(full.phi0, inputs), energy, rtol=0, atol=1e-10)
    problem = committee(full).problem(data, graph, 1)[0]
    padded = np.concatenate([np.concatenate([f.ravel(), np.zeros(data.f0.shape[1] - f.size)]) for f in forces])
    np.testing.assert_allclose(forces_at(problem, data, full.phi0), padded.reshape(data.f0.shape), rtol=0, atol=1e-10)


def test_any_parameters_are_those_of_the_exported_model(setup, tmp_path):
    """The cached inputs and the kept graph give the energies and forces of the MACE file export writes,
    loaded by MACE's own calculator."""
    bb, full, atoms, inputs, graph, data, energy, forces = setup
    phi = full.phi0 + 0.05 * np.random.default_rng(2).normal(size=full.n_params)
    calc = MACECalculator(model_paths=str(full.export(phi, tmp_path / "member_0.model")), device="cpu",
                          default_dtype="float64")
    predicted = full.energies(phi, inputs)
    cached_forces = forces_at(committee(full).problem(data, graph, 1)[0], data, phi)
    for c, frame in enumerate(atoms):
        frame = frame.copy()
        frame.calc = calc
        assert frame.get_potential_energy() == pytest.approx(predicted[c], abs=1e-9)
        np.testing.assert_allclose(frame.get_forces().ravel(), cached_forces[c, :9], atol=1e-9)


@pytest.mark.parametrize("heads", [None, ["pbe", "dmc"]], ids=["one-head", "two-heads"])
def test_the_committee_mean_is_one_model_with_every_members_mlp(heads):
    """The model of a committee φ [K, P] gives the members' average energy and forces exactly (not
    those of the average φ), on a one-head model and on the second head of a two-head one, whose MLP
    masks its hidden units head by head."""
    # the tiny model's one scale would not index a second head: a plain MACE for two
    bb = Backbone(tiny_mace(heads=heads, scale_shift=heads is None), device="cpu", head=heads and heads[1])
    full = FullReadout(bb)
    atoms = h3_set(4, seed=7)
    phis = full.phi0 + 0.3 * np.random.default_rng(3).normal(size=(3, full.n_params))
    members = full.energies(phis, full.inputs(atoms))
    mean = Backbone(full.model_with(phis), device="cpu", head=bb.head)
    assert mean.model.readouts[full.mlp[0]].linear_1.irreps_out.dim == 3 * full.hidden_widths[0]
    energies, forces = mean.energy_forces(atoms)
    np.testing.assert_allclose(energies, members.mean(0), rtol=0, atol=1e-10)
    of_average = Backbone(full.model_with(phis.mean(0)), device="cpu", head=bb.head).energy_forces(atoms)[0]
    assert np.abs(of_average - members.mean(0)).max() > 1e-3   # what the mean model is not
    one = [Backbone(full.model_with(p), device="cpu", head=bb.head).energy_forces(atoms)[1] for p in phis]
    for c in range(len(atoms)):
        np.testing.assert_allclose(forces[c], np.mean([f[c] for f in one], axis=0), rtol=0, atol=1e-10)


@pytest.mark.parametrize("heads", [None, ["pbe", "dmc"]], ids=["one-head", "two-heads"])
def test_energy_jacobians_are_those_of_reverse_mode(heads):
    """Each atom's gradient ∂ε_i/∂φ, taken atom by atom in chunks, and the configurations' ∂E/∂φ
    summed from them, equal torch's Jacobian of the energies (the whitening and τ's ω part use them)."""
    bb = Backbone(tiny_mace(heads=heads, scale_shift=heads is None), device="cpu", head=heads and heads[1])
    full = FullReadout(bb)
    a, e, h, index = full.tensors(full.inputs(h3_set(5, seed=2)))
    phi = torch.as_tensor(full.phi0 + 0.2 * np.random.default_rng(4).normal(size=full.n_params))
    nodes = torch.func.jacrev(lambda p: full.node_energies(p, h))(phi)
    np.testing.assert_allclose(full.node_jacobian(phi, h, chunk=4), nodes, rtol=0, atol=1e-12)
    configs = torch.func.jacrev(lambda p: full.energies_t(p, a, e, h, index))(phi)
    np.testing.assert_allclose(full.energy_jacobian_t(phi, a, h, index, chunk=4), configs, rtol=0, atol=1e-12)


def test_one_step_lowers_the_loss(setup):
    bb, full, atoms, inputs, graph, data, *_ = setup
    c = committee(full)
    problem, weights, centres, scale = c.problem(data, graph, 1)
    w = torch.as_tensor(weights[0])
    with torch.no_grad():
        start = float(problem.value(torch.as_tensor(centres[0]), w))   # the prior term is zero there
    _, after, steps, _ = c.minimise(problem, weights[0], centres[0], scale, max_steps=1)
    assert steps == 1 and after < start


def test_with_w1_frozen_full_finds_the_linear_exact_solution(setup):
    """Frozen W1 leaves the linear class's convex problem; L-BFGS and the polish must reach Newton's
    minimiser, to round-off (7e-15 eV here; 1.5e-8 eV where L-BFGS's tolerance left it)."""
    bb, full, atoms, inputs, graph, data, *_ = setup
    settings = dict(size=3, noise_floor=0.002, force_weight=1.0, force_threshold=0.05)
    moment = feature_moment(inputs.features)
    linear = make_committee(bb.theta0, **settings).fit(data, 1, moment=moment)
    frozen = FullCommittee(full, make_committee(bb.theta0, **settings), freeze_inner=True).fit(data, graph, 1, moment)
    assert (frozen.gradient_ <= frozen.tolerance).all()
    np.testing.assert_allclose(frozen.objective_, linear.objective_, rtol=1e-11)
    np.testing.assert_allclose(frozen.member_energies(inputs), linear.member_energies(inputs.features), atol=1e-11)
    np.testing.assert_array_equal(frozen.phis_[:, full.inner_slice], np.tile(full.phi0[full.inner_slice], (3, 1)))


def test_the_linearised_posterior_with_w1_frozen_is_the_linear_classs(setup):
    """With W1 frozen the energy is linear in θ: `targeted`'s inputs for `full` (Σ, linearised at the
    members' mean, and the rows ∂E/∂φ) are then the linear class's Σ and features, the force
    penalty's exact Hessian included (its threshold is crossed here); ω has no variance."""
    bb, full, atoms, inputs, graph, data, *_ = setup
    settings = dict(size=3, noise_floor=0.002, force_weight=1.0, force_threshold=0.05)
    moment = feature_moment(inputs.features)
    linear = make_committee(bb.theta0, **settings).fit(data, 1, moment=moment)
    frozen = FullCommittee(full, make_committee(bb.theta0, **settings), freeze_inner=True).fit(data, graph, 1, moment)
    problem = frozen.problem(data, graph, 1, moment)[0]
    assert float(problem.excess(torch.as_tensor(frozen.phis_.mean(0))).max()) > 0   # the penalty has curvature
    sigma = frozen.posterior_covariance(data, graph, 1, moment)
    theta = slice(0, full.n_theta)
    np.testing.assert_allclose(sigma[theta, theta], linear.posterior_covariance(data, moment), rtol=1e-6, atol=1e-12)
    assert not sigma[full.inner_slice].any()
    np.testing.assert_allclose(frozen.energy_rows(inputs)[:, theta], inputs.features.a, rtol=0, atol=1e-10)


def test_the_linearised_posterior_knows_a_label_to_its_error_bar(setup):
    """Trained W1 and all: Σ is a covariance, and a labelled configuration's energy, linearised at
    the members' mean, is known to at most its label's variance (σ² + σ_floor²), unlabelled
    configurations less well."""
    bb, full, atoms, inputs, graph, data, *_ = setup
    c = committee(full, prior_sigma=0.1, size=3).fit(data, graph, 1)
    sigma = c.posterior_covariance(data, graph, 1)
    np.testing.assert_array_equal(sigma, sigma.T)
    assert np.linalg.eigvalsh(sigma).min() > 0
    rows = c.energy_rows(inputs)
    labelled = np.einsum("ip,pq,iq->i", rows, sigma, rows)
    assert (labelled <= data.sigma**2 + 0.002**2).all()
    others = c.energy_rows(full.inputs(h3_set(10, seed=11)))
    assert np.median(np.einsum("ip,pq,iq->i", others, sigma, others)) > np.median(labelled)


def test_forces_inside_the_threshold_cost_nothing(setup):
    """With every ‖ΔF‖ inside t the force term is zero: the fit is that without forces, and the
    members' forces stay within t."""
    bb, full, atoms, inputs, graph, data, *_ = setup
    wide = committee(full, force_threshold=50.0).fit(data, graph, 1)
    free = committee(full, force_weight=0.0).fit(data, graph, 1)
    np.testing.assert_allclose(wide.objective_, free.objective_, rtol=1e-9)
    np.testing.assert_allclose(wide.member_energies(inputs), free.member_energies(inputs), atol=1e-6)
    problem = committee(full, force_threshold=50.0).problem(data, graph, 1)[0]
    for phi in wide.phis_:
        norms = np.linalg.norm(forces_at(problem, data, phi) - data.f_lf, axis=1)
        assert norms.max() < 50.0


def test_a_weak_prior_converges_because_each_round_is_whitened_afresh(setup):
    """At a weak prior (τ = 0.5 eV/atom) W1 moves far and the curvature with it: L-BFGS whitened once
    at the prior centre stalls (it needed 1269 and over 2000 steps here), re-whitened every
    `round_steps` it converges (173 and 434)."""
    bb, full, atoms, inputs, graph, data, *_ = setup
    rounds = committee(full, size=2, prior_sigma=0.5)
    rounds.max_steps = 600
    rounds.fit(data, graph, 1)
    assert (rounds.lbfgs_steps_ < 600).all() and (rounds.gradient_ <= rounds.tolerance).all()
    once = committee(full, size=2, prior_sigma=0.5)
    once.max_steps = once.round_steps = 600
    once.newton_steps = 0   # L-BFGS's own stopping point
    with pytest.raises(NotConverged, match="L-BFGS stopped after"):
        once.fit(data, graph, 1)


def test_the_fit_ends_at_the_minimiser_not_where_lbfgs_stopped(setup):
    """Newton's polish takes a member from wherever L-BFGS's tolerance left it to the minimiser itself:
    fits stopped at gradients 1e-3 and 1e-6 give the same energies, which without it they do not (1e-3 and 1e-5)
    (this is what lets fits whose sums add in another order, CUDA's or more threads', agree)."""
    bb, full, atoms, inputs, graph, data, *_ = setup

    def energies(tolerance, newton_steps):
        c = committee(full, size=2, prior_sigma=0.1)
        c.tolerance, c.newton_steps = tolerance, newton_steps
        c.fit(data, graph, 1)
        return c.member_energies(inputs), c.gradient_

    (loose, g_loose), (tight, g_tight) = energies(1e-3, 6), energies(1e-6, 6)
    assert (g_loose < 1e-9).all() and (g_tight < 1e-9).all()
    np.testing.assert_allclose(loose, tight, rtol=0, atol=1e-9)
    (loose, _), (tight, _) = energies(1e-3, 0), energies(1e-5, 0)   # L-BFGS alone reaches no further here
    assert np.abs(loose - tight).max() > 1e-7


def test_a_fit_where_lbfgs_stalls_at_round_off_is_finished_by_newton(setup):
    """Below L-BFGS's reach (a gradient of 1e-10: J's changes are then under its round-off) the
    polish still converges; without it the fit stops short (a MoS2 member at 150 labels stalled at
    1.1e-5 against 1e-5 this way)."""
    bb, full, atoms, inputs, graph, data, *_ = setup
    c = committee(full, size=2, prior_sigma=0.1)
    c.tolerance = 1e-10
    assert (c.fit(data, graph, 1).gradient_ <= 1e-10).all()
    c.newton_steps = 0
    with pytest.raises(NotConverged, match="L-BFGS stopped after"):
        c.fit(data, graph, 1)


def test_full_fits_the_labels_better_than_linear_and_saves(setup, tmp_path):
    bb, full, atoms, inputs, graph, data, *_ = setup
    c = committee(full, size=2).fit(data, graph, 1)
    linear = make_committee(bb.theta0, size=2, noise_floor=0.002, force_weight=1.0, force_threshold=0.05).fit(data, 1)
    assert (c.objective_ < linear.objective_).all()   # the same loss over a superset of the parameters
    c.save(tmp_path / "c.npz")
    loaded = committee(full, size=2).load(tmp_path / "c.npz")
    np.testing.assert_array_equal(loaded.predict(inputs)[0], c.predict(inputs)[0])
    with pytest.raises(ValueError, match="finetune.readout: full or kind: delta; the campaign says linear"):
        make_committee(bb.theta0, size=2).load(tmp_path / "c.npz")
    linear.save(tmp_path / "l.npz")
    with pytest.raises(ValueError, match="finetune.readout: linear; the campaign says full"):
        committee(full, size=2).load(tmp_path / "l.npz")


def test_a_model_whose_readouts_are_all_linear_is_refused():
    model = tiny_mace()
    model.readouts[1] = model.readouts[0].__class__(model.readouts[1].linear_1.irreps_in)   # a linear last readout
    with pytest.raises(ValueError, match="every readout of this model is one linear map; use finetune.readout: linear"):
        FullReadout(Backbone(model, device="cpu"))


def test_prior_sigma_auto_follows_the_correction_and_the_scatter_the_labels_hold(tmp_path):
    """`prior_sigma: auto` (MacKay's fixed point of the Laplace evidence): τ grows with the correction
    the labels hold, scatter beyond the labels' error bars becomes the model error m and scatter
    they explain does not, and a loaded committee keeps the τ and m it was fitted with."""
    bb = Backbone(tiny_mace(), device="cpu")
    full = FullReadout(bb)
    atoms = h3_set(16, seed=5)
    inputs, graph, jac = full.inputs(atoms), LabelledGraph(full, atoms), bb.force_jacobians(atoms)
    rng = np.random.default_rng(4)
    xi, noise = rng.normal(size=full.n_params), rng.normal(size=len(atoms))

    def auto(y, bars):
        data = TrainingSet.build(inputs.features, y, np.full(len(y), bars), jac, [j.f0 for j in jac], ids=np.arange(len(y)))
        return committee(full, prior_sigma="auto").fit(data, graph, 1), data

    small, _ = auto(full.energies(full.phi0 + 0.03 * xi, inputs) + 0.01 * noise, 0.01)
    large, data = auto(full.energies(full.phi0 + 0.3 * xi, inputs) + 0.01 * noise, 0.01)
    assert large.tau_ > 4 * small.tau_
    assert large.model_error_ < 0.005 and large.evidence_rounds_ < 8   # the fixed point is reached
    scattered = full.energies(full.phi0 + 0.03 * xi, inputs) + 0.05 * noise
    assert auto(scattered, 0.001)[0].model_error_ > 0.02 > auto(scattered, 0.05)[0].model_error_
    large.save(tmp_path / "auto.npz")
    loaded = committee(full, prior_sigma="auto").load(tmp_path / "auto.npz")
    assert (loaded.tau_, loaded.model_error_) == (large.tau_, large.model_error_)
    np.testing.assert_array_equal(loaded.posterior_covariance(data, graph, 1), large.posterior_covariance(data, graph, 1))


def test_a_member_that_does_not_converge_at_the_evidences_tau_sends_every_member_to_a_smaller_one(setup, tmp_path):
    """With `prior_sigma: auto`, a member with no minimiser in reach at the evidence's τ (J is not
    convex in W1) makes every member refit at τ/√2, as often as needed up to TAU_BACKOFFS; the count is
    kept with the committee. A τ the user gave is never changed: the fit says it did not converge."""
    bb, full, atoms, inputs, graph, data, *_ = setup

    def stalling_above(c, limit):
        """Members whose fit stalls (gradient 1) while τ is above `limit` (the evidence's own fits do
        not), and the τ of every member fit."""
        minimise, evidence, seen = c.minimise, c.evidence_prior, []

        def member(*args):
            phi, value, n, g = minimise(*args)
            seen.append(c.tau_)
            return phi, value, n, (1.0 if c.tau_ > limit else g)

        def evidence_prior(*args):
            c.minimise = minimise
            rounds = evidence(*args)
            c.minimise = member
            return rounds
        c.minimise, c.evidence_prior = member, evidence_prior
        return seen

    reference = committee(full, size=2, prior_sigma="auto").fit(data, graph, 1)
    evidence = reference.tau_
    c = committee(full, size=2, prior_sigma="auto")
    seen = stalling_above(c, evidence / 1.9)   # converges at τ/2, two back-offs
    c.fit(data, graph, 1)
    assert c.tau_backoffs_ == 2 and c.tau_ == pytest.approx(evidence / 2)
    assert seen[-2:] == [c.tau_, c.tau_]   # both members at the final τ
    assert (c.gradient_ <= c.tolerance).all() and reference.tau_backoffs_ == 0
    c.save(tmp_path / "c.npz")
    assert committee(full, size=2, prior_sigma="auto").load(tmp_path / "c.npz").tau_backoffs_ == 2
    hopeless = committee(full, size=2, prior_sigma="auto")
    stalling_above(hopeless, 0.0)
    with pytest.raises(NotConverged, match="the evidence's τ was .* refitted at τ smaller by √2, 3 times"):
        hopeless.fit(data, graph, 1)
    given = committee(full, size=2, prior_sigma=0.1)
    stalling_above(given, 0.05)
    with pytest.raises(NotConverged, match=r"prior_sigma \(now 0.1 eV/atom\)"):
        given.fit(data, graph, 1)
