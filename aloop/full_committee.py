"""A committee of K full-readout fine-tunes (`finetune.readout: full`) on one frozen backbone.

Member k minimises the linear class's loss (committee.py) over φ = (θ, ω) (full_readout.py):

    J_k(φ) = Σ_c w_kc [ r_c² / (σ_c² + σ_floor²) + λ Θ(‖ΔF_c‖² − t²)(‖ΔF_c‖² − t²)² ]
             + ‖θ − θ_k^prior‖² / s² + ‖ω − ω_k^prior‖² / s_ω²

with the same bootstrap weights, the same θ prior (centre and s², drawn by `Committee`), and for ω
the same idea: ω_k^prior = ω0 + s_ω ξ_k, s_ω² = τ² / ⟨‖∂ε_i/∂ω‖²⟩, so that to first order a draw
moves per-atom energies ε_i by τ RMS (the average is over the labelled configurations' atoms).

J_k is not convex in ω, so there is no closed-form or Newton-certified minimiser. Each member is
minimised by full-batch L-BFGS (strong-Wolfe line search) from its prior centre, in coordinates
whitened by the Gauss-Newton Hessian of the energy term and the prior (`FullCommittee.minimise`),
until the largest gradient component is below `tolerance`; then Newton steps on the exact Hessian
take it to the minimiser's round-off (`FullCommittee.polish`). Full batch, a fixed start, no learning
rate, no random mini-batches and no validation split: the result is a function of the labels, their
weights and the prior (a local minimiser, the one reached from the member's own prior draw), not of
which two of eight labels an early-stopping split happened to hold out (docs/method.md).

With `committee.prior_sigma: auto` (τ, m) come from the labels' evidence before the members are fit
(`FullCommittee.evidence_prior`): MacKay's fixed point of the Laplace evidence, each round one fit of
the prior's mean, m the model error that joins σ_floor in quadrature, as the linear class's does.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from .arrays import ReadoutInputs, feature_moment
from .committee import MODEL_ERROR_RANGE, PRIOR_AUTO, TAU_RANGE, Committee, NotConverged, TrainingSet
from .full_readout import FullReadout, LabelledGraph

# `prior_sigma: auto`: MacKay's fixed point starts at this τ (eV/atom) with no model error, and stops when
# a round moves τ and m by less than EVIDENCE_TOLERANCE (relative), or after EVIDENCE_ROUNDS rounds
EVIDENCE_START = 0.1
EVIDENCE_TOLERANCE = 0.02
EVIDENCE_ROUNDS = 8
# a member that does not converge at the evidence's τ: every member again at τ/√2, at most this many times
TAU_BACKOFFS = 3


class MemberCommittee:
    """K members φ_k [K, P] of a map whose energies are not linear in φ (`full`, a `FullReadout`, or a
    subclass of it): what the nonlinear classes share, their construction and prediction. Bootstrap
    weights and random draws come from the linear `Committee` of the same settings."""

    kind = ""   # how messages name the class of fit

    def __init__(self, full: FullReadout, linear: Committee):
        self.full = full
        self.linear = linear
        self.size = linear.size

    @classmethod
    def from_settings(cls, full: FullReadout, committee, finetune):
        return cls(full, Committee.from_settings(full.backbone.theta0, committee, finetune))

    def _check_fitted(self):
        if not hasattr(self, "phis_"):
            raise RuntimeError("committee: predict called before fit (or load)")

    def member_energies(self, inputs: ReadoutInputs) -> np.ndarray:
        self._check_fitted()
        return self.full.energies(self.phis_, inputs)

    def predict(self, inputs: ReadoutInputs) -> tuple[np.ndarray, np.ndarray]:
        """The member-average energy and the spread (sample standard deviation over members), eV. The
        average is of the members' energies (E is not linear in φ; the exported committee-mean model
        holds every member's MLP side by side, FullReadout.model_with)."""
        energies = self.member_energies(inputs)
        return energies.mean(0), energies.std(0, ddof=1)


