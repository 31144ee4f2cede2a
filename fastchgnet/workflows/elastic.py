"""Equation of state and elastic tensor through matcalc's ``EOSCalc`` and ``ElasticityCalc``
with an ASE calculator: ours (``fastchgnet.md.calculator.Calculator``) or any other, so the
reference chgnet's ``CHGNetCalculator`` runs the very same workflow.

matcalc asks the calculator one strained cell at a time (``run_pes_calc`` per structure). Given
our model, the calculator is a ``PrefetchCalculator``: the strained cells that matcalc will ask
for are built here the way matcalc builds them and evaluated ahead in batched model calls, and
matcalc's requests are answered from those results (any cell not prefetched is computed when
asked, so the numbers never depend on the prefetch). Phonons: ``workflows.phonons``.
Clamped ions: no relaxation of the input or of the strained cells (relax first with
``fastchgnet.md.relax`` for a relaxed reference state). The atoms follow the strain
affinely, so the moduli are clamped-ion ones, above the relaxed-ion moduli wherever the
atoms have internal degrees of freedom (relaxed LiMnO2: elastic B_vrh 112.9 against 84.3 GPa
relaxed-ion; EOS B 131.9 against 103.8 from ``fastchgnet.compat.EquationOfState``, which
relaxes the ions of every strained cell, as chgnet's). Units: volume Å^3, energy eV, bulk
modulus and elastic constants GPa (Voigt, pymatgen's engineering shear, in the Cartesian
frame of the input's lattice: rotate the structure to get them in another frame).
The fitted moduli are not exactly those of a linear-elastic solid: the model's stress is not
linear in the strains used (1-2 %), so they change with the strains and, as the strained cells
differ, with the input's orientation (the reference chgnet gives the same numbers). Relaxed
triclinic Li2O2 rotated by Euler angles (30, 20, 10)°: B_vrh 76.3 -> 77.6 GPa; relaxed Si
with norm/shear strains of 0.5/1 %, 1/2 % (default) and 2/4 %: G_vrh 44.8, 41.4 and 36.3 GPa,
B_vrh 68.2, 68.0 and 72.7. A rotated tensor is thus equal to the rotated input's to a few %.

matcalc's "Elastic strain-stress fits have mean R² ... may be unreliable" warning: its mean
R² averages the 36 linear fits of stress component j against strain i, and the components
that are zero by symmetry but not exactly (float32 noise) fit noise with R² near 0, so the
mean is about 0.4 on every run (Si, LiMnO2) however sound the large C_ij are. Judge the
tensor by its symmetry and by its change over smaller strains, not by that warning.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from fastchgnet.data.graph import structure_name
from fastchgnet.errors import StructureError
from fastchgnet.workflows.batch import (
    PrefetchCalculator,
    as_calculator,
    check_fit_precision,
    check_structure,
    warn_far_from_equilibrium,
)

#: how to get a structure at its equilibrium volume, for the EOS errors
RELAX_FIRST = "relax the structure first (fastchgnet.md.relax(structure, model).atoms)"


def _matcalc() -> Any:
    try:
        import matcalc
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "EOS and elastic workflows need matcalc: pip install 'fastchgnet[workflows]'"
        ) from exc
    return matcalc


#: largest |linear strain| the workflows take: beyond it the energy and stress are far from
#: quadratic and linear, and strongly compressed cells have huge neighbour lists (0.9 ran the
#: memory out)
MAX_STRAIN = 0.1


def check_strain(name: str, value: Any) -> float:
    """``value`` as a float: a TypeError naming ``name`` unless it is a real number, a
    ValueError unless 0 < |value| <= ``MAX_STRAIN`` (NaN and inf too)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not 0 < abs(value) <= MAX_STRAIN:  # NaN is not > 0
        raise ValueError(
            f"{name}={value}: a linear strain with 0 < |strain| <= {MAX_STRAIN} (larger ones "
            "leave the linear regime), e.g. 0.01"
        )
    return float(value)


def check_strains(name: str, strains: Any) -> tuple[float, ...]:
    """A number or a non-empty sequence of numbers as a tuple of floats, each checked by
    ``check_strain`` (errors name ``name``)."""
    if isinstance(strains, numbers.Real) and not isinstance(strains, bool):
        strains = (strains,)  # as matcalc takes a scalar
    if isinstance(strains, str | bytes) or not hasattr(strains, "__iter__"):
        raise TypeError(f"{name} must be a number or a sequence of numbers, got {strains!r}")
    checked = tuple(check_strain(name, value) for value in strains)
    if not checked:
        raise ValueError(f"{name} is empty: give at least one strain, e.g. 0.01")
    return checked


def check_eos_points(n_points: int, max_abs_strain: float) -> None:
    """One-line errors naming ``n_points`` (an int >= 4: Birch-Murnaghan has 4 parameters) or
    ``max_abs_strain`` (a linear strain in (0, ``MAX_STRAIN``]) when they cannot give a fit."""
    if isinstance(n_points, bool) or not isinstance(n_points, numbers.Integral):
        raise TypeError(f"n_points must be an int >= 4, got {n_points!r}")
    if n_points < 4:
        raise ValueError(
            f"n_points={n_points}: the Birch-Murnaghan fit has 4 parameters, so needs >= 4 points"
        )
    if check_strain("max_abs_strain", max_abs_strain) < 0:
        raise ValueError(f"max_abs_strain={max_abs_strain}: give it positive, e.g. 0.02")


