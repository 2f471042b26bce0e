"""`aloop ingest` / `aloop requeue` on job folders holding real QMCPACK output (../shared/fixtures)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from ase.units import Hartree
from conftest import write_pseudos
from test_qmcpack_labeler import mos2, spec
from test_scalar_dat import reference_stats

from aloop.ingest import ingest, requeue
from aloop.labelers import DONE, FAILED, make_labeler
from aloop.labelers.scalar_dat import read_scalar
from aloop.loop import label_key
from aloop.report import status_text
from aloop.store import RunStore

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "qmcpack"
pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason="../shared/fixtures/qmcpack not present")
MAIN = FIXTURES / "dmc_batched.s002.scalar.dat"      # 200 blocks at τ = 0.01


def make_run(tmp_path, n=3, **changes):
    """A run whose first n candidates are selected and queued; the labeler section as stored by `aloop run`."""
    settings = spec(tmp_path, **{"timesteps": [0.01], "equilibration": 20, "min_blocks": 50, **changes})
    run_dir = tmp_path / "run"
    store = RunStore(run_dir)
    ids = store.add_candidates([mos2() for _ in range(n + 1)], "p")[:n]
    store.set_meta("campaign", {"name": "t", "labeler": settings.model_dump(mode="json")})
    store.mark_selected(ids, 0, [np.nan] * n, [np.nan] * n, [0.0] * n)
    labeler = make_labeler(settings, run_dir, "t")
    for cid, atoms in zip(ids, store.atoms(ids)):
        labeler.submit(label_key(cid), atoms)
    return run_dir, store, labeler, [label_key(c) for c in ids]


def finish(job: Path, outputs: dict, status: str = "0", shift: float = 0.0):
    """What a finished job leaves: its scalar.dat files and run.sh's exit status. `shift` (Hartree)
    raises every LocalEnergy: the blocks of a job of its own, since ingest refuses blocks identical
    to another label's as copied outputs."""
    for name, source in outputs.items():
        if shift:
            lines = Path(source).read_text().splitlines()
            data = np.loadtxt(source)
            data[:, 1] += shift
            np.savetxt(job / name, data, header=lines[0].lstrip("#"), comments="#")
        else:
            shutil.copy(source, job / name)
    (job / "exit_status").write_text(status + "\n")


def state_of(store, key):
    row = store.db.get(id=int(key[4:]))
    return row.state, row.get("reason")


def test_label_reproduces_qmca_statistics_on_real_output(tmp_path):
    run_dir, store, labeler, keys = make_run(tmp_path, n=1)
    finish(labeler.workdir / keys[0], {"dmc.s002.scalar.dat": MAIN})
    (outcome,) = ingest(run_dir)
    mean, error, _ = reference_stats(list(read_scalar(MAIN)["LocalEnergy"][20:]))
    label = labeler.collect(keys[0])
    assert outcome.state == "labelled" and labeler.poll(keys[0]) == DONE
    # qmca prints Hartree; every printed digit agrees, and eV is Hartree × ase.units.Hartree
    assert f"{label.energy / Hartree:.6f}" == f"{mean:.6f}" and f"{label.sigma / Hartree:.6f}" == f"{error:.6f}"
    assert label.energy == pytest.approx(mean * Hartree, rel=1e-12) and label.sigma == pytest.approx(error * Hartree, rel=1e-9)
    ids, energies, sigmas = store.labels()
    assert energies[0] == label.energy and sigmas[0] == label.sigma
    provenance = store.db.get(id=ids[0]).data["provenance"]
    assert provenance["labeler"] == "qmcpack" and provenance["manifest_sha256"] and provenance["series"][0]["index"] == 2


def test_an_ingested_label_costs_its_blocks_times_ranks_and_threads(tmp_path):
    run_dir, store, labeler, keys = make_run(tmp_path, n=2)
    for key, shift in zip(keys, (0.0, 1e-3)):
        finish(labeler.workdir / key, {"dmc.s002.scalar.dat": MAIN}, shift=shift)
    # QMCPACK's own summary at the top of its log, as one group of 16 ranks × 4 threads prints it
    (labeler.workdir / keys[0] / "dmc.out").write_text("  Total number of MPI ranks = 16\n  Number of MPI groups      = 1\n"
                                                       "  Number of ranks in group  = 16\n  OMP 1st level threads     = 4\n")
    ingest(run_dir)
    block_s = read_scalar(MAIN)["BlockCPU"].sum()
    first, second = (store.db.get(id=int(key[4:])).data["provenance"] for key in keys)
    assert first["cpu"]["core_s"] == pytest.approx(block_s * 64, abs=1e-3)
    assert second["cpu"] is None   # no log: its ranks and threads are unknown
    assert f"core-hours: {block_s * 64 / 3600:.4g} spent on 1 labels (and 1 labels whose cost was not recorded)" \
        in status_text(run_dir)


