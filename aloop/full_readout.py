"""`finetune.readout: full`: every readout parameter trained, the MLP's inner map W1 included.

The parameter vector is φ = (θ, ω): θ the linear class's vector (backbone.py: every linear readout,
W2 of the MLP readout, E0) and ω the MLP readout's other parameters (W1 for MACE). The energy is no
longer linear in φ; it is

    E_c(φ) = ā_c · θ + e_c + s Σ_{i∈c} readout(h_i; W1, W2)

where ā_c is a_c with the MLP's W2 columns set to zero and h_i the node features entering the MLP
readout. Both are cached once per configuration (`ReadoutInputs`), so energies of any φ, the
committee's spread and selection never run the backbone again. Forces need ∂h_i/∂x: it is computed
once, for the labelled configurations only (`LabelledGraph`), and reused by every member and every
optimiser step.

Readouts whose only parameter is their output linear map stay in ā_c·θ: they are linear in their
inputs, so the atoms' inputs may be summed (the per-atom inputs of MACE's first readout are
32x0e+32x1o and larger, and add nothing).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .arrays import Features, ReadoutInputs
from .backbone import Backbone   # first: it imports mace, which must come before e3nn
from e3nn import o3  # noqa: E402,I001


def _check_scalar_mlp(readout: torch.nn.Module, t: int) -> None:
    """finetune.readout: full (and kind: delta) need MACE's MLP readout as it is built: W1 from scalar
    channels to scalar hidden units, a gate, W2 to the heads' energies, no other parameter."""
    names = sorted(n for n, _ in readout.named_parameters())
    maps = [getattr(readout, n, None) for n in ("linear_1", "linear_2")]
    # one block of scalars on each side, so that each map's weight is one [in, out] matrix
    scalar = all(m is not None and all(len(irreps) == 1 and irreps[0].ir.l == 0 and irreps[0].ir.p == 1
                                       for irreps in (m.irreps_in, m.irreps_out)) for m in maps)
    if names != ["linear_1.weight", "linear_2.weight"] or not scalar:
        raise ValueError(f"readout {t} of this model ({type(readout).__name__}, parameters {', '.join(names)}) is not "
                         "MACE's MLP readout between scalar channels, which finetune.readout: full and "
                         "finetune.kind: delta train; use finetune.readout: linear")


@dataclass
class MLPBlock:
    """Hidden units of an MLP readout and their weight in a sum of MLPs: W1 [d·n] and W2 [n·heads] as
    e3nn stores them, `fan_in` the width W2 was normalised for (e3nn divides by √fan-in), and the
    block's coefficient in the sum."""
    w1: torch.Tensor
    w2: torch.Tensor
    fan_in: int
    coefficient: float


def averaged_mlp(base: torch.nn.Module, blocks: list[MLPBlock]) -> torch.nn.Module:
    """One MLP readout of `base`'s class, gate and heads computing Σ_b coefficient_b · MLP_b: every
    block's hidden units side by side (with several heads, head by head, since MACE masks the hidden
    units per head in contiguous slices) and each block's W2 rescaled from its own fan-in to the new
    width. Exact: the blocks share the input and act on it through hidden units of their own."""
    d, n_heads = base.linear_1.irreps_in.dim, getattr(base, "num_heads", 1)
    n_out = base.linear_2.irreps_out.dim
    w1s = [b.w1.detach().reshape(d, -1) for b in blocks]
    width = sum(w.shape[1] for w in w1s)
    w2s = [b.w2.detach().reshape(-1, n_out) * (b.coefficient * np.sqrt(width / b.fan_in)) for b in blocks]
    if any(w.shape[1] % n_heads for w in w1s):
        raise ValueError(f"an MLP block's hidden units do not split over the readout's {n_heads} heads")
    # head j's slice of the new hidden units: head j's slice of every block, in block order
    slices = [torch.arange(w.shape[1]).reshape(n_heads, -1) for w in w1s]
    w1 = torch.cat([w[:, s[j]] for j in range(n_heads) for w, s in zip(w1s, slices)], 1)
    w2 = torch.cat([w[s[j]] for j in range(n_heads) for w, s in zip(w2s, slices)], 0)
    wider = type(base)(irreps_in=base.linear_1.irreps_in, MLP_irreps=o3.Irreps(f"{width}x0e"),
                       gate=base.non_linearity.acts[0].f, irrep_out=base.linear_2.irreps_out,
                       **({"num_heads": n_heads} if hasattr(base, "num_heads") else {})).to(torch.float64)
    with torch.no_grad():
        wider.linear_1.weight.copy_(w1.reshape(-1).to(torch.float64))
        wider.linear_2.weight.copy_(w2.reshape(-1).to(torch.float64))
    return wider


