"""The prism term of oracle v2: a penalty on every S atom outside an occupied trigonal prism.

In 2H-MoS2 every S sits above (or below) the centre of a triangle of Mo atoms, with a second S
straight across the Mo plane: the two S and their Mo triangle make a trigonal prism. The triangles
beside these (the empty hollows) have no S across them. A vacancy hop carries a S from its prism to
the vacant one next to it, 3.2 Å away, so on any path it passes at least 1.58 Å (in plane) from the
centre of both; thermal motion at 900 K moves a S 0.1–0.2 Å. And while it is away, the S across
each of the two prisms has no partner. So the term

    E = amplitude · Σ_S Π_T (1 − w_T · v_ST · b(ρ_ST) · o_T,S)

adds `amplitude` for each S outside every occupied prism: zero on a vibrating lattice, a constant
`amplitude` for the S across a vacancy (the same in every state of the vacancy), and 2 × amplitude
more while a S is halfway through its hop, with no path around it.

T runs over Mo triangles (three Mo pairwise closer than the `mo_mo` cutoff, w_T the product of the
three edges' smooth cut-offs), ρ_ST is the S's distance from the triangle's centroid within the
triangle's plane, b its flat-bottomed step (1 inside rho_in, 0 beyond rho_out), v_ST a smooth
cut-off on the S–centroid distance (so a S of another layer above the same point does not count),
and o_T,S = 1 − Π (1 − c) over the other S near the centroid, c a cut-off on their distance from it
(`partner`): 1 when another S sits across the triangle. Every switch is a quintic smoothstep in
squared distances: E is C² in the positions, and its forces come from autograd, so they are exactly
−∇E. Distances only: invariant under rotation, translation and permutation of atoms.
"""
from __future__ import annotations

import itertools
import warnings

import numpy as np
from ase import Atoms
from ase.neighborlist import neighbor_list

MO, S = 42, 16


def _switch_off(r2, inner: float, outer: float):
    """1 below `inner`, 0 beyond `outer` (Å), a quintic smoothstep in r² between (zero slope at both)."""
    import torch

    x = torch.clamp((r2 - inner**2) / (outer**2 - inner**2), 0.0, 1.0)
    return 1.0 - x**3 * (10.0 - 15.0 * x + 6.0 * x**2)


def _triangles(atoms: Atoms, cutoff: float) -> list[tuple[tuple[int, tuple], ...]]:
    """Mo triangles as ((index, cell shift), ×3), each once however its vertices are numbered."""
    mo = atoms.numbers == MO
    i, j, shift = neighbor_list("ijS", atoms, cutoff)
    keep = mo[i] & mo[j]
    near: dict[int, set] = {}
    for a, b, s in zip(i[keep], j[keep], shift[keep]):
        near.setdefault(int(a), set()).add((int(b), tuple(int(x) for x in s)))
    found = set()
    for a, others in near.items():
        for (b, sb), (c, sc) in itertools.combinations(sorted(others), 2):
            rel = tuple(x - y for x, y in zip(sc, sb))
            if (c, rel) not in near.get(b, ()):
                continue
            vertices = [(a, (0, 0, 0)), (b, sb), (c, sc)]
            # the same triangle seen from each vertex, translated so that vertex sits in the home cell
            seen_from = [tuple(sorted((v, tuple(x - y for x, y in zip(s, s0))) for v, s in vertices))
                         for _, s0 in vertices]
            found.add(min(seen_from))
    return sorted(found)


def _sulfur_near(atoms: Atoms, points: np.ndarray, cutoff: float) -> list[tuple[int, int, np.ndarray]]:
    """(point index, S index, cell shift) for every periodic image of a S within `cutoff` of a point."""
    cell = atoms.cell.array
    reach = [int(np.ceil(cutoff * np.linalg.norm(atoms.cell.reciprocal()[k]))) + 1 if atoms.pbc[k] else 0
             for k in range(3)]
    shifts = np.array(list(itertools.product(*(range(-n, n + 1) for n in reach))), dtype=float)
    sulfur = np.flatnonzero(atoms.numbers == S)
    images = atoms.positions[sulfur][:, None] + (shifts @ cell)[None]              # [S, shifts, 3]
    distance = np.linalg.norm(images[None] - points[:, None, None], axis=-1)      # [points, S, shifts]
    t, s, k = np.nonzero(distance < cutoff)
    return [(int(a), int(sulfur[b]), shifts[c]) for a, b, c in zip(t, s, k)]


