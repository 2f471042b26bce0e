"""Explicit high-fidelity references of campaigns/mos2-svac for the oracle as it is now.

Run after changing testbeds.mos2.oracle.SyntheticHF's defaults: relaxes both hops' end points on the
noise-free E_HF, runs their CI-NEBs (mono- and di-vacancy, in parallel), and relabels the held-out
configurations of hf_test.extxyz with E_HF and −∇E_HF. Updates reference.json (the *_hf entries and
the oracle's parameters), mono_path_hf.extxyz, di_path_hf.extxyz and hf_test.extxyz; the CHGNet
data, end points and training set (scripts/make_mos2_data.py) are not touched.

    pip install -e ".[mos2]"   # the MoS2 testbed (CHGNet)
    python scripts/mos2_hf_references.py
"""
from __future__ import annotations

import json
import multiprocessing
import time

import torch
from ase.io import read, write

from make_mos2_data import labelled
from testbeds.mos2.geometry import CAMPAIGN, high_fidelity, neb, relax


def hop_reference(kind: str) -> tuple[str, dict]:
    torch.set_num_threads(1)
    hf = high_fidelity()
    initial = relax(read(CAMPAIGN / f"{kind}_initial.xyz"), hf)
    final = relax(read(CAMPAIGN / f"{kind}_final.xyz"), hf)
    return kind, neb(initial, final, hf)


def main() -> None:
    start = time.time()
    reference = json.loads((CAMPAIGN / "reference.json").read_text())
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        bands = dict(pool.map(hop_reference, ["mono", "di"]))
    hf = high_fidelity()
    reference["oracle"] = {k: v for k, v in hf.parameters.items() if k != "noise"} | {"noise": 0.0}
    for kind, band in bands.items():
        reference[f"{kind}_barrier_hf"] = band["barrier"]
        reference[f"{kind}_path_hf"] = {"energies": band["energies"], "converged": band["converged"]}
        write(CAMPAIGN / f"{kind}_path_hf.extxyz", band["images"], format="extxyz")
        print(f"{kind}-vacancy hop: CHGNet {reference[f'{kind}_barrier_chgnet']:.3f} eV, "
              f"HF {band['barrier']:.3f} eV (converged: {band['converged']})")
    test = [labelled(a, hf, config_type=a.info.get("config_type")) for a in read(CAMPAIGN / "hf_test.extxyz", ":")]
    write(CAMPAIGN / "hf_test.extxyz", test, format="extxyz")
    reference["wall_s"] = reference.get("wall_s", {}) | {"hf_references": round(time.time() - start, 1)}
    (CAMPAIGN / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    print(f"relabelled {len(test)} test configurations; {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
