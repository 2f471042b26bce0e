"""Fixed-node diffusion Monte Carlo labels from pyqmc, computed here, for small molecules.

Each configuration goes: PySCF Hartree-Fock (the pyscf labeler's set-up: RHF for closed shells,
UHF followed through internal instabilities for open shells) → Slater-Jastrow trial function
(pyqmc's two-body Jastrow with electron-nucleus cusps, since Gaussian orbitals have none) →
Jastrow optimisation (stochastic reconfiguration with correlated-sampling line searches) →
fixed-node DMC. Only the Jastrow is optimised, so the nodes are those of the Hartree-Fock
determinant. The label is the weighted mean of the DMC block energies after equilibration, with
the reblocked standard error (reblock.py), which accounts for the serial correlation of the walk.

The Jastrow sets DMC's efficiency and timestep error, not its fixed-node energy. Starting the
optimisation from the Jastrow of the nearest configuration labelled before (same atoms, charge and
spin) therefore cannot bias the label, and needs fewer steps: `workdir/pyqmc/` keeps, per
configuration, its geometry, optimised Jastrow and DMC block trace.

pyqmc draws from numpy's global generator; each configuration seeds it from `seed` and its own
geometry (the same random numbers wherever it stands in the queue) and the caller's generator
state is put back afterwards.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pyqmc.api as pq
from pyqmc.configurations.coord import OpenConfigs
import pyscf
from ase import Atoms
from ase.units import Hartree
from threadpoolctl import threadpool_limits

from ..charge import state_of
from ..files import atomic_open
from .base import Label, LabelError, LocalLabeler
from .pyscf import UNITS_NOTE, _check_charge_spin, build_molecule, check_basis, run_scf
from .reblock import reblock

BLOCK_TIME = 0.1        # Hartree⁻¹ of imaginary time between branchings (one DMC block)
_MINIMUM = {"walkers": 10, "blocks": 20, "equilibration": 0, "optimize_steps": 0,
            "warm_optimize_steps": 0, "seed": 0}
_WHY = {"walkers": " (fewer make DMC's population-control bias large)",
        "blocks": " (the error bar comes from reblocking the blocks after equilibration)"}


def check_settings(timestep, **counts) -> None:
    """ValueError naming the labeler field for a timestep or count DMC cannot run with."""
    if isinstance(timestep, bool) or not isinstance(timestep, (int, float)) or not (
        math.isfinite(timestep) and timestep > 0
    ):
        raise ValueError(f"labeler.timestep: must be a number > 0 (Hartree⁻¹; 0.01-0.02 suits "
                         f"all-electron hydrogen), got {timestep!r}")
    for name, value in counts.items():
        low = _MINIMUM[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"labeler.{name}: must be an integer >= {low}{_WHY.get(name, '')}, got {value!r}")


def fingerprint(atoms: Atoms, charge: int, spin: int) -> str:
    """A stable name for a configuration: formula and a hash of numbers, positions, charge, spin."""
    digest = hashlib.sha1(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    digest.update((np.round(atoms.positions, 6) + 0.0).tobytes())   # + 0.0 turns -0.0 into 0.0
    digest.update(f"{charge},{spin}".encode())
    return f"{atoms.get_chemical_formula()}-{digest.hexdigest()[:12]}"


def _pair_distances(positions: np.ndarray) -> np.ndarray:
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    return d[np.triu_indices(len(positions), 1)]


class WavefunctionStore:
    """One .npz per labelled configuration: geometry, optimised Jastrow, DMC block trace."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def save(self, name: str, atoms: Atoms, charge: int, spin: int, jastrow: dict, trace: dict) -> None:
        arrays = {f"jastrow/{k}": np.asarray(v) for k, v in jastrow.items()}
        arrays.update({f"trace/{k}": np.asarray(v) for k, v in trace.items()})
        with atomic_open(self.folder / f"{name}.npz") as handle:
            np.savez(handle, numbers=atoms.numbers, positions=atoms.positions,
                     charge_spin=np.array([charge, spin]), **arrays)

    def nearest(self, atoms: Atoms, charge: int, spin: int, shapes: dict) -> tuple[str, float, dict] | None:
        """(name, distance in Å, Jastrow) of the closest stored configuration with the same atoms
        in the same order, charge, spin and Jastrow shapes; distance = RMS difference of the
        interatomic distances. None if there is none."""
        best = None
        mine = _pair_distances(atoms.positions)
        for path in sorted(self.folder.glob("*.npz")):
            with np.load(path) as data:
                if (not np.array_equal(data["numbers"], atoms.numbers)
                        or list(data["charge_spin"]) != [charge, spin]):
                    continue
                jastrow = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("jastrow/")}
                if {k: v.shape for k, v in jastrow.items()} != shapes:
                    continue
                diff = _pair_distances(data["positions"]) - mine
                distance = float(np.sqrt(np.mean(diff**2))) if diff.size else 0.0
            if best is None or distance < best[1]:
                best = (path.stem, distance, jastrow)
        return best


