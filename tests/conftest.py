"""Shared fixtures: tiny MACE models built in-process, small H3 geometries."""
from __future__ import annotations

from pathlib import Path

import mace  # noqa: F401  (before e3nn)
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.io import write
from ase.calculators.calculator import Calculator, all_changes
from e3nn import o3
from mace import modules

torch.set_num_threads(1)  # tiny graphs: threads only add contention on the 2-core CI machine


CHARGE_SPIN = {"total_charge": {"type": "categorical", "per": "graph", "num_classes": 5, "offset": 2, "emb_dim": 4},
               "total_spin": {"type": "categorical", "per": "graph", "num_classes": 4, "offset": -1, "emb_dim": 4}}


def tiny_mace(scale_shift: bool = True, seed: int = 0, dtype=torch.float64, elements=(1,), heads=None,
              embedding_specs=None):
    """A 2-layer MACE with a few channels: real architecture, milliseconds per call. `embedding_specs`:
    MACE's global embeddings (CHARGE_SPIN: charges −2…2, multiplicities 1…4)."""
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        kwargs = dict(
            r_max=4.0,
            num_bessel=4,
            num_polynomial_cutoff=5,
            max_ell=2,
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            num_interactions=2,
            num_elements=len(elements),
            hidden_irreps=o3.Irreps("8x0e+8x1o"),
            MLP_irreps=o3.Irreps("8x0e"),
            atomic_energies=np.array([-13.6 * (i + 1) for i in range(len(elements))]),
            avg_num_neighbors=2.0,
            atomic_numbers=list(elements),
            correlation=2,
            gate=torch.nn.functional.silu,
        )
        if embedding_specs is not None:
            kwargs["embedding_specs"] = embedding_specs
        if heads is not None:
            kwargs["heads"] = heads
            kwargs["atomic_energies"] = np.tile(kwargs["atomic_energies"], (len(heads), 1))   # [heads, elements]
        if scale_shift:
            model = modules.ScaleShiftMACE(atomic_inter_scale=0.7, atomic_inter_shift=-0.1, **kwargs)
        else:
            model = modules.MACE(**kwargs)
    finally:
        torch.set_default_dtype(previous)
    return model


def file_energies(model_path, frames) -> np.ndarray:
    """Energies of `frames` by MACE's own calculator reading an exported model file."""
    from mace.calculators import MACECalculator

    calc = MACECalculator(model_paths=str(model_path), device="cpu", default_dtype="float64")
    return np.array([calc.get_potential_energy(atoms.copy()) for atoms in frames])


def h3(r1: float, r2: float, angle_deg: float = 180.0) -> Atoms:
    """H_a–H_b–H_c with |ab| = r1, |bc| = r2 and the a-b-c angle."""
    t = np.radians(angle_deg)
    pos = [[-r1, 0, 0], [0, 0, 0], [-r2 * np.cos(t), r2 * np.sin(t), 0]]
    return Atoms("H3", positions=pos)


def h3_set(n: int, seed: int = 0) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    return [h3(*rng.uniform(0.6, 2.5, 2), rng.uniform(70, 180)) for _ in range(n)]


def write_pseudos(folder: Path, valence: dict) -> dict:
    """Stand-ins for ccECP files: headers as UPF v2 / QMCPACK XML state the valence, no potential."""
    entries = {}
    for el, z in valence.items():
        (folder / f"{el}.upf").write_text(f'<UPF version="2.0.1">\n  <PP_HEADER element="{el}" z_valence="{z:.15E}"/>\n</UPF>\n')
        (folder / f"{el}.xml").write_text(f'<pseudo version="0.5">\n  <header symbol="{el}" zval="{z}"/>\n</pseudo>\n')
        entries[el] = {"upf": f"{el}.upf", "xml": f"{el}.xml"}
    return entries


def write_h3_inputs(folder: Path, model=None, test_energy: float = -1.5) -> None:
    """The files of a tiny H3 campaign: tiny.model, a 10-frame pool, the exchange's end points, and a
    3-frame test set whose labels (info 'ref_energy') are all `test_energy`."""
    torch.save(tiny_mace() if model is None else model, folder / "tiny.model")
    write(folder / "pool.extxyz", h3_set(10))
    write(folder / "reactant.xyz", h3(0.74, 2.5))
    write(folder / "product.xyz", h3(2.5, 0.74))
    test = h3_set(3, seed=9)
    for atoms in test:
        atoms.info["ref_energy"] = test_energy
    write(folder / "test.extxyz", test)


@pytest.fixture
def tiny_model_file(tmp_path):
    path = tmp_path / "tiny.model"
    torch.save(tiny_mace(), path)
    return path


def make_committee(theta0, **settings):
    """A committee built as a run builds it: `Committee.from_settings` on the campaign's committee and
    finetune sections, the schema's defaults for every setting not given (per-atom threshold:
    `force_threshold_per_atom`)."""
    from aloop.campaign import CommitteeSettings, FinetuneSettings
    from aloop.committee import Committee

    committee = {key: value for key, value in settings.items() if key in CommitteeSettings.model_fields}
    finetune = {key: value for key, value in settings.items() if key not in committee}
    return Committee.from_settings(theta0, CommitteeSettings(**committee), FinetuneSettings(**finetune))



class SaddleBump(Calculator):
    """A(exp(−(r_ab − r_bc)²/(2w²))) on H_a–H_b–H_c: largest where the two distances are equal."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, amplitude: float, width: float):
        super().__init__()
        self.amplitude, self.width = amplitude, width

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        x = self.atoms.positions
        d_ab, d_bc = x[0] - x[1], x[2] - x[1]
        r_ab, r_bc = np.linalg.norm(d_ab), np.linalg.norm(d_bc)
        u = r_ab - r_bc
        e = self.amplitude * np.exp(-u**2 / (2 * self.width**2))
        de_du = -u / self.width**2 * e
        forces = np.zeros_like(x)
        forces[0] = -de_du * d_ab / r_ab
        forces[2] = de_du * d_bc / r_bc
        forces[1] = -(forces[0] + forces[2])
        self.results = {"energy": e, "forces": forces}


def RaisedSaddle(model: str, amplitude: float = 0.2, width: float = 0.3) -> Calculator:
    """H3 labels for tests: a MACE model plus SaddleBump, as a higher level of theory raises the
    exchange barrier (PBE → CCSD(T)). The `ase` labeler takes it as `conftest:RaisedSaddle`."""
    from ase.calculators.mixing import SumCalculator
    from mace.calculators import MACECalculator

    return SumCalculator([MACECalculator(model_paths=model, device="cpu", default_dtype="float64"),
                          SaddleBump(amplitude, width)])
