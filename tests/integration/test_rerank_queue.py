"""Re-ranking the QMCPACK queue in the real loop: jobs an older committee chose are scored again
when the run waits, the ones a fresh batch would not choose are listed in queue/cancel.txt, and
nothing labelled or queued is lost or queued twice."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from ase.io import write
from conftest import h3, tiny_mace, write_pseudos
from test_bad_input import CAMPAIGN, FIXTURES, QMCPACK, finish, frames_with_energy, merge

from aloop.cli import main
from aloop.feature_cache import FeatureCache
from aloop.ingest import ingest, open_queue
from aloop.report import status_text
from aloop.rerank import read_cancel
from aloop.rundir import label_key
from aloop.store import FAILED, LABELLED, POOL, SELECTED

pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason="../shared/fixtures/qmcpack not present")


def committee_sigma(run, ids, iteration):
    """The σ of committee `iteration` on `ids`, from the run's own files (as Committee.predict)."""
    with np.load(run / "committee" / f"iter_{iteration:03d}.npz") as f:
        thetas = f["thetas"]
    return FeatureCache(run / "cache" / "features", thetas.shape[1]).read(ids).energies(thetas).std(0, ddof=1)


def boxed(atoms):
    """`atoms` centred in a periodic 10 Å box, as a QMCPACK job needs a cell."""
    atoms.cell, atoms.pbc = [10.0, 10.0, 10.0], True
    atoms.center()
    return atoms


def test_stale_jobs_are_listed_as_cancellable_and_their_results_still_count(tmp_path, capsys):
    torch.save(tiny_mace(), tmp_path / "tiny.model")
    write(tmp_path / "pool.extxyz", [boxed(a) for a in frames_with_energy(14, 3)])
    write_pseudos(tmp_path, {"H": 1})
    campaign = tmp_path / "c.yaml"
    campaign.write_text(yaml.safe_dump(merge(CAMPAIGN, {
        "labeler": QMCPACK, "evaluation": {}, "stop": {"max_labels": 10},
        "acquisition": {"strategy": "max_std", "batch_size": 2, "initial_size": 2}})))
    run = tmp_path / "runs" / "bad"
    queue = run / "queue"

    assert main(["run", str(campaign), "--quiet"]) == 3          # iteration 0: two jobs queued
    store, labeler = open_queue(run)
    first, second = store.ids(state=SELECTED)
    finish(queue / label_key(first), 0.0)
    finish(queue / label_key(second), 0.0, status="1")
    ingest(run)
    label_before = store.labels()
    assert main(["run", str(campaign), "--quiet"]) == 3          # trained on one label; iteration 1 queued
    assert not (queue / "cancel.txt").exists()                     # its jobs were chosen by the newest committee

    # two jobs as an older committee would have left them: the pool's least and most uncertain
    # candidates under the newest committee (0), queued as chosen in iteration 0
    pool = store.ids(state=POOL)
    sigma = committee_sigma(run, pool, 0)
    order = np.argsort(-sigma)
    low, high, runner_up = pool[order[-1]], pool[order[0]], pool[order[1]]
    store.mark_selected([low, high], 0, [np.nan] * 2, [np.nan] * 2, [0.0, 0.0])
    for cid, atoms in zip([low, high], store.atoms([low, high])):
        labeler.submit(label_key(cid), atoms)
    (queue / label_key(low) / "slurm_job_id").write_text("4242_7\n")
    capsys.readouterr()

    assert main(["run", str(campaign), "--quiet"]) == 3
    assert "1 of them cancellable" in capsys.readouterr().err
    (line,) = read_cancel(queue)
    assert (line.key, line.folder, line.job_id) == (label_key(low), queue / label_key(low), "4242_7")
    assert line.old_score == 0.0 and line.new_score == pytest.approx(sigma[order[-1]], abs=1e-6)
    assert line.array_index == labeler.keys().index(label_key(low))
    # budget 10 − 1 label − 4 waiting leaves room: the best pool candidate of a fresh batch takes its place
    # (the fresh batch of 4: the two jobs of iteration 1, `high`, and `runner_up`)
    assert store.db.get(id=runner_up).state == SELECTED and store.db.get(id=runner_up).iteration == 1
    assert (queue / label_key(runner_up) / "manifest.json").exists()
    keys = labeler.keys()
    assert len(keys) == len(set(keys)) == 6 + 1                    # 2 + 2 + 2 queued by hand + 1; none twice
    assert store.ids(state=LABELLED) == [first] and store.ids(state=FAILED) == [second]
    ids, energies, sigmas = store.labels()
    assert ids == label_before[0] and list(energies) == list(label_before[1])
    status = status_text(run)
    assert "cancellable: 1 queued jobs" in status and f"{label_key(low)}: score 0 →" in status and "4242_7" in status

    # the job ran anyway: its result is ingested, and it is no longer listed
    finish(queue / label_key(low), 1e-4)
    assert {o.key: o.state for o in ingest(run)}[label_key(low)] == "labelled"
    assert "cancellable" not in status_text(run)
    assert main(["run", str(campaign), "--quiet"]) == 3
    assert not (queue / "cancel.txt").exists()                     # `high` is still among the best: nothing to cancel
    assert sorted(store.ids(state=LABELLED)) == sorted([first, low]) and len(labeler.keys()) == 7


