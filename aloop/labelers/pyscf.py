"""Quantum-chemistry labels from PySCF: HF, DFT, MP2, CCSD and CCSD(T) for molecules.

Open-shell configurations (2S > 0) run unrestricted (UHF/UKS and the U- correlated methods),
closed-shell ones restricted; unrestricted references are followed downhill through internal
instabilities so that stretched geometries get the lowest mean-field solution. Energies come back
in eV for the whole molecule; PySCF works in Hartree and Bohr and the conversion uses ase.units so
that every number in the project shares one set of constants.
"""
from __future__ import annotations

import difflib
import os

import numpy as np
import pyscf
from ase import Atoms
from ase.units import Bohr, Hartree
from pyscf import cc, dft, gto, mp, scf
from pyscf.gto import basis as pyscf_basis
from pyscf.scf import stability

from ..charge import state_of
from .base import Label, LabelError, LocalLabeler

WAVEFUNCTION_METHODS = ("hf", "mp2", "ccsd", "ccsd(t)")
UNITS_NOTE = "energy in eV; Hartree converted with ase.units.Hartree"


def check_method(method: str) -> str:
    """The canonical (lower-case) method name; ValueError for one PySCF cannot run."""
    if not isinstance(method, str):
        raise ValueError(f"labeler.method must be a string, got {method!r}")
    name = method.strip().lower()
    if name in WAVEFUNCTION_METHODS:
        return name
    try:
        dft.libxc.parse_xc(name)
    except (KeyError, ValueError) as err:
        raise ValueError(
            f"labeler.method: unknown method {method!r}; valid choices are "
            f"{', '.join(WAVEFUNCTION_METHODS)} or a DFT exchange-correlation functional known to "
            f"libxc (e.g. pbe, b3lyp, pbe0)"
        ) from err
    return name


def check_basis(basis: str) -> str:
    """The basis as given; ValueError unless PySCF ships it or it names a basis file."""
    if not isinstance(basis, str):
        raise ValueError(f"labeler.basis must be a string, got {basis!r}")
    if os.path.isfile(basis):
        return basis
    # PySCF looks names up after this normalization ("aug-cc-pVTZ" -> "augccpvtz").
    key = pyscf_basis._format_basis_name(basis)
    if key in pyscf_basis.ALIAS:
        return basis
    close = difflib.get_close_matches(key, pyscf_basis.ALIAS, n=5)
    hint = f"; closest known names: {', '.join(close)}" if close else ""
    raise ValueError(
        f"labeler.basis: unknown basis {basis!r}; valid choices are the basis sets PySCF ships "
        f"(e.g. sto-3g, cc-pvdz, cc-pvtz, aug-cc-pvtz, def2-tzvp; full list in "
        f"pyscf.gto.basis.ALIAS) or a path to a basis file{hint}"
    )


def _check_charge_spin(charge, spin) -> None:
    if isinstance(charge, bool) or not isinstance(charge, (int, np.integer)):
        raise ValueError(f"labeler.charge must be an integer, got {charge!r}")
    if spin is not None and (
        isinstance(spin, bool) or not isinstance(spin, (int, np.integer)) or spin < 0
    ):
        raise ValueError(f"labeler.spin must be None or an integer 2S >= 0, got {spin!r}")


