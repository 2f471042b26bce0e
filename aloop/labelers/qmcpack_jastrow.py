"""Carry the optimised Jastrow factors into the DMC inputs of a job (runs on the cluster).

usage: python3 qmcpack_jastrow.py OPT_XML DMC_XML [DMC_XML ...]

The optimisation runs at one twist and QMCPACK writes the optimised wavefunction of that twist to
opt.sNNN.opt.xml. Each twist's DMC input keeps its own orbitals (its `twistnum`) and takes only the
<jastrow> elements from that file. aloop copies this file into every job folder and run.sh calls it
between the optimisation and DMC; it needs nothing but Python 3's standard library, since aloop
itself is rarely installed on the cluster. Running it again gives the same inputs.
"""
from __future__ import annotations

import copy
import sys
import xml.etree.ElementTree as ET


def splice(opt_xml: str, dmc_xmls: list[str]) -> int:
    """Replace the <jastrow> elements of each DMC input's wavefunction; the number of factors."""
    jastrows = ET.parse(opt_xml).getroot().findall(".//wavefunction/jastrow")
    if not jastrows:
        raise SystemExit(f"{opt_xml}: no <jastrow> inside a <wavefunction>; did the optimisation finish?")
    for path in dmc_xmls:
        tree = ET.parse(path)
        wavefunction = tree.getroot().find(".//wavefunction")
        if wavefunction is None:
            raise SystemExit(f"{path}: no <wavefunction> to put the Jastrow factors in")
        for old in wavefunction.findall("jastrow"):
            wavefunction.remove(old)
        wavefunction.extend(copy.deepcopy(j) for j in jastrows)
        ET.indent(tree, space="   ")
        with open(path, "w") as f:
            f.write(ET.tostring(tree.getroot(), encoding="unicode", xml_declaration=True) + "\n")
    return len(jastrows)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__.split("\n\n")[1])
    n = splice(sys.argv[1], sys.argv[2:])
    print(f"{n} Jastrow factors from {sys.argv[1]} into {len(sys.argv) - 2} DMC input(s)")
