"""The input files of one QMCPACK job: DFT orbitals → Jastrow optimisation → DMC.

The chain a QMCPACK user runs by hand or with Nexus: pw.x SCF (and an NSCF at the twists),
pw2qmcpack.x to turn the orbitals into B-spline coefficients (HDF5), a linear-method optimisation
of the Jastrow factors at the first twist, then one QMCPACK input per twist with a VMC series, a
DMC equilibration series and one DMC series per timestep. The pw.x inputs come from ASE's
`espresso-in` writer and pw2qmcpack's from ASE's namelist class; the QMCPACK inputs are
ElementTree documents shaped like the inputs Nexus writes (see ../shared/fixtures/qmcpack).

Units: Å and amu in, bohr and electron masses in QMCPACK files; the cutoff is in Ry (pw.x), the
timesteps in Hartree⁻¹ (QMCPACK).
"""
from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers
from ase.geometry import minkowski_reduce
from ase.io import write
from ase.io.espresso import Namelist
from ase.units import Bohr, _amu, _me

PREFIX, OUTDIR = "pwscf", "pwscf_output"
H5 = f"{OUTDIR}/{PREFIX}.pwscf.h5"          # where pw2qmcpack.x puts the orbitals
OPT_PROJECT, DMC_PROJECT = "opt", "dmc"
FIRST_DMC_SERIES = 2                         # s000 VMC, s001 DMC equilibration, then the timesteps

# Sampling settings that change no label, only how fast walkers equilibrate: the values of
# QMCPACK's and Nexus's examples (VMC timestep 0.3, drift on; 8-knot B-spline Jastrows).
VMC = {"warmupSteps": 50, "blocks": 100, "steps": 5, "subSteps": 2, "timestep": 0.3}
DMC_WARMUP_STEPS = 20
JASTROW_KNOTS = 8
J3_RCUT_BOHR = 5.0   # the three-body term is short-ranged; larger cutoffs only add noise


class JobSetupError(ValueError):
    """A job cannot be written: the message names the campaign field or file to fix."""


@dataclass(frozen=True)
class Electrons:
    up: int
    down: int
    charge: int
    spin: int  # 2S = up − down

    @property
    def total(self) -> int:
        return self.up + self.down


