"""`finetune.kind: multifidelity`: the data it hands mace's multi-head training, and when it trains."""
from types import SimpleNamespace

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from conftest import h3_set, tiny_mace

from aloop import multifidelity
from aloop.backbone import Backbone


def test_e0_shift_recovers_per_element_offsets():
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(12):
        numbers = rng.choice([1, 8], size=int(rng.integers(2, 6)))
        frames.append(Atoms(numbers=numbers, positions=rng.normal(size=(len(numbers), 3))))
    true = {1: -0.25, 8: 0.7}
    residuals = [sum(true[int(z)] for z in a.numbers) for a in frames]
    assert multifidelity.e0_shift(frames, np.array(residuals), [1, 8]) == pytest.approx([-0.25, 0.7], abs=1e-5)


def test_e0_shift_of_an_element_no_label_holds_is_zero():
    frames = h3_set(4)
    assert multifidelity.e0_shift(frames, np.full(4, 0.3), [1, 6]) == pytest.approx([0.1, 0.0], abs=1e-6)


def test_label_frames_weight_energies_by_error_bar_and_carry_soft_forces():
    frames = h3_set(3)
    forces = [np.ones((3, 3)), 2 * np.ones((3, 3)), 3 * np.ones((3, 3))]
    out = multifidelity.label_frames(frames, np.array([-40.0, -41.0, -42.0]), np.array([0.001, 0.02, 0.04]), forces,
                                     noise_floor=0.005, force_weight=0.0, scale=0.06)
    weights = [a.info["config_energy_weight"] for a in out]
    # a label off by its error bar pulls as a replayed configuration whose forces are off by the base
    # model's error: 100 · 0.06 eV/Å · 3 atoms / σ; σ under the noise floor counts as the floor
    assert weights == pytest.approx([18.0 / 0.005, 18.0 / 0.02, 18.0 / 0.04])
    assert [a.info["config_forces_weight"] for a in out] == [0.0, 0.0, 0.0]
    tenth = multifidelity.label_frames(frames, np.array([-40.0, -41.0, -42.0]), np.array([0.001, 0.02, 0.04]), forces,
                                       noise_floor=0.005, force_weight=0.0, scale=0.06, factor=0.1)
    assert [a.info["config_energy_weight"] for a in tenth] == pytest.approx([w / 10 for w in weights])
    assert out[1].info[multifidelity.ENERGY_KEY] == -41.0
    assert np.array_equal(out[1].arrays[multifidelity.FORCES_KEY], forces[1])
    assert out[0].calc is None and np.array_equal(out[0].positions, frames[0].positions)


def test_label_weight_grows_with_the_replays_force_scale_and_the_cells_size():
    w = multifidelity.label_weight(47, 0.02, 0.005, 0.06)
    assert multifidelity.label_weight(47, 0.02, 0.005, 0.12) == pytest.approx(2 * w)
    # per-atom energies enter mace's loss: a cell twice the size needs twice the weight
    assert multifidelity.label_weight(94, 0.02, 0.005, 0.06) == pytest.approx(2 * w)
    # a base model that reproduces its replay exactly still leaves the labels a weight
    assert multifidelity.label_weight(47, 0.02, 0.005, 0.0) > 0


def test_force_scale_is_the_base_models_mean_absolute_force_error_on_the_replay():
    tiny_backbone = Backbone(tiny_mace(), device="cpu")
    frames = h3_set(4)
    forces = tiny_backbone.energy_forces(frames)[1]
    replayed = []
    for a, f in zip(frames, forces):
        frame = multifidelity.plain(a)
        frame.arrays[multifidelity.FORCES_KEY] = f + 0.05 * np.sign(np.arange(f.size).reshape(f.shape) % 2 - 0.5)
        replayed.append(frame)
    assert multifidelity.force_scale(tiny_backbone, replayed) == pytest.approx(0.05, abs=1e-9)


class _Batch(dict):
    """What mace's loss reads of a batch: item access for the values, attributes for the weights."""
    __getattr__ = dict.__getitem__


