"""The campaign file: one YAML file that says what to learn, from which pool, with which labeler.

`load_campaign(path)` reads and validates it. Every problem is reported at once, one per line, as
`<file>: <dotted.field.path>: <what is wrong; what is expected>`, inside a `CampaignError`.
Relative paths are resolved against the campaign file's folder. Units: eV, Å, eV/Å, K, fs.
docs/campaign.md describes every field.
"""
from __future__ import annotations

import difflib
import os
import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError,
                      ValidationInfo, field_validator, model_validator)


class CampaignError(ValueError):
    """The campaign file is missing, unreadable or invalid; the message lists every problem."""


def _resolve(value: Path, info: ValidationInfo) -> Path:
    base = Path((info.context or {}).get("base_dir", Path.cwd()))
    path = Path(value).expanduser()
    return (path if path.is_absolute() else base / path).resolve()


def _existing_file(value: Path, info: ValidationInfo) -> Path:
    path = _resolve(value, info)
    if not path.exists():
        raise ValueError(f"file not found: {path}")
    if not path.is_file():
        raise ValueError(f"not a file: {path}")
    return path


FilePath = Annotated[Path, AfterValidator(_existing_file)]   # must exist
AnyPath = Annotated[Path, AfterValidator(_resolve)]           # need not exist
PosInt = Annotated[int, Field(gt=0)]
PosFloat = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Section):
    path: FilePath
    head: Optional[str] = None


class FileSource(_Section):
    kind: Literal["file"]
    name: str
    path: FilePath
    index: str = ":"
    forces_key: Optional[str] = None

    @field_validator("index", mode="before")
    @classmethod
    def _int_index(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


class MDSource(_Section):
    kind: Literal["md"]
    name: str
    start: FilePath
    temperatures: Annotated[list[PosFloat], Field(min_length=1)]
    steps: PosInt = 500
    interval: PosInt = 10
    timestep: PosFloat = 0.5
    friction: PosFloat = 0.02


class NEBSource(_Section):
    kind: Literal["neb"]
    name: str
    initial: FilePath
    final: FilePath
    guess: Optional[FilePath] = None
    images: Annotated[int, Field(ge=1)] = 7
    climb: bool = True
    fmax: PosFloat = 0.05
    steps: PosInt = 500


Source = Annotated[Union[FileSource, MDSource, NEBSource], Field(discriminator="kind")]


class Pool(_Section):
    sources: Annotated[list[Source], Field(min_length=1)]
    min_distance: Annotated[float, Field(ge=0)] = 0.5

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list) -> list:
        seen: set[str] = set()
        for s in sources:
            if s.name in seen:
                raise ValueError(f"duplicate source name {s.name!r}; source names must be unique")
            seen.add(s.name)
        return sources


class Committee(_Section):
    size: Annotated[int, Field(ge=2)] = 5
    bootstrap: bool = True
    prior_sigma: PosFloat = 0.05
    seed: Annotated[int, Field(ge=0)] = 0


# Settings of the Adam fit with early stopping that the exact (Newton) fit replaced.
_RETIRED_FINETUNE = ("epochs", "lr", "batch_size", "val_fraction", "patience")


class Finetune(_Section):
    # None until validated: 0.5 unless force_threshold_per_atom is given, then None (so the dump,
    # which a run keeps and export reads back, holds only the one that is used)
    force_threshold: Optional[Annotated[float, Field(ge=0)]] = None
    force_threshold_per_atom: Optional[Annotated[float, Field(ge=0)]] = None
    force_weight: Annotated[float, Field(ge=0)] = 1.0
    noise_floor: PosFloat = 0.005

    @model_validator(mode="after")
    def _one_threshold(self) -> "Finetune":
        if self.force_threshold is not None and self.force_threshold_per_atom is not None:
            raise ValueError("force_threshold and force_threshold_per_atom are both given; keep one (per atom, "
                             "a configuration of N atoms has the threshold value × √N)")
        if self.force_threshold_per_atom is None and self.force_threshold is None:
            self.force_threshold = 0.5
        return self

    @model_validator(mode="before")
    @classmethod
    def _retired(cls, data: Any) -> Any:
        old = [key for key in _RETIRED_FINETUNE if isinstance(data, dict) and key in data]
        if old:
            raise ValueError(f"{', '.join(old)}: no longer used: every committee member is now fitted exactly "
                             "(Newton's method on a convex loss, no epochs or early stopping); remove "
                             f"{'this key' if len(old) == 1 else 'these keys'}")
        return data


