"""Explicit high-fidelity references and the held-out test set of campaigns/mos2-svac, for an oracle.

The oracle is any ASE calculator given by import path and parameters (default: the campaign's
labeler, testbeds.mos2.oracle:SyntheticHF with its parameters); a `noise` parameter is set to 0.
For it this script relaxes both hops' end points (from the CHGNet ones), runs their CI-NEBs (mono-
and di-vacancy, 7 moving images, fmax 0.03 eV/Å, in parallel), rebuilds the test set's near-saddle
configurations around the new mono-vacancy path, relabels every test configuration with E and −∇E,
and evaluates the oracle along the pool's hop (the `barrier` observable's reference,
scripts/mos2_pool_path_reference.py). It writes reference.json (the *_hf entries and the oracle),
mono_path_hf.extxyz, di_path_hf.extxyz and hf_test.extxyz into --out; the CHGNet data, end points
and training set (scripts/make_mos2_data.py) are read from the campaign and not touched.

    pip install -e ".[mos2]"   # the MoS2 testbed (CHGNet)
    python scripts/mos2_hf_references.py [--oracle module:Class --parameters JSON] [--out DIR]

e.g. oracle v2 into a new folder:
    python scripts/mos2_hf_references.py --oracle testbeds.mos2.oracle:SyntheticHF \
        --parameters '{"variant": "hollow"}' --out runs/mos2-v2-references
"""
from __future__ import annotations

import mace  # noqa: F401  (mace must be imported before e3nn)

import argparse
import json
import multiprocessing
import shutil
import time

import torch
from ase.io import read, write

from make_mos2_data import labelled, path_test_images
from mos2_pool_path_reference import oracle_arguments, pool_path_reference
from testbeds.mos2.geometry import CAMPAIGN, campaign_oracle, describe_oracle, high_fidelity, neb, relax


def hop_reference(task) -> tuple[str, dict]:
    kind, oracle = task
    torch.set_num_threads(1)
    hf = high_fidelity(*oracle)
    initial = relax(read(CAMPAIGN / f"{kind}_initial.xyz"), hf)
    final = relax(read(CAMPAIGN / f"{kind}_final.xyz"), hf)
    return kind, neb(initial, final, hf)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    oracle_arguments(parser)
    args = parser.parse_args()
    start = time.time()
    oracle = (args.oracle, args.parameters or {}) if args.oracle else campaign_oracle()
    hf = high_fidelity(*oracle)   # a wrong path or parameter fails now, not in a worker
    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.out / "reference.json").exists():
        shutil.copy(CAMPAIGN / "reference.json", args.out / "reference.json")   # its CHGNet entries stay
    reference = json.loads((args.out / "reference.json").read_text())
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        bands = dict(pool.map(hop_reference, [("mono", oracle), ("di", oracle)]))
    reference["oracle"] = describe_oracle(hf, oracle[0])
    for kind, band in bands.items():
        reference[f"{kind}_barrier_hf"] = band["barrier"]
        reference[f"{kind}_path_hf"] = {"energies": band["energies"], "converged": band["converged"]}
        write(args.out / f"{kind}_path_hf.extxyz", band["images"], format="extxyz")
        print(f"{kind}-vacancy hop: CHGNet {reference[f'{kind}_barrier_chgnet']:.3f} eV, "
              f"HF {band['barrier']:.3f} eV (converged: {band['converged']})")
    test = [a for a in read(CAMPAIGN / "hf_test.extxyz", ":") if a.info.get("config_type") != "test_path"]
    test += path_test_images(bands["mono"]["images"], reference.get("seed", 0))
    test = [labelled(a, hf, **{k: v for k, v in a.info.items() if k != "energy"}) for a in test]
    write(args.out / "hf_test.extxyz", test, format="extxyz")
    reference |= pool_path_reference(hf)
    reference["wall_s"] = reference.get("wall_s", {}) | {"hf_references": round(time.time() - start, 1)}
    (args.out / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    print(f"relabelled {len(test)} test configurations; pool-path barrier {reference['mono_barrier_hf_pool_path']:.4f} eV; "
          f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
