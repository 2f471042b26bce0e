"""The coordination term of oracle v2 (variant `coordination`): ΔE = A · Σ_S (CN0 − CN_S)².

CN_S counts the Mo atoms around a S with a smooth switch: 1 closer than `r_in`, 0 beyond `r_out`,
a quintic smoothstep in r² between (zero slope at both ends). In 2H-MoS2 each S has three Mo at
2.41 Å and the next ones at about 4.0 Å, so with r_in above the thermal reach of the first shell
and r_out below the second, every S of a vibrating lattice has CN = CN0 = 3 exactly and the term is
zero with zero forces. A hopping S passes over a Mo–Mo bridge, where one of its three Mo falls
away: the term rises there, smoothly over the few tenths of an ångström the switch spans, which a
band of images can follow (the hollow term's plateau let bands tear apart, docs/mos2-svac.md).
Distances only, forces by autograd (exactly −∇ΔE).
"""
from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.neighborlist import neighbor_list

from .hollow import _switch_off

MO, S = 42, 16


def coordination_correction(atoms: Atoms, amplitude: float, r_in: float, r_out: float,
                            cn0: float) -> tuple[float, np.ndarray]:
    """ΔE (eV) and its forces −∇ΔE (eV/Å)."""
    import torch

    sulfur = np.flatnonzero(atoms.numbers == S)
    if amplitude == 0.0 or len(sulfur) == 0:
        return 0.0, np.zeros((len(atoms), 3))
    i, j, shift = neighbor_list("ijS", atoms, r_out)
    keep = (atoms.numbers[i] == S) & (atoms.numbers[j] == MO)
    pos = torch.tensor(atoms.positions, dtype=torch.float64, requires_grad=True)
    cell = torch.tensor(atoms.cell.array, dtype=torch.float64)
    i, j = torch.as_tensor(i[keep]), torch.as_tensor(j[keep])
    vec = pos[j] + torch.as_tensor(shift[keep], dtype=torch.float64) @ cell - pos[i]
    count = torch.zeros(len(atoms), dtype=torch.float64).index_add(0, i, _switch_off((vec**2).sum(-1), r_in, r_out))
    energy = amplitude * ((cn0 - count[torch.as_tensor(sulfur)]) ** 2).sum()
    if not energy.requires_grad:   # no Mo near any S
        return float(energy), np.zeros((len(atoms), 3))
    (gradient,) = torch.autograd.grad(energy, pos)
    return float(energy.detach()), -gradient.numpy()
