"""`aloop ingest` and `aloop requeue`: the results of queued QMCPACK jobs into the run's labels.

Each job is looked at in the run's queue folder, or in the folders given (outputs copied back from
a cluster: a job folder, or a folder of job folders, named by the job's key). A job becomes a label
only when its outputs give a trustworthy number and its settings agree with the labels already in
the run; otherwise it gets a state and a reason (failed, needs-more-blocks, inconsistent) that
`aloop status` shows, and can be run again and re-ingested, or re-queued. Ingesting the same
results twice changes nothing, and nothing already labelled is touched.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import TypeAdapter

from .campaign_labelers import LabelerSettings
from .labelers import DONE, Labeler, make_labeler
from .labelers.qmcpack import EXIT_STATUS, INCONSISTENT, MANIFEST, QMCPACKLabeler, differences
from .labelers.qmcpack_results import JobProblem
from .rundir import candidate_id, label_key
from .store import FAILED, LABELLED, RunStore


@dataclass
class Outcome:
    key: str
    state: str    # labelled | already labelled | pending | failed | needs-more-blocks | inconsistent | unknown
    detail: str


def open_labeler(run_dir: str | Path) -> tuple[RunStore, Labeler]:
    """The run's store and its labeler, built from the campaign recorded in the run."""
    store = RunStore.existing(run_dir)
    campaign = store.get_meta("campaign") or {}
    spec = TypeAdapter(LabelerSettings).validate_python(campaign.get("labeler", {}),
                                                        context={"base_dir": str(store.run_dir)})
    return store, make_labeler(spec, store.run_dir, campaign.get("name", store.run_dir.name))


def open_queue(run_dir: str | Path) -> tuple[RunStore, QMCPACKLabeler]:
    """The run's store and its QMCPACK labeler; ValueError for a run whose labeler computes itself."""
    store, labeler = open_labeler(run_dir)
    if not isinstance(labeler, QMCPACKLabeler):
        raise ValueError(f"{store.run_dir}: this run's labeler is {labeler.name!r}, which computes its labels itself; "
                         "only labeler kind 'qmcpack' has results to ingest")
    return store, labeler


def _results_folders(labeler: QMCPACKLabeler, paths) -> list[tuple[str, Path, bool]]:
    """(key, folder with the outputs, given explicitly) for every job to look at."""
    known = labeler.keys()
    if not paths:
        return [(key, labeler.workdir / key, False) for key in known]
    found = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise ValueError(f"{path}: not a folder; give job folders, or folders holding job folders")
        if (path / MANIFEST).exists():
            found.append((json.loads((path / MANIFEST).read_text())["key"], path, True))
        elif path.name in known:
            found.append((path.name, path, True))
        else:
            inner = [(p.name, p, True) for p in sorted(path.iterdir()) if p.is_dir() and p.name in known]
            if not inner:
                raise ValueError(f"{path}: neither a job folder (no {MANIFEST}, not named like a queued job) "
                                 f"nor a folder holding job folders of {labeler.workdir}")
            found += inner
    return found


def _reference(store: RunStore) -> tuple[str, dict] | None:
    """The settings of the labels already in the run: (key, consistency block) of the first."""
    for row in store.rows(state=LABELLED):
        provenance = row.data.get("provenance", {})
        if "consistency" in provenance:
            return provenance.get("key", f"candidate {row.id}"), provenance["consistency"]
    return None


def _check_consistent(labeler: QMCPACKLabeler, key: str, results: Path, reference) -> None:
    manifest = labeler.manifest(key)
    copied = results / MANIFEST
    if results != labeler.workdir / key and copied.exists() and json.loads(copied.read_text()) != manifest:
        raise JobProblem(INCONSISTENT, f"{copied} differs from {labeler.workdir / key / MANIFEST}: these outputs "
                                       "belong to another version of the job")
    if reference is not None:
        diffs = differences(reference[1], manifest["consistency"])
        if diffs:
            raise JobProblem(INCONSISTENT, f"settings differ from the labels already in the run (first: {reference[0]}): "
                                           + "; ".join(diffs))


