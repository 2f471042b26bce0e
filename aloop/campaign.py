"""The campaign file: one YAML file that says what to learn, from which pool, with which labeler.

`load_campaign(path)` reads and validates it. Every problem is reported at once, one per line, as
`<file>: <dotted.field.path>: <what is wrong; what is expected>`, inside a `CampaignError`.
Relative paths are resolved against the campaign file's folder. Units: eV, Å, eV/Å, K, fs.
docs/campaign.md describes every field.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from .campaign_errors import translate
from .campaign_fields import AnyPath, FilePath, PosFloat, PosInt, Section, resolve_path
from .campaign_labelers import STOCHASTIC_LABELERS, LabelerSettings
from .domain import parse_pair


class CampaignError(ValueError):
    """The campaign file is missing, unreadable or invalid; the message lists every problem."""


class ModelSettings(Section):
    path: FilePath
    head: Optional[str] = None
    training_data: Optional[FilePath] = None   # the base model's training configurations: its domain


class FileSource(Section):
    kind: Literal["file"]
    name: str
    path: FilePath
    index: str = ":"
    forces_key: Optional[str] = None

    @field_validator("index", mode="before")
    @classmethod
    def _int_index(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


class MDSource(Section):
    kind: Literal["md"]
    name: str
    start: FilePath
    temperatures: Annotated[list[PosFloat], Field(min_length=1)]
    steps: PosInt = 500
    interval: PosInt = 10
    timestep: PosFloat = 0.5
    friction: PosFloat = 0.02


class NEBSource(Section):
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


class DomainSettings(Section):
    margin: Annotated[float, Field(ge=0)] = 0.1
    min_distances: dict[str, PosFloat] = Field(default_factory=dict)

    @field_validator("min_distances", mode="before")
    @classmethod
    def _pairs(cls, v: Any) -> Any:
        names: dict[str, str] = {}
        problems = []
        for key in v if isinstance(v, dict) else ():   # the keys are checked before (and besides) the values
            try:
                name = parse_pair(str(key))
            except ValueError as err:
                problems.append(f"{key}: {err}")
                continue
            if name in names:
                problems.append(f"{names[name]} and {key} name the same pair; keep one")
            names[name] = key
        if problems:
            raise ValueError("; ".join(problems))
        return v


class PoolSettings(Section):
    sources: Annotated[list[Source], Field(min_length=1)]
    min_distance: Annotated[float, Field(ge=0)] = 0.5
    domain: DomainSettings = Field(default_factory=DomainSettings)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list) -> list:
        seen: set[str] = set()
        for s in sources:
            if s.name in seen:
                raise ValueError(f"duplicate source name {s.name!r}; source names must be unique")
            seen.add(s.name)
        return sources


class CommitteeSettings(Section):
    size: Annotated[int, Field(ge=2)] = 5
    bootstrap: bool = True
    # eV/atom: how far a draw of the prior moves per-atom energies; auto: chosen at every fit by the
    # evidence of the labels (empirical Bayes, docs/method.md)
    prior_sigma: Union[float, Literal["auto"]] = 0.05
    seed: Annotated[int, Field(ge=0)] = 0

    @field_validator("prior_sigma", mode="before")
    @classmethod
    def _prior_sigma(cls, value):
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"expected a number > 0 (eV/atom) or auto, got {value!r}")
        return float(value)


# Settings of the Adam fit with early stopping that the exact (Newton) fit replaced.
_RETIRED_FINETUNE = ("epochs", "lr", "batch_size", "val_fraction", "patience")


class MultifidelitySettings(Section):
    """`finetune.kind: multifidelity` (aloop.multifidelity): when and how the backbone is trained on
    both fidelities at once."""
    every: Annotated[int, Field(ge=0)] = 0   # iterations between trainings; 0: only when the run stops
    epochs: PosInt = 60
    patience: PosInt = 10                    # epochs without a better validation loss before stopping
    replay: PosInt = 500                     # configurations of model.training_data per training
    force_weight: Annotated[float, Field(ge=0)] = 0.0   # base-model forces on labelled configurations, relative to the replay's forces
    label_weight: PosFloat = 1.0   # multiplies each label's energy weight (one label counts as one replayed configuration)
    lr: PosFloat = 1e-3
    batch_size: PosInt = 8
    valid_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1


class FinetuneSettings(Section):
    # None until validated: 0.5 unless force_threshold_per_atom is given, then None (so the dump,
    # which a run keeps and export reads back, holds only the one that is used)
    force_threshold: Optional[Annotated[float, Field(ge=0)]] = None
    force_threshold_per_atom: Optional[Annotated[float, Field(ge=0)]] = None
    force_weight: Annotated[float, Field(ge=0)] = 1.0
    noise_floor: PosFloat = 0.005
    # linear: the last linear map of each readout and E0, solved exactly (committee.py); full: every
    # readout parameter, the MLP's W1 included, by L-BFGS (full_committee.py)
    readout: Literal["linear", "full"] = "linear"
    # readout: the base model's readouts are fine-tuned (`readout` says which parameters); delta: they
    # stay the base model's and a correction network of `delta_width` hidden units is learnt (delta.py);
    # multifidelity: as readout, and a model whose backbone is trained on both fidelities is made when
    # the run stops (and every `multifidelity.every` iterations; multifidelity.py)
    kind: Literal["readout", "delta", "multifidelity"] = "readout"
    delta_width: PosInt = 32
    multifidelity: Optional[MultifidelitySettings] = None   # the defaults with kind: multifidelity

    @model_validator(mode="after")
    def _kind(self) -> "FinetuneSettings":
        if self.kind == "delta" and self.readout != "linear":
            raise ValueError("readout: full fine-tunes the base model's readouts, and kind: delta keeps them frozen "
                             "and learns a correction beside them; keep one (remove readout, or kind)")
        if self.multifidelity is not None and self.kind != "multifidelity":
            raise ValueError(f"multifidelity: these settings are for kind: multifidelity, and kind is {self.kind!r}; "
                             "set kind: multifidelity or remove the multifidelity section")
        if self.kind == "multifidelity" and self.multifidelity is None:
            self.multifidelity = MultifidelitySettings()
        return self

    @property
    def nonlinear(self) -> str | None:
        """How the trained parameters enter the energy nonlinearly (a campaign setting to name), or None."""
        if self.kind == "delta":
            return "finetune.kind is delta"
        return "finetune.readout is full" if self.readout == "full" else None

    @model_validator(mode="after")
    def _one_threshold(self) -> "FinetuneSettings":
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


class CostModelSettings(Section):
    """A label's predicted cost, core_hours × size^exponent (aloop.cost); null: the labeler's default
    (`per`, `exponent`) or no cost known before the first label (`core_hours`)."""
    core_hours: Optional[PosFloat] = None
    per: Optional[Literal["configuration", "atom", "electron"]] = None
    exponent: Optional[Annotated[float, Field(ge=0)]] = None


class AcquisitionSettings(Section):
    strategy: Literal["random", "max_std", "diverse", "targeted"] = "diverse"
    batch_size: PosInt = 4
    initial_size: Optional[PosInt] = None
    # sizes of the batches after the first, in order, the last one repeating; batch_size when null
    batch_schedule: Optional[Annotated[list[PosInt], Field(min_length=1)]] = None
    # observables whose variance `targeted` reduces; null: all of evaluation.observables
    targets: Optional[Annotated[list[str], Field(min_length=1)]] = None
    cost_aware: bool = False
    # `targeted` may choose a labelled configuration again, for another independent label of a
    # stochastic labeler (DMC): where few configurations pin an observable, noise is beaten there
    repeats: bool = False
    cost_model: CostModelSettings = Field(default_factory=CostModelSettings)

    @model_validator(mode="after")
    def _default_initial_size(self) -> "AcquisitionSettings":
        if self.initial_size is None:
            self.initial_size = self.batch_size
        return self

    def batch_size_at(self, iteration: int) -> int:
        """Candidates to select in `iteration` (≥ 1) when there is a committee to choose them."""
        if self.batch_schedule is None:
            return self.batch_size
        return self.batch_schedule[min(iteration, len(self.batch_schedule)) - 1]




class LocalDispatchSettings(Section):
    kind: Literal["local"] = "local"


class ParslDispatchSettings(Section):
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


DispatchSettings = Annotated[Union[LocalDispatchSettings, ParslDispatchSettings], Field(discriminator="kind")]


class ObservableStop(Section):
    name: str
    tolerance: PosFloat
    window: Annotated[int, Field(ge=2)] = 3


class StopSettings(Section):
    max_labels: PosInt
    max_iterations: Optional[PosInt] = None
    uncertainty_ratio: Optional[PosFloat] = None
    observable: Optional[ObservableStop] = None


class TestSet(Section):
    __test__ = False   # not a pytest test class
    path: FilePath
    energy_key: str = "energy"
    sigma_key: Optional[str] = None


class BarrierObservable(Section):
    kind: Literal["barrier"]
    name: str
    path: str
    # true: the committee mean's own CI-NEB, re-relaxed each iteration (end points too), started from
    # the pool source's path; false: the energies along the base model's frozen pool images
    relax: bool = True
    reference: Optional[float] = None
    low_fidelity: Optional[float] = None


class DifferenceObservable(Section):
    """E(last frame) − E(first frame) of a pool source, e.g. the same geometry in two charge states
    (an ionisation energy): always on the source's own frames."""
    kind: Literal["difference"]
    name: str
    path: str
    reference: Optional[float] = None
    low_fidelity: Optional[float] = None

    @property
    def relax(self) -> bool:
        return False


