"""QMCPACK DMC labels through a batch queue: one job folder per configuration, ingested later.

`submit` writes RUN/queue/<key>/ (structure, pw.x and pw2qmcpack.x inputs, QMCPACK inputs, the
pseudopotentials, run.sh and a manifest) and refreshes the queue files: jobs.txt (array index →
folder), index.json and submit.sh (the batch script rendered from a template, covering the jobs
that wait). Nothing runs here. `aloop ingest` (aloop/ingest.py) reads the outputs back through
`evaluate` and `record`; until then `poll` says PENDING. A job's result record (ingested.json) holds
either a label or the state and reason of a job that gave none: failed, needs-more-blocks or
inconsistent.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from ase import Atoms
from ase.io import write

from .. import __version__
from ..charge import state_of
from ..cost import qmcpack_core_seconds
from ..files import write_text_atomic
from . import qmcpack_inputs as inputs
from . import qmcpack_jastrow
from .base import DONE, FAILED, PENDING, Label, LabelError, set_aside
from .qmcpack_results import FAILED_STATE, JobProblem, Series, blocks_digest, dmc_label

MANIFEST, RECORD, EXIT_STATUS = "manifest.json", "ingested.json", "exit_status"
JOB_ID = "slurm_job_id"   # written into the job folder by the batch script when the job starts
INCONSISTENT = "inconsistent"
DEFAULT_TEMPLATE = Path(__file__).with_name("templates") / "slurm.sh"


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _write_json(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def render_template(text: str, values: dict, source: Path) -> str:
    """Replace {{name}} placeholders; an unknown one is an error naming the template."""
    def value(match):
        name = match.group(1)
        if name not in values:
            raise inputs.JobSetupError(f"labeler.batch_template: {source}: unknown placeholder {{{{{name}}}}}; "
                                   f"known: {', '.join(values)}")
        return str(values[name])
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", value, text)


def array_ranges(indices: list[int]) -> str:
    """Slurm's --array syntax: [0, 1, 2, 5] → '0-2,5'."""
    parts, start = [], None
    for i, n in enumerate(indices):
        if start is None:
            start = n
        if i + 1 == len(indices) or indices[i + 1] != n + 1:
            parts.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ",".join(parts)


def differences(reference, value, where: str = "") -> list[str]:
    """Where two manifest `consistency` blocks differ, as 'field: this vs reference' lines."""
    if isinstance(reference, dict) and isinstance(value, dict):
        out = []
        for k in sorted(set(reference) | set(value)):
            out += differences(reference.get(k), value.get(k), f"{where}.{k}" if where else k)
        return out
    return [] if reference == value else [f"{where}: {json.dumps(value)} here, {json.dumps(reference)} in the run's labels"]


