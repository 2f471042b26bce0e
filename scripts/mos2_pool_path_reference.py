"""The reference for campaigns/mos2-svac's `barrier` observable: the noise-free oracle along the hop
images the campaign's pool holds.

The observable is the committee's barrier along the pool source `hop`, the base model's CI-NEB of
the mono-vacancy hop, whose images stay where the base model put them. Its reference must be E_HF
along those same images, not the barrier of the HF-relaxed path (`mono_barrier_hf`, 1.64 eV with
the contact oracle): the base model's path squeezes the moving S past its neighbours (a spurious
minimum at the midpoint, docs/mos2-svac.md), where the contact oracle's ΔE is large. Rebuilds the
pool's hop exactly as `aloop run` does (same settings, same base model), evaluates E_HF without
noise, and writes `mono_barrier_hf_pool_path` and its energies into reference.json. About two
minutes on 2 cores. scripts/mos2_hf_references.py runs it too.

    pip install -e ".[mos2]"   # the MoS2 testbed (CHGNet)
    python scripts/mos2_pool_path_reference.py [--oracle module:Class --parameters JSON] [--out DIR]
"""
from __future__ import annotations

import mace  # noqa: F401  (mace must be imported before e3nn)

import argparse
import json
from pathlib import Path

import numpy as np

from aloop.backbone import Backbone
from aloop.campaign import load_campaign
from aloop.pool import generate
from testbeds.mos2.geometry import CAMPAIGN, campaign_oracle, high_fidelity


def pool_path_reference(hf) -> dict:
    """E_HF (`hf`, an ASE calculator) along the pool's hop images, relative to the first image."""
    c = load_campaign(CAMPAIGN / "campaign.yaml")
    spec = next(s for s in c.pool.sources if s.name == "hop")
    frames, _ = generate(spec, Backbone.from_file(c.model.path, device="cpu"), c.seed)
    energies = []
    for atoms in frames:
        atoms.calc = hf
        energies.append(atoms.get_potential_energy())
    relative = np.array(energies) - energies[0]
    return {"mono_barrier_hf_pool_path": float(relative.max()),
            "mono_pool_path_hf": {"energies": relative.tolist(), "images": len(frames)}}


def oracle_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--oracle", help="module:Class of the ASE calculator (default: the campaign's labeler)")
    parser.add_argument("--parameters", type=json.loads, help="its parameters, JSON (a noise parameter is set to 0)")
    parser.add_argument("--out", type=Path, default=CAMPAIGN,
                        help="folder of reference.json (default: the campaign's); it must hold one already")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    oracle_arguments(parser)
    args = parser.parse_args()
    oracle, parameters = (args.oracle, args.parameters or {}) if args.oracle else campaign_oracle()
    result = pool_path_reference(high_fidelity(oracle, parameters))
    path = args.out / "reference.json"
    reference = json.loads(path.read_text())
    path.write_text(json.dumps(reference | result, indent=1) + "\n")
    print(f"E_HF along the pool's hop ({result['mono_pool_path_hf']['images']} images), relative to the first: "
          + " ".join(f"{e:.3f}" for e in result["mono_pool_path_hf"]["energies"])
          + f"; barrier {result['mono_barrier_hf_pool_path']:.4f} eV")


if __name__ == "__main__":
    main()
