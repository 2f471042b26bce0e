"""Same inputs, same answer: a rerun repeats every label and every bit of θ, and another thread
count selects the same labels and fits the same committee to rounding."""
import numpy as np
import pytest
import torch
from ase.io import write
from conftest import h3, h3_set, tiny_mace
from threadpoolctl import threadpool_limits

from aloop.campaign import load_campaign
from aloop.loop import CampaignRun

CAMPAIGN = """
name: repro
seed: 11
run_dir: {run_dir}
model: {{path: tiny.model}}
pool:
  sources:
    - {{kind: file, name: random, path: pool.extxyz}}
    - {{kind: md, name: md, start: start.xyz, temperatures: [400], steps: 40, interval: 5}}
committee: {{size: 4, seed: 5}}
finetune: {{force_threshold: 0.2, force_weight: 10.0}}
acquisition: {{strategy: diverse, batch_size: 3, initial_size: 4}}
labeler: {{kind: ase, calculator: "ase.calculators.emt:EMT"}}
stop: {{max_labels: 13}}
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("repro")
    torch.save(tiny_mace(), folder / "tiny.model")
    write(folder / "pool.extxyz", h3_set(30, seed=4))
    write(folder / "start.xyz", h3(0.8, 1.4, 150))
    return folder


def run(folder, name: str, threads: int):
    path = folder / f"{name}.yaml"
    path.write_text(CAMPAIGN.format(run_dir=name))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            campaign_run = CampaignRun(load_campaign(path), progress=False)
            campaign_run.run()
    finally:
        torch.set_num_threads(previous)
    store = campaign_run.store
    selected = [sorted(r.id for r in store.rows(iteration=i)) for i in range(len(store.iterations()))]
    ids, energy, _ = store.labels()
    last = campaign_run.load_committee(len(store.iterations()) - 1)
    return selected, ids, energy, last.thetas_


def test_rerun_repeats_labels_and_theta_bit_for_bit(folder):
    first, second = run(folder, "a", 1), run(folder, "b", 1)
    assert first[0] == second[0] and len(first[0]) >= 3   # same batches, iteration by iteration
    assert list(first[1]) == list(second[1])
    np.testing.assert_array_equal(first[2], second[2])
    np.testing.assert_array_equal(first[3], second[3])


def test_two_thread_counts_select_the_same_labels(folder):
    one, two = run(folder, "t1", 1), run(folder, "t2", 2)
    assert one[0] == two[0]
    np.testing.assert_allclose(two[3], one[3], rtol=1e-8, atol=1e-8 * np.abs(one[3]).max())


def test_status_shows_where_and_how_the_run_was_computed(folder):
    from aloop.report import status_text

    run(folder, "meta", 1)
    text = status_text(folder / "meta")
    assert "torch threads 1" in text and "BLAS threads" in text and "computed on:" in text
    assert "versions: python" in text and "numpy" in text and "torch" in text
