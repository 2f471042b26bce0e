"""Joint multi-fidelity training (`finetune.kind: multifidelity`).

The readout classes keep the base model's backbone frozen. This class trains it as well, on the
base model's own low-fidelity configurations (`model.training_data`, replayed) and the
high-fidelity labels at once, with one readout head per fidelity. The engine is mace-torch's
multi-head fine-tuning, run in-process; aloop prepares its two data sets and reads back its model.

An epoch passes over every replayed configuration, so one training costs minutes to hours where a
readout fit costs seconds. The linear readout committee therefore drives the run (selection, σ, the
observables, the stop rules), and the multi-fidelity model is trained when the run stops and, with
`finetune.multifidelity.every: N`, after every N-th iteration. Each training starts from the base
model, not from the previous one, so a model depends only on the labels it saw.

What the high-fidelity head is fitted to, per label:
- the label's energy. mace's multi-head fine-tuning always uses its "universal" loss: a Huber loss
  (δ = 0.01) of w·E/N for each configuration's energy (a mean over the batch's configurations) and
  of each force component (a mean over the batch's components), the forces times
  REPLAY_FORCES_WEIGHT. At the sizes of a label's error (tenths of an eV a cell) and of the base
  model's force errors (tens of meV/Å) both lie in Huber's linear part: the loss is that of Laplace
  errors, and a label's weight w sets how hard it pulls against the replay. One label counts as
  much as one replayed configuration: a label off by its error bar σ (at least the noise floor)
  pulls as hard as a replayed configuration whose force components are all off by s_F, the base
  model's own mean absolute force error on the replay (how closely it follows its teacher):
      w = REPLAY_FORCES_WEIGHT · s_F · N / σ.
  A DMC energy with a wide error bar counts less; `multifidelity.label_weight` multiplies w.
  Two weaker weights were measured on MoS2
  (docs/model-classes.md): (noise_floor/σ)² capped at 1 left the labels without effect, the same
  balance made per force component (3N times weaker) left them nearly unfitted.
- the base model's forces on that configuration, with weight `force_weight`: labels carry no
  forces, and this is the soft counterpart of the readout classes' force penalty;
- per-element reference energies E0 of the base model plus a shift fitted to the labels (ridge
  least squares of label minus base energy on the element counts). MACE's readouts have no bias,
  and a DMC total energy may sit eV away from the DFT one.

The weights are averaged during training (mace's EMA, decay EMA_DECAY), as mace does by default in
multi-head fine-tuning; aloop sets its own learning rate, which turns mace's default off.

The model written is an ordinary single-head MACE (the high-fidelity head; the low-fidelity one is
dropped), so it loads in mace's MACECalculator like any export.
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import mace  # noqa: F401  (mace must be imported before e3nn)

import numpy as np
import torch
from ase import Atoms
from ase.io import write

from . import metrics, reaction_path
from .backbone import Backbone, graph_inputs
from .files import atomic_open
from .labelers.replay import stored_energy
from .neb import relax_path
from .pool import read_frames

ENERGY_KEY, FORCES_KEY = "aloop_energy", "aloop_forces"
RIDGE = 1e-6   # eV² per element: keeps the E0 shift defined for elements no label contains
REPLAY_FORCES_WEIGHT = 100.0   # mace's default force weight, passed explicitly: label weights scale with it
EMA_DECAY = 0.99
# mace's Huber δ (eV/Å): below it the force loss is quadratic, not Laplace, so s_F is taken no smaller
# (a base model that reproduces its training data exactly would otherwise give labels no weight)
FORCE_SCALE_FLOOR = 0.01


@dataclass
class Result:
    path: Path          # the single-head high-fidelity model
    seconds: float
    n_labels: int
    n_replay: int
    e0_shift: dict      # eV per atom, by atomic number
    force_scale: float  # s_F: the base model's mean absolute force error on the replay, eV/Å


def due(every: int, iteration: int, stopping: bool) -> bool:
    """Whether iteration `iteration` (from 0) trains a multi-fidelity model."""
    return stopping or (every > 0 and (iteration + 1) % every == 0)


def plain(atoms: Atoms) -> Atoms:
    """The configuration alone, with its total charge and spin under the keys mace's training reads
    (total_charge, total_spin: the multiplicity), for models with charge and spin embeddings."""
    out = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    out.info.update(graph_inputs(atoms))
    return out


def reference_frame(atoms: Atoms, source: str, index: int) -> Atoms:
    """A configuration of `model.training_data` with its energy and forces under aloop's keys, or a
    message naming the file and frame when it lacks them."""
    energy = atoms.info.get("energy", atoms.info.get("REF_energy"))
    forces = atoms.arrays.get("forces", atoms.arrays.get("REF_forces"))
    if atoms.calc is not None:
        results = atoms.calc.results
        energy = results.get("energy", energy)
        forces = results.get("forces", forces)
    if energy is None or forces is None:
        raise ValueError(f"{source}: frame {index} has no {'energy' if energy is None else 'forces'}; "
                         "finetune.kind: multifidelity replays model.training_data with its low-fidelity "
                         "energies and forces (keys energy/forces or REF_energy/REF_forces)")
    out = plain(atoms)
    out.info[ENERGY_KEY] = float(energy)
    out.arrays[FORCES_KEY] = np.asarray(forces, dtype=float)
    return out


def replay(frames: list[Atoms], source: str, size: int, rng: np.random.Generator) -> list[Atoms]:
    """`size` configurations of the base model's training data (all when it has fewer), drawn by `rng`."""
    picked = np.sort(rng.choice(len(frames), size=min(size, len(frames)), replace=False))
    return [reference_frame(frames[i], source, int(i)) for i in picked]


