"""The qmcpack labeler's job folders: QE and QMCPACK inputs read back, electron counts, the queue."""
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase.build import mx2
from ase.io import read
from ase.io.espresso import read_fortran_namelist
from ase.units import Bohr

from conftest import write_pseudos

from aloop.campaign_labelers import QMCPACKSettings
from aloop.campaign import load_campaign
from aloop.labelers import PENDING, LabelError
from aloop.labelers.qmcpack import QMCPACKLabeler, array_ranges
from aloop.labelers.qmcpack_inputs import JobSetupError, electron_counts, valence_in_file
from aloop.labelers.qmcpack_jastrow import splice

ROOT = Path(__file__).resolve().parents[2]


def spec(folder: Path, **changes) -> QMCPACKSettings:
    data = {"kind": "qmcpack", "ecut": 300, "pseudopotentials": write_pseudos(folder, {"Mo": 14, "S": 6}),
            "timesteps": [0.02, 0.01], "equilibration": [20, 40], "blocks": 200, "min_blocks": 50}
    data.update(changes)
    return QMCPACKSettings.model_validate(data, context={"base_dir": str(folder)})


def mos2(charge=None, spin=None):
    atoms = mx2("MoS2", size=(2, 2, 1), vacuum=8.0)
    atoms.pbc = True
    if charge is not None:
        atoms.info.update(charge=charge, spin=spin)
    return atoms


def parameters(qmc) -> dict:
    return {p.get("name"): p.text.strip() for p in qmc.findall("parameter")}


def test_valence_is_read_from_upf_v1_v2_and_qmcpack_headers(tmp_path):
    (tmp_path / "v1.upf").write_text("<PP_HEADER>\n   0   Version Number\n   S   Element\n"
                                     " 6.00000000000      Z valence\n</PP_HEADER>\n")
    (tmp_path / "v2.upf").write_text('<PP_HEADER z_valence="1.400000000000000E+001" element="Mo"/>')
    (tmp_path / "q.xml").write_text('<pseudo><header symbol="Mo" atomic-number="42" zval="14"/></pseudo>')
    (tmp_path / "none.upf").write_text("<PP_HEADER/>")
    assert [valence_in_file(tmp_path / n) for n in ("v1.upf", "v2.upf", "q.xml", "none.upf")] == [6.0, 14.0, 14.0, None]


def test_electron_counts_carry_charge_and_spin():
    symbols = ["Mo"] + ["S"] * 2          # 14 + 12 = 26 valence electrons
    e = electron_counts(symbols, {"Mo": 14, "S": 6}, 0, 0)
    assert (e.up, e.down, e.charge, e.spin) == (13, 13, 0, 0)
    e = electron_counts(symbols, {"Mo": 14, "S": 6}, 1, 1)
    assert (e.up, e.down, e.total) == (13, 12, 25)
    e = electron_counts(symbols, {"Mo": 14, "S": 6}, -2, 2)
    assert (e.up, e.down) == (15, 13)
    with pytest.raises(JobSetupError, match="25 electrons .* cannot have spin 2S = 0"):
        electron_counts(symbols, {"Mo": 14, "S": 6}, 1, 0)


