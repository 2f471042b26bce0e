"""Where the expensive work of a run executes: here, in order (`local`), or on Parsl executors (`parsl`).

Two kinds of work leave the main process under `parsl`:

- labels of labelers that compute here (pyscf, pyqmc, ase): one task per configuration on the label
  executor. Each task returns the job record `LocalLabeler` would write; the main process writes it
  to the labeler's work folder as soon as the task finishes, so a killed run keeps every finished
  label and a resumed one does not compute it again.
- backbone features of new pool candidates: shards of `shard_size` configurations on the score
  executor (a GPU partition, say). A shard loads the model file in its worker once and returns
  the features as float64 arrays.

A task that fails for any reason other than a LabelError (its worker died, the node went away) is
retried `retries` times by Parsl; after that its candidate is reported FAILED with the error as the
reason. Committee predictions stay in the main process: on cached features they are one matrix
product.

Worker-side objects (labelers, backbones) are built from settings inside the worker and kept per
thread: a ThreadPoolExecutor shares one process, and neither a MACE model with forward hooks nor an
ASE calculator may be used by two threads at once; feature shards in one process take turns.
"""
from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator
from concurrent.futures import as_completed
from functools import lru_cache
from pathlib import Path

from tqdm.auto import tqdm

from .labelers.base import FAILED, LocalLabeler
from .rundir import RunDir

PARSL_DEFAULT_RUN_DIR = "runinfo"   # parsl.config.Config's own default for run_dir


class DispatchError(RuntimeError):
    """Work sent to the executors came back failed in a way no candidate is to blame for."""


# --- the user's Parsl config file ------------------------------------------------------------

def load_parsl_config(path: str | Path):
    """A fresh `config` object from the user's Parsl file (executors cannot be started twice, so every
    DataFlowKernel needs its own); ValueError naming the file and what it must define."""
    from parsl.config import Config

    path = Path(path)
    module_spec = importlib.util.spec_from_file_location("aloop_parsl_config", path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"{path}: not a Python file; expected a file defining config = parsl.config.Config(...)")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # the user's file may raise anything; say which file did
        raise ValueError(f"{path}: running this Parsl config file failed: {type(err).__name__}: {err}") from err
    config = getattr(module, "config", None)
    if not isinstance(config, Config):
        got = "nothing" if config is None else type(config).__name__
        raise ValueError(f"{path}: expected a variable `config = parsl.config.Config(...)`, got {got}")
    return config


@lru_cache(maxsize=8)
def _labels_of(path: str, mtime_ns: int) -> tuple[str, ...]:
    return tuple(executor.label for executor in load_parsl_config(path).executors)


def executor_labels(path: str | Path) -> tuple[str, ...]:
    """The executor labels a Parsl config file defines (read once per version of the file)."""
    path = Path(path)
    return _labels_of(str(path), path.stat().st_mtime_ns)


def check_executor(label: str | None, labels: tuple[str, ...], path: Path) -> None:
    if label is not None and label not in labels:
        raise ValueError(f"no executor labelled {label!r} in {path}; its executors: {', '.join(labels)}")


# --- what runs in a worker --------------------------------------------------------------------

_WORKER = threading.local()
# Process-wide state that threads of one worker must not change under each other: loading a MACE file
# (e3nn patches torch while it unpickles) and torch's default dtype (Backbone.batches sets it).
_PROCESS_STATE = threading.RLock()


def _per_thread(kind: str, key: tuple, build):
    """One object of `kind` per worker thread, rebuilt when its settings change."""
    held = getattr(_WORKER, kind, None)
    if held is None or held[0] != key:
        with _PROCESS_STATE:
            held = (key, build())
        setattr(_WORKER, kind, held)
    return held[1]


def label_task(labeler_spec, run_dir: str, campaign: str, atoms) -> dict:
    """The job record of one configuration, computed by a labeler built from the campaign's settings."""
    from .labelers import make_labeler

    key = (labeler_spec.model_dump_json(), run_dir, campaign)
    labeler = _per_thread("labeler", key, lambda: make_labeler(labeler_spec, run_dir, campaign))
    return labeler.job_record(atoms)


def feature_task(model_path: str, digest: str, device: str, head: str | None, atoms_list):
    """Backbone features of one shard, from the run's model file (checked to be the same file)."""
    from .backbone import Backbone
    from .files import file_digest

    def build():
        found = file_digest(model_path)
        if found != digest:
            raise DispatchError(f"{model_path}: on this worker the model file has digest {found}, the run's model "
                                f"has {digest}; the workers must see the same model file as the run")
        return Backbone.from_file(model_path, device=device, head=head)

    with _PROCESS_STATE:
        backbone = _per_thread("backbone", (model_path, digest, device, head), build)
        return backbone.features(atoms_list)


# --- the two dispatchers ----------------------------------------------------------------------

class LocalDispatcher:
    """Everything in this process, in order; an exception stops the run, as it always did."""

    feature_block = 4096   # candidates whose atoms are in memory at once while features are computed

    def labels(self, labeler: LocalLabeler, labeler_spec, jobs, progress: bool = False) -> Iterator[tuple[str, dict]]:
        for key, atoms in tqdm(jobs, desc=f"labelling ({labeler.name})", unit="cfg", disable=not progress):
            yield key, labeler.job_record(atoms)

    def features(self, backbone, atoms_list, progress: bool = False):
        yield list(range(len(atoms_list))), backbone.features(atoms_list, progress=progress)

    def close(self) -> None:
        """Nothing to release."""


