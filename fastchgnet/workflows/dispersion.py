"""DFT-D3 dispersion added to our calculator through torch-dftd and ASE's ``SumCalculator``.

CHGNet's labels (MPtrj) are PBE/PBE+U, so the default D3 parameters are PBE's with
Becke-Johnson damping. The sum gives energy (eV), forces (eV/Å) and stress (eV/Å^3); magnetic
moments stay with the model's calculator (``calculators[0]``).
"""

from __future__ import annotations

from typing import Any

import torch
from ase.calculators.mixing import SumCalculator

from fastchgnet.md.calculator import Calculator


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


def with_dispersion(model_or_calculator: Any, dispersion: str = "d3", **d3: Any) -> SumCalculator:
    """``SumCalculator`` of our calculator (built from a model when given one) and D3.

    Args:
        model_or_calculator: a FastCHGNet / compat CHGNet, or an ASE calculator.
        dispersion: "d3" (the only one offered).
        d3: ``d3_calculator`` options (xc, damping, three_body, cutoff, ...).
    """
    if dispersion != "d3":
        raise ValueError(f"dispersion={dispersion!r}: only 'd3' (torch-dftd) is offered")
    calculator = model_or_calculator
    if not hasattr(calculator, "get_property"):
        calculator = Calculator(model_or_calculator, always_stress=True)
    return SumCalculator([calculator, d3_calculator(**d3)])
