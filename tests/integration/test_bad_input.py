"""Bad or awkward input, as a new user gives it: one row per case.

Each row: what is set up (a campaign file, a run folder, job outputs), the `aloop` command, the exit
code, words the message must contain, and what must become of the stored labels ("same": not one
changes; "kept": the old ones stay as they were, new ones may join; all labels are always finite).
Every row works on its own copy of a finished replay run (tiny model, 8-frame H3 pool), so the
table runs in-process in well under a minute.
"""
from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from ase import Atoms
from ase.io import read, write
from conftest import CHARGE_SPIN, h3_set, tiny_mace, write_pseudos

from aloop.cli import main
from aloop.store import LABELLED, RunStore

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "qmcpack"
MAIN = FIXTURES / "dmc_batched.s002.scalar.dat"      # 200 blocks at τ = 0.01

CAMPAIGN = {
    "name": "bad", "run_dir": "runs/bad", "model": {"path": "tiny.model"},
    "pool": {"sources": [{"kind": "file", "name": "p", "path": "pool.extxyz"}]},
    "committee": {"size": 2},
    "acquisition": {"batch_size": 2, "initial_size": 2},
    "labeler": {"kind": "replay", "path": "pool.extxyz"},
    "stop": {"max_labels": 4},
    "evaluation": {"test_set": {"path": "test.extxyz"}},
}
QMCPACK = {"kind": "qmcpack", "ecut": 50, "spin": 1, "timesteps": [0.01], "equilibration": 20, "min_blocks": 50,
           "pseudopotentials": {"H": {"upf": "H.upf", "xml": "H.xml"}}}


def frames_with_energy(n: int, seed: int) -> list[Atoms]:
    frames = h3_set(n, seed)
    for i, atoms in enumerate(frames):
        atoms.info["energy"] = -1.5 + 0.01 * i
    return frames


def merge(base: dict, changes: dict) -> dict:
    """`base` with `changes` merged in, section by section; a section of another kind replaces it."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        old = out.get(key)
        same_kind = isinstance(old, dict) and isinstance(value, dict) and value.get("kind", old.get("kind")) == old.get("kind")
        out[key] = merge(old, value) if same_kind and value else value
    return out


class Workspace:
    """A copy of the finished run and its files; `campaign(...)` writes a campaign with changes."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.run = folder / "runs" / "bad"

    def campaign(self, filename: str = "c.yaml", **changes) -> str:
        path = self.folder / filename
        path.write_text(yaml.safe_dump(merge(CAMPAIGN, changes)))
        return str(path)

    def fresh(self, filename: str = "c.yaml", **changes) -> str:
        """A campaign whose run starts in a new folder (runs/fresh)."""
        return self.campaign(filename, run_dir="runs/fresh", **changes)


def labels(run: Path) -> dict:
    if not (run / "aloop.db").is_file():
        return {}
    ids, energy, sigma = RunStore(run).labels()
    return {i: (e, s) for i, e, s in zip(ids, energy.tolist(), sigma.tolist())}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("finished")
    torch.save(tiny_mace(), folder / "tiny.model")
    write(folder / "pool.extxyz", frames_with_energy(8, 0))
    write(folder / "test.extxyz", frames_with_energy(3, 5))
    ws = Workspace(folder)
    assert main(["run", ws.campaign(), "--quiet"]) == 0
    return folder


@pytest.fixture(scope="module")
def queued(tmp_path_factory):
    """A QMCPACK run waiting for its first two jobs."""
    folder = tmp_path_factory.mktemp("queued")
    torch.save(tiny_mace(), folder / "tiny.model")
    frames = frames_with_energy(6, 1)
    for atoms in frames:                                  # periodic boxes: QMCPACK jobs need a cell
        atoms.cell, atoms.pbc = [10.0, 10.0, 10.0], True
        atoms.center()
    write(folder / "pool.extxyz", frames)
    write_pseudos(folder, {"H": 1})
    ws = Workspace(folder)
    assert main(["run", ws.campaign(labeler=QMCPACK, evaluation={}), "--quiet"]) == 3
    return folder


# --- what each row sets up -------------------------------------------------------------------

def text_campaign(text: str):
    def setup(ws):
        (ws.folder / "t.yaml").write_text(text)
        return ["validate", str(ws.folder / "t.yaml")]
    return setup


