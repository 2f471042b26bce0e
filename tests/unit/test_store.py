"""The run store's id queries agree with ase.db's own selection after every kind of update."""
from __future__ import annotations

import pytest
from ase import Atoms

from aloop.store import FAILED, LABELLED, POOL, SELECTED, RunStore


def test_ids_by_state_follow_updates(tmp_path):
    store = RunStore(tmp_path)
    frames = [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7 + 0.01 * i]]) for i in range(12)]
    md = store.add_candidates(frames[:8], source="md")
    neb = store.add_candidates(frames[8:], source="neb")
    store.mark_selected(md[2:6], 0, [0.0] * 4, [0.1] * 4, [1.0] * 4)
    for cid in md[2:5]:
        store.add_label(cid, -1.0, 0.01, {"labeler": "test"})
    store.mark_failed(md[5], "crashed")
    store.requeue(md[5])
    store.mark_failed(neb[0], "crashed")
    for state in (POOL, SELECTED, LABELLED, FAILED):
        expected = sorted(r.id for r in store.db.select(state=state))
        assert store.ids(state=state) == expected
    assert store.ids(state=SELECTED) == [md[5]]
    assert store.ids() == md + neb
    assert store.ids(state=POOL, source="neb") == neb[1:]
    assert store.ids(iteration=0, state=LABELLED) == md[2:5]
    with pytest.raises(TypeError, match="only text and number"):
        store.ids(state=None)


def test_a_fork_before_a_selection_keeps_what_the_candidate_was(tmp_path):
    """A path point selected after the fork's iteration goes back to the pool as the point it was:
    its role (the saddle check needs it), the iteration that made it and whether it repeats another;
    what its selection and label wrote is dropped."""
    store = RunStore(tmp_path / "run")
    frames = [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7 + 0.01 * i]]) for i in range(3)]
    ids = store.add_candidates(frames, source="path:barrier", added=1, roles=["initial", "saddle", "final"])
    store.mark_selected(ids, 2, [0.0] * 3, [0.1] * 3, [1.0] * 3, relevance=[{"barrier": 0.9}] * 3)
    for cid in ids:
        store.add_label(cid, -1.0, 0.01, {"labeler": "test"})
    store.write_iteration(0, {"iteration": 0})
    store.write_iteration(1, {"iteration": 1})
    store.write_iteration(2, {"iteration": 2})
    forked = store.fork(tmp_path / "fork", 2)
    rows = forked.rows(source="path:barrier")
    assert [r.role for r in rows] == ["initial", "saddle", "final"] and {r.added for r in rows} == {1}
    assert {r.state for r in rows} == {POOL}
    assert not any(k in r.key_value_pairs for r in rows for k in ("iteration", "pred_energy", "energy_hf"))
    assert not any("relevance" in r.data or "provenance" in r.data for r in rows)


def test_a_forks_own_candidates_draw_under_the_ids_an_unforked_run_gives_them(tmp_path):
    """Bootstrap counts are keyed by id (Committee.weights). A fork numbers what it adds in a range
    of its own, so that forks sharing a cache never mix candidates; for the draws those ids map back
    to the ones the source itself would have given next, through a fork of a fork too."""
    frames = [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7 + 0.01 * i]]) for i in range(8)]
    source = RunStore(tmp_path / "source")
    pool = source.add_candidates(frames[:4], source="md")
    source.write_iteration(0, {"iteration": 0})
    first_path = source.add_candidates(frames[4:6], source="path:barrier", added=1)
    source.write_iteration(1, {"iteration": 1})
    assert source.draw_ids(pool + first_path) == pool + first_path

    fork = source.fork(tmp_path / "fork", 1, first_new_id=source.max_id() + 1 + 3 * 10_000)
    added = fork.add_candidates(frames[4:6], source="path:barrier", added=1)
    assert min(added) > source.max_id()
    assert fork.draw_ids(pool + added) == pool + first_path   # as the source numbered its own
    fork.write_iteration(1, {"iteration": 1})
    later = fork.add_candidates(frames[6:7], source="path:barrier", added=2)

    again = fork.fork(tmp_path / "fork-of-fork", 2, first_new_id=fork.max_id() + 1 + 10_000)
    (own,) = again.add_candidates(frames[7:8], source="path:barrier", added=2)
    assert own > fork.max_id()
    assert again.draw_ids(pool + added + [own]) == pool + first_path + fork.draw_ids(later)