def test_timestep_extrapolation_and_twist_average(tmp_path):
    run_dir, store, labeler, keys = make_run(tmp_path, n=1, timesteps=[0.02, 0.01], equilibration=[5, 20],
                                             min_blocks=10, twists=[2, 1, 1])
    job = labeler.workdir / keys[0]
    s1, s2 = FIXTURES / "dmc_batched.s001.scalar.dat", FIXTURES / "dmc_legacy.s001.scalar.dat"
    finish(job, {"dmc.g000.s002.scalar.dat": s1, "dmc.g001.s002.scalar.dat": s2,
                 "dmc.g000.s003.scalar.dat": MAIN, "dmc.g001.s003.scalar.dat": FIXTURES / "dmc_legacy.s002.scalar.dat"})
    assert ingest(run_dir)[0].state == "labelled"

    def twist_mean(files, eq):
        stats = [reference_stats(list(read_scalar(f)["LocalEnergy"][eq:])) for f in files]
        return np.mean([s[0] for s in stats]), np.sqrt(sum(s[1] ** 2 for s in stats)) / len(stats)
    (e1, d1), (e2, d2) = twist_mean([s1, s2], 5), twist_mean([MAIN, FIXTURES / "dmc_legacy.s002.scalar.dat"], 20)
    e0 = (0.01 * e1 - 0.02 * e2) / (0.01 - 0.02)         # the line through both points, at τ = 0
    d0 = np.hypot(0.01 * d1, 0.02 * d2) / 0.01
    label = labeler.collect(keys[0])
    assert label.energy == pytest.approx(e0 * Hartree, rel=1e-10) and label.sigma == pytest.approx(d0 * Hartree, rel=1e-8)
    assert label.provenance["twists"] == 2 and label.provenance["extrapolated"]


