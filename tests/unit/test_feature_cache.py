"""The on-disk feature cache: rows by candidate id, crash safety, and pool-wide work in bounded memory."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from conftest import make_committee

from aloop import acquisition, arrays
from aloop.arrays import Features, feature_moment
from aloop.feature_cache import AtomRowsCache, FeatureCache, PoolRows, stream_predict

P = 6


def random_features(n: int, rng, n_params: int = P) -> Features:
    return Features(rng.normal(size=(n, n_params)), rng.normal(size=n), rng.integers(3, 50, size=n))


def test_rows_by_id_survive_growth_and_reopening(tmp_path):
    rng = np.random.default_rng(0)
    cache = FeatureCache(tmp_path, P)
    first, later = random_features(5, rng), random_features(3, rng)
    cache.write([1, 2, 3, 4, 5], first)
    cache.write([7000, 6, 9], later)   # beyond capacity: the files grow, old rows kept
    again = FeatureCache(tmp_path, P).read([3, 9, 1, 7000])
    np.testing.assert_array_equal(again.a, np.stack([first.a[2], later.a[2], first.a[0], later.a[0]]))
    np.testing.assert_array_equal(again.n_atoms, [first.n_atoms[2], later.n_atoms[2], first.n_atoms[0], later.n_atoms[0]])
    assert cache.missing([1, 8, 6, 10**6]) == [8, 10**6]


def test_unknown_rows_and_another_backbone_are_refused(tmp_path):
    cache = FeatureCache(tmp_path, P)
    cache.write([1], random_features(1, np.random.default_rng(0)))
    with pytest.raises(KeyError, match=r"no features for candidates \[2\]"):
        cache.read([1, 2])
    with pytest.raises(ValueError, match="6 parameters, the backbone has 4"):
        FeatureCache(tmp_path, 4)


def test_a_failed_computation_keeps_the_parts_that_finished(tmp_path):
    rng = np.random.default_rng(1)
    cache = FeatureCache(tmp_path, P)
    calls = []

    def compute(chunk):
        calls.append(list(chunk))
        yield [0, 1], random_features(2, rng)
        raise RuntimeError("worker lost")

    with pytest.raises(RuntimeError, match="worker lost"):
        cache.fill(list(range(1, 11)), compute, size=4)
    assert cache.missing(range(1, 11)) == [3, 4, 5, 6, 7, 8, 9, 10]
    with pytest.raises(RuntimeError):
        cache.fill(list(range(1, 11)), compute, size=4)
    assert calls[-1] == [3, 4, 5, 6]   # only what is missing is asked for again


@pytest.fixture
def pool(tmp_path, monkeypatch):
    """A cache of 300 candidates (ids 1..300) and the same features in memory."""
    rng = np.random.default_rng(3)
    feats = random_features(300, rng)
    cache = FeatureCache(tmp_path, P)
    cache.write(list(range(1, 301)), feats)
    return cache, feats


@pytest.mark.parametrize("block", [10**6, 7])
def test_streamed_pool_work_matches_the_in_memory_arrays(pool, monkeypatch, block):
    """One block reproduces the in-memory arithmetic bit for bit (a small pool's batches do not change);
    many blocks agree to rounding."""
    monkeypatch.setattr(arrays, "BLOCK", block)
    cache, feats = pool
    ids = list(range(1, 301))
    committee = make_committee(np.zeros(P), size=4)
    committee.thetas_ = np.random.default_rng(4).normal(size=(4, P))
    rows = PoolRows(cache, ids)
    x = feats.a / feats.n_atoms[:, None]
    check = np.testing.assert_array_equal if block > 300 else np.testing.assert_allclose
    for streamed, direct in zip(stream_predict(committee, rows), committee.predict(feats)):
        check(streamed, direct)
    check(feature_moment(rows), x.T @ x / len(x))
    subset = np.array([5, 50, 299])
    check(acquisition._standardise(rows, subset), ((x - x.mean(0)) / x.std(0))[subset])
    std = committee.predict(feats)[1]
    for strategy in (acquisition.diverse, acquisition.representative):
        args = (rows, 8) if strategy is acquisition.representative else (std, rows, 8)
        on_disk = strategy(*args, rng=np.random.default_rng(5))[0]
        args = (x, 8) if strategy is acquisition.representative else (std, x, 8)
        np.testing.assert_array_equal(on_disk, strategy(*args, rng=np.random.default_rng(5))[0])


def test_the_first_batch_of_a_large_pool_clusters_a_sample(pool, monkeypatch):
    monkeypatch.setattr(acquisition, "KMEANS_SAMPLE", 50)
    cache, _ = pool
    idx, _ = acquisition.representative(PoolRows(cache, list(range(1, 301))), 12, rng=np.random.default_rng(0))
    assert len(set(idx.tolist())) == 12 and idx.min() >= 0 and idx.max() < 300


def test_pool_work_streams_in_bounded_memory(tmp_path, monkeypatch):
    """Scoring, the prior's moment and descriptor statistics of a pool never hold all its rows."""
    n, width = 40000, 40
    monkeypatch.setattr(arrays, "BLOCK", 2000)
    cache = FeatureCache(tmp_path, width)
    rng = np.random.default_rng(6)
    for lo in range(0, n, 5000):
        cache.write(list(range(lo + 1, lo + 5001)), random_features(5000, rng, width))
    rows = PoolRows(cache, list(range(1, n + 1)))
    committee = make_committee(np.zeros(width), size=8)
    committee.thetas_ = rng.normal(size=(8, width))
    tracemalloc.start()
    _, std = stream_predict(committee, rows)
    feature_moment(rows)
    acquisition.diverse(std, rows, 4, rng=np.random.default_rng(0))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    full = n * width * 8
    assert peak < full / 3, f"peak {peak / 2**20:.1f} MiB against {full / 2**20:.1f} MiB for all rows"


def test_per_atom_rows_by_id_survive_growth_and_reopening(tmp_path):
    """`readout: full`'s per-atom inputs: ragged rows by candidate id, read back in any order."""
    rng = np.random.default_rng(0)
    n_atoms = {7: 3, 2: 5, 40: 1, 3: 4}
    rows = {i: rng.normal(size=(n, 6)) for i, n in n_atoms.items()}
    cache = AtomRowsCache(tmp_path, 6)
    cache.write([7, 2], [3, 5], np.vstack([rows[7], rows[2]]))
    assert cache.missing([2, 3, 7, 40]) == [3, 40]
    AtomRowsCache(tmp_path, 6).write([40, 3], [1, 4], np.vstack([rows[40], rows[3]]))
    again = AtomRowsCache(tmp_path, 6)
    np.testing.assert_array_equal(again.read([3, 7, 40, 2]), np.vstack([rows[3], rows[7], rows[40], rows[2]]))
    with pytest.raises(KeyError, match=r"no readout inputs for candidates \[5\]"):
        again.read([5])
    with pytest.raises(ValueError, match="cached readout inputs have 6 columns, the model's MLP readout takes 4"):
        AtomRowsCache(tmp_path, 4)
