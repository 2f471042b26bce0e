"""Pool sources on a cheap stand-in backbone (harmonic bonds): files, MD, NEB; and the screening that
keeps frames which would buy a meaningless or a repeated label out of the pool."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from ase import Atoms
from ase.io import write
from conftest import h3, h3_set

from aloop.domain import TOO_CLOSE, DomainGuard
from aloop.neb import BatchedCalculator
from aloop.pool import (DUPLICATE, DUPLICATE_TOLERANCE, NON_FINITE, Geometries, PoolError,
                        from_file, generate, screen)

GLOBAL = DomainGuard({}, 0.5)   # no training data: pool.min_distance for every pair


def nonempty(dropped: dict) -> dict:
    return {why: indices for why, indices in dropped.items() if indices}


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


def test_screen_drops_nan_close_and_repeated_frames_by_index():
    frames = h3_set(6)
    frames[1].positions[0, 2] = np.nan
    frames[3] = h3(0.2, 1.0)                                   # two atoms 0.2 Å apart
    frames.append(frames[4].copy())                             # a repeat, to the last digit
    nearly = frames[5].copy()
    nearly.positions += 0.5 * DUPLICATE_TOLERANCE               # a repeat within the tolerance
    frames.append(nearly)
    moved = frames[0].copy()
    moved.positions[2] += 10 * DUPLICATE_TOLERANCE              # another configuration
    frames.append(moved)
    seen = Geometries()
    result = screen(frames, GLOBAL, seen)
    assert result.keep == [0, 2, 4, 5, 8]
    assert nonempty(result.dropped) == {NON_FINITE: [1], TOO_CLOSE: [3], DUPLICATE: [6, 7]}
    assert str(result.violations[3]) == "H-H at 0.200 Å, floor 0.500 Å"
    # across sources: a second source holding the same frames adds nothing
    result = screen([f.copy() for f in frames[:3]], GLOBAL, seen)
    assert result.keep == [] and result.dropped[DUPLICATE] == [0, 2]


def test_an_neb_path_keeps_every_image():
    seen = Geometries()
    frames = h3_set(3)
    screen(frames, GLOBAL, seen)
    result = screen(frames, GLOBAL, seen, drop_repeats=False)
    assert result.keep == [0, 1, 2] and not result.dropped[DUPLICATE]


def test_a_different_cell_is_a_different_configuration():
    seen = Geometries()
    a = h3(0.8, 1.2)
    b = a.copy()
    b.cell, b.pbc = [8.0, 8.0, 8.0], True
    assert screen([a, b], GLOBAL, seen).keep == [0, 1]


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