class Acquisition(_Section):
    strategy: Literal["random", "max_std", "diverse"] = "diverse"
    batch_size: PosInt = 4
    initial_size: Optional[PosInt] = None
    # sizes of the batches after the first, in order, the last one repeating; batch_size when null
    batch_schedule: Optional[Annotated[list[PosInt], Field(min_length=1)]] = None

    @model_validator(mode="after")
    def _default_initial_size(self) -> "Acquisition":
        if self.initial_size is None:
            self.initial_size = self.batch_size
        return self

    def batch_size_at(self, iteration: int) -> int:
        """Candidates to select in `iteration` (≥ 1) when there is a committee to choose them."""
        if self.batch_schedule is None:
            return self.batch_size
        return self.batch_schedule[min(iteration, len(self.batch_schedule)) - 1]


class PySCFLabeler(_Section):
    kind: Literal["pyscf"]
    method: str = "ccsd(t)"
    basis: str = "aug-cc-pvtz"
    charge: int = 0
    spin: Optional[Annotated[int, Field(ge=0)]] = None
    conv_tol: PosFloat = 1e-9


class ASELabeler(_Section):
    kind: Literal["ase"]
    calculator: str
    parameters: dict[str, Any] = Field(default_factory=dict)

    @field_validator("calculator")
    @classmethod
    def _importable(cls, v: str) -> str:
        from .labelers.ase_calculator import import_calculator

        import_calculator(v)
        return v


class ReplayLabeler(_Section):
    kind: Literal["replay"]
    path: FilePath
    energy_key: str = "energy"
    sigma_key: Optional[str] = None
    tolerance: PosFloat = 1e-4


class PyQMCLabeler(_Section):
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


class Pseudopotential(_Section):
    upf: AnyPath       # pw.x's file; both files are checked when a job is queued
    xml: AnyPath       # QMCPACK's file of the same pseudopotential
    valence: Optional[PosInt] = None   # None: read from the files' headers


class QMCPACKJastrow(_Section):
    j3: bool = False
    loops: PosInt = 10
    samples: PosInt = 50000


NonNegInt = Annotated[int, Field(ge=0)]
Grid = tuple[PosInt, PosInt, PosInt]
# pw.x settings that aloop derives from other fields; overriding them would desynchronise the
# QMCPACK inputs (electron counts, orbital file) from the orbitals
_DERIVED_PW_KEYS = {"calculation": "the job", "prefix": "the job", "outdir": "the job", "pseudo_dir": "the job",
                    "ecutwfc": "labeler.ecut", "input_dft": "labeler.functional", "tot_charge": "labeler.charge",
                    "nspin": "labeler.spin", "tot_magnetization": "labeler.spin", "nosym": "labeler.twists",
                    "noinv": "labeler.twists", "nat": "the structure", "ntyp": "the structure", "ibrav": "the structure"}


class QMCPACKLabeler(_Section):
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


Labeler = Annotated[Union[PySCFLabeler, ReplayLabeler, ASELabeler, QMCPACKLabeler, PyQMCLabeler],
                    Field(discriminator="kind")]


class LocalDispatch(_Section):
    kind: Literal["local"] = "local"


class ParslDispatch(_Section):
    kind: Literal["parsl"]
    config: FilePath
    label_executor: Optional[str] = None
    score_executor: Optional[str] = None
    retries: Annotated[int, Field(ge=0)] = 2
    shard_size: PosInt = 512

    @field_validator("config")
    @classmethod
    def _parsl_config(cls, v: Path) -> Path:
        from .dispatch import executor_labels

        executor_labels(v)   # runs the file: a broken one is reported now, not when the run starts
        return v

    @field_validator("label_executor", "score_executor")
    @classmethod
    def _known_executor(cls, v: Optional[str], info: ValidationInfo) -> Optional[str]:
        config = info.data.get("config")   # absent when the config file itself was refused
        if v is not None and config is not None:
            from .dispatch import check_executor, executor_labels

            check_executor(v, executor_labels(config), config)
        return v


