"""The domain guard: per-pair floors from the base model's training data, the campaign's overrides,
and the pool screening that refuses a frame outside them and cuts an MD trajectory that leaves."""
from __future__ import annotations

import re
import textwrap
from types import SimpleNamespace

import pytest
from ase import Atoms
from ase.io import write
from conftest import h3

from aloop.campaign import CampaignError, load_campaign
from aloop.domain import OUT_OF_DOMAIN, TOO_CLOSE, DomainGuard, training_minima
from aloop.pool import AFTER_EXIT, Geometries, screen, trajectories

TRAINING = [h3(0.74, 2.0), h3(0.80, 1.2), Atoms("HLi", positions=[[0, 0, 0], [0, 0, 1.6]])]


def settings(margin=0.1, min_distances=None):
    return SimpleNamespace(margin=margin, min_distances=min_distances or {})


def test_floors_are_the_training_minima_less_the_margin_and_overrides_replace_them():
    assert training_minima(TRAINING) == pytest.approx({"H-H": 0.74, "H-Li": 1.6})
    guard = DomainGuard.from_settings(0.5, settings(0.1), TRAINING)
    assert guard.floor("H-H") == pytest.approx(0.64) and guard.floor("H-Li") == pytest.approx(1.5)
    assert guard.floor("Li-Li") == 0.5   # never in the training data: pool.min_distance
    # pool.min_distance stays the floor under every pair: the domain only raises it
    assert DomainGuard.from_settings(0.7, settings(0.1), TRAINING).floor("H-H") == 0.7
    guard = DomainGuard.from_settings(0.5, settings(0.1, {"Li-H": 1.2}), TRAINING)
    assert guard.floor("H-Li") == 1.2 and "pool.domain.min_distances" in guard.describe()


def test_a_collapsed_frame_is_refused_with_its_pair_and_a_frame_within_the_margin_is_kept():
    guard = DomainGuard.from_settings(0.5, settings(0.1), TRAINING)
    frames = [h3(0.70, 1.5), h3(0.55, 1.5), h3(1.0, 1.0)]     # 0.70 ≥ 0.64 (kept), 0.55 < 0.64 (refused)
    result = screen(frames, guard, Geometries())
    assert result.keep == [0, 2] and result.dropped[OUT_OF_DOMAIN] == [1]
    assert result.violations[1].pair == "H-H" and str(result.violations[1]) == "H-H at 0.550 Å, floor 0.640 Å"
    # without training data the global floor alone applies, under its own reason
    result = screen(frames, DomainGuard.from_settings(0.5, settings(), None), Geometries())
    assert result.keep == [0, 1, 2]
    result = screen([h3(0.3, 1.0)], DomainGuard.from_settings(0.5, settings(), None), Geometries())
    assert result.dropped[TOO_CLOSE] == [0]


def test_an_md_trajectory_is_cut_at_its_first_frame_outside_the_domain():
    guard = DomainGuard.from_settings(0.5, settings(0.1), TRAINING)
    frames = []
    for step, r in enumerate([0.9, 0.85, 0.5, 0.9, 0.95]):   # trajectory (0, 300) collapses at its third frame
        for start, temperature, bond in ((0, 300.0, r), (1, 300.0, 1.0 + 0.01 * step)):
            atoms = h3(bond, 1.3 + 0.01 * step)
            atoms.info.update(start_frame=start, temperature_K=temperature, step=step)
            frames.append(atoms)
    result = screen(frames, guard, Geometries(), trajectory=trajectories(frames))
    assert result.dropped[OUT_OF_DOMAIN] == [4]
    assert result.dropped[AFTER_EXIT] == [6, 8]                # back in the domain, still dropped
    assert result.keep == [0, 1, 2, 3, 5, 7, 9]                # the other trajectory untouched


def _campaign(tmp_path, domain: str):
    write(tmp_path / "pool.xyz", h3(0.9, 1.2))
    (tmp_path / "model.pt").write_bytes(b"not read here")
    (tmp_path / "campaign.yaml").write_text(textwrap.dedent(f"""\
        name: guard
        model: {{path: model.pt, training_data: pool.xyz}}
        pool:
          sources: [{{kind: file, name: f, path: pool.xyz}}]
          domain: {domain}
        labeler: {{kind: replay, path: pool.xyz}}
        stop: {{max_labels: 3}}
        """))
    return load_campaign(tmp_path / "campaign.yaml")


def test_per_pair_overrides_are_validated_naming_the_field(tmp_path):
    c = _campaign(tmp_path, '{margin: 0.2, min_distances: {"Li-H": 1.2}}')
    assert c.pool.domain.margin == 0.2 and c.model.training_data == tmp_path / "pool.xyz"
    for domain, message in (('{min_distances: {"H-Xx": 1.0}}', "pool.domain.min_distances: H-Xx: expected a pair "
                                                               "of element symbols 'A-B'"),
                            ('{min_distances: {"H-Li": 1.0, "Li-H": 1.1}}', "pool.domain.min_distances: H-Li and Li-H name the same pair"),
                            ('{min_distances: {"H-H": -1}}', "pool.domain.min_distances.H-H: must be > 0"),
                            ("{margin: -0.1}", "pool.domain.margin: must be >= 0"),
                            ("{margn: 0.1}", "pool.domain.margn: unknown key (did you mean 'margin'?)")):
        with pytest.raises(CampaignError, match=re.escape("campaign.yaml: " + message)):
            _campaign(tmp_path, domain)
