"""Campaign file loading: a valid file loads with defaults; every bad file gets a precise message."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from ase import Atoms
from ase.io import write

from aloop.campaign import BarrierObservable, Campaign, CampaignError, MDSource, NEBSource, load_campaign
from aloop.campaign_labelers import PySCFSettings

VALID = """\
name: h3-exchange
device: cpu
model:
  path: model.pt
pool:
  sources:
    - {kind: file, name: dft, path: data/pool.xyz, forces_key: dft_forces}
    - {kind: md, name: md300, start: data/start.xyz, temperatures: [300, 600]}
    - {kind: neb, name: exchange, initial: data/start.xyz, final: data/end.xyz}
finetune:
  noise_floor: 0.005
acquisition:
  strategy: max_std
labeler:
  kind: pyscf
  basis: cc-pvdz
stop:
  max_labels: 40
  observable: {name: barrier, tolerance: 0.01}
evaluation:
  test_set: {path: data/test.xyz}
  observables:
    - {kind: barrier, name: barrier, path: exchange, reference: 0.42}
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    atoms = Atoms("H3", positions=[[0, 0, 0], [0, 0, 0.93], [0, 0, 2.6]])
    for name in ("pool.xyz", "start.xyz", "end.xyz", "test.xyz"):
        write(tmp_path / "data" / name, atoms)
    (tmp_path / "model.pt").write_bytes(b"not really a model")
    return tmp_path


