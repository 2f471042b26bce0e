"""The loss, the committee fit, and export to ordinary MACE files."""
import numpy as np
import pytest
from conftest import h3_set, make_committee, tiny_mace
from mace.calculators import MACECalculator

from aloop.arrays import Features, ForceJacobian, feature_moment
from aloop.backbone import Backbone
from aloop.campaign import CommitteeSettings, FinetuneSettings
from aloop.committee import Committee, TrainingSet, _Objective


def test_force_penalty_zero_inside_threshold_quartic_outside():
    """The loss's force term: λ Σ (‖ΔF‖² − t²)² over configurations whose ‖ΔF‖ leaves t, zero inside."""
    t, lam = 0.5, 3.0
    norms = np.array([0.0, 0.3, 0.5, 0.6, 1.0, 2.0, 100.0, 200.0])
    n = len(norms)
    # energies fitted exactly (a·θ + e = E_HF) and θ-independent forces: the loss is the penalty alone
    data = TrainingSet(Features(np.zeros((n, 1)), np.ones(n), np.ones(n, int)), np.ones(n), np.zeros(n),
                       np.c_[norms, np.zeros((n, 2))], np.zeros((n, 3, 1)), np.zeros((n, 3)), np.arange(n))
    objective = _Objective(data, 0.01, t, lam, np.zeros(1))

    def penalty(k):
        w = np.zeros(n)
        w[k] = 1.0
        return objective.value(np.zeros(1), w, np.zeros(1), 1.0)

    assert [penalty(k) for k in range(3)] == [0.0, 0.0, 0.0]
    np.testing.assert_allclose([penalty(k) for k in range(3, 6)], lam * (norms[3:6] ** 2 - t**2) ** 2)
    assert penalty(7) / penalty(6) == pytest.approx(16, rel=1e-3)   # quartic: doubling ‖ΔF‖ far outside


def test_members_made_elsewhere_predict_like_fitted_ones():
    theta0 = np.zeros(3)
    feats = Features(np.array([[1.0, 0, 0], [0, 2.0, 1.0]]), np.zeros(2), np.array([1, 2]))
    committee = make_committee(theta0, size=2).use_members([[1.0, 0, 0], [3.0, 1.0, 1.0]])
    mean, std = committee.predict(feats)
    np.testing.assert_allclose(mean, [2.0, 1.5])
    assert np.isnan(committee.objective_).all()
    with pytest.raises(ValueError, match=r"expected members of shape \(2, 3\), got \(3,\)"):
        make_committee(theta0, size=2).use_members([1.0, 2.0, 3.0])


@pytest.fixture(scope="module")
def problem():
    bb = Backbone(tiny_mace(), device="cpu")
    atoms = h3_set(80, seed=3)
    feats = bb.features(atoms)
    jac = bb.force_jacobians(atoms)
    rng = np.random.default_rng(0)
    truth = bb.theta0 + 0.3 * rng.normal(size=bb.n_params)
    truth[-1] += 1.5  # a constant offset per atom, as between DFT and CCSD(T)
    return bb, feats, jac, feats.energies(truth)


def subset(feats, idx):
    return Features(feats.a[idx], feats.e[idx], feats.n_atoms[idx])


def training_set(feats, jac, y, idx):
    idx = np.asarray(idx)
    return TrainingSet.build(subset(feats, idx), y[idx], np.zeros(len(idx)), [jac[i] for i in idx],
                             [jac[i].f0 for i in idx], ids=idx)


def fit(bb, feats, jac, y, idx, **kw):
    settings = dict(size=4, force_weight=0.0, noise_floor=0.002)
    settings.update(kw)
    return make_committee(bb.theta0, **settings).fit(training_set(feats, jac, y, idx), 1, moment=feature_moment(feats))


def test_fine_tuning_learns_the_labels_and_spread_shrinks_with_data(problem):
    bb, feats, jac, y = problem
    test = np.arange(50, 80)
    base_err = feats.energies(bb.theta0)[test] - y[test]
    few = fit(bb, feats, jac, y, np.arange(8))
    many = fit(bb, feats, jac, y, np.arange(50))
    mean, std = many.predict(subset(feats, test))
    rmse = np.sqrt(np.mean((mean - y[test]) ** 2))
    assert rmse < 0.2 * np.sqrt(np.mean((base_err - base_err.mean()) ** 2))
    assert np.median(many.predict(subset(feats, test))[1]) < np.median(few.predict(subset(feats, test))[1])


