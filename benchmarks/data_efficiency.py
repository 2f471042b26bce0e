"""Data efficiency on the MoS2 S-vacancy testbed: committee-chosen labels against random ones.

Runs the real campaign loop (campaigns/mos2-svac/campaign.yaml and its oracle labeler) with the
strategies random, max_std, diverse and targeted, three seeds each, from 37 to 500 labels. Every run
shares one pool, and the caches of its features, force Jacobians and oracle labels (same candidate,
same label), so the runs cost little more than their fits and their barriers.

Learning curves at 37, 75, 100, 150, 300 and 500 labels, committee mean against:
- the held-out test set (hf_test.extxyz, noise-free E_HF): energy RMSE per cell and per atom;
- the mono-vacancy barrier the run tracks: the committee mean's own relaxed CI-NEB (end points
  relaxed, the exported model's), against the oracle's explicit one (reference.json);
- both barriers along the oracle's own frozen CI-NEB images, the di-vacancy one a transfer test
  (no pool contains that hop);
- HF forces (−∇E_HF) on the test set: MAE of the fine-tuned model and of the base model;
- prospective calibration: the fraction of each new batch's errors within 1σ and 2σ of the
  prediction made before it was labelled (σ: committee and label error bar together), raw and
  with a σ scale fitted online on the earlier batches only;
- where the campaign's own stop rules (pool uncertainty, observable) would first have fired.
At 100 labels and where a stop rule first fires, every run's committee mean is also relaxed along
the di-vacancy hop's own CI-NEB (end points relaxed), the number a user would quote for it.

The verdict (issue "The paper's system, rebuilt"), means over seeds:
  T1 an active strategy reaches random's 500-label test RMSE with ≤ 150 labels;
  T2 at 100 labels the relaxed mono barrier within 0.05 eV of the oracle's, the di-vacancy within 0.10;
  T3 force MAE against the oracle below the base model's;
  T4 calibrated prospective 2σ coverage within 85–99 % at every checkpoint;
  T5 a stop rule fires before 500 labels, and T2 holds there.

    pip install -e ".[mos2]"   # the MoS2 testbed (CHGNet)
    python benchmarks/data_efficiency.py [--oracle prism|contact] [--out DIR] [--seeds 0 1 2] [--strategies ...]

Prints a table and the verdict, writes results.json and the plots into --out (and docs/img with
--docs). A rerun of some strategies or seeds replaces their entries in results.json and keeps the
others. On two cores, run halves side by side, each in its own folder (the shared caches are not
written safely by two processes), then combine them:

    python benchmarks/data_efficiency.py --out A --strategies random max_std &
    python benchmarks/data_efficiency.py --out B --strategies diverse targeted
    python benchmarks/data_efficiency.py --out A --report-only --merge B
"""
from __future__ import annotations

import mace  # noqa: F401  (mace must be imported before e3nn)

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase.io import read  # noqa: E402

from aloop import measure, metrics  # noqa: E402
from aloop.campaign import load_campaign  # noqa: E402
from aloop.files import file_digest  # noqa: E402
from aloop.fork import fork_run  # noqa: E402
from aloop.loop import CampaignRun  # noqa: E402
from aloop.store import RunStore  # noqa: E402
from aloop.neb import interpolate, relax_path  # noqa: E402
from aloop.report_text import one_line  # noqa: E402
from testbeds.mos2.geometry import NEB_IMAGES  # noqa: E402

from sigma_scale_window import recorded, stored_batches  # noqa: E402  (this folder: the script's own)

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN = ROOT / "campaigns" / "mos2-svac"
# each oracle variant's references and test set (scripts/mos2_hf_references.py): oracle v2's beside
# the campaign, the first oracle's in contact/
REFERENCES = {"prism": CAMPAIGN, "contact": CAMPAIGN / "contact"}
CHECKPOINTS = (37, 75, 100, 150, 300, 500)
# batch sizes after the first 37 labels: smaller batches where each label matters most
BATCHES = [19, 19, 25, 25, 25] + [30] * 5 + [40] * 5
STRATEGIES = ("random", "max_std", "diverse", "targeted")
COLORS = {"random": "tab:gray", "max_std": "tab:orange", "diverse": "tab:blue", "targeted": "tab:red"}
TOLERANCE = {"mono": 0.05, "di": 0.10}   # eV, T2
T1_LABELS, T2_LABELS, COVERAGE = 150, 100, (0.85, 0.99)