def initial_walkers(mol, mf, nconfig: int, rng: np.random.Generator) -> OpenConfigs:
    """Electron positions (Bohr) near the atoms that carry each electron's occupied orbital.

    pyqmc's own initial guess places electrons by nuclear charge whatever their spin. With a
    distant H (a hot MD frame: H2 + H at 10 Å), a third of the walkers then start with the β
    electron on the far atom, where the β orbital has only its Gaussian tail and the local energy
    is large and negative; VMC does not bring them back across 10 Å, and DMC branching runs away
    (measured: -1.79 Ha against -1.68 Ha from well-placed walkers). Here each electron goes to an
    atom drawn by its orbital's Mulliken populations, then 1 Bohr of Gaussian noise.
    """
    coeff = [mf.mo_coeff, mf.mo_coeff] if np.ndim(mf.mo_coeff) == 2 else mf.mo_coeff
    occ = [mf.mo_occ > 0, mf.mo_occ > 0] if np.ndim(mf.mo_occ) == 1 else [o > 0 for o in mf.mo_occ]
    overlap = mol.intor("int1e_ovlp")
    aos = [slice(a0, a1) for _, _, a0, a1 in mol.aoslice_by_atom()]
    sites = []
    for spin in (0, 1):
        c = coeff[spin][:, occ[spin]]
        populations = c * (overlap @ c)                     # (AO, orbital)
        per_atom = np.clip([populations[a].sum(axis=0) for a in aos], 0, None)
        for p in (per_atom / per_atom.sum(axis=0)).T:
            sites.append(rng.choice(mol.natm, size=nconfig, p=p))
    positions = mol.atom_coords()[np.stack(sites, axis=1)]
    return OpenConfigs(positions + rng.normal(size=positions.shape))


@contextlib.contextmanager
def _numpy_global_seed(seed: int):
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


