"""`finetune.kind: delta`: a small correction network added to the frozen base model (Δ-learning).

The base model is left exactly as it is. What the committee learns is the difference between the
labels and the base model, with a network of its own on the inputs of the base model's MLP readout
(the last layer's invariant node features h_i, cached once per candidate as for `readout: full`):

    E_c(ψ) = E_base,c + Σ_{i∈c} s·g(h_i; W, v) + Σ_z n_cz δE0_z
    g(h; W, v) = act(hᵀW / √d) · v / √(m + H)

with W [d, H] and v [H] the correction's H hidden units, act the base MLP readout's own activation,
s the model's interaction-energy scale, m the base MLP's width and δE0 a shift of each element's
energy. ψ = (δE0, v, W). The scaling is that of the base readout widened by H hidden units, so the
exported file is one ordinary MACE model: the MLP readout with m + H hidden units, the base model's
weights in the first m and the correction's in the rest (`DeltaReadout.model_with`). The committee's
mean is one such model too, with every member's hidden units side by side (m + K·H): unlike
`readout: full`, a delta committee exports its committee_mean.model and can relax its own paths.

Each member k has its own hidden layer W_k, a standard-normal draw (as MACE initialises a layer),
kept fixed; it learns v and δE0. The energy is then linear in u = (δE0, v) with features
[n_c, Σ_i s·act(h_iᵀW_k/√d)/√(m+H)], and the member's loss is the linear class's: the same energy
term, bootstrap weights and thresholded force penalty, the correction's forces computed through the
frozen backbone by `DeltaReadout.hidden_terms` (from the per-atom Jacobians ∂h/∂x, once per labelled
configuration, kept in the run's cache since the hidden layers never change). It is convex in u and
solved exactly by the linear class's Newton iteration (committee.py): no optimiser path, no
tolerance, the same answer from the same labels. (Training W as well would make the loss
non-convex, as it is for `full`.) The prior of v is centred on the member's own draw and scaled so
that a draw moves per-atom energies by `committee.prior_sigma` RMS on the labelled atoms; δE0's is
centred on the member's least-squares shift with `prior_sigma` per atom. The members differ by their
bootstrap weights and their draws of W and v.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .backbone import Backbone
from .arrays import Features
from .committee import PRIOR_AUTO, Committee, TrainingSet, _Objective
from .full_committee import MemberCommittee
from .full_readout import FullReadout, MLPBlock, averaged_mlp, position_jacobian


class DeltaReadout(FullReadout):
    """The map ψ → energies of the base model plus a correction of `width` hidden units."""

    def __init__(self, backbone: Backbone, width: int):
        super().__init__(backbone)   # refuses a model without an MLP readout
        if len(self.mlp) != 1:
            raise ValueError(f"finetune.kind: delta: the base model has {len(self.mlp)} MLP readouts; the correction "
                             "is built on exactly one (MACE's last-layer readout)")
        readout = backbone.model.readouts[self.mlp[0]]
        if getattr(readout, "num_heads", 1) > 1:
            raise ValueError("finetune.kind: delta: the base model's MLP readout has several heads; use a single-head "
                             "model, or finetune.kind: readout")
        self.d, self.m = self.widths[0], self.hidden_widths[0]
        self.width = int(width)
        self.act = readout.non_linearity.acts[0]   # e3nn's second-moment-normalised gate
        self.n_elements = len(backbone.z_table)
        self.e0_slice = backbone.slices[-1]
        n_linear = self.n_elements + self.width
        self.n_theta = n_linear             # the parameters the energy is linear in: δE0 and v
        self.n_params = n_linear + self.d * self.width
        self.inner_slice = slice(n_linear, self.n_params)
        self.phi0 = np.zeros(self.n_params)  # no correction: the base model
        self._theta0 = torch.as_tensor(backbone.theta0, device=self.device)

    def parts(self, psi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(δE0 [elements], v [H], W [d, H]) of ψ."""
        n = self.n_elements
        return psi[:n], psi[n:n + self.width], psi[self.inner_slice].reshape(self.d, self.width)

    def hidden(self, psi: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.act(h @ self.parts(psi)[2] / np.sqrt(self.d))

    def node_energies(self, psi: torch.Tensor, h: list[torch.Tensor]) -> torch.Tensor:
        """s·g(h_i) per node [atoms]: the correction network's part of the energy."""
        v = self.parts(psi)[1]
        return self._scale * (self.hidden(psi, h[0]) @ v) / np.sqrt(self.m + self.width)

    def linear_energies(self, psi: torch.Tensor, a: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """The base model's energy plus the element shifts: all but the network's part."""
        return a @ self._theta0 + e + a[:, self.e0_slice] @ self.parts(psi)[0]

    def hidden_terms(self, atoms_list, layers: np.ndarray, batch_size: int = 8) -> list["HiddenTerms"]:
        """For each configuration and each hidden layer W_k of `layers` [K, d·H]: the energy features
        G = Σ_i s·act(h_iᵀW_k/√d)/√(m+H) [H] and their forces −∂G/∂x [3N, H]. One backbone pass per
        batch, then the per-atom Jacobians ∂h_i/∂x (`position_jacobian`: 3N backward passes for the
        batch), which every member's forces contract: −∂G_j/∂x = −Σ_i s·act'(z_ij)/√(m+H) W_kjᵀ ∂h_i/∂x.
        One backward pass per member batched over its H hidden units (K·H vector-Jacobian products)
        took 3x as long on MoS2 cells."""
        bb, dev = self.backbone, self.device
        capture = [bb.model.readouts[self.mlp[0]]]
        factor = self._scale / np.sqrt(self.m + self.width)
        Ws = torch.as_tensor(np.asarray(layers), device=dev).reshape(len(layers), self.d, self.width) / np.sqrt(self.d)
        out: list[HiddenTerms] = []
        for batch in bb.batches(atoms_list, batch_size):
            _, _, (h,) = bb.forward(batch, compute_force=True, capture=capture)   # keeps the graph to positions
            ptr = batch["ptr"]
            n = torch.diff(ptr)
            config = torch.repeat_interleave(torch.arange(len(n), device=dev), n)
            jacobian = position_jacobian(h, batch["positions"], ptr)   # [atoms, d, 3 N_max]
            g, dg, a2 = [], [], []
            for W in Ws:
                with torch.enable_grad():
                    z = (h.detach() @ W).requires_grad_(True)
                    act = self.act(z)
                    (slope,) = torch.autograd.grad(act.sum(), z)
                act = factor * act.detach()
                g.append(torch.zeros(len(n), self.width, dtype=torch.float64, device=dev).index_add(0, config, act))
                a2.append(torch.zeros(len(n), dtype=torch.float64, device=dev).index_add(0, config, (act**2).sum(1)))
                # d G_j / d h_i = s·act'(z_ij)·W[:, j]/√(m+H), every hidden unit j at once
                per_atom = torch.einsum("ij,kj,ikc->ijc", factor * slope, W, jacobian)   # [atoms, H, 3 N_max]
                dg.append(-torch.zeros(len(n), *per_atom.shape[1:], dtype=torch.float64, device=dev)
                          .index_add(0, config, per_atom))   # [configurations, H, 3 N_max]
            for c in range(len(n)):
                columns = 3 * int(n[c])
                out.append(HiddenTerms(
                    g=torch.stack([x[c] for x in g]).cpu().numpy(),
                    dg=torch.stack([x[c, :, :columns].T for x in dg]).cpu().numpy(),
                    a2=torch.stack([x[c] for x in a2]).cpu().numpy(), n_atoms=int(n[c])))
        return out

    # --- export --------------------------------------------------------------------------------
    def model_with(self, psi: np.ndarray) -> torch.nn.Module:
        """One ordinary MACE model of the base model's class and dtype computing base + correction:
        its MLP readout widened to m + H hidden units and E0 shifted by δE0. Given a committee
        ψ [K, P], the model of the members' average energy: the readout widened by every member's
        hidden units (m + K·H), each member's v divided by K, E0 shifted by the mean δE0. The energy is
        linear in (δE0, v) and every member has its own hidden units, so this average is exact."""
        psi = np.asarray(psi, dtype=np.float64)
        if psi.shape[-1:] != (self.n_params,) or psi.ndim not in (1, 2):
            raise ValueError(f"ψ has shape {psi.shape}, expected ({self.n_params},) or (members, {self.n_params})")
        members = np.atleast_2d(psi)
        n_members = len(members)
        bb, t = self.backbone, self.mlp[0]
        parts = [self.parts(torch.as_tensor(p)) for p in members]
        de0 = np.mean([p[0].numpy() for p in parts], axis=0)
        model = bb._write_theta(copy.deepcopy(bb.template).to(torch.float64), bb.theta0 + self._e0_shift(de0))
        base = model.readouts[t]
        n_out = base.linear_2.irreps_out.dim
        blocks = [MLPBlock(base.linear_1.weight, base.linear_2.weight, self.m, 1.0)]
        for _, v, w in parts:
            out = torch.zeros(self.width, n_out, dtype=torch.float64)
            out[:, bb.head_index if n_out > 1 else 0] = v
            blocks.append(MLPBlock(w, out, self.m + self.width, 1.0 / n_members))
        model.readouts[t] = averaged_mlp(base, blocks)
        return model.to(bb.source_dtype)

    def _e0_shift(self, de0: np.ndarray) -> np.ndarray:
        shift = np.zeros_like(self.backbone.theta0)
        shift[self.e0_slice] = de0
        return shift


@dataclass
class HiddenTerms:
    """What the fit needs of one labelled configuration for the K members' hidden layers: energy
    features g [K, H], their forces dg [K, 3N, H], Σ_i Σ_j (s·act_ij/√(m+H))² a2 [K] and N."""
    g: np.ndarray
    dg: np.ndarray
    a2: np.ndarray
    n_atoms: int

    def save(self, path) -> None:
        np.savez(path, g=self.g, dg=self.dg, a2=self.a2, n_atoms=self.n_atoms)

    @classmethod
    def load(cls, path) -> "HiddenTerms":
        with np.load(path) as f:
            return cls(f["g"], f["dg"], f["a2"], int(f["n_atoms"]))


class DeltaCommittee(MemberCommittee):
    """K corrections ψ_k [K, P] on one frozen base model, each solved exactly for its own hidden layer;
    draws and bootstrap weights come from the linear `Committee` of the same settings."""

    kind = "kind delta"

    def layers(self) -> np.ndarray:
        """[K, d·H]: each member's hidden layer W_k, a standard-normal draw of its own stream: fixed by
        the committee's seed and size, whatever the labels."""
        return self.linear.anchors(self.full.d * self.full.width, inner=True)

    def fit(self, data: TrainingSet, hidden: list[HiddenTerms], n_elements: int, moment: np.ndarray | None = None,
            progress: bool = False) -> "DeltaCommittee":
        """Every member to the exact minimiser of its loss in (δE0, v). `hidden` holds, per row of
        `data` and in its order, the hidden layers' terms (`DeltaReadout.hidden_terms` of `layers()`);
        `moment` is not used (the correction's prior is scaled on the labelled atoms). With
        `prior_sigma: auto` each member's τ and model error come from its labels' evidence under its
        own features (`member_evidence`); `tau_` is the members' median, for the record."""
        if len(data) == 0:
            raise ValueError("committee: no labelled configurations to fit")
        if [t.n_atoms for t in hidden] != data.features.n_atoms.tolist():
            raise ValueError("committee: the hidden terms and the training set hold different configurations")
        delta, lin = self.full, self.linear
        weights = lin.weights(data.ids)
        layers = self.layers()
        e0_centres = lin._e0_refit(data, weights, n_elements)
        v_draws = lin.anchors(delta.width)
        counts = data.features.a[:, delta.e0_slice]
        base_energy = data.features.energies(delta.backbone.theta0)
        width = data.f0.shape[1]
        phis, objective, steps, taus, errors = [], [], [], [], []
        for k in tqdm(range(self.size), desc=f"fitting {self.size} members ({self.kind})", unit="member",
                      disable=not progress):
            g = np.array([t.g[k] for t in hidden])
            dg = np.zeros((len(hidden), width, delta.width))
            for c, t in enumerate(hidden):
                dg[c, :t.dg.shape[1]] = t.dg[k]
            atom_moment = sum(t.a2[k] for t in hidden) / sum(t.n_atoms for t in hidden)
            if lin.prior_sigma == PRIOR_AUTO:
                tau, error = self.member_evidence(data, g / np.sqrt(atom_moment), counts, base_energy)
            else:
                tau, error = float(lin.prior_sigma), 0.0
            s_v = tau / np.sqrt(atom_moment)   # a draw v = s_v ξ moves per-atom energies by τ RMS
            # coordinates scaled by the prior's scales, so that the prior is ‖u − centre‖² with s² = 1
            scale = np.concatenate([np.full(n_elements, tau), np.full(delta.width, s_v)])
            features = Features(np.hstack([counts, g]) * scale, base_energy, data.features.n_atoms)
            B = np.concatenate([np.zeros((len(hidden), width, n_elements)), dg], axis=2) * scale
            member = TrainingSet(features, data.energy, data.sigma, data.f0, B, data.f_lf, data.ids)
            problem = _Objective(member, float(np.hypot(lin.noise_floor, error)), lin.force_threshold,
                                 lin.force_weight, np.zeros(len(scale)), lin.threshold_per_atom)
            centre = np.concatenate([e0_centres[k] / tau, v_draws[k]])
            u, value, n = problem.minimise(weights[k], centre, 1.0, lin.max_steps)
            phis.append(np.concatenate([u * scale, layers[k]]))
            objective.append(value)
            steps.append(n)
            taus.append(tau)
            errors.append(error)
        self.phis_ = np.array(phis)
        self.objective_ = np.array(objective)
        self.newton_steps_ = np.array(steps)
        self.taus_, self.model_errors_ = np.array(taus), np.array(errors)
        self.tau_ = float(np.median(self.taus_))
        return self

    def member_evidence(self, data: TrainingSet, x: np.ndarray, counts: np.ndarray,
                        base_energy: np.ndarray) -> tuple[float, float]:
        """(τ eV/atom, model error eV) maximising one member's evidence of the labels. Its energy is
        linear in (v, δE0) with features [x, counts], x its hidden features scaled so that v ~ N(0, τ²)
        is its prior, and δE0 ~ N(least-squares shift, τ²): the linear class's evidence
        (`Committee.evidence_prior`) on these features, with a prior of trace 1."""
        lin = self.linear
        probe = Committee(np.zeros(x.shape[1] + counts.shape[1]), size=2, bootstrap=False, prior_sigma=PRIOR_AUTO,
                          force_threshold=lin.force_threshold, force_weight=0.0, noise_floor=lin.noise_floor, seed=0)
        features = Features(np.hstack([x, counts]), base_energy, data.features.n_atoms)
        labelled = TrainingSet(features, data.energy, data.sigma, data.f0, data.B, data.f_lf, data.ids)
        return probe.evidence_prior(labelled, counts.shape[1], 1.0)

    def save(self, path) -> None:
        self._check_fitted()
        np.savez(path, phis=self.phis_, phi0=self.full.phi0, objective=self.objective_, newton_steps=self.newton_steps_,
                 taus=self.taus_, model_errors=self.model_errors_)

    def load(self, path) -> "DeltaCommittee":
        with np.load(path) as f:
            if "newton_steps" not in f or "phis" not in f:
                raise ValueError(f"{path}: a committee of finetune.kind: readout; the campaign says kind: delta")
            if f["phi0"].shape != self.full.phi0.shape:
                raise ValueError(f"{path}: a correction of another width or base model (finetune.delta_width)")
            self.phis_, self.objective_, self.newton_steps_ = f["phis"], f["objective"], f["newton_steps"]
            if "taus" in f:   # files written before prior_sigma: auto worked for delta have none
                self.taus_, self.model_errors_ = f["taus"], f["model_errors"]
                self.tau_ = float(np.median(self.taus_))
        return self


def nonlinear_map(backbone: Backbone, finetune) -> FullReadout | None:
    """The map from a member's parameters to energies when they enter nonlinearly (`readout: full`,
    `kind: delta`); None for the linear class, whose θ the backbone's features carry."""
    if finetune.kind == "delta":
        return DeltaReadout(backbone, finetune.delta_width)
    return FullReadout(backbone) if finetune.readout == "full" else None
