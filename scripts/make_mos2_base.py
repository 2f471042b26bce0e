"""Base MACE model of MoS2 with S vacancies at CHGNet (PBE) level: the start of campaigns/mos2-svac.

Trains a small float64 ScaleShiftMACE (Mo, S) on lf_train.extxyz (CHGNet 0.3.0 energies and forces
from scripts/make_mos2_data.py: MD of the mono- and di-vacancy cells at 300/600/900 K, the
mono-vacancy CI-NEB band, strained cells, the saddle region of both hops), saves it with torch.save (base_chgnet.model, loadable
by MACECalculator and aloop), and checks its climbing-image NEB barrier of the mono-vacancy hop
against CHGNet's (reference.json) and that the band has no minimum between its end points. Each
surface is also evaluated along the other's relaxed band, which tells a miss in the saddle's energy
from a path that goes elsewhere.
Validation errors are reported for thermal, band (saddle-region) and strained configurations apart.

    pip install -e ".[mos2]"   # the MoS2 testbed (CHGNet)
    python scripts/make_mos2_base.py [--seed 0] [--epochs 50] [--device cpu] [--evaluate-only]
        [--start-from MODEL] [--late-phase 0.7] [--hidden-irreps 32x0e+32x1o]
        [--out campaigns/mos2-svac/base_chgnet.model]

--start-from trains an existing model further (same data and split) instead of a new one; --out
writes the model, and its json beside it, elsewhere than the campaign's (a candidate base model).

Exits with status 1 when the model's barrier misses CHGNet's by more than 0.05 eV, or its band dips
below the lower end state by more than 0.02 eV between them (a spurious minimum).
"""
from __future__ import annotations

import mace  # noqa: F401  (mace must be imported before e3nn)

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import ase
import numpy as np
import torch
from ase.io import read
from mace import modules
from mace import tools as mace_tools
from e3nn import o3  # after mace, which needs to come first

from aloop.backbone import Backbone
from aloop.neb import BatchedCalculator

from mace_fit import Schedule, build_model, least_squares_e0, loader, rmse, train, train_valid_split
from testbeds.mos2.geometry import CAMPAIGN, low_fidelity, neb

ATOMIC_NUMBERS = [16, 42]  # S, Mo
BARRIER_TOLERANCE = 0.05
SPURIOUS_DIP = 0.02  # eV below the lower end state, between the end points
GROUPS = {"thermal": ("md_mono", "md_di"), "band": ("neb_band", "saddle_md", "saddle_rattle"), "strain": ("strain",)}
MODEL = {
    "r_max": 5.0,
    "num_bessel": 8,
    "num_polynomial_cutoff": 5,
    "max_ell": 2,
    "num_interactions": 2,
    "hidden_irreps": "32x0e+32x1o",
    "MLP_irreps": "16x0e",
    "correlation": 2,
    "interaction": "RealAgnosticResidualInteractionBlock",
}


def fit(model, train_loader, valid_loader, schedule: Schedule, args) -> torch.nn.Module:
    print(f"training on {len(train_loader.dataset)} configurations, validating on {len(valid_loader.dataset)}; "
          f"{sum(p.numel() for p in model.parameters())} parameters", flush=True)
    if args.device != "cpu":
        model = model.to(args.device)
        train_loader = [b.to(args.device) for b in train_loader]
        valid_loader = [b.to(args.device) for b in valid_loader]
    # Forces carry 3N numbers per cell and shape the surface between samples; the late phase
    # tightens energies, which the barrier depends on.
    return train(model, train_loader, valid_loader, schedule, report_every=10).to("cpu")