def broken(job: Path, kind: str):
    lines = MAIN.read_text().splitlines()
    if kind == "truncated":                       # the job was killed while writing
        lines[-1] = lines[-1][: len(lines[-1]) // 2]
    elif kind == "nan":
        fields = lines[120].split()
        fields[1] = "nan"
        lines[120] = "  ".join(fields)
    elif kind == "short":                         # 59 blocks: 39 left after equilibration, 50 needed
        lines = lines[:60]
    if kind != "missing":
        (job / "dmc.s002.scalar.dat").write_text("\n".join(lines) + "\n")
    (job / "exit_status").write_text("1\n" if kind == "crashed" else "0\n")


@pytest.mark.parametrize("kind, state, words", [
    ("missing", "failed", "no dmc.s002.scalar.dat"),
    ("truncated", "failed", "expected 12 columns"),
    ("nan", "failed", "non-finite"),
    ("short", "needs-more-blocks", "39 blocks after equilibration (20); at least 50 needed"),
    ("crashed", "failed", "run.sh stopped with exit status 1"),
])
def test_broken_results_get_a_state_and_a_reason_not_a_label(tmp_path, kind, state, words):
    run_dir, store, labeler, keys = make_run(tmp_path, n=2)
    broken(labeler.workdir / keys[0], kind)
    finish(labeler.workdir / keys[1], {"dmc.s002.scalar.dat": MAIN}, shift=1e-6)
    outcomes = {o.key: o for o in ingest(run_dir)}
    assert outcomes[keys[0]].state == state and words in outcomes[keys[0]].detail
    assert outcomes[keys[1]].state == "labelled"
    assert state_of(store, keys[0]) == ("failed", f"{state}: {outcomes[keys[0]].detail}"[:500])
    assert labeler.poll(keys[0]) == FAILED and labeler.record_of(keys[0])["state"] == state
    assert f"{state}:" in status_text(run_dir) and words in " ".join(status_text(run_dir).split())
    script = (labeler.workdir / "submit.sh").read_text()
    assert "--array=0\n" in script                      # only the job without a label is left to run
    # run again with enough output, ingest again: the label arrives, the other one is untouched
    before = store.db.get(id=int(keys[1][4:])).data["provenance"]
    finish(labeler.workdir / keys[0], {"dmc.s002.scalar.dat": MAIN})
    outcomes = {o.key: o.state for o in ingest(run_dir)}
    assert outcomes == {keys[0]: "labelled", keys[1]: "already labelled"}
    assert store.db.get(id=int(keys[1][4:])).data["provenance"] == before
    assert not (labeler.workdir / "submit.sh").exists()


def test_ingesting_twice_changes_nothing(tmp_path):
    run_dir, store, labeler, keys = make_run(tmp_path, n=3)
    finish(labeler.workdir / keys[0], {"dmc.s002.scalar.dat": MAIN})
    broken(labeler.workdir / keys[1], "short")            # keys[2] has not run yet

    def snapshot():
        rows = [(r.id, r.state, r.get("reason"), r.get("energy_hf"), r.get("sigma_hf"), json.dumps(r.data.get("provenance")))
                for r in store.rows()]
        files = {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.suffix != ".db"}
        return rows, files
    first = ingest(run_dir)
    assert [o.state for o in first] == ["labelled", "needs-more-blocks", "pending"]
    state = snapshot()
    second = ingest(run_dir)
    assert [o.state for o in second] == ["already labelled", "needs-more-blocks", "pending"]
    assert snapshot() == state


def test_settings_that_differ_from_the_labels_make_a_job_inconsistent(tmp_path):
    run_dir, store, labeler, keys = make_run(tmp_path, n=2)
    finish(labeler.workdir / keys[0], {"dmc.s002.scalar.dat": MAIN})
    assert ingest(run_dir)[0].state == "labelled"
    # the campaign was edited between batches: another timestep and a J3 for the next job
    other = make_labeler(spec(tmp_path, timesteps=[0.005], equilibration=20, jastrow={"j3": True}), run_dir, "t")
    shutil.rmtree(labeler.workdir / keys[1])
    other.submit(keys[1], mos2())
    finish(labeler.workdir / keys[1], {"dmc.s002.scalar.dat": MAIN}, shift=1e-6)
    outcome = {o.key: o for o in ingest(run_dir)}[keys[1]]
    assert outcome.state == "inconsistent" and f"first: {keys[0]}" in outcome.detail
    assert "timesteps: [0.005] here, [0.01] in the run's labels" in outcome.detail and "jastrow.j3" in outcome.detail
    assert state_of(store, keys[1])[0] == "failed" and store.count(state="labelled") == 1


def test_outputs_copied_back_from_elsewhere(tmp_path):
    run_dir, store, labeler, keys = make_run(tmp_path, n=3)
    back = tmp_path / "from-cluster"
    for k, key in enumerate(keys[:2]):                   # the cluster's copies of two job folders
        shutil.copytree(labeler.workdir / key, back / key)
        finish(back / key, {"dmc.s002.scalar.dat": MAIN}, shift=k * 1e-6)
    manifest = json.loads((back / keys[1] / "manifest.json").read_text())
    manifest["series"][0]["timestep"] = 0.02             # run from an edited copy of the job
    (back / keys[1] / "manifest.json").write_text(json.dumps(manifest))
    outcomes = {o.key: o for o in ingest(run_dir, [back])}
    assert outcomes[keys[0]].state == "labelled" and keys[2] not in outcomes
    assert outcomes[keys[1]].state == "inconsistent" and "belong to another version of the job" in outcomes[keys[1]].detail
    assert labeler.collect(keys[0]).provenance["results"] == str(back / keys[0])
    # a folder given explicitly is evaluated even without output: that is a failure, not a wait
    (back / keys[2]).mkdir()
    assert ingest(run_dir, [back / keys[2]])[0].state == "failed"
    with pytest.raises(ValueError, match="neither a job folder"):
        ingest(run_dir, [tmp_path])


def test_requeue_keeps_the_old_attempt_and_writes_a_fresh_job(tmp_path):
    run_dir, store, labeler, keys = make_run(tmp_path, n=2)
    broken(labeler.workdir / keys[0], "crashed")
    finish(labeler.workdir / keys[1], {"dmc.s002.scalar.dat": MAIN}, shift=1e-6)
    ingest(run_dir)
    (tmp_path / "S.upf").rename(tmp_path / "S.upf.away")       # a job that cannot be written: nothing moves
    with pytest.raises(ValueError, match="labeler.pseudopotentials.S.upf: file not found"):
        requeue(run_dir)
    assert (labeler.workdir / keys[0] / "exit_status").exists() and state_of(store, keys[0])[0] == "failed"
    (tmp_path / "S.upf.away").rename(tmp_path / "S.upf")
    assert requeue(run_dir) == [keys[0]]
    assert (labeler.workdir / f"{keys[0]}.attempt1" / "exit_status").exists()
    assert not (labeler.workdir / keys[0] / "exit_status").exists() and labeler.poll(keys[0]) == "pending"
    assert state_of(store, keys[0]) == ("selected", None)
    assert "--array=0\n" in (labeler.workdir / "submit.sh").read_text()
    with pytest.raises(ValueError, match="is labelled; a labelled job is never re-queued"):
        requeue(run_dir, [keys[1]])
    finish(labeler.workdir / keys[0], {"dmc.s002.scalar.dat": MAIN})
    assert ingest(run_dir)[0].state == "labelled" and store.count(state="labelled") == 2


def test_charge_and_spin_of_a_candidate_reach_its_job(tmp_path):
    store = RunStore(tmp_path / "run")
    (cid,) = store.add_candidates([mos2(charge=-1, spin=3)], "defects")
    atoms = store.atoms([cid])[0]
    assert (atoms.info["charge"], atoms.info["spin"]) == (-1, 3)
    labeler = make_labeler(spec(tmp_path), tmp_path / "run", "t")
    labeler.submit(label_key(cid), atoms)
    assert labeler.manifest(label_key(cid))["electrons"] == {"up": 54, "down": 51, "total": 105, "charge": -1, "spin": 3}


def test_ingest_refuses_a_run_of_another_labeler(tmp_path):
    store = RunStore(tmp_path / "run")
    store.set_meta("campaign", {"name": "x", "labeler": {"kind": "pyscf"}})
    with pytest.raises(ValueError, match="only labeler kind 'qmcpack' has results to ingest"):
        ingest(tmp_path / "run")
    with pytest.raises(ValueError, match="not an aloop run directory"):
        ingest(tmp_path / "nothing")


def test_run_waits_with_exit_code_3_and_continues_after_ingest(tmp_path, capsys):
    import torch
    from ase.io import write
    from conftest import h3_set, tiny_mace

    from aloop.cli import main

    torch.save(tiny_mace(), tmp_path / "tiny.model")
    frames = h3_set(8)
    for atoms in frames:                                  # periodic boxes: QMCPACK jobs need a cell
        atoms.cell, atoms.pbc = [10.0, 10.0, 10.0], True
        atoms.center()
    write(tmp_path / "pool.extxyz", frames)
    write_pseudos(tmp_path, {"H": 1})
    (tmp_path / "c.yaml").write_text(
        "name: dmc\nrun_dir: runs/here\nmodel: {path: tiny.model}\npool: {sources: [{kind: file, name: p, path: pool.extxyz}]}\n"
        "committee: {size: 2}\nacquisition: {batch_size: 2, initial_size: 3}\n"
        "labeler: {kind: qmcpack, ecut: 50, spin: 1, timesteps: [0.01], equilibration: 20, min_blocks: 50,\n"
        "          pseudopotentials: {H: {upf: H.upf, xml: H.xml}}}\nstop: {max_labels: 5}\n")
    run_dir, queue = tmp_path / "runs" / "here", tmp_path / "runs" / "here" / "queue"
    assert main(["run", str(tmp_path / "c.yaml"), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert f"3 jobs queued in {queue}" in err and f"aloop ingest {run_dir}" in err
    keys = (queue / "jobs.txt").read_text().split()
    assert len(keys) == 3 and "--array=0-2" in (queue / "submit.sh").read_text()

    def names():   # run and ingest name the batch job after the campaign, not the folder
        return json.loads((queue / "index.json").read_text())["campaign"], "#SBATCH --job-name=aloop-dmc" in (
            queue / "submit.sh").read_text()
    assert names() == ("dmc", True)
    for k, key in enumerate(keys[:2]):
        finish(queue / key, {"dmc.s002.scalar.dat": MAIN}, shift=k * 1e-6)
    broken(queue / keys[2], "short")
    assert main(["ingest", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "2 labelled, 1 needs-more-blocks" in out and names() == ("dmc", True)
    assert main(["status", str(run_dir)]) == 0
    assert "needs-more-blocks" in capsys.readouterr().out
    assert main(["run", str(tmp_path / "c.yaml"), "--quiet"]) == 3   # trained on 2 labels, next batch queued
    assert "2 jobs queued" in capsys.readouterr().err
    store = RunStore(run_dir)
    assert store.count(state="labelled") == 2 and len(store.iterations()) == 1 and store.count(state="selected") == 2
    assert len((queue / "jobs.txt").read_text().split()) == 5