def build_molecule(
    atoms: Atoms, basis: str, charge: int = 0, spin: int | None = None, max_memory_mb: int = 4000
) -> gto.Mole:
    """A PySCF molecule for `atoms` (Angstrom); LabelError if it cannot exist as asked."""
    formula = atoms.get_chemical_formula()
    if atoms.pbc.any():
        raise LabelError(f"configuration {formula}: periodic cells are not supported (molecules only)")
    n_electrons = int(atoms.get_atomic_numbers().sum()) - int(charge)
    if spin is None:
        spin = n_electrons % 2
    if n_electrons <= 0 or spin > n_electrons or (n_electrons - spin) % 2:
        raise LabelError(
            f"configuration {formula}: charge {charge} and spin 2S={spin} are inconsistent with "
            f"its {n_electrons} electrons (2S must have the parity of the electron count and "
            f"not exceed it)"
        )
    try:
        return gto.M(
            atom=[(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
            unit="Angstrom",
            basis=basis,
            charge=int(charge),
            spin=int(spin),
            verbose=0,
            max_memory=max_memory_mb,
        )
    except (KeyError, RuntimeError) as err:
        raise LabelError(f"configuration {formula}: basis {basis!r} cannot be built: {err}") from err


def run_scf(mol: gto.Mole, method: str, conv_tol: float = 1e-9):
    """A converged, internally stable mean-field object (HF for wavefunction methods, else KS).

    Open-shell references are checked for internal instabilities and re-optimized along them:
    from the default guess, UHF/UKS lands on a saddle point of the orbital energy once bonds
    stretch (1-9 eV too high for stretched H3), a different surface from the one a pool's other
    configurations sit on.
    """
    open_shell = mol.spin != 0
    if method in WAVEFUNCTION_METHODS:
        mf = scf.UHF(mol) if open_shell else scf.RHF(mol)
    else:
        mf = dft.UKS(mol, xc=method) if open_shell else dft.RKS(mol, xc=method)
    mf.conv_tol = conv_tol
    mf = _converge(mf)
    return _descend_instabilities(mf) if open_shell else mf


def _converge(mf, dm0=None):
    """`mf` run to convergence; a second-order (Newton) solver gets one try where DIIS stalls,
    since stretched and near-degenerate geometries are exactly where an active-learning pool
    goes."""
    mf.kernel(dm0)
    if not mf.converged:
        mf = mf.newton()
        mf.kernel(mf.make_rdm1())
    if not mf.converged:
        raise LabelError(
            f"{type(mf).__name__} did not converge to conv_tol={mf.conv_tol:g} (DIIS and Newton)"
        )
    return mf


def _descend_instabilities(mf, max_steps: int = 3):
    occupied = np.asarray(mf.mo_occ) > 0
    if not np.any(occupied.sum(axis=1) * (~occupied).sum(axis=1)):
        return mf  # no occupied-virtual rotation exists (e.g. H in a minimal basis)
    for _ in range(max_steps):
        mo, stable = stability.uhf_internal(_stability_probe(mf), nroots=1, return_status=True)
        if stable:
            return mf
        mf = _converge(mf, mf.make_rdm1(mo, mf.mo_occ))
    raise LabelError(
        f"{type(mf).__name__} still has an internal instability after {max_steps} re-optimizations"
    )


def _stability_probe(mf):
    """The object whose orbital Hessian decides stability: `mf` itself for HF; for KS a copy on
    the coarsest grid, which finds the same unstable directions at a fifth of the cost of the
    production grid (the xc kernel on the grid dominates). The re-optimization it triggers runs
    on the production grid, and only near-degenerate solutions can be misjudged."""
    if not isinstance(mf, dft.rks.KohnShamDFT):
        return mf
    probe = mf.copy()
    probe.grids = dft.gen_grid.Grids(mf.mol)
    probe.grids.level = 0
    probe.grids.build()
    return probe


def _correlated_energy(mf, method: str, conv_tol: float) -> dict:
    """Total energy and its parts in Hartree for the post-HF `method` on top of `mf`."""
    if method == "mp2":
        e_corr = mp.MP2(mf).kernel()[0]
        return {"e_total_hartree": mf.e_tot + e_corr, "e_corr_hartree": e_corr}
    solver = cc.CCSD(mf)
    solver.conv_tol = conv_tol
    solver.kernel()
    if not solver.converged:
        raise LabelError(f"{type(solver).__name__} amplitudes did not converge")
    parts = {"e_corr_hartree": solver.e_corr}
    if method == "ccsd(t)":
        parts["e_triples_hartree"] = solver.ccsd_t()
    parts["e_total_hartree"] = mf.e_tot + sum(parts.values())
    return parts


def single_point(
    atoms: Atoms,
    method: str = "ccsd(t)",
    basis: str = "aug-cc-pvtz",
    charge: int = 0,
    spin: int | None = None,
    conv_tol: float = 1e-9,
    max_memory_mb: int = 4000,
) -> Label:
    """The energy of `atoms` (eV, whole molecule) with `method`/`basis`, and its provenance."""
    method, basis = check_method(method), check_basis(basis)
    _check_charge_spin(charge, spin)
    mol = build_molecule(atoms, basis, charge, spin, max_memory_mb)
    mf = run_scf(mol, method, conv_tol)
    provenance = {
        "method": method,
        "basis": basis,
        "charge": int(charge),
        "spin": int(mol.spin),
        "reference": ("U" if mol.spin else "R") + ("HF" if method in WAVEFUNCTION_METHODS else "KS"),
        "pyscf_version": pyscf.__version__,
        "conv_tol": conv_tol,
        "stability": "internal instabilities followed" if mol.spin else "not checked (restricted)",
        "e_scf_hartree": float(mf.e_tot),
        "threads": pyscf.lib.num_threads(),   # the cores the job held: its cost is wall time × threads
        "units": UNITS_NOTE,
    }
    if method in WAVEFUNCTION_METHODS and method != "hf":
        parts = _correlated_energy(mf, method, conv_tol)
        provenance.update({k: float(v) for k, v in parts.items()})
        e_total = parts["e_total_hartree"]
    else:
        e_total = mf.e_tot
        provenance["e_total_hartree"] = float(e_total)
    return Label(float(e_total) * Hartree, 0.0, provenance)


def energy_and_forces(
    atoms: Atoms, method: str, basis: str, charge: int = 0, spin: int | None = None
) -> tuple[float, np.ndarray]:
    """Energy (eV) and analytic forces (eV/Angstrom, shape (n, 3)) from HF or KS-DFT."""
    method, basis = check_method(method), check_basis(basis)
    if method in WAVEFUNCTION_METHODS and method != "hf":
        raise ValueError(
            f"method {method!r}: analytic gradients are not available here; use hf or a DFT "
            f"functional"
        )
    _check_charge_spin(charge, spin)
    mf = run_scf(build_molecule(atoms, basis, charge, spin), method)
    gradient = mf.nuc_grad_method().kernel()
    return float(mf.e_tot) * Hartree, -np.asarray(gradient) * (Hartree / Bohr)


class PySCFLabeler(LocalLabeler):
    """Labels molecules (no periodic cells) with a PySCF single point; sigma is 0."""

    name = "pyscf"

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        method: str,
        basis: str,
        charge: int,
        spin: int | None,
        conv_tol: float,
        max_memory_mb: int = 4000,
    ):
        """Defaults: campaign_labelers.PySCFSettings; a run builds the labeler with `from_settings`."""
        self.method = check_method(method)
        self.basis = check_basis(basis)
        _check_charge_spin(charge, spin)
        self.charge = int(charge)
        self.spin = spin
        self.conv_tol = conv_tol
        self.max_memory_mb = max_memory_mb
        super().__init__(workdir)

    def compute(self, atoms: Atoms) -> Label:
        # a candidate's own charge state (atoms.info, kept by the pool) before the campaign's
        return single_point(atoms, self.method, self.basis, *state_of(atoms, self.charge, self.spin),
                            self.conv_tol, self.max_memory_mb)
