"""Peak memory and time of the per-atom gradients ∂ε_i/∂φ that `readout: full` needs (the prior of
ω, and the whitening of every L-BFGS round), taken two ways side by side on the shipped MoS2 base
model's MLP readout:

- `jacrev`: torch.func.jacrev of all atoms' energies at once (what aloop did until 2026-12-05):
  reverse mode over every output carries every atom's intermediates for every output, so memory
  grows with the square of the atoms;
- `node_jacobian`: FullReadout.node_jacobian, the gradient of one atom's energy mapped over the
  atoms in chunks: memory linear in the atoms.

Each method and size runs in a fresh process (peak resident memory is per process), on N cells of
47 atoms' worth of random readout inputs (the cost does not depend on their values), and the two
results are compared. One torch thread.

    python benchmarks/node_jacobian_memory.py [--cells 10 20 40] [--linear-only 150 500]
"""
from __future__ import annotations

import mace  # noqa: F401  (mace must be imported before e3nn)

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "campaigns" / "mos2-svac" / "base_chgnet.model"
ATOMS = 47


def measure(method: str, cells: int) -> dict:
    from aloop.backbone import Backbone
    from aloop.full_readout import FullReadout

    torch.set_num_threads(1)
    full = FullReadout(Backbone.from_file(MODEL, device="cpu"))
    rng = np.random.default_rng(0)
    h = [torch.as_tensor(rng.normal(size=(cells * ATOMS, d))) for d in full.widths]
    phi = torch.as_tensor(full.phi0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if method == "jacrev":
        jac = torch.func.jacrev(lambda p: full.node_energies(p, h))(phi)
    else:
        jac = full.node_jacobian(phi, h)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"method": method, "cells": cells, "seconds": seconds, "extra_MB": (peak - before) / 1024,
            "checksum": float((jac**2).sum()), "first": jac[:3, -5:].tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, nargs="+", default=[10, 20, 40], help="sizes run both ways")
    parser.add_argument("--linear-only", type=int, nargs="*", default=[150, 500],
                        help="sizes run by node_jacobian alone (jacrev would need tens of GB)")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)   # the child process: METHOD CELLS
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]))))
        return

    def child(method, cells):
        out = subprocess.run([sys.executable, __file__, "--one", method, str(cells)], capture_output=True, text=True,
                             check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    print(f"{'cells':>6} {'atoms':>6} {'jacrev MB':>10} {'jacrev s':>9} {'node_jacobian MB':>17} {'s':>6} {'ratio MB':>9} "
          f"{'equal':>6}")
    for cells in args.cells + args.linear_only:
        new = child("node_jacobian", cells)
        old = child("jacrev", cells) if cells in args.cells else None
        same = "" if old is None else str(bool(np.isclose(old["checksum"], new["checksum"], rtol=1e-12)
                                                and np.allclose(old["first"], new["first"], rtol=0, atol=1e-12)))
        print(f"{cells:6d} {cells * ATOMS:6d} {old['extra_MB'] if old else float('nan'):10.0f} "
              f"{old['seconds'] if old else float('nan'):9.2f} {new['extra_MB']:17.0f} {new['seconds']:6.2f} "
              f"{old['extra_MB'] / max(new['extra_MB'], 1) if old else float('nan'):9.0f} {same:>6}", flush=True)


if __name__ == "__main__":
    main()
