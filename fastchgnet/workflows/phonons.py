"""Phonons through matcalc's ``PhononCalc`` and phonopy, with our calculator or any other.

Given our model, the calculator is a ``PrefetchCalculator``: the displaced supercells of the
finite-displacement run are built here as ``PhononCalc`` builds them (phonopy, primitive "P",
``symprec``) and evaluated ahead, all of them in batched model calls; matcalc's per-cell requests
are answered from those results (a cell not prefetched is computed when asked). Clamped input
(no relaxation: relax first with ``fastchgnet.md.relax``). Units: displacement Å, forces eV/Å,
force constants eV/Å^2, frequencies THz.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np

from fastchgnet.workflows.batch import (
    PrefetchCalculator,
    as_calculator,
    check_fit_precision,
    check_structure,
    warn_far_from_equilibrium,
)


def displaced_supercells(
    structure: Any, supercell_matrix: np.ndarray, displacement: float, symprec: float = 1e-5
) -> list[Any]:
    """The pymatgen supercells with displacements that matcalc's ``PhononCalc`` evaluates."""
    import phonopy
    from pymatgen.io.phonopy import get_phonopy_structure, get_pmg_structure

    phonon = phonopy.Phonopy(
        get_phonopy_structure(structure),
        supercell_matrix=supercell_matrix,
        symprec=symprec,
        primitive_matrix="P",
    )
    phonon.generate_displacements(distance=displacement)
    return [get_pmg_structure(s) for s in phonon.supercells_with_displacements if s is not None]


def supercell_matrix_of(supercell_matrix: Any) -> np.ndarray:
    """The (3, 3) integer supercell matrix of 3 integers (its diagonal) or a 3x3 matrix; a
    one-line ValueError naming the supercell matrix when it is neither, is singular or has a
    negative determinant (phonopy's errors over several lines)."""
    try:
        matrix = np.asarray(supercell_matrix, dtype=float)
    except (TypeError, ValueError):  # ragged, or not numbers
        matrix = np.full(0, np.nan)
    if matrix.shape == (3,):
        matrix = np.diag(matrix)
    whole = np.isfinite(matrix).all() and np.array_equal(matrix, np.round(matrix))
    if matrix.shape != (3, 3) or not whole:
        shown = matrix.tolist() if matrix.size else repr(supercell_matrix)
        raise ValueError(f"supercell matrix {shown}: give 3 integers or a 3x3 integer matrix")
    matrix = matrix.astype(int)
    determinant = round(np.linalg.det(matrix))
    if determinant == 0:
        raise ValueError(
            f"supercell matrix {matrix.tolist()} is singular (determinant 0): its rows must "
            "span a volume"
        )
    if determinant < 0:
        raise ValueError(
            f"supercell matrix {matrix.tolist()} has determinant {determinant}: give positive "
            "integers on the diagonal or a matrix with a positive determinant"
        )
    return matrix


#: Å: the largest finite displacement ``phonopy_run`` takes (phonopy's default is 0.01 Å)
MAX_DISPLACEMENT = 0.2


def check_displacement(displacement: Any) -> float:
    """``displacement`` (Å) as a float: a TypeError unless it is a real number, a ValueError
    unless 0 < displacement <= ``MAX_DISPLACEMENT`` (0 gives all-zero force constants)."""
    if isinstance(displacement, bool) or not isinstance(displacement, numbers.Real):
        raise TypeError(
            f"displacement must be a number (Å), got {displacement!r} "
            f"({type(displacement).__name__})"
        )
    if not 0 < displacement <= MAX_DISPLACEMENT:  # NaN is not > 0
        raise ValueError(
            f"displacement={displacement}: a finite displacement in (0, {MAX_DISPLACEMENT}] Å, "
            "e.g. 0.01"
        )
    return float(displacement)


#: Å: shortest supercell lattice length below which ``phonopy_run`` warns. The model's atom
#: cutoff is 6 Å; fcc Cu (primitive a = 2.56 Å): (2,2,2) (5.1 Å) put the L-point TA mode 43 %
#: above (6,6,6)'s, (4,4,4) (10.2 Å) within 0.5 %. matcalc's own default is 20 Å.
MIN_SUPERCELL_LENGTH = 10.0


def check_supercell_size(lattice: np.ndarray, n_atoms: int, matrix: np.ndarray) -> None:
    """ValueError when the supercell ``matrix`` of a cell (``lattice`` (3, 3) Å, ``n_atoms``)
    holds one atom (its force constants are all zero: the atom moves with its images); a
    one-line UserWarning naming a diagonal supercell that reaches ``MIN_SUPERCELL_LENGTH``
    when the supercell's shortest lattice length is below it."""
    if n_atoms * round(abs(np.linalg.det(matrix))) == 1:
        raise ValueError(
            f"supercell matrix {matrix.tolist()} holds one atom: its force constants are all "
            "zero (the displaced atom moves with all its images); use a larger supercell"
        )
    shortest = float(np.linalg.norm(matrix @ lattice, axis=1).min())
    if shortest < MIN_SUPERCELL_LENGTH:
        reaching = tuple(
            math.ceil(MIN_SUPERCELL_LENGTH / n) for n in np.linalg.norm(lattice, axis=1)
        )
        warnings.warn(
            f"supercell matrix {matrix.tolist()}: shortest lattice length {shortest:.1f} Å is "
            f"below {MIN_SUPERCELL_LENGTH} Å, so the phonon frequencies may be wrong; "
            f"supercell_matrix={reaching} reaches it",
            UserWarning,
            stacklevel=3,
        )