def test_force_penalty_keeps_forces_near_low_fidelity(problem):
    bb, feats, jac, y = problem
    idx = np.arange(40)
    t = 0.05
    free = fit(bb, feats, jac, y, idx, force_weight=0.0, force_threshold=t)
    held = fit(bb, feats, jac, y, idx, force_weight=1e4, force_threshold=t)
    assert np.all(free.newton_steps_ == 0) and np.all(held.newton_steps_ > 0)  # energy-only: the linear solve is exact

    def worst(committee):
        return max(np.linalg.norm(committee.member_forces(jac[i]).mean(0) - jac[i].f0) for i in idx)

    assert worst(free) > 2 * t  # the energies alone pull the forces away
    assert worst(held) < 0.6 * worst(free)


def test_each_member_is_the_minimiser_of_its_loss(problem):
    """The fit is converged, not stopped: the gradient vanishes and every nearby θ costs more."""
    bb, feats, jac, y = problem
    idx = np.arange(30)
    committee = fit(bb, feats, jac, y, idx, force_weight=100.0, force_threshold=0.05)
    data = training_set(feats, jac, y, idx)
    objective = _Objective(data, committee.noise_floor, 0.05, 100.0, bb.theta0)
    s2 = committee.prior_variance(feature_moment(feats))
    weights = committee.weights(data.ids)
    centres = committee.prior_centres(data, weights, 1, s2)
    rng = np.random.default_rng(5)
    for k in range(committee.size):
        theta, args = committee.thetas_[k], (weights[k], centres[k], s2)
        g, _ = objective.gradient_hessian(theta, *args)
        typical, _ = objective.gradient_hessian(centres[k], *args)   # the gradient at the prior's mean
        assert np.linalg.norm(g) < 1e-9 * np.linalg.norm(typical)
        value = objective.value(theta, *args)
        assert value == pytest.approx(committee.objective_[k], rel=1e-12)
        for _ in range(5):
            step = rng.normal(size=theta.shape) * 1e-3 * np.abs(theta).max()
            assert objective.value(theta + step, *args) > value


def test_fit_converges_when_the_objective_carries_round_off(problem, monkeypatch):
    """Energies of thousands of eV against meV error bars leave J with noise of about 1e-12 of its
    value (seen on H2O labels): the Newton decrement then stops shrinking near 1e-10, and the fit must
    still end, at the minimiser, instead of running out of steps."""
    bb, feats, jac, y = problem
    idx = np.arange(30)
    exact = fit(bb, feats, jac, y, idx, force_weight=100.0, force_threshold=0.05)
    clean_value, clean_gh = _Objective.value, _Objective.gradient_hessian
    rng = np.random.default_rng(0)

    def noisy_value(self, theta, w, centre, s2):
        return clean_value(self, theta, w, centre, s2) * (1 + 3e-12 * rng.normal())

    def noisy_gradient_hessian(self, theta, w, centre, s2):
        # gradient noise whose Newton decrement is 1e-10 of J: the floor the H2O fits sat on
        g, H = clean_gh(self, theta, w, centre, s2)
        z = rng.normal(size=g.shape)
        z *= np.sqrt(1e-10 * max(clean_value(self, theta, w, centre, s2), 1.0) / (z @ np.linalg.solve(H, z)))
        return g + z, H

    monkeypatch.setattr(_Objective, "value", noisy_value)
    monkeypatch.setattr(_Objective, "gradient_hessian", noisy_gradient_hessian)
    noisy = fit(bb, feats, jac, y, idx, force_weight=100.0, force_threshold=0.05)
    assert np.all(noisy.newton_steps_ < 20)
    np.testing.assert_allclose(noisy.thetas_, exact.thetas_, rtol=0, atol=1e-4 * np.abs(exact.thetas_).max())


