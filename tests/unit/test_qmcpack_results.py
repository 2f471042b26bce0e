"""A QMCPACK job folder → one DMC label, on real output, and the states of broken folders."""
import shutil
from pathlib import Path

import numpy as np
import pytest
from ase.units import Hartree

from aloop.labelers.qmcpack_results import FAILED_STATE, NEEDS_MORE_BLOCKS, JobProblem, Series, dmc_label
from aloop.labelers.scalar_dat import block_statistics, read_scalar

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "qmcpack"
pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason="../shared/fixtures/qmcpack not present")
S1, S2 = Series(1, 0.02, 5), Series(2, 0.01, 20)  # the fixtures' DMC series and their timesteps


def stats(series):
    x = read_scalar(FIXTURES / f"dmc_batched.s{series.index:03d}.scalar.dat")["LocalEnergy"]
    s = block_statistics(x, series.equilibration, min_blocks=10)
    return s.mean, s.error


def test_single_series_in_ev():
    energy, error, detail = dmc_label(FIXTURES, "dmc_batched", [S2])
    mean, err = stats(S2)
    assert energy == pytest.approx(mean * Hartree, abs=1e-12) and error == pytest.approx(err * Hartree, abs=1e-12)
    assert detail["twists"] == 1 and not detail["extrapolated"]


def test_timestep_extrapolation_matches_the_two_point_line():
    energy, error, detail = dmc_label(FIXTURES, "dmc_batched", [S1, S2], min_blocks=10)
    (e1, s1), (e2, s2) = stats(S1), stats(S2)
    # two points: the line passes through both; E0 = (τ2 E1 − τ1 E2)/(τ2 − τ1), errors propagate linearly
    t1, t2 = S1.timestep, S2.timestep
    e0 = (t2 * e1 - t1 * e2) / (t2 - t1)
    s0 = np.hypot(t2 * s1, t1 * s2) / abs(t2 - t1)
    assert energy == pytest.approx(e0 * Hartree, abs=1e-9) and error == pytest.approx(s0 * Hartree, rel=1e-9)
    assert detail["extrapolated"]


def test_twist_average(tmp_path):
    shutil.copy(FIXTURES / "dmc_batched.s002.scalar.dat", tmp_path / "j.g000.s002.scalar.dat")
    shutil.copy(FIXTURES / "dmc_legacy.s002.scalar.dat", tmp_path / "j.g001.s002.scalar.dat")
    energy, error, detail = dmc_label(tmp_path, "j", [S2])
    a = block_statistics(read_scalar(FIXTURES / "dmc_batched.s002.scalar.dat")["LocalEnergy"], 20)
    b = block_statistics(read_scalar(FIXTURES / "dmc_legacy.s002.scalar.dat")["LocalEnergy"], 20)
    assert detail["twists"] == 2
    assert energy == pytest.approx((a.mean + b.mean) / 2 * Hartree) and error == pytest.approx(np.hypot(a.error, b.error) / 2 * Hartree)


def broken(tmp_path, kind):
    text = (FIXTURES / "dmc_batched.s002.scalar.dat").read_text().splitlines()
    if kind == "missing":
        return
    if kind == "truncated":
        text[-1] = text[-1][: len(text[-1]) // 2]
    if kind == "short":
        text = text[:30]
    if kind == "nan":
        fields = text[100].split()
        fields[1] = "nan"
        text[100] = "  ".join(fields)
    (tmp_path / "j.s002.scalar.dat").write_text("\n".join(text) + "\n")


@pytest.mark.parametrize("kind, state, words", [
    ("missing", FAILED_STATE, "no j.s002.scalar.dat"),
    ("truncated", FAILED_STATE, "expected 12 columns"),
    ("short", NEEDS_MORE_BLOCKS, "9 blocks after equilibration"),
    ("nan", FAILED_STATE, "non-finite"),
])
def test_broken_folders_get_a_state_not_a_label(tmp_path, kind, state, words):
    broken(tmp_path, kind)
    with pytest.raises(JobProblem) as err:
        dmc_label(tmp_path, "j", [S2])
    assert err.value.state == state and words in err.value.reason