def campaign_for(out: Path, strategy: str, seed: int, oracle: str = "prism", prior_sigma=None,
                 max_labels: int = CHECKPOINTS[-1], force_threshold: float | None = None):
    """The campaign of one run: `strategy` and `seed`, labels from the oracle variant `oracle`, with
    its own test set and barrier reference; `prior_sigma` replaces the campaign's committee.prior_sigma,
    `force_threshold` its finetune.force_threshold."""
    c = load_campaign(CAMPAIGN / "campaign.yaml")
    if prior_sigma is not None:
        c.committee.prior_sigma = prior_sigma
    if force_threshold is not None:
        c.finetune.force_threshold = force_threshold
    c.labeler.parameters = {**c.labeler.parameters, "variant": oracle}
    c.evaluation.test_set.path = REFERENCES[oracle] / "hf_test.extxyz"
    reference = json.loads((REFERENCES[oracle] / "reference.json").read_text())["mono_barrier_hf"]
    c.evaluation.observables = [o.model_copy(update={"reference": reference}) for o in c.evaluation.observables]
    c.run_dir = out / f"{strategy}-s{seed}"
    c.seed, c.committee.seed = seed, seed
    c.acquisition.strategy, c.acquisition.targets = strategy, None
    c.finetune.readout = "linear"   # the campaign's full is mos2_class_run.py's; this benchmark measures linear
    c.acquisition.initial_size = CHECKPOINTS[0]
    c.acquisition.batch_schedule = BATCHES
    c.stop.max_labels = max_labels
    c.stop.uncertainty_ratio, c.stop.observable = None, None  # judged afterwards, see stop_points
    return c


def shared_pool(out: Path, oracle: str) -> CampaignRun:
    """The pool once, with its features; every run starts from a copy of this store."""
    c = campaign_for(out, "pool", 0, oracle)
    c.run_dir = out / "pool"
    run = CampaignRun(c, progress=True)
    run.prepare_pool()
    run.fill_features(run.store.ids())
    return run


def start_run(out: Path, strategy: str, seed: int, oracle: str, prior_sigma=None,
              max_labels: int = CHECKPOINTS[-1], force_threshold: float | None = None) -> CampaignRun:
    """A fork of the shared pool's run (features, Jacobians and oracle labels shared), or the run
    as a previous invocation left it."""
    c = campaign_for(out, strategy, seed, oracle, prior_sigma, max_labels, force_threshold)
    try:
        fork_run(out / "pool", c.run_dir, 0)
    except FileExistsError:
        pass   # a rerun continues it
    return CampaignRun(c, progress=False)


def run_to_the_end(run: CampaignRun) -> list[dict]:
    """The campaign's own loop, one iteration at a time to print each, until a stop rule fires
    (the label budget, CHECKPOINTS[-1], or an exhausted pool)."""
    while True:
        result = run.run(max_iterations=1)
        print("    " + one_line(run.store.iterations()[-1]), flush=True)
        if result.stop_reason is not None:
            return run.store.iterations()


