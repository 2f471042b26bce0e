"""A campaign with `finetune.kind: multifidelity` on a tiny model: the linear committee drives it, and
the model trained on both fidelities is made on schedule, scored, exported and reported."""
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from conftest import h3_set, tiny_mace, write_h3_inputs
from mace.calculators import MACECalculator

from aloop.campaign import load_campaign
from aloop.loop import CampaignRun
from aloop.report import write_report

CAMPAIGN = """
name: mf
seed: 2
model: {path: tiny.model, training_data: train.extxyz}
pool:
  sources:
    - {kind: file, name: random, path: pool.extxyz}
    - {kind: neb, name: path, initial: reactant.xyz, final: product.xyz, images: 5, steps: 2}
committee: {size: 2}
finetune:
  kind: multifidelity
  multifidelity: {every: 1, epochs: 2, replay: 12, batch_size: 4}
acquisition: {strategy: max_std, batch_size: 3, initial_size: 3}
labeler: {kind: pyscf, method: hf, basis: sto-3g}
stop: {max_labels: 6}
evaluation:
  test_set: {path: test.extxyz, energy_key: ref_energy}
  observables: [{kind: barrier, name: barrier, path: path, relax: false}]
"""


def test_multifidelity_campaign_trains_scores_and_exports_the_model(tmp_path):
    model = tiny_mace()
    write_h3_inputs(tmp_path, model, test_energy=-42.0)
    calc = MACECalculator(models=[model], device="cpu", default_dtype="float64")
    training = h3_set(16, seed=4)
    for atoms in training:   # the base model's "low-fidelity" data: its own energies and forces
        atoms.calc = calc
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
    write(tmp_path / "train.extxyz", training)
    (tmp_path / "mf.yaml").write_text(CAMPAIGN)
    run = CampaignRun(load_campaign(tmp_path / "mf.yaml"), progress=False)
    assert run.run().n_labels == 6
    records = run.store.iterations()
    assert [bool(r.get("multifidelity")) for r in records] == [True, True]   # every: 1
    last = records[-1]["multifidelity"]
    assert last["n_labels"] == 6 and last["n_replay"] == 12 and set(last["observables"]) == {"barrier"}
    assert last["test"]["rmse"] > 0
    # HF/STO-3G total energies sit eV from the tiny model's: the E0 shift puts the model on their scale
    ids, energies, _ = run.store.labels()
    frames = run.store.atoms(ids)
    base, _ = run.backbone.energy_forces(frames)
    paths = run.export()
    assert [p.name for p in paths][-1] == "multifidelity.model"
    exported = MACECalculator(model_paths=str(paths[-1]), device="cpu", default_dtype="float64")
    predicted = []
    for atoms in frames:
        atoms.calc = exported
        predicted.append(atoms.get_potential_energy())
    offset = np.mean(energies - base)
    assert abs(offset) > 1.0
    assert abs(np.mean(np.array(predicted) - energies)) < 0.1 * abs(offset)
    # the record's model is the exported one
    same = MACECalculator(model_paths=str(run.run_dir / last["model"]), device="cpu", default_dtype="float64")
    frames[0].calc = same
    assert frames[0].get_potential_energy() == pytest.approx(predicted[0], abs=1e-10)
    assert "## Multi-fidelity model" in write_report(run.run_dir).read_text()
