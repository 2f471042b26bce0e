"""Replay labels, and a run that waits for labels computed elsewhere."""
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from conftest import h3, h3_set

from aloop.campaign_labelers import ReplaySettings
from aloop.labelers import DONE, FAILED, PENDING, Label, LabelError
from aloop.labelers.replay import ReplayLabeler, stored_energy


def replay(folder, path, **settings) -> ReplayLabeler:
    """The labeler a campaign's section with these settings builds (the schema's defaults for the rest)."""
    return ReplayLabeler.from_settings(folder, ReplaySettings(kind="replay", path=path, **settings))


def test_replay_matches_by_position_within_tolerance(tmp_path):
    frames = h3_set(4)
    for i, a in enumerate(frames):
        a.info.update(energy=-40.0 - i, energy_sigma=0.01 * i)
    write(tmp_path / "labels.extxyz", frames)
    labeler = replay(tmp_path / "jobs", tmp_path / "labels.extxyz", sigma_key="energy_sigma", tolerance=1e-3)
    probe = frames[2].copy()
    probe.positions += 5e-4
    labeler.submit("k2", probe)
    assert labeler.poll("k2") == DONE
    label = labeler.collect("k2")
    assert (label.energy, label.sigma) == (pytest.approx(-42.0), pytest.approx(0.02))
    assert label.provenance["frame"] == 2
    labeler.submit("far", h3(1.9, 1.9))
    assert labeler.poll("far") == FAILED
    with pytest.raises(LabelError, match="matches"):
        labeler.collect("far")
    assert labeler.poll("never-submitted") == PENDING


def test_replay_file_without_energies_names_the_key(tmp_path):
    write(tmp_path / "bare.extxyz", h3_set(2))
    with pytest.raises(ValueError, match="labeler.energy_key"):
        replay(tmp_path / "jobs", tmp_path / "bare.extxyz", energy_key="e_qmc")


def test_energies_of_a_calculator_stored_by_extxyz_are_found_under_their_own_keys(tmp_path):
    """What test_set.energy_key and labeler.energy_key accept: a field of the frame, or a scalar
    result of the calculator that wrote the file (extxyz reads `energy`, `free_energy` back into one)."""
    frames = h3_set(3)
    for i, a in enumerate(frames):
        a.calc = SinglePointCalculator(a, energy=-1.0 - i, free_energy=-1.5 - i, energies=np.zeros(3))
        a.info["e_qmc"] = -2.0 - i
    write(tmp_path / "calc.extxyz", frames)
    back = read(tmp_path / "calc.extxyz", index=":")
    assert "free_energy" not in back[1].info and back[1].calc is not None   # where ASE puts it
    assert [stored_energy(back[1], k) for k in ("energy", "free_energy", "e_qmc")] == [-2.0, -2.5, -3.0]
    assert stored_energy(back[1], "energies") is None    # per atom: not an energy of the configuration
    labeler = replay(tmp_path / "jobs", tmp_path / "calc.extxyz", energy_key="free_energy")
    labeler.submit("k", frames[2])
    assert labeler.collect("k").energy == pytest.approx(-3.5)


class QueueLabeler:
    """Jobs finish only when the 'cluster' (the test) writes their result."""

    name = "queue"

    def __init__(self, results: dict):
        self.results, self.submitted = results, []

    def submit(self, key, atoms):
        if key not in self.submitted:
            self.submitted.append(key)

    def poll(self, key):
        return DONE if key in self.results else PENDING

    def collect(self, key):
        return Label(self.results[key], 0.01, {"method": "fake-dmc"})


def test_loop_waits_for_external_labels_and_continues(tmp_path, monkeypatch):
    import torch
    from conftest import tiny_mace

    from aloop import loop
    from aloop.campaign import load_campaign

    torch.save(tiny_mace(), tmp_path / "tiny.model")
    write(tmp_path / "pool.extxyz", h3_set(20))
    (tmp_path / "c.yaml").write_text(
        "name: wait\nmodel: {path: tiny.model}\npool: {sources: [{kind: file, name: p, path: pool.extxyz}]}\n"
        "committee: {size: 2}\nacquisition: {batch_size: 3}\n"
        "labeler: {kind: replay, path: pool.extxyz}\nstop: {max_labels: 6}\n"
    )
    results: dict = {}
    fake = QueueLabeler(results)
    monkeypatch.setattr(loop, "make_labeler", lambda spec, run_dir, campaign: fake)
    run = loop.CampaignRun(load_campaign(tmp_path / "c.yaml"), progress=False)
    with pytest.raises(loop.WaitingForLabels, match="3 jobs queued in"):
        run.run()
    assert len(fake.submitted) == 3 and run.store.count(state="labelled") == 0
    for key in fake.submitted:  # the cluster finishes the jobs
        results[key] = -40.0
    with pytest.raises(loop.WaitingForLabels):  # the next batch is queued in turn
        run.run()
    assert run.store.count(state="labelled") == 3 and len(fake.submitted) == 6
    for key in fake.submitted:
        results[key] = -40.0
    result = run.run()
    assert result.n_labels == 6 and "label budget" in result.stop_reason
    assert np.all(run.store.labels()[1] == -40.0)


def test_ase_calculator_labeler_and_bad_import_paths(tmp_path):
    from ase.calculators.emt import EMT

    from aloop.labelers.ase_calculator import ASECalculatorLabeler

    labeler = ASECalculatorLabeler(tmp_path / "jobs", "ase.calculators.emt:EMT")
    atoms = h3(0.8, 1.1, 120)
    labeler.submit("a", atoms)
    label = labeler.collect("a")
    reference = atoms.copy()
    reference.calc = EMT()
    assert label.energy == pytest.approx(reference.get_potential_energy()) and label.sigma == 0.0
    assert label.provenance["method"] == "ase.calculators.emt:EMT"
    with pytest.raises(ValueError, match="labeler.calculator: cannot import module 'no_such_pkg'"):
        ASECalculatorLabeler(tmp_path / "j2", "no_such_pkg:Calc")
    with pytest.raises(ValueError, match="has no 'Nope'"):
        ASECalculatorLabeler(tmp_path / "j3", "ase.calculators.emt:Nope")
    with pytest.raises(ValueError, match="labeler.parameters"):
        ASECalculatorLabeler(tmp_path / "j4", "ase.calculators.emt:EMT", {"bogus": 1})