def test_fit_does_not_depend_on_row_order_or_on_other_labels(problem):
    """Same labels in another order give the same θ (1e-8 relative); a member's weight for a label
    is tied to the label's id, so adding labels leaves the earlier ones' weights as they were."""
    bb, feats, jac, y = problem
    idx = np.arange(30)
    settings = dict(force_weight=100.0, force_threshold=0.05)
    one = fit(bb, feats, jac, y, idx, **settings)
    two = fit(bb, feats, jac, y, np.random.default_rng(3).permutation(idx), **settings)
    np.testing.assert_allclose(two.thetas_, one.thetas_, rtol=1e-8, atol=1e-8 * np.abs(one.thetas_).max())
    again = fit(bb, feats, jac, y, idx, **settings)
    np.testing.assert_array_equal(again.thetas_, one.thetas_)  # the same inputs: the same bits
    committee = make_committee(bb.theta0, size=3)
    np.testing.assert_array_equal(committee.weights(np.arange(20))[:, :10], committee.weights(np.arange(10)))
    other_seed = make_committee(bb.theta0, size=3, seed=1)
    assert not np.allclose(other_seed.weights(np.arange(10)), committee.weights(np.arange(10)))


def test_a_committee_needs_two_members(problem):
    bb, *_ = problem
    with pytest.raises(ValueError, match="at least 2"):   # the schema refuses it too; the class must as well
        Committee.from_settings(bb.theta0, CommitteeSettings.model_construct(size=1), FinetuneSettings())


def test_export_loads_in_mace_calculator_with_member_energies(problem, tmp_path):
    bb, feats, jac, y = problem
    committee = fit(bb, feats, jac, y, np.arange(20))
    atoms = h3_set(5, seed=9)
    expected = committee.member_energies(bb.features(atoms))
    for k in (0, 3):
        path = bb.export(committee.thetas_[k], tmp_path / f"m{k}.model")
        calc = MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")
        for i, a in enumerate(atoms):
            a.calc = calc
            assert a.get_potential_energy() == pytest.approx(expected[k, i], abs=1e-10)


def test_predict_before_fit_and_checkpoint_round_trip(problem, tmp_path):
    bb, feats, jac, y = problem
    with pytest.raises(RuntimeError, match="before fit"):
        make_committee(bb.theta0).predict(feats)
    committee = fit(bb, feats, jac, y, np.arange(10))
    committee.save(tmp_path / "c.npz")
    again = make_committee(bb.theta0).load(tmp_path / "c.npz")
    np.testing.assert_array_equal(again.thetas_, committee.thetas_)
    with pytest.raises(ValueError, match="different base model"):
        make_committee(bb.theta0 + 1).load(tmp_path / "c.npz")
    np.savez(tmp_path / "old.npz", thetas=committee.thetas_, theta0=bb.theta0, val_score=np.zeros(4))
    with pytest.raises(ValueError, match="earlier aloop"):
        make_committee(bb.theta0).load(tmp_path / "old.npz")


def test_force_threshold_per_atom_is_the_value_times_root_n(problem):
    """Per atom, a configuration of N atoms has the threshold t √N: on 3-atom configurations the fit
    is the one with t √3; with N mixed, each configuration gets its own."""
    bb, feats, jac, y = problem
    idx = np.arange(30)
    per_atom = fit(bb, feats, jac, y, idx, force_weight=100.0, force_threshold_per_atom=0.03)
    whole = fit(bb, feats, jac, y, idx, force_weight=100.0, force_threshold=0.03 * np.sqrt(3))
    assert np.all(per_atom.newton_steps_ > 0)   # the threshold is active, so it matters
    np.testing.assert_allclose(per_atom.thetas_, whole.thetas_, rtol=1e-9, atol=1e-12)
    P = 2
    mixed = TrainingSet(Features(np.zeros((2, P)), np.zeros(2), np.array([3, 12])), np.zeros(2), np.zeros(2),
                        np.zeros((2, 36)), np.zeros((2, 36, P)), np.zeros((2, 36)))
    np.testing.assert_allclose(_Objective(mixed, 0.005, 0.1, 1.0, np.zeros(P), per_atom=True).t2, [0.03, 0.12])
    assert _Objective(mixed, 0.005, 0.1, 1.0, np.zeros(P)).t2 == pytest.approx(0.01)


