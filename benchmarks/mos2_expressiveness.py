"""What the readout's features can express of the MoS2 oracle's correction, part by part.

The labels of a finished run (benchmarks/data_efficiency.py --out OUT) are E_HF = E_base + the
correction the fine-tune must learn. On the synthetic oracle that correction is known in parts:

- the base model's own error against its teacher, E_CHGNet-0.3.0 − E_base;
- the change of functional, E_CHGNet-r2SCAN − E_CHGNet-0.3.0 (oracle v2 only);
- the oracle's added term ΔE (the prism term, or the contact term of the first oracle);
- all of it, E_HF − E_base without the noise.

Each part is fitted alone, on the run's labelled configurations at a checkpoint, by ridge regression
on the features the linear class trains (its θ: every readout's last linear map and E0), and on those
features widened by H hidden units of the MLP readout with fixed random inner weights (what a wider
readout, or the `delta` class's correction network, would add). The ridge is the one with the
smallest leave-one-out error, so each number is the best these features do on labels they have not
seen. Printed per part:

- the leave-one-out RMSE over the labels and the RMSE on the test set (meV per cell);
- the leave-one-out residual at the labelled end points and saddles of the run's own relaxed paths,
  the labels that decide the tracked barrier;
- the fitted part's error along the oracle's relaxed CI-NEB images (saddle minus initial image, eV).

No prior, committee or force term: this is a property of the features and the labels, the most any
fit of this class can reach. With --base, the features (and the parts' "base") are another base
model's, on the same labelled configurations: a candidate base model judged before any campaign
is run on it.

    python benchmarks/mos2_expressiveness.py --out OUT [--runs targeted-s0 ...] [--checkpoints 100 150]
        [--widths 0 128] [--oracle prism|contact] [--base MODEL] [--json FILE]
"""
from __future__ import annotations

import mace  # noqa: F401  (mace must be imported before e3nn)

import argparse
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from ase.io import read

from aloop.arrays import ReadoutInputs
from aloop.backbone import Backbone
from aloop.delta import DeltaReadout
from aloop.loop import CampaignRun
from aloop.store import LABELLED
from data_efficiency import REFERENCES
from mos2_fit_limits import RUN_NAME, add_run_options, run_names
from testbeds.mos2.oracle import VARIANTS, SyntheticHF, contact_correction
from testbeds.mos2.prism import prism_correction

RIDGES = np.logspace(-6, 2, 17)   # relative to the mean squared (standardised) feature, per label
WIDTH_SEED = 20261203             # the random inner weights: one fixed draw, the same for every run


def oracle_energies(atoms_list, variant: str) -> dict[str, np.ndarray]:
    """The oracle's pieces, noise-free (eV per cell): its teacher CHGNet 0.3.0, the variant's own
    CHGNet and the variant's added term."""
    p = VARIANTS[variant]
    teacher = np.array([SyntheticHF.low_fidelity(a, "0.3.0")[0] for a in atoms_list])
    high = teacher if p["chgnet"] == "0.3.0" else np.array([SyntheticHF.low_fidelity(a, p["chgnet"])[0]
                                                            for a in atoms_list])
    if variant == "contact":
        term = np.array([contact_correction(a, p["amplitude"], p["r_c"], p["width"])[0] for a in atoms_list])
    else:
        term = np.array([prism_correction(a, p["amplitude"], p["rho_in"], p["rho_out"], tuple(p["mo_mo"]),
                                          tuple(p["reach"]), tuple(p["partner"]))[0] for a in atoms_list])
    return {"teacher": teacher, "high": high, "term": term}


def correction_parts(oracle: dict[str, np.ndarray], base: np.ndarray, variant: str) -> dict[str, np.ndarray]:
    """The oracle's correction to the base model's energies `base`, in its parts (eV per cell)."""
    parts = {"base model's own error": oracle["teacher"] - base}
    if VARIANTS[variant]["chgnet"] != "0.3.0":
        parts["functional"] = oracle["high"] - oracle["teacher"]
    parts[f"{variant} term"] = oracle["term"]
    parts["all"] = oracle["high"] + oracle["term"] - base
    return parts


class Design:
    """The linear class's features of a set of configurations, widened by H random hidden units."""

    def __init__(self, readout: DeltaReadout, width: int):
        self.readout, self.width = readout, width
        rng = np.random.default_rng(WIDTH_SEED)
        self.inner = torch.as_tensor(rng.standard_normal((readout.d, max(width, 1))))

    def __call__(self, inputs: ReadoutInputs) -> np.ndarray:
        a = inputs.features.a
        if self.width == 0:
            return a
        r = self.readout
        node = r._scale * r.act(torch.as_tensor(inputs.h[0]) @ self.inner / np.sqrt(r.d)) / np.sqrt(r.m + self.width)
        n = inputs.features.n_atoms
        g = np.zeros((len(n), self.width))
        np.add.at(g, np.repeat(np.arange(len(n)), n), node.numpy())
        return np.hstack([a, g])


def ridge_fit(x: np.ndarray, y: np.ndarray, free: np.ndarray):
    """(coefficients, leave-one-out residuals) of the ridge with the smallest leave-one-out RMSE;
    columns in `free` (the per-element energies) are not shrunk."""
    scale = np.sqrt((x**2).mean(0)) + 1e-12
    xs = x / scale
    penalty = np.where(free, 0.0, 1.0)
    best = None
    for ridge in RIDGES:
        a = xs.T @ xs + ridge * len(xs) * np.diag(penalty)
        inverse_xt = np.linalg.solve(a, xs.T)
        coef = inverse_xt @ y
        hat = np.einsum("ij,ji->i", xs, inverse_xt)
        loo = (xs @ coef - y) / (1 - hat)
        if best is None or np.mean(loo**2) < np.mean(best[1] ** 2):
            best = (coef / scale, loo)
    return best