class QMCPACKLabeler:
    """Job folders under `workdir` (RUN/queue) from the campaign's `labeler:` section."""

    name = "qmcpack"

    def __init__(self, workdir: str | os.PathLike, settings, campaign: str = "campaign"):
        self.workdir = Path(workdir)
        self.settings = settings
        self.campaign = campaign
        self.template = Path(settings.batch_template) if settings.batch_template else DEFAULT_TEMPLATE

    # --- the labeler protocol ----------------------------------------------------------------
    def submit(self, key: str, atoms: Atoms) -> None:
        folder = self.workdir / key
        if (folder / MANIFEST).exists():
            self.keys()    # rebuilds a lost jobs.txt (and the queue files) from the manifests
            return
        if folder.exists():
            raise inputs.JobSetupError(f"{folder} exists but holds no {MANIFEST}: it is not a job aloop wrote; move it away")
        self.workdir.mkdir(parents=True, exist_ok=True)
        partial = self.workdir / f".{key}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        write_job(partial, key, atoms, self.settings)
        os.replace(partial, folder)       # a job folder is complete or absent
        jobs = self.keys()
        if key not in jobs:
            with open(self.workdir / "jobs.txt", "a") as f:
                f.write(key + "\n")
        self.write_queue_files()

    def retry(self, key: str, atoms: Atoms) -> None:
        """A fresh job folder for `key`; the old one is kept as <key>.attempt<N>."""
        if self.manifest(key) is None:
            raise ValueError(f"no job {key} in {self.workdir}")
        old = set_aside(self.workdir / key)
        try:
            self.submit(key, atoms)
        except Exception:
            shutil.move(old, self.workdir / key)      # the job stays as it was when the new one cannot be written
            raise

    def poll(self, key: str) -> str:
        record = self.record_of(key)
        if record is None:
            return PENDING
        return DONE if record["state"] == DONE else FAILED

    def collect(self, key: str) -> Label:
        record = self.record_of(key)
        if record is None:
            raise LabelError(f"job {key}: not ingested yet (`aloop ingest`)")
        if record["state"] != DONE:
            raise LabelError(f"{record['state']}: {record['reason']}")
        return Label.from_json(record["label"])

    # --- the queue --------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Queued jobs in array-index order. A lost jobs.txt is rebuilt from the job folders'
        manifests (in the order they were written), and the queue files with it, so no queued job
        is forgotten."""
        path = self.workdir / "jobs.txt"
        if not path.exists():
            manifests = [json.loads(m.read_text()) | {"folder": m.parent.name}
                         for m in self.workdir.glob(f"*/{MANIFEST}")]
            # set-aside attempts (<key>.attempt<N>) hold the manifest of the same key: not a job of their own
            jobs = sorted((m["created"], m["key"]) for m in manifests if m["key"] == m["folder"])
            if not jobs:
                return []
            path.write_text("".join(key + "\n" for _, key in jobs))
            self.write_queue_files()      # index.json and submit.sh went with it
        return path.read_text().split()

    def manifest(self, key: str) -> dict | None:
        path = self.workdir / key / MANIFEST
        return json.loads(path.read_text()) if path.exists() else None

    def record_of(self, key: str) -> dict | None:
        path = self.workdir / key / RECORD
        return json.loads(path.read_text()) if path.exists() else None

    def job_id(self, key: str) -> str | None:
        """The batch system's id of the job, if its batch script recorded one (the default template
        writes <array job id>_<array index> when the job starts)."""
        path = self.workdir / key / JOB_ID
        return (path.read_text().strip() or None) if path.exists() else None

    def record(self, key: str, record: dict) -> None:
        _write_json(self.workdir / key / RECORD, record)

    def write_queue_files(self) -> None:
        """index.json (every job and its state) and submit.sh (an array over the jobs without a label)."""
        jobs = []
        for i, key in enumerate(self.keys()):
            manifest, record = self.manifest(key) or {}, self.record_of(key) or {}
            jobs.append({"array_index": i, "key": key, "formula": manifest.get("structure", {}).get("formula"),
                         "electrons": manifest.get("electrons"), "state": record.get("state", PENDING),
                         "reason": record.get("reason")})
        _write_json(self.workdir / "index.json", {"campaign": self.campaign, "jobs": jobs})
        waiting = [j["array_index"] for j in jobs if j["state"] != DONE]
        script = self.workdir / "submit.sh"
        if not waiting:
            script.unlink(missing_ok=True)   # a stale array would run labelled jobs again
            return
        values = {"name": self.campaign, "queue": self.workdir.resolve(), "jobs": (self.workdir / "jobs.txt").resolve(),
                  "array": array_ranges(waiting), "count": len(waiting)}
        script.write_text(render_template(self.template.read_text(), values, self.template))

    # --- results ----------------------------------------------------------------------------
    def evaluate(self, key: str, results: Path) -> Label:
        """The label in `results` (a job folder with its outputs); JobProblem when there is none."""
        manifest = self.manifest(key)
        status = results / EXIT_STATUS
        if status.exists() and status.read_text().strip() != "0":
            raise JobProblem(FAILED_STATE, f"{results}: run.sh stopped with exit status {status.read_text().strip()}; "
                                           "see the *.out files there")
        series = [Series(s["index"], s["timestep"], s["equilibration"]) for s in manifest["series"]]
        energy, sigma, detail = dmc_label(results, inputs.DMC_PROJECT, series, self.settings.min_blocks)
        if detail["twists"] != manifest["twists"]["count"]:
            raise JobProblem(FAILED_STATE, f"{results}: outputs of {detail['twists']} twists, the job has "
                                           f"{manifest['twists']['count']}")
        provenance = {"method": "DMC (QMCPACK)", "manifest_sha256": sha256(self.workdir / key / MANIFEST),
                      "consistency": manifest["consistency"], "electrons": manifest["electrons"],
                      "results": str(results), "blocks_sha256": blocks_digest(results, inputs.DMC_PROJECT, series),
                      "cpu": qmcpack_core_seconds(results, {"opt.out": inputs.OPT_PROJECT, "dmc.out": inputs.DMC_PROJECT}),
                      **detail}
        try:
            return Label(energy, sigma, provenance)
        except LabelError as err:
            raise JobProblem(FAILED_STATE, f"{results}: {err}") from None

    def check_inputs(self, key: str, results: Path) -> None:
        """JobProblem (inconsistent) unless every input file of the job is the one aloop wrote (its
        SHA-256 in the manifest): outputs of an edited input are not the label of the queued job.
        Each input is looked for in `results`, else in the queue's job folder."""
        manifest = self.manifest(key)
        dmc = manifest["dmc"].get("inputs_sha256_without_jastrow", {})
        for name, digest in manifest["files"].items():
            path = results / name if (results / name).exists() else self.workdir / key / name
            if not path.exists():
                raise JobProblem(INCONSISTENT, f"input {name} of the job is missing; it cannot be checked")
            if name in manifest["dmc"]["inputs"]:
                if not dmc:
                    continue   # a job queued before these digests were written: run.sh has rewritten it
                found, digest = dmc_input_digest(path), dmc[name]
            else:
                found = sha256(path)
            if found != digest:
                raise JobProblem(INCONSISTENT, f"{path}: differs from the input aloop wrote (SHA-256 in {MANIFEST}); "
                                               "outputs of an edited job are not its label: "
                                               f"`aloop requeue RUN {key}` writes a fresh job")