class Evaluation:
    """The campaign's test set (features and labels from the loop's own cache), and what only this
    benchmark needs, computed once: the test set's force Jacobians and both HF paths' features."""

    def __init__(self, run: CampaignRun, out: Path, folder: Path):
        self.reference = json.loads((folder / "reference.json").read_text())
        spec = run.campaign.evaluation.test_set
        test_features, self.y = measure.test_set_features(run, spec)
        test = read(spec.path, index=":")
        paths = {k: read(folder / f"{k}_path_hf.extxyz", index=":") for k in ("mono", "di")}
        cache = out / "evaluation.npz"
        backbone = run.backbone
        digest = "".join(file_digest(folder / name) for name in ("hf_test.extxyz", "mono_path_hf.extxyz", "di_path_hf.extxyz"))
        digest += file_digest(CAMPAIGN / "base_chgnet.model")
        if cache.exists():
            with np.load(cache) as f:
                if str(f["digest"]) != digest or "test_a" in f.files:
                    cache.unlink()  # the references were remade (or the cache is of the older layout)
        if not cache.exists():
            feats = {name: backbone.features(frames) for name, frames in paths.items()}
            jac = backbone.force_jacobians(test, progress=True)
            arrays = {f"{name}_{k}": getattr(f, attr) for name, f in feats.items()
                      for k, attr in (("a", "a"), ("e", "e"), ("n", "n_atoms"))}
            np.savez(cache, **arrays, f0=np.stack([j.f0 for j in jac]), B=np.stack([j.B for j in jac]), digest=digest)
        with np.load(cache) as f:
            self.arrays = {k: f[k] for k in f.files}
        self.arrays.update(test_a=test_features.a, test_e=test_features.e)
        self.n_atoms = test_features.n_atoms
        self.f_hf = np.stack([a.get_forces() for a in test])
        self.theta0 = backbone.theta0

    def energies(self, name: str, theta: np.ndarray) -> np.ndarray:
        return self.arrays[f"{name}_a"] @ theta + self.arrays[f"{name}_e"]

    def forces(self, theta: np.ndarray) -> np.ndarray:
        return self.arrays["f0"] + np.einsum("cakp,p->cak", self.arrays["B"], theta - self.theta0)

    def scores(self, theta: np.ndarray) -> dict:
        err = self.energies("test", theta) - self.y
        out = {"test_rmse_meV": 1000 * float(np.sqrt(np.mean(err**2))),
               "test_rmse_meV_per_atom": 1000 * float(np.sqrt(np.mean((err / self.n_atoms) ** 2))),
               "force_mae_meV_per_A": 1000 * float(np.mean(np.abs(self.forces(theta) - self.f_hf)))}
        for kind in ("mono", "di"):
            barrier = float(metrics.barrier(self.energies(kind, theta)))
            out[f"{kind}_hf_path_barrier"] = barrier
            out[f"{kind}_hf_path_barrier_error"] = barrier - self.reference[f"{kind}_barrier_hf"]
        return out

    def tracked(self, value: float) -> dict:
        """The run's own barrier (the committee mean's relaxed CI-NEB) against the oracle's."""
        return {"mono_barrier": value, "mono_barrier_error": value - self.reference["mono_barrier_hf"]}


def calibration(run: CampaignRun, upto: int) -> dict:
    """Coverage of the prospective errors of every batch after the first, up to `upto` labels:
    raw, and with the committee-σ scale the run recorded before each batch (so still prospective)."""
    batches = stored_batches(run.store, upto)
    if not batches:
        return {}
    err, s_c, s_l = (np.concatenate([b[i] for b in batches]) for i in (1, 2, 3))
    z_raw = np.abs(err) / np.hypot(s_c, s_l)
    replayed = recorded(run.store, upto)
    z_cal = np.concatenate([r[1] for r in replayed]) if replayed else np.array([])
    return {"n": int(len(err)), "within_1sigma": float(np.mean(z_raw <= 1)), "within_2sigma": float(np.mean(z_raw <= 2)),
            "calibrated_n": int(len(z_cal)),
            "calibrated_within_1sigma": float(np.mean(z_cal <= 1)) if len(z_cal) else None,
            "calibrated_within_2sigma": float(np.mean(z_cal <= 2)) if len(z_cal) else None,
            "final_scale": replayed[-1][2] if replayed else None}


def stop_points(run: CampaignRun) -> dict:
    """The label count at which each of the campaign's own stop rules would first have fired."""
    rules = load_campaign(CAMPAIGN / "campaign.yaml").stop
    return metrics.when_rules_fire(rules, run.store.iterations(), ("uncertainty_ratio", "observable"))


