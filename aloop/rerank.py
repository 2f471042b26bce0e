"""Re-ranking queued QMCPACK jobs with a newer committee: which ones a fresh batch would not choose.

A job queued by an older committee may have lost its reason: the labels that came in since can
have taught the committee what that configuration would have taught it. The strategy draws a fresh
batch of as many jobs as are waiting, with the newest committee, from every candidate it could
choose now (the pool, the waiting jobs, and with `acquisition.repeats` the labelled
configurations). The cut-off is the lowest value in that batch, where a candidate's value is its
own score (σ for max_std and diverse; for targeted the variance reduction its label alone would
bring), per predicted core-hour when the campaign is cost-aware. A job chosen by an older
committee that the fresh batch leaves out and whose value is below the cut-off is cancellable:
RUN/queue/cancel.txt lists it, and `aloop status` shows it. aloop cancels nothing itself; a job's
folder stays, and a result that arrives anyway is ingested like any other.

The fresh batch's best candidates that are not waiting may replace cancellable jobs, as many as the
label budget leaves after counting every waiting job (cancellable ones included: aloop cannot know
whether they will be cancelled).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import write_text_atomic

CANCEL_FILE = "cancel.txt"
NO_JOB_ID = "-"


@dataclass(frozen=True)
class Rerank:
    """`new_scores`: of the waiting jobs, in their order; `cancellable`: positions among the waiting
    jobs; `replacements`: rows of candidates that are not waiting, to queue in their place, best
    first."""

    cutoff: float
    new_scores: np.ndarray
    cancellable: list[int]
    replacements: list[int]


def rerank(scores, value, batch, waiting, stale, budget: int) -> Rerank:
    """Compare the waiting jobs with a fresh batch.

    Rows index every candidate the strategy could choose now (the waiting jobs among them):
    `scores` are each one's own score under the newest committee (acquisition.own_scores), `value`
    what is ranked (the scores, or the scores per core-hour), `batch` the rows of the fresh batch the
    strategy drew, as many as jobs wait; `waiting`: the waiting jobs' rows; `stale`: for each,
    whether an older committee chose it (only those can be cancelled: the newest one chose the
    others just now); `budget`: how many more labels the campaign allows beyond every waiting job.
    """
    scores, value = np.asarray(scores, dtype=float), np.asarray(value, dtype=float)
    batch, waiting = np.asarray(batch, dtype=int), np.asarray(waiting, dtype=int)
    cutoff = float(np.min(value[batch]))
    chosen, queued = set(batch.tolist()), set(waiting.tolist())
    cancellable = [j for j, r in enumerate(waiting.tolist()) if stale[j] and r not in chosen and value[r] < cutoff]
    fresh = [int(r) for r in batch[np.argsort(-value[batch], kind="stable")] if int(r) not in queued]
    return Rerank(cutoff, scores[waiting], cancellable, fresh[:max(0, min(len(cancellable), budget))])


@dataclass(frozen=True)
class CancelLine:
    key: str
    folder: Path
    old_score: float
    new_score: float
    job_id: str          # NO_JOB_ID when the job never recorded one (not started, or another template)
    array_index: int     # its task in submit.sh's array (index.json)


def write_cancel(queue: Path, lines: list[CancelLine], header: str) -> Path | None:
    """RUN/queue/cancel.txt, one line per cancellable job; removed when there is none, so an old
    list never outlives the re-ranking that made it."""
    path = queue / CANCEL_FILE
    if not lines:
        path.unlink(missing_ok=True)
        return None
    text = "".join(f"# {h}\n" for h in header.splitlines())
    text += "# key folder old_score new_score slurm_job_id array_index\n"
    text += "".join(f"{c.key} {c.folder} {c.old_score:.6g} {c.new_score:.6g} {c.job_id} {c.array_index}\n"
                    for c in lines)
    write_text_atomic(path, text)
    return path


def read_cancel(queue: Path) -> list[CancelLine]:
    path = queue / CANCEL_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, rest = line.split(maxsplit=1)
            folder, old, new, job_id, index = rest.rsplit(maxsplit=4)   # a folder's name may hold spaces
            out.append(CancelLine(key, Path(folder), float(old), float(new), job_id, int(index)))
    return out