Dispatch = Annotated[Union[LocalDispatch, ParslDispatch], Field(discriminator="kind")]


class ObservableStop(_Section):
    name: str
    tolerance: PosFloat
    window: Annotated[int, Field(ge=2)] = 3


class Stop(_Section):
    max_labels: PosInt
    max_iterations: Optional[PosInt] = None
    uncertainty_ratio: Optional[PosFloat] = None
    observable: Optional[ObservableStop] = None


class TestSet(_Section):
    __test__ = False   # not a pytest test class
    path: FilePath
    energy_key: str = "energy"
    sigma_key: Optional[str] = None


class BarrierObservable(_Section):
    kind: Literal["barrier"]
    name: str
    path: str
    reference: Optional[float] = None
    low_fidelity: Optional[float] = None


Observable = Annotated[Union[BarrierObservable], Field(discriminator="kind")]


class Evaluation(_Section):
    test_set: Optional[TestSet] = None
    observables: list[Observable] = Field(default_factory=list)


class Campaign(_Section):
    name: str
    run_dir: Optional[AnyPath] = None
    seed: Annotated[int, Field(ge=0)] = 0
    device: str = "auto"
    model: ModelSpec
    pool: Pool
    committee: Committee = Field(default_factory=Committee)
    finetune: Finetune = Field(default_factory=Finetune)
    acquisition: Acquisition = Field(default_factory=Acquisition)
    labeler: Labeler
    dispatch: Dispatch = Field(default_factory=LocalDispatch)
    stop: Stop
    evaluation: Evaluation = Field(default_factory=Evaluation)

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise ValueError(f"must use only letters, digits, '-', '_' and '.', got {v!r}")
        return v

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", v):
            raise ValueError(f"expected one of: auto, cpu, cuda, cuda:N; got {v!r}")
        return v

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> "Campaign":
        if self.run_dir is None:
            self.run_dir = _resolve(Path("runs") / self.name, info)
        problems = []   # "dotted.path: message" lines; see _translate
        if self.run_dir.exists() and not self.run_dir.is_dir():
            problems.append(f"run_dir: {self.run_dir} is a file, not a folder; give a folder for the run")
        neb = [s.name for s in self.pool.sources if s.kind == "neb"]
        kinds = {s.name: s.kind for s in self.pool.sources}
        for i, obs in enumerate(self.evaluation.observables):
            where = f"evaluation.observables.{i}.path"
            if obs.path not in kinds:
                problems.append(f"{where}: no pool source named {obs.path!r}; "
                                f"expected one of the neb sources: {', '.join(neb) or '(none)'}")
            elif kinds[obs.path] != "neb":
                problems.append(f"{where}: pool source {obs.path!r} is of kind {kinds[obs.path]!r}, "
                                f"not 'neb'; expected one of the neb sources: {', '.join(neb) or '(none)'}")
        if self.stop.observable is not None:
            names = [o.name for o in self.evaluation.observables]
            if self.stop.observable.name not in names:
                problems.append(f"stop.observable.name: no observable named {self.stop.observable.name!r}; "
                                f"expected one of evaluation.observables: {', '.join(names) or '(none)'}")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def to_dict(self) -> dict:
        """All settings, defaults filled in, paths as absolute strings; JSON-serialisable."""
        return self.model_dump(mode="json")


# ---------------------------------------------------------------- error translation

