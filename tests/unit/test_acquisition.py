import numpy as np
import pytest
from conftest import make_committee

from aloop import acquisition
from aloop.arrays import Features
from aloop.committee import TrainingSet


def two_clusters():
    rng = np.random.default_rng(0)
    desc = np.vstack([rng.normal(0, 0.1, (30, 3)), rng.normal(5, 0.1, (30, 3))])
    std = np.concatenate([rng.uniform(0.5, 1.0, 30), rng.uniform(0.3, 0.45, 30)])  # cluster A more uncertain
    return std, desc


def test_max_std_takes_the_most_uncertain():
    std, desc = two_clusters()
    idx, scores = acquisition.max_std(std, desc, 4, rng=np.random.default_rng(0))
    assert set(idx) == set(np.argsort(-std)[:4])
    assert np.all(np.diff(scores) <= 0)


def test_diverse_spreads_the_batch_over_clusters():
    std, desc = two_clusters()
    idx, _ = acquisition.diverse(std, desc, 2, rng=np.random.default_rng(0), oversample=30)
    assert {int(i) >= 30 for i in idx} == {True, False}  # one from each cluster
    top, _ = acquisition.max_std(std, desc, 2, rng=np.random.default_rng(0))
    assert all(i < 30 for i in top)  # max_std alone stays in the uncertain cluster


def test_random_is_seeded_unique_and_clipped():
    std, desc = two_clusters()
    a, _ = acquisition.random(std, desc, 10, rng=np.random.default_rng(5))
    b, _ = acquisition.random(std, desc, 10, rng=np.random.default_rng(5))
    assert list(a) == list(b) and len(set(a)) == 10
    assert len(acquisition.max_std(std[:3], desc[:3], 10, rng=np.random.default_rng(0))[0]) == 3
    with pytest.raises(ValueError, match="batch size"):
        acquisition.max_std(std, desc, 0, rng=np.random.default_rng(0))


def test_representative_covers_both_clusters_without_repeats():
    _, desc = two_clusters()
    idx, scores = acquisition.representative(desc, 4, rng=np.random.default_rng(0))
    assert len(set(idx)) == 4 and np.all(scores == 0)
    assert any(i < 30 for i in idx) and any(i >= 30 for i in idx)


# --- targeted acquisition: the closed form against refitting ---------------------------------------

P, WIDTH = 5, 6   # parameters; force components of a 2-atom configuration


def labelled_set(a, sigma, rng, active_forces=True):
    """Labels on rows `a` with force Jacobians; the low-fidelity forces far from the model's when
    `active_forces`, so the penalty's Hessian takes part."""
    n = len(a)
    B = rng.normal(size=(n, WIDTH, P))
    f_lf = rng.normal(scale=3.0, size=(n, WIDTH)) if active_forces else np.zeros((n, WIDTH))
    feats = Features(np.asarray(a, float), rng.normal(size=n), np.full(n, 2))
    return TrainingSet(feats, rng.normal(size=n), np.asarray(sigma, float), np.zeros((n, WIDTH)), B, f_lf,
                       ids=np.arange(n))


def with_label(data: TrainingSet, a_x, sigma_x) -> TrainingSet:
    """`data` plus one label on row a_x whose forces stay inside the threshold (ΔF = 0)."""
    f = data.features
    feats = Features(np.vstack([f.a, a_x]), np.append(f.e, 0.0), np.append(f.n_atoms, 2))
    return TrainingSet(feats, np.append(data.energy, 0.0), np.append(data.sigma, sigma_x),
                       np.vstack([data.f0, np.zeros(WIDTH)]), np.concatenate([data.B, np.zeros((1, WIDTH, P))]),
                       np.vstack([data.f_lf, np.zeros(WIDTH)]), ids=np.append(data.ids, len(data.ids)))


@pytest.fixture
def posterior_problem():
    rng = np.random.default_rng(7)
    data = labelled_set(rng.normal(size=(4, P)), [0.01, 0.0, 0.02, 0.0], rng)
    committee = make_committee(np.zeros(P), size=3, force_threshold=0.5, force_weight=0.3, noise_floor=0.01,
                               prior_sigma=0.3).fit(data, 1, moment=np.eye(P))
    pool = rng.normal(size=(40, P))
    direction = pool[3] - pool[0]   # an observable: the energy difference of two configurations
    return committee, data, pool, direction


def refit_variance(committee, data, direction) -> float:
    return float(direction @ committee.posterior_covariance(data, moment=np.eye(P)) @ direction)