class FullCommittee(MemberCommittee):
    """K members φ_k [K, P_full], each by L-BFGS; θ's part of every prior is the linear class's own."""

    kind = "readout full"

    def __init__(self, full: FullReadout, linear: Committee, *, max_steps: int = 2000,
                 tolerance: float = 1e-5, freeze_inner: bool = False, round_steps: int = 20,
                 newton_steps: int = 6):
        """`freeze_inner` keeps ω at the base model's (the linear class's problem, solved by this
        optimiser): a check of the optimiser, not a campaign setting. `round_steps`: L-BFGS steps
        between two whitenings (`minimise`); `newton_steps`: the most polishing steps after them
        (`polish`; 0 for none)."""
        super().__init__(full, linear)
        self.max_steps = max_steps
        self.tolerance = tolerance
        self.freeze_inner = freeze_inner
        self.round_steps = round_steps
        self.newton_steps = newton_steps

    @property
    def effective_floor(self) -> float:
        """σ_floor of the energy term, with the evidence's model error in quadrature (auto; 0 when τ is given)."""
        return self.linear.effective_floor

    @property
    def tau_(self) -> float:
        """The prior's τ (eV/atom): committee.prior_sigma, or the evidence's (auto); each iteration records it."""
        return self.linear.tau_

    @property
    def model_error_(self) -> float:
        return self.linear.model_error_

    # --- the prior of ω ---------------------------------------------------------------------------
    def inner_variance(self, h: list[np.ndarray]) -> float:
        """s_ω² = τ² / ⟨‖∂ε_i/∂ω‖²⟩ over the atoms whose MLP inputs are `h`, at the base model."""
        full = self.full
        phi0 = torch.as_tensor(full.phi0, device=full.device)
        hs = [torch.as_tensor(x, device=full.device) for x in h]
        jac = full.node_jacobian(phi0, hs)[:, full.inner_slice]
        return self.linear.tau_**2 / float((jac**2).sum(1).mean())

    # --- fitting --------------------------------------------------------------------------------
    def problem(self, data: TrainingSet, graph: LabelledGraph, n_elements: int, moment: np.ndarray | None = None):
        """(objective, [K, n] weights, [K, P_full] prior centres, prior scale of each free parameter)."""
        if len(data) == 0:
            raise ValueError("committee: no labelled configurations to fit")
        if not np.array_equal(graph.n_atoms, data.features.n_atoms):
            raise ValueError("committee: the labelled graph and the training set hold different configurations")
        full, lin = self.full, self.linear
        s2 = lin.prior_variance(moment if moment is not None else feature_moment(data.features))
        weights = lin.weights(data.ids)
        centres = lin.prior_centres(data, weights, n_elements, s2)
        n_inner = full.n_params - full.n_theta
        if self.freeze_inner:
            inner = np.tile(full.phi0[full.inner_slice], (self.size, 1))
            scale = np.full(full.n_theta, np.sqrt(s2))
        else:
            s_inner = np.sqrt(self.inner_variance(graph.energy_inputs()))
            inner = full.phi0[full.inner_slice] + s_inner * lin.anchors(n_inner, inner=True)
            scale = np.concatenate([np.full(full.n_theta, np.sqrt(s2)), np.full(n_inner, s_inner)])
        return _FullObjective(full, data, graph, lin), weights, np.hstack([centres, inner]), scale

    def fit(self, data: TrainingSet, graph: LabelledGraph, n_elements: int, moment: np.ndarray | None = None,
            progress: bool = False) -> "FullCommittee":
        """Every member by L-BFGS to `tolerance`. `graph` holds the labelled configurations of `data`,
        in its order; `moment` scales θ's prior as in `Committee.fit`.

        With `prior_sigma: auto`, a member that does not converge at the evidence's τ sends every
        member back to a τ smaller by √2, at most TAU_BACKOFFS times (`tau_backoffs_` counts them): J is
        not convex in W1, and at a wide prior a member can wander along a shallow valley from its own
        draw (a MoS2 member at 150 labels, τ = 0.73 eV/atom: gradient 2.7e-3 after 2000 steps on one
        thread, converged in 1377 on two, and at τ/√2 in 620)."""
        self.evidence_rounds_, self.tau_backoffs_ = 0, 0
        auto = self.linear.prior_sigma == PRIOR_AUTO
        if auto:
            self.evidence_rounds_ = self.evidence_prior(data, graph, n_elements, moment)
        evidence_tau = self.tau_
        while True:
            try:
                return self._fit_members(data, graph, n_elements, moment, progress)
            except NotConverged as err:
                if not auto:
                    raise
                if self.tau_backoffs_ == TAU_BACKOFFS:
                    raise NotConverged(f"{err} (the evidence's τ was {evidence_tau:.3g} eV/atom; every member was "
                                       f"refitted at τ smaller by √2, {TAU_BACKOFFS} times)") from None
                self.linear.tau_ /= np.sqrt(2)
                self.tau_backoffs_ += 1

    def _fit_members(self, data, graph, n_elements, moment, progress) -> "FullCommittee":
        problem, weights, centres, scale = self.problem(data, graph, n_elements, moment)
        phis, objective, steps, gradient = [], [], [], []
        for k in tqdm(range(self.size), desc=f"fitting {self.size} members ({self.kind})", unit="member", disable=not progress):
            phi, value, n, g = self.minimise(problem, weights[k], centres[k], scale, self.max_steps)
            if g > self.tolerance:
                raise NotConverged(f"committee fit ({self.kind}): member {k}: L-BFGS stopped after {n} steps, and "
                                   f"Newton's polish after it, with gradient {g:.2e} above the tolerance {self.tolerance:.0e} (objective {value:.6g}). "
                                   f"A smaller committee.prior_sigma (now {self.tau_:.3g} eV/atom) holds W1 "
                                   "nearer the base model's, where L-BFGS settles (docs/method.md, 'The optimiser'); "
                                   "finetune.readout: linear has an exact fit")
            phis.append(phi)
            objective.append(value)
            steps.append(n)
            gradient.append(g)
        self.phis_ = np.array(phis)
        self.objective_ = np.array(objective)
        self.lbfgs_steps_ = np.array(steps)
        self.gradient_ = np.array(gradient)
        return self

    def prior_mean(self, data: TrainingSet, n_elements: int) -> np.ndarray:
        """φ's prior without a member's draw: θ0 with E0 refit to every label at weight 1, and ω0."""
        phi = self.full.phi0.copy()
        phi[:self.full.n_theta] = self.linear.prior_mean(data, n_elements)
        return phi

    def evidence_prior(self, data: TrainingSet, graph: LabelledGraph, n_elements: int,
                       moment: np.ndarray | None = None) -> int:
        """Set (τ, m) to MacKay's fixed point of the Laplace evidence; returns the rounds taken.

        Each round fits the prior's mean (every label at weight 1, no draw) at the current (τ, m), and
        takes the curvature there, in coordinates whitened by the prior: data Hessian H̃ = S H S (S the
        prior's scales, H `data_curvature`) with eigenvalues λ. γ = Σ λ/(1 + λ) parameters are
        determined by the labels; the prior is as wide as the fit's own move if τ² ← τ² ‖u‖²/γ, with
        u = (φ − prior mean)/S, and the labels' scatter is what their error bars and m allow if
        Σ r²/(σ² + σ_floor² + m²) = n − γ (MacKay 1992; Bishop, PRML §3.5.2). The linear class
        maximises its exact evidence on a grid instead (Committee.evidence_prior); here every point of
        a grid would cost a fit, and the fixed point is reached in a few (2 on MoS2's 100 labels from
        τ = 0.1, docs/method.md). τ stays within TAU_RANGE and m within MODEL_ERROR_RANGE, and below
        any τ at which the fit of the prior's mean does not converge."""
        lin = self.linear
        lin.tau_, lin.model_error_ = EVIDENCE_START, 0.0
        dev = self.full.device
        n = len(data)
        base = data.sigma**2 + lin.noise_floor**2
        fitted = None   # the last (τ, m) whose fit converged
        for rounds in range(1, EVIDENCE_ROUNDS + 1):
            problem, _, _, scale = self.problem(data, graph, n_elements, moment)
            centre = self.prior_mean(data, n_elements)
            n_free = len(scale)
            phi, _, _, gradient = self.minimise(problem, np.ones(n), centre, scale, self.max_steps)
            if gradient > self.tolerance:
                # no minimiser, so no Laplace evidence here: back off halfway (in log τ) to the last τ
                # whose fit converged. Few labels and a weak prior do this (3 H3 labels asked for τ = 10)
                if fitted is None:
                    break   # even the start: the members' fit will say so
                lin.tau_, lin.model_error_ = float(np.sqrt(fitted[0] * lin.tau_)), fitted[1]
                continue
            fitted = (lin.tau_, lin.model_error_)
            phi_t, sc = torch.as_tensor(phi, device=dev), torch.as_tensor(scale, device=dev)
            curvature = self.data_curvature(problem, phi_t, n_free)
            lam = torch.linalg.eigvalsh(sc[:, None] * curvature * sc[None, :]).clamp(min=0).cpu().numpy()
            gamma = float(np.sum(lam / (1 + lam)))
            u2 = float(np.sum(((phi[:n_free] - centre[:n_free]) / scale) ** 2))
            with torch.no_grad():
                r2 = ((problem.energies(phi_t) - problem.y) ** 2).cpu().numpy()
            tau = float(np.clip(lin.tau_ * np.sqrt(u2 / max(gamma, 1e-12)), *TAU_RANGE))
            m = _model_error(r2, base, n - gamma)
            moved = abs(np.log(tau / lin.tau_)) > EVIDENCE_TOLERANCE or abs(m - lin.model_error_) > EVIDENCE_TOLERANCE * max(m, lin.noise_floor)
            if not moved:
                break
            lin.tau_, lin.model_error_ = tau, m
        else:
            if fitted is not None:   # the last proposal was never fitted: keep the last one that was
                lin.tau_, lin.model_error_ = fitted
        return rounds

    def data_curvature(self, problem: "_FullObjective", phi: torch.Tensor, n_free: int) -> torch.Tensor:
        """½∇² of J's data part at φ, every label at weight 1, over the first `n_free` parameters:
        Gauss-Newton for the energy term (GᵀWG, G = ∂E/∂φ), exact for the force penalty, by
        Hessian-vector products over the labels whose forces leave the threshold (none, commonly)."""
        jac = problem.energy_jacobian(phi)[:, :n_free]
        curvature = (jac.T * problem.inv_var) @ jac
        if problem.lam > 0:
            with torch.no_grad():
                active = (problem.excess(phi) > 0).to(torch.float64)
            if bool(active.any()):
                def penalty(free):
                    return problem.lam * (active * problem.excess(torch.cat([free, phi[n_free:]])) ** 2).sum()
                curvature = curvature + 0.5 * torch.autograd.functional.hessian(penalty, phi[:n_free].clone())
        return 0.5 * (curvature + curvature.T)

    def minimise(self, problem: "_FullObjective", w, centre, scale, max_steps: int):
        """(φ, J, steps, largest gradient component) of one member by L-BFGS from its prior centre.

        The coordinates v are whitened by the Gauss-Newton Hessian H of the energy term and the prior
        where a round starts, φ = φ_start + L⁻ᵀ v with H = L Lᵀ: the labels' energies are stiff
        (σ_floor of meV) along a few directions and free along others, and without this L-BFGS's line
        search reaches round-off in J before the gradient is small. In v a unit of gradient is about a
        unit of r/σ, so `tolerance` reads as a fraction of a label's error bar."""
        dev = self.full.device
        n_free = len(scale)
        c = torch.as_tensor(centre, device=dev)
        sc = torch.as_tensor(scale, device=dev)
        w = torch.as_tensor(w, device=dev)

        def phi_of(free):
            return torch.cat([free, c[n_free:]])

        def whitening(free):
            jac = problem.energy_jacobian(phi_of(free))[:, :n_free]
            hessian = 2 * (jac.T * (w * problem.inv_var)) @ jac + torch.diag(2 / sc**2)
            eye = torch.eye(n_free, dtype=torch.float64, device=dev)
            return torch.linalg.solve_triangular(torch.linalg.cholesky(hessian).T, eye, upper=True)

        def value_and_grad(free, whiten, v, create_graph=False):
            x = free + whiten @ v
            value = problem.value(phi_of(x), w) + (((x - c[:n_free]) / sc) ** 2).sum()
            (grad,) = torch.autograd.grad(value, v, create_graph=create_graph)
            return value.detach(), grad

        # tolerance_change 0: stop on the gradient alone (or max_steps), never on a slow stretch. The
        # quartic force penalty and W1 change the curvature the whitening was made for, so L-BFGS runs
        # in rounds of `round_steps`, each whitened where the last stopped, for as long as a round
        # still lowers J. Whitened once and run to its end, L-BFGS had not converged after 10000 steps
        # on the quickstart's 40 labels at τ = 0.5 eV/atom; in rounds of 20 it converged in 180.
        free = c[:n_free].clone()
        steps, value = 0, None
        while True:
            whiten = whitening(free)
            v = torch.zeros(n_free, dtype=torch.float64, device=dev, requires_grad=True)
            previous, (value, grad) = value, value_and_grad(free, whiten, v)
            if float(grad.abs().max()) <= self.tolerance or steps >= max_steps or not (previous is None or value < previous):
                break

            def closure():
                loss, v.grad = value_and_grad(free, whiten, v)
                return loss

            budget = min(self.round_steps, max_steps - steps)
            opt = torch.optim.LBFGS([v], lr=1.0, max_iter=budget, max_eval=2 * budget,
                                    tolerance_grad=self.tolerance, tolerance_change=0.0, history_size=50,
                                    line_search_fn="strong_wolfe")
            opt.step(closure)
            steps += max(int(opt.state[v].get("n_iter", 0)), 1)
            free = (free + whiten @ v).detach()
        free, value, grad = self.polish(free, whitening, value_and_grad)
        phi = phi_of(free).cpu().numpy()
        return phi, float(value), steps, float(grad.abs().max())

    def polish(self, free, whitening, value_and_grad):
        """Newton steps from where L-BFGS stopped: (free, J, whitened gradient) where they end.

        L-BFGS's line search compares values of J, and near the minimiser J changes by less than its
        own round-off: it stops at `tolerance` (where exactly depends on the order of the floating-point
        sums: CPU and CUDA fits of MoS2 stopped 2.7e-6 eV apart, two CPU fits with 1 and 2 threads
        9.6e-7 eV apart), or stalls just above it, J no longer falling. Newton's step needs no values
        of J: it solves H d = −g (conjugate gradients on exact Hessian-vector products, in the whitened
        coordinates where H is near the identity) and is kept while it shrinks the gradient, which has
        no such round-off. Converging quadratically, it ends where the gradient is round-off, the same
        minimiser on any device. Where H is not positive definite, or the step does not shrink the
        gradient, L-BFGS had not reached a minimiser's basin and the point is returned as it was."""
        dev = free.device
        n_free = len(free)
        whiten = whitening(free)
        zero = torch.zeros(n_free, dtype=torch.float64, device=dev)
        v = zero.clone().requires_grad_(True)
        value, g = value_and_grad(free, whiten, v, create_graph=True)   # g's graph gives H's products
        for _ in range(self.newton_steps):
            step = _conjugate_gradients(lambda u: torch.autograd.grad(g, v, u, retain_graph=True)[0],
                                        -g.detach(), rtol=1e-6, max_iter=n_free)
            if step is None:   # the Hessian is not positive along the way: not a minimiser's basin
                break
            trial = (free + whiten @ step).detach()
            trial_v = zero.clone().requires_grad_(True)
            trial_value, trial_g = value_and_grad(trial, whiten, trial_v, create_graph=True)
            if not float(trial_g.detach().norm()) < float(g.detach().norm()):
                break
            free, value, g, v = trial, trial_value, trial_g, trial_v
        # the gradient as `minimise` reports it: in coordinates whitened where the fit ends
        value, grad = value_and_grad(free, whitening(free), zero.clone().requires_grad_(True))
        return free, value, grad

    # --- the posterior, linearised (targeted acquisition) ---------------------------------------
    def energy_rows(self, inputs: ReadoutInputs) -> np.ndarray:
        """∂E/∂φ [n, P] at the members' mean φ̄. Linearised there, E(φ) ≈ E(φ̄) + row·(φ − φ̄):
        targeted acquisition uses the rows as the linear class uses its features, with
        `posterior_covariance` as Σ (a pool is passed a block at a time: `PoolRows.features`)."""
        self._check_fitted()
        full = self.full
        phi = torch.as_tensor(self.phis_.mean(0), device=full.device)
        a, _, h, index = full.tensors(inputs)
        return full.energy_jacobian_t(phi, a, h, index).cpu().numpy()

    def posterior_covariance(self, data: TrainingSet, graph: LabelledGraph, n_elements: int,
                             moment: np.ndarray | None = None) -> np.ndarray:
        """Σ [P, P]: the Laplace posterior of φ at the members' mean φ̄ with every label at weight 1,
        the committee's J linearised there (as `Committee.posterior_covariance` for θ, where nothing
        needs linearising). ½∇²J is taken Gauss-Newton for the energy term, JᵀWJ with J = ∂E/∂φ,
        and the prior's I/s²; exactly for the force penalty, by Hessian-vector products over the
        labels whose forces leave the threshold (none, commonly: then it adds nothing). The
        linearisation drops r ∂²E/∂φ², which can make ∇²J indefinite away from a minimiser; the
        Gauss-Newton part cannot be, and curvature below the prior's own (from the penalty's second
        derivatives) is raised to it, so Σ is never wider than the prior. Parameters the fit holds
        fixed (`freeze_inner`) have zero variance."""
        self._check_fitted()
        problem, _, _, scale = self.problem(data, graph, n_elements, moment)
        dev = self.full.device
        n_free = len(scale)
        phi = torch.as_tensor(self.phis_.mean(0), device=dev)
        sc = torch.as_tensor(scale, device=dev)
        values, vectors = torch.linalg.eigh(self.data_curvature(problem, phi, n_free) + torch.diag(1 / sc**2))
        values = torch.maximum(values, (1 / sc**2).min())
        sigma = np.zeros((self.full.n_params, self.full.n_params))
        sigma[:n_free, :n_free] = ((vectors / values) @ vectors.T).cpu().numpy()
        return 0.5 * (sigma + sigma.T)

    # --- persistence ----------------------------------------------------------------------------
    def save(self, path) -> None:
        self._check_fitted()
        np.savez(path, phis=self.phis_, phi0=self.full.phi0, objective=self.objective_, steps=self.lbfgs_steps_,
                 gradient=self.gradient_, tau=self.tau_, model_error=self.model_error_,
                 tau_backoffs=self.tau_backoffs_)

    def load(self, path) -> "FullCommittee":
        with np.load(path) as f:
            if "phis" not in f:
                raise ValueError(f"{path}: a committee of finetune.readout: linear; the campaign says full")
            if "steps" not in f:
                raise ValueError(f"{path}: a committee of finetune.kind: delta; the campaign says readout: full")
            if f["phi0"].shape != self.full.phi0.shape or not np.allclose(f["phi0"], self.full.phi0):
                raise ValueError(f"{path}: committee checkpoint belongs to a different base model")
            self.phis_, self.objective_ = f["phis"], f["objective"]
            self.lbfgs_steps_, self.gradient_ = f["steps"], f["gradient"]
            if "tau" in f.files:   # the τ and m it was fitted with (auto: the evidence's)
                self.linear.tau_, self.linear.model_error_ = float(f["tau"]), float(f["model_error"])
            self.tau_backoffs_ = int(f["tau_backoffs"]) if "tau_backoffs" in f.files else 0
        return self