def misfit_raised_at(records: list[dict]) -> list[int]:
    """The label counts at which the misfit warning stood (metrics.misfit): what `aloop status` and
    summary.md showed the user there. Records of runs made before the warning stood until p ≥
    metrics.MISFIT_CLEAR are replayed with that rule from their p-values."""
    raised, out = False, []
    for r in records:
        m = r.get("misfit") or {}
        raised = bool(m) and metrics.misfit_stands(m["p_value"], m["alpha"], raised)
        if raised:
            out.append(r["n_labels"])
    return out


def di_barrier(backbone, theta: np.ndarray | None, reference: dict) -> dict:
    """The di-vacancy hop's CI-NEB (end points relaxed) on the surface (backbone, θ) (a committee mean:
    the exported model's), a hop no label of the pool comes near."""
    start = interpolate(read(CAMPAIGN / "di_initial.xyz"), read(CAMPAIGN / "di_final.xyz"), NEB_IMAGES)
    path = relax_path(start, backbone, theta=theta, fmax=0.03, steps=1500)
    return {"barrier": path.barrier, "converged": path.converged, "error": path.barrier - reference["di_barrier_hf"]}


def mean_theta(run: CampaignRun, labels: int) -> tuple[dict, np.ndarray]:
    """(record, committee mean θ) of the first iteration with at least `labels` labels."""
    record = next(r for r in run.store.iterations() if r["n_labels"] >= labels)
    return record, run.load_committee(record["iteration"]).thetas_.mean(0)


def measure_run(run: CampaignRun, evaluation: "Evaluation", observable: str, neb: bool) -> dict:
    """Checkpoint scores, where the stop rules fire, and (with `neb`) the di-vacancy barrier at
    T2_LABELS and at the first stop."""
    reference = evaluation.reference
    checkpoints = {}
    for record in run.store.iterations():
        if record["n_labels"] in CHECKPOINTS:
            theta = run.load_committee(record["iteration"]).thetas_.mean(0)
            checkpoints[str(record["n_labels"])] = (evaluation.scores(theta)
                                                    | evaluation.tracked(record["observables"][observable]["mean"])
                                                    | calibration(run, record["n_labels"]))
    fire = stop_points(run)
    entry = {"checkpoints": checkpoints, "stop_rules_fire_at": fire,
             "misfit_raised_at": misfit_raised_at(run.store.iterations())}
    first = min((n for n in fire.values() if n is not None), default=None)
    if first is not None:
        record, theta = mean_theta(run, first)
        entry["at_stop"] = {"n_labels": record["n_labels"],
                            **evaluation.tracked(record["observables"][observable]["mean"])}
    if neb:
        entry["di_relaxed"] = {str(T2_LABELS): di_barrier(run.backbone, mean_theta(run, T2_LABELS)[1], reference)}
        if first is not None:
            entry["at_stop"]["di"] = di_barrier(run.backbone, theta, reference)
    return entry


def summarise(results: dict) -> dict:
    """Mean and spread over seeds, per strategy and checkpoint."""
    table = {}
    for strategy, runs in results.items():
        table[strategy] = {}
        for n in CHECKPOINTS:
            rows = [r["checkpoints"][str(n)] for r in runs if str(n) in r["checkpoints"]]
            if rows:
                table[strategy][n] = {k: (float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows])))
                                      for k in rows[0] if rows[0][k] is not None}
    return table


