"""The campaign file's `labeler` section: one model per labeler kind, chosen by `kind`."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, ValidationInfo, field_validator

from .campaign_fields import AnyPath, FilePath, Grid, NonNegInt, PosFloat, PosInt, Section


# Labelers whose label of one configuration differs from run to run (QMC's statistical error): a
# second label of it is new information (acquisition.repeats)
STOCHASTIC_LABELERS = ("pyqmc", "qmcpack")


class PySCFSettings(Section):
    kind: Literal["pyscf"]
    method: str = "ccsd(t)"
    basis: str = "aug-cc-pvtz"
    charge: int = 0
    spin: Optional[Annotated[int, Field(ge=0)]] = None
    conv_tol: PosFloat = 1e-9


class ASESettings(Section):
    kind: Literal["ase"]
    calculator: str
    parameters: dict[str, Any] = Field(default_factory=dict)

    @field_validator("calculator")
    @classmethod
    def _importable(cls, v: str) -> str:
        from .labelers.ase_calculator import import_calculator

        import_calculator(v)
        return v


class ReplaySettings(Section):
    kind: Literal["replay"]
    path: FilePath
    energy_key: str = "energy"
    sigma_key: Optional[str] = None
    tolerance: PosFloat = 1e-4


class PyQMCSettings(Section):
    kind: Literal["pyqmc"]
    basis: str = "cc-pvtz"
    charge: int = 0
    spin: Optional[Annotated[int, Field(ge=0)]] = None
    timestep: PosFloat = 0.02                          # Hartree⁻¹
    walkers: Annotated[int, Field(ge=10)] = 500        # fewer: large population-control bias
    blocks: Annotated[int, Field(ge=20)] = 200         # kept after equilibration, for reblocking
    equilibration: Annotated[int, Field(ge=0)] = 50
    optimize_steps: Annotated[int, Field(ge=0)] = 10
    warm_optimize_steps: Annotated[int, Field(ge=0)] = 3
    seed: Annotated[int, Field(ge=0)] = 0

    @field_validator("basis")
    @classmethod
    def _known_basis(cls, v: str) -> str:
        from .labelers.pyscf import check_basis

        try:
            return check_basis(v)
        except ValueError as err:   # its message starts with the field name, which _translate adds
            raise ValueError(str(err).removeprefix("labeler.basis: ")) from None


class Pseudopotential(Section):
    upf: AnyPath       # pw.x's file; both files are checked when a job is queued
    xml: AnyPath       # QMCPACK's file of the same pseudopotential
    valence: Optional[PosInt] = None   # None: read from the files' headers


class QMCPACKJastrow(Section):
    j3: bool = False
    loops: PosInt = 10
    samples: PosInt = 50000


# pw.x settings that aloop derives from other fields; overriding them would desynchronise the
# QMCPACK inputs (electron counts, orbital file) from the orbitals
_DERIVED_PW_KEYS = {"calculation": "the job", "prefix": "the job", "outdir": "the job", "pseudo_dir": "the job",
                    "ecutwfc": "labeler.ecut", "input_dft": "labeler.functional", "tot_charge": "labeler.charge",
                    "nspin": "labeler.spin", "tot_magnetization": "labeler.spin", "nosym": "labeler.twists",
                    "noinv": "labeler.twists", "nat": "the structure", "ntyp": "the structure", "ibrav": "the structure"}


class QMCPACKSettings(Section):
    kind: Literal["qmcpack"]
    pseudopotentials: Annotated[dict[str, Pseudopotential], Field(min_length=1)]
    ecut: PosFloat
    functional: str = "pbe"
    kgrid: Grid = (1, 1, 1)
    twists: Grid = (1, 1, 1)
    pw_parameters: dict[str, Any] = Field(default_factory=dict)
    meshfactor: PosFloat = 1.0
    charge: int = 0
    spin: NonNegInt = 0
    jastrow: QMCPACKJastrow = Field(default_factory=QMCPACKJastrow)
    walkers: PosInt = 1024
    timesteps: Annotated[list[PosFloat], Field(min_length=1)]
    nonlocalmoves: Literal["no", "yes", "v0", "v1", "v3"] = "yes"
    warmup_blocks: PosInt = 20
    blocks: PosInt = 200
    steps: PosInt = 10
    equilibration: Union[NonNegInt, list[NonNegInt]] = 20
    min_blocks: Annotated[int, Field(ge=2)] = 50
    batch_template: Optional[FilePath] = None

    @field_validator("pseudopotentials")
    @classmethod
    def _elements(cls, v: dict) -> dict:
        from ase.data import chemical_symbols

        unknown = [el for el in v if el not in chemical_symbols[1:]]
        if unknown:
            raise ValueError(f"keys must be element symbols (Mo, S, ...), got {', '.join(map(repr, unknown))}")
        return v

    @field_validator("pw_parameters")
    @classmethod
    def _pw_keys(cls, v: dict) -> dict:
        from ase.io.espresso import Namelist
        from ase.io.espresso_namelist.keys import ALL_KEYS

        for key in v:
            if key.lower() in _DERIVED_PW_KEYS:
                raise ValueError(f"{key!r} is set by aloop from {_DERIVED_PW_KEYS[key.lower()]}; remove it here")
            if Namelist.search_key(key.lower(), ALL_KEYS["pw"]) is None:
                raise ValueError(f"{key!r} is not a pw.x input parameter (names as in pw.x's INPUT_PW documentation)")
        return v

    @field_validator("timesteps")
    @classmethod
    def _distinct(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError(f"timesteps must differ from each other (1/Hartree), got {v}")
        return v

    @field_validator("equilibration")
    @classmethod
    def _one_per_series(cls, v, info: ValidationInfo):
        n = len(info.data.get("timesteps") or [])
        if isinstance(v, list) and n and len(v) != n:
            raise ValueError(f"one number of blocks per timestep ({n}), or a single number for all; got {len(v)}")
        blocks = info.data.get("blocks")
        if blocks is not None and max(v if isinstance(v, list) else [v]) >= blocks:
            raise ValueError(f"must be fewer than labeler.blocks ({blocks}) blocks, got {v}")
        return v

    @field_validator("min_blocks")
    @classmethod
    def _reachable(cls, v: int, info: ValidationInfo) -> int:
        blocks, eq = info.data.get("blocks"), info.data.get("equilibration")
        if blocks is not None and eq is not None:
            kept = blocks - max(eq if isinstance(eq, list) else [eq])
            if v > kept:
                raise ValueError(f"{v} blocks can never be reached: labeler.blocks ({blocks}) minus the longest "
                                 f"equilibration leaves {kept}; lower min_blocks or raise blocks")
        return v

    def equilibration_per_series(self) -> list[int]:
        eq = self.equilibration
        return list(eq) if isinstance(eq, list) else [eq] * len(self.timesteps)


LabelerSettings = Annotated[Union[PySCFSettings, ReplaySettings, ASESettings, QMCPACKSettings, PyQMCSettings],
                    Field(discriminator="kind")]