def equation_of_state(
    structure: Any, model_or_calculator: Any, max_abs_strain: float = 0.02, n_points: int = 7
) -> dict[str, Any]:
    """matcalc ``EOSCalc`` result of clamped-ion cells isotropically strained up to
    ``max_abs_strain`` (linear strain), fitted by Birch-Murnaghan: ``bulk_modulus_bm`` GPa
    (clamped-ion; ``fastchgnet.compat.EquationOfState`` gives the relaxed-ion one),
    ``eos`` (``volumes`` Å^3, ``energies`` eV), ``r2_score_bm``. ``n_points``: at least 4
    (the fit has 4 parameters); ``max_abs_strain`` in (0, 0.1].

    The input must be near its equilibrium volume (relaxed with ``fastchgnet.md.relax``):
    a StructureError names the fitted equilibrium volume V0 and the scanned volumes when V0
    falls outside them (the bulk modulus of such a fit is wrong: diamond Si at a = 5.20 Å gave
    113 GPa against 78 relaxed), or when the fit finds no minimum at all."""
    check_structure(structure)
    check_eos_points(n_points, max_abs_strain)
    matcalc = _matcalc()
    calculator = as_calculator(model_or_calculator)
    check_fit_precision(calculator)
    structure = matcalc.utils.to_pmg_structure(structure)
    if isinstance(calculator, PrefetchCalculator):  # EOSCalc's cells: strain s, volume (1+s)^3
        calculator.prefetch(
            [
                structure.copy().apply_strain(float(s))
                for s in np.linspace(-max_abs_strain, max_abs_strain, n_points)
            ]
        )
    calc = matcalc.EOSCalc(
        calculator,
        max_abs_strain=max_abs_strain,
        n_points=n_points,
        relax_structure=False,
        allow_shape_change=False,
        relax_calc_kwargs={"relax_atoms": False},
    )
    scanned = structure.volume * (1 + np.array([-max_abs_strain, max_abs_strain])) ** 3
    result = _fit_or_say_why(calc, structure, scanned)
    check_equilibrium_inside(result["eos"], scanned, structure_name(structure))
    return result


def _fit_or_say_why(calc: Any, structure: Any, scanned: np.ndarray) -> dict[str, Any]:
    """``calc.calc(structure)``, pymatgen's ``EOSError`` (no minimum found) as one line."""
    from pymatgen.analysis.eos import EOSError

    try:
        return calc.calc(structure)
    except EOSError as exc:
        raise StructureError(
            structure_name(structure),
            f"the Birch-Murnaghan fit found no energy minimum in the scanned volumes "
            f"{scanned[0]:.2f}-{scanned[1]:.2f} Å^3 ({exc}); {RELAX_FIRST}",
        ) from None


def check_equilibrium_inside(eos: dict[str, Any], scanned: np.ndarray, name: str) -> None:
    """StructureError naming ``name``, the fitted V0 (Å^3) and the ``scanned`` volumes (Å^3)
    when the Birch-Murnaghan V0 of ``eos`` (``volumes``, ``energies``) is outside them."""
    from pymatgen.analysis.eos import BirchMurnaghan

    fit = BirchMurnaghan(eos["volumes"], eos["energies"])
    fit.fit()
    low, high = min(eos["volumes"]), max(eos["volumes"])
    if not low <= fit.v0 <= high:  # NaN too
        raise StructureError(
            name,
            f"the fitted equilibrium volume V0={fit.v0:.2f} Å^3 is outside the scanned volumes "
            f"{scanned[0]:.2f}-{scanned[1]:.2f} Å^3, so the bulk modulus would be wrong; "
            f"{RELAX_FIRST}",
        )


def elastic_tensor(
    structure: Any,
    model_or_calculator: Any,
    norm_strains: float | tuple[float, ...] = (-0.01, -0.005, 0.005, 0.01),
    shear_strains: float | tuple[float, ...] = (-0.02, -0.01, 0.01, 0.02),
) -> dict[str, Any]:
    """matcalc ``ElasticityCalc`` result of clamped-ion strained cells (pymatgen's
    ``DeformedStructureSet``, 6 x 4 cells plus the unstrained one), in GPa:
    ``elastic_tensor`` (a pymatgen ``ElasticTensor``; ``.voigt`` is (6, 6), in the input's
    Cartesian frame; clamped-ion, see the module docstring),
    ``bulk_modulus_vrh``, ``shear_modulus_vrh``, ``youngs_modulus``. ``norm_strains`` and
    ``shear_strains``: a number or numbers, each 0 < |strain| <= 0.1.

    The input should be relaxed: a UserWarning names its residual stress and largest force
    when they exceed ``workflows.batch.MAX_RESIDUAL_STRESS`` (1 GPa) or ``MAX_RESIDUAL_FORCE``
    (0.05 eV/Å) (diamond Si at a = 5.20 Å, 19 GPa: B_vrh 171.5 GPa against 68.5 relaxed)."""
    check_structure(structure)
    norm_strains = check_strains("norm_strains", norm_strains)
    shear_strains = check_strains("shear_strains", shear_strains)
    from pymatgen.core.elasticity import DeformedStructureSet

    matcalc = _matcalc()
    calculator = as_calculator(model_or_calculator)
    check_fit_precision(calculator)
    if isinstance(calculator, PrefetchCalculator):  # ElasticityCalc's cells, symmetry off
        structure = matcalc.utils.to_pmg_structure(structure)
        deformed = DeformedStructureSet(structure, norm_strains, shear_strains, symmetry=False)
        calculator.prefetch([structure, *deformed])
    warn_far_from_equilibrium(structure, calculator, "elastic tensor")
    calc = matcalc.ElasticityCalc(
        calculator,
        norm_strains=norm_strains,
        shear_strains=shear_strains,
        relax_structure=False,
        units_GPa=True,
    )
    return calc.calc(structure)