def _occupied(atoms, pos, cell, centroid, t, s, image, partner):
    """Per (triangle t, S s) pair: 1 − Π (1 − c) over the S other than s near the triangle's centroid,
    c the partner switch of their distance; 1 where another S sits across the triangle from s."""
    import torch

    near = _sulfur_near(atoms, centroid.detach().numpy(), partner[1])
    if not near:
        return torch.zeros(len(t), dtype=torch.float64)
    nt = torch.tensor([p[0] for p in near])
    ns = torch.tensor([p[1] for p in near])
    nimage = torch.tensor(np.array([p[2] for p in near]), dtype=torch.float64)
    c = _switch_off(((pos[ns] + nimage @ cell - centroid[nt]) ** 2).sum(-1), *partner)     # [N]
    other = (nt[None] == t[:, None]) & ~((ns[None] == s[:, None]) & (nimage[None] == image[:, None]).all(-1))
    return 1.0 - torch.where(other, 1.0 - c[None], torch.ones_like(c)[None]).prod(-1)


def prism_correction(atoms: Atoms, amplitude: float, rho_in: float, rho_out: float, mo_mo: tuple[float, float],
                     reach: tuple[float, float], partner: tuple[float, float]) -> tuple[float, np.ndarray]:
    """ΔE (eV) and its forces −∇ΔE (eV/Å). `mo_mo`: (inner, outer) cut-off of a triangle's edges;
    `reach`: (inner, outer) cut-off of the S–centroid distance; rho_in < rho_out in Å; `partner`:
    (inner, outer) cut-off of the distance from the centroid of the S across a prism."""
    import torch

    sulfur = np.flatnonzero(atoms.numbers == S)
    if amplitude == 0.0 or len(sulfur) == 0:
        return 0.0, np.zeros((len(atoms), 3))
    pos = torch.tensor(atoms.positions, dtype=torch.float64, requires_grad=True)
    cell = torch.tensor(atoms.cell.array, dtype=torch.float64)
    triangles = _triangles(atoms, mo_mo[1])
    # per atom, the product of (1 − w v b) over the triangles near it: 1 where none is
    away = torch.ones(len(atoms), dtype=torch.float64)
    if triangles:
        index = torch.tensor([[v for v, _ in t] for t in triangles])
        shift = torch.tensor([[s for _, s in t] for t in triangles], dtype=torch.float64)
        corners = pos[index] + shift @ cell                                  # [T, 3 vertices, 3]
        edges = corners - corners[:, [1, 2, 0]]
        weight = _switch_off((edges**2).sum(-1), *mo_mo).prod(-1)            # [T]
        centroid = corners.mean(1)
        normal = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        pairs = _sulfur_near(atoms, centroid.detach().numpy(), reach[1])
        if pairs:
            t = torch.tensor([p[0] for p in pairs])
            s = torch.tensor([p[1] for p in pairs])
            image = torch.tensor(np.array([p[2] for p in pairs]), dtype=torch.float64)
            r = pos[s] + image @ cell - centroid[t]
            d2 = (r**2).sum(-1)
            rho2 = d2 - (r * normal[t]).sum(-1) ** 2 / (normal[t] ** 2).sum(-1)
            inside = (weight[t] * _switch_off(d2, *reach) * _switch_off(rho2, rho_in, rho_out)
                      * _occupied(atoms, pos, cell, centroid, t, s, image, partner))
            with warnings.catch_warnings():   # "index_reduce() is in beta": its product and gradient are exact
                warnings.simplefilter("ignore", UserWarning)
                away = away.index_reduce(0, s, 1.0 - inside, "prod")
    energy = amplitude * away[torch.as_tensor(sulfur)].sum()
    if not energy.requires_grad:   # no S near any triangle: the constant `amplitude` per S
        return float(energy), np.zeros((len(atoms), 3))
    (gradient,) = torch.autograd.grad(energy, pos)
    return float(energy.detach()), -gradient.numpy()
