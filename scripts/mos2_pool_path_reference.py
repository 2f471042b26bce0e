"""The reference for campaigns/mos2-svac's `barrier` observable: the noise-free oracle along the hop
images the campaign's pool holds.

The observable is the committee's barrier along the pool source `hop`, the base model's CI-NEB of
the mono-vacancy hop, whose images stay where the base model put them. Its reference must be E_HF
along those same images, not the barrier of the HF-relaxed path (`mono_barrier_hf`, 1.64 eV): the
base model's path squeezes the moving S past its neighbours (a spurious minimum at the midpoint,
docs/mos2-svac.md), where ΔE is large. Rebuilds the pool's hop exactly as `aloop run` does (same
settings, same base model), evaluates E_HF without noise, and writes `mono_barrier_hf_pool_path`
and its energies into reference.json. About two minutes on 2 cores.

    pip install -e ".[mos2]"   # the MoS2 testbed (CHGNet)
    python scripts/mos2_pool_path_reference.py
"""
from __future__ import annotations

import mace  # noqa: F401  (mace must be imported before e3nn)

import json

import numpy as np

from aloop.backbone import Backbone
from aloop.campaign import load_campaign
from aloop.pool import generate
from testbeds.mos2.geometry import CAMPAIGN, high_fidelity


def main() -> None:
    c = load_campaign(CAMPAIGN / "campaign.yaml")
    spec = next(s for s in c.pool.sources if s.name == "hop")
    frames, _ = generate(spec, Backbone.from_file(c.model.path, device="cpu"), c.seed)
    hf = high_fidelity()
    energies = []
    for atoms in frames:
        atoms.calc = hf
        energies.append(atoms.get_potential_energy())
    relative = np.array(energies) - energies[0]
    path = CAMPAIGN / "reference.json"
    reference = json.loads(path.read_text())
    reference["mono_barrier_hf_pool_path"] = float(relative.max())
    reference["mono_pool_path_hf"] = {"energies": relative.tolist(), "images": len(frames)}
    path.write_text(json.dumps(reference, indent=1) + "\n")
    print(f"E_HF along the pool's hop ({len(frames)} images), relative to the first: "
          + " ".join(f"{e:.3f}" for e in relative) + f"; barrier {relative.max():.4f} eV")


if __name__ == "__main__":
    main()
