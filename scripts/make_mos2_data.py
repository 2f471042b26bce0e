"""CHGNet training data, explicit references and the held-out test set of campaigns/mos2-svac.

Everything here runs CHGNet 0.3.0 (weights inside the chgnet wheel; no download) on CPU:

1. geometry: the relaxed 4x4 monolayer, mono- and di-vacancy hop end points (relaxed on CHGNet)
   -> pristine.xyz, mono_initial.xyz, mono_final.xyz, di_initial.xyz, di_final.xyz, md_start.xyz
2. low-fidelity training data for the base model (lf_train.extxyz, CHGNet energies and forces):
   Langevin MD of the mono- and di-vacancy cells at 300, 600 and 900 K, snapshots of the
   mono-vacancy CI-NEB band as it converges, strained, rattled cells, and the saddle region of
   both hops: short MD started from every moving image of the converged CHGNet bands and rattled
   copies of those images (without them the base model grows a spurious minimum mid-hop)
3. explicit references: CI-NEB barriers of both hops on CHGNet and on the noise-free oracle (the
   campaign's labeler, testbeds.mos2.oracle.SyntheticHF, or any ASE calculator given by --oracle)
   -> reference.json, *_path_hf.extxyz
4. held-out test set (hf_test.extxyz): MD snapshots of the mono-vacancy cell (other seeds) and
   near-saddle configurations, with noise-free E_HF and −∇E_HF; never in any pool

    pip install -e ".[mos2]"   # the MoS2 testbed (CHGNet)
    python scripts/make_mos2_data.py [--seed 0] [--workers 2] [--oracle module:Class --parameters JSON]
    python scripts/make_mos2_data.py --only saddle   # remake only the saddle-region frames of lf_train.extxyz
                                                     # from the committed CHGNet paths

To remake only the oracle's part (references and test set) for another oracle, use
scripts/mos2_hf_references.py.
"""
from __future__ import annotations

import mace  # noqa: F401  (aloop imports mace; it must come before e3nn)

import argparse
import json
import multiprocessing
import platform
import time

import ase
import numpy as np
import torch
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

from testbeds.mos2.geometry import (CAMPAIGN, campaign_oracle, describe_oracle, high_fidelity, hop, low_fidelity, neb, relax,
                                    relaxed_monolayer, sites)

TEMPERATURES = (300, 600, 900)
MD_STEPS, MD_INTERVAL, MD_TIMESTEP = 600, 10, 2.0  # fs; 60 snapshots per trajectory
TEST_STEPS, TEST_INTERVAL = 400, 20
STRAINS = (-0.02, -0.01, 0.01, 0.02)
# The saddle region: 200 fs of MD from each moving band image (10 snapshots) at two temperatures,
# and rattled copies of the images, which MD leaves within tens of femtoseconds
SADDLE_TEMPERATURES, SADDLE_STEPS = (300, 600), 100
RATTLES, RATTLE_SIGMA = 4, 0.05  # copies per image, Å
SADDLE_TYPES = ("saddle_md", "saddle_rattle")


def labelled(atoms: Atoms, calc, **info) -> Atoms:
    """A plain copy of `atoms` carrying calc's energy and forces (and `info`)."""
    out = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    out.calc = calc
    energy, forces = out.get_potential_energy(), out.get_forces()
    out.calc = SinglePointCalculator(out, energy=energy, forces=forces)
    out.info.update(info)
    return out


def molecular_dynamics(start: Atoms, temperature: float, seed: int, steps: int, interval: int,
                       kind: str) -> list[Atoms]:
    atoms = start.copy()
    calc = low_fidelity()
    atoms.calc = calc
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    dynamics = Langevin(atoms, MD_TIMESTEP * units.fs, temperature_K=temperature, friction=0.01 / units.fs,
                        rng=rng, logfile=None)
    frames = []

    def keep():
        frames.append(labelled(atoms, calc, config_type=kind, temperature_K=temperature, seed=seed))

    dynamics.attach(keep, interval=interval)
    dynamics.run(steps)
    return frames[1:]  # the first is the start itself


def strained(start: Atoms, seed: int) -> list[Atoms]:
    calc = low_fidelity()
    rng = np.random.default_rng(seed)
    frames = []
    for exx in STRAINS:
        for eyy in (exx, 0.0):
            atoms = start.copy()
            strain = np.diag([1 + exx, 1 + eyy, 1.0])
            atoms.set_cell(atoms.cell @ strain, scale_atoms=True)
            atoms.positions += rng.normal(scale=0.03, size=atoms.positions.shape)
            frames.append(labelled(atoms, calc, config_type="strain", strain=[exx, eyy]))
    return frames


