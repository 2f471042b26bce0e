"""One fine-tuning iteration: aloop's committee against mace's own readout fine-tuning, side by side.

Both start from the MoS2 base model (campaigns/mos2-svac/base_chgnet.model) and see the same labels:
the first N oracle labels of a data-efficiency run (benchmarks/data_efficiency.py), 90 % to train
and 10 % to validate, with the base model's forces as the low-fidelity force targets.

- aloop: K members, the force-constrained loss, each solved to its minimiser (Newton). Timed
  twice: the fit alone (backbone features and force Jacobians cached, as in a campaign, where they
  are computed once per configuration), and from nothing (features and Jacobians included).
- mace: `mace_run_train --foundation_model base --freeze 6` (the readouts stay trainable) on energies
  and forces, `--epochs` epochs, once per member. On this CPU one member is timed and
  multiplied by K unless --mace-members says otherwise.

Prints the time of each, their ratio, and the validation energy RMSE of each (committee mean for
aloop). Run after data_efficiency.py:

    pip install -e ".[mos2]"   # the MoS2 testbed (CHGNet)
    python benchmarks/finetune_vs_mace.py [--run runs/data_efficiency/diverse-s0] [--labels 500] [--epochs 10]
"""
from __future__ import annotations

import mace  # noqa: F401  (mace must be imported before e3nn)

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.io import write

from aloop.backbone import Backbone
from aloop.committee import TrainingSet
from aloop.arrays import feature_moment

from data_efficiency import CAMPAIGN, ROOT, campaign_for  # noqa: E402  (this folder: the script's own)

from aloop.loop import CampaignRun  # noqa: E402


def labelled_set(run: CampaignRun, n: int):
    ids, energy, sigma = run.store.labels()
    if len(ids) < n:
        sys.exit(f"{run.run_dir} has {len(ids)} labels; run benchmarks/data_efficiency.py first (needs {n})")
    return ids[:n], energy[:n], sigma[:n]


def mace_files(run: CampaignRun, ids, energy, folder: Path) -> list[Atoms]:
    frames = []
    for cid, atoms, e, jac in zip(ids, run.store.atoms(ids), energy, run.jacobians(ids)):
        forces = run.lf_forces(cid, jac)
        plain = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        plain.info["REF_energy"] = float(e)
        plain.arrays["REF_forces"] = np.asarray(forces)
        frames.append(plain)
    write(folder / "all.xyz", frames, format="extxyz")
    return frames


