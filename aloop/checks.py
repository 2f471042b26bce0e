"""A campaign checked against its files before anything is computed: the base model loads, every
configuration of the pool and the test set holds only elements the model knows, and the labeler's
charge and spin are possible for each of them.

`aloop validate` runs these checks, and `aloop run` runs them again before the pool is built, so a
mistake costs neither a label nor a run folder bound to a broken file. Each problem names the
file, the frame and what is wrong; all are reported at once in one CampaignError.
"""
from __future__ import annotations

from ase import Atoms
from ase.data import chemical_symbols

from .backbone import Backbone
from .campaign import Campaign, CampaignError
from .charge import state_of
from .delta import nonlinear_map
from .pool import PoolError, read_frames

MAX_LISTED = 10   # problems of one kind listed before "… and N more"


def load_backbone(campaign: Campaign) -> Backbone:
    """The base model, or a CampaignError naming model.path and why the file cannot be used."""
    try:
        return Backbone.from_file(campaign.model.path, device=campaign.device, head=campaign.model.head)
    except ValueError as err:
        raise CampaignError(f"model.path: {err}") from None


def source_frames(spec) -> list[tuple[str, str, list[Atoms]]]:
    """(where, file, frames) of every file a pool source reads its configurations from."""
    files = {"file": ["path"], "md": ["start"], "neb": ["initial", "final", "guess"]}[spec.kind]
    where = f"pool source '{spec.name}'"
    index = spec.index if spec.kind == "file" else ":"
    return [(where, str(getattr(spec, field)), read_frames(getattr(spec, field), index, where))
            for field in files if getattr(spec, field) is not None]


def unknown_elements(frames: list[Atoms], where: str, path: str, known: set[int]) -> list[str]:
    problems = []
    for i, atoms in enumerate(frames):
        foreign = sorted(set(atoms.numbers.tolist()) - known)
        if foreign:
            names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in foreign)
            problems.append(f"{where}: {path} frame {i}: element {names} unknown to the base model")
    return problems


def impossible_spin(frames: list[Atoms], where: str, path: str, labeler) -> list[str]:
    """Frames whose electron count cannot have their 2S (all-electron count; pyscf, pyqmc): a frame's
    own charge and spin (atoms.info) where it has them, else the labeler's."""
    problems = []
    for i, atoms in enumerate(frames):
        charge, spin = state_of(atoms, labeler.charge, labeler.spin)
        electrons = int(atoms.numbers.sum()) - charge
        spin = electrons % 2 if spin is None else spin
        if electrons <= 0 or spin > electrons or (electrons - spin) % 2:
            origin = "its spin" if "spin" in atoms.info else "labeler.spin"
            problems.append(f"{where}: {path} frame {i} ({atoms.get_chemical_formula()}): {electrons} electrons "
                            f"(charge {charge}) cannot have {origin} 2S = {spin}; 2S must be between 0 "
                            f"and {max(electrons, 0)} with the parity of the electron count")
    return problems


def charge_problems(groups: list[tuple[str, str, list[Atoms]]], backbone: Backbone) -> list[str]:
    """Frames whose total charge or spin the model cannot take (aloop.backbone.Backbone.refuses), and
    charge states mixed for a model that has no charge embedding to tell them apart."""
    problems, charges = [], set()
    for where, path, frames in groups:
        for i, atoms in enumerate(frames):
            charges.add(state_of(atoms)[0])
            why = backbone.refuses(atoms)
            if why:
                problems.append(f"{where}: {path} frame {i} ({atoms.get_chemical_formula()}): {why}")
    problems = _shorten(problems)
    if len(charges) > 1 and "total_charge" not in backbone.embeddings:
        problems.append(f"the configurations hold charges {', '.join(map(str, sorted(charges)))} (atoms.info "
                        "'charge'), and the base model has no total_charge embedding to tell them apart; keep "
                        "one charge state, or use a model with MACE's charge embedding (embedding_specs)")
    return problems


def _shorten(problems: list[str]) -> list[str]:
    extra = len(problems) - MAX_LISTED
    return problems[:MAX_LISTED] + ([f"… and {extra} more like these"] if extra > 0 else [])


def check_campaign(campaign: Campaign, backbone: Backbone, skip: tuple[str, ...] = ()) -> None:
    """CampaignError listing every configuration the model or the labeler cannot handle; the pool
    sources named in `skip` (already in a run's pool, checked then) are not read again."""
    known = {int(z) for z in backbone.z_table.zs}
    test = campaign.evaluation.test_set
    try:
        groups = [g for spec in campaign.pool.sources if spec.name not in skip for g in source_frames(spec)]
        if test is not None:
            groups.append(("evaluation.test_set", str(test.path), read_frames(test.path, ":", "evaluation.test_set")))
    except PoolError as err:
        raise CampaignError(str(err)) from None
    elements, spins = [], []
    for where, path, frames in groups:
        elements += unknown_elements(frames, where, path, known)
        if campaign.labeler.kind in ("pyscf", "pyqmc") and where != "evaluation.test_set":
            spins += impossible_spin(frames, where, path, campaign.labeler)
    problems = _shorten(elements) + _shorten(spins) + charge_problems(groups, backbone)
    if campaign.finetune.nonlinear:
        try:
            nonlinear_map(backbone, campaign.finetune)
        except ValueError as err:
            problems.append(str(err))
    if elements:
        names = ", ".join(chemical_symbols[z] for z in sorted(known))
        problems.append(f"the base model knows {names}; remove those frames or use a model trained on their elements")
    if problems:
        raise CampaignError("\n".join(problems))

