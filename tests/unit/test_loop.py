"""The campaign loop on a tiny model with EMT labels: batch schedule, records, resume, forks."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.emt import EMT
from ase.io import write
from conftest import h3_set, tiny_mace

from aloop import metrics
from aloop.campaign import load_campaign
from aloop.fork import fork_run
from aloop.loop import PATH_POINT_TOLERANCE, CampaignRun
from aloop.store import LABELLED, POOL, RunStore

CAMPAIGN = """
name: {name}
seed: 1
model: {{path: tiny.model}}
pool:
  sources:
    - {{kind: file, name: random, path: pool.extxyz}}
committee: {{size: 3}}
acquisition: {{strategy: max_std, initial_size: 4, batch_size: 9, batch_schedule: [2, 3]}}
labeler: {{kind: ase, calculator: "ase.calculators.emt:EMT"}}
stop: {{max_labels: {budget}}}
evaluation:
  test_set: {{path: test.extxyz, energy_key: energy}}
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loop")
    torch.save(tiny_mace(), folder / "tiny.model")
    write(folder / "pool.extxyz", h3_set(24, seed=1))
    test = h3_set(5, seed=2)
    for atoms in test:
        atoms.calc = EMT()
        atoms.info["energy"] = atoms.get_potential_energy()
        atoms.calc = None
    write(folder / "test.extxyz", test)
    return folder


def campaign(folder: Path, name: str, budget: int = 12):
    path = folder / f"{name}.yaml"
    path.write_text(CAMPAIGN.format(name=name, budget=budget))
    return load_campaign(path)


@pytest.fixture(scope="module")
def finished(folder):
    run = CampaignRun(campaign(folder, "source"), progress=False)
    return run, run.run()


def test_batches_follow_the_schedule_and_the_budget(finished):
    run, result = finished
    records = run.store.iterations()
    # 4 first, then the schedule 2, 3, 3 (the last entry repeats) until the budget of 12
    assert [r["n_new"] for r in records] == [4, 2, 3, 3]
    assert result.n_labels == 12 and result.stop_reason.startswith("label budget reached")
    assert run.campaign.acquisition.batch_size_at(7) == 3


def test_records_hold_what_was_measured_and_the_store_keeps_each_batchs_errors(finished):
    run, _ = finished
    records = run.store.iterations()
    assert records[0]["prospective"] is None and np.isnan(run.store.batch_errors(0)[0]).all()
    err, sigma_c, sigma_l = run.store.batch_errors(2)
    assert len(err) == 3 and np.isfinite(err).all() and (sigma_c > 0).all()
    assert records[2]["prospective"]["n"] == 3
    assert records[2]["prospective"]["rmse"] == pytest.approx(np.sqrt(np.mean(err**2)))
    assert all(r["test"]["n"] == 5 for r in records)
    assert (run.cache / "test_features.npz").exists()   # the test set's features are computed once
    assert records[-1]["pool_sigma"]["p95"] > 0 and records[-1]["seeds"]["selection"] == [1, 3, 1]
    # the σ scale: none until 8 prospective errors can test it, then the newest committee's own
    assert [r["sigma_scale_from"] for r in records] == [None, None, None, "leave-one-out"]
    _, data = run.training_set()
    loo = run.load_committee(3).leave_one_out(data, run.prior_moment())
    assert records[3]["sigma_scale"] == pytest.approx(metrics.sigma_scale(*loo, data.sigma))


def test_a_finished_run_does_nothing_when_run_again(folder, finished):
    run, result = finished
    again = CampaignRun(campaign(folder, "source"), progress=False).run()
    assert again.n_labels == result.n_labels and len(run.store.iterations()) == 4


def test_a_fork_continues_exactly_as_the_run_it_came_from(folder, finished):
    run, _ = finished
    dest = folder / "runs" / "fork"
    store = fork_run(run.run_dir, dest, 2)
    assert len(store.iterations()) == 2 and store.count(state=LABELLED) == 6
    assert store.count(state=POOL) == run.store.count(state=POOL) + 6
    assert store.get_meta("stop_reason") is None
    assert (dest / "cache").is_symlink() and (dest / "committee" / "iter_001.npz").exists()
    assert not (dest / "committee" / "iter_002.npz").exists()
    with pytest.raises(FileExistsError):
        fork_run(run.run_dir, dest, 1)
    with pytest.raises(ValueError, match="expected 0..4"):
        RunStore(run.run_dir).fork(folder / "runs" / "too-far", 5)
    c = campaign(folder, "source")
    c.run_dir = dest
    CampaignRun(c, progress=False).run()
    forked = RunStore(dest).iterations()
    assert [r["n_labels"] for r in forked] == [r["n_labels"] for r in run.store.iterations()]
    for it in (2, 3):   # same seed, same committee, same candidates: the same batches and labels
        assert RunStore(dest).ids(iteration=it) == run.store.ids(iteration=it)
        np.testing.assert_allclose(RunStore(dest).batch_errors(it)[0], run.store.batch_errors(it)[0])


