"""Pool sources on a cheap stand-in backbone (harmonic bonds): files, MD, NEB, and the distance filter."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from ase import Atoms
from ase.io import write
from conftest import h3, h3_set

from aloop.pool import BatchedCalculator, PoolError, drop_close_contacts, from_file, generate


class Springs:
    """E = Σ_pairs (r − 1)² over every pair: a backbone's `energy_forces`, counting its calls."""

    def __init__(self):
        self.calls = 0

    def energy_forces(self, atoms_list):
        self.calls += 1
        energies, forces = [], []
        for atoms in atoms_list:
            x = atoms.positions
            d = x[:, None] - x[None]
            r = np.linalg.norm(d, axis=-1) + np.eye(len(x))
            energies.append(0.5 * np.sum((r - 1) ** 2 * (1 - np.eye(len(x)))))
            forces.append(-np.sum((2 * (r - 1) / r)[..., None] * d * (1 - np.eye(len(x)))[..., None], axis=1))
        return np.array(energies), forces


def md_spec(path, **kw):
    return SimpleNamespace(kind="md", name="md", start=path, temperatures=[300.0, 600.0], steps=6, interval=3,
                           timestep=0.5, friction=0.02, **kw)


def test_file_source_reads_frames_and_low_fidelity_forces(tmp_path):
    frames = h3_set(4)
    for k, atoms in enumerate(frames):
        atoms.arrays["dft_forces"] = np.full((3, 3), float(k))
    write(tmp_path / "p.extxyz", frames)
    spec = SimpleNamespace(kind="file", name="p", path=tmp_path / "p.extxyz", index="1:", forces_key="dft_forces")
    read, forces = generate(spec, None, seed=0)
    assert len(read) == 3 and [f[0, 0] for f in forces] == [1.0, 2.0, 3.0]
    with pytest.raises(PoolError, match="no per-atom array 'nope'"):
        from_file(SimpleNamespace(**{**vars(spec), "forces_key": "nope"}))
    with pytest.raises(PoolError, match="pool source 'bad': cannot read"):
        from_file(SimpleNamespace(kind="file", name="bad", path=tmp_path / "absent.extxyz", index=":", forces_key=None))


def test_drop_close_contacts_keeps_frames_and_forces_aligned():
    frames = [h3(0.7, 1.0), h3(0.3, 1.0), h3(1.0, 1.2)]
    forces = [np.full((3, 3), k) for k in range(3)]
    kept, kept_forces = drop_close_contacts(frames, forces, min_distance=0.5)
    assert kept == [frames[0], frames[2]] and [f[0, 0] for f in kept_forces] == [0, 2]
    assert drop_close_contacts(frames, None, 0.5)[1] is None
    assert len(drop_close_contacts([Atoms("H")], None, 0.5)[0]) == 1


def test_md_is_seeded_and_keeps_every_interval_th_step(tmp_path):
    write(tmp_path / "start.xyz", [h3(0.9, 1.1), h3(1.0, 1.0)])
    spec = md_spec(tmp_path / "start.xyz")
    frames, forces = generate(spec, Springs(), seed=4, progress=False)
    assert forces is None
    assert len(frames) == 2 * 2 * 2   # starts × temperatures × kept steps
    assert {(f.info["start_frame"], f.info["temperature_K"]) for f in frames} == {(0, 300.0), (0, 600.0), (1, 300.0), (1, 600.0)}
    again, _ = generate(spec, Springs(), seed=4, progress=False)
    other, _ = generate(spec, Springs(), seed=5, progress=False)
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(frames, again))
    assert not np.allclose(frames[-1].positions, other[-1].positions)


def test_neb_returns_end_points_and_images_from_one_model_call_per_step(tmp_path):
    write(tmp_path / "a.xyz", h3(0.9, 1.6))
    write(tmp_path / "b.xyz", h3(1.6, 0.9))
    spec = SimpleNamespace(kind="neb", name="path", initial=tmp_path / "a.xyz", final=tmp_path / "b.xyz", guess=None,
                           images=3, climb=True, fmax=0.05, steps=4)
    backbone = Springs()
    frames, forces = generate(spec, backbone, seed=0, progress=False)
    assert len(frames) == 5 and forces is None
    np.testing.assert_allclose(frames[0].positions, h3(0.9, 1.6).positions, atol=1e-12)
    np.testing.assert_allclose(frames[-1].positions, h3(1.6, 0.9).positions, atol=1e-12)
    assert backbone.calls <= spec.steps + 2   # batched: not one call per image
    write(tmp_path / "c.xyz", Atoms("H2", positions=[[0, 0, 0], [0.7, 0, 0]]))
    with pytest.raises(PoolError, match="initial and final hold different atoms"):
        generate(SimpleNamespace(**{**vars(spec), "final": tmp_path / "c.xyz"}), backbone, seed=0, progress=False)


def test_batched_calculator_serves_every_image_from_one_call():
    images = [h3(0.8 + 0.1 * k, 1.0) for k in range(3)]
    backbone = Springs()
    calc = BatchedCalculator(backbone, images)
    energies = []
    for image in images:
        image.calc = calc
        energies.append(image.get_potential_energy())
    assert backbone.calls == 1
    np.testing.assert_allclose(energies, backbone.energy_forces(images)[0])
