"""Model classes on the same labels: `linear`, `full` and `delta` fine-tunes refitted, and the
`multifidelity` model trained, on the label sequences of finished runs.

A finished run (for instance one of `python benchmarks/h3_acceptance.py --seeds 0 1 2 --out DIR`)
holds the labels its acquisition chose, batch by batch. For every run and checkpoint (a label count
the run passed through), each class is fitted on the run's first N labels with the campaign's own
committee and finetune settings, and scored:

- held-out RMSE on the campaign's test set (evaluation.test_set), and the fraction of test
  configurations within 2σ of the committee (σ: the members' spread);
- prospective 2σ coverage on the labels the run chose after the first N (σ: spread and label error
  bar together), where there are any;
- the barrier of each observable by relaxed CI-NEB (end points relaxed) on the exported
  committee-mean file (for `full` and `delta` one model too, every member's MLP hidden units side by
  side), against the observable's reference;
- with --transfer, the same for a path no label came near (MoS2: the di-vacancy hop), from its end
  points interpolated;
- force MAE against the test set's forces, where its frames carry them (MoS2: the oracle's): the
  forces of the committee's average energy;
- the fit's wall time (one committee) and, apart, its set-up: the per-atom Jacobians of `full` or
  the hidden layers' forces of `delta`, of the checkpoint's labels not set up before: `delta`'s
  are kept for the run's later checkpoints, `full`'s in the run's cache (cache/full_graph, which a
  `full` campaign has already filled, so its set-up is a read); features and force Jacobians are
  the run's cache too.

Everything runs on the campaign's device (`device: auto` is CUDA where there is one), the exported
models' CI-NEB and forces too. --no-barriers leaves out the CI-NEB barriers, the slowest part, for a
quick comparison of fit, set-up, RMSE, force MAE and coverage.

`multifidelity` is one model, not a committee: trained from the base model on the N labels and
`--mf-replay` configurations of the run's model.training_data, for at most `--mf-epochs` epochs, the
labels' weights times `--mf-label-weight` (the campaign defaults unless given, with its early
stopping); it has no σ, so no coverage, and its training time replaces the fit time.

    python benchmarks/model_classes.py --runs DIR/seed-0-t1 DIR/seed-1-t1 DIR/seed-2-t1 \
        [--classes linear full delta multifidelity] [--checkpoints 20 40] [--out runs/model_classes.json]
        [--transfer INITIAL FINAL REFERENCE | --no-barriers] [--prior-sigma TAU]

On the MoS2 benchmark runs (benchmarks/data_efficiency.py --out OUT):

    python benchmarks/model_classes.py --runs OUT/targeted-s{0,1,2} --classes linear delta \
        --checkpoints 37 100 --transfer campaigns/mos2-svac/di_{initial,final}.xyz 1.3962

Every class sees exactly the same labels, so differences come from the class alone; the label choice
itself was made by the runs' own class (normally `linear`).

With --base MODEL every class is refitted on another base model's features (a candidate base model
judged on labels chosen with the runs' own), in copies of the runs next to --out:

    python benchmarks/model_classes.py --runs OUT/targeted-s{0,1,2} --classes linear --checkpoints 100 150 \
        --base W64/base.model --out W64/model_classes.json --transfer campaigns/mos2-svac/di_{initial,final}.xyz 1.3962
"""
from __future__ import annotations

import mace  # noqa: F401  (mace must be imported before e3nn)

import argparse
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ase.io import read

from aloop import binding, multifidelity, reaction_path
from aloop.arrays import feature_moment
from aloop.backbone import Backbone
from aloop.campaign import Campaign, MultifidelitySettings
from aloop.committee import PRIOR_AUTO, Committee, NotConverged
from aloop.delta import DeltaCommittee, DeltaReadout, HiddenTerms
from aloop.files import file_digest
from aloop.full_committee import FullCommittee
from aloop.full_readout import FullReadout
from aloop.loop import CampaignRun, mean_surface
from aloop.neb import interpolate, relax_path
from aloop.store import LABELLED, RunStore