def test_the_force_penalty_takes_part_in_the_posterior(posterior_problem):
    committee, data, _, direction = posterior_problem
    quiet = make_committee(np.zeros(P), size=3, force_threshold=0.5, force_weight=0.0, noise_floor=0.01,
                           prior_sigma=0.3).use_members(committee.thetas_)
    assert refit_variance(committee, data, direction) < 0.99 * refit_variance(quiet, data, direction)


def test_targeted_score_is_the_variance_a_refit_loses(posterior_problem):
    committee, data, pool, direction = posterior_problem
    noise_sigma = 0.03   # label σ; the fit adds the noise floor in quadrature
    noise = noise_sigma**2 + committee.noise_floor**2
    sigma = committee.posterior_covariance(data, moment=np.eye(P))
    idx, scores = acquisition.targeted(np.ones(len(pool)), pool, 2, rng=np.random.default_rng(0), sigma=sigma,
                                       directions=direction[None], noise=noise, rows=pool)
    before = refit_variance(committee, data, direction)
    one = with_label(data, pool[idx[0]], noise_sigma)
    after_one = refit_variance(committee, one, direction)
    assert scores[0] == pytest.approx(before - after_one, rel=1e-10)
    # no other candidate would have lowered the variance more
    best = max(before - refit_variance(committee, with_label(data, a, noise_sigma), direction) for a in pool)
    assert scores[0] == pytest.approx(best, rel=1e-10)
    # the second pick is scored given the first: its brute-force reduction with the first added
    after_two = refit_variance(committee, with_label(one, pool[idx[1]], noise_sigma), direction)
    assert scores[1] == pytest.approx(after_one - after_two, rel=1e-10)


def summed_variance(S, D) -> float:
    return float(np.einsum("tp,pq,tq->", D, S, D))


def conditioned(S, a, noise):
    g = S @ a
    return S - np.outer(g, g) / (noise + a @ g)


def test_the_configurations_a_target_reads_carry_their_model_error(posterior_problem, monkeypatch):
    # the evidence's model error m is a misfit at a configuration: labelling the very configuration
    # a target reads measures it, which no other label does and the posterior over θ cannot see
    committee, data, pool, direction = posterior_problem   # direction reads pool[3] (+) and pool[0] (−)
    sigma = committee.posterior_covariance(data, moment=np.eye(P))
    m2, noise = 0.2**2, 0.03**2 + committee.noise_floor**2
    rng = np.random.default_rng(0)
    plain = acquisition.own_scores("targeted", np.ones(40), sigma=sigma, directions=direction[None],
                                   noise=noise + m2, rows=pool)
    read = acquisition.with_read_errors(sigma, direction[None], noise + m2, pool, [[(1.0, 3), (-1.0, 0)]], m2)
    own = acquisition.own_scores("targeted", np.ones(40), **read)
    # a read point adds its own misfit, m⁴/(its variance + m² + noise), to what it tells of θ
    for x in (3, 0):
        assert own[x] == pytest.approx(plain[x] + m2**2 / (noise + m2 + pool[x] @ sigma @ pool[x]), rel=1e-10)
    others = np.setdiff1d(np.arange(40), [0, 3])
    np.testing.assert_allclose(own[others], plain[others], rtol=1e-12)
    assert np.argmax(plain) not in (0, 3)   # without the model error neither read point comes first
    monkeypatch.setattr(acquisition, "blocks", lambda n: (slice(lo, min(lo + 7, n)) for lo in range(0, n, 7)))
    idx, scores = acquisition.targeted(np.ones(40), None, 4, rng=rng, **read)
    assert set(idx[:2]) == {0, 3}
    # each pick is scored given the ones before, in the widened Gaussian (θ, δ3, δ0)
    S, D = read["sigma"], read["directions"]
    for x, score in zip(idx, scores):
        a, n = read["rows"][[x]][0], read["noise"][x]
        after = conditioned(S, a, n)
        assert score == pytest.approx(summed_variance(S, D) - summed_variance(after, D), rel=1e-9)
        S = after


def test_targeted_does_not_take_a_copy_of_its_first_pick():
    # two identical candidates carry the information once: after one is labelled (conditioning) the
    # other's value drops, while an unconditioned ranking would take both
    a = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    sigma = np.eye(2)
    direction = np.array([[1.0, 0.9]])
    idx, scores = acquisition.targeted(np.ones(3), a, 2, rng=np.random.default_rng(0), sigma=sigma,
                                       directions=direction, noise=0.01, rows=a)
    assert set(idx) == {0, 2} and scores[0] > scores[1] > 0


