"""Labels from any ASE calculator named by import path (synthetic oracles, benchmarks, cheap methods).

`calculator: "package.module:ClassName"` and `parameters: {...}` build the calculator once. The
label's error bar is the calculator's `energy_sigma` result when it reports one (a noisy oracle
does, as DMC would), else 0.
"""
from __future__ import annotations

import importlib

from .base import Label, LabelError, LocalLabeler


def import_calculator(path: str):
    """The class (or factory) an import path `package.module:Name` names; ValueError says why not."""
    module_name, _, attr = path.partition(":")
    if not attr:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"expected 'package.module:ClassName', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import module {module_name!r} ({err})") from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise ValueError(f"module {module_name!r} has no {attr!r}") from err


class ASECalculatorLabeler(LocalLabeler):
    name = "ase"

    def __init__(self, workdir, calculator: str, parameters: dict | None = None):
        super().__init__(workdir)
        self.path, self.parameters = calculator, dict(parameters or {})
        try:
            factory = import_calculator(calculator)
        except ValueError as err:
            raise ValueError(f"labeler.calculator: {err}") from err
        # ASE's Calculator.set keeps a misspelled keyword without a word; refuse it here instead
        known = getattr(factory, "default_parameters", None)
        unknown = sorted(set(self.parameters) - set(known)) if known else []
        if unknown:
            raise ValueError(f"labeler.parameters: {calculator} has no parameter {', '.join(unknown)}; "
                             f"it has: {', '.join(sorted(known))}")
        try:
            self.calc = factory(**self.parameters)
        except TypeError as err:
            raise ValueError(f"labeler.parameters: {calculator} does not accept {sorted(self.parameters)} ({err})") from err

    def compute(self, atoms) -> Label:
        atoms = atoms.copy()
        atoms.calc = self.calc
        try:
            energy = float(atoms.get_potential_energy())
        except Exception as err:  # a calculator may raise anything for a configuration it cannot do
            raise LabelError(f"{self.path}: {type(err).__name__}: {err}") from err
        sigma = float(self.calc.results.get("energy_sigma", 0.0))
        return Label(energy, sigma, {"method": self.path, "parameters": self.parameters})
