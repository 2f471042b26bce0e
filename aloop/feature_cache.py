"""Backbone features of a campaign's candidates, kept on disk and read a block of rows at a time.

A pool of 100k candidates must not need 100k configurations in memory at once: features are
computed a block of candidates at a time and written into memory-mapped arrays indexed by candidate
id (`a.npy` [capacity, P], `e.npy`, `n.npy`), and everything that needs the whole pool (committee
spread, the prior's feature moment, descriptor statistics) streams over blocks. A row counts only
once `done.npy` marks it, and that flag is written after the row itself, so a crash in the middle of
a block costs at most that block's recomputation.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from .arrays import Features, ReadoutInputs, blocks

class FeatureCache:
    """Memory-mapped features of candidates by id, in a folder of .npy files."""

    FILES = ("a", "e", "n", "done")   # done last: a row is valid only after its data is on disk

    def __init__(self, folder: str | Path, n_params: int):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.n_params = n_params
        done = self.folder / "done.npy"
        if done.exists():
            width = np.load(self.folder / "a.npy", mmap_mode="r").shape[1]
            if width != n_params:
                raise ValueError(f"{self.folder}: cached features have {width} parameters, the backbone has "
                                 f"{n_params}; delete the folder to recompute them")

    # --- layout ------------------------------------------------------------------------------
    def _path(self, name: str) -> Path:
        return self.folder / f"{name}.npy"

    def _open(self, name: str, mode: str = "r") -> np.memmap:
        return np.load(self._path(name), mmap_mode=mode)

    @property
    def capacity(self) -> int:
        path = self._path("done")
        return int(np.load(path, mmap_mode="r").shape[0]) if path.exists() else 0

    def _grow(self, needed: int) -> None:
        """Make every file hold at least `needed` rows, copying old rows block by block."""
        if needed <= self.capacity:
            return
        size = max(needed, int(1.25 * self.capacity))
        shapes = {"a": ((size, self.n_params), np.float64), "e": ((size,), np.float64),
                  "n": ((size,), np.int64), "done": ((size,), np.bool_)}
        for name in self.FILES:
            _resized(self._path(name), *shapes[name])

    # --- rows --------------------------------------------------------------------------------
    def missing(self, ids: Iterable[int]) -> list[int]:
        ids = np.asarray(list(ids), dtype=np.int64)
        if not len(ids):
            return []
        cap = self.capacity
        have = np.zeros(len(ids), dtype=bool)
        if cap:
            inside = ids < cap
            have[inside] = self._open("done")[ids[inside]]
        return [int(i) for i in ids[~have]]

    def write(self, ids: list[int], features: Features) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if features.a.shape != (len(ids), self.n_params):
            raise ValueError(f"{self.folder}: features of shape {features.a.shape} for {len(ids)} ids "
                             f"and {self.n_params} parameters")
        self._grow(int(ids.max()) + 1)
        for name, values in (("a", features.a), ("e", features.e), ("n", features.n_atoms)):
            array = self._open(name, "r+")
            array[ids] = values
            array.flush()
        done = self._open("done", "r+")
        done[ids] = True
        done.flush()

    def read(self, ids) -> Features:
        """Features of `ids` in memory (for sets of labelled size, not whole pools)."""
        ids = np.asarray(ids, dtype=np.int64)
        absent = self.missing(ids)
        if absent:
            raise KeyError(f"{self.folder}: no features for candidates {absent[:5]}{' ...' if len(absent) > 5 else ''}")
        return Features(np.array(self._open("a")[ids]), np.array(self._open("e")[ids]),
                        np.array(self._open("n")[ids]))

    def fill(self, ids: list[int], compute: Callable[[list[int]], Iterator[tuple[list[int], Features]]],
             size: int = 4096, done: Callable[[int], object] | None = None) -> None:
        """Compute and store the missing ones among `ids`, `size` candidates at a time; `compute(ids)`
        yields (positions in ids, Features) as parts finish, each written as it arrives and
        reported to `done(number of candidates)`."""
        missing = self.missing(ids)
        for lo in range(0, len(missing), size):
            chunk = missing[lo:lo + size]
            for positions, part in compute(chunk):
                self.write([chunk[j] for j in positions], part)
                if done is not None:
                    done(len(positions))


def _resized(path: Path, shape: tuple, dtype, fill=None) -> None:
    """Make the .npy at `path` at least shape[0] rows long, copying block by block; new rows are
    `fill` (None: zero, as a new file is, without writing them)."""
    old = np.load(path, mmap_mode="r") if path.exists() else None
    if old is not None and old.shape[0] >= shape[0]:
        return
    tmp = path.with_name(path.stem + ".tmp.npy")
    new = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
    if fill is not None:
        new[:] = fill
    if old is not None:
        for s in blocks(old.shape[0]):
            new[s] = old[s]
    new.flush()
    del new, old
    os.replace(tmp, path)


class AtomRowsCache:
    """Per-atom rows of cached candidates (`finetune.readout: full`: the inputs of the MLP readout,
    which a per-configuration sum cannot replace). One memory-mapped [atoms, width] array grows at its
    end (`h.npy`); per candidate id `count.npy` holds its atoms and `start.npy` its first row, −1
    until the rows are on disk (written last, as `done.npy` of FeatureCache)."""

    def __init__(self, folder: str | Path, width: int):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.width = width
        h = self.folder / "h.npy"
        if h.exists() and np.load(h, mmap_mode="r").shape[1] != width:
            raise ValueError(f"{self.folder}: cached readout inputs have {np.load(h, mmap_mode='r').shape[1]} "
                             f"columns, the model's MLP readout takes {width}; delete the folder to recompute them")

    def _open(self, name: str, mode: str = "r") -> np.memmap:
        return np.load(self.folder / f"{name}.npy", mmap_mode=mode)

    def missing(self, ids: Iterable[int]) -> list[int]:
        ids = np.asarray(list(ids), dtype=np.int64)
        if not (self.folder / "start.npy").exists():
            return [int(i) for i in ids]
        start = self._open("start")
        inside = ids < len(start)
        have = np.zeros(len(ids), dtype=bool)
        have[inside] = start[ids[inside]] >= 0
        return [int(i) for i in ids[~have]]

    def write(self, ids: list[int], n_atoms: np.ndarray, rows: np.ndarray) -> None:
        ids, n_atoms = np.asarray(ids, dtype=np.int64), np.asarray(n_atoms, dtype=np.int64)
        if rows.shape != (int(n_atoms.sum()), self.width):
            raise ValueError(f"{self.folder}: rows of shape {rows.shape} for {int(n_atoms.sum())} atoms and "
                             f"{self.width} columns")
        used = int(self._open("used")[0]) if (self.folder / "used.npy").exists() else 0
        h_path = self.folder / "h.npy"
        capacity = np.load(h_path, mmap_mode="r").shape[0] if h_path.exists() else 0
        if used + len(rows) > capacity:
            _resized(h_path, (max(used + len(rows), int(1.25 * capacity)), self.width), np.float64, 0.0)
        h = self._open("h", "r+")
        h[used:used + len(rows)] = rows
        h.flush()
        # the end moves before any start points past it: a crash in between leaves unused rows, never
        # a candidate whose rows the next write overwrites
        np.save(self.folder / "used.npy", np.array([used + len(rows)]))
        size = max(int(ids.max()) + 1, 0)
        for name in ("count", "start"):
            path = self.folder / f"{name}.npy"
            capacity = np.load(path, mmap_mode="r").shape[0] if path.exists() else 0
            if size > capacity:
                _resized(path, (max(size, int(1.25 * capacity)),), np.int64, -1)
        count = self._open("count", "r+")
        count[ids] = n_atoms
        count.flush()
        start = self._open("start", "r+")
        start[ids] = used + np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
        start.flush()

    def read(self, ids) -> np.ndarray:
        """The rows of `ids`, candidate after candidate: [Σ atoms, width]."""
        ids = np.asarray(ids, dtype=np.int64)
        absent = self.missing(ids)
        if absent:
            raise KeyError(f"{self.folder}: no readout inputs for candidates {absent[:5]}"
                           f"{' ...' if len(absent) > 5 else ''}")
        start, count, h = self._open("start")[ids], self._open("count")[ids], self._open("h")
        if not len(ids):
            return np.zeros((0, self.width))
        return np.concatenate([h[a:a + n] for a, n in zip(start, count)])


class PoolRows:
    """Per-atom features a/n of some cached candidates (or, with `per_atom=False`, the energy rows a
    themselves) as a lazy [len(ids), P] matrix: indexing reads only the rows asked for, so
    acquisition can stream over a pool larger than memory."""

    def __init__(self, cache: FeatureCache, ids, per_atom: bool = True, atoms: AtomRowsCache | None = None,
                 widths: tuple[int, ...] = ()):
        """`atoms` (with the `widths` of the MLP readouts' inputs, in order): `features()` then yields
        ReadoutInputs, what a committee of `finetune.readout: full` predicts from."""
        self.cache = cache
        self.atoms, self.widths = atoms, widths
        self.ids = np.asarray(ids, dtype=np.int64)
        self.shape = (len(self.ids), cache.n_params)
        self.per_atom = per_atom

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, rows) -> np.ndarray:
        f = self.cache.read(self.ids[rows])
        return f.a / f.n_atoms[:, None] if self.per_atom else f.a

    def n_atoms(self) -> np.ndarray:
        """[len(ids)] atoms of each candidate, read from the cache's own n.npy."""
        return np.asarray(self.cache._open("n")[self.ids], dtype=float)

    def features(self) -> Iterator[tuple[slice, Features | ReadoutInputs]]:
        """(rows, what the committee predicts from) block by block."""
        for s in blocks(len(self.ids)):
            feats = self.cache.read(self.ids[s])
            if self.atoms is None:
                yield s, feats
            else:
                h = self.atoms.read(self.ids[s])
                yield s, ReadoutInputs(feats, np.split(h, np.cumsum(self.widths)[:-1], axis=1))


def stream_predict(committee, rows: PoolRows) -> tuple[np.ndarray, np.ndarray]:
    """Committee mean and spread over every candidate of `rows`, a block at a time."""
    mean, std = np.empty(len(rows)), np.empty(len(rows))
    for s, feats in rows.features():
        mean[s], std[s] = committee.predict(feats)
    return mean, std
