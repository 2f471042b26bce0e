"""A campaign with `finetune.readout: full`, and one with `finetune.kind: delta`, on a tiny model: it
runs, and its exported members are ordinary MACE files with the members' energies; the committee's
mean is one more such file, whose own path the run relaxes."""
import numpy as np
import pytest
import torch
from conftest import file_energies, write_h3_inputs
from mace.calculators import MACECalculator

from aloop import reaction_path
from aloop.campaign import load_campaign
from aloop.full_readout import LabelledGraph
from aloop.loop import CampaignRun
from aloop.report import write_report
from aloop.store import LABELLED

CAMPAIGN = """
name: full
seed: 3
model: {path: tiny.model}
pool:
  sources:
    - {kind: file, name: random, path: pool.extxyz}
    - {kind: neb, name: path, initial: reactant.xyz, final: product.xyz, images: 5, steps: 2}
committee: {size: 2}
finetune: {FINETUNE, force_threshold: 0.2}
acquisition: {strategy: max_std, batch_size: 3, initial_size: 3}
labeler: {kind: pyscf, method: hf, basis: sto-3g}
stop: {max_labels: 6}
evaluation:
  test_set: {path: test.extxyz, energy_key: ref_energy}
  observables: [{kind: barrier, name: barrier, path: path, relax: false}]
"""


def members_match(run, paths, committee) -> None:
    """Each exported member file gives that member's energies on labelled configurations."""
    ids = [r.id for r in run.store.rows(state=LABELLED)[:2]]
    expected = committee.member_energies(run.inputs(ids))
    for k, path in enumerate(paths):
        calc = MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")
        for atoms, e in zip(run.store.atoms(ids), expected[k]):
            atoms.calc = calc
            assert atoms.get_potential_energy() == pytest.approx(e, abs=1e-8)


def test_full_readout_campaign_runs_and_exports_members(tmp_path):
    write_h3_inputs(tmp_path)
    (tmp_path / "full.yaml").write_text(CAMPAIGN.replace("FINETUNE", "readout: full"))
    run = CampaignRun(load_campaign(tmp_path / "full.yaml"), progress=False)
    result = run.run()
    assert result.n_labels == 6
    records = run.store.iterations()
    assert records[-1]["prospective"]["n"] == 3 and records[-1]["test"]["n"] == 3
    assert records[-1]["observables"]["barrier"]["path"] == "frozen"
    assert [p.name for p in run.export(tmp_path / "mean", members=False)] == ["committee_mean.model"]
    paths = run.export()
    assert [p.name for p in paths] == ["committee_mean.model", "member_0.model", "member_1.model"]
    members_match(run, paths[1:], run.load_committee(records[-1]["iteration"]))
    assert write_report(run.run_dir).exists()


def test_a_full_campaign_computes_each_labels_jacobians_once(tmp_path, monkeypatch):
    """Each label's per-atom Jacobians are kept from the iteration that labelled it: the graph a later
    fit reads from them is the one computed afresh, and building it runs no backbone pass."""
    write_h3_inputs(tmp_path)
    (tmp_path / "full.yaml").write_text(CAMPAIGN.replace("FINETUNE", "readout: full"))
    run = CampaignRun(load_campaign(tmp_path / "full.yaml"), progress=False)
    run.run(max_iterations=1)
    ids = [r.id for r in run.store.rows(state=LABELLED)]
    assert sorted(int(f.stem) for f in (run.cache / "full_graph").glob("*.npz")) == sorted(ids)
    fresh = LabelledGraph(run.full, run.store.atoms(ids))

    def no_backbone(*args, **kwargs):
        raise AssertionError("the per-atom Jacobians of a kept label were computed again")

    monkeypatch.setattr(LabelledGraph, "parts_of", staticmethod(no_backbone))
    kept = run.graph(ids)
    for a, b in zip(kept.h + kept.jacobians, fresh.h + fresh.jacobians):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(kept.n_atoms, fresh.n_atoms)


@pytest.mark.parametrize("finetune, committee, strategy", [("kind: delta, delta_width: 4", "prior_sigma: auto", "max_std"),
                                                            ("readout: full", "prior_sigma: 0.1", "targeted")],
                         ids=["delta", "full"])
def test_a_nonlinear_campaign_relaxes_its_committee_means_path_and_exports_that_model(tmp_path, finetune, committee,
                                                                                       strategy):
    """A delta or full committee's average is one model: the run relaxes that model's path (relax: true)
    and exports it as committee_mean.model, which gives the path's energies as the run recorded them;
    delta's prior is the evidence's (prior_sigma: auto), full's a fixed one. `full` chooses its
    labels by `targeted` on the relaxed barrier, its posterior linearised at the members' mean."""
    write_h3_inputs(tmp_path)
    text = (CAMPAIGN.replace("FINETUNE", finetune).replace(", relax: false", "")
            .replace("committee: {size: 2}", f"committee: {{size: 2, {committee}}}")
            .replace("strategy: max_std", f"strategy: {strategy}"))
    (tmp_path / "c.yaml").write_text(text)
    run = CampaignRun(load_campaign(tmp_path / "c.yaml"), progress=False)
    assert run.run().n_labels == 6
    records = run.store.iterations()
    assert all(r["prior_sigma"] > 0 for r in records)
    if strategy == "targeted":   # each pick's reduction of the barrier's variance, eV²
        scores = [r.score for r in run.store.rows(iteration=1)]
        assert len(scores) == 3 and all(x > 0 for x in scores)
    barrier = records[-1]["observables"]["barrier"]
    assert barrier["path"] == "relaxed" and len(barrier["members"]) == 2
    paths = run.export()
    assert [p.name for p in paths] == ["committee_mean.model", "member_0.model", "member_1.model"]
    members_match(run, paths[1:], run.load_committee(records[-1]["iteration"]))
    kept = reaction_path.load(run.layout.path("barrier", records[-1]["iteration"]))
    energies = file_energies(paths[0], kept.images)
    np.testing.assert_allclose(energies, kept.energies, atol=1e-6)
    assert barrier["mean"] == pytest.approx(kept.barrier, abs=1e-9)
    # the members' barriers are read on the same images: their mean is the mean model's barrier there
    # only up to which image is highest, so compare their energies instead
    members = run.load_committee(records[-1]["iteration"]).member_energies(run.frame_inputs(kept.images))
    np.testing.assert_allclose(members.mean(0), energies, atol=1e-6)
    assert "barrier" in write_report(run.run_dir).read_text()
