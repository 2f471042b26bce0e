"""A committee of K readout fine-tunes on one frozen backbone.

Every member is a parameter vector θ_k (see backbone.py), so the committee is a [K, P] array and a
prediction for any number of configurations is one matrix product with their cached features.

Member k minimises, over the labelled configurations c with bootstrap weights w_kc,

    J_k(θ) = Σ_c w_kc [ (E(c; θ) − E_HF(c))² / (σ_c² + σ_floor²) + λ Θ(‖ΔF_c‖² − t²)(‖ΔF_c‖² − t²)² ]
             + ‖θ − θ_k^prior‖² / s²

with ΔF_c = F(c; θ) − F_LF(c) over all atoms of c, and t one number, or t_atom √N_c per configuration
when the threshold is given per atom. E and F are affine in θ, so ‖ΔF_c‖² is a convex
quadratic and the thresholded penalty a convex, once-differentiable function of it: J_k is strictly
convex (the prior term) and has one minimiser. Each member is solved to that minimiser by Newton's
method, so the answer depends on the labels, the weights and the prior, never on an optimiser's path,
a learning rate or the order of the rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, cho_solve
from scipy.optimize import minimize_scalar
from tqdm.auto import tqdm

from .arrays import Features, ForceJacobian, feature_moment

PRIOR_AUTO = "auto"            # committee.prior_sigma chosen by the labels' evidence (Committee.evidence_tau)
TAU_RANGE = (1e-4, 10.0)       # eV/atom: where the evidence looks for τ
MODEL_ERROR_RANGE = (1e-3, 3.0)   # eV per configuration: where it looks for the model error m (and at 0)

# Entropy tags for the member's random streams: one per purpose, so that adding a purpose never
# shifts the draws of another.
_ANCHOR, _WEIGHT, _INNER_ANCHOR = 0, 1, 2


@dataclass
class TrainingSet:
    """Labelled configurations in the form the loss needs; force arrays padded to the largest N.

    `ids` name the configurations (in a run, `RunStore.draw_ids` of the candidates): a member's
    bootstrap weight of a label is drawn from its id, so it is the same whatever the order of the
    rows and whichever labels join later.
    """

    features: Features
    energy: np.ndarray  # [n] eV, high-fidelity labels
    sigma: np.ndarray  # [n] eV, label error bars
    f0: np.ndarray  # [n, 3Nmax] base-model forces (zeros in padding)
    B: np.ndarray  # [n, 3Nmax, P]
    f_lf: np.ndarray  # [n, 3Nmax] low-fidelity forces
    ids: np.ndarray = field(default=None)  # [n] int

    def __post_init__(self):
        self.ids = np.arange(len(self.energy)) if self.ids is None else np.asarray(self.ids, dtype=np.int64)
        if len(np.unique(self.ids)) != len(self.ids):
            raise ValueError("training set: configuration ids must be unique")

    @classmethod
    def build(cls, features: Features, energy, sigma, jacobians: list[ForceJacobian], f_lf: list[np.ndarray],
              ids=None):
        n, P = features.a.shape
        width = 3 * max((len(j.f0) for j in jacobians), default=0)
        f0, B, lf = np.zeros((n, width)), np.zeros((n, width, P)), np.zeros((n, width))
        for c, (jac, forces) in enumerate(zip(jacobians, f_lf)):
            m = 3 * len(jac.f0)
            f0[c, :m], B[c, :m], lf[c, :m] = jac.f0.ravel(), jac.B.reshape(m, P), np.asarray(forces).ravel()
        return cls(features, np.asarray(energy, float), np.asarray(sigma, float), f0, B, lf, ids)

    def __len__(self) -> int:
        return len(self.energy)


class NotConverged(RuntimeError):
    """A member's Newton iteration did not reach its minimiser."""


