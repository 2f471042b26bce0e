"""One end-to-end campaign on a tiny model with real PySCF labels, and resume after a kill."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.io import write
from conftest import h3, h3_set, tiny_mace
from mace.calculators import MACECalculator

from aloop import acquisition, metrics
from aloop.campaign import load_campaign
from aloop.loop import CampaignRun
from aloop.report import status_text
from aloop.store import LABELLED, POOL, RunStore

CAMPAIGN = """
name: {name}
seed: 3
model: {{path: tiny.model}}
pool:
  sources:
    - {{kind: file, name: random, path: pool.extxyz}}
    - {{kind: md, name: md, start: start.xyz, temperatures: [300, 800], steps: 30, interval: 10}}
    - {{kind: neb, name: path, initial: reactant.xyz, final: product.xyz, images: 5, steps: 2}}
committee: {{size: 4}}
acquisition: {{strategy: diverse, batch_size: 4, initial_size: 4}}
labeler: {{kind: pyscf, method: {method}, basis: {basis}}}
stop: {{max_labels: {budget}}}
evaluation:
  observables: [{{kind: barrier, name: barrier, path: path}}]
"""


@pytest.fixture(scope="module")
def campaign_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("campaign")
    torch.save(tiny_mace(), folder / "tiny.model")
    write(folder / "pool.extxyz", h3_set(30))
    write(folder / "reactant.xyz", h3(0.74, 2.5))
    write(folder / "product.xyz", h3(2.5, 0.74))
    write(folder / "start.xyz", h3(0.74, 1.5))
    return folder


def write_campaign(folder: Path, name: str, method="hf", basis="sto-3g", budget=10) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(CAMPAIGN.format(name=name, method=method, basis=basis, budget=budget))
    return path


def test_end_to_end_loop_exports_a_working_model(campaign_dir):
    campaign = load_campaign(write_campaign(campaign_dir, "e2e"))
    run = CampaignRun(campaign, progress=False)
    result = run.run()
    assert result.n_labels == 10 and "label budget" in result.stop_reason
    records = run.store.iterations()
    assert [r["n_labels"] for r in records] == [4, 8, 10]
    assert records[0]["prospective"] is None  # no committee chose the first batch
    assert all(r["prospective"]["n"] > 0 for r in records[1:])
    assert set(records[-1]["observables"]) == {"barrier"}
    rows = run.store.rows(state=LABELLED)
    assert all(r.data["provenance"]["method"] == "hf" and r.data["provenance"]["basis"] == "sto-3g" for r in rows)
    # the exported mean model is an ordinary MACE file whose energies are the committee mean
    mean_path = run.export(members=False)[0]
    calc = MACECalculator(model_paths=str(mean_path), device="cpu", default_dtype="float64")
    ids = [r.id for r in rows[:3]]
    expected, _ = run.load_committee(records[-1]["iteration"]).predict(run.features(ids))
    for atoms, e in zip(run.store.atoms(ids), expected):
        atoms.calc = calc
        assert atoms.get_potential_energy() == pytest.approx(e, abs=1e-8)
    # running a stopped campaign again does nothing new
    again = CampaignRun(campaign, progress=False).run()
    assert again.n_labels == 10 and len(run.store.iterations()) == len(records)


def labelled(run_dir: Path):
    store = RunStore(run_dir)
    return sorted((r.source, r.index, r.energy_hf, r.iteration) for r in store.rows(state=LABELLED))


def test_resume_after_kill_mid_iteration(campaign_dir):
    """Kill `aloop run` while it labels the second batch; the rerun ends with exactly the labels of an
    uninterrupted run, each computed once."""
    budget = 12
    reference = load_campaign(write_campaign(campaign_dir, "reference", "ccsd(t)", "sto-3g", budget))
    CampaignRun(reference, progress=False).run()

    killed = write_campaign(campaign_dir, "killed", "ccsd(t)", "sto-3g", budget)
    run_dir = load_campaign(killed).run_dir
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    cmd = [sys.executable, "-m", "aloop.cli", "run", str(killed), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    labels_dir = run_dir / "labels"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if labels_dir.exists() and len(list(labels_dir.glob("*.json"))) >= 6:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in labels_dir.glob("*.json")}
    assert 6 <= len(done_before) < budget

    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert labelled(run_dir) == labelled(reference.run_dir)
    # nothing labelled twice: each finished job kept its file untouched, one file per label
    after = {p.name: p.stat().st_mtime_ns for p in labels_dir.glob("*.json")}
    assert all(after[name] == mtime for name, mtime in done_before.items())
    assert len(after) == budget


def test_targeted_cost_aware_iteration(campaign_dir):
    """Strategy targeted with cost-aware ranking runs an iteration on a tiny campaign, and every label's
    cost is recorded, summed per iteration and predicted for the batch it chooses."""
    text = (CAMPAIGN.format(name="targeted", method="hf", basis="sto-3g", budget=8)
            .replace("strategy: diverse", "strategy: targeted, targets: [barrier], cost_aware: true"))
    path = campaign_dir / "targeted.yaml"
    path.write_text(text)
    run = CampaignRun(load_campaign(path), progress=False)
    assert run.run(max_iterations=2).n_labels == 8
    records = run.store.iterations()
    assert 0 < records[0]["core_hours"] < records[1]["core_hours"]
    chosen = run.store.rows(iteration=1)
    assert len(chosen) == 4 and all(r.score > 0 for r in chosen)   # variance reductions, eV²
    assert all(r.pred_core_hours > 0 for r in chosen)   # fitted to the first batch's measured costs
    # each label's bearing on the barrier, under the committee that chose it, and their count
    energies = run.load_committee(0).member_energies(run.inputs([r.id for r in chosen]))
    expected = metrics.relevance(energies, records[0]["observables"]["barrier"]["members"])
    assert [r.data["relevance"]["barrier"] for r in chosen] == pytest.approx(expected)
    assert records[1]["relevant_errors"]["barrier"] == pytest.approx(expected.sum(), abs=1e-3)
    assert all(r.data["provenance"]["threads"] >= 1 for r in run.store.rows(state=LABELLED))
    # a model error (the evidence's m) makes the configurations the barrier reads, its saddle and
    # first image, parameters of their own where they wait in the pool: with a large one they are
    # picked first (here the pool's frozen images: this tiny model's relaxed paths leave the domain)
    run.campaign.evaluation.observables[0].relax = False
    committee, available = run.load_committee(1), run.store.ids(state=POOL)
    committee.model_error_ = 0.0
    plain = run.targeted_inputs(committee, 2, available)
    images = run.store.source_ids("path")
    saddle = images[int(np.argmax(committee.predict(run.inputs(images))[0]))]
    read = [available.index(cid) for cid in (saddle, images[0]) if cid in available]
    assert read, "the test needs a read image unlabelled in the pool"
    committee.model_error_ = 1.0
    widened = run.targeted_inputs(committee, 2, available)
    assert widened["directions"].shape == (2, len(plain["sigma"]) + len(read))
    np.testing.assert_allclose(widened["noise"][read], plain["noise"])
    assert np.delete(widened["noise"], read) == pytest.approx(plain["noise"] + 1.0)
    picked, _ = acquisition.targeted(np.ones(len(available)), None, len(read), rng=np.random.default_rng(0), **widened)
    assert set(picked) == set(read)


def test_targeted_repeats_label_a_configuration_again_when_the_pool_is_spent(campaign_dir):
    """With a stochastic labeler (DMC) and acquisition.repeats, targeted may buy a labelled
    configuration another label: past the pool's end the run goes on with copies, each an
    independent DMC run (its own random numbers), never a relabel of the candidate it copies."""
    text = """
