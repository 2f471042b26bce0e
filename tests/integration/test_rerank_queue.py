"""Re-ranking the QMCPACK queue in the real loop: jobs an older committee chose are scored again
when the run waits, the ones a fresh batch would not choose are listed in queue/cancel.txt, and
nothing labelled or queued is lost or queued twice."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from ase.io import write
from conftest import tiny_mace, write_pseudos
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


def test_stale_jobs_are_listed_as_cancellable_and_their_results_still_count(tmp_path, capsys):
    torch.save(tiny_mace(), tmp_path / "tiny.model")
    frames = frames_with_energy(14, 3)
    for atoms in frames:
        atoms.cell, atoms.pbc = [10.0, 10.0, 10.0], True
        atoms.center()
    write(tmp_path / "pool.extxyz", frames)
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
    assert "cancellable: 1 queued jobs" in status and f"{label_key(low)}: score 0.0 →" in status and "4242_7" in status

    # the job ran anyway: its result is ingested, and it is no longer listed
    finish(queue / label_key(low), 1e-4)
    assert {o.key: o.state for o in ingest(run)}[label_key(low)] == "labelled"
    assert "cancellable" not in status_text(run)
    assert main(["run", str(campaign), "--quiet"]) == 3
    assert not (queue / "cancel.txt").exists()                     # `high` is still among the best: nothing to cancel
    assert sorted(store.ids(state=LABELLED)) == sorted([first, low]) and len(labeler.keys()) == 7
