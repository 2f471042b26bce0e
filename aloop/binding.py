"""What a run folder is bound to: the campaign fields that define the data in it.

A run's labels, candidates and cached features are only comparable if they were made the same
way. The folder remembers, per field: the base model (file digest, head), the labeler (kind and
every setting, files by digest), each pool source once its candidates are in the pool (settings,
files by digest), pool.min_distance, the domain guard (pool.domain with model.training_data, when
either is set), the test set (digest and keys) and the units. A resume whose campaign differs in
any of them is refused with the list of differences, unless the user accepts each one where mixing
is valid (`aloop run --accept-changes FIELD`).

The labeler, test set and units define labels and their errors, so they bind only once the run
holds a label: until then a corrected labeler (say, a spin that was impossible) simply replaces the
old one. The model binds as soon as it has loaded (features and generated frames come from it),
and cannot be accepted: the run's candidates and cache would no longer match it.
"""
from __future__ import annotations

import json
from pathlib import Path

from .files import file_digest

UNITS = {"energy": "eV per configuration", "length": "Å", "forces": "eV/Å"}
SOURCE = "pool.source."
LABEL_FIELDS = ("labeler", "test_set", "units")
NOT_ACCEPTABLE = {"model": "the run's candidates and cached features come from the old model",
                  "units": "labels in two units cannot be fitted together"}
# labeler settings that change how long a job runs, how it is submitted or how its outputs are read:
# the error bar of a label, not the quantity it estimates
NOT_BINDING = {"batch_template", "blocks", "warmup_blocks", "equilibration", "min_blocks"}


class CampaignChanged(ValueError):
    """A resume whose campaign would mix data made in two ways; the message lists each difference."""


def _plain(value):
    """Settings as JSON values; a file becomes its digest, so moving it is no change but editing is."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k not in NOT_BINDING}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return f"sha256:{file_digest(value)}" if value.is_file() else str(value)
    return value


def of_campaign(campaign, model_digest: str) -> dict:
    """The fields that define a run's data, as this campaign sets them."""
    test = campaign.evaluation.test_set
    fields = {"model": {"sha256": model_digest, "head": campaign.model.head},
              "labeler": _plain(campaign.labeler.model_dump()),
              "pool.min_distance": campaign.pool.min_distance,
              "test_set": None if test is None else _plain(test.model_dump()),
              "units": UNITS}
    domain = campaign.pool.domain
    if campaign.model.training_data is not None or domain.min_distances:
        # only when it changes what the pool holds, so runs made before the guard existed stay bound
        fields["pool.domain"] = {"training_data": _plain(campaign.model.training_data), **_plain(domain.model_dump())}
    for spec in campaign.pool.sources:
        fields[SOURCE + spec.name] = _plain(spec.model_dump(exclude={"name"}))
    return fields


def changes(bound: dict, now: dict, labelled: bool) -> list[str]:
    """The fields whose new value would mix data made in two ways."""
    out = []
    for field in sorted(set(bound) | set(now)):
        if bound.get(field) == now.get(field):
            continue
        if field in LABEL_FIELDS and not labelled:
            continue    # no label was made with the old value
        if field not in bound and not labelled:
            continue    # a source added before any selection: the pool simply grows
        out.append(field)
    return out


def _detail(before, after, where: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict) and before.get("kind") != after.get("kind"):
        before, after = before.get("kind"), after.get("kind")   # another kind: its settings do not compare
        where = f"{where}.kind" if where else "kind"
    if isinstance(before, dict) and isinstance(after, dict):
        return [line for k in sorted(set(before) | set(after))
                for line in _detail(before.get(k), after.get(k), f"{where}.{k}" if where else k)]
    if before == after:
        return []
    return [f"{where + ': ' if where else ''}{json.dumps(before, ensure_ascii=False)} in the run, "
            f"{json.dumps(after, ensure_ascii=False)} now"]


def describe(field: str, before, after) -> str:
    if field.startswith(SOURCE) and before is None:
        return f"{field}: added; the run's pool does not hold it"
    if field.startswith(SOURCE) and after is None:
        return f"{field}: removed from the campaign; its candidates stay in the run's pool"
    return f"{field}: " + "; ".join(_detail(before, after))


def refusal(run_dir: Path, bound: dict, now: dict, fields: list[str]) -> CampaignChanged:
    lines = [f"{run_dir}: the campaign differs from the one this run folder's data was made with:"]
    lines += [f"  - {describe(f, bound.get(f), now.get(f))}" for f in fields]
    acceptable = [f for f in fields if f not in NOT_ACCEPTABLE]
    lines.append("Either give the campaign a new run_dir, or `aloop run CAMPAIGN --run-dir NEW_FOLDER` (a fresh start), or")
    if acceptable:
        flags = " ".join(f"--accept-changes {f}" for f in acceptable)
        lines.append(f"  where mixing the old and new data is valid: aloop run CAMPAIGN {flags}")
    for f in fields:
        if f in NOT_ACCEPTABLE:
            lines.append(f"  restore {f} as it was ({NOT_ACCEPTABLE[f]})")
    return CampaignChanged("\n".join(lines))


def check_accepted(accepted, now: dict) -> None:
    """ValueError for an --accept-changes name that is no field of the campaign."""
    valid = [f for f in now if f not in NOT_ACCEPTABLE]
    for field in accepted:
        if field not in valid:
            raise ValueError(f"--accept-changes {field}: not a field that can be accepted; "
                             f"expected one of: {', '.join(valid)}")


def summary(bound: dict) -> list[str]:
    """The binding in a few lines, for `aloop status`."""
    if not bound:
        return ["bound to: nothing yet (the base model binds when it first loads)"]
    lines = ["bound to:"]
    for field, value in sorted(bound.items()):
        text = json.dumps(value, ensure_ascii=False)
        lines.append(f"  {field}: {text if len(text) <= 150 else text[:147] + '...'}")
    return lines
