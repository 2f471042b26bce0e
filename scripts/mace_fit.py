"""Training a small MACE from scratch on energies and forces: shared by the base-model scripts.

The loss is energy_weight · mean((ΔE/N)²) + force_weight · mean(ΔF²); the energy weight steps up
for the last part of training (a late phase), and the returned model is the exponential moving
average of the weights, as mace's own trainer does.
"""
from __future__ import annotations

import mace  # noqa: F401  (mace must be imported before e3nn)

from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms
from e3nn import o3
from mace import data as mace_data
from mace import modules
from mace.tools import torch_geometric

from aloop.backbone import graph_inputs


@dataclass
class Schedule:
    epochs: int = 300
    lr: float = 1e-2
    force_weight: float = 10.0
    energy_weights: tuple[float, float] = (1.0, 100.0)
    late_phase: float = 0.7  # fraction of the epochs after which the second energy weight applies
    ema_decay: float = 0.99


def to_graphs(frames: list[Atoms], z_table, r_max: float) -> list:
    keys = mace_data.KeySpecification(info_keys={"energy": "REF_energy"}, arrays_keys={"forces": "REF_forces"})
    graphs = []
    for atoms in frames:
        plain = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        plain.info["REF_energy"] = atoms.get_potential_energy()
        plain.arrays["REF_forces"] = atoms.get_forces()
        config = mace_data.config_from_atoms(plain, key_specification=keys)
        config.properties.update(graph_inputs(atoms))   # read by a model with charge and spin embeddings
        graphs.append(mace_data.AtomicData.from_config(config, z_table=z_table, cutoff=r_max))
    return graphs


def train_valid_split(frames: list[Atoms], seed: int) -> tuple[list[Atoms], list[Atoms]]:
    """(training, validation): a tenth of the frames, drawn by a seeded permutation, validate."""
    order = np.random.default_rng(seed).permutation(len(frames))
    n_valid = len(frames) // 10
    return [frames[i] for i in order[n_valid:]], [frames[i] for i in order[:n_valid]]


def loader(frames: list[Atoms], z_table, r_max: float, batch_size: int, seed: int | None = None):
    """Shuffled when given a seed (training), in order otherwise (evaluation)."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return torch_geometric.dataloader.DataLoader(
        to_graphs(frames, z_table, r_max), batch_size=batch_size, shuffle=seed is not None,
        drop_last=False, generator=generator)


def least_squares_e0(frames: list[Atoms], atomic_numbers: list[int]) -> np.ndarray:
    """Per-element energies fitted to the configurations' energies (eV per atom of each element)."""
    counts = np.array([[np.sum(a.numbers == z) for z in atomic_numbers] for a in frames], dtype=float)
    energies = np.array([a.get_potential_energy() for a in frames])
    return np.linalg.lstsq(counts, energies, rcond=None)[0]


def build_model(config: dict, atomic_numbers: list[int], e0s: np.ndarray, train_frames: list[Atoms],
                avg_num_neighbors: float, embedding_specs: dict | None = None) -> torch.nn.Module:
    """ScaleShiftMACE with the statistics MACE computes: mean interaction energy per atom, rms force.
    `embedding_specs`: MACE's global embeddings (total charge and spin), with a linear readout of
    the embedding, so that a charge state's energy offset has a direct path to the energy."""
    extra = {} if embedding_specs is None else {"embedding_specs": embedding_specs, "use_embedding_readout": True}
    n_atoms = np.array([len(a) for a in train_frames])
    e0_total = np.array([sum(e0s[atomic_numbers.index(z)] for z in a.numbers) for a in train_frames])
    energies = np.array([a.get_potential_energy() for a in train_frames])
    shift = float(np.mean((energies - e0_total) / n_atoms))
    scale = float(np.sqrt(np.mean(np.concatenate([a.get_forces().ravel() for a in train_frames]) ** 2)))
    block = modules.interaction_classes[config["interaction"]]
    return modules.ScaleShiftMACE(
        r_max=config["r_max"],
        num_bessel=config["num_bessel"],
        num_polynomial_cutoff=config["num_polynomial_cutoff"],
        max_ell=config["max_ell"],
        interaction_cls=block,
        interaction_cls_first=block,
        num_interactions=config["num_interactions"],
        num_elements=len(atomic_numbers),
        hidden_irreps=o3.Irreps(config["hidden_irreps"]),
        MLP_irreps=o3.Irreps(config["MLP_irreps"]),
        atomic_energies=np.asarray(e0s, dtype=float),
        avg_num_neighbors=avg_num_neighbors,
        atomic_numbers=list(atomic_numbers),
        correlation=config["correlation"],
        gate=torch.nn.functional.silu,
        atomic_inter_scale=scale,
        atomic_inter_shift=shift,
        **extra,
    )


def _predict(model, batch, training: bool):
    out = model(batch.to_dict(), training=training, compute_force=True)
    n_atoms = batch.ptr[1:] - batch.ptr[:-1]
    return out["energy"], out["forces"], n_atoms


def rmse(model, data_loader) -> dict:
    """Energy rmse in meV per configuration and per atom, force rmse in meV/A."""
    de, de_atom, df = [], [], []
    for batch in data_loader:
        energy, forces, n_atoms = _predict(model, batch, training=False)
        de.append((energy - batch.energy).detach())
        de_atom.append(((energy - batch.energy) / n_atoms).detach())
        df.append((forces - batch.forces).detach().ravel())
    return {
        "energy_meV": 1000 * torch.cat(de).pow(2).mean().sqrt().item(),
        "energy_meV_per_atom": 1000 * torch.cat(de_atom).pow(2).mean().sqrt().item(),
        "forces_meV_per_A": 1000 * torch.cat(df).pow(2).mean().sqrt().item(),
    }


def train(model, train_loader, valid_loader, schedule: Schedule, report_every: int = 20) -> torch.nn.Module:
    """Adam with cosine decay; returns the exponential moving average of the weights."""
    optimizer = torch.optim.Adam(model.parameters(), lr=schedule.lr, amsgrad=True)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=schedule.epochs, eta_min=schedule.lr / 100)
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(schedule.ema_decay))
    for epoch in range(schedule.epochs):
        energy_weight = schedule.energy_weights[epoch >= schedule.late_phase * schedule.epochs]
        model.train()
        for batch in train_loader:
            optimizer.zero_grad()
            energy, forces, n_atoms = _predict(model, batch, training=True)
            loss = (energy_weight * torch.mean(((energy - batch.energy) / n_atoms) ** 2)
                    + schedule.force_weight * torch.mean((forces - batch.forces) ** 2))
            loss.backward()
            optimizer.step()
            ema.update_parameters(model)
        cosine.step()
        if epoch % report_every == 0 or epoch == schedule.epochs - 1:
            ema.module.eval()
            errors = rmse(ema.module, valid_loader)
            print(f"  epoch {epoch:4d}  lr {cosine.get_last_lr()[0]:.2e}  validation: "
                  f"E {errors['energy_meV']:.2f} meV ({errors['energy_meV_per_atom']:.2f} meV/atom)  "
                  f"F {errors['forces_meV_per_A']:.1f} meV/A", flush=True)
    return ema.module