class PyQMCLabeler(LocalLabeler):
    """Fixed-node DMC energies of molecules (no periodic cells); sigma is the reblocked error."""

    name = "pyqmc"

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        basis: str,
        charge: int,
        spin: int | None,
        timestep: float,
        walkers: int,
        blocks: int,
        equilibration: int,
        optimize_steps: int,
        warm_optimize_steps: int,
        seed: int,
    ):
        """Defaults: campaign_labelers.PyQMCSettings; a run builds the labeler with `from_settings`."""
        self.basis = check_basis(basis)
        _check_charge_spin(charge, spin)
        check_settings(timestep, walkers=walkers, blocks=blocks, equilibration=equilibration,
                       optimize_steps=optimize_steps, warm_optimize_steps=warm_optimize_steps, seed=seed)
        self.charge, self.spin = int(charge), spin
        self.timestep, self.walkers, self.blocks = float(timestep), int(walkers), int(blocks)
        self.equilibration, self.seed = int(equilibration), int(seed)
        self.optimize_steps, self.warm_optimize_steps = int(optimize_steps), int(warm_optimize_steps)
        self.steps_per_block = max(1, round(BLOCK_TIME / self.timestep))
        super().__init__(workdir)
        self.store = WavefunctionStore(self.workdir / "pyqmc")

    def compute(self, atoms: Atoms) -> Label:
        charge, spin = state_of(atoms, self.charge, self.spin)   # a candidate's own charge state first
        mol = build_molecule(atoms, self.basis, charge, spin)
        mf = run_scf(mol, "hf")
        geometry_print = fingerprint(atoms, charge, mol.spin)
        # a repeat of a labelled configuration (acquisition.repeats) is another independent DMC run
        repeat = int(atoms.info.get("repeat", 0))
        name = geometry_print + (f"-repeat{repeat}" if repeat else "")
        entropy = [self.seed, int(geometry_print[-12:], 16)] + ([repeat] if repeat else [])
        run_seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
        wf, to_opt = pq.generate_wf(mol, mf)
        jastrow_keys = [k for k in wf.parameters if k.startswith("wf2")]
        start = self.store.nearest(atoms, charge, mol.spin, {k: wf.parameters[k].shape for k in jastrow_keys})
        if start is None:
            steps, origin = self.optimize_steps, {"start": "pyqmc default (cusps only)"}
        else:
            for k, v in start[2].items():
                wf.parameters[k] = v.copy()
            steps, origin = self.warm_optimize_steps, {"start": start[0], "distance_rms_angstrom": round(start[1], 6)}
        # Single-threaded: orbitals are evaluated on a few hundred points per call, where OpenMP
        # threads cost more than they bring (10x slower with 2 threads on a loaded 2-core machine).
        with _numpy_global_seed(run_seed), threadpool_limits(1):
            configs = initial_walkers(mol, mf, self.walkers, np.random.default_rng(run_seed))
            vmc = self._optimise(mol, wf, to_opt, configs, steps)
            energies, weights = self._dmc(mol, wf, configs)
        stats = reblock(energies, weights)
        self.store.save(name, atoms, charge, mol.spin, {k: wf.parameters[k] for k in jastrow_keys},
                        {"energy_hartree": energies, "weight": weights})
        provenance = {
            "method": "dmc (fixed-node, Slater-Jastrow)",
            "basis": self.basis,
            "charge": charge,
            "spin": int(mol.spin),
            "reference": "UHF" if mol.spin else "RHF",
            "e_scf_hartree": float(mf.e_tot),
            "e_dmc_hartree": stats.mean,
            "sigma_hartree": stats.error,
            "reblock": {"block_size": stats.block_size, "n_blocks": stats.n_blocks, "converged": stats.converged},
            "timestep": self.timestep,
            "walkers": self.walkers,
            "steps_per_block": self.steps_per_block,
            "blocks": self.blocks,
            "equilibration_blocks": self.equilibration,
            "seed": self.seed,
            "run_seed": run_seed,
            **({"repeat": repeat} if repeat else {}),
            "jastrow": {**origin, "optimize_steps": steps, "saved_as": name, **vmc},
            "pyqmc_version": version("pyqmc"),
            "pyscf_version": pyscf.__version__,
            "units": UNITS_NOTE + "; timestep in Hartree⁻¹",
        }
        return Label(stats.mean * Hartree, stats.error * Hartree, provenance)

    def _optimise(self, mol, wf, to_opt, configs, steps: int) -> dict:
        """Optimise the Jastrow in place (moving `configs` along); the last VMC energy (Hartree)
        for the provenance."""
        if steps == 0:
            return {}
        try:
            # pyqmc prints progress dashes unconditionally; they would break the caller's output.
            with contextlib.redirect_stdout(io.StringIO()):
                _, history = pq.line_minimization(wf, configs, pq.gradient_generator(mol, wf, to_opt),
                                                  max_iterations=steps)
        except (ValueError, np.linalg.LinAlgError) as err:
            raise LabelError(f"Jastrow optimisation failed: {err}") from err
        return {"e_vmc_hartree": float(history[-1]["energy"]), "e_vmc_error_hartree": float(history[-1]["energy_error"])}

    def _dmc(self, mol, wf, configs) -> tuple[np.ndarray, np.ndarray]:
        """Block energies (Hartree) and weights of the DMC blocks after equilibration."""
        data, _, _ = pq.rundmc(wf, configs, tstep=self.timestep, nblocks=self.equilibration + self.blocks,
                               nsteps_per_block=self.steps_per_block,
                               accumulators={"energy": pq.EnergyAccumulator(mol)})
        energies = np.real(data["energytotal"][self.equilibration:])
        weights = np.asarray(data["weight"][self.equilibration:], dtype=float)
        if not (np.all(np.isfinite(energies)) and np.all(np.isfinite(weights)) and np.all(weights > 0)):
            raise LabelError(f"DMC diverged (non-finite block energies or weights) at timestep "
                             f"{self.timestep} Hartree⁻¹; try a smaller timestep")
        return energies, weights
