"""A campaign with `finetune.readout: full`, and one with `finetune.kind: delta`, on a tiny model: it
runs, and its exported members are ordinary MACE files with the members' energies."""
import pytest
from conftest import write_h3_inputs
from mace.calculators import MACECalculator

from aloop.campaign import load_campaign
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


@pytest.mark.parametrize("finetune", ["readout: full", "kind: delta, delta_width: 4"])
def test_nonlinear_campaign_runs_and_exports_members(tmp_path, finetune):
    write_h3_inputs(tmp_path)
    (tmp_path / "full.yaml").write_text(CAMPAIGN.replace("FINETUNE", finetune))
    run = CampaignRun(load_campaign(tmp_path / "full.yaml"), progress=False)
    result = run.run()
    assert result.n_labels == 6
    records = run.store.iterations()
    assert records[-1]["prospective"]["n"] == 3 and records[-1]["test"]["n"] == 3
    assert records[-1]["observables"]["barrier"]["path"] == "frozen"
    with pytest.raises(ValueError, match="--mean-only: finetune.(readout is full|kind is delta), so there is no committee-mean model"):
        run.export(members=False)
    paths = run.export()
    assert [p.name for p in paths] == ["member_0.model", "member_1.model"]
    committee = run.load_committee(records[-1]["iteration"])
    ids = [r.id for r in run.store.rows(state=LABELLED)[:2]]
    expected = committee.member_energies(run.inputs(ids))
    for k, path in enumerate(paths):
        calc = MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")
        for atoms, e in zip(run.store.atoms(ids), expected[k]):
            atoms.calc = calc
            assert atoms.get_potential_energy() == pytest.approx(e, abs=1e-8)
    assert write_report(run.run_dir).exists()