Observable = Annotated[Union[BarrierObservable, DifferenceObservable], Field(discriminator="kind")]


class EvaluationSettings(Section):
    test_set: Optional[TestSet] = None
    observables: list[Observable] = Field(default_factory=list)


class Campaign(Section):
    name: str
    run_dir: Optional[AnyPath] = None
    seed: Annotated[int, Field(ge=0)] = 0
    device: str = "auto"
    model: ModelSettings
    pool: PoolSettings
    committee: CommitteeSettings = Field(default_factory=CommitteeSettings)
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings)
    acquisition: AcquisitionSettings = Field(default_factory=AcquisitionSettings)
    labeler: LabelerSettings
    dispatch: DispatchSettings = Field(default_factory=LocalDispatchSettings)
    stop: StopSettings
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)

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
            self.run_dir = resolve_path(Path("runs") / self.name, info)
        problems = []   # "dotted.path: message" lines; see campaign_errors.translate
        if self.run_dir.exists() and not self.run_dir.is_dir():
            problems.append(f"run_dir: {self.run_dir} is a file, not a folder; give a folder for the run")
        neb = [s.name for s in self.pool.sources if s.kind == "neb"]
        kinds = {s.name: s.kind for s in self.pool.sources}
        for i, obs in enumerate(self.evaluation.observables):
            where = f"evaluation.observables.{i}.path"
            if obs.kind == "difference":
                if obs.path not in kinds:
                    problems.append(f"{where}: no pool source named {obs.path!r}; a difference is read on the "
                                    f"frames of one source: {', '.join(kinds)}")
                continue
            if obs.path not in kinds:
                problems.append(f"{where}: no pool source named {obs.path!r}; "
                                f"expected one of the neb sources: {', '.join(neb) or '(none)'}")
            elif kinds[obs.path] != "neb":
                problems.append(f"{where}: pool source {obs.path!r} is of kind {kinds[obs.path]!r}, "
                                f"not 'neb'; expected one of the neb sources: {', '.join(neb) or '(none)'}")
        problems += self._acquisition_checks()
        problems += self._readout_checks()
        if self.finetune.kind == "multifidelity" and self.model.training_data is None:
            problems.append("finetune.kind: multifidelity trains the backbone on the base model's own data as well "
                            "as the labels; give model.training_data (its training configurations, with "
                            "energies and forces), or choose kind: readout")
        if self.stop.observable is not None:
            names = [o.name for o in self.evaluation.observables]
            if self.stop.observable.name not in names:
                problems.append(f"stop.observable.name: no observable named {self.stop.observable.name!r}; "
                                f"expected one of evaluation.observables: {', '.join(names) or '(none)'}")
            if self.committee.size < 3:
                problems.append(f"committee.size: stop.observable trusts the committee's spread on the observable "
                                f"only once labels whose energies move with it across the members have tested it, "
                                f"and {self.committee.size} members show no such correlation; use 3 or more "
                                f"(5 or more to measure it well), or remove stop.observable")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _acquisition_checks(self) -> list[str]:
        acq, names = self.acquisition, [o.name for o in self.evaluation.observables]
        known = f"expected names of evaluation.observables: {', '.join(names) or '(none)'}"
        problems = []
        if acq.strategy == "targeted" and not names:
            problems.append("acquisition.strategy: targeted reduces the uncertainty of observables, and "
                            "evaluation.observables is empty; add an observable or choose max_std or diverse")
        if acq.targets is not None and acq.strategy != "targeted":
            problems.append(f"acquisition.targets: only strategy targeted uses targets, the strategy is "
                            f"{acq.strategy!r}; remove targets or set acquisition.strategy: targeted")
        unknown = [t for t in acq.targets or [] if t not in names]
        if unknown and names:
            problems.append(f"acquisition.targets: no observable named {', '.join(map(repr, unknown))}; {known}")
        if acq.repeats and acq.strategy != "targeted":
            problems.append(f"acquisition.repeats: only strategy targeted values a second label of a configuration, "
                            f"the strategy is {acq.strategy!r}; set acquisition.strategy: targeted or remove repeats")
        if acq.repeats and self.labeler.kind not in STOCHASTIC_LABELERS:
            problems.append(f"acquisition.repeats: labeler {self.labeler.kind!r} gives the same label every time it "
                            f"labels a configuration, so a repeat would buy nothing; repeats need a stochastic "
                            f"labeler ({', '.join(STOCHASTIC_LABELERS)}), or remove repeats")
        if acq.cost_aware and acq.strategy == "random":
            problems.append("acquisition.cost_aware: strategy random has no value to divide by a cost; "
                            "choose max_std, diverse or targeted, or remove cost_aware")
        return problems

    def _readout_checks(self) -> list[str]:
        """What needs one parameter space for the whole committee: `targeted` acquisition. `readout: full`
        linearises its posterior there (FullCommittee.posterior_covariance); `delta`'s members each draw
        their own hidden layer, so there is none."""
        if self.acquisition.strategy == "targeted" and self.finetune.kind == "delta":
            return ["acquisition.strategy: targeted needs one posterior over the trained parameters, and "
                    "finetune.kind delta's members each train a correction on their own random hidden layer; "
                    "choose max_std or diverse, or finetune.kind: readout (linear or full)"]
        return []

    def to_dict(self) -> dict:
        """All settings, defaults filled in, paths as absolute strings; JSON-serialisable."""
        return self.model_dump(mode="json")


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
        lines = [line for err in exc.errors() for line in translate(err, Campaign)]
        raise CampaignError("\n".join(f"{label}: {line}" for line in lines)) from None
    return campaign