def _write(folder: Path, text: str, name: str = "campaign.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def _edit(old: str, new: str) -> str:
    assert old in VALID, old
    return VALID.replace(old, new, 1)


def test_valid_campaign_loads_with_defaults(folder: Path) -> None:
    path = _write(folder, VALID)
    c = load_campaign(path)
    assert isinstance(c, Campaign)
    assert c.name == "h3-exchange" and c.seed == 0 and c.device == "cpu"
    assert c.run_dir == (folder / "runs" / "h3-exchange").resolve()
    assert c.model.path == (folder / "model.pt").resolve() and c.model.head is None
    file_src, md, neb = c.pool.sources
    assert file_src.path.is_absolute() and file_src.index == ":" and file_src.forces_key == "dft_forces"
    assert isinstance(md, MDSource) and md.temperatures == [300.0, 600.0]
    assert (md.steps, md.interval, md.timestep, md.friction) == (500, 10, 0.5, 0.02)
    assert isinstance(neb, NEBSource) and neb.images == 7 and neb.climb and neb.fmax == 0.05
    assert (c.committee.size, c.committee.bootstrap, c.committee.seed) == (5, True, 0)
    ft = c.finetune
    assert (ft.force_threshold, ft.force_weight, ft.noise_floor) == (0.5, 1.0, 0.005)
    assert c.acquisition.strategy == "max_std"
    assert c.acquisition.batch_size == 4 and c.acquisition.initial_size == 4
    assert isinstance(c.labeler, PySCFSettings)
    assert (c.labeler.method, c.labeler.basis, c.labeler.spin, c.labeler.conv_tol) == ("ccsd(t)", "cc-pvdz", None, 1e-9)
    assert c.stop.max_labels == 40 and c.stop.max_iterations is None and c.stop.uncertainty_ratio is None
    assert c.stop.observable.window == 3
    assert c.evaluation.test_set.path == (folder / "data" / "test.xyz").resolve()
    assert c.evaluation.test_set.energy_key == "energy"
    (obs,) = c.evaluation.observables
    assert isinstance(obs, BarrierObservable) and obs.reference == 0.42 and obs.low_fidelity is None


def test_minimal_campaign_and_replay_labeler(folder: Path) -> None:
    path = _write(folder, """\
        name: tiny
        run_dir: out/here
        model: {path: model.pt, head: Default}
        pool: {sources: [{kind: file, name: p, path: data/pool.xyz, index: 0}]}
        acquisition: {batch_size: 8}
        labeler: {kind: replay, path: data/test.xyz, sigma_key: sigma}
        stop: {max_labels: 10}
        """, name="sub.yaml")
    c = load_campaign(str(path))
    assert c.run_dir == (folder / "out" / "here").resolve()
    assert c.pool.sources[0].index == "0"
    assert c.acquisition.initial_size == 8
    assert c.labeler.kind == "replay" and c.labeler.path.is_absolute() and c.labeler.tolerance == 1e-4
    assert c.evaluation.test_set is None and c.evaluation.observables == []


def test_relative_paths_follow_the_campaign_file_not_cwd(folder: Path, tmp_path_factory, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    c = load_campaign(_write(folder, VALID))
    assert c.model.path == (folder / "model.pt").resolve()


def test_to_dict_is_json_round_trip(folder: Path) -> None:
    c = load_campaign(_write(folder, VALID))
    d = c.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["model"]["path"] == str((folder / "model.pt").resolve())
    assert d["acquisition"]["initial_size"] == 4
    assert d["pool"]["sources"][1]["kind"] == "md"
    # the dump is itself a valid campaign (all paths absolute)
    again = Campaign.model_validate(d)
    assert again.to_dict() == d


BAD = [
    pytest.param(VALID + "sed: 3\n", "campaign.yaml: sed: unknown key", id="unknown-top-level-key"),
    pytest.param(VALID + "sed: 3\n", "allowed keys: name, run_dir, seed", id="unknown-key-lists-allowed"),
    pytest.param(_edit("noise_floor: 0.005", "noise_flor: 0.005"),
                 "finetune.noise_flor: unknown key (did you mean 'noise_floor'?); allowed keys: force_threshold, "
                 "force_threshold_per_atom, force_weight, noise_floor, readout, kind, delta_width, multifidelity",
                 id="finetune-typo"),
    pytest.param(_edit("noise_floor: 0.005", "readout: ful"),
                 "campaign.yaml: finetune.readout: expected one of: linear, full; got 'ful'", id="bad-readout"),
    pytest.param(VALID + "committee: {prior_sigma: large}\n",
                 "campaign.yaml: committee.prior_sigma: expected a number > 0 (eV/atom) or auto, got 'large'", id="bad-prior-sigma"),
    pytest.param(_edit("noise_floor: 0.005", "kind: delta").replace("strategy: max_std", "strategy: targeted"),
                 "acquisition.strategy: targeted needs one posterior over the trained parameters, and finetune.kind "
                 "delta's members each train a correction on their own random hidden layer", id="delta-targeted"),
    pytest.param(_edit("noise_floor: 0.005", "kind: multifidelity"),
                 "campaign.yaml: finetune.kind: multifidelity trains the backbone on the base model's own data as well "
                 "as the labels; give model.training_data", id="multifidelity-without-training-data"),
    pytest.param(_edit("noise_floor: 0.005", "multifidelity: {every: 2}"),
                 "finetune: multifidelity: these settings are for kind: multifidelity, and kind is 'readout'",
                 id="multifidelity-settings-without-kind"),
    pytest.param(_edit("noise_floor: 0.005", "kind: multifidelity\n  multifidelity: {epocs: 2}"),
                 "finetune.multifidelity.epocs: unknown key (did you mean 'epochs'?)", id="multifidelity-typo"),
    pytest.param(_edit("noise_floor: 0.005",
                       "noise_floor: 0.005\n  force_threshold: 0.3\n  force_threshold_per_atom: 0.1"),
                 "finetune: force_threshold and force_threshold_per_atom are both given; keep one",
                 id="two-force-thresholds"),
    pytest.param(_edit("noise_floor: 0.005", "noise_floor: -1"), "campaign.yaml: finetune.noise_floor: must be > 0, got -1",
                 id="negative-noise-floor"),
    pytest.param(_edit("strategy: max_std", "strategy: maxstd"),
                 "acquisition.strategy: expected one of: random, max_std, diverse, targeted; got 'maxstd'", id="bad-strategy"),
    pytest.param(_edit("strategy: max_std", "strategy: targeted\n  targets: [barrier, barier]"),
                 "campaign.yaml: acquisition.targets: no observable named 'barier'; expected names of "
                 "evaluation.observables: barrier", id="targeted-unknown-target"),
    pytest.param(_edit("strategy: max_std", "strategy: diverse\n  targets: [barrier]"),
                 "acquisition.targets: only strategy targeted uses targets", id="targets-without-targeted"),
    pytest.param(_edit("strategy: max_std", "strategy: diverse\n  repeats: true"),
                 "acquisition.repeats: only strategy targeted values a second label", id="repeats-without-targeted"),
    pytest.param(_edit("strategy: max_std", "strategy: targeted\n  repeats: true"),
                 "acquisition.repeats: labeler 'pyscf' gives the same label every time", id="repeats-deterministic-labeler"),
    pytest.param(_edit("strategy: max_std", "strategy: random\n  cost_aware: true"),
                 "acquisition.cost_aware: strategy random has no value to divide by a cost", id="cost-aware-random"),
    pytest.param(_edit("strategy: max_std", "strategy: max_std\n  cost_model: {core_hours: 2, per: molecule}"),
                 "acquisition.cost_model.per: expected one of: configuration, atom, electron; got 'molecule'",
                 id="cost-model-per"),
    pytest.param(_edit("kind: pyscf", "kind: casino"),
                 "labeler.kind: expected one of: pyscf, replay, ase, qmcpack", id="labeler-unknown-kind"),
    pytest.param(_edit("basis: cc-pvdz", "basis: cc-pvdz\n  methd: ccsd"),
                 "labeler.methd: unknown key (did you mean 'method'?)", id="labeler-typo-no-tag-in-path"),
    pytest.param(_edit("path: model.pt", "path: missing.pt"), "model.path: file not found: ",
                 id="missing-model-file"),
    pytest.param(_edit("temperatures: [300, 600]", "temperatures: []"),
                 "pool.sources.1.temperatures: must have at least 1 item", id="md-empty-temperatures"),
    pytest.param(_edit("temperatures: [300, 600]", "temperatures: [300, -5]"),
                 "pool.sources.1.temperatures.1: must be > 0, got -5", id="md-negative-temperature"),
    pytest.param(_edit("name: md300", "name: dft"),
                 "pool.sources: duplicate source name 'dft'", id="duplicate-source-names"),
    pytest.param(_edit("path: exchange", "path: nosuch"),
                 "evaluation.observables.0.path: no pool source named 'nosuch'; expected one of the neb sources: exchange",
                 id="observable-missing-source"),
    pytest.param(_edit("path: exchange", "path: md300"),
                 "evaluation.observables.0.path: pool source 'md300' is of kind 'md', not 'neb'",
                 id="observable-non-neb-source"),
    pytest.param(_edit("observable: {name: barrier", "observable: {name: barier"),
                 "stop.observable.name: no observable named 'barier'; expected one of evaluation.observables: barrier",
                 id="stop-unknown-observable"),
    pytest.param(_edit("stop:", "committee: {size: 2}\nstop:"),
                 "committee.size: stop.observable trusts the committee's spread on the observable only once labels "
                 "whose energies move with it", id="stop-observable-two-members"),
    pytest.param(_edit("noise_floor: 0.005", "noise_floor: 0.005\n  epochs: 300\n  patience: 60"),
                 "campaign.yaml: finetune: epochs, patience: no longer used: every committee member is now fitted "
                 "exactly", id="retired-adam-settings"),
    pytest.param(_edit("max_labels: 40", "max_iterations: 3"),
                 "stop.max_labels: required field missing", id="missing-max-labels"),
    pytest.param(_edit("device: cpu", "device: gpu"),
                 "device: expected one of: auto, cpu, cuda, cuda:N; got 'gpu'", id="bad-device"),
    pytest.param(_edit("name: h3-exchange", "name: h3 exchange"), "campaign.yaml: name: must use only letters",
                 id="bad-name"),
    pytest.param(_edit("    - {kind: barrier", "    - {kind: dipole"),
                 "evaluation.observables.0.kind: expected one of: barrier, difference; got 'dipole'", id="observable-kind"),
    pytest.param(_edit("finetune:\n  noise_floor: 0.005", "finetune: 3"),
                 "finetune: expected a mapping", id="section-not-mapping"),
    pytest.param(_edit("{kind: neb, name: exchange,", "{name: exchange,"),
                 "pool.sources.2.kind: required field missing; expected one of: file, md, neb", id="source-without-kind"),
    pytest.param(_edit("strategy: max_std", "strategy: max_std\n  batch_size: many"),
                 "acquisition.batch_size: expected an integer, got 'many'", id="not-an-integer"),
    pytest.param("name: x\nmodel: [1\n", "campaign.yaml: line 3", id="yaml-syntax-error"),
    pytest.param("- name: x\n- model: y\n", "campaign.yaml: (top level): expected a mapping of sections",
                 id="top-level-list"),
    pytest.param("", "got an empty file", id="empty-file"),
]


@pytest.mark.parametrize("text, expected", BAD)
def test_bad_campaign_message(folder: Path, text: str, expected: str) -> None:
    with pytest.raises(CampaignError) as info:
        load_campaign(_write(folder, text))
    assert expected in str(info.value)
    for line in str(info.value).splitlines():
        assert line.startswith(str(folder / "campaign.yaml") + ": "), line


def test_readout_is_linear_unless_full_is_asked_for(folder: Path) -> None:
    assert load_campaign(_write(folder, VALID)).finetune.readout == "linear"
    assert load_campaign(_write(folder, _edit("noise_floor: 0.005", "readout: full"))).finetune.readout == "full"


def test_the_nonlinear_classes_relax_their_own_path(folder: Path) -> None:
    """A full or delta committee's average is one model, so `relax: true` is accepted; delta, whose
    members are linear in what they learn, takes the evidence's prior too."""
    c = load_campaign(_write(folder, _edit("noise_floor: 0.005", "readout: full")))
    assert c.evaluation.observables[0].relax
    c = load_campaign(_write(folder, _edit("noise_floor: 0.005", "kind: delta") + "committee: {prior_sigma: auto}\n"))
    assert c.committee.prior_sigma == "auto" and c.evaluation.observables[0].relax


def test_full_readout_takes_targeted(folder: Path) -> None:
    """`readout: full` linearises its posterior at the members' mean, so targeted is accepted."""
    c = load_campaign(_write(folder, _edit("noise_floor: 0.005", "readout: full").replace("strategy: max_std",
                                                                                          "strategy: targeted")))
    assert c.acquisition.strategy == "targeted" and c.finetune.readout == "full"


def test_targeted_needs_an_observable(folder: Path) -> None:
    text = _edit("strategy: max_std", "strategy: targeted").replace("  observable: {name: barrier, tolerance: 0.01}\n", "")
    text = text[:text.index("  observables:")]
    with pytest.raises(CampaignError, match="acquisition.strategy: targeted reduces the uncertainty of observables, "
                                            "and evaluation.observables is empty"):
        load_campaign(_write(folder, text))
    c = load_campaign(_write(folder, _edit("strategy: max_std", "strategy: targeted\n  cost_aware: true\n"
                                           "  cost_model: {core_hours: 0.5, per: electron, exponent: 3}")))
    assert c.acquisition.targets is None and c.acquisition.cost_model.per == "electron"


def test_missing_model_file_names_absolute_path(folder: Path) -> None:
    with pytest.raises(CampaignError, match="model.path: file not found: ") as info:
        load_campaign(_write(folder, _edit("path: model.pt", "path: missing.pt")))
    assert str((folder / "missing.pt").resolve()) in str(info.value)


def test_missing_campaign_file(tmp_path: Path) -> None:
    with pytest.raises(CampaignError, match="campaign file not found") as info:
        load_campaign(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_every_problem_is_reported(folder: Path) -> None:
    text = (_edit("noise_floor: 0.005", "noise_floor: -1\n  batchsize: 3")
            .replace("strategy: max_std", "strategy: greedy")
            .replace("kind: pyscf", "kind: dmc")
            .replace("max_labels: 40", "max_labels: 0")
            .replace("path: model.pt", "path: gone.pt")) + "colour: blue\n"
    with pytest.raises(CampaignError) as info:
        load_campaign(_write(folder, text))
    lines = str(info.value).splitlines()
    for where in ("finetune.noise_floor:", "finetune.batchsize:", "acquisition.strategy:", "labeler.kind:",
                  "stop.max_labels:", "model.path:", "colour:"):
        assert sum(f"campaign.yaml: {where}" in line for line in lines) == 1, (where, lines)
    assert len(lines) == 7
