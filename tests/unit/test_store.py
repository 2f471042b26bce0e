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
