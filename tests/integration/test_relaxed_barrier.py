"""The barrier observable on the committee mean's own relaxed CI-NEB (issue: track the model's own
barrier): it is the exported model's barrier, its path points join the pool, a fork leaves out the
points of the iterations it drops, and `relax: false` keeps the frozen-path values."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import file_energies

from aloop import metrics, reaction_path
from aloop.backbone import Backbone
from aloop.campaign import load_campaign
from aloop.fork import fork_run
from aloop.loop import PATH_POINT_TOLERANCE, CampaignRun
from aloop.neb import relax_path
from aloop.store import RunStore

H3 = Path(__file__).resolve().parents[2] / "campaigns" / "h3-exchange"
CAMPAIGN = """
name: {name}
seed: 1
model: {{path: base_pbe.model}}
pool:
  sources:
    - {{kind: file, name: frames, path: ccsdt_test.extxyz}}
    - {{kind: neb, name: exchange, initial: reactant.xyz, final: product.xyz, guess: saddle_pbe.xyz,
        images: 5, fmax: 0.03, steps: 2000}}
committee: {{size: 4}}
acquisition: {{strategy: max_std, batch_size: 4, initial_size: 4}}
labeler: {{kind: ase, calculator: "conftest:RaisedSaddle", parameters: {{model: {model}}}}}
stop: {{max_labels: 12}}
evaluation:
  observables: [{{kind: barrier, name: barrier, path: exchange{relax}}}]