#: phonopy's warnings (regular expressions) about force constants that break translational
#: invariance, dropped when ``phonopy_run`` symmetrizes them afterwards
UNSYMMETRIZED_WARNINGS = (r"The acoustic frequencies at Gamma are", r"\d+ acoustic mode")


def phonopy_run(
    structure: Any,
    model_or_calculator: Any,
    supercell_matrix: Any = (2, 2, 2),
    displacement: float = 0.01,
    symmetrize: bool = False,
) -> Any:
    """The ``Phonopy`` object (force constants, mesh) of matcalc's ``PhononCalc`` run.

    Args:
        structure: pymatgen Structure or ASE Atoms, relaxed: a UserWarning names its residual
            stress and largest force when they exceed ``workflows.batch.MAX_RESIDUAL_STRESS``
            (1 GPa) or ``MAX_RESIDUAL_FORCE`` (0.05 eV/Å).
        model_or_calculator: our model (every displaced supercell in batched calls) or an ASE
            calculator (e.g. the reference chgnet's ``CHGNetCalculator``).
        supercell_matrix: phonopy's supercell (3 integers or a 3x3 integer matrix, with a
            positive determinant). A UserWarning says when its shortest lattice length is below
            ``MIN_SUPERCELL_LENGTH`` (10 Å; the frequencies may then be wrong) and which
            diagonal supercell reaches it; a supercell of one atom is refused (ValueError).
        displacement: finite displacement, Å, in (0, 0.2]. The force constants are
            finite differences over it: too small and float32 noise dominates, too large and
            anharmonicity does; 0.01 Å (phonopy's default) suits float32 models.
        symmetrize: True or False (anything else is a TypeError): impose translational and
            permutational symmetry on the force constants (phonopy's
            ``symmetrize_force_constants``). Off (matcalc's and the reference's workflow), they
            are the model's finite differences, whose ``acoustic_sum`` is 0 only where symmetry
            makes it so: 7e-7 eV/Å^2 for Si (2,2,2), but 0.043 for NaCl (3,3,3), whose Γ
            acoustic modes are then 0.21 THz (phonopy warns); on, 1e-15 and 0 THz, and
            phonopy's warnings about the force constants before symmetrization are dropped.
    """
    if not isinstance(symmetrize, bool | np.bool_):  # "no" would count as true
        raise TypeError(f"symmetrize must be True or False, got {symmetrize!r}")
    check_structure(structure)
    matrix = supercell_matrix_of(supercell_matrix)
    displacement = check_displacement(displacement)
    try:
        from matcalc import PhononCalc
        from matcalc.utils import to_pmg_structure
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "phonons need matcalc and phonopy: pip install 'fastchgnet[workflows]'"
        ) from exc
    structure = to_pmg_structure(structure)
    check_supercell_size(structure.lattice.matrix, len(structure), matrix)
    calculator = as_calculator(model_or_calculator)
    check_fit_precision(calculator)
    if isinstance(calculator, PrefetchCalculator):
        calculator.prefetch([structure, *displaced_supercells(structure, matrix, displacement)])
    warn_far_from_equilibrium(structure, calculator, "phonon run")
    calc = PhononCalc(
        calculator,
        atom_disp=displacement,
        supercell_matrix=matrix,
        relax_structure=False,
        write_phonon=False,
    )
    with warnings.catch_warnings():
        if symmetrize:  # phonopy's warnings on matcalc's thermal run of the unsymmetrized ones
            for message in UNSYMMETRIZED_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
        phonon = calc.calc(structure)["phonon"]
    if symmetrize:
        phonon.symmetrize_force_constants()  # clears the mesh and thermal properties computed
    return phonon


def gamma_frequencies(phonon: Any) -> np.ndarray:
    """Frequencies at Γ, THz (3 x atoms), ascending."""
    phonon.run_qpoints([[0.0, 0.0, 0.0]])
    return np.sort(phonon.qpoints.frequencies[0])


def acoustic_sum(force_constants: np.ndarray) -> float:
    """How far force constants Φ (phonopy's, eV/Å^2) break the acoustic sum rule: the largest
    |Σ_j Φ_ij| and |Σ_i Φ_ij| over atoms and Cartesian pairs, eV/Å^2 (both 0 by translational
    invariance, and then the Γ acoustic frequencies are 0). Σ_j: the forces of one
    displacement sum to zero (our model's do to round-off); Σ_i: a rigid shift of all atoms
    leaves each force unchanged, which finite differences expanded by symmetry may not obey.
    Full force constants (n, n, 3, 3) are summed over both indices; compact ones
    (n_primitive, n, 3, 3) only over the second."""
    sums = [np.abs(force_constants.sum(axis=1)).max()]
    if force_constants.shape[0] == force_constants.shape[1]:
        sums.append(np.abs(force_constants.sum(axis=0)).max())
    return float(max(sums))
