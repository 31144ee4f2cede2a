"""Equation of state and elastic tensor through matcalc's ``EOSCalc`` and ``ElasticityCalc``
with an ASE calculator: ours (``fastchgnet.md.calculator.Calculator``) or any other, so the
reference chgnet's ``CHGNetCalculator`` runs the very same workflow.

matcalc asks the calculator one strained cell at a time (``run_pes_calc`` per structure), so
these workflows are not batched; phonons keep their batched path (``workflows.phonons``).
Clamped ions: no relaxation of the input or of the strained cells (relax first with
``fastchgnet.md.relax`` for a relaxed reference state). Units: volume Å^3, energy eV, bulk
modulus and elastic constants GPa (Voigt, pymatgen's engineering shear).
"""

from __future__ import annotations

from typing import Any

from fastchgnet.workflows.batch import as_calculator


def _matcalc() -> Any:
    try:
        import matcalc
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "EOS and elastic workflows need matcalc: pip install 'fastchgnet[workflows]'"
        ) from exc
    return matcalc


def equation_of_state(
    structure: Any, model_or_calculator: Any, max_abs_strain: float = 0.02, n_points: int = 7
) -> dict[str, Any]:
    """matcalc ``EOSCalc`` result of clamped-ion cells isotropically strained up to
    ``max_abs_strain`` (linear strain), fitted by Birch-Murnaghan: ``bulk_modulus_bm`` GPa,
    ``eos`` (``volumes`` Å^3, ``energies`` eV), ``r2_score_bm``."""
    calc = _matcalc().EOSCalc(
        as_calculator(model_or_calculator),
        max_abs_strain=max_abs_strain,
        n_points=n_points,
        relax_structure=False,
        allow_shape_change=False,
        relax_calc_kwargs={"relax_atoms": False},
    )
    return calc.calc(structure)


def elastic_tensor(
    structure: Any,
    model_or_calculator: Any,
    norm_strains: tuple[float, ...] = (-0.01, -0.005, 0.005, 0.01),
    shear_strains: tuple[float, ...] = (-0.02, -0.01, 0.01, 0.02),
) -> dict[str, Any]:
    """matcalc ``ElasticityCalc`` result of clamped-ion strained cells (pymatgen's
    ``DeformedStructureSet``, 6 x 4 cells plus the unstrained one), in GPa:
    ``elastic_tensor`` (a pymatgen ``ElasticTensor``; ``.voigt`` is (6, 6)),
    ``bulk_modulus_vrh``, ``shear_modulus_vrh``, ``youngs_modulus``."""
    calc = _matcalc().ElasticityCalc(
        as_calculator(model_or_calculator),
        norm_strains=norm_strains,
        shear_strains=shear_strains,
        relax_structure=False,
        units_GPa=True,
    )
    return calc.calc(structure)
