"""Testbeds of aloop: systems, synthetic oracles and references used by campaigns/, scripts/ and
benchmarks/, kept out of the core package. Each testbed names its extra: `pip install -e ".[mos2]"`."""
