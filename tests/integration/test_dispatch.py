"""`dispatch: parsl`: the same labels and features as in-process; lost workers and crashes lose nothing."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.io import write
from conftest import h3, tiny_mace

from aloop.campaign import CampaignError, load_campaign
from aloop.dispatch import DispatchError
from aloop.loop import CampaignRun, label_key
from aloop.store import FAILED, LABELLED, SELECTED, RunStore

# An ASE calculator that plays a worker node dying: os._exit on chosen configurations (always, or only
# the first time), and a log line per computation so a test can count what was computed.
CALCULATOR = '''
import os
from pathlib import Path

import numpy as np
from ase.calculators.calculator import Calculator, all_changes


class PairEnergy(Calculator):
    implemented_properties = ["energy"]
    default_parameters = {"log": None, "die_always": None, "die_once": None}

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        r1 = round(float(-self.atoms.positions[0, 0]), 6)   # the pool's frames differ by r1
        p = self.parameters
        with open(p.log, "a") as log:
            log.write(f"{r1}\\n")
        if r1 == p.die_always:
            os._exit(1)
        if r1 == p.die_once:
            marker = Path(p.log).with_name(f"died_once_{r1}")
            if not marker.exists():
                marker.touch()
                os._exit(1)
        d = self.atoms.get_all_distances()[np.triu_indices(len(self.atoms), 1)]
        self.results["energy"] = float(np.sum(1.0 / d))
'''

THREADS = """
from parsl.config import Config
from parsl.executors import ThreadPoolExecutor

config = Config(executors=[ThreadPoolExecutor(label="labels", max_threads=2),
                           ThreadPoolExecutor(label="scores", max_threads=2)])
"""

PROCESSES = """
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider

config = Config(executors=[HighThroughputExecutor(
    label="procs", address="127.0.0.1", max_workers_per_node=2, cores_per_worker=1,
    heartbeat_period=1,   # the pool looks for dead workers this often (30 s by default)
    provider=LocalProvider(init_blocks=1, max_blocks=1, worker_init="export PYTHONPATH={path}"))])
"""

CAMPAIGN = """
name: {name}
device: cpu
model: {{path: tiny.model}}
pool:
  sources: [{{kind: file, name: pool, path: {pool}}}]
committee: {{size: 2}}
acquisition: {{strategy: max_std, initial_size: {initial}, batch_size: 2}}
labeler:
  kind: ase
  calculator: pair_energy:PairEnergy
  parameters: {{log: {log}, die_always: {die_always}, die_once: {die_once}}}