def displaced(path: list[Atoms], copies: int, sigma: float, rng: np.random.Generator) -> list[tuple[int, Atoms]]:
    """(image index, plain copy) for `copies` Gaussian displacements (`sigma` Å per coordinate) of
    each moving image of `path`, image by image."""
    out = []
    for i, image in enumerate(path[1:-1], start=1):
        for _ in range(copies):
            moved = Atoms(image.numbers, image.positions, cell=image.cell, pbc=image.pbc)
            moved.positions += rng.normal(scale=sigma, size=moved.positions.shape)
            out.append((i, moved))
    return out


def rattled(path: list[Atoms], hop_kind: str, seed: int) -> list[Atoms]:
    calc = low_fidelity()
    return [labelled(moved, calc, config_type="saddle_rattle", hop=hop_kind, image=i)
            for i, moved in displaced(path, RATTLES, RATTLE_SIGMA, np.random.default_rng(seed))]


def saddle_tasks(paths: dict[str, list[Atoms]], seed: int) -> list[tuple]:
    """MD from every moving image of the mono-vacancy CHGNet band; rattled images of both bands."""
    tasks = []
    for i, image in enumerate(paths["mono"][1:-1], start=1):
        start = Atoms(image.numbers, image.positions, cell=image.cell, pbc=image.pbc)
        for t, temperature in enumerate(SADDLE_TEMPERATURES):
            tasks.append((f"saddle_md_{i}_{temperature}", molecular_dynamics,
                          (start, temperature, seed * 100 + 200 + 10 * i + t, SADDLE_STEPS, MD_INTERVAL, "saddle_md")))
    for k, kind in enumerate(("mono", "di")):
        tasks.append((f"saddle_rattle_{kind}", rattled, (paths[kind], kind, seed * 100 + 95 + k)))
    return tasks


def run_tasks(tasks: list[tuple], workers: int) -> tuple[dict, dict]:
    results, seconds = {}, {}
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for name, result, wall in pool.imap_unordered(run_task, tasks):
            results[name], seconds[name] = result, round(wall, 1)
            print(f"  {name}: {wall:.0f} s", flush=True)
    return results, seconds


def saddle_frames(results: dict) -> list[Atoms]:
    return [a for name in sorted(results) if name.startswith("saddle_") for a in results[name]]


def only_saddle(args) -> None:
    """Replace the saddle-region frames of lf_train.extxyz, made from the committed CHGNet paths."""
    start = time.time()
    paths = {kind: read(CAMPAIGN / f"{kind}_path_chgnet.extxyz", ":") for kind in ("mono", "di")}
    results, _ = run_tasks(saddle_tasks(paths, args.seed), args.workers)
    kept = [a for a in read(CAMPAIGN / "lf_train.extxyz", ":") if a.info.get("config_type") not in SADDLE_TYPES]
    new = saddle_frames(results)
    write(CAMPAIGN / "lf_train.extxyz", kept + new, format="extxyz")
    print(f"{len(kept)} frames kept, {len(new)} saddle-region frames written; {time.time() - start:.0f} s")


def band(initial: Atoms, final: Atoms, fidelity: str, record: bool, oracle: tuple[str, dict]) -> dict:
    calc = low_fidelity() if fidelity == "chgnet" else high_fidelity(*oracle)
    snapshots: list[list[Atoms]] = []
    result = neb(initial, final, calc, record=snapshots.append if record else None)
    if record:
        lf = low_fidelity()
        result["snapshots"] = [labelled(a, lf, config_type="neb_band") for images in snapshots for a in images]
    return result


def path_test_images(hf_path: list[Atoms], seed: int) -> list[Atoms]:
    """Three displaced copies (0.05 Å Gaussian) of each moving image of the HF path: the test set's
    near-saddle configurations, which no pool source reaches."""
    out = [moved for _, moved in displaced(hf_path, 3, 0.05, np.random.default_rng(seed * 100 + 99))]
    for moved in out:
        moved.info["config_type"] = "test_path"
    return out


