"""DFT-D3 dispersion added to our calculator through torch-dftd and ASE's ``SumCalculator``.

CHGNet's labels (MPtrj) are PBE/PBE+U, so the default D3 parameters are PBE's with
Becke-Johnson damping. The sum gives energy (eV), forces (eV/Å) and stress (eV/Å^3), and the
model's magnetic moments (μB) through ``get_magnetic_moments``.
"""

from __future__ import annotations

from typing import Any

import torch
from ase.calculators.mixing import SumCalculator

from fastchgnet.workflows.batch import as_calculator


def d3_calculator(
    xc: str = "pbe", damping: str = "bj", three_body: bool = False, **options: Any
) -> Any:
    """torch-dftd's ``TorchDFTD3Calculator`` (float64, CPU unless ``device`` is given)."""
    try:
        from torch_dftd.torch_dftd3_calculator import TorchDFTD3Calculator
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "D3 dispersion needs torch-dftd: pip install 'fastchgnet[workflows]'"
        ) from exc
    options.setdefault("dtype", torch.float64)
    options.setdefault("device", "cpu")
    return TorchDFTD3Calculator(xc=xc, damping=damping, abc=three_body, **options)


class DispersionSum(SumCalculator):
    """ASE's ``SumCalculator`` (energy, forces, stress summed) that also gives the first
    calculator's magnetic moments (``magmoms``, μB; D3 has none), when it has them."""

    def __init__(self, calcs: list[Any]) -> None:
        super().__init__(calcs)
        self.model_calculator = calcs[0]
        if "magmoms" in self.model_calculator.implemented_properties:
            self.implemented_properties = [*self.implemented_properties, "magmoms"]

    def calculate(self, atoms: Any, properties: Any, system_changes: Any) -> None:
        """The sums of ``properties``, and ``magmoms`` from the model's calculator."""
        summed = [name for name in properties if name != "magmoms"] or ["energy"]
        super().calculate(atoms, summed, system_changes)
        if "magmoms" in properties:
            self.results["magmoms"] = self.model_calculator.get_property("magmoms", atoms)


def with_dispersion(model_or_calculator: Any, dispersion: str = "d3", **d3: Any) -> SumCalculator:
    """``SumCalculator`` of our calculator (built from a model when given one) and D3; it also
    answers ``get_magnetic_moments`` (the model's, μB).

    Args:
        model_or_calculator: a FastCHGNet / compat CHGNet, or an ASE calculator.
        dispersion: "d3" (the only one offered).
        d3: ``d3_calculator`` options (xc, damping, three_body, cutoff Å, ...). With
            ``three_body=True`` pass a ``cutoff`` (e.g. 10 Å): at torch-dftd's default
            (95 bohr, 50 Å) the three-body term took 8.97 GB and 118 s for 8-atom MgO, against
            0.41 GB and 1.5 s at cutoff=10.
    """
    if dispersion != "d3":
        raise ValueError(f"dispersion={dispersion!r}: only 'd3' (torch-dftd) is offered")
    return DispersionSum([as_calculator(model_or_calculator), d3_calculator(**d3)])