def force_scale(backbone: Backbone, replayed: list[Atoms]) -> float:
    """s_F: the base model's mean absolute force-component error on the replayed configurations (eV/Å)."""
    forces = backbone.energy_forces(replayed)[1]
    return float(np.mean(np.abs(np.concatenate([f - a.arrays[FORCES_KEY] for f, a in zip(forces, replayed)]))))


def label_weight(n_atoms: int, sigma: float, noise_floor: float, scale: float) -> float:
    """A label's energy weight in mace's universal loss: off by its error bar (at least the noise
    floor), it pulls as hard as a replayed configuration whose force components are off by `scale`
    (at least FORCE_SCALE_FLOOR; module docstring)."""
    return REPLAY_FORCES_WEIGHT * max(scale, FORCE_SCALE_FLOOR) * n_atoms / max(float(sigma), noise_floor)


def label_frames(atoms: list[Atoms], energies: np.ndarray, sigmas: np.ndarray, base_forces: list[np.ndarray],
                 noise_floor: float, force_weight: float, scale: float, factor: float = 1.0) -> list[Atoms]:
    """The high-fidelity head's data: label energies weighted by their error bars against the
    replay's force scale (times `factor`: multifidelity.label_weight), the base model's forces as
    soft targets."""
    out = []
    for a, e, s, f in zip(atoms, energies, sigmas, base_forces):
        frame = plain(a)
        frame.info[ENERGY_KEY] = float(e)
        frame.arrays[FORCES_KEY] = np.asarray(f, dtype=float)
        frame.info["config_energy_weight"] = factor * label_weight(len(a), s, noise_floor, scale)
        frame.info["config_forces_weight"] = float(force_weight)
        out.append(frame)
    return out


def e0_shift(atoms: list[Atoms], residuals: np.ndarray, zs: list[int]) -> np.ndarray:
    """Per-element shift (eV per atom) that best explains label − base energy from element counts."""
    counts = np.array([[np.count_nonzero(a.numbers == z) for z in zs] for a in atoms], dtype=float)
    lhs = counts.T @ counts + RIDGE * np.eye(len(zs))
    return np.linalg.solve(lhs, counts.T @ np.asarray(residuals, dtype=float))


def mace_arguments(base_path: Path, folder: Path, n_labels: int, e0: dict[int, float], settings, seed: int,
                   device: str) -> list[str]:
    """mace's command line for the multi-head training of `folder`'s replay.extxyz and labels.extxyz."""
    batch = max(1, min(settings.batch_size, n_labels))
    return ["--name", "multifidelity", "--work_dir", str(folder), "--seed", str(seed),
            "--device", device, "--default_dtype", "float64",
            "--foundation_model", str(base_path), "--multiheads_finetuning", "True",
            "--pt_train_file", str(folder / "replay.extxyz"), "--train_file", str(folder / "labels.extxyz"),
            "--valid_fraction", str(settings.valid_fraction), "--E0s", repr(e0),
            "--energy_key", ENERGY_KEY, "--forces_key", FORCES_KEY,
            "--energy_weight", "1.0", "--forces_weight", str(REPLAY_FORCES_WEIGHT),
            "--ema", "--ema_decay", str(EMA_DECAY),
            "--max_num_epochs", str(settings.epochs), "--patience", str(settings.patience),
            "--batch_size", str(batch), "--valid_batch_size", str(batch), "--eval_interval", "1",
            "--lr", str(settings.lr), "--force_mh_ft_lr", "True", "--save_cpu",
            "--pin_memory", str(device != "cpu")]