stop: {{max_labels: {budget}}}
{dispatch}
"""

R1 = [round(0.7 + 0.05 * i, 6) for i in range(40)]   # the pool's frames, told apart by r1


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dispatch")
    torch.save(tiny_mace(), folder / "tiny.model")
    write(folder / "pool.extxyz", [h3(r1, 2.2 - 0.03 * i, 100 + 2 * i) for i, r1 in enumerate(R1)])
    write(folder / "small.extxyz", [h3(r1, 1.3, 150) for r1 in R1[:4]])
    (folder / "pair_energy.py").write_text(CALCULATOR)
    (folder / "threads.py").write_text(THREADS)
    repo = Path(__file__).resolve().parents[2]
    (folder / "processes.py").write_text(PROCESSES.format(path=f"{folder}:{repo}"))
    return folder


@pytest.fixture(autouse=True)
def calculator_importable(folder, monkeypatch):
    monkeypatch.syspath_prepend(str(folder))


def campaign(folder: Path, name: str, dispatch: str = "", pool="pool.extxyz", initial=4, budget=6,
             die_always=None, die_once=None):
    path = folder / f"{name}.yaml"
    path.write_text(CAMPAIGN.format(name=name, pool=pool, initial=initial, budget=budget, dispatch=dispatch,
                                    log=folder / f"{name}.log", die_always=die_always or "null",
                                    die_once=die_once or "null"))
    return load_campaign(path)


def computed(folder: Path, name: str) -> list[float]:
    log = folder / f"{name}.log"
    return sorted(float(x) for x in log.read_text().split()) if log.exists() else []


def labels_of(run: CampaignRun):
    return sorted((r.index, r.iteration, r.energy_hf) for r in run.store.rows(state=LABELLED))


def test_parsl_threads_give_the_same_labels_and_features_as_local(folder):
    local = CampaignRun(campaign(folder, "local"), progress=False)
    local.run()
    # shards of 32 are the backbone's own batches of 32, so the features are the same bits and the
    # batches chosen the same (k-means on the pool's features reacts to the last bit)
    parsl = CampaignRun(campaign(folder, "parsl", "dispatch: {kind: parsl, config: threads.py, label_executor: labels, "
                                 "score_executor: scores, shard_size: 32}"), progress=False)
    parsl.run()
    assert len(labels_of(local)) == 6
    assert labels_of(parsl) == labels_of(local)
    # each label computed once, and its record left where a local run leaves it
    assert computed(folder, "parsl") == computed(folder, "local")
    assert sorted(p.name for p in (parsl.run_dir / "labels").glob("*.json")) == \
        sorted(p.name for p in (local.run_dir / "labels").glob("*.json"))
    assert not parsl.dispatcher.running   # the run shut its executors down

    shards = CampaignRun(campaign(folder, "shards", "dispatch: {kind: parsl, config: threads.py, shard_size: 7}"),
                         progress=False)
    shards.prepare_pool()
    ids = shards.store.ids()
    try:
        a, b = shards.features(ids), local.features(ids)   # 6 shards, finishing in any order
    finally:
        shards.dispatcher.close()
    assert a.a.dtype == np.float64 and len(a.e) == len(R1)
    assert np.abs(a.a - b.a).max() <= 1e-10 and np.abs(a.e - b.e).max() <= 1e-10
    assert np.array_equal(a.n_atoms, b.n_atoms)


def test_a_crash_keeps_finished_labels_and_the_rerun_computes_nothing_again(folder, monkeypatch):
    spec = campaign(folder, "crash", "dispatch: {kind: parsl, config: threads.py}", pool="small.extxyz")
    run = CampaignRun(spec, progress=False)
    run.prepare_pool()
    run.select(0, None)
    calls = []

    def killed_after_one(self, *args):   # the main process dies while it records labels
        calls.append(args)
        if len(calls) > 1:
            raise KeyboardInterrupt
        original(self, *args)

    original = RunStore.add_label
    monkeypatch.setattr(RunStore, "add_label", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        run.label(0)
    run.dispatcher.close()
    monkeypatch.setattr(RunStore, "add_label", original)
    assert len(list((run.run_dir / "labels").glob("*.json"))) == 4   # every task's record was written
    assert computed(folder, "crash") == R1[:4]

    again = CampaignRun(spec, progress=False)
    again.label(0)
    again.dispatcher.close()
    assert again.store.count(state=LABELLED) == 4 and again.store.count(state=SELECTED) == 0
    assert computed(folder, "crash") == R1[:4]   # nothing computed twice


def test_workers_that_all_fail_leave_the_candidates_selected(folder, monkeypatch):
    spec = campaign(folder, "broken", "dispatch: {kind: parsl, config: threads.py, retries: 1}", pool="small.extxyz")
    run = CampaignRun(spec, progress=False)
    run.prepare_pool()
    run.select(0, None)

    def no_aloop_here(*args):
        raise ModuleNotFoundError("No module named 'aloop'")

    monkeypatch.setattr("aloop.labelers.make_labeler", no_aloop_here)
    with pytest.raises(DispatchError, match=r"all 4 label tasks failed.*ModuleNotFoundError.*after 1 retries"):
        run.label(0)
    run.dispatcher.close()
    assert run.store.count(state=SELECTED) == 4
    assert not list((run.run_dir / "labels").glob("*.json"))


@pytest.mark.slow   # each worker process imports torch and MACE (7 s of CPU); workers die and restart
@pytest.mark.skipif(os.environ.get("ALOOP_PROCESS_TESTS") != "1",
                    reason="once in a full-suite run the HighThroughputExecutor hung (>10 min, idle) after its "
                           "workers died; it passes alone in 30 s. Run with ALOOP_PROCESS_TESTS=1 until that is found")
def test_a_lost_worker_is_retried_or_its_candidate_marked_failed(folder):
    """Process workers (HighThroughputExecutor on this machine): one configuration kills its worker every
    time, one only the first time. They come first, so that both workers die, and are replaced, together."""
    doomed, flaky = R1[0], R1[1]
    spec = campaign(folder, "lost", "dispatch: {kind: parsl, config: processes.py, retries: 1}",
                    pool="small.extxyz", die_always=doomed, die_once=flaky)
    run = CampaignRun(spec, progress=False)
    run.prepare_pool()
    run.select(0, None)
    try:
        run.label(0)
    finally:
        run.dispatcher.close()
    rows = {round(-r.positions[0, 0], 6): r for r in run.store.rows()}
    assert rows[doomed].state == FAILED
    assert "WorkerLost" in rows[doomed].reason and "after 1 retries" in rows[doomed].reason
    assert rows[flaky].state == LABELLED and (folder / f"died_once_{flaky}").exists()
    assert [r1 for r1, r in rows.items() if r.state == LABELLED] == R1[1:4]
    assert computed(folder, "lost") == sorted(R1[:4] + [doomed, flaky])   # the retries, and nothing else
    # a rerun leaves the failure recorded and computes nothing
    record = (run.run_dir / "labels" / f"{label_key(rows[doomed].id)}.json").read_text()
    assert '"failed"' in record and "WorkerLost" in record
    again = CampaignRun(spec, progress=False)
    again.label(0)
    assert not again.dispatcher.running   # nothing to do, so no executor was started
    assert computed(folder, "lost") == sorted(R1[:4] + [doomed, flaky])


@pytest.mark.parametrize("dispatch, expected", [
    ("{kind: slurm}", "dispatch.kind: expected one of: local, parsl; got 'slurm'"),
    ("{kind: parsl}", "dispatch.config: required field missing"),
    ("{kind: parsl, config: nowhere.py}", "dispatch.config: file not found"),
    ("{kind: parsl, config: pool.extxyz}", "dispatch.config:"),
    ("{kind: parsl, config: pair_energy.py}", "expected a variable `config = parsl.config.Config(...)`, got nothing"),
    ("{kind: parsl, config: threads.py, label_executor: gpu}",
     "dispatch.label_executor: no executor labelled 'gpu' in"),
    ("{kind: parsl, config: threads.py, retries: -1}", "dispatch.retries: must be >= 0, got -1"),
])
def test_bad_dispatch_section_names_the_field(folder, dispatch, expected):
    with pytest.raises(CampaignError) as err:
        campaign(folder, "bad", f"dispatch: {dispatch}")
    assert expected in str(err.value)


def test_the_shipped_slurm_example_is_a_valid_parsl_config():
    from aloop.dispatch import executor_labels

    example = Path(__file__).resolve().parents[2] / "campaigns" / "examples" / "parsl_slurm.py"
    assert set(executor_labels(example)) == {"cpu_labels", "gpu_scores"}
