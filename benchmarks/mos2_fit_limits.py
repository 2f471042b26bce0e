"""What holds the MoS2 committee's barrier back: the same labels, fitted again three ways.

For every run of a data-efficiency folder (benchmarks/data_efficiency.py --out OUT) and every
checkpoint, the labels the run had there are fitted
- as the run fitted them (its own committee, the campaign's fixed τ = committee.prior_sigma),
- with `committee.prior_sigma: auto` (τ and a model error m chosen by the labels' evidence,
  docs/method.md), the rest of the committee as the campaign builds it,
- by plain least squares (ridge 1e-8), the most the readout can fit: its residual is the model
  error no prior removes.
Each fit's committee mean is scored by its RMSE on those labels, by what it leaves at the labelled
end points and saddles of the run's own relaxed paths (the labels that decide the tracked barrier;
with --path-points also `auto` refitted without the bootstrap and without the force term), and by the mono-vacancy barrier
along the oracle's own relaxed CI-NEB images (the frozen images: no relaxation, so the numbers
say what the fit learnt at the oracle's saddle, not where the model's own path goes). With
--relax, the `auto` committee mean's own relaxed CI-NEB barrier too, at --relax-at labels (a few
minutes per run).

    python benchmarks/mos2_fit_limits.py --out OUT [OUT ...] [--oracle prism|contact] [--relax] [--json FILE]
        [--runs random-s0 ...] [--checkpoints 100 150 300 500] [--path-points] [--tau 10]

Reads the run folders and their caches (no label or force Jacobian is computed); one line per
(run, checkpoint), then the means over seeds per strategy.
"""
from __future__ import annotations

import mace  # noqa: F401  (mace must be imported before e3nn)

import argparse
import json
import os
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from ase.io import read

from aloop import metrics
from aloop.arrays import Features, feature_moment
from aloop.committee import PRIOR_AUTO, Committee
from aloop.loop import CampaignRun
from aloop.neb import interpolate, relax_path
from aloop.store import LABELLED
from data_efficiency import CAMPAIGN, CHECKPOINTS, REFERENCES, positive_tau
from testbeds.mos2.geometry import NEB_IMAGES

RUN_NAME = re.compile(r"^(?P<strategy>[a-z_]+)-s(?P<seed>\d+)$")
FITS = ("run", "auto", "lstsq")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """--out, --oracle and --runs: which finished data-efficiency runs a refitting benchmark reads."""
    parser.add_argument("--out", type=Path, required=True, nargs="+",
                        help="data-efficiency folders (benchmarks/data_efficiency.py --out); each holds runs STRATEGY-sSEED")
    parser.add_argument("--oracle", choices=sorted(REFERENCES), default="prism")
    parser.add_argument("--runs", nargs="+", metavar="STRATEGY-sSEED", help="only these runs of each folder")


def run_names(out: Path, only: list[str] | None) -> list[str]:
    """The run folders STRATEGY-sSEED of a data-efficiency folder (those of `only`, when given)."""
    names = sorted(p.name for p in out.iterdir() if p.is_dir() and RUN_NAME.match(p.name)
                   and (only is None or p.name in only))
    if not names:
        raise SystemExit(f"{out}: no run folders STRATEGY-sSEED; give a folder benchmarks/data_efficiency.py wrote")
    return names


def least_squares(data, theta0: np.ndarray, ridge: float = 1e-8) -> np.ndarray:
    """θ minimising Σ (E − E_HF)²/σ² + ridge ‖θ − θ0‖² (σ with the campaign's floor is constant here)."""
    a, r = data.features.a, data.energy - data.features.energies(theta0)
    return theta0 + np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ r)


