"""QMCPACK scalar.dat reading and qmca-style statistics, on real QMCPACK output (../shared/fixtures)."""
from pathlib import Path

import numpy as np
import pytest

from aloop.labelers.scalar_dat import ScalarFileError, block_statistics, read_scalar

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "qmcpack"
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason="../shared/fixtures/qmcpack not present")


def reference_stats(x):
    """An independent transcription of qmca's recipe (README of the fixtures), written loop by loop."""
    n = len(x)
    mean = sum(x) / n
    var = sum((v - mean) ** 2 for v in x) / n
    kappa, lag = 1.0, 1
    while lag < n:
        rho = sum((x[j] - mean) * (x[j + lag] - mean) for j in range(n - lag)) / ((n - lag) * var)
        if rho <= 0:
            break
        kappa += 2 * rho
        lag += 1
    return mean, (var / (n / kappa)) ** 0.5, kappa


@needs_fixtures
@pytest.mark.parametrize("driver", ["legacy", "batched"])
def test_columns_by_name_and_statistics_match_qmca_recipe(driver):
    cols = read_scalar(FIXTURES / f"dmc_{driver}.s002.scalar.dat")
    assert len(cols["LocalEnergy"]) == 200 and "BlockWeight" in cols
    # the same physical quantity, wherever its column stands
    assert np.allclose(cols["IonIon"], cols["IonIon"][0])
    stats = block_statistics(cols["LocalEnergy"], equilibration=20)
    mean, error, kappa = reference_stats(list(cols["LocalEnergy"][20:]))
    assert f"{stats.mean:.6f}" == f"{mean:.6f}" and f"{stats.error:.6f}" == f"{error:.6f}"
    assert stats.kappa == pytest.approx(kappa, rel=1e-12)
    naive = cols["LocalEnergy"][20:].std() / np.sqrt(180)
    assert stats.error > 1.3 * naive  # blocks are correlated: the plain standard error is too small


def test_broken_files_are_named(tmp_path):
    bad = tmp_path / "x.s002.scalar.dat"
    bad.write_text("#  index LocalEnergy Variance\n 0 -10.5 0.3\n 1 -10.4\n")
    with pytest.raises(ScalarFileError, match="x.s002.scalar.dat: line 3: expected 3 columns"):
        read_scalar(bad)
    with pytest.raises(ScalarFileError, match="cannot read"):
        read_scalar(tmp_path / "missing.scalar.dat")
    with pytest.raises(ValueError, match="at least"):
        block_statistics(np.ones(5), equilibration=4)
    with pytest.raises(ValueError, match="non-finite"):
        block_statistics(np.array([1.0, np.nan, 2.0]), equilibration=0)
