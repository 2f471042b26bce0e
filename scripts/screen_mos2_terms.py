"""Screen candidate oracle terms on geometry alone, before any band is relaxed on them.

A term for the MoS2 oracle must raise the hop's saddle and leave a vibrating lattice alone. Both can
be read off configurations already on disk, with no CHGNet call:

- the prism term of oracle v2 (testbeds/mos2/prism.py), per unit amplitude, image by image along
  CHGNet's relaxed mono-vacancy band (mono_path_chgnet.extxyz), and its standard deviation over the
  base model's thermal training frames (lf_train.extxyz, md_mono and md_di, per temperature);
- an S–S squeeze term, Σ over S–S pairs of a smooth step that is 1 below r_in and 0 beyond r_out,
  for a few (r_in, r_out): the closest S–S distance at CHGNet's saddle and in the thermal frames,
  the term's rise from the band's first image to its saddle, and its thermal standard deviation.

A term whose thermal std is comparable to its rise at the saddle cannot raise the barrier without
also moving every thermal snapshot (target (c) of oracle v2); that is why the squeeze was not built.

    python scripts/screen_mos2_terms.py [--out FILE.json]

Prints the table; about a minute on one core.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np
from ase.io import read
from ase.neighborlist import neighbor_list

from testbeds.mos2.geometry import CAMPAIGN
from testbeds.mos2.oracle import VARIANTS
from testbeds.mos2.prism import S, prism_correction

SQUEEZE = ((2.3, 2.7), (2.4, 2.8), (2.5, 2.9))   # (r_in, r_out) in Å; S–S is 3.15–3.2 Å in the lattice
THERMAL = ("md_mono", "md_di")


def prism_per_amplitude(atoms) -> float:
    p = VARIANTS["prism"]
    energy, _ = prism_correction(atoms, 1.0, p["rho_in"], p["rho_out"], tuple(p["mo_mo"]), tuple(p["reach"]),
                                 tuple(p["partner"]))
    return energy


def sulfur_distances(atoms, cutoff: float = 3.5) -> np.ndarray:
    """Every S–S distance below `cutoff` (each pair once)."""
    i, j, d = neighbor_list("ijd", atoms, cutoff)
    keep = (atoms.numbers[i] == S) & (atoms.numbers[j] == S) & (i < j)
    return d[keep]


def squeeze(distances: np.ndarray, r_in: float, r_out: float) -> float:
    """Σ over pairs of a quintic smoothstep in r², 1 below r_in, 0 beyond r_out (per unit amplitude)."""
    x = np.clip((distances**2 - r_in**2) / (r_out**2 - r_in**2), 0.0, 1.0)
    return float(np.sum(1.0 - x**3 * (10.0 - 15.0 * x + 6.0 * x**2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="also write the measurements as JSON")
    args = parser.parse_args()

    band = read(CAMPAIGN / "mono_path_chgnet.extxyz", index=":")
    energies = np.array([a.get_potential_energy() for a in band])
    band_prism = np.array([prism_per_amplitude(a) for a in band])
    band_squeeze = {f"squeeze {a}-{b}": np.array([squeeze(sulfur_distances(x), a, b) for x in band]) for a, b in SQUEEZE}
    closest = np.array([sulfur_distances(a).min() for a in band])
    print(f"CHGNet's relaxed mono-vacancy band ({len(band)} images, barrier {energies.max() - energies[0]:.3f} eV "
          f"at image {int(np.argmax(energies))})")
    print("  energy (eV), image by image:   " + ", ".join(f"{v:.2f}" for v in energies - energies[0]))
    print("  prism term / A, image by image: " + ", ".join(f"{v:.2f}" for v in band_prism))
    print("  closest S–S (Å), image by image: " + ", ".join(f"{v:.2f}" for v in closest))
    # the rise a term gives the hop: its largest value along the band over its value at the start
    rise = {"prism": float(band_prism.max() - band_prism[0])} | {
        k: float(v.max() - v[0]) for k, v in band_squeeze.items()}

    frames = defaultdict(list)
    for atoms in read(CAMPAIGN / "lf_train.extxyz", index=":"):
        if atoms.info.get("config_type") in THERMAL:
            frames[(atoms.info["config_type"], int(atoms.info["temperature_K"]))].append(atoms)
    # per trajectory kind: a di-vacancy cell carries the term's constant once more than a mono one
    thermal = {}
    print("\nthermal frames of lf_train.extxyz, per unit amplitude (std within each kind and temperature):")
    print(f"{'frames':>14} {'n':>4} {'min S–S (Å)':>11} {'prism std':>9} " +
          " ".join(f"{f'squeeze {a}-{b}':>17}" for a, b in SQUEEZE))
    for (kind, temperature) in sorted(frames):
        group = frames[(kind, temperature)]
        distances = [sulfur_distances(a) for a in group]
        row = {"frames": len(group), "closest_S_S_A": float(min(d.min() for d in distances)),
               "prism_std": float(np.std([prism_per_amplitude(a) for a in group]))}
        row |= {f"squeeze {a}-{b}_std": float(np.std([squeeze(d, a, b) for d in distances])) for a, b in SQUEEZE}
        thermal[f"{kind} {temperature} K"] = row
        print(f"{kind + f' {temperature} K':>14} {len(group):4d} {row['closest_S_S_A']:11.2f} {row['prism_std']:9.3f} " +
              " ".join(f"{row[f'squeeze {a}-{b}_std']:17.3f}" for a, b in SQUEEZE))

    print("\nrise along the band (largest value over the first image's) and the largest thermal std, "
          "per unit amplitude:")
    worst = {k: max(row[f"{k}_std"] for row in thermal.values()) for k in rise}
    for k in rise:
        ratio = f"{worst[k] / rise[k]:.3f}" if rise[k] > 1e-3 else "(no rise: the term misses the hop)"
        print(f"  {k:18} rise {rise[k]:5.2f}   thermal std {worst[k]:5.3f}   std/rise {ratio}")
    if args.out:
        result = {"band": {"energy_eV": (energies - energies[0]).tolist(), "prism": band_prism.tolist(),
                           "closest_S_S_A": closest.tolist()} | {k: v.tolist() for k, v in band_squeeze.items()},
                  "thermal": thermal, "rise_per_amplitude": rise, "largest_thermal_std": worst}
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