def run_task(task):
    torch.set_num_threads(1)
    name, function, args = task
    t = time.time()
    out = function(*args)
    return name, out, time.time() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--oracle", help="module:Class of the ASE calculator (default: the campaign's labeler)")
    parser.add_argument("--parameters", type=json.loads, help="its parameters, JSON (a noise parameter is set to 0)")
    parser.add_argument("--only", choices=["saddle"], help="remake only this part of lf_train.extxyz")
    args = parser.parse_args()
    if args.only == "saddle":
        return only_saddle(args)
    oracle = (args.oracle, args.parameters or {}) if args.oracle else campaign_oracle()
    start = time.time()
    torch.set_num_threads(1)
    out = CAMPAIGN

    pristine = relaxed_monolayer()
    hops = sites(pristine)
    lf, hf = low_fidelity(), high_fidelity(*oracle)
    geometry = {}
    for kind in ("mono", "di"):
        initial, final = hop(pristine, **hops[kind])
        geometry[kind, "chgnet"] = relax(initial, lf), relax(final, lf)
        geometry[kind, "hf"] = relax(initial, hf), relax(final, hf)
        write(out / f"{kind}_initial.xyz", geometry[kind, "chgnet"][0])
        write(out / f"{kind}_final.xyz", geometry[kind, "chgnet"][1])
    write(out / "pristine.xyz", pristine)
    print(f"geometry done in {time.time() - start:.0f} s; cell {np.round(pristine.cell.lengths(), 4)} Å", flush=True)

    mono, di = geometry["mono", "chgnet"][0], geometry["di", "chgnet"][0]
    tasks = [(f"band_{k}_{f}", band, (*geometry[k, f], f, k == "mono" and f == "chgnet", oracle))
             for k in ("mono", "di") for f in ("chgnet", "hf")]
    for t, temperature in enumerate(TEMPERATURES):
        tasks.append((f"md_mono_{temperature}", molecular_dynamics,
                      (mono, temperature, args.seed * 100 + t, MD_STEPS, MD_INTERVAL, "md_mono")))
        tasks.append((f"md_di_{temperature}", molecular_dynamics,
                      (di, temperature, args.seed * 100 + 10 + t, MD_STEPS, MD_INTERVAL, "md_di")))
        tasks.append((f"test_{temperature}", molecular_dynamics,
                      (mono, temperature, args.seed * 100 + 50 + t, TEST_STEPS, TEST_INTERVAL, "test_md")))
    tasks.append(("strain", strained, (mono, args.seed * 100 + 90)))
    tasks.append(("strain_pristine", strained, (pristine, args.seed * 100 + 91)))
    tasks.sort(key=lambda task: not task[0].startswith("band"))  # the slowest first

    results, seconds = run_tasks(tasks, args.workers)
    paths = {kind: results[f"band_{kind}_chgnet"]["images"] for kind in ("mono", "di")}
    saddle, saddle_seconds = run_tasks(saddle_tasks(paths, args.seed), args.workers)
    seconds |= saddle_seconds

    train = [a for name in sorted(results) if name.startswith(("md_", "strain")) for a in results[name]]
    train += results["band_mono_chgnet"]["snapshots"]
    train += saddle_frames(saddle)
    write(out / "lf_train.extxyz", train, format="extxyz")

    reference = {"units": "eV", "oracle": describe_oracle(hf, oracle[0])}
    for kind in ("mono", "di"):
        for fidelity in ("chgnet", "hf"):
            r = results[f"band_{kind}_{fidelity}"]
            reference[f"{kind}_barrier_{fidelity}"] = r["barrier"]
            reference[f"{kind}_path_{fidelity}"] = {"energies": r["energies"], "converged": r["converged"]}
            write(out / f"{kind}_path_{fidelity}.extxyz", r["images"], format="extxyz")
    mono_lf = results["band_mono_chgnet"]["images"]
    # MD from the CHGNet saddle and its neighbours samples the hop itself, which 900 K MD of the
    # vacancy never reaches in picoseconds (the barrier is over 1 eV)
    top = int(np.argmax(results["band_mono_chgnet"]["energies"]))
    write(out / "md_start.xyz", [mono, mono_lf[top - 2], mono_lf[top]])

    test = [a for t in TEMPERATURES for a in results[f"test_{t}"]]
    test += path_test_images(results["band_mono_hf"]["images"], args.seed)
    test = [labelled(a, hf, **{k: v for k, v in a.info.items() if k != "energy"}) for a in test]
    write(out / "hf_test.extxyz", test, format="extxyz")

    reference["sizes"] = {"lf_train": len(train), "hf_test": len(test)}
    reference["seed"] = args.seed
    reference["versions"] = {"python": platform.python_version(), "torch": torch.__version__,
                             "ase": ase.__version__, "numpy": np.__version__,
                             "chgnet": __import__("chgnet").__version__}
    reference["wall_s"] = seconds | {"total": round(time.time() - start, 1)}
    (out / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    for kind in ("mono", "di"):
        print(f"{kind}-vacancy hop: CHGNet {reference[f'{kind}_barrier_chgnet']:.3f} eV, "
              f"HF {reference[f'{kind}_barrier_hf']:.3f} eV")
    print(f"{len(train)} training configurations, {len(test)} test configurations; {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