def measure(out: Path, name: str, relax_at: int | None, hf_path: np.ndarray, path_features,
            checkpoints=CHECKPOINTS, path_points: bool = False, tau: float | None = None) -> list[dict]:
    strategy, seed = RUN_NAME.match(name)["strategy"], int(RUN_NAME.match(name)["seed"])
    if not (out / name / "aloop.db").exists():   # a CampaignRun would start a new run there
        raise SystemExit(f"{out / name}: no run there (aloop.db missing)")
    # the settings the run was made with (its stored campaign), not the campaign file's today
    run = CampaignRun.reopen(out / name)
    moment = feature_moment(run.pool_rows(run.store.ids()))
    labelled = run.store.rows(state=LABELLED)
    hf_barrier = float(metrics.barrier(hf_path))
    rows = []
    for record in run.store.iterations():
        if record["n_labels"] not in checkpoints:
            continue
        keep = [r.id for r in labelled if r.iteration <= record["iteration"]]
        ids, data = run.training_set(subset=keep)
        auto = Committee.from_settings(run.backbone.theta0, run.campaign.committee.model_copy(update={"prior_sigma": PRIOR_AUTO}),
                                       run.campaign.finetune).fit(data, len(run.backbone.z_table), moment=moment)
        thetas = {"run": run.load_committee(record["iteration"]).thetas_.mean(0), "auto": auto.thetas_.mean(0),
                  "lstsq": least_squares(data, run.backbone.theta0)}
        if tau is not None:   # a fixed τ has no model error m: every label keeps its own weight
            thetas["fixed_tau"] = Committee.from_settings(run.backbone.theta0, run.campaign.committee.model_copy(
                update={"prior_sigma": tau}), run.campaign.finetune).fit(data, len(run.backbone.z_table)).thetas_.mean(0)
        if path_points:   # the decisive labels: is it the bootstrap or the force term that leaves them?
            for fit, committee_update, finetune_update in (("auto_no_bootstrap", {"bootstrap": False}, {}),
                                                           ("auto_no_force_term", {}, {"force_weight": 0.0})):
                settings = run.campaign.committee.model_copy(update={"prior_sigma": PRIOR_AUTO, **committee_update})
                thetas[fit] = Committee.from_settings(run.backbone.theta0, settings,
                                                      run.campaign.finetune.model_copy(update=finetune_update)).fit(
                    data, len(run.backbone.z_table), moment=moment).thetas_.mean(0)
        row = {"strategy": strategy, "seed": seed, "n_labels": record["n_labels"], "tau": auto.tau_,
               "model_error": auto.model_error_, "campaign_tau": run.campaign.committee.prior_sigma}
        # the end points and saddles of the run's own relaxed paths that were labelled by then
        on_path = np.isin(ids, [r.id for r in labelled if r.source.startswith("path:")])
        for fit, theta in thetas.items():
            residual = data.features.energies(theta) - data.energy
            row[f"{fit}_label_rmse_meV"] = 1000 * float(np.sqrt(np.mean(residual**2)))
            row[f"{fit}_path_point_residuals"] = [round(float(r), 4) for r in residual[on_path]]
            row[f"{fit}_hf_images_error"] = float(metrics.barrier(path_features.energies(theta))) - hf_barrier
        if relax_at is not None and record["n_labels"] == relax_at:
            start = interpolate(read(CAMPAIGN / "mono_initial.xyz"), read(CAMPAIGN / "mono_final.xyz"), NEB_IMAGES)
            for fit in ("auto", "fixed_tau") if tau is not None else ("auto",):
                path = relax_path(start, run.backbone, theta=thetas[fit], fmax=0.03, steps=1500)
                row[f"{fit}_relaxed_barrier"], row[f"{fit}_relaxed_converged"] = path.barrier, path.converged
        rows.append(row)
        print(f"{name:12} {row['n_labels']:4d} labels | label RMSE meV: run {row['run_label_rmse_meV']:5.0f}, "
              f"auto {row['auto_label_rmse_meV']:5.0f}, lstsq {row['lstsq_label_rmse_meV']:5.0f} | barrier on the "
              f"oracle's images − oracle's: run {row['run_hf_images_error']:+.3f}, auto {row['auto_hf_images_error']:+.3f}, "
              f"lstsq {row['lstsq_hf_images_error']:+.3f} eV | auto τ {row['tau']:.3g} eV/atom, m {row['model_error']:.3f} eV"
              + (f" | auto relaxed {row['auto_relaxed_barrier']:.3f} eV" if "auto_relaxed_barrier" in row else "")
              + (f" | τ = {tau:g}, no m: images {row['fixed_tau_hf_images_error']:+.3f} eV" if tau is not None else "")
              + (f", relaxed {row['fixed_tau_relaxed_barrier']:.3f} eV" if "fixed_tau_relaxed_barrier" in row else ""),
              flush=True)
        if on_path.any():
            print(f"{'':12} fit − label at the {int(on_path.sum())} labelled points of its own relaxed paths (eV): "
                  + "; ".join(f"{fit} {min(row[f'{fit}_path_point_residuals']):+.2f} to {max(row[f'{fit}_path_point_residuals']):+.2f}"
                              for fit in thetas), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(parser)
    parser.add_argument("--relax", action="store_true", help="also the auto fit's own relaxed CI-NEB barrier")
    parser.add_argument("--relax-at", type=int, default=100, help="label count of --relax (default 100)")
    parser.add_argument("--json", type=Path, help="write every row here")
    parser.add_argument("--tau", type=positive_tau, metavar="EV_PER_ATOM",
                        help="also a committee with this fixed prior_sigma (no model error m in the fit); with --relax "
                             "its relaxed CI-NEB barrier too")
    parser.add_argument("--path-points", action="store_true",
                        help="also refit `auto` without the bootstrap and without the force term, to see which one leaves "
                             "the labelled points of the run's own relaxed paths under their labels")
    parser.add_argument("--checkpoints", type=int, nargs="+", default=list(CHECKPOINTS),
                        help=f"label counts to refit at (default {' '.join(map(str, CHECKPOINTS))})")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("ALOOP_TORCH_THREADS", "1")))
    folder = REFERENCES[args.oracle]
    hf_path = np.array([a.get_potential_energy() for a in read(folder / "mono_path_hf.extxyz", index=":")])
    rows = []
    for out in args.out:
        names = run_names(out, args.runs)
        with np.load(out / "evaluation.npz") as f:
            path_features = Features(f["mono_a"], f["mono_e"], f["mono_n"])
        for name in names:
            rows += measure(out, name, args.relax_at if args.relax else None, hf_path, path_features,
                            args.checkpoints, args.path_points, args.tau)
    print("\nmeans over seeds (± std, worst |error|):")
    groups = defaultdict(list)
    for row in rows:
        groups[(row["strategy"], row["n_labels"])].append(row)
    for (strategy, n), group in sorted(groups.items()):
        parts = []
        for fit in FITS:
            err = np.array([r[f"{fit}_hf_images_error"] for r in group])
            parts.append(f"{fit} {err.mean():+.3f} ± {err.std():.3f} (worst {np.abs(err).max():.3f})")
        tau = np.array([r["tau"] for r in group])
        m = np.array([r["model_error"] for r in group])
        print(f"{strategy:9} {n:4d} labels, {len(group)} seeds | barrier on the oracle's images − oracle's: "
              + "; ".join(parts) + f" | auto τ {tau.min():.2g}–{tau.max():.2g} eV/atom, m {m.min():.3f}–{m.max():.3f} eV")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
