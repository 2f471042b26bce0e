"""A committee of K readout fine-tunes on one frozen backbone.

Every member is a parameter vector θ_k (see backbone.py), so the committee is a [K, P] array and a
prediction for any number of configurations is one matrix product with their cached features.

Loss of member k, per labelled configuration c with bootstrap weight w_kc:

    w_kc (E_k(c) − E_HF(c))² / (σ_c² + σ_floor²)  +  λ w_kc Θ(‖ΔF_c‖² − t²) (‖ΔF_c‖² − t²)²

with ΔF_c = F_k(c) − F_LF(c) over all atoms of c. Before gradient steps each member refits the
per-element energies E0 by weighted least squares (the large, constant offset between a DFT and a
correlated method); then Adam trains all of θ with early stopping on a held-out split.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .arrays import Features, ForceJacobian, feature_moment


def force_penalty(dF2: torch.Tensor, threshold: float) -> torch.Tensor:
    """Θ(‖ΔF‖² − t²)(‖ΔF‖² − t²)²: zero inside the threshold, quartic in ‖ΔF‖ outside."""
    excess = torch.clamp(dF2 - threshold**2, min=0.0)
    return excess**2


@dataclass
class TrainingSet:
    """Labelled configurations in the form the loss needs; force arrays padded to the largest N."""

    features: Features
    energy: np.ndarray  # [n] eV, high-fidelity labels
    sigma: np.ndarray  # [n] eV, label error bars
    f0: np.ndarray  # [n, 3Nmax] base-model forces (zeros in padding)
    B: np.ndarray  # [n, 3Nmax, P]
    f_lf: np.ndarray  # [n, 3Nmax] low-fidelity forces

    @classmethod
    def build(cls, features: Features, energy, sigma, jacobians: list[ForceJacobian], f_lf: list[np.ndarray]):
        n, P = features.a.shape
        width = 3 * max((len(j.f0) for j in jacobians), default=0)
        f0, B, lf = np.zeros((n, width)), np.zeros((n, width, P)), np.zeros((n, width))
        for c, (jac, forces) in enumerate(zip(jacobians, f_lf)):
            m = 3 * len(jac.f0)
            f0[c, :m], B[c, :m], lf[c, :m] = jac.f0.ravel(), jac.B.reshape(m, P), np.asarray(forces).ravel()
        return cls(features, np.asarray(energy, float), np.asarray(sigma, float), f0, B, lf)

    def __len__(self) -> int:
        return len(self.energy)


class Committee:
    """K members θ_k, fitted by bootstrap resampling of the labels, each with its own seed."""

    def __init__(
        self,
        theta0: np.ndarray,
        size: int = 5,
        bootstrap: bool = True,
        prior_sigma: float = 0.05,
        epochs: int = 300,
        lr: float = 0.002,
        batch_size: int = 32,
        force_threshold: float = 0.5,
        force_weight: float = 1.0,
        noise_floor: float = 0.005,
        val_fraction: float = 0.2,
        patience: int = 100,
        device: str | torch.device = "cpu",
    ):
        self.theta0 = np.asarray(theta0, dtype=np.float64)
        self.size = size
        self.bootstrap = bootstrap
        self.prior_sigma = prior_sigma
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.force_threshold = force_threshold
        self.force_weight = force_weight
        self.noise_floor = noise_floor
        self.val_fraction = val_fraction
        self.patience = patience
        self.device = torch.device(device)

    # --- fitting -----------------------------------------------------------------------------
    def _splits(self, n: int, rng: np.random.Generator):
        """Per member: bootstrap counts over the training part, and a validation mask."""
        weights, val = np.zeros((self.size, n)), np.zeros((self.size, n), dtype=bool)
        n_val = int(round(self.val_fraction * n)) if n >= 5 else 0
        for k in range(self.size):
            member = np.random.default_rng(rng.integers(2**63))
            order = member.permutation(n)
            val[k, order[:n_val]] = True
            train = order[n_val:]
            drawn = member.choice(train, size=len(train), replace=True) if self.bootstrap else train
            np.add.at(weights[k], drawn, 1.0)
        return weights, val

    def _e0_refit(self, data: TrainingSet, weights: np.ndarray, n_elem: int) -> np.ndarray:
        """Weighted least-squares shift of E0 per element, member by member: [K, n_elem]."""
        counts = data.features.a[:, -n_elem:]
        residual = data.energy - data.features.energies(self.theta0)
        inv_var = 1.0 / (data.sigma**2 + self.noise_floor**2)
        shifts = np.zeros((self.size, n_elem))
        for k in range(self.size):
            w = np.sqrt(weights[k] * inv_var)
            shifts[k] = np.linalg.lstsq(counts * w[:, None], residual * w, rcond=None)[0]
        return shifts

    def _coordinates(self, G: np.ndarray) -> tuple[np.ndarray, float]:
        """M for θ = θ_start + M z, and the prior variance s² of each component of θ.

        M = V (Λ + ε)^(-1/2) from the pool's per-atom feature second moment G: readout features are
        strongly correlated, and in raw coordinates one learning rate is too large along some
        directions and far too small along others. The prior is isotropic in θ, with s² = τ²/tr(G)
        so that, averaged over the pool, it moves per-atom energies by τ RMS.
        """
        vals, vecs = np.linalg.eigh(G)
        M = vecs / np.sqrt(np.maximum(vals, 1e-9 * vals.max()))
        return M, self.prior_sigma**2 / np.trace(G)

    def _map_start(self, data: TrainingSet, theta: np.ndarray, weights: np.ndarray, M: np.ndarray, s2: float,
                   anchors: np.ndarray) -> np.ndarray:
        """Exact minimiser of the energy term + prior (no force penalty) per member, in z."""
        inv_var = 1.0 / (data.sigma**2 + self.noise_floor**2)
        b = data.features.a @ M
        MtM = M.T @ M / s2
        z = np.zeros((self.size, M.shape[1]))
        for k in range(self.size):
            w = weights[k] * inv_var
            r0 = data.features.energies(theta[k]) - data.energy
            z[k] = np.linalg.solve((b * w[:, None]).T @ b + MtM, M.T @ anchors[k] / s2 - (b * w[:, None]).T @ r0)
        return z

    def fit(self, data: TrainingSet, n_elements: int, rng: np.random.Generator, moment: np.ndarray | None = None,
            progress: bool = False) -> "Committee":
        """Fit every member: E0 refit, exact energy-only MAP, then Adam on the full loss.

        `moment`, the candidates' per-atom feature second moment (`feature_cache.feature_moment`), sets
        the prior's coordinates; without it the labelled configurations' moment does. All members train together: their losses are independent and Adam
        acts per parameter.
        """
        n = len(data)
        if n == 0:
            raise ValueError("committee: no labelled configurations to fit")
        weights, val = self._splits(n, rng)
        theta = np.tile(self.theta0, (self.size, 1))
        theta[:, -n_elements:] += self._e0_refit(data, weights, n_elements)
        M_np, s2 = self._coordinates(moment if moment is not None else feature_moment(data.features))
        # Each member's prior is centred on its own random anchor: with the bootstrap this makes
        # the committee a sample of the posterior (exactly so for the energy-only linear model),
        # so σ stays large where the labels do not constrain the readouts.
        anchors_np = rng.normal(size=theta.shape) * np.sqrt(s2)
        z_start = self._map_start(data, theta, weights, M_np, s2, anchors_np)

        t = lambda x: torch.as_tensor(x, dtype=torch.float64, device=self.device)  # noqa: E731
        a, e, y = t(data.features.a), t(data.features.e), t(data.energy)
        inv_var = 1.0 / (t(data.sigma) ** 2 + self.noise_floor**2)
        f0, B, f_lf = t(data.f0), t(data.B), t(data.f_lf)
        W, V = t(weights), t(val.astype(float))
        theta0, start, M, anchors = t(self.theta0), t(theta), t(M_np), t(anchors_np)
        z = t(z_start).requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=self.lr)

        def params():
            return start + z @ M.T

        def prior_term():
            return (((z @ M.T) - anchors) ** 2).sum(1) / s2

        def per_config(idx):
            theta_k = params()
            energy_term = (theta_k @ a[idx].T + e[idx] - y[idx]) ** 2 * inv_var[idx]  # [K, b]
            forces = f0[idx] + torch.einsum("bmp,kp->kbm", B[idx], theta_k - theta0)
            dF2 = ((forces - f_lf[idx]) ** 2).sum(-1)
            return energy_term, self.force_weight * force_penalty(dF2, self.force_threshold)

        def loss(idx):
            energy_term, penalty = per_config(idx)
            total = ((energy_term + penalty) * W[:, idx]).sum(1) + prior_term() * len(idx) / n
            return total / W.sum(1).clamp(min=1.0)

        def scores():
            """Per member: the early-stopping score (validation loss, or the training loss where a
            member has no validation split) and the energy RMSEs for the history."""
            with torch.no_grad():
                energy_term, penalty = per_config(np.arange(n))
                val_loss = ((energy_term + penalty) * V).sum(1) / V.sum(1).clamp(min=1.0)
                score = torch.where(has_val, val_loss, loss(np.arange(n)))
                sq = energy_term / inv_var
                rmse = [torch.sqrt((sq * m).sum(1) / m.sum(1).clamp(min=1.0)).tolist() for m in (W, V)]
                return score, float(penalty.sum()), rmse

        has_val = V.sum(1) > 0
        best_score, active, (train_rmse, val_rmse) = scores()
        best = params().detach().clone()
        since_best = torch.zeros(self.size, dtype=torch.long, device=self.device)
        history = [{"epoch": 0, "train_rmse": train_rmse, "val_rmse": val_rmse}]
        # The start is exactly optimal unless the force penalty is active somewhere.
        epochs = self.epochs if active > 0 else 0
        order_rng = np.random.default_rng(rng.integers(2**63))
        bar = tqdm(range(1, epochs + 1), desc=f"fine-tuning {self.size} members", unit="epoch", disable=not progress)
        for epoch in bar:
            for idx in np.array_split(order_rng.permutation(n), max(1, int(np.ceil(n / self.batch_size)))):
                optimizer.zero_grad()
                loss(idx).sum().backward()
                optimizer.step()
            score, _, (train_rmse, val_rmse) = scores()
            improved = score < best_score
            best[improved] = params().detach()[improved]
            best_score = torch.where(improved, score, best_score)
            since_best = torch.where(improved, torch.zeros_like(since_best), since_best + 1)
            history.append({"epoch": epoch, "train_rmse": train_rmse, "val_rmse": val_rmse})
            if bool((since_best > self.patience).all()):
                break
        bar.close()
        self.thetas_ = best.cpu().numpy()
        self.history_ = history
        self.val_score_ = best_score.cpu().numpy()
        return self

    # --- prediction --------------------------------------------------------------------------
    def _check_fitted(self):
        if not hasattr(self, "thetas_"):
            raise RuntimeError("committee: predict called before fit (or load)")

    def member_energies(self, features: Features) -> np.ndarray:
        self._check_fitted()
        return features.energies(self.thetas_)

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
        np.savez(path, thetas=self.thetas_, theta0=self.theta0, val_score=self.val_score_)

    def use_members(self, thetas: np.ndarray) -> "Committee":
        """Take K members θ_k [K, P] made elsewhere (a benchmark, a what-if), as `load` takes them from
        a file; they have no validation score (NaN)."""
        thetas = np.asarray(thetas, dtype=np.float64)
        if thetas.ndim != 2 or thetas.shape != (self.size, len(self.theta0)):
            raise ValueError(f"committee: expected members of shape {(self.size, len(self.theta0))}, got {thetas.shape}")
        self.thetas_ = thetas
        self.val_score_ = np.full(self.size, np.nan)
        return self

    def load(self, path) -> "Committee":
        with np.load(path) as f:
            if not np.allclose(f["theta0"], self.theta0):
                raise ValueError(f"{path}: committee checkpoint belongs to a different base model")
            self.thetas_ = f["thetas"]
            self.val_score_ = f["val_score"]
        return self
