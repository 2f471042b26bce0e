"""Re-ranking waiting jobs: the cut-off of a fresh batch, who is cancellable, what may replace them,
and queue/cancel.txt."""
from __future__ import annotations


import numpy as np
import pytest

from aloop import acquisition
from aloop.rerank import CANCEL_FILE, CancelLine, read_cancel, rerank, write_cancel

# rows 0–3: the pool; rows 4–6: waiting jobs, the first two chosen by an older committee
STD = np.array([0.5, 0.4, 0.1, 0.05, 0.02, 0.45, 0.03])
WAITING = np.array([4, 5, 6])
STALE = [True, True, False]


def rerank_with(strategy, std, descriptors, waiting, stale, budget, seed=0, **extra):
    """What the loop does: the strategy's fresh batch of len(waiting), then rerank on own scores."""
    batch, _ = strategy(std, descriptors, len(waiting), rng=np.random.default_rng(seed), **extra)
    own = acquisition.own_scores(strategy.__name__, std, **{k: v for k, v in extra.items() if k != "cost"})
    return rerank(own, acquisition.per_cost(own, extra.get("cost")), batch, waiting, stale, budget)


def test_max_std_cutoff_and_cancellable_jobs():
    out = rerank_with(acquisition.max_std, STD, np.zeros((7, 2)), WAITING, STALE, budget=5)
    assert out.cutoff == 0.4                       # a fresh batch of 3: 0.5, 0.45, 0.4
    assert list(out.new_scores) == [0.02, 0.45, 0.03]
    # row 4 falls below; row 6 too, but the newest committee chose it just now
    assert out.cancellable == [0]
    assert out.replacements == [0]                 # one cancellable job, one replacement: the best pool row


def test_replacements_stay_within_the_budget_and_never_take_a_waiting_job():
    args = (acquisition.max_std, STD, np.zeros((7, 2)), WAITING, [True, True, True])
    assert rerank_with(*args, budget=0).replacements == []
    assert rerank_with(*args, budget=-3).replacements == []
    rng = np.random.default_rng(5)
    for _ in range(50):
        std = rng.random(30)
        waiting = rng.choice(30, size=6, replace=False)
        out = rerank_with(acquisition.max_std, std, np.zeros((30, 2)), waiting, [True] * 6, budget=4)
        assert not set(out.replacements) & set(waiting.tolist())
        assert len(out.replacements) <= min(len(out.cancellable), 4)
        assert all(std[waiting[j]] < out.cutoff for j in out.cancellable)
        assert all(std[r] >= out.cutoff for r in out.replacements)


def test_diverse_cutoff_is_the_lowest_score_of_its_own_fresh_batch():
    rng = np.random.default_rng(1)
    std, x = rng.random(40), rng.normal(size=(40, 3))
    waiting = np.arange(34, 40)
    out = rerank_with(acquisition.diverse, std, x, waiting, [True] * 6, budget=0, seed=2)
    _, scores = acquisition.diverse(std, x, 6, rng=np.random.default_rng(2))
    assert out.cutoff == scores.min()
    assert out.cancellable == [j for j in range(6) if std[waiting[j]] < scores.min()]


def test_cost_aware_rerank_ranks_value_per_core_hour():
    # the waiting job (row 3) has the pool's largest σ but costs 10× more: per core-hour it is last
    std = np.array([0.3, 0.2, 0.1, 0.5])
    cost = np.array([1.0, 1.0, 1.0, 10.0])
    out = rerank_with(acquisition.max_std, std, np.zeros((4, 2)), np.array([3]), [True], budget=1, cost=cost)
    assert out.cutoff == 0.3 and out.cancellable == [0] and out.replacements == [0]
    assert list(out.new_scores) == [0.5]           # reported as its σ, not per core-hour
    assert rerank_with(acquisition.max_std, std, np.zeros((4, 2)), np.array([3]), [True], budget=1).cancellable == []


def test_targeted_rerank_compares_variance_reductions():
    """A waiting job that no longer informs the target is cancellable; one that does is kept, even
    with the smallest σ (targeted ranks by what a label tells the observable, not by σ)."""
    # θ in 2-D with Σ = I; the observable is θ_0. Rows: pool (along θ_0, along θ_1), then the waiting
    # jobs: one along θ_1 (tells the observable nothing), one along θ_0 scaled down (small σ, informative)
    rows = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.3, 0.0]])
    std = np.sqrt((rows**2).sum(1))
    extra = {"sigma": np.eye(2), "directions": np.array([[1.0, 0.0]]), "noise": 0.01, "rows": rows}
    own = acquisition.own_scores("targeted", std, **extra)
    assert own == pytest.approx([1 / 1.01, 0.0, 0.0, 0.09 / 0.10])
    out = rerank_with(acquisition.targeted, std, rows, np.array([2, 3]), [True, True], budget=1, **extra)
    assert out.cancellable == [0]                  # the θ_1 job; the small-σ θ_0 job stays
    assert out.replacements == [0]
    assert out.new_scores == pytest.approx([0.0, 0.9])


def test_cancel_file_round_trip_and_removal(tmp_path):
    folder = tmp_path / "a queue"   # a folder name with a space
    folder.mkdir()
    lines = [CancelLine("cand0000004", folder / "cand0000004", 0.0, 0.0123, "4242_7", 3),
             CancelLine("cand0000009", folder / "cand0000009", 0.05, 0.001, "-", 5)]
    path = write_cancel(folder, lines, "first line\nsecond line")
    text = path.read_text()
    assert path == folder / CANCEL_FILE and text.startswith("# first line\n# second line\n# key folder")
    assert f"cand0000004 {folder / 'cand0000004'} 0 0.0123 4242_7 3\n" in text
    assert read_cancel(folder) == lines
    assert write_cancel(folder, [], "") is None and not path.exists() and read_cancel(folder) == []


@pytest.mark.parametrize("bad", [np.array([0]), np.array([6])])
def test_a_job_of_the_newest_committee_is_never_cancellable(bad):
    out = rerank_with(acquisition.max_std, STD, np.zeros((7, 2)), bad, [False], budget=1)
    assert out.cancellable == [] and out.replacements == []
