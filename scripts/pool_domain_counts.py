"""How many frames of each pool source the base model's domain guard drops, for a campaign.

Generates every pool source exactly as `aloop run` does (same seed, same base model), without a
run folder and without labels, and screens the frames twice: with `pool.min_distance` alone (no
training data) and with the campaign's domain guard (model.training_data, pool.domain). Prints the
floors and, per source and per guard, the frames kept and dropped by reason and pair.

    python scripts/pool_domain_counts.py campaigns/mos2-svac/campaign.yaml [--json OUT.json]
"""
from __future__ import annotations

import mace  # noqa: F401  (mace must be imported before e3nn)

import argparse
import json
import time

from aloop.campaign import load_campaign
from aloop.checks import load_backbone
from aloop.domain import DomainGuard
from aloop.pool import Geometries, generate, read_frames, screen, trajectories


def counts(result, frames) -> dict:
    pairs: dict[str, int] = {}
    for violation in result.violations.values():
        pairs[violation.pair] = pairs.get(violation.pair, 0) + 1
    worst = max(result.violations.items(), key=lambda v: v[1].floor - v[1].distance, default=None)
    return {"frames": len(frames), "kept": len(result.keep),
            "dropped": {why: len(i) for why, i in result.dropped.items() if i}, "pairs": pairs,
            "worst": None if worst is None else f"frame {worst[0]}: {worst[1]}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("campaign")
    parser.add_argument("--json", help="write the counts to this file too")
    args = parser.parse_args()
    start = time.time()
    c = load_campaign(args.campaign)
    if c.model.training_data is None:
        parser.error(f"{args.campaign}: model.training_data is not set; there is no domain to compare with")
    training = read_frames(c.model.training_data, ":", "model.training_data")
    guards = {"min_distance": DomainGuard.from_settings(c.pool.min_distance, c.pool.domain.model_copy(
                  update={"min_distances": {}}), None),
              "domain": DomainGuard.from_settings(c.pool.min_distance, c.pool.domain, training)}
    print(f"domain floors ({len(training)} training configurations): {guards['domain'].describe()}")
    backbone = load_backbone(c)
    seen = {name: Geometries() for name in guards}
    out = {"campaign": c.name, "floors": guards["domain"].floors, "sources": {}}
    for spec in c.pool.sources:
        frames, _ = generate(spec, backbone, c.seed, progress=False)
        out["sources"][spec.name] = {}
        for name, guard in guards.items():
            result = screen(frames, guard, seen[name], drop_repeats=spec.kind != "neb",
                            trajectory=trajectories(frames) if spec.kind == "md" else None)
            out["sources"][spec.name][name] = counts(result, frames)
            print(f"{spec.name} ({spec.kind}), {name}: {json.dumps(out['sources'][spec.name][name], ensure_ascii=False)}")
    out["wall_s"] = round(time.time() - start, 1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