class _FullObjective:
    """The data part of J_k for φ (torch, differentiable): energy term and force penalty."""

    def __init__(self, full: FullReadout, data: TrainingSet, graph: LabelledGraph, linear: Committee):
        dev = full.device
        self.full, self.graph = full, graph
        self.a, self.e, self.h, self.index = full.tensors(ReadoutInputs(data.features, graph.energy_inputs()))
        self.y = torch.as_tensor(data.energy, device=dev)
        self.inv_var = torch.as_tensor(1.0 / (data.sigma**2 + linear.effective_floor**2), device=dev)
        self.lam = linear.force_weight
        n_atoms = data.features.n_atoms
        self.t2 = torch.as_tensor(linear.force_threshold**2 * n_atoms if linear.threshold_per_atom
                                  else np.full(len(data), linear.force_threshold**2), device=dev)
        if self.lam == 0:
            return
        # ΔF = dF0 + B̄ θ + F_mlp(φ): B̄ is B without the MLP's W2 columns, whose forces F_mlp holds
        mask = full._linear_mask.cpu().numpy()
        self.B = torch.as_tensor(data.B * mask, device=dev)
        phi0 = torch.as_tensor(full.phi0, device=dev)
        with torch.no_grad():
            base = graph.mlp(phi0)[1].detach()
            self.dF0 = torch.as_tensor(data.f0 - data.f_lf, device=dev) - self.B @ phi0[:full.n_theta] - base

    def forces_delta(self, phi: torch.Tensor, mlp_forces: torch.Tensor | None = None) -> torch.Tensor:
        """ΔF [n, 3Nmax] for φ, differentiable in φ (`mlp_forces`: the graph's, when already at hand)."""
        if mlp_forces is None:
            mlp_forces = self.graph.mlp(phi)[1]
        return self.dF0 + self.B @ phi[:self.full.n_theta] + mlp_forces

    def energies(self, phi: torch.Tensor) -> torch.Tensor:
        return self.full.energies_t(phi, self.a, self.e, self.h, self.index)

    def energy_jacobian(self, phi: torch.Tensor) -> torch.Tensor:
        return self.full.energy_jacobian_t(phi, self.a, self.h, self.index)

    def excess(self, phi: torch.Tensor, mlp_forces: torch.Tensor | None = None) -> torch.Tensor:
        """‖ΔF‖² − t² where positive, else 0 [n]: the force penalty is λ Σ w excess²."""
        return torch.clamp((self.forces_delta(phi, mlp_forces) ** 2).sum(1) - self.t2, min=0.0)

    def value(self, phi: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.lam == 0:
            r = self.energies(phi) - self.y
            return (w * self.inv_var * r**2).sum()
        mlp_energy, mlp_forces = self.graph.mlp(phi)
        r = self.full.linear_energies(phi, self.a, self.e) + mlp_energy - self.y
        return (w * self.inv_var * r**2).sum() + self.lam * (w * self.excess(phi, mlp_forces) ** 2).sum()


def _model_error(r2: np.ndarray, variance: np.ndarray, dof: float) -> float:
    """m ≥ 0 with Σ r²/(variance + m²) = dof (0 where the error bars alone leave no more scatter), at most
    MODEL_ERROR_RANGE's upper end."""
    def excess(m):
        return float(np.sum(r2 / (variance + m**2))) - dof
    hi = MODEL_ERROR_RANGE[1]
    if dof <= 0 or excess(0.0) <= 0:
        return 0.0
    if excess(hi) > 0:
        return hi
    lo = 0.0
    for _ in range(100):   # bisection: excess falls with m
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)


def _conjugate_gradients(hvp, b: torch.Tensor, rtol: float, max_iter: int) -> torch.Tensor | None:
    """x with H x = b to ‖Hx − b‖ ≤ rtol ‖b‖, from H's products `hvp`; None where H is found not
    positive definite."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = r @ r
    target = rtol**2 * rr
    for _ in range(max_iter):
        if rr <= target:
            break
        hp = hvp(p)
        curvature = p @ hp
        if curvature <= 0:
            return None
        alpha = rr / curvature
        x = x + alpha * p
        r = r - alpha * hp
        rr, previous = r @ r, rr
        p = r + (rr / previous) * p
    return x