def measure(out: Path, name: str, checkpoints, widths, variant: str, test, images, oracle: dict,
            base: Backbone | None = None) -> list[dict]:
    """`oracle`: `oracle_energies` of `test` and of `images` (the same for every run)."""
    strategy, seed = RUN_NAME.match(name)["strategy"], int(RUN_NAME.match(name)["seed"])
    if not (out / name / "aloop.db").exists():   # a CampaignRun would start a new run there
        raise SystemExit(f"{out / name}: no run there (aloop.db missing)")
    run = CampaignRun.reopen(out / name)
    backbone = base or run.backbone
    readout = DeltaReadout(backbone, 1)   # for the MLP readout's inputs, activation and widths
    records = {r["n_labels"]: r for r in run.store.iterations() if r["n_labels"] in checkpoints}
    if not records:
        raise SystemExit(f"{out / name}: passed none of the checkpoints {', '.join(map(str, checkpoints))}")
    last = max(r["iteration"] for r in records.values())
    labelled = [r for r in run.store.rows(state=LABELLED) if r.iteration <= last]
    iterations = np.array([r.iteration for r in labelled])
    on_path = np.array([r.source.startswith("path:") for r in labelled])
    frames = run.store.atoms([r.id for r in labelled])
    inputs = {"labels": readout.inputs(frames), "test": readout.inputs(test), "images": readout.inputs(images)}
    oracle = oracle | {"labels": oracle_energies(frames, variant)}
    parts = {where: correction_parts(oracle[where], inputs[where].features.energies(backbone.theta0), variant)
             for where in inputs}
    saddle = int(np.argmax(parts["images"]["all"]))   # the oracle's saddle image
    free = np.zeros(backbone.n_params, dtype=bool)
    free[backbone.slices[-1]] = True
    rows = []
    for n_labels, record in sorted(records.items()):
        keep = iterations <= record["iteration"]
        for width in widths:
            design = Design(readout, width)
            x = {where: design(inputs[where]) for where in inputs}
            free_w = np.concatenate([free, np.zeros(width, dtype=bool)])
            for part in parts["labels"]:
                coef, loo = ridge_fit(x["labels"][keep], parts["labels"][part][keep], free_w)
                test_residual = x["test"] @ coef - parts["test"][part]
                along = x["images"] @ coef - parts["images"][part]
                row = {"strategy": strategy, "seed": seed, "n_labels": n_labels, "width": width, "part": part,
                       "loo_rmse_meV": 1000 * float(np.sqrt(np.mean(loo**2))),
                       "test_rmse_meV": 1000 * float(np.sqrt(np.mean(test_residual**2))),
                       "path_point_loo": [round(float(v), 4) for v in loo[on_path[keep]]],
                       "images_saddle_error": float(along[saddle] - along[0])}
                rows.append(row)
                points = row["path_point_loo"]
                print(f"{name:12} {n_labels:4d} labels, H = {width:3d} | {part:22} | leave-one-out {row['loo_rmse_meV']:4.0f}, "
                      f"test {row['test_rmse_meV']:4.0f} meV | at its {len(points)} path points "
                      + (f"{min(points):+.2f} to {max(points):+.2f} eV" if points else "—")
                      + f" | along the oracle's images, saddle − initial {row['images_saddle_error']:+.3f} eV", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(parser)
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[100, 150])
    parser.add_argument("--widths", type=int, nargs="+", default=[0, 128],
                        help="random hidden units added to the MLP readout's features (0: the linear class's own)")
    parser.add_argument("--base", type=Path, metavar="MODEL",
                        help="the features of this base model instead of the runs' own (a MACE file)")
    parser.add_argument("--json", type=Path, help="write every row here")
    args = parser.parse_args()
    if args.base is not None and not args.base.is_file():
        parser.error(f"--base: no model file {args.base}")
    if any(w < 0 for w in args.widths):
        parser.error(f"--widths: a number of hidden units is ≥ 0, got {' '.join(map(str, args.widths))}")
    torch.set_num_threads(int(os.environ.get("ALOOP_TORCH_THREADS", "1")))
    folder = REFERENCES[args.oracle]
    test = read(folder / "hf_test.extxyz", index=":")
    images = read(folder / "mono_path_hf.extxyz", index=":")
    base = Backbone.from_file(args.base, device="cpu") if args.base is not None else None
    oracle = {"test": oracle_energies(test, args.oracle), "images": oracle_energies(images, args.oracle)}
    rows = []
    for out in args.out:
        for name in run_names(out, args.runs):
            rows += measure(out, name, args.checkpoints, args.widths, args.oracle, test, images, oracle, base)
    print("\nmeans over runs (worst path point: the most negative leave-one-out residual at a labelled path point):")
    groups = defaultdict(list)
    for row in rows:
        groups[(row["strategy"], row["n_labels"], row["width"], row["part"])].append(row)
    for (strategy, n, width, part), group in groups.items():
        points = [v for r in group for v in r["path_point_loo"]]
        print(f"{strategy:9} {n:4d} labels, H = {width:3d}, {len(group)} runs | {part:22} | leave-one-out "
              f"{np.mean([r['loo_rmse_meV'] for r in group]):4.0f}, test {np.mean([r['test_rmse_meV'] for r in group]):4.0f} meV"
              + (f" | path points: mean {np.mean(points):+.2f}, worst {min(points):+.2f} eV" if points else "")
              + f" | images saddle error {np.mean([r['images_saddle_error'] for r in group]):+.3f} eV")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