def train(base_path: Path, replayed: list[Atoms], labelled: list[Atoms], e0: dict[int, float], settings,
          seed: int, folder: Path, device: str, out: Path, echo: bool = True) -> Path:
    """Train the multi-head model in `folder` (mace's work files and log) and write its high-fidelity
    head, as a single-head model, to `out` (atomically: a crash leaves no partial model). `echo`:
    mace's per-epoch lines on the console too."""
    from mace.cli.run_train import run
    from mace.tools import build_default_arg_parser
    from mace.tools.scripts_utils import remove_pt_head

    folder.mkdir(parents=True, exist_ok=True)
    write(folder / "replay.extxyz", replayed, format="extxyz")
    write(folder / "labels.extxyz", labelled, format="extxyz")
    args = build_default_arg_parser().parse_args(
        mace_arguments(base_path, folder, len(labelled), e0, settings, seed, device))
    root = logging.getLogger()
    handlers, level, dtype = root.handlers[:], root.level, torch.get_default_dtype()
    try:
        with contextlib.nullcontext() if echo else contextlib.redirect_stdout(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")   # TorchScript's and torch's notes on mace's code, not the user's
            run(args)   # mace's console handler is made inside run(), on the sys.stdout of the moment
    finally:   # mace sets up logging to the console and the default dtype for itself
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)
        torch.set_default_dtype(dtype)
    model = torch.load(folder / "multifidelity.model", map_location="cpu", weights_only=False)
    single = remove_pt_head(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out) as handle:
        torch.save(single, handle)
    return out


def run_training(run, iteration: int, subset: list[int] | None = None, folder: Path | None = None) -> Result:
    """Train the multi-fidelity model of `run` on every label so far (or those of the candidates in
    `subset`), in `folder` (default RUN/multifidelity/iteration_NNN); the model is `folder`.model."""
    c = run.campaign
    settings = c.finetune.multifidelity
    t = time.time()
    ids, energies, sigmas = run.labels(subset)
    atoms = run.store.atoms(ids)
    base_energies, base_forces = run.backbone.energy_forces(atoms)
    zs = [int(z) for z in run.backbone.z_table.zs]
    shift = e0_shift(atoms, energies - base_energies, zs)
    base_e0 = run.backbone.theta0[run.backbone.slices[-1]]   # the base model's E0, in z_table order
    e0 = {z: float(b + s) for z, b, s in zip(zs, base_e0, shift)}
    rng = np.random.default_rng([c.seed, iteration])
    replayed = replay(run.training_frames(), str(c.model.training_data), settings.replay, rng)
    scale = force_scale(run.backbone, replayed)
    labelled = label_frames(atoms, energies, sigmas, base_forces, c.finetune.noise_floor, settings.force_weight,
                            scale, settings.label_weight)
    folder = folder or run.layout.root / "multifidelity" / f"iteration_{iteration:03d}"
    path = train(Path(c.model.path), replayed, labelled, e0, settings, c.seed, folder,
                 run.backbone.device.type, folder.with_suffix(".model"), echo=run.progress)
    return Result(path, time.time() - t, len(ids), len(replayed), dict(zip(zs, shift.tolist())), scale)


def score(run, path: Path, iteration: int | None) -> dict:
    """The model at `path` scored as a committee is: errors on the campaign's test set (eV per
    configuration), and each observable's barrier by relaxed CI-NEB started from the committee
    mean's path of `iteration` (None, or relax: false: the base model's path)."""
    model = Backbone.from_file(path, device=run.campaign.device)
    out = {}
    spec = run.campaign.evaluation.test_set
    if spec is not None:
        frames = read_frames(spec.path, ":", "evaluation.test_set.path")
        y = np.array([stored_energy(a, spec.energy_key) for a in frames], dtype=float)
        error = model.energy_forces(frames)[0] - y
        out["test"] = {"rmse": float(np.sqrt(np.mean(error ** 2))), "mae": float(np.mean(np.abs(error))),
                       "rmse_per_atom": float(np.sqrt(np.mean((error / [len(a) for a in frames]) ** 2)))}
    out["observables"] = {}
    for obs in run.campaign.evaluation.observables:
        if obs.kind == "difference":
            energies = model.energy_forces(run.store.atoms(run.store.source_ids(obs.path)))[0]
            out["observables"][obs.name] = float(metrics.frozen(obs.kind, energies))
            continue
        images = reaction_path.images(run, obs, iteration if obs.relax else None)
        settings = reaction_path.band_settings(run.campaign, obs)   # as the run relaxes its own paths
        out["observables"][obs.name] = relax_path(images, model, **settings).barrier
    return out