def plot(table: dict, base: dict, reference: dict, out: Path) -> list[Path]:
    panels = [("test_rmse_meV_per_atom", "held-out energy RMSE (meV/atom)", True),
              ("mono_barrier_error", "mono-vacancy barrier error, relaxed (eV)", False),
              ("di_hf_path_barrier_error", "di-vacancy barrier error, oracle's images (eV)", False),
              ("force_mae_meV_per_A", "force MAE vs HF (meV/Å)", False),
              ("within_2sigma", "prospective errors within 2σ", False)]
    fig, axes = plt.subplots(1, 5, figsize=(21, 4))
    for ax, (key, title, log) in zip(axes, panels):
        for strategy, rows in table.items():
            n = [k for k in sorted(rows) if key in rows[k]]
            for field, style, suffix in ((key, "-", ""), ("calibrated_" + key, "--", ", calibrated")):
                if key != "within_2sigma" and field != key:
                    continue
                mean = np.array([rows[k][field][0] for k in n])
                std = np.array([rows[k][field][1] for k in n])
                ax.errorbar(n, mean, yerr=std, marker="o", capsize=3, ls=style, label=strategy + suffix,
                            color=COLORS[strategy])
        if key in base:
            ax.axhline(base[key], color="k", ls=":", label="base model")
        if key.endswith("barrier_error"):
            ax.axhspan(-0.05 if key.startswith("mono") else -0.1, 0.05 if key.startswith("mono") else 0.1,
                       color="tab:green", alpha=0.12, label="target")
            ax.axhline(0, color="k", lw=0.5)
        if key == "within_2sigma":
            ax.axhspan(0.85, 0.99, color="tab:green", alpha=0.12, label="target")
            ax.set_ylim(0, 1.02)
            ax.legend(fontsize=7)
        if key.startswith("test") and CHECKPOINTS[-1] in table.get("random", {}):
            ax.axhline(table["random"][CHECKPOINTS[-1]][key][0], color=COLORS["random"], ls="--", lw=0.8,
                       label=f"random at {CHECKPOINTS[-1]}")
        ax.set_xscale("log")
        if log:
            ax.set_yscale("log")
        ax.set_xticks(CHECKPOINTS, [str(c) for c in CHECKPOINTS])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # only the checkpoints
        ax.set_xlabel("labels")
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"MoS2 S-vacancy testbed: mean ± std over seeds (HF barrier {reference['mono_barrier_hf']:.3f} eV)")
    fig.tight_layout()
    path = out / "mos2_data_efficiency.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def verdict(table: dict, results: dict, base: dict) -> dict:
    """T1–T5 of the issue, from the means over seeds (T5 per seed)."""
    out = {}
    last = CHECKPOINTS[-1]
    random_final = table.get("random", {}).get(last, {}).get("test_rmse_meV_per_atom", (np.nan,))[0]
    for strategy, rows in table.items():
        runs = results[strategy]
        reached = [n for n in CHECKPOINTS if n in rows and rows[n]["test_rmse_meV_per_atom"][0] <= random_final]
        mono = [abs(r["checkpoints"][str(T2_LABELS)]["mono_barrier_error"]) for r in runs
                if str(T2_LABELS) in r["checkpoints"]]
        di = [abs(r["di_relaxed"][str(T2_LABELS)]["error"]) for r in runs if "di_relaxed" in r]
        coverage = [rows[n]["calibrated_within_2sigma"][0] for n in sorted(rows) if "calibrated_within_2sigma" in rows[n]]
        stops = [r.get("at_stop") for r in runs]
        out[strategy] = {
            "T1_labels_to_random_final_rmse": reached[0] if reached else None,
            "T1": None if strategy == "random" else bool(reached and reached[0] <= T1_LABELS),
            "T2_mono_abs_error": float(np.mean(mono)) if mono else None,
            "T2_di_abs_error": float(np.mean(di)) if di else None,
            "T2": bool(mono and di and np.mean(mono) <= TOLERANCE["mono"] and np.mean(di) <= TOLERANCE["di"]),
            "T3_force_mae": {n: rows[n]["force_mae_meV_per_A"][0] for n in sorted(rows)},
            # at the last checkpoint the runs reached (500, or --max-labels)
            "T3": bool(rows and rows[max(rows)]["force_mae_meV_per_A"][0] < base["force_mae_meV_per_A"]),
            "T4_calibrated_2sigma": coverage,
            "T4": bool(coverage and all(COVERAGE[0] <= c <= COVERAGE[1] for c in coverage)),
            "T5_stops": [None if st is None else {"n_labels": st["n_labels"], "mono_error": st["mono_barrier_error"],
                                                  "di_error": st.get("di", {}).get("error")} for st in stops],
            "T5": bool(stops and all(st is not None and st["n_labels"] < last
                                     and abs(st["mono_barrier_error"]) <= TOLERANCE["mono"]
                                     and abs(st.get("di", {}).get("error", np.inf)) <= TOLERANCE["di"]
                                     for st in stops)),
        }
    return out


