"""The pool's screening: frames that would buy a meaningless or a repeated label stay out."""
import numpy as np
from conftest import h3, h3_set

from aloop.pool import DUPLICATE, DUPLICATE_TOLERANCE, NON_FINITE, TOO_CLOSE, Geometries, screen


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
    keep, dropped = screen(frames, 0.5, seen)
    assert keep == [0, 2, 4, 5, 8]
    assert dropped == {NON_FINITE: [1], TOO_CLOSE: [3], DUPLICATE: [6, 7]}
    # across sources: a second source holding the same frames adds nothing
    keep, dropped = screen([f.copy() for f in frames[:3]], 0.5, seen)
    assert keep == [] and dropped[DUPLICATE] == [0, 2]


def test_an_neb_path_keeps_every_image():
    seen = Geometries()
    frames = h3_set(3)
    screen(frames, 0.5, seen)
    keep, dropped = screen(frames, 0.5, seen, drop_repeats=False)
    assert keep == [0, 1, 2] and not dropped[DUPLICATE]


def test_a_different_cell_is_a_different_configuration():
    seen = Geometries()
    a = h3(0.8, 1.2)
    b = a.copy()
    b.cell, b.pbc = [8.0, 8.0, 8.0], True
    assert screen([a, b], 0.5, seen)[0] == [0, 1]