def validate(**changes):
    return lambda ws: ["validate", ws.fresh(**changes)]


def resume(*flags, **changes):
    return lambda ws: ["run", ws.campaign(**changes), "--quiet", *flags]


def with_file(name: str, content, then):
    """Write a file (bytes, text, or frames) into the workspace, then set up as `then` does."""
    def setup(ws):
        path = ws.folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content)
        else:
            write(path, content())
        return then(ws)
    return setup


def pool_with_oxygen():
    frames = frames_with_energy(8, 0)
    frames.append(Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], info={"energy": -2.0}))
    return frames


def pool_with_charges(*charges):
    def frames():
        out = frames_with_energy(len(charges), 0)
        for atoms, charge in zip(out, charges):
            atoms.info.update(charge=charge, spin=(3 - charge) % 2)
        return out
    return frames


def charge_model(then):
    """The workspace's model replaced by one with MACE's charge and spin embeddings (charges −2…2)."""
    def setup(ws):
        torch.save(tiny_mace(embedding_specs=CHARGE_SPIN), ws.folder / "tiny.model")
        return then(ws)
    return setup


def pool_with_nan_frame():
    frames = frames_with_energy(8, 0)
    frames[2].positions[1, 0] = np.nan
    return frames


def pool_repeated():
    return [atoms for atoms in frames_with_energy(4, 0) for _ in range(4)]


def pool_with_nan_energies(which):
    def build():
        frames = frames_with_energy(8, 0)
        for atoms in frames:
            atoms.info["energy"] = np.nan if which == "all" or atoms in [frames[i] for i in which] else atoms.info["energy"]
        return frames
    return build