def merged(out: Path, results: dict, others: list[Path]) -> dict:
    """`results` over the entries of OUT/results.json and of each other folder's results.json: an
    entry of a later source replaces the same (strategy, seed) of an earlier one."""
    combined: dict[str, dict[int, dict]] = {}
    sources = [out / "results.json", *(d / "results.json" for d in others)]
    for path in sources:
        if path.exists():
            for strategy, entries in json.loads(path.read_text())["results"].items():
                combined.setdefault(strategy, {}).update({e["seed"]: e for e in entries})
        elif path != sources[0]:
            raise SystemExit(f"--merge: {path} does not exist; give folders the benchmark has written")
    for strategy, entries in results.items():
        combined.setdefault(strategy, {}).update({e["seed"]: e for e in entries})
    return {s: [entries[k] for k in sorted(entries)] for s, entries in combined.items()}


def refresh_stop_points(results: dict, folders: list[Path], reference: dict) -> None:
    """Where the stop rules fire, again from the run folders' records with the rules as they are now
    (a rule changed since the runs were measured). Where the first stop moved, `at_stop` is that
    iteration's tracked barrier, without the di-vacancy CI-NEB (not run here: T5 reads it as not met)."""
    rules = load_campaign(CAMPAIGN / "campaign.yaml").stop
    for strategy, entries in results.items():
        for entry in entries:
            folder = next((d / f"{strategy}-s{entry['seed']}" for d in folders
                           if (d / f"{strategy}-s{entry['seed']}" / "aloop.db").exists()), None)
            if folder is None:
                continue
            records = RunStore(folder).iterations()
            fire = metrics.when_rules_fire(rules, records, ("uncertainty_ratio", "observable"))
            first = min((n for n in fire.values() if n is not None), default=None)
            entry["stop_rules_fire_at"] = fire
            entry["misfit_raised_at"] = misfit_raised_at(records)
            if first is None:
                entry.pop("at_stop", None)
            elif (entry.get("at_stop") or {}).get("n_labels") != first:
                record = next(r for r in records if r["n_labels"] >= first)
                value = record["observables"][rules.observable.name]["mean"]
                entry["at_stop"] = {"n_labels": record["n_labels"], "mono_barrier": value,
                                    "mono_barrier_error": value - reference["mono_barrier_hf"]}


def same_oracle(out: Path, others: list[Path]) -> None:
    """Refuse to merge runs measured against different references (another oracle or references
    remade between the runs) or with another prior."""
    summaries = [(d, json.loads((d / "results.json").read_text())) for d in [out, *others] if (d / "results.json").exists()]
    for d, summary in summaries[1:]:
        for key, what in (("reference", "one oracle and one set of references"), ("prior_sigma", "one committee.prior_sigma"),
                          ("force_threshold", "one finetune.force_threshold")):
            if summary.get(key) != summaries[0][1].get(key):
                raise SystemExit(f"--merge: {d} was measured with {key} {summary.get(key)}, {summaries[0][0]} with "
                                 f"{summaries[0][1].get(key)}; merge only runs of {what}")