class ParslDispatcher:
    """Labels and feature shards as Parsl apps on the executors the campaign's `dispatch:` names.

    The DataFlowKernel starts on first use (so a run with nothing to compute starts no Slurm job) and
    is shut down by `close()`; the next use reads the config file again.
    """

    def __init__(self, spec, run_dir: Path, campaign: str, model_path: Path, model_digest: str, head: str | None,
                 device: str):
        self.spec = spec
        self.run_dir, self.campaign = str(run_dir), campaign
        self.parsl_dir = RunDir(run_dir).parsl
        self.model = (str(model_path), model_digest, device, head)
        self._dfk = None

    @property
    def feature_block(self) -> int:
        """Candidates handed to the executors at once: 64 shards, enough to keep a cluster's workers
        busy while only that many candidates' atoms are in memory here."""
        return 64 * self.spec.shard_size

    @property
    def running(self) -> bool:
        """Whether executors (and any batch jobs of theirs) are up."""
        return self._dfk is not None

    def _apps(self):
        if self._dfk is None:
            from parsl import python_app
            from parsl.dataflow.dflow import DataFlowKernel

            path = self.spec.config
            config = load_parsl_config(path)
            labels = tuple(executor.label for executor in config.executors)
            for field in ("label_executor", "score_executor"):
                try:
                    check_executor(getattr(self.spec, field), labels, path)
                except ValueError as err:
                    raise ValueError(f"dispatch.{field}: {err}") from None
            config.retries = self.spec.retries
            if config.run_dir == PARSL_DEFAULT_RUN_DIR:   # keep Parsl's logs with the run, not in the cwd
                config.run_dir = str(self.parsl_dir)
            self._dfk = DataFlowKernel(config)

            def app(function, label):
                return python_app(function, data_flow_kernel=self._dfk, executors="all" if label is None else [label])

            self._label_app = app(label_task, self.spec.label_executor)
            self._feature_app = app(feature_task, self.spec.score_executor)
        return self._label_app, self._feature_app

    def _failure(self, err: BaseException) -> str:
        return f"{type(err).__name__}: {err} (dispatch: parsl, after {self.spec.retries} retries)"

    def labels(self, labeler: LocalLabeler, labeler_spec, jobs, progress: bool = False) -> Iterator[tuple[str, dict]]:
        """(key, record) as tasks finish. A task that failed beyond a LabelError gives a FAILED record
        with its error, unless every task failed so: that is the workers' setup, not the candidates,
        and DispatchError leaves them selected for the next run."""
        jobs = list(jobs)
        if not jobs:
            return
        label_app, _ = self._apps()
        futures = {label_app(labeler_spec, self.run_dir, self.campaign, atoms): key for key, atoms in jobs}
        held: list[tuple[str, dict]] = []   # failures, until one task shows that the workers can work
        any_ok = False
        with tqdm(total=len(futures), desc=f"labelling ({labeler.name}, parsl)", unit="cfg",
                  disable=not progress) as bar:
            for future in as_completed(futures):
                bar.update()
                key = futures[future]
                try:
                    record = future.result()
                except Exception as err:  # a lost worker, a dead node, a broken environment: Parsl's to report
                    failure = (key, {"state": FAILED, "reason": self._failure(err)})
                    if any_ok:
                        yield failure
                    else:
                        held.append(failure)
                    continue
                if not any_ok:
                    any_ok = True
                    yield from held
                yield key, record
        if not any_ok:
            raise DispatchError(f"all {len(held)} label tasks failed on the Parsl executors, none for a reason of "
                                f"its configuration; first: {held[0][1]['reason']}. Check that the workers run "
                                f"aloop's environment and see the campaign's input files (dispatch.config: "
                                f"{self.spec.config}); the candidates stay selected and the next run submits them "
                                "again")

    def features(self, backbone, atoms_list, progress: bool = False):
        """(positions in atoms_list, Features) per shard, as shards finish."""
        _, feature_app = self._apps()
        size = self.spec.shard_size
        futures = {feature_app(*self.model, atoms_list[i:i + size]): list(range(i, min(i + size, len(atoms_list))))
                   for i in range(0, len(atoms_list), size)}
        with tqdm(total=len(atoms_list), desc="backbone features (parsl)", unit="cfg", disable=not progress) as bar:
            for future in as_completed(futures):
                positions = futures[future]
                try:
                    feats = future.result()
                except Exception as err:  # as for labels: whatever the executor reports
                    raise DispatchError(f"a feature shard of {len(positions)} candidates failed: "
                                        f"{self._failure(err)}") from err
                bar.update(len(positions))
                yield positions, feats

    def close(self) -> None:
        if self._dfk is not None:
            dfk, self._dfk = self._dfk, None
            dfk.cleanup()


def make_dispatcher(campaign, run_dir: Path, model_digest: str):
    """The dispatcher a campaign's `dispatch:` section describes."""
    spec = campaign.dispatch
    if spec.kind == "local":
        return LocalDispatcher()
    return ParslDispatcher(spec, run_dir, campaign.name, campaign.model.path, model_digest, campaign.model.head,
                           campaign.device)