def test_charged_open_shell_job_with_twists_and_j3(tmp_path):
    settings = spec(tmp_path, twists=[2, 2, 1], kgrid=[4, 4, 1], jastrow={"j3": True, "loops": 6})
    labeler = QMCPACKLabeler(tmp_path / "queue", settings)
    atoms = mos2(charge=1, spin=1)           # Mo4S8: 4·14 + 8·6 − 1 = 103 electrons, 52 up, 51 down
    labeler.submit("cand0000007", atoms)
    job = tmp_path / "queue" / "cand0000007"

    scf = read_fortran_namelist(open(job / "scf.in"))[0]["system"]
    assert (scf["tot_charge"], scf["nspin"], scf["tot_magnetization"], scf["ecutwfc"]) == (1.0, 2, 1.0, 300.0)
    assert np.allclose(read(job / "scf.in", format="espresso-in").positions, atoms.positions, atol=1e-8)
    nscf_text = (job / "nscf.in").read_text()
    nscf = read_fortran_namelist(open(job / "nscf.in"))[0]["system"]
    assert nscf["nosym"] and nscf["noinv"] and "K_POINTS crystal\n4\n" in nscf_text
    assert "4 4 1" in (job / "scf.in").read_text()
    assert "prefix" in (job / "p2q.in").read_text()

    for g in range(4):
        root = ET.parse(job / f"dmc.g{g:03d}.in.xml").getroot()
        assert root.find("project").get("id") == "dmc"
        groups = {grp.get("name"): int(grp.get("size")) for grp in root.find(".//particleset[@name='e']")}
        assert groups == {"u": 52, "d": 51}
        ions = root.find(".//particleset[@name='ion0']")
        assert {grp.get("name"): (int(grp.get("size")), parameters(grp)["charge"]) for grp in ions} == \
            {"Mo": (4, "14"), "S": (8, "6")}
        mo = ions.find("group[@name='Mo']/attrib").text.split()
        assert np.allclose(np.array(mo, float).reshape(-1, 3), atoms.positions[atoms.numbers == 42] / Bohr)
        builder = root.find(".//sposet_builder")
        assert builder.get("twistnum") == str(g) and builder.get("href") == "pwscf_output/pwscf.pwscf.h5"
        assert {s.get("name"): (s.get("size"), s.get("spindataset")) for s in builder} == \
            {"spo_u": ("52", "0"), "spo_d": ("51", "1")}
        assert [j.get("name") for j in root.findall(".//jastrow")] == ["J1", "J2", "J3"]
        hrefs = {p.get("elementType"): p.get("href") for p in root.findall(".//pseudo")}
        assert hrefs == {"Mo": "Mo.xml", "S": "S.xml"} and all((job / h).is_file() for h in hrefs.values())
        qmc = root.findall("qmc")
        assert [q.get("method") for q in qmc] == ["vmc", "dmc", "dmc", "dmc"]
        dmc = [parameters(q) for q in qmc[1:]]
        assert [(d["timestep"], d["steps"], d["blocks"]) for d in dmc] == [("0.02", "10", "20"), ("0.02", "10", "200"),
                                                                           ("0.01", "20", "200")]
        assert all(d["nonlocalmoves"] == "yes" for d in dmc)

    opt = ET.parse(job / "opt.in.xml").getroot()
    assert opt.find("loop").get("max") == "6" and opt.find("loop/qmc").get("method") == "linear"
    assert opt.find(".//sposet_builder").get("twistnum") == "0"

    manifest = json.loads((job / "manifest.json").read_text())
    assert manifest["electrons"] == {"up": 52, "down": 51, "total": 103, "charge": 1, "spin": 1}
    assert [(s["index"], s["timestep"], s["equilibration"]) for s in manifest["series"]] == [(2, 0.02, 20), (3, 0.01, 40)]
    assert manifest["twists"]["count"] == 4 and manifest["jastrow"]["final"] == "opt.s005.opt.xml"
    assert set(manifest["consistency"]) >= {"timesteps", "pseudopotentials", "jastrow", "twists", "supercell"}
    assert "opt.s005.opt.xml dmc.g000.in.xml" in (job / "run.sh").read_text()
    assert read(job / "structure.extxyz").info["charge"] == 1 and len(read(job / "POSCAR")) == 12


def test_closed_shell_gamma_job_has_one_dmc_input_and_no_nscf(tmp_path):
    labeler = QMCPACKLabeler(tmp_path / "queue", spec(tmp_path, timesteps=[0.01], equilibration=30,
                                                      pw_parameters={"nbnd": 60}))
    labeler.submit("cand0000001", mos2())
    job = tmp_path / "queue" / "cand0000001"
    assert not (job / "nscf.in").exists() and not list(job.glob("dmc.g*.xml"))
    root = ET.parse(job / "dmc.in.xml").getroot()
    assert {s.get("name"): s.get("size") for s in root.iter("sposet")} == {"spo_ud": "52"}
    assert {d.get("group"): d.get("sposet") for d in root.iter("determinant")} == {"u": "spo_ud", "d": "spo_ud"}
    assert [j.get("name") for j in root.findall(".//jastrow")] == ["J1", "J2"]
    system = read_fortran_namelist(open(job / "scf.in"))[0]["system"]
    assert "nspin" not in system and system["nbnd"] == 60 and system["occupations"] == "fixed"