def synthetic_labels(n: int, tau: float, model_error: float, seed: int = 0):
    """A linear problem drawn from the evidence's own model: θ ~ N(θ0, s² I) with s² = τ²/tr(G),
    labels with a 10 meV error bar, plus a model error of that size per configuration."""
    rng = np.random.default_rng(seed)
    P, n_atoms = 40, np.full(n, 4)
    a = np.hstack([rng.normal(size=(n, P - 1)), n_atoms[:, None]])   # the last column: E0's atom count
    feats = Features(a, np.zeros(n), n_atoms)
    theta0 = np.zeros(P)
    trace = float(np.trace(feature_moment(feats)))
    truth = theta0 + tau / np.sqrt(trace) * rng.normal(size=P)
    sigma = np.full(n, 0.01)
    y = feats.energies(truth) + sigma * rng.normal(size=n) + model_error * rng.normal(size=n)
    jac = [ForceJacobian(np.zeros((1, 3)), np.zeros((1, 3, P))) for _ in range(n)]
    return theta0, TrainingSet.build(feats, y, sigma, jac, [j.f0 for j in jac], ids=np.arange(n)), trace


@pytest.mark.parametrize("model_error", [0.0, 0.2])
def test_evidence_recovers_the_prior_width_and_the_model_error(model_error):
    """On labels drawn from the evidence's own model, `prior_sigma: auto` finds the τ and the model
    error they were drawn with; with no model error it finds none worth the name."""
    theta0, data, trace = synthetic_labels(4000, tau=0.8, model_error=model_error)
    committee = make_committee(theta0, prior_sigma="auto", noise_floor=1e-4).fit(data, 1)
    # one draw of θ holds 40 numbers, so τ is known to about 1/√(2·40) of itself
    assert 0.8 / 1.3 < committee.tau_ < 0.8 * 1.3
    if model_error:
        assert committee.model_error_ == pytest.approx(model_error, rel=0.1)
    else:
        assert committee.model_error_ < 0.003
    assert committee.effective_floor == pytest.approx(np.hypot(1e-4, committee.model_error_))


def test_a_given_prior_sigma_is_used_as_given_and_auto_round_trips(tmp_path):
    theta0, data, _ = synthetic_labels(200, tau=0.8, model_error=0.2)
    fixed = make_committee(theta0, prior_sigma=0.05, noise_floor=1e-4).fit(data, 1)
    assert fixed.tau_ == 0.05 and fixed.model_error_ == 0.0
    auto = make_committee(theta0, prior_sigma="auto", noise_floor=1e-4).fit(data, 1)
    auto.save(tmp_path / "c.npz")
    again = make_committee(theta0, prior_sigma="auto", noise_floor=1e-4).load(tmp_path / "c.npz")
    assert (again.tau_, again.model_error_) == (auto.tau_, auto.model_error_)
    np.testing.assert_allclose(again.posterior_covariance(data), auto.posterior_covariance(data))
    with pytest.raises(ValueError, match="prior_sigma must be a positive number"):
        Committee(theta0, size=2, bootstrap=False, prior_sigma="evidence", force_threshold=1.0, force_weight=0.0,
                  noise_floor=0.0, seed=0)


def test_leave_one_out_is_the_committee_fitted_without_the_label():
    """Each label's leave-one-out error and σ are what the committee fitted without that label
    predicts for it (the E0 shift of the prior centre, held fixed, moves it by less than 1e-6 here)."""
    theta0, data, _ = synthetic_labels(120, tau=0.8, model_error=0.05)
    moment = feature_moment(data.features)
    settings = dict(size=64, bootstrap=False, prior_sigma=0.8, noise_floor=1e-3)
    committee = make_committee(theta0, **settings).fit(data, 1, moment=moment)
    err, sigma = committee.leave_one_out(data, moment)
    mean, std = committee.predict(data.features)
    assert np.all(np.abs(err) >= np.abs(data.energy - mean)) and np.all(sigma > std)
    for i in (0, 17, 64, 119):
        rest = np.delete(np.arange(120), i)
        without = TrainingSet(Features(data.features.a[rest], data.features.e[rest], data.features.n_atoms[rest]),
                              data.energy[rest], data.sigma[rest], data.f0[rest], data.B[rest], data.f_lf[rest], rest)
        alone = Features(data.features.a[[i]], data.features.e[[i]], data.features.n_atoms[[i]])
        m_i, s_i = make_committee(theta0, **settings).fit(without, 1, moment=moment).predict(alone)
        assert err[i] == pytest.approx(data.energy[i] - m_i[0], rel=1e-5)
        assert sigma[i] == pytest.approx(s_i[0], rel=1e-5)


