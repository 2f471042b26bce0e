"""`--run-dir`: a run folder that does not sit where the campaign says, and `--quiet`'s output.

Tiny model, replay labeler, 8-frame H3 pool, two labels per iteration, run in-process.
"""
from __future__ import annotations

import torch
import yaml
from ase.io import write
from conftest import h3_set, tiny_mace

from aloop.cli import main
from aloop.store import RunStore

CAMPAIGN = {
    "name": "elsewhere", "run_dir": "runs/from_the_file", "model": {"path": "tiny.model"},
    "pool": {"sources": [{"kind": "file", "name": "p", "path": "pool.extxyz"}]},
    "committee": {"size": 2},
    "acquisition": {"batch_size": 2, "initial_size": 2},
    "labeler": {"kind": "replay", "path": "pool.extxyz"},
    "stop": {"max_labels": 4},
}


def test_run_dir_overrides_the_campaign_and_a_second_run_resumes_there(tmp_path, capsys, monkeypatch):
    campaigns, work = tmp_path / "campaigns", tmp_path / "work"
    campaigns.mkdir()
    work.mkdir()
    torch.save(tiny_mace(), campaigns / "tiny.model")
    frames = h3_set(8, 0)
    for i, atoms in enumerate(frames):
        atoms.info["energy"] = -1.5 + 0.01 * i
    write(campaigns / "pool.extxyz", frames)
    (campaigns / "c.yaml").write_text(yaml.safe_dump(CAMPAIGN))
    monkeypatch.chdir(work)   # --run-dir is relative to the working directory, not to the campaign

    assert main(["run", str(campaigns / "c.yaml"), "--run-dir", "mine", "--iterations", "1", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "iteration 0: 2 labels" in out           # --quiet keeps the line per iteration ...
    assert "%|" not in err                          # ... and hides the progress bars
    run = work / "mine"
    assert (run / "aloop.db").is_file() and not (campaigns / "runs").exists()
    first = RunStore(run).labels()[0]

    assert main(["run", str(campaigns / "c.yaml"), "--run-dir", str(run), "--quiet"]) == 0
    out, _ = capsys.readouterr()
    assert "iteration 0" not in out and "iteration 1: 4 labels" in out and "Stopped" in out
    ids = RunStore(run).labels()[0]
    assert len(ids) == 4 and set(first) <= set(ids)   # resumed: the first batch was not drawn again
    assert [r["iteration"] for r in RunStore(run).iterations()] == [0, 1]
    assert not (campaigns / "runs").exists()

    for command in (["status"], ["report"], ["export", "--mean-only"]):
        assert main([*command, "--run-dir", "mine"]) == 0
    assert (run / "export" / "committee_mean.model").is_file()