name: repeats
seed: 1
model: {path: tiny.model}
pool:
  sources:
    - {kind: file, name: random, path: few.extxyz}
    - {kind: neb, name: path, initial: reactant.xyz, final: product.xyz, images: 3, steps: 2}
committee: {size: 4}
acquisition: {strategy: targeted, repeats: true, batch_size: 4, initial_size: 4}
labeler: {kind: pyqmc, basis: sto-3g, walkers: 20, blocks: 20, equilibration: 5, optimize_steps: 2,
          warm_optimize_steps: 0, timestep: 0.05}
stop: {max_labels: 12}
evaluation:
  observables: [{kind: barrier, name: barrier, path: path}]
"""
    write(campaign_dir / "few.extxyz", h3_set(3, seed=4))
    path = campaign_dir / "repeats.yaml"
    path.write_text(text)
    run = CampaignRun(load_campaign(path), progress=False)
    assert run.run().n_labels == 12
    rows = run.store.rows(state=LABELLED)
    copies = [r for r in rows if r.get("repeat_of") is not None]
    pool = run.store.count() - len(copies)
    assert pool <= 8 and len(copies) >= 12 - pool   # the budget is larger than the pool
    first = {r.id: r for r in rows}
    for copy in copies:
        original = first[copy.repeat_of]
        assert original.get("repeat_of") is None and np.allclose(copy.positions, original.positions)
        assert copy.data["info"]["repeat"] >= 1 and copy.added == copy.iteration
        mine, theirs = copy.data["provenance"], original.data["provenance"]
        assert mine["repeat"] == copy.data["info"]["repeat"] and mine["run_seed"] != theirs["run_seed"]
        assert copy.energy_hf != original.energy_hf   # another DMC run, not the same number
    # a copy of a path image is no image of the path: the barrier is still read from 5 images
    assert any(c.source == "path" for c in copies) and len(run.store.source_ids("path")) == 5
    assert f"12 labelled ({len(copies)} of them repeats)" in status_text(run.run_dir)
    # the repeats judge the labels' error bars; a widened error bar is what the fit and tests use
    noise = run.store.iterations()[-1]["label_noise"]
    assert noise == run.label_noise() and noise["dof"] == len(copies)
    run.label_noise = lambda: {"scale": 2.0, "ratio": 2.0, "dof": 8}
    assert run.training_set()[1].sigma == pytest.approx(2.0 * run.store.labels()[2])
