"""The run's database: candidates, labels with provenance, and per-iteration records.

One SQLite file (`aloop.db`) holds everything that must survive a crash. Candidates and labels are
ASE database rows (so `ase db aloop.db` browses them); iteration records and run metadata live in
two extra tables of the same file. Every write is a single transaction: a killed process leaves
either the old or the new state, never half of one.

Candidate states: pool → selected → labelled | failed.
"""
from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing, contextmanager
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.db import connect

from .charge import charge_state
from .rundir import RunDir

POOL, SELECTED, LABELLED, FAILED = "pool", "selected", "labelled", "failed"
# the keys a candidate's selection, label or failure writes (a fork before the selection drops them)
SELECTION_KEYS = ("state", "iteration", "pred_energy", "pred_sigma", "score", "pred_core_hours", "energy_hf",
                  "sigma_hf", "reason")
# meta key: [[first id, shift], ...], a fork's additions renumbered for the draws (RunStore.draw_ids)
DRAW_SHIFTS = "draw_id_shifts"


class RunStore:
    def __init__(self, run_dir: str | Path):
        self.layout = RunDir.create(run_dir)
        self.run_dir = self.layout.root
        self.path = self.layout.db
        self.db = connect(self.path, type="db", append=True)
        with self._sql() as con:
            con.execute("CREATE TABLE IF NOT EXISTS aloop_meta (key TEXT PRIMARY KEY, value TEXT)")
            con.execute("CREATE TABLE IF NOT EXISTS aloop_iterations (iteration INTEGER PRIMARY KEY, record TEXT)")

    @classmethod
    def existing(cls, run_dir: str | Path) -> "RunStore":
        """The store of a run that exists; ValueError saying so when there is none."""
        return cls(RunDir.existing(run_dir).root)

    @contextmanager
    def _sql(self):
        con = sqlite3.connect(self.path, timeout=60)
        try:
            with con:
                yield con
        finally:
            con.close()

    # --- metadata ----------------------------------------------------------------------------
    def set_meta(self, key: str, value) -> None:
        with self._sql() as con:
            con.execute("INSERT OR REPLACE INTO aloop_meta VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default=None):
        with self._sql() as con:
            row = con.execute("SELECT value FROM aloop_meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    # --- candidates --------------------------------------------------------------------------
    def add_candidates(self, atoms_list: list[Atoms], source: str, lf_forces: list | None = None,
                       indices: list[int] | None = None, added: int | None = None,
                       roles: list[str] | None = None) -> list[int]:
        """Insert a whole source in one transaction: a source is in the pool entirely or not at all.
        `indices`: each configuration's frame number in its source (default 0, 1, ...), kept as `index`
        so that provenance points at the right frame when some frames were dropped. `added`: the
        iteration that made these candidates (an observable's path points), kept as `added` so that a
        fork before it leaves them out. `roles`: what each configuration is to its source (a path
        point's "initial", "saddle" or "final"), kept as `role`."""
        keys = {} if added is None else {"added": int(added)}
        ids = []
        with self.db:
            for i, atoms in enumerate(atoms_list):
                data = {} if lf_forces is None else {"lf_forces": np.asarray(lf_forces[i], dtype=float)}
                clean = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
                # net charge and 2S set the electron count of a label; ase.db keeps no atoms.info
                info = charge_state(atoms)
                if info:
                    data["info"] = info
                index = i if indices is None else int(indices[i])
                role = {} if roles is None else {"role": roles[i]}
                ids.append(self.db.write(clean, source=source, index=index, state=POOL, data=data, **keys, **role))
        return ids

    @staticmethod
    def configuration(row) -> int:
        """The id of the first candidate holding `row`'s configuration: its own, or the one it
        repeats (`add_repeat`)."""
        return int(row.get("repeat_of", row.id))

    def add_repeat(self, cid: int, iteration: int) -> int:
        """A new pool candidate holding labelled candidate `cid`'s configuration again, for another
        independent label of a stochastic labeler (acquisition.repeats), made in `iteration` (kept as
        `added`, so a fork before it leaves the copy out). `info['repeat']` numbers the copies of one
        configuration (1, 2, ...), so the labeler draws other random numbers for each; `repeat_of`
        keeps the first candidate's id."""
        row = self.db.get(id=int(cid))
        if row.state != LABELLED:
            raise RuntimeError(f"candidate {cid} is not labelled; only a labelled configuration is repeated")
        first = self.configuration(row)
        info = {**row.data.get("info", {}), "repeat": self.db.count(repeat_of=first) + 1}
        data = {"info": info} | ({"lf_forces": row.data["lf_forces"]} if "lf_forces" in row.data else {})
        clean = Atoms(row.numbers, row.positions, cell=row.cell, pbc=row.pbc)
        with self.db:
            return self.db.write(clean, source=row.source, index=row.index, state=POOL, repeat_of=first,
                                 added=int(iteration), data=data)

    def count(self, *query: str, **selection) -> int:
        """Rows matching ase.db query strings (e.g. "repeat_of>0") and key = value selections."""
        return self.db.count(*query, **selection)

    def rows(self, **selection):
        return list(self.db.select(sort="id", **selection))

    def ids(self, **selection) -> list[int]:
        """Ids of the rows whose keys equal `selection` (e.g. state=POOL), ascending.

        Read from ase.db's key-value index tables: `db.select` builds a row object per match (about
        1 ms each), which a 100k-candidate pool cannot afford several times an iteration.
        """
        query, args = "SELECT id FROM systems", []
        for n, (key, value) in enumerate(selection.items()):
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise TypeError(f"store selection {key}={value!r}: only text and number values")
            table = "text_key_values" if isinstance(value, str) else "number_key_values"
            query += (" WHERE" if n == 0 else " AND") + f" id IN (SELECT id FROM {table} WHERE key = ? AND value = ?)"
            args += [key, value]
        with self._sql() as con:
            return [row[0] for row in con.execute(query + " ORDER BY id", args)]

    def atoms(self, ids) -> list[Atoms]:
        out = []
        for i in ids:
            row = self.db.get(id=int(i))
            atoms = row.toatoms()
            atoms.info.update(row.data.get("info", {}))
            out.append(atoms)
        return out

    def source_ids(self, source: str) -> list[int]:
        """The source's frames in their order (an NEB path's images), without the repeats' copies."""
        rows = [r for r in self.db.select(source=source, include_data=False) if r.get("repeat_of") is None]
        return [r.id for r in sorted(rows, key=lambda r: r.index)]

    def lf_forces(self, cid: int):
        return self.db.get(id=int(cid)).data.get("lf_forces")

    # --- selection and labels ----------------------------------------------------------------
    def mark_selected(self, ids, iteration: int, pred_energy, pred_sigma, scores, core_hours=None,
                      relevance=None) -> None:
        """`core_hours`: each one's predicted cost (aloop.cost), kept as `pred_core_hours`; None when
        no cost is known yet. `relevance`: each one's {observable: metrics.relevance} under the
        committee that chose it, kept in its data; None when there is none."""
        costs = [None] * len(ids) if core_hours is None else core_hours
        bearing = [None] * len(ids) if relevance is None else relevance
        with self.db:
            for cid, e, s, score, cost, rel in zip(ids, pred_energy, pred_sigma, scores, costs, bearing):
                extra = {} if cost is None else {"pred_core_hours": float(cost)}
                self.db.update(
                    int(cid), state=SELECTED, iteration=int(iteration),
                    pred_energy=float(e), pred_sigma=float(s), score=float(score), **extra,
                    data={"relevance": rel} if rel else None,
                )

    def add_label(self, cid: int, energy: float, sigma: float, provenance: dict) -> None:
        row = self.db.get(id=int(cid))
        if row.state == LABELLED:
            raise RuntimeError(f"candidate {cid} is already labelled; refusing to label it twice")
        with self.db:
            self.db.update(int(cid), state=LABELLED, energy_hf=float(energy), sigma_hf=float(sigma),
                           data={**row.data, "provenance": provenance})

    def mark_failed(self, cid: int, reason: str) -> None:
        with self.db:
            self.db.update(int(cid), state=FAILED, reason=str(reason)[:500])

    def requeue(self, cid: int) -> None:
        """A failed candidate back to selected, to be labelled again (its old reason is dropped)."""
        row = self.db.get(id=int(cid))
        if row.state == LABELLED:
            raise RuntimeError(f"candidate {cid} is labelled; a labelled candidate is never re-queued")
        with self.db:
            self.db.update(int(cid), state=SELECTED, delete_keys=["reason"])

    def labels(self):
        """(ids, energies, sigmas) of every labelled candidate, in label-id order."""
        rows = self.rows(state=LABELLED)
        return (
            [r.id for r in rows],
            np.array([r.energy_hf for r in rows]),
            np.array([r.sigma_hf for r in rows]),
        )

    def batch_errors(self, iteration: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(label − prediction, committee σ, label σ) of the candidates selected in `iteration` and
        labelled since, in id order: the prospective errors of that batch (NaN where it was chosen
        without a committee, as the first batch is)."""
        rows = self.rows(iteration=int(iteration), state=LABELLED)
        return (np.array([r.energy_hf - r.pred_energy for r in rows], dtype=float),
                np.array([r.pred_sigma for r in rows], dtype=float), np.array([r.sigma_hf for r in rows], dtype=float))

    # --- iterations --------------------------------------------------------------------------
    def write_iteration(self, iteration: int, record: dict) -> None:
        with self._sql() as con:
            con.execute("INSERT OR REPLACE INTO aloop_iterations VALUES (?, ?)", (iteration, json.dumps(record)))

    def iterations(self) -> list[dict]:
        with self._sql() as con:
            rows = con.execute("SELECT record FROM aloop_iterations ORDER BY iteration").fetchall()
        return [json.loads(r[0]) for r in rows]

    # --- forks -------------------------------------------------------------------------------
    def draw_ids(self, ids) -> list[int]:
        """The ids the committee's random draws (each label's bootstrap counts) are keyed by: each
        candidate's own, except a fork's additions, which draw under the ids an unforked run would
        have given them. A fork numbers its additions past its source's, in a range set by its fork
        number (fork.FORK_ID_STRIDE); keyed by those ids, a path point's counts, and so the fit, would
        depend on which fork a benchmark run happened to be (two forks of one pool fitting the same
        labels at 46 MoS2 labels landed 0.04 eV apart on the barrier)."""
        shifts = self.get_meta(DRAW_SHIFTS, [])
        return [_unshifted(int(i), shifts) for i in ids]

    def max_id(self) -> int:
        """The largest candidate id in use (0 in an empty store)."""
        with closing(sqlite3.connect(self.path, timeout=60)) as con:
            return int(con.execute("SELECT COALESCE(MAX(id), 0) FROM systems").fetchone()[0])

    def fork(self, run_dir: str | Path, iteration: int, first_new_id: int | None = None) -> "RunStore":
        """A copy of this store in `run_dir` as it stood before `iteration`: the same candidates under
        the same ids, the labels and records of iterations 0..iteration-1, and every candidate selected
        later back in the pool, its label dropped. The copy appears whole or not at all. Candidates it
        adds later are numbered from `first_new_id` (beyond every id of this store) when given."""
        done = len(self.iterations())
        if not 0 <= iteration <= done:
            raise ValueError(f"{self.run_dir}: cannot fork at iteration {iteration}; expected 0..{done} "
                             f"(the iterations recorded)")
        target = Path(run_dir) / "aloop.db"
        if target.exists():
            raise FileExistsError(f"{target} exists; fork into a folder that holds no run")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name("aloop.db.tmp")
        with closing(sqlite3.connect(self.path, timeout=60)) as source, closing(sqlite3.connect(tmp)) as copy:
            source.backup(copy)
        db = connect(tmp, type="db")
        with db:
            later = [row.id for row in db.select("added>=%d" % iteration, include_data=False)]
            if later:
                db.delete(later)
            for row in list(db.select("iteration>=%d" % iteration)):
                data = {k: v for k, v in row.data.items() if k not in ("provenance", "relevance")}
                # what the candidate was before its selection (added, repeat_of, role) stays with it
                keys = {k: v for k, v in row.key_value_pairs.items() if k not in SELECTION_KEYS}
                db.write(row.toatoms(), id=row.id, data=data, **keys, state=POOL)
        with closing(sqlite3.connect(tmp)) as con, con:   # closed after one transaction
            con.execute("DELETE FROM aloop_iterations WHERE iteration >= ?", (iteration,))
            con.execute("DELETE FROM aloop_meta WHERE key = 'stop_reason'")
            if first_new_id is not None:
                if first_new_id <= self.max_id():
                    raise ValueError(f"{self.path}: ids up to {self.max_id()} are in use; a fork cannot add from {first_new_id}")
                if not con.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'systems'", (first_new_id - 1,)).rowcount:
                    con.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('systems', ?)", (first_new_id - 1,))
            _record_draw_shift(con)
        os.replace(tmp, target)
        return RunStore(run_dir)


def _unshifted(cid: int, shifts: list[list[int]]) -> int:
    for first, shift in reversed(shifts):
        if cid >= first:
            return cid - shift
    return cid


def _record_draw_shift(con: sqlite3.Connection) -> None:
    """In a forked store (`con`, its copy being made): the shift from the id its next candidate
    will get to the one an unforked run would have given it (the last kept candidate's, unshifted,
    plus one), appended to the shifts the source carried (`RunStore.draw_ids`)."""
    row = con.execute("SELECT value FROM aloop_meta WHERE key = ?", (DRAW_SHIFTS,)).fetchone()
    shifts = [] if row is None else json.loads(row[0])
    kept = int(con.execute("SELECT COALESCE(MAX(id), 0) FROM systems").fetchone()[0])
    seq = con.execute("SELECT seq FROM sqlite_sequence WHERE name = 'systems'").fetchone()
    first = max(kept, 0 if seq is None else int(seq[0])) + 1
    shift = first - (_unshifted(kept, shifts) + 1)
    if shift:
        con.execute("INSERT OR REPLACE INTO aloop_meta VALUES (?, ?)", (DRAW_SHIFTS, json.dumps(shifts + [[first, shift]])))
