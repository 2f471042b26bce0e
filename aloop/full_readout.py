"""`finetune.readout: full`: every readout parameter trained, the MLP's inner map W1 included.

The parameter vector is φ = (θ, ω): θ the linear class's vector (backbone.py: every linear readout,
W2 of the MLP readout, E0) and ω the MLP readout's other parameters (W1 for MACE). The energy is no
longer linear in φ; it is

    E_c(φ) = ā_c · θ + e_c + s Σ_{i∈c} readout(h_i; W1, W2)

where ā_c is a_c with the MLP's W2 columns set to zero and h_i the node features entering the MLP
readout. Both are cached once per configuration (`ReadoutInputs`), so energies of any φ, the
committee's spread and selection never run the backbone again. Forces need ∂h_i/∂x: they are taken
by autograd through the backbone, kept as one graph of the labelled configurations only
(`LabelledGraph`), and reused by every member and every optimiser step.

Readouts whose only parameter is their output linear map stay in ā_c·θ: they are linear in their
inputs, so the atoms' inputs may be summed (the per-atom inputs of MACE's first readout are
32x0e+32x1o and larger, and add nothing).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from .arrays import Features, ReadoutInputs
from .backbone import Backbone


class FullReadout:
    """The map φ → energies (and, on a `LabelledGraph`, forces) of a backbone's model."""

    def __init__(self, backbone: Backbone):
        self.backbone = backbone
        model = backbone.model
        self.device = backbone.device
        # an MLP readout: one with parameters besides the output linear map that θ already holds
        self.mlp = [t for t, r in enumerate(model.readouts) if sum(1 for _ in r.parameters()) > 1]
        self.inner: list[list[tuple[str, torch.Size]]] = []
        pieces = [backbone.theta0]
        for t in self.mlp:
            readout = model.readouts[t]
            out_weight = backbone._output_linear(readout).weight
            names = [(n, p.shape) for n, p in readout.named_parameters() if p is not out_weight]
            self.inner.append(names)
            pieces += [readout.get_parameter(n).detach().cpu().numpy().ravel() for n, _ in names]
        # the width of each MLP readout's input: that of its first map with irreps
        self.widths = tuple(next(m for m in model.readouts[t].modules() if hasattr(m, "irreps_in")).irreps_in.dim
                            for t in self.mlp)
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
        out_weight = bb._output_linear(bb.model.readouts[t]).weight
        out_name = next(n for n, p in bb.model.readouts[t].named_parameters() if p is out_weight)
        params = {out_name: phi[bb.slices[t]].reshape(out_weight.shape)}
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

    def energies_t(self, phi: torch.Tensor, a: torch.Tensor, e: torch.Tensor, h: list[torch.Tensor],
                   index: torch.Tensor) -> torch.Tensor:
        """E_c(φ) for every configuration, in torch (differentiable in φ)."""
        nodes = self.node_energies(phi, h)
        mlp = torch.zeros(len(e), dtype=torch.float64, device=self.device).index_add_(0, index, nodes)
        return a @ (self._linear_mask * phi[:self.n_theta]) + e + mlp

    def tensors(self, inputs: ReadoutInputs):
        """(ā-ready a, e, h, atom → configuration index) on the device."""
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
        """An ordinary MACE model (the source file's class and dtype) whose readouts carry φ."""
        phi = np.asarray(phi, dtype=np.float64)
        if phi.shape != (self.n_params,):
            raise ValueError(f"φ has shape {phi.shape}, expected ({self.n_params},)")
        bb = self.backbone
        model = bb._write_theta(copy.deepcopy(bb.template).to(torch.float64), phi[:self.n_theta])
        with torch.no_grad():
            for k, t in enumerate(self.mlp):
                for name, value in self._readout_params(torch.as_tensor(phi), k).items():
                    model.readouts[t].get_parameter(name).copy_(value)
        return model.to(bb.source_dtype)

    def export(self, phi: np.ndarray, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.model_with(phi), path)
        return path


class LabelledGraph:
    """The backbone's graph from positions to the MLP readouts' inputs for the labelled
    configurations, built once (one forward pass) and kept: forces of any φ are then one backward
    pass through it, and its φ-gradient one double-backward pass."""

    def __init__(self, full: FullReadout, atoms_list, batch_size: int = 64):
        bb = full.backbone
        self.full = full
        capture = [bb.model.readouts[t] for t in full.mlp]
        positions, h, counts = [], [[] for _ in full.mlp], []
        for batch in bb.batches(atoms_list, batch_size):
            # training=True keeps MACE's own force graph, so the backbone's graph survives for ours
            _, _, x = bb.forward(batch, compute_force=True, capture=capture)
            positions.append(batch["positions"])
            counts.append(torch.diff(batch["ptr"]))
            for store, value in zip(h, x):
                store.append(value)
        self.positions = positions
        self.h = h
        self.n_atoms = torch.cat(counts).cpu().numpy()

    def energy_inputs(self) -> list[np.ndarray]:
        """The MLP readouts' inputs of every labelled atom, without the graph: energies need no forces."""
        return [torch.cat(h).detach().cpu().numpy() for h in self.h]

    def mlp_forces(self, phi: torch.Tensor, create_graph: bool) -> torch.Tensor:
        """−∂/∂x of the MLP readouts' energy, [total atoms, 3], for φ (a torch leaf or expression)."""
        with torch.enable_grad():   # also under no_grad: the forces are a gradient
            energy = sum(self.full.node_energies(phi, [h[b] for h in self.h]).sum() for b in range(len(self.positions)))
            grads = torch.autograd.grad(energy, self.positions, create_graph=create_graph, retain_graph=True)
        return -torch.cat(grads)
