"""Paths on a cheap stand-in surface: relaxed end points, and an end point that would drift away."""
from __future__ import annotations

import numpy as np
from conftest import h3

from aloop.neb import MAX_END_POINT_MOVE, relax_minimum, relax_path


class Pull:
    """E = Σ_pairs (r − r0)² plus a constant pull on the last atom along x: no minimum for it, it
    slides off (a fragment leaving on a dissociative surface)."""

    def __init__(self, pull: float, r0: float = 0.9):
        self.pull, self.r0 = pull, r0

    def energy_forces(self, atoms_list):
        energies, forces = [], []
        for atoms in atoms_list:
            x = atoms.positions
            d = x[:, None] - x[None]
            r = np.linalg.norm(d, axis=-1) + np.eye(len(x))
            off = 1 - np.eye(len(x))
            energies.append(0.5 * np.sum((r - self.r0) ** 2 * off) - self.pull * x[-1, 0])
            f = -np.sum((2 * (r - self.r0) / r)[..., None] * d * off[..., None], axis=1)
            f[-1, 0] += self.pull
            forces.append(f)
        return np.array(energies), forces


def test_end_points_relax_to_their_minimum():
    start = h3(0.7, 1.2)
    relaxed, converged, steps = relax_minimum(start, Pull(0.0), fmax=1e-3, steps=2000)
    assert converged and steps > 0
    _, forces = Pull(0.0).energy_forces([relaxed])
    assert np.linalg.norm(forces[0], axis=1).max() < 1e-3


def test_an_end_point_that_slides_off_is_kept_as_given():
    start = h3(0.9, 0.9)
    relaxed, converged, _ = relax_minimum(start, Pull(2.0), fmax=1e-3, steps=5000)
    assert not converged
    np.testing.assert_array_equal(relaxed.positions, start.positions)
    assert MAX_END_POINT_MOVE == 1.0


def test_a_relaxed_path_starts_and_ends_at_minima_and_reports_its_barrier():
    images = [h3(0.7 + 0.1 * k, 1.3 - 0.1 * k) for k in range(7)]
    path = relax_path(images, Pull(0.0), fmax=1e-3, steps=3000)
    assert path.converged and len(path.images) == 7
    assert path.barrier == path.energies.max() - path.energies[0]
    assert 0 <= path.saddle < 7
