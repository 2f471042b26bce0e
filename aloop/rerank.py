"""Re-ranking queued QMCPACK jobs with a newer committee: which ones a fresh batch would not choose.

A job queued by an older committee may have lost its reason: the labels that came in since can
have taught the committee what that configuration would have taught it. Each waiting job is scored
again with the newest committee (the strategy's own score: the committee σ for max_std and
diverse), and compared with the cut-off, the lowest score in a fresh batch of as many jobs drawn by
the strategy from every unlabelled candidate (the pool and the waiting jobs together). A job chosen
by an older committee that scores below the cut-off is cancellable: RUN/queue/cancel.txt lists it,
and `aloop status` shows it. aloop cancels nothing itself; a job's folder stays, and a result that
arrives anyway is ingested like any other.

The fresh batch's best candidates still in the pool may replace cancellable jobs, as many as the
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
    jobs; `replacements`: rows of pool candidates to queue in their place, best first."""

    cutoff: float
    new_scores: np.ndarray
    cancellable: list[int]
    replacements: list[int]


def rerank(strategy, std, descriptors, waiting, stale, budget: int, *, rng: np.random.Generator) -> Rerank:
    """Re-score the waiting jobs.

    `std`, `descriptors`: the newest committee's σ and the features of every unlabelled candidate
    (rows: the pool and the waiting jobs); `waiting`: the waiting jobs' rows; `stale`: for each, whether
    an older committee chose it (only those can be cancelled: the newest one chose the others just
    now); `budget`: how many more labels the campaign allows beyond every waiting job.
    """
    std, waiting = np.asarray(std, dtype=float), np.asarray(waiting, dtype=int)
    rows, scores = strategy(std, descriptors, len(waiting), rng=rng)
    cutoff = float(np.min(scores))
    new = std[waiting]
    cancellable = [j for j in range(len(waiting)) if stale[j] and new[j] < cutoff]
    queued = set(waiting.tolist())
    fresh = [int(r) for r in np.asarray(rows)[np.argsort(-np.asarray(scores), kind="stable")] if int(r) not in queued]
    return Rerank(cutoff, new, cancellable, fresh[:max(0, min(len(cancellable), budget))])


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
    text += "# key folder old_score_eV new_score_eV slurm_job_id array_index\n"
    text += "".join(f"{c.key} {c.folder} {c.old_score:.6f} {c.new_score:.6f} {c.job_id} {c.array_index}\n"
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
