"""The MoS2 S-vacancy testbed (campaigns/mos2-svac): the synthetic high-fidelity oracle
(`oracle.SyntheticHF`, E_HF = E_CHGNet + ΔE + noise) and the cells, hops and NEB helpers
(`geometry`). Needs the `mos2` extra (CHGNet): `pip install -e ".[mos2]"`."""
