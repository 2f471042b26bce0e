"""The loop's side of the metrics: what `measure` derives from a run's features."""
from types import SimpleNamespace

import numpy as np
from conftest import make_committee

from aloop import measure, metrics
from aloop.arrays import Features


def test_observable_direction_is_the_barrier_gradient_at_the_committee_mean():
    rng = np.random.default_rng(2)
    P, images = 4, 6
    feats = Features(rng.normal(size=(images, P)), rng.normal(size=images), np.full(images, 3))
    path = {"path": [10, 11, 12, 13, 14, 15]}
    run = SimpleNamespace(
        campaign=SimpleNamespace(evaluation=SimpleNamespace(observables=[SimpleNamespace(name="b", kind="barrier", path="path", relax=False)])),
        store=SimpleNamespace(source_ids=lambda source: path[source]),
        inputs=lambda ids: feats if list(ids) == path["path"] else None)
    committee = make_committee(np.zeros(P), size=3).use_members(rng.normal(size=(3, P)))
    direction, reads = measure.observable_directions(run, committee, 0)["b"]
    mean = committee.thetas_.mean(0)
    eps = 1e-6   # the barrier is linear in θ near the mean while the same image stays highest
    numeric = [(metrics.barrier(feats.energies(mean + eps * np.eye(P)[p])) - metrics.barrier(feats.energies(mean))) / eps
               for p in range(P)]
    np.testing.assert_allclose(direction, numeric, rtol=1e-6, atol=1e-8)
    saddle = path["path"][int(np.argmax(feats.energies(mean)))]
    assert [(sign, cid) for sign, cid, _ in reads] == [(1.0, saddle), (-1.0, 10)]   # the pool images it reads