CLASSES = ("linear", "full", "delta", "multifidelity")


def rebased(folder: Path, model: Path, copies: Path) -> CampaignRun:
    """Run `folder` with `model` as its base model, in a copy under `copies` made once: its store and
    relaxed paths copied, its labels linked, its caches not (they hold the run's own model's
    features). Copies of runs that shared a cache (one pool, as data_efficiency.py's runs) share
    one again. The labels are high-fidelity energies, whatever the base model, so the copy accepts
    the changed model."""
    dest = copies / folder.name
    if not (dest / "aloop.db").exists():
        dest.mkdir(parents=True, exist_ok=True)
        if (folder / "paths").is_dir():
            shutil.copytree(folder / "paths", dest / "paths", dirs_exist_ok=True)
        (dest / "labels").symlink_to((folder / "labels").resolve())
        cache = copies / "caches" / hashlib.sha256(str((folder / "cache").resolve()).encode()).hexdigest()[:12]
        cache.mkdir(parents=True, exist_ok=True)
        (dest / "cache").symlink_to(cache.resolve())
        shutil.copy2(folder / "aloop.db", dest / "aloop.db")   # last: a copy with its store is complete
    store = RunStore.existing(dest)
    settings = {**store.get_meta("campaign"), "run_dir": str(dest.resolve())}
    settings["model"] = {**settings["model"], "path": str(model.resolve())}
    campaign = Campaign.model_validate(settings, context={"base_dir": str(dest)})
    # a run refuses another model under its labels (aloop.binding); this copy is bound to it instead
    now = binding.of_campaign(campaign, file_digest(model))
    store.set_meta("binding", (store.get_meta("binding") or {}) | {"model": now["model"]})
    return CampaignRun(campaign, progress=False)


def label_order(run: CampaignRun) -> tuple[list[int], list[int]]:
    """(candidate ids in the order the run labelled them, label count after each iteration)."""
    order, counts = [], []
    for record in run.store.iterations():
        order += [r.id for r in run.store.rows(iteration=record["iteration"], state=LABELLED)]
        counts.append(record["n_labels"])
    return order, counts


def committee_of(kind: str, run: CampaignRun, tau: float | None = None):
    """The class's committee with the campaign's settings; `tau`, when given, replaces prior_sigma
    (`fit`: `delta`'s takes the linear class's evidence, so that both have the same prior)."""
    c, bb = run.campaign, run.backbone
    if kind == "linear":
        return Committee.from_settings(bb.theta0, c.committee, c.finetune), None
    settings = c.committee if tau is None else c.committee.model_copy(update={"prior_sigma": tau})
    readout = FullReadout(bb) if kind == "full" else DeltaReadout(bb, c.finetune.delta_width)
    cls = FullCommittee if kind == "full" else DeltaCommittee
    return cls.from_settings(readout, settings, c.finetune), readout


def fit(kind: str, run: CampaignRun, ids: list[int], moment: np.ndarray, kept: dict[tuple[str, int], HiddenTerms]):
    """(committee, readout map or None, seconds of the set-up, seconds of the fit alone). `kept` holds
    `delta`'s hidden-layer terms across checkpoints, keyed by (class, candidate) (its layers depend on
    the committee settings only); `full`'s graph parts are the run's cache (`CampaignRun.graph`). A
    checkpoint's set-up is that of its new labels. With prior_sigma: auto `full` takes τ and the
    model error from its own evidence (FullCommittee.evidence_prior), as a `full` campaign does, and
    `delta` the τ the linear class's evidence chose on the same labels (every class's prior is the
    RMS change of per-atom energies a draw makes; `delta`'s own evidence, per member, would compare
    the classes under different priors)."""
    ids, data = run.training_set(ids)   # in the store's order, which the graph must follow
    n_elements = len(run.backbone.z_table)
    tau = None
    if kind == "delta" and run.campaign.committee.prior_sigma == PRIOR_AUTO:
        tau = committee_of("linear", run)[0].fit(data, n_elements, moment=moment).tau_
    committee, readout = committee_of(kind, run, tau)
    t = time.perf_counter()
    if kind == "full":
        graph = run.graph(ids, readout)   # the run's per-label cache: a campaign's own, or filled here once
    elif kind == "delta":
        missing = [i for i in ids if (kind, i) not in kept]
        kept.update(zip([(kind, i) for i in missing], readout.hidden_terms(run.store.atoms(missing), committee.layers())))
        graph = [kept[kind, i] for i in ids]
    setup, t = time.perf_counter() - t, time.perf_counter()
    if readout is None:
        committee.fit(data, n_elements, moment=moment)
    else:
        committee.fit(data, graph, n_elements, moment=moment)
    return committee, readout, setup, time.perf_counter() - t


