"""What a run folder is bound to, and which changes of the campaign mix data."""
from aloop.binding import changes, refusal

BOUND = {"model": {"sha256": "a"}, "labeler": {"kind": "replay", "path": "sha256:1"}, "pool.min_distance": 0.5,
         "pool.source.p": {"kind": "file", "path": "sha256:2"}, "test_set": None, "units": {"energy": "eV"}}


def test_label_fields_and_new_sources_bind_only_once_there_are_labels():
    now = {**BOUND, "labeler": {"kind": "pyscf", "spin": 1}, "pool.source.q": {"kind": "file", "path": "sha256:3"}}
    assert changes(BOUND, now, labelled=False) == []
    assert changes(BOUND, now, labelled=True) == ["labeler", "pool.source.q"]
    # the model and the sources in the pool are bound from the start
    moved = {**BOUND, "model": {"sha256": "b"}, "pool.source.p": {"kind": "file", "path": "sha256:9"}}
    assert changes(BOUND, moved, labelled=False) == ["model", "pool.source.p"]
    assert changes({}, now, labelled=False) == []                 # a new run binds whatever it is given


def test_the_refusal_lists_each_difference_and_both_ways_forward(tmp_path):
    now = {**BOUND, "labeler": {"kind": "replay", "path": "sha256:7"}, "model": {"sha256": "b"}}
    now.pop("pool.source.p")
    text = str(refusal(tmp_path, BOUND, now, ["labeler", "model", "pool.source.p"]))
    assert 'labeler: path: "sha256:1" in the run, "sha256:7" now' in text
    assert "pool.source.p: removed from the campaign; its candidates stay" in text
    assert "new run_dir" in text and "--accept-changes labeler --accept-changes pool.source.p" in text
    assert "--accept-changes model" not in text and "restore model as it was" in text
    other = {**BOUND, "labeler": {"kind": "pyscf", "method": "hf"}}
    assert 'labeler: kind: "replay" in the run, "pyscf" now' in str(refusal(tmp_path, BOUND, other, ["labeler"]))