def cross_check(backbone: Backbone, model_path: list[ase.Atoms], chgnet_path: list[ase.Atoms]) -> dict:
    """Each surface along the other's relaxed band: whether a barrier miss lies in the energies at
    the saddle (the model low along CHGNet's own images too) or in where the model's path goes."""
    def profile(images, calc) -> dict:
        energies = []
        for image in images:
            image = image.copy()
            image.calc = calc
            energies.append(image.get_potential_energy())
        energies = np.asarray(energies) - energies[0]
        return {"barrier": float(energies.max()), "energies": energies.tolist()}

    return {"model_on_chgnet_path": profile(chgnet_path, BatchedCalculator(backbone, chgnet_path)),
            "chgnet_on_model_path": profile(model_path, low_fidelity())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="load the model at --out instead of training it; redo the checks and the json "
                             "(its training record kept)")
    parser.add_argument("--start-from", type=Path, metavar="MODEL",
                        help="train this model further instead of a new one (same data, same split)")
    parser.add_argument("--hidden-irreps", default=MODEL["hidden_irreps"],
                        help="the backbone's width for a new model (default %(default)s)")
    parser.add_argument("--late-phase", type=float, default=0.7,
                        help="fraction of the epochs after which energies weigh 100 instead of 1 (0: 100 throughout)")
    parser.add_argument("--out", type=Path, default=CAMPAIGN / "base_chgnet.model",
                        help="where the model goes, its json beside it (default: the campaign's base model)")
    args = parser.parse_args()
    if args.start_from is not None and not args.start_from.is_file():
        parser.error(f"--start-from: no model file {args.start_from}")
    if args.hidden_irreps != MODEL["hidden_irreps"] and (args.start_from or args.evaluate_only):
        parser.error("--hidden-irreps: only for a new model; --start-from and --evaluate-only keep the model's own width")
    try:
        irreps = o3.Irreps(args.hidden_irreps)
    except (ValueError, AssertionError):
        irreps = None
    if irreps is None or {str(ir) for _, ir in irreps} != {"0e", "1o"} or len({mul for mul, _ in irreps}) != 1:
        parser.error(f"--hidden-irreps: like 64x0e+64x1o (as many scalars as vectors); got {args.hidden_irreps!r}")
    if not 0 <= args.late_phase <= 1:
        parser.error(f"--late-phase: a fraction of the epochs, 0 to 1; got {args.late_phase}")
    start = time.time()
    out = CAMPAIGN
    frames = read(out / "lf_train.extxyz", index=":")
    reference = json.loads((out / "reference.json").read_text())

    torch.set_default_dtype(torch.float64)
    torch.manual_seed(args.seed)
    train_frames, valid_frames = train_valid_split(frames, args.seed)
    z_table = mace_tools.AtomicNumberTable(ATOMIC_NUMBERS)
    train_loader = loader(train_frames, z_table, MODEL["r_max"], args.batch_size, seed=args.seed)
    valid_loader = loader(valid_frames, z_table, MODEL["r_max"], 32)
    e0s = least_squares_e0(train_frames, ATOMIC_NUMBERS)
    if args.start_from is not None:
        model = torch.load(args.start_from, weights_only=False)
    else:
        model = build_model(MODEL | {"hidden_irreps": args.hidden_irreps}, ATOMIC_NUMBERS, e0s, train_frames, modules.compute_avg_num_neighbors(train_loader))
    model_path = args.out
    schedule = Schedule(epochs=args.epochs, lr=args.lr, force_weight=10.0, energy_weights=(1.0, 100.0),
                        late_phase=args.late_phase)
    if args.evaluate_only:
        model = torch.load(model_path, weights_only=False)
    else:
        model = fit(model, train_loader, valid_loader, schedule, args)
        model_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model, model_path)
    model.eval()
    train_done = time.time()
    train_loader = loader(train_frames, z_table, MODEL["r_max"], 32)
    valid_loader = loader(valid_frames, z_table, MODEL["r_max"], 32)
    errors = {"train": rmse(model, train_loader), "validation": rmse(model, valid_loader)}
    for group, kinds in GROUPS.items():
        chosen = [a for a in valid_frames if a.info.get("config_type") in kinds]
        if chosen:
            errors[f"validation_{group}"] = rmse(model, loader(chosen, z_table, MODEL["r_max"], 32)) | {"n": len(chosen)}

    initial, final = read(out / "mono_initial.xyz"), read(out / "mono_final.xyz")
    backbone = Backbone(model, device="cpu")
    band = neb(initial, final, lambda images: BatchedCalculator(backbone, images))
    miss = band["barrier"] - reference["mono_barrier_chgnet"]
    energies = np.asarray(band["energies"])
    dip = float(min(energies[0], energies[-1]) - energies[1:-1].min())
    crossed = cross_check(backbone, band["images"], read(out / "mono_path_chgnet.extxyz", index=":"))

    metadata = {
        "seed": args.seed,
        "data": "lf_train.extxyz: CHGNet 0.3.0 energies and forces (scripts/make_mos2_data.py)",
        "sizes": {
            "total": len(frames), "train": len(train_frames), "validation": len(valid_frames),
            "by_config_type": {kind: sum(a.info.get("config_type") == kind for a in frames)
                               for kind in sorted({a.info.get("config_type") for a in frames})},
        },
        "rmse": errors,
        "model": MODEL | {"hidden_irreps": str(model.interactions[0].hidden_irreps), "e0_eV": dict(zip(["S", "Mo"], e0s.tolist())),
                          "parameters": sum(p.numel() for p in model.parameters())},
        "training": asdict(schedule) | {"batch_size": args.batch_size, "device": args.device,
                                        "start_from": None if args.start_from is None else str(args.start_from)},
        "neb": {"barrier": band["barrier"], "converged": band["converged"], "energies": band["energies"],
                "chgnet_barrier": reference["mono_barrier_chgnet"], "difference": miss,
                "dip_below_end_states": dip} | crossed,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "mace": mace.__version__,
                     "ase": ase.__version__, "numpy": np.__version__},
        "wall_s": {"training": None if args.evaluate_only else round(train_done - start, 1),
                   "total": round(time.time() - start, 1)},
    }
    record = model_path.with_suffix(".json")
    if args.evaluate_only and record.is_file():
        # A re-evaluation must not overwrite how the model was trained with this command's defaults.
        trained = json.loads(record.read_text())
        metadata["seed"], metadata["training"] = trained["seed"], trained["training"]
        metadata["wall_s"] = trained["wall_s"] | {"evaluation": metadata["wall_s"]["total"]}
    record.write_text(json.dumps(metadata, indent=1) + "\n")
    for split, e in errors.items():
        print(f"{split}: E {e['energy_meV']:.1f} meV ({e['energy_meV_per_atom']:.2f} meV/atom), "
              f"F {e['forces_meV_per_A']:.1f} meV/A")
    print(f"mono-vacancy NEB barrier on the model: {band['barrier']:.3f} eV (converged: {band['converged']}); "
          f"CHGNet {reference['mono_barrier_chgnet']:.3f} eV (difference {miss:+.3f} eV)")
    print(f"lowest image between the end points: {abs(dip):.3f} eV {'below' if dip > 0 else 'above'} the lower end state")
    print(f"the model along CHGNet's relaxed images: barrier {crossed['model_on_chgnet_path']['barrier']:.3f} eV; "
          f"CHGNet along the model's: {crossed['chgnet_on_model_path']['barrier']:.3f} eV")
    print(f"training took {train_done - start:.0f} s; total {time.time() - start:.0f} s")
    if abs(miss) > BARRIER_TOLERANCE or not band["converged"]:
        sys.exit(f"model barrier misses the CHGNet barrier by more than {BARRIER_TOLERANCE} eV")
    if dip > SPURIOUS_DIP:
        sys.exit(f"model band has a spurious minimum {dip:.3f} eV below its end states")


if __name__ == "__main__":
    main()