def test_a_costlier_candidate_of_equal_information_ranks_lower():
    a = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.1]])   # candidates 0 and 1: the same information
    kwargs = dict(rng=np.random.default_rng(0), sigma=np.eye(2), directions=np.array([[1.0, 0.0]]), noise=0.01, rows=a)
    assert acquisition.targeted(np.ones(3), a, 1, **kwargs, cost=np.array([5.0, 1.0, 1.0]))[0][0] == 1
    assert acquisition.targeted(np.ones(3), a, 1, **kwargs, cost=np.array([1.0, 5.0, 1.0]))[0][0] == 0
    std = np.array([0.2, 0.2, 0.1])
    assert acquisition.max_std(std, a, 1, rng=np.random.default_rng(0), cost=np.array([3.0, 1.0, 1.0]))[0][0] == 1
    # the cost makes the cheap, less informative candidate the better buy
    assert acquisition.max_std(std, a, 1, rng=np.random.default_rng(0), cost=np.array([3.0, 3.0, 1.0]))[0][0] == 2


def test_targeted_streams_the_pool_in_blocks(monkeypatch):
    rng = np.random.default_rng(1)
    pool = rng.normal(size=(50, 3))
    kwargs = dict(rng=np.random.default_rng(0), sigma=np.diag([1.0, 2.0, 0.5]), directions=rng.normal(size=(2, 3)),
                  noise=0.05, rows=pool)
    whole = acquisition.targeted(np.ones(50), pool, 4, **kwargs)
    monkeypatch.setattr(acquisition, "blocks", lambda n: (slice(lo, min(lo + 7, n)) for lo in range(0, n, 7)))
    streamed = acquisition.targeted(np.ones(50), pool, 4, **kwargs)
    assert list(whole[0]) == list(streamed[0])
    np.testing.assert_allclose(whole[1], streamed[1], rtol=1e-12)


def test_targeted_reuses_products_computed_once_and_leaves_them_as_they_were():
    # re-ranking a queue needs the batch and every candidate's own score from one pass over the pool
    rng = np.random.default_rng(2)
    pool = rng.normal(size=(40, 3))
    kwargs = dict(rng=np.random.default_rng(0), sigma=np.diag([1.0, 2.0, 0.5]), directions=rng.normal(size=(2, 3)),
                  noise=0.05, rows=pool)
    products = acquisition.posterior_products(kwargs["sigma"], kwargs["directions"], pool)
    kept = tuple(p.copy() for p in products)
    fresh = acquisition.targeted(np.ones(40), pool, 4, **kwargs)
    reused = acquisition.targeted(np.ones(40), pool, 4, **kwargs, products=products)
    assert list(fresh[0]) == list(reused[0])
    np.testing.assert_allclose(fresh[1], reused[1], rtol=1e-12)
    for before, after in zip(kept, products):
        np.testing.assert_array_equal(before, after)
    own = acquisition.own_scores("targeted", np.ones(40), **{k: v for k, v in kwargs.items() if k != "rng"})
    np.testing.assert_allclose(acquisition.own_scores("targeted", np.ones(40), noise=0.05, products=products), own)
    assert own[fresh[0][0]] == pytest.approx(fresh[1][0])   # the first pick is the best on its own


def test_a_common_scale_of_posterior_and_noise_picks_the_same_batch():
    # docs/method.md: Σ is not rescaled alone, because only its ratio to the label noise ranks
    rng = np.random.default_rng(3)
    pool = rng.normal(size=(30, 4))
    M = rng.normal(size=(4, 4))
    kwargs = dict(rng=np.random.default_rng(0), directions=rng.normal(size=(1, 4)), rows=pool,
                  cost=rng.uniform(1, 3, 30))
    idx, scores = acquisition.targeted(np.ones(30), pool, 5, sigma=M @ M.T, noise=0.3, **kwargs)
    idx7, scores7 = acquisition.targeted(np.ones(30), pool, 5, sigma=7 * M @ M.T, noise=2.1, **kwargs)
    assert list(idx) == list(idx7)
    np.testing.assert_allclose(scores7, 7 * scores, rtol=1e-10)
    other, _ = acquisition.targeted(np.ones(30), pool, 5, sigma=7 * M @ M.T, noise=0.3, **kwargs)
    assert list(other) != list(idx)   # Σ scaled alone: another batch