def report(summary: dict, out: Path, docs: bool) -> None:
    """Print the table, the stop points and the verdict of a summary; write it and its plots."""
    results, base = summary["results"], summary["base"]
    table = summarise(results)
    print(f"\nbase model: test RMSE {base['test_rmse_meV']:.0f} meV ({base['test_rmse_meV_per_atom']:.2f} meV/atom), "
          f"relaxed mono barrier error {base['mono_barrier_error']:+.3f} eV, di "
          f"{base.get('di_relaxed', {}).get('error', np.nan):+.3f} eV, force MAE {base['force_mae_meV_per_A']:.0f} meV/Å")
    header = (f"{'strategy':9} {'labels':>6} {'seeds':>5} {'RMSE meV':>9} {'meV/atom':>9} {'mono ΔEb':>9} "
              f"{'di (imgs)':>9} {'F MAE':>7} {'1σ':>5} {'2σ':>5} {'2σ cal':>6}")
    print(header)
    for strategy, rows in table.items():
        for n, r in rows.items():
            seeds = sum(str(n) in e["checkpoints"] for e in results[strategy])
            cal = r.get("calibrated_within_2sigma", (np.nan,))[0]
            print(f"{strategy:9} {n:6d} {seeds:5d} {r['test_rmse_meV'][0]:9.1f} {r['test_rmse_meV_per_atom'][0]:9.3f} "
                  f"{r['mono_barrier_error'][0]:+9.3f} {r['di_hf_path_barrier_error'][0]:+9.3f} "
                  f"{r['force_mae_meV_per_A'][0]:7.1f} {r.get('within_1sigma', (np.nan,))[0]:5.2f} "
                  f"{r.get('within_2sigma', (np.nan,))[0]:5.2f} {cal:6.2f}")
    for strategy, runs in results.items():
        for entry in runs:
            print(f"{strategy} seed {entry['seed']}: stop rules would fire at {entry['stop_rules_fire_at']}; "
                  f"there: {entry.get('at_stop')}; relaxed di-vacancy at {T2_LABELS}: {entry.get('di_relaxed')}")
            raised = entry.get("misfit_raised_at")
            if raised is not None:
                print("    misfit warning: " + (f"from {raised[0]} labels, in {len(raised)} iterations "
                                                 f"(at {', '.join(map(str, raised))} labels)" if raised else "never raised"))
    targets = verdict(table, results, base)
    for strategy, v in targets.items():
        print(f"{strategy}: " + ", ".join(f"{k} {v[k]}" for k in ("T1", "T2", "T3", "T4", "T5")) +
              f"; T1 labels {v['T1_labels_to_random_final_rmse']}, T2 |mono| {v['T2_mono_abs_error']}, "
              f"|di| {v['T2_di_abs_error']}")
    summary = summary | {"table": {s: {str(n): v for n, v in rows.items()} for s, rows in table.items()},
                         "targets": targets}
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    plots = plot(table, base, summary["reference"], out)
    if docs:
        for path in plots:
            shutil.copy(path, ROOT / "docs" / "img" / path.name)
    print(f"wrote {out / 'results.json'} and {', '.join(str(p) for p in plots)}")