def validation_rmse(model_path: Path, frames: list[Atoms], energies: np.ndarray) -> float:
    predicted, _ = Backbone.from_file(model_path, device="cpu").energy_forces(frames)
    return float(np.sqrt(np.mean((np.asarray(predicted) - energies) ** 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "data_efficiency" / "diverse-s0")
    parser.add_argument("--labels", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--mace-members", type=int, default=1, help="mace fine-tunes actually run (then ×K)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "finetune_vs_mace")
    args = parser.parse_args()
    threads = int(os.environ.get("ALOOP_TORCH_THREADS", "1"))
    torch.set_num_threads(threads)
    args.out.mkdir(parents=True, exist_ok=True)

    c = campaign_for(args.run.parent, args.run.name.rsplit("-s", 1)[0], int(args.run.name.rsplit("-s", 1)[1]))
    c.committee.size = args.members
    run = CampaignRun(c, progress=False)
    ids, energy, sigma = labelled_set(run, args.labels)
    order = np.random.default_rng(0).permutation(len(ids))
    n_valid = len(ids) // 10
    valid, train = np.sort(order[:n_valid]), np.sort(order[n_valid:])
    frames = mace_files(run, ids, energy, args.out)
    train_ids = [ids[i] for i in train]

    # aloop: the fit alone, then with features and Jacobians recomputed from the structures
    moment = feature_moment(run.pool_rows(run.store.ids()))
    _, data_cached = run.training_set(train_ids)
    t = time.perf_counter()
    committee = run.new_committee().fit(data_cached, len(run.backbone.z_table), moment=moment)
    aloop_fit = time.perf_counter() - t
    t = time.perf_counter()
    atoms = run.store.atoms(train_ids)
    feats = run.backbone.features(atoms)
    jac = run.backbone.force_jacobians(atoms)
    fresh = TrainingSet.build(feats, energy[train], sigma[train], jac,
                              [run.lf_forces(i, j) for i, j in zip(train_ids, jac)], ids=train_ids)
    run.new_committee().fit(fresh, len(run.backbone.z_table), moment=moment)
    aloop_scratch = time.perf_counter() - t
    valid_frames = [frames[i] for i in valid]
    mean, _ = committee.predict(run.backbone.features(valid_frames))
    aloop_rmse = float(np.sqrt(np.mean((mean - energy[valid]) ** 2)))

    # mace: one readout fine-tune per member, timed end to end
    write(args.out / "train.xyz", [frames[i] for i in train], format="extxyz")
    write(args.out / "valid.xyz", valid_frames, format="extxyz")
    mace_times, mace_rmse = [], []
    for k in range(args.mace_members):
        name = f"member{k}"
        command = [
            "mace_run_train", f"--name={name}", f"--foundation_model={CAMPAIGN / 'base_chgnet.model'}",
            "--freeze=6", "--multiheads_finetuning=False", "--train_file=train.xyz", "--valid_file=valid.xyz",
            "--energy_key=REF_energy", "--forces_key=REF_forces", "--E0s=foundation", "--loss=weighted",
            "--energy_weight=1.0", "--forces_weight=1.0", f"--max_num_epochs={args.epochs}", "--batch_size=8",
            "--lr=0.005", "--device=cpu", "--default_dtype=float64", f"--seed={k}", "--eval_interval=1000",
            "--save_cpu",
        ]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        t = time.perf_counter()
        result = subprocess.run(command, cwd=args.out, capture_output=True, text=True, env=env)
        mace_times.append(time.perf_counter() - t)
        if result.returncode != 0:
            sys.exit(f"mace_run_train failed:\n{result.stderr[-3000:]}")
        mace_rmse.append(validation_rmse(args.out / f"{name}.model", valid_frames, energy[valid]))
    mace_total = float(np.mean(mace_times)) * args.members

    summary = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": threads,
                    "torch": torch.__version__, "mace": mace.__version__},
        "labels": {"train": int(len(train)), "valid": int(len(valid))}, "epochs": args.epochs,
        "members": args.members,
        "aloop": {"fit_s": aloop_fit, "from_scratch_s": aloop_scratch, "valid_rmse_meV": 1000 * aloop_rmse},
        "mace": {"per_member_s": mace_times, "members_run": args.mace_members, "total_s": mace_total,
                 "valid_rmse_meV": [1000 * r for r in mace_rmse]},
        "speedup_fit": mace_total / aloop_fit, "speedup_from_scratch": mace_total / aloop_scratch,
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{len(train)} training labels, {len(valid)} validation, {args.epochs} epochs, K = {args.members}, "
          f"{threads} thread(s)")
    print(f"aloop committee fit:            {aloop_fit:8.1f} s   validation RMSE {1000 * aloop_rmse:.1f} meV")
    print(f"aloop incl. features+Jacobians: {aloop_scratch:8.1f} s")
    print(f"mace_run_train ×{args.members}:             {mace_total:8.1f} s   validation RMSE "
          f"{', '.join(f'{1000 * r:.1f}' for r in mace_rmse)} meV ({args.mace_members} run, "
          f"{np.mean(mace_times):.1f} s each)")
    print(f"speed-up: {summary['speedup_fit']:.0f}× (fit), {summary['speedup_from_scratch']:.0f}× (from scratch)")


if __name__ == "__main__":
    main()
