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
import shutil
from dataclasses import dataclass
from pathlib import Path

from .campaign import QMCPACKLabeler as QMCPACKSettings
from .labelers import DONE
from .labelers.qmcpack import EXIT_STATUS, INCONSISTENT, MANIFEST, QMCPACKLabeler, differences
from .labelers.qmcpack_results import JobProblem
from .store import LABELLED, RunStore

LABEL_PREFIX = "cand"   # job keys are loop.label_key(candidate id): cand0000012


@dataclass
class Outcome:
    key: str
    state: str    # labelled | already labelled | pending | failed | needs-more-blocks | inconsistent | unknown
    detail: str


def candidate_id(key: str) -> int:
    digits = key.removeprefix(LABEL_PREFIX)
    if not digits.isdigit():
        raise ValueError(f"{key!r} is not a job key (expected {LABEL_PREFIX} and the candidate number)")
    return int(digits)


def open_queue(run_dir: str | Path) -> tuple[RunStore, QMCPACKLabeler]:
    """The run's store and its QMCPACK labeler, from the campaign recorded in the run."""
    run_dir = Path(run_dir)
    if not (run_dir / "aloop.db").exists():
        raise ValueError(f"{run_dir}: not a run directory (no aloop.db); give the run_dir of a campaign")
    store = RunStore(run_dir)
    campaign = store.get_meta("campaign") or {}
    section = campaign.get("labeler", {})
    if section.get("kind") != "qmcpack":
        raise ValueError(f"{run_dir}: this run's labeler is {section.get('kind')!r}, which computes its labels itself; "
                         "only labeler kind 'qmcpack' has results to ingest")
    settings = QMCPACKSettings.model_validate(section, context={"base_dir": str(run_dir)})
    return store, QMCPACKLabeler(run_dir / "queue", settings, campaign=campaign.get("name", run_dir.name))


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
            label = labeler.evaluate(key, results)
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
        if reference is None:
            reference = (key, label.provenance["consistency"])
        outcomes.append(Outcome(key, "labelled", f"{label.energy:.6f} ± {label.sigma:.6f} eV"))
    labeler.write_queue_files()
    return outcomes


def requeue(run_dir: str | Path, keys=()) -> list[str]:
    """Write fresh job folders for jobs that gave no label (all such jobs when `keys` is empty).
    The old folder is kept as <key>.attempt<N>; the candidate waits for its label again."""
    store, labeler = open_queue(run_dir)
    if not keys:
        keys = [k for k in labeler.keys() if (labeler.record_of(k) or {}).get("state", DONE) != DONE]
    for key in keys:
        if labeler.manifest(key) is None:
            raise ValueError(f"no job {key} in {labeler.workdir}")
        cid = candidate_id(key)
        if store.db.get(id=cid).state == LABELLED:
            raise ValueError(f"{key} is labelled; a labelled job is never re-queued")
        folder = labeler.workdir / key
        attempt = 1
        while folder.with_name(f"{key}.attempt{attempt}").exists():
            attempt += 1
        old = folder.with_name(f"{key}.attempt{attempt}")
        shutil.move(folder, old)
        try:
            labeler.submit(key, store.atoms([cid])[0])
        except Exception:
            shutil.move(old, folder)      # the job stays as it was when the new one cannot be written
            raise
        store.requeue(cid)
    labeler.write_queue_files()
    return list(keys)


def summary(outcomes: list[Outcome]) -> str:
    lines = [f"{o.key}  {o.state}: {o.detail}" for o in outcomes]
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.state] = counts.get(o.state, 0) + 1
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items()) or "no jobs")
    return "\n".join(lines)