def truncated_model(ws):
    data = (ws.folder / "tiny.model").read_bytes()
    (ws.folder / "broken.model").write_bytes(data[: len(data) // 2])
    return ["validate", ws.fresh(model={"path": "broken.model"})]


def stuck(then):
    """A fresh run whose every label failed (NaN energies), then `then`'s command on it."""
    def setup(ws):
        write(ws.folder / "nan.extxyz", pool_with_nan_energies("all")())
        args = ["run", ws.fresh(labeler={"kind": "replay", "path": "nan.extxyz"}), "--quiet"]
        assert main(args) == 1
        return then(ws)
    return setup


def stuck_then_fixed(ws):
    stuck(lambda ws: None)(ws)
    return ["run", ws.fresh(labeler={"kind": "replay", "path": "pool.extxyz"}), "--quiet"]


def stuck_then_requeued(ws):
    stuck(lambda ws: None)(ws)
    write(ws.folder / "nan.extxyz", frames_with_energy(8, 0))     # the file is mended in place
    assert main(["requeue", str(ws.folder / "runs" / "fresh")]) == 0
    return ["run", ws.fresh(labeler={"kind": "replay", "path": "nan.extxyz"}), "--quiet"]


def fresh_run(**changes):
    return lambda ws: ["run", ws.fresh(**changes), "--quiet"]


def finish(job: Path, shift: float, status: str = "0"):
    data = np.loadtxt(MAIN)
    data[:, 1] += shift
    np.savetxt(job / "dmc.s002.scalar.dat", data, header=MAIN.read_text().splitlines()[0].lstrip("#"), comments="#")
    (job / "exit_status").write_text(status + "\n")


def jobs(ws) -> list[Path]:
    queue = ws.run / "queue"
    return [queue / key for key in (queue / "jobs.txt").read_text().split()]


def ingest_after(prepare):
    def setup(ws):
        prepare(ws)
        return ["ingest", str(ws.run)]
    return setup


def edited_timestep(ws):
    first, second = jobs(ws)
    finish(first, 0.0)
    finish(second, 1e-6)
    dmc = second / "dmc.in.xml"
    dmc.write_text(dmc.read_text().replace('"timestep"> 0.01 <', '"timestep"> 0.02 <'))


def copied_blocks(ws):
    first, second = jobs(ws)
    finish(first, 0.0)
    finish(second, 0.0)


def lost_index(ws):
    (ws.run / "queue" / "jobs.txt").unlink()
    (ws.run / "queue" / "submit.sh").unlink()


def finished_and_lost_index(ws):
    for k, job in enumerate(jobs(ws)):
        finish(job, 1e-6 * k)
    lost_index(ws)


def truncated_output(ws):
    first, _ = jobs(ws)
    finish(first, 0.0)
    lines = (first / "dmc.s002.scalar.dat").read_text().splitlines()
    (first / "dmc.s002.scalar.dat").write_text("\n".join(lines[:-1] + [lines[-1][:20]]) + "\n")


def nan_output(ws):
    first, _ = jobs(ws)
    finish(first, 0.0)
    lines = (first / "dmc.s002.scalar.dat").read_text().splitlines()
    fields = lines[120].split()
    fields[1] = "nan"
    lines[120] = "  ".join(fields)
    (first / "dmc.s002.scalar.dat").write_text("\n".join(lines) + "\n")


# --- checks beyond the message -----------------------------------------------------------------

def fresh_indices_point_at_their_frames(ws):
    store = RunStore(ws.folder / "runs" / "fresh")
    frames = read(ws.folder / "pool.extxyz", index=":")
    rows = store.rows()
    assert 2 not in [r.index for r in rows] and len(rows) == 7
    for row in rows:
        assert np.allclose(row.positions, frames[row.index].positions)


def fresh_pool_size(n):
    def check(ws):
        assert RunStore(ws.folder / "runs" / "fresh").count() == n
    return check


def report_says(*words):
    def check(ws):
        text = " ".join((ws.folder / "runs" / "fresh" / "report" / "summary.md").read_text().split())
        assert all(w in text for w in words), text
    return check


def ingested(n):
    def check(ws):
        assert RunStore(ws.run).count(state=LABELLED) == n
    return check


@dataclass
class Row:
    id: str
    setup: Callable
    code: int
    words: tuple
    labels: str = "same"       # same | kept
    run: str = "bad"           # the run folder whose labels are watched: bad | fresh
    check: Callable | None = None
    base: str = "finished"     # finished | queued
    marks: list = field(default_factory=list)


QMC = [pytest.mark.skipif(not FIXTURES.is_dir(), reason="../shared/fixtures/qmcpack not present")]

ROWS = [
    # the campaign file
    Row("yaml-syntax", text_campaign("name: x\n  bad indent: [\n"), 1, ("t.yaml", "line 2", "YAML syntax error")),
    Row("empty-file", text_campaign(""), 1, ("t.yaml", "expected a mapping of sections", "an empty file")),
    Row("not-a-mapping", text_campaign("- a\n- b\n"), 1, ("expected a mapping", "a list")),
    Row("missing-file", lambda ws: ["validate", str(ws.folder / "nowhere.yaml")], 1, ("campaign file not found",)),
    Row("unknown-top-key", validate(pol={"x": 1}), 1, ("pol: unknown key", "allowed keys")),
    Row("misspelt-key", validate(committee={"sise": 3}), 1, ("committee.sise: unknown key", "did you mean 'size'")),
    Row("wrong-type", validate(committee={"size": "two"}), 1, ("committee.size: expected an integer", "'two'")),
    Row("too-small", validate(committee={"size": 1}), 1, ("committee.size: must be >= 2",)),
    Row("missing-section", text_campaign("name: x\nmodel: {path: tiny.model}\n"), 1,
        ("pool: required field missing", "labeler: required field missing", "stop: required field missing")),
    Row("unknown-labeler", validate(labeler={"kind": "dft"}), 1, ("labeler.kind: expected one of", "pyscf", "'dft'")),
    Row("missing-model", validate(model={"path": "none.model"}), 1, ("model.path: file not found",)),
    Row("empty-sources", validate(pool={"sources": []}), 1, ("pool.sources: must have at least 1 item",)),
    Row("duplicate-source-names", validate(pool={"sources": [CAMPAIGN["pool"]["sources"][0]] * 2}), 1,
        ("duplicate source name 'p'",)),
    Row("bad-name", validate(name="a b"), 1, ("name: must use only letters",)),
    Row("bad-device", validate(device="gpu"), 1, ("device: expected one of: auto, cpu, cuda",)),
    Row("bad-strategy", validate(acquisition={"strategy": "best"}), 1, ("acquisition.strategy", "diverse", "'best'")),
    Row("unknown-stop-observable", validate(stop={"observable": {"name": "gap", "tolerance": 0.01}}), 1,
        ("stop.observable.name: no observable named 'gap'",)),
    Row("negative-min-distance", validate(pool={"min_distance": -1}), 1, ("pool.min_distance: must be >= 0",)),
    Row("run-dir-is-a-file", with_file("afile", "x", lambda ws: ["validate", ws.campaign(run_dir="afile")]), 1,
        ("run_dir", "is a file, not a folder")),
    Row("run-into-a-file", with_file("afile", "x", lambda ws: ["run", ws.campaign(run_dir="afile")]), 1,
        ("run_dir", "is a file, not a folder")),
    # the base model
    Row("empty-model", with_file("broken.model", b"", validate(model={"path": "broken.model"})), 1,
        ("model.path", "broken.model", "not a loadable MACE model")),
    Row("text-model", with_file("broken.model", "not a model\n", validate(model={"path": "broken.model"})), 1,
        ("model.path", "not a loadable MACE model")),
    Row("truncated-model", truncated_model, 1, ("model.path", "not a loadable MACE model")),
    Row("broken-model-run-binds-nothing",
        with_file("broken.model", b"", lambda ws: ["run", ws.fresh(model={"path": "broken.model"})]), 1,
        ("model.path", "not a loadable MACE model"), check=lambda ws: (
            assert_absent(ws.folder / "runs" / "fresh"))),
    Row("broken-model-on-resume", with_file("broken.model", b"", resume(model={"path": "broken.model"})), 1,
        ("model.path", "not a loadable MACE model")),
    # elements and electrons
    Row("unknown-element-in-pool", with_file("pool.extxyz", pool_with_oxygen, validate()), 1,
        ("pool source 'p'", "pool.extxyz frame 8", "element O (Z=8) unknown to the base model", "knows H")),
    Row("unknown-element-in-test-set", with_file("test.extxyz", pool_with_oxygen, validate()), 1,
        ("evaluation.test_set", "test.extxyz frame 8", "element O (Z=8)")),
    Row("unknown-element-at-run", with_file("other.extxyz", pool_with_oxygen, fresh_run(
        pool={"sources": [{"kind": "file", "name": "p", "path": "other.extxyz"}]})), 1,
        ("other.extxyz frame 8", "element O"), run="fresh"),
    Row("unknown-element-in-test-set-at-run", with_file("test.extxyz", pool_with_oxygen, fresh_run()), 1,
        ("evaluation.test_set", "frame 8", "element O"), run="fresh",
        check=lambda ws: not list((ws.folder / "runs" / "fresh" / "labels").glob("*.json")) or pytest.fail("labelled")),
    Row("impossible-spin", validate(labeler={"kind": "pyscf", "method": "hf", "basis": "sto-3g", "spin": 0}), 1,
        ("pool.extxyz frame 0 (H3)", "3 electrons", "labeler.spin 2S = 0", "parity")),
    Row("impossible-charge", validate(labeler={"kind": "pyscf", "method": "hf", "basis": "sto-3g", "charge": 1,
                                               "spin": 1}), 1, ("2 electrons (charge 1)", "2S = 1")),
    Row("mixed-charges-without-embedding", with_file("pool.extxyz", pool_with_charges(0, 0, 1, 0), validate()), 1,
        ("the configurations hold charges 0, 1 (atoms.info 'charge')", "no total_charge embedding")),
    Row("charge-outside-embedding", charge_model(with_file("pool.extxyz", pool_with_charges(0, 1, 3, -1), validate())),
        1, ("pool.extxyz frame 2 (H3): charge 3 is outside the model's total_charge embedding, which takes -2 to 2",)),
    Row("charges-inside-embedding", charge_model(with_file("pool.extxyz", pool_with_charges(0, 1, -1, 0),
                                                           validate())), 0, (": valid. run directory",)),
    # the pool's frames
    Row("unreadable-pool", with_file("junk.extxyz", "3\nnot extxyz at all\nH 0 0\n", validate(
        pool={"sources": [{"kind": "file", "name": "j", "path": "junk.extxyz"}]})), 1,
        ("pool source 'j': cannot read", "junk.extxyz")),
    Row("unreadable-test-set", with_file("test.extxyz", "2\nbroken\n", validate()), 1,
        ("evaluation.test_set: cannot read", "test.extxyz")),
    Row("nan-positions", with_file("pool.extxyz", pool_with_nan_frame, fresh_run()), 0,
        ("dropped 1 of 8 frames: non-finite positions (frames 2)",), run="fresh", labels="kept",
        check=fresh_indices_point_at_their_frames),
    Row("repeated-frames", with_file("pool.extxyz", pool_repeated, fresh_run()), 0,
        ("dropped 12 of 16 frames: repeats a configuration already in the pool",), run="fresh", labels="kept",
        check=fresh_pool_size(4)),
    Row("same-file-twice", fresh_run(pool={"sources": [CAMPAIGN["pool"]["sources"][0],
                                                       {"kind": "file", "name": "q", "path": "pool.extxyz"}]}), 0,
        ("pool source 'q': dropped 8 of 8 frames: repeats",), run="fresh", labels="kept", check=fresh_pool_size(8)),
    Row("duplicates-in-status", lambda ws: (main(["run", ws.fresh(pool={"sources": [
        CAMPAIGN["pool"]["sources"][0], {"kind": "file", "name": "q", "path": "pool.extxyz"}]}), "--quiet"]),
        ["status", str(ws.folder / "runs" / "fresh")])[1], 0,
        ("q (file): 0 of 8 frames kept; dropped: 8 repeats a configuration already in the pool",), run="fresh"),
    # labels that are no number
    Row("some-nan-labels", with_file("nan.extxyz", pool_with_nan_energies((0, 1, 2, 3)), fresh_run(
        labeler={"kind": "replay", "path": "nan.extxyz"})), 0, ("4 labels",), run="fresh", labels="kept"),
    Row("all-nan-labels", stuck(lambda ws: ["status", str(ws.folder / "runs" / "fresh")]), 0,
        ("not a usable label: energy nan eV", "stuck at iteration 0", "aloop requeue"), run="fresh"),
    Row("all-nan-labels-run", with_file("nan.extxyz", pool_with_nan_energies("all"), fresh_run(
        labeler={"kind": "replay", "path": "nan.extxyz"})), 1,
        ("iteration 0 has no label to train on", "all 2 labels", "not a usable label", "aloop requeue"), run="fresh"),
    Row("stuck-then-fixed-labeler", stuck_then_fixed, 0, ("4 labels",), run="fresh", labels="kept"),
    Row("stuck-then-requeue", stuck_then_requeued, 0, ("4 labels",), run="fresh", labels="kept"),
    Row("report-when-stuck", stuck(lambda ws: ["report", str(ws.folder / "runs" / "fresh")]), 0, ("report:",),
        run="fresh", check=report_says("stuck at iteration 0", "aloop requeue")),
    Row("export-when-stuck", stuck(lambda ws: ["export", str(ws.folder / "runs" / "fresh")]), 1,
        ("nothing to export yet",), run="fresh"),
    # a resumed run whose campaign changed
    Row("changed-labeler", resume(labeler={"kind": "pyscf", "method": "hf", "basis": "sto-3g"}, name="other"), 1,
        ("labeler: ", "kind: \"replay\" in the run, \"pyscf\" now", "new run_dir",
         "--accept-changes labeler")),
    Row("changed-labeler-accepted", with_file("relabel.extxyz", lambda: frames_with_energy(8, 0), resume(
        "--accept-changes", "labeler", labeler={"path": "relabel.extxyz", "tolerance": 1e-5},
        stop={"max_labels": 6})), 0, ("6 labels",), labels="kept"),
    Row("changed-pool-file", with_file("pool.extxyz", lambda: frames_with_energy(8, 9), resume()), 1,
        ("pool.source.p: path: \"sha256:", "--accept-changes pool.source.p")),
    Row("changed-pool-file-accepted", with_file("pool.extxyz", lambda: frames_with_energy(8, 9), resume(
        "--accept-changes", "pool.source.p", "--accept-changes", "labeler", stop={"max_labels": 6})), 0,
        ("6 labels",), labels="kept", check=lambda ws: RunStore(ws.run).count() == 16 or pytest.fail("not re-read")),
    Row("added-source", with_file("more.extxyz", lambda: frames_with_energy(3, 4), resume(pool={"sources": [
        CAMPAIGN["pool"]["sources"][0], {"kind": "file", "name": "more", "path": "more.extxyz"}]})), 1,
        ("pool.source.more: added", "--accept-changes pool.source.more")),
    Row("added-source-accepted", with_file("more.extxyz", lambda: frames_with_energy(3, 4), resume(
        "--accept-changes", "pool.source.more", pool={"sources": [
            CAMPAIGN["pool"]["sources"][0], {"kind": "file", "name": "more", "path": "more.extxyz"}]},
        stop={"max_labels": 6})), 0, ("6 labels",), labels="kept"),
    Row("changed-model", lambda ws: (torch.save(tiny_mace(seed=1), ws.folder / "tiny.model"),
                                     ["run", ws.campaign(), "--quiet"])[1], 1,
        ("model: sha256", "restore model as it was")),
    Row("changed-test-set", with_file("test.extxyz", lambda: frames_with_energy(3, 8), resume()), 1,
        ("test_set: path", "--accept-changes test_set")),
    Row("changed-min-distance", resume(pool={"min_distance": 0.3}), 1, ("pool.min_distance: 0.5 in the run, 0.3 now",)),
    Row("accept-unknown-field", resume("--accept-changes", "bogus"), 1,
        ("--accept-changes bogus: not a field that can be accepted", "labeler")),
    Row("accept-the-model", resume("--accept-changes", "model"), 1, ("--accept-changes model: not a field",)),
    Row("renamed-only", resume(name="renamed"), 0, ("4 labels", "label budget")),
    # status, report, export
    Row("status-not-a-run", lambda ws: ["status", str(ws.folder / "nothing")], 1, ("not an aloop run directory",)),
    Row("status-shows-binding", lambda ws: ["status", str(ws.run)], 0,
        ("bound to:", "labeler: {", "\"kind\": \"replay\"", "pool.source.p", "model: {\"sha256\"")),
    Row("export-onto-a-file", with_file("out.model", "x", lambda ws: ["export", str(ws.run), "--out",
                                                                      str(ws.folder / "out.model")]), 1,
        ("--out", "out.model is a file")),
    Row("requeue-nothing-failed", lambda ws: ["requeue", str(ws.run)], 0, ("re-queued 0 job(s)",)),
    # QMCPACK results
    Row("qmc-edited-input", ingest_after(edited_timestep), 0,
        ("inconsistent", "dmc.in.xml: differs from the input aloop wrote", "1 labelled"),
        base="queued", labels="kept", marks=QMC, check=ingested(1)),
    Row("qmc-copied-result", ingest_after(copied_blocks), 0,
        ("inconsistent", "identical to those of cand", "1 labelled"), base="queued", labels="kept", marks=QMC,
        check=ingested(1)),
    Row("qmc-lost-jobs-txt", ingest_after(finished_and_lost_index), 0, ("2 labelled",), base="queued", labels="kept", marks=QMC,
        check=ingested(2)),
    Row("qmc-lost-jobs-txt-run", lambda ws: (lost_index(ws), ["run", ws.campaign(labeler=QMCPACK, evaluation={}),
                                                               "--quiet"])[1], 3,
        ("jobs queued",), base="queued", labels="kept", marks=QMC,
        check=lambda ws: (ws.run / "queue" / "submit.sh").is_file() or pytest.fail("no submit.sh")),
    Row("qmc-truncated-output", ingest_after(truncated_output), 0, ("failed", "expected"), base="queued",
        marks=QMC),
    Row("qmc-nan-output", ingest_after(nan_output), 0, ("failed", "non-finite LocalEnergy"), base="queued",
        marks=QMC),
]


def assert_absent(path: Path):
    assert not path.exists(), f"{path} was created"


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id, marks=r.marks) for r in ROWS])
def test_bad_input(row, finished, queued, tmp_path, capsys):
    shutil.copytree(finished if row.base == "finished" else queued, tmp_path, dirs_exist_ok=True)
    ws = Workspace(tmp_path)
    watched = ws.run if row.run == "bad" else tmp_path / "runs" / "fresh"
    args = row.setup(ws)
    before = labels(watched)
    capsys.readouterr()
    code = main(args)
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())
    assert code == row.code, text
    assert "Traceback" not in text
    for word in row.words:
        assert " ".join(word.split()) in text, f"{word!r} not in: {text}"
    after = labels(watched)
    assert all(np.isfinite(v).all() for v in after.values())
    if row.labels == "same":
        assert after == before
    else:
        assert {k: after.get(k) for k in before} == before
    if row.check is not None:
        row.check(ws)
