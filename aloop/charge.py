"""A configuration's charge state: its net charge and 2S (unpaired electrons), kept in atoms.info
under "charge" and "spin" (PySCF's convention; MACE's embeddings read the multiplicity 2S + 1, see
backbone.graph_inputs). Without them a configuration is in the campaign labeler's state."""
from __future__ import annotations

from ase import Atoms

KEYS = ("charge", "spin")


def charge_state(atoms: Atoms) -> dict[str, int]:
    """The configuration's own charge and 2S, where it has them: what a candidate keeps besides its
    geometry, and what the frames made from it (MD snapshots, NEB images) inherit."""
    return {k: int(atoms.info[k]) for k in KEYS if k in atoms.info}


def state_of(atoms: Atoms, charge: int = 0, spin: int | None = None) -> tuple[int, int | None]:
    """(net charge, 2S) of a configuration: its own where atoms.info has them, else `charge` and
    `spin` (a labeler's settings; spin None: the lowest the electron count allows, for the caller
    to work out)."""
    own = charge_state(atoms)
    return own.get("charge", int(charge)), own.get("spin", spin)