def dmc_input_digest(path: Path) -> str:
    """SHA-256 of a DMC input without what may change after queueing: its <jastrow> elements, which
    run.sh replaces with the optimised ones (qmcpack_jastrow.py), and the number of blocks, which a
    user may raise to run a job longer (docs/dmc-on-a-cluster.md). Canonical XML, so re-indenting is
    no change but any other setting is."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise JobProblem(INCONSISTENT, f"{path}: not readable XML ({err})") from None
    for wavefunction in root.iter("wavefunction"):
        for jastrow in wavefunction.findall("jastrow"):
            wavefunction.remove(jastrow)
    for qmc in root.iter("qmc"):
        for parameter in qmc.findall("parameter[@name='blocks']"):
            qmc.remove(parameter)
    text = ET.canonicalize(ET.tostring(root, encoding="unicode"), strip_text=True)
    return hashlib.sha256(text.encode()).hexdigest()


def write_job(folder: Path, key: str, atoms: Atoms, settings) -> dict:
    """Every file of one job, and its manifest; the manifest is returned."""
    if atoms.cell.rank < 3:
        raise inputs.JobSetupError(f"{key}: the configuration has no 3D cell (a molecule?); QMCPACK jobs here are "
                               "periodic: give the pool's structures a cell, with vacuum where there is no bulk")
    symbols = atoms.get_chemical_symbols()
    valence = inputs.check_pseudopotentials(settings.pseudopotentials, symbols)
    charge, spin = state_of(atoms, settings.charge, settings.spin)
    electrons = inputs.electron_counts(symbols, valence, charge, spin)

    pseudo = {}
    for el in inputs.species(atoms):
        entry = settings.pseudopotentials[el]
        pseudo[el] = {}
        for kind in ("upf", "xml"):
            source = Path(getattr(entry, kind))
            shutil.copy(source, folder / source.name)
            pseudo[el].update({kind: source.name, f"{kind}_sha256": sha256(source), f"{kind}_source": str(source)})
        pseudo[el]["valence"] = valence[el]

    structure = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    structure.info.update(charge=charge, spin=spin)
    write(folder / "structure.extxyz", structure, format="extxyz")
    write(folder / "POSCAR", structure, format="vasp", direct=True, sort=False)
    qe_files = inputs.write_qe_inputs(folder, structure, settings, electrons, {el: p["upf"] for el, p in pseudo.items()})

    twists = inputs.twist_grid(settings.twists)
    pseudo_xml = {el: p["xml"] for el, p in pseudo.items()}
    opt = inputs.opt_document(inputs.qmcsystem(structure, electrons, valence, pseudo_xml, 0, settings), settings)
    inputs.write_xml(opt, folder / "opt.in.xml")
    dmc_files = ["dmc.in.xml"] if len(twists) == 1 else [f"dmc.g{g:03d}.in.xml" for g in range(len(twists))]
    for g, name in enumerate(dmc_files):
        inputs.write_xml(inputs.dmc_document(inputs.qmcsystem(structure, electrons, valence, pseudo_xml, g, settings), settings),
                     folder / name)
    final_opt = f"{inputs.OPT_PROJECT}.s{settings.jastrow.loops - 1:03d}.opt.xml"
    shutil.copy(qmcpack_jastrow.__file__, folder / "qmcpack_jastrow.py")
    (folder / "run.sh").write_text(run_script(key, qe_files, final_opt, dmc_files))

    steps = inputs.dmc_steps(settings)
    equilibration = settings.equilibration_per_series()
    series = [{"index": inputs.FIRST_DMC_SERIES + i, "timestep": tau, "equilibration": equilibration[i], "steps": steps[i]}
              for i, tau in enumerate(settings.timesteps)]
    cell = [[round(float(x), 4) for x in row] for row in atoms.cell.array]
    dft = {"code": "Quantum ESPRESSO pw.x + pw2qmcpack.x", "functional": settings.functional, "ecut_ry": settings.ecut,
           "kgrid": list(settings.kgrid), "pw_parameters": settings.pw_parameters, "meshfactor": settings.meshfactor}
    jastrow = {"j1": True, "j2": True, "j3": settings.jastrow.j3}
    manifest = {
        "aloop": __version__, "key": key, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "structure": {"formula": structure.get_chemical_formula(), "n_atoms": len(structure), "cell_angstrom": cell,
                      "pbc": [bool(p) for p in atoms.pbc], "files": ["structure.extxyz", "POSCAR"]},
        "electrons": {"up": electrons.up, "down": electrons.down, "total": electrons.total,
                      "charge": charge, "spin": spin},
        "pseudopotentials": pseudo,
        "dft": {**dft, "nscf": inputs.needs_nscf(settings), "inputs": qe_files},
        "twists": {"grid": list(settings.twists), "count": len(twists), "crystal": twists.tolist()},
        "jastrow": {**jastrow, "loops": settings.jastrow.loops, "samples": settings.jastrow.samples,
                    "blocks_per_step": inputs.optimisation_blocks(settings), "input": "opt.in.xml", "final": final_opt},
        "dmc": {"driver": "batched", "walkers": settings.walkers, "warmup_blocks": settings.warmup_blocks,
                "blocks": settings.blocks, "nonlocalmoves": settings.nonlocalmoves, "inputs": dmc_files,
                "project": inputs.DMC_PROJECT},
        "series": series,
        "supercell": {"tilematrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "cell_angstrom": cell},
        "units": {"labels": "eV per simulation cell", "qmcpack": "Hartree per simulation cell", "timestep": "1/Hartree",
                  "ecut": "Ry"},
        "consistency": {
            "timesteps": list(settings.timesteps), "nonlocalmoves": settings.nonlocalmoves,
            "pseudopotentials": {el: {k: p[k] for k in ("upf_sha256", "xml_sha256")} for el, p in pseudo.items()},
            "jastrow": jastrow, "twists": list(settings.twists),
            "supercell": {"tilematrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "cell_angstrom": cell}, "dft": dft},
    }
    manifest["files"] = {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}
    manifest["dmc"]["inputs_sha256_without_jastrow"] = {name: dmc_input_digest(folder / name) for name in dmc_files}
    _write_json(folder / MANIFEST, manifest)
    return manifest


def run_script(key: str, qe_files: list[str], final_opt: str, dmc_files: list[str]) -> str:
    """The job's steps. Steps whose product exists are skipped, so a job can simply be run again
    (e.g. with more time for DMC); exit_status tells `aloop ingest` that the job has ended."""
    nscf = "  $PW -input nscf.in > nscf.out\n" if "nscf.in" in qe_files else ""
    return (
        "#!/bin/bash\n"
        f"# {key}: orbitals (pw.x, pw2qmcpack.x) -> Jastrow optimisation -> DMC. Written by aloop; see manifest.json.\n"
        "# PW, PW2QMCPACK and QMCPACK name the programs (with their MPI launcher); the batch script sets them.\n"
        "set -euo pipefail\n"
        'cd "$(dirname "$0")"\n'
        "rm -f exit_status\n"
        "trap 'echo $? > exit_status' EXIT\n"
        ': "${PW:=pw.x}" "${PW2QMCPACK:=pw2qmcpack.x}" "${QMCPACK:=qmcpack}"\n'
        f"if [ ! -f {inputs.H5} ]; then\n"
        "  $PW -input scf.in > scf.out\n"
        f"{nscf}"
        "  $PW2QMCPACK < p2q.in > p2q.out\n"
        "fi\n"
        f"if [ ! -f {final_opt} ]; then\n"
        "  $QMCPACK opt.in.xml > opt.out\n"
        "fi\n"
        f"python3 qmcpack_jastrow.py {final_opt} {' '.join(dmc_files)}\n"
        f"$QMCPACK {' '.join(dmc_files)} > dmc.out\n"
    )