def predict(committee, readout, backbone: Backbone, frames) -> tuple[np.ndarray, np.ndarray]:
    """Committee mean and spread on `frames`."""
    return committee.predict(backbone.features(frames) if readout is None else readout.inputs(frames))


def bands_of(run: CampaignRun, transfer: tuple | None) -> list[tuple]:
    """(name, start images, reference, CI-NEB settings) of each observable, from the base model's path
    and relaxed as the run relaxes its own; with `transfer` (initial, final, reference) also that
    path, its end points interpolated."""
    bands = [(obs.name, reaction_path.images(run, obs, None), obs.reference, reaction_path.band_settings(run.campaign, obs))
             for obs in run.campaign.evaluation.observables]
    if transfer is not None:
        initial, final, reference = transfer
        bands.append(("transfer", interpolate(read(initial), read(final), len(bands[0][1]) - 2), reference,
                      bands[0][3]))
    return bands


def barriers(model, bands: list[tuple], run: CampaignRun) -> dict:
    """Each band's relaxed CI-NEB barrier (`bands_of`) on `model`, (backbone, θ). A path that left
    `run`'s base-model domain (its guard) has no error: it is kept, with where it left, and left out
    of the summary, as the loop leaves such a path out of its stop rule."""
    backbone, theta = model
    out = {}
    for name, images, reference, settings in bands:
        path = relax_path(images, backbone, theta=theta, **settings)
        left = reaction_path.outside_domain(run, path.images)
        out[name] = {"mean": float(path.barrier),
                     "error": float(path.barrier - reference) if reference is not None and not left else None}
        if left:
            out[name]["outside_domain"] = left
    return out


def force_mae(model, test, f_ref) -> float | None:
    """MAE (eV/Å) of `model`'s forces, (backbone, θ), against the test set's, or None when its frames
    carry no forces."""
    if f_ref is None:
        return None
    backbone, theta = model
    forces = np.concatenate(backbone.energy_forces(test, theta=theta)[1])
    return float(np.mean(np.abs(forces - f_ref)))


def scored(mae: float | None, observables: dict) -> list[str]:
    """The force MAE and each barrier of a row, as printed."""
    return ([] if mae is None else [f"force MAE {1000 * mae:.1f} meV/Å"]) + [
        f"{k} {v['mean']:.4f} eV" + (f" (path outside the domain, {v['outside_domain']})" if v.get("outside_domain") else "")
        for k, v in observables.items()]


def coverage(mean, spread, y, label_sigma) -> float | None:
    if len(y) == 0:
        return None
    return float(np.mean(np.abs(y - mean) <= 2 * np.hypot(spread, label_sigma)))