def test_pseudopotential_problems_name_the_field(tmp_path):
    settings = spec(tmp_path)
    (tmp_path / "S.xml").unlink()
    with pytest.raises(JobSetupError, match=r"labeler.pseudopotentials.S.xml: file not found"):
        QMCPACKLabeler(tmp_path / "q", settings).submit("cand0000001", mos2())
    write_pseudos(tmp_path, {"S": 6})
    bad = spec(tmp_path, pseudopotentials={"Mo": {"upf": "Mo.upf", "xml": "Mo.xml", "valence": 6},
                                           "S": {"upf": "S.upf", "xml": "S.xml"}})
    with pytest.raises(JobSetupError, match=r"labeler.pseudopotentials.Mo: the valence charges disagree"):
        QMCPACKLabeler(tmp_path / "q", bad).submit("cand0000001", mos2())
    with pytest.raises(JobSetupError, match="no entry for W"):
        atoms = mos2()
        atoms[0].symbol = "W"
        QMCPACKLabeler(tmp_path / "q", spec(tmp_path)).submit("cand0000001", atoms)
    assert not (tmp_path / "q" / "cand0000001").exists()   # no half-written job


def test_submit_is_idempotent_and_the_queue_is_an_array_job(tmp_path):
    labeler = QMCPACKLabeler(tmp_path / "queue", spec(tmp_path), campaign="demo")
    labeler.submit("cand0000003", mos2())
    job = tmp_path / "queue" / "cand0000003"
    before = {p.name: p.read_bytes() for p in job.iterdir()}
    labeler.submit("cand0000003", mos2(charge=2, spin=0))   # a known key: nothing is rewritten
    assert {p.name: p.read_bytes() for p in job.iterdir()} == before
    labeler.submit("cand0000009", mos2())
    assert labeler.keys() == ["cand0000003", "cand0000009"] and labeler.poll("cand0000009") == PENDING
    script = (tmp_path / "queue" / "submit.sh").read_text()
    assert "#SBATCH --array=0-1" in script and "#SBATCH --job-name=aloop-demo" in script and "{{" not in script
    index = json.loads((tmp_path / "queue" / "index.json").read_text())
    assert [(j["array_index"], j["key"], j["state"]) for j in index["jobs"]] == [(0, "cand0000003", "pending"),
                                                                                 (1, "cand0000009", "pending")]
    # the rendered script runs as bash: array task 1 enters the second job folder
    probe = script.replace("bash run.sh", "pwd")
    out = subprocess.run(["bash", "-c", probe], env={"SLURM_ARRAY_TASK_ID": "1", "PATH": "/usr/bin:/bin"},
                         cwd=tmp_path / "queue", capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("cand0000009"), out.stderr
    (tmp_path / "queue" / "stray").mkdir()
    with pytest.raises(JobSetupError, match="holds no manifest.json"):
        labeler.submit("stray", mos2())
    assert array_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


def test_user_template_placeholders_are_checked(tmp_path):
    (tmp_path / "pbs.sh").write_text("#PBS -J {{array}}\ncd {{queue}}\n{{walltime}}\n")
    labeler = QMCPACKLabeler(tmp_path / "queue", spec(tmp_path, batch_template="pbs.sh"))
    with pytest.raises(JobSetupError, match=r"labeler.batch_template: .*pbs.sh: unknown placeholder \{\{walltime\}\}"):
        labeler.submit("cand0000001", mos2())


def optimised_job(tmp_path, **changes) -> tuple[QMCPACKLabeler, Path]:
    """A queued job whose Jastrow optimisation has run (its opt.s009.opt.xml written)."""
    labeler = QMCPACKLabeler(tmp_path / "queue", spec(tmp_path, **changes))
    labeler.submit("cand0000001", mos2())
    job = tmp_path / "queue" / "cand0000001"
    # what QMCPACK writes after a linear-method step: the wavefunction with fitted coefficients
    opt = ET.parse(job / "opt.in.xml")
    for c in opt.getroot().iter("coefficients"):
        c.text = " 0.5 0.4 0.3 0.2 0.1 0.05 0.02 0.01 "
    ET.ElementTree(opt.getroot().find("qmcsystem")).write(job / "opt.s009.opt.xml")
    return labeler, job


def test_optimised_jastrow_goes_into_every_twist(tmp_path):
    _, job = optimised_job(tmp_path, twists=[2, 1, 1])
    dmc = [str(job / f"dmc.g00{g}.in.xml") for g in range(2)]
    cmd = [sys.executable, str(job / "qmcpack_jastrow.py"), str(job / "opt.s009.opt.xml"), *dmc]
    assert subprocess.run(cmd, capture_output=True, text=True).returncode == 0
    first = [Path(p).read_text() for p in dmc]
    assert splice(str(job / "opt.s009.opt.xml"), dmc) == 2 and [Path(p).read_text() for p in dmc] == first
    for g, path in enumerate(dmc):
        root = ET.parse(path).getroot()
        assert root.find(".//sposet_builder").get("twistnum") == str(g)
        assert all(c.text.split()[0] == "0.5" for c in root.iter("coefficients"))
        assert len(root.findall(".//wavefunction/jastrow")) == 2


def test_schema_errors_name_the_field(tmp_path):
    from pydantic import ValidationError

    cases = [({"equilibration": [10, 20, 30]}, "one number of blocks per timestep"),
             ({"min_blocks": 190}, "can never be reached"),
             ({"pw_parameters": {"tot_charge": 1}}, "set by aloop from labeler.charge"),
             ({"pw_parameters": {"ocupations": "smearing"}}, "not a pw.x input parameter"),
             ({"nonlocalmoves": "v2"}, "nonlocalmoves")]
    for change, words in cases:
        with pytest.raises(ValidationError, match=words):
            spec(tmp_path, **change)
    assert spec(tmp_path, pw_parameters={"nbnd": 60}).pw_parameters == {"nbnd": 60}


def test_mos2_example_queues_a_job_a_qmcpack_user_recognises(tmp_path):
    campaign = ROOT / "campaigns" / "mos2-svac-qmcpack.yaml"
    structure = ROOT / "campaigns" / "mos2-svac" / "mono_initial.xyz"
    if not structure.exists():
        pytest.skip("campaigns/mos2-svac/mono_initial.xyz not there yet")
    if (ROOT / "campaigns" / "mos2-svac" / "base_chgnet.model").exists():   # the whole file is valid
        assert load_campaign(campaign).labeler.kind == "qmcpack"
    section = yaml.safe_load(campaign.read_text())["labeler"]
    settings = QMCPACKSettings.model_validate(section, context={"base_dir": str(campaign.parent)})
    assert settings.pseudopotentials["Mo"].upf == ROOT / "campaigns/mos2-svac/pseudo/Mo.ccECP.AREP.upf"
    # the ccECP files are the user's to fetch: stand-ins with the same names and valences
    for el, z in (("Mo", 14), ("S", 6)):
        entry = section["pseudopotentials"][el]
        for kind in ("upf", "xml"):
            entry[kind] = str(tmp_path / Path(entry[kind]).name)
        write_pseudos(tmp_path, {el: z})
        for kind in ("upf", "xml"):
            (tmp_path / f"{el}.{kind}").rename(entry[kind])
    settings = QMCPACKSettings.model_validate(section, context={"base_dir": str(campaign.parent)})
    atoms = read(structure)
    QMCPACKLabeler(tmp_path / "queue", settings).submit("cand0000001", atoms)
    job = tmp_path / "queue" / "cand0000001"
    assert atoms.get_chemical_formula() == "Mo16S31"
    manifest = json.loads((job / "manifest.json").read_text())
    assert manifest["electrons"] == {"up": 205, "down": 205, "total": 410, "charge": 0, "spin": 0}   # 16·14 + 31·6
    root = ET.parse(job / "dmc.g003.in.xml").getroot()
    assert {g.get("name"): g.get("size") for g in root.find(".//particleset[@name='ion0']")} == {"Mo": "16", "S": "31"}
    assert [p.get("href") for p in root.iter("pseudo")] == ["Mo.ccECP.AREP.xml", "S.ccECP.xml"]
    assert [parameters(q)["timestep"] for q in root.findall("qmc")[2:]] == ["0.02", "0.01"]
    assert "ATOMIC_SPECIES\nMo 95.95 Mo.ccECP.AREP.upf" in (job / "scf.in").read_text().replace("  ", " ")
    lattice = np.array(root.find(".//parameter[@name='lattice']").text.split(), float).reshape(3, 3)
    assert np.allclose(lattice * Bohr, atoms.cell.array, atol=1e-8)


def test_inputs_are_checked_against_the_manifest_but_the_spliced_jastrow_is_no_change(tmp_path):
    labeler, job = optimised_job(tmp_path)
    splice(str(job / "opt.s009.opt.xml"), [str(job / "dmc.in.xml")])   # what run.sh does before DMC
    text = (job / "dmc.in.xml").read_text()
    (job / "dmc.in.xml").write_text(text.replace('"blocks"> 200 <', '"blocks"> 400 <'))   # run longer: allowed
    assert (job / "dmc.in.xml").read_text() != text
    labeler.check_inputs("cand0000001", job)
    (job / "dmc.in.xml").write_text(text.replace('"timestep"> 0.01 <', '"timestep"> 0.03 <'))   # edited by hand
    assert (job / "dmc.in.xml").read_text() != text
    with pytest.raises(LabelError, match="differs from the input aloop wrote"):
        labeler.check_inputs("cand0000001", job)