"""


def campaign_file(folder: Path, name: str, relax: str = "") -> Path:
    for f in ("base_pbe.model", "reactant.xyz", "product.xyz", "saddle_pbe.xyz", "ccsdt_test.extxyz"):
        if not (folder / f).exists():
            shutil.copy(H3 / f, folder / f)
    path = folder / f"{name}.yaml"
    path.write_text(CAMPAIGN.format(name=name, relax=relax, model=folder / "base_pbe.model"))
    return path


@pytest.fixture(scope="module")
def relaxed_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("relaxed")
    path = campaign_file(folder, "relaxed")
    run = CampaignRun(load_campaign(path), progress=False)
    run.run()
    run.campaign_file = path
    return run


def test_relaxed_barrier_is_the_exported_models_ci_neb(relaxed_run):
    run = relaxed_run
    records = run.store.iterations()
    assert len(records) == 3
    last = records[-1]["observables"]["barrier"]
    assert last["path"] == "relaxed" and last["neb_converged"]
    exported = run.export(members=False)[0]
    # a CI-NEB of the exported file, from the base model's pool path (not the run's chain of paths)
    direct = relax_path(run.store.atoms(run.store.source_ids("exchange")), Backbone.from_file(exported, device="cpu"),
                        fmax=0.03, steps=2000)
    assert direct.converged
    assert last["mean"] == pytest.approx(direct.barrier, abs=2e-3)
    # the path the run kept is evaluated by the exported file as the run recorded it
    kept = reaction_path.load(run.layout.path("barrier", records[-1]["iteration"]))
    np.testing.assert_allclose(file_energies(exported, kept.images), kept.energies, atol=1e-6)
    assert last["mean"] == pytest.approx(kept.barrier, abs=1e-9)
    # the spread is the members' on that path, each its own highest image minus its first
    thetas = run.load_committee(records[-1]["iteration"]).thetas_
    members = metrics.barrier(run.backbone.features(kept.images).energies(thetas))
    np.testing.assert_allclose(last["members"], members, atol=1e-9)
    base = run.store.get_meta("base_observables")["barrier"]
    assert base["path"] == "relaxed" and base["mean"] == pytest.approx(0.1635, abs=2e-3)   # base_pbe.json's CI-NEB


def test_a_kept_path_is_read_back_not_relaxed_again(relaxed_run, monkeypatch):
    run = relaxed_run
    obs = run.campaign.evaluation.observables[0]
    before = reaction_path.load(run.layout.path("barrier", 1))
    monkeypatch.setattr(reaction_path, "relax_path", lambda *a, **k: pytest.fail("relaxed again"))
    again = reaction_path.relaxed(run, obs, 1, run.mean_surface(run.load_committee(1)))
    assert again.barrier == before.barrier


def test_path_points_join_the_pool_and_a_fork_drops_later_ones(relaxed_run, tmp_path):
    run = relaxed_run
    # what the run offered: every point of its paths that is not within the tolerance of an earlier
    # one or of the source's images, with the iteration that made it
    points = run.store.rows(source="path:barrier")
    known = [a.positions for a in run.store.atoms(run.store.source_ids("exchange"))]
    expected, roles = [], []
    for it in range(3):
        key_points = reaction_path.key_points(reaction_path.load(run.layout.path("barrier", it)))
        for atoms, role in zip(key_points, reaction_path.KEY_POINT_ROLES):
            if all(np.abs(atoms.positions - x).max() > PATH_POINT_TOLERANCE for x in known):
                known.append(atoms.positions)
                expected.append(it)
                roles.append(role)
    assert sorted(row.added for row in points) == expected
    # each knows what it was on its path: the saddle check reads the labels of role "saddle"
    assert [row.role for row in sorted(points, key=lambda r: r.id)] == roles
    # a later path whose reactant moved by 0.05 Å and saddle by 0.01 Å offers the reactant alone,
    # once; a fork before that iteration leaves it out
    fork_dir = tmp_path / "fork"
    fork_run(run.run_dir, fork_dir, iteration=3)
    forked = CampaignRun(load_campaign(run.campaign_file, run_dir=fork_dir), progress=False)
    moved = reaction_path.load(forked.layout.path("barrier", 2))
    moved.images[0].positions[2, 0] += 0.05
    moved.images[moved.saddle].positions[0, 0] += 0.01
    reaction_path.save(forked.layout.path("barrier", 2), moved)
    for _ in range(2):
        forked.add_path_points(2)
    new = [row for row in forked.store.rows(source="path:barrier") if row.id not in {r.id for r in points}]
    assert len(new) == 1 and new[0].added == 2
    np.testing.assert_allclose(new[0].positions, moved.images[0].positions)
    again = fork_run(fork_dir, tmp_path / "fork2", iteration=2)
    assert sorted(row.added for row in again.rows(source="path:barrier")) == [e for e in expected if e < 2]
    assert sorted(p.name for p in (tmp_path / "fork2" / "paths" / "barrier").iterdir()) == \
        ["base.extxyz", "iter_000.extxyz", "iter_001.extxyz"]


def test_a_band_that_leaves_the_domain_is_flagged_and_not_started_from(relaxed_run, tmp_path):
    # the MoS2 contact oracle drove a committee mean's band into an S–S pair at 1.16 Å; here two H
    # atoms of one image are pushed to 0.2 Å
    fork_dir = tmp_path / "fork"
    fork_run(relaxed_run.run_dir, fork_dir, iteration=3)
    run = CampaignRun(load_campaign(relaxed_run.campaign_file, run_dir=fork_dir), progress=False)
    obs = run.campaign.evaluation.observables[0]
    inside = reaction_path.load(run.layout.path("barrier", 1))
    assert "outside_domain" not in reaction_path.observable(run, inside, run.load_committee(1))
    collapsed = reaction_path.load(run.layout.path("barrier", 2))
    image = collapsed.images[2]
    image.positions[1] = image.positions[0] + [0.2, 0.0, 0.0]
    reaction_path.save(run.layout.path("barrier", 2), collapsed)
    record = reaction_path.observable(run, reaction_path.load(run.layout.path("barrier", 2)), run.load_committee(2))
    assert record["outside_domain"].startswith("image 2: H-H at 0.200 Å")
    start = reaction_path._start(run, obs, 3)   # the next band starts from the last one inside
    np.testing.assert_allclose(np.array([a.positions for a in start]), np.array([a.positions for a in inside.images]))


def test_relax_false_reads_the_frozen_pool_path(tmp_path):
    run = CampaignRun(load_campaign(campaign_file(tmp_path, "frozen", relax=", relax: false")), progress=False)
    run.run(max_iterations=2)
    store = RunStore(run.run_dir)
    for record in store.iterations():
        thetas = run.load_committee(record["iteration"]).thetas_
        frozen = metrics.barrier(run.features(store.source_ids("exchange")).energies(thetas))
        obs = record["observables"]["barrier"]
        assert obs["path"] == "frozen" and obs["members"] == pytest.approx(frozen.tolist(), abs=1e-12)
        assert obs["mean"] == pytest.approx(frozen.mean(), abs=1e-12)
    assert store.count(source="path:barrier") == 0 and not (tmp_path / "runs" / "frozen" / "paths").exists()
    base = store.get_meta("base_observables")["barrier"]
    expected = metrics.barrier(run.features(store.source_ids("exchange")).energies(run.backbone.theta0))
    assert base["path"] == "frozen" and base["mean"] == pytest.approx(float(expected), abs=1e-12)
