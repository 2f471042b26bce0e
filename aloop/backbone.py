"""A MACE model seen as a frozen backbone plus a vector of trainable readout parameters θ.

MACE's total energy is Σ_i E0(Z_i) plus, per node, the readouts of each layer's invariant features.
The last linear map of every readout (the whole readout for layers 0..L-2, W2 of the last layer's
MLP) and E0 enter the energy linearly. With everything else frozen,

    E_c(θ) = a_c · θ + e_c        F_c(θ) = F_c(θ0) + B_c (θ − θ0),   B_c = −∂a_c/∂x

where a_c sums the (scaled) inputs of those linear maps over the atoms of configuration c. One
backbone pass per configuration gives a_c and e_c; one batch of backward passes gives B_c. After
that, every committee member, every training step and every prediction is linear algebra.

The decomposition is derived from the model's own modules (forward hooks and the Jacobian of each
linear map with respect to its weights), not re-implemented, so any MACE / ScaleShiftMACE file
works, whatever its sizes, heads or e3nn normalisation.
"""
from __future__ import annotations

import contextlib
import copy
import io
import warnings
from pathlib import Path

# mace before e3nn: its pinned e3nn needs this order on recent torch. On import, mace prints a notice
# about an optional GPU accelerator (cuequivariance) and e3nn warns about torch.load defaults, on
# every command; nothing a user can act on.
with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import mace.modules  # noqa: F401

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mace import data as mace_data  # noqa: E402
from mace.tools import torch_geometric  # noqa: E402
from mace.tools.utils import AtomicNumberTable  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from .arrays import Features, ForceJacobian  # noqa: E402
from .charge import state_of  # noqa: E402


def _no_fusion_on_cuda() -> None:
    """Switch off TorchScript's CUDA fusers for this process, before the model first runs there.
    aloop's per-atom Jacobians were backward passes batched over cotangents (autograd's
    `is_grads_batched`), and once the fuser had compiled e3nn's scripted spherical harmonics into a
    fused kernel their backward could not take batched tensors ("Cannot access data pointer of
    Tensor that doesn't have storage", on an H200 after the pool's features). Switching optimisation
    off around the passes alone (torch.jit.optimized_execution) did not stop it; these process-wide
    flags did. The Jacobians are now double-backward passes (full_readout.position_jacobian), which
    have not yet run on CUDA; the switch stays, as the configuration measured to work there. torch
    does not fuse on the CPU by default, so CPU runs are as before."""
    torch._C._jit_set_texpr_fuser_enabled(False)
    torch._C._jit_override_can_fuse_on_gpu(False)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device: '{device}' requested but CUDA is not available; use 'auto' or 'cpu'")
        _no_fusion_on_cuda()
    return torch.device(device)


def load_model(path: str | Path) -> torch.nn.Module:
    path = Path(path)
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a bad file
        raise ValueError(f"{path}: not a loadable MACE model file ({type(err).__name__}: {err})") from err
    if isinstance(model, torch.jit.ScriptModule):
        raise ValueError(f"{path}: a TorchScript (compiled) model, whose readouts cannot be fine-tuned; give the "
                         "plain model file (mace_run_train writes NAME.model beside NAME_compiled.model)")
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "readouts"):
        raise ValueError(f"{path}: expected a MACE model saved with torch.save(model), got {type(model).__name__}")
    return model


GRAPH_INPUTS = ("total_charge", "total_spin")


def graph_inputs(atoms) -> dict[str, float]:
    """A configuration's total charge and spin as MACE's charge and spin embeddings read them.
    aloop keeps a candidate's net charge in atoms.info["charge"] and 2S in atoms.info["spin"] (the
    labelers' convention, PySCF's); MACE's total_spin is the multiplicity 2S + 1. Without a
    spin, the lowest one the electron count allows."""
    charge, spin = state_of(atoms)
    if spin is None:
        spin = (int(atoms.numbers.sum()) - charge) % 2
    return {"total_charge": float(charge), "total_spin": float(spin) + 1.0}