def test_targeted_rerank_with_repeats_queues_another_label_of_a_labelled_configuration(tmp_path, capsys):
    """With `targeted` and repeats, the waiting jobs are re-scored by the variance reduction of the
    barrier, and with the pool spent, what replaces a cancellable job is another label of a labelled
    configuration (a repeat: a new candidate and a new job), never a relabel of the one it copies."""
    torch.save(tiny_mace(), tmp_path / "tiny.model")
    write(tmp_path / "pool.extxyz", [boxed(a) for a in frames_with_energy(6, 3)])
    write(tmp_path / "reactant.xyz", boxed(h3(0.74, 2.5)))
    write(tmp_path / "product.xyz", boxed(h3(2.5, 0.74)))
    write_pseudos(tmp_path, {"H": 1})
    campaign = tmp_path / "c.yaml"
    campaign.write_text(yaml.safe_dump(merge(CAMPAIGN, {
        "pool": {"sources": [{"kind": "file", "name": "p", "path": "pool.extxyz"},
                             {"kind": "neb", "name": "path", "initial": "reactant.xyz", "final": "product.xyz",
                              "images": 3, "steps": 2}]},
        "labeler": QMCPACK,
        "evaluation": {"test_set": None, "observables": [{"kind": "barrier", "name": "barrier", "path": "path"}]},
        "stop": {"max_labels": 30},
        "acquisition": {"strategy": "targeted", "repeats": True, "batch_size": 2, "initial_size": 3}})))
    run = tmp_path / "runs" / "bad"
    queue = run / "queue"

    assert main(["run", str(campaign), "--quiet"]) == 3          # iteration 0: three jobs queued
    store, labeler = open_queue(run)
    for k, cid in enumerate(store.ids(state=SELECTED)):
        finish(queue / label_key(cid), 1e-3 * k)
    ingest(run)
    labelled = store.ids(state=LABELLED)
    label_before = store.labels()
    assert main(["run", str(campaign), "--quiet"]) == 3          # trained; iteration 1 queued by targeted
    # the rest of the pool queued as an older committee would have left it: the pool is spent
    rest = store.ids(state=POOL)
    store.mark_selected(rest, 0, [np.nan] * len(rest), [np.nan] * len(rest), [0.0] * len(rest))
    for cid, atoms in zip(rest, store.atoms(rest)):
        labeler.submit(label_key(cid), atoms)
    copies_before = store.count("repeat_of>0")   # targeted may already have chosen repeats in iteration 1
    capsys.readouterr()

    assert main(["run", str(campaign), "--quiet"]) == 3          # still waiting on iteration 1: re-ranked
    assert "cancellable" in capsys.readouterr().err
    lines = read_cancel(queue)
    assert lines and {line.key for line in lines} <= {label_key(cid) for cid in rest}
    header = (queue / "cancel.txt").read_text()
    assert "(targeted)" in header and "eV²" in header
    # their places went to repeats of labelled configurations: new candidates, new jobs, the same geometry
    copies = [r for r in store.rows() if r.get("repeat_of") is not None][copies_before:]
    assert 0 < len(copies) <= len(lines)
    for copy in copies:
        assert copy.state == SELECTED and copy.repeat_of in labelled and copy.iteration == 1
        assert np.allclose(copy.positions, store.db.get(id=copy.repeat_of).positions)
        assert (queue / label_key(copy.id) / "manifest.json").exists()
    keys = labeler.keys()
    assert len(keys) == len(set(keys))
    assert store.ids(state=LABELLED) == labelled and store.labels()[0] == label_before[0]