def _universal_loss(tmp_path):
    """mace's loss, built as mace builds it for multi-head fine-tuning from aloop's command line, as a
    function of (label residual eV, force residual eV/Å): one label of 4 atoms (weight 50) off by the
    first and one replayed configuration of 4 atoms whose force components are all off by the second."""
    import torch
    from mace.tools import build_default_arg_parser
    from mace.tools.scripts_utils import get_loss_fn

    settings = SimpleNamespace(batch_size=4, valid_fraction=0.1, epochs=1, patience=1, lr=1e-3)
    args = build_default_arg_parser().parse_args(
        multifidelity.mace_arguments(tmp_path / "base.model", tmp_path, 1, {1: -13.6}, settings, 0, "cpu"))
    args.loss = "universal"   # what mace's run() sets with --multiheads_finetuning
    loss = get_loss_fn(args, dipole_only=False, compute_dipole=False)
    t = lambda x: torch.tensor(x, dtype=torch.float64)   # noqa: E731
    ref = _Batch(ptr=torch.tensor([0, 4, 8]), energy=t([-10.0, -20.0]), forces=t(np.zeros((8, 3))),
                 stress=t(np.zeros((2, 3, 3))), energy_weight=t([50.0, 0.0]), forces_weight=t([0.0, 1.0]),
                 stress_weight=t([0.0, 0.0]))

    def value(label_residual: float, force_residual: float) -> float:
        pred = {"energy": t([-10.0 + label_residual, -20.0]), "forces": t(np.full((8, 3), force_residual)),
                "stress": t(np.zeros((2, 3, 3)))}
        return float(loss(ref, pred))
    return value


def test_the_label_weight_assumes_maces_loss_is_laplace_at_a_labels_error(tmp_path):
    loss = _universal_loss(tmp_path)
    # w = 100·s_F·N/σ balances a label against the replay only while both sit in Huber's linear part:
    # the loss grows in equal steps with the residual, for labels tenths of an eV off and forces tenths of eV/Å
    label = [loss(r, 0.0) for r in (0.1, 0.2, 0.3)]
    assert label[2] - label[1] == pytest.approx(label[1] - label[0], rel=1e-9)
    forces = [loss(0.0, r) for r in (0.1, 0.2, 0.3)]
    assert forces[2] - forces[1] == pytest.approx(forces[1] - forces[0], rel=1e-9)
    # and the slopes are the weights': a label's loss grows by w·Δ/N, a replayed component's by 100·Δ
    # (mean over the batch's 2 configurations and 24 components), each times Huber's δ = 0.01
    assert label[1] - label[0] == pytest.approx(0.01 * 50 * 0.1 / 4 / 2, rel=1e-6)
    assert forces[1] - forces[0] == pytest.approx(100 * 0.01 * 0.1 * 12 / 24, rel=1e-9)


def test_replay_reads_energies_and_forces_from_a_calculator_or_info():
    frames = h3_set(5)
    for i, a in enumerate(frames):
        if i % 2:
            a.calc = SinglePointCalculator(a, energy=-1.0 * i, forces=np.full((3, 3), i))
        else:
            a.info["REF_energy"] = -1.0 * i
            a.arrays["REF_forces"] = np.full((3, 3), float(i))
    picked = multifidelity.replay(frames, "train.extxyz", 3, np.random.default_rng(1))
    assert len(picked) == 3
    for a in picked:
        i = -a.info[multifidelity.ENERGY_KEY]
        assert np.all(a.arrays[multifidelity.FORCES_KEY] == i)
    assert len(multifidelity.replay(frames, "train.extxyz", 50, np.random.default_rng(1))) == 5


def test_replay_names_the_file_and_frame_without_forces():
    frames = h3_set(2)
    frames[1].info["energy"] = -1.0
    frames[0].calc = SinglePointCalculator(frames[0], energy=-1.0, forces=np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"train.extxyz: frame 1 has no forces; finetune.kind: multifidelity replays "
                                         r"model.training_data"):
        multifidelity.replay(frames, "train.extxyz", 2, np.random.default_rng(0))


@pytest.mark.parametrize("every, iteration, stopping, expected", [
    (0, 0, False, False), (0, 5, True, True), (2, 0, False, False), (2, 1, False, True), (3, 5, False, True)])
def test_due(every, iteration, stopping, expected):
    assert multifidelity.due(every, iteration, stopping) is expected