class Backbone:
    """Frozen MACE backbone; θ is the vector of trainable readout weights and E0 of present elements."""

    def __init__(self, model: torch.nn.Module, device: str = "auto", head: str | None = None):
        self.device = resolve_device(device)
        self.source_dtype = next(model.parameters()).dtype
        self.template = copy.deepcopy(model).to("cpu")
        self.model = copy.deepcopy(model).to(dtype=torch.float64, device=self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        heads = list(getattr(self.model, "heads", ["Default"]))
        if head is not None and head not in heads:
            raise ValueError(f"model.head: '{head}' is not a head of this model; heads: {', '.join(heads)}")
        self.heads = heads
        self.head = head or heads[0]
        self.head_index = heads.index(self.head)
        self.embeddings = dict(getattr(self.model, "embedding_specs", None) or {})
        unknown = sorted(set(self.embeddings) - set(GRAPH_INPUTS))
        if unknown:
            raise ValueError(f"the model embeds {', '.join(unknown)}; aloop gives a model the total charge and "
                             "spin of each configuration only (total_charge, total_spin)")
        self.z_table = AtomicNumberTable([int(z) for z in self.model.atomic_numbers])
        self.r_max = float(self.model.r_max)
        self._targets = [self._output_linear(r) for r in self.model.readouts]
        self._jacobians = [self._weight_jacobian(m) for m in self._targets]
        sizes = [j.shape[-1] for j in self._jacobians] + [len(self.z_table)]
        self.slices = [slice(s - n, s) for s, n in zip(np.cumsum(sizes), sizes)]
        self.theta0 = np.concatenate(
            [m.weight.detach().cpu().numpy().ravel() for m in self._targets] + [self._e0().numpy()]
        )
        self.n_params = len(self.theta0)
        self._theta_model: tuple[bytes | None, torch.nn.Module | None] = (None, None)

    @classmethod
    def from_file(cls, path: str | Path, device: str = "auto", head: str | None = None) -> "Backbone":
        return cls(load_model(path), device=device, head=head)

    # --- the decomposition -------------------------------------------------------------------
    @staticmethod
    def _output_linear(readout: torch.nn.Module) -> torch.nn.Module:
        target = getattr(readout, "linear_2", None) or getattr(readout, "linear", None)
        if target is None or not hasattr(target, "weight"):
            raise ValueError(f"unsupported readout {type(readout).__name__}: no final linear map with weights")
        if any(name != "weight" for name, _ in target.named_parameters()):
            raise ValueError(f"unsupported readout {type(readout).__name__}: its final linear map has a bias")
        return target

    def _weight_jacobian(self, linear: torch.nn.Module) -> torch.Tensor:
        """J[d, o, w] = ∂ linear(e_d)[o] / ∂ weight[w]: the map is bilinear in (input, weight)."""
        dim_in = linear.irreps_in.dim
        eye = torch.eye(dim_in, dtype=torch.float64, device=self.device)
        w0 = linear.weight.detach()

        def out(w):
            return torch.func.functional_call(linear, {"weight": w}, (eye,))

        return torch.func.jacrev(out)(w0.clone()).reshape(dim_in, -1, w0.numel())

    def _e0(self) -> torch.Tensor:
        e0 = torch.atleast_2d(self.model.atomic_energies_fn.atomic_energies.detach().cpu())
        if e0.shape[0] != len(self.z_table):  # stored as [heads, elements]
            e0 = e0.T
        return e0[:, self.head_index] if e0.shape[1] > 1 else e0[:, 0]

    def _node_scale(self) -> float:
        scale_shift = getattr(self.model, "scale_shift", None)
        if scale_shift is None:
            return 1.0
        return float(torch.atleast_1d(scale_shift.scale)[self.head_index])

    def refuses(self, atoms) -> str | None:
        """Why the model cannot take this configuration's total charge or spin, or None. A model
        without a charge embedding is not refused a charged configuration (it may have been trained
        on that charge); the campaign check refuses mixed charges for it."""
        inputs = graph_inputs(atoms)
        for name, spec in self.embeddings.items():
            if spec.get("type") != "categorical":
                continue
            index = inputs[name] + spec.get("offset", 0)
            if not 0 <= index < spec["num_classes"]:
                lo = -spec.get("offset", 0)
                what = "charge" if name == "total_charge" else "spin multiplicity 2S+1"
                return (f"{what} {inputs[name]:g} is outside the model's {name} embedding, which takes "
                        f"{lo:g} to {lo + spec['num_classes'] - 1:g}")
        return None

    def batches(self, atoms_list, batch_size: int):
        configs = []
        for atoms in atoms_list:
            config = mace_data.config_from_atoms(atoms, head_name=self.head)
            config.head = self.head
            if self.embeddings:
                config.properties.update(graph_inputs(atoms))
            configs.append(config)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            data = [
                mace_data.AtomicData.from_config(c, z_table=self.z_table, cutoff=self.r_max, heads=self.heads)
                for c in configs
            ]
        finally:
            torch.set_default_dtype(previous)
        loader = torch_geometric.dataloader.DataLoader(data, batch_size=batch_size, shuffle=False, drop_last=False)
        for batch in loader:
            yield batch.to(self.device).to_dict()

    def forward(self, batch: dict, compute_force: bool, capture: tuple = ()):
        """(model output, a [graphs, P], inputs of the `capture` modules): one ordinary forward pass,
        its inputs of the trained linear maps summed per graph into a, and the per-node inputs of
        any other modules asked for (`full_readout` asks for the MLP readouts')."""
        captured: list[torch.Tensor] = []
        extra: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda mod, inp, out: captured.append(inp[0])) for m in self._targets]
        hooks += [m.register_forward_hook(lambda mod, inp, out: extra.append(inp[0])) for m in capture]
        try:
            out = self.model(batch, training=compute_force, compute_force=compute_force)
        finally:
            for h in hooks:
                h.remove()
        if len(captured) != len(self._targets):
            raise RuntimeError("backbone: readout hooks did not fire once per readout")
        n_graphs = int(batch["ptr"].numel() - 1)
        index = batch["batch"]
        scale = self._node_scale()
        parts = []
        for x, jac in zip(captured, self._jacobians):
            summed = torch.zeros(n_graphs, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, index, x)
            parts.append(scale * summed @ jac[:, self.head_index, :])
        counts = torch.zeros(n_graphs, len(self.z_table), dtype=torch.float64, device=index.device)
        counts.index_add_(0, index, batch["node_attrs"].to(torch.float64))
        parts.append(counts)
        return out, torch.cat(parts, dim=1), extra

    # --- public ------------------------------------------------------------------------------
    def features(self, atoms_list, batch_size: int = 32, progress: bool = False) -> Features:
        theta0 = torch.as_tensor(self.theta0, device=self.device)
        a_all, e_all, n_all = [], [], []
        bar = tqdm(total=len(atoms_list), desc="backbone features", unit="cfg", disable=not progress)
        for batch in self.batches(atoms_list, batch_size):
            with torch.no_grad():
                out, a, _ = self.forward(batch, compute_force=False)
            energy = out["energy"].reshape(-1).to(torch.float64)
            a_all.append(a.cpu().numpy())
            e_all.append((energy - a @ theta0).cpu().numpy())
            n_all.append(torch.diff(batch["ptr"]).cpu().numpy())
            bar.update(len(n_all[-1]))
        bar.close()
        if not a_all:
            return Features(np.zeros((0, self.n_params)), np.zeros(0), np.zeros(0, dtype=int))
        return Features(np.concatenate(a_all), np.concatenate(e_all), np.concatenate(n_all))

    def force_jacobians(self, atoms_list, batch_size: int = 16, progress: bool = False) -> list[ForceJacobian]:
        """B_c for every configuration: one forward and P backward passes per batch, shared by all members."""
        result: list[ForceJacobian] = []
        bar = tqdm(total=len(atoms_list), desc="force jacobians", unit="cfg", disable=not progress)
        for batch in self.batches(atoms_list, batch_size):
            out, a, _ = self.forward(batch, compute_force=True)
            positions = batch["positions"]
            columns = []
            for p in range(self.n_params):
                if p >= self.slices[-1].start:  # E0 does not depend on positions
                    columns.append(torch.zeros_like(positions))
                    continue
                (grad,) = torch.autograd.grad(a[:, p].sum(), positions, retain_graph=True, allow_unused=True)
                columns.append(-grad if grad is not None else torch.zeros_like(positions))
            B = torch.stack(columns, dim=-1).detach().cpu().numpy()
            f0 = out["forces"].detach().cpu().numpy()
            ptr = batch["ptr"].cpu().numpy()
            for lo, hi in zip(ptr[:-1], ptr[1:]):
                result.append(ForceJacobian(f0=f0[lo:hi].astype(np.float64), B=B[lo:hi]))
            bar.update(len(ptr) - 1)
        bar.close()
        return result

    def energy_forces(self, atoms_list, batch_size: int = 64,
                      theta: np.ndarray | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """Energies [M] and forces of many configurations, in as few model calls as possible: of the
        base model, or of the model whose readouts carry `theta`."""
        model = self.model if theta is None else self._float64_model(theta)
        energies, forces = [], []
        for batch in self.batches(atoms_list, batch_size):
            out = model(batch, training=False, compute_force=True)
            energies.append(out["energy"].detach().reshape(-1).cpu().numpy())
            f = out["forces"].detach().cpu().numpy()
            ptr = batch["ptr"].cpu().numpy()
            forces.extend(f[lo:hi].astype(np.float64) for lo, hi in zip(ptr[:-1], ptr[1:]))
        return np.concatenate(energies), forces

    def _write_theta(self, model: torch.nn.Module, theta: np.ndarray) -> torch.nn.Module:
        """`model` (a copy of the source model) with θ in its readouts and E0, in place."""
        theta = np.asarray(theta, dtype=np.float64)
        if theta.shape != (self.n_params,):
            raise ValueError(f"θ has shape {theta.shape}, expected ({self.n_params},)")
        with torch.no_grad():
            for readout, sl in zip(model.readouts, self.slices[:-1]):
                target = self._output_linear(readout)
                target.weight.copy_(torch.as_tensor(theta[sl]).reshape(target.weight.shape))
            buf = model.atomic_energies_fn.atomic_energies
            e0 = torch.as_tensor(theta[self.slices[-1]], dtype=buf.dtype)
            if buf.dim() == 1:
                buf.copy_(e0)
            elif buf.shape[0] == len(self.z_table):
                buf[:, self.head_index] = e0
            else:
                buf[self.head_index, :] = e0
        return model

    def _float64_model(self, theta: np.ndarray) -> torch.nn.Module:
        """The backbone's float64 model with θ in its readouts; the last one is kept, since a path
        relaxation asks for the same θ a few hundred times."""
        key = np.asarray(theta, dtype=np.float64).tobytes()
        if self._theta_model[0] != key:
            self._theta_model = (key, self._write_theta(copy.deepcopy(self.model), theta))
        return self._theta_model[1]

    def model_with(self, theta: np.ndarray) -> torch.nn.Module:
        """An ordinary MACE model (the source file's class and dtype) whose readouts carry θ."""
        return self._write_theta(copy.deepcopy(self.template), theta).to(self.source_dtype)

    def export(self, theta: np.ndarray, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.model_with(theta), path)
        return path