def test_force_threshold_per_atom_reaches_the_committee(folder):
    path = folder / "per_atom.yaml"
    path.write_text(CAMPAIGN.format(name="per_atom", budget=4) + "finetune: {force_threshold_per_atom: 0.1}\n")
    committee = CampaignRun(load_campaign(path), progress=False).new_committee()
    assert (committee.force_threshold, committee.threshold_per_atom) == (0.1, True)
    default = CampaignRun(campaign(folder, "default_threshold", budget=4), progress=False).new_committee()
    assert (default.force_threshold, default.threshold_per_atom) == (0.5, False)


def test_forks_number_their_own_candidates_apart_so_the_shared_caches_never_mix_them(folder, finished):
    """Two forks of one run share its feature cache, keyed by candidate id; the candidates each adds
    later (its relaxed paths' points, repeats) get ids no other fork uses, so each reads back the
    features of its own configuration, not the other's."""
    run, _ = finished
    forks = [fork_run(run.run_dir, folder / "runs" / f"sibling{k}", 1) for k in range(2)]
    added = []
    for k, store in enumerate(forks):
        atoms = h3_set(1, seed=40 + k)[0]
        (cid,) = store.add_candidates([atoms], "path:barrier")
        added.append((cid, atoms))
    (first, a0), (second, a1) = added
    assert first != second and min(first, second) > run.store.max_id()
    c = campaign(folder, "source")
    for store, (cid, atoms) in zip(forks, added):
        c.run_dir = store.run_dir
        sibling = CampaignRun(c, progress=False)
        np.testing.assert_allclose(sibling.features([cid]).a[0], sibling.backbone.features([atoms]).a[0])


def test_forks_refit_alike_whatever_their_fork_number(folder, finished):
    """Bootstrap counts are drawn from each label's id; a fork's own candidates (its paths' points)
    are numbered by its fork number, but drawn under the id the source would have given them, so
    two forks that add and label the same point fit the same committee."""
    run, _ = finished
    atoms = h3_set(1, seed=50)[0]
    atoms.calc = EMT()
    energy = atoms.get_potential_energy()
    c = campaign(folder, "source")
    fits, added = [], []
    for k in range(2):
        store = fork_run(run.run_dir, folder / "runs" / f"refit{k}", len(run.store.iterations()))
        (cid,) = store.add_candidates([atoms], "path:barrier")
        store.mark_selected([cid], 3, [0.0], [0.1], [0.0])
        store.add_label(cid, energy, 0.01, {})
        c.run_dir = store.run_dir
        fits.append(CampaignRun(c, progress=False).train(4).thetas_)
        added.append(cid)
    assert added[0] != added[1]
    np.testing.assert_array_equal(fits[0], fits[1])


def test_a_targets_read_points_are_found_in_the_pool_unlabelled(tmp_path):
    # the relaxed path's saddle settles by a few mÅ between iterations: the path point the pool kept
    # for it (within PATH_POINT_TOLERANCE) stands for it; a labelled one has measured its misfit
    def frame(x):
        return Atoms("H2", positions=[[0, 0, 0], [x, 0, 0]], cell=[5, 5, 5], pbc=True)

    store = RunStore(tmp_path)
    md = store.add_candidates([frame(0.7), frame(0.8)], "md")
    initial, saddle = store.add_candidates([frame(1.0), frame(1.5)], "path:b", roles=["initial", "saddle"])
    store.mark_selected([initial], 1, [0.0], [0.1], [0.0])
    store.add_label(initial, -1.0, 0.01, {})
    available = md + [saddle]
    reads = [(1.0, None, frame(1.5 + 0.5 * PATH_POINT_TOLERANCE)), (-1.0, None, frame(1.0))]
    run = SimpleNamespace(store=store)
    assert CampaignRun.read_candidates(run, "b", reads, available) == [(1.0, 2)]
    moved = [(1.0, None, frame(1.5 + 2 * PATH_POINT_TOLERANCE))]   # a saddle the pool has not seen
    assert CampaignRun.read_candidates(run, "b", moved, available) == []