def _flatten(tp: Any) -> list:
    """The alternatives of a type: unwraps Annotated, Optional and Union."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _flatten(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return [t for a in get_args(tp) for t in _flatten(a)]
    return [] if tp is type(None) else [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and get_origin(tp) is None and issubclass(tp, BaseModel)


def _kind(model: type) -> Optional[str]:
    field = model.model_fields.get("kind")
    return get_args(field.annotation)[0] if field is not None else None


def _walk(loc: tuple) -> tuple[list[str], list[type], list]:
    """A pydantic loc → (dotted path parts with union tags dropped, models owning the last part,
    the types the last part may take)."""
    cands: list = [Campaign]
    parts: list[str] = []
    owners: list[type] = []
    for seg in loc:
        models = [c for c in cands if _is_model(c)]
        if isinstance(seg, int):
            parts.append(str(seg))
            cands = [a for c in cands if get_origin(c) is list for a in _flatten(get_args(c)[0])]
            continue
        owner = next((m for m in models if seg in m.model_fields), None)
        tagged = [m for m in models if _kind(m) == seg]
        if owner is None and tagged:          # discriminator tag inserted by pydantic
            cands = tagged
            continue
        parts.append(str(seg))
        owners = models
        cands = _flatten(owner.model_fields[seg].annotation) if owner else []
    return parts, owners, cands


def _unquote(s: str) -> str:
    return ", ".join(x.strip().strip("'\"") for x in re.split(r",| or ", s) if x.strip())


_EXPECTED = {"int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
             "float_parsing": "a number", "float_type": "a number", "bool_parsing": "true or false",
             "bool_type": "true or false", "string_type": "a string", "list_type": "a list",
             "path_type": "a path (a string)"}


def _translate(err: dict) -> list[str]:
    """One pydantic error → lines of 'dotted.path: message'."""
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    parts, owners, cands = _walk(tuple(err["loc"]))
    msg = str(err["msg"])
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
        if not parts:                          # root validator: lines already carry their path
            return msg.splitlines()
    elif kind == "missing":
        msg = "required field missing"
    elif kind == "extra_forbidden":
        allowed = list(owners[0].model_fields) if len(owners) == 1 else []
        msg = "unknown key"
        close = difflib.get_close_matches(str(parts[-1]), allowed, n=1)
        if close:
            msg += f" (did you mean {close[0]!r}?)"
        if allowed:
            msg += f"; allowed keys: {', '.join(allowed)}"
    elif kind == "literal_error":
        msg = f"expected one of: {_unquote(ctx['expected'])}; got {got!r}"
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        parts.append(str(ctx.get("discriminator", "kind")).strip("'"))
        choices = ", ".join(str(_kind(m)) for m in cands if _is_model(m))
        msg = (f"expected one of: {choices}; got {ctx.get('tag')!r}" if kind == "union_tag_invalid"
               else f"required field missing; expected one of: {choices}")
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op, bound = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"),
                     "less_than": ("<", "lt"), "less_than_equal": ("<=", "le")}[kind]
        limit = ctx[bound]
        limit = int(limit) if isinstance(limit, float) and limit.is_integer() else limit
        msg = f"must be {op} {limit}, got {got!r}"
    elif kind == "too_short":
        msg = f"must have at least {ctx['min_length']} item(s), got {ctx.get('actual_length', 0)}"
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        msg = f"expected a mapping (a section of keys), got {type(got).__name__} {got!r}"
    elif kind in _EXPECTED:
        msg = f"expected {_EXPECTED[kind]}, got {got!r}"
    else:
        msg = f"{msg[:1].lower()}{msg[1:]}, got {got!r}"
    return [f"{'.'.join(parts) or '(top level)'}: {msg}"]


def load_campaign(path: str | os.PathLike, run_dir: str | os.PathLike | None = None) -> Campaign:
    """Read and validate a campaign file; raise CampaignError listing every problem. `run_dir` (from
    `--run-dir`, relative to the working directory) replaces the file's own run_dir."""
    label = os.fspath(path)
    source = Path(path).expanduser().resolve()
    try:
        text = source.read_text()
    except FileNotFoundError:
        raise CampaignError(f"{label}: campaign file not found: {source}") from None
    except OSError as exc:
        raise CampaignError(f"{label}: cannot read campaign file: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(unknown line)"
        problem = getattr(exc, "problem", None) or str(exc)
        raise CampaignError(f"{label}: {where}: YAML syntax error: {problem}") from None
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise CampaignError(f"{label}: (top level): expected a mapping of sections "
                            f"(name, model, pool, labeler, stop, ...), got {got}")
    if run_dir is not None:
        data["run_dir"] = str(Path(run_dir).expanduser().resolve())
    try:
        campaign = Campaign.model_validate(data, context={"base_dir": source.parent})
    except ValidationError as exc:
        lines = [line for err in exc.errors() for line in _translate(err)]
        raise CampaignError("\n".join(f"{label}: {line}" for line in lines)) from None
    return campaign
