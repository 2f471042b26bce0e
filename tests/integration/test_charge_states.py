"""One campaign across two charge states, on a tiny model with MACE's charge and spin embeddings:
each candidate keeps its charge and 2S through the pool, its label is computed for that state, and
the exported model gives the committee's energy for it when MACE's calculator is told the state."""
import numpy as np
import pytest
import torch
from ase.io import write
from conftest import CHARGE_SPIN, h3_set, tiny_mace
from mace.calculators import MACECalculator

from aloop.campaign import load_campaign
from aloop.loop import CampaignRun
from aloop.store import LABELLED

CAMPAIGN = """
name: charged
seed: 1
model: {path: tiny.model}
pool:
  sources:
    - {kind: file, name: states, path: pool.extxyz}
    - {kind: file, name: ie, path: ie.extxyz}     # one geometry, neutral then cation
    - {kind: md, name: md, start: cation.xyz, temperatures: [300], steps: 20, interval: 10}
committee: {size: 2}
acquisition: {strategy: random, batch_size: 4, initial_size: 4}
labeler: {kind: pyscf, method: hf, basis: sto-3g}
stop: {max_labels: 8}
evaluation:
  observables: [{kind: difference, name: ie, path: ie}]
"""


def test_two_charge_states_in_one_campaign(tmp_path):
    torch.save(tiny_mace(embedding_specs=CHARGE_SPIN), tmp_path / "tiny.model")
    pool = h3_set(12, seed=5)
    for i, atoms in enumerate(pool):   # H3 (doublet) and H3+ (singlet), alternating
        atoms.info.update(charge=i % 2, spin=1 - i % 2)
    write(tmp_path / "pool.extxyz", pool)
    neutral, cation = h3_set(1, seed=8)[0], h3_set(1, seed=8)[0]
    neutral.info.update(charge=0, spin=1)
    cation.info.update(charge=1, spin=0)
    write(tmp_path / "ie.extxyz", [neutral, cation])
    write(tmp_path / "cation.xyz", cation, format="extxyz")
    (tmp_path / "charged.yaml").write_text(CAMPAIGN)
    run = CampaignRun(load_campaign(tmp_path / "charged.yaml"), progress=False)
    assert run.run().n_labels == 8
    md = run.store.atoms(run.store.source_ids("md"))   # MD snapshots keep their start's charge state
    assert len(md) == 2 and all((a.info["charge"], a.info["spin"]) == (1, 0) for a in md)
    rows = run.store.rows(state=LABELLED)
    states = {(r.data["provenance"]["charge"], r.data["provenance"]["spin"]) for r in rows}
    assert states == {(0, 1), (1, 0)}
    for row, atoms in zip(rows, run.store.atoms([r.id for r in rows])):
        assert (atoms.info["charge"], atoms.info["spin"]) == (row.data["provenance"]["charge"],
                                                              row.data["provenance"]["spin"])
    # H3+ lies eV above H3 at HF/STO-3G; the labels say so and the committee learns a charge-dependent energy
    ids, energies, _ = run.store.labels()
    atoms = run.store.atoms(ids)
    charges = np.array([a.info["charge"] for a in atoms])
    assert energies[charges == 1].mean() - energies[charges == 0].mean() > 5.0
    committee = run.load_committee(run.store.iterations()[-1]["iteration"])
    mean = committee.predict(run.features(ids))[0]
    # the difference observable: E(cation) − E(neutral) of the same geometry, both frames kept
    ie_ids = run.store.source_ids("ie")
    assert len(ie_ids) == 2
    members = committee.member_energies(run.features(ie_ids))
    record = run.store.iterations()[-1]["observables"]["ie"]
    assert record["mean"] == pytest.approx(float(np.mean(members[:, 1] - members[:, 0])), abs=1e-9)
    assert record["path"] == "frozen"
    path = [p for p in run.export() if p.name == "committee_mean.model"][0]
    calc = MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")
    for a, e in zip(atoms, mean):
        a = a.copy()
        a.info["spin"] = a.info["spin"] + 1   # MACE's calculator reads the multiplicity 2S+1
        a.calc = calc
        assert a.get_potential_energy() == pytest.approx(e, abs=1e-8)