def _number(text: str, unit: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of {unit}, got {text!r}") from None


def non_negative(text: str) -> float:
    """An argparse type: finetune.force_threshold, as the campaign file would validate it (≥ 0)."""
    if not (value := _number(text, "eV/Å")) >= 0:
        raise argparse.ArgumentTypeError(f"finetune.force_threshold must be ≥ 0 eV/Å, got {text}")
    return value


def positive_tau(text: str) -> float:
    """An argparse type: a fixed committee.prior_sigma (> 0 eV/atom)."""
    if not (value := _number(text, "eV/atom")) > 0:
        raise argparse.ArgumentTypeError(f"committee.prior_sigma must be > 0 eV/atom, got {text}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--oracle", choices=sorted(REFERENCES), default="prism",
                        help="the oracle variant that labels: prism (oracle v2) or contact (the first)")
    parser.add_argument("--out", type=Path, help="default: runs/data_efficiency (prism), runs/data_efficiency_contact")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--no-neb", action="store_true", help="skip the di-vacancy CI-NEBs of the committee means")
    parser.add_argument("--max-labels", type=int, default=CHECKPOINTS[-1],
                        help=f"stop every run here (default {CHECKPOINTS[-1]}; the checkpoints past it are left out)")
    parser.add_argument("--prior-sigma", type=lambda v: v if v == "auto" else float(v), metavar="TAU|auto",
                        help="committee.prior_sigma of every run instead of the campaign's (another --out: the runs differ)")
    parser.add_argument("--force-threshold", type=non_negative, metavar="EV_PER_A",
                        help="finetune.force_threshold of every run instead of the campaign's (another --out)")
    parser.add_argument("--docs", action="store_true", help="also copy the plot into docs/img")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: the table, verdict and plots of OUT/results.json (and --merge's)")
    parser.add_argument("--merge", type=Path, nargs="+", default=[], metavar="DIR",
                        help="with --report-only: add the runs of other folders of this benchmark (e.g. halves "
                             "run side by side on two cores) to OUT's results.json")
    args = parser.parse_args()
    # the runs share one label cache, so each oracle needs its own folder
    args.out = args.out or ROOT / "runs" / ("data_efficiency" + ("" if args.oracle == "prism" else f"_{args.oracle}"))
    if args.merge and not args.report_only:
        parser.error("--merge combines finished runs; give it with --report-only")
    if args.report_only:
        if not (args.out / "results.json").exists() and not args.merge:
            parser.error(f"{args.out / 'results.json'} does not exist: run the benchmark into --out first")
        same_oracle(args.out, args.merge)
        first = args.out if (args.out / "results.json").exists() else args.merge[0]
        summary = json.loads((first / "results.json").read_text())
        args.out.mkdir(parents=True, exist_ok=True)
        results = merged(args.out, {}, args.merge)
        refresh_stop_points(results, [args.out, *args.merge], summary["reference"])
        report(summary | {"results": results}, args.out, args.docs)
        return
    torch.set_num_threads(int(os.environ.get("ALOOP_TORCH_THREADS", "1")))
    start = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    print("pool (generated once, shared by every run):", flush=True)
    pool = shared_pool(args.out, args.oracle)
    evaluation = Evaluation(pool, args.out, REFERENCES[args.oracle])
    observable = load_campaign(CAMPAIGN / "campaign.yaml").stop.observable.name
    reference = evaluation.reference
    summary = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
                    "threads": torch.get_num_threads(), "platform": platform.platform()},
        "reference": {k: reference[k] for k in reference if k.endswith(("barrier_hf", "barrier_chgnet"))}
        | {"oracle": reference.get("oracle")},
        "prior_sigma": args.prior_sigma or load_campaign(CAMPAIGN / "campaign.yaml").committee.prior_sigma,
        # `is not None`: --force-threshold 0 (the penalty off) is a setting, not a missing one
        "force_threshold": (args.force_threshold if args.force_threshold is not None
                            else load_campaign(CAMPAIGN / "campaign.yaml").finetune.force_threshold),
        "max_labels": args.max_labels,
    }
    previous = args.out / "results.json"
    earlier = json.loads(previous.read_text()) if previous.exists() else {}
    if earlier and earlier["reference"] != summary["reference"]:
        raise SystemExit(f"{previous} holds runs measured against {earlier['reference']}, not {summary['reference']}: "
                         "the references were remade; give another --out")
    for key, field in (("prior_sigma", "committee.prior_sigma"), ("force_threshold", "finetune.force_threshold")):
        if earlier and earlier.get(key, summary[key]) != summary[key]:
            raise SystemExit(f"{previous} holds runs with {field} {earlier[key]}, not {summary[key]}; give another --out")
    base = evaluation.scores(pool.backbone.theta0) | evaluation.tracked(measure.base_observables(pool)[observable]["mean"])
    if not args.no_neb:   # the base model's di-vacancy CI-NEB, once per folder
        base["di_relaxed"] = earlier.get("base", {}).get("di_relaxed") or di_barrier(pool.backbone, pool.backbone.theta0, reference)
    summary["base"] = base
    results = {}
    for strategy in args.strategies:
        results[strategy] = []
        for seed in args.seeds:
            t = time.time()
            print(f"{strategy}, seed {seed}:", flush=True)
            run = start_run(args.out, strategy, seed, args.oracle, args.prior_sigma, args.max_labels,
                            args.force_threshold)
            run_to_the_end(run)
            entry = {"seed": seed, **measure_run(run, evaluation, observable, not args.no_neb),
                     "seconds": round(time.time() - t, 1)}
            results[strategy].append(entry)
            # after every run, so that a stopped benchmark keeps what it measured (a rerun of some
            # strategies or seeds keeps the others' entries)
            summary |= {"results": merged(args.out, results, []), "wall_s": round(time.time() - start, 1)}
            previous.write_text(json.dumps(summary, indent=1) + "\n")
    report(summary, args.out, args.docs)
    print(f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
