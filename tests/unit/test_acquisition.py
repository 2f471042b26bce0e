import numpy as np
import pytest

from aloop import acquisition


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
