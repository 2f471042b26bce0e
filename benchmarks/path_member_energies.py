"""What each committee of a run says along a given path: its members' energies on the path's images.

A relaxed path that left the base model's domain (the iteration line says "path outside the base
model's domain") went where the committee mean's surface is low. This says whether that hole is
one committee's or where the fits head as labels come in: for each run and iteration, the members'
mean, lowest and highest energy at each image, above image 0, beside the base model's (and, with
--oracle, the MoS2 oracle's, which needs CHGNet).

    python benchmarks/path_member_energies.py F/full-auto-targeted-s2-b9x7-25/paths/barrier/iter_008.extxyz \
        F/full-auto-targeted-s{0,1,2}-b9x7-25 --iterations 1 4 7 8 --oracle

Energies in eV. No fit is made: the committees are the runs' own.
"""
from __future__ import annotations

import mace  # noqa: F401  (mace must be imported before e3nn)

import argparse
from pathlib import Path

import numpy as np
import torch
from ase.io import read

from aloop.loop import CampaignRun


def relative(energies: np.ndarray) -> np.ndarray:
    """Energies along the last axis above the first image's."""
    return energies - energies[..., :1]


def row(label: str, values: np.ndarray) -> str:
    return f"{label:40s} " + " ".join(f"{v:+7.2f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="the images (extxyz), e.g. RUN/paths/barrier/iter_008.extxyz")
    parser.add_argument("runs", type=Path, nargs="+", help="run folders whose committees to read")
    parser.add_argument("--iterations", type=int, nargs="+", help="default: every iteration each run has")
    parser.add_argument("--oracle", action="store_true", help="the MoS2 oracle's energies too (needs CHGNet)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.path.is_file():
        parser.error(f"{args.path}: no such file")
    for run in args.runs:
        if not (run / "aloop.db").is_file():
            parser.error(f"{run}: no aloop.db; give a run folder")
    torch.set_num_threads(args.threads)
    images = read(args.path, index=":")
    print(f"{'image':40s} " + " ".join(f"{k:7d}" for k in range(len(images))))
    first = CampaignRun.reopen(args.runs[0])
    print(row("base model", relative(first.backbone.energy_forces(images)[0])))
    if args.oracle:
        from testbeds.mos2.oracle import SyntheticHF
        oracle = SyntheticHF(variant="prism", noise=0.0)
        print(row("oracle (prism, no noise)", relative(np.array([oracle.get_potential_energy(a.copy()) for a in images]))))
    for folder in args.runs:
        run = CampaignRun.reopen(folder)
        inputs = run.frame_inputs(images)
        done = [r["iteration"] for r in run.store.iterations()]
        for it in [i for i in (args.iterations or done) if i in done]:
            members = relative(np.asarray(run.load_committee(it).member_energies(inputs)))
            name = f"{folder.name} it {it}"
            print(row(f"{name}: mean", members.mean(0)))
            print(row(f"{name}: lowest member", members.min(0)))
            print(row(f"{name}: highest member", members.max(0)))


if __name__ == "__main__":
    main()