def ingest(run_dir: str | Path, paths=()) -> list[Outcome]:
    """Turn finished jobs into labels; one Outcome per job looked at."""
    store, labeler = open_queue(run_dir)
    reference = _reference(store)
    # whose results each set of DMC blocks is: one job's outputs copied into another's folder must
    # not label a second configuration
    blocks = {row.data["provenance"]["blocks_sha256"]: row.data["provenance"].get("key", f"candidate {row.id}")
              for row in store.rows(state=LABELLED) if "blocks_sha256" in row.data.get("provenance", {})}
    outcomes = []
    for key, results, explicit in _results_folders(labeler, paths):
        if labeler.manifest(key) is None:
            outcomes.append(Outcome(key, "unknown", f"no job {key} in {labeler.workdir}; nothing ingested"))
            continue
        cid = candidate_id(key)
        row = store.db.get(id=cid)
        if row.state == LABELLED:
            outcomes.append(Outcome(key, "already labelled", "kept as it is"))
            continue
        if not explicit and not (results / EXIT_STATUS).exists():
            outcomes.append(Outcome(key, "pending", f"not finished (no {EXIT_STATUS}); if it was killed, "
                                                    f"`aloop ingest {run_dir} {results}` evaluates it as it is"))
            continue
        try:
            _check_consistent(labeler, key, results, reference)
            labeler.check_inputs(key, results)
            label = labeler.evaluate(key, results)
            twin = blocks.get(label.provenance["blocks_sha256"])
            if twin is not None:
                raise JobProblem(INCONSISTENT, f"its DMC blocks are identical to those of {twin}, a label of another "
                                               "configuration: outputs copied from another job's folder?")
        except JobProblem as problem:
            # file names relative to the job folder: `aloop status` shows the first 150 characters
            reason = problem.reason.replace(f"{results}/", "").replace(f"{results}: ", "")
            labeler.record(key, {"state": problem.state, "reason": reason, "results": str(results)})
            store.mark_failed(cid, f"{problem.state}: {reason}")
            outcomes.append(Outcome(key, problem.state, reason))
            continue
        labeler.record(key, {"state": DONE, "label": label.to_json(), "results": str(results)})
        store.add_label(cid, label.energy, label.sigma, {**label.provenance, "labeler": labeler.name, "key": key,
                                                         "iteration": row.get("iteration")})
        blocks[label.provenance["blocks_sha256"]] = key
        if reference is None:
            reference = (key, label.provenance["consistency"])
        outcomes.append(Outcome(key, "labelled", f"{label.energy:.6f} ± {label.sigma:.6f} eV"))
    labeler.write_queue_files()
    return outcomes


def requeue(run_dir: str | Path, keys=()) -> list[str]:
    """`aloop requeue`: failed jobs (those of `keys`, default every one) to be labelled again."""
    store, labeler = open_labeler(run_dir)
    return retry(store, labeler, keys)


def retry(store: RunStore, labeler: Labeler, keys=()) -> list[str]:
    """Failed candidates back to selected, each old attempt set aside: a labeler that computes here
    labels them at the next `aloop run`, the QMCPACK queue gets fresh job folders now."""
    keys = list(keys) or [label_key(cid) for cid in store.ids(state=FAILED)]
    for key in keys:
        cid = candidate_id(key)
        if not store.count(id=cid):
            raise ValueError(f"{key}: no such candidate in {store.run_dir}")
        if store.db.get(id=cid).state == LABELLED:
            raise ValueError(f"{key} is labelled; a labelled job is never re-queued")
        if isinstance(labeler, QMCPACKLabeler):
            labeler.retry(key, store.atoms([cid])[0])
        else:
            labeler.retry(key)
        store.requeue(cid)
    if isinstance(labeler, QMCPACKLabeler):
        labeler.write_queue_files()
    return keys


def summary(outcomes: list[Outcome]) -> str:
    lines = [f"{o.key}  {o.state}: {o.detail}" for o in outcomes]
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.state] = counts.get(o.state, 0) + 1
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items()) or "no jobs")
    return "\n".join(lines)