class Committee:
    """K members θ_k: each a draw of the prior and a bootstrap reweighting of the labels, both
    seeded by (seed, k) and, for the weights, the label's id."""

    def __init__(
        self,
        theta0: np.ndarray,
        *,
        size: int,
        bootstrap: bool,
        prior_sigma: float | str,
        force_threshold: float,
        force_weight: float,
        noise_floor: float,
        seed: int,
        threshold_per_atom: bool = False,
        max_steps: int = 200,
    ):
        """The settings' defaults live in the campaign schema alone: a run builds its committee with
        `from_settings`."""
        if size < 2:
            raise ValueError(f"committee: size must be at least 2 (its spread is the uncertainty), got {size}")
        self.theta0 = np.asarray(theta0, dtype=np.float64)
        self.size = size
        self.bootstrap = bootstrap
        if not (prior_sigma == PRIOR_AUTO or (isinstance(prior_sigma, (int, float)) and prior_sigma > 0)):
            raise ValueError(f"committee: prior_sigma must be a positive number (eV/atom) or {PRIOR_AUTO!r}, got {prior_sigma!r}")
        self.prior_sigma = prior_sigma
        # τ in use: the given number, or with "auto" the one the last fit chose from its labels
        self.tau_ = None if prior_sigma == PRIOR_AUTO else float(prior_sigma)
        # eV per configuration: the model error the evidence found (auto only; 0 with a given τ),
        # added in quadrature to every label's error bar and the noise floor
        self.model_error_ = 0.0
        self.force_threshold = force_threshold
        self.threshold_per_atom = threshold_per_atom
        self.force_weight = force_weight
        self.noise_floor = noise_floor
        self.seed = seed
        self.max_steps = max_steps

    @classmethod
    def from_settings(cls, theta0: np.ndarray, committee, finetune) -> "Committee":
        """The committee a campaign's `committee` and `finetune` sections describe (read by attribute:
        campaign.CommitteeSettings and FinetuneSettings). A threshold per atom, when given, replaces
        the one per configuration."""
        per_atom = finetune.force_threshold_per_atom is not None
        return cls(theta0, size=committee.size, bootstrap=committee.bootstrap, prior_sigma=committee.prior_sigma,
                   force_threshold=finetune.force_threshold_per_atom if per_atom else finetune.force_threshold,
                   threshold_per_atom=per_atom, force_weight=finetune.force_weight,
                   noise_floor=finetune.noise_floor, seed=committee.seed)

    # --- the members' random draws -----------------------------------------------------------
    def _rng(self, k: int, *tags: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, k, *tags])

    def weights(self, ids: np.ndarray) -> np.ndarray:
        """[K, n] bootstrap weights: a Poisson(1) count per (member, label id), the classic bootstrap's
        resampling counts in the limit of many labels, drawn from the label's id so that a label
        keeps its count in every later fit whatever the order of the rows."""
        if not self.bootstrap:
            return np.ones((self.size, len(ids)))
        return np.array([[self._rng(k, _WEIGHT, int(i)).poisson() for i in ids] for k in range(self.size)], float)

    def anchors(self, n_params: int, inner: bool = False) -> np.ndarray:
        """[K, P] standard-normal draws; the prior of member k is centred at s·anchor_k. `inner`: the
        draws for the MLP's inner parameters of `finetune.readout: full` (full_committee), a stream of
        their own, so θ's draws are the same with either readout."""
        tag = _INNER_ANCHOR if inner else _ANCHOR
        return np.array([self._rng(k, tag).standard_normal(n_params) for k in range(self.size)])

    # --- fitting -----------------------------------------------------------------------------
    def prior_variance(self, moment: np.ndarray) -> float:
        """s² = τ²/tr(G): averaged over the pool, a draw of the prior moves per-atom energies by τ RMS."""
        if self.tau_ is None:
            raise RuntimeError("committee: prior_sigma is auto and no fit has chosen it yet")
        return self.tau_**2 / np.trace(moment)

    @property
    def effective_floor(self) -> float:
        """σ_floor with the model error found by the evidence (auto) in quadrature."""
        return float(np.hypot(self.noise_floor, self.model_error_))

    def evidence_prior(self, data: TrainingSet, n_elements: int, trace: float) -> tuple[float, float]:
        """(τ eV/atom, m eV) that maximise the evidence of the labels, p(E_HF | τ, m), under the energy
        term's linear-Gaussian model: E_HF = a·θ + e + noise, noise ~ N(0, σ_c² + σ_floor² + m²),
        θ ~ N(θ_c, s² I), s² = τ²/`trace`, θ_c the base θ with E0 refit to the labels weighted by
        their error bars (the prior centre without a member's draw). m is the model error: what no θ
        of this readout fits, which a fit that took the labels' error bars at their word would chase
        with ever larger τ. The force penalty is left out of the evidence (it is no likelihood: it
        binds only outside its threshold).
        Empirical Bayes, as scikit-learn's BayesianRidge: the labels say how far the high-fidelity
        method moves relative energies, where a fixed τ has to be guessed before any label exists."""
        centre = self.prior_mean(data, n_elements, self.noise_floor)
        residual = data.energy - data.features.energies(centre)
        log_taus = np.log(np.logspace(np.log10(TAU_RANGE[0]), np.log10(TAU_RANGE[1]), 61))

        def profile(m: float) -> tuple[float, float]:
            """(−log evidence, τ) at model error m, maximised over τ."""
            var = data.sigma**2 + self.noise_floor**2 + m**2
            u, singular, _ = np.linalg.svd(data.features.a / np.sqrt(var)[:, None], full_matrices=False)
            r = residual / np.sqrt(var)
            lam, proj = singular**2, u.T @ r
            rest, log_var = float(r @ r - proj @ proj), float(np.sum(np.log(var)))

            def minus_log_evidence(log_tau: float) -> float:
                s2 = np.exp(2 * log_tau) / trace
                return 0.5 * (rest + np.sum(proj**2 / (1 + s2 * lam)) + np.sum(np.log1p(s2 * lam)) + log_var)

            return _grid_then_refine(minus_log_evidence, log_taus)

        log_ms = np.log(np.logspace(np.log10(MODEL_ERROR_RANGE[0]), np.log10(MODEL_ERROR_RANGE[1]), 31))
        value, log_m = _grid_then_refine(lambda x: profile(float(np.exp(x)))[0], log_ms)
        at_zero = profile(0.0)
        if at_zero[0] <= value:   # the labels' own error bars explain the scatter: no model error
            return float(np.exp(at_zero[1])), 0.0
        return float(np.exp(profile(float(np.exp(log_m)))[1])), float(np.exp(log_m))

    def prior_mean(self, data: TrainingSet, n_elements: int, floor: float | None = None) -> np.ndarray:
        """θ0 with E0 refit to every label at weight 1: the prior's centre without a member's draw
        (`floor` as in `_e0_refit`)."""
        centre = self.theta0.copy()
        centre[-n_elements:] += self._e0_refit(data, np.ones((1, len(data))), n_elements, floor)[0]
        return centre

    def prior_centres(self, data: TrainingSet, weights: np.ndarray, n_elements: int, s2: float) -> np.ndarray:
        """[K, P]: θ0 with each member's least-squares E0 shift, plus its draw of the prior."""
        centres = np.tile(self.theta0, (self.size, 1)) + np.sqrt(s2) * self.anchors(len(self.theta0))
        centres[:, -n_elements:] += self._e0_refit(data, weights, n_elements)
        return centres

    def _e0_refit(self, data: TrainingSet, weights: np.ndarray, n_elem: int, floor: float | None = None) -> np.ndarray:
        """Weighted least-squares shift of E0 per element, one per row of `weights`: [K, n_elem].
        Each label weighs 1/(σ² + floor²); `floor` defaults to the effective floor (model error included)."""
        counts = data.features.a[:, -n_elem:]
        residual = data.energy - data.features.energies(self.theta0)
        floor = self.effective_floor if floor is None else floor
        inv_var = 1.0 / (data.sigma**2 + floor**2)
        shifts = np.zeros((len(weights), n_elem))
        for k in range(len(weights)):
            w = np.sqrt(weights[k] * inv_var)
            shifts[k] = np.linalg.lstsq(counts * w[:, None], residual * w, rcond=None)[0]
        return shifts

    def fit(self, data: TrainingSet, n_elements: int, moment: np.ndarray | None = None,
            progress: bool = False) -> "Committee":
        """Every member to its exact minimiser: E0 refit, then Newton on J_k from the energy-only
        solution (which is already the minimiser when no force leaves the threshold).

        `moment`, the candidates' per-atom feature second moment (`feature_cache.feature_moment`),
        scales the prior; without it the labelled configurations' moment does.
        """
        if len(data) == 0:
            raise ValueError("committee: no labelled configurations to fit")
        moment = moment if moment is not None else feature_moment(data.features)
        if self.prior_sigma == PRIOR_AUTO:
            self.tau_, self.model_error_ = self.evidence_prior(data, n_elements, float(np.trace(moment)))
        s2 = self.prior_variance(moment)
        weights = self.weights(data.ids)
        centres = self.prior_centres(data, weights, n_elements, s2)
        problem = _Objective(data, self.effective_floor, self.force_threshold, self.force_weight, self.theta0,
                             self.threshold_per_atom)
        thetas, objective, steps = [], [], []
        for k in tqdm(range(self.size), desc=f"fitting {self.size} members", unit="member", disable=not progress):
            theta, value, n_steps = problem.minimise(weights[k], centres[k], s2, self.max_steps)
            thetas.append(theta)
            objective.append(value)
            steps.append(n_steps)
        self.thetas_ = np.array(thetas)
        self.objective_ = np.array(objective)
        self.newton_steps_ = np.array(steps)
        return self

    # --- the posterior of θ ---------------------------------------------------------------------
    def posterior_covariance(self, data: TrainingSet, moment: np.ndarray | None = None) -> np.ndarray:
        """Σ [P, P]: the Laplace (Gaussian) posterior of θ for the committee as it is, the inverse of
        ½ ∇²J at the committee mean with every label at weight 1 (a member's expected bootstrap weight).

        J is −2 log posterior (the energy term is Σ r²/σ², the prior ‖θ − θ^prior‖²/s²), hence the ½:
        its energy part is then AᵀWA, W = 1/(σ² + σ_floor²), its prior part I/s², and the force
        penalty contributes its Hessian at the mean (zero where no force leaves the threshold).
        `moment` scales the prior as in `fit`.
        """
        self._check_fitted()
        s2 = self.prior_variance(moment if moment is not None else feature_moment(data.features))
        problem = _Objective(data, self.effective_floor, self.force_threshold, self.force_weight, self.theta0,
                             self.threshold_per_atom)
        mean = self.thetas_.mean(0)
        _, H = problem.gradient_hessian(mean, np.ones(len(data)), mean, s2)
        # H ≥ 2I/s², so the Cholesky factorisation fails only on non-finite inputs
        sigma = cho_solve(cho_factor(0.5 * H), np.eye(len(mean)))
        return 0.5 * (sigma + sigma.T)   # symmetric to the last digit: the greedy updates keep it so

    def leave_one_out(self, data: TrainingSet, moment: np.ndarray | None = None,
                      groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(error, committee σ) that each label would have had if every member had been fitted
        without its configuration: the prospective test of the committee as it is now, on every
        label at once. `groups`, one key per label (default: each label its own): labels with equal
        keys leave together, as repeated labels of one configuration must, since a repeat left in
        would answer for the one left out (measured on the H3 DMC campaign, where most labels are
        repeats: one at a time put the scale at 0.5 where the prospective errors gave 2.2).

        Member k's objective is quadratic in θ but for the force penalty, so removing a group G of
        labels moves its minimiser by one Newton step on what remains, and the step's rank is |G|
        (Woodbury): with K = A_G (½∇²J_k)⁻¹ A_Gᵀ at θ_k and D the labels' weights in J_k (bootstrap
        count / (σ² + σ_floor²)), the member's errors at G become (I − K D)⁻¹ (label − E_k). This
        is exact for the energy term and the prior; the force penalty enters through its Hessian at
        θ_k, and the prior centre's E0 shift, refitted on the labels, is held fixed (a 1/n effect).
        Mean and σ are then the left-out members' mean and spread, so the σ scale is calibrated on
        the very estimator it scales."""
        self._check_fitted()
        s2 = self.prior_variance(moment if moment is not None else feature_moment(data.features))
        problem = _Objective(data, self.effective_floor, self.force_threshold, self.force_weight, self.theta0,
                             self.threshold_per_atom)
        a = data.features.a
        keys = np.arange(len(a)) if groups is None else np.asarray(groups)
        blocks = [np.flatnonzero(keys == key) for key in np.unique(keys)]
        members = self.member_energies(data.features)
        left_out = np.empty_like(members)
        for k, (theta, w) in enumerate(zip(self.thetas_, self.weights(data.ids))):
            _, H = problem.gradient_hessian(theta, w, theta, s2)
            inverse = cho_solve(cho_factor(0.5 * H), np.eye(len(theta)))
            d = w * problem.inv_var
            err = data.energy - members[k]
            for idx in blocks:
                k_g = a[idx] @ inverse @ a[idx].T
                left_out[k, idx] = data.energy[idx] - np.linalg.solve(np.eye(len(idx)) - k_g * d[idx], err[idx])
        return data.energy - left_out.mean(0), left_out.std(0, ddof=1)

    # --- prediction --------------------------------------------------------------------------
    def _check_fitted(self):
        if not hasattr(self, "thetas_"):
            raise RuntimeError("committee: predict called before fit (or load)")

    def member_energies(self, features: Features) -> np.ndarray:
        self._check_fitted()
        return features.energies(self.thetas_)

    def energy_rows(self, features: Features) -> np.ndarray:
        """∂E/∂θ [n, P]: the features' a, the energy being linear in θ (`FullCommittee.energy_rows`
        linearises its own)."""
        return features.a

    def predict(self, features: Features) -> tuple[np.ndarray, np.ndarray]:
        """Committee mean and spread (sample standard deviation over members), eV."""
        energies = self.member_energies(features)
        return energies.mean(0), energies.std(0, ddof=1)

    def member_forces(self, jac: ForceJacobian) -> np.ndarray:
        """[K, N, 3] forces of every member for one configuration."""
        self._check_fitted()
        return jac.f0[None] + np.einsum("nxp,kp->knx", jac.B, self.thetas_ - self.theta0)

    # --- persistence -------------------------------------------------------------------------
    def save(self, path) -> None:
        self._check_fitted()
        np.savez(path, thetas=self.thetas_, theta0=self.theta0, objective=self.objective_,
                 newton_steps=self.newton_steps_, tau=np.nan if self.tau_ is None else self.tau_,
                 model_error=self.model_error_)

    def use_members(self, thetas: np.ndarray) -> "Committee":
        """Take K members θ_k [K, P] made elsewhere (a benchmark, a what-if), as `load` takes them from
        a file; they were not fitted here, so their objective and Newton steps are unknown (NaN, -1)."""
        thetas = np.asarray(thetas, dtype=np.float64)
        if thetas.ndim != 2 or thetas.shape != (self.size, len(self.theta0)):
            raise ValueError(f"committee: expected members of shape {(self.size, len(self.theta0))}, got {thetas.shape}")
        self.thetas_ = thetas
        self.objective_ = np.full(self.size, np.nan)
        self.newton_steps_ = np.full(self.size, -1)
        return self

    def load(self, path) -> "Committee":
        with np.load(path) as f:
            if "phis" in f:
                raise ValueError(f"{path}: a committee of finetune.readout: full or kind: delta; the campaign says linear")
            if not np.allclose(f["theta0"], self.theta0):
                raise ValueError(f"{path}: committee checkpoint belongs to a different base model")
            if "objective" not in f:
                raise ValueError(f"{path}: a committee checkpoint of an earlier aloop (fitted by Adam with early "
                                 "stopping); delete the committee/ folder of this run and run it again to refit")
            self.thetas_ = f["thetas"]
            self.objective_ = f["objective"]
            self.newton_steps_ = f["newton_steps"]
            if "tau" in f.files and np.isfinite(f["tau"]):
                self.tau_, self.model_error_ = float(f["tau"]), float(f["model_error"])
            elif self.tau_ is None:   # a checkpoint from before prior_sigma: auto existed
                raise ValueError(f"{path}: a committee checkpoint that does not say its prior_sigma, and the campaign "
                                 "says auto; delete the committee/ folder of this run and run it again to refit")
        return self


def _grid_then_refine(f, grid: np.ndarray) -> tuple[float, float]:
    """(min f, argmin) of a function of one variable: the best point of `grid`, then a bounded
    search between its neighbours."""
    i = int(np.argmin([f(x) for x in grid]))
    found = minimize_scalar(f, bounds=(grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]), method="bounded",
                            options={"xatol": 1e-6})
    return float(found.fun), float(found.x)


class _Objective:
    """J(θ) of one member for given weights and prior, with its exact gradient and Hessian."""

    def __init__(self, data: TrainingSet, noise_floor: float, threshold: float, force_weight: float,
                 theta0: np.ndarray, per_atom: bool = False):
        self.a = data.features.a
        self.r0 = data.features.e - data.energy  # E(c; θ) − E_HF(c) = a·θ + r0
        self.inv_var = 1.0 / (data.sigma**2 + noise_floor**2)
        # per atom, t = threshold × √N: ‖ΔF‖ over 3N components grows as √N for the same change per atom
        self.t2 = threshold**2 * data.features.n_atoms if per_atom else threshold**2
        self.lam = force_weight
        self.B = data.B
        self.dF0 = data.f0 - data.f_lf - np.einsum("cmp,p->cm", data.B, theta0)  # ΔF = dF0 + B θ
        self.BtB = np.einsum("cmp,cmq->cpq", data.B, data.B) if force_weight > 0 else None

    def _terms(self, theta, w):
        r = self.a @ theta + self.r0
        energy = w * self.inv_var * r**2
        if self.lam == 0:
            return r, None, None, float(energy.sum())
        dF = self.dF0 + self.B @ theta
        excess = np.clip((dF**2).sum(1) - self.t2, 0.0, None)
        return r, dF, excess, float(energy.sum() + self.lam * (w * excess**2).sum())

    def value(self, theta, w, centre, s2) -> float:
        return self._terms(theta, w)[3] + float(((theta - centre) ** 2).sum()) / s2

    def gradient_hessian(self, theta, w, centre, s2):
        r, dF, excess, _ = self._terms(theta, w)
        wr = w * self.inv_var
        g = 2 * self.a.T @ (wr * r) + 2 * (theta - centre) / s2
        H = 2 * (self.a * wr[:, None]).T @ self.a + 2 * np.eye(len(theta)) / s2
        if dF is not None:
            active = excess > 0
            if active.any():
                # ∇q = 2Bᵀ ΔF, ∇²q = 2BᵀB for q = ‖ΔF‖²; penalty (q − t²)² on the active side
                wa, ua = w[active], excess[active]
                grad_q = 2 * np.einsum("cmp,cm->cp", self.B[active], dF[active])
                g += self.lam * (2 * wa * ua) @ grad_q
                H += self.lam * (np.einsum("c,cpq->pq", 4 * wa * ua, self.BtB[active])
                                 + 2 * (grad_q * wa[:, None]).T @ grad_q)
        return g, H

    def minimise(self, w, centre, s2, max_steps: int):
        # The energy-only minimiser, a linear solve, is the start (and the answer when no force
        # leaves the threshold there).
        wr = w * self.inv_var
        H0 = (self.a * wr[:, None]).T @ self.a + np.eye(len(centre)) / s2
        theta = np.linalg.solve(H0, centre / s2 - self.a.T @ (wr * self.r0))
        value = self.value(theta, w, centre, s2)
        previous = np.inf
        for step in range(max_steps + 1):
            g, H = self.gradient_hessian(theta, w, centre, s2)
            try:
                d = -cho_solve(cho_factor(H), g)
            except LinAlgError:  # J's Hessian is ≥ 2I/s²: only non-finite inputs (a corrupt cache) get here
                raise NotConverged("committee fit: the Hessian is not positive definite; the training set holds "
                                   "non-finite features, forces or labels") from None
            decrement = -float(g @ d)  # ≈ 2 × (J − min J) near the minimiser
            scale = max(abs(value), 1.0)
            # Inside the quadratic region the decrement squares each step, so one below 1e-8·J is
            # followed by one below 1e-12·J. When it is not, the rest is round-off: energies of
            # thousands of eV against error bars of meV leave J a few 1e-12 of noise (measured:
            # H2O labels, decrements stuck at 1e-10 for 200 steps).
            if decrement <= 1e-12 * scale or (decrement <= 1e-8 * scale and previous <= 1e-8 * scale):
                # the full step costs nothing and removes the last digits
                return theta + d, self.value(theta + d, w, centre, s2), step
            previous = decrement
            # backtracking (Armijo) line search: J is convex, so a step of 1 is accepted near the end
            alpha = 1.0
            while True:
                trial = theta + alpha * d
                trial_value = self.value(trial, w, centre, s2)
                if trial_value <= value - 0.25 * alpha * decrement or alpha < 1e-10:
                    break
                alpha *= 0.5
            theta, value = trial, trial_value
        raise NotConverged(f"committee fit: Newton did not converge in {max_steps} steps "
                           f"(decrement {decrement:.2e}, objective {value:.6g})")
