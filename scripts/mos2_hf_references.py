"""Explicit high-fidelity references and the held-out test set of campaigns/mos2-svac, for an oracle.

The oracle is any ASE calculator given by import path and parameters (default: the campaign's
labeler, testbeds.mos2.oracle:SyntheticHF with its parameters); a `noise` parameter is set to 0.
For it this script relaxes both hops' end points (from the CHGNet ones), runs their CI-NEBs (mono-
and di-vacancy, 11 moving images started from CHGNet's relaxed bands, fmax 0.05 eV/Å unless --fmax, in parallel;
a band that does not converge or tears apart stops the script before it writes anything), rebuilds the test set's near-saddle
configurations around the new mono-vacancy path, relabels every test configuration with E and −∇E,
and evaluates the oracle along the pool's hop (the `barrier` observable's reference,
scripts/mos2_pool_path_reference.py). It writes reference.json (the *_hf entries and the oracle),
mono_path_hf.extxyz, di_path_hf.extxyz and hf_test.extxyz into --out; the CHGNet data, end points
and training set (scripts/make_mos2_data.py) are read from the campaign and not touched.

    pip install -e ".[mos2]"   # the MoS2 testbed (CHGNet)
    python scripts/mos2_hf_references.py [--oracle module:Class --parameters JSON] [--out DIR]

e.g. the first oracle's references into their own folder (campaigns/mos2-svac/contact holds them):
    python scripts/mos2_hf_references.py --oracle testbeds.mos2.oracle:SyntheticHF \
        --parameters '{"variant": "contact"}' --out runs/mos2-contact-references
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
from testbeds.mos2.geometry import (CAMPAIGN, MAX_GAP, REFERENCE_IMAGES, campaign_oracle, describe_oracle, high_fidelity,
                                    hop_band)


def hop_reference(task) -> tuple[str, dict]:
    kind, oracle, fmax = task
    torch.set_num_threads(1)
    return kind, hop_band(kind, high_fidelity(*oracle), fmax)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    oracle_arguments(parser)
    parser.add_argument("--fmax", type=float, default=0.05,
                        help="eV/Å, both CI-NEBs (default 0.05, the fmax of the calibration's barrier shift)")
    args = parser.parse_args()
    start = time.time()
    oracle = (args.oracle, args.parameters or {}) if args.oracle else campaign_oracle()
    hf = high_fidelity(*oracle)   # a wrong path or parameter fails now, not in a worker
    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.out / "reference.json").exists():
        shutil.copy(CAMPAIGN / "reference.json", args.out / "reference.json")   # its CHGNet entries stay
    reference = json.loads((args.out / "reference.json").read_text())
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        bands = dict(pool.map(hop_reference, [("mono", oracle, args.fmax), ("di", oracle, args.fmax)]))
    broken = {k: b for k, b in bands.items() if not b["continuous"]}
    if broken:   # a barrier from such a band would be a wrong reference, not a rough one
        raise SystemExit("no references written: " + "; ".join(
            f"the {k}-vacancy band {'did not converge' if not b['converged'] else 'tore apart'} "
            f"(largest image gap {b['largest_gap_A']:.2f} Å, limit {MAX_GAP})" for k, b in broken.items()))
    reference["oracle"] = describe_oracle(hf, oracle[0])
    for kind, band in bands.items():
        reference[f"{kind}_barrier_hf"] = band["barrier"]
        reference[f"{kind}_path_hf"] = {"energies": band["energies"], "converged": band["converged"], "fmax": args.fmax,
                                        "largest_gap_A": band["largest_gap_A"], "moving_images": REFERENCE_IMAGES,
                                        "start": f"{kind}_path_chgnet.extxyz"}
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