def test_repeated_labels_of_one_configuration_leave_together():
    """A repeat left in would answer for the label left out: the leave-one-out error of a repeated
    configuration is that of the committee fitted without all its labels."""
    theta0, data, _ = synthetic_labels(120, tau=0.8, model_error=0.05)
    twice = np.r_[np.arange(120), [3, 3, 50]]   # configuration 3 labelled three times, 50 twice
    noise = np.r_[np.zeros(120), [0.02, -0.03, 0.01]]
    repeated = TrainingSet(Features(data.features.a[twice], data.features.e[twice], data.features.n_atoms[twice]),
                           data.energy[twice] + noise, data.sigma[twice], data.f0[twice], data.B[twice],
                           data.f_lf[twice], np.arange(len(twice)))
    moment = feature_moment(data.features)
    settings = dict(size=64, bootstrap=False, prior_sigma=0.8, noise_floor=1e-3)
    committee = make_committee(theta0, **settings).fit(repeated, 1, moment=moment)
    err, sigma = committee.leave_one_out(repeated, moment, groups=twice)
    for config, rows in ((3, [3, 120, 121]), (50, [50, 122])):
        keep = np.flatnonzero(twice != config)
        without = TrainingSet(Features(repeated.features.a[keep], repeated.features.e[keep], repeated.features.n_atoms[keep]),
                              repeated.energy[keep], repeated.sigma[keep], repeated.f0[keep], repeated.B[keep],
                              repeated.f_lf[keep], keep)
        alone = Features(data.features.a[[config]], data.features.e[[config]], data.features.n_atoms[[config]])
        m, s = make_committee(theta0, **settings).fit(without, 1, moment=moment).predict(alone)
        np.testing.assert_allclose(err[rows], repeated.energy[rows] - m[0], rtol=1e-5)
        np.testing.assert_allclose(sigma[rows], s[0], rtol=1e-5)


def test_leave_one_out_errors_give_the_scale_that_new_labels_call_for():
    """Fitted on the leave-one-out errors, the σ scale is the one that errors on new labels of the
    same kind call for (a little above it: each left-out fit has one label fewer; 1.01-1.18 times
    over five draws and 8 or 32 members); fitted on the labels' own residuals it would be too small."""
    from aloop.metrics import sigma_scale

    # a model error the committee (τ given, no evidence) does not know of: it must be calibrated
    theta0, everything, _ = synthetic_labels(2120, tau=0.8, model_error=0.05, seed=1)
    fitted, new = np.arange(120), np.arange(120, 2120)

    def rows(idx):
        d = everything
        return TrainingSet(Features(d.features.a[idx], d.features.e[idx], d.features.n_atoms[idx]), d.energy[idx],
                           d.sigma[idx], d.f0[idx], d.B[idx], d.f_lf[idx], idx)

    data, test = rows(fitted), rows(new)
    committee = make_committee(theta0, size=32, prior_sigma=0.8, noise_floor=1e-3).fit(data, 1)
    mean, std = committee.predict(test.features)
    wanted = sigma_scale(test.energy - mean, std, test.sigma)
    assert wanted > 1.2   # the committee does need widening
    assert sigma_scale(*committee.leave_one_out(data), data.sigma) == pytest.approx(wanted, rel=0.2)
    mean, std = committee.predict(data.features)
    assert sigma_scale(data.energy - mean, std, data.sigma) < 0.85 * wanted