class FullReadout:
    """The map φ → energies (and, on a `LabelledGraph`, forces) of a backbone's model."""

    def __init__(self, backbone: Backbone):
        self.backbone = backbone
        model = backbone.model
        self.device = backbone.device
        # an MLP readout: one with parameters besides the output linear map that θ already holds
        self.mlp = [t for t, r in enumerate(model.readouts) if sum(1 for _ in r.parameters()) > 1]
        if not self.mlp:
            raise ValueError("finetune.readout: full trains the MLP readout's inner weights, and every readout of "
                             "this model is one linear map; use finetune.readout: linear (the same parameters, "
                             "solved exactly)")
        self.inner: list[list[tuple[str, torch.Size]]] = []
        pieces = [backbone.theta0]
        for t in self.mlp:
            readout = model.readouts[t]
            _check_scalar_mlp(readout, t)
            names = [(n, p.shape) for n, p in readout.named_parameters() if n != "linear_2.weight"]
            self.inner.append(names)
            pieces += [readout.get_parameter(n).detach().cpu().numpy().ravel() for n, _ in names]
        # each MLP readout's input width d and hidden width m
        self.widths = tuple(model.readouts[t].linear_1.irreps_in.dim for t in self.mlp)
        self.hidden_widths = tuple(model.readouts[t].linear_1.irreps_out.dim for t in self.mlp)
        self.phi0 = np.concatenate(pieces)
        self.n_theta = backbone.n_params
        self.n_params = len(self.phi0)
        self.inner_slice = slice(self.n_theta, self.n_params)
        mask = np.ones(self.n_theta)
        for t in self.mlp:
            mask[backbone.slices[t]] = 0.0
        self._linear_mask = torch.as_tensor(mask, device=self.device)
        self._scale = backbone._node_scale()

    # --- inputs --------------------------------------------------------------------------------
    def inputs(self, atoms_list, batch_size: int = 32) -> ReadoutInputs:
        """One backbone pass per batch: the linear decomposition and the MLP readouts' inputs."""
        bb = self.backbone
        theta0 = torch.as_tensor(bb.theta0, device=self.device)
        capture = [bb.model.readouts[t] for t in self.mlp]
        a_all, e_all, n_all, h_all = [], [], [], [[] for _ in self.mlp]
        for batch in bb.batches(atoms_list, batch_size):
            with torch.no_grad():
                out, a, h = bb.forward(batch, compute_force=False, capture=capture)
            a_all.append(a.cpu().numpy())
            e_all.append((out["energy"].reshape(-1).to(torch.float64) - a @ theta0).cpu().numpy())
            n_all.append(torch.diff(batch["ptr"]).cpu().numpy())
            for store, x in zip(h_all, h):
                store.append(x.cpu().numpy())
        if not a_all:
            return ReadoutInputs(Features(np.zeros((0, bb.n_params)), np.zeros(0), np.zeros(0, dtype=int)),
                                 [np.zeros((0, 0)) for _ in self.mlp])
        return ReadoutInputs(Features(np.concatenate(a_all), np.concatenate(e_all), np.concatenate(n_all)),
                             [np.concatenate(x) for x in h_all])

    # --- energies ------------------------------------------------------------------------------
    def _readout_params(self, phi: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
        """The parameters of MLP readout number k (in self.mlp) as φ holds them."""
        bb, t = self.backbone, self.mlp[k]
        # W2 is θ's part of the readout (`_check_scalar_mlp`: MACE's MLP readout, W2 its linear_2)
        params = {"linear_2.weight": phi[bb.slices[t]].reshape(bb.model.readouts[t].linear_2.weight.shape)}
        start = self.n_theta + sum(int(np.prod(s)) for names in self.inner[:k] for _, s in names)
        for name, shape in self.inner[k]:
            size = int(np.prod(shape))
            params[name] = phi[start:start + size].reshape(shape)
            start += size
        return params

    def node_energies(self, phi: torch.Tensor, h: list[torch.Tensor]) -> torch.Tensor:
        """s Σ_t readout_t(h_i; φ) per node [atoms]: the MLP readouts' part of the energy."""
        bb = self.backbone
        total = torch.zeros(h[0].shape[0], dtype=torch.float64, device=self.device)
        for k, (t, x) in enumerate(zip(self.mlp, h)):
            heads = torch.full((x.shape[0],), bb.head_index, dtype=torch.long, device=self.device)
            out = torch.func.functional_call(bb.model.readouts[t], self._readout_params(phi, k), (x, heads))
            total = total + out[:, bb.head_index]
        return self._scale * total

    def node_jacobian(self, phi: torch.Tensor, h: list[torch.Tensor], chunk: int = 4096) -> torch.Tensor:
        """∂ε_i/∂φ [atoms, P] of `node_energies`: one gradient per atom, each from that atom's inputs
        alone. (Reverse mode over all atoms at once, `jacrev`, carries every atom's intermediates for
        every output: memory grew with the square of the atoms, 20 GB for 150 MoS2 labels.)"""
        def one(p, rows):
            return self.node_energies(p, [x[None] for x in rows])[0]
        per_atom = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0), chunk_size=chunk)
        return per_atom(phi, list(h))

    def energy_jacobian_t(self, phi: torch.Tensor, a: torch.Tensor, h: list[torch.Tensor],
                          index: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """∂E_c/∂φ [configurations, P] of `energies_t`, the per-atom rows summed `chunk` atoms at a
        time: memory holds the configurations' rows, never every atom's (a pool's would be GBs)."""
        jac = torch.zeros(len(a), self.n_params, dtype=torch.float64, device=self.device)
        jac[:, :self.n_theta] = a * self._linear_mask
        for lo in range(0, len(index), chunk):
            part = [x[lo:lo + chunk] for x in h]
            jac.index_add_(0, index[lo:lo + chunk], self.node_jacobian(phi, part, chunk))
        return jac

    def energies_t(self, phi: torch.Tensor, a: torch.Tensor, e: torch.Tensor, h: list[torch.Tensor],
                   index: torch.Tensor) -> torch.Tensor:
        """E_c(φ) for every configuration, in torch (differentiable in φ)."""
        nodes = self.node_energies(phi, h)
        mlp = torch.zeros(len(e), dtype=torch.float64, device=self.device).index_add_(0, index, nodes)
        return self.linear_energies(phi, a, e) + mlp

    def linear_energies(self, phi: torch.Tensor, a: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """ā·θ + e: the energy but for the MLP readouts'."""
        return a @ (self._linear_mask * phi[:self.n_theta]) + e

    def tensors(self, inputs: ReadoutInputs):
        """(a, e, h, atom → configuration index) of `inputs` as tensors on the device."""
        f = inputs.features
        dev = self.device
        index = torch.as_tensor(np.repeat(np.arange(len(f.e)), f.n_atoms), device=dev)
        return (torch.as_tensor(f.a, device=dev), torch.as_tensor(f.e, device=dev),
                [torch.as_tensor(x, device=dev) for x in inputs.h], index)

    def energies(self, phis: np.ndarray, inputs: ReadoutInputs) -> np.ndarray:
        """Energies for one φ [P] → [n], or a committee [K, P] → [K, n]."""
        phis = np.asarray(phis, dtype=np.float64)
        a, e, h, index = self.tensors(inputs)
        with torch.no_grad():
            rows = [self.energies_t(torch.as_tensor(p, device=self.device), a, e, h, index).cpu().numpy()
                    for p in np.atleast_2d(phis)]
        return rows[0] if phis.ndim == 1 else np.array(rows)

    # --- export --------------------------------------------------------------------------------
    def model_with(self, phi: np.ndarray) -> torch.nn.Module:
        """An ordinary MACE model (the source file's class and dtype) whose readouts carry φ [P]; given a
        committee φ [K, P], the model of the members' average energy. The energy is linear in θ, and the
        MLP readouts' average is one MLP: every member's hidden units side by side, each member's output
        weights divided by K (`averaged_mlp`). So the average is exact, not the model of the average φ."""
        phi = np.asarray(phi, dtype=np.float64)
        if phi.shape[-1:] != (self.n_params,) or phi.ndim not in (1, 2):
            raise ValueError(f"φ has shape {phi.shape}, expected ({self.n_params},) or (members, {self.n_params})")
        members = np.atleast_2d(phi)
        bb = self.backbone
        model = bb._write_theta(copy.deepcopy(bb.template).to(torch.float64), members[:, :self.n_theta].mean(0))
        for k, t in enumerate(self.mlp):
            blocks = []
            for p in members:
                params = self._readout_params(torch.as_tensor(p), k)
                blocks.append(MLPBlock(params["linear_1.weight"], params["linear_2.weight"], self.hidden_widths[k],
                                       1.0 / len(members)))
            model.readouts[t] = averaged_mlp(model.readouts[t], blocks)
        return model.to(bb.source_dtype)

    def export(self, phi: np.ndarray, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.model_with(phi), path)
        return path


def position_jacobian(x: torch.Tensor, positions: torch.Tensor, ptr: torch.Tensor) -> torch.Tensor:
    """J [atoms, d, 3 N_max] of per-atom quantities x [atoms, d] of a batch of configurations (`ptr`
    their atoms' offsets), on a graph kept to `positions`: J[i, k, 3m + a] = ∂x[i, k]/∂(position a
    of atom m of i's configuration).

    Column by column, forward-mode by the double-backward identity: g(u) = (∂x/∂r)ᵀu is linear in
    u, so ∂(g·v)/∂u = (∂x/∂r) v. One backward pass keeps g's graph; then each of the 3 N_max
    directions v (position a of every configuration's atom m at once: configurations do not see
    each other's positions) is one more backward pass, through it. Row by row (N·d reverse passes,
    batched over the d channels) the same J took 20x as long on a 47-atom MoS2 cell on the CPU."""
    n = torch.diff(ptr)
    config = torch.repeat_interleave(torch.arange(len(n), device=x.device), n)
    local = torch.arange(len(x), device=x.device) - ptr[config]
    J = torch.zeros(len(x), x.shape[1], 3 * int(n.max()), dtype=torch.float64, device=x.device)
    u = torch.zeros_like(x, requires_grad=True)
    (g,) = torch.autograd.grad(x, positions, u, create_graph=True)
    for m in range(int(n.max())):
        for a in range(3):
            v = torch.zeros_like(positions)
            v[local == m, a] = 1.0
            (column,) = torch.autograd.grad(g, u, v, retain_graph=True)
            J[:, :, 3 * m + a] = column
    return J


@dataclass
class GraphPart:
    """One labelled configuration's share of a `LabelledGraph`: per MLP readout, its atoms' inputs
    h [N, d] and their Jacobians ∂h/∂x [N, d, 3N]. A fixed property of the configuration and the base
    model, so a campaign computes it once per label (`CampaignRun.graph`)."""

    h: list[np.ndarray]
    jacobians: list[np.ndarray]

    @property
    def n_atoms(self) -> int:
        return len(self.h[0])

    def save(self, path) -> None:
        np.savez(path, **{f"h{t}": x for t, x in enumerate(self.h)},
                 **{f"jacobian{t}": j for t, j in enumerate(self.jacobians)})

    @classmethod
    def load(cls, path) -> "GraphPart":
        with np.load(path) as f:
            n = sum(1 for key in f.files if key.startswith("h"))
            return cls([f[f"h{t}"] for t in range(n)], [f[f"jacobian{t}"] for t in range(n)])


class LabelledGraph:
    """The MLP readouts' inputs h of the labelled configurations' atoms and their Jacobians ∂h/∂x,
    computed once: the forces of any φ are then −Σ_i ∂ε_i/∂h_i · ∂h_i/∂x, dense algebra without
    the backbone, for every member and every optimiser step.

    The Jacobian of configuration c holds N_c × d × 3N_c numbers (d the MLP's input width); it is
    taken one position component at a time, for a batch of configurations at once
    (`position_jacobian`). `parts_of` gives it per configuration, and `from_parts` builds the graph
    from such parts, kept from earlier fits."""

    def __init__(self, full: FullReadout, atoms_list, batch_size: int = 16):
        self._assemble(full, self.parts_of(full, atoms_list, batch_size))

    @staticmethod
    def parts_of(full: FullReadout, atoms_list, batch_size: int = 16) -> list[GraphPart]:
        """Each configuration's share of the graph, in order: one backbone pass per batch and its
        per-atom Jacobians."""
        bb = full.backbone
        capture = [bb.model.readouts[t] for t in full.mlp]
        parts = []
        for batch in bb.batches(atoms_list, batch_size):
            # training=True keeps the backbone's graph after MACE's own forces, for these passes
            _, _, inputs = bb.forward(batch, compute_force=True, capture=capture)
            ptr = batch["ptr"].cpu().numpy()
            h = [x.detach().cpu().numpy() for x in inputs]
            jac = [position_jacobian(x, batch["positions"], batch["ptr"]).cpu().numpy() for x in inputs]
            for lo, hi in zip(ptr[:-1], ptr[1:]):
                parts.append(GraphPart([x[lo:hi] for x in h], [j[lo:hi, :, :3 * (hi - lo)] for j in jac]))
        return parts

    @classmethod
    def from_parts(cls, full: FullReadout, parts: list[GraphPart]) -> "LabelledGraph":
        graph = cls.__new__(cls)
        graph._assemble(full, parts)
        return graph

    def _assemble(self, full: FullReadout, parts: list[GraphPart]) -> None:
        self.full = full
        dev = full.device
        self.n_atoms = np.array([p.n_atoms for p in parts], dtype=int)
        self.width = 3 * int(self.n_atoms.max(initial=0))
        self.h, self.jacobians = [], []
        for t, d in enumerate(full.widths):
            self.h.append(torch.as_tensor(np.concatenate([p.h[t] for p in parts]) if parts else np.zeros((0, d)),
                                          dtype=torch.float64, device=dev))
            padded = np.zeros((int(self.n_atoms.sum()), d, self.width))
            row = 0
            for p in parts:
                j = p.jacobians[t]
                padded[row:row + len(j), :, :j.shape[2]] = j
                row += len(j)
            self.jacobians.append(torch.as_tensor(padded, device=dev))
        self.config = torch.repeat_interleave(torch.arange(len(parts), device=dev),
                                              torch.as_tensor(self.n_atoms, device=dev))

    def energy_inputs(self) -> list[np.ndarray]:
        """The MLP readouts' inputs of every labelled atom."""
        return [x.cpu().numpy() for x in self.h]

    def mlp(self, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The MLP readouts' energy [n] and forces −∂/∂x [n, width] (zeros past 3N_c) of every labelled
        configuration for φ, differentiable in φ: one evaluation of the readouts serves both."""
        with torch.enable_grad():   # also under no_grad: the forces are a gradient
            h = [x.clone().requires_grad_(True) for x in self.h]
            nodes = self.full.node_energies(phi, h)
            u = torch.autograd.grad(nodes.sum(), h, create_graph=True)
        per_atom = -sum(torch.einsum("ik,ikm->im", du, J) for du, J in zip(u, self.jacobians))
        n = len(self.n_atoms)
        energy = torch.zeros(n, dtype=torch.float64, device=nodes.device).index_add(0, self.config, nodes)
        forces = torch.zeros(n, self.width, dtype=torch.float64, device=nodes.device).index_add(0, self.config, per_atom)
        return energy, forces