def electron_counts(symbols, valence: dict[str, int], charge: int, spin: int) -> Electrons:
    """Valence electrons of the pseudopotentials minus the net charge, split by 2S = n_up − n_down."""
    total = sum(valence[s] for s in symbols) - int(charge)
    if total <= 0:
        raise JobSetupError(f"charge {charge} leaves {total} electrons; check labeler.charge or the "
                            "configuration's info['charge']")
    if spin < 0 or spin > total or (total - spin) % 2:
        raise JobSetupError(
            f"{total} electrons (valence {total + charge}, charge {charge}) cannot have spin 2S = {spin}: 2S must be "
            f"between 0 and {total} with the parity of the electron count; set labeler.spin or the configuration's "
            "info['spin']")
    return Electrons((total + spin) // 2, (total - spin) // 2, int(charge), int(spin))


# --- pseudopotentials ------------------------------------------------------------------------

_VALENCE_PATTERNS = (
    re.compile(r'z_valence\s*=\s*"\s*([-+0-9.eEdD]+)\s*"'),          # UPF v2 header attribute
    re.compile(r"^\s*([-+0-9.eEdD]+)\s+Z\s+valence", re.MULTILINE),  # UPF v1 header line
    re.compile(r'\bzval\s*=\s*"\s*([-+0-9.eEdD]+)\s*"'),             # QMCPACK XML <header>
)


def valence_in_file(path: str | Path) -> float | None:
    """The valence charge a UPF or QMCPACK pseudopotential file states in its header, or None."""
    text = Path(path).read_text(errors="replace")
    for pattern in _VALENCE_PATTERNS:
        match = pattern.search(text)
        if match:
            return float(match.group(1).replace("d", "e").replace("D", "e"))
    return None


def check_pseudopotentials(spec: dict, elements) -> dict[str, int]:
    """Valence charge per element, after checking that both files of each element exist and that
    the campaign and the file headers agree on it."""
    valence = {}
    for el in sorted(set(elements)):
        where = f"labeler.pseudopotentials.{el}"
        if el not in spec:
            raise JobSetupError(f"labeler.pseudopotentials: no entry for {el}, which this configuration contains; "
                                f"add `{el}: {{upf: ..., xml: ...}}`")
        entry = spec[el]
        stated = {}
        for kind in ("upf", "xml"):
            path = Path(getattr(entry, kind))
            if not path.is_file():
                raise JobSetupError(f"{where}.{kind}: file not found: {path}")
            found = valence_in_file(path)
            if found is not None:
                stated[path.name] = found
        if entry.valence is not None:
            stated["the campaign"] = float(entry.valence)
        if not stated:
            raise JobSetupError(f"{where}.valence: neither {Path(entry.upf).name} nor {Path(entry.xml).name} states "
                                "the valence charge in its header; give it")
        values = set(stated.values())
        if len(values) > 1:
            listed = ", ".join(f"{k}: {v:g}" for k, v in stated.items())
            raise JobSetupError(f"{where}: the valence charges disagree ({listed}); the two files must be "
                                "the same pseudopotential")
        value = values.pop()
        if value != int(value) or value <= 0:
            raise JobSetupError(f"{where}: valence charge {value:g} is not a positive integer")
        valence[el] = int(value)
    return valence


# --- geometry helpers ------------------------------------------------------------------------

def species(atoms: Atoms) -> list[str]:
    """Elements in order of first appearance: the order of the QMCPACK ion groups."""
    return list(dict.fromkeys(atoms.get_chemical_symbols()))


def wigner_seitz_radius(cell) -> float:
    """Radius (same unit as `cell`) of the sphere inscribed in the Wigner–Seitz cell: half the
    shortest lattice vector, found on the Minkowski-reduced basis."""
    reduced, _ = minkowski_reduce(np.asarray(cell, dtype=float))
    vectors = [np.dot(n, reduced) for n in itertools.product((-1, 0, 1), repeat=3) if any(n)]
    return 0.5 * min(float(np.linalg.norm(v)) for v in vectors)


def twist_grid(grid) -> np.ndarray:
    """Γ-centred twists in crystal coordinates, in the order of the QMCPACK `twistnum`."""
    return np.array([[i / grid[0], j / grid[1], k / grid[2]]
                     for i in range(grid[0]) for j in range(grid[1]) for k in range(grid[2])])


def needs_nscf(settings) -> bool:
    """An NSCF run is needed unless the SCF's own single Γ point is the only twist."""
    return tuple(settings.twists) != (1, 1, 1) or tuple(settings.kgrid) != (1, 1, 1)


# --- Quantum ESPRESSO --------------------------------------------------------------------------

def pw_input_data(settings, electrons: Electrons, calculation: str, n_atoms: int) -> dict:
    system = {"ecutwfc": float(settings.ecut), "input_dft": settings.functional, "occupations": "fixed",
              "tot_charge": float(electrons.charge)}
    if electrons.spin:
        system.update(nspin=2, tot_magnetization=float(electrons.spin))
    if calculation == "nscf":
        # every twist as listed, none folded away by symmetry: each one is a QMCPACK twistnum
        system.update(nosym=True, noinv=True)
    data = {"control": {"calculation": calculation, "prefix": PREFIX, "outdir": OUTDIR, "pseudo_dir": "./"},
            "system": system,
            # tight (Ry, extensive): the DMC nodes are those of these orbitals; gentle mixing
            # because slabs and defect cells slosh charge at the default
            "electrons": {"conv_thr": 1e-10 * n_atoms, "mixing_beta": 0.3}}
    data.update(settings.pw_parameters)   # flat keys: ASE's namelist puts each in its section
    return data


def write_qe_inputs(folder: Path, atoms: Atoms, settings, electrons: Electrons, pseudo_files: dict[str, str]) -> list[str]:
    """scf.in (and nscf.in) with ASE's writer, and p2q.in; the names of the files written."""
    written = ["scf.in"]
    write(folder / "scf.in", atoms, format="espresso-in", input_data=pw_input_data(settings, electrons, "scf", len(atoms)),
          pseudopotentials=pseudo_files, kpts=tuple(settings.kgrid))
    if needs_nscf(settings):
        twists = twist_grid(settings.twists)
        kpts = np.hstack([twists, np.full((len(twists), 1), 1.0 / len(twists))])
        write(folder / "nscf.in", atoms, format="espresso-in", input_data=pw_input_data(settings, electrons, "nscf", len(atoms)),
              pseudopotentials=pseudo_files, kpts=kpts)
        written.append("nscf.in")
    p2q = Namelist({"inputpp": {"prefix": PREFIX, "outdir": OUTDIR, "write_psir": False}})
    (folder / "p2q.in").write_text(p2q.to_string())
    written.append("p2q.in")
    return written


# --- QMCPACK -------------------------------------------------------------------------------

def _param(parent: ET.Element, name: str, value, **attrib) -> ET.Element:
    el = ET.SubElement(parent, "parameter", name=name, **attrib)
    el.text = f" {value} "
    return el


def _rows(matrix) -> str:
    return "\n" + "\n".join("  ".join(f"{x:16.10f}" for x in row) for row in np.atleast_2d(matrix)) + "\n"


def _coefficients(parent: ET.Element, ident: str, n: int | None) -> None:
    coeffs = ET.SubElement(parent, "coefficients", id=ident, type="Array")
    if n is None:                       # polynomial J3: QMCPACK sizes and zeroes it
        coeffs.set("optimize", "yes")
        coeffs.text = " "
    else:
        coeffs.text = " " + " ".join(["0.0"] * n) + " "


def qmcsystem(atoms: Atoms, electrons: Electrons, valence: dict[str, int], pseudo_xml: dict[str, str],
              twistnum: int, settings) -> ET.Element:
    """Cell, electrons and ions, the Slater–Jastrow wavefunction and the Hamiltonian."""
    system = ET.Element("qmcsystem")
    cell = ET.SubElement(system, "simulationcell")
    _param(cell, "lattice", _rows(atoms.cell.array / Bohr), units="bohr")
    _param(cell, "bconds", "p p p")     # the orbitals are periodic in all three directions
    _param(cell, "LR_dim_cutoff", 15)

    groups = [(name, n) for name, n in (("u", electrons.up), ("d", electrons.down)) if n > 0]
    elec = ET.SubElement(system, "particleset", name="e", random="yes", randomsrc="ion0")
    for name, n in groups:
        group = ET.SubElement(elec, "group", name=name, size=str(n), mass="1.0")
        _param(group, "charge", -1)
        _param(group, "mass", 1.0)

    ions = ET.SubElement(system, "particleset", name="ion0")
    symbols = np.array(atoms.get_chemical_symbols())
    for el in species(atoms):
        mask = symbols == el
        mass = float(atoms.get_masses()[mask][0]) * _amu / _me
        group = ET.SubElement(ions, "group", name=el, size=str(int(mask.sum())), mass=repr(mass))
        _param(group, "charge", valence[el])
        _param(group, "valence", valence[el])
        _param(group, "atomicnumber", atomic_numbers[el])
        _param(group, "mass", repr(mass))
        pos = ET.SubElement(group, "attrib", name="position", datatype="posArray", condition="0")
        pos.text = _rows(atoms.positions[mask] / Bohr)

    wf = ET.SubElement(system, "wavefunction", name="psi0", target="e")
    builder = ET.SubElement(wf, "sposet_builder", type="bspline", href=H5, tilematrix="1 0 0 0 1 0 0 0 1",
                            twistnum=str(twistnum), source="ion0", version="0.10",
                            meshfactor=repr(float(settings.meshfactor)), precision="float", truncate="no")
    if electrons.spin > 0:   # pw.x ran with nspin = 2: one orbital set per spin
        sposet = {"u": "spo_u", "d": "spo_d"}
        ET.SubElement(builder, "sposet", type="bspline", name="spo_u", size=str(electrons.up), spindataset="0")
        ET.SubElement(builder, "sposet", type="bspline", name="spo_d", size=str(electrons.down), spindataset="1")
    else:
        sposet = {"u": "spo_ud", "d": "spo_ud"}
        ET.SubElement(builder, "sposet", type="bspline", name="spo_ud", size=str(electrons.up), spindataset="0")
    slater = ET.SubElement(ET.SubElement(wf, "determinantset"), "slaterdeterminant")
    for group, n in groups:
        ET.SubElement(slater, "determinant", id={"u": "updet", "d": "downdet"}[group], group=group,
                      sposet=sposet[group], size=str(n))

    rcut = f"{wigner_seitz_radius(atoms.cell.array / Bohr):.10f}"
    j1 = ET.SubElement(wf, "jastrow", type="One-Body", name="J1", function="bspline", source="ion0", print="yes")
    for el in species(atoms):
        corr = ET.SubElement(j1, "correlation", elementType=el, size=str(JASTROW_KNOTS), rcut=rcut, cusp="0.0")
        _coefficients(corr, f"e{el}", JASTROW_KNOTS)
    j2 = ET.SubElement(wf, "jastrow", type="Two-Body", name="J2", function="bspline", print="yes")
    pairs = [("u", "u"), ("u", "d")] if electrons.down else [("u", "u")]
    for a, b in pairs:
        corr = ET.SubElement(j2, "correlation", speciesA=a, speciesB=b, size=str(JASTROW_KNOTS), rcut=rcut)
        _coefficients(corr, a + b, JASTROW_KNOTS)
    if settings.jastrow.j3:
        j3 = ET.SubElement(wf, "jastrow", type="eeI", name="J3", function="polynomial", source="ion0", print="yes")
        j3_rcut = f"{min(J3_RCUT_BOHR, float(rcut)):.10f}"
        for el in species(atoms):
            for a, b in pairs:
                attrib = {"especies": a} if a == b else {"especies1": a, "especies2": b}
                corr = ET.SubElement(j3, "correlation", ispecies=el, isize="3", esize="3", rcut=j3_rcut, **attrib)
                _coefficients(corr, f"{a}{b}{el}", None)

    ham = ET.SubElement(system, "hamiltonian", name="h0", type="generic", target="e")
    ET.SubElement(ham, "pairpot", type="coulomb", name="ElecElec", source="e", target="e")
    ET.SubElement(ham, "pairpot", type="coulomb", name="IonIon", source="ion0", target="ion0")
    pseudo = ET.SubElement(ham, "pairpot", type="pseudo", name="PseudoPot", source="ion0", wavefunction="psi0", format="xml")
    for el in species(atoms):
        ET.SubElement(pseudo, "pseudo", elementType=el, href=pseudo_xml[el])
    return system


def _simulation(project: str, system: ET.Element) -> ET.Element:
    sim = ET.Element("simulation")
    proj = ET.SubElement(sim, "project", id=project, series="0")
    _param(proj, "driver_version", "batched")
    sim.append(system)
    return sim


def _qmc(parent: ET.Element, method: str, **params) -> ET.Element:
    qmc = ET.SubElement(parent, "qmc", method=method, move="pbyp")
    for name, value in params.items():
        _param(qmc, name, value)
    return qmc


def optimisation_blocks(settings) -> int:
    """VMC blocks of one linear-method step: walkers × blocks ≥ jastrow.samples."""
    return -(-settings.jastrow.samples // settings.walkers)


def opt_document(system: ET.Element, settings) -> ET.ElementTree:
    """`jastrow.loops` linear-method steps (series s000 …); QMCPACK writes each result to
    opt.sNNN.opt.xml."""
    sim = _simulation(OPT_PROJECT, system)
    loop = ET.SubElement(sim, "loop", max=str(settings.jastrow.loops))
    _qmc(loop, "linear", total_walkers=settings.walkers, warmupSteps=VMC["warmupSteps"],
         blocks=optimisation_blocks(settings), steps=1, subSteps=VMC["subSteps"], timestep=VMC["timestep"],
         useDrift="no", MinMethod="OneShiftOnly", minwalkers=0.3)
    return ET.ElementTree(sim)


def dmc_steps(settings) -> list[int]:
    """Steps per block of each DMC series: `steps` at the largest timestep, proportionally more at
    smaller ones, so that every block spans the same imaginary time."""
    tau_max = max(settings.timesteps)
    return [max(1, round(settings.steps * tau_max / tau)) for tau in settings.timesteps]


def dmc_document(system: ET.Element, settings) -> ET.ElementTree:
    """s000 VMC, s001 DMC equilibration at the first timestep, then one series per timestep."""
    sim = _simulation(DMC_PROJECT, system)
    _qmc(sim, "vmc", total_walkers=settings.walkers, **VMC, useDrift="yes")
    steps = dmc_steps(settings)
    _qmc(sim, "dmc", total_walkers=settings.walkers, warmupSteps=DMC_WARMUP_STEPS, blocks=settings.warmup_blocks,
         steps=steps[0], timestep=settings.timesteps[0], nonlocalmoves=settings.nonlocalmoves)
    for tau, n in zip(settings.timesteps, steps):
        _qmc(sim, "dmc", total_walkers=settings.walkers, blocks=settings.blocks, steps=n, timestep=tau,
             nonlocalmoves=settings.nonlocalmoves)
    return ET.ElementTree(sim)


def write_xml(tree: ET.ElementTree, path: Path) -> None:
    ET.indent(tree, space="   ")
    Path(path).write_text(ET.tostring(tree.getroot(), encoding="unicode", xml_declaration=True) + "\n")