def measure(run: CampaignRun, checkpoints: list[int], classes: list[str], transfer: tuple | None = None,
            mf_settings: MultifidelitySettings | None = None, with_barriers: bool = True) -> list[dict]:
    mf_settings = mf_settings or MultifidelitySettings()
    order, counts = label_order(run)
    spec = run.campaign.evaluation.test_set
    test = read(spec.path, index=":")
    y_test = np.array([a.info[spec.energy_key] if spec.energy_key in a.info else a.get_potential_energy() for a in test])
    has_forces = all("forces" in a.arrays or (a.calc is not None and "forces" in a.calc.results) for a in test)
    f_test = np.concatenate([a.get_forces() for a in test]) if has_forces else None
    kept: dict[tuple[str, int], HiddenTerms] = {}
    moment = feature_moment(run.pool_rows(run.store.ids()))
    label_ids, energies, label_sigmas = run.store.labels()
    labels, sigmas = dict(zip(label_ids, energies)), dict(zip(label_ids, label_sigmas))
    bands = bands_of(run, transfer) if with_barriers else []
    base = (run.backbone, run.backbone.theta0)
    mae = force_mae(base, test, f_test)
    # no test RMSE: the base model's energies hold its teacher's per-element references, not the labels'
    rows = [{"run": run.run_dir.name, "seed": run.campaign.seed, "n_labels": 0, "class": "base", "fit_s": 0.0, "setup_s": 0.0,
             "test_rmse_meV": None, "test_within_2sigma": None,
             "force_mae_meV_per_A": None if mae is None else 1000 * mae, "observables": barriers(base, bands, run)}]
    parts = scored(mae, rows[0]["observables"])
    print(f"  {run.run_dir.name} base model: " + (", ".join(parts) or "no force or barrier to score"), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for n in [c for c in checkpoints if c in counts]:
            ids, later = order[:n], order[n:]
            for kind in classes:
                if kind == "multifidelity":
                    rows.append(multifidelity_row(run, ids, Path(tmp), mf_settings, test, y_test, f_test, bands))
                    continue
                try:
                    committee, readout, setup, seconds = fit(kind, run, ids, moment, kept)
                except NotConverged as err:   # recorded, and the other classes and checkpoints still run
                    rows.append({"run": run.run_dir.name, "seed": run.campaign.seed, "n_labels": n, "class": kind,
                                 "fit_s": None, "test_rmse_meV": None, "test_within_2sigma": None,
                                 "observables": {}, "not_converged": str(err)})
                    print(f"  {run.run_dir.name} N={n:3d} {kind:6}: not converged: {err}", flush=True)
                    continue
                mean, spread = predict(committee, readout, run.backbone, test)
                row = {"run": run.run_dir.name, "seed": run.campaign.seed, "n_labels": n, "class": kind,
                       "fit_s": round(seconds, 3), "setup_s": round(setup, 3), "prior_sigma": committee.tau_,
                       "model_error": getattr(committee, "model_error_", None),
                       "test_rmse_meV": 1000 * float(np.sqrt(np.mean((mean - y_test) ** 2))),
                       "test_within_2sigma": coverage(mean, spread, y_test, np.zeros(len(y_test)))}
                if later:
                    m, s = predict(committee, readout, run.backbone, run.store.atoms(later))
                    row["prospective_within_2sigma"] = coverage(m, s, np.array([labels[i] for i in later]),
                                                                np.array([sigmas[i] for i in later]))
                model = mean_surface(run.backbone, readout, committee)   # the exported committee-mean model
                mae = force_mae(model, test, f_test)
                row["force_mae_meV_per_A"] = None if mae is None else 1000 * mae
                row["observables"] = barriers(model, bands, run)
                rows.append(row)
                parts = ([f"test RMSE {row['test_rmse_meV']:7.2f} meV"] + scored(mae, row["observables"])
                         + [f"set-up {setup:.2f} s, fit {seconds:.2f} s"])
                print(f"  {row['run']} N={n:3d} {kind:6}: " + ", ".join(parts), flush=True)
    return rows


def multifidelity_row(run: CampaignRun, ids: list[int], folder: Path, settings: MultifidelitySettings,
                      test, y_test, f_test, bands: list[tuple]) -> dict:
    """`multifidelity`: one model (no committee, so no 2σ coverage), trained from the base model on
    the labels and model.training_data with `settings`, scored as the other classes are (test RMSE,
    force MAE, every band's relaxed barrier from the base model's path)."""
    campaign = run.campaign.model_copy(deep=True)
    campaign.finetune.multifidelity = settings
    saved, run.campaign = run.campaign, campaign
    try:
        result = multifidelity.run_training(run, len(ids), subset=ids, folder=folder / f"mf_{len(ids)}")
    finally:
        run.campaign = saved
    model = (Backbone.from_file(result.path, device=str(run.backbone.device)), None)
    energies = model[0].energy_forces(test)[0]
    mae = force_mae(model, test, f_test)
    row = {"run": run.run_dir.name, "seed": run.campaign.seed, "n_labels": len(ids), "class": "multifidelity",
           "fit_s": round(result.seconds, 3), "test_rmse_meV": 1000 * float(np.sqrt(np.mean((energies - y_test) ** 2))),
           "test_within_2sigma": None, "force_mae_meV_per_A": None if mae is None else 1000 * mae,
           "force_scale": result.force_scale, "settings": settings.model_dump(),
           "observables": barriers(model, bands, run)}
    parts = ([f"test RMSE {row['test_rmse_meV']:7.2f} meV"] + scored(mae, row["observables"])
             + [f"training {result.seconds:.0f} s (s_F {1000 * result.force_scale:.1f} meV/Å)"])
    print(f"  {row['run']} N={len(ids):3d} multifidelity: " + ", ".join(parts), flush=True)
    return row


def table(rows: list[dict], classes: list[str]) -> None:
    """Per label count and class, over runs: test RMSE, force MAE and each observable's error as mean /
    std / worst |·| (meV, meV/Å), the 2σ coverages and the fit time."""
    names = list(dict.fromkeys(k for r in rows for k in r["observables"]))
    print(f"\n{'class':13} {'N':>4} {'runs':>4} {'RMSE meV':>22} {'force MAE':>9} "
          + " ".join(f"{name + ' err meV':>24}" for name in names) + f" {'test 2σ':>8} {'prosp 2σ':>9} {'fit s':>7} {'set-up s':>8}")
    for n in sorted({r["n_labels"] for r in rows}):
        for kind in ["base", *classes]:
            sel = [r for r in rows if r["n_labels"] == n and r["class"] == kind]
            if not sel:
                continue
            rmse = np.array([r["test_rmse_meV"] for r in sel if r["test_rmse_meV"] is not None] or [np.nan])
            mae = [r["force_mae_meV_per_A"] for r in sel if r.get("force_mae_meV_per_A") is not None]
            cells = []
            for name in names:
                e = np.array([1000 * r["observables"][name]["error"] for r in sel
                              if r["observables"].get(name, {}).get("error") is not None])
                cells.append(f"{e.mean():+8.1f} {e.std():6.1f} {np.abs(e).max():8.1f}" if len(e) else f"{'—':>24}")
            def seconds(key):   # over the rows that have it (a fit that did not converge has none)
                return np.mean([r[key] for r in sel if r.get(key) is not None] or [np.nan])
            prosp = [r["prospective_within_2sigma"] for r in sel if r.get("prospective_within_2sigma") is not None]
            test2 = [r["test_within_2sigma"] for r in sel if r["test_within_2sigma"] is not None]
            print(f"{kind[:13]:13} {n:4d} {len(sel):4d} {rmse.mean():7.1f} {rmse.std():6.1f} {rmse.max():7.1f} "
                  f"{np.mean(mae) if mae else float('nan'):9.1f} " + " ".join(cells)
                  + f" {np.mean(test2) if test2 else float('nan'):8.2f} "
                  f"{np.mean(prosp) if prosp else float('nan'):9.2f} {seconds('fit_s'):7.2f} {seconds('setup_s'):8.2f}")
            stuck = sum("not_converged" in r for r in sel)
            if stuck:
                print(f"{'':13} {'':4} {stuck:4d} of them did not converge (NotConverged; the row's figures are the others')")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", required=True)
    parser.add_argument("--classes", nargs="+", default=list(CLASSES), choices=CLASSES)
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[20, 40])
    parser.add_argument("--threads", type=int, default=int(os.environ.get("ALOOP_TORCH_THREADS", "2")))
    parser.add_argument("--out", type=Path, default=Path("runs") / "model_classes.json")
    parser.add_argument("--mf-epochs", type=int, default=MultifidelitySettings().epochs,
                        help="multifidelity: epochs at most (default: the campaign default)")
    parser.add_argument("--mf-replay", type=int, default=MultifidelitySettings().replay,
                        help="multifidelity: configurations of model.training_data replayed")
    parser.add_argument("--mf-label-weight", type=float, default=MultifidelitySettings().label_weight,
                        help="multifidelity: multiplier of the labels' balanced energy weight")
    parser.add_argument("--transfer", nargs=3, metavar=("INITIAL", "FINAL", "REFERENCE"),
                        help="a path no label came near: its end points (files) and reference barrier (eV)")
    parser.add_argument("--no-barriers", action="store_true", help="leave out every CI-NEB barrier")
    parser.add_argument("--prior-sigma", metavar="TAU",
                        help="every class's committee.prior_sigma in place of the runs' own: TAU eV/atom, or auto "
                             "(each class's evidence; delta takes linear's)")
    parser.add_argument("--base", type=Path, metavar="MODEL",
                        help="refit with this base model (a MACE file) in place of the runs' own, on copies of "
                             "the runs made next to --out (OUT's name without .json, then -runs)")
    args = parser.parse_args()
    if args.base is not None and not args.base.is_file():
        parser.error(f"--base: no model file {args.base}")
    if args.prior_sigma is not None and args.prior_sigma != PRIOR_AUTO:
        try:
            args.prior_sigma = float(args.prior_sigma)
        except ValueError:
            args.prior_sigma = -1.0
        if not args.prior_sigma > 0:
            parser.error(f"--prior-sigma: a τ in eV/atom greater than 0, or {PRIOR_AUTO}")
    transfer = None
    if args.transfer and args.no_barriers:
        parser.error("--transfer asks for a barrier and --no-barriers for none: give one of them")
    if args.transfer:
        initial, final, reference = args.transfer
        for name in (initial, final):
            if not Path(name).is_file():
                parser.error(f"--transfer: no file {name}")
        try:
            transfer = (initial, final, float(reference))
        except ValueError:
            parser.error(f"--transfer: the reference barrier is a number in eV, got {reference!r}")
    try:
        mf_settings = MultifidelitySettings(epochs=args.mf_epochs, replay=args.mf_replay,
                                            label_weight=args.mf_label_weight)
    except ValueError as error:   # pydantic's ValidationError: a count or weight that is not positive
        option = {"epochs": "--mf-epochs", "replay": "--mf-replay", "label_weight": "--mf-label-weight"}
        bad = [option[str(e["loc"][0])] for e in error.errors()]
        parser.error(f"{', '.join(bad)}: must be greater than 0")
    torch.set_num_threads(args.threads)
    start = time.time()
    rows = []
    for folder in args.runs:
        print(f"{folder}:", flush=True)
        run = (CampaignRun.reopen(folder) if args.base is None
               else rebased(folder, args.base, args.out.with_name(args.out.stem + "-runs")))
        if args.prior_sigma is not None:
            c = run.campaign
            run.campaign = c.model_copy(update={"committee": c.committee.model_copy(update={"prior_sigma": args.prior_sigma})})
        rows += measure(run, args.checkpoints, args.classes, transfer, mf_settings, not args.no_barriers)
    table(rows, args.classes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "rows": rows, "runs": [str(r) for r in args.runs], "classes": args.classes,
        "base": None if args.base is None else str(args.base),
        "prior_sigma": args.prior_sigma,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads,
                    "cpu_count": os.cpu_count(),
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}, "wall_s": round(time.time() - start, 1)}, indent=1) + "\n")
    print(f"wrote {args.out}; {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
